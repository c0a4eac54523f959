//! The approximate index: an hnsw_rs graph plus the bookkeeping hnsw_rs lacks.
//!
//! # Updates and deletes on an insert-only graph
//! hnsw_rs 0.3.5 can neither delete nor update a point. Every write therefore inserts a fresh
//! graph node under a new *slot* (hnsw_rs's `DataId`); `Book` maps slots to point ids and each
//! point id to its one live slot. A replaced or removed point's old slot becomes a *tombstone*:
//! it stays in the graph (so navigation through it still works) but is dropped from results.
//! Searches over-fetch in proportion to the tombstone share and widen until `k` live hits are
//! found, so results stay exact in count. Once tombstones pass
//! [`HnswParams::rebuild_tombstone_ratio`], [`HnswIndex::needs_rebuild`] says so and the caller
//! runs a rebuild *off to the side*: [`HnswIndex::start_rebuild`] snapshots the live set and starts
//! a journal of later writes, [`RebuildJob::run`] builds a new graph from the live vectors while
//! the old index keeps serving and taking writes, and [`HnswIndex::finish_rebuild`] replays the
//! journal's tail into the new index right before the caller swaps it in.
//!
//! # Concurrency
//! Every method takes `&self`: searches run in parallel with each other and with writes. Writes
//! are serialised by an internal mutex (the graph insert itself is concurrent-safe, but "which slot
//! is live" must follow write order). [`HnswIndex::upsert_batch`] inserts with rayon's
//! `par_iter` in the *current* rayon pool: run it inside a dedicated pool's `install` to keep
//! cores for serving. Nothing here is async; call it from a blocking thread.
//!
//! # Metrics
//! Cosine vectors are normalised on the way in and searched with `1 - dot`; L2 with the squared
//! distance (see [`super::distance`] for why not anndists' own distances).
//!
//! Raw inner product is not a metric (a point is not its own nearest neighbour), and a graph
//! built on it directly plateaued at recall@10 ~0.93 even at ef 512 on our clustered test data.
//! So `Dot` uses the classic reduction of maximum inner product search to cosine (Bachrach et al.,
//! 2014): with `phi` >= every norm, a point `x` is stored as the unit vector
//! `[x / phi, sqrt(1 - |x|^2 / phi^2)]` and a query `q` as `[q / |q|, 0]`; their dot product is
//! `q.x / (|q| phi)`, so cosine order is inner-product order, and the score is recovered exactly.
//! `phi` is fixed by the first batch (its largest norm, with 20 % headroom) and recomputed by
//! every rebuild. A later point above it is stored at its direction on the rim, as if its norm
//! were `phi`, with its true `norm / phi` kept aside so its score stays exact; the graph ranks it
//! too low until a rebuild, so such points count towards [`HnswIndex::needs_rebuild`].
//! Scores come back as [`Hit::score`], higher = closer.
//!
//! # Speed: why raw hnsw_rs built at ~600 inserts/s, and what is left
//! Measured with `ann_compare buildspeed 10000 256` (M 16, ef_construction 200, 1 thread free):
//! - anndists' `DistCosine` has no SIMD path: 873-965 inserts/s. Normalising once and using a
//!   SIMD dot product (ours or anndists' `DistDot`) gives 2,040-2,570/s: 2.4-2.7x.
//! - `parallel_insert` only helps with an idle second core (on this shared box it had none).
//! - The rest is hnsw_rs's own layout: every visited node costs a SipHash `HashMap` insert,
//!   `Arc` clones and two heap-allocated heap entries, and vectors live in separate allocations.
//!   `perf` of a search sweep: 36 % in the dot kernel (mostly cache misses on scattered
//!   vectors), 30 % `search_layer`, ~15 % heap/hash/`Arc` work. A faster allocator (mimalloc)
//!   gave +40 % build and +48 % search; closing the rest of the gap to hnswlib needs a graph
//!   with contiguous vectors and an epoch-tagged visited array, i.e. replacing hnsw_rs.

use std::collections::HashMap;

use hnsw_rs::prelude::{FilterT, Hnsw, Neighbour};
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;

use super::distance::{self, L2SqDistance, UnitDotDistance};
use super::{prepare, Hit, PointId, TopK};
use crate::error::Result;
use crate::types::Metric;

/// Over-fetching plain searches [`HnswIndex::search_filtered`] tries before the filtered walk.
pub const FILTER_ROUNDS: usize = 3;

