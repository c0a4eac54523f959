//! The in-memory retrieval structures of one collection, kept in step with its writes.
//!
//! # What a collection holds in memory
//! - Per entity kind, [`Entities`]: the dense *point id* of every entity (the handle the vector
//!   indexes use) and the [`SidTrie`] of the entities that have a SID.
//! - Per vector space (each item modality, and the users' own vectors when `user_dim > 0`), a
//!   [`Space`]: an exact [`FlatIndex`] holding every live vector, an [`HnswIndex`], and the
//!   *pending* set: points whose newest vector is not in the graph yet.
//!
//! # Writes: synchronous for the exact parts, background for the graph
//! [`CollectionIndex::apply`] runs under the collection's writer lock, right after the store
//! applied the write (see `Store::write_with`), so it sees writes in sequence order. It updates
//! the ids, the trie and the flat vectors at once (microseconds), removes deleted points from the
//! graph (a tombstone, cheap) and marks upserted points pending. The slow part, inserting into
//! the HNSW graph, is done by the background indexer ([`super::indexer`]) in batches. A search
//! therefore sees every acknowledged write: graph hits of pending points are dropped (the graph
//! may hold an older vector of them) and the pending points are scored exactly from the flat
//! vectors. Ingest is never slowed to graph-insert speed; while a bulk load is being indexed,
//! searches get slower (the pending scan), never wrong.
//!
//! # Start-up and the dump
//! [`CollectionIndex::open`] rebuilds ids, trie and flat vectors from a scan of the store. The
//! graphs come from the last dump ([`CollectionIndex::dump`]: a checkpoint the indexer writes
//! while serving, or the dump of a clean shutdown) when its checksums and stamps (metric,
//! dimensions, one write sequence for all its files) hold, reconciled with the scan: graph
//! points of entities deleted since are removed, and every stored vector the graph does not
//! hold exactly (written since, or pending at the dump) starts pending. Without a usable dump
//! (none, or a damaged one) every point starts pending. Either way the indexer inserts the
//! pending points in the background while searches are answered exactly for them: a stale
//! graph entry is never served.
//!
//! Lock order: the store's writer lock, then [`CollectionIndex::state`]; a dump takes its own
//! lock (rank `IndexDump`) before the state. Nothing here does network I/O; disk I/O only in
//! [`CollectionIndex::open`], [`CollectionIndex::dump`] and [`CollectionIndex::retire`].

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::lock::{Mutex, Rank, RwLock};
use arc_swap::ArcSwapOption;

mod apply;
mod calibration;
mod persist;

use apply::apply_op;
pub use apply::load_version_sids;
pub use calibration::{CALIBRATE_MIN_POINTS, CALIBRATE_QUERIES};
#[cfg(test)]
mod tests;

use super::served::{LoadedModel, VersionNeighbours};
use crate::model::neighbours::ItemNeighbours;

use crate::error::{Error, Result};
use crate::fsutil::{remove_dir_if_present, replace_dir, sibling, write_synced};
use crate::index::calibrate::{calibrate, Calibration, QuerySample, EF_LADDER};
use crate::index::flat::FlatIndex;
use crate::index::hnsw::{DumpStamp, FrozenGraph, HnswIndex, HnswParams};
use crate::index::{Hit, PointId, PointMap};
use crate::storage::codec::{Dec, Enc, RECORD_VERSION};
use crate::storage::models::ModelSid;
use crate::storage::ops::{SidUpdate, WriteOp};
use crate::storage::{Collection, Scanned, Store};
use crate::trie::SidTrie;
use crate::types::{CollectionConfig, EntityKind, Metric, SemanticId};

/// One vector space of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpaceId {
    /// The items' vectors of modality `i` (in declaration order).
    Item(usize),
    /// The users' own vectors.
    User,
}

impl SpaceId {
    /// The entity kind whose vectors live in this space.
    pub fn kind(self) -> EntityKind {
        match self {
            SpaceId::Item(_) => EntityKind::Items,
            SpaceId::User => EntityKind::Users,
        }
    }

