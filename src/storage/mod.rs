//! Persistent storage: sled for the data, our own write-ahead log for durability.
//!
//! Layout under the data directory (see docs/architecture.md for the key diagrams):
//! - `db/`: the sled database. Tree `catalog` maps collection name -> [`CatalogEntry`]; tree
//!   `sys` holds counters; tree `c/<id>` holds one collection (keyspaces in [`keys::tag`]).
//! - `wal/`: log segments `<id>.wal` (see [`wal`]).
//!
//! Write path: under the collection's writer lock, take the next sequence number, append the
//! [`ops::LogEntry`] to the WAL (in memory), apply it to sled in one atomic batch that also
//! stores the collection's applied sequence, release the lock; then, for DURABLE writes, wait for
//! the WAL sync covering the entry. The lock makes sequence order = log order = apply order.
//!
//! Recovery: open sled, load the catalogue, replay every WAL entry whose sequence is above its
//! collection's applied sequence, then checkpoint (flush sled, fsync its files, delete the
//! replayed segments) and start a new segment.
//!
//! Checkpoint: wait until every write appended before it has been applied (by taking each
//! writer lock once), `flush()` sled, fsync every file of sled's directory ourselves (sled's
//! flush only issues `sync_file_range`), then delete the closed segments.
//!
//! The storage layer knows no protobuf and no model.

pub mod codec;
pub mod keys;
pub mod models;
pub mod ops;
pub mod wal;
pub mod watermark;

mod reads;
mod recovery;
use recovery::*;

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod model_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lock::{Mutex, Rank, RwLock};

use crate::error::{echo, Error, Result};
use crate::types::{
    CollectionConfig, CollectionInfo, Durability, InteractionRecord, ItemRecord, UserRecord,
    WriteResult,
};
use codec::{Dec, Enc};
use keys::{tag, HistoryPos};
use ops::{LogEntry, Meta, WriteOp};
use wal::{Wal, WalOptions};
use watermark::{Mark, Watermark};

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// WAL tuning.
    pub wal: WalOptions,
    /// How often the background checkpoint runs.
    pub checkpoint_interval: Duration,
    /// How long [`Store::open`] waits for sled's file lock, which a process that is exiting
    /// (or a store dropped a moment ago, whose background I/O threads still hold the file)
    /// releases a little after it lets go. Past it, opening fails with `Unavailable`.
    pub lock_wait: Duration,
    /// Open even when sled is behind the watermark (logging what was lost) instead of failing
    /// with `DataLoss`; see [`watermark`].
    pub accept_data_loss: bool,
    /// Writes are refused with `ResourceExhausted`, before anything of them is logged, while the
    /// data directory's file system has less than this many bytes free beyond the write itself
    /// (0: no check). The reserve keeps sled's own writes and the checkpoints from meeting a
    /// full disk, where sled's state could no longer follow the log.
    pub min_free_bytes: u64,
}

/// The default of [`StoreOptions::lock_wait`].
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// One entity of [`Store::scan_entities`].
#[derive(Debug)]
pub enum Scanned {
    /// An item.
    Item(ItemRecord),
    /// A user.
    User(UserRecord),
}

/// A catalogue record: a collection's identity and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    /// Never-reused numeric id; names the sled tree and tags WAL entries.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Settings.
    pub config: CollectionConfig,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Active model version (0 = none).
    pub active_model_version: u64,
}

impl CatalogEntry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::versioned();
        e.u64(self.id);
        e.str(&self.name);
        codec::put_config(&mut e, &self.config);
        e.i64(self.created_ms);
        e.u64(self.active_model_version);
        e.buf
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self> {
        let mut d = Dec::versioned(buf, "catalogue entry")?;
        let entry = CatalogEntry {
            id: d.u64()?,
            name: d.str()?,
            config: codec::get_config(&mut d)?,
            created_ms: d.i64()?,
            active_model_version: d.u64()?,
        };
        d.finish()?;
        Ok(entry)
    }
}

/// One open collection.
pub struct Collection {
    /// Identity and settings.
    pub entry: CatalogEntry,
    tree: sled::Tree,
    /// Held while a write takes its sequence, logs and applies: see the module docs.
    writer: Mutex<Meta>,
    deleted: AtomicBool,
    /// Set when a logged write failed to apply: later writes would reuse its sequence number, so
    /// the collection takes no more writes until a restart replays the log.
    poisoned: AtomicBool,
    /// A sequence lock over what writes change: odd while a write applies (to the tree and, in
    /// its `applied` callback, to the caller's in-memory structures). See
    /// [`Store::read_consistent`].
    epoch: AtomicU64,
}

