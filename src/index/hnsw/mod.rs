//! The approximate index: our own HNSW graph ([`graph`]) plus tombstones, rebuild and persistence.
//!
//! # Updates and deletes on an insert-only graph
//! An HNSW graph cannot cheaply unlink a node. Every write therefore inserts a fresh graph node
//! under a new *slot* (the node's id); `Book` maps slots to point ids and each point id to its one
//! live slot. A replaced or removed point's old slot becomes a *tombstone*: it stays in the graph
//! (so navigation through it still works) but is never collected. Searches walk with a liveness
//! filter (hnswlib's rule: traverse dead nodes, collect only live ones, stop once `ef` live ones
//! are held), so results keep their width and count whatever the tombstone share; a graph that
//! still yields fewer than `k` live points (tiny or mostly dead) is answered by an exact scan.
//! Once tombstones pass [`HnswParams::rebuild_tombstone_ratio`], [`HnswIndex::needs_rebuild`]
//! says so and the caller runs a rebuild *off to the side*: [`HnswIndex::start_rebuild`]
//! snapshots the live set and starts a journal of later writes, [`RebuildJob::run`] builds a new
//! graph from the live vectors while the old index keeps serving and taking writes, and
//! [`HnswIndex::finish_rebuild`] replays the journal's tail into the new index right before the
//! caller swaps it in.
//!
//! # Concurrency
//! Every method takes `&self`: searches run in parallel with each other and with writes. Writes
//! are serialised by an internal mutex ("which slot is live" must follow write order); within a
//! batch, [`HnswIndex::upsert_batch`] links the new nodes in parallel with rayon in the *current*
//! pool (per-node link locks, see [`graph`]): run it inside a dedicated pool's `install` to keep
//! cores for serving. A batch is published (its points become live) only once all its nodes are
//! linked. Nothing here is async; call it from a blocking thread.
//!
//! # Metrics
//! Cosine vectors are normalised on the way in and searched with `1 - dot`; L2 with the squared
//! distance (see [`super::distance`]).
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
//! # Speed: why we left hnsw_rs
//! hnsw_rs 0.3.5 (M 16, ef_construction 200, on this 2-core box shared by three builds) was
//! measured at 0.35x hnswlib's build throughput and 0.27x its single-thread QPS at recall@10
//! 0.95 on 100k x 256 clustered data (0.64x / 0.36x on the MovieLens-1M item vectors), and
//! profiling put the gap in its layout, not in the algorithm:
//! - anndists' `DistCosine` has no SIMD path (873-965 inserts/s); normalising once and using a
//!   SIMD dot product gave 2,040-2,570/s. We kept that (see [`super::distance`]).
//! - Every visited node cost a SipHash `HashMap` insert, `Arc` clones and two heap-allocated heap
//!   entries, and vectors lived in separate allocations. `perf` of a search sweep: 36 % in the
//!   dot kernel (mostly cache misses on scattered vectors), 30 % `search_layer`, ~15 %
//!   heap/hash/`Arc` work. mimalloc gave +40 % build and +48 % search, not enough.
//!
//! [`graph`] is the same algorithm (its recall-vs-ef curve matches hnswlib's to +-0.005 on both
//! data sets) on hnswlib's kind of layout: one contiguous vector array, flat link arrays, an
//! epoch-tagged visited array and reused heaps per thread, the next neighbour's vector
//! prefetched. `benches/compare/run.sh` (hnswlib from PyPI and ours in one run, build with 2
//! threads, search on 1) while two other builds ran on the machine, two runs:
//!
//! | data | build inserts/s ours / hnswlib | QPS @ recall@10 >= 0.95 ours / hnswlib |
//! |---|---|---|
//! | clustered 100k x 256, run 1 | 1,218 / 906 = 1.34x | 2,063 / 1,380 = 1.50x |
//! | clustered 100k x 256, run 2 | 2,103 / 1,758 = 1.20x | 5,297 / 3,037 = 1.74x (both ef 48) |
//! | MovieLens-1M items 3,883 x 384, run 1 | 1,569 / 1,008 = 1.56x | 6,863 / 6,047 = 1.13x |
//! | MovieLens-1M items 3,883 x 384, run 2 | 2,639 / 2,948 = 0.90x | 26,979 / 16,307 = 1.65x |
//!
//! The MovieLens build takes ~1.5 s, so its ratio is at the mercy of the neighbours' load: two
//! more 2-thread repeats gave 1.49x and 1.08x, three 1-thread builds 1.04x, 1.43x and 1.32x.

