//! The clients: each loops over a seeded mix of every RPC until the epoch ends (the server is
//! killed), recording every write in the model before it is sent and its outcome after, and
//! checking what reads return against the model as they go (online checks: no content that was
//! never written, no item without a SID once a version is active, consistent pages and stats).
//!
//! A per-collection gate orders writes and reads against CreateCollection/DeleteCollection, so
//! that a reply names one incarnation; a share of the writes skips the gate and races the
//! lifecycle calls (they end in doubt when one ran meanwhile).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sidb::proto as pb;
use tonic::Code;

use super::model::{
    collection_config, item_id, user_id, Activation, Kind, Life, Outcome, Row, Status as WStatus,
    Val, Write, WriteKind, ITEM_DIM, ITEM_POOL, USER_DIM, USER_POOL,
};
use super::rpc::{call, is_refusal, Call, Clients};
use super::shared::collection_missing;
use super::shared::Shared;

/// The RPC mix: (weight, op).
const MIX: [(u32, Op); 15] = [
    (20, Op::UpsertItems),
    (5, Op::DeleteItems),
    (8, Op::UpsertUsers),
    (3, Op::DeleteUsers),
    (12, Op::Interactions),
    (8, Op::GetItems),
    (4, Op::GetUsers),
    (6, Op::Search),
    (4, Op::PrefixScan),
    (3, Op::PrefixStats),
    (3, Op::SemanticIds),
    (2, Op::Train),
    (3, Op::Versions),
    (2, Op::Info),
    (1, Op::Lifecycle),
];

#[derive(Debug, Clone, Copy)]
enum Op {
    UpsertItems,
    DeleteItems,
    UpsertUsers,
    DeleteUsers,
    Interactions,
    GetItems,
    GetUsers,
    Search,
    PrefixScan,
    PrefixStats,
    SemanticIds,
    Train,
    Versions,
    Info,
    Lifecycle,
}

fn pick(rng: &mut ChaCha8Rng) -> Op {
    let total: u32 = MIX.iter().map(|m| m.0).sum();
    let mut r = rng.random_range(0..total);
    for (w, op) in MIX {
        if r < w {
            return op;
        }
        r -= w;
    }
    unreachable!("r < total")
}

/// One client until the epoch ends.
pub async fn client(sh: Arc<Shared>, url: String, seed: u64, client: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut c = match Clients::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            if !sh.killing() {
                sh.fail("server-error", "", format!("client {client}: connect: {e}"));
            }
            return;
        }
    };
    let slots = sh.gates.len();
    while !sh.stop.load(Ordering::SeqCst) {
        // The first collection takes most of the load (it is the one that lives long).
        let slot = match rng.random_bool(0.6) {
            true => 0,
            false => rng.random_range(0..slots),
        };
        let op = pick(&mut rng);
        step(&sh, &mut c, &mut rng, slot, op, client).await;
    }
}

async fn step(
    sh: &Shared,
    c: &mut Clients,
    rng: &mut ChaCha8Rng,
    slot: usize,
    op: Op,
    client: usize,
) {
    let life = sh.model.lock().slots[slot].life;
    match (op, life) {
        (Op::Lifecycle, _) => lifecycle(sh, c, rng, slot.max(1) % sh.gates.len().max(1)).await,
        // An absent churn collection comes back after a while.
        (_, Life::Absent) if rng.random_bool(0.1) => lifecycle(sh, c, rng, slot).await,
        (_, Life::Present) => present_op(sh, c, rng, slot, op, client).await,
        _ => {}
    }
}

async fn present_op(
    sh: &Shared,
    c: &mut Clients,
    rng: &mut ChaCha8Rng,
    slot: usize,
    op: Op,
    client: usize,
) {
    let durable = rng.random_bool(0.5);
    let write_of = |what, most: usize| (what, most);
    let w = match op {
        Op::UpsertItems => Some(write_of(WriteKind::UpsertItems, 6)),
        Op::DeleteItems => Some(write_of(WriteKind::DeleteItems, 3)),
        Op::UpsertUsers => Some(write_of(WriteKind::UpsertUsers, 4)),
        Op::DeleteUsers => Some(write_of(WriteKind::DeleteUsers, 2)),
        Op::Interactions => Some(write_of(WriteKind::Interactions, 8)),
        _ => None,
    };
    if let Some((what, most)) = w {
        let n = rng.random_range(1..=most);
        return write(sh, c, rng, slot, what, n, durable, client).await;
    }
    match op {
        Op::GetItems | Op::GetUsers => {
            let kind = if matches!(op, Op::GetItems) {
                Kind::Items
            } else {
                Kind::Users
            };
            super::online::get(sh, c, rng, slot, kind).await
        }
        Op::Search => super::online::search(sh, c, rng, slot).await,
        Op::PrefixScan => super::online::prefix_scan(sh, c, rng, slot).await,
        Op::PrefixStats => super::online::prefix_stats(sh, c, rng, slot).await,
        Op::SemanticIds => super::online::semantic_ids(sh, c, rng, slot).await,
        Op::Train => {
            train(sh, c, slot).await;
        }
        Op::Versions => {
            versions(sh, c, rng, slot).await;
        }
        Op::Info => super::online::info(sh, c, slot).await,
        _ => {}
    }
}

