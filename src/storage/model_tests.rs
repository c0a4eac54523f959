//! Model-based test of the store against a `BTreeMap` oracle, with a "reopen" operation (clean
//! close and recovery) in the sequence, in the manner of sled's own model tests.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::ops::WriteOp;
use super::wal::WalOptions;
use super::{Store, StoreOptions};
use crate::types::{CollectionConfig, Durability, InteractionRecord, ItemRecord, Metric, Modality};

#[derive(Debug, Clone)]
enum Op {
    Upsert(Vec<(u8, i8)>),
    Delete(Vec<u8>),
    Interact(u8, i64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0u8..12, any::<i8>()), 1..4).prop_map(Op::Upsert),
        2 => prop::collection::vec(0u8..12, 1..3).prop_map(Op::Delete),
        3 => (0u8..3, -5i64..5).prop_map(|(u, t)| Op::Interact(u, t)),
        1 => Just(Op::Reopen),
    ]
}

fn options() -> StoreOptions {
    StoreOptions {
        cache_bytes: 4 << 20,
        wal: WalOptions {
            flush_interval: Duration::from_millis(5),
            // Tiny segments, so rotation and checkpoints happen within a test case.
            segment_bytes: 512,
            max_pending_bytes: 1 << 20,
        },
        checkpoint_interval: Duration::from_millis(20),
        lock_wait: Duration::from_secs(10),
        accept_data_loss: false,
        min_free_bytes: 0,
    }
}

fn item(id: u8, v: i8) -> ItemRecord {
    ItemRecord {
        id: format!("i{id}"),
        vectors: vec![vec![v as f32]],
        attributes: Default::default(),
        sid: None,
    }
}

fn check(store: &Store, items: &BTreeMap<u8, i8>, history: &BTreeMap<u8, Vec<(i64, u64)>>) {
    let coll = store.collection("m").unwrap();
    let ids: Vec<String> = (0..12).map(|i| format!("i{i}")).collect();
    let got = store.get_items(&coll, &ids).unwrap();
    for (i, g) in got.iter().enumerate() {
        let want = items.get(&(i as u8)).map(|v| item(i as u8, *v));
        assert_eq!(g.as_ref(), want.as_ref(), "item i{i}");
    }
    let info = coll.info();
    assert_eq!(info.stats.items, items.len() as u64);
    for u in 0..3u8 {
        let (page, _) = store
            .user_history(&coll, &format!("u{u}"), 1000, None)
            .unwrap();
        let got: Vec<(i64, u64)> = page.iter().map(|x| (x.timestamp_ms, x.sequence)).collect();
        let mut want = history.get(&u).cloned().unwrap_or_default();
        want.sort_by(|a, b| b.cmp(a));
        assert_eq!(got, want, "history of u{u}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_oracle_across_reopens(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), options()).unwrap();
        let config = CollectionConfig {
            item_modalities: vec![Modality { name: "t".into(), dim: 1 }],
            user_dim: 0, metric: Metric::Cosine, sid_levels: 3, sid_codebook_size: 0,
        };
        store.create_collection("m", config, 1).unwrap();
        let mut items = BTreeMap::new();
        let mut history: BTreeMap<u8, Vec<(i64, u64)>> = BTreeMap::new();
        let mut seq = 0;
        for op in ops {
            let durability = if seq % 2 == 0 { Durability::Durable } else { Durability::Buffered };
            let write = match op {
                Op::Upsert(xs) => {
                    for (id, v) in &xs { items.insert(*id, *v); }
                    WriteOp::UpsertItems(xs.into_iter().map(|(id, v)| item(id, v)).collect())
                }
                Op::Delete(ids) => {
                    for id in &ids { items.remove(id); }
                    WriteOp::DeleteItems(ids.into_iter().map(|i| format!("i{i}")).collect())
                }
                Op::Interact(u, ts) => {
                    history.entry(u).or_default().push((ts, seq + 1));
                    WriteOp::Interactions(vec![InteractionRecord {
                        user_id: format!("u{u}"), item_id: "x".into(), kind: String::new(),
                        weight: 1.0, timestamp_ms: ts, sequence: 0,
                    }])
                }
                Op::Reopen => {
                    store.close().unwrap();
                    drop(store);
                    store = Store::open(dir.path(), options()).unwrap();
                    check(&store, &items, &history);
                    continue;
                }
            };
            seq += 1;
            let coll = store.collection("m").unwrap();
            let (w, lsn) = store.write(&coll, write, durability).unwrap();
            prop_assert_eq!(w.sequence, seq);
            store.wait_durable_blocking(lsn).unwrap();
        }
        check(&store, &items, &history);
        store.close().unwrap();
    }
}

#[test]
fn a_live_entity_scan_lets_writes_through_and_a_locked_one_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), options()).unwrap());
    let config = CollectionConfig {
        item_modalities: vec![Modality {
            name: "t".into(),
            dim: 1,
        }],
        user_dim: 0,
        metric: Metric::Cosine,
        sid_levels: 3,
        sid_codebook_size: 0,
    };
    store.create_collection("m", config, 1).unwrap();
    let coll = store.collection("m").unwrap();
    let upsert = |id: u8| WriteOp::UpsertItems(vec![item(id, 1)]);
    store.write(&coll, upsert(0), Durability::Buffered).unwrap();
    // A write issued from inside the scan's callback, on another thread: it completes within
    // the callback when the scan does not hold writes off, and only after the scan otherwise.
    let write_during_scan = |live: bool, id: u8| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, c2) = (std::sync::Arc::clone(&store), coll.clone());
        let mut writer = None;
        let mut done_within = None;
        let scan = |_: super::Scanned| {
            if writer.is_none() {
                let (s2, c2, tx) = (std::sync::Arc::clone(&s2), c2.clone(), tx.clone());
                writer = Some(std::thread::spawn(move || {
                    let w = s2.write(&c2, upsert(id), Durability::Buffered).unwrap().0;
                    tx.send(w.sequence).unwrap();
                }));
                done_within = Some(rx.recv_timeout(Duration::from_millis(500)).is_ok());
            }
            Ok(())
        };
        let seq = if live {
            store.scan_entities_live(&coll, scan).unwrap()
        } else {
            store.scan_entities(&coll, scan).unwrap()
        };
        writer.take().unwrap().join().unwrap();
        (seq, done_within.unwrap())
    };
    let (seq, through) = write_during_scan(true, 1);
    assert!(through, "a write waited for a live scan");
    assert_eq!(seq, 1, "a live scan reports the sequence it began at");
    let (seq, through) = write_during_scan(false, 2);
    assert!(!through, "a write went through a locked scan");
    assert_eq!(seq, 2, "a locked scan reports the sequence it reflects");
}

