//! Small dense `f64` linear algebra for the classical baselines: a Cholesky factorisation with
//! solve and inverse (EASE's `(X^T X + lambda I)^-1`, the orthonormalisation of the SVD's
//! subspace), and a Jacobi eigensolver for the SVD's small Rayleigh-Ritz problem.
//!
//! Matrices are row-major `n x n` slices. The loops are arranged so that the inner work is a dot
//! product of two contiguous rows ([`dot`], which the compiler vectorises) and so that a block of
//! rows stays in cache while the rows it depends on stream past once: on MovieLens-1M
//! (about 3,500 items) a factorisation and an inverse take seconds, not minutes. Rows of a block
//! are independent of each other in every parallel step, so rayon spreads them over the threads
//! the caller allows (one by default in `sidb eval`).
use rayon::prelude::*;

/// Rows handled together: their working set (`ROWS x n` doubles) stays in cache while the rows
/// they depend on stream past.
const ROWS: usize = 32;

/// Dot product. On x86-64 CPUs with AVX2 and FMA (checked at run time) a fused, 4-lane kernel
/// runs instead of the portable one: the factorisations spend nearly all their time here, and it
/// makes them about twice as fast.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features the function is compiled for (checked just above).
        return unsafe { dot_fma(a, b) };
    }
    dot_portable(a, b)
}

/// Eight independent accumulators: vectorisable, unlike a single running sum.
fn dot_portable(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = (ca.remainder().iter())
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Sixteen accumulators (four 4-lane registers) of fused multiply-adds, enough to hide their
/// latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_fma(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f64 = (ca.remainder().iter())
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] = x[k].mul_add(y[k], acc[k]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// A matrix was not positive definite: the pivot of this row was not positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NotPositiveDefinite {
    /// The row whose pivot failed.
    pub row: usize,
}

/// The lower-triangular factor `L` of a symmetric positive definite `A = L L^T`.
#[derive(Debug, Clone)]
pub struct Cholesky {
    n: usize,
    /// Row-major; entries above the diagonal are zero.
    l: Vec<f64>,
}

impl Cholesky {
    /// Factors `a` (`n x n`, row-major; only the lower triangle is read), reusing its storage.
    pub fn factor(mut a: Vec<f64>, n: usize) -> Result<Self, NotPositiveDefinite> {
        assert_eq!(a.len(), n * n, "a is n x n");
        for i0 in (0..n).step_by(ROWS) {
            let i1 = (i0 + ROWS).min(n);
            let (done, rest) = a.split_at_mut(i0 * n);
            let block = &mut rest[..(i1 - i0) * n];
            // columns left of the block depend only on finished rows: rows are independent
            block.par_chunks_mut(n).for_each(|row| {
                for j in 0..i0 {
                    let lj = &done[j * n..j * n + j + 1];
                    let s = row[j] - dot(&row[..j], &lj[..j]);
                    row[j] = s / lj[j];
                }
            });
            // the block's own triangle, in order
            for i in i0..i1 {
                let (upper, lower) = block.split_at_mut((i - i0) * n);
                let row = &mut lower[..n];
                for j in i0..i {
                    let lj = &upper[(j - i0) * n..][..n];
                    let s = row[j] - dot(&row[..j], &lj[..j]);
                    row[j] = s / lj[j];
                }
                let s = row[i] - dot(&row[..i], &row[..i]);
                if !(s > 0.0 && s.is_finite()) {
                    return Err(NotPositiveDefinite { row: i });
                }
                row[i] = s.sqrt();
            }
        }
        for i in 0..n {
            a[i * n + i + 1..(i + 1) * n].fill(0.0);
        }
        Ok(Self { n, l: a })
    }

    /// Order of the matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The factor `L`, row-major (zeros above the diagonal).
    pub fn l(&self) -> &[f64] {
        &self.l
    }

    /// Solves `A x = b` in place (forward then back substitution).
    pub fn solve(&self, b: &mut [f64]) {
        let (n, l) = (self.n, &self.l);
        for i in 0..n {
            let s = b[i] - dot(&l[i * n..i * n + i], &b[..i]);
            b[i] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            b[i] /= l[i * n + i];
            let bi = b[i];
            // column i of L above the diagonal is row i of L^T
            for (k, bk) in b[..i].iter_mut().enumerate() {
                *bk -= l[i * n + k] * bi;
            }
        }
    }

