//! Interactions: writes, the newest-first paged history, streams, error rows.

use std::collections::HashSet;

use sidb::proto as pb;
use tokio_stream::iter as stream_of;
use tonic::Code;

use crate::common::*;

fn write(xs: Vec<pb::Interaction>) -> pb::WriteInteractionsRequest {
    pb::WriteInteractionsRequest {
        collection: "c".into(),
        interactions: xs,
        durability: 0,
    }
}

fn history(user: &str, limit: u32, token: &str) -> pb::GetUserHistoryRequest {
    pb::GetUserHistoryRequest {
        collection: "c".into(),
        user_id: user.into(),
        limit,
        page_token: token.into(),
    }
}

#[tokio::test]
async fn history_is_newest_first_and_pages_cover_everything_once() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut ix = s.interactions().await;
    // 23 events for u1 in three batches, timestamps out of order across batches, plus noise
    // from users whose ids extend "u1" (a prefix scan must not leak them).
    let mut expected = Vec::new();
    for batch in 0..3 {
        let mut xs = Vec::new();
        for i in 0..8 {
            let n = batch * 8 + i;
            if n == 23 {
                break;
            }
            let ts = 1_000 + ((n * 7) % 23) as i64 * 10;
            xs.push(interaction("u1", &format!("i{n}"), ts));
            expected.push((ts, format!("i{n}")));
        }
        xs.push(interaction("u10", "noise", 5_000));
        xs.push(interaction("u1\u{0}x", "noise", 5_000));
        ix.write_interactions(write(xs)).await.unwrap();
    }
    expected.sort_by(|a, b| b.cmp(a));
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ix
            .get_user_history(history("u1", 5, &token))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.interactions.len() <= 5);
        got.extend(
            page.interactions
                .into_iter()
                .map(|x| (x.timestamp_ms, x.item_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 5);
    assert_eq!(
        got, expected,
        "newest first, every interaction exactly once"
    );
    let ids: HashSet<_> = got.iter().map(|x| &x.1).collect();
    assert!(!ids.contains(&"noise".to_string()));
    assert_eq!(get_collection(&s, "c").await.interaction_count, 23 + 6);
}

#[tokio::test]
async fn same_timestamp_orders_by_write_order_and_zero_means_now() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut ix = s.interactions().await;
    let w1 = ix
        .write_interactions(write(vec![
            interaction("u", "first", 7),
            interaction("u", "second", 7),
        ]))
        .await
        .unwrap()
        .into_inner();
    let w2 = ix
        .write_interactions(write(vec![interaction("u", "third", 7)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w1.written, w1.sequence, w2.sequence), (2, 1, 2));
    let before = sidb::types::now_ms();
    ix.write_interactions(write(vec![interaction("u", "now", 0)]))
        .await
        .unwrap();
    let page = ix
        .get_user_history(history("u", 0, ""))
        .await
        .unwrap()
        .into_inner();
    let order: Vec<_> = page
        .interactions
        .iter()
        .map(|x| x.item_id.as_str())
        .collect();
    assert_eq!(order, ["now", "third", "second", "first"]);
    assert!(
        page.interactions[0].timestamp_ms >= before,
        "0 = the server's clock"
    );
    assert_eq!(page.interactions[1].sequence, 2);
    assert_eq!(page.interactions[0].kind, "click");
    assert!(page.next_page_token.is_empty());
    // Unknown users simply have no history.
    let empty = ix
        .get_user_history(history("nobody", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.interactions.is_empty() && empty.next_page_token.is_empty());
}

#[tokio::test]
async fn stream_and_error_rows() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut ix = s.interactions().await;
    let w = ix
        .write_interactions_stream(stream_of(vec![
            write(vec![interaction("u", "a", 1)]),
            write(vec![interaction("u", "b", 2), interaction("v", "b", 2)]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.written, w.sequence), (3, 2));

    let mut nan = interaction("u", "x", 3);
    nan.weight = f32::NAN;
    assert_status(
        ix.write_interactions(write(vec![interaction("u", "ok", 3), nan]))
            .await,
        Code::InvalidArgument,
        "interactions[1].weight: NaN is not a finite number",
    );
    assert_status(
        ix.write_interactions(write(vec![interaction("", "x", 3)]))
            .await,
        Code::InvalidArgument,
        "interactions[0].user_id: must not be empty",
    );
    assert_status(
        ix.write_interactions(write(vec![interaction("u", &"i".repeat(300), 3)]))
            .await,
        Code::InvalidArgument,
        "interactions[0].item_id: 300 bytes long",
    );
    let mut kind = interaction("u", "x", 3);
    kind.kind = "k".repeat(65);
    assert_status(
        ix.write_interactions(write(vec![kind])).await,
        Code::InvalidArgument,
        "interactions[0].kind: 65 bytes",
    );
    assert_status(
        ix.write_interactions(write(vec![])).await,
        Code::InvalidArgument,
        "interactions: 0 entries",
    );
    assert_status(
        ix.get_user_history(history("u", 0, "garbage")).await,
        Code::InvalidArgument,
        "page_token: \"garbage\" is malformed",
    );
    assert_status(
        ix.get_user_history(history("u", 10_001, "")).await,
        Code::InvalidArgument,
        "limit: 10001 exceeds",
    );
    assert_status(
        ix.get_user_history(history("", 0, "")).await,
        Code::InvalidArgument,
        "user_id: must not be empty",
    );
    let mut other = history("u", 0, "");
    other.collection = "nope".into();
    assert_status(ix.get_user_history(other).await, Code::NotFound, "\"nope\"");
    let page = ix
        .get_user_history(history("u", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.interactions.len(),
        2,
        "no rejected interaction was written"
    );
}
