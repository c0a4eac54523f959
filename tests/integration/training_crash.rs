//! `kill -9` of the real binary during a training and during the publication of a version:
//! after every restart exactly one version (or none) is active, and every SID served belongs
//! to it; an aborted publication leaves nothing behind.

use std::time::{Duration, Instant};

use sidb::proto as pb;
use tonic::transport::Channel;

use crate::common::*;
use crate::training::{
    load_planted, model_versions, sids, wait_active, wait_status, TrainingClient,
};

/// Quick training settings for the binary (automatic training when `auto`).
const QUICK: [(&str, &str); 9] = [
    ("SIDB__TRAINING__MIN_ITEMS", "60"),
    ("SIDB__TRAINING__CHECK_INTERVAL_MS", "100"),
    ("SIDB__TRAINING__MIN_INTERVAL_SECS", "0"),
    ("SIDB__TRAINING__QUIET_SECS", "0"),
    ("SIDB__TRAINING__STEPS", "300"),
    ("SIDB__TRAINING__WARM_STEPS", "200"),
    ("SIDB__TRAINING__BATCH", "128"),
    ("SIDB__TRAINING__NEW_ITEMS_RATIO", "100"),
    ("SIDB__TRAINING__NEW_INTERACTIONS_RATIO", "100"),
];

/// Starts `sidb serve` on `dir` with quick training settings; `pause_at` sets SIDB_PAUSE_AT.
async fn spawn(dir: &std::path::Path, auto: bool, pause_at: Option<&str>) -> SidbProcess {
    let mut env = QUICK.to_vec();
    env.push(("SIDB__TRAINING__AUTO", if auto { "true" } else { "false" }));
    if let Some(p) = pause_at {
        env.push(("SIDB_PAUSE_AT", p));
    }
    spawn_sidb(dir, &env).await
}

/// Waits until the process logs that it reached its pause point.
async fn wait_paused(p: &SidbProcess, timeout: Duration) {
    let start = Instant::now();
    loop {
        match p.log.try_recv() {
            Ok(line) if line.contains("pause point reached") => return,
            Ok(_) => {}
            Err(_) => {
                assert!(start.elapsed() < timeout, "pause point not reached");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Exactly `active` is active (0: none, and no version is listed), and every item serves a SID
/// of it.
async fn assert_one_version(ch: &Channel, coll: &str, items: &[String], active: u64) {
    let info = CollectionsClient::new(ch.clone())
        .get_collection(pb::GetCollectionRequest { name: coll.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.active_model_version, active);
    let versions = model_versions(ch, coll).await;
    let act: Vec<u64> = versions
        .iter()
        .filter(|v| v.active)
        .map(|v| v.version)
        .collect();
    if active == 0 {
        assert!(versions.is_empty(), "versions left behind: {versions:?}");
        assert!(sids(ch, coll, pb::EntityKind::Items, items, 0)
            .await
            .is_err());
        return;
    }
    assert_eq!(act, vec![active]);
    let got = sids(ch, coll, pb::EntityKind::Items, items, 0)
        .await
        .unwrap();
    assert!(got.missing_ids.is_empty(), "{:?}", got.missing_ids);
    assert!(
        got.sids.values().all(|s| s.model_version == active),
        "SIDs of another version served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_training_and_publication_leaves_exactly_one_version() {
    let tmp = tempfile::tempdir().unwrap();
    let coll = "crash";
    let items: Vec<String> = (0..240).map(|i| format!("i{i:04}")).collect();

    // 1. Killed in the middle of publishing version 1: SIDs written, switch not made.
    let p = spawn(tmp.path(), true, Some("after-bulk")).await;
    load_planted(&connect(&p.url).await, coll, 240, 80).await;
    wait_paused(&p, Duration::from_secs(300)).await;
    p.kill_9();
    let p = spawn(tmp.path(), false, None).await;
    assert_one_version(&connect(&p.url).await, coll, &items, 0).await;
    assert!(
        std::fs::read_dir(tmp.path().join("models"))
            .map(|d| d
                .flatten()
                .all(|c| std::fs::read_dir(c.path()).unwrap().next().is_none()))
            .unwrap_or(true),
        "checkpoint of the aborted version left behind"
    );
    p.kill_9();

    // 2. Killed right after the switch of version 1: it is active after the restart.
    let p = spawn(tmp.path(), false, Some("after-activate")).await;
    let ch = connect(&p.url).await;
    TrainingClient::new(ch.clone())
        .trigger_training(pb::TriggerTrainingRequest {
            collection: coll.into(),
        })
        .await
        .unwrap();
    wait_paused(&p, Duration::from_secs(300)).await;
    p.kill_9();
    let p = spawn(tmp.path(), false, None).await;
    assert_one_version(&connect(&p.url).await, coll, &items, 1).await;

    // 3. Killed while training version 2: version 1 keeps serving after the restart.
    let ch = connect(&p.url).await;
    let mut t = TrainingClient::new(ch.clone());
    t.trigger_training(pb::TriggerTrainingRequest {
        collection: coll.into(),
    })
    .await
    .unwrap();
    wait_status(&ch, coll, Duration::from_secs(300), |st| {
        st.phase == "TRAINING" && st.step > 0
    })
    .await;
    p.kill_9();
    let p = spawn(tmp.path(), false, None).await;
    let ch = connect(&p.url).await;
    assert_one_version(&ch, coll, &items, 1).await;

    // 4. And the next training completes normally as version 2.
    TrainingClient::new(ch.clone())
        .trigger_training(pb::TriggerTrainingRequest {
            collection: coll.into(),
        })
        .await
        .unwrap();
    wait_active(&ch, coll, 2, Duration::from_secs(300)).await;
    assert_one_version(&ch, coll, &items, 2).await;
    p.kill_9();
}