    /// `A^-1`, row-major and symmetric: `L^-T L^-1`.
    pub fn inverse(&self) -> Vec<f64> {
        let n = self.n;
        let t = self.lower_inverse_transposed();
        // P[i][j] = sum over k >= max(i, j) of M[k][i] M[k][j] = dot(T[i][i..], T[j][i..]) for j <= i
        let mut p = vec![0.0f64; n * n];
        p.par_chunks_mut(ROWS * n)
            .enumerate()
            .for_each(|(b, block)| {
                let i0 = b * ROWS;
                for j in 0..(i0 + block.len() / n) {
                    let tj = &t[j * n..(j + 1) * n];
                    for (r, row) in block.chunks_mut(n).enumerate() {
                        let i = i0 + r;
                        if j <= i {
                            row[j] = dot(&t[i * n + i..(i + 1) * n], &tj[i..]);
                        }
                    }
                }
            });
        for i in 0..n {
            for j in 0..i {
                p[j * n + i] = p[i * n + j];
            }
        }
        p
    }

    /// `T = (L^-1)^T`, row-major: row `j` of `T` is column `j` of `M = L^-1` (upper triangular).
    fn lower_inverse_transposed(&self) -> Vec<f64> {
        let (n, l) = (self.n, &self.l);
        let mut t = vec![0.0f64; n * n];
        // column j of M by forward substitution of e_j: M[i][j] = -dot(L[i][j..i], M[j..i][j]) / L[i][i];
        // a block of columns shares each streamed row of L
        t.par_chunks_mut(ROWS * n)
            .enumerate()
            .for_each(|(b, block)| {
                let j0 = b * ROWS;
                for (r, tj) in block.chunks_mut(n).enumerate() {
                    let j = j0 + r;
                    tj[j] = 1.0 / l[j * n + j];
                }
                for i in j0 + 1..n {
                    let li = &l[i * n..(i + 1) * n];
                    for (r, tj) in block.chunks_mut(n).enumerate() {
                        let j = j0 + r;
                        if j < i {
                            let s = dot(&li[j..i], &tj[j..i]);
                            tj[i] = -s / li[i];
                        }
                    }
                }
            });
        t
    }
}

/// Eigen-decomposition of a symmetric `n x n` matrix by cyclic Jacobi rotations: eigenvalues in
/// descending order and the eigenvectors as the columns of a row-major `n x n` matrix.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>();
        if off.sqrt() <= 1e-14 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| a[y * n + y].total_cmp(&a[x * n + x]));
    let values = order.iter().map(|&k| a[k * n + k]).collect();
    let mut vectors = vec![0.0f64; n * n];
    for (c, &k) in order.iter().enumerate() {
        for r in 0..n {
            vectors[r * n + c] = v[r * n + k];
        }
    }
    (values, vectors)
}

/// One Jacobi rotation zeroing `a[p][q]` (and `a[q][p]`), accumulated into `v`.
fn rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let t = if theta == 0.0 { 1.0 } else { t };
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..n {
        let (akp, akq) = (a[k * n + p], a[k * n + q]);
        a[k * n + p] = c * akp - s * akq;
        a[k * n + q] = s * akp + c * akq;
    }
    for k in 0..n {
        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
        a[p * n + k] = c * apk - s * aqk;
        a[q * n + k] = s * apk + c * aqk;
    }
    for k in 0..n {
        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = c * vkp - s * vkq;
        v[k * n + q] = s * vkp + c * vkq;
    }
}

