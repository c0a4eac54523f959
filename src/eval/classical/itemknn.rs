//! Item-kNN: cosine similarity of the items' train user sets, summed over a user's positives
//! with the profiles' recency weights; over all pairs ([`ItemKnn`]) or each item's `k` most
//! similar ones ([`neighbourhood_scores`], the co-occurrence neighbours `Recommend` ranks with).
use rayon::prelude::*;

use super::{axpy, ActiveItems};
use crate::model::data::Prepared;
use crate::model::neighbours::{ItemNeighbours, NeighbourSettings};
use crate::profile::Recency;

/// The fitted similarity matrix; the recency weighting is a scoring setting, so one fit serves
/// every half-life.
pub struct ItemKnn {
    active: ActiveItems,
    /// `m x m` cosine similarities of the active items (the diagonal is 1).
    sim: Vec<f32>,
}

impl ItemKnn {
    /// Fits on `active`'s train matrix: `S_ab = |U_a & U_b| / sqrt(|U_a| |U_b|)`.
    pub fn fit(active: ActiveItems) -> Self {
        Self::from_gram(&active.gram(), active)
    }

    /// Fits from an already computed `X^T X` of `active` (shared with EASE).
    pub fn from_gram(gram: &[f64], active: ActiveItems) -> Self {
        let m = active.len();
        let norm: Vec<f64> = (0..m).map(|a| gram[a * m + a].sqrt()).collect();
        let mut sim = vec![0.0f32; m * m];
        sim.par_chunks_mut(m.max(1))
            .enumerate()
            .for_each(|(a, row)| {
                for (b, s) in row.iter_mut().enumerate() {
                    *s = (gram[a * m + b] / (norm[a] * norm[b]).max(1e-12)) as f32;
                }
            });
        Self { active, sim }
    }

    /// Score rows (over all `prep.n_items` items) of `users`: the sum over each user's train
    /// positives (in time order) of the positive's similarity row times its recency weight,
    /// `recency.weight(age before the user's newest positive, newer positives)`.
    pub fn scores(&self, prep: &Prepared, users: &[u32], recency: Recency) -> Vec<Vec<f32>> {
        let m = self.active.len();
        users
            .par_iter()
            .map(|&u| {
                let mut acc = vec![0.0f32; m];
                for (a, w) in user_weights(prep, u, recency) {
                    let a = self.active.index[a as usize] as usize;
                    axpy(&mut acc, w, &self.sim[a * m..(a + 1) * m]);
                }
                self.active.expand(&acc, prep.n_items)
            })
            .collect()
    }
}

/// Score rows like [`ItemKnn::scores`] through each target's `k` most similar sources only
/// ([`ItemNeighbours::build`], every target kept per source).
pub fn neighbourhood_scores(
    nb: &ItemNeighbours,
    prep: &Prepared,
    users: &[u32],
    recency: Recency,
) -> Vec<Vec<f32>> {
    users
        .par_iter()
        .map(|&u| {
            let mut row = vec![0.0f32; prep.n_items];
            for (a, w) in user_weights(prep, u, recency) {
                nb.of(a).for_each(|(t, s)| row[t as usize] += w * s);
            }
            row
        })
        .collect()
}

/// The neighbours [`neighbourhood_scores`] uses: each target's `k` best sources, nothing else
/// cut.
pub fn neighbourhood(prep: &Prepared, k: usize) -> ItemNeighbours {
    let s = NeighbourSettings {
        k,
        shrink: 0.0,
        user_cap: usize::MAX,
        max_fanout: usize::MAX,
    };
    ItemNeighbours::build(&prep.user_items, prep.n_items, &s)
}