    fn dir_name(self) -> String {
        match self {
            SpaceId::Item(i) => format!("item-{i}"),
            SpaceId::User => "user".into(),
        }
    }
}

/// Entity ids and point ids of one kind, and the SIDs of those that have one.
#[derive(Debug, Default)]
pub struct Entities {
    by_id: HashMap<Arc<str>, PointId>,
    by_point: PointMap<Arc<str>>,
    /// SIDs of the entities that have one.
    pub trie: SidTrie,
    /// With an active model version: each entity's quantized embedding `z` and, for users, the
    /// item-code route Recommend searches under.
    pub model: PointMap<ModelEntry>,
}

/// What the active model gave one entity besides its SID.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// Quantized embedding.
    pub z: Box<[f32]>,
    /// Users: item codes of the route (empty for items).
    pub route: Box<[u32]>,
}

/// The SID state of one model version: both kinds' tries and model entries, keyed by id (point
/// ids are bound when it is installed).
#[derive(Debug, Default)]
pub struct VersionSids {
    /// The version.
    pub version: u64,
    /// Items: id -> SID.
    pub items: HashMap<Arc<str>, ModelSid>,
    /// Users: id -> SID.
    pub users: HashMap<Arc<str>, ModelSid>,
}

impl VersionSids {
    /// The map of a kind.
    pub fn of(&self, kind: EntityKind) -> &HashMap<Arc<str>, ModelSid> {
        match kind {
            EntityKind::Items => &self.items,
            EntityKind::Users => &self.users,
        }
    }

    /// The map of a kind, mutable.
    pub fn of_mut(&mut self, kind: EntityKind) -> &mut HashMap<Arc<str>, ModelSid> {
        match kind {
            EntityKind::Items => &mut self.items,
            EntityKind::Users => &mut self.users,
        }
    }
}

impl Entities {
    /// The point of an entity.
    pub fn point(&self, id: &str) -> Option<PointId> {
        self.by_id.get(id).copied()
    }

    /// The entity of a point.
    pub fn id(&self, point: PointId) -> Option<&Arc<str>> {
        self.by_point.get(&point)
    }

    /// The SID of the entity behind a point.
    pub fn sid_of_point(&self, point: PointId) -> Option<&SemanticId> {
        self.trie.get(self.by_point.get(&point)?)
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn bind(&mut self, id: &str, point: PointId) {
        let id: Arc<str> = Arc::from(id);
        self.by_point.insert(point, Arc::clone(&id));
        self.by_id.insert(id, point);
    }

    fn unbind(&mut self, id: &str) -> Option<PointId> {
        let point = self.by_id.remove(id)?;
        self.by_point.remove(&point);
        Some(point)
    }

    /// Sets (or clears) the client SID of `id`, bound to `point`.
    fn set_sid(&mut self, id: &str, point: PointId, sid: Option<&SemanticId>) {
        match sid {
            Some(s) => {
                self.trie.insert_tagged(id, s.clone(), point);
            }
            None => {
                self.trie.remove(id);
            }
        }
    }

    /// Sets (or clears) an entity's model SID of `version`, with its model entry.
    fn set_model_sid(&mut self, id: &str, version: u64, sid: Option<&ModelSid>) {
        let point = self.point(id);
        match (sid, point) {
            (Some(s), Some(p)) => {
                self.trie.insert_tagged(id, s.semantic_id(version), p);
                self.model.insert(
                    p,
                    ModelEntry {
                        z: s.z.clone().into(),
                        route: s.route.clone().into(),
                    },
                );
            }
            (_, p) => {
                self.trie.remove(id);
                if let Some(p) = p {
                    self.model.remove(&p);
                }
            }
        }
    }

    /// Replaces every SID by those of `sids` (entities without one there get none).
    fn install(&mut self, version: u64, sids: &HashMap<Arc<str>, ModelSid>) {
        self.model.clear();
        let mut entries = Vec::with_capacity(sids.len());
        for (id, s) in sids {
            let Some(p) = self.point(id) else { continue };
            entries.push((Arc::clone(id), s.semantic_id(version), p));
            self.model.insert(
                p,
                ModelEntry {
                    z: s.z.clone().into(),
                    route: s.route.clone().into(),
                },
            );
        }
        self.trie = SidTrie::from_tagged(entries);
    }
}

/// One vector space: every live vector exactly, and the graph over (most of) them.
#[derive(Debug)]
pub struct Space {
    /// Every live vector (prepared for the metric): the exact path and the source of truth.
    pub flat: FlatIndex,
    /// The approximate index. May lag behind `flat` by the pending points, and may hold older
    /// vectors of pending points; never a deleted one.
    pub hnsw: Arc<HnswIndex>,
    /// Points whose newest vector is not in `hnsw` yet -> the write sequence of that vector.
    pub pending: HashMap<PointId, u64>,
    /// The last recall calibration of the graph (see [`CollectionIndex::calibrate_if_due`]).
    pub calibration: Option<Calibration>,
    /// Graph size at that calibration (0 = never calibrated).
    pub calibrated_len: usize,
}

impl Space {
    fn new(config: &CollectionConfig, dim: usize, params: HnswParams) -> Space {
        Space {
            flat: FlatIndex::new(config.metric, dim),
            hnsw: Arc::new(HnswIndex::new(config.metric, dim, params, 0)),
            pending: HashMap::new(),
            calibration: None,
            calibrated_len: 0,
        }
    }

