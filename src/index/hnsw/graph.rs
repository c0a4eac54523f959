//! Our HNSW graph (Malkov & Yashunin, 2018): flat storage, lock-light concurrent inserts.
//!
//! # Layout
//! Nodes are dense `u32` ids (the index's *slots*). Everything a node owns lives in flat arrays
//! indexed by its id, in one [`Store`]: its vector (`dim` floats, slot-major in one `Vec<f32>`,
//! so a walk touches one contiguous row per node), its level, its layer-0 link list (`1 + 2M`
//! words: count, then ids) and, for the ~1/M nodes above layer 0, `1 + M` words per upper layer
//! in a second flat array. A search allocates nothing per step: the visited set is an
//! epoch-tagged `Vec<u32>` and the two candidate heaps are reused, all per thread. Expanding a
//! node first gathers its unvisited neighbours, then computes their distances with the next
//! one's vector prefetched ([`distance::prefetch`], the one `unsafe` hint, justified there).
//!
//! # Concurrency without `unsafe`
//! - The [`Store`] sits behind an `RwLock`. Searches and inserts take it *shared*; only
//!   [`Graph::append`] (new rows, new link space: the arrays may reallocate) takes it exclusively,
//!   for a memcpy-sized moment. Vectors are written there and never change afterwards.
//! - Link words are `AtomicU32`. A writer changing node `x`'s list holds `x`'s own mutex (as
//!   hnswlib does), stores the ids, then the count with `Release`; readers take no lock, load the
//!   count with `Acquire` and the ids `Relaxed`. A reader racing a rewrite may see a mix of the
//!   old and new list, but every word it can see is a valid node id, so the walk stays sound;
//!   it is the same benign race hnswlib has.
//! - The entry point (node, level) is one `AtomicU64`, raised with a CAS once a node taller than
//!   it is fully linked, so a search never starts from a node without links.
//!
//! # Construction
//! Levels are drawn from a seeded RNG at append time (`floor(-ln U / ln M)`, capped at
//! `max_layer`), so a serial build is reproducible. Inserting follows hnswlib: greedy descent
//! to the node's level, then per layer an `ef_construction` search, the heuristic selection of
//! `M` neighbours (the paper's algorithm 4: keep a candidate only if it is closer to the new node
//! than to every neighbour kept so far), links both ways, and a neighbour whose list is full
//! (`M` above layer 0, `2M` on it) re-selects its list with the same heuristic.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering as Mem};

use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::super::distance;
use crate::error::{Error, Result};

/// No entry point yet (empty graph).
const NO_ENTRY: u64 = u64::MAX;
/// Seed of the level RNG (hnswlib's default is 100 as well).
const LEVEL_SEED: u64 = 100;

/// How distances are computed on stored vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    /// Unit vectors (cosine, and dot after its reduction): `1 - dot`.
    Unit,
    /// Squared Euclidean distance.
    L2,
}

/// Shape and construction parameters of a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    /// Floats per stored vector.
    pub dim: usize,
    /// Links per node on upper layers (`M`); layer 0 keeps `2M`.
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Highest level a node may get.
    pub max_layer: usize,
    /// The distance.
    pub space: Space,
}

/// A node and its distance to whatever is being searched for. Ordered by distance, then id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Near {
    pub d: f32,
    pub id: u32,
}

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Near {
    fn cmp(&self, o: &Self) -> Ordering {
        self.d.total_cmp(&o.d).then(self.id.cmp(&o.id))
    }
}

/// Everything that grows with the node count. See the module docs for the layout.
#[derive(Debug, Default)]
pub(super) struct Store {
    pub(super) vectors: Vec<f32>,
    pub(super) levels: Vec<u8>,
    pub(super) links0: Vec<AtomicU32>,
    /// Offset of each node's first upper block in `upper` (unused for level-0 nodes).
    pub(super) upper_at: Vec<usize>,
    pub(super) upper: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
}

