//! Tests of `engine::training`.

use super::*;
use crate::config::Config;
use crate::engine::validate::{ItemInput, UserInput};
use crate::engine::Engine;
use crate::types::{CollectionConfig, Durability, InteractionRecord, Metric, Modality};

fn engine(dir: &std::path::Path) -> Engine {
    let mut c = Config::default();
    c.storage.data_dir = dir.to_path_buf();
    c.storage.cache_bytes = 16 << 20;
    let t = &mut c.training;
    (t.auto, t.min_items, t.check_interval_ms) = (false, 16, 20);
    (t.steps, t.warm_steps, t.batch, t.keep_versions) = (30, 20, 64, 2);
    (t.sched_idle, t.serving_duty) = (false, 1.0);
    Engine::open(&c).expect("open engine")
}

/// 40 items near four directions, 16 users each touching 10 items of one direction.
async fn load(e: &Engine) {
    let config = CollectionConfig {
        item_modalities: vec![Modality {
            name: "v".into(),
            dim: 8,
        }],
        user_dim: 0,
        metric: Metric::Cosine,
        sid_levels: 2,
        sid_codebook_size: 8,
    };
    e.create_collection("c".into(), config)
        .await
        .expect("create");
    let items = (0..40)
        .map(|i| ItemInput {
            id: format!("i{i:02}"),
            vectors: vec![(
                "v".into(),
                (0..8)
                    .map(|d| ((d % 4 == i % 4) as u8 as f32) + d as f32 * 0.01 + i as f32 * 0.001)
                    .collect(),
            )],
            ..ItemInput::default()
        })
        .collect();
    e.upsert_items("c", items, Durability::Durable)
        .await
        .expect("items");
    let users = (0..16)
        .map(|u| UserInput {
            id: format!("u{u:02}"),
            ..UserInput::default()
        })
        .collect();
    e.upsert_users("c", users, Durability::Durable)
        .await
        .expect("users");
    let xs = (0..160)
        .map(|n| InteractionRecord {
            user_id: format!("u{:02}", n % 16),
            item_id: format!("i{:02}", (n % 16 % 4) + 4 * (n / 16 % 10)),
            kind: "click".into(),
            weight: 1.0,
            timestamp_ms: 1_000 + n as i64,
            sequence: 0,
        })
        .collect();
    e.write_interactions("c", xs, Durability::Durable)
        .await
        .expect("interactions");
}

/// Trains until version `v` is active.
async fn publish(e: &Engine, v: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let _ = e.trigger_training("c");
    loop {
        let st = e.training_status("c").expect("status");
        assert_ne!(st.phase, Phase::Failed, "training failed: {}", st.error);
        if st.active_model_version == v && st.phase == Phase::Idle {
            return;
        }
        assert!(Instant::now() < deadline, "version {v} not published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression: ActivateModelVersion looked whether the version was kept before it took the
/// trainer slot; a training ending in between pruned the version, and the rollback read its
/// deleted checkpoint: DATA_LOSS ("model.json: No such file or directory"), found by
/// `sidb chaos`. Version 1 here is what such a request had seen listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_pruned_after_the_request_looked_is_refused_not_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = engine(tmp.path());
    load(&e).await;
    for v in 1..=3 {
        publish(&e, v).await;
    }
    let coll = e.store.collection("c").expect("collection");
    match e.activate_kept(&coll, 1) {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("no longer kept"), "{m}"),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    let back = e
        .activate_kept(&coll, 2)
        .expect("rollback to a kept version");
    assert_eq!((back.version, back.active), (2, true));
    assert_eq!(e.store.active_version(&coll), 2);
    e.close().expect("close");
}