use std::collections::HashMap;

use parking_lot::{Mutex, RwLock};

use super::distance;
use super::{prepare, Hit, PointId, TopK};
use crate::error::{Error, Result};
use crate::types::Metric;
use graph::{Graph, Near, Shape, Space};

mod graph;
mod persist;
#[cfg(test)]
mod tests;

pub use persist::{DumpStamp, FrozenGraph};

/// Nodes reserved up front at most, whatever capacity the caller hints (the arrays grow).
const MAX_RESERVE: usize = 1 << 20;

/// Graph construction parameters and the rebuild policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    /// Links per node and layer (`M`; layer 0 keeps `2 * M`). Default 16.
    pub m: usize,
    /// Candidate list size while inserting. Default 200.
    pub ef_construction: usize,
    /// Highest layer a node may reach. Default 16.
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

/// The graph's shape for an index of `metric` over `dim`-d vectors (`Dot` adds a coordinate).
fn shape_for(metric: Metric, dim: usize, p: &HnswParams) -> Shape {
    let (dim, space) = match metric {
        Metric::Cosine => (dim, Space::Unit),
        Metric::Dot => (dim + 1, Space::Unit),
        Metric::L2 => (dim, Space::L2),
    };
    Shape {
        dim,
        m: p.m.max(2),
        ef_construction: p.ef_construction.max(1),
        max_layer: p.max_layer.min(u8::MAX as usize),
        space,
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
    /// slot -> point id (slots are graph node ids, dense from 0).
    slots: Vec<PointId>,
    /// point id -> its live slot.
    live: HashMap<PointId, usize>,
    /// slot -> whether it is some point's live slot: `live` inverted, so the walk's liveness
    /// test is an array load instead of two hash lookups.
    alive: Vec<bool>,
    /// Writes since `start_rebuild`, when one is running.
    journal: Option<Vec<Change>>,
    /// `Dot` only: the norm bound of the reduction to cosine (0 until the first write).
    phi: f32,
    /// `Dot` only: slots whose vector's norm exceeded `phi` when written -> `norm / phi`.
    over_phi: HashMap<usize, f32>,
}

impl Book {
    #[inline]
    fn is_live(&self, slot: usize) -> bool {
        self.alive.get(slot).copied().unwrap_or(false)
    }

    /// Makes `slot` the live one of `id`, burying its previous slot.
    fn set_live(&mut self, id: PointId, slot: usize) {
        if let Some(old) = self.live.insert(id, slot) {
            self.bury(old);
        }
        if let Some(a) = self.alive.get_mut(slot) {
            *a = true;
        }
    }

    fn bury(&mut self, slot: usize) {
        if let Some(a) = self.alive.get_mut(slot) {
            *a = false;
        }
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
    /// Held while nodes are appended and linked, and while a [`FrozenGraph`] reads the graph
    /// for a dump, so a dump never sees half-linked nodes. An insert takes it before `writer`.
    linking: Mutex<()>,
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
            graph: Graph::new(shape_for(metric, dim, &params), capacity.min(MAX_RESERVE)),
            book: RwLock::new(Book::default()),
            writer: Mutex::new(()),
            linking: Mutex::new(()),
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
        let _l = self.linking.lock();
        let _w = self.writer.lock();
        if self.book.read().slots.len() + prepared.len() >= u32::MAX as usize {
            return Err(Error::ResourceExhausted(
                "HNSW index is full (2^32 slots)".into(),
            ));
        }
        let first = self.reserve_slots(&prepared);
        let encoded = self.encode_points(&prepared, first);
        let node = self.graph.append(&encoded)?;
        debug_assert_eq!(node as usize, first, "graph nodes and slots move in step");
        self.graph.insert(node, encoded.len());
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
            let (g, over) = encode_dot_bounded(v, phi);
            if let Some(r) = over {
                b.over_phi.insert(first + i, r);
            }
            out.push(g);
        }
        out
    }

    /// Checks the graph against the vectors it should hold (a dump loaded at start): `current`
    /// gives each point's stored (prepared) vector, `None` for a point that no longer exists.
    /// Live points of the graph that no longer exist are removed; the others whose graph vector
    /// is not what an insert of their current vector would store (up to the rounding of a
    /// renormalization, [`same_vector`]) are left for the caller to re-insert. Returns the
    /// points whose graph entry is current, and how many were removed.
    pub fn reconcile<'a>(
        &self,
        current: impl Fn(PointId) -> Option<&'a [f32]>,
    ) -> (std::collections::HashSet<PointId>, usize) {
        let mut gone = Vec::new();
        let mut current_points = std::collections::HashSet::new();
        {
            let b = self.book.read();
            self.graph.for_each_vector(|slot, stored| {
                let slot = slot as usize;
                if !b.is_live(slot) {
                    return;
                }
                let p = b.slots[slot];
                let Some(v) = current(p) else {
                    gone.push(p);
                    return;
                };
                let expect = match prepare(self.metric, self.dim, v) {
                    Ok(v) if self.metric == Metric::Dot => encode_dot_bounded(&v, b.phi).0,
                    Ok(v) => v,
                    Err(_) => return,
                };
                if same_vector(&expect, stored) {
                    current_points.insert(p);
                }
            });
        }
        for p in &gone {
            self.remove(*p);
        }
        (current_points, gone.len())
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
        match b.live.remove(&id) {
            Some(slot) => {
                b.bury(slot);
                true
            }
            None => false,
        }
    }

    fn reserve_slots(&self, points: &[(PointId, Vec<f32>)]) -> usize {
        let mut b = self.book.write();
        let first = b.slots.len();
        b.slots.extend(points.iter().map(|(id, _)| *id));
        let n = b.slots.len();
        b.alive.resize(n, false);
        first
    }

    fn publish(&self, points: Vec<(PointId, Vec<f32>)>, first: usize) {
        let mut b = self.book.write();
        for (i, (id, _)) in points.iter().enumerate() {
            b.set_live(*id, first + i);
        }
        if let Some(j) = b.journal.as_mut() {
            j.extend(points.into_iter().map(|(id, v)| Change::Upsert(id, v)));
        }
    }

    /// The approximate top `k` live points, best first. `ef` (raised to at least `k`) trades
    /// speed for recall. Tombstones are walked through but never collected, so the walk keeps
    /// `ef` live candidates whatever the tombstone share; if the graph still yields fewer than
    /// `k` live points (tiny or mostly-dead graphs), an exact scan answers instead.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        let (q, factor) = self.encode_query(prepare(self.metric, self.dim, query)?);
        let b = self.book.read();
        if k == 0 || b.live.is_empty() {
            return Ok(Vec::new());
        }
        let found = if b.live.len() == b.slots.len() {
            self.graph.search(&q, k, ef, None)
        } else {
            self.graph
                .search(&q, k, ef, Some(&|s: u32| b.is_live(s as usize)))
        };
        if found.len() < k.min(b.live.len()) {
            return Ok(self.exact(&b, &q, k, factor, &|_| true));
        }
        Ok(self.hits(&b, &found, factor))
    }

    /// The approximate top `k` live points passing `filter`, best first.
    ///
    /// One filtered graph walk (hnswlib's rule): it traverses through failing and dead nodes but
    /// collects only passing live ones, and stops once it holds `max(ef, k)` of them. Its cost
    /// grows as the filter gets more selective (it explores about `ef / pass share` nodes):
    /// scan small candidate sets with the flat index instead. `filter` runs under the index's
    /// read lock: it must not call back into this index.
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &(dyn Fn(PointId) -> bool + Sync),
    ) -> Result<Vec<Hit>> {
        let (q, factor) = self.encode_query(prepare(self.metric, self.dim, query)?);
        let b = self.book.read();
        if k == 0 || b.live.is_empty() {
            return Ok(Vec::new());
        }
        let pass = |s: u32| b.is_live(s as usize) && filter(b.slots[s as usize]);
        let found = self.graph.search(&q, k, ef, Some(&pass));
        if found.len() < k {
            // Fewer than k passing points reached: either fewer exist, or a churned graph left
            // some unreachable from the entry point (seen on tiny L2 graphs). Only an exact scan
            // can tell; it costs one pass over the graph's vectors, so callers keep small
            // candidate sets on the flat index.
            return Ok(self.exact(&b, &q, k, factor, &|slot| filter(b.slots[slot])));
        }
        Ok(self.hits(&b, &found, factor))
    }

    fn hits(&self, b: &Book, found: &[Near], factor: f32) -> Vec<Hit> {
        let mut hits: Vec<Hit> = found
            .iter()
            .map(|n| Hit {
                id: b.slots[n.id as usize],
                score: self.score(b, n.d, n.id as usize, factor),
            })
            .collect();
        // Graph order is distance order; scores only differ from it under `Dot` for points
        // above the norm bound, so re-sort by the exact score.
        hits.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.id.cmp(&y.id)));
        hits
    }

    /// The exact top `k` live points passing `pass` (by slot), by a scan of every graph vector.
    fn exact(
        &self,
        b: &Book,
        q: &[f32],
        k: usize,
        factor: f32,
        pass: &dyn Fn(usize) -> bool,
    ) -> Vec<Hit> {
        let mut top = TopK::new(k);
        let space = self.graph.shape().space;
        self.graph.for_each_vector(|slot, v| {
            let slot = slot as usize;
            if b.is_live(slot) && pass(slot) {
                let d = match space {
                    Space::Unit => 1.0 - distance::dot(q, v),
                    Space::L2 => distance::l2_sq(q, v),
                };
                top.offer(Hit {
                    id: b.slots[slot],
                    score: self.score(b, d, slot, factor),
                });
            }
        });
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
        old.graph.for_each_vector(|slot, v| {
            let slot = slot as usize;
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

/// Whether two graph-form vectors are the same up to float rounding: every coordinate within
/// `1e-6 x (1 + |a|)`. Normalizing a unit vector again, or a rebuild's round trip through the
/// `Dot` encoding, moves coordinates by a few units in the last place; a rewrite that moves none
/// by more is the same vector to every search.
fn same_vector(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs()))
}

/// The `Dot` graph form of a prepared vector under the bound `phi`, and for a vector above it
/// the ratio `norm / phi` kept aside: stored at its direction on the sphere's rim (as if its
/// norm were phi), so the score stays exact.
fn encode_dot_bounded(v: &[f32], phi: f32) -> (Vec<f32>, Option<f32>) {
    let norm = distance::dot(v, v).sqrt();
    match norm > phi {
        true => (encode_dot(v, norm), Some(norm / phi)),
        false => (encode_dot(v, phi), None),
    }
}

/// `[x / phi, sqrt(1 - |x|^2 / phi^2)]`: a unit vector when `|x| <= phi` (see the module docs).
fn encode_dot(x: &[f32], phi: f32) -> Vec<f32> {
    let mut g: Vec<f32> = x.iter().map(|v| v / phi).collect();
    let rest = 1.0 - distance::dot(&g, &g);
    g.push(rest.max(0.0).sqrt());
    g
}
