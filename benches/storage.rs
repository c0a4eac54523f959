//! Storage benchmarks: record encoding, keys, and the store's write path (WAL + sled) for
//! BUFFERED and DURABLE batches. Seeded; sizes at the top.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sidb::storage::codec;
use sidb::storage::keys::{history_key, HistoryPos};
use sidb::storage::ops::WriteOp;
use sidb::storage::wal::WalOptions;
use sidb::storage::{Store, StoreOptions};
use sidb::types::{CollectionConfig, Durability, ItemRecord, Metric, Modality};

const DIM: usize = 256;
const BATCH: usize = 256;

fn items(seed: u64, n: usize) -> Vec<ItemRecord> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            let v = (0..DIM)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            ItemRecord {
                id: format!("item-{seed}-{i}"),
                vectors: vec![v],
                attributes: Default::default(),
                sid: None,
            }
        })
        .collect()
}

fn codec_benches(c: &mut Criterion) {
    let it = &items(1, 1)[0];
    let bytes = codec::encode_value(it, codec::put_item);
    c.bench_function("codec/encode_item_256d", |b| {
        b.iter(|| codec::encode_value(it, codec::put_item))
    });
    c.bench_function("codec/decode_item_256d", |b| {
        b.iter(|| codec::decode_value(&bytes, "item", codec::get_item).expect("valid"))
    });
    let pos = HistoryPos {
        timestamp_ms: 1_700_000_000_000,
        seq: 42,
        index: 3,
    };
    c.bench_function("keys/history_key", |b| {
        b.iter(|| history_key("user-123456", pos))
    });
}

fn write_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        cache_bytes: 256 << 20,
        wal: WalOptions {
            flush_interval: Duration::from_millis(100),
            segment_bytes: 64 << 20,
            max_pending_bytes: 512 << 20,
        },
        checkpoint_interval: Duration::from_secs(30),
        lock_wait: sidb::storage::DEFAULT_LOCK_WAIT,
        accept_data_loss: false,
        min_free_bytes: 0,
    };
    let store = Store::open(dir.path(), opts).expect("open store");
    let config = CollectionConfig {
        item_modalities: vec![Modality {
            name: "emb".into(),
            dim: DIM as u32,
        }],
        user_dim: 0,
        metric: Metric::Cosine,
        sid_levels: 3,
        sid_codebook_size: 0,
    };
    store.create_collection("bench", config, 0).expect("create");
    let coll = store.collection("bench").expect("collection");
    let mut g = c.benchmark_group("store_write");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    let mut seed = 0;
    for (name, durability) in [
        ("buffered_256x256d", Durability::Buffered),
        ("durable_256x256d", Durability::Durable),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    WriteOp::UpsertItems(items(seed, BATCH))
                },
                |op| {
                    let (_, lsn) = store.write(&coll, op, durability).expect("write");
                    if durability == Durability::Durable {
                        store.wait_durable_blocking(lsn).expect("sync");
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
    store.close().expect("close");
}

criterion_group!(benches, codec_benches, write_benches);
criterion_main!(benches);
