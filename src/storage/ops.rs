//! Write operations: what one acknowledged write changes, as logged in the WAL and applied to a
//! collection's sled tree. The same [`apply`] serves live writes and recovery, so a replayed
//! entry changes exactly what the original write changed.

use std::collections::HashSet;

use sled::{Batch, Tree};

use super::codec::{self, Dec, Enc};
use super::keys::{self, tag, HistoryPos};
use super::models::{self, ModelSid};
use crate::error::{Error, Result};
use crate::types::{CollectionStats, EntityKind, InteractionRecord, ItemRecord, UserRecord};

/// One write, as logged.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Insert or replace items.
    UpsertItems(Vec<ItemRecord>),
    /// Delete items by id.
    DeleteItems(Vec<String>),
    /// Insert or replace users.
    UpsertUsers(Vec<UserRecord>),
    /// Delete users by id.
    DeleteUsers(Vec<String>),
    /// Append interactions.
    Interactions(Vec<InteractionRecord>),
    /// An upsert of items or users together with the SIDs the active model gave them at write
    /// time (online assignment), applied in the same batch.
    Assigned(Box<WriteOp>, SidUpdate),
    /// Makes `SidUpdate::version` the active model version, writing its SIDs for the entities
    /// written since its snapshot (the bulk was written before, see `storage::models`).
    Activate(SidUpdate),
}

/// Model SIDs of one version for some entities; `None` clears an entity's SID.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SidUpdate {
    /// The model version.
    pub version: u64,
    /// Items.
    pub items: Vec<(String, Option<ModelSid>)>,
    /// Users.
    pub users: Vec<(String, Option<ModelSid>)>,
}

impl SidUpdate {
    fn put(&self, e: &mut Enc) {
        e.u64(self.version);
        for list in [&self.items, &self.users] {
            e.u32(list.len() as u32);
            for (id, sid) in list {
                e.str(id);
                match sid {
                    None => e.u8(0),
                    Some(s) => {
                        e.u8(1);
                        ModelSid::put(e, s);
                    }
                }
            }
        }
    }

    fn get(d: &mut Dec) -> Result<SidUpdate> {
        let version = d.u64()?;
        let entry = |d: &mut Dec| -> Result<(String, Option<ModelSid>)> {
            let id = d.str()?;
            let sid = match d.u8()? {
                0 => None,
                1 => Some(ModelSid::get(d)?),
                t => return Err(Error::DataLoss(format!("log entry: bad SID tag {t}"))),
            };
            Ok((id, sid))
        };
        Ok(SidUpdate {
            version,
            items: get_list(d, entry)?,
            users: get_list(d, entry)?,
        })
    }

    /// Stages the SIDs under `version` in `batch`.
    fn stage(&self, batch: &mut Batch) {
        for (kind, list) in [
            (EntityKind::Items, &self.items),
            (EntityKind::Users, &self.users),
        ] {
            for (id, sid) in list {
                let key = models::sid_key(self.version, kind, id);
                match sid {
                    Some(s) => batch.insert(key, codec::encode_value(s, ModelSid::put)),
                    None => batch.remove(key),
                }
            }
        }
    }
}

impl WriteOp {
    /// Whether the op writes client-computed semantic IDs.
    pub fn carries_sids(&self) -> bool {
        match self {
            WriteOp::UpsertItems(v) => v.iter().any(|x| x.sid.is_some()),
            WriteOp::UpsertUsers(v) => v.iter().any(|x| x.sid.is_some()),
            WriteOp::Assigned(inner, _) => inner.carries_sids(),
            _ => false,
        }
    }
}

/// A collection's persistent counters, stored under the `META` key and updated in the same atomic
/// sled batch as the data they count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Counts and the last applied sequence.
    pub stats: CollectionStats,
    /// Set once a client wrote SIDs of its own.
    pub client_sids: bool,
    /// The active model version (0: none).
    pub active_version: u64,
}

/// The key of [`Meta`] in a collection tree.
pub const META_KEY: &[u8] = &[tag::META];

