//! Classical recommenders as reference methods of `sidb eval`: what a team would deploy instead
//! of semantic IDs. They see exactly what the SID methods see (the train positives of the split,
//! in [`Prepared`]) and score every item for a user; the caller ranks those scores like any other
//! method's (full catalogue, train items excluded).
//!
//! - [`ItemKnn`]: cosine item-item similarity of the binary train matrix; a user's score for an
//!   item is the sum of its similarities to the user's positives, each weighted by the same
//!   recency weight ([`Recency`]) the user profiles use.
//! - [`Ease`]: Steck's EASE, `B = I - P / diag(P)` with `P = (X^T X + lambda I)^-1` (zero
//!   diagonal), solved in closed form by our own Cholesky ([`linalg`]).
//! - [`Svd`]: PureSVD, the projection `x_u V_k V_k^T` on the top-`k` right singular vectors of the
//!   binary train matrix, found by randomized subspace (power) iteration on the sparse matrix.
//!
//! Their settings (half-life, lambda, rank) are chosen on the validation pairs by the evaluation;
//! this module only fits and scores. Items without a train positive are left out of every model
//! (they score 0): that gives the same scores as keeping them, at a fraction of the cost.
pub mod linalg;

mod ease;
mod itemknn;
mod svd;

pub use ease::Ease;
pub use itemknn::{neighbourhood, neighbourhood_scores, ItemKnn};
pub use svd::Svd;

use rayon::prelude::*;

use crate::model::data::Prepared;
pub use crate::profile::Recency;

/// The grids the evaluation chooses from on the validation pairs (one value = a fixed setting).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicalOptions {
    /// `itemknn`: half-lives by position (`Recency::half_life_events`, 0 = by age only); the
    /// half-life by age is the model's (`recency_half_life_days`). Default 0, 1, 2, 4, 8, 16.
    pub knn_half_lives: Vec<f64>,
    /// `itemknn`: sources kept per target item (0 = every item, the dense fit). Default 0, 50,
    /// 100, 200.
    pub knn_neighbours: Vec<usize>,
    /// `ease`: ridge strengths. Default 20, 100, 500, 2500.
    pub ease_lambdas: Vec<f64>,
    /// `svd`: ranks (capped by the data). Default 16, 32, 64, 128, 256.
    pub svd_ranks: Vec<usize>,
    /// `svd`: subspace iterations. Default 6.
    pub svd_power_iters: usize,
}

impl Default for ClassicalOptions {
    fn default() -> Self {
        Self {
            knn_half_lives: vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
            knn_neighbours: vec![0, 50, 100, 200],
            ease_lambdas: vec![20.0, 100.0, 500.0, 2500.0],
            svd_ranks: vec![16, 32, 64, 128, 256],
            svd_power_iters: 6,
        }
    }
}

/// The items with at least one train positive, numbered densely: the models' rows and columns.
#[derive(Debug, Clone)]
pub struct ActiveItems {
    /// Original item index of each active item.
    pub items: Vec<u32>,
    /// Active index of each original item (`u32::MAX` = inactive).
    pub index: Vec<u32>,
    /// Each user's distinct active items (binary train matrix, CSR).
    pub user_rows: Vec<Vec<u32>>,
    /// Each active item's distinct users (CSC).
    pub item_cols: Vec<Vec<u32>>,
}

impl ActiveItems {
    /// Reads the train positives of `prep`.
    pub fn new(prep: &Prepared) -> Self {
        let items: Vec<u32> = (0..prep.n_items as u32)
            .filter(|&i| !prep.item_users[i as usize].is_empty())
            .collect();
        let mut index = vec![u32::MAX; prep.n_items];
        for (a, &i) in items.iter().enumerate() {
            index[i as usize] = a as u32;
        }
        let dedup = |mut v: Vec<u32>| {
            v.sort_unstable();
            v.dedup();
            v
        };
        let user_rows = (prep.user_items.iter())
            .map(|its| dedup(its.iter().map(|&i| index[i as usize]).collect()))
            .collect();
        let item_cols = (items.iter())
            .map(|&i| dedup(prep.item_users[i as usize].clone()))
            .collect();
        Self {
            items,
            index,
            user_rows,
            item_cols,
        }
    }

    /// Number of active items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No active item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `X^T X` over the active items (co-occurrence counts; the diagonal holds each item's user
    /// count), row-major `m x m`.
    pub fn gram(&self) -> Vec<f64> {
        let m = self.len();
        let mut g = vec![0.0f64; m * m];
        g.par_chunks_mut(m).enumerate().for_each(|(a, row)| {
            for &u in &self.item_cols[a] {
                for &b in &self.user_rows[u as usize] {
                    row[b as usize] += 1.0;
                }
            }
        });
        g
    }

    /// A score row over all original items from one over the active items (inactive: 0).
    pub fn expand(&self, active_scores: &[f32], n_items: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n_items];
        for (&i, &s) in self.items.iter().zip(active_scores) {
            out[i as usize] = s;
        }
        out
    }
}

/// `out += w * row`, vectorisable.
pub(crate) fn axpy(out: &mut [f32], w: f32, row: &[f32]) {
    out.iter_mut().zip(row).for_each(|(o, r)| *o += w * r);
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Seeded synthetic logs with planted structure for the baselines' tests.
    use crate::model::data::{Interaction, Prepared, Recency, TrainingData};

    /// `Prepared` from (user, item, ts) positives over `n_items` items.
    pub fn prepared(n_users: usize, n_items: usize, events: &[(u32, u32, i64)]) -> Prepared {
        let data = TrainingData {
            item_emb: vec![1.0; n_items * 2],
            item_dim: 2,
            user_emb: None,
            user_dim: 0,
            interactions: (events.iter())
                .map(|&(user, item, ts_ms)| Interaction {
                    user,
                    item,
                    weight: 1.0,
                    ts_ms,
                })
                .collect(),
            n_users,
        };
        Prepared::new(&data, Recency::by_age(180.0)).expect("valid synthetic data")
    }

    /// Two blocks of items (0..half and half..n) and users who each take one block only, minus
    /// a seeded sample of pairs; returns the log.
    pub fn blocks(n_users: usize, n_items: usize, keep: f64, seed: u64) -> Vec<(u32, u32, i64)> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let half = n_items as u32 / 2;
        let mut out = Vec::new();
        for u in 0..n_users as u32 {
            let base = if u % 2 == 0 { 0 } else { half };
            for i in base..base + half {
                if rng.random::<f64>() < keep {
                    out.push((u, i, i as i64 * 1000));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::prepared;
    use super::*;

    #[test]
    fn active_items_skip_unrated_items_and_expand_back() {
        let p = prepared(2, 5, &[(0, 1, 0), (0, 3, 1), (1, 3, 0)]);
        let a = ActiveItems::new(&p);
        assert_eq!(a.items, vec![1, 3]);
        assert_eq!(a.index, vec![u32::MAX, 0, u32::MAX, 1, u32::MAX]);
        assert_eq!(a.user_rows, vec![vec![0, 1], vec![1]]);
        assert_eq!(a.item_cols, vec![vec![0], vec![0, 1]]);
        assert_eq!(a.gram(), vec![1.0, 1.0, 1.0, 2.0]);
        assert_eq!(a.expand(&[0.5, 2.0], 5), vec![0.0, 0.5, 0.0, 2.0, 0.0]);
    }
}