    fn upsert(&mut self, point: PointId, v: &[f32], seq: u64) {
        // Validation ran before the write was logged (dimension, finite, non-zero under cosine),
        // so this cannot fail; if it ever did, the point would silently go missing from search.
        if let Err(e) = self.flat.upsert(point, v) {
            tracing::error!(point, error = %e, "validated vector refused by the index");
            return;
        }
        self.pending.insert(point, seq);
    }

    fn remove(&mut self, point: PointId) {
        self.flat.remove(point);
        self.pending.remove(&point);
        self.hnsw.remove(point);
    }
}

/// Everything [`CollectionIndex::state`] guards.
#[derive(Debug)]
pub struct IndexState {
    /// Sequence of the last write applied here.
    pub applied_seq: u64,
    next_point: PointId,
    /// Items.
    pub items: Entities,
    /// Users.
    pub users: Entities,
    /// One space per item modality, in declaration order.
    pub item_spaces: Vec<Space>,
    /// The users' own vectors (`user_dim > 0` only).
    pub user_space: Option<Space>,
    /// The model version whose SIDs the tries hold (0: the client-written SIDs).
    pub sid_version: u64,
    /// While a training snapshot is being published: the entities written since the snapshot
    /// (their SIDs must be computed again from their newest state at activation).
    pub touched: Option<HashSet<(EntityKind, Arc<str>)>>,
    /// `Recommend`'s popularity prior of each item the served version was trained on, by
    /// point (`LoadedModel::popularity` bound to points when the version is installed); items
    /// written since, and those deleted and written again, weigh 0.
    pub item_priors: PointMap<f32>,
    /// `Recommend`'s co-occurrence neighbours of the items the served version was trained on,
    /// bound to points like the priors.
    pub item_neighbours: BoundNeighbours,
}

/// A served version's co-occurrence neighbours ([`VersionNeighbours`]) over points: the lists
/// stay the version's (shared, by row), each row is bound to the point of its item.
#[derive(Debug, Default)]
pub struct BoundNeighbours {
    lists: Arc<ItemNeighbours>,
    /// The row of each point trained on.
    rows: PointMap<u32>,
    /// The point of each row (`None`: no such item now, or deleted since).
    points: Vec<Option<PointId>>,
}

impl BoundNeighbours {
    fn bind(n: &VersionNeighbours, items: &Entities) -> Self {
        let points: Vec<Option<PointId>> = n.items.iter().map(|id| items.point(id)).collect();
        let rows = (points.iter().enumerate())
            .filter_map(|(r, p)| Some(((*p)?, r as u32)))
            .collect();
        Self {
            lists: Arc::clone(&n.lists),
            rows,
            points,
        }
    }