/// Graph construction parameters and the rebuild policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    /// Links per node and layer (`M`; layer 0 keeps `2 * M`). Default 16.
    pub m: usize,
    /// Candidate list size while inserting. Default 200.
    pub ef_construction: usize,
    /// Highest layer a node may reach. Default 16 (hnsw_rs's cap).
    pub max_layer: usize,
    /// Tombstones / all slots above which [`HnswIndex::needs_rebuild`] is true. Default 0.25.
    pub rebuild_tombstone_ratio: f64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            max_layer: 16,
            rebuild_tombstone_ratio: 0.25,
        }
    }
}

/// The hnsw_rs graph, monomorphised per distance (cosine and dot share the unit-vector one).
/// `'static`: built graphs own their data, and reloaded ones are made so by `persist`.
enum Graph {
    Unit(Hnsw<'static, f32, UnitDotDistance>),
    L2(Hnsw<'static, f32, L2SqDistance>),
}

/// Runs `$body` with `$h` bound to the concrete graph, whatever its distance.
macro_rules! with_graph {
    ($g:expr, $h:ident => $body:expr) => {
        match $g {
            Graph::Unit($h) => $body,
            Graph::L2($h) => $body,
        }
    };
}

mod persist;
#[cfg(test)]
mod tests;

pub use persist::DumpStamp;

impl Graph {
    fn new(metric: Metric, p: &HnswParams, capacity: usize) -> Self {
        let (m, cap, layers, ef) = (p.m, capacity.max(1024), p.max_layer, p.ef_construction);
        match metric {
            Metric::Cosine | Metric::Dot => {
                Graph::Unit(Hnsw::new(m, cap, layers, ef, UnitDotDistance))
            }
            Metric::L2 => Graph::L2(Hnsw::new(m, cap, layers, ef, L2SqDistance)),
        }
    }

    fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn FilterT>,
    ) -> Vec<Neighbour> {
        with_graph!(self, h => h.search_filter(q, k, ef, filter))
    }

    fn insert_all(&self, points: &[(&[f32], usize)]) {
        match points {
            [one] => with_graph!(self, h => h.insert_slice(*one)),
            many => with_graph!(self, h => many.par_iter().for_each(|p| h.insert_slice(*p))),
        }
    }

    /// Every node as (slot, vector), for rebuilds.
    fn for_each_point(&self, mut f: impl FnMut(usize, &[f32])) {
        with_graph!(self, h => {
            for p in h.get_point_indexation() {
                f(p.get_origin_id(), p.get_v());
            }
        })
    }

    fn nb_points(&self) -> usize {
        with_graph!(self, h => h.get_nb_point())
    }
}

/// A write recorded while a rebuild runs, to be replayed into the new index.
#[derive(Debug, Clone)]
enum Change {
    Upsert(PointId, Vec<f32>),
    Remove(PointId),
}

/// Which slot is live for which point.
#[derive(Debug, Default, Clone)]
struct Book {
    /// slot -> point id (slots are hnsw_rs data ids, dense from 0).
    slots: Vec<PointId>,
    /// point id -> its live slot.
    live: HashMap<PointId, usize>,
    /// Writes since `start_rebuild`, when one is running.
    journal: Option<Vec<Change>>,
    /// `Dot` only: the norm bound of the reduction to cosine (0 until the first write).
    phi: f32,
    /// `Dot` only: slots whose vector's norm exceeded `phi` when written -> `norm / phi`.
    over_phi: HashMap<usize, f32>,
}

impl Book {
    fn is_live(&self, slot: usize) -> bool {
        self.slots
            .get(slot)
            .is_some_and(|id| self.live.get(id) == Some(&slot))
    }
}

/// An approximate nearest-neighbour index with updates, deletes, rebuild and persistence.
pub struct HnswIndex {
    metric: Metric,
    dim: usize,
    params: HnswParams,
    graph: Graph,
    book: RwLock<Book>,
    /// Serialises writers: slot order must follow write order.
    writer: Mutex<()>,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("metric", &self.metric)
            .field("dim", &self.dim)
            .field("live", &self.len())
            .field("tombstones", &self.tombstones())
            .finish()
    }
}

