//! Recall against the flat index (thresholds, never equality), churn, rebuild and persistence.

use std::collections::HashSet;

use super::*;
use crate::error::Error;
use crate::index::flat::FlatIndex;
use crate::index::synth::clustered;

const DIM: usize = 32;
const N: usize = 2000;
const QUERIES: usize = 60;
const K: usize = 10;
/// Isotropic Gaussian blobs in 32-d are hard (locally like random data): ef 64 gives ~0.93-0.96.
const EF: usize = 128;

fn params() -> HnswParams {
    HnswParams {
        ef_construction: 100,
        ..HnswParams::default()
    }
}

/// Builds both indexes over `N` clustered points with ids `0..N`.
fn build(metric: Metric, seed: u64) -> (HnswIndex, FlatIndex) {
    let data = clustered(N, DIM, 20, 0.15, seed);
    let hnsw = HnswIndex::new(metric, DIM, params(), N);
    let mut flat = FlatIndex::new(metric, DIM);
    let points: Vec<(PointId, &[f32])> = data
        .chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| (i as PointId, v))
        .collect();
    hnsw.upsert_batch(&points).expect("valid");
    for (id, v) in &points {
        flat.upsert(*id, v).expect("valid");
    }
    (hnsw, flat)
}

fn queries(seed: u64) -> Vec<Vec<f32>> {
    clustered(QUERIES, DIM, 20, 0.15, seed)
        .chunks_exact(DIM)
        .map(|q| q.to_vec())
        .collect()
}

/// Mean recall@K of `search` against the flat oracle.
fn recall(flat: &FlatIndex, qs: &[Vec<f32>], search: impl Fn(&[f32]) -> Vec<Hit>) -> f64 {
    let mut found = 0usize;
    let mut wanted = 0usize;
    for q in qs {
        let truth: HashSet<PointId> = flat
            .search(q, K, None, None)
            .expect("ok")
            .iter()
            .map(|h| h.id)
            .collect();
        let got = search(q);
        assert!(
            got.windows(2).all(|w| w[0].score >= w[1].score),
            "best first"
        );
        found += got.iter().filter(|h| truth.contains(&h.id)).count();
        wanted += truth.len();
    }
    found as f64 / wanted.max(1) as f64
}

#[test]
fn recall_at_10_against_flat_for_every_metric() {
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        let (hnsw, flat) = build(metric, 1);
        let r = recall(&flat, &queries(2), |q| hnsw.search(q, K, EF).expect("ok"));
        assert!(r >= 0.95, "{metric:?}: recall {r}");
        // Scores are the metric's, not graph distances.
        let q = &queries(3)[0];
        let exact = flat.search(q, 1, None, None).expect("ok")[0];
        let approx = hnsw.search(q, 1, EF).expect("ok")[0];
        assert!(
            (exact.score - approx.score).abs() < 1e-3 * exact.score.abs().max(1.0),
            "{metric:?}"
        );
    }
}

/// Replaces half the points and removes a fifth, three times over, mirroring into the flat index.
fn churn(hnsw: &HnswIndex, flat: &mut FlatIndex) {
    for round in 0..3u64 {
        let fresh = clustered(N / 2, DIM, 20, 0.15, 100 + round);
        let ups: Vec<(PointId, &[f32])> = fresh
            .chunks_exact(DIM)
            .enumerate()
            .map(|(i, v)| ((i * 2 + round as usize % 2) as PointId, v))
            .collect();
        hnsw.upsert_batch(&ups).expect("valid");
        for (id, v) in &ups {
            flat.upsert(*id, v).expect("valid");
        }
        for id in (round as usize..N).step_by(5) {
            assert_eq!(hnsw.remove(id as PointId), flat.remove(id as PointId));
        }
    }
}

#[test]
fn recall_does_not_decay_after_heavy_churn_and_rebuild() {
    for metric in [Metric::Cosine, Metric::Dot] {
        churn_then_rebuild(metric);
    }
}

