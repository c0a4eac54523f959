//! Recall-targeted search breadth: the smallest graph `ef` that reaches a recall target.
//!
//! One `ef` does not fit every collection: on clustered 256-d data the default 64 gives
//! recall@10 0.98 at 100k points and 0.71 at 1M (README, "Search over gRPC"). The indexer
//! therefore measures, once a graph has caught up and again each time it has doubled, the
//! recall@k of the graph against exact search on a sample of queries (the collection's real
//! searches once it has enough, see [`QuerySample`], else its own points), and keeps the smallest
//! `ef` of a ladder that reaches the target as the collection's default.
use super::{Hit, PointId};

/// The `ef` values tried, smallest first.
pub const EF_LADDER: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

/// What a calibration measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The smallest `ef` of the ladder whose recall reached the target; the largest tried when
    /// none did.
    pub ef: usize,
    /// Mean recall@k at that `ef`.
    pub recall: f64,
    /// Queries measured.
    pub queries: usize,
    /// The recall the calibration aimed for.
    pub target: f64,
    /// Whether the queries were real searches ([`QuerySample`]) rather than the index's own
    /// points.
    pub on_queries: bool,
}

/// A uniform sample of the query vectors an index has been searched with (reservoir
/// sampling, Vitter's algorithm R, with a seeded splitmix64 stream). Calibrating on the searches
/// a collection really gets, rather than on its own points, measures the recall its clients see:
/// a graph finds its own points a little more easily than new vectors, and real queries (user
/// profiles, say) need not look like the stored vectors at all.
#[derive(Debug, Clone)]
pub struct QuerySample {
    capacity: usize,
    seen: u64,
    rows: Vec<Vec<f32>>,
    state: u64,
}

impl QuerySample {
    /// An empty sample keeping at most `capacity` queries.
    pub fn new(capacity: usize, seed: u64) -> QuerySample {
        QuerySample {
            capacity,
            seen: 0,
            rows: Vec::with_capacity(capacity),
            state: seed,
        }
    }

    /// Counts one search with `query`; keeps it with probability `capacity / seen`.
    pub fn offer(&mut self, query: &[f32]) {
        self.seen += 1;
        if self.rows.len() < self.capacity {
            self.rows.push(query.to_vec());
            return;
        }
        let j = (self.next() % self.seen) as usize;
        if j < self.capacity {
            self.rows[j].clear();
            self.rows[j].extend_from_slice(query);
        }
    }

    /// Searches counted.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The queries kept.
    pub fn rows(&self) -> &[Vec<f32>] {
        &self.rows
    }