    /// The target rows of `source` (when it is bound) and their similarities; a row's point is
    /// [`BoundNeighbours::point`].
    pub fn lists_of(&self, source: PointId) -> (&[u32], &[f32]) {
        match self.rows.get(&source) {
            Some(&row) => self.lists.lists_of(row),
            None => (&[], &[]),
        }
    }

    /// Rows of the lists: every target row is below this.
    pub fn slots(&self) -> usize {
        self.points.len()
    }

    /// The point of a row (`None`: no such item now, or deleted since).
    pub fn point(&self, row: u32) -> Option<PointId> {
        self.points.get(row as usize).copied().flatten()
    }

    /// Unbinds a deleted item, as source and as target.
    fn remove(&mut self, p: PointId) {
        if let Some(row) = self.rows.remove(&p) {
            self.points[row as usize] = None;
        }
    }
}

impl IndexState {
    /// Binds the served version's popularity priors and neighbours to points.
    fn bind_model_items(&mut self, m: &LoadedModel) {
        let items = &self.items;
        self.item_priors = (m.popularity.iter())
            .filter_map(|(id, &p)| Some((items.point(id)?, p)))
            .collect();
        self.item_neighbours = BoundNeighbours::bind(&m.neighbours, items);
    }

    /// Forgets a deleted item's priors and neighbours.
    fn unbind_model_item(&mut self, p: PointId) {
        self.item_priors.remove(&p);
        self.item_neighbours.remove(p);
    }

    /// The entities of a kind.
    pub fn entities(&self, kind: EntityKind) -> &Entities {
        match kind {
            EntityKind::Items => &self.items,
            EntityKind::Users => &self.users,
        }
    }

    /// A space, if the collection has it.
    pub fn space(&self, s: SpaceId) -> Option<&Space> {
        match s {
            SpaceId::Item(i) => self.item_spaces.get(i),
            SpaceId::User => self.user_space.as_ref(),
        }
    }

    fn space_mut(&mut self, s: SpaceId) -> Option<&mut Space> {
        match s {
            SpaceId::Item(i) => self.item_spaces.get_mut(i),
            SpaceId::User => self.user_space.as_mut(),
        }
    }

    fn spaces(&self) -> impl Iterator<Item = (SpaceId, &Space)> {
        let items = self
            .item_spaces
            .iter()
            .enumerate()
            .map(|(i, s)| (SpaceId::Item(i), s));
        items.chain(self.user_space.iter().map(|s| (SpaceId::User, s)))
    }

    /// The point of an entity, binding a new one if it has none.
    fn point_or_bind(&mut self, kind: EntityKind, id: &str) -> PointId {
        let known = match kind {
            EntityKind::Items => self.items.point(id),
            EntityKind::Users => self.users.point(id),
        };
        known.unwrap_or_else(|| {
            let p = self.take_point();
            match kind {
                EntityKind::Items => self.items.bind(id, p),
                EntityKind::Users => self.users.bind(id, p),
            }
            p
        })
    }

    fn take_point(&mut self) -> PointId {
        let p = self.next_point;
        self.next_point += 1;
        p
    }
}

/// A hit resolved to its entity.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityHit {
    /// Entity id.
    pub id: Arc<str>,
    /// Similarity, higher = closer.
    pub score: f32,
    /// Its SID, when it has one.
    pub sid: Option<SemanticId>,
}

/// What a search is restricted to.
#[derive(Debug, Default)]
pub struct Restrict<'a> {
    /// Only entities whose SID codes start with this (empty: no restriction).
    pub prefix: &'a [u32],
    /// Entities never to return.
    pub exclude: &'a [String],
}

