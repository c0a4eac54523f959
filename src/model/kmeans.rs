//! k-means with candle: k-means++ seeding from a seeded RNG, Lloyd iterations whose assignment
//! step is one matmul + argmin, and residual k-means (RQ-KMeans) level by level.
//!
//! Used to initialise RQ-VAE codebooks (the first guard against codebook collapse) and as the
//! network-free RQ-KMeans baseline.
use candle_core::{Device, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Result;

/// Squared distances `n x k` between rows of `x` (`n x d`) and `c` (`k x d`).
pub fn sq_dists(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    let xx = x.sqr()?.sum_keepdim(1)?;
    let cc = c.sqr()?.sum_keepdim(1)?.t()?;
    let xc = x.matmul(&c.t()?)?;
    Ok(xc
        .affine(-2.0, 0.0)?
        .broadcast_add(&xx)?
        .broadcast_add(&cc)?)
}

/// Index of the nearest centroid for each row of `x`.
pub fn assign(x: &Tensor, c: &Tensor) -> Result<Vec<u32>> {
    Ok(sq_dists(x, c)?.argmin(D::Minus1)?.to_vec1::<u32>()?)
}

/// Squared distance of two equally long rows.
pub fn row_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means++ seeding: each next centroid drawn with probability proportional to the squared
/// distance to the nearest centroid chosen so far. Fewer distinct points than `k` leaves some
/// centroids duplicated (they become dead codes that re-seeding later fixes).
pub fn kmeans_pp(x: &[f32], d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = x.len() / d;
    let mut cents = Vec::with_capacity(k * d);
    let first = rng.random_range(0..n);
    cents.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut best: Vec<f32> = (0..n)
        .map(|i| row_dist(&x[i * d..(i + 1) * d], &cents[..d]))
        .collect();
    for _ in 1..k {
        let total: f64 = best.iter().map(|&v| v as f64).sum();
        let pick = if total <= 0.0 {
            rng.random_range(0..n)
        } else {
            let mut t = rng.random_range(0.0..total);
            best.iter()
                .position(|&v| {
                    t -= v as f64;
                    t < 0.0
                })
                .unwrap_or(n - 1)
        };
        let c = x[pick * d..(pick + 1) * d].to_vec();
        for (i, b) in best.iter_mut().enumerate() {
            *b = b.min(row_dist(&x[i * d..(i + 1) * d], &c));
        }
        cents.extend_from_slice(&c);
    }
    cents
}

/// Lloyd iterations from `init` (`k x d`); returns the centroids. An empty cluster takes the
/// point currently farthest from its centroid, so no code is wasted.
pub fn lloyd(x: &[f32], d: usize, init: Vec<f32>, iters: usize) -> Result<Vec<f32>> {
    let (n, k) = (x.len() / d, init.len() / d);
    let xt = Tensor::from_slice(x, (n, d), &Device::Cpu)?;
    let mut cents = init;
    for _ in 0..iters {
        let ct = Tensor::from_slice(&cents, (k, d), &Device::Cpu)?;
        let dists = sq_dists(&xt, &ct)?;
        let idx = dists.argmin(D::Minus1)?.to_vec1::<u32>()?;
        let mind = dists.min(D::Minus1)?.to_vec1::<f32>()?;
        let (sums, counts) = cluster_sums(x, d, k, &idx);
        let mut far: Vec<usize> = (0..n).collect();
        far.sort_by(|&a, &b| mind[b].total_cmp(&mind[a]).then(a.cmp(&b)));
        let mut far = far.into_iter();
        for c in 0..k {
            let row = &mut cents[c * d..(c + 1) * d];
            if counts[c] > 0 {
                row.iter_mut()
                    .zip(&sums[c * d..(c + 1) * d])
                    .for_each(|(r, s)| *r = s / counts[c] as f32);
            } else if let Some(p) = far.next() {
                row.copy_from_slice(&x[p * d..(p + 1) * d]);
            }
        }
    }
    Ok(cents)
}

fn cluster_sums(x: &[f32], d: usize, k: usize, idx: &[u32]) -> (Vec<f32>, Vec<usize>) {
    let mut sums = vec![0.0f32; k * d];
    let mut counts = vec![0usize; k];
    for (i, &c) in idx.iter().enumerate() {
        let c = c as usize;
        counts[c] += 1;
        sums[c * d..(c + 1) * d]
            .iter_mut()
            .zip(&x[i * d..(i + 1) * d])
            .for_each(|(s, v)| *s += v);
    }
    (sums, counts)
}

/// k-means++ then Lloyd: `k x d` centroids of the rows of `x`.
pub fn kmeans(
    x: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let init = kmeans_pp(x, d, k, rng);
    lloyd(x, d, init, iters)
}

/// Residual k-means: level by level, cluster the residuals and subtract the chosen centroid.
/// Returns one `k x d` codebook per level.
pub fn residual_kmeans(
    x: &[f32],
    d: usize,
    levels: usize,
    k: usize,
    iters: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<f32>>> {
    let mut r = x.to_vec();
    let mut books = Vec::with_capacity(levels);
    for _ in 0..levels {
        let cents = kmeans(&r, d, k, iters, rng)?;
        subtract_nearest(&mut r, d, &cents)?;
        books.push(cents);
    }
    Ok(books)
}

/// Residual k-means started from `init` (one `k x d` codebook per level, e.g. the previous
/// version's) instead of k-means++: Lloyd from each level's given centroids, so a refit of
/// similar data keeps the codes where they were.
pub fn residual_kmeans_from(
    x: &[f32],
    d: usize,
    init: &[Vec<f32>],
    iters: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut r = x.to_vec();
    let mut books = Vec::with_capacity(init.len());
    for start in init {
        let cents = lloyd(&r, d, start.clone(), iters)?;
        subtract_nearest(&mut r, d, &cents)?;
        books.push(cents);
    }
    Ok(books)
}

/// Replaces every row of `r` by its residual against its nearest centroid of `cents`.
fn subtract_nearest(r: &mut [f32], d: usize, cents: &[f32]) -> Result<()> {
    let rt = Tensor::from_slice(r, (r.len() / d, d), &Device::Cpu)?;
    let ct = Tensor::from_slice(cents, (cents.len() / d, d), &Device::Cpu)?;
    for (i, &c) in assign(&rt, &ct)?.iter().enumerate() {
        let c = c as usize;
        r[i * d..(i + 1) * d]
            .iter_mut()
            .zip(&cents[c * d..(c + 1) * d])
            .for_each(|(v, e)| *v -= e);
    }
    Ok(())
}

/// Greedy residual quantization of `x` (`n x d`) with `books`: codes `n x levels` and the
/// quantized vectors (sum of chosen codewords), both row-major.
pub fn quantize(x: &[f32], d: usize, books: &[Vec<f32>]) -> Result<(Vec<u32>, Vec<f32>)> {
    let n = x.len() / d;
    let mut r = x.to_vec();
    let mut z = vec![0.0f32; n * d];
    let mut codes = vec![0u32; n * books.len()];
    for (l, b) in books.iter().enumerate() {
        let rt = Tensor::from_slice(&r, (n, d), &Device::Cpu)?;
        let idx = assign(&rt, &Tensor::from_slice(b, (b.len() / d, d), &Device::Cpu)?)?;
        for (i, &c) in idx.iter().enumerate() {
            codes[i * books.len() + l] = c;
            let e = &b[c as usize * d..(c as usize + 1) * d];
            for j in 0..d {
                r[i * d + j] -= e[j];
                z[i * d + j] += e[j];
            }
        }
    }
    Ok((codes, z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn blobs() -> (Vec<f32>, usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let centres = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        let x = (0..400)
            .flat_map(|i| {
                let c = centres[i % 4];
                [
                    c[0] + rng.random_range(-1.0..1.0),
                    c[1] + rng.random_range(-1.0..1.0),
                ]
            })
            .collect();
        (x, 2)
    }

    #[test]
    fn kmeans_finds_planted_blobs() {
        let (x, d) = blobs();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = kmeans(&x, d, 4, 10, &mut rng).expect("kmeans");
        let xt = Tensor::from_slice(&x, (400, 2), &Device::Cpu).expect("tensor");
        let idx = assign(
            &xt,
            &Tensor::from_slice(&c, (4, 2), &Device::Cpu).expect("t"),
        )
        .expect("assign");
        // every blob maps to one distinct cluster
        let mut seen: Vec<u32> = (0..4).map(|b| idx[b]).collect();
        assert!((0..400).all(|i| idx[i] == idx[i % 4]));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn kmeans_is_deterministic_and_handles_fewer_points_than_k() {
        let (x, d) = blobs();
        let a = kmeans(&x, d, 8, 5, &mut ChaCha8Rng::seed_from_u64(9)).expect("kmeans");
        let b = kmeans(&x, d, 8, 5, &mut ChaCha8Rng::seed_from_u64(9)).expect("kmeans");
        assert_eq!(a, b);
        let few = kmeans(&x[..6], d, 8, 3, &mut ChaCha8Rng::seed_from_u64(9)).expect("tiny");
        assert_eq!(few.len(), 16);
        assert!(few.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn residual_levels_reduce_error() {
        let (x, d) = blobs();
        let books =
            residual_kmeans(&x, d, 2, 4, 10, &mut ChaCha8Rng::seed_from_u64(2)).expect("rq");
        let err = |z: &[f32]| x.iter().zip(z).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
        let (_, z1) = quantize(&x, d, &books[..1]).expect("q1");
        let (codes, z2) = quantize(&x, d, &books).expect("q2");
        assert_eq!(codes.len(), 800);
        assert!(err(&z2) < err(&z1));
    }
}
