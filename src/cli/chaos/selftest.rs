//! `--self-test`: shows that the checker can fail. Each case tampers with one thing (the data,
//! through the API behind the model's back or on disk; the model; or one observation) and
//! asserts that the checker reports the violation class that tampering must cause. Data cases
//! are then accepted into the model, so every case starts from a state the checker passes.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sidb::proto as pb;

use super::model::{Kind, Life, Model, Row, Status, Val, Write, WriteKind};
use super::observe::{self, Obs};
use super::report::{Findings, SelfTestCase};
use super::rpc::Clients;
use super::{verify, workload, Run};

type Tamper<T> = fn(&mut T) -> bool;

impl Run {
    async fn observe_now(&self) -> anyhow::Result<Obs> {
        let mut c = Clients::connect(&self.url()).await?;
        Ok(observe::observe(&mut c).await)
    }

    fn verify_on(&self, m: &Model, obs: &Obs, kill_at: Option<Instant>) -> Findings {
        let mut f = Findings::default();
        verify::verify(m, obs, &self.verify_ctx(kill_at), &mut f);
        f
    }

    fn accept(&self, obs: &Obs) {
        verify::rebase(&mut self.sh.model.lock(), obs);
    }
}

fn case(name: &str, expect: &str, f: &Findings) -> SelfTestCase {
    let hit = f.violations.iter().find(|v| v.class == expect);
    let detail = match hit {
        Some(v) => v.detail.clone(),
        None => format!(
            "reported instead: {:?}",
            f.violations.iter().map(|v| &v.class).collect::<Vec<_>>()
        ),
    };
    SelfTestCase {
        name: name.into(),
        expect: expect.into(),
        caught: hit.is_some(),
        detail,
    }
}

fn skipped(name: &str, expect: &str, why: &str) -> SelfTestCase {
    SelfTestCase {
        name: name.into(),
        expect: expect.into(),
        caught: false,
        detail: format!("could not tamper: {why}"),
    }
}

/// Runs every case.
pub async fn run(r: &mut Run) -> anyhow::Result<Vec<SelfTestCase>> {
    let mut out = Vec::new();
    // A churn collection to tamper with.
    if r.sh.model.lock().slots[1].life != Life::Present {
        let mut c = Clients::connect(&r.url()).await?;
        workload::create(&r.sh, &mut c, 1, super::SLOTS[1]).await;
    }
    let obs = r.observe_now().await?;
    let model = r.sh.model.lock().clone();
    let clean = r.verify_on(&model, &obs, None);
    out.push(SelfTestCase {
        name: "nothing tampered".into(),
        expect: "(no violation)".into(),
        caught: clean.violations.is_empty(),
        detail: format!(
            "{:?}",
            clean
                .violations
                .iter()
                .map(|v| &v.class)
                .collect::<Vec<_>>()
        ),
    });
    for (name, expect, t) in model_cases() {
        let mut m = model.clone();
        out.push(match t(&mut m) {
            true => case(name, expect, &r.verify_on(&m, &obs, None)),
            false => skipped(name, expect, "nothing to tamper with"),
        });
    }
    for (name, expect, t) in obs_cases() {
        let mut o = obs.clone();
        out.push(match t(&mut o) {
            true => case(name, expect, &r.verify_on(&model, &o, None)),
            false => skipped(name, expect, "nothing to tamper with"),
        });
    }
    out.push(torn_batch(&model, &obs, r));
    out.push(online_torn_read(r));
    data_cases(r, &mut out).await?;
    out.push(rolled_back(r).await?);
    let obs = r.observe_now().await?;
    let m = r.sh.model.lock().clone();
    let after = r.verify_on(&m, &obs, None);
    out.push(SelfTestCase {
        name: "after the self-test".into(),
        expect: "(no violation)".into(),
        caught: after.violations.is_empty(),
        detail: format!(
            "{:?}",
            after
                .violations
                .iter()
                .map(|v| &v.class)
                .collect::<Vec<_>>()
        ),
    });
    Ok(out)
}

fn main_inc(m: &mut Model) -> &mut super::model::Inc {
    m.slots[0].inc.as_mut().expect("the main collection exists")
}