impl Meta {
    /// Encodes the meta record.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::versioned();
        let s = &self.stats;
        for v in [s.last_sequence, s.items, s.users, s.interactions] {
            e.u64(v);
        }
        e.u8(self.client_sids as u8);
        e.u64(self.active_version);
        e.buf
    }

    /// Decodes the meta record.
    pub fn decode(buf: &[u8]) -> Result<Meta> {
        let mut d = Dec::versioned(buf, "collection meta")?;
        let stats = CollectionStats {
            last_sequence: d.u64()?,
            items: d.u64()?,
            users: d.u64()?,
            interactions: d.u64()?,
        };
        let client_sids = d.u8()? != 0;
        // Written since model versions exist; absent in older records.
        let active_version = match d.rest().is_empty() {
            true => 0,
            false => d.u64()?,
        };
        d.finish()?;
        Ok(Meta {
            stats,
            client_sids,
            active_version,
        })
    }

    /// Reads the meta of a tree (zero for a fresh tree).
    pub fn load(tree: &Tree) -> Result<Meta> {
        match tree.get(META_KEY)? {
            Some(v) => Meta::decode(&v),
            None => Ok(Meta::default()),
        }
    }
}

const OP_UPSERT_ITEMS: u8 = 1;
const OP_DELETE_ITEMS: u8 = 2;
const OP_UPSERT_USERS: u8 = 3;
const OP_DELETE_USERS: u8 = 4;
const OP_INTERACTIONS: u8 = 5;
const OP_ASSIGNED: u8 = 6;
const OP_ACTIVATE: u8 = 7;

/// A logged write: which collection (by its never-reused id), which sequence, what.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Collection id.
    pub collection: u64,
    /// Sequence number within the collection.
    pub seq: u64,
    /// The write.
    pub op: WriteOp,
}

fn put_ids(e: &mut Enc, ids: &[String]) {
    e.u32(ids.len() as u32);
    for id in ids {
        e.str(id);
    }
}

fn get_list<T>(d: &mut Dec, get: impl Fn(&mut Dec) -> Result<T>) -> Result<Vec<T>> {
    let n = d.u32()? as usize;
    // Every element takes at least 4 bytes: a larger count is corruption, not a reason to allocate.
    if n > d.rest().len() / 4 + 1 {
        return Err(Error::DataLoss(format!(
            "log entry: list of {n} is longer than the entry"
        )));
    }
    (0..n).map(|_| get(d)).collect()
}

impl LogEntry {
    /// Encodes the entry as a WAL payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::versioned();
        e.u64(self.collection);
        e.u64(self.seq);
        put_op(&mut e, &self.op);
        e.buf
    }

    /// Decodes a WAL payload.
    pub fn decode(buf: &[u8]) -> Result<LogEntry> {
        let mut d = Dec::versioned(buf, "log entry")?;
        let collection = d.u64()?;
        let seq = d.u64()?;
        let op = get_op(&mut d, true)?;
        d.finish()?;
        Ok(LogEntry {
            collection,
            seq,
            op,
        })
    }
}

fn put_op(e: &mut Enc, op: &WriteOp) {
    match op {
        WriteOp::UpsertItems(v) => {
            e.u8(OP_UPSERT_ITEMS);
            e.u32(v.len() as u32);
            v.iter().for_each(|x| codec::put_item(e, x));
        }
        WriteOp::DeleteItems(ids) => {
            e.u8(OP_DELETE_ITEMS);
            put_ids(e, ids);
        }
        WriteOp::UpsertUsers(v) => {
            e.u8(OP_UPSERT_USERS);
            e.u32(v.len() as u32);
            v.iter().for_each(|x| codec::put_user(e, x));
        }
        WriteOp::DeleteUsers(ids) => {
            e.u8(OP_DELETE_USERS);
            put_ids(e, ids);
        }
        WriteOp::Interactions(v) => {
            e.u8(OP_INTERACTIONS);
            e.u32(v.len() as u32);
            v.iter().for_each(|x| codec::put_interaction(e, x));
        }
        WriteOp::Assigned(inner, sids) => {
            e.u8(OP_ASSIGNED);
            put_op(e, inner);
            sids.put(e);
        }
        WriteOp::Activate(sids) => {
            e.u8(OP_ACTIVATE);
            sids.put(e);
        }
    }
}