/// The retrieval state of one collection. See the module docs.
#[derive(Debug)]
pub struct CollectionIndex {
    /// The collection's never-reused id.
    pub coll_id: u64,
    /// The collection's settings.
    pub config: CollectionConfig,
    /// Graph parameters.
    pub params: HnswParams,
    /// Ids, tries, vectors, graphs.
    pub state: RwLock<IndexState>,
    /// The active version's model (online assignment); swapped under the writer lock together
    /// with the tries.
    pub model: ArcSwapOption<LoadedModel>,
    /// Per space, a sample of the query vectors searched since start: the calibration's queries
    /// once it holds [`CALIBRATE_QUERIES`]. Outside `state` so that searches (which hold only
    /// the read lock) can add to it; a search finding it busy skips it.
    queries: Mutex<HashMap<SpaceId, QuerySample>>,
    /// Taken by [`CollectionIndex::dump`] for the whole dump; `true` once the collection is
    /// deleted ([`CollectionIndex::retire`]), after which nothing is dumped.
    dump_guard: Mutex<bool>,
    /// Graph inserts since the last dump (the indexer's checkpoint policy).
    inserted_since_dump: std::sync::atomic::AtomicU64,
    /// A calibration was measured since the last dump: worth a checkpoint at once (it costs
    /// `CALIBRATE_QUERIES` exact scans to measure again after a crash).
    calibrated_since_dump: std::sync::atomic::AtomicBool,
}