fn churn_then_rebuild(metric: Metric) {
    let (hnsw, mut flat) = build(metric, 4);
    churn(&hnsw, &mut flat);
    assert_eq!(hnsw.len(), flat.len());
    assert!(hnsw.needs_rebuild(), "{} tombstones", hnsw.tombstones());
    let qs = queries(5);
    let r = recall(&flat, &qs, |q| hnsw.search(q, K, EF).expect("ok"));
    assert!(r >= 0.95, "after churn: recall {r}");

    // Rebuild off to the side while writes keep landing on the old index.
    let job = hnsw.start_rebuild();
    hnsw.upsert(7, &qs[0]).expect("valid");
    flat.upsert(7, &qs[0]).expect("valid");
    let fresh = job.run(&hnsw).expect("rebuild");
    assert!(hnsw.remove(8) && flat.remove(8));
    hnsw.finish_rebuild(&fresh).expect("catch up");
    assert_eq!(fresh.tombstones(), 1, "only the journaled replace of 7");
    assert_eq!(fresh.len(), flat.len());
    assert!(!fresh.contains(8) && fresh.contains(7));
    let r = recall(&flat, &qs, |q| fresh.search(q, K, EF).expect("ok"));
    assert!(r >= 0.95, "after rebuild: recall {r}");
}

#[test]
fn removed_and_replaced_points_never_come_back() {
    let hnsw = HnswIndex::new(Metric::L2, 2, params(), 16);
    for i in 0..50u64 {
        hnsw.upsert(i, &[i as f32, 0.0]).expect("valid");
    }
    hnsw.upsert(3, &[1000.0, 0.0]).expect("replace");
    assert!(hnsw.remove(4));
    let hits = hnsw.search(&[3.0, 0.0], 50, 64).expect("ok");
    let ids: Vec<PointId> = hits.iter().map(|h| h.id).collect();
    assert_eq!(ids.len(), 49, "every live point once: {ids:?}");
    assert!(!ids.contains(&4));
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 49);
    assert_eq!(
        hits.last().map(|h| h.id),
        Some(3),
        "the replaced vector is the one scored"
    );
}

#[test]
fn filtered_search_returns_only_passing_points_with_good_recall() {
    let (hnsw, flat) = build(Metric::Dot, 6);
    // Half passes: the walk stops early; one in 200 passes: it walks through most of the graph.
    filtered_recall(&hnsw, &flat, 2);
    filtered_recall(&hnsw, &flat, 200);
}

fn filtered_recall(hnsw: &HnswIndex, flat: &FlatIndex, modulo: u64) {
    let keep = |id: PointId| id.is_multiple_of(modulo);
    let qs = queries(7);
    let mut found = 0;
    for q in &qs {
        let truth: HashSet<PointId> = flat
            .search(q, K, Some(&keep), None)
            .expect("ok")
            .iter()
            .map(|h| h.id)
            .collect();
        let got = hnsw.search_filtered(q, K, EF, &keep).expect("ok");
        assert!(got.iter().all(|h| keep(h.id)));
        found += got.iter().filter(|h| truth.contains(&h.id)).count();
    }
    let r = found as f64 / (qs.len() * K) as f64;
    assert!(r >= 0.9, "filtered recall {r} for 1 in {modulo}");
}

#[test]
fn dump_and_reload_keeps_results_and_recall() {
    let (hnsw, mut flat) = build(Metric::Cosine, 8);
    churn(&hnsw, &mut flat);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idx");
    hnsw.dump(&path, 42).expect("dump");
    let stamp = DumpStamp {
        metric: Metric::Cosine,
        dim: DIM,
        generation: 42,
    };
    let back = HnswIndex::load(&path, stamp).expect("load");
    assert_eq!(
        (back.len(), back.tombstones()),
        (hnsw.len(), hnsw.tombstones())
    );
    let qs = queries(9);
    for q in &qs[..5] {
        assert_eq!(
            back.search(q, K, EF).expect("ok"),
            hnsw.search(q, K, EF).expect("ok")
        );
    }
    let r = recall(&flat, &qs, |q| back.search(q, K, EF).expect("ok"));
    assert!(r >= 0.95, "after reload: recall {r}");
    // Still writable after a reload.
    back.upsert(1, &qs[0]).expect("valid");
    assert_eq!(back.search(&qs[0], 1, EF).expect("ok")[0].id, 1);
}

