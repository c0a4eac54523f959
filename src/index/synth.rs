//! Seeded synthetic vectors for tests, benches and the comparison harness.
//!
//! Clustered data (Gaussian blobs around uniform centres) is what embeddings look like to an ANN
//! index; pure uniform noise is a worst case that says little (recall collapses on it for every
//! graph index), so recall is measured on clusters.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` vectors of `dim` floats, row-major, drawn around `clusters` centres with per-coordinate
/// standard deviation `spread` (centres are uniform in [-1, 1]).
pub fn clustered(n: usize, dim: usize, clusters: usize, spread: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..clusters.max(1) * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.random_range(0..clusters.max(1));
        for j in 0..dim {
            out.push(centres[c * dim + j] + spread * gaussian(&mut rng));
        }
    }
    out
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_seed_same_data() {
        assert_eq!(
            super::clustered(10, 4, 3, 0.1, 7),
            super::clustered(10, 4, 3, 0.1, 7)
        );
        assert_ne!(
            super::clustered(10, 4, 3, 0.1, 7),
            super::clustered(10, 4, 3, 0.1, 8)
        );
    }
}