fn acked_write(m: &mut Model, durable: bool, seq_above: u64, tick: u64) {
    let inc = main_inc(m);
    let seq = inc.base.last_seq + seq_above;
    inc.writes.push(Write {
        op: 1 << 40,
        what: WriteKind::DeleteItems,
        durable,
        send_tick: tick,
        lo_seq: 0,
        status: Status::Acked {
            seq,
            tick,
            at: Instant::now(),
        },
        ents: vec![],
        rows: vec![],
    });
}

fn model_cases() -> Vec<(&'static str, &'static str, Tamper<Model>)> {
    vec![
        (
            "model: a DURABLE ack beyond the log",
            "durable-ack-lost",
            (|m: &mut Model| {
                acked_write(m, true, 5, 1);
                true
            }) as Tamper<Model>,
        ),
        (
            "model: BUFFERED lost before a DURABLE",
            "buffered-lost-before-durable",
            (|m: &mut Model| {
                acked_write(m, false, 1, 1);
                m.durable_barrier = u64::MAX / 2;
                true
            }) as Tamper<Model>,
        ),
        (
            "model: a newer version acknowledged",
            "active-version-rolled-back",
            (|m: &mut Model| {
                let v = &mut main_inc(m).versions;
                v.floor = Some(v.floor.unwrap_or(0) + 7);
                v.floor_max_seen = u64::MAX;
                true
            }) as Tamper<Model>,
        ),
        (
            "model: an acked item forgotten",
            "phantom",
            (|m: &mut Model| {
                let items = &mut main_inc(m).base.items;
                let Some(id) = items.keys().next().cloned() else {
                    return false;
                };
                items.remove(&id);
                true
            }) as Tamper<Model>,
        ),
        (
            "model: a listed collection deleted",
            "deleted-collection-present",
            (|m: &mut Model| {
                let Some(s) = m
                    .slots
                    .iter_mut()
                    .find(|s| s.churn && s.life == Life::Present)
                else {
                    return false;
                };
                s.life = Life::Absent;
                s.inc = None;
                true
            }) as Tamper<Model>,
        ),
    ]
}

fn main_obs(o: &mut Obs) -> Option<&mut observe::CollObs> {
    o.colls.get_mut(super::SLOTS[0])
}

fn item_scan(o: &mut Obs) -> Option<&mut Vec<pb::PrefixEntry>> {
    main_obs(o)?
        .sids
        .get_mut(&Kind::Items)?
        .scan
        .as_mut()
        .ok()
        .filter(|e| !e.is_empty())
}

