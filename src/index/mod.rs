//! Vector indexes over `u64` point ids: the exact [`flat`] index and the approximate [`hnsw`] one.
//!
//! Both score with "higher = closer" for every [`Metric`]: cosine similarity, inner product, or
//! the negated squared L2 distance. The engine owns the mapping from entity ids to point ids and
//! decides which index answers a query (the flat one for small candidate sets). Nothing here does
//! network I/O or knows protobuf; only [`hnsw`] touches disk, for its dump files. All of it is
//! plain blocking CPU work, meant to run on a blocking thread.

pub mod calibrate;
pub mod distance;
pub mod flat;
pub mod hnsw;
pub mod synth;

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::error::{Error, Result};
use crate::types::Metric;

/// A point id: the engine's dense handle for an entity.
pub type PointId = u64;

/// A map keyed by point id. Point ids are assigned by the server (dense, never chosen by a
/// client), so they need no hash-flooding defence: one multiply instead of SipHash, on the
/// per-candidate lookups of `Recommend`. Maps keyed by client-chosen ids keep the standard
/// hasher.
pub type PointMap<V> = std::collections::HashMap<PointId, V, PointHashing>;

/// The hashing of [`PointMap`].
pub type PointHashing = std::hash::BuildHasherDefault<PointHasher>;

/// Multiplicative hashing of a `u64` point id (the golden-ratio constant spreads consecutive ids
/// over the high bits the map's control bytes use).
#[derive(Debug, Default, Clone, Copy)]
pub struct PointHasher(u64);

impl std::hash::Hasher for PointHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
}

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The point.
    pub id: PointId,
    /// Its similarity to the query, higher = closer (see [`Metric`]).
    pub score: f32,
}

/// Checks a vector's dimension and values, and brings it to the form the metric stores
/// (unit length for cosine).
pub fn prepare(metric: Metric, dim: usize, v: &[f32]) -> Result<Vec<f32>> {
    if v.len() != dim {
        return Err(Error::invalid(format!(
            "vector has dimension {}, the index expects {dim}",
            v.len()
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid("vector has a NaN or infinite value"));
    }
    let mut v = v.to_vec();
    if metric == Metric::Cosine && !distance::normalize(&mut v) {
        return Err(Error::invalid("vector has zero norm, cosine is undefined"));
    }
    Ok(v)
}

/// Similarity of two prepared vectors under `metric`, higher = closer.
#[inline]
pub fn similarity(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::Cosine | Metric::Dot => distance::dot(a, b),
        Metric::L2 => -distance::l2_sq(a, b),
    }
}

/// Hits ordered best first: higher score, then lower id (so ties are deterministic).
fn better(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// A heap entry whose maximum is the *worst* kept hit, so it can be evicted in `O(log k)`.
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, o: &Self) -> bool {
        better(&self.0, &o.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Worst {
    fn cmp(&self, o: &Self) -> Ordering {
        better(&self.0, &o.0)
    }
}

/// Keeps the best `k` hits offered to it.
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn offer(&mut self, hit: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(worst) = self.heap.peek() {
            if better(&hit, &worst.0) == Ordering::Less {
                self.heap.pop();
                self.heap.push(Worst(hit));
            }
        }
    }

    /// The kept hits, best first.
    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self.heap.into_iter().map(|w| w.0).collect();
        v.sort_by(better);
        v
    }
}

#[cfg(test)]
mod tests {
    /// The engine shares indexes across threads behind an `Arc`.
    #[test]
    fn indexes_and_trie_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::hnsw::HnswIndex>();
        check::<super::flat::FlatIndex>();
        check::<crate::trie::SidTrie>();
    }
}
