//! Every RPC at once, DeleteCollection included, while the trainer, the indexer and the
//! checkpointer run: no call hangs, none fails with a server-side code (INTERNAL, UNKNOWN,
//! DATA_LOSS, UNAVAILABLE), and no lock is taken out of order (`sidb::lock::violations`, counted
//! by the debug build's lock-rank check in this same process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidb::config::Config;
use sidb::proto as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;
use crate::training::{
    load_planted, planted_item, quick_training, RetrievalClient, TrainingClient,
};

/// A call that takes longer than this is a hang.
const HANG: Duration = Duration::from_secs(20);

/// What went wrong, shared by the worker tasks.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    bad: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    /// Runs one call with the hang bound; records a server-side failure or a hang.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(HANG, fut).await {
            Err(_) => {
                self.bad
                    .lock()
                    .unwrap()
                    .push(format!("{what}: no answer within {HANG:?}"));
                None
            }
            Ok(Ok(v)) => Some(v),
            // A collection deleted meanwhile, a training already running, no model yet.
            Ok(Err(s)) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => None,
            Ok(Err(s)) => {
                self.bad
                    .lock()
                    .unwrap()
                    .push(format!("{what}: {:?} {}", s.code(), s.message()));
                None
            }
        }
    }
}

fn settings(c: &mut Config) {
    quick_training(c);
    // The scheduler lists collections every few milliseconds, as in the deadlock's report.
    c.training.check_interval_ms = 2;
    c.storage.checkpoint_interval_secs = 1;
    c.storage.wal_segment_bytes = 1 << 16;
    // graph checkpoints after every few inserts, racing deletes of their collections
    c.retrieval.graph_checkpoint_secs = 1;
    c.retrieval.graph_checkpoint_inserts = 16;
}

/// Regression: DeleteCollection took the collection's writer lock and then the collections
/// map, while ListCollections (and the trainer's scheduler, every check interval) held the map
/// and took each writer lock: the server hung, health included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_collection_while_collections_are_listed_does_not_hang() {
    let server = TestServer::start_with(settings).await;
    let ch = server.channel().await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let (ch, tally, stop) = (ch.clone(), tally.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = CollectionsClient::new(ch);
            while !stop.load(Ordering::Relaxed) {
                let req = pb::ListCollectionsRequest {};
                tally.call("ListCollections", c.list_collections(req)).await;
            }
        })
    };
    let mut c = CollectionsClient::new(ch.clone());
    let mut items = ItemsClient::new(ch.clone());
    for n in 0..100 {
        let name = format!("churn{n}");
        let create = c.create_collection(pb::CreateCollectionRequest {
            name: name.clone(),
            config: Some(config(4, 0)),
        });
        tally.call("CreateCollection", create).await;
        let write = items.upsert_items(upsert(&name, vec![item("a", n as f32)]));
        tally.call("UpsertItems", write).await;
        let delete = c.delete_collection(pb::DeleteCollectionRequest { name });
        tally.call("DeleteCollection", delete).await;
    }
    stop.store(true, Ordering::Relaxed);
    lister.await.unwrap();
    wait_serving(&server.url()).await;
    let bad = tally.bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "{} failures, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(sidb::lock::violations(), 0, "a lock was taken out of order");
}

/// Runs `f(round)` in a loop until `until`.
fn worker<F, Fut>(until: Instant, f: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut round = 0;
        while Instant::now() < until {
            f(round).await;
            round += 1;
        }
    })
}

fn search(coll: &str, query: pb::search_request::Query) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: coll.into(),
        query: Some(query),
        k: 10,
        ..Default::default()
    }
}

async fn writes(ch: Channel, t: Arc<Tally>, coll: &'static str, round: u64) {
    let mut items = ItemsClient::new(ch.clone());
    let mut users = UsersClient::new(ch.clone());
    let mut ix = InteractionsClient::new(ch);
    let id = format!("w{}", round % 50);
    let durability = (round % 2 + 1) as i32;
    let mut req = upsert(
        coll,
        vec![planted_item(&id, (round % 4) as usize, round as usize)],
    );
    req.durability = durability;
    t.call("UpsertItems", items.upsert_items(req)).await;
    let user = pb::User {
        id: format!("wu{}", round % 20),
        ..Default::default()
    };
    let req = pb::UpsertUsersRequest {
        collection: coll.into(),
        users: vec![user],
        durability,
    };
    t.call("UpsertUsers", users.upsert_users(req)).await;
    let req = pb::WriteInteractionsRequest {
        collection: coll.into(),
        interactions: vec![interaction(
            &format!("u{:03}", round % 80),
            &id,
            round as i64,
        )],
        durability,
    };
    t.call("WriteInteractions", ix.write_interactions(req))
        .await;
    if round.is_multiple_of(3) {
        let req = pb::DeleteItemsRequest {
            collection: coll.into(),
            ids: vec![id],
            durability,
        };
        t.call("DeleteItems", items.delete_items(req)).await;
        let req = pb::DeleteUsersRequest {
            collection: coll.into(),
            ids: vec![format!("wu{}", round % 20)],
            durability,
        };
        t.call("DeleteUsers", users.delete_users(req)).await;
    }
}