/// Each train positive of `u` with its recency weight, oldest first: the weights the user's
/// profile input gives its items ([`crate::model::data::profile_input`]).
pub fn user_weights(prep: &Prepared, u: u32, recency: Recency) -> Vec<(u32, f32)> {
    let range = prep.user_offsets[u as usize]..prep.user_offsets[u as usize + 1];
    let weights = recency.weigh(&prep.positive_meta[range.clone()]);
    range.map(|p| prep.positives[p].1).zip(weights).collect()
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{blocks, prepared};
    use super::*;

    fn events(r: Recency) -> Recency {
        Recency {
            half_life_days: 1e6,
            ..r
        }
    }

    #[test]
    fn cosine_of_user_sets() {
        // item 0: users {0, 1}; item 1: {0}; item 2: {1, 2}
        let p = prepared(
            3,
            3,
            &[(0, 0, 0), (0, 1, 1), (1, 0, 0), (1, 2, 1), (2, 2, 0)],
        );
        let knn = ItemKnn::fit(ActiveItems::new(&p));
        let s = |a: usize, b: usize| knn.sim[a * 3 + b];
        assert!((s(0, 1) - 1.0 / 2f32.sqrt()).abs() < 1e-6);
        assert!((s(0, 2) - 0.5).abs() < 1e-6);
        assert_eq!(s(1, 2), 0.0);
        assert!((s(2, 2) - 1.0).abs() < 1e-6);
        assert_eq!(s(1, 0), s(0, 1));
    }

    #[test]
    fn a_neighbourhood_of_all_items_scores_like_the_dense_fit_and_a_small_one_prunes() {
        let p = prepared(30, 12, &blocks(30, 12, 0.7, 5));
        let knn = ItemKnn::fit(ActiveItems::new(&p));
        let users: Vec<u32> = (0..30).collect();
        let r = events(Recency {
            half_life_days: 1.0,
            half_life_events: 2.0,
        });
        let dense = knn.scores(&p, &users, r);
        let all = neighbourhood_scores(&neighbourhood(&p, 12), &p, &users, r);
        for (u, (d, a)) in dense.iter().zip(&all).enumerate() {
            // the user's own items differ by the dense fit's diagonal; they are never ranked
            let own = &p.user_items[u];
            for i in (0..12u32).filter(|i| !own.contains(i)) {
                let (x, y) = (d[i as usize], a[i as usize]);
                assert!((x - y).abs() < 1e-5, "user {u} item {i}: {x} {y}");
            }
        }
        // k = 2: every target keeps its two best sources, all of its own block
        let two = neighbourhood_scores(&neighbourhood(&p, 2), &p, &users, r);
        for (u, row) in users.iter().zip(&two) {
            let (mine, other) = if u % 2 == 0 {
                (0..6, 6..12)
            } else {
                (6..12, 0..6)
            };
            assert!(other.map(|i| row[i]).all(|x| x == 0.0), "user {u}: {row:?}");
            assert!(mine.map(|i| row[i]).any(|x| x > 0.0));
        }
    }

    #[test]
    fn planted_blocks_rank_the_users_block_first() {
        let p = prepared(40, 20, &blocks(40, 20, 0.6, 3));
        let knn = ItemKnn::fit(ActiveItems::new(&p));
        let users: Vec<u32> = (0..40).collect();
        for (u, row) in users
            .iter()
            .zip(knn.scores(&p, &users, Recency::by_age(180.0)))
        {
            let (mine, other) = if u % 2 == 0 {
                (0..10, 10..20)
            } else {
                (10..20, 0..10)
            };
            let worst_mine = mine.map(|i| row[i]).fold(f32::MAX, f32::min);
            let best_other = other.map(|i| row[i]).fold(f32::MIN, f32::max);
            assert!(worst_mine > best_other, "user {u}");
        }
    }

    #[test]
    fn recency_weighting_moves_the_newest_positives_neighbours_up() {
        // items 0-3 form one group and 4-7 another (users 1..=8 take one group each); user 0
        // took three of group A long ago and then one of group B, its newest positive
        let mut log = Vec::new();
        for u in 1..=8u32 {
            let g = if u % 2 == 0 { 0 } else { 4 };
            log.extend((g..g + 4).map(|i| (u, i, 0)));
        }
        log.extend([(0, 0, 0), (0, 1, 1), (0, 2, 2), (0, 4, 3)]);
        let p = prepared(9, 8, &log);
        let knn = ItemKnn::fit(ActiveItems::new(&p));
        let flat = knn.scores(&p, &[0], events(Recency::by_age(1.0)))[0].clone();
        // equal weights: the three group-A positives outvote the one of group B
        assert!(flat[3] > flat[5], "{flat:?}");
        // a half-life of one event: the newest positive (group B) weighs 1, the others 1/2, 1/4,
        // 1/8 (by position; the age half-life is too long to matter)
        let r = events(Recency {
            half_life_days: 1.0,
            half_life_events: 1.0,
        });
        let w = user_weights(&p, 0, r);
        assert_eq!(w.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 4]);
        let ws: Vec<f32> = w.iter().map(|x| x.1).collect();
        assert!(
            (ws[0] - 0.125).abs() < 1e-6 && (ws[3] - 1.0).abs() < 1e-6,
            "{ws:?}"
        );
        let recent = knn.scores(&p, &[0], r)[0].clone();
        assert!(recent[5] > recent[3], "{recent:?}");
        // and it is exactly the weighted sum of similarity rows
        let m = 8;
        for (i, got) in recent.iter().enumerate() {
            let want: f32 = w
                .iter()
                .map(|&(a, x)| x * knn.sim[a as usize * m + i])
                .sum();
            assert!((got - want).abs() < 1e-6);
        }
    }
}
