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
//! Segment format: the 8-byte magic `SIDBWAL2`, then one **batch** per sync: a 16-byte header
//! `BATCH_MAGIC: u32 LE | len: u32 LE | crc32(body): u32 LE | crc32(the first 12 bytes): u32 LE`
//! and a body of `len` bytes, the frames `len: u32 LE | crc32(payload): u32 LE | payload`.
//!
//! Why batches: the sync thread writes batch N+1 only after the `fdatasync` of batch N returned,
//! so a crash can tear only the last batch, and within it the disk may have kept any subset of
//! its pages. A batch that is cut short or fails its checksum is therefore a torn tail (writes
//! never acknowledged) only if no intact batch follows it in the last segment. An intact batch
//! after a damaged one proves the damaged one was synced, and acknowledged: that is corruption
//! (`DataLoss`), as is any damage in a closed segment, and replay stops without deleting
//! anything. The one damage that cannot be told from a torn write is damage inside the very last
//! batch of the last segment. Segments of the first format (`SIDBWAL1`: frames without batches)
//! still replay, with every damage in the last segment taken as its tail.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Condvar;

use crate::lock::{Mutex, Rank};
use tokio::sync::watch;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SIDBWAL2";
/// The magic of the first format, frames without batch headers (still read).
const MAGIC_V1: &[u8; 8] = b"SIDBWAL1";
const FRAME_HEADER: usize = 8;
const BATCH_MAGIC: u32 = 0x5842_4453;
const BATCH_HEADER: usize = 16;
/// Largest payload a frame may carry (a frame length beyond it is corruption).
pub const MAX_FRAME: usize = 1 << 30;
/// Largest batch body (a sync of more is written as several batches; a batch's length is a u32).
const MAX_BATCH: usize = 1 << 31;

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
    /// Entries in `buf` (the group commit's size, for the metrics).
    entries: u64,
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
pub fn replay_segment(path: &Path, last: bool, f: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut data))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    replay_bytes(&data, &path.display().to_string(), last, f)
}

/// [`replay_segment`] over the bytes of a segment named `name` (in messages).
pub fn replay_bytes(
    data: &[u8],
    name: &str,
    last: bool,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
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
    let v1 = &data[..MAGIC.len()] == MAGIC_V1;
    if !v1 && &data[..MAGIC.len()] != MAGIC {
        return Err(Error::DataLoss(format!(
            "{name}: not a sidb log segment (bad magic)"
        )));
    }
    let mut off = MAGIC.len();
    while off < data.len() {
        let body = if v1 {
            Some(&data[off..])
        } else {
            batch_at(data, off)
        };
        let Some(body) = body else {
            if !last {
                return Err(Error::DataLoss(format!(
                    "{name}: damaged log batch at byte {off} in a closed segment"
                )));
            }
            if let Some(next) = next_batch(data, off + 1) {
                return Err(Error::DataLoss(format!(
                    "{name}: damaged log batch at byte {off}, followed by an intact one at byte \
                     {next}: the damaged batch was synced and acknowledged, so this is \
                     corruption, not a torn tail (the segment is left as it is)"
                )));
            }
            return Ok((data.len() - off) as u64);
        };
        let mut at = 0;
        while at < body.len() {
            match frame_at(body, at) {
                Some(payload) => {
                    f(payload)?;
                    at += FRAME_HEADER + payload.len();
                }
                // The first format has no batches: its damage ends the last segment.
                None if v1 && last => return Ok((body.len() - at) as u64),
                None => {
                    return Err(Error::DataLoss(format!(
                        "{name}: damaged log frame at byte {}",
                        off + at + if v1 { 0 } else { BATCH_HEADER }
                    )))
                }
            }
        }
        off += body.len() + if v1 { 0 } else { BATCH_HEADER };
    }
    Ok(0)
}

/// The body of the intact batch at `off`, or `None` when it is cut short or fails a checksum.
fn batch_at(data: &[u8], off: usize) -> Option<&[u8]> {
    let header = data.get(off..off + BATCH_HEADER)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != BATCH_MAGIC || crc32fast::hash(&header[..12]) != word(12) {
        return None;
    }
    let body = data.get(off + BATCH_HEADER..off + BATCH_HEADER + word(4) as usize)?;
    (crc32fast::hash(body) == word(8)).then_some(body)
}

