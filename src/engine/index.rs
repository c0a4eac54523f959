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
//! graphs come from the dump written at clean shutdown ([`CollectionIndex::dump`]) when it matches
//! the store exactly: same last write sequence, same entity set, same metric and dimensions, intact
//! checksums. Otherwise (no dump, a crash since, corruption) every point starts pending and the
//! indexer rebuilds the graphs in the background while searches are answered exactly: a stale
//! graph is never served.
//!
//! Lock order: the store's writer lock, then [`CollectionIndex::state`]. Nothing here does
//! network I/O; disk I/O only in [`CollectionIndex::open`] and [`CollectionIndex::dump`].

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::lock::{Mutex, Rank, RwLock};
use arc_swap::ArcSwapOption;

use super::models::LoadedModel;

use crate::error::{Error, Result};
use crate::fsutil::{remove_dir_if_present, replace_dir, sibling, write_synced};
use crate::index::calibrate::{calibrate, Calibration, QuerySample, EF_LADDER};
use crate::index::flat::FlatIndex;
use crate::index::hnsw::{DumpStamp, HnswIndex, HnswParams};
use crate::index::{Hit, PointId};
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
    by_point: HashMap<PointId, Arc<str>>,
    /// SIDs of the entities that have one.
    pub trie: SidTrie,
    /// With an active model version: each entity's quantized embedding `z` and, for users, the
    /// item-code route Recommend searches under.
    pub model: HashMap<PointId, ModelEntry>,
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

    fn set_sid(&mut self, id: &str, sid: Option<&SemanticId>) {
        match sid {
            Some(s) => {
                self.trie.insert(id, s.clone());
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
                self.trie.insert(id, s.semantic_id(version));
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
            entries.push((Arc::clone(id), s.semantic_id(version)));
            self.model.insert(
                p,
                ModelEntry {
                    z: s.z.clone().into(),
                    route: s.route.clone().into(),
                },
            );
        }
        self.trie = SidTrie::from_entries(entries);
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
}

impl IndexState {
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

/// Every SID stored under `version`.
pub fn load_version_sids(store: &Store, coll: &Collection, version: u64) -> Result<VersionSids> {
    let mut sids = VersionSids {
        version,
        ..Default::default()
    };
    store.scan_model_sids(coll, version, |kind, id, sid| {
        sids.of_mut(kind).insert(Arc::from(id), sid);
        Ok(())
    })?;
    Ok(sids)
}

fn apply_op(st: &mut IndexState, seq: u64, op: &WriteOp) {
    let client_sids = st.sid_version == 0;
    let touch = |st: &mut IndexState, kind: EntityKind, id: &str| {
        if let Some(t) = st.touched.as_mut() {
            t.insert((kind, Arc::from(id)));
        }
    };
    match op {
        WriteOp::UpsertItems(items) => {
            for item in items {
                let p = st.point_or_bind(EntityKind::Items, &item.id);
                if client_sids {
                    st.items.set_sid(&item.id, item.sid.as_ref());
                }
                for (space, v) in st.item_spaces.iter_mut().zip(&item.vectors) {
                    space.upsert(p, v, seq);
                }
                touch(st, EntityKind::Items, &item.id);
            }
        }
        WriteOp::DeleteItems(ids) => {
            for id in ids {
                if let Some(p) = st.items.unbind(id) {
                    st.items.set_sid(id, None);
                    st.items.model.remove(&p);
                    st.item_spaces.iter_mut().for_each(|s| s.remove(p));
                }
                touch(st, EntityKind::Items, id);
            }
        }
        WriteOp::UpsertUsers(users) => {
            for user in users {
                let p = st.point_or_bind(EntityKind::Users, &user.id);
                if client_sids {
                    st.users.set_sid(&user.id, user.sid.as_ref());
                }
                if let Some(space) = st.user_space.as_mut() {
                    match &user.vector {
                        Some(v) => space.upsert(p, v, seq),
                        None => space.remove(p),
                    }
                }
                touch(st, EntityKind::Users, &user.id);
            }
        }
        WriteOp::DeleteUsers(ids) => {
            for id in ids {
                if let Some(p) = st.users.unbind(id) {
                    st.users.set_sid(id, None);
                    st.users.model.remove(&p);
                    if let Some(space) = st.user_space.as_mut() {
                        space.remove(p);
                    }
                }
                touch(st, EntityKind::Users, id);
            }
        }
        WriteOp::Interactions(_) => {}
        WriteOp::Assigned(inner, sids) => {
            apply_op(st, seq, inner);
            set_model_sids(st, sids);
        }
        WriteOp::Activate(sids) => set_model_sids(st, sids),
    }
}

/// Applies the model SIDs of a write to the tries when they are of the version served (the
/// writer lock orders assignments and activations, so others only concern the store).
fn set_model_sids(st: &mut IndexState, sids: &SidUpdate) {
    if sids.version != st.sid_version {
        return;
    }
    for (id, sid) in &sids.items {
        st.items.set_model_sid(id, sids.version, sid.as_ref());
    }
    for (id, sid) in &sids.users {
        st.users.set_model_sid(id, sids.version, sid.as_ref());
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
                },
            ),
            model: ArcSwapOption::empty(),
            queries: Mutex::new(Rank::QuerySample, "query sample", HashMap::new()),
        }
    }

    /// Rebuilds the index of `coll` from a scan of the store, with the graphs from the dump in
    /// `dump_dir` when it matches exactly (else every point starts pending). A loaded graph keeps
    /// the calibration it had when dumped if that aimed at `target_recall`. Blocking; at start.
    pub fn open(
        store: &Store,
        coll: &Collection,
        params: HnswParams,
        dump_dir: &Path,
        target_recall: f64,
    ) -> Result<CollectionIndex> {
        let index = CollectionIndex::empty(coll.entry.id, coll.config(), params);
        let dump = match PointsFile::read(dump_dir) {
            Ok(d) => Some(d),
            Err(Error::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!(collection = %coll.entry.name, error = %e, "index dump unusable; rebuilding the graphs");
                None
            }
        };
        // Nothing else can reach `index` before this returns; the scan below takes the writer
        // lock, which ranks below the state lock (src/lock.rs).
        let mut st = index.state.write_unpublished();
        if let Some(d) = &dump {
            st.next_point = d.next_point;
        }
        let spaces: Vec<(SpaceId, usize)> = st.spaces().map(|(id, s)| (id, s.flat.dim())).collect();
        let metric = index.config.metric;
        // The graphs (most of a dump's bytes: read, checksummed, decoded) load on a second
        // thread while this one scans the store; they are checked against the scan after.
        std::thread::scope(|scope| -> Result<()> {
            let reading = dump.as_ref().map(|d| {
                let spaces = &spaces;
                scope.spawn(move || read_graphs(d, dump_dir, metric, spaces))
            });
            let scanned = index.scan(store, coll, &mut st, dump.as_ref());
            let graphs = reading.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("reading the graphs panicked".into())))
            });
            let (seq, fresh_points) = scanned?;
            index.finish_open(
                store,
                coll,
                &mut st,
                seq,
                fresh_points,
                dump.as_ref(),
                graphs,
                target_recall,
            )
        })?;
        drop(st);
        Ok(index)
    }

    /// Binds every stored entity (its point id from the dump when there is one), its SID and its
    /// vectors; returns the store's write sequence and how many entities the dump did not know.
    fn scan(
        &self,
        store: &Store,
        coll: &Collection,
        st: &mut IndexState,
        dump: Option<&PointsFile>,
    ) -> Result<(u64, u64)> {
        let mut fresh_points = 0u64;
        let (mut next_item, mut next_user) = (0usize, 0usize);
        let seq = store.scan_entities(coll, |entity| {
            let (kind, id, sid) = match &entity {
                Scanned::Item(x) => (EntityKind::Items, &x.id, &x.sid),
                Scanned::User(x) => (EntityKind::Users, &x.id, &x.sid),
            };
            let next = match kind {
                EntityKind::Items => &mut next_item,
                EntityKind::Users => &mut next_user,
            };
            let p = match dump.and_then(|d| d.point(kind, id, next)) {
                Some(p) => p,
                None => {
                    fresh_points += 1;
                    st.take_point()
                }
            };
            let st = &mut *st;
            let ents = match kind {
                EntityKind::Items => &mut st.items,
                EntityKind::Users => &mut st.users,
            };
            ents.bind(id, p);
            ents.set_sid(id, sid.as_ref());
            match &entity {
                Scanned::Item(x) => {
                    for (space, v) in st.item_spaces.iter_mut().zip(&x.vectors) {
                        space.flat.upsert(p, v).map_err(|e| bad_record(id, e))?;
                    }
                }
                Scanned::User(x) => {
                    if let (Some(space), Some(v)) = (st.user_space.as_mut(), &x.vector) {
                        space.flat.upsert(p, v).map_err(|e| bad_record(id, e))?;
                    }
                }
            }
            Ok(())
        })?;
        Ok((seq, fresh_points))
    }

    /// The rest of [`CollectionIndex::open`] after the scan: the active version's SIDs, then the
    /// graphs read from the dump if they match the scan exactly, else empty graphs with every
    /// point pending.
    #[allow(clippy::too_many_arguments)]
    fn finish_open(
        &self,
        store: &Store,
        coll: &Collection,
        st: &mut IndexState,
        seq: u64,
        fresh_points: u64,
        dump: Option<&PointsFile>,
        graphs: Option<Result<ReadGraphs>>,
        target_recall: f64,
    ) -> Result<()> {
        st.applied_seq = seq;
        let active = store.active_version(coll);
        if active > 0 {
            let sids = load_version_sids(store, coll, active)?;
            st.items.install(active, &sids.items);
            st.users.install(active, &sids.users);
            st.sid_version = active;
        }
        let loaded = match (dump, graphs) {
            (Some(d), Some(graphs)) if fresh_points == 0 => {
                graphs.and_then(|g| self.install_graphs(st, d, g, seq, target_recall))
            }
            (Some(_), _) => Err(Error::FailedPrecondition(format!(
                "{fresh_points} entities are not in the dump"
            ))),
            (None, _) => Err(Error::NotFound("no dump".into())),
        };
        if let Err(e) = loaded {
            if dump.is_some() {
                tracing::warn!(collection = %coll.entry.name, reason = %e, "index dump is stale; rebuilding the graphs in the background");
            }
            for space in st.item_spaces.iter_mut().chain(st.user_space.as_mut()) {
                space.hnsw = Arc::new(HnswIndex::new(
                    self.config.metric,
                    space.flat.dim(),
                    self.params,
                    space.flat.len(),
                ));
                space.pending = space.flat.iter().map(|(p, _)| (p, seq)).collect();
            }
        }
        Ok(())
    }

    /// Installs the graphs read from the dump after checking them against the scanned state,
    /// each with its calibration when that aimed at `target_recall`.
    fn install_graphs(
        &self,
        st: &mut IndexState,
        dump: &PointsFile,
        read: ReadGraphs,
        seq: u64,
        target_recall: f64,
    ) -> Result<()> {
        if dump.generation != seq {
            return Err(Error::FailedPrecondition(format!(
                "dump is of write sequence {}, the store is at {seq}",
                dump.generation
            )));
        }
        if dump.items.len() != st.items.len() || dump.users.len() != st.users.len() {
            return Err(Error::FailedPrecondition(format!(
                "dump has {} items and {} users, the store {} and {}",
                dump.items.len(),
                dump.users.len(),
                st.items.len(),
                st.users.len()
            )));
        }
        let mut read: HashMap<SpaceId, Option<HnswIndex>> = read.into_iter().collect();
        let mut graphs = Vec::new();
        for (id, space) in st.spaces() {
            let g = match read.remove(&id) {
                Some(Some(g)) => g,
                // no directory: the graph was empty at the dump
                Some(None) => HnswIndex::new(
                    self.config.metric,
                    space.flat.dim(),
                    self.params,
                    space.flat.len(),
                ),
                None => return Err(Error::Internal(format!("graph {id:?} not read"))),
            };
            let pending = dump.pending.get(&id).cloned().unwrap_or_default();
            // Every live vector is either in the graph or pending; nothing else is.
            let covered = space
                .flat
                .iter()
                .all(|(p, _)| g.contains(p) || pending.contains(&p));
            if !covered || g.len() > space.flat.len() {
                return Err(Error::FailedPrecondition(format!(
                    "graph {} does not cover the stored vectors",
                    id.dir_name()
                )));
            }
            graphs.push((id, g, pending));
        }
        for (id, g, pending) in graphs {
            let space = st.space_mut(id).expect("listed above");
            space.hnsw = Arc::new(g);
            space.pending = pending.into_iter().map(|p| (p, seq)).collect();
            if let Some(&(len, c)) = dump.calibrations.get(&id) {
                if c.target == target_recall {
                    (space.calibrated_len, space.calibration) = (len, Some(c));
                }
            }
        }
        Ok(())
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
    pub fn install(&self, seq: u64, sids: &VersionSids, op: &WriteOp) {
        let mut st = self.state.write();
        st.items.install(sids.version, &sids.items);
        st.users.install(sids.version, &sids.users);
        st.sid_version = sids.version;
        st.touched = None;
        apply_op(&mut st, seq, op);
        st.applied_seq = seq;
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

    /// The `ef` a search of `space` uses when the request leaves it at 0: `configured`, raised
    /// to the graph's calibrated `ef` (never lowered: a small collection keeps its setting).
    pub fn default_ef(&self, space: SpaceId, configured: usize) -> usize {
        let st = self.state.read();
        let auto = st
            .space(space)
            .and_then(|sp| sp.calibration)
            .map_or(0, |c| c.ef);
        configured.max(auto)
    }

    /// The last recall calibration of a space's graph, if any.
    pub fn calibration(&self, space: SpaceId) -> Option<Calibration> {
        self.state.read().space(space).and_then(|sp| sp.calibration)
    }

    /// Measures the recall@10 of `space`'s graph against exact search and keeps the smallest `ef`
    /// reaching `target` (see [`crate::index::calibrate`]). The queries are the space's sample of
    /// real searches once it holds [`CALIBRATE_QUERIES`], else an even spread of its own points.
    /// Due once the graph holds every point and has at least [`CALIBRATE_MIN_POINTS`] points,
    /// when it has doubled since the last calibration or when the last one used own points and
    /// the sample of real searches has filled since; returns whether it ran. Exact search holds
    /// the state's read lock one query at a time, so writes wait for at most one exact scan.
    /// `stop` is polled between queries: when it turns true the calibration is dropped (the
    /// indexer's shutdown does not wait for a whole one: about 14 s at 1M points, measured).
    pub fn calibrate_if_due(
        &self,
        space: SpaceId,
        target: f64,
        stop: &dyn Fn() -> bool,
    ) -> Result<bool> {
        if target <= 0.0 {
            return Ok(false);
        }
        let searched: Vec<Vec<f32>> = (self.queries.lock().get(&space))
            .filter(|s| s.is_full())
            .map_or_else(Vec::new, |s| s.rows().to_vec());
        let on_queries = !searched.is_empty();
        let (graph, queries) = {
            let st = self.state.read();
            let Some(sp) = st.space(space) else {
                return Ok(false);
            };
            let n = sp.hnsw.len();
            let upgrade = on_queries && sp.calibration.is_some_and(|c| !c.on_queries);
            let due = sp.pending.is_empty()
                && n >= CALIBRATE_MIN_POINTS
                && (n >= 2 * sp.calibrated_len || upgrade)
                && n == sp.flat.len();
            if !due {
                return Ok(false);
            }
            let queries: Vec<(PointId, Vec<f32>)> = match on_queries {
                // no point of the index is the query's own
                true => searched.into_iter().map(|q| (PointId::MAX, q)).collect(),
                false => {
                    // an even spread over the points, the same points for the same collection
                    let step = (sp.flat.len() / CALIBRATE_QUERIES).max(1);
                    (sp.flat.iter().step_by(step))
                        .take(CALIBRATE_QUERIES)
                        .map(|(p, v)| (p, v.to_vec()))
                        .collect()
                }
            };
            (Arc::clone(&sp.hnsw), queries)
        };
        let stopped = std::cell::Cell::new(false);
        let halt = || {
            stopped.set(stopped.get() || stop());
            stopped.get()
        };
        let exact = |q: &[f32], k: usize| -> Result<Vec<Hit>> {
            if halt() {
                return Ok(Vec::new());
            }
            let st = self.state.read();
            match st.space(space) {
                Some(sp) => sp.flat.search(q, k, None, None),
                None => Ok(Vec::new()),
            }
        };
        let approx = |q: &[f32], k: usize, ef: usize| match halt() {
            true => Ok(Vec::new()),
            false => graph.search(q, k, ef),
        };
        let cal = calibrate(&queries, 10, target, &EF_LADDER, exact, approx)?;
        if stopped.get() {
            return Ok(false);
        }
        let mut st = self.state.write();
        let Some(sp) = st.space_mut(space) else {
            return Ok(false);
        };
        sp.calibrated_len = graph.len();
        if let Some(mut c) = cal {
            c.on_queries = on_queries;
            tracing::info!(
                collection = self.coll_id,
                ?space,
                points = graph.len(),
                ef = c.ef,
                recall = c.recall,
                target,
                on_queries,
                "search breadth calibrated"
            );
            sp.calibration = Some(c);
        }
        Ok(true)
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
        sp.hnsw = Arc::new(fresh);
        Ok(true)
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
                    .ids_under(p)
                    .filter_map(|id| ents.point(id))
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

    /// Offers `query` to `space`'s query sample (skipped when another search holds it).
    fn sample_query(&self, space: SpaceId, query: &[f32]) {
        if let Some(mut samples) = self.queries.try_lock() {
            let new = || {
                let seed = self.coll_id.wrapping_mul(31).wrapping_add(match space {
                    SpaceId::Item(m) => m as u64,
                    SpaceId::User => u64::MAX,
                });
                QuerySample::new(CALIBRATE_QUERIES, seed)
            };
            samples.entry(space).or_insert_with(new).offer(query);
        }
    }

    /// The stored (prepared) vector of an entity in a space.
    pub fn vector_of(&self, space: SpaceId, id: &str) -> Option<Vec<f32>> {
        let st = self.state.read();
        let p = st.entities(space.kind()).point(id)?;
        Some(st.space(space)?.flat.get(p)?.to_vec())
    }

    /// Writes the graphs, point ids and pending sets to `dir` (replacing a previous dump), stamped
    /// with the last applied write. Call after the store stopped taking writes and the indexer
    /// stopped.
    pub fn dump(&self, dir: &Path) -> Result<()> {
        let st = self.state.read();
        let tmp = sibling(dir, "tmp")?;
        remove_dir_if_present(&tmp)?;
        fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        for (id, space) in st.spaces() {
            // An empty graph has nothing to keep: no directory means "start empty" at load.
            if space.hnsw.len() + space.hnsw.tombstones() > 0 {
                space.hnsw.dump(&tmp.join(id.dir_name()), st.applied_seq)?;
            }
        }
        write_synced(
            &tmp.join(POINTS_FILE),
            &PointsFile::from_state(&st).encode(),
        )?;
        replace_dir(&tmp, dir)
    }
}

/// Graphs read from a dump, per space (`None`: the space's graph was empty).
type ReadGraphs = Vec<(SpaceId, Option<HnswIndex>)>;

/// Reads the graph dump of each of `spaces` (id, dimension) from `dir`, stamped with the dump's
/// write sequence; `None` for a space without a directory (its graph was empty). Disk I/O,
/// checksums and decoding only: [`CollectionIndex::install_graphs`] checks them against the store.
fn read_graphs(
    dump: &PointsFile,
    dir: &Path,
    metric: Metric,
    spaces: &[(SpaceId, usize)],
) -> Result<ReadGraphs> {
    let started = std::time::Instant::now();
    let mut out = Vec::with_capacity(spaces.len());
    for &(id, dim) in spaces {
        let stamp = DumpStamp {
            metric,
            dim,
            generation: dump.generation,
        };
        let graph_dir = dir.join(id.dir_name());
        let g = match graph_dir.exists() {
            true => Some(HnswIndex::load(&graph_dir, stamp)?),
            false => None,
        };
        out.push((id, g));
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "graphs read from the dump"
    );
    Ok(out)
}

fn put_space(e: &mut Enc, space: SpaceId) {
    let (kind, m) = match space {
        SpaceId::Item(i) => (0u8, i as u32),
        SpaceId::User => (1u8, 0),
    };
    e.u8(kind);
    e.u32(m);
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

/// The `points` file of a dump: write sequence, point ids of every entity, and pending points.
///
/// Layout ([`crate::storage::codec`] encoding, little-endian): magic `SIDBPTS1`, format version,
/// `u64` generation, `u64` next point, the items and users as (`u64` count, then per entity in
/// ascending id order `u64` point and its id string), the pending sets as (`u32` count, then per space `u8` kind,
/// `u32` modality, `u64` count, `u64` points), the graphs' calibrations as (`u32` count, then per
/// space `u8` kind, `u32` modality, `u64` graph size at calibration, `u64` ef, `f64` recall, `u64`
/// queries, `f64` target, `u8` 1 when measured on real searches; absent in dumps of older
/// versions), and a CRC32 of everything before it.
#[derive(Debug, Default)]
struct PointsFile {
    generation: u64,
    next_point: PointId,
    /// (id, point) of every item, ascending by id: the order the store scans them in.
    items: Vec<(String, PointId)>,
    /// The same for users.
    users: Vec<(String, PointId)>,
    pending: HashMap<SpaceId, HashSet<PointId>>,
    /// Per space: the graph size at its last calibration, and that calibration.
    calibrations: HashMap<SpaceId, (usize, Calibration)>,
}

/// Graphs smaller than this are not calibrated: the configured `ef` is plenty there.
pub const CALIBRATE_MIN_POINTS: usize = 2_000;
/// Queries of a calibration (each costs one exact scan), and so the size of a space's query
/// sample.
pub const CALIBRATE_QUERIES: usize = 100;

const POINTS_MAGIC: &[u8; 8] = b"SIDBPTS1";
const POINTS_FILE: &str = "points";

impl PointsFile {
    fn from_state(st: &IndexState) -> PointsFile {
        let ids = |e: &Entities| {
            let mut v: Vec<(String, PointId)> = (e.by_id.iter())
                .map(|(id, p)| (id.to_string(), *p))
                .collect();
            v.sort_unstable();
            v
        };
        PointsFile {
            generation: st.applied_seq,
            next_point: st.next_point,
            items: ids(&st.items),
            users: ids(&st.users),
            pending: st
                .spaces()
                .map(|(id, s)| (id, s.pending.keys().copied().collect()))
                .collect(),
            calibrations: st
                .spaces()
                .filter_map(|(id, s)| Some((id, (s.calibrated_len, s.calibration?))))
                .collect(),
        }
    }

    /// The point of entity `id`. `next` is where the previous lookup of this kind ended: the
    /// store scans entities in id order, as the file lists them, so a scan finds each one
    /// there without hashing or searching; any other order falls back to a binary search.
    fn point(&self, kind: EntityKind, id: &str, next: &mut usize) -> Option<PointId> {
        let list = match kind {
            EntityKind::Items => &self.items,
            EntityKind::Users => &self.users,
        };
        let at = match list.get(*next) {
            Some((k, _)) if k == id => *next,
            _ => list.binary_search_by(|(k, _)| k.as_str().cmp(id)).ok()?,
        };
        *next = at + 1;
        Some(list[at].1)
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.buf.extend_from_slice(POINTS_MAGIC);
        e.u8(RECORD_VERSION);
        e.u64(self.generation);
        e.u64(self.next_point);
        for list in [&self.items, &self.users] {
            e.u64(list.len() as u64);
            for (id, p) in list {
                e.u64(*p);
                e.str(id);
            }
        }
        e.u32(self.pending.len() as u32);
        for (space, points) in &self.pending {
            put_space(&mut e, *space);
            e.u64(points.len() as u64);
            points.iter().for_each(|p| e.u64(*p));
        }
        e.u32(self.calibrations.len() as u32);
        for (space, (len, c)) in &self.calibrations {
            put_space(&mut e, *space);
            e.u64(*len as u64);
            e.u64(c.ef as u64);
            e.u64(c.recall.to_bits());
            e.u64(c.queries as u64);
            e.u64(c.target.to_bits());
            e.u8(c.on_queries as u8);
        }
        let crc = crc32fast::hash(&e.buf);
        e.u32(crc);
        e.buf
    }

    fn read(dir: &Path) -> Result<PointsFile> {
        let path: PathBuf = dir.join(POINTS_FILE);
        let buf = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("no {}", path.display())),
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        let corrupt = |what: &str| Error::DataLoss(format!("{}: {what}", path.display()));
        let magic = POINTS_MAGIC.len();
        if buf.len() < magic + 4 || &buf[..magic] != POINTS_MAGIC {
            return Err(corrupt("not a points file"));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut d = Dec::versioned(&body[magic..], "index points file")?;
        let mut out = PointsFile {
            generation: d.u64()?,
            next_point: d.u64()?,
            ..PointsFile::default()
        };
        for kind in [EntityKind::Items, EntityKind::Users] {
            let n = d.u64()?;
            let list = match kind {
                EntityKind::Items => &mut out.items,
                EntityKind::Users => &mut out.users,
            };
            for _ in 0..n {
                let p = d.u64()?;
                if p >= out.next_point {
                    return Err(corrupt("a point id beyond the counter"));
                }
                let id = d.str()?;
                if list.last().is_some_and(|(last, _)| *last >= id) {
                    return Err(corrupt("entity ids out of order"));
                }
                list.push((id, p));
            }
        }
        let space = |d: &mut Dec| match (d.u8()?, d.u32()?) {
            (0, m) => Ok(SpaceId::Item(m as usize)),
            (1, _) => Ok(SpaceId::User),
            _ => Err(corrupt("unknown space kind")),
        };
        for _ in 0..d.u32()? {
            let space = space(&mut d)?;
            let n = d.u64()?;
            let set = (0..n).map(|_| d.u64()).collect::<Result<HashSet<_>>>()?;
            out.pending.insert(space, set);
        }
        // dumps written before calibrations were kept end here
        if !d.rest().is_empty() {
            for _ in 0..d.u32()? {
                let space = space(&mut d)?;
                let len = d.u64()? as usize;
                let c = Calibration {
                    ef: d.u64()? as usize,
                    recall: f64::from_bits(d.u64()?),
                    queries: d.u64()? as usize,
                    target: f64::from_bits(d.u64()?),
                    on_queries: match d.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(corrupt("an impossible calibration")),
                    },
                };
                if c.ef == 0 || !(0.0..=1.0).contains(&c.recall) || !c.target.is_finite() {
                    return Err(corrupt("an impossible calibration"));
                }
                out.calibrations.insert(space, (len, c));
            }
        }
        d.finish()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PointsFile {
        let cal = Calibration {
            ef: 256,
            recall: 0.965,
            queries: 100,
            target: 0.95,
            on_queries: true,
        };
        PointsFile {
            generation: 42,
            next_point: 3,
            items: vec![("a".into(), 0), ("b".into(), 2)],
            users: vec![("u".into(), 1)],
            pending: HashMap::from([(SpaceId::Item(0), HashSet::from([2]))]),
            calibrations: HashMap::from([(SpaceId::Item(0), (1_000_000, cal))]),
        }
    }

    fn write(dir: &Path, bytes: &[u8]) {
        fs::write(dir.join(POINTS_FILE), bytes).unwrap();
    }

    /// The body with its CRC recomputed.
    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test]
    fn the_points_file_round_trips_with_its_calibrations() {
        let dir = tempfile::tempdir().unwrap();
        let p = sample();
        write(dir.path(), &p.encode());
        let back = PointsFile::read(dir.path()).unwrap();
        assert_eq!((back.generation, back.next_point), (42, 3));
        assert_eq!((back.items, back.users), (p.items, p.users));
        assert_eq!(back.pending, p.pending);
        assert_eq!(back.calibrations, p.calibrations);
    }

    #[test]
    fn points_are_found_in_scan_order_and_out_of_it() {
        let p = PointsFile {
            items: (0..100).map(|i| (format!("i{i:03}"), 1000 + i)).collect(),
            ..PointsFile::default()
        };
        let mut next = 0;
        for i in 0..100 {
            assert_eq!(
                p.point(EntityKind::Items, &format!("i{i:03}"), &mut next),
                Some(1000 + i)
            );
        }
        // skipping, going back, unknown ids and the other kind
        let mut next = 0;
        assert_eq!(p.point(EntityKind::Items, "i050", &mut next), Some(1050));
        assert_eq!(next, 51);
        assert_eq!(p.point(EntityKind::Items, "i051", &mut next), Some(1051));
        assert_eq!(p.point(EntityKind::Items, "i007", &mut next), Some(1007));
        assert_eq!(p.point(EntityKind::Items, "i0075", &mut next), None);
        assert_eq!(p.point(EntityKind::Items, "zzz", &mut next), None);
        assert_eq!(p.point(EntityKind::Users, "i001", &mut 0), None);
    }

    #[test]
    fn points_out_of_order_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = PointsFile {
            items: vec![("b".into(), 0), ("a".into(), 2)],
            ..sample()
        };
        write(dir.path(), &p.encode());
        let err = PointsFile::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("out of order"), "{err}");
    }

    #[test]
    fn a_points_file_without_calibrations_still_reads() {
        // the layout before calibrations were kept: the same bytes up to the pending sets
        let dir = tempfile::tempdir().unwrap();
        let p = PointsFile {
            calibrations: HashMap::new(),
            ..sample()
        };
        let bytes = p.encode();
        let old = bytes[..bytes.len() - 4 - 4].to_vec(); // CRC, then the u32 count 0
        write(dir.path(), &sealed(old));
        let back = PointsFile::read(dir.path()).unwrap();
        assert_eq!(back.pending, p.pending);
        assert!(back.calibrations.is_empty());
    }

    #[test]
    fn a_damaged_calibration_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample().encode();
        // the recall (before the queries, the target, the source byte and the CRC) set to NaN
        let body = bytes.len() - 4;
        let mut bad = bytes[..body].to_vec();
        let at = body - 1 - 8 - 8 - 8;
        bad[at..at + 8].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
        write(dir.path(), &sealed(bad));
        let err = PointsFile::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("impossible calibration"), "{err}");
        // a truncated section (checksum fine) is an error too, not a panic
        write(dir.path(), &sealed(bytes[..body - 3].to_vec()));
        assert!(PointsFile::read(dir.path()).is_err());
        // and a flipped byte fails the checksum
        let mut flipped = bytes.clone();
        flipped[body - 20] ^= 1;
        write(dir.path(), &flipped);
        let err = PointsFile::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
