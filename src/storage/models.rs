//! Model versions in a collection's tree: the version registry and the semantic IDs each version
//! assigned.
//!
//! ```text
//! 0x30 | version u64                                -> VersionRecord
//! 0x31 | version u64 | kind u8 | id (escaped)       -> ModelSid
//! ```
//!
//! A version's SIDs are first written in bulk straight into sled (not through the WAL: a whole
//! catalogue of SIDs would flood the log), then sled is flushed and fsync'ed, and only then is the
//! version activated by a logged, durable [`super::ops::WriteOp::Activate`]. That op flips
//! `Meta::active_version` and the record's `activated` flag in one sled batch, so a crash leaves
//! either the old version active (and the new one unactivated: garbage, removed at the next
//! start by [`super::Store::drop_unactivated_versions`]) or the new one active with every SID in
//! place.

use super::codec::{self, Dec, Enc};
use super::keys::{self, tag};
use super::{Collection, Store};
use crate::error::{Error, Result};
use crate::types::{EntityKind, InteractionRecord, SemanticId};

/// SIDs written per sled batch by [`Store::put_model_sids`].
const SID_BATCH: usize = 8192;

/// One entity's SID under one model version, with what Recommend needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSid {
    /// Codes, coarse first.
    pub codes: Vec<u32>,
    /// Dedup suffix among the entities of this version with the same codes (stable once given).
    pub suffix: u32,
    /// Users: the item codes the user's `z` routes to (the prefix Recommend searches under).
    /// Empty for items.
    pub route: Vec<u32>,
    /// The quantized embedding `z`.
    pub z: Vec<f32>,
}

impl ModelSid {
    /// The SID as served, stamped with its version.
    pub fn semantic_id(&self, version: u64) -> SemanticId {
        SemanticId {
            codes: self.codes.clone(),
            suffix: self.suffix,
            model_version: version,
        }
    }

    /// Encodes the body (no version byte).
    pub fn put(e: &mut Enc, s: &ModelSid) {
        put_u32s(e, &s.codes);
        e.u32(s.suffix);
        put_u32s(e, &s.route);
        e.f32s(&s.z);
    }

    /// Decodes the body.
    pub fn get(d: &mut Dec) -> Result<ModelSid> {
        Ok(ModelSid {
            codes: get_u32s(d)?,
            suffix: d.u32()?,
            route: get_u32s(d)?,
            z: d.f32s()?,
        })
    }
}

fn put_u32s(e: &mut Enc, v: &[u32]) {
    e.u32(v.len() as u32);
    v.iter().for_each(|c| e.u32(*c));
}

fn get_u32s(d: &mut Dec) -> Result<Vec<u32>> {
    let n = d.count(4)?;
    (0..n).map(|_| d.u32()).collect()
}

/// One model version of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    /// Version number (1, 2, ...).
    pub version: u64,
    /// When it was published.
    pub created_ms: i64,
    /// Set by the activation that published it; a version never activated is an aborted
    /// publication.
    pub activated: bool,
    /// Write sequence of the snapshot its SIDs were computed from.
    pub snapshot_seq: u64,
    /// The quality report, JSON (the engine's `ModelReport`).
    pub report: String,
}

impl VersionRecord {
    /// Encodes with the version byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::versioned();
        e.u64(self.version);
        e.i64(self.created_ms);
        e.u8(self.activated as u8);
        e.u64(self.snapshot_seq);
        e.str(&self.report);
        e.buf
    }

    /// Decodes; DATA_LOSS on malformed bytes.
    pub fn decode(buf: &[u8]) -> Result<VersionRecord> {
        let mut d = Dec::versioned(buf, "model version record")?;
        let r = VersionRecord {
            version: d.u64()?,
            created_ms: d.i64()?,
            activated: d.u8()? != 0,
            snapshot_seq: d.u64()?,
            report: d.str()?,
        };
        d.finish()?;
        Ok(r)
    }
}