    /// Whether the sample holds `capacity` queries.
    pub fn is_full(&self) -> bool {
        self.capacity > 0 && self.rows.len() == self.capacity
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Measures recall@`k` of `approx(query, n, ef)` against `exact(query, n)` for each `(point,
/// vector)` of `queries` (a query that is a point of the index itself has that point left out of
/// both answers, so it does not count as a found neighbour; other queries pass an id no point
/// has) at each `ef` of `ladder` in turn,
/// and stops at the first whose mean recall reaches `target`.
pub fn calibrate<E, A, Err>(
    queries: &[(PointId, Vec<f32>)],
    k: usize,
    target: f64,
    ladder: &[usize],
    exact: E,
    approx: A,
) -> Result<Option<Calibration>, Err>
where
    E: Fn(&[f32], usize) -> Result<Vec<Hit>, Err>,
    A: Fn(&[f32], usize, usize) -> Result<Vec<Hit>, Err>,
{
    let without = |own: PointId, hits: Vec<Hit>| -> Vec<PointId> {
        hits.into_iter()
            .map(|h| h.id)
            .filter(|&id| id != own)
            .take(k)
            .collect()
    };
    let mut truths = Vec::with_capacity(queries.len());
    for (own, q) in queries {
        truths.push(without(*own, exact(q, k + 1)?));
    }
    let wanted: usize = truths.iter().map(Vec::len).sum();
    if wanted == 0 || ladder.is_empty() {
        return Ok(None);
    }
    let mut last = None;
    for &ef in ladder {
        let mut found = 0usize;
        for ((own, q), truth) in queries.iter().zip(&truths) {
            let got = without(*own, approx(q, k + 1, ef)?);
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        let cal = Calibration {
            ef,
            recall: found as f64 / wanted as f64,
            queries: queries.len(),
            target,
            on_queries: false,
        };
        if cal.recall >= target {
            return Ok(Some(cal));
        }
        last = Some(cal);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::flat::FlatIndex;
    use crate::index::hnsw::{HnswIndex, HnswParams};
    use crate::index::synth::clustered;
    use crate::types::Metric;

    fn recall_at(graph: &HnswIndex, flat: &FlatIndex, qs: &[Vec<f32>], ef: usize) -> f64 {
        let mut found = 0;
        for q in qs {
            let truth: Vec<PointId> = flat
                .search(q, 10, None, None)
                .unwrap()
                .iter()
                .map(|h| h.id)
                .collect();
            let got = graph.search(q, 10, ef).unwrap();
            found += got.iter().filter(|h| truth.contains(&h.id)).count();
        }
        found as f64 / (10 * qs.len()) as f64
    }

    #[test]
    fn picks_the_smallest_ef_that_reaches_the_target_and_it_holds_on_fresh_queries() {
        // a sparse graph (M 4, small ef_construction) so that small ef values miss neighbours
        let (n, dim) = (4000, 32);
        let data = clustered(n + 200, dim, 40, 0.35, 7);
        let params = HnswParams {
            m: 4,
            ef_construction: 20,
            ..HnswParams::default()
        };
        let graph = HnswIndex::new(Metric::Cosine, dim, params, n);
        let mut flat = FlatIndex::new(Metric::Cosine, dim);
        let points: Vec<(PointId, &[f32])> = (0..n)
            .map(|i| (i as PointId, &data[i * dim..(i + 1) * dim]))
            .collect();
        graph.upsert_batch(&points).unwrap();
        for (id, v) in &points {
            flat.upsert(*id, v).unwrap();
        }
        let queries: Vec<(PointId, Vec<f32>)> = (0..n)
            .step_by(40)
            .map(|i| (i as PointId, data[i * dim..(i + 1) * dim].to_vec()))
            .collect();
        let exact = |q: &[f32], k| flat.search(q, k, None, None);
        let approx = |q: &[f32], k, ef| graph.search(q, k, ef);
        let run = |target| {
            calibrate(&queries, 10, target, &EF_LADDER, exact, approx)
                .unwrap()
                .unwrap()
        };
        let fresh: Vec<Vec<f32>> = (n..n + 200)
            .map(|i| data[i * dim..(i + 1) * dim].to_vec())
            .collect();
        let low = recall_at(&graph, &flat, &fresh, EF_LADDER[0]);
        assert!(
            low < 0.97,
            "the smallest ef must miss neighbours here: {low}"
        );

        let cal = run(0.97);
        assert!(cal.recall >= 0.97 && cal.ef > EF_LADDER[0], "{cal:?}");
        assert_eq!(cal.queries, queries.len());
        // the smallest: one step down does not reach the target
        let below = EF_LADDER[EF_LADDER.iter().position(|&e| e == cal.ef).unwrap() - 1];
        let r_below = calibrate(&queries, 10, 0.97, &[below], exact, approx)
            .unwrap()
            .unwrap();
        assert!(r_below.recall < 0.97, "{r_below:?}");
        // what the sample promised holds, within sampling error, on queries it never saw
        let on_fresh = recall_at(&graph, &flat, &fresh, cal.ef);
        assert!(on_fresh >= 0.94, "{on_fresh} at ef {}", cal.ef);
        // a lower target never needs a larger ef; an unreachable one reports the largest tried
        assert!(run(0.8).ef <= cal.ef);
        let top = run(1.01);
        assert_eq!(top.ef, *EF_LADDER.last().unwrap());
        assert!(top.recall > cal.recall - 1e-9);
    }

    #[test]
    fn the_query_point_itself_is_not_a_found_neighbour() {
        // an "index" that returns the query point first and nothing right after it
        let hit = |id, score| Hit { id, score };
        let queries = vec![(7 as PointId, vec![1.0f32])];
        let exact = |_: &[f32], _| Ok::<_, ()>(vec![hit(7, 1.0), hit(1, 0.9), hit(2, 0.8)]);
        let approx = |_: &[f32], _, _| Ok::<_, ()>(vec![hit(7, 1.0), hit(9, 0.5), hit(8, 0.4)]);
        let cal = calibrate(&queries, 2, 0.5, &[16], exact, approx)
            .unwrap()
            .unwrap();
        assert_eq!(cal.recall, 0.0);
        assert!(calibrate(&[], 2, 0.5, &[16], exact, approx)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_query_sample_is_bounded_and_uniform_over_the_stream() {
        let mut s = QuerySample::new(100, 7);
        for i in 0..50 {
            s.offer(&[i as f32]);
        }
        assert!(!s.is_full() && s.rows().len() == 50);
        // over a stream of 10,000, each tenth of the stream holds about a tenth of the sample
        let (trials, stream) = (200, 10_000usize);
        let mut per_tenth = [0usize; 10];
        for t in 0..trials {
            let mut s = QuerySample::new(100, t);
            for i in 0..stream {
                s.offer(&[i as f32]);
            }
            assert!(s.is_full() && s.seen() == stream as u64);
            for r in s.rows() {
                per_tenth[r[0] as usize * 10 / stream] += 1;
            }
        }
        // 2,000 expected per tenth; a binomial sd of about 42
        for (tenth, &c) in per_tenth.iter().enumerate() {
            assert!((1800..=2200).contains(&c), "tenth {tenth}: {c}");
        }
        // the same seed keeps the same queries
        let run = |seed| {
            let mut s = QuerySample::new(10, seed);
            (0..1000).for_each(|i| s.offer(&[i as f32]));
            s.rows().to_vec()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert!(!QuerySample::new(0, 1).is_full());
    }
}
