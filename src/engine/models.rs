//! Model versions of a collection in the engine: online SID assignment at write time,
//! publication (a new version, or a rollback to a kept one) and pruning. The model a version
//! serves, and its checkpoint files, are `engine::served`.
//!
//! # Publishing a version (atomic)
//! [`publish`] takes a [`Snapshot`] (the entities, read while writes go on, and the interactions
//! up to the sequence at which that read began) and a model:
//! 1. the checkpoint goes to `models/<collection id>/<version>/` (written to a `.tmp` sibling,
//!    fsync'ed, renamed);
//! 2. every snapshot entity is encoded; the SIDs (with dedup suffixes, kept from an earlier
//!    publication of the same version where the codes did not change) are written in bulk under
//!    the version, with its record (`activated = false`), then sled is flushed and fsync'ed;
//! 3. under the collection's writer lock, the entities written since the snapshot (recorded by
//!    the index, [`super::index::IndexState::touched`]) are encoded from their newest state, and
//!    one logged, DURABLE `WriteOp::Activate` writes their SIDs and flips the active version: the
//!    single durable switch;
//! 4. still under the lock, the index installs the new tries and `z`s, and the new model becomes
//!    the one online assignment uses. Readers see the old version or the new one, never a mix.
//!
//! A crash before step 3 leaves an unactivated version: [`drop_aborted`] removes it (SIDs,
//! record, checkpoint) at the next start. After step 3 the WAL replays the switch.
//!
//! # Online assignment
//! With a version active, every upsert of items or users is encoded by the active model under the
//! writer lock ([`assign`]) and logged as `WriteOp::Assigned`: the entity's SID (suffix stable
//! while its codes do not change, otherwise the next free one for its codes) is durable with the
//! entity itself and reachable by prefix at once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::index::{CollectionIndex, VersionSids};
use super::served::{collection_models_dir, ModelReport};
use super::served::{load_model, model_dir, save_model, save_serving_info, LoadedModel};
use crate::config::{RetrievalConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::fsutil::remove_dir_if_present;
use crate::model::data::Prepared;
use crate::model::{mean_length, Interaction, TrainingData};
use crate::storage::models::{ModelSid, VersionRecord};
use crate::storage::ops::{Meta, SidUpdate, WriteOp};
use crate::storage::{Collection, Scanned, Store};
use crate::trie::SidTrie;
use crate::types::{now_ms, CollectionConfig, Durability, EntityKind, ItemRecord};

/// Removes versions a crash left unactivated (SIDs, record, checkpoint) and checkpoint
/// directories of versions that have no record. At start, before the index loads.
pub fn drop_aborted(store: &Store, coll: &Collection, data_dir: &Path) -> Result<()> {
    for v in store.unactivated_versions(coll)? {
        tracing::warn!(collection = %coll.entry.name, version = v, "removing a model version whose publication did not complete");
        store.drop_version(coll, v)?;
        remove_dir_if_present(&model_dir(data_dir, coll.entry.id, v))?;
    }
    // A kept version must have its checkpoint (a rollback loads it). Only a damaged directory
    // lacks one now; the active version keeps serving its stored SIDs all the same.
    let active = store.active_version(coll);
    for r in store.versions(coll)? {
        if r.version != active && !model_dir(data_dir, coll.entry.id, r.version).is_dir() {
            tracing::warn!(collection = %coll.entry.name, version = r.version, "removing a kept model version whose checkpoint directory is missing");
            store.drop_version(coll, r.version)?;
        }
    }
    let kept: HashSet<u64> = store.versions(coll)?.iter().map(|r| r.version).collect();
    let dir = collection_models_dir(data_dir, coll.entry.id);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let known = name.parse::<u64>().is_ok_and(|v| kept.contains(&v));
            if !known {
                remove_dir_if_present(&e.path())?;
            }
        }
    }
    store.sync()
}

