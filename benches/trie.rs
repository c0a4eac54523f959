//! Trie benches: first page of a prefix scan at 1k / 100k / 1M entities, count and children.
//!
//! Besides criterion's means, `main` first prints p50/p99/max of single first-page scans per size
//! (the aim: p99 <= 1 ms, flat from 1k to 1M), and the time to build each trie.
//! Run: `cargo bench --bench trie`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sidb::trie::SidTrie;
use sidb::types::SemanticId;

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const LEVELS: usize = 3;
const CODEBOOK: u32 = 256;
const PAGE: usize = 100;
const SEED: u64 = 42;
const PERCENTILE_SCANS: usize = 20_000;

/// A trie of `n` entities with random 3-level SIDs (codebook 256) and ids `item{i}`.
fn trie(n: usize) -> SidTrie {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    SidTrie::from_entries((0..n).map(|i| {
        let codes = (0..LEVELS).map(|_| rng.random_range(0..CODEBOOK)).collect();
        (
            format!("item{i}"),
            SemanticId {
                codes,
                suffix: 0,
                model_version: 1,
            },
        )
    }))
}

/// Prefixes to scan: the empty one and random level-1 and level-2 codes.
fn prefixes(rng: &mut ChaCha8Rng) -> Vec<u32> {
    let depth = rng.random_range(0..3);
    (0..depth).map(|_| rng.random_range(0..CODEBOOK)).collect()
}

fn percentiles() {
    for n in SIZES {
        let t = Instant::now();
        let trie = trie(n);
        let build = t.elapsed();
        let mut rng = ChaCha8Rng::seed_from_u64(SEED + 1);
        let mut h = Histogram::<u64>::new(3).expect("valid histogram");
        for _ in 0..PERCENTILE_SCANS {
            let p = prefixes(&mut rng);
            let t = Instant::now();
            let page = trie.scan(&p, None, PAGE).expect("no cursor");
            black_box(page);
            h.record(t.elapsed().as_nanos() as u64).expect("in range");
        }
        println!(
            "trie n={n:>8}: build {:>7.1} ms; first page of {PAGE}: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            build.as_secs_f64() * 1e3,
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.max() as f64 / 1e3
        );
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("trie");
    for n in SIZES {
        let trie = trie(n);
        g.bench_with_input(
            BenchmarkId::new("scan_first_page_root", n),
            &trie,
            |b, t| b.iter(|| t.scan(&[], None, PAGE).expect("ok")),
        );
        g.bench_with_input(
            BenchmarkId::new("scan_first_page_level1", n),
            &trie,
            |b, t| b.iter(|| t.scan(&[17], None, PAGE).expect("ok")),
        );
        g.bench_with_input(BenchmarkId::new("count_level2", n), &trie, |b, t| {
            b.iter(|| t.count(black_box(&[17, 3])))
        });
        g.bench_with_input(BenchmarkId::new("children_root", n), &trie, |b, t| {
            b.iter(|| t.children(black_box(&[])))
        });
    }
    g.finish();
}

fn main() {
    percentiles();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
