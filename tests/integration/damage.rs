//! Damaged data directories with the real `sidb` binary: a start that would lose acknowledged
//! writes is refused with a DATA_LOSS message naming the file, leaves the evidence in place, and
//! `--accept-data-loss` is the one way past it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sidb::proto as pb;

use crate::common::*;

/// Runs `sidb serve` on `dir` and expects it to exit by itself within 60 s, failing; returns
/// what it printed.
fn refused_start(dir: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidb"))
        .args([
            "serve",
            "--http-listen",
            "",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidb");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("sidb started on a damaged data directory instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!status.success(), "exit status {status:?}: {text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

/// `n` DURABLE single-item writes to collection "d" of a fresh server on `dir`, then kill -9.
async fn acknowledged_then_killed(dir: &Path, n: usize) -> Vec<String> {
    let proc = spawn_sidb(dir, &[("SIDB__TRAINING__AUTO", "false")]).await;
    CollectionsClient::new(connect(&proc.url).await)
        .create_collection(pb::CreateCollectionRequest {
            name: "d".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let mut items = ItemsClient::new(connect(&proc.url).await);
    let mut acked = Vec::new();
    for i in 0..n {
        let id = format!("x{i:04}");
        items
            .upsert_items(upsert("d", vec![item(&id, i as f32)]))
            .await
            .unwrap();
        acked.push(id);
    }
    proc.kill_9();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_frame_in_the_middle_of_the_newest_log_segment_is_refused_and_kept() {
    // Regression: replay stopped at the damage, dropped the acknowledged writes after it
    // ("writes never acknowledged") and deleted the segment.
    let tmp = tempfile::tempdir().unwrap();
    let acked = acknowledged_then_killed(tmp.path(), 40).await;
    let segments: Vec<_> = std::fs::read_dir(tmp.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut data = std::fs::read(&segments[0]).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x20;
    std::fs::write(&segments[0], &data).unwrap();
    let out = refused_start(tmp.path());
    assert!(out.contains("followed by an intact one"), "{out}");
    assert!(out.contains(&segments[0].display().to_string()), "{out}");
    assert_eq!(
        std::fs::read(&segments[0]).unwrap(),
        data,
        "the evidence is kept"
    );
    // Repaired (the damage undone), everything acknowledged is there.
    data[middle] ^= 0x20;
    std::fs::write(&segments[0], &data).unwrap();
    let proc = spawn_sidb(tmp.path(), &[]).await;
    let got = ItemsClient::new(connect(&proc.url).await)
        .get_items(pb::GetItemsRequest {
            collection: "d".into(),
            ids: acked.clone(),
            with_vectors: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.missing_ids.is_empty(), "{:?}", got.missing_ids);
    proc.kill_9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_is_refused_until_the_operator_accepts_the_loss() {
    // Regression: with db/ deleted the server started SERVING with 0 collections, nothing
    // logged, while index/ and models/ of the lost collection were still there.
    let tmp = tempfile::tempdir().unwrap();
    acknowledged_then_killed(tmp.path(), 5).await;
    // A clean restart and stop: the writes now live in sled alone.
    let proc = spawn_sidb(tmp.path(), &[]).await;
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = proc.child;
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(tmp.path().join("db")).unwrap();
    let out = refused_start(tmp.path());
    assert!(
        out.contains("collection \"d\" (id 1) is missing; sequence 5"),
        "{out}"
    );
    assert!(out.contains("--accept-data-loss"), "{out}");
    let out = refused_start(tmp.path());
    assert!(out.contains("is missing"), "refused again: {out}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidb"))
        .args([
            "serve",
            "--http-listen",
            "",
            "--accept-data-loss",
            "--log-level",
            "error",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&url).await;
    let list = CollectionsClient::new(connect(&url).await)
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.collections.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}