#[test]
fn missing_stale_and_corrupt_dumps_are_refused() {
    let (hnsw, _) = build(Metric::L2, 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idx");
    let stamp = DumpStamp {
        metric: Metric::L2,
        dim: DIM,
        generation: 5,
    };
    assert!(matches!(
        HnswIndex::load(&path, stamp),
        Err(Error::NotFound(_))
    ));
    hnsw.dump(&path, 5).expect("dump");
    for stale in [
        DumpStamp {
            generation: 6,
            ..stamp
        },
        DumpStamp {
            dim: DIM + 1,
            ..stamp
        },
        DumpStamp {
            metric: Metric::Dot,
            ..stamp
        },
    ] {
        assert!(
            matches!(
                HnswIndex::load(&path, stale),
                Err(Error::FailedPrecondition(_))
            ),
            "{stale:?}"
        );
    }
    // One flipped byte in the graph file.
    let graph = path.join("graph.bin");
    let mut bytes = std::fs::read(&graph).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&graph, &bytes).expect("write");
    assert!(matches!(
        HnswIndex::load(&path, stamp),
        Err(Error::DataLoss(_))
    ));
    // A truncated meta.
    hnsw.dump(&path, 5).expect("dump again");
    let meta = path.join("index.meta");
    let bytes = std::fs::read(&meta).expect("read");
    std::fs::write(&meta, &bytes[..bytes.len() - 9]).expect("write");
    assert!(matches!(
        HnswIndex::load(&path, stamp),
        Err(Error::DataLoss(_))
    ));
    // A missing graph file.
    hnsw.dump(&path, 5).expect("dump again");
    std::fs::remove_file(path.join("graph.bin")).expect("rm");
    assert!(matches!(
        HnswIndex::load(&path, stamp),
        Err(Error::DataLoss(_))
    ));
}

#[test]
fn dot_points_beyond_the_norm_bound_are_scored_exactly_and_trigger_rebuild() {
    let (hnsw, mut flat) = build(Metric::Dot, 11);
    let big: Vec<f32> = queries(12)[0].iter().map(|x| x * 3.0).collect();
    hnsw.upsert(0, &big).expect("valid");
    flat.upsert(0, &big).expect("valid");
    // Before a rebuild the graph ranks it as if its norm were phi, but its score is exact.
    let q = &queries(12)[0];
    let top = |idx: &HnswIndex, q: &[f32]| idx.search(q, 1, EF).expect("ok")[0];
    let exact = flat.search(q, 1, None, None).expect("ok")[0];
    assert_eq!((exact.id, top(&hnsw, q).id), (0, 0));
    assert!((exact.score - top(&hnsw, q).score).abs() < 1e-3 * exact.score);
    // After one it is ranked by its true inner product, for any query.
    let fresh = hnsw.start_rebuild().run(&hnsw).expect("rebuild");
    let q = &queries(12)[1];
    let exact = flat.search(q, 1, None, None).expect("ok")[0];
    // A lone point 3x longer than the rest skews the reduction: it is found at ef 512, not 128.
    let wide = fresh.search(q, 1, 512).expect("ok")[0];
    assert_eq!(exact.id, wide.id);
    assert!((exact.score - wide.score).abs() < 1e-3 * exact.score.abs());
    let strict = HnswIndex::new(
        Metric::Dot,
        2,
        HnswParams {
            rebuild_tombstone_ratio: 0.0,
            ..params()
        },
        4,
    );
    strict.upsert(1, &[1.0, 0.0]).expect("valid");
    assert!(!strict.needs_rebuild());
    strict.upsert(2, &[10.0, 0.0]).expect("valid");
    assert!(strict.needs_rebuild(), "a point above phi");
    let fresh = strict.start_rebuild().run(&strict).expect("rebuild");
    assert!(!fresh.needs_rebuild());
    assert_eq!(fresh.search(&[1.0, 0.0], 2, 16).expect("ok")[0].id, 2);
}

#[test]
fn well_checksummed_but_malformed_graphs_are_refused() {
    let (hnsw, _) = build(Metric::L2, 13);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idx");
    hnsw.dump(&path, 1).expect("dump");
    let data = std::fs::read(path.join("graph.bin")).expect("read");
    let shape = shape_for(Metric::L2, DIM, &params());
    assert!(persist::decode_graph(&data, shape).is_ok());
    // Header: magic, n, dim, m, entry; then vectors, levels, layer-0 words.
    let links0 = 8 + 4 * 8 + N * DIM * 4 + N;
    let put = |at: usize, word: u32| {
        let mut d = data.clone();
        d[at..at + 4].copy_from_slice(&word.to_le_bytes());
        d
    };
    let cases = [
        ("count above capacity", put(links0, 1000)),
        ("link to a missing node", put(links0 + 4, N as u32 + 5)),
        ("truncated", data[..data.len() - 3].to_vec()),
        ("wrong shape", data.clone()),
    ];
    for (i, (what, bad)) in cases.iter().enumerate() {
        let shape = if i == 3 {
            shape_for(Metric::L2, DIM + 1, &params())
        } else {
            shape
        };
        assert!(persist::decode_graph(bad, shape).is_err(), "{what}");
    }
    let mut entry = data.clone();
    entry[8 + 24..8 + 32].copy_from_slice(&((N as u64 + 1) << 8).to_le_bytes());
    assert!(persist::decode_graph(&entry, shape).is_err(), "bad entry");
}