/// An item's content for write `op`: a vector near one of four directions (so the trainer
/// finds structure), attributes naming the op.
pub fn item_val(rng: &mut ChaCha8Rng, op: u64, client: usize) -> Val {
    let c = rng.random_range(0..4);
    let v: Vec<u32> = (0..ITEM_DIM)
        .map(|d| ((d % 4 == c) as u32 as f32 + rng.random_range(-0.3f32..0.3)).to_bits())
        .collect();
    let pad: String = (0..rng.random_range(0..24))
        .map(|_| rng.random_range('a'..='z'))
        .collect();
    Val {
        vectors: vec![("text".into(), v)],
        attrs: vec![
            ("c".into(), client.to_string()),
            ("op".into(), op.to_string()),
            ("pad".into(), pad),
        ],
    }
}

/// A user's content for write `op`.
pub fn user_val(rng: &mut ChaCha8Rng, op: u64) -> Val {
    let v: Vec<u32> = (0..USER_DIM)
        .map(|_| rng.random_range(0.1f32..1.0).to_bits())
        .collect();
    Val {
        vectors: vec![(String::new(), v)],
        attrs: vec![("op".into(), op.to_string())],
    }
}

fn ids(rng: &mut ChaCha8Rng, n: usize, pool: usize, id: fn(usize) -> String) -> Vec<String> {
    let mut set = BTreeSet::new();
    while set.len() < n.min(pool) {
        set.insert(id(rng.random_range(0..pool)));
    }
    set.into_iter().collect()
}

/// The write's content: entities or rows.
pub fn content(rng: &mut ChaCha8Rng, what: WriteKind, n: usize, op: u64, client: usize) -> Write {
    let mut w = Write {
        op,
        what,
        durable: true,
        send_tick: 0,
        lo_seq: 0,
        status: WStatus::Pending,
        ents: Vec::new(),
        rows: Vec::new(),
    };
    match what {
        WriteKind::UpsertItems => {
            w.ents = ids(rng, n, ITEM_POOL, item_id)
                .into_iter()
                .map(|id| (id, Some(item_val(rng, op, client))))
                .collect()
        }
        WriteKind::UpsertUsers => {
            w.ents = ids(rng, n, USER_POOL, user_id)
                .into_iter()
                .map(|id| (id, Some(user_val(rng, op))))
                .collect()
        }
        WriteKind::DeleteItems => {
            w.ents = ids(rng, n, ITEM_POOL, item_id)
                .into_iter()
                .map(|id| (id, None))
                .collect()
        }
        WriteKind::DeleteUsers => {
            w.ents = ids(rng, n, USER_POOL, user_id)
                .into_iter()
                .map(|id| (id, None))
                .collect()
        }
        WriteKind::Interactions => {
            w.rows = (0..n)
                .map(|i| Row {
                    user: user_id(rng.random_range(0..USER_POOL)),
                    item: item_id(rng.random_range(0..ITEM_POOL)),
                    kind: format!("x{op}"),
                    weight: [1.0f32, 0.5, 2.0][rng.random_range(0..3)].to_bits(),
                    ts: 1_700_000_000_000 + (op as i64) * 16 + i as i64,
                })
                .collect()
        }
    }
    w
}

