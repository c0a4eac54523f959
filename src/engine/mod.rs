//! The core facade that the gRPC service calls: validation, then storage, with all blocking work
//! moved off the async workers.
//!
//! The engine knows no protobuf: it takes the domain inputs of [`validate`] and returns domain
//! records. Every write validates the whole request first, so a rejected batch writes nothing.
//! Each collection has a [`index::CollectionIndex`] (ids, SID tries, vectors, graphs) that every
//! write updates under the collection's writer lock; [`retrieval`] answers queries from it.

pub mod index;
pub mod indexer;
pub mod models;
pub mod observe;
pub mod retrieval;
pub mod served;
pub mod training;
pub mod validate;

#[cfg(test)]
mod retrieval_tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, Limits, RetrievalConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::index::hnsw::HnswParams;
use crate::storage::keys::HistoryPos;
use crate::storage::ops::WriteOp;
use crate::storage::{Collection, Store};
use crate::types::{
    now_ms, CollectionConfig, CollectionInfo, Durability, InteractionRecord, ItemRecord,
    UserRecord, WriteResult,
};
use index::CollectionIndex;
use indexer::{Checkpoints, Indexes};
pub use retrieval::{
    PrefixStats, Query, RecommendInput, ScanPage, SearchHit, SearchInput, SidLookup,
};
use training::{TrainCtx, Trainers};
pub use validate::{ItemInput, UserInput};

/// Default page size of paged reads.
pub const DEFAULT_PAGE: usize = 100;

/// Entities found by a multi-get, and the ids that were not.
#[derive(Debug, Clone)]
pub struct Found<T> {
    /// The collection's settings (to name vectors by modality).
    pub config: CollectionConfig,
    /// Found entities, in request order.
    pub found: Vec<T>,
    /// Ids that do not exist.
    pub missing: Vec<String>,
}

/// The database engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    limits: Arc<Limits>,
    retrieval: Arc<RetrievalConfig>,
    training: Arc<TrainingConfig>,
    indexes: Arc<Indexes>,
    trainers: Arc<Trainers>,
}

impl Engine {
    /// Opens the data directory of `config`, recovers it and loads (or starts rebuilding) every
    /// collection's indexes. Blocking.
    pub fn open(config: &Config) -> Result<Engine> {
        let started = Instant::now();
        let store = Store::open(&config.storage.data_dir, config.storage.store_options())?;
        let recovered = started.elapsed();
        let r = config.retrieval.clone();
        let params = hnsw_params(&r);
        let colls = store.open_collections();
        let keep = config.training.keep_versions;
        let loaded = io_parallel(&colls, |coll| open_index(&store, coll, params, &r, keep));
        let mut map = HashMap::new();
        for (coll, index) in colls.iter().zip(loaded) {
            map.insert(coll.entry.id, Arc::new(index?));
        }
        let checkpoints = Checkpoints {
            data_dir: store.dir().to_path_buf(),
            interval: Duration::from_secs(r.graph_checkpoint_secs),
            inserts: r.graph_checkpoint_inserts,
        };
        let indexes = Indexes::start(
            map,
            r.index_threads,
            r.index_batch,
            r.hnsw_target_recall,
            checkpoints,
        )?;
        let retrieval = Arc::new(r);
        let training = Arc::new(config.training.clone());
        let trainers = Trainers::start(TrainCtx {
            activity: Arc::default(),
            store: store.clone(),
            indexes: Arc::clone(&indexes),
            retrieval: Arc::clone(&retrieval),
            training: Arc::clone(&training),
            data_dir: store.dir().to_path_buf(),
        })?;
        tracing::info!(
            recovery_ms = recovered.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "engine ready"
        );
        Ok(Engine {
            store,
            limits: Arc::new(config.limits.clone()),
            retrieval,
            training,
            indexes,
            trainers,
        })
    }