async fn reads(ch: Channel, t: Arc<Tally>, coll: &'static str, round: u64) {
    use pb::search_request::Query;
    let mut r = RetrievalClient::new(ch.clone());
    let mut items = ItemsClient::new(ch.clone());
    let mut users = UsersClient::new(ch.clone());
    let mut ix = InteractionsClient::new(ch);
    let item = format!("i{:04}", round % 240);
    let user = format!("u{:03}", round % 80);
    let vector = pb::Vector {
        values: crate::training::planted_vector((round % 4) as usize, round as usize),
    };
    t.call(
        "Search vector",
        r.search(search(coll, Query::Vector(vector))),
    )
    .await;
    t.call(
        "Search item",
        r.search(search(coll, Query::ItemId(item.clone()))),
    )
    .await;
    t.call(
        "Search user",
        r.search(search(coll, Query::UserId(user.clone()))),
    )
    .await;
    let rec = pb::RecommendRequest {
        collection: coll.into(),
        user_id: user.clone(),
        k: 10,
        exclude_seen: round.is_multiple_of(2),
        modality: String::new(),
    };
    t.call("Recommend", r.recommend(rec)).await;
    let scan = pb::PrefixScanRequest {
        collection: coll.into(),
        limit: 50,
        ..Default::default()
    };
    t.call("PrefixScan", r.prefix_scan(scan)).await;
    let stats = pb::PrefixStatsRequest {
        collection: coll.into(),
        ..Default::default()
    };
    t.call("PrefixStats", r.prefix_stats(stats)).await;
    let sids = pb::GetSemanticIdsRequest {
        collection: coll.into(),
        ids: vec![item.clone()],
        ..Default::default()
    };
    t.call("GetSemanticIds", r.get_semantic_ids(sids)).await;
    let get = pb::GetItemsRequest {
        collection: coll.into(),
        ids: vec![item],
        with_vectors: true,
    };
    t.call("GetItems", items.get_items(get)).await;
    let get = pb::GetUsersRequest {
        collection: coll.into(),
        ids: vec![user.clone()],
        with_vectors: false,
    };
    t.call("GetUsers", users.get_users(get)).await;
    let history = pb::GetUserHistoryRequest {
        collection: coll.into(),
        user_id: user,
        limit: 5,
        page_token: String::new(),
    };
    t.call("GetUserHistory", ix.get_user_history(history)).await;
}

async fn training(ch: Channel, t: Arc<Tally>, coll: &'static str, round: u64) {
    let mut tr = TrainingClient::new(ch.clone());
    let mut c = CollectionsClient::new(ch);
    let name = coll.to_string();
    if round.is_multiple_of(20) {
        let req = pb::TriggerTrainingRequest {
            collection: name.clone(),
        };
        t.call("TriggerTraining", tr.trigger_training(req)).await;
    }
    let req = pb::GetTrainingStatusRequest {
        collection: name.clone(),
    };
    t.call("GetTrainingStatus", tr.get_training_status(req))
        .await;
    let req = pb::ListModelVersionsRequest {
        collection: name.clone(),
    };
    let versions = t
        .call("ListModelVersions", tr.list_model_versions(req))
        .await;
    if let Some(v) = versions.and_then(|v| v.into_inner().versions.into_iter().find(|v| v.active)) {
        let req = pb::ActivateModelVersionRequest {
            collection: name.clone(),
            version: v.version,
        };
        t.call("ActivateModelVersion", tr.activate_model_version(req))
            .await;
        let req = pb::GetModelReportRequest {
            collection: name.clone(),
            version: 0,
        };
        t.call("GetModelReport", tr.get_model_report(req)).await;
    }
    let req = pb::WatchTrainingRequest {
        collection: name.clone(),
    };
    if let Some(stream) = t.call("WatchTraining", tr.watch_training(req)).await {
        let mut stream = stream.into_inner();
        t.call("WatchTraining first status", stream.message()).await;
    }
    t.call(
        "ListCollections",
        c.list_collections(pb::ListCollectionsRequest {}),
    )
    .await;
    let req = pb::GetCollectionRequest { name };
    t.call("GetCollection", c.get_collection(req)).await;
}

/// A collection that is loaded, trained (or training) and deleted, again and again.
async fn victim(ch: Channel, t: Arc<Tally>, round: u64) {
    let name = format!("victim{round}");
    let mut c = CollectionsClient::new(ch.clone());
    let mut tr = TrainingClient::new(ch.clone());
    load_planted(&ch, &name, 120, 40).await;
    let req = pb::TriggerTrainingRequest {
        collection: name.clone(),
    };
    t.call("TriggerTraining victim", tr.trigger_training(req))
        .await;
    tokio::time::sleep(Duration::from_millis(50 * (round % 8))).await;
    let req = pb::DeleteCollectionRequest { name };
    t.call("DeleteCollection victim", c.delete_collection(req))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_at_once_with_deletes_and_the_background_threads() {
    let server = TestServer::start_with(settings).await;
    let ch = server.channel().await;
    load_planted(&ch, "main", 240, 80).await;
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (c, t) = (ch.clone(), tally.clone());
        tasks.push(worker(until, move |r| {
            writes(c.clone(), t.clone(), "main", r)
        }));
        let (c, t) = (ch.clone(), tally.clone());
        tasks.push(worker(until, move |r| {
            reads(c.clone(), t.clone(), "main", r)
        }));
    }
    let (c, t) = (ch.clone(), tally.clone());
    tasks.push(worker(until, move |r| {
        training(c.clone(), t.clone(), "main", r)
    }));
    let (c, t) = (ch.clone(), tally.clone());
    tasks.push(worker(until, move |r| victim(c.clone(), t.clone(), r)));
    for task in tasks {
        task.await.expect("worker task");
    }
    wait_serving(&server.url()).await;
    let bad = tally.bad.lock().unwrap().clone();
    let calls = tally.calls.load(Ordering::Relaxed);
    eprintln!("{calls} calls, {} failures", bad.len());
    assert!(calls > 200, "only {calls} calls ran");
    assert!(
        bad.is_empty(),
        "{} failures, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(sidb::lock::violations(), 0, "a lock was taken out of order");
    let (r, _dir) = server.stop().await;
    r.expect("clean shutdown");
}