impl Store {
    /// A store from decoded arrays (already validated by the caller): `links0` holds
    /// `len * layer0_block` words, `upper` the upper blocks of every node in id order.
    pub(super) fn from_words(
        vectors: Vec<f32>,
        levels: Vec<u8>,
        links0: Vec<u32>,
        upper: Vec<u32>,
        upper_block: usize,
    ) -> Store {
        let mut upper_at = Vec::with_capacity(levels.len());
        let mut at = 0;
        for l in &levels {
            upper_at.push(at);
            at += usize::from(*l) * upper_block;
        }
        Store {
            vectors,
            locks: levels.iter().map(|_| Mutex::new(())).collect(),
            levels,
            links0: links0.into_iter().map(AtomicU32::new).collect(),
            upper_at,
            upper: upper.into_iter().map(AtomicU32::new).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.levels.len()
    }

    /// Adds a node with no links; `upper_block` is `1 + M`.
    pub(super) fn push(&mut self, v: &[f32], level: u8, layer0_block: usize, upper_block: usize) {
        self.vectors.extend_from_slice(v);
        self.levels.push(level);
        self.links0
            .extend((0..layer0_block).map(|_| AtomicU32::new(0)));
        self.upper_at.push(self.upper.len());
        let words = usize::from(level) * upper_block;
        self.upper.extend((0..words).map(|_| AtomicU32::new(0)));
        self.locks.push(Mutex::new(()));
    }

    fn reserve(&mut self, n: usize, dim: usize, layer0_block: usize) {
        self.vectors.reserve(n * dim);
        self.levels.reserve(n);
        self.links0.reserve(n * layer0_block);
        self.upper_at.reserve(n);
        self.locks.reserve(n);
    }
}

/// The graph. All methods take `&self`; see the module docs for who locks what.
#[derive(Debug)]
pub(super) struct Graph {
    shape: Shape,
    store: RwLock<Store>,
    /// `(node << 8) | level` of the entry point, or [`NO_ENTRY`].
    entry: AtomicU64,
    rng: Mutex<ChaCha8Rng>,
}

impl Graph {
    /// An empty graph with room for `capacity` nodes before its arrays grow.
    pub(super) fn new(shape: Shape, capacity: usize) -> Self {
        let mut store = Store::default();
        store.reserve(capacity, shape.dim, 1 + 2 * shape.m);
        Self::from_parts(shape, store, NO_ENTRY)
    }

