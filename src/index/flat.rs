//! The exact flat index: every query scores every (allowed) point.
//!
//! It is the oracle of the recall tests and the path for small candidate sets (a SID bucket, an
//! explicit id list), where a full scan beats a filtered graph walk by a wide margin. Vectors sit
//! in one contiguous `Vec<f32>` so a scan streams through memory; removal swaps the last point
//! into the hole, so the layout stays dense.

use std::collections::HashMap;

use super::{prepare, similarity, Hit, PointId, TopK};
use crate::error::Result;
use crate::types::Metric;

/// An exact index over `dim`-dimensional vectors under one metric.
#[derive(Debug, Clone)]
pub struct FlatIndex {
    metric: Metric,
    dim: usize,
    data: Vec<f32>,
    ids: Vec<PointId>,
    slot: HashMap<PointId, usize>,
}

impl FlatIndex {
    /// An empty index.
    pub fn new(metric: Metric, dim: usize) -> Self {
        FlatIndex {
            metric,
            dim,
            data: Vec::new(),
            ids: Vec::new(),
            slot: HashMap::new(),
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

    /// Number of points.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// True when `id` is present.
    pub fn contains(&self, id: PointId) -> bool {
        self.slot.contains_key(&id)
    }

    /// Adds `id`, or replaces its vector. Errors on a wrong dimension, a non-finite value, or a
    /// zero vector under cosine.
    pub fn upsert(&mut self, id: PointId, v: &[f32]) -> Result<()> {
        let v = prepare(self.metric, self.dim, v)?;
        match self.slot.get(&id) {
            Some(&s) => self.data[s * self.dim..(s + 1) * self.dim].copy_from_slice(&v),
            None => {
                self.slot.insert(id, self.ids.len());
                self.ids.push(id);
                self.data.extend_from_slice(&v);
            }
        }
        Ok(())
    }

    /// Removes `id`; returns whether it was present.
    pub fn remove(&mut self, id: PointId) -> bool {
        let Some(s) = self.slot.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if s != last {
            let moved = self.ids[last];
            self.ids[s] = moved;
            self.data.copy_within(last * self.dim.., s * self.dim);
            self.slot.insert(moved, s);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
        true
    }

    /// The stored (prepared: unit length under cosine) vector of `id`.
    pub fn get(&self, id: PointId) -> Option<&[f32]> {
        let s = *self.slot.get(&id)?;
        Some(&self.data[s * self.dim..(s + 1) * self.dim])
    }

    /// Every `(id, stored vector)`, in storage order.
    pub fn iter(&self) -> impl Iterator<Item = (PointId, &[f32])> + '_ {
        self.ids
            .iter()
            .copied()
            .zip(self.data.chunks_exact(self.dim.max(1)))
    }

    /// The exact top `k`, best first (ties by lower id). Only points passing `filter` count; when
    /// `candidates` is given only those ids are scored (unknown ids are skipped), otherwise all.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(PointId) -> bool>,
        candidates: Option<&[PointId]>,
    ) -> Result<Vec<Hit>> {
        let q = prepare(self.metric, self.dim, query)?;
        let mut top = TopK::new(k);
        let allowed = |id: PointId| filter.is_none_or(|f| f(id));
        let mut score = |id: PointId, v: &[f32]| {
            if allowed(id) {
                top.offer(Hit {
                    id,
                    score: similarity(self.metric, &q, v),
                });
            }
        };
        match candidates {
            Some(ids) => ids
                .iter()
                .filter_map(|&id| Some((id, self.get(id)?)))
                .for_each(|(id, v)| score(id, v)),
            None => self.iter().for_each(|(id, v)| score(id, v)),
        }
        Ok(top.into_sorted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(hits: &[Hit]) -> Vec<PointId> {
        hits.iter().map(|h| h.id).collect()
    }

    #[test]
    fn scores_are_higher_for_closer_points_under_every_metric() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let mut f = FlatIndex::new(metric, 2);
            f.upsert(1, &[1.0, 0.0]).expect("ok");
            f.upsert(2, &[0.7, 0.7]).expect("ok");
            f.upsert(3, &[-1.0, 0.1]).expect("ok");
            let hits = f.search(&[1.0, 0.1], 3, None, None).expect("ok");
            assert_eq!(ids(&hits), vec![1, 2, 3], "{metric:?}");
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn replace_remove_filter_and_candidates() {
        let mut f = FlatIndex::new(Metric::L2, 1);
        for i in 0..10 {
            f.upsert(i, &[i as f32]).expect("ok");
        }
        f.upsert(9, &[0.1]).expect("replace");
        assert!(f.remove(0));
        assert!(!f.remove(0));
        assert_eq!(f.len(), 9);
        assert_eq!(
            ids(&f.search(&[0.0], 2, None, None).expect("ok")),
            vec![9, 1]
        );
        let even = |id: PointId| id.is_multiple_of(2);
        assert_eq!(
            ids(&f.search(&[0.0], 2, Some(&even), None).expect("ok")),
            vec![2, 4]
        );
        let cands = [7, 5, 0, 42];
        assert_eq!(
            ids(&f.search(&[0.0], 5, None, Some(&cands)).expect("ok")),
            vec![5, 7]
        );
        assert_eq!(f.get(9), Some(&[0.1f32][..]));
    }

    #[test]
    fn bad_vectors_are_invalid_argument() {
        let mut f = FlatIndex::new(Metric::Cosine, 2);
        assert!(f.upsert(1, &[1.0]).is_err());
        assert!(f.upsert(1, &[f32::NAN, 1.0]).is_err());
        assert!(f.upsert(1, &[0.0, 0.0]).is_err());
        assert!(f.search(&[1.0, 2.0, 3.0], 1, None, None).is_err());
        assert!(f.is_empty());
    }
}
