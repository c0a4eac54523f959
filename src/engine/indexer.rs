//! The collections' retrieval indexes, and the background thread that keeps their graphs up to
//! date.
//!
//! Writers mark points pending (see [`super::index`]) and [`Indexes::notify`] the indexer; the
//! indexer takes one batch per vector space per round, round-robin over collections, so a bulk
//! load into one collection does not starve the others. Graph inserts run in a dedicated rayon
//! pool of `retrieval.index_threads` threads, which leaves the other cores to serving. Rebuilds of
//! graphs with too many tombstones run on the same thread, between batches, and so do the
//! graph checkpoints ([`Checkpoints`]): a collection whose graphs took inserts is dumped to its
//! index directory every `retrieval.graph_checkpoint_secs` (sooner after
//! `graph_checkpoint_inserts` inserts), so a restart after a crash loads that dump and inserts
//! only what was written after it.
//!
//! The thread holds only a weak reference to [`Indexes`] while it waits, so dropping the engine
//! stops it; [`Indexes::stop`] stops it and waits for the round in progress.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex as StdMutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lock::{Mutex, Rank, RwLock};

use super::index::CollectionIndex;
use crate::error::{Error, Result};

/// How long the indexer sleeps when nobody notifies it (it then looks for work anyway).
const IDLE_WAKE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Signal {
    /// (work may be waiting, stop requested)
    state: StdMutex<(bool, bool)>,
    cv: Condvar,
}

impl Signal {
    fn set(&self, work: bool, stop: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 |= work;
        s.1 |= stop;
        self.cv.notify_all();
    }

    /// Waits for work or stop (or the idle timeout); returns true when stop was requested.
    fn wait(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut s, _) = self
            .cv
            .wait_timeout_while(s, IDLE_WAKE, |s| !s.0 && !s.1)
            .unwrap_or_else(|e| e.into_inner());
        s.0 = false;
        s.1
    }

    fn stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// When the indexer checkpoints a collection's graphs, and where.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// The data directory: a collection's dump lives in `index/<collection id>/` under it.
    pub data_dir: PathBuf,
    /// A collection with inserts since its last dump is dumped this long after it (zero: never
    /// while serving).
    pub interval: Duration,
    /// ... or once it took this many inserts (0: by time only).
    pub inserts: u64,
}

impl Checkpoints {
    /// No checkpoints while serving (the dump of a clean shutdown only).
    pub fn off(data_dir: PathBuf) -> Checkpoints {
        Checkpoints {
            data_dir,
            interval: Duration::ZERO,
            inserts: 0,
        }
    }

    /// Where the dump of collection `coll_id` lives.
    pub fn dir(&self, coll_id: u64) -> PathBuf {
        super::index_dir(&self.data_dir, coll_id)
    }

    /// Dumps `coll` when it is due: inserts since its last dump, and `interval` passed since
    /// `last` (or `inserts` reached); or, at once, a calibration measured since its last dump.
    /// `last` is then set to now.
    fn run_if_due(&self, coll: &CollectionIndex, last: &mut Instant) {
        if self.interval.is_zero() {
            return;
        }
        let n = coll.inserted_since_dump();
        let by_time = last.elapsed() >= self.interval;
        let by_count = self.inserts > 0 && n >= self.inserts;
        if !(n > 0 && (by_time || by_count)) && !coll.calibrated_since_dump() {
            return;
        }
        let t = Instant::now();
        match coll.dump(&self.dir(coll.coll_id)) {
            Ok(Some(seq)) => {
                coll.dumped(n);
                tracing::info!(
                    collection = coll.coll_id,
                    seq,
                    inserts = n,
                    ms = t.elapsed().as_millis() as u64,
                    "graph checkpoint written"
                );
            }
            // deleted meanwhile
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(collection = coll.coll_id, error = %e, "graph checkpoint failed; the previous one stays, and a restart inserts more")
            }
        }
        *last = Instant::now();
    }
}

