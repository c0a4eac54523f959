//! The client-side model of what the server acknowledged: the oracle the checker compares the
//! restarted server against.
//!
//! The model is rebased on every check: after a restart the checker verifies the server against
//! `base` (the state verified at the previous check) plus the writes sent since, then makes
//! what it observed the new `base`. Between two checks every write is one of
//! - **acknowledged**, with the sequence number the server gave it (the order among
//!   acknowledged writes of a collection is their sequence order, not the order the replies
//!   arrived in);
//! - **in doubt**: sent, no reply (the server was killed), or a reply that cannot say which
//!   incarnation of a collection it went to; either outcome is allowed, but all or nothing of
//!   the batch;
//! - **rejected** with a code that writes nothing (NOT_FOUND of the collection).
//!
//! Ordering without a shared clock: a global `tick` counts sends and replies. An in-doubt write
//! `x` applied at all took a sequence above `lo_seq` (the highest acknowledged sequence of its
//! collection when it was sent), so it comes after every acknowledged write at or below it; a
//! write sent after `x`'s reply (`hi_tick`) comes after `x`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use sidb::proto as pb;

/// Items per collection: ids `i00`..; every item write picks from these, so a GetItems of the
/// pool sees every item that can exist.
pub const ITEM_POOL: usize = 40;
/// Users per collection: ids `u00`...
pub const USER_POOL: usize = 16;
/// Dimension of the items' one modality, "text".
pub const ITEM_DIM: usize = 8;
/// Dimension of the users' own vectors.
pub const USER_DIM: usize = 4;
/// SID levels of every collection.
pub const LEVELS: u32 = 2;
/// SID codebook size of every collection.
pub const CODES: u32 = 8;

/// Item id `n` of the pool.
pub fn item_id(n: usize) -> String {
    format!("i{n:02}")
}

/// User id `n` of the pool.
pub fn user_id(n: usize) -> String {
    format!("u{n:02}")
}

/// The config every collection of the run is created with.
pub fn collection_config() -> pb::CollectionConfig {
    pb::CollectionConfig {
        item_modalities: vec![pb::Modality {
            name: "text".into(),
            dim: ITEM_DIM as u32,
        }],
        user_dim: USER_DIM as u32,
        metric: pb::Metric::Cosine as i32,
        sid_levels: LEVELS,
        sid_codebook_size: CODES,
    }
}

/// Items or users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Items.
    Items,
    /// Users.
    Users,
}

impl Kind {
    /// Both kinds.
    pub const BOTH: [Kind; 2] = [Kind::Items, Kind::Users];

    /// The proto enum value.
    pub fn proto(self) -> i32 {
        match self {
            Kind::Items => pb::EntityKind::Items as i32,
            Kind::Users => pb::EntityKind::Users as i32,
        }
    }

    /// "item" or "user".
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Items => "item",
            Kind::Users => "user",
        }
    }
}

/// An entity's stored content, exactly: vectors as bit patterns, attributes sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Val {
    /// (modality or "" for a user's own vector, bits of each value).
    pub vectors: Vec<(String, Vec<u32>)>,
    /// Attributes by key.
    pub attrs: Vec<(String, String)>,
}

fn bits(v: &pb::Vector) -> Vec<u32> {
    v.values.iter().map(|x| x.to_bits()).collect()
}

fn floats(b: &[u32]) -> pb::Vector {
    pb::Vector {
        values: b.iter().map(|x| f32::from_bits(*x)).collect(),
    }
}