/// Decodes one op. Only a `top`-level op may be `Assigned` (wrapping a plain upsert) or
/// `Activate`.
fn get_op(d: &mut Dec, top: bool) -> Result<WriteOp> {
    Ok(match d.u8()? {
        OP_UPSERT_ITEMS => WriteOp::UpsertItems(get_list(d, codec::get_item)?),
        OP_DELETE_ITEMS => WriteOp::DeleteItems(get_list(d, |d| d.str())?),
        OP_UPSERT_USERS => WriteOp::UpsertUsers(get_list(d, codec::get_user)?),
        OP_DELETE_USERS => WriteOp::DeleteUsers(get_list(d, |d| d.str())?),
        OP_INTERACTIONS => WriteOp::Interactions(get_list(d, codec::get_interaction)?),
        OP_ASSIGNED if top => {
            let inner = get_op(d, false)?;
            if !matches!(inner, WriteOp::UpsertItems(_) | WriteOp::UpsertUsers(_)) {
                return Err(Error::DataLoss(
                    "log entry: SIDs assigned to a non-upsert".into(),
                ));
            }
            WriteOp::Assigned(Box::new(inner), SidUpdate::get(d)?)
        }
        OP_ACTIVATE if top => WriteOp::Activate(SidUpdate::get(d)?),
        t => return Err(Error::DataLoss(format!("log entry: unknown op {t}"))),
    })
}

/// Applies one write to a collection tree in a single atomic sled batch, together with the
/// updated [`Meta`]. Returns the number of entities written. `meta` is updated only on success.
///
/// A large interaction batch is the exception: sled keeps every page version a batch creates
/// until the batch ends (one epoch guard spans it), which made one request of 100,000
/// interactions cost ~0.9 GB of memory. Its first interactions go to sled in slices of
/// [`INTERACTION_SLICE`] before the final batch, which holds the rest and the `Meta`. Until that
/// final batch lands, readers may see a prefix of the write, as they may see any write before its
/// sync; a crash in between is repaired by the replay, which writes the whole entry again. Every
/// interaction's keys are a function of the entry alone (sequence, position, user, timestamp),
/// so writing a slice twice changes nothing, and the counts come from the entry, not from sled.
pub fn apply(tree: &Tree, meta: &mut Meta, seq: u64, op: &WriteOp) -> Result<u64> {
    let mut batch = Batch::default();
    let mut next = *meta;
    let written = match op {
        WriteOp::Interactions(xs) if xs.len() > INTERACTION_SLICE => {
            let last = (xs.len() - 1) / INTERACTION_SLICE * INTERACTION_SLICE;
            for start in (0..last).step_by(INTERACTION_SLICE) {
                let mut slice = Batch::default();
                append_interactions(
                    &mut slice,
                    seq,
                    start,
                    &xs[start..start + INTERACTION_SLICE],
                )?;
                tree.apply_batch(slice)?;
            }
            append_interactions(&mut batch, seq, last, &xs[last..])?;
            next.stats.interactions += xs.len() as u64;
            xs.len() as u64
        }
        _ => stage(tree, &mut batch, &mut next, seq, op)?,
    };
    next.stats.last_sequence = seq;
    next.client_sids |= op.carries_sids();
    batch.insert(META_KEY, next.encode());
    tree.apply_batch(batch)?;
    *meta = next;
    Ok(written)
}

