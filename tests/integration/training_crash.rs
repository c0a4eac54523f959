//! `kill -9` of the real binary during a training and during the publication of a version:
//! after every restart exactly one version (or none) is active, and every SID served belongs
//! to it; an aborted publication leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sidb::proto as pb;
use tonic::transport::Channel;

use crate::common::*;
use crate::training::{load_planted, sids, wait_active, TrainingClient};

struct Proc {
    child: Child,
    url: String,
    paused: mpsc::Receiver<()>,
}

/// Starts `sidb serve` on `dir` with quick training settings; `pause_at` sets SIDB_PAUSE_AT.
async fn spawn(dir: &std::path::Path, auto: bool, pause_at: Option<&str>) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidb"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--log-level",
        "warn",
        "--data-dir",
    ])
    .arg(dir)
    .env("SIDB__TRAINING__AUTO", auto.to_string())
    .env("SIDB__TRAINING__MIN_ITEMS", "60")
    .env("SIDB__TRAINING__CHECK_INTERVAL_MS", "100")
    .env("SIDB__TRAINING__MIN_INTERVAL_SECS", "0")
    .env("SIDB__TRAINING__QUIET_SECS", "0")
    .env("SIDB__TRAINING__STEPS", "300")
    .env("SIDB__TRAINING__WARM_STEPS", "200")
    .env("SIDB__TRAINING__BATCH", "128")
    .env("SIDB__TRAINING__NEW_ITEMS_RATIO", "100")
    .env("SIDB__TRAINING__NEW_INTERACTIONS_RATIO", "100")
    .env_remove("SIDB_PAUSE_AT")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let Some(p) = pause_at {
        cmd.env("SIDB_PAUSE_AT", p);
    }
    let mut child = cmd.spawn().expect("spawn sidb");
    let stderr = child.stderr.take().unwrap();
    let (tx, paused) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[sidb] {line}");
            if line.contains("pause point reached") {
                let _ = tx.send(());
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&url).await;
    Proc { child, url, paused }
}

impl Proc {
    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    async fn wait_paused(&self, timeout: Duration) {
        let start = Instant::now();
        while self.paused.try_recv().is_err() {
            assert!(start.elapsed() < timeout, "pause point not reached");
            tokio::time::sleep(Duration::from_millis(50)).await;
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
    let versions = TrainingClient::new(ch.clone())
        .list_model_versions(pb::ListModelVersionsRequest {
            collection: coll.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
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
    load_planted(&p.channel().await, coll, 240, 80).await;
    p.wait_paused(Duration::from_secs(300)).await;
    p.kill_9();
    let p = spawn(tmp.path(), false, None).await;
    assert_one_version(&p.channel().await, coll, &items, 0).await;
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
    let ch = p.channel().await;
    TrainingClient::new(ch.clone())
        .trigger_training(pb::TriggerTrainingRequest {
            collection: coll.into(),
        })
        .await
        .unwrap();
    p.wait_paused(Duration::from_secs(300)).await;
    p.kill_9();
    let p = spawn(tmp.path(), false, None).await;
    assert_one_version(&p.channel().await, coll, &items, 1).await;

    // 3. Killed while training version 2: version 1 keeps serving after the restart.
    let ch = p.channel().await;
    let mut t = TrainingClient::new(ch.clone());
    t.trigger_training(pb::TriggerTrainingRequest {
        collection: coll.into(),
    })
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let st = t
            .get_training_status(pb::GetTrainingStatusRequest {
                collection: coll.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if st.phase == "TRAINING" && st.step > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "{st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.kill_9();
    let p = spawn(tmp.path(), false, None).await;
    let ch = p.channel().await;
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
