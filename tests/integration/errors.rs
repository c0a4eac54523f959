//! The error table of the API, row by row, for the item write path (users and interactions have
//! their rows in their own modules).

use std::time::Duration;

use prost::Message;
use sidb::proto as pb;
use tokio_stream::iter as stream_of;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;

type Retrieval = pb::retrieval_client::RetrievalClient<Channel>;
type Training = pb::training_client::TrainingClient<Channel>;

async fn server_with_items() -> TestServer {
    let s = TestServer::start_with(|c| {
        c.limits.max_batch = 3;
        c.limits.max_ids = 3;
        c.server.max_message_bytes = 64 << 10;
    })
    .await;
    let mut cfg = config(4, 2);
    cfg.sid_codebook_size = 8;
    cfg.sid_levels = 2;
    s.collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: "c".into(),
            config: Some(cfg),
        })
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn invalid_argument_rows() {
    let s = server_with_items().await;
    let mut items = s.items().await;
    let with_vec = |values: Vec<f32>| {
        let mut it = item("x", 0.0);
        it.vectors.insert("text".into(), pb::Vector { values });
        upsert("c", vec![it])
    };
    assert_status(
        items.upsert_items(with_vec(vec![1.0; 3])).await,
        Code::InvalidArgument,
        "items[0].vectors[\"text\"]: expected 4 values, got 3",
    );
    assert_status(
        items
            .upsert_items(with_vec(vec![1.0, 1.0, f32::NEG_INFINITY, 1.0]))
            .await,
        Code::InvalidArgument,
        "items[0].vectors[\"text\"][2]: -inf is not a finite number",
    );
    assert_status(
        items.upsert_items(upsert("c", vec![item("", 0.0)])).await,
        Code::InvalidArgument,
        "items[0].id: must not be empty",
    );
    assert_status(
        items
            .upsert_items(upsert("c", vec![item(&"é".repeat(129), 0.0)]))
            .await,
        Code::InvalidArgument,
        "items[0].id: 258 bytes long",
    );
    let mut unknown = item("u", 0.0);
    unknown.vectors.insert("audio".into(), vec4(0.0));
    assert_status(
        items.upsert_items(upsert("c", vec![unknown])).await,
        Code::InvalidArgument,
        "items[0].vectors[\"audio\"]: unknown modality; the collection declares [\"text\"]",
    );
    let mut none = item("n", 0.0);
    none.vectors.clear();
    assert_status(
        items.upsert_items(upsert("c", vec![none])).await,
        Code::InvalidArgument,
        "items[0].vectors[\"text\"]: missing",
    );
    let many: Vec<_> = (0..4).map(|i| item(&format!("m{i}"), 0.0)).collect();
    assert_status(
        items.upsert_items(upsert("c", many)).await,
        Code::InvalidArgument,
        "items: 4 entries; send 1..=3",
    );
    let mut long_sid = item("s", 0.0);
    long_sid.sid = Some(pb::SemanticId {
        codes: vec![1, 2, 3],
        suffix: 0,
        model_version: 0,
    });
    assert_status(
        items.upsert_items(upsert("c", vec![long_sid])).await,
        Code::InvalidArgument,
        "items[0].sid.codes: expected 2 codes",
    );
    let mut big_code = item("s", 0.0);
    big_code.sid = Some(pb::SemanticId {
        codes: vec![1, 8],
        suffix: 0,
        model_version: 0,
    });
    assert_status(
        items.upsert_items(upsert("c", vec![big_code])).await,
        Code::InvalidArgument,
        "items[0].sid.codes[1]: code 8 >= codebook size 8",
    );
    let mut attrs = item("a", 0.0);
    attrs.attributes.insert("".into(), "v".into());
    assert_status(
        items.upsert_items(upsert("c", vec![attrs])).await,
        Code::InvalidArgument,
        "items[0].attributes: key \"\" must be 1..=128 bytes",
    );
    let mut durability = upsert("c", vec![item("d", 0.0)]);
    durability.durability = 7;
    assert_status(
        items.upsert_items(durability).await,
        Code::InvalidArgument,
        "durability: unknown value 7",
    );
    let ids = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
    assert_status(
        items
            .get_items(pb::GetItemsRequest {
                collection: "c".into(),
                ids: ids(4),
                with_vectors: false,
            })
            .await,
        Code::InvalidArgument,
        "ids: 4 entries",
    );
    assert_status(
        items
            .delete_items(pb::DeleteItemsRequest {
                collection: "c".into(),
                ids: vec!["".into()],
                durability: 0,
            })
            .await,
        Code::InvalidArgument,
        "ids[0]: must not be empty",
    );
    assert_eq!(
        get_collection(&s, "c").await.last_sequence,
        0,
        "no rejected request wrote anything"
    );
}