/// Stages `op` into `batch`, updating `next`.
fn stage(tree: &Tree, batch: &mut Batch, next: &mut Meta, seq: u64, op: &WriteOp) -> Result<u64> {
    let batch = &mut *batch;
    Ok(match op {
        WriteOp::UpsertItems(items) => {
            let added = upsert(tree, batch, tag::ITEM, items, |x| &x.id, codec::put_item)?;
            next.stats.items += added;
            items.len() as u64
        }
        WriteOp::UpsertUsers(users) => {
            let added = upsert(tree, batch, tag::USER, users, |x| &x.id, codec::put_user)?;
            next.stats.users += added;
            users.len() as u64
        }
        WriteOp::DeleteItems(ids) => {
            let n = delete(tree, batch, tag::ITEM, ids)?;
            next.stats.items -= n.min(next.stats.items);
            clear_model_sids(batch, next.active_version, EntityKind::Items, ids);
            n
        }
        WriteOp::DeleteUsers(ids) => {
            let n = delete(tree, batch, tag::USER, ids)?;
            next.stats.users -= n.min(next.stats.users);
            clear_model_sids(batch, next.active_version, EntityKind::Users, ids);
            n
        }
        WriteOp::Interactions(xs) => {
            append_interactions(batch, seq, 0, xs)?;
            next.stats.interactions += xs.len() as u64;
            xs.len() as u64
        }
        WriteOp::Assigned(inner, sids) => {
            let n = stage(tree, batch, next, seq, inner)?;
            sids.stage(batch);
            n
        }
        WriteOp::Activate(sids) => {
            let key = models::version_key(sids.version);
            let Some(raw) = tree.get(&key)? else {
                return Err(Error::DataLoss(format!(
                    "activation of model version {} whose record is missing",
                    sids.version
                )));
            };
            let mut rec = models::VersionRecord::decode(&raw)?;
            rec.activated = true;
            batch.insert(key, rec.encode());
            sids.stage(batch);
            next.active_version = sids.version;
            0
        }
    })
}

/// Stages the removal of the active version's SIDs of deleted entities.
fn clear_model_sids(batch: &mut Batch, version: u64, kind: EntityKind, ids: &[String]) {
    if version == 0 {
        return;
    }
    for id in ids {
        batch.remove(models::sid_key(version, kind, id));
    }
}

/// Stages upserts; returns how many ids are new to the tree.
fn upsert<T>(
    tree: &Tree,
    batch: &mut Batch,
    tag: u8,
    records: &[T],
    id: fn(&T) -> &String,
    put: fn(&mut Enc, &T),
) -> Result<u64> {
    let mut seen = HashSet::with_capacity(records.len());
    let mut added = 0;
    for r in records {
        let key = keys::entity_key(tag, id(r));
        if seen.insert(key.clone()) && !tree.contains_key(&key)? {
            added += 1;
        }
        batch.insert(key, codec::encode_value(r, put));
    }
    Ok(added)
}

/// Stages deletions; returns how many existed.
fn delete(tree: &Tree, batch: &mut Batch, tag: u8, ids: &[String]) -> Result<u64> {
    let mut seen = HashSet::with_capacity(ids.len());
    let mut removed = 0;
    for id in ids {
        let key = keys::entity_key(tag, id);
        if seen.insert(key.clone()) && tree.contains_key(&key)? {
            removed += 1;
        }
        batch.remove(key);
    }
    Ok(removed)
}

/// Interactions per sled batch when one write holds more (see [`apply`]). sled's memory grows
/// faster than linearly with a batch's size: six writes of 100,000 interactions left the store
/// at 2.5 GB RSS in slices of 2,000, 208 MB in slices of 500 and 150 MB in slices of 250 (16 MiB
/// cache; `storage::damage_tests::memory_probe`), at the same speed.
pub const INTERACTION_SLICE: usize = 250;