/// Optimistic tries of [`Store::read_consistent`] before it takes the writer lock.
pub const CONSISTENT_READ_TRIES: usize = 4;

/// Holds a collection's epoch odd while a write applies; even again when dropped, also when the
/// apply failed (the collection is poisoned then and takes no more writes).
struct Applying<'a>(&'a AtomicU64);

impl<'a> Applying<'a> {
    fn start(epoch: &'a AtomicU64) -> Self {
        epoch.fetch_add(1, Ordering::SeqCst);
        Applying(epoch)
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Collection {
    /// The collection's settings.
    pub fn config(&self) -> &CollectionConfig {
        &self.entry.config
    }

    /// Name, settings, counts.
    pub fn info(&self) -> CollectionInfo {
        let meta = *self.writer.lock();
        CollectionInfo {
            name: self.entry.name.clone(),
            config: self.entry.config.clone(),
            stats: meta.stats,
            active_model_version: meta.active_version,
            created_ms: self.entry.created_ms,
            index_pending: 0,
        }
    }

    /// True once a client wrote SIDs of its own (the collection's SIDs are client-managed).
    pub fn client_sids(&self) -> bool {
        self.writer.lock().client_sids
    }

    fn tree_name(id: u64) -> String {
        format!("c/{id}")
    }
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    catalog: sled::Tree,
    sys: sled::Tree,
    wal: Wal,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Serialises catalogue changes (create/delete) with each other and with checkpoints, and
    /// holds the watermark last written (see [`watermark`]).
    catalog_lock: Mutex<Watermark>,
    /// [`StoreOptions::min_free_bytes`].
    min_free_bytes: u64,
    closed: AtomicBool,
    /// Set by `close`; the checkpoint thread waits on it between runs.
    stop_checkpoints: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    /// The checkpoint thread, joined by `close` (a checkpoint in flight holds the store open).
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The storage engine. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

const NEXT_ID_KEY: &[u8] = b"next_collection_id";

impl Store {
    /// Opens (creating if needed) the store in `dir` and recovers it from the WAL.
    ///
    /// sled panics on some damaged files instead of returning an error; such a panic during
    /// the open and the recovery becomes `DataLoss` naming the database directory.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store> {
        let db_dir = dir.join("db");
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_inner(dir, opts)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                Err(Error::DataLoss(format!(
                    "{}: the database files are damaged (sled failed while opening them: {what})",
                    db_dir.display()
                )))
            })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a collection; the catalogue change is durable when this returns.
    pub fn create_collection(
        &self,
        name: &str,
        config: CollectionConfig,
        created_ms: i64,
    ) -> Result<CollectionInfo> {
        self.check_open()?;
        let mut wm = self.inner.catalog_lock.lock();
        if self.inner.collections.read().contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "collection {} already exists",
                echo(name)
            )));
        }
        let id = self.next_collection_id()?;
        let entry = CatalogEntry {
            id,
            name: name.to_string(),
            config,
            created_ms,
            active_model_version: 0,
        };
        let tree = self.inner.db.open_tree(Collection::tree_name(id))?;
        tree.insert(ops::META_KEY, Meta::default().encode())?;
        self.inner.catalog.insert(name.as_bytes(), entry.encode())?;
        self.sync_sled()?;
        // After the sync: sled may be ahead of the watermark, never behind it.
        wm.next_collection_id = id + 1;
        wm.marks.insert(
            id,
            Mark {
                name: name.to_string(),
                sequence: 0,
            },
        );
        wm.store(&self.inner.dir)?;
        let coll = Arc::new(Collection {
            entry,
            tree,
            writer: Mutex::new(Rank::Writer, "collection writer", Meta::default()),
            deleted: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        });
        let info = coll.info();
        self.inner
            .collections
            .write()
            .insert(name.to_string(), coll);
        Ok(info)
    }

    fn next_collection_id(&self) -> Result<u64> {
        let cur = read_next_id(&self.inner.sys)?;
        self.inner
            .sys
            .insert(NEXT_ID_KEY, &(cur + 1).to_le_bytes())?;
        Ok(cur)
    }

    /// Deletes a collection and all its data; durable when this returns.
    pub fn delete_collection(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let mut wm = self.inner.catalog_lock.lock();
        let coll = self.collection(name)?;
        // Wait for in-flight writes, and stop new ones from applying.
        let _w = coll.writer.lock();
        coll.deleted.store(true, Ordering::SeqCst);
        // Out of the watermark before the tree goes: a crash in between leaves sled ahead.
        if wm.marks.remove(&coll.entry.id).is_some() {
            wm.store(&self.inner.dir)?;
        }
        self.inner.catalog.remove(name.as_bytes())?;
        self.inner
            .db
            .drop_tree(Collection::tree_name(coll.entry.id))?;
        self.sync_sled()?;
        self.inner.collections.write().remove(name);
        Ok(())
    }

    /// A collection by name.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        self.inner
            .collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("collection {} not found", echo(name))))
    }

    /// Every collection, by name.
    pub fn list_collections(&self) -> Vec<CollectionInfo> {
        self.open_collections().iter().map(|c| c.info()).collect()
    }

    /// Every open collection, by name. The registry lock is released before this returns:
    /// callers take writer locks on what it gives them, which rank below it (src/lock.rs).
    pub fn open_collections(&self) -> Vec<Arc<Collection>> {
        self.inner.collections.read().values().cloned().collect()
    }

    /// Logs and applies one write. Returns the result and the WAL position to wait for; a DURABLE
    /// write is acknowledged only after [`Store::wait_durable`] on that position.
    pub fn write(
        &self,
        coll: &Collection,
        op: WriteOp,
        durability: Durability,
    ) -> Result<(WriteResult, u64)> {
        self.write_with(coll, op, durability, |_, _| {})
    }

    /// [`Store::write`], calling `applied(seq, op)` right after the write is applied, still under
    /// the collection's writer lock: in-memory structures kept in step with the store (indexes,
    /// the SID trie) see writes in exactly sequence order. `applied` must be quick and must not
    /// fail: the write is already logged and applied.
    pub fn write_with(
        &self,
        coll: &Collection,
        op: WriteOp,
        durability: Durability,
        applied: impl FnOnce(u64, &WriteOp),
    ) -> Result<(WriteResult, u64)> {
        self.write_prepared(coll, |_| Ok(op), durability, applied)
    }

    /// Like [`Store::write_with`], with the op made by `make` under the writer lock, from the
    /// collection's current [`Meta`]: what must be decided in sequence order (the SIDs of online
    /// assignment, an activation's catch-up) is decided there. An error from `make` writes
    /// nothing and consumes no sequence number.
    pub fn write_prepared(
        &self,
        coll: &Collection,
        make: impl FnOnce(&Meta) -> Result<WriteOp>,
        durability: Durability,
        applied: impl FnOnce(u64, &WriteOp),
    ) -> Result<(WriteResult, u64)> {
        self.check_open()?;
        let mut meta = coll.writer.lock();
        if coll.deleted.load(Ordering::SeqCst) {
            return Err(Error::NotFound(format!(
                "collection {:?} not found",
                coll.entry.name
            )));
        }
        if coll.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Internal(format!(
                "collection {:?} takes no writes after a failed write; restart the server",
                coll.entry.name
            )));
        }
        let op = make(&meta)?;
        let seq = meta.stats.last_sequence + 1;
        let entry = LogEntry {
            collection: coll.entry.id,
            seq,
            op,
        };
        let encoded = entry.encode();
        self.check_space(encoded.len())?;
        let lsn = self
            .inner
            .wal
            .append(&encoded, durability == Durability::Durable)?;
        let applying = Applying::start(&coll.epoch);
        let written = ops::apply(&coll.tree, &mut meta, seq, &entry.op).inspect_err(|e| {
            tracing::error!(collection = %coll.entry.name, error = %e, "logged write failed to apply");
            coll.poisoned.store(true, Ordering::SeqCst);
        })?;
        applied(seq, &entry.op);
        drop(applying);
        Ok((
            WriteResult {
                written,
                sequence: seq,
            },
            lsn,
        ))
    }

    /// Runs `read` so that it sees the collection between two writes, never in the middle of
    /// one: what it reads from the store and what it reads from structures kept in step by
    /// [`Store::write_with`]'s `applied` callback (the SID trie) then belong to the same
    /// sequence. Optimistic first: `read` runs without locks and is repeated when a write
    /// applied meanwhile; after [`CONSISTENT_READ_TRIES`] such tries it runs under the writer
    /// lock, so a steady stream of writes cannot starve it. `read` must have no side effects.
    pub fn read_consistent<T>(
        &self,
        coll: &Collection,
        mut read: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        for _ in 0..CONSISTENT_READ_TRIES {
            let before = coll.epoch.load(Ordering::SeqCst);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let got = read()?;
            if coll.epoch.load(Ordering::SeqCst) == before {
                return Ok(got);
            }
        }
        let _w = coll.writer.lock();
        read()
    }

    /// Bytes appended to the log and not yet synced.
    pub fn wal_pending_bytes(&self) -> usize {
        self.inner.wal.pending_bytes()
    }

    /// Waits until the WAL is on disk up to `lsn`.
    pub async fn wait_durable(&self, lsn: u64) -> Result<()> {
        self.inner.wal.wait_durable(lsn).await
    }

    /// Blocking form of [`Store::wait_durable`].
    pub fn wait_durable_blocking(&self, lsn: u64) -> Result<()> {
        self.inner.wal.wait_durable_blocking(lsn)
    }

    /// Makes everything applied so far durable in sled and deletes the WAL segments it covers.
    pub fn checkpoint(&self) -> Result<()> {
        let mut wm = self.inner.catalog_lock.lock();
        let closed = self.inner.wal.closed_segments();
        if closed.is_empty() {
            return Ok(());
        }
        self.checkpoint_segments(&mut wm, &closed)?;
        self.inner.wal.forget_segments(&closed);
        Ok(())
    }

    fn checkpoint_segments(&self, wm: &mut Watermark, segments: &[PathBuf]) -> Result<()> {
        // Every entry in `segments` was appended under some writer lock and is applied by the
        // time that lock is released: taking each lock once is the barrier. The sequences seen
        // there are applied, so sled holds them once the sync below returns.
        for coll in self.open_collections() {
            let seq = coll.writer.lock().stats.last_sequence;
            if let Some(mark) = wm.marks.get_mut(&coll.entry.id) {
                mark.sequence = mark.sequence.max(seq);
            }
        }
        self.sync_sled()?;
        // Recorded before the segments go: from here on, only the watermark remembers them.
        wm.store(&self.inner.dir)?;
        for path in segments {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        crate::fsutil::sync_dir(&self.inner.dir.join("wal"))
    }

    fn sync_sled(&self) -> Result<()> {
        self.inner.db.flush()?;
        crate::fsutil::sync_tree(&self.inner.dir.join("db"))
    }

    /// Refuses a write of `len` bytes while the disk has less than the reserve free beyond it.
    fn check_space(&self, len: usize) -> Result<()> {
        let reserve = self.inner.min_free_bytes;
        if reserve == 0 {
            return Ok(());
        }
        let free = crate::fsutil::free_bytes(&self.inner.dir)?;
        let needed = reserve.saturating_add(2 * len as u64);
        if free < needed {
            return Err(Error::ResourceExhausted(format!(
                "disk full: {free} bytes free under {}, and this write of {len} bytes needs \
                 {needed} (storage.min_free_bytes {reserve} plus twice the write); free some \
                 space and retry",
                self.inner.dir.display()
            )));
        }
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("server is shutting down".into()));
        }
        Ok(())
    }

    /// Stops writes, syncs the WAL, checkpoints everything and leaves an empty log: the next start
    /// replays nothing.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        {
            let (lock, cv) = &*self.inner.stop_checkpoints;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        // A checkpoint in flight holds a strong reference: wait for it, so that dropping the
        // store after `close` releases sled's file lock at once (a reopen right after works).
        if let Some(h) = self.inner.checkpointer.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let segments = self.inner.wal.close()?;
        let mut wm = self.inner.catalog_lock.lock();
        self.checkpoint_segments(&mut wm, &segments)
    }

    fn spawn_checkpointer(&self, every: Duration) -> Result<()> {
        // The thread holds only a weak reference while it sleeps, so dropping the last `Store`
        // releases sled (and its file lock) at once.
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop_checkpoints.clone();
        let handle = std::thread::Builder::new()
            .name("sidb-checkpoint".into())
            .spawn(move || loop {
                let (lock, cv) = &*stop;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = cv
                    .wait_timeout_while(stopped, every, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (Store { inner }).checkpoint() {
                    tracing::error!(error = %e, "checkpoint failed; the log keeps its segments");
                }
            })
            .map_err(|e| Error::io("starting the checkpoint thread", e))?;
        *self.inner.checkpointer.lock() = Some(handle);
        Ok(())
    }
}