#[test]
fn open_waits_for_the_lock_of_a_store_that_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), options()).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        first.close().unwrap();
        drop(first);
    });
    // sled's lock is held for the first 300 ms: the open waits for it instead of failing
    let second = Store::open(dir.path(), options()).expect("opened once the lock was free");
    holder.join().unwrap();
    second.close().unwrap();
}

#[test]
fn open_of_a_store_in_use_fails_clearly_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), options()).unwrap();
    let short = StoreOptions {
        lock_wait: Duration::from_millis(50),
        ..options()
    };
    let err = Store::open(dir.path(), short)
        .err()
        .expect("the store is in use");
    assert!(
        matches!(err, crate::error::Error::Unavailable(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
    first.close().unwrap();
}

#[test]
fn a_request_racing_the_deletion_of_its_collection_gets_not_found() {
    // Regression (found by the gRPC fuzz test): a read that looked the collection up before a
    // DeleteCollection dropped its tree failed with INTERNAL "storage: Collection [99, 47, ..]
    // does not exist".
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let config = CollectionConfig {
        item_modalities: vec![Modality {
            name: "t".into(),
            dim: 1,
        }],
        user_dim: 0,
        metric: Metric::Cosine,
        sid_levels: 3,
        sid_codebook_size: 0,
    };
    store.create_collection("m", config, 1).unwrap();
    let coll = store.collection("m").unwrap();
    store
        .write(
            &coll,
            WriteOp::UpsertItems(vec![item(0, 1)]),
            Durability::Buffered,
        )
        .unwrap();
    store.delete_collection("m").unwrap();
    let not_found = |r: crate::error::Result<()>, what: &str| match r {
        Err(crate::error::Error::NotFound(m)) => assert!(m.contains("deleted"), "{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    };
    not_found(
        store.get_items(&coll, &["i0".into()]).map(drop),
        "get_items",
    );
    not_found(
        store.user_history(&coll, "u", 10, None).map(drop),
        "user_history",
    );
    not_found(store.versions(&coll).map(drop), "versions");
    let w = store.write(
        &coll,
        WriteOp::UpsertItems(vec![item(1, 1)]),
        Durability::Buffered,
    );
    assert!(
        matches!(w, Err(crate::error::Error::NotFound(_))),
        "write: {w:?}"
    );
}
