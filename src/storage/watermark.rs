//! The watermark: what sled must hold at start, kept outside sled.
//!
//! sled recovers from a damaged file by truncating its own log at the damage, and from a missing
//! or emptied `db/` by starting empty: either way it opens without an error, at an older state.
//! Once a checkpoint has deleted the WAL segments of those writes, nothing else remembers them,
//! and the server would serve the older state as if nothing had happened.
//!
//! So every checkpoint, every catalogue change and every clean close writes this small file,
//! `<data dir>/watermark`, atomically (temporary file, fsync, rename, fsync of the directory):
//! for each collection its id, name and the sequence that sled is known to hold durably. At start,
//! after the WAL has been replayed, [`Watermark::check`] compares it with what sled holds: a
//! collection that is missing, or whose applied sequence is below the watermark's, is data loss,
//! and the store refuses to open (`DataLoss`, naming the file and both sequences) unless the
//! operator says `--accept-data-loss`.
//!
//! The sequences it records are read before sled is synced, so sled always holds at least them
//! once the sync returns; writes after that are in the WAL segment the checkpoint keeps. A
//! collection is removed from the watermark *before* its tree is dropped, and added *after* its
//! catalogue entry is synced, so a crash in between leaves sled ahead of the watermark, never
//! behind it.
//!
//! Format: `SIDBWM01`, then `crc32(body): u32 LE`, then the body: `next collection id: u64`,
//! `count: u32`, and per collection `id: u64 | name: str | sequence: u64` (the codec's
//! encodings). Any damage is `DataLoss` naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::codec::{Dec, Enc};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SIDBWM01";
/// The file name under the data directory.
pub const FILE: &str = "watermark";

/// One collection's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The collection's name.
    pub name: String,
    /// The sequence sled holds at least.
    pub sequence: u64,
}

/// What sled must hold: per collection id, its name and sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermark {
    /// The next collection id at the time of writing (sled's counter must not be below it).
    pub next_collection_id: u64,
    /// Per collection id.
    pub marks: BTreeMap<u64, Mark>,
}

/// The path of the watermark of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

impl Watermark {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Enc::versioned();
        body.u64(self.next_collection_id);
        body.u32(self.marks.len() as u32);
        for (id, m) in &self.marks {
            body.u64(*id);
            body.str(&m.name);
            body.u64(m.sequence);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&crc32fast::hash(&body.buf).to_le_bytes());
        out.extend_from_slice(&body.buf);
        out
    }

    pub(crate) fn decode(buf: &[u8], file: &Path) -> Result<Watermark> {
        let bad = |why: &str| Error::DataLoss(format!("{}: {why}", file.display()));
        if buf.len() < MAGIC.len() + 4 || &buf[..MAGIC.len()] != MAGIC {
            return Err(bad("not a sidb watermark (bad header)"));
        }
        let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
        let body = &buf[12..];
        if crc32fast::hash(body) != crc {
            return Err(bad("checksum mismatch: the file is damaged"));
        }
        let mut d = Dec::versioned(body, "watermark")?;
        let next_collection_id = d.u64()?;
        let n = d.u32()?;
        let mut marks = BTreeMap::new();
        for _ in 0..n {
            let id = d.u64()?;
            let name = d.str()?;
            let sequence = d.u64()?;
            marks.insert(id, Mark { name, sequence });
        }
        d.finish()?;
        Ok(Watermark {
            next_collection_id,
            marks,
        })
    }

    /// Reads the watermark of `data_dir`; `None` when there is none.
    pub fn load(data_dir: &Path) -> Result<Option<Watermark>> {
        let file = path(data_dir);
        match std::fs::read(&file) {
            Ok(buf) => Self::decode(&buf, &file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", file.display()), e)),
        }
    }

    /// Replaces the watermark of `data_dir` atomically and durably.
    pub fn store(&self, data_dir: &Path) -> Result<()> {
        let file = path(data_dir);
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        crate::fsutil::write_synced(&tmp, &self.encode())?;
        std::fs::rename(&tmp, &file)
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
        crate::fsutil::sync_dir(data_dir)
    }

    /// Every way in which `now` (what sled holds after the WAL replay) is behind `self`, as one
    /// message per problem; empty when sled holds at least everything the watermark records.
    pub fn behind(&self, now: &Watermark, db_dir: &Path) -> Vec<String> {
        let db = db_dir.display();
        let mut out = Vec::new();
        for (id, mark) in &self.marks {
            match now.marks.get(id) {
                None => out.push(format!(
                    "{db}: collection {:?} (id {id}) is missing; sequence {} was acknowledged",
                    mark.name, mark.sequence
                )),
                Some(have) if have.sequence < mark.sequence => out.push(format!(
                    "{db}: collection {:?} (id {id}) is at sequence {}, but sequence {} was \
                     acknowledged: writes {}..={} are lost",
                    mark.name,
                    have.sequence,
                    mark.sequence,
                    have.sequence + 1,
                    mark.sequence
                )),
                Some(_) => {}
            }
        }
        if now.next_collection_id < self.next_collection_id {
            out.push(format!(
                "{db}: the collection id counter is at {}, below {}: the catalogue is older than \
                 what was acknowledged",
                now.next_collection_id, self.next_collection_id
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Watermark {
        let mut w = Watermark {
            next_collection_id: 4,
            ..Default::default()
        };
        w.marks.insert(
            1,
            Mark {
                name: "a".into(),
                sequence: 7,
            },
        );
        w.marks.insert(
            3,
            Mark {
                name: "b".into(),
                sequence: 0,
            },
        );
        w
    }

    #[test]
    fn roundtrips_and_every_damage_is_data_loss() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Watermark::load(dir.path()).unwrap(), None);
        let w = sample();
        w.store(dir.path()).unwrap();
        assert_eq!(Watermark::load(dir.path()).unwrap(), Some(w.clone()));
        let good = std::fs::read(path(dir.path())).unwrap();
        for cut in 0..good.len() {
            std::fs::write(path(dir.path()), &good[..cut]).unwrap();
            let e = Watermark::load(dir.path()).unwrap_err();
            assert!(matches!(e, Error::DataLoss(_)), "cut at {cut}: {e}");
        }
        for byte in 0..good.len() {
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            std::fs::write(path(dir.path()), &bad).unwrap();
            let e = Watermark::load(dir.path()).unwrap_err();
            assert!(e.to_string().contains("watermark"), "flip at {byte}: {e}");
        }
    }

    #[test]
    fn behind_names_missing_and_older_collections() {
        let w = sample();
        let db = Path::new("/d/db");
        assert!(w.behind(&w, db).is_empty());
        let mut ahead = w.clone();
        ahead.marks.get_mut(&1).unwrap().sequence = 9;
        ahead.next_collection_id = 6;
        assert!(w.behind(&ahead, db).is_empty());
        let mut older = w.clone();
        older.marks.get_mut(&1).unwrap().sequence = 5;
        older.marks.remove(&3);
        let problems = w.behind(&older, db);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("at sequence 5, but sequence 7 was acknowledged"));
        assert!(problems[1].contains("\"b\" (id 3) is missing"));
    }
}