#[tokio::test]
async fn not_found_rows() {
    let s = server_with_items().await;
    let mut items = s.items().await;
    assert_status(
        items
            .upsert_items(upsert("nope", vec![item("a", 0.0)]))
            .await,
        Code::NotFound,
        "collection \"nope\" not found",
    );
    assert_status(
        items
            .get_items(pb::GetItemsRequest {
                collection: "nope".into(),
                ids: vec!["a".into()],
                with_vectors: false,
            })
            .await,
        Code::NotFound,
        "\"nope\"",
    );
    assert_status(
        items
            .delete_items(pb::DeleteItemsRequest {
                collection: "nope".into(),
                ids: vec!["a".into()],
                durability: 0,
            })
            .await,
        Code::NotFound,
        "\"nope\"",
    );
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted() {
    let s = server_with_items().await;
    let mut items = s.items().await;
    let mut big = item("big", 0.0);
    big.attributes.insert("blob".into(), "x".repeat(100 << 10));
    assert_status(
        items.upsert_items(upsert("c", vec![big.clone()])).await,
        Code::ResourceExhausted,
        "too large",
    );
    assert_status(
        items
            .upsert_items_stream(stream_of(vec![
                upsert("c", vec![item("ok", 0.0)]),
                upsert("c", vec![big]),
            ]))
            .await,
        Code::ResourceExhausted,
        "too large",
    );
    // The stream's first message was within bounds and stays written.
    let got = items
        .get_items(pb::GetItemsRequest {
            collection: "c".into(),
            ids: vec!["ok".into(), "big".into()],
            with_vectors: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_ids, ["big"]);
}

/// Asserts `code` and a message that contains `needle` and stays short.
fn assert_short<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    if let Err(s) = &r {
        assert!(
            s.message().len() < 512,
            "{code:?}: a {} byte message: {:.300}",
            s.message().len(),
            s.message()
        );
    }
    assert_status(r, code, needle);
}

#[tokio::test]
async fn a_20_kb_name_gets_its_real_code_and_a_short_message() {
    // Regression: messages quoted client values whole; a 20 KB name made the grpc-message
    // trailer exceed the client's 16 KiB metadata limit, and the client saw RESOURCE_EXHAUSTED
    // "received metadata size exceeds hard limit" instead of the code.
    let s = server_with_items().await;
    let long = "n".repeat(20_000);
    let cut = "…\"(20000 bytes)";
    let mut colls = s.collections().await;
    assert_short(
        colls
            .create_collection(pb::CreateCollectionRequest {
                name: long.clone(),
                config: Some(config(4, 0)),
            })
            .await,
        Code::InvalidArgument,
        &format!("name: \"{}{cut} must be 1..=64 characters", "n".repeat(64)),
    );
    assert_short(
        colls
            .get_collection(pb::GetCollectionRequest { name: long.clone() })
            .await,
        Code::NotFound,
        &format!("{cut} not found"),
    );
    assert_short(
        colls
            .delete_collection(pb::DeleteCollectionRequest { name: long.clone() })
            .await,
        Code::NotFound,
        cut,
    );
    let mut items = s.items().await;
    assert_short(
        items
            .upsert_items(upsert(&long, vec![item("a", 0.0)]))
            .await,
        Code::NotFound,
        cut,
    );
    assert_short(
        items
            .get_items(pb::GetItemsRequest {
                collection: "c".into(),
                ids: vec![long.clone()],
                with_vectors: false,
            })
            .await,
        Code::InvalidArgument,
        "ids[0]: 20000 bytes long",
    );
    let mut key = item("a", 0.0);
    key.attributes.insert(long.clone(), "v".into());
    assert_short(
        items.upsert_items(upsert("c", vec![key])).await,
        Code::InvalidArgument,
        &format!("items[0].attributes: key \"{}{cut}", "n".repeat(64)),
    );
    let mut modality = item("a", 0.0);
    modality.vectors.insert(long.clone(), vec4(0.0));
    assert_short(
        items.upsert_items(upsert("c", vec![modality])).await,
        Code::InvalidArgument,
        &format!("{cut}]: unknown modality"),
    );
    let mut retrieval = Retrieval::new(s.channel().await);
    assert_short(
        retrieval
            .search(pb::SearchRequest {
                collection: "c".into(),
                query: Some(pb::search_request::Query::Vector(vec4(1.0))),
                modality: long.clone(),
                k: 1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &format!("modality: \"{}{cut} is unknown", "n".repeat(64)),
    );
    assert_short(
        retrieval
            .prefix_stats(pb::PrefixStatsRequest {
                collection: long.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        cut,
    );
    assert_short(
        s.interactions()
            .await
            .get_user_history(pb::GetUserHistoryRequest {
                collection: "c".into(),
                user_id: "u".into(),
                limit: 0,
                page_token: format!("h1.{long}"),
            })
            .await,
        Code::InvalidArgument,
        "page_token: \"h1.nnn",
    );
    assert_short(
        Training::new(s.channel().await)
            .get_training_status(pb::GetTrainingStatusRequest {
                collection: long.clone(),
            })
            .await,
        Code::NotFound,
        cut,
    );
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    // Regression: tonic-prost answers a body that does not decode with INTERNAL.
    let s = server_with_items().await;
    let ch = s.channel().await;
    // field 1 (collection) says 5 bytes follow, 1 does
    let truncated = vec![0x0a, 0x05, 0x63];
    // field 1 as a string of invalid UTF-8
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    // a varint of 11 bytes
    let long_varint = [vec![0x18], vec![0xff; 10], vec![0x01]].concat();
    for path in [
        "/sidb.v1.Items/UpsertItems",
        "/sidb.v1.Collections/GetCollection",
        "/sidb.v1.Retrieval/Search",
        "/sidb.v1.Training/GetModelReport",
    ] {
        for body in [&truncated, &not_utf8, &long_varint] {
            let r = raw_unary(&ch, path, body.clone()).await;
            assert_short(r, Code::InvalidArgument, "not a valid protobuf encoding");
        }
    }
    // a stream's bad message: the messages before it stay written
    let good = upsert("c", vec![item("ok", 0.0)]).encode_to_vec();
    let r = raw_client_stream(
        &ch,
        "/sidb.v1.Items/UpsertItemsStream",
        vec![good, truncated],
    )
    .await;
    assert_short(
        r,
        Code::InvalidArgument,
        "not a valid protobuf encoding of UpsertItemsRequest",
    );
    let got = s
        .items()
        .await
        .get_items(pb::GetItemsRequest {
            collection: "c".into(),
            ids: vec!["ok".into()],
            with_vectors: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.items.len(), 1);
    let r = raw_server_stream_first(&ch, "/sidb.v1.Training/WatchTraining", not_utf8).await;
    assert_short(r, Code::InvalidArgument, "not a valid protobuf encoding");
}

#[tokio::test]
async fn interaction_weights_are_bounded() {
    // Regression: a weight of 3e38 was accepted; two of them summed to an infinite profile and
    // Search by user_id failed without naming a field.
    let s = server_with_items().await;
    let mut ix = s.interactions().await;
    let write = |weights: &[f32]| pb::WriteInteractionsRequest {
        collection: "c".into(),
        interactions: weights
            .iter()
            .enumerate()
            .map(|(i, &w)| pb::Interaction {
                weight: w,
                ..interaction("u", &format!("i{i}"), 1_000 + i as i64)
            })
            .collect(),
        durability: 0,
    };
    for (weights, needle) in [
        (
            vec![1.0, 3e38],
            "interactions[1].weight: 3e38 is outside -1e6..=1e6",
        ),
        (vec![-3e38], "interactions[0].weight: -3e38 is outside"),
        (vec![1.5e6], "interactions[0].weight: 1.5e6 is outside"),
    ] {
        assert_short(
            ix.write_interactions(write(&weights)).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_eq!(get_collection(&s, "c").await.interaction_count, 0);
    // The bounds themselves are fine, and the profile they make is usable.
    let mut items = s.items().await;
    items
        .upsert_items(upsert("c", vec![item("i0", 1.0), item("i1", 2.0)]))
        .await
        .unwrap();
    ix.write_interactions(write(&[1e6, 1e6])).await.unwrap();
    let hits = Retrieval::new(s.channel().await)
        .search(pb::SearchRequest {
            collection: "c".into(),
            query: Some(pb::search_request::Query::UserId("u".into())),
            k: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 2);
}

#[tokio::test]
async fn a_repeated_id_in_a_batch_is_written_once_the_last_one_winning() {
    // Regression: `written` counted both entries of an id named twice (the proto: "An id
    // repeated in the batch: the last one wins"); one entity was stored.
    let s = server_with_items().await;
    let mut items = s.items().await;
    let w = items
        .upsert_items(upsert(
            "c",
            vec![item("a", 0.0), item("b", 5.0), item("a", 1.0)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.written, 2);
    let got = items
        .get_items(pb::GetItemsRequest {
            collection: "c".into(),
            ids: vec!["a".into()],
            with_vectors: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.items[0].vectors["text"], vec4(1.0), "the last one wins");
    assert_eq!(get_collection(&s, "c").await.item_count, 2);
    // the earlier entry is validated too: a bad one rejects the batch
    let mut bad = item("a", 0.0);
    bad.vectors
        .insert("text".into(), pb::Vector { values: vec![1.0] });
    assert_status(
        items
            .upsert_items(upsert("c", vec![bad, item("a", 2.0)]))
            .await,
        Code::InvalidArgument,
        "items[0].vectors[\"text\"]: expected 4 values",
    );
    let mut users = s.users().await;
    let user = |id: &str| pb::User {
        id: id.into(),
        ..Default::default()
    };
    let w = users
        .upsert_users(pb::UpsertUsersRequest {
            collection: "c".into(),
            users: vec![user("u"), user("u")],
            durability: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.written, 1);
    let w = items
        .delete_items(pb::DeleteItemsRequest {
            collection: "c".into(),
            ids: vec!["a".into(), "a".into()],
            durability: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.written, 1);
    let w = users
        .delete_users(pb::DeleteUsersRequest {
            collection: "c".into(),
            ids: vec!["u".into(), "u".into()],
            durability: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.written, 1);
    let c = get_collection(&s, "c").await;
    assert_eq!((c.item_count, c.user_count), (1, 0));
}

#[tokio::test]
async fn a_subnormal_vector_is_named_as_too_small_not_as_zeros() {
    let s = server_with_items().await;
    let mut items = s.items().await;
    let mut tiny = item("t", 0.0);
    tiny.vectors.insert(
        "text".into(),
        pb::Vector {
            values: vec![0.0, 1e-40, 0.0, 0.0],
        },
    );
    assert_short(
        items.upsert_items(upsert("c", vec![tiny])).await,
        Code::InvalidArgument,
        "items[0].vectors[\"text\"]: the norm is too small to normalise",
    );
    let mut zero = item("z", 0.0);
    zero.vectors.insert(
        "text".into(),
        pb::Vector {
            values: vec![0.0; 4],
        },
    );
    assert_short(
        items.upsert_items(upsert("c", vec![zero])).await,
        Code::InvalidArgument,
        "items[0].vectors[\"text\"]: all values are zero",
    );
    assert_short(
        Retrieval::new(s.channel().await)
            .search(pb::SearchRequest {
                collection: "c".into(),
                query: Some(pb::search_request::Query::Vector(pb::Vector {
                    values: vec![1e-30; 4],
                })),
                k: 1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "query.vector: the norm is too small",
    );
}

#[tokio::test]
async fn replies_over_max_response_bytes_are_resource_exhausted() {
    // Regression: replies had no bound (Search k=1000 with vectors at 65,536-d: 78.6 MB).
    const DIM: u32 = 4096; // 16 KiB per vector
    let s = TestServer::start_with(|c| c.limits.max_response_bytes = 64 << 10).await;
    s.collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: "big".into(),
            config: Some(config(DIM, DIM)),
        })
        .await
        .unwrap();
    let vector = |i: usize| pb::Vector {
        values: (0..DIM as usize)
            .map(|d| ((d * 7 + i) % 13) as f32 - 6.0)
            .collect(),
    };
    let batch: Vec<pb::Item> = (0..10)
        .map(|i| pb::Item {
            id: format!("i{i}"),
            vectors: [("text".to_string(), vector(i))].into(),
            ..Default::default()
        })
        .collect();
    let mut items = s.items().await;
    items.upsert_items(upsert("big", batch)).await.unwrap();
    let mut retrieval = Retrieval::new(s.channel().await).max_decoding_message_size(64 << 20);
    let search = |k: u32, with_vectors: bool| pb::SearchRequest {
        collection: "big".into(),
        query: Some(pb::search_request::Query::Vector(vector(3))),
        k,
        with_vectors,
        ..Default::default()
    };
    assert_short(
        retrieval.search(search(10, true)).await,
        Code::ResourceExhausted,
        "k, with_vectors: the reply (up to 10 hits with 4096-d vectors) would be about",
    );
    let hits = retrieval
        .search(search(3, true))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.vector.is_some()));
    assert_eq!(
        retrieval
            .search(search(10, false))
            .await
            .unwrap()
            .into_inner()
            .hits
            .len(),
        10
    );
    let get = |n: usize, with_vectors: bool| pb::GetItemsRequest {
        collection: "big".into(),
        ids: (0..n).map(|i| format!("i{i}")).collect(),
        with_vectors,
    };
    assert_short(
        items.get_items(get(10, true)).await,
        Code::ResourceExhausted,
        "ids, with_vectors: the reply (up to 10 items with their vectors)",
    );
    assert_eq!(
        items
            .get_items(get(10, false))
            .await
            .unwrap()
            .into_inner()
            .items
            .len(),
        10
    );
    assert_eq!(
        items
            .get_items(get(3, true))
            .await
            .unwrap()
            .into_inner()
            .items
            .len(),
        3
    );
    // with 3 items left, k and ids beyond them do not count: no more can come back
    items
        .delete_items(pb::DeleteItemsRequest {
            collection: "big".into(),
            ids: (3..10).map(|i| format!("i{i}")).collect(),
            durability: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        retrieval
            .search(search(10, true))
            .await
            .unwrap()
            .into_inner()
            .hits
            .len(),
        3
    );
    assert_eq!(
        items
            .get_items(get(10, true))
            .await
            .unwrap()
            .into_inner()
            .items
            .len(),
        3
    );
    // What cannot be estimated before is measured after: a history page of ~3,000 events.
    let xs: Vec<pb::Interaction> = (0..3000)
        .map(|i| interaction("u", &format!("item-{i:05}"), 1 + i as i64))
        .collect();
    let mut ix = s.interactions().await;
    ix.write_interactions(pb::WriteInteractionsRequest {
        collection: "big".into(),
        interactions: xs,
        durability: 0,
    })
    .await
    .unwrap();
    let history = |limit: u32| pb::GetUserHistoryRequest {
        collection: "big".into(),
        user_id: "u".into(),
        limit,
        page_token: String::new(),
    };
    assert_short(
        ix.get_user_history(history(3000)).await,
        Code::ResourceExhausted,
        "limit: the reply (GetUserHistoryResponse) would be about",
    );
    assert_eq!(
        ix.get_user_history(history(100))
            .await
            .unwrap()
            .into_inner()
            .interactions
            .len(),
        100
    );
}

#[tokio::test]
async fn sid_prefix_codes_beyond_the_models_codebook_are_invalid_argument() {
    // Regression: with `sid_codebook_size` 0 (chosen at training) nothing bounded a prefix's
    // codes, and a code past the model's codebook answered OK (an empty page).
    use crate::training::{load_planted, quick_training, wait_active};
    let s = TestServer::start_with(quick_training).await;
    let ch = s.channel().await;
    load_planted(&ch, "p", 240, 40).await;
    wait_active(&ch, "p", 1, Duration::from_secs(120)).await;
    let report = Training::new(ch.clone())
        .get_model_report(pb::GetModelReportRequest {
            collection: "p".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let k = report.levels[0].codebook_size;
    assert!(k >= 2, "{report:?}");
    let mut r = Retrieval::new(ch.clone());
    let scan = |prefix: Vec<u32>| pb::PrefixScanRequest {
        collection: "p".into(),
        prefix,
        ..Default::default()
    };
    let needle = format!("prefix[1]: code {k} >= codebook size {k}");
    assert_short(
        r.prefix_scan(scan(vec![0, k])).await,
        Code::InvalidArgument,
        &needle,
    );
    assert_short(
        r.prefix_stats(pb::PrefixStatsRequest {
            collection: "p".into(),
            prefix: vec![0, k],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &needle,
    );
    assert_short(
        r.search(pb::SearchRequest {
            collection: "p".into(),
            query: Some(pb::search_request::Query::ItemId("i0000".into())),
            k: 3,
            sid_prefix: vec![u32::MAX],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &format!("sid_prefix[0]: code {} >= codebook size {k}", u32::MAX),
    );
    // codes within the codebook are fine (whether or not anything is under them)
    r.prefix_scan(scan(vec![k - 1, k - 1])).await.unwrap();
}

#[tokio::test]
async fn timestamps_at_the_ends_of_i64_make_a_usable_profile() {
    // Regression (found by the gRPC fuzz test): a user with events at i64::MIN and i64::MAX
    // made the profile's age `latest - ts` overflow; the server task panicked and the client got
    // INTERNAL "worker task failed".
    let s = server_with_items().await;
    s.items()
        .await
        .upsert_items(upsert("c", vec![item("a", 1.0), item("b", 2.0)]))
        .await
        .unwrap();
    s.interactions()
        .await
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "c".into(),
            interactions: vec![
                interaction("u", "a", i64::MIN),
                interaction("u", "b", i64::MAX),
            ],
            durability: 0,
        })
        .await
        .unwrap();
    let hits = Retrieval::new(s.channel().await)
        .search(pb::SearchRequest {
            collection: "c".into(),
            query: Some(pb::search_request::Query::UserId("u".into())),
            k: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    // the event 2^64 ms older weighs nothing: the profile is b's vector
    assert_eq!(hits[0].id, "b");
}
