//! Restart persistence, health, reflection, and the services this version does not implement.

use sidb::proto as pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::common::*;

#[tokio::test]
async fn everything_survives_a_clean_restart_and_sequences_continue() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut items = s.items().await;
    items
        .upsert_items(upsert(
            "c",
            (0..50).map(|i| item(&format!("i{i}"), i as f32)).collect(),
        ))
        .await
        .unwrap();
    let mut buffered = upsert("c", vec![item("buf", 7.0)]);
    buffered.durability = pb::Durability::Buffered as i32;
    items.upsert_items(buffered).await.unwrap();
    s.users()
        .await
        .upsert_users(pb::UpsertUsersRequest {
            collection: "c".into(),
            users: vec![pb::User {
                id: "u".into(),
                vector: Some(pb::Vector {
                    values: vec![1.0, 2.0],
                }),
                ..Default::default()
            }],
            durability: 0,
        })
        .await
        .unwrap();
    s.interactions()
        .await
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "c".into(),
            interactions: vec![interaction("u", "i1", 5)],
            durability: 0,
        })
        .await
        .unwrap();
    // `index_pending` is indexing progress, not data: it may differ across a restart.
    let before = pb::Collection {
        index_pending: 0,
        ..get_collection(&s, "c").await
    };
    let (r, tmp) = s.stop().await;
    r.expect("clean shutdown");
    let tmp = tmp.unwrap();

    let s = TestServer::start_in(tmp.path(), |_| {}).await;
    let after = pb::Collection {
        index_pending: 0,
        ..get_collection(&s, "c").await
    };
    assert_eq!(after, before);
    assert_eq!(
        (
            after.item_count,
            after.user_count,
            after.interaction_count,
            after.last_sequence
        ),
        (51, 1, 1, 4)
    );
    let got = s
        .items()
        .await
        .get_items(pb::GetItemsRequest {
            collection: "c".into(),
            ids: vec!["i49".into(), "buf".into()],
            with_vectors: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.missing_ids.is_empty());
    assert_eq!(got.items[0].vectors["text"], vec4(49.0));
    let w = s
        .items()
        .await
        .upsert_items(upsert("c", vec![item("next", 0.0)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.sequence, 5, "sequence continues after restart");
    let h = s
        .interactions()
        .await
        .get_user_history(pb::GetUserHistoryRequest {
            collection: "c".into(),
            user_id: "u".into(),
            limit: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.interactions[0].item_id, "i1");
    // A clean shutdown checkpoints everything and leaves no log to replay.
    let (r, _tmp) = s.stop().await;
    r.unwrap();
    let segments: Vec<_> = std::fs::read_dir(tmp.path().join("wal")).unwrap().collect();
    assert_eq!(segments.len(), 0);
}

#[tokio::test]
async fn health_reports_serving_per_service() {
    let s = TestServer::start().await;
    let mut h = HealthClient::new(s.channel().await);
    for service in ["", "sidb.v1.Items", "sidb.v1.Collections"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service} SERVING");
    }
    let r = h
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_status(r, Code::NotFound, "");
}

async fn list_services(s: &TestServer) -> Vec<String> {
    let mut client = ServerReflectionClient::new(s.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    match msg.message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let s = TestServer::start().await;
    let names = list_services(&s).await;
    for want in sidb::server::SERVICE_NAMES
        .iter()
        .chain(&["grpc.health.v1.Health"])
    {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn a_damaged_log_is_a_clear_startup_error() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let (r, tmp) = s.stop().await;
    r.unwrap();
    let tmp = tmp.unwrap();
    // A closed (non-last) segment with garbage, followed by a valid newer one.
    let wal = tmp.path().join("wal");
    std::fs::write(
        wal.join(format!("{:020}.wal", 1)),
        b"SIDBWAL1\x05\x00\x00\x00garbage!",
    )
    .unwrap();
    std::fs::write(wal.join(format!("{:020}.wal", 2)), b"SIDBWAL1").unwrap();
    let mut config = sidb::config::Config::default();
    config.storage.data_dir = tmp.path().to_path_buf();
    let err = sidb::engine::Engine::open(&config)
        .err()
        .expect("must refuse to open");
    assert!(matches!(err, sidb::error::Error::DataLoss(_)), "{err:?}");
    assert!(err.to_string().contains("damaged log frame"), "{err}");
}

#[tokio::test]
async fn api_keys_authenticate_and_read_only_keys_cannot_write() {
    use tonic::metadata::MetadataValue;
    let s = TestServer::start_with(|c| {
        c.auth.api_keys = vec!["rw-secret".into()];
        c.auth.read_only_keys = vec!["ro-secret".into()];
    })
    .await;
    let with_key = |key: &'static str| {
        move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", MetadataValue::from_static(key));
            Ok(req)
        }
    };
    let ch = s.channel().await;
    let mut anon = CollectionsClient::new(ch.clone());
    assert_status(
        anon.list_collections(pb::ListCollectionsRequest {}).await,
        Code::Unauthenticated,
        "missing API key",
    );
    let mut wrong = CollectionsClient::with_interceptor(ch.clone(), with_key("Bearer guess"));
    assert_status(
        wrong.list_collections(pb::ListCollectionsRequest {}).await,
        Code::Unauthenticated,
        "unknown API key",
    );
    let mut rw = CollectionsClient::with_interceptor(ch.clone(), with_key("Bearer rw-secret"));
    rw.create_collection(pb::CreateCollectionRequest {
        name: "c".into(),
        config: Some(config(4, 0)),
    })
    .await
    .unwrap();
    let mut ro = CollectionsClient::with_interceptor(ch.clone(), with_key("Bearer ro-secret"));
    assert_eq!(
        ro.list_collections(pb::ListCollectionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .collections
            .len(),
        1
    );
    assert_status(
        ro.delete_collection(pb::DeleteCollectionRequest { name: "c".into() })
            .await,
        Code::PermissionDenied,
        "DeleteCollection: the API key is read-only",
    );
    // The scheme is case-insensitive (RFC 6750).
    for key in ["bearer rw-secret", "BEARER ro-secret"] {
        let mut c = CollectionsClient::with_interceptor(ch.clone(), with_key(key));
        c.list_collections(pb::ListCollectionsRequest {})
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    let mut ro_items = ItemsClient::with_interceptor(ch.clone(), with_key("Bearer ro-secret"));
    assert_status(
        ro_items
            .upsert_items(upsert("c", vec![item("a", 1.0)]))
            .await,
        Code::PermissionDenied,
        "read-only",
    );
    // Health stays open for load balancers.
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1);
}