impl HnswIndex {
    /// An empty index; `capacity` is a sizing hint (expected points), not a limit.
    pub fn new(metric: Metric, dim: usize, params: HnswParams, capacity: usize) -> Self {
        HnswIndex {
            metric,
            dim,
            params,
            graph: Graph::new(metric, &params, capacity),
            book: RwLock::new(Book::default()),
            writer: Mutex::new(()),
        }
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The construction parameters.
    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Live points.
    pub fn len(&self) -> usize {
        self.book.read().live.len()
    }

    /// True when no point is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `id` is live.
    pub fn contains(&self, id: PointId) -> bool {
        self.book.read().live.contains_key(&id)
    }

    /// Graph nodes that no longer answer (replaced or removed points).
    pub fn tombstones(&self) -> usize {
        let b = self.book.read();
        b.slots.len() - b.live.len()
    }

    /// True when tombstones (plus, under `Dot`, points above the norm bound) passed the rebuild
    /// threshold.
    pub fn needs_rebuild(&self) -> bool {
        let b = self.book.read();
        let bad = (b.slots.len() - b.live.len() + b.over_phi.len()) as f64;
        bad > 0.0 && bad / b.slots.len() as f64 > self.params.rebuild_tombstone_ratio
    }

    /// Adds or replaces one point.
    pub fn upsert(&self, id: PointId, v: &[f32]) -> Result<()> {
        self.upsert_batch(&[(id, v)])
    }

    /// Adds or replaces many points, inserting them in parallel (rayon, current pool). The batch is
    /// validated first: on error nothing is written. A later entry for the same id wins.
    pub fn upsert_batch(&self, points: &[(PointId, &[f32])]) -> Result<()> {
        let prepared = points
            .iter()
            .map(|(id, v)| Ok((*id, prepare(self.metric, self.dim, v)?)))
            .collect::<Result<Vec<_>>>()?;
        let _w = self.writer.lock();
        let first = self.reserve_slots(&prepared);
        let encoded = self.encode_points(&prepared, first);
        let items: Vec<(&[f32], usize)> = encoded
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), first + i))
            .collect();
        self.graph.insert_all(&items);
        // Publish only once the nodes are in the graph, so a search never sees a live slot that
        // is not searchable yet (the old version keeps answering until this point).
        self.publish(prepared, first);
        Ok(())
    }

    /// The graph form of prepared vectors whose slots start at `first`: as is, or (`Dot`)
    /// reduced to unit vectors, fixing `phi` on the first batch. Called under the writer lock.
    fn encode_points(&self, points: &[(PointId, Vec<f32>)], first: usize) -> Vec<Vec<f32>> {
        if self.metric != Metric::Dot {
            return points.iter().map(|(_, v)| v.clone()).collect();
        }
        let mut b = self.book.write();
        if b.phi == 0.0 {
            b.phi = phi_for(points.iter().map(|(_, v)| v.as_slice()));
        }
        let phi = b.phi;
        let mut out = Vec::with_capacity(points.len());
        for (i, (_, v)) in points.iter().enumerate() {
            let norm = distance::dot(v, v).sqrt();
            if norm > phi {
                // Above the bound: stored at its direction on the sphere's rim (as if its norm
                // were phi); the true norm is kept aside so the score stays exact.
                b.over_phi.insert(first + i, norm / phi);
                out.push(encode_dot(v, norm));
            } else {
                out.push(encode_dot(v, phi));
            }
        }
        out
    }

    /// The graph form of a prepared query, and the factor from graph similarity to score.
    fn encode_query(&self, q: Vec<f32>) -> (Vec<f32>, f32) {
        match self.metric {
            Metric::Dot => {
                let norm = distance::dot(&q, &q).sqrt().max(f32::MIN_POSITIVE);
                let mut g: Vec<f32> = q.iter().map(|x| x / norm).collect();
                g.push(0.0);
                (g, norm * self.book.read().phi)
            }
            _ => (q, 1.0),
        }
    }

    /// The score of a graph hit in slot `slot`: exact, from the graph distance.
    fn score(&self, b: &Book, d: f32, slot: usize, factor: f32) -> f32 {
        match self.metric {
            Metric::Cosine => 1.0 - d,
            Metric::Dot => (1.0 - d) * factor * b.over_phi.get(&slot).copied().unwrap_or(1.0),
            Metric::L2 => -d,
        }
    }

    /// Removes a point; returns whether it was live.
    pub fn remove(&self, id: PointId) -> bool {
        let _w = self.writer.lock();
        let mut b = self.book.write();
        if let Some(j) = b.journal.as_mut() {
            j.push(Change::Remove(id));
        }
        b.live.remove(&id).is_some()
    }

    fn reserve_slots(&self, points: &[(PointId, Vec<f32>)]) -> usize {
        let mut b = self.book.write();
        let first = b.slots.len();
        b.slots.extend(points.iter().map(|(id, _)| *id));
        first
    }

    fn publish(&self, points: Vec<(PointId, Vec<f32>)>, first: usize) {
        let mut b = self.book.write();
        for (i, (id, _)) in points.iter().enumerate() {
            b.live.insert(*id, first + i);
        }
        if let Some(j) = b.journal.as_mut() {
            j.extend(points.into_iter().map(|(id, v)| Change::Upsert(id, v)));
        }
    }

    /// The approximate top `k` live points, best first. `ef` (raised to at least `k`) trades
    /// speed for recall.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        let (q, factor) = self.encode_query(prepare(self.metric, self.dim, query)?);
        let (live, slots) = {
            let b = self.book.read();
            (b.live.len(), b.slots.len())
        };
        if k == 0 || live == 0 {
            return Ok(Vec::new());
        }
        // Tombstones occupy places in the candidate list: scale both k and ef by slots / live so
        // the live part keeps the width asked for, then widen until k live hits are found.
        let scale = |x: usize| (x * slots).div_ceil(live);
        let mut want = (scale(k) + 8).min(slots);
        let ef = scale(ef);
        loop {
            let found = self.graph.search(&q, want, ef.max(want), None);
            let hits = self.live_hits(&found, k, factor, |_| true);
            if hits.len() >= k.min(live) || want >= slots {
                return Ok(hits);
            }
            want = (want * 2).min(slots);
        }
    }

    /// The approximate top `k` live points passing `filter`, best first.
    ///
    /// First tries up to [`FILTER_ROUNDS`] ordinary (early-stopping) searches, over-fetching 2x
    /// then 8x then 32x and keeping the passing hits: cheap when the filter passes a good share
    /// of the points. Only when that does not yield `k` hits does it fall back to hnsw_rs's
    /// filtered graph walk, which cannot stop early and is 5-20x slower than a plain search;
    /// scan small candidate sets with the flat index instead.
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &(dyn Fn(PointId) -> bool + Sync),
    ) -> Result<Vec<Hit>> {
        let (q, factor) = self.encode_query(prepare(self.metric, self.dim, query)?);
        let (live, slots) = {
            let b = self.book.read();
            (b.live.len(), b.slots.len())
        };
        if k == 0 || live == 0 {
            return Ok(Vec::new());
        }
        let scale = |x: usize| (x * slots).div_ceil(live);
        let (mut want, mut ef) = (scale(2 * k) + 8, 2 * scale(ef));
        for _ in 0..FILTER_ROUNDS {
            let want_now = want.min(slots);
            let found = self.graph.search(&q, want_now, ef.max(want_now), None);
            let hits = self.live_hits(&found, k, factor, filter);
            if hits.len() >= k || want_now == slots {
                return Ok(hits);
            }
            (want, ef) = (want * 4, ef * 4);
        }
        let b = self.book.read();
        let pass = |slot: &usize| b.is_live(*slot) && filter(b.slots[*slot]);
        let found = self
            .graph
            .search(&q, k, ef.max(k), Some(&pass as &dyn FilterT));
        Ok(self.live_hits_in(&b, &found, k, factor, filter))
    }

    fn live_hits(
        &self,
        found: &[Neighbour],
        k: usize,
        factor: f32,
        filter: impl Fn(PointId) -> bool,
    ) -> Vec<Hit> {
        let b = self.book.read();
        self.live_hits_in(&b, found, k, factor, filter)
    }

    fn live_hits_in(
        &self,
        b: &Book,
        found: &[Neighbour],
        k: usize,
        factor: f32,
        filter: impl Fn(PointId) -> bool,
    ) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for n in found.iter().filter(|n| b.is_live(n.d_id)) {
            let id = b.slots[n.d_id];
            if filter(id) {
                top.offer(Hit {
                    id,
                    score: self.score(b, n.distance, n.d_id, factor),
                });
            }
        }
        top.into_sorted()
    }

    /// Starts a rebuild: snapshots the live set and journals every later write until
    /// [`finish_rebuild`](Self::finish_rebuild). Starting again discards a previous journal.
    pub fn start_rebuild(&self) -> RebuildJob {
        let _w = self.writer.lock();
        let mut b = self.book.write();
        b.journal = Some(Vec::new());
        RebuildJob {
            live: b.live.clone(),
            slots: b.slots.clone(),
            phi: b.phi,
            over_phi: b.over_phi.clone(),
        }
    }

    /// Replays the writes journaled since [`start_rebuild`](Self::start_rebuild) into `fresh` and
    /// stops journaling. The caller must keep writes to `self` out from here until it has swapped
    /// `fresh` in (hold its writer lock), or they reach only the old index.
    pub fn finish_rebuild(&self, fresh: &HnswIndex) -> Result<()> {
        let _w = self.writer.lock();
        let changes = self.book.write().journal.take().unwrap_or_default();
        fresh.apply(changes)
    }

    /// Drains the journal so far into `fresh` (journaling continues).
    fn catch_up(&self, fresh: &HnswIndex) -> Result<usize> {
        let changes = match self.book.write().journal.as_mut() {
            Some(j) => std::mem::take(j),
            None => return Ok(0),
        };
        let n = changes.len();
        fresh.apply(changes)?;
        Ok(n)
    }

    fn apply(&self, changes: Vec<Change>) -> Result<()> {
        for c in changes {
            match c {
                Change::Upsert(id, v) => self.upsert(id, &v)?,
                Change::Remove(id) => {
                    self.remove(id);
                }
            }
        }
        Ok(())
    }
}