/// A consistent view of a collection at one write sequence.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The write sequence it reflects.
    pub seq: u64,
    /// Item ids, row order of `item_x`.
    pub item_ids: Vec<Arc<str>>,
    /// Items' vectors, modalities concatenated in declaration order.
    pub item_x: Vec<f32>,
    /// Concatenated item dimension.
    pub item_dim: usize,
    /// User ids.
    pub user_ids: Vec<Arc<str>>,
    /// Users' own vectors when every user has one (`user_dim` each).
    pub user_x: Option<Vec<f32>>,
    /// User dimension.
    pub user_dim: usize,
    /// Interactions between stored users and items (dangling ones dropped), as indexes.
    pub interactions: Vec<Interaction>,
}

impl Snapshot {
    /// Reads the collection: the entities while writes go on (a snapshot of a large collection
    /// must not hold the writer for seconds), then the logged interactions up to the sequence
    /// at which that scan began. An entity written during the scan may be read in its old or
    /// its new state: callers start the index's tracking of written entities before taking a
    /// snapshot ([`CollectionIndex::start_tracking`]), and publication re-encodes those from
    /// their newest state under the writer lock.
    pub fn take(store: &Store, coll: &Collection) -> Result<Snapshot> {
        let cfg = coll.config();
        let mut s = Snapshot {
            item_dim: cfg.item_modalities.iter().map(|m| m.dim as usize).sum(),
            user_dim: cfg.user_dim as usize,
            ..Default::default()
        };
        let mut user_x = Vec::new();
        let mut all_users_have_vectors = cfg.user_dim > 0;
        s.seq = store.scan_entities_live(coll, |e| {
            match e {
                Scanned::Item(x) => {
                    s.item_ids.push(Arc::from(x.id.as_str()));
                    x.vectors.iter().for_each(|v| s.item_x.extend_from_slice(v));
                }
                Scanned::User(u) => {
                    s.user_ids.push(Arc::from(u.id.as_str()));
                    match u.vector {
                        Some(v) if all_users_have_vectors => user_x.extend(v),
                        _ => all_users_have_vectors = false,
                    }
                }
            }
            Ok(())
        })?;
        if all_users_have_vectors && !s.user_ids.is_empty() {
            s.user_x = Some(user_x);
        }
        let item_of: HashMap<&str, u32> = index_of(&s.item_ids);
        let user_of: HashMap<&str, u32> = index_of(&s.user_ids);
        let mut xs = Vec::new();
        store.scan_interactions(coll, s.seq, |x| {
            if let (Some(&u), Some(&i)) = (
                user_of.get(x.user_id.as_str()),
                item_of.get(x.item_id.as_str()),
            ) {
                xs.push(Interaction {
                    user: u,
                    item: i,
                    weight: x.weight,
                    ts_ms: x.timestamp_ms,
                });
            }
            Ok(())
        })?;
        s.interactions = xs;
        Ok(s)
    }

    /// The trainer's input. `profiles`: users as item-profile means even when they have vectors.
    pub fn training_data(&self, profiles: bool) -> TrainingData {
        let user_emb = if profiles { None } else { self.user_x.clone() };
        TrainingData {
            item_emb: self.item_x.clone(),
            item_dim: self.item_dim,
            user_dim: if user_emb.is_some() { self.user_dim } else { 0 },
            user_emb,
            interactions: self.interactions.clone(),
            n_users: self.user_ids.len(),
        }
    }
}

fn index_of(ids: &[Arc<str>]) -> HashMap<&str, u32> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (&**id, i as u32))
        .collect()
}

/// The next free dedup suffix per code tuple, among one version's entities of one kind.
#[derive(Debug, Default)]
struct Suffixes(HashMap<Vec<u32>, u32>);

