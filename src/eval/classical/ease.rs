//! EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): the item-item weights
//! `B = argmin ||X - X B||^2 + lambda ||B||^2` subject to `diag(B) = 0`, in closed form
//! `B = I - P diag(1 / diag(P))`, `P = (X^T X + lambda I)^-1`.
use rayon::prelude::*;

use super::linalg::{Cholesky, NotPositiveDefinite};
use super::{axpy, ActiveItems};

/// The fitted weights over the active items.
pub struct Ease {
    /// `m x m`, row `a` = the weights item `a` gives every item (zero diagonal).
    b: Vec<f32>,
}

impl Ease {
    /// Fits from `gram = X^T X` (`m x m`, row-major) with ridge `lambda > 0`.
    pub fn fit(gram: &[f64], m: usize, lambda: f64) -> Result<Self, NotPositiveDefinite> {
        let mut a = gram.to_vec();
        (0..m).for_each(|i| a[i * m + i] += lambda);
        let p = Cholesky::factor(a, m)?.inverse();
        let mut b = vec![0.0f32; m * m];
        b.par_chunks_mut(m.max(1)).enumerate().for_each(|(i, row)| {
            for (j, w) in row.iter_mut().enumerate() {
                if i != j {
                    *w = (-p[i * m + j] / p[j * m + j]) as f32;
                }
            }
        });
        Ok(Self { b })
    }

    /// Score rows of `users` over all `n_items` items: `x_u B`, the sum of the weight rows of the
    /// user's train items.
    pub fn scores(&self, active: &ActiveItems, users: &[u32], n_items: usize) -> Vec<Vec<f32>> {
        let m = active.len();
        users
            .par_iter()
            .map(|&u| {
                let mut acc = vec![0.0f32; m];
                for &a in &active.user_rows[u as usize] {
                    axpy(&mut acc, 1.0, &self.b[a as usize * m..][..m]);
                }
                active.expand(&acc, n_items)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{blocks, prepared};
    use super::*;

    #[test]
    fn weights_solve_the_constrained_ridge_regression() {
        // optimality: for every column j, (G + lambda I) b_j = G e_j - mu_j e_j for some mu_j,
        // with b_jj = 0 (the Lagrangian of the zero-diagonal constraint)
        let p = prepared(30, 8, &blocks(30, 8, 0.5, 1));
        let active = ActiveItems::new(&p);
        let (g, m, lambda) = (active.gram(), active.len(), 3.0);
        let e = Ease::fit(&g, m, lambda).expect("spd");
        for j in 0..m {
            let bj: Vec<f64> = (0..m).map(|i| e.b[i * m + j] as f64).collect();
            assert_eq!(bj[j], 0.0);
            let r: Vec<f64> = (0..m)
                .map(|i| {
                    let gb: f64 = (0..m).map(|k| g[i * m + k] * bj[k]).sum();
                    gb + lambda * bj[i] - g[i * m + j]
                })
                .collect();
            // the residual is zero off the diagonal (mu_j sits on row j)
            for (i, ri) in r.iter().enumerate().filter(|&(i, _)| i != j) {
                assert!(ri.abs() < 1e-4, "column {j} row {i}: {ri}");
            }
        }
    }

    #[test]
    fn planted_blocks_rank_the_held_out_in_block_item_first() {
        // users take one of two blocks of 10 items; each even user misses one item of its block
        let mut log = blocks(60, 20, 1.0, 0);
        log.retain(|&(u, i, _)| !(u % 2 == 0 && i == u % 10));
        let p = prepared(60, 20, &log);
        let active = ActiveItems::new(&p);
        let e = Ease::fit(&active.gram(), active.len(), 1.0).expect("spd");
        for u in (0..60u32).step_by(2) {
            let row = &e.scores(&active, &[u], 20)[0];
            let held_out = (u % 10) as usize;
            let seen: Vec<usize> = (0..10).filter(|&i| i != held_out).collect();
            let best = (0..20)
                .filter(|i| !seen.contains(i))
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .expect("items");
            assert_eq!(best, held_out, "user {u}: {row:?}");
            // the blocks share no user, so the other block gets no weight at all
            assert!(row[held_out] > 0.3, "user {u}: {}", row[held_out]);
            assert!((10..20).all(|i| row[i].abs() < 1e-5), "user {u}: {row:?}");
        }
    }
}