    /// A graph over a ready store (a reload). The level RNG is seeded from the node count, so
    /// nodes added after a reload do not replay the levels of the first ones.
    pub(super) fn from_parts(shape: Shape, store: Store, entry: u64) -> Self {
        let seed = LEVEL_SEED.wrapping_add(store.len() as u64);
        Graph {
            shape,
            store: RwLock::new(store),
            entry: AtomicU64::new(entry),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    pub(super) fn shape(&self) -> Shape {
        self.shape
    }

    /// Nodes in the graph (linked or about to be).
    pub(super) fn len(&self) -> usize {
        self.store.read().len()
    }

    /// Words per layer-0 list: the count and `2M` ids.
    pub(super) fn layer0_block(&self) -> usize {
        1 + 2 * self.shape.m
    }

    /// Words per upper-layer list: the count and `M` ids.
    pub(super) fn upper_block(&self) -> usize {
        1 + self.shape.m
    }

    /// Adds `vs` (each `dim` long) as new unlinked nodes and returns the first one's id; link them
    /// with [`insert`](Self::insert). Takes the store exclusively, briefly.
    pub(super) fn append(&self, vs: &[Vec<f32>]) -> Result<u32> {
        let levels: Vec<u8> = {
            let mut rng = self.rng.lock();
            vs.iter().map(|_| self.random_level(&mut rng)).collect()
        };
        let mut s = self.store.write();
        let first = s.len();
        if first + vs.len() >= u32::MAX as usize {
            return Err(Error::ResourceExhausted(
                "HNSW graph is full (2^32 nodes)".into(),
            ));
        }
        s.reserve(vs.len(), self.shape.dim, self.layer0_block());
        for (v, level) in vs.iter().zip(levels) {
            debug_assert_eq!(v.len(), self.shape.dim);
            s.push(v, level, self.layer0_block(), self.upper_block());
        }
        Ok(first as u32)
    }

    fn random_level(&self, rng: &mut ChaCha8Rng) -> u8 {
        let mult = 1.0 / (self.shape.m.max(2) as f64).ln();
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let level = (-u.ln() * mult) as usize;
        level.min(self.shape.max_layer).min(u8::MAX as usize) as u8
    }

    /// Links the appended nodes `first..first + n`, in parallel (current rayon pool) when `n > 1`.
    pub(super) fn insert(&self, first: u32, n: usize) {
        let s = self.store.read();
        let w = Walker {
            shape: &self.shape,
            s: &s,
        };
        let first = (first as usize).min(s.len()) as u32;
        let end = (first as usize + n).min(s.len()) as u32;
        if end - first <= 1 {
            (first..end).for_each(|id| with_scratch(|sc| self.insert_one(&w, id, sc)));
        } else {
            (first..end)
                .into_par_iter()
                .for_each(|id| with_scratch(|sc| self.insert_one(&w, id, sc)));
        }
    }

    fn insert_one(&self, w: &Walker, id: u32, sc: &mut Scratch) {
        let level = usize::from(w.s.levels[id as usize]);
        let Some((ep, top)) = self.entry_or_claim(id, level) else {
            return; // the first node: nothing to link to
        };
        let q = w.vector(id);
        let mut cur = Near {
            d: w.dist(q, ep),
            id: ep,
        };
        for l in (level + 1..=top).rev() {
            cur = w.greedy(q, cur, l);
        }
        let mut eps = vec![cur];
        for l in (0..=level.min(top)).rev() {
            w.search_layer(q, &eps, self.shape.ef_construction, l, None, sc);
            let mut cands = std::mem::take(&mut sc.top).into_sorted_vec();
            cands.retain(|c| c.id != id);
            let chosen = w.select(&cands, self.shape.m);
            w.set_links(id, l, &chosen);
            for c in &chosen {
                w.add_link(c.id, id, c.d, l);
            }
            cands.clear();
            sc.top = BinaryHeap::from(cands);
            if !chosen.is_empty() {
                eps = chosen;
            }
        }
        if level > top {
            self.raise_entry(id, level);
        }
    }

    /// The entry point, or `None` after making `id` the entry of an empty graph.
    fn entry_or_claim(&self, id: u32, level: usize) -> Option<(u32, usize)> {
        let mine = (u64::from(id) << 8) | level as u64;
        match self
            .entry
            .compare_exchange(NO_ENTRY, mine, Mem::AcqRel, Mem::Acquire)
        {
            Ok(_) => None,
            Err(e) => Some(unpack_entry(e)),
        }
    }

    fn raise_entry(&self, id: u32, level: usize) {
        let mine = (u64::from(id) << 8) | level as u64;
        let _ = self
            .entry
            .fetch_update(Mem::AcqRel, Mem::Acquire, |e| match e {
                NO_ENTRY => Some(mine),
                e if unpack_entry(e).1 < level => Some(mine),
                _ => None,
            });
    }

    /// The entry word, for persistence.
    pub(super) fn entry_word(&self) -> u64 {
        self.entry.load(Mem::Acquire)
    }

    /// The `k` nearest nodes to `q` that pass `accept` (all when `None`), nearest first, from
    /// a layer-0 walk of width `max(ef, k)`. With a filter the walk keeps traversing through
    /// rejected nodes and stops only once it holds `ef` accepted ones (or runs out of graph).
    pub(super) fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Near> {
        let s = self.store.read();
        let w = Walker {
            shape: &self.shape,
            s: &s,
        };
        let entry = self.entry.load(Mem::Acquire);
        if entry == NO_ENTRY || q.len() != self.shape.dim {
            return Vec::new();
        }
        let (ep, top) = unpack_entry(entry);
        let mut cur = Near {
            d: w.dist(q, ep),
            id: ep,
        };
        for l in (1..=top).rev() {
            cur = w.greedy(q, cur, l);
        }
        with_scratch(|sc| {
            w.search_layer(q, &[cur], ef.max(k), 0, accept, sc);
            while sc.top.len() > k {
                sc.top.pop();
            }
            let mut out: Vec<Near> = sc.top.drain().collect();
            out.sort_unstable();
            out
        })
    }

    /// Every node with its stored vector, in id order (read lock held throughout).
    pub(super) fn for_each_vector(&self, mut f: impl FnMut(u32, &[f32])) {
        let s = self.store.read();
        for (i, v) in s.vectors.chunks_exact(self.shape.dim.max(1)).enumerate() {
            f(i as u32, v);
        }
    }

    /// Runs `f` on the store, shared.
    pub(super) fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.store.read())
    }
}

fn unpack_entry(e: u64) -> (u32, usize) {
    ((e >> 8) as u32, (e & 0xff) as usize)
}

/// A read view of the store with the distance and link helpers the walks need.
struct Walker<'a> {
    shape: &'a Shape,
    s: &'a Store,
}