/// Key of a version record.
pub fn version_key(version: u64) -> Vec<u8> {
    let mut k = vec![tag::VERSION];
    keys::put_u64(&mut k, version);
    k
}

/// Prefix of every SID of a version (of one kind when given).
pub fn sid_prefix(version: u64, kind: Option<EntityKind>) -> Vec<u8> {
    let mut k = vec![tag::MODEL_SID];
    keys::put_u64(&mut k, version);
    if let Some(kind) = kind {
        k.push(kind_byte(kind));
    }
    k
}

/// Key of one entity's SID under a version.
pub fn sid_key(version: u64, kind: EntityKind, id: &str) -> Vec<u8> {
    let mut k = sid_prefix(version, Some(kind));
    keys::put_bytes(&mut k, id.as_bytes());
    k
}

/// Splits a SID key into (kind, id).
pub fn parse_sid_key(key: &[u8]) -> Result<(u64, EntityKind, String)> {
    let mut r = keys::KeyReader::new(key);
    if r.u8()? != tag::MODEL_SID {
        return Err(Error::DataLoss("model SID key: wrong tag".into()));
    }
    let version = r.u64()?;
    let kind = match r.u8()? {
        1 => EntityKind::Items,
        2 => EntityKind::Users,
        b => return Err(Error::DataLoss(format!("model SID key: bad kind {b}"))),
    };
    Ok((version, kind, r.string()?))
}

fn kind_byte(kind: EntityKind) -> u8 {
    match kind {
        EntityKind::Items => 1,
        EntityKind::Users => 2,
    }
}

impl Store {
    /// The collection's active model version (0: none).
    pub fn active_version(&self, coll: &Collection) -> u64 {
        coll.writer.lock().active_version
    }

    /// Every version record of the collection, oldest first.
    pub fn versions(&self, coll: &Collection) -> Result<Vec<VersionRecord>> {
        coll.tree
            .scan_prefix([tag::VERSION])
            .map(|kv| VersionRecord::decode(&kv?.1))
            .collect()
    }

    /// Writes a version record straight to sled (not logged; see the module docs).
    pub fn put_version(&self, coll: &Collection, rec: &VersionRecord) -> Result<()> {
        coll.tree.insert(version_key(rec.version), rec.encode())?;
        Ok(())
    }

    /// Writes SIDs of `version` straight to sled in batches (not logged; see the module docs).
    pub fn put_model_sids(
        &self,
        coll: &Collection,
        version: u64,
        kind: EntityKind,
        sids: &[(String, ModelSid)],
    ) -> Result<()> {
        for chunk in sids.chunks(SID_BATCH) {
            let mut batch = sled::Batch::default();
            for (id, sid) in chunk {
                batch.insert(
                    sid_key(version, kind, id),
                    codec::encode_value(sid, ModelSid::put),
                );
            }
            coll.tree.apply_batch(batch)?;
        }
        Ok(())
    }