/// A rebuild in progress: the live set at its start. See [`HnswIndex::start_rebuild`].
#[derive(Debug)]
pub struct RebuildJob {
    live: HashMap<PointId, usize>,
    slots: Vec<PointId>,
    phi: f32,
    over_phi: HashMap<usize, f32>,
}

impl RebuildJob {
    /// Builds a new index holding `old`'s live points as of the job's start, then the writes
    /// journaled meanwhile. Long: run it on a blocking thread while `old` keeps serving.
    pub fn run(self, old: &HnswIndex) -> Result<HnswIndex> {
        let fresh = HnswIndex::new(old.metric, old.dim, old.params, self.live.len());
        let mut points: Vec<(PointId, Vec<f32>)> = Vec::with_capacity(self.live.len());
        old.graph.for_each_point(|slot, v| {
            let id = self.slots.get(slot).copied();
            if id.is_some_and(|id| self.live.get(&id) == Some(&slot)) {
                points.push((self.slots[slot], self.decode(old.metric, slot, v)));
            }
        });
        if old.metric == Metric::Dot {
            fresh.book.write().phi = phi_for(points.iter().map(|(_, v)| v.as_slice()));
        }
        // Decoded vectors are prepared ones (unit length under cosine): re-preparing is exact.
        let refs: Vec<(PointId, &[f32])> =
            points.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        for chunk in refs.chunks(4096) {
            fresh.upsert_batch(chunk)?;
        }
        // Catch up with writes made during the build until the backlog is small.
        while old.catch_up(&fresh)? > 64 {}
        Ok(fresh)
    }

    /// A graph vector back to the prepared vector it was made from.
    fn decode(&self, metric: Metric, slot: usize, v: &[f32]) -> Vec<f32> {
        match metric {
            Metric::Dot => {
                let scale = self.phi * self.over_phi.get(&slot).copied().unwrap_or(1.0);
                v[..v.len() - 1].iter().map(|x| x * scale).collect()
            }
            _ => v.to_vec(),
        }
    }
}

/// The norm bound for `Dot`: the largest norm with 20 % headroom (1 for all-zero input).
fn phi_for<'a>(vs: impl Iterator<Item = &'a [f32]>) -> f32 {
    let max = vs
        .map(|v| distance::dot(v, v))
        .fold(0.0f32, f32::max)
        .sqrt();
    if max > 0.0 {
        1.2 * max
    } else {
        1.0
    }
}

/// `[x / phi, sqrt(1 - |x|^2 / phi^2)]`: a unit vector when `|x| <= phi` (see the module docs).
fn encode_dot(x: &[f32], phi: f32) -> Vec<f32> {
    let mut g: Vec<f32> = x.iter().map(|v| v / phi).collect();
    let rest = 1.0 - distance::dot(&g, &g);
    g.push(rest.max(0.0).sqrt());
    g
}