impl Suffixes {
    /// Next free suffixes above every one `held`.
    fn above<'a>(held: impl IntoIterator<Item = &'a ModelSid>) -> Suffixes {
        let mut next: HashMap<Vec<u32>, u32> = HashMap::new();
        for s in held {
            let n = next.entry(s.codes.clone()).or_insert(0);
            *n = (*n).max(s.suffix + 1);
        }
        Suffixes(next)
    }

    /// The suffix of an entity that gets `codes`: the one it holds (`current`: its codes and
    /// suffix in this version) when its codes did not change, else the next free one for
    /// `codes`. `in_use` gives the first suffix above those this allocator does not know of
    /// (asked once per tuple).
    fn pick(
        &mut self,
        current: Option<(&[u32], u32)>,
        codes: &[u32],
        in_use: impl FnOnce() -> u32,
    ) -> u32 {
        if let Some((c, s)) = current {
            if c == codes {
                return s;
            }
        }
        let slot = self.0.entry(codes.to_vec()).or_insert_with(in_use);
        let s = *slot;
        *slot += 1;
        s
    }
}

/// Gives dedup suffixes to `sids` (in order): an entity keeps the suffix it has in `stable`
/// when its codes are unchanged and the suffix is still free; the others take the next free
/// suffix of their codes (above every suffix kept).
fn assign_suffixes(ids: &[Arc<str>], sids: &mut [ModelSid], stable: &HashMap<Arc<str>, ModelSid>) {
    let mut kept: HashSet<(Vec<u32>, u32)> = HashSet::new();
    let mut fresh = vec![false; sids.len()];
    for ((id, s), fresh) in ids.iter().zip(sids.iter_mut()).zip(&mut fresh) {
        match stable.get(id) {
            Some(old) if old.codes == s.codes && kept.insert((s.codes.clone(), old.suffix)) => {
                s.suffix = old.suffix;
            }
            _ => *fresh = true,
        }
    }
    let mut next = Suffixes::above(
        sids.iter()
            .zip(&fresh)
            .filter(|(_, f)| !**f)
            .map(|(s, _)| s),
    );
    for (s, _) in sids.iter_mut().zip(&fresh).filter(|(_, f)| **f) {
        s.suffix = next.pick(None, &s.codes, || 0);
    }
}

/// First suffix above those the trie holds for exactly `codes`.
fn trie_next_free(trie: &SidTrie, codes: &[u32]) -> u32 {
    trie.ids_under(codes)
        .filter_map(|x| trie.get(x))
        .filter(|s| s.codes == codes)
        .map(|s| s.suffix + 1)
        .max()
        .unwrap_or(0)
}

/// The active model's SIDs of an upsert's entities, before suffixes: computed outside the
/// writer lock by [`encode_upsert`], finished under it by [`assign`].
pub struct EncodedUpsert {
    version: u64,
    /// Per entity in op order; `None`: no input (a user without vector or history).
    sids: Vec<Option<ModelSid>>,
}

/// Encodes the entities of an upsert with the active model (no lock needed; the work that
/// dominates online assignment, so concurrent writers encode in parallel). `None` for other ops
/// or without an active model.
pub fn encode_upsert(
    store: &Store,
    coll: &Collection,
    index: &CollectionIndex,
    retrieval: &RetrievalConfig,
    op: &WriteOp,
) -> Result<Option<EncodedUpsert>> {
    let Some(m) = index.model.load_full() else {
        return Ok(None);
    };
    let sids = match op {
        WriteOp::UpsertItems(items) => {
            let x: Vec<f32> = items.iter().flat_map(|it| it.vectors.concat()).collect();
            match x.is_empty() {
                true => Vec::new(),
                false => m.encode_items(&x)?.into_iter().map(Some).collect(),
            }
        }
        WriteOp::UpsertUsers(users) => {
            let mut rows = Vec::new();
            let mut has = Vec::with_capacity(users.len());
            for u in users {
                let x = m.user_input(store, coll, u, retrieval.profile_events)?;
                has.push(x.is_some());
                rows.extend(x.unwrap_or_default());
            }
            let mut enc = match rows.is_empty() {
                true => Vec::new(),
                false => m.encode_users(&rows)?,
            }
            .into_iter();
            has.into_iter()
                .map(|h| if h { enc.next() } else { None })
                .collect()
        }
        _ => return Ok(None),
    };
    Ok(Some(EncodedUpsert {
        version: m.version,
        sids,
    }))
}