/// Orthonormalises the `l` columns of the row-major `rows x l` matrix `z` in place by Cholesky
/// QR, twice (the second pass restores the orthogonality the first loses when `z` is badly
/// conditioned). A column that is numerically dependent on the others is kept small, not divided
/// by zero: the Gram matrix gets a ridge of `1e-12` of its mean diagonal.
pub fn orthonormalise_columns(z: &mut [f64], l: usize) {
    for _ in 0..2 {
        let mut gram = vec![0.0f64; l * l];
        for row in z.chunks(l) {
            for i in 0..l {
                let ri = row[i];
                let g = &mut gram[i * l..i * l + i + 1];
                g.iter_mut().zip(row).for_each(|(g, rj)| *g += ri * rj);
            }
        }
        let mean_diag = (0..l).map(|i| gram[i * l + i]).sum::<f64>() / l.max(1) as f64;
        (0..l).for_each(|i| gram[i * l + i] += 1e-12 * mean_diag.max(f64::MIN_POSITIVE));
        let Ok(c) = Cholesky::factor(gram, l) else {
            return;
        };
        // z <- z R^-1 with R = L^T: each row solves x L^T = row, i.e. L x = row (forward)
        let lf = c.l();
        z.par_chunks_mut(l).for_each(|row| {
            for i in 0..l {
                let s = row[i] - dot(&lf[i * l..i * l + i], &row[..i]);
                row[i] = s / lf[i * l + i];
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A random symmetric positive definite matrix `B B^T + n I`.
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = dot(&b[i * n..(i + 1) * n], &b[j * n..(j + 1) * n]);
            }
            a[i * n + i] += n as f64;
        }
        a
    }

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f64> = (0..37).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..37).map(|i| 1.0 - i as f64).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-9);
        assert!((dot_portable(&a, &b) - plain).abs() < 1e-9);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn cholesky_reproduces_the_matrix_and_solves_it() {
        // n = 70 spans several row blocks and a ragged last one
        for n in [1, 5, 32, 70] {
            let a = spd(n, n as u64);
            let c = Cholesky::factor(a.clone(), n).expect("spd");
            let l = c.l();
            for i in 0..n {
                for j in 0..n {
                    let llt = dot(&l[i * n..(i + 1) * n], &l[j * n..(j + 1) * n]);
                    assert!(
                        (llt - a[i * n + j]).abs() < 1e-9 * n as f64,
                        "n {n} ({i},{j})"
                    );
                    if j > i {
                        assert_eq!(l[i * n + j], 0.0);
                    }
                }
            }
            // the direct check: A x equals the right-hand side
            let b: Vec<f64> = (0..n).map(|i| (i as f64).sin() + 2.0).collect();
            let mut x = b.clone();
            c.solve(&mut x);
            for i in 0..n {
                let ax = dot(&a[i * n..(i + 1) * n], &x);
                assert!((ax - b[i]).abs() < 1e-9, "n {n} row {i}: {ax} vs {}", b[i]);
            }
            // and the inverse is one
            let p = c.inverse();
            let ap = matmul(&a, &p, n);
            for i in 0..n {
                for j in 0..n {
                    let want = (i == j) as u8 as f64;
                    assert!((ap[i * n + j] - want).abs() < 1e-9, "n {n} ({i},{j})");
                    assert_eq!(p[i * n + j], p[j * n + i]);
                }
            }
        }
    }

    #[test]
    fn cholesky_refuses_an_indefinite_matrix() {
        // eigenvalues 3 and -1
        let a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(
            Cholesky::factor(a, 2).unwrap_err(),
            NotPositiveDefinite { row: 1 }
        );
    }

    #[test]
    fn jacobi_finds_eigenpairs_in_descending_order() {
        let n = 12;
        let a = spd(n, 9);
        let (values, vectors) = symmetric_eigen(&a, n);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for c in 0..n {
            let v: Vec<f64> = (0..n).map(|r| vectors[r * n + c]).collect();
            assert!((dot(&v, &v) - 1.0).abs() < 1e-10);
            for i in 0..n {
                let av = dot(&a[i * n..(i + 1) * n], &v);
                assert!((av - values[c] * v[i]).abs() < 1e-8, "pair {c} row {i}");
            }
        }
    }

    #[test]
    fn orthonormalised_columns_span_the_same_space() {
        let (rows, l) = (50, 6);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let z0: Vec<f64> = (0..rows * l).map(|_| rng.random_range(-1.0..1.0)).collect();
        // badly conditioned: scale the columns over 8 orders of magnitude
        let mut z: Vec<f64> = (z0.iter().enumerate())
            .map(|(k, v)| v * 10f64.powi(-((k % l) as i32) * 3 / 2))
            .collect();
        let z_orig = z.clone();
        orthonormalise_columns(&mut z, l);
        for a in 0..l {
            for b in 0..l {
                let g: f64 = (0..rows).map(|r| z[r * l + a] * z[r * l + b]).sum();
                assert!((g - (a == b) as u8 as f64).abs() < 1e-10, "({a},{b}) {g}");
            }
        }
        // each original column is a combination of the new ones: its projection is itself
        for a in 0..l {
            let col: Vec<f64> = (0..rows).map(|r| z_orig[r * l + a]).collect();
            let mut proj = vec![0.0; rows];
            for b in 0..l {
                let qb: Vec<f64> = (0..rows).map(|r| z[r * l + b]).collect();
                let c = dot(&qb, &col);
                proj.iter_mut().zip(&qb).for_each(|(p, q)| *p += c * q);
            }
            let err: f64 = proj.iter().zip(&col).map(|(p, c)| (p - c).abs()).sum();
            let size: f64 = col.iter().map(|c| c.abs()).sum();
            assert!(err < 1e-8 * size, "column {a}");
        }
    }
}
