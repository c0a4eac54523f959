//! The background trainer over real gRPC: a training starts by itself, SIDs appear on every
//! entity, new entities get theirs at write time, PrefixScan and Recommend use them, a second
//! training publishes version 2 with its churn, rollback to version 1, restart.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sidb::config::Config;
use sidb::proto as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;

pub type TrainingClient = pb::training_client::TrainingClient<Channel>;
pub type RetrievalClient = pb::retrieval_client::RetrievalClient<Channel>;

/// Small, quick training settings for tests.
pub fn quick_training(c: &mut Config) {
    let t = &mut c.training;
    t.min_items = 60;
    t.check_interval_ms = 100;
    t.min_interval_secs = 0;
    t.quiet_secs = 0;
    t.steps = 120;
    t.warm_steps = 80;
    t.batch = 128;
    t.keep_versions = 2;
    // Only the first training is automatic here; later ones are asked for.
    t.new_items_ratio = 100.0;
    t.new_interactions_ratio = 100.0;
    c.retrieval.recommend.min_bucket = MIN_BUCKET as usize;
}

pub const DIM: usize = 16;

/// `retrieval.recommend.min_bucket` of these servers: small for the small planted catalogue
/// (240 items over 64 level-1 codes), where a bucket of 50 would never be found.
const MIN_BUCKET: u64 = 3;

/// A seeded vector near centre `c` of 4 content clusters.
pub fn planted_vector(c: usize, i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| {
            let centre = if d % 4 == c { 1.0 } else { 0.0 };
            let noise = (((i * 31 + d * 17) % 97) as f32 / 97.0 - 0.5) * 0.4;
            centre + noise
        })
        .collect()
}