/// Online assignment, under the writer lock: wraps an upsert in `WriteOp::Assigned` with the
/// active version's SIDs and their suffixes. Uses `pre` when it was encoded by the version still
/// active, else encodes again here (a version switched in between). Other ops pass through.
pub fn assign(
    store: &Store,
    coll: &Collection,
    index: &CollectionIndex,
    meta: &Meta,
    retrieval: &RetrievalConfig,
    op: WriteOp,
    pre: Option<EncodedUpsert>,
) -> Result<WriteOp> {
    let upsert = matches!(op, WriteOp::UpsertItems(_) | WriteOp::UpsertUsers(_));
    if meta.active_version == 0 || !upsert {
        return Ok(op);
    }
    let enc = match pre {
        Some(p) if p.version == meta.active_version => p,
        _ => match encode_upsert(store, coll, index, retrieval, &op)? {
            Some(p) if p.version == meta.active_version => p,
            // The active version's model is not loaded (its checkpoint failed to load).
            _ => return Ok(op),
        },
    };
    let version = enc.version;
    let mut upd = SidUpdate {
        version,
        ..Default::default()
    };
    let st = index.state.read();
    let mut next = Suffixes::default();
    let (ids, trie, out): (Vec<&String>, _, _) = match &op {
        WriteOp::UpsertItems(v) => (
            v.iter().map(|x| &x.id).collect(),
            &st.items.trie,
            &mut upd.items,
        ),
        WriteOp::UpsertUsers(v) => (
            v.iter().map(|x| &x.id).collect(),
            &st.users.trie,
            &mut upd.users,
        ),
        _ => return Ok(op),
    };
    for (id, sid) in ids.into_iter().zip(enc.sids) {
        let sid = sid.map(|mut s| {
            let current = trie
                .get(id)
                .filter(|c| c.model_version == version)
                .map(|c| (&c.codes[..], c.suffix));
            s.suffix = next.pick(current, &s.codes, || trie_next_free(trie, &s.codes));
            s
        });
        out.push((id.clone(), sid));
    }
    drop(st);
    Ok(WriteOp::Assigned(Box::new(op), upd))
}

/// Everything a publication needs besides the model.
pub struct PublishCtx<'a> {
    /// The store.
    pub store: &'a Store,
    /// The collection.
    pub coll: &'a Collection,
    /// Its retrieval state.
    pub index: &'a CollectionIndex,
    /// The data directory (checkpoints).
    pub data_dir: &'a Path,
    /// Retrieval settings (profile length).
    pub retrieval: &'a RetrievalConfig,
    /// Training settings (versions kept).
    pub training: &'a TrainingConfig,
}

/// Encodes every snapshot entity with `m`: the SIDs of a version before catch-up. `prep` is the
/// snapshot's prepared data (its user inputs as `m` encodes users). Sets the mean item `z` norm
/// that routes users (from these items).
pub fn encode_snapshot(
    m: &mut LoadedModel,
    snap: &Snapshot,
    prep: &Prepared,
) -> Result<VersionSids> {
    let mut out = VersionSids {
        version: m.version,
        ..Default::default()
    };
    if !snap.item_ids.is_empty() {
        let items = m.encode_items(&snap.item_x)?;
        m.info.mean_item_z_norm = mean_length(items.iter().map(|s| &s.z[..]));
        for (id, s) in snap.item_ids.iter().zip(items) {
            out.items.insert(Arc::clone(id), s);
        }
    }
    // Users with no own vector and no positive interaction have no input (a zero row): no SID.
    let rows: Vec<(&Arc<str>, &[f32])> = snap
        .user_ids
        .iter()
        .zip(prep.x_user.chunks(prep.user_dim.max(1)))
        .filter(|(_, r)| r.iter().any(|v| *v != 0.0))
        .collect();
    if !rows.is_empty() {
        let x: Vec<f32> = rows.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        for ((id, _), s) in rows.iter().zip(m.encode_users(&x)?) {
            out.users.insert(Arc::clone(id), s);
        }
    }
    Ok(out)
}