    /// Runs blocking work on tokio's blocking pool; a panic there becomes an internal error.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| Error::Internal(format!("worker task failed: {e}")))?
    }

    /// Creates a collection.
    pub async fn create_collection(
        &self,
        name: String,
        config: CollectionConfig,
    ) -> Result<CollectionInfo> {
        validate::collection_name("name", &name)?;
        let config = validate::collection_config(config)?;
        self.blocking(move |e| {
            let info = e.store.create_collection(&name, config, now_ms())?;
            let coll = e.store.collection(&name)?;
            let params = hnsw_params(&e.retrieval);
            e.indexes
                .insert(CollectionIndex::empty(coll.entry.id, coll.config(), params));
            Ok(info)
        })
        .await
    }

    /// A collection's settings and counts.
    pub fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        let coll = self.store.collection(name)?;
        Ok(self.with_index_progress(coll.info(), coll.entry.id))
    }

    /// All collections, by name.
    pub fn list_collections(&self) -> Vec<CollectionInfo> {
        self.store
            .list_collections()
            .into_iter()
            .map(|info| match self.store.collection(&info.name) {
                Ok(coll) => self.with_index_progress(info, coll.entry.id),
                Err(_) => info,
            })
            .collect()
    }

    fn with_index_progress(&self, mut info: CollectionInfo, coll_id: u64) -> CollectionInfo {
        if let Ok(index) = self.indexes.get(coll_id) {
            info.index_pending = index.pending() as u64;
        }
        info
    }

    /// Deletes a collection and its data.
    pub async fn delete_collection(&self, name: String) -> Result<()> {
        self.blocking(move |e| {
            let id = e.store.collection(&name)?.entry.id;
            e.trainers.remove(id);
            e.store.delete_collection(&name)?;
            let index = e.indexes.get(id).ok();
            e.indexes.remove(id);
            crate::fsutil::remove_dir_if_present(&served::collection_models_dir(
                e.store.dir(),
                id,
            ))?;
            // after a checkpoint in progress, and none after
            match index {
                Some(index) => index.retire(&index_dir(e.store.dir(), id)),
                None => crate::fsutil::remove_dir_if_present(&index_dir(e.store.dir(), id)),
            }
        })
        .await
    }

    /// Validates, logs and applies one write; waits for the disk when DURABLE.
    async fn write(
        &self,
        collection: &str,
        durability: Durability,
        build: impl FnOnce(&CollectionConfig, &Limits) -> Result<WriteOp> + Send + 'static,
    ) -> Result<WriteResult> {
        let coll = self.store.collection(collection)?;
        let index = self.indexes.get(coll.entry.id)?;
        let (result, lsn) = self
            .blocking(move |e| {
                let op = build(coll.config(), &e.limits)?;
                // Online assignment: encoded here, in parallel with other writers; the SIDs'
                // suffixes are decided under the writer lock, in sequence order.
                let pre = models::encode_upsert(&e.store, &coll, &index, &e.retrieval, &op)?;
                let written = e.store.write_prepared(
                    &coll,
                    |meta| models::assign(&e.store, &coll, &index, meta, &e.retrieval, op, pre),
                    durability,
                    |seq, op| index.apply(seq, op),
                )?;
                e.indexes.notify();
                Ok(written)
            })
            .await?;
        if durability == Durability::Durable {
            self.store.wait_durable(lsn).await?;
        }
        Ok(result)
    }

    /// Inserts or replaces items (atomically).
    pub async fn upsert_items(
        &self,
        collection: &str,
        items: Vec<ItemInput>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |c, l| {
            validate::items(c, l, items).map(WriteOp::UpsertItems)
        })
        .await
    }

    /// Deletes items; missing ids are ignored.
    pub async fn delete_items(
        &self,
        collection: &str,
        ids: Vec<String>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |_, l| {
            validate::ids("ids", &ids, l)?;
            Ok(WriteOp::DeleteItems(ids))
        })
        .await
    }

    /// Inserts or replaces users (atomically).
    pub async fn upsert_users(
        &self,
        collection: &str,
        users: Vec<UserInput>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |c, l| {
            validate::users(c, l, users).map(WriteOp::UpsertUsers)
        })
        .await
    }

    /// Deletes users; missing ids are ignored.
    pub async fn delete_users(
        &self,
        collection: &str,
        ids: Vec<String>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |_, l| {
            validate::ids("ids", &ids, l)?;
            Ok(WriteOp::DeleteUsers(ids))
        })
        .await
    }

    /// Appends interactions (atomically).
    pub async fn write_interactions(
        &self,
        collection: &str,
        xs: Vec<InteractionRecord>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |_, l| {
            validate::interactions(l, xs, now_ms()).map(WriteOp::Interactions)
        })
        .await
    }

    /// Items by id; vectors only when asked for.
    pub async fn get_items(
        &self,
        collection: &str,
        ids: Vec<String>,
        with_vectors: bool,
    ) -> Result<Found<ItemRecord>> {
        validate::ids("ids", &ids, &self.limits)?;
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let index = e.indexes.get(coll.entry.id)?;
            // Records and SIDs of one sequence: never a record of one write with the SID of
            // another, nor SIDs of two versions across an activation. The SID served is the
            // active version's (or the client's when no model is active).
            let mut got = e.store.read_consistent(&coll, || {
                let mut got = e.store.get_items(&coll, &ids)?;
                let st = index.state.read();
                for x in got.iter_mut().flatten() {
                    x.sid = st.items.trie.get(&x.id).cloned();
                }
                drop(st);
                Ok(got)
            })?;
            if !with_vectors {
                got.iter_mut().flatten().for_each(|x| x.vectors.clear());
            }
            Ok(split(coll.config(), ids, got))
        })
        .await
    }

    /// Users by id; vectors only when asked for.
    pub async fn get_users(
        &self,
        collection: &str,
        ids: Vec<String>,
        with_vectors: bool,
    ) -> Result<Found<UserRecord>> {
        validate::ids("ids", &ids, &self.limits)?;
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let index = e.indexes.get(coll.entry.id)?;
            // As in `get_items`: records and SIDs of one sequence.
            let mut got = e.store.read_consistent(&coll, || {
                let mut got = e.store.get_users(&coll, &ids)?;
                let st = index.state.read();
                for x in got.iter_mut().flatten() {
                    x.sid = st.users.trie.get(&x.id).cloned();
                }
                drop(st);
                Ok(got)
            })?;
            if !with_vectors {
                got.iter_mut().flatten().for_each(|x| x.vector = None);
            }
            Ok(split(coll.config(), ids, got))
        })
        .await
    }

    /// One page of a user's history, newest first, and the token of the next page ("" = none).
    pub async fn user_history(
        &self,
        collection: &str,
        user_id: String,
        limit: u32,
        page_token: &str,
    ) -> Result<(Vec<InteractionRecord>, String)> {
        validate::id("user_id", &user_id)?;
        let limit = validate::page_limit("limit", limit, DEFAULT_PAGE, &self.limits)?;
        let before = decode_history_token(page_token)?;
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let (page, next) = e.store.user_history(&coll, &user_id, limit, before)?;
            Ok((page, next.map(encode_history_token).unwrap_or_default()))
        })
        .await
    }

    /// The collection handle, for layers above that need it.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        self.store.collection(name)
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Flushes everything, stops taking writes and dumps the indexes for a quick restart.
    /// Blocking.
    pub fn close(&self) -> Result<()> {
        self.trainers.stop();
        self.store.close()?;
        self.indexes.stop();
        io_parallel(&self.indexes.all(), |index| {
            let t = Instant::now();
            let dir = index_dir(self.store.dir(), index.coll_id);
            // A failed dump only costs a rebuild at the next start.
            match index.dump(&dir) {
                Ok(_) => tracing::info!(
                    collection = index.coll_id,
                    ms = t.elapsed().as_millis() as u64,
                    "index dumped"
                ),
                Err(e) => {
                    tracing::warn!(collection = index.coll_id, error = %e, "index dump failed; the next start rebuilds it")
                }
            }
        });
        Ok(())
    }

    /// Waits until every graph holds every point and no rebuild is due; false on timeout. For
    /// tests and benchmarks that want to measure the graph path alone.
    pub fn wait_indexed(&self, timeout: std::time::Duration) -> bool {
        self.indexes.wait_idle(timeout)
    }
}