/// The offset of the first intact batch at or after `from`. A random match needs the magic and
/// two checksums to agree by chance, about one in 2^64 per position.
fn next_batch(data: &[u8], from: usize) -> Option<usize> {
    let magic = BATCH_MAGIC.to_le_bytes();
    (from..data.len().saturating_sub(BATCH_HEADER - 1))
        .filter(|&p| data[p..p + 4] == magic)
        .find(|&p| batch_at(data, p).is_some())
}

/// `data` (whole frames) cut at frame boundaries into bodies of at most `max` bytes (or one
/// frame, if a frame is larger).
fn batches(data: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        while end < rest.len() {
            let len = u32::from_le_bytes(rest[end..end + 4].try_into().expect("4 bytes"));
            let next = end + FRAME_HEADER + len as usize;
            if next > max && end > 0 {
                break;
            }
            end = next;
        }
        let (body, tail) = rest.split_at(end);
        rest = tail;
        Some(body)
    })
}

/// The header of a batch whose body is `body`.
pub(crate) fn batch_header(body: &[u8]) -> [u8; BATCH_HEADER] {
    let mut h = [0u8; BATCH_HEADER];
    h[..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    let hc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&hc.to_le_bytes());
    h
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

/// The error of a log that stopped with `msg`: RESOURCE_EXHAUSTED when the disk was full
/// (ENOSPC), else INTERNAL. Either way the log takes no more writes until a restart: the
/// entries of the failed sync are applied to sled already, and a log that went on without
/// them would not replay (`storage::min_free_bytes` keeps writes from getting that far).
fn failure(what: &str, msg: &str) -> Error {
    let text = format!("{what}: {msg}; restart the server once the cause is fixed");
    if msg.contains("(os error 28)") {
        Error::ResourceExhausted(format!("disk full: {text}"))
    } else {
        Error::Internal(text)
    }
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
            pending: Mutex::new(
                Rank::Wal,
                "log buffer",
                Pending {
                    buf: Vec::with_capacity(1 << 20),
                    next_lsn: 0,
                    entries: 0,
                    urgent: false,
                    closing: false,
                    failed: None,
                    closed_segments: Vec::new(),
                    durable_lsn: 0,
                },
            ),
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
            thread: Mutex::new(Rank::Leaf, "log thread", Some(thread)),
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
            return Err(failure("the write-ahead log failed", e));
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
        p.entries += 1;
        p.urgent |= urgent;
        if urgent || was_empty {
            self.shared.wake.notify_one();
        }
        Ok(p.next_lsn)
    }

    /// Bytes appended and not yet handed to the sync thread.
    pub fn pending_bytes(&self) -> usize {
        self.shared.pending.lock().buf.len()
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
            Some(e) if state.lsn < lsn => Err(failure(
                "the write-ahead log failed before this write reached the disk",
                &e,
            )),
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
                return Err(failure("the write-ahead log failed", e));
            }
            p.wait(&self.shared.synced);
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
            return Err(failure("the write-ahead log failed", e));
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
                p.wait(&self.shared.wake);
                continue;
            }
            // Only buffered writes wait: give them the flush interval unless a durable one comes.
            let interval = self.shared.opts.flush_interval;
            if p.wait_for(&self.shared.wake, interval) {
                break;
            }
        }
        p.urgent = false;
        std::mem::swap(&mut p.buf, out);
        let (entries, lsn) = (std::mem::take(&mut p.entries), p.next_lsn);
        drop(p);
        crate::metrics::events()
            .wal_sync_entries
            .observe(entries as f64);
        Some(lsn)
    }

    fn write_and_sync(&mut self, data: &[u8]) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        for chunk in batches(data, MAX_BATCH) {
            self.file.write_all(&batch_header(chunk))?;
            self.file.write_all(chunk)?;
            self.size += (BATCH_HEADER + chunk.len()) as u64;
        }
        self.file.sync_data()?;
        let m = crate::metrics::events();
        m.wal_sync_seconds.observe(started.elapsed().as_secs_f64());
        m.wal_synced_bytes.inc_by(data.len() as u64);
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
mod tests;