fn sorted<K: Ord + Clone, V: Clone>(m: &std::collections::HashMap<K, V>) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Val {
    /// An item's content as read (with vectors).
    pub fn of_item(it: &pb::Item) -> Val {
        let vectors = sorted(&it.vectors)
            .into_iter()
            .map(|(k, v)| (k, bits(&v)))
            .collect();
        Val {
            vectors,
            attrs: sorted(&it.attributes),
        }
    }

    /// A user's content as read (with vectors).
    pub fn of_user(u: &pb::User) -> Val {
        Val {
            vectors: u.vector.iter().map(|v| (String::new(), bits(v))).collect(),
            attrs: sorted(&u.attributes),
        }
    }

    /// The item that writes this content.
    pub fn to_item(&self, id: &str) -> pb::Item {
        pb::Item {
            id: id.into(),
            vectors: self
                .vectors
                .iter()
                .map(|(k, b)| (k.clone(), floats(b)))
                .collect(),
            attributes: self.attrs.iter().cloned().collect(),
            sid: None,
        }
    }

    /// The user that writes this content.
    pub fn to_user(&self, id: &str) -> pb::User {
        pb::User {
            id: id.into(),
            vector: self.vectors.first().map(|(_, b)| floats(b)),
            attributes: self.attrs.iter().cloned().collect(),
            sid: None,
        }
    }

    /// The write that produced it (its "op" attribute).
    pub fn op(&self) -> Option<u64> {
        let (_, v) = self.attrs.iter().find(|(k, _)| k == "op")?;
        v.parse().ok()
    }

    /// Where `self` (observed) first differs from `want`.
    pub fn diff(&self, want: &Val) -> String {
        for ((m, got), (_, exp)) in self.vectors.iter().zip(&want.vectors) {
            if let Some(i) = (0..got.len().min(exp.len())).find(|&i| got[i] != exp[i]) {
                return format!(
                    "vector {m:?}[{i}]: bits {:#010x}, expected {:#010x}",
                    got[i], exp[i]
                );
            }
            if got.len() != exp.len() {
                return format!("vector {m:?}: {} values, expected {}", got.len(), exp.len());
            }
        }
        if self.vectors.len() != want.vectors.len() {
            return format!(
                "{} vectors, expected {}",
                self.vectors.len(),
                want.vectors.len()
            );
        }
        format!("attributes {:?}, expected {:?}", self.attrs, want.attrs)
    }
}

/// One interaction as written; `kind` is `x<op>`, so an observed row names its batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// User id.
    pub user: String,
    /// Item id.
    pub item: String,
    /// Event kind (`x<op>`).
    pub kind: String,
    /// Weight bits.
    pub weight: u32,
    /// Timestamp.
    pub ts: i64,
}

impl Row {
    /// As sent.
    pub fn to_proto(&self) -> pb::Interaction {
        pb::Interaction {
            user_id: self.user.clone(),
            item_id: self.item.clone(),
            kind: self.kind.clone(),
            weight: f32::from_bits(self.weight),
            timestamp_ms: self.ts,
            sequence: 0,
        }
    }

    /// As read (the sequence apart).
    pub fn of(x: &pb::Interaction) -> Row {
        Row {
            user: x.user_id.clone(),
            item: x.item_id.clone(),
            kind: x.kind.clone(),
            weight: x.weight.to_bits(),
            ts: x.timestamp_ms,
        }
    }

    /// The batch that wrote it.
    pub fn op(&self) -> Option<u64> {
        self.kind.strip_prefix('x')?.parse().ok()
    }
}

/// What a write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// UpsertItems.
    UpsertItems,
    /// DeleteItems.
    DeleteItems,
    /// UpsertUsers.
    UpsertUsers,
    /// DeleteUsers.
    DeleteUsers,
    /// WriteInteractions.
    Interactions,
}

impl WriteKind {
    /// The entity kind it writes, if any.
    pub fn entity(self) -> Option<Kind> {
        match self {
            WriteKind::UpsertItems | WriteKind::DeleteItems => Some(Kind::Items),
            WriteKind::UpsertUsers | WriteKind::DeleteUsers => Some(Kind::Users),
            WriteKind::Interactions => None,
        }
    }
}

/// Where a write stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Sent, no reply yet.
    Pending,
    /// Acknowledged with `seq` at `tick`.
    Acked {
        /// Its sequence number.
        seq: u64,
        /// Tick of the reply.
        tick: u64,
        /// Wall time of the reply.
        at: Instant,
    },
    /// Either outcome allowed; a write sent after `hi_tick` comes after it (`u64::MAX`: no
    /// reply ever came).
    Doubt {
        /// Tick of the reply that left it in doubt.
        hi_tick: u64,
    },
    /// Refused; wrote nothing.
    Rejected,
}

