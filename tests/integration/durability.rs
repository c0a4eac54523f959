//! Durability with the real `sidb` binary: acknowledged DURABLE writes survive `kill -9`, and
//! SIGTERM shuts down cleanly with exit code 0.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidb::proto as pb;

use crate::common::*;

/// Every acked item id must be readable.
async fn assert_items_present(url: &str, acked: &[String]) {
    let mut items = ItemsClient::new(connect(url).await);
    for chunk in acked.chunks(1000) {
        let got = items
            .get_items(pb::GetItemsRequest {
                collection: "d".into(),
                ids: chunk.to_vec(),
                with_vectors: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            got.missing_ids.is_empty(),
            "acknowledged items lost after kill -9: {:?}",
            &got.missing_ids[..got.missing_ids.len().min(5)]
        );
    }
}

/// Every acked interaction (user, item) must be in the user's history.
async fn assert_history_present(url: &str, acked: &[(String, String)]) {
    let mut ix = InteractionsClient::new(connect(url).await);
    let users: HashSet<&String> = acked.iter().map(|x| &x.0).collect();
    let mut seen = HashSet::new();
    for user in users {
        let mut token = String::new();
        loop {
            let req = pb::GetUserHistoryRequest {
                collection: "d".into(),
                user_id: user.clone(),
                limit: 1000,
                page_token: token,
            };
            let page = ix.get_user_history(req).await.unwrap().into_inner();
            seen.extend(
                page.interactions
                    .into_iter()
                    .map(|x| (x.user_id, x.item_id)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    for x in acked {
        assert!(
            seen.contains(x),
            "acknowledged interaction {x:?} lost after kill -9"
        );
    }
}

fn snapshot<T: Clone>(m: &Mutex<Vec<T>>) -> Vec<T> {
    m.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_durable_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let acked_items = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_ix = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        let mut proc = spawn_sidb(tmp.path(), &[]).await;
        if round == 0 {
            CollectionsClient::new(connect(&proc.url).await)
                .create_collection(pb::CreateCollectionRequest {
                    name: "d".into(),
                    config: Some(config(4, 0)),
                })
                .await
                .unwrap();
        }
        // What earlier rounds had acknowledged is all there after their kill -9.
        let (items_so_far, ix_so_far) = (snapshot(&acked_items), snapshot(&acked_ix));
        assert_items_present(&proc.url, &items_so_far).await;
        assert_history_present(&proc.url, &ix_so_far).await;

        let mut writers = Vec::new();
        for w in 0..4 {
            let (url, acked_items, acked_ix) =
                (proc.url.clone(), acked_items.clone(), acked_ix.clone());
            writers.push(tokio::spawn(async move {
                let mut items = ItemsClient::new(connect(&url).await);
                let mut ix = InteractionsClient::new(connect(&url).await);
                for n in 0.. {
                    let ids: Vec<String> =
                        (0..20).map(|k| format!("r{round}-w{w}-{n}-{k}")).collect();
                    let req = upsert("d", ids.iter().map(|id| item(id, n as f32)).collect());
                    if items.upsert_items(req).await.is_err() {
                        return;
                    }
                    acked_items.lock().unwrap().extend(ids);
                    let user = format!("u{w}");
                    let item_id = format!("r{round}-{n}");
                    let req = pb::WriteInteractionsRequest {
                        collection: "d".into(),
                        interactions: vec![interaction(&user, &item_id, 1 + n as i64)],
                        durability: 0,
                    };
                    if ix.write_interactions(req).await.is_err() {
                        return;
                    }
                    acked_ix.lock().unwrap().push((user, item_id));
                }
            }));
        }
        // Let acknowledgements flow, then kill without warning while writes are in flight.
        tokio::time::sleep(Duration::from_millis(300 + 150 * round as u64)).await;
        proc.child.kill().expect("kill -9");
        proc.child.wait().unwrap();
        for w in writers {
            let _ = w.await;
        }
    }
    let total = acked_items.lock().unwrap().len();
    assert!(
        total > 4 * 20 * ROUNDS,
        "the test must have acknowledged real work, got {total}"
    );
    let mut proc = spawn_sidb(tmp.path(), &[]).await;
    let (items_acked, ix_acked) = (snapshot(&acked_items), snapshot(&acked_ix));
    assert_items_present(&proc.url, &items_acked).await;
    assert_history_present(&proc.url, &ix_acked).await;
    let c = CollectionsClient::new(connect(&proc.url).await)
        .get_collection(pb::GetCollectionRequest { name: "d".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        c.item_count >= total as u64,
        "count {} below acked {total}",
        c.item_count
    );
    eprintln!(
        "kill -9 test: {ROUNDS} kills, {total} acknowledged items and {} interactions, all present",
        acked_ix.lock().unwrap().len()
    );
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_with_exit_code_0() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = spawn_sidb(tmp.path(), &[]).await;
    CollectionsClient::new(connect(&proc.url).await)
        .create_collection(pb::CreateCollectionRequest {
            name: "d".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let mut req = upsert("d", vec![item("buffered", 1.0)]);
    req.durability = pb::Durability::Buffered as i32;
    ItemsClient::new(connect(&proc.url).await)
        .upsert_items(req)
        .await
        .unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..200 {
        if let Some(s) = proc.child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("sidb did not exit within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    // The buffered write was flushed on the way out.
    let mut proc = spawn_sidb(tmp.path(), &[]).await;
    assert_items_present(&proc.url, &["buffered".to_string()]).await;
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
}

/// The collection's `index_pending` (points not yet in the graph).
async fn index_pending(url: &str) -> u64 {
    CollectionsClient::new(connect(url).await)
        .get_collection(pb::GetCollectionRequest { name: "g".into() })
        .await
        .unwrap()
        .into_inner()
        .index_pending
}

/// A graph checkpoint taken while serving survives `kill -9` and is used: the restart (its
/// indexer held at start by the test hook) has exactly the items written after the
/// checkpoint pending, serves them exactly, and a normal restart then catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_checkpoint_survives_kill_9_and_the_restart_inserts_only_the_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let every_600 = [
        ("SIDB__RETRIEVAL__GRAPH_CHECKPOINT_INSERTS", "600"),
        ("SIDB__RETRIEVAL__GRAPH_CHECKPOINT_SECS", "3600"),
    ];
    let proc = spawn_sidb(tmp.path(), &every_600).await;
    CollectionsClient::new(connect(&proc.url).await)
        .create_collection(pb::CreateCollectionRequest {
            name: "g".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let mut items = ItemsClient::new(connect(&proc.url).await);
    // directions spread over the sphere, so each item is its own nearest neighbour
    let spread = |i: usize| {
        let t = i as f32;
        pb::Vector {
            values: vec![t.cos(), t.sin(), (2.3 * t).cos(), (1.7 * t).sin()],
        }
    };
    let batch = |from: usize, to: usize| {
        let v: Vec<pb::Item> = (from..to)
            .map(|i| pb::Item {
                id: format!("g{i}"),
                vectors: [("text".to_string(), spread(i))].into(),
                ..Default::default()
            })
            .collect();
        upsert("g", v)
    };
    items.upsert_items(batch(0, 600)).await.unwrap();
    let points = tmp.path().join("index/1/points");
    let start = std::time::Instant::now();
    while !points.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    items.upsert_items(batch(600, 700)).await.unwrap();
    proc.kill_9();

    let proc = spawn_sidb(tmp.path(), &[("SIDB_PAUSE_AT", "indexer")]).await;
    assert_eq!(
        index_pending(&proc.url).await,
        100,
        "the restart inserts only what came after the checkpoint"
    );
    // the tail is served (exactly) while it waits for the graph
    let mut r = pb::retrieval_client::RetrievalClient::new(connect(&proc.url).await);
    let hits = r
        .search(pb::SearchRequest {
            collection: "g".into(),
            query: Some(pb::search_request::Query::Vector(spread(650))),
            k: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, "g650", "{hits:?}");
    proc.kill_9();

    let proc = spawn_sidb(tmp.path(), &[]).await;
    let start = std::time::Instant::now();
    while index_pending(&proc.url).await > 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "no catch-up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proc.kill_9();
}
