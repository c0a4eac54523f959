//! Index benches: HNSW build, search at several ef, filtered search, and the flat scan.
//! Seeded clustered data. Run: `cargo bench --bench index`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use sidb::index::flat::FlatIndex;
use sidb::index::hnsw::{HnswIndex, HnswParams};
use sidb::index::synth::clustered;
use sidb::index::PointId;
use sidb::types::Metric;

const N: usize = 20_000;
const DIM: usize = 128;
const CLUSTERS: usize = 50;
const SPREAD: f32 = 0.2;
const BUILD_N: usize = 2_000;
const K: usize = 10;
const EFS: [usize; 4] = [16, 32, 64, 128];
const SEED: u64 = 42;

fn points(data: &[f32]) -> Vec<(PointId, &[f32])> {
    data.chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| (i as PointId, v))
        .collect()
}

fn build(c: &mut Criterion) {
    let data = clustered(BUILD_N, DIM, CLUSTERS, SPREAD, SEED);
    let pts = points(&data);
    let mut g = c.benchmark_group("hnsw_build");
    g.sample_size(10)
        .throughput(Throughput::Elements(BUILD_N as u64));
    g.bench_function(BenchmarkId::new("parallel_cosine", BUILD_N), |b| {
        b.iter(|| {
            let idx = HnswIndex::new(Metric::Cosine, DIM, HnswParams::default(), BUILD_N);
            idx.upsert_batch(&pts).expect("valid");
            idx
        })
    });
    g.bench_function(BenchmarkId::new("serial_cosine", BUILD_N), |b| {
        b.iter(|| {
            let idx = HnswIndex::new(Metric::Cosine, DIM, HnswParams::default(), BUILD_N);
            pts.iter()
                .for_each(|(id, v)| idx.upsert(*id, v).expect("valid"));
            idx
        })
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let data = clustered(N, DIM, CLUSTERS, SPREAD, SEED);
    let queries = clustered(256, DIM, CLUSTERS, SPREAD, SEED + 1);
    let idx = HnswIndex::new(Metric::Cosine, DIM, HnswParams::default(), N);
    idx.upsert_batch(&points(&data)).expect("valid");
    let mut flat = FlatIndex::new(Metric::Cosine, DIM);
    points(&data)
        .iter()
        .for_each(|(id, v)| flat.upsert(*id, v).expect("valid"));
    let mut qs = queries.chunks_exact(DIM).cycle();
    let mut g = c.benchmark_group("search");
    for ef in EFS {
        g.bench_function(BenchmarkId::new("hnsw_ef", ef), |b| {
            b.iter(|| idx.search(qs.next().expect("cycle"), K, ef).expect("ok"))
        });
    }
    for (name, modulo) in [("half", 2), ("tenth", 10)] {
        let keep = move |id: PointId| id.is_multiple_of(modulo);
        g.bench_function(BenchmarkId::new("hnsw_filtered_ef64", name), |b| {
            b.iter(|| {
                idx.search_filtered(qs.next().expect("cycle"), K, 64, &keep)
                    .expect("ok")
            })
        });
    }
    let cands: Vec<PointId> = (0..1_000).map(|i| i * 7).collect();
    g.bench_function("flat_1k_candidates", |b| {
        b.iter(|| {
            flat.search(qs.next().expect("cycle"), K, None, Some(black_box(&cands)))
                .expect("ok")
        })
    });
    g.bench_function(BenchmarkId::new("flat_full", N), |b| {
        b.iter(|| {
            flat.search(qs.next().expect("cycle"), K, None, None)
                .expect("ok")
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    build(&mut c);
    search(&mut c);
    c.final_summary();
}
