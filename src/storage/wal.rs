//! The write-ahead log: our durability point, with group commit.
//!
//! sled's `flush()` issues `sync_file_range`, which is not an fsync (see docs/architecture.md), so
//! sidb does not rely on it for acknowledged writes. Instead every write is framed into this log;
//! a DURABLE write is acknowledged only once the log bytes holding it are `fdatasync`'ed.
//!
//! Protocol:
//! - Writers call [`Wal::append`] with an encoded entry and get its LSN (the log's byte offset
//!   just past the entry). The bytes go into a shared in-memory buffer.
//! - One sync thread owns the segment file. It takes everything buffered so far, writes it with a
//!   single `write_all`, calls `fdatasync`, and publishes the new durable LSN. Writers that arrived
//!   while a sync was running are all covered by the next one: that is the group commit.
//! - DURABLE appends wake the sync thread at once; BUFFERED appends do not, so they reach the disk
//!   within `flush_interval`, or earlier with the next durable write.
//! - A segment that has grown past `segment_bytes` is closed and a new one started. Closed
//!   segments are deleted by the store's checkpoint once sled's state covering them is fsync'ed.
//!
//! Segment format: the 8-byte magic `SIDBWAL1`, then frames `len: u32 LE | crc32(payload): u32 LE |
//! payload`. A frame that is cut short or fails its checksum ends the log if it is in the last
//! segment (a torn write that was never acknowledged); anywhere else it is corruption.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SIDBWAL1";
const FRAME_HEADER: usize = 8;
/// Largest payload a frame may carry (a frame length beyond it is corruption).
pub const MAX_FRAME: usize = 1 << 30;

/// Tuning of the log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Longest time a BUFFERED write waits for its sync.
    pub flush_interval: Duration,
    /// Size after which a segment is closed and a new one started.
    pub segment_bytes: u64,
    /// Appends are refused (RESOURCE_EXHAUSTED) while more than this many bytes wait for a sync.
    pub max_pending_bytes: usize,
}

/// What is on disk: the durable LSN, or the failure that stopped the log.
#[derive(Debug, Clone, Default)]
struct DurableState {
    lsn: u64,
    failed: Option<Arc<str>>,
}

struct Pending {
    buf: Vec<u8>,
    next_lsn: u64,
    urgent: bool,
    closing: bool,
    failed: Option<Arc<str>>,
    closed_segments: Vec<PathBuf>,
    /// The LSN up to which the log is on disk (for blocking waiters; async ones use `durable`).
    durable_lsn: u64,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Notified after every publication of `Pending::durable_lsn`, for blocking waiters.
    synced: Condvar,
    durable: watch::Sender<DurableState>,
    opts: WalOptions,
}

/// The log writer. See the module documentation for the protocol.
pub struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<PathBuf>>>,
}

/// File name of segment `id`: zero-padded so that names sort like ids.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// The segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in
        fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
    {
        let path = entry
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .path();
        let Some(stem) = path
            .extension()
            .filter(|x| *x == "wal")
            .and_then(|_| path.file_stem()?.to_str())
        else {
            continue;
        };
        let id = stem.parse::<u64>().map_err(|_| {
            Error::DataLoss(format!(
                "unexpected file in the log directory: {}",
                path.display()
            ))
        })?;
        out.push((id, path));
    }
    out.sort();
    Ok(out)
}

/// Calls `f` with the payload of every intact frame of a segment, in order. `last` says whether
/// this is the newest segment, where a torn tail is expected after a crash and ends the log.
/// Returns the number of bytes of torn tail that were ignored.
pub fn replay_segment(
    path: &Path,
    last: bool,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut data))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let name = path.display();
    if data.len() < MAGIC.len() {
        // A segment is created with its header synced; a shorter file can only be the crash
        // window of its creation, which held no frames.
        return if last {
            Ok(data.len() as u64)
        } else {
            Err(Error::DataLoss(format!(
                "{name}: log segment shorter than its header"
            )))
        };
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(Error::DataLoss(format!(
            "{name}: not a sidb log segment (bad magic)"
        )));
    }
    let mut off = MAGIC.len();
    while off < data.len() {
        match frame_at(&data, off) {
            Some(payload) => {
                f(payload)?;
                off += FRAME_HEADER + payload.len();
            }
            None if last => return Ok((data.len() - off) as u64),
            None => {
                return Err(Error::DataLoss(format!(
                    "{name}: damaged log frame at byte {off} in a closed segment"
                )))
            }
        }
    }
    Ok(0)
}