/// Every collection's [`CollectionIndex`], by collection id, and their indexer.
pub struct Indexes {
    map: RwLock<HashMap<u64, Arc<CollectionIndex>>>,
    signal: Arc<Signal>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Indexes {
    /// Starts the indexer over `initial` with `threads` insert threads and `batch` points per
    /// round; once idle it calibrates each graph's default `ef` to `target_recall` (0 = off). It
    /// checkpoints the graphs as `checkpoints` says.
    pub fn start(
        initial: HashMap<u64, Arc<CollectionIndex>>,
        threads: usize,
        batch: usize,
        target_recall: f64,
        checkpoints: Checkpoints,
    ) -> Result<Arc<Indexes>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("sidb-index-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("starting the index threads: {e}")))?;
        let indexes = Arc::new(Indexes {
            map: RwLock::new(Rank::Registry, "indexes", initial),
            signal: Arc::new(Signal::default()),
            worker: Mutex::new(Rank::Leaf, "indexer thread", None),
        });
        let weak = Arc::downgrade(&indexes);
        let signal = Arc::clone(&indexes.signal);
        let handle = std::thread::Builder::new()
            .name("sidb-indexer".into())
            .spawn(move || run(weak, signal, pool, batch.max(1), target_recall, checkpoints))
            .map_err(|e| Error::io("starting the indexer thread", e))?;
        *indexes.worker.lock() = Some(handle);
        // Points restored as pending (no usable dump) are waiting already.
        indexes.notify();
        Ok(indexes)
    }

    /// The index of a collection.
    pub fn get(&self, coll_id: u64) -> Result<Arc<CollectionIndex>> {
        self.map
            .read()
            .get(&coll_id)
            .cloned()
            // Gone with its collection: a request that found the collection a moment before
            // raced its deletion.
            .ok_or_else(|| Error::NotFound(format!("collection {coll_id} not found (deleted)")))
    }

    /// Registers the index of a new collection.
    pub fn insert(&self, index: CollectionIndex) {
        self.map.write().insert(index.coll_id, Arc::new(index));
    }

    /// Forgets a deleted collection's index.
    pub fn remove(&self, coll_id: u64) {
        self.map.write().remove(&coll_id);
    }

    /// Every index.
    pub fn all(&self) -> Vec<Arc<CollectionIndex>> {
        self.map.read().values().cloned().collect()
    }

    /// Tells the indexer that points may be pending.
    pub fn notify(&self) {
        self.signal.set(true, false);
    }

    /// Stops the indexer and waits for the round in progress.
    pub fn stop(&self) {
        self.signal.set(false, true);
        if let Some(h) = self.worker.lock().take() {
            if h.join().is_err() {
                tracing::error!("the indexer thread panicked");
            }
        }
    }

    /// Waits until no collection has pending points or a rebuild due (tests and benchmarks).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if self.all().iter().all(|c| !c.has_work()) {
                return true;
            }
            self.notify();
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Indexes {
    fn drop(&mut self) {
        self.signal.set(false, true);
    }
}

fn run(
    indexes: Weak<Indexes>,
    signal: Arc<Signal>,
    pool: rayon::ThreadPool,
    batch: usize,
    target_recall: f64,
    checkpoints: Checkpoints,
) {
    // the crash tests look at what a restart loaded before the indexer touches it
    super::models::pause_point("indexer");
    // when each collection was last dumped (or first seen)
    let mut last: HashMap<u64, Instant> = HashMap::new();
    // collections that took inserts since they were last caught up
    let mut busy: std::collections::HashSet<u64> = std::collections::HashSet::new();
    loop {
        if signal.wait() {
            return;
        }
        // Rounds until a whole round finds nothing to do.
        loop {
            let Some(all) = indexes.upgrade().map(|x| x.all()) else {
                return;
            };
            let mut progress = false;
            for coll in all {
                for space in coll.space_ids() {
                    if signal.stopped() {
                        return;
                    }
                    match pool.install(|| coll.rebuild_if_needed(space)) {
                        Ok(rebuilt) => progress |= rebuilt,
                        Err(e) => {
                            tracing::error!(collection = coll.coll_id, ?space, error = %e, "index rebuild failed")
                        }
                    }
                    match pool.install(|| coll.index_pending(space, batch)) {
                        Ok(n) => {
                            if n > 0 {
                                progress = true;
                                busy.insert(coll.coll_id);
                            }
                        }
                        Err(e) => {
                            tracing::error!(collection = coll.coll_id, ?space, error = %e, "indexing failed; the points stay pending (searched exactly)")
                        }
                    }
                }
                let seen = last.entry(coll.coll_id).or_insert_with(Instant::now);
                checkpoints.run_if_due(&coll, seen);
            }
            if !progress {
                for id in busy.drain() {
                    tracing::info!(collection = id, "graphs caught up: every point indexed");
                }
                // caught up: (re)calibrate the graphs that are due, then wait for work
                for coll in indexes.upgrade().map(|x| x.all()).unwrap_or_default() {
                    for space in coll.space_ids() {
                        if signal.stopped() {
                            return;
                        }
                        let stop = || signal.stopped();
                        if let Err(e) =
                            pool.install(|| coll.calibrate_if_due(space, target_recall, &stop))
                        {
                            tracing::error!(collection = coll.coll_id, ?space, error = %e, "ef calibration failed; the configured ef stays");
                        }
                    }
                    let seen = last.entry(coll.coll_id).or_insert_with(Instant::now);
                    checkpoints.run_if_due(&coll, seen);
                }
                if let Some(x) = indexes.upgrade() {
                    last.retain(|id, _| x.get(*id).is_ok());
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that found its collection a moment before its deletion removed the index is
    /// told NOT_FOUND, not INTERNAL (found by the gRPC fuzz client: UpsertItemsStream racing
    /// DeleteCollection).
    #[test]
    fn the_index_of_a_deleted_collection_is_not_found() {
        let off = Checkpoints::off(std::env::temp_dir());
        let indexes = Indexes::start(HashMap::new(), 1, 16, 0.0, off).expect("start");
        match indexes.get(7) {
            Err(Error::NotFound(m)) => assert!(m.contains("not found"), "{m}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("an index out of nothing"),
        }
        indexes.stop();
    }
}