/// Loads (or starts rebuilding) the retrieval index of one collection. Blocking.
fn open_index(
    store: &Store,
    coll: &Collection,
    params: HnswParams,
    r: &RetrievalConfig,
    keep_versions: usize,
) -> Result<CollectionIndex> {
    let info = coll.info();
    let dir = index_dir(store.dir(), coll.entry.id);
    let t = Instant::now();
    models::drop_aborted(store, coll, store.dir())?;
    models::prune_versions(store, coll, store.dir(), keep_versions)?;
    let index = CollectionIndex::open(store, coll, params, &dir, r.hnsw_target_recall)?;
    let active = store.active_version(coll);
    if active > 0 {
        // Without its checkpoint the version's SIDs still serve; only online assignment
        // (and warm starts) stop until the next training publishes a version.
        match served::load_model(store.dir(), coll.entry.id, active) {
            Ok(m) => {
                index.bind_model_items(&m);
                index.model.store(Some(Arc::new(m)));
            }
            Err(e) => {
                tracing::error!(collection = %info.name, version = active, error = %e, "active model not loadable; new entities get no SID until the next training")
            }
        }
    }
    let pending = index.pending();
    tracing::info!(
        collection = %info.name,
        items = info.stats.items,
        users = info.stats.users,
        pending,
        ms = t.elapsed().as_millis() as u64,
        "indexes loaded"
    );
    Ok(index)
}