    /// The SIDs of `ids` under `version`, in the order asked.
    pub fn model_sids(
        &self,
        coll: &Collection,
        version: u64,
        kind: EntityKind,
        ids: &[String],
    ) -> Result<Vec<Option<ModelSid>>> {
        ids.iter()
            .map(|id| match coll.tree.get(sid_key(version, kind, id))? {
                Some(v) => codec::decode_value(&v, "model SID", ModelSid::get).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// Calls `f` for every SID stored under `version` (items first, then users, in id order).
    pub fn scan_model_sids(
        &self,
        coll: &Collection,
        version: u64,
        mut f: impl FnMut(EntityKind, String, ModelSid) -> Result<()>,
    ) -> Result<()> {
        for kv in coll.tree.scan_prefix(sid_prefix(version, None)) {
            let (k, v) = kv?;
            let (_, kind, id) = parse_sid_key(&k)?;
            f(
                kind,
                id,
                codec::decode_value(&v, "model SID", ModelSid::get)?,
            )?;
        }
        Ok(())
    }

    /// Removes a version: its record and every SID stored under it.
    pub fn drop_version(&self, coll: &Collection, version: u64) -> Result<()> {
        self.clear_version_sids(coll, version)?;
        coll.tree.remove(version_key(version))?;
        Ok(())
    }

    /// Removes every SID stored under a version (its record stays).
    pub fn clear_version_sids(&self, coll: &Collection, version: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in coll.tree.scan_prefix(sid_prefix(version, None)) {
            batch.remove(kv?.0);
            n += 1;
            if n % SID_BATCH == 0 {
                coll.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        coll.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Versions holding SIDs but never activated (an aborted publication), and SIDs of versions
    /// without a record: what a crash during publication leaves. Returns the versions found;
    /// the caller drops them.
    pub fn unactivated_versions(&self, coll: &Collection) -> Result<Vec<u64>> {
        let recorded = self.versions(coll)?;
        let mut out: Vec<u64> = recorded
            .iter()
            .filter(|r| !r.activated)
            .map(|r| r.version)
            .collect();
        // SIDs are keyed by version first: jump from version to version.
        let mut from = vec![tag::MODEL_SID];
        while let Some(kv) = coll
            .tree
            .range(from.clone()..vec![tag::MODEL_SID + 1])
            .next()
        {
            let (version, _, _) = parse_sid_key(&kv?.0)?;
            if !recorded.iter().any(|r| r.version == version) {
                out.push(version);
            }
            from = sid_prefix(version.saturating_add(1), None);
            if version == u64::MAX {
                break;
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Makes everything written to sled so far durable (flush + fsync of every file).
    pub fn sync(&self) -> Result<()> {
        self.sync_sled()
    }

    /// Calls `f` for every logged interaction with a sequence `<= upto`, in write order.
    pub fn scan_interactions(
        &self,
        coll: &Collection,
        upto: u64,
        mut f: impl FnMut(InteractionRecord) -> Result<()>,
    ) -> Result<()> {
        let end = keys::log_key(upto.saturating_add(1), 0);
        for kv in coll.tree.range(vec![tag::LOG]..end) {
            let (_, v) = kv?;
            f(codec::decode_value(
                &v,
                "interaction record",
                codec::get_interaction,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_reject_truncation() {
        let r = VersionRecord {
            version: 3,
            created_ms: 17,
            activated: true,
            snapshot_seq: 99,
            report: "{\"a\":1}".into(),
        };
        let buf = r.encode();
        assert_eq!(VersionRecord::decode(&buf).unwrap(), r);
        for n in 0..buf.len() {
            assert!(VersionRecord::decode(&buf[..n]).is_err(), "cut at {n}");
        }
        let s = ModelSid {
            codes: vec![1, 2, 3],
            suffix: 4,
            route: vec![5, 6, 7],
            z: vec![0.5, -1.0],
        };
        let mut e = Enc::versioned();
        ModelSid::put(&mut e, &s);
        let mut d = Dec::versioned(&e.buf, "sid").unwrap();
        assert_eq!(ModelSid::get(&mut d).unwrap(), s);
        d.finish().unwrap();
    }

    #[test]
    fn sid_keys_parse_back_and_group_by_version_then_kind() {
        let k = sid_key(7, EntityKind::Users, "u\0x");
        assert_eq!(
            parse_sid_key(&k).unwrap(),
            (7, EntityKind::Users, "u\0x".to_string())
        );
        assert!(k.starts_with(&sid_prefix(7, Some(EntityKind::Users))));
        assert!(k.starts_with(&sid_prefix(7, None)));
        assert!(sid_key(7, EntityKind::Items, "zzz") < sid_key(7, EntityKind::Users, "a"));
        assert!(sid_key(7, EntityKind::Users, "zzz") < sid_key(8, EntityKind::Items, "a"));
    }
}
