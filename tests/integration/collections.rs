//! Collections: every RPC and its error rows.

use sidb::proto as pb;
use tonic::Code;

use crate::common::*;

fn create_req(name: &str, config: Option<pb::CollectionConfig>) -> pb::CreateCollectionRequest {
    pb::CreateCollectionRequest {
        name: name.into(),
        config,
    }
}

#[tokio::test]
async fn create_get_list_delete() {
    let s = TestServer::start().await;
    let mut c = s.collections().await;
    let mut cfg = config(8, 3);
    cfg.metric = pb::Metric::L2 as i32;
    let made = c
        .create_collection(create_req("ads-jp", Some(cfg)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.name, "ads-jp");
    let got = made.config.unwrap();
    assert_eq!(got.sid_levels, 3, "default levels filled in");
    assert_eq!(got.metric, pb::Metric::L2 as i32);
    assert_eq!((got.user_dim, got.item_modalities[0].dim), (3, 8));
    assert!(made.created_ms > 0);

    create(&s, "b-coll").await;
    let got = c
        .get_collection(pb::GetCollectionRequest {
            name: "ads-jp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            got.item_count,
            got.user_count,
            got.interaction_count,
            got.active_model_version
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(got.config.unwrap().metric, pb::Metric::L2 as i32);

    let names: Vec<_> = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["ads-jp", "b-coll"]);

    c.delete_collection(pb::DeleteCollectionRequest {
        name: "ads-jp".into(),
    })
    .await
    .unwrap();
    assert_status(
        c.get_collection(pb::GetCollectionRequest {
            name: "ads-jp".into(),
        })
        .await,
        Code::NotFound,
        "\"ads-jp\"",
    );
    let left = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections;
    assert_eq!(left.len(), 1);
}

#[tokio::test]
async fn unspecified_metric_means_cosine() {
    let s = TestServer::start().await;
    let made = create(&s, "c").await;
    assert_eq!(made.config.unwrap().metric, pb::Metric::Cosine as i32);
}

#[tokio::test]
async fn error_rows() {
    let s = TestServer::start().await;
    let mut c = s.collections().await;
    create(&s, "dup").await;
    assert_status(
        c.create_collection(create_req("dup", Some(config(4, 0))))
            .await,
        Code::AlreadyExists,
        "\"dup\"",
    );
    assert_status(
        c.delete_collection(pb::DeleteCollectionRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        "\"nope\"",
    );
    assert_status(
        c.create_collection(create_req("bad name", Some(config(4, 0))))
            .await,
        Code::InvalidArgument,
        "name: \"bad name\"",
    );
    assert_status(
        c.create_collection(create_req("", Some(config(4, 0))))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        c.create_collection(create_req(&"x".repeat(65), Some(config(4, 0))))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        c.create_collection(create_req("n", None)).await,
        Code::InvalidArgument,
        "config: required",
    );
    let no_mod = pb::CollectionConfig::default();
    assert_status(
        c.create_collection(create_req("n", Some(no_mod))).await,
        Code::InvalidArgument,
        "config.item_modalities: 0 given",
    );
    let mut twice = config(4, 0);
    twice.item_modalities.push(pb::Modality {
        name: "text".into(),
        dim: 2,
    });
    assert_status(
        c.create_collection(create_req("n", Some(twice))).await,
        Code::InvalidArgument,
        "config.item_modalities[1].name: \"text\" is declared twice",
    );
    assert_status(
        c.create_collection(create_req("n", Some(config(0, 0))))
            .await,
        Code::InvalidArgument,
        "config.item_modalities[0].dim: 0",
    );
    let mut levels = config(4, 0);
    levels.sid_levels = 9;
    assert_status(
        c.create_collection(create_req("n", Some(levels))).await,
        Code::InvalidArgument,
        "config.sid_levels: 9",
    );
    let mut k = config(4, 0);
    k.sid_codebook_size = 1;
    assert_status(
        c.create_collection(create_req("n", Some(k))).await,
        Code::InvalidArgument,
        "config.sid_codebook_size: 1",
    );
    let mut m = config(4, 0);
    m.metric = 42;
    assert_status(
        c.create_collection(create_req("n", Some(m))).await,
        Code::InvalidArgument,
        "config.metric: unknown value 42",
    );
    // Nothing of the rejected creations exists.
    let names = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections;
    assert_eq!(names.len(), 1);
}

#[tokio::test]
async fn recreated_collection_starts_empty_even_after_restart() {
    // Collection ids are never reused, so log entries of the deleted incarnation cannot be
    // replayed into the new one.
    let s = TestServer::start().await;
    create(&s, "re").await;
    s.items()
        .await
        .upsert_items(upsert("re", vec![item("old", 1.0)]))
        .await
        .unwrap();
    let mut c = s.collections().await;
    c.delete_collection(pb::DeleteCollectionRequest { name: "re".into() })
        .await
        .unwrap();
    create(&s, "re").await;
    assert_eq!(get_collection(&s, "re").await.item_count, 0);
    let (r, tmp) = s.stop().await;
    r.unwrap();
    let tmp = tmp.unwrap();
    let s = TestServer::start_in(tmp.path(), |_| {}).await;
    let got = s
        .items()
        .await
        .get_items(pb::GetItemsRequest {
            collection: "re".into(),
            ids: vec!["old".into()],
            with_vectors: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_ids, ["old"]);
    assert_eq!(get_collection(&s, "re").await.item_count, 0);
}

/// Not a test: the measurement of start and stop with many small collections. Run with
/// `cargo test --release --test integration many_collections_probe -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn many_collections_probe() {
    let n: usize = std::env::var("N").map_or(2000, |v| v.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(tmp.path(), |c| c.training.auto = false).await;
    let mut c = server.collections().await;
    let mut items = server.items().await;
    for i in 0..n {
        let name = format!("c{i}");
        c.create_collection(pb::CreateCollectionRequest {
            name: name.clone(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
        items
            .upsert_items(upsert(&name, vec![item("a", i as f32)]))
            .await
            .unwrap();
    }
    let t = std::time::Instant::now();
    let (r, _) = server.stop().await;
    r.unwrap();
    eprintln!("{n} collections: stop {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let server = TestServer::start_in(tmp.path(), |c| c.training.auto = false).await;
    eprintln!("{n} collections: start to SERVING {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let (r, _) = server.stop().await;
    r.unwrap();
    eprintln!("{n} collections: second stop {:?}", t.elapsed());
}