fn obs_cases() -> Vec<(&'static str, &'static str, Tamper<Obs>)> {
    vec![
        (
            "observation: an item scanned twice",
            "scan-duplicate",
            (|o: &mut Obs| {
                let Some(e) = item_scan(o) else { return false };
                let first = e[0].clone();
                e.push(first);
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: PrefixStats off by one",
            "stats-mismatch",
            (|o: &mut Obs| {
                let Some(root) =
                    main_obs(o).and_then(|c| c.sids.get_mut(&Kind::Items)?.root.as_mut())
                else {
                    return false;
                };
                root.0 += 1;
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: GetSemanticIds disagrees",
            "sid-disagreement",
            (|o: &mut Obs| {
                let Some((found, _)) =
                    main_obs(o).and_then(|c| c.sids.get_mut(&Kind::Items)?.lookup.as_mut())
                else {
                    return false;
                };
                let Some(s) = found.values_mut().next() else {
                    return false;
                };
                s.suffix += 1;
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: a SID of another version",
            "sid-wrong-version",
            (|o: &mut Obs| {
                let Some(e) = item_scan(o) else { return false };
                let Some(s) = e[0].sid.as_mut() else {
                    return false;
                };
                s.model_version += 1;
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: a trie probe misses one",
            "trie-disagreement",
            (|o: &mut Obs| {
                let Some(p) =
                    main_obs(o).and_then(|c| c.probes.iter_mut().find(|p| !p.ids.is_empty()))
                else {
                    return false;
                };
                p.ids.pop();
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: two versions flagged active",
            "active-version",
            (|o: &mut Obs| {
                let Some(c) = main_obs(o) else { return false };
                let v = c.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
                c.versions.push(pb::ModelVersion {
                    version: v,
                    active: true,
                    ..Default::default()
                });
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: keep_versions + 1 kept",
            "versions-beyond-keep",
            (|o: &mut Obs| {
                let Some(c) = main_obs(o) else { return false };
                for k in 0..8 {
                    c.versions.push(pb::ModelVersion {
                        version: 1000 + k,
                        ..Default::default()
                    });
                }
                true
            }) as Tamper<Obs>,
        ),
        (
            "observation: a vector byte flipped",
            "value-mismatch",
            (|o: &mut Obs| {
                let Some((v, _)) = main_obs(o).and_then(|c| c.items.values_mut().next()) else {
                    return false;
                };
                v.vectors[0].1[0] ^= 1;
                true
            }) as Tamper<Obs>,
        ),
    ]
}

/// An interaction batch made in doubt in the model, half of it removed from the observation.
fn torn_batch(model: &Model, obs: &Obs, r: &Run) -> SelfTestCase {
    let (name, expect) = ("model+observation: half a batch in doubt", "torn-batch");
    let mut m = model.clone();
    let mut o = obs.clone();
    let inc = main_inc(&mut m);
    let Some((&op, _)) = inc
        .base
        .ix
        .iter()
        .find(|(op, b)| b.1.len() >= 2 && **op < 1 << 40)
    else {
        return skipped(name, expect, "no batch of two");
    };
    let (_, rows) = inc.base.ix.remove(&op).expect("found above");
    inc.writes.push(Write {
        op,
        what: WriteKind::Interactions,
        durable: true,
        send_tick: 0,
        lo_seq: 0,
        status: Status::Doubt { hi_tick: u64::MAX },
        ents: vec![],
        rows: rows.clone(),
    });
    let Some(co) = main_obs(&mut o) else {
        return skipped(name, expect, "no main collection");
    };
    let gone = &rows[0];
    for h in co.history.values_mut() {
        if let Some(i) = h.iter().position(|x| Row::of(x) == *gone) {
            h.remove(i);
            co.info.interaction_count -= 1;
            break;
        }
    }
    case(name, expect, &r.verify_on(&m, &o, None))
}

/// The online check of a GetItems reply: one item without a SID beside one with.
fn online_torn_read(r: &Run) -> SelfTestCase {
    let (name, expect) = ("online: GetItems item without a SID", "torn-read");
    let m = r.sh.model.lock().clone();
    let Some(inc) = m.slots[0].inc.as_ref() else {
        return skipped(name, expect, "no main collection");
    };
    let got: Vec<_> = inc
        .base
        .items
        .iter()
        .take(2)
        .map(|(id, v)| (id.clone(), v.clone(), None))
        .collect();
    if got.len() < 2 {
        return skipped(name, expect, "fewer than two items");
    }
    let mut got = got;
    got[1].2 = Some(pb::SemanticId {
        codes: vec![0, 0],
        suffix: 0,
        model_version: 1,
    });
    let found = workload_check(r, &got);
    let mut f = Findings::default();
    for (class, detail) in found {
        f.fail(&class, detail);
    }
    case(name, expect, &f)
}

fn workload_check(r: &Run, got: &[(String, Val, Option<pb::SemanticId>)]) -> Vec<(String, String)> {
    // On a copy: the check updates what the model has seen.
    let copy = super::shared::Shared::new(r.sh.model.lock().clone(), r.sh.hang);
    super::online::check_get(&copy, 0, Kind::Items, got, true, true)
}

async fn tampered(
    r: &mut Run,
    name: &str,
    expect: &str,
    kill_at: Option<Instant>,
) -> anyhow::Result<SelfTestCase> {
    let obs = r.observe_now().await?;
    let m = r.sh.model.lock().clone();
    let c = case(name, expect, &r.verify_on(&m, &obs, kill_at));
    r.accept(&obs);
    Ok(c)
}

fn present_id(r: &Run, kind: Kind) -> Option<(String, Val)> {
    let m = r.sh.model.lock();
    let (id, v) = m.slots[0].inc.as_ref()?.base.of(kind).iter().next()?;
    Some((id.clone(), v.clone()))
}

async fn data_cases(r: &mut Run, out: &mut Vec<SelfTestCase>) -> anyhow::Result<()> {
    let mut c = Clients::connect(&r.url()).await?;
    let coll = super::SLOTS[0].to_string();
    if let Some((id, _)) = present_id(r, Kind::Items) {
        let req = pb::DeleteItemsRequest {
            collection: coll.clone(),
            ids: vec![id.clone()],
            durability: 0,
        };
        c.items.delete_items(req).await?;
        out.push(tampered(r, "data: an acked item deleted", "acked-write-lost", None).await?);
        let phantom = Val {
            vectors: vec![("text".into(), vec![1f32.to_bits(); super::model::ITEM_DIM])],
            attrs: vec![],
        };
        let req = pb::UpsertItemsRequest {
            collection: coll.clone(),
            items: vec![phantom.to_item(&id)],
            durability: 0,
        };
        c.items.upsert_items(req).await?;
        out.push(tampered(r, "data: a phantom item", "phantom", None).await?);
    }
    if let Some((id, mut v)) = present_id(r, Kind::Items) {
        v.vectors[0].1[3] ^= 1 << 7;
        let req = pb::UpsertItemsRequest {
            collection: coll.clone(),
            items: vec![v.to_item(&id)],
            durability: 0,
        };
        c.items.upsert_items(req).await?;
        out.push(tampered(r, "data: a vector byte flipped", "value-mismatch", None).await?);
    }
    if let Some((id, _)) = present_id(r, Kind::Users) {
        let req = pb::DeleteUsersRequest {
            collection: coll.clone(),
            ids: vec![id],
            durability: 0,
        };
        c.users.delete_users(req).await?;
        out.push(tampered(r, "data: an acked user deleted", "acked-write-lost", None).await?);
    }
    let x = Row {
        user: "u00".into(),
        item: "i00".into(),
        kind: "tamper".into(),
        weight: 1f32.to_bits(),
        ts: 1,
    };
    let req = pb::WriteInteractionsRequest {
        collection: coll.clone(),
        interactions: vec![x.to_proto()],
        durability: 0,
    };
    c.interactions.write_interactions(req).await?;
    out.push(
        tampered(
            r,
            "data: a phantom interaction",
            "phantom-interaction",
            None,
        )
        .await?,
    );
    let req = pb::CreateCollectionRequest {
        name: "chaos-phantom".into(),
        config: Some(super::model::collection_config()),
    };
    c.collections.create_collection(req).await?;
    out.push(tampered(r, "data: a phantom collection", "phantom-collection", None).await?);
    c.collections
        .delete_collection(pb::DeleteCollectionRequest {
            name: "chaos-phantom".into(),
        })
        .await?;
    out.push(lost_collection(r, &mut c).await?);
    Ok(())
}

/// A churn collection (created through the model if none is present) deleted behind its back.
async fn lost_collection(r: &mut Run, c: &mut Clients) -> anyhow::Result<SelfTestCase> {
    let slot = 1;
    if r.sh.model.lock().slots[slot].life != Life::Present {
        let name = super::SLOTS[slot];
        workload::create(&r.sh, c, slot, name).await;
    }
    let req = pb::DeleteCollectionRequest {
        name: super::SLOTS[slot].into(),
    };
    c.collections.delete_collection(req).await?;
    tampered(
        r,
        "data: an acked collection deleted",
        "acked-create-missing",
        None,
    )
    .await
}

/// The data directory copied while stopped, DURABLE writes acknowledged, a kill, the copy put
/// back: the acknowledged writes are gone and the checker must say so.
async fn rolled_back(r: &mut Run) -> anyhow::Result<SelfTestCase> {
    let dir = r.launch.dir.clone();
    let copy = dir.with_extension("rollback");
    let p = r.proc.take().expect("running");
    p.terminate(Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    copy_dir(&dir, &copy)?;
    r.start().await?;
    let mut c = Clients::connect(&r.url()).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..5 {
        workload::write(
            &r.sh,
            &mut c,
            &mut rng,
            0,
            WriteKind::UpsertItems,
            2,
            true,
            0,
        )
        .await;
    }
    if let Some(p) = r.proc.as_mut() {
        p.kill9();
    }
    std::fs::remove_dir_all(&dir)?;
    std::fs::rename(&copy, &dir)?;
    r.start().await?;
    tampered(
        r,
        "disk: the data directory rolled back",
        "durable-ack-lost",
        Some(Instant::now()),
    )
    .await
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}