/// One write since the last check.
#[derive(Debug, Clone)]
pub struct Write {
    /// Client-side id (in the items' "op" attribute and the interactions' kind).
    pub op: u64,
    /// What it does.
    pub what: WriteKind,
    /// DURABLE (else BUFFERED).
    pub durable: bool,
    /// Tick of the send.
    pub send_tick: u64,
    /// Highest acknowledged sequence of the collection at the send.
    pub lo_seq: u64,
    /// Where it stands.
    pub status: Status,
    /// Entity writes: (id, content; `None` = delete).
    pub ents: Vec<(String, Option<Val>)>,
    /// Interaction writes.
    pub rows: Vec<Row>,
}

/// What the last check verified.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Items present.
    pub items: BTreeMap<String, Val>,
    /// Users present.
    pub users: BTreeMap<String, Val>,
    /// Interaction batches present: op -> (sequence, rows).
    pub ix: BTreeMap<u64, (u64, Vec<Row>)>,
    /// The collection's last sequence.
    pub last_seq: u64,
}

impl State {
    /// Items or users.
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Val> {
        match kind {
            Kind::Items => &self.items,
            Kind::Users => &self.users,
        }
    }

    /// Items or users, mutably.
    pub fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Val> {
        match kind {
            Kind::Items => &mut self.items,
            Kind::Users => &mut self.users,
        }
    }
}

/// What is known about a collection's active model version.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    /// The version known durably active: observed after a restart, or acknowledged by
    /// ActivateModelVersion.
    pub floor: Option<u64>,
    /// The highest version seen when the floor's activation was sent: a training publishes a
    /// higher number, so a higher active version may have followed the floor.
    pub floor_max_seen: u64,
    /// Versions an activation may have switched to after the floor.
    pub after: BTreeSet<u64>,
    /// The highest version seen listed.
    pub max_seen: u64,
    /// Activations in flight: (op, version, send tick, max_seen at the send).
    pub pending: Vec<(u64, u64, u64, u64)>,
    /// Acknowledged activations since the last check: (send tick, reply tick, version).
    pub acked: Vec<(u64, u64, u64)>,
}

impl Versions {
    /// Whether `active` may be the active version after a restart.
    pub fn allows(&self, active: u64) -> bool {
        match self.floor {
            None => true,
            Some(f) => active == f || self.after.contains(&active) || active > self.floor_max_seen,
        }
    }
}

/// One incarnation of a collection name (a re-created collection is a new one).
#[derive(Debug, Clone)]
pub struct Inc {
    /// Client-side incarnation number.
    pub id: u64,
    /// Its config as created.
    pub config: pb::CollectionConfig,
    /// Verified at the last check.
    pub base: State,
    /// Writes since.
    pub writes: Vec<Write>,
    /// Highest acknowledged sequence so far.
    pub max_acked_seq: u64,
    /// Model versions.
    pub versions: Versions,
    /// A model version was seen active in this server process: every item must have a SID.
    pub active_seen: bool,
}

impl Inc {
    fn new(id: u64) -> Inc {
        Inc {
            id,
            config: collection_config(),
            base: State::default(),
            writes: Vec::new(),
            max_acked_seq: 0,
            versions: Versions::default(),
            active_seen: false,
        }
    }

    /// Every content `id` may hold now (`None`: absent): for the online read checks.
    pub fn possible(&self, kind: Kind, id: &str) -> Vec<Option<&Val>> {
        let mut out = vec![self.base.of(kind).get(id)];
        for w in &self.writes {
            if w.what.entity() == Some(kind) && w.status != Status::Rejected {
                out.extend(w.ents.iter().filter(|e| e.0 == id).map(|e| e.1.as_ref()));
            }
        }
        out
    }