/// Stages interactions `xs`, the ones at positions `first..` of their write.
fn append_interactions(
    batch: &mut Batch,
    seq: u64,
    first: usize,
    xs: &[InteractionRecord],
) -> Result<()> {
    for (i, x) in xs.iter().enumerate() {
        let index =
            u32::try_from(first + i).map_err(|_| Error::invalid("too many interactions"))?;
        let mut rec = x.clone();
        rec.sequence = seq;
        let value = codec::encode_value(&rec, codec::put_interaction);
        let pos = HistoryPos {
            timestamp_ms: x.timestamp_ms,
            seq,
            index,
        };
        batch.insert(keys::history_key(&x.user_id, pos), value.clone());
        batch.insert(keys::log_key(seq, index), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SemanticId;

    #[test]
    fn log_entry_roundtrip_every_op() {
        let item = ItemRecord {
            id: "i".into(),
            vectors: vec![vec![1.0]],
            attributes: Default::default(),
            sid: Some(SemanticId {
                codes: vec![1],
                suffix: 0,
                model_version: 0,
            }),
        };
        let user = UserRecord {
            id: "u".into(),
            vector: None,
            attributes: Default::default(),
            sid: None,
        };
        let x = InteractionRecord {
            user_id: "u".into(),
            item_id: "i".into(),
            kind: "click".into(),
            weight: 1.0,
            timestamp_ms: -5,
            sequence: 0,
        };
        for op in [
            WriteOp::UpsertItems(vec![item]),
            WriteOp::DeleteItems(vec!["a".into(), "".into()]),
            WriteOp::UpsertUsers(vec![user.clone()]),
            WriteOp::DeleteUsers(vec!["b".into()]),
            WriteOp::Interactions(vec![x]),
            WriteOp::Assigned(
                Box::new(WriteOp::UpsertUsers(vec![user.clone()])),
                sid_update(),
            ),
            WriteOp::Activate(sid_update()),
        ] {
            let e = LogEntry {
                collection: 3,
                seq: 9,
                op,
            };
            assert_eq!(LogEntry::decode(&e.encode()).unwrap(), e);
        }
    }

    fn sid_update() -> SidUpdate {
        let s = ModelSid {
            codes: vec![3, 1, 4],
            suffix: 2,
            route: vec![1, 5, 9],
            z: vec![0.25, -1.5],
        };
        SidUpdate {
            version: 7,
            items: vec![("i".into(), Some(s.clone())), ("gone".into(), None)],
            users: vec![("u".into(), Some(s))],
        }
    }

    #[test]
    fn nested_or_misplaced_model_ops_are_data_loss() {
        // An `Assigned` must wrap a plain upsert, once.
        let nested = WriteOp::Assigned(
            Box::new(WriteOp::Assigned(
                Box::new(WriteOp::UpsertItems(vec![])),
                SidUpdate::default(),
            )),
            SidUpdate::default(),
        );
        let wraps_delete = WriteOp::Assigned(
            Box::new(WriteOp::DeleteItems(vec!["x".into()])),
            SidUpdate::default(),
        );
        for op in [nested, wraps_delete] {
            let e = LogEntry {
                collection: 1,
                seq: 1,
                op,
            };
            assert!(matches!(
                LogEntry::decode(&e.encode()),
                Err(Error::DataLoss(_))
            ));
        }
    }

    #[test]
    fn activation_flips_the_version_with_its_sids_and_deletes_clear_them() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut meta = Meta::default();
        // Without its record an activation is refused (nothing is applied).
        let act = WriteOp::Activate(sid_update());
        assert!(matches!(
            apply(&tree, &mut meta, 1, &act),
            Err(Error::DataLoss(_))
        ));
        assert_eq!(meta.active_version, 0);
        let rec = models::VersionRecord {
            version: 7,
            created_ms: 1,
            activated: false,
            snapshot_seq: 0,
            report: "{}".into(),
        };
        tree.insert(models::version_key(7), rec.encode()).unwrap();
        apply(&tree, &mut meta, 1, &act).unwrap();
        assert_eq!(meta.active_version, 7);
        assert_eq!(Meta::load(&tree).unwrap(), meta);
        let stored =
            models::VersionRecord::decode(&tree.get(models::version_key(7)).unwrap().unwrap())
                .unwrap();
        assert!(stored.activated);
        let key = models::sid_key(7, EntityKind::Items, "i");
        assert!(tree.contains_key(&key).unwrap());
        apply(&tree, &mut meta, 2, &WriteOp::DeleteItems(vec!["i".into()])).unwrap();
        assert!(
            !tree.contains_key(&key).unwrap(),
            "a deleted item keeps its SID"
        );
        assert!(tree
            .contains_key(models::sid_key(7, EntityKind::Users, "u"))
            .unwrap());
    }

    #[test]
    fn meta_without_active_version_reads_as_none() {
        // A record written before model versions existed.
        let mut e = Enc::versioned();
        for v in [5u64, 1, 2, 3] {
            e.u64(v);
        }
        e.u8(1);
        let m = Meta::decode(&e.buf).unwrap();
        assert_eq!(
            (m.stats.last_sequence, m.client_sids, m.active_version),
            (5, true, 0)
        );
    }

    #[test]
    fn corrupt_entries_are_data_loss() {
        let e = LogEntry {
            collection: 1,
            seq: 1,
            op: WriteOp::DeleteItems(vec!["x".into()]),
        };
        let b = e.encode();
        for cut in 0..b.len() {
            assert!(matches!(
                LogEntry::decode(&b[..cut]),
                Err(Error::DataLoss(_))
            ));
        }
    }

    #[test]
    fn a_sliced_interaction_write_replayed_after_a_partial_apply_lands_whole_and_once() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let n = INTERACTION_SLICE * 3 + 7;
        let xs: Vec<InteractionRecord> = (0..n)
            .map(|i| InteractionRecord {
                user_id: format!("u{}", i % 7),
                item_id: format!("i{i}"),
                kind: "click".into(),
                weight: 1.0,
                timestamp_ms: (i % 13) as i64,
                sequence: 0,
            })
            .collect();
        let op = WriteOp::Interactions(xs.clone());
        let count = |tag: u8| tree.scan_prefix([tag]).count();
        // A crash after two slices reached sled: its meta still says sequence 0.
        for start in [0, INTERACTION_SLICE] {
            let mut b = Batch::default();
            let end = start + INTERACTION_SLICE;
            append_interactions(&mut b, 1, start, &xs[start..end]).unwrap();
            tree.apply_batch(b).unwrap();
        }
        assert_eq!(Meta::load(&tree).unwrap().stats.last_sequence, 0);
        // The replay writes the whole entry again.
        let mut meta = Meta::default();
        assert_eq!(apply(&tree, &mut meta, 1, &op).unwrap(), n as u64);
        assert_eq!(
            (meta.stats.interactions, meta.stats.last_sequence),
            (n as u64, 1)
        );
        assert_eq!(Meta::load(&tree).unwrap(), meta);
        assert_eq!((count(tag::HISTORY), count(tag::LOG)), (n, n));
        // Each interaction is there once, at its own position.
        let logged: Vec<InteractionRecord> = tree
            .scan_prefix([tag::LOG])
            .map(|kv| codec::decode_value(&kv.unwrap().1, "x", codec::get_interaction).unwrap())
            .collect();
        let want: Vec<InteractionRecord> = xs
            .into_iter()
            .map(|x| InteractionRecord { sequence: 1, ..x })
            .collect();
        assert_eq!(logged, want);
    }

    #[test]
    fn apply_counts_duplicates_and_deletes_once() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut meta = Meta::default();
        let mk = |id: &str| UserRecord {
            id: id.into(),
            vector: None,
            attributes: Default::default(),
            sid: None,
        };
        apply(
            &tree,
            &mut meta,
            1,
            &WriteOp::UpsertUsers(vec![mk("a"), mk("a"), mk("b")]),
        )
        .unwrap();
        assert_eq!(meta.stats.users, 2);
        apply(&tree, &mut meta, 2, &WriteOp::UpsertUsers(vec![mk("a")])).unwrap();
        assert_eq!(meta.stats.users, 2);
        let n = apply(
            &tree,
            &mut meta,
            3,
            &WriteOp::DeleteUsers(vec!["a".into(), "a".into(), "zz".into()]),
        )
        .unwrap();
        assert_eq!((n, meta.stats.users, meta.stats.last_sequence), (1, 1, 3));
        assert_eq!(Meta::load(&tree).unwrap(), meta);
    }
}