#[test]
fn empty_index_dumps_and_reloads() {
    let hnsw = HnswIndex::new(Metric::Dot, DIM, params(), 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idx");
    hnsw.dump(&path, 0).expect("dump");
    let stamp = DumpStamp {
        metric: Metric::Dot,
        dim: DIM,
        generation: 0,
    };
    let back = HnswIndex::load(&path, stamp).expect("load");
    assert!(back.is_empty());
    assert!(back.search(&queries(1)[0], K, EF).expect("ok").is_empty());
    back.upsert(9, &queries(1)[0]).expect("valid");
    assert_eq!(back.search(&queries(1)[0], K, EF).expect("ok")[0].id, 9);
}

#[test]
fn grows_far_beyond_its_capacity_hint() {
    let data = clustered(N, DIM, 20, 0.15, 14);
    let hnsw = HnswIndex::new(Metric::Cosine, DIM, params(), 4);
    let mut flat = FlatIndex::new(Metric::Cosine, DIM);
    let points: Vec<(PointId, &[f32])> = data
        .chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| (i as PointId, v))
        .collect();
    // Odd-sized batches and single upserts, so the arrays reallocate many times.
    for chunk in points.chunks(333) {
        hnsw.upsert_batch(chunk).expect("valid");
        hnsw.upsert(chunk[0].0, chunk[0].1).expect("valid");
    }
    for (id, v) in &points {
        flat.upsert(*id, v).expect("valid");
    }
    assert_eq!(hnsw.len(), N);
    let r = recall(&flat, &queries(15), |q| hnsw.search(q, K, EF).expect("ok"));
    assert!(r >= 0.95, "recall {r}");
}

#[test]
fn searches_run_while_batches_are_inserted() {
    let data = clustered(N, DIM, 20, 0.15, 16);
    let hnsw = HnswIndex::new(Metric::Cosine, DIM, params(), 64);
    let points: Vec<(PointId, &[f32])> = data
        .chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| (i as PointId, v))
        .collect();
    let qs = queries(17);
    let inserted = std::sync::atomic::AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for chunk in points.chunks(250) {
                pool.install(|| hnsw.upsert_batch(chunk)).expect("valid");
                inserted.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
        });
        for _ in 0..2 {
            scope.spawn(|| {
                let mut rounds = 0;
                while inserted.load(std::sync::atomic::Ordering::SeqCst) < N || rounds < 5 {
                    for q in &qs {
                        let live = hnsw.len();
                        let hits = hnsw.search(q, K, EF).expect("ok");
                        // Only published ids show up: at most one batch is published but not
                        // counted yet. Points are never removed here, so k hits come back.
                        let bound = inserted.load(std::sync::atomic::Ordering::SeqCst) + 250;
                        assert!(hits.iter().all(|h| (h.id as usize) < bound));
                        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                        assert!(
                            hits.len() >= K.min(live),
                            "{} hits, {live} live",
                            hits.len()
                        );
                    }
                    rounds += 1;
                }
            });
        }
    });
    let mut flat = FlatIndex::new(Metric::Cosine, DIM);
    for (id, v) in &points {
        flat.upsert(*id, v).expect("valid");
    }
    let r = recall(&flat, &qs, |q| hnsw.search(q, K, EF).expect("ok"));
    assert!(r >= 0.95, "recall after concurrent build {r}");
}

#[test]
fn filtered_walk_skips_tombstones_and_matches_the_oracle() {
    let (hnsw, mut flat) = build(Metric::L2, 18);
    churn(&hnsw, &mut flat);
    assert!(hnsw.tombstones() > 0);
    for modulo in [3, 50] {
        let keep = |id: PointId| id.is_multiple_of(modulo);
        let qs = queries(19);
        let mut found = 0;
        let mut wanted = 0;
        for q in &qs {
            let truth: HashSet<PointId> = flat
                .search(q, K, Some(&keep), None)
                .expect("ok")
                .iter()
                .map(|h| h.id)
                .collect();
            let got = hnsw.search_filtered(q, K, EF, &keep).expect("ok");
            assert!(got.iter().all(|h| keep(h.id) && hnsw.contains(h.id)));
            let ids: HashSet<PointId> = got.iter().map(|h| h.id).collect();
            assert_eq!(ids.len(), got.len(), "no id twice");
            found += got.iter().filter(|h| truth.contains(&h.id)).count();
            wanted += truth.len();
        }
        let r = found as f64 / wanted as f64;
        assert!(
            r >= 0.95,
            "filtered recall {r} for 1 in {modulo} after churn"
        );
    }
}