    /// Whether `id` was ever written in this incarnation (since the last check or before).
    pub fn known(&self, kind: Kind, id: &str) -> bool {
        self.possible(kind, id).iter().any(|v| v.is_some())
    }
}

/// A collection's lifecycle as the client knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Created (acknowledged).
    Present,
    /// Deleted (acknowledged) or never created.
    Absent,
    /// A CreateCollection without a reply.
    CreateDoubt,
    /// A DeleteCollection without a reply.
    DeleteDoubt,
    /// The server holds a collection the model cannot describe (after a violation): the next
    /// check adopts what it finds.
    Unknown,
}

/// A collection name of the run.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its name.
    pub name: String,
    /// Created and deleted by the workload (else created once, never deleted).
    pub churn: bool,
    /// Lifecycle.
    pub life: Life,
    /// The incarnation (when Present or in doubt).
    pub inc: Option<Inc>,
    /// Bumped by every CreateCollection / DeleteCollection.
    pub life_epoch: u64,
    /// Writes in flight that do not wait for the lifecycle gate: (op, the write).
    pub racing: Vec<(u64, Write)>,
}

/// Where a registered write lives.
#[derive(Debug, Clone, Copy)]
pub struct Reg {
    /// Slot index.
    pub slot: usize,
    /// Incarnation.
    pub inc: u64,
    /// Index in its `writes`.
    pub idx: usize,
    /// The slot's `life_epoch` at the send.
    pub life_epoch: u64,
    /// Sent outside the lifecycle gate.
    pub racing: bool,
    /// Client-side op id.
    pub op: u64,
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged with this sequence.
    Acked(u64),
    /// Refused; nothing written.
    Rejected,
    /// No usable reply.
    Doubt,
}

/// Run counters for the summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    /// Calls per RPC.
    pub calls: BTreeMap<String, u64>,
    /// Expected refusals per RPC and code (NOT_FOUND, FAILED_PRECONDITION, ...).
    pub refused: BTreeMap<String, u64>,
    /// Acknowledged DURABLE write batches.
    pub acked_durable: u64,
    /// Acknowledged BUFFERED write batches.
    pub acked_buffered: u64,
    /// Write batches left in doubt.
    pub in_doubt: u64,
    /// In-doubt batches the checks found applied.
    pub in_doubt_applied: u64,
    /// In-doubt batches the checks found not applied.
    pub in_doubt_not_applied: u64,
    /// In-doubt batches no observation could decide (their entities overwritten meanwhile).
    pub in_doubt_undecided: u64,
    /// Acknowledged BUFFERED batches lost at a kill (allowed: a suffix of the log).
    pub buffered_lost: u64,
    /// Collections created (acknowledged).
    pub collections_created: u64,
    /// Collections deleted (acknowledged).
    pub collections_deleted: u64,
    /// Create/Delete calls left in doubt.
    pub lifecycle_in_doubt: u64,
    /// TriggerTraining calls accepted.
    pub trainings_triggered: u64,
    /// ActivateModelVersion calls acknowledged.
    pub activations_acked: u64,
    /// Highest model version seen in any collection.
    pub max_version_seen: u64,
    /// Slowest answered call per RPC, milliseconds (writes and collection lifecycle calls).
    pub slowest_ms: BTreeMap<String, f64>,
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct Model {
    /// The collection names.
    pub slots: Vec<Slot>,
    /// The send/reply clock.
    pub tick: u64,
    next_op: u64,
    next_inc: u64,
    /// Highest send tick of an acknowledged DURABLE write: every BUFFERED write acknowledged
    /// before it is on disk (one log, appended in order, synced as a prefix).
    pub durable_barrier: u64,
    /// Counters.
    pub counters: Counters,
}

impl Model {
    /// Slots `names` (the first is never deleted), all absent.
    pub fn new(names: &[&str]) -> Model {
        let slots = names
            .iter()
            .enumerate()
            .map(|(i, n)| Slot {
                name: n.to_string(),
                churn: i > 0,
                life: Life::Absent,
                inc: None,
                life_epoch: 0,
                racing: Vec::new(),
            })
            .collect();
        Model {
            slots,
            tick: 0,
            next_op: 1,
            next_inc: 1,
            durable_barrier: 0,
            counters: Counters::default(),
        }
    }