/// The payload of the intact frame at `off`, or `None` when it is cut short or fails its checksum.
fn frame_at(data: &[u8], off: usize) -> Option<&[u8]> {
    let header = data.get(off..off + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return None;
    }
    let payload = data.get(off + FRAME_HEADER..off + FRAME_HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// fsyncs a directory, so that files created or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

fn create_segment(dir: &Path, id: u64) -> std::io::Result<(File, PathBuf)> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok((file, path))
}

impl Wal {
    /// Starts a log in `dir` whose first segment has id `first_id` (it must not exist yet).
    pub fn start(dir: &Path, first_id: u64, opts: WalOptions) -> Result<Wal> {
        let (file, path) = create_segment(dir, first_id)
            .map_err(|e| Error::io(format!("creating log segment in {}", dir.display()), e))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(1 << 20),
                next_lsn: 0,
                urgent: false,
                closing: false,
                failed: None,
                closed_segments: Vec::new(),
                durable_lsn: 0,
            }),
            wake: Condvar::new(),
            synced: Condvar::new(),
            durable: watch::channel(DurableState::default()).0,
            opts,
        });
        let writer = SyncThread {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
            file,
            path,
            id: first_id,
            size: MAGIC.len() as u64,
        };
        let thread = std::thread::Builder::new()
            .name("sidb-wal".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("starting the log thread", e))?;
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Appends one entry and returns its LSN. `urgent` wakes the sync thread now (DURABLE
    /// writes); otherwise the entry waits for the flush interval or the next urgent append.
    pub fn append(&self, payload: &[u8], urgent: bool) -> Result<u64> {
        if payload.len() > MAX_FRAME {
            return Err(Error::ResourceExhausted(format!(
                "write of {} bytes exceeds the log's frame limit of {MAX_FRAME}",
                payload.len()
            )));
        }
        let mut p = self.shared.pending.lock();
        if let Some(e) = &p.failed {
            return Err(Error::Internal(format!("the write-ahead log failed: {e}")));
        }
        if p.closing {
            return Err(Error::Unavailable("server is shutting down".into()));
        }
        if p.buf.len() > self.shared.opts.max_pending_bytes {
            return Err(Error::ResourceExhausted(format!(
                "write queue full: {} bytes wait for the disk",
                p.buf.len()
            )));
        }
        // The sync thread sleeps without a deadline while nothing is pending: the first bytes
        // must wake it, or a BUFFERED write could wait for the next DURABLE one indefinitely.
        let was_empty = p.buf.is_empty();
        p.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        p.buf
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        p.buf.extend_from_slice(payload);
        p.next_lsn += (FRAME_HEADER + payload.len()) as u64;
        p.urgent |= urgent;
        if urgent || was_empty {
            self.shared.wake.notify_one();
        }
        Ok(p.next_lsn)
    }

    /// Waits until everything up to `lsn` is on disk.
    pub async fn wait_durable(&self, lsn: u64) -> Result<()> {
        let mut rx = self.shared.durable.subscribe();
        let state = rx
            .wait_for(|d| d.lsn >= lsn || d.failed.is_some())
            .await
            .map_err(|_| Error::Internal("the log thread is gone".into()))?
            .clone();
        match state.failed {
            Some(e) if state.lsn < lsn => Err(Error::Internal(format!(
                "the write-ahead log failed before this write reached the disk: {e}"
            ))),
            _ => Ok(()),
        }
    }

    /// The same wait, for threads outside the async runtime.
    pub fn wait_durable_blocking(&self, lsn: u64) -> Result<()> {
        let mut p = self.shared.pending.lock();
        loop {
            if p.durable_lsn >= lsn {
                return Ok(());
            }
            if let Some(e) = &p.failed {
                return Err(Error::Internal(format!("the write-ahead log failed: {e}")));
            }
            self.shared.synced.wait(&mut p);
        }
    }

    /// The segments closed since the last call to [`Wal::forget_segments`].
    pub fn closed_segments(&self) -> Vec<PathBuf> {
        self.shared.pending.lock().closed_segments.clone()
    }

    /// Forgets closed segments that a checkpoint has deleted.
    pub fn forget_segments(&self, done: &[PathBuf]) {
        self.shared
            .pending
            .lock()
            .closed_segments
            .retain(|p| !done.contains(p));
    }

    /// Writes and syncs everything pending, stops the sync thread, and returns every segment file
    /// still present (closed ones and the current one). Appends after this fail with UNAVAILABLE.
    pub fn close(&self) -> Result<Vec<PathBuf>> {
        {
            let mut p = self.shared.pending.lock();
            p.closing = true;
            self.shared.wake.notify_one();
        }
        let Some(thread) = self.thread.lock().take() else {
            return Ok(Vec::new());
        };
        let current = thread
            .join()
            .map_err(|_| Error::Internal("the log thread panicked".into()))?;
        let p = self.shared.pending.lock();
        if let Some(e) = &p.failed {
            return Err(Error::Internal(format!("the write-ahead log failed: {e}")));
        }
        let mut all = p.closed_segments.clone();
        all.push(current);
        Ok(all)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

struct SyncThread {
    shared: Arc<Shared>,
    dir: PathBuf,
    file: File,
    path: PathBuf,
    id: u64,
    size: u64,
}

impl SyncThread {
    /// Runs until closed; returns the path of the segment it was writing.
    fn run(mut self) -> PathBuf {
        let mut spare = Vec::with_capacity(1 << 20);
        while let Some(end_lsn) = self.next_batch(&mut spare) {
            if let Err(e) = self.write_and_sync(&spare) {
                let msg: Arc<str> = format!("writing {}: {e}", self.path.display()).into();
                tracing::error!(error = %msg, "write-ahead log failed; refusing further writes");
                self.fail(msg);
                break;
            }
            spare.clear();
            // Rotate before publishing, so a writer that saw its LSN durable also sees the
            // segment list that includes it.
            if self.size >= self.shared.opts.segment_bytes {
                if let Err(e) = self.rotate() {
                    let msg: Arc<str> = format!("starting a new log segment: {e}").into();
                    tracing::error!(error = %msg, "write-ahead log failed");
                    self.fail(msg);
                    break;
                }
            }
            self.publish(end_lsn);
        }
        self.path
    }

    /// Publishes the durable LSN to async waiters (the watch) and blocking ones (the condvar).
    fn publish(&self, lsn: u64) {
        self.shared.pending.lock().durable_lsn = lsn;
        self.shared.durable.send_modify(|d| d.lsn = lsn);
        self.shared.synced.notify_all();
    }

    fn fail(&self, msg: Arc<str>) {
        self.shared.pending.lock().failed = Some(msg.clone());
        self.shared.durable.send_modify(|d| d.failed = Some(msg));
        self.shared.synced.notify_all();
    }

    /// Waits for work and swaps the pending bytes into `out`; `None` once closed and drained.
    fn next_batch(&self, out: &mut Vec<u8>) -> Option<u64> {
        let mut p = self.shared.pending.lock();
        loop {
            if p.failed.is_some() {
                return None;
            }
            if !p.buf.is_empty() && (p.urgent || p.closing) {
                break;
            }
            if p.buf.is_empty() {
                if p.closing {
                    return None;
                }
                self.shared.wake.wait(&mut p);
                continue;
            }
            // Only buffered writes wait: give them the flush interval unless a durable one comes.
            let interval = self.shared.opts.flush_interval;
            if self.shared.wake.wait_for(&mut p, interval).timed_out() {
                break;
            }
        }
        p.urgent = false;
        std::mem::swap(&mut p.buf, out);
        Some(p.next_lsn)
    }

    fn write_and_sync(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.file.sync_data()?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let (file, path) = create_segment(&self.dir, self.id + 1)?;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.id += 1;
        self.size = MAGIC.len() as u64;
        self.shared.pending.lock().closed_segments.push(old);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WalOptions {
        WalOptions {
            flush_interval: Duration::from_millis(20),
            segment_bytes: 200,
            max_pending_bytes: 1 << 20,
        }
    }

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        let segs = list_segments(dir).unwrap();
        let mut out = Vec::new();
        for (i, (_, p)) in segs.iter().enumerate() {
            replay_segment(p, i + 1 == segs.len(), |b| {
                out.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn appends_survive_close_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 1, opts()).unwrap();
        let mut lsn = 0;
        for i in 0..50u32 {
            lsn = wal.append(&i.to_le_bytes().repeat(3), i % 2 == 0).unwrap();
        }
        wal.wait_durable_blocking(lsn).unwrap();
        assert!(
            !wal.closed_segments().is_empty(),
            "200-byte segments must rotate"
        );
        let files = wal.close().unwrap();
        assert_eq!(files.len(), list_segments(dir.path()).unwrap().len());
        let got = read_all(dir.path());
        assert_eq!(got.len(), 50);
        for (i, b) in got.iter().enumerate() {
            assert_eq!(b, &(i as u32).to_le_bytes().repeat(3));
        }
        assert!(matches!(wal.append(b"x", true), Err(Error::Unavailable(_))));
    }

    #[test]
    fn buffered_appends_reach_disk_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 1, opts()).unwrap();
        let lsn = wal.append(b"buffered", false).unwrap();
        wal.wait_durable_blocking(lsn).unwrap();
        assert_eq!(read_all(dir.path()), vec![b"buffered".to_vec()]);
    }

    #[test]
    fn torn_tail_ends_the_last_segment_but_not_a_closed_one() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(
            dir.path(),
            7,
            WalOptions {
                segment_bytes: 1 << 20,
                ..opts()
            },
        )
        .unwrap();
        for i in 0..3u8 {
            let l = wal.append(&[i; 10], true).unwrap();
            wal.wait_durable_blocking(l).unwrap();
        }
        let files = wal.close().unwrap();
        let path = &files[0];
        let len = fs::metadata(path).unwrap().len();
        // Cut the last frame in half: the tail is ignored, earlier frames replay.
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut n = 0;
        let torn = replay_segment(path, true, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, torn), (2, 13));
        // The same damage in a closed segment is corruption.
        let err = replay_segment(path, false, |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::DataLoss(_)), "{err:?}");
        // A flipped payload byte fails the checksum.
        let mut data = fs::read(path).unwrap();
        data[MAGIC.len() + FRAME_HEADER] ^= 0xFF;
        fs::write(path, &data).unwrap();
        let mut n = 0;
        replay_segment(path, true, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn buffered_write_after_an_idle_period_is_synced() {
        // Regression: the sync thread slept without a deadline when idle, and a BUFFERED append
        // did not wake it, so the write stayed in memory until the next DURABLE one.
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 1, opts()).unwrap();
        let first = wal.append(b"one", true).unwrap();
        wal.wait_durable_blocking(first).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let second = wal.append(b"two", false).unwrap();
        wal.wait_durable_blocking(second).unwrap();
    }

    #[test]
    fn a_full_queue_is_resource_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        // Buffered writes wait 10 s for their sync, so the first one is still pending.
        let o = WalOptions {
            flush_interval: Duration::from_secs(10),
            max_pending_bytes: 16,
            ..opts()
        };
        let wal = Wal::start(dir.path(), 1, o).unwrap();
        wal.append(&[0; 32], false).unwrap();
        let err = wal.append(&[0; 8], false).unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("write queue full")),
            "{err:?}"
        );
        // A durable write drains the queue, after which writes are accepted again.
        let lsn = wal.append(&[], true);
        assert!(lsn.is_err(), "still full until the sync thread runs");
        drop(wal);
    }

    #[test]
    fn foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), b"NOTAWAL!garbage").unwrap();
        let err = replay_segment(&segment_path(dir.path(), 1), true, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
        fs::write(dir.path().join("junk.wal"), b"").unwrap();
        assert!(list_segments(dir.path()).is_err());
    }
}