#[test]
fn serial_builds_are_reproducible() {
    let one = |_| {
        let idx = HnswIndex::new(Metric::Cosine, DIM, params(), 16);
        let data = clustered(300, DIM, 5, 0.2, 20);
        for (i, v) in data.chunks_exact(DIM).enumerate() {
            idx.upsert(i as PointId, v).expect("valid");
        }
        idx.search(&queries(21)[0], K, 16).expect("ok")
    };
    assert_eq!(one(0), one(1));
}

#[test]
fn dumps_of_the_hnsw_rs_format_are_refused_not_misread() {
    let (hnsw, _) = build(Metric::Cosine, 22);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idx");
    hnsw.dump(&path, 3).expect("dump");
    // A well-checksummed meta claiming format version 1 (hnsw_rs's files): the caller rebuilds.
    let meta = path.join("index.meta");
    let mut bytes = std::fs::read(&meta).expect("read");
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&meta, &bytes).expect("write");
    let stamp = DumpStamp {
        metric: Metric::Cosine,
        dim: DIM,
        generation: 3,
    };
    assert!(matches!(
        HnswIndex::load(&path, stamp),
        Err(Error::DataLoss(_))
    ));
}

/// A reloaded dump checked against the vectors it should hold: under every metric an unchanged
/// point is current (the graph form of its stored vector is recomputed bit for bit, the `Dot`
/// rim points included), a rewritten one is not, and a point that no longer exists is removed.
#[test]
fn reconcile_keeps_current_points_flags_rewritten_ones_and_removes_the_gone() {
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        let (hnsw, mut flat) = build(metric, 21);
        // under Dot, points beyond the norm bound fixed by the first batch (rim points)
        let big: Vec<f32> = (0..DIM).map(|i| 10.0 + i as f32).collect();
        hnsw.upsert(N as PointId, &big).expect("valid");
        flat.upsert(N as PointId, &big).expect("valid");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("idx");
        hnsw.freeze().write(&path, 7).expect("dump");
        let stamp = DumpStamp {
            metric,
            dim: DIM,
            generation: 7,
        };
        let back = HnswIndex::load(&path, stamp).expect("load");
        // after the dump: point 3 rewritten, point 5 deleted
        let moved: Vec<f32> = (0..DIM).map(|i| (i % 3) as f32 - 1.0).collect();
        flat.upsert(3, &moved).expect("valid");
        flat.remove(5);
        let (current, removed) = back.reconcile(|p| flat.get(p));
        assert_eq!(removed, 1, "{metric:?}");
        assert!(!back.contains(5), "{metric:?}: a deleted point stays live");
        assert!(
            !current.contains(&3),
            "{metric:?}: a rewritten point is current"
        );
        assert_eq!(
            current.len(),
            N - 1,
            "{metric:?}: unchanged points are current"
        );
        assert!(
            current.contains(&(N as PointId)),
            "{metric:?}: the rim point"
        );
    }
}

/// Freezing a graph for a dump leaves searches and deletes running; the dump is the graph as
/// of the freeze (a delete after it is not in the dump, and is live-set only).
#[test]
fn a_frozen_graph_dumps_the_live_set_of_its_freeze() {
    let (hnsw, _) = build(Metric::Cosine, 22);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idx");
    let frozen = hnsw.freeze();
    assert!(hnsw.remove(9), "a delete runs while frozen");
    let q = queries(3).remove(0);
    assert_eq!(hnsw.search(&q, K, EF).expect("ok").len(), K);
    frozen.write(&path, 1).expect("dump");
    drop(frozen);
    let stamp = DumpStamp {
        metric: Metric::Cosine,
        dim: DIM,
        generation: 1,
    };
    let back = HnswIndex::load(&path, stamp).expect("load");
    assert!(back.contains(9), "the dump is of the moment of the freeze");
    assert_eq!(back.len(), N);
    hnsw.upsert(9, &q).expect("inserts go on after the freeze");
}