/// Sends one write, recorded in the model before the send and settled after the reply.
#[allow(clippy::too_many_arguments)]
pub async fn write(
    sh: &Shared,
    c: &mut Clients,
    rng: &mut ChaCha8Rng,
    slot: usize,
    what: WriteKind,
    n: usize,
    durable: bool,
    client: usize,
) {
    let racing = rng.random_bool(0.2);
    let _gate = match racing {
        true => None,
        false => Some(sh.gates[slot].read().await),
    };
    let (reg, w, name) = {
        let mut m = sh.model.lock();
        let op = m.op_id();
        let mut w = content(rng, what, n, op, client);
        w.durable = durable;
        let name = m.slots[slot].name.clone();
        let Some(reg) = m.register(slot, w.clone(), racing) else {
            return;
        };
        m.call(rpc_name(what));
        (reg, w, name)
    };
    let t0 = std::time::Instant::now();
    let r = send(sh, c, &name, &w).await;
    if matches!(r, Call::Ok(_)) {
        sh.model.lock().took(rpc_name(what), t0.elapsed());
    }
    let outcome = match &r {
        Call::Ok(resp) => {
            let want = match what {
                WriteKind::Interactions => w.rows.len() as u64,
                WriteKind::UpsertItems | WriteKind::UpsertUsers => w.ents.len() as u64,
                _ => resp.written,
            };
            if resp.written != want {
                sh.fail(
                    "write-count",
                    &name,
                    format!(
                        "{what:?} op {}: written {}, sent {want}",
                        w.op, resp.written
                    ),
                );
            }
            Outcome::Acked(resp.sequence)
        }
        Call::Err(s) if !sh.killing() && s.code() == Code::NotFound && collection_missing(s) => {
            if !racing {
                sh.judge(rpc_name(what), slot, &r, true);
            }
            Outcome::Rejected
        }
        _ => {
            sh.judge(rpc_name(what), slot, &r, !racing);
            Outcome::Doubt
        }
    };
    sh.model.lock().finish(reg, outcome);
}

fn rpc_name(what: WriteKind) -> &'static str {
    match what {
        WriteKind::UpsertItems => "UpsertItems",
        WriteKind::DeleteItems => "DeleteItems",
        WriteKind::UpsertUsers => "UpsertUsers",
        WriteKind::DeleteUsers => "DeleteUsers",
        WriteKind::Interactions => "WriteInteractions",
    }
}

async fn send(sh: &Shared, c: &mut Clients, name: &str, w: &Write) -> Call<pb::WriteResponse> {
    let durability = match w.durable {
        true => pb::Durability::Durable,
        false => pb::Durability::Buffered,
    } as i32;
    let collection = name.to_string();
    let ids = || w.ents.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    let h = sh.hang;
    match w.what {
        WriteKind::UpsertItems => {
            let items = w
                .ents
                .iter()
                .map(|(id, v)| v.as_ref().expect("an upsert").to_item(id))
                .collect();
            call(
                h,
                c.items.upsert_items(pb::UpsertItemsRequest {
                    collection,
                    items,
                    durability,
                }),
            )
            .await
        }
        WriteKind::UpsertUsers => {
            let users = w
                .ents
                .iter()
                .map(|(id, v)| v.as_ref().expect("an upsert").to_user(id))
                .collect();
            call(
                h,
                c.users.upsert_users(pb::UpsertUsersRequest {
                    collection,
                    users,
                    durability,
                }),
            )
            .await
        }
        WriteKind::DeleteItems => {
            call(
                h,
                c.items.delete_items(pb::DeleteItemsRequest {
                    collection,
                    ids: ids(),
                    durability,
                }),
            )
            .await
        }
        WriteKind::DeleteUsers => {
            call(
                h,
                c.users.delete_users(pb::DeleteUsersRequest {
                    collection,
                    ids: ids(),
                    durability,
                }),
            )
            .await
        }
        WriteKind::Interactions => {
            let interactions = w.rows.iter().map(Row::to_proto).collect();
            call(
                h,
                c.interactions
                    .write_interactions(pb::WriteInteractionsRequest {
                        collection,
                        interactions,
                        durability,
                    }),
            )
            .await
        }
    }
}

/// Creates an absent collection or deletes a present one (churn collections only).
pub async fn lifecycle(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize) {
    let _gate = sh.gates[slot].write().await;
    let (life, churn, name) = {
        let mut m = sh.model.lock();
        m.slots[slot].life_epoch += 1;
        let s = &m.slots[slot];
        (s.life, s.churn, s.name.clone())
    };
    match life {
        Life::Absent => create(sh, c, slot, &name).await,
        Life::Present if churn && rng.random_bool(0.5) => delete(sh, c, slot, &name).await,
        _ => {}
    }
    sh.model.lock().slots[slot].life_epoch += 1;
}