/// An item with a planted "text" vector (content cluster `c`, noise from `i`).
pub fn planted_item(id: &str, c: usize, i: usize) -> pb::Item {
    pb::Item {
        id: id.into(),
        vectors: [(
            "text".to_string(),
            pb::Vector {
                values: planted_vector(c, i),
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// Writes `n_items` items (4 content clusters), `n_users` users without vectors, and
/// interactions (written first: logs may arrive before catalogues): user `u` of behaviour group
/// `g = u % 4` touches 15 items of group `g` (items of group `g` are those with `i % 4 == g`,
/// across content clusters `i / 4 % 4`).
pub async fn load_planted(ch: &Channel, coll: &str, n_items: usize, n_users: usize) {
    create_planted(ch, coll).await;
    write_planted_behaviour(ch, coll, n_items, n_users).await;
    // Items last and in one request: the first automatic training sees everything.
    write_planted_items(ch, coll, n_items).await;
}

/// Creates a collection for the planted data.
pub async fn create_planted(ch: &Channel, coll: &str) {
    CollectionsClient::new(ch.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: coll.into(),
            config: Some(config(DIM as u32, 0)),
        })
        .await
        .expect("create");
}

/// `n_items` planted items, in one request.
pub async fn write_planted_items(ch: &Channel, coll: &str, n_items: usize) {
    let items: Vec<pb::Item> = (0..n_items)
        .map(|i| planted_item(&format!("i{i:04}"), i / 4 % 4, i))
        .collect();
    ItemsClient::new(ch.clone())
        .upsert_items(upsert(coll, items))
        .await
        .expect("items");
}

/// `n_users` users and their planted interactions (user `u` takes items of group `u % 4`).
pub async fn write_planted_behaviour(ch: &Channel, coll: &str, n_items: usize, n_users: usize) {
    let users: Vec<pb::User> = (0..n_users)
        .map(|u| pb::User {
            id: format!("u{u:03}"),
            ..Default::default()
        })
        .collect();
    UsersClient::new(ch.clone())
        .upsert_users(pb::UpsertUsersRequest {
            collection: coll.into(),
            users,
            durability: 0,
        })
        .await
        .expect("users");
    let mut xs = Vec::new();
    for u in 0..n_users {
        let g = u % 4;
        for j in 0..15 {
            let i = ((u * 7 + j * 13) % (n_items / 4)) * 4 + g;
            xs.push(interaction(
                &format!("u{u:03}"),
                &format!("i{i:04}"),
                1_000 + (u * 100 + j) as i64,
            ));
        }
    }
    let mut inter = InteractionsClient::new(ch.clone());
    for chunk in xs.chunks(500) {
        inter
            .write_interactions(pb::WriteInteractionsRequest {
                collection: coll.into(),
                interactions: chunk.to_vec(),
                durability: 0,
            })
            .await
            .expect("interactions");
    }
}

/// Polls the collection's training status until `done`; returns that status.
pub async fn wait_status(
    ch: &Channel,
    coll: &str,
    timeout: Duration,
    done: impl Fn(&pb::TrainingStatus) -> bool,
) -> pb::TrainingStatus {
    let mut t = TrainingClient::new(ch.clone());
    let start = Instant::now();
    loop {
        let s = t
            .get_training_status(pb::GetTrainingStatusRequest {
                collection: coll.into(),
            })
            .await
            .expect("status")
            .into_inner();
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "not reached after {timeout:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the collection's active version is `v` and the trainer is idle.
pub async fn wait_active(ch: &Channel, coll: &str, v: u64, timeout: Duration) {
    wait_status(ch, coll, timeout, |s| {
        assert_ne!(s.phase, "FAILED", "training failed: {}", s.error);
        s.active_model_version == v && s.phase == "IDLE"
    })
    .await;
}

pub async fn sids(
    ch: &Channel,
    coll: &str,
    entity: pb::EntityKind,
    ids: &[String],
    version: u64,
) -> Result<pb::GetSemanticIdsResponse, tonic::Status> {
    RetrievalClient::new(ch.clone())
        .get_semantic_ids(pb::GetSemanticIdsRequest {
            collection: coll.into(),
            entity: entity as i32,
            ids: ids.to_vec(),
            model_version: version,
        })
        .await
        .map(|r| r.into_inner())
}

/// `ListModelVersions` of `coll`, newest first.
pub async fn model_versions(ch: &Channel, coll: &str) -> Vec<pb::ModelVersion> {
    TrainingClient::new(ch.clone())
        .list_model_versions(pb::ListModelVersionsRequest {
            collection: coll.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
}

fn ids(prefix: &str, n: usize, width: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:0width$}")).collect()
}

#[tokio::test]
async fn training_publishes_versions_assigns_online_and_rolls_back() {
    let s = TestServer::start_with(quick_training).await;
    let ch = s.channel().await;
    let coll = "movies";
    let (n_items, n_users) = (240, 80);
    let mut t = TrainingClient::new(ch.clone());

    // Too small for a training: FAILED_PRECONDITION, and no SIDs yet.
    load_planted(&ch, coll, n_items, n_users).await;
    let item_ids = ids("i", n_items, 4);
    let user_ids = ids("u", n_users, 3);

    // The first training starts by itself (enough items) and publishes version 1.
    wait_active(&ch, coll, 1, Duration::from_secs(300)).await;
    let got = sids(&ch, coll, pb::EntityKind::Items, &item_ids, 0)
        .await
        .unwrap();
    assert!(
        got.missing_ids.is_empty(),
        "items without SID: {:?}",
        got.missing_ids
    );
    assert!(got
        .sids
        .values()
        .all(|s| s.model_version == 1 && s.codes.len() == 3));
    // Dedup suffixes make every full SID unique.
    let full: HashSet<(Vec<u32>, u32)> = got
        .sids
        .values()
        .map(|s| (s.codes.clone(), s.suffix))
        .collect();
    assert_eq!(full.len(), n_items);
    let v1_items = got.sids.clone();
    let got = sids(&ch, coll, pb::EntityKind::Users, &user_ids, 0)
        .await
        .unwrap();
    assert!(
        got.missing_ids.is_empty(),
        "users without SID: {:?}",
        got.missing_ids
    );
    let info = get_collection(&s, coll).await;
    assert_eq!(info.active_model_version, 1);

    // A new item gets its SID at write time, reachable by prefix at once.
    let new_id = "new-item".to_string();
    let mut items = s.items().await;
    items
        .upsert_items(upsert(coll, vec![planted_item(&new_id, 2, 999)]))
        .await
        .unwrap();
    let got = sids(
        &ch,
        coll,
        pb::EntityKind::Items,
        std::slice::from_ref(&new_id),
        0,
    )
    .await
    .unwrap();
    let new_sid = got.sids[&new_id].clone();
    assert_eq!(new_sid.model_version, 1);
    let twins = v1_items
        .values()
        .filter(|s| s.codes == new_sid.codes)
        .map(|s| s.suffix)
        .collect::<HashSet<_>>();
    assert!(
        !twins.contains(&new_sid.suffix),
        "suffix collides: {new_sid:?}"
    );
    let mut r = RetrievalClient::new(ch.clone());
    let page = r
        .prefix_scan(pb::PrefixScanRequest {
            collection: coll.into(),
            entity: pb::EntityKind::Items as i32,
            prefix: new_sid.codes.clone(),
            limit: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.entries.iter().any(|e| e.id == new_id));

    // Recommend is `model::recommend` over the served version, the code `sidb eval` scores as
    // retrieval (a): the version's checkpoint, the items' SIDs and `z`s and the user's history
    // give the same list here as over gRPC. Its candidates come from several SID buckets.
    let mut all_items: Vec<(String, Vec<f32>)> = (0..n_items)
        .map(|i| (format!("i{i:04}"), planted_vector(i / 4 % 4, i)))
        .collect();
    all_items.push((new_id.clone(), planted_vector(2, 999)));
    let mut served_sids = v1_items.clone();
    served_sids.insert(new_id.clone(), new_sid.clone());
    let expected = ExpectedRecommend::new(&s.dir, 1, &all_items, &served_sids);
    // the version keeps its co-occurrence neighbours, so the lists below rank with them too
    assert!(expected.model.neighbours.lists.pairs() > 0);
    let mut several_buckets = 0;
    for (u, user) in user_ids.iter().enumerate() {
        let history = planted_history(u, n_items);
        let (want, buckets) = expected.recommend(&history, 10);
        several_buckets += (buckets > 1) as usize;
        let got = recommend_hits(&r, coll, user, 10).await;
        assert_eq!(got.len(), 10, "{user}");
        for (k, (h, (id, score))) in got.iter().zip(&want).enumerate() {
            // equal ids, or a tie within float noise swapped
            let tie = (h.score - score).abs() < 1e-4;
            assert!(
                h.id == *id || tie,
                "{user} #{k}: {} ({}) vs {id} ({score})",
                h.id,
                h.score
            );
            assert!(
                (h.score - score).abs() < 1e-4,
                "{user} #{k}: score {} vs {score}",
                h.score
            );
        }
    }
    assert!(
        several_buckets > user_ids.len() / 2,
        "candidates from one bucket only for most users ({several_buckets} of {})",
        user_ids.len()
    );
    // Recommend sees a user described by its profile as it is now: interactions written since
    // its SID was stored move its route and `z` exactly as an upsert of the user would.
    let recommend = |r: &mut RetrievalClient| {
        let r = r.clone();
        async move {
            let hits = recommend_hits(&r, coll, "u005", 8).await;
            hits.into_iter()
                .map(|h| (h.id, h.score.to_bits()))
                .collect::<Vec<_>>()
        }
    };
    let before = recommend(&mut r).await;
    // u005 is in behaviour group 1; its newest interactions go to group 3
    let newest: Vec<pb::Interaction> = (0..3)
        .map(|k| interaction("u005", &format!("i{:04}", 8 * k + 3), 1_000_000 + k as i64))
        .collect();
    InteractionsClient::new(ch.clone())
        .write_interactions(pb::WriteInteractionsRequest {
            collection: coll.into(),
            interactions: newest,
            durability: 0,
        })
        .await
        .unwrap();
    let now = recommend(&mut r).await;
    assert_ne!(now, before, "the newest interactions changed nothing");
    UsersClient::new(ch.clone())
        .upsert_users(pb::UpsertUsersRequest {
            collection: coll.into(),
            users: vec![pb::User {
                id: "u005".into(),
                ..Default::default()
            }],
            durability: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        recommend(&mut r).await,
        now,
        "not what the stored SID gives"
    );

    // `sidb bench recommend` finds the users by their SIDs and times Recommend next to Search
    // by user id; a collection without a model says so.
    let bench = |collection: &str| {
        let (url, collection) = (s.url(), collection.to_string());
        // The server runs on this test's runtime: the client process is waited for off it.
        tokio::task::spawn_blocking(move || {
            let args = [
                "bench",
                "recommend",
                "--addr",
                &url,
                "--collection",
                &collection,
                "--clients",
                "2",
                "--queries",
                "40",
                "--k",
                "5",
                "--seed",
                "7",
                "--json",
            ];
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidb"))
                .args(args)
                .output()
                .expect("sidb bench recommend runs");
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            (out.status.success(), stdout, stderr)
        })
    };
    let (ok, stdout, stderr) = bench(coll).await.unwrap();
    assert!(ok, "sidb bench recommend failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert_eq!(report["users"].as_u64(), Some(n_users as u64));
    for run in [&report["recommend"], &report["search"]] {
        assert_eq!(run["requests"].as_u64(), Some(40));
        assert_eq!(run["counted"].as_u64(), Some(40 * 5), "k hits per answer");
        let latency: Vec<f64> = (0..4)
            .map(|i| run["latency_ms"][i].as_f64().unwrap())
            .collect();
        assert!(latency[0] > 0.0 && latency[0] <= latency[3]);
    }
    create(&s, "no_model").await;
    let (ok, _, err) = bench("no_model").await.unwrap();
    assert!(!ok && err.contains("no semantic IDs yet"), "{err}");

    // A second training (asked for) warm-starts and publishes version 2 with its churn.
    t.trigger_training(pb::TriggerTrainingRequest {
        collection: coll.into(),
    })
    .await
    .unwrap();
    wait_active(&ch, coll, 2, Duration::from_secs(300)).await;
    let versions = model_versions(&ch, coll).await;
    let listed: Vec<(u64, bool)> = versions.iter().map(|v| (v.version, v.active)).collect();
    assert_eq!(listed, vec![(2, true), (1, false)]);
    let rep = t
        .get_model_report(pb::GetModelReportRequest {
            collection: coll.into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rep.version, 2);
    assert!(rep.warm_start);
    assert_eq!(rep.items as usize, n_items + 1);
    assert_eq!(rep.levels.len(), 3);
    assert!((0.0..=1.0).contains(&rep.churn_level1));
    assert_eq!(rep.churn_per_level.len(), 3);
    assert_eq!(rep.churn_per_level[0], rep.churn_level1);
    assert_eq!(rep.churn_per_level[2], rep.churn_full);
    assert!(rep.churn_per_level.windows(2).all(|w| w[0] <= w[1]));
    assert!(rep.levels[0].codes_used > 0);
    let v2 = sids(&ch, coll, pb::EntityKind::Items, &item_ids, 0)
        .await
        .unwrap();
    assert!(v2.sids.values().all(|s| s.model_version == 2));
    // The kept version 1 still answers by version.
    let old = sids(&ch, coll, pb::EntityKind::Items, &item_ids, 1)
        .await
        .unwrap();
    assert!(old.sids.values().all(|s| s.model_version == 1));
    assert_eq!(old.sids["i0007"].codes, v1_items["i0007"].codes);

    // Rollback to version 1: every entity, the new item included, serves a version-1 SID.
    let act = t
        .activate_model_version(pb::ActivateModelVersionRequest {
            collection: coll.into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(act.active && act.version == 1);
    let mut all = item_ids.clone();
    all.push(new_id.clone());
    let back = sids(&ch, coll, pb::EntityKind::Items, &all, 0)
        .await
        .unwrap();
    assert!(back.missing_ids.is_empty());
    assert!(back.sids.values().all(|s| s.model_version == 1));
    // Same model, same vectors: the same codes and (stable) suffixes as before.
    for (id, sid) in &v1_items {
        assert_eq!(&back.sids[id], sid, "{id}");
    }
    assert_eq!(back.sids[&new_id], new_sid);

    // Errors: unknown version, version 0, a trigger while one runs is covered by the unit
    // tests; a third version prunes version 1 (keep_versions = 2).
    assert_status(
        t.activate_model_version(pb::ActivateModelVersionRequest {
            collection: coll.into(),
            version: 99,
        })
        .await,
        Code::NotFound,
        "99",
    );
    assert_status(
        t.activate_model_version(pb::ActivateModelVersionRequest {
            collection: coll.into(),
            version: 0,
        })
        .await,
        Code::InvalidArgument,
        "version",
    );
    t.trigger_training(pb::TriggerTrainingRequest {
        collection: coll.into(),
    })
    .await
    .unwrap();
    wait_active(&ch, coll, 3, Duration::from_secs(300)).await;
    assert_status(
        sids(&ch, coll, pb::EntityKind::Items, &item_ids, 1).await,
        Code::FailedPrecondition,
        "no longer kept",
    );

    // Restart: version 3 still serves and still assigns at write time.
    let (r0, tmp) = s.stop().await;
    r0.unwrap();
    let tmp = tmp.unwrap();
    let s = TestServer::start_in(tmp.path(), quick_training).await;
    let ch = s.channel().await;
    let info = get_collection(&s, coll).await;
    assert_eq!(info.active_model_version, 3);
    let after = sids(&ch, coll, pb::EntityKind::Items, &all, 0)
        .await
        .unwrap();
    assert!(after.sids.values().all(|s| s.model_version == 3));
    s.items()
        .await
        .upsert_items(upsert(coll, vec![planted_item("after-restart", 1, 7)]))
        .await
        .unwrap();
    let got = sids(
        &ch,
        coll,
        pb::EntityKind::Items,
        &["after-restart".into()],
        0,
    )
    .await
    .unwrap();
    assert_eq!(got.sids["after-restart"].model_version, 3);

    // A start with fewer versions to keep prunes down to them (as a crash between an
    // activation and its prune leaves one too many): records and checkpoints both go.
    let (r1, _) = s.stop().await;
    r1.unwrap();
    let s = TestServer::start_in(tmp.path(), |c| {
        quick_training(c);
        c.training.keep_versions = 1;
    })
    .await;
    let ch = s.channel().await;
    let kept: Vec<u64> = model_versions(&ch, coll)
        .await
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, vec![3]);
    let dirs = std::fs::read_dir(tmp.path().join("models"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect::<Vec<_>>();
    assert_eq!(dirs, vec!["3".to_string()]);
}

#[tokio::test]
async fn trigger_needs_enough_items_and_sid_queries_wait_for_a_model() {
    let s = TestServer::start_with(|c| {
        quick_training(c);
        c.training.auto = false;
    })
    .await;
    let ch = s.channel().await;
    load_planted(&ch, "small", 40, 8).await;
    let mut t = TrainingClient::new(ch.clone());
    assert_status(
        t.trigger_training(pb::TriggerTrainingRequest {
            collection: "small".into(),
        })
        .await,
        Code::FailedPrecondition,
        "at least 60",
    );
    assert_status(
        sids(&ch, "small", pb::EntityKind::Items, &["i0001".into()], 0).await,
        Code::FailedPrecondition,
        "no semantic IDs",
    );
    assert_status(
        t.get_model_report(pb::GetModelReportRequest {
            collection: "small".into(),
            version: 0,
        })
        .await,
        Code::FailedPrecondition,
        "no model version",
    );
    assert_status(
        t.trigger_training(pb::TriggerTrainingRequest {
            collection: "nope".into(),
        })
        .await,
        Code::NotFound,
        "nope",
    );
    let st = t
        .get_training_status(pb::GetTrainingStatusRequest {
            collection: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.phase.as_str(), st.active_model_version), ("IDLE", 0));
}

#[tokio::test]
async fn watch_training_streams_progress_to_the_end() {
    let http = crate::metrics::free_port();
    let s = TestServer::start_with(|c| {
        quick_training(c);
        c.training.auto = false;
        c.server.http_listen = format!("127.0.0.1:{http}");
    })
    .await;
    let ch = s.channel().await;
    load_planted(&ch, "w", 120, 40).await;
    let mut t = TrainingClient::new(ch.clone());
    let mut stream = t
        .watch_training(pb::WatchTrainingRequest {
            collection: "w".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.phase, "IDLE");
    t.trigger_training(pb::TriggerTrainingRequest {
        collection: "w".into(),
    })
    .await
    .unwrap();
    // A second trigger while the first is queued or running is refused.
    assert_status(
        t.trigger_training(pb::TriggerTrainingRequest {
            collection: "w".into(),
        })
        .await,
        Code::FailedPrecondition,
        "already running",
    );
    let mut phases = Vec::new();
    let mut last_step = 0;
    let mut saw_losses = false;
    while let Some(st) = stream.message().await.unwrap() {
        if phases.last() != Some(&st.phase) {
            phases.push(st.phase.clone());
        }
        if st.phase == "TRAINING" {
            assert!(st.step >= last_step, "steps go back: {st:?}");
            last_step = st.step;
            saw_losses |= st.losses.contains_key("sem") && st.losses.contains_key("align");
            assert!((0.0..=1.0).contains(&st.progress));
        }
        if st.phase == "IDLE" && st.active_model_version == 1 {
            break;
        }
        assert_ne!(st.phase, "FAILED", "{st:?}");
    }
    assert!(saw_losses, "no losses streamed");
    assert!(last_step > 0);
    // A watch stream may skip short phases (it carries the newest status), never reorder them.
    let order = ["IDLE", "SNAPSHOT", "TRAINING", "PUBLISHING", "IDLE"];
    let mut at = 0;
    for p in &phases {
        at += order[at..]
            .iter()
            .position(|o| o == p)
            .expect("phase out of order");
    }
    assert!(phases.iter().any(|p| p == "TRAINING"), "phases {phases:?}");
    assert_eq!(phases.last().map(String::as_str), Some("IDLE"));

    // The metrics page shows the published version and its report.
    let (code, page) = crate::metrics::http_get_async(http, "/metrics").await;
    assert_eq!(code, 200);
    let m = crate::metrics::parse(&page);
    let w = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("collection", "w")];
        labels.extend_from_slice(extra);
        crate::metrics::get(&m, name, &labels)
    };
    assert_eq!(w("sidb_model_active_version", &[]), Some(1.0));
    assert_eq!(w("sidb_training_phase", &[("phase", "idle")]), Some(1.0));
    assert!(w("sidb_model_train_seconds", &[]).unwrap() > 0.0);
    assert!(w("sidb_model_train_steps_per_second", &[]).unwrap() > 0.0);
    for quantizer in ["item", "user"] {
        for level in ["1", "2", "3"] {
            let labels = [("level", level), ("quantizer", quantizer)];
            let used = w("sidb_model_code_use_ratio", &labels).unwrap();
            assert!(
                used > 0.0 && used <= 1.0,
                "{quantizer} level {level}: {used}"
            );
            assert!(w("sidb_model_code_perplexity", &labels).unwrap() >= 1.0);
        }
    }
    assert!(w("sidb_model_collision_ratio", &[]).is_some());
    let triggers = [("code", "OK"), ("rpc", "TriggerTraining")];
    assert_eq!(w("sidb_requests_total", &triggers), Some(1.0));
    let refused = [("code", "FAILED_PRECONDITION"), ("rpc", "TriggerTraining")];
    assert_eq!(w("sidb_requests_total", &refused), Some(1.0));
}

#[tokio::test]
async fn automatic_training_waits_for_the_first_interactions() {
    let s = TestServer::start_with(quick_training).await;
    let ch = s.channel().await;
    // A catalogue without behaviour: enough items, no interactions. A training could only fail
    // (DAS learns from interactions), so none starts, and none fails.
    create_planted(&ch, "b").await;
    write_planted_items(&ch, "b", 120).await;
    let mut t = TrainingClient::new(ch.clone());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let st = t
            .get_training_status(pb::GetTrainingStatusRequest {
                collection: "b".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                st.phase.as_str(),
                st.training_model_version,
                st.error.as_str()
            ),
            ("IDLE", 0, ""),
            "checks every 100 ms: a training would have started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asked for, it is refused up front rather than failing minutes later.
    let asked = t
        .trigger_training(pb::TriggerTrainingRequest {
            collection: "b".into(),
        })
        .await;
    assert_status(asked, Code::FailedPrecondition, "no interactions");
    // The first interactions make it due.
    write_planted_behaviour(&ch, "b", 120, 40).await;
    wait_active(&ch, "b", 1, Duration::from_secs(300)).await;
}

#[tokio::test]
async fn automatic_training_waits_for_the_writes_to_pause() {
    let s = TestServer::start_with(|c| {
        quick_training(c);
        c.training.quiet_secs = 3;
    })
    .await;
    let ch = s.channel().await;
    load_planted(&ch, "q", 120, 40).await;
    let mut t = TrainingClient::new(ch.clone());
    let mut items = ItemsClient::new(ch.clone());
    // Enough items for a training, but writes keep coming (every 300 ms < quiet_secs): a bulk
    // load in progress. No training starts.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let item = planted_item(&format!("late{n}"), n % 4, n);
        items.upsert_items(upsert("q", vec![item])).await.unwrap();
        n += 1;
        let st = t
            .get_training_status(pb::GetTrainingStatusRequest {
                collection: "q".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((st.phase.as_str(), st.training_model_version), ("IDLE", 0));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Once they pause, the training starts by itself and sees every item.
    wait_active(&ch, "q", 1, Duration::from_secs(300)).await;
    let rep = t
        .get_model_report(pb::GetModelReportRequest {
            collection: "q".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rep.items as usize, 120 + n);
}

/// `Recommend` of `user`, nothing excluded.
async fn recommend_hits(r: &RetrievalClient, coll: &str, user: &str, k: u32) -> Vec<pb::Hit> {
    let req = pb::RecommendRequest {
        collection: coll.into(),
        user_id: user.into(),
        k,
        exclude_seen: false,
        ..Default::default()
    };
    r.clone().recommend(req).await.unwrap().into_inner().hits
}

/// User `u`'s planted history as `write_planted_behaviour` writes it: (item id, weight, time),
/// oldest first.
fn planted_history(u: usize, n_items: usize) -> Vec<(String, f32, i64)> {
    let g = u % 4;
    (0..15)
        .map(|j| {
            let i = ((u * 7 + j * 13) % (n_items / 4)) * 4 + g;
            (format!("i{i:04}"), 1.0, 1_000 + (u * 100 + j) as i64)
        })
        .collect()
}

/// `Recommend`'s list computed outside the server with `sidb::model::recommend` from a saved
/// version, the items' vectors and served SIDs (items in id order, as the trie lists them), and
/// a user's history.
struct ExpectedRecommend {
    model: sidb::engine::served::LoadedModel,
    ids: Vec<String>,
    levels: usize,
    codes: Vec<u32>,
    z: Vec<f32>,
    dim: usize,
    popularity: Vec<f32>,
    vectors: std::collections::HashMap<String, Vec<f32>>,
}

impl ExpectedRecommend {
    fn new(
        dir: &std::path::Path,
        version: u64,
        items: &[(String, Vec<f32>)],
        sids: &std::collections::HashMap<String, pb::SemanticId>,
    ) -> Self {
        // the test's one collection
        let models = dir.join("models");
        let coll_dirs: Vec<_> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(coll_dirs.len(), 1, "{coll_dirs:?}");
        let coll_id: u64 = coll_dirs[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let model = sidb::engine::served::load_model(dir, coll_id, version).expect("checkpoint");
        let mut items = items.to_vec();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let x: Vec<f32> = items.iter().flat_map(|(_, v)| v.clone()).collect();
        let enc = model.encode_items(&x).expect("encode");
        let levels = model.levels();
        assert!(items.iter().all(|(id, _)| sids[id].codes.len() == levels));
        Self {
            ids: items.iter().map(|(id, _)| id.clone()).collect(),
            levels,
            codes: items
                .iter()
                .flat_map(|(id, _)| sids[id].codes.clone())
                .collect(),
            dim: enc[0].z.len(),
            z: enc.into_iter().flat_map(|s| s.z).collect(),
            popularity: items
                .iter()
                .map(|(id, _)| model.popularity.get(id.as_str()).copied().unwrap_or(0.0))
                .collect(),
            vectors: items.into_iter().collect(),
            model,
        }
    }

    /// The top `k` (id, score) for a user with `history` (oldest first), and how many distinct
    /// full-code buckets its candidates came from.
    fn recommend(&self, history: &[(String, f32, i64)], k: usize) -> (Vec<(String, f32)>, usize) {
        use sidb::model::recommend::{self, Catalogue, RecommendSettings, RowCatalogue, UserView};
        let settings = RecommendSettings {
            min_bucket: MIN_BUCKET as usize,
            ..RecommendSettings::default()
        };
        // the version's neighbours over this view's item order
        let nb = &self.model.neighbours;
        let order: Vec<Option<u32>> = (nb.items.iter())
            .map(|id| self.ids.iter().position(|x| **x == **id).map(|i| i as u32))
            .collect();
        let mut lists = vec![Vec::new(); self.ids.len()];
        for (row, src) in order.iter().enumerate() {
            let Some(src) = src else { continue };
            lists[*src as usize] = (nb.lists.of(row as u32))
                .filter_map(|(t, w)| Some((order[t as usize]?, w)))
                .collect();
        }
        let neighbours = sidb::model::neighbours::ItemNeighbours::from_lists(lists);
        let catalogue = RowCatalogue::new(
            &self.codes,
            self.levels,
            &self.z,
            self.dim,
            self.popularity.clone(),
            &neighbours,
        );
        let recency = self.model.info.recency();
        let rows: Vec<(Vec<f32>, f32, i64)> = history
            .iter()
            .map(|(id, w, ts)| (self.vectors[id].clone(), *w, *ts))
            .collect();
        let events: Vec<(&[f32], f32, i64)> =
            rows.iter().map(|(v, w, t)| (&v[..], *w, *t)).collect();
        let x = sidb::model::profile_input(&events, DIM, recency).expect("profile");
        let user = self.model.encode_users(&x).expect("user").remove(0);
        let index_of = |id: &str| self.ids.iter().position(|x| x == id).unwrap() as u32;
        let timed: Vec<(u32, f32, i64)> = history
            .iter()
            .map(|(id, w, ts)| (index_of(id), *w, *ts))
            .collect();
        let recent = recommend::recent_weights(&timed, recency);
        let view = UserView {
            z: &user.z,
            recent: &recent,
        };
        let mean = self.model.info.mean_item_z_norm;
        let beam = self
            .model
            .model
            .route_beam(&user.z, mean, settings.beam, &|p| catalogue.count(p))
            .expect("beam");
        let votes = recommend::votes(&catalogue, &recent, &settings);
        // a newest item's beam over its own `z`, at its own length
        let near = |i: u32| {
            let z = catalogue.z(i)?;
            let len = z.iter().map(|x| x * x).sum::<f32>().sqrt();
            let count = |p: &[u32]| catalogue.count(p);
            self.model
                .model
                .route_beam(z, len, settings.recent_beam, &count)
                .ok()
        };
        let skip = |_| false;
        let cands =
            recommend::candidates(&beam, &near, &catalogue, &recent, &votes, &skip, &settings);
        let buckets: HashSet<&[u32]> = cands.iter().filter_map(|&i| catalogue.codes(i)).collect();
        let top = recommend::rank(&catalogue, &view, &votes, &cands, k, &settings);
        let list = top
            .into_iter()
            .map(|(i, s)| (self.ids[i as usize].clone(), s))
            .collect();
        (list, buckets.len())
    }
}