    /// The next tick.
    pub fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// A fresh op id.
    pub fn op_id(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    /// A fresh incarnation.
    pub fn new_inc(&mut self) -> Inc {
        self.next_inc += 1;
        Inc::new(self.next_inc)
    }

    /// Counts a call.
    pub fn call(&mut self, rpc: &str) {
        *self.counters.calls.entry(rpc.to_string()).or_default() += 1;
    }

    /// Notes how long an answered call took.
    pub fn took(&mut self, rpc: &str, t: std::time::Duration) {
        let ms = t.as_secs_f64() * 1e3;
        let slot = self.counters.slowest_ms.entry(rpc.to_string()).or_default();
        *slot = slot.max(ms);
    }

    /// Counts an expected refusal.
    pub fn refused(&mut self, rpc: &str, code: tonic::Code) {
        *self
            .counters
            .refused
            .entry(format!("{rpc} {code:?}"))
            .or_default() += 1;
    }

    /// The live incarnation of `slot`, when it takes writes.
    pub fn present(&mut self, slot: usize) -> Option<&mut Inc> {
        let s = &mut self.slots[slot];
        match s.life {
            Life::Present => s.inc.as_mut(),
            _ => None,
        }
    }

    /// Registers a write before it is sent (so that a concurrent read may see it); `None` when
    /// the collection is not present.
    pub fn register(&mut self, slot: usize, mut w: Write, racing: bool) -> Option<Reg> {
        let tick = self.tick();
        let life_epoch = self.slots[slot].life_epoch;
        let inc = self.present(slot)?;
        w.send_tick = tick;
        w.lo_seq = inc.max_acked_seq;
        w.status = Status::Pending;
        let reg = Reg {
            slot,
            inc: inc.id,
            idx: inc.writes.len(),
            life_epoch,
            racing,
            op: w.op,
        };
        inc.writes.push(w.clone());
        if racing {
            self.slots[slot].racing.push((w.op, w));
        }
        Some(reg)
    }

    /// Records how a registered write ended.
    pub fn finish(&mut self, reg: Reg, outcome: Outcome) {
        let tick = self.tick();
        let slot = &mut self.slots[reg.slot];
        if reg.racing {
            slot.racing.retain(|(op, _)| *op != reg.op);
        }
        let moved = slot.life_epoch != reg.life_epoch;
        let Some(inc) = slot.inc.as_mut() else {
            return;
        };
        let Some(i) = locate(inc, reg) else {
            return; // its incarnation was deleted: the write went with it
        };
        let w = &mut inc.writes[i];
        // A write that raced a re-create may have gone to either incarnation.
        let copied = inc.id != reg.inc;
        w.status = match (outcome, copied && moved) {
            (Outcome::Acked(_), true) => Status::Doubt { hi_tick: tick },
            (Outcome::Acked(seq), false) => Status::Acked {
                seq,
                tick,
                at: Instant::now(),
            },
            (Outcome::Rejected, _) => Status::Rejected,
            (Outcome::Doubt, _) => Status::Doubt { hi_tick: u64::MAX },
        };
        let durable = w.durable;
        let send_tick = w.send_tick;
        match &w.status {
            Status::Acked { seq, .. } => {
                inc.max_acked_seq = inc.max_acked_seq.max(*seq);
                if durable {
                    self.durable_barrier = self.durable_barrier.max(send_tick);
                    self.counters.acked_durable += 1;
                } else {
                    self.counters.acked_buffered += 1;
                }
            }
            Status::Doubt { .. } => self.counters.in_doubt += 1,
            _ => {}
        }
    }

    /// A CreateCollection acknowledged: a fresh, empty incarnation. Racing writes in flight may
    /// land in it: they are copied in, to end in doubt.
    pub fn created(&mut self, slot: usize) {
        let mut inc = self.new_inc();
        let s = &mut self.slots[slot];
        for (_, w) in &s.racing {
            // Sequences start again in a new incarnation.
            inc.writes.push(Write {
                lo_seq: 0,
                ..w.clone()
            });
        }
        s.inc = Some(inc);
        s.life = Life::Present;
        self.counters.collections_created += 1;
    }

    /// A DeleteCollection acknowledged.
    pub fn deleted(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.inc = None;
        s.life = Life::Absent;
        self.counters.collections_deleted += 1;
    }

    /// A CreateCollection without a reply: the incarnation exists if the server made it.
    pub fn create_in_doubt(&mut self, slot: usize) {
        let inc = self.new_inc();
        let s = &mut self.slots[slot];
        s.inc = Some(inc);
        s.life = Life::CreateDoubt;
        self.counters.lifecycle_in_doubt += 1;
    }

    /// A DeleteCollection without a reply.
    pub fn delete_in_doubt(&mut self, slot: usize) {
        self.slots[slot].life = Life::DeleteDoubt;
        self.counters.lifecycle_in_doubt += 1;
    }
}

/// The write `reg` names in `inc`: at its index in its own incarnation, found by op in another
/// (a copy made by [`Model::created`]).
fn locate(inc: &Inc, reg: Reg) -> Option<usize> {
    if inc.id == reg.inc {
        return Some(reg.idx);
    }
    inc.writes.iter().rposition(|w| w.op == reg.op)
}

/// How an ActivateModelVersion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Acknowledged.
    Acked,
    /// Refused (a training running, the version no longer kept).
    Refused,
    /// No reply.
    Doubt,
}