/// Threads for per-collection disk work at start and shutdown (index dumps and loads): their
/// time is mostly fsync and read latency, which overlaps across collections even on 2 cores.
const IO_THREADS: usize = 4;

/// `f` of every element of `xs` on up to [`IO_THREADS`] threads, results in the order of `xs`.
/// A panic in `f` is resumed on the calling thread.
fn io_parallel<T: Sync, R: Send>(xs: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let work = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(x) = xs.get(i) else { return mine };
            mine.push((i, f(x)));
        }
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..IO_THREADS.min(xs.len()))
            .map(|_| scope.spawn(work))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// The graph parameters of the configuration.
fn hnsw_params(r: &RetrievalConfig) -> HnswParams {
    HnswParams {
        m: r.hnsw_m,
        ef_construction: r.hnsw_ef_construction,
        rebuild_tombstone_ratio: r.rebuild_tombstone_ratio,
        ..HnswParams::default()
    }
}

/// Where a collection's index dump lives: `<data dir>/index/<collection id>`.
fn index_dir(data_dir: &std::path::Path, coll_id: u64) -> PathBuf {
    data_dir.join("index").join(coll_id.to_string())
}

fn split<T>(config: &CollectionConfig, ids: Vec<String>, got: Vec<Option<T>>) -> Found<T> {
    let mut found = Vec::with_capacity(got.len());
    let mut missing = Vec::new();
    for (id, x) in ids.into_iter().zip(got) {
        match x {
            Some(x) => found.push(x),
            None => missing.push(id),
        }
    }
    Found {
        config: config.clone(),
        found,
        missing,
    }
}

const HISTORY_TOKEN_TAG: &str = "h1.";

/// Page tokens are opaque to clients: a version tag and the hex of the last position returned.
pub(crate) fn encode_history_token(pos: HistoryPos) -> String {
    let mut raw = Vec::with_capacity(20);
    pos.append_to(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HISTORY_TOKEN_TAG}{hex}")
}

pub(crate) fn decode_history_token(token: &str) -> Result<Option<HistoryPos>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(format!(
            "page_token: {} is malformed; pass back the next_page_token of the previous page",
            crate::error::echo(token)
        ))
    };
    let hex = token.strip_prefix(HISTORY_TOKEN_TAG).ok_or_else(bad)?;
    // `from_str_radix` alone would take "+f" as a digit pair.
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let raw = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    HistoryPos::read(&raw).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_tokens_roundtrip_and_reject_garbage() {
        let pos = HistoryPos {
            timestamp_ms: -3,
            seq: 77,
            index: 2,
        };
        let t = encode_history_token(pos);
        assert_eq!(decode_history_token(&t).unwrap(), Some(pos));
        assert_eq!(decode_history_token("").unwrap(), None);
        for bad in [
            "x",
            "h1.zz",
            &t[..t.len() - 1],
            "h1.é000000000000000000000000000000000000000",
            // Regression: u8::from_str_radix accepted "+f" as a hex pair.
            &format!("h1.+{}", &t[4..]),
        ] {
            assert!(
                matches!(decode_history_token(bad), Err(Error::InvalidArgument(m)) if m.starts_with("page_token"))
            );
        }
    }
}
