//! Items: every RPC, atomic batches, streaming, counts and sequences.

use sidb::proto as pb;
use tokio_stream::iter as stream_of;
use tonic::Code;

use crate::common::*;

fn get(ids: &[&str], with_vectors: bool) -> pb::GetItemsRequest {
    pb::GetItemsRequest {
        collection: "c".into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        with_vectors,
    }
}

#[tokio::test]
async fn upsert_get_replace_delete() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut items = s.items().await;
    let w = items
        .upsert_items(upsert("c", vec![item("a", 1.0), item("b", 2.0)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.written, w.sequence), (2, 1));

    let got = items
        .get_items(get(&["b", "zz", "a"], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_ids, ["zz"]);
    assert_eq!(got.items.len(), 2);
    assert_eq!(got.items[0].id, "b", "request order kept");
    assert_eq!(got.items[0].vectors["text"], vec4(2.0));
    assert_eq!(got.items[1].attributes["k"], "v1");
    let bare = items
        .get_items(get(&["a"], false))
        .await
        .unwrap()
        .into_inner();
    assert!(bare.items[0].vectors.is_empty(), "vectors only on request");

    // Replace: same id, new vector; count unchanged, sequence advances.
    let w = items
        .upsert_items(upsert("c", vec![item("a", 9.0)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.sequence, 2);
    let got = items
        .get_items(get(&["a"], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.items[0].vectors["text"], vec4(9.0));
    assert_eq!(get_collection(&s, "c").await.item_count, 2);

    let del = pb::DeleteItemsRequest {
        collection: "c".into(),
        ids: vec!["a".into(), "missing".into()],
        durability: 0,
    };
    let w = items.delete_items(del).await.unwrap().into_inner();
    assert_eq!((w.written, w.sequence), (1, 3));
    let col = get_collection(&s, "c").await;
    assert_eq!((col.item_count, col.last_sequence), (1, 3));
    assert_eq!(
        items
            .get_items(get(&["a"], false))
            .await
            .unwrap()
            .into_inner()
            .missing_ids,
        ["a"]
    );
}

#[tokio::test]
async fn client_written_sids_are_stored() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut it = item("s", 1.0);
    it.sid = Some(pb::SemanticId {
        codes: vec![3, 1, 4],
        suffix: 2,
        model_version: 99,
    });
    let mut items = s.items().await;
    items.upsert_items(upsert("c", vec![it])).await.unwrap();
    let got = items
        .get_items(get(&["s"], false))
        .await
        .unwrap()
        .into_inner();
    let sid = got.items[0].sid.clone().unwrap();
    assert_eq!(
        (sid.codes, sid.suffix, sid.model_version),
        (vec![3, 1, 4], 2, 0),
        "client SIDs carry version 0"
    );
}

#[tokio::test]
async fn a_bad_item_rejects_the_whole_batch() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut items = s.items().await;
    items
        .upsert_items(upsert("c", vec![item("pre", 0.0)]))
        .await
        .unwrap();
    let mut bad = item("bad", 3.0);
    bad.vectors.get_mut("text").unwrap().values[2] = f32::NAN;
    let r = items
        .upsert_items(upsert(
            "c",
            vec![item("x", 1.0), item("y", 2.0), bad, item("z", 4.0)],
        ))
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "items[2].vectors[\"text\"][2]: NaN is not a finite number",
    );
    let got = items
        .get_items(get(&["x", "y", "bad", "z"], false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.missing_ids.len(),
        4,
        "nothing of the rejected batch was written"
    );
    let col = get_collection(&s, "c").await;
    assert_eq!(
        (col.item_count, col.last_sequence),
        (1, 1),
        "no count or sequence consumed"
    );
}

#[tokio::test]
async fn stream_writes_each_message_atomically_in_order() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut items = s.items().await;
    let msgs = vec![
        upsert("c", vec![item("s1", 1.0), item("s2", 2.0)]),
        upsert("c", vec![item("s3", 3.0)]),
    ];
    let w = items
        .upsert_items_stream(stream_of(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.written, w.sequence), (3, 2));

    let mut bad = item("s5", 5.0);
    bad.vectors.insert("image".into(), vec4(1.0));
    let msgs = vec![
        upsert("c", vec![item("s4", 4.0)]),
        upsert("c", vec![bad, item("s6", 6.0)]),
        upsert("c", vec![item("s7", 7.0)]),
    ];
    let r = items.upsert_items_stream(stream_of(msgs)).await;
    assert_status(
        r,
        Code::InvalidArgument,
        "messages[1]: items[0].vectors[\"image\"]: unknown modality",
    );
    let got = items
        .get_items(get(&["s4", "s5", "s6", "s7"], false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.missing_ids,
        ["s5", "s6", "s7"],
        "the batch before the bad one stays, nothing after"
    );
}

#[tokio::test]
async fn buffered_writes_are_readable_and_sequenced() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut items = s.items().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        let mut req = upsert("c", vec![item(&format!("b{i}"), i as f32)]);
        req.durability = pb::Durability::Buffered as i32;
        seqs.push(items.upsert_items(req).await.unwrap().into_inner().sequence);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(get_collection(&s, "c").await.item_count, 5);
}

#[tokio::test]
async fn concurrent_writers_get_unique_increasing_sequences() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut items = s.items().await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let r = items
                    .upsert_items(upsert("c", vec![item(&format!("w{w}-{i}"), i as f32)]))
                    .await
                    .unwrap();
                seqs.push(r.into_inner().sequence);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "each writer sees increasing sequences"
        );
        all.extend(seqs);
    }
    all.sort();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<u64>>(),
        "sequences are unique and gap-free"
    );
    assert_eq!(get_collection(&s, "c").await.item_count, 100);
}