impl Model {
    /// Registers an ActivateModelVersion of `version` before it is sent; the incarnation.
    pub fn activation_sent(&mut self, slot: usize, op: u64, version: u64) -> Option<u64> {
        let tick = self.tick();
        let inc = self.present(slot)?;
        let v = &mut inc.versions;
        v.pending.push((op, version, tick, v.max_seen));
        Some(inc.id)
    }

    /// Records how it ended.
    pub fn activation_done(&mut self, slot: usize, inc: u64, op: u64, how: Activation) {
        let tick = self.tick();
        let Some(i) = self.slots[slot].inc.as_mut().filter(|i| i.id == inc) else {
            return;
        };
        let v = &mut i.versions;
        let Some(at) = v.pending.iter().position(|p| p.0 == op) else {
            return;
        };
        let (_, version, sent, max_seen) = v.pending.remove(at);
        match how {
            Activation::Refused => {}
            Activation::Doubt => {
                v.after.insert(version);
            }
            Activation::Acked => {
                // Activations whose windows overlap this one may have run after it.
                let mut after: BTreeSet<u64> = v.pending.iter().map(|p| p.1).collect();
                after.extend(v.acked.iter().filter(|a| a.1 > sent).map(|a| a.2));
                v.floor = Some(version);
                v.floor_max_seen = max_seen;
                v.after = after;
                v.acked.push((sent, tick, version));
                self.counters.activations_acked += 1;
            }
        }
    }

    /// Versions seen listed in `slot`.
    pub fn versions_seen(&mut self, slot: usize, max: u64, active: bool) {
        self.counters.max_version_seen = self.counters.max_version_seen.max(max);
        if let Some(inc) = self.present(slot) {
            inc.versions.max_seen = inc.versions.max_seen.max(max);
            inc.active_seen |= active;
        }
    }

    /// After a kill: whatever had no reply is in doubt.
    pub fn settle_pending(&mut self) {
        for s in &mut self.slots {
            s.racing.clear();
            let Some(inc) = s.inc.as_mut() else { continue };
            for w in &mut inc.writes {
                if w.status == Status::Pending {
                    w.status = Status::Doubt { hi_tick: u64::MAX };
                    self.counters.in_doubt += 1;
                }
            }
            let v = &mut inc.versions;
            for (_, version, _, _) in v.pending.drain(..) {
                v.after.insert(version);
            }
        }
    }
}
