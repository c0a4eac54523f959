//! PureSVD (Cremonesi, Koren, Turrin, RecSys 2010): a user's scores are its binary train row
//! projected on the top-`k` right singular vectors of the train matrix, `x_u V_k V_k^T`.
//!
//! The singular vectors come from randomized subspace iteration on the sparse matrix: a seeded
//! Gaussian block `Q` of `l = k + 10` columns, `Q <- orth(X^T X Q)` a few times (each product
//! is two sparse passes, never a dense `X^T X`), then Rayleigh-Ritz: the eigenvectors `W` of
//! `(X Q)^T (X Q)` rotate `Q` into `V = Q W`, ordered by singular value. Every rank up to `k`
//! is a prefix of the same `V`, so one fit serves a whole grid of ranks.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::linalg::{orthonormalise_columns, symmetric_eigen};
use super::ActiveItems;

/// Extra columns beyond the largest rank asked: they absorb the directions that subspace
/// iteration has not separated yet.
const OVERSAMPLE: usize = 10;

/// The fitted item factors.
pub struct Svd {
    /// `m x l` row-major: row `a` = the item's coordinates on the singular vectors, in
    /// descending order of singular value.
    v: Vec<f32>,
    l: usize,
    /// Largest rank served (`<= l`).
    rank: usize,
    /// Singular values, descending.
    pub singular_values: Vec<f64>,
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Svd {
    /// Fits ranks up to `max_rank` (capped by the matrix) with `iters` subspace iterations.
    pub fn fit(
        active: &ActiveItems,
        n_users: usize,
        max_rank: usize,
        iters: usize,
        seed: u64,
    ) -> Self {
        let m = active.len();
        let l = (max_rank + OVERSAMPLE).min(m).min(n_users).max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut q: Vec<f64> = (0..m * l).map(|_| gaussian(&mut rng)).collect();
        orthonormalise_columns(&mut q, l);
        for _ in 0..iters {
            let y = times_q(active, &q, l, n_users);
            q = transpose_times(active, &y, l);
            orthonormalise_columns(&mut q, l);
        }
        let y = times_q(active, &q, l, n_users);
        let mut t = vec![0.0f64; l * l];
        for row in y.chunks(l) {
            for i in 0..l {
                let ri = row[i];
                t[i * l..(i + 1) * l]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(t, r)| *t += ri * r);
            }
        }
        let (values, w) = symmetric_eigen(&t, l);
        // V = Q W
        let mut v = vec![0.0f32; m * l];
        v.par_chunks_mut(l)
            .zip(q.par_chunks(l))
            .for_each(|(vr, qr)| {
                for (c, out) in vr.iter_mut().enumerate() {
                    *out = (0..l).map(|k| qr[k] * w[k * l + c]).sum::<f64>() as f32;
                }
            });
        Self {
            v,
            l,
            rank: max_rank.clamp(1, l),
            singular_values: values.iter().map(|&e| e.max(0.0).sqrt()).collect(),
        }
    }

    /// Largest rank available.
    pub fn max_rank(&self) -> usize {
        self.rank
    }

    /// Score rows of `users` over all `n_items` items at rank `k` (capped by [`Self::max_rank`]).
    pub fn scores(
        &self,
        active: &ActiveItems,
        users: &[u32],
        k: usize,
        n_items: usize,
    ) -> Vec<Vec<f32>> {
        let (l, k) = (self.l, k.min(self.max_rank()));
        users
            .par_iter()
            .map(|&u| {
                let mut p = vec![0.0f32; k];
                for &a in &active.user_rows[u as usize] {
                    let r = &self.v[a as usize * l..][..k];
                    p.iter_mut().zip(r).for_each(|(p, r)| *p += r);
                }
                let acc: Vec<f32> = (self.v.chunks(l))
                    .map(|r| r[..k].iter().zip(&p).map(|(a, b)| a * b).sum())
                    .collect();
                active.expand(&acc, n_items)
            })
            .collect()
    }
}

/// `X Q`: `n_users x l`.
fn times_q(active: &ActiveItems, q: &[f64], l: usize, n_users: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; n_users * l];
    y.par_chunks_mut(l).enumerate().for_each(|(u, row)| {
        for &a in &active.user_rows[u] {
            let qa = &q[a as usize * l..][..l];
            row.iter_mut().zip(qa).for_each(|(y, q)| *y += q);
        }
    });
    y
}

/// `X^T Y`: `m x l`.
fn transpose_times(active: &ActiveItems, y: &[f64], l: usize) -> Vec<f64> {
    let mut z = vec![0.0f64; active.len() * l];
    z.par_chunks_mut(l).enumerate().for_each(|(a, row)| {
        for &u in &active.item_cols[a] {
            let yu = &y[u as usize * l..][..l];
            row.iter_mut().zip(yu).for_each(|(z, y)| *z += y);
        }
    });
    z
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{blocks, prepared};
    use super::*;

    #[test]
    fn singular_values_match_the_gram_matrix() {
        // X^T X's eigenvalues are the squared singular values: check against the dense solver
        let p = prepared(40, 12, &blocks(40, 12, 0.5, 7));
        let active = ActiveItems::new(&p);
        let m = active.len();
        let svd = Svd::fit(&active, 40, 4, 20, 1);
        let (eig, _) = symmetric_eigen(&active.gram(), m);
        for (k, e) in eig.iter().take(4).enumerate() {
            let want = e.sqrt();
            let got = svd.singular_values[k];
            assert!(
                (got - want).abs() < 1e-6 * want,
                "sigma {k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn rank_two_recovers_two_planted_blocks() {
        let p = prepared(60, 20, &blocks(60, 20, 0.7, 2));
        let active = ActiveItems::new(&p);
        let svd = Svd::fit(&active, 60, 2, 8, 5);
        let users: Vec<u32> = (0..60).collect();
        for (u, row) in users.iter().zip(svd.scores(&active, &users, 2, 20)) {
            let (mine, other) = if u % 2 == 0 {
                (0..10, 10..20)
            } else {
                (10..20, 0..10)
            };
            let worst_mine = mine.map(|i| row[i]).fold(f32::MAX, f32::min);
            let best_other = other.map(|i| row[i]).fold(f32::MIN, f32::max);
            assert!(worst_mine > best_other, "user {u}");
        }
        // rank 1 sees one direction only: the blocks are not separated for everyone
        let r1 = svd.scores(&active, &users, 1, 20);
        let separated = (users.iter().zip(&r1)).filter(|(u, row)| {
            let (mine, other) = if *u % 2 == 0 {
                (0..10, 10..20)
            } else {
                (10..20, 0..10)
            };
            mine.map(|i| row[i]).fold(f32::MAX, f32::min)
                > other.map(|i| row[i]).fold(f32::MIN, f32::max)
        });
        assert!(separated.count() < 60);
    }
}
