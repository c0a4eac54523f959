//! Model benchmarks on seeded synthetic data: k-means init, one DAS training run, batched
//! inference. `cargo bench --bench model` (set RAYON_NUM_THREADS=1 to match the trainer default).
use criterion::{criterion_group, criterion_main, Criterion};
use sidb::model::synth::{generate, SynthSpec};
use sidb::model::{kmeans, nn::rng_for, train, DasConfig, Method};

const ITEMS: usize = 2048;
const USERS: usize = 512;
const DIM: usize = 64;
const STEPS: usize = 20;

fn spec() -> SynthSpec {
    SynthSpec {
        n_items: ITEMS,
        n_users: USERS,
        dim: DIM,
        ..SynthSpec::default()
    }
}

fn bench_kmeans(c: &mut Criterion) {
    let s = generate(&spec());
    c.bench_function("kmeans_64x25_2048x64", |b| {
        b.iter(|| {
            kmeans::kmeans(&s.data.item_emb, DIM, 64, 25, &mut rng_for(1, "bench")).expect("kmeans")
        })
    });
}

fn bench_train_and_encode(c: &mut Criterion) {
    let s = generate(&spec());
    let cfg = DasConfig {
        steps: STEPS,
        batch: 512,
        warmup_steps: 0,
        ..DasConfig::default()
    };
    let mut group = c.benchmark_group("das");
    group.sample_size(10);
    group.bench_function("train_20_steps_batch512", |b| {
        b.iter(|| train(&s.data, Method::Das, &cfg).expect("train"))
    });
    let (model, _) = train(&s.data, Method::Das, &cfg).expect("train");
    group.bench_function("encode_items_2048", |b| {
        b.iter(|| model.encode_items(&s.data.item_emb).expect("encode"))
    });
    group.finish();
}

criterion_group!(benches, bench_kmeans, bench_train_and_encode);
criterion_main!(benches);