/// The prepared form of `snap` as `m` encodes users (own vectors or profiles).
fn prepare(m: &LoadedModel, snap: &Snapshot) -> Result<Prepared> {
    let data = snap.training_data(m.info.users_from_profiles);
    Prepared::new(&data, m.info.recency()).map_err(Error::from)
}

/// Makes the kept version `version` active again: its SIDs are computed afresh from the
/// collection as it is now (suffixes kept where the codes did not change).
pub fn rollback(ctx: &PublishCtx, version: u64) -> Result<()> {
    let mut m = load_model(ctx.data_dir, ctx.coll.entry.id, version)?;
    ctx.index.start_tracking();
    let result = (|| {
        let snap = Snapshot::take(ctx.store, ctx.coll)?;
        let prep = prepare(&m, &snap)?;
        let sids = encode_snapshot(&mut m, &snap, &prep)?;
        publish(ctx, m, &snap, sids, None)
    })();
    ctx.index.stop_tracking();
    result.map(|_| ())
}

/// Publishes `m` as the active version with `sids` (from [`encode_snapshot`] of `snap`; see the
/// module docs). `report` is stored with a new version; a rollback (the version has a record)
/// keeps its report.
pub fn publish(
    ctx: &PublishCtx,
    m: LoadedModel,
    snap: &Snapshot,
    mut sids: VersionSids,
    report: Option<&ModelReport>,
) -> Result<u64> {
    let (store, coll, index) = (ctx.store, ctx.coll, ctx.index);
    let version = m.version;
    let existing = store
        .versions(coll)?
        .into_iter()
        .find(|r| r.version == version);
    match existing {
        None => save_model(ctx.data_dir, coll.entry.id, &m)?,
        // A rollback: its users are routed with the norm of today's items.
        Some(_) => save_serving_info(ctx.data_dir, coll.entry.id, &m)?,
    }
    // Suffixes: stable against what this version gave before (a rollback), else fresh.
    let mut stable = VersionSids::default();
    if existing.is_some() {
        store.scan_model_sids(coll, version, |kind, id, s| {
            stable.of_mut(kind).insert(Arc::from(id), s);
            Ok(())
        })?;
    }
    for kind in [EntityKind::Items, EntityKind::Users] {
        let map = sids.of_mut(kind);
        let mut ids: Vec<Arc<str>> = map.keys().cloned().collect();
        ids.sort();
        let mut rows: Vec<ModelSid> = ids.iter().map(|id| map[id].clone()).collect();
        assign_suffixes(&ids, &mut rows, stable.of(kind));
        for (id, s) in ids.into_iter().zip(rows) {
            map.insert(id, s);
        }
    }
    let record = match existing {
        Some(r) => {
            store.clear_version_sids(coll, version)?;
            r
        }
        None => VersionRecord {
            version,
            created_ms: now_ms(),
            activated: false,
            snapshot_seq: snap.seq,
            report: serde_json::to_string(&report.cloned().unwrap_or_default())
                .expect("plain data serialises"),
        },
    };
    store.put_version(coll, &record)?;
    for kind in [EntityKind::Items, EntityKind::Users] {
        let mut rows: Vec<(String, ModelSid)> = sids
            .of(kind)
            .iter()
            .map(|(id, s)| (id.to_string(), s.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        store.put_model_sids(coll, version, kind, &rows)?;
    }
    store.sync()?;
    pause_point("after-bulk");

    // The switch: catch up on the entities written since the snapshot, under the writer lock
    // (the suffix allocators are built here, outside it).
    let mut next = [
        Suffixes::above(sids.items.values()),
        Suffixes::above(sids.users.values()),
    ];
    let sids = Mutex::new(sids);
    let m = Arc::new(m);
    let (_, lsn) = store.write_prepared(
        coll,
        |_meta| {
            let touched = index.state.write().touched.take().unwrap_or_default();
            let mut sids = sids.lock();
            let upd = catch_up(ctx, &m, &mut sids, &mut next, touched)?;
            Ok(WriteOp::Activate(upd))
        },
        Durability::Durable,
        |seq, op| {
            index.install(seq, &sids.lock(), &m, op);
            index.model.store(Some(Arc::clone(&m)));
        },
    )?;
    store.wait_durable_blocking(lsn)?;
    pause_point("after-activate");
    prune(ctx)?;
    Ok(version)
}

/// SIDs of the entities written since the snapshot, from their newest state; `sids` is updated
/// to match.
fn catch_up(
    ctx: &PublishCtx,
    m: &LoadedModel,
    sids: &mut VersionSids,
    [next_items, next_users]: &mut [Suffixes; 2],
    touched: HashSet<(EntityKind, Arc<str>)>,
) -> Result<SidUpdate> {
    let mut upd = SidUpdate {
        version: m.version,
        ..Default::default()
    };
    let (mut item_ids, mut user_ids): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for (kind, id) in touched {
        match kind {
            EntityKind::Items => item_ids.push(id.to_string()),
            EntityKind::Users => user_ids.push(id.to_string()),
        }
    }
    item_ids.sort();
    user_ids.sort();
    let items: Vec<Option<ItemRecord>> = ctx.store.get_items(ctx.coll, &item_ids)?;
    let live: Vec<&ItemRecord> = items.iter().flatten().collect();
    let x: Vec<f32> = live.iter().flat_map(|it| it.vectors.concat()).collect();
    let mut enc = if live.is_empty() {
        Vec::new()
    } else {
        m.encode_items(&x)?
    }
    .into_iter();
    for (id, rec) in item_ids.iter().zip(&items) {
        let s = match rec {
            Some(_) => enc.next(),
            None => None,
        };
        let s = s.map(|mut s| {
            let current = sids.items.get(&**id).map(|c| (&c.codes[..], c.suffix));
            s.suffix = next_items.pick(current, &s.codes, || 0);
            s
        });
        set_in_map(&mut sids.items, id, s.clone());
        upd.items.push((id.clone(), s));
    }
    let users = ctx.store.get_users(ctx.coll, &user_ids)?;
    for (id, rec) in user_ids.iter().zip(&users) {
        let input = match rec {
            Some(u) => m.user_input(ctx.store, ctx.coll, u, ctx.retrieval.profile_events)?,
            None => None,
        };
        let s = match input {
            Some(x) => m.encode_users(&x)?.pop().map(|mut s| {
                let current = sids.users.get(&**id).map(|c| (&c.codes[..], c.suffix));
                s.suffix = next_users.pick(current, &s.codes, || 0);
                s
            }),
            None => None,
        };
        set_in_map(&mut sids.users, id, s.clone());
        upd.users.push((id.clone(), s));
    }
    Ok(upd)
}

fn set_in_map(map: &mut HashMap<Arc<str>, ModelSid>, id: &str, s: Option<ModelSid>) {
    match s {
        Some(s) => {
            map.insert(Arc::from(id), s);
        }
        None => {
            map.remove(id);
        }
    }
}

/// Drops the oldest versions beyond `training.keep_versions` (never the active one).
fn prune(ctx: &PublishCtx) -> Result<()> {
    prune_versions(
        ctx.store,
        ctx.coll,
        ctx.data_dir,
        ctx.training.keep_versions,
    )
}

/// Drops the oldest versions beyond `keep` (at least 1; never the active one): after a
/// publication, and at start, where a crash between an activation and its prune left one too
/// many. The records and SIDs go first and are synced before any checkpoint directory is
/// removed, so a crash in between leaves directories without a record (which
/// [`drop_aborted`] removes), never a kept version whose checkpoint is gone.
pub fn prune_versions(
    store: &Store,
    coll: &Collection,
    data_dir: &Path,
    keep: usize,
) -> Result<()> {
    let active = store.active_version(coll);
    let versions = store.versions(coll)?;
    let keep = keep.max(1);
    if versions.len() <= keep {
        return Ok(());
    }
    let mut drop: Vec<u64> = versions
        .iter()
        .map(|r| r.version)
        .filter(|v| *v != active)
        .collect();
    drop.sort_unstable();
    drop.truncate(versions.len() - keep);
    for &v in &drop {
        store.drop_version(coll, v)?;
    }
    store.sync()?;
    for v in drop {
        remove_dir_if_present(&model_dir(data_dir, coll.entry.id, v))?;
        tracing::info!(collection = %coll.entry.name, version = v, "model version pruned");
    }
    Ok(())
}

/// Test hook of the crash tests: with `SIDB_PAUSE_AT=<point>` the publication logs
/// `pause point reached` and stops there for good, so a test can `kill -9` the process at an
/// exact step. Points: `after-bulk` (SIDs written and synced, not activated), `after-activate`,
/// `indexer` (the background indexer at its start, before it touches a loaded index).
/// Only in builds with the `testing` feature (every `cargo test`); a no-op otherwise.
pub fn pause_point(point: &str) {
    #[cfg(not(feature = "testing"))]
    let _ = point;
    #[cfg(feature = "testing")]
    if std::env::var("SIDB_PAUSE_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "pause point reached");
        loop {
            std::thread::park();
        }
    }
}

/// The collection's config decides K and L when it sets them.
pub fn das_config(
    coll: &CollectionConfig,
    training: &TrainingConfig,
    recency: crate::profile::Recency,
    warm: bool,
) -> crate::model::DasConfig {
    let mut cfg = crate::model::DasConfig {
        seed: training.seed,
        threads: training.threads,
        recency_half_life_days: recency.half_life_days,
        recency_half_life_events: recency.half_life_events,
        ..Default::default()
    };
    if coll.sid_levels > 0 {
        cfg.levels = coll.sid_levels as usize;
    }
    if coll.sid_codebook_size > 0 {
        cfg.codes = Some(coll.sid_codebook_size as usize);
    }
    if training.batch > 0 {
        cfg.batch = training.batch;
    }
    cfg.stability_weight = training.stability_weight;
    let cold = match training.steps {
        0 => cfg.steps,
        s => s,
    };
    cfg.steps = match (warm, training.warm_steps) {
        (false, _) => cold,
        (true, 0) => (cold / 2).max(1),
        (true, s) => s,
    };
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(codes: &[u32], suffix: u32) -> ModelSid {
        ModelSid {
            codes: codes.to_vec(),
            suffix,
            ..Default::default()
        }
    }

    #[test]
    fn suffixes_stay_where_codes_stay_and_new_ones_go_above_every_kept_one() {
        let ids: Vec<Arc<str>> = ["a", "b", "c", "d"].into_iter().map(Arc::from).collect();
        // a and b held (1,1) with suffixes 3 and 0; c held (2,2); d is new.
        let stable: HashMap<Arc<str>, ModelSid> = [
            (Arc::from("a"), sid(&[1, 1], 3)),
            (Arc::from("b"), sid(&[1, 1], 0)),
            (Arc::from("c"), sid(&[2, 2], 5)),
        ]
        .into_iter()
        .collect();
        let mut sids = vec![
            sid(&[1, 1], 0),
            sid(&[1, 1], 0),
            sid(&[1, 1], 0),
            sid(&[2, 2], 0),
        ];
        assign_suffixes(&ids, &mut sids, &stable);
        let got: Vec<u32> = sids.iter().map(|s| s.suffix).collect();
        // a, b keep theirs; c moved to (1,1): above the kept 3; d takes (2,2) from 0 (c left it).
        assert_eq!(got, vec![3, 0, 4, 0]);

        let mut next = Suffixes::above(&sids);
        // Unchanged codes keep the suffix; changed ones take the next free; `in_use` is asked
        // once per unknown tuple.
        assert_eq!(next.pick(Some((&[1, 1], 3)), &[1, 1], || unreachable!()), 3);
        assert_eq!(next.pick(Some((&[2, 2], 0)), &[1, 1], || unreachable!()), 5);
        assert_eq!(next.pick(None, &[7, 7], || 9), 9);
        assert_eq!(next.pick(None, &[7, 7], || unreachable!()), 10);
    }
}