impl CollectionIndex {
    /// An empty index for a new collection.
    pub fn empty(coll_id: u64, config: &CollectionConfig, params: HnswParams) -> CollectionIndex {
        let item_spaces = config
            .item_modalities
            .iter()
            .map(|m| Space::new(config, m.dim as usize, params))
            .collect();
        let user_space =
            (config.user_dim > 0).then(|| Space::new(config, config.user_dim as usize, params));
        CollectionIndex {
            coll_id,
            config: config.clone(),
            params,
            state: RwLock::new(
                Rank::IndexState,
                "retrieval state",
                IndexState {
                    applied_seq: 0,
                    next_point: 0,
                    items: Entities::default(),
                    users: Entities::default(),
                    item_spaces,
                    user_space,
                    sid_version: 0,
                    touched: None,
                    item_priors: PointMap::default(),
                    item_neighbours: BoundNeighbours::default(),
                },
            ),
            model: ArcSwapOption::empty(),
            queries: Mutex::new(Rank::QuerySample, "query sample", HashMap::new()),
            dump_guard: Mutex::new(Rank::IndexDump, "index dump", false),
            inserted_since_dump: std::sync::atomic::AtomicU64::new(0),
            calibrated_since_dump: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Applies a write the store just applied. Called under the collection's writer lock (see
    /// the module docs); cannot fail.
    pub fn apply(&self, seq: u64, op: &WriteOp) {
        let mut st = self.state.write();
        apply_op(&mut st, seq, op);
        st.applied_seq = seq;
    }

    /// Installs `sids` as the active version's SIDs (an activation), then applies the
    /// activation's own catch-up `op`. Readers see the old SIDs or the new ones, never a mix.
    pub fn install(&self, seq: u64, sids: &VersionSids, model: &LoadedModel, op: &WriteOp) {
        let mut st = self.state.write();
        st.items.install(sids.version, &sids.items);
        st.users.install(sids.version, &sids.users);
        st.sid_version = sids.version;
        st.touched = None;
        apply_op(&mut st, seq, op);
        st.bind_model_items(model);
        st.applied_seq = seq;
    }

    /// Binds the served version's popularity priors and neighbours to points (at start, once its model is
    /// loaded; [`install`](Self::install) does it for a publication).
    pub fn bind_model_items(&self, model: &LoadedModel) {
        self.state.write().bind_model_items(model);
    }

    /// Starts recording the entities written from now on (see [`IndexState::touched`]).
    pub fn start_tracking(&self) {
        self.state.write().touched = Some(HashSet::new());
    }

    /// Stops recording (a training that will not publish).
    pub fn stop_tracking(&self) {
        self.state.write().touched = None;
    }

    /// True when some space has pending points or wants a rebuild.
    pub fn has_work(&self) -> bool {
        let st = self.state.read();
        let busy = st
            .spaces()
            .any(|(_, s)| !s.pending.is_empty() || s.hnsw.needs_rebuild());
        busy
    }

    /// Points waiting for the graph, over all spaces.
    pub fn pending(&self) -> usize {
        let st = self.state.read();
        let n = st.spaces().map(|(_, s)| s.pending.len()).sum();
        n
    }

    /// Per space: live graph points, tombstones and pending points (for the metrics page).
    pub fn space_stats(&self) -> Vec<(SpaceId, usize, usize, usize)> {
        let st = self.state.read();
        let stats = st
            .spaces()
            .map(|(id, s)| (id, s.hnsw.len(), s.hnsw.tombstones(), s.pending.len()))
            .collect();
        stats
    }

    /// The spaces of this collection.
    pub fn space_ids(&self) -> Vec<SpaceId> {
        self.state.read().spaces().map(|(id, _)| id).collect()
    }

    /// Inserts up to `batch` pending points of `space` into its graph; returns how many. Run by
    /// the indexer, outside any lock while the graph insert runs.
    pub fn index_pending(&self, space: SpaceId, batch: usize) -> Result<usize> {
        let (graph, work) = {
            let st = self.state.read();
            let Some(sp) = st.space(space) else {
                return Ok(0);
            };
            let work: Vec<(PointId, u64, Vec<f32>)> = sp
                .pending
                .iter()
                .take(batch)
                .filter_map(|(&p, &seq)| Some((p, seq, sp.flat.get(p)?.to_vec())))
                .collect();
            (Arc::clone(&sp.hnsw), work)
        };
        if work.is_empty() {
            return Ok(0);
        }
        let refs: Vec<(PointId, &[f32])> =
            work.iter().map(|(p, _, v)| (*p, v.as_slice())).collect();
        graph.upsert_batch(&refs)?;
        self.inserted_since_dump
            .fetch_add(work.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.state.write();
        let Some(sp) = st.space_mut(space) else {
            return Ok(0);
        };
        if !Arc::ptr_eq(&graph, &sp.hnsw) {
            // Only the indexer swaps graphs, and it is this thread: cannot happen. If it did, the
            // points simply stay pending.
            return Ok(0);
        }
        for (p, seq, _) in &work {
            match sp.pending.get(p) {
                // The graph now holds the newest vector.
                Some(s) if s == seq => {
                    sp.pending.remove(p);
                }
                // Rewritten meanwhile: still pending (graph hits of it stay hidden).
                Some(_) => {}
                // Deleted meanwhile: the insert above must not resurrect it.
                None => {
                    graph.remove(*p);
                }
            }
        }
        Ok(work.len())
    }

    /// Rebuilds the graph of `space` when its tombstones passed the threshold; returns whether
    /// it did. Long: the old graph keeps serving and writes continue meanwhile.
    pub fn rebuild_if_needed(&self, space: SpaceId) -> Result<bool> {
        let old = match self.state.read().space(space) {
            Some(sp) if sp.hnsw.needs_rebuild() => Arc::clone(&sp.hnsw),
            _ => return Ok(false),
        };
        let job = old.start_rebuild();
        let fresh = job.run(&old)?;
        let mut st = self.state.write();
        let sp = st.space_mut(space).expect("spaces never change");
        // Writers touch the graph only under the state lock (deletes), so holding it here keeps
        // every write either in the replayed journal or after the swap.
        old.finish_rebuild(&fresh)?;
        // a new graph: the last dump holds none of its links
        self.inserted_since_dump.fetch_add(
            fresh.len().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        sp.hnsw = Arc::new(fresh);
        Ok(true)
    }

    /// Graph inserts since the last dump.
    pub fn inserted_since_dump(&self) -> u64 {
        self.inserted_since_dump
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when a calibration was measured since the last dump.
    pub fn calibrated_since_dump(&self) -> bool {
        self.calibrated_since_dump
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a dump that covered `n` of the inserts counted so far, and every calibration
    /// (the indexer, which measures them, is the thread that dumps).
    pub fn dumped(&self, n: u64) {
        self.inserted_since_dump
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        self.calibrated_since_dump
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The top `k` entities of a space for a query vector (already validated), best first.
    /// Exact for a small SID bucket, otherwise the graph plus an exact scan of pending points.
    pub fn search(
        &self,
        space: SpaceId,
        query: &[f32],
        k: usize,
        ef: usize,
        restrict: &Restrict,
        exact_scan_max: usize,
    ) -> Result<Vec<EntityHit>> {
        self.sample_query(space, query);
        let st = self.state.read();
        let ents = st.entities(space.kind());
        let sp = st
            .space(space)
            .ok_or_else(|| Error::Internal(format!("no vector space {space:?}")))?;
        let excluded: HashSet<PointId> = restrict
            .exclude
            .iter()
            .filter_map(|id| ents.point(id))
            .collect();
        let prefix = Some(restrict.prefix).filter(|p| !p.is_empty());
        let hits = match prefix {
            Some(p) if ents.trie.count(p) as usize <= exact_scan_max => {
                let candidates: Vec<PointId> = ents
                    .trie
                    .tags_under(p)
                    .filter(|pt| !excluded.contains(pt))
                    .collect();
                sp.flat.search(query, k, None, Some(&candidates))?
            }
            _ => {
                let keep = |pt: PointId| {
                    !excluded.contains(&pt)
                        && prefix.is_none_or(|p| {
                            ents.sid_of_point(pt)
                                .is_some_and(|s| s.codes.starts_with(p))
                        })
                };
                // A point deleted while the indexer inserts it is live in the graph until the
                // indexer reconciles (under this lock): never return it.
                let in_graph =
                    |pt: PointId| keep(pt) && !sp.pending.contains_key(&pt) && sp.flat.contains(pt);
                let plain = prefix.is_none() && excluded.is_empty() && sp.pending.is_empty();
                let mut hits = match plain {
                    true => sp.hnsw.search(query, k, ef)?,
                    false => Vec::new(),
                };
                if !plain || hits.iter().any(|h| !sp.flat.contains(h.id)) {
                    hits = sp.hnsw.search_filtered(query, k, ef, &in_graph)?;
                }
                if !sp.pending.is_empty() {
                    let candidates: Vec<PointId> = sp.pending.keys().copied().collect();
                    hits.extend(sp.flat.search(query, k, Some(&keep), Some(&candidates))?);
                    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
                    hits.truncate(k);
                }
                hits
            }
        };
        Ok(resolve(ents, hits))
    }

    /// The stored (prepared) vector of an entity in a space.
    pub fn vector_of(&self, space: SpaceId, id: &str) -> Option<Vec<f32>> {
        let st = self.state.read();
        let p = st.entities(space.kind()).point(id)?;
        Some(st.space(space)?.flat.get(p)?.to_vec())
    }
}

fn bad_record(id: &str, e: Error) -> Error {
    Error::DataLoss(format!("stored vector of {id:?} is unusable: {e}"))
}

fn resolve(ents: &Entities, hits: Vec<Hit>) -> Vec<EntityHit> {
    hits.into_iter()
        .filter_map(|h| {
            let id = ents.id(h.id)?;
            Some(EntityHit {
                id: Arc::clone(id),
                score: h.score,
                sid: ents.trie.get(id).cloned(),
            })
        })
        .collect()
}