impl Walker<'_> {
    #[inline]
    fn vector(&self, id: u32) -> &[f32] {
        let d = self.shape.dim;
        let at = id as usize * d;
        self.s.vectors.get(at..at + d).unwrap_or(&[])
    }

    /// Distance from `q` to node `id`.
    #[inline]
    fn dist(&self, q: &[f32], id: u32) -> f32 {
        self.dist_v(q, self.vector(id))
    }

    #[inline]
    fn dist_v(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.shape.space {
            Space::Unit => 1.0 - distance::dot(a, b),
            Space::L2 => distance::l2_sq(a, b),
        }
    }

    /// `id`'s list on `level`: the words (count first); empty when it has no such layer.
    #[inline]
    fn block(&self, id: u32, level: usize) -> &[AtomicU32] {
        let i = id as usize;
        if level == 0 {
            let b = 1 + 2 * self.shape.m;
            return self.s.links0.get(i * b..(i + 1) * b).unwrap_or(&[]);
        }
        if self.s.levels.get(i).is_none_or(|l| usize::from(*l) < level) {
            return &[];
        }
        let b = 1 + self.shape.m;
        let at = self.s.upper_at[i] + (level - 1) * b;
        self.s.upper.get(at..at + b).unwrap_or(&[])
    }

    /// The current neighbours of `id` on `level` (see the module docs for the benign race).
    #[inline]
    fn neighbours(&self, id: u32, level: usize) -> impl Iterator<Item = u32> + '_ {
        let b = self.block(id, level);
        let n = b.first().map_or(0, |c| c.load(Mem::Acquire) as usize);
        b.iter().skip(1).take(n).map(|x| x.load(Mem::Relaxed))
    }

    /// Greedy descent on one upper layer: move to a closer neighbour until none is.
    fn greedy(&self, q: &[f32], mut cur: Near, level: usize) -> Near {
        loop {
            let mut moved = false;
            for nb in self.neighbours(cur.id, level) {
                let d = self.dist(q, nb);
                if d < cur.d {
                    cur = Near { d, id: nb };
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// The best-first search of one layer (the paper's algorithm 2, with hnswlib's filter rule):
    /// leaves the best `ef` accepted nodes in `sc.top` (a max-heap, worst on top).
    fn search_layer(
        &self,
        q: &[f32],
        eps: &[Near],
        ef: usize,
        level: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
        sc: &mut Scratch,
    ) {
        sc.visited.reset(self.s.len());
        sc.cand.clear();
        sc.top.clear();
        let ok = |id: u32| accept.is_none_or(|f| f(id));
        for &e in eps {
            if sc.visited.insert(e.id) {
                sc.cand.push(Reverse(e));
                if ok(e.id) {
                    sc.top.push(e);
                }
            }
        }
        let mut bound = sc.top.peek().map_or(f32::INFINITY, |w| w.d);
        while let Some(Reverse(c)) = sc.cand.pop() {
            // Unfiltered: stop at the first candidate worse than the worst kept. Filtered: only
            // once `ef` accepted nodes are kept, else keep walking through rejected ones.
            if c.d > bound && (sc.top.len() >= ef || accept.is_none()) {
                break;
            }
            // Unvisited neighbours first, then their distances with the next one's vector
            // prefetched: the walk is bound by memory latency, not arithmetic.
            let mut batch = std::mem::take(&mut sc.batch);
            batch.clear();
            batch.extend(
                self.neighbours(c.id, level)
                    .filter(|nb| sc.visited.insert(*nb)),
            );
            if let Some(first) = batch.first() {
                distance::prefetch(self.vector(*first));
            }
            for (i, &nb) in batch.iter().enumerate() {
                if let Some(next) = batch.get(i + 1) {
                    distance::prefetch(self.vector(*next));
                }
                let d = self.dist(q, nb);
                if sc.top.len() < ef || d < bound {
                    sc.cand.push(Reverse(Near { d, id: nb }));
                    if ok(nb) {
                        sc.top.push(Near { d, id: nb });
                        if sc.top.len() > ef {
                            sc.top.pop();
                        }
                        bound = sc.top.peek().map_or(f32::INFINITY, |w| w.d);
                    }
                }
            }
            sc.batch = batch;
        }
    }

    /// The heuristic neighbour selection (algorithm 4 without extension or pruned-keep):
    /// `cands` sorted nearest first; at most `m` kept.
    fn select(&self, cands: &[Near], m: usize) -> Vec<Near> {
        if cands.len() <= m {
            return cands.to_vec();
        }
        let mut out: Vec<Near> = Vec::with_capacity(m);
        for c in cands {
            if out.len() >= m {
                break;
            }
            let v = self.vector(c.id);
            if out.iter().all(|r| self.dist_v(v, self.vector(r.id)) >= c.d) {
                out.push(*c);
            }
        }
        out
    }

    /// Replaces `id`'s list on `level` with `chosen` (under `id`'s lock).
    fn set_links(&self, id: u32, level: usize, chosen: &[Near]) {
        let _g = self.s.locks[id as usize].lock();
        self.write_list(self.block(id, level), chosen);
    }

    fn write_list(&self, b: &[AtomicU32], chosen: &[Near]) {
        let Some((count, slots)) = b.split_first() else {
            return;
        };
        let n = chosen.len().min(slots.len());
        for (w, c) in slots.iter().zip(&chosen[..n]) {
            w.store(c.id, Mem::Relaxed);
        }
        count.store(n as u32, Mem::Release);
    }

    /// Adds the link `target -> new` (distance `d`) on `level`; when `target`'s list is full,
    /// re-selects it with the heuristic over the old links plus `new`.
    fn add_link(&self, target: u32, new: u32, d: f32, level: usize) {
        let _g = self.s.locks[target as usize].lock();
        let b = self.block(target, level);
        let Some((count, slots)) = b.split_first() else {
            return;
        };
        let n = (count.load(Mem::Acquire) as usize).min(slots.len());
        if slots[..n].iter().any(|x| x.load(Mem::Relaxed) == new) {
            return;
        }
        if n < slots.len() {
            slots[n].store(new, Mem::Relaxed);
            count.store(n as u32 + 1, Mem::Release);
            return;
        }
        let tv = self.vector(target);
        let mut cands: Vec<Near> = slots
            .iter()
            .map(|x| {
                let id = x.load(Mem::Relaxed);
                Near {
                    d: self.dist(tv, id),
                    id,
                }
            })
            .collect();
        cands.push(Near { d, id: new });
        cands.sort_unstable();
        let chosen = self.select(&cands, slots.len());
        self.write_list(b, &chosen);
    }
}

/// Per-thread search state, reused across searches.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    cand: BinaryHeap<Reverse<Near>>,
    top: BinaryHeap<Near>,
    /// The unvisited neighbours of the node being expanded.
    batch: Vec<u32>,
}

/// An epoch-tagged visited set: a node is visited when its tag equals the current epoch, so
/// clearing is one increment (and a real clear every 2^32 searches).
#[derive(Default)]
struct Visited {
    tags: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.tags.len() < n {
            self.tags.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `id`; true when it was not visited yet. Ids past the end count as visited.
    #[inline]
    fn insert(&mut self, id: u32) -> bool {
        match self.tags.get_mut(id as usize) {
            Some(t) if *t != self.epoch => {
                *t = self.epoch;
                true
            }
            _ => false,
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (a fresh one if it is already in use, e.g. a filter
/// closure that searches another index).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut sc) => f(&mut sc),
        Err(_) => f(&mut Scratch::default()),
    })
}