/// CreateCollection of slot `slot` (absent in the model).
pub async fn create(sh: &Shared, c: &mut Clients, slot: usize, name: &str) {
    sh.model.lock().call("CreateCollection");
    let req = pb::CreateCollectionRequest {
        name: name.into(),
        config: Some(collection_config()),
    };
    let t0 = std::time::Instant::now();
    let r = call(sh.hang, c.collections.create_collection(req)).await;
    sh.model.lock().took("CreateCollection", t0.elapsed());
    match &r {
        Call::Ok(info) => {
            if info.config.as_ref() != Some(&collection_config())
                || info.item_count != 0
                || info.last_sequence != 0
            {
                sh.fail(
                    "create-reply",
                    name,
                    format!("CreateCollection answered {info:?}"),
                );
            }
            sh.model.lock().created(slot)
        }
        Call::Err(s) if s.code() == Code::AlreadyExists && !sh.killing() => {
            sh.fail(
                "deleted-collection-present",
                name,
                format!(
                    "CreateCollection after an acknowledged delete: {}",
                    s.message()
                ),
            );
            sh.model.lock().slots[slot].life = Life::Unknown;
        }
        _ => {
            sh.judge("CreateCollection", slot, &r, true);
            sh.model.lock().create_in_doubt(slot)
        }
    }
}

async fn delete(sh: &Shared, c: &mut Clients, slot: usize, name: &str) {
    sh.model.lock().call("DeleteCollection");
    let req = pb::DeleteCollectionRequest { name: name.into() };
    let t0 = std::time::Instant::now();
    let r = call(sh.hang, c.collections.delete_collection(req)).await;
    sh.model.lock().took("DeleteCollection", t0.elapsed());
    match &r {
        Call::Ok(_) => sh.model.lock().deleted(slot),
        Call::Err(s) if s.code() == Code::NotFound && !sh.killing() => {
            sh.fail(
                "acked-create-missing",
                name,
                format!(
                    "DeleteCollection of an acknowledged collection: {}",
                    s.message()
                ),
            );
            sh.model.lock().deleted(slot)
        }
        _ => {
            sh.judge("DeleteCollection", slot, &r, true);
            sh.model.lock().delete_in_doubt(slot)
        }
    }
}

async fn train(sh: &Shared, c: &mut Clients, slot: usize) -> Option<()> {
    let _gate = sh.gates[slot].read().await;
    let name = {
        let mut m = sh.model.lock();
        m.present(slot)?;
        m.call("TriggerTraining");
        m.slots[slot].name.clone()
    };
    let r = call(
        sh.hang,
        c.training
            .trigger_training(pb::TriggerTrainingRequest { collection: name }),
    )
    .await;
    if matches!(r, Call::Ok(_)) {
        sh.model.lock().counters.trainings_triggered += 1;
    }
    sh.judge("TriggerTraining", slot, &r, true);
    Some(())
}

/// ListModelVersions, then (half the time) ActivateModelVersion of one of them.
async fn versions(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize) -> Option<()> {
    let _gate = sh.gates[slot].read().await;
    let name = {
        let mut m = sh.model.lock();
        m.present(slot)?;
        m.call("ListModelVersions");
        m.slots[slot].name.clone()
    };
    let req = pb::ListModelVersionsRequest {
        collection: name.clone(),
    };
    let r = call(sh.hang, c.training.list_model_versions(req)).await;
    let Call::Ok(list) = r else {
        sh.judge("ListModelVersions", slot, &r, true);
        return None;
    };
    let flagged = list.versions.iter().filter(|v| v.active).count();
    if flagged > 1 {
        sh.fail(
            "active-version",
            &name,
            format!(
                "ListModelVersions flags {flagged} versions active: {:?}",
                list.versions
            ),
        );
    }
    let max = list.versions.iter().map(|v| v.version).max().unwrap_or(0);
    sh.model.lock().versions_seen(slot, max, flagged > 0);
    if list.versions.is_empty() || rng.random_bool(0.5) {
        return None;
    }
    let version = list.versions[rng.random_range(0..list.versions.len())].version;
    activate(sh, c, slot, &name, version).await;
    Some(())
}

async fn activate(sh: &Shared, c: &mut Clients, slot: usize, name: &str, version: u64) {
    let (op, inc) = {
        let mut m = sh.model.lock();
        m.call("ActivateModelVersion");
        let op = m.op_id();
        let Some(inc) = m.activation_sent(slot, op, version) else {
            return;
        };
        (op, inc)
    };
    let req = pb::ActivateModelVersionRequest {
        collection: name.into(),
        version,
    };
    let r = call(sh.hang, c.training.activate_model_version(req)).await;
    let how = match &r {
        Call::Ok(v) => {
            if v.version != version || !v.active {
                sh.fail(
                    "activate-reply",
                    name,
                    format!("ActivateModelVersion({version}) answered {v:?}"),
                );
            }
            Activation::Acked
        }
        Call::Err(s) if !sh.killing() && is_refusal(s) => Activation::Refused,
        _ => Activation::Doubt,
    };
    sh.judge("ActivateModelVersion", slot, &r, true);
    sh.model.lock().activation_done(slot, inc, op, how);
}
