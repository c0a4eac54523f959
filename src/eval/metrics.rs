//! Ranking metrics with one held-out item per user, and the logistic CTR probe.
use std::collections::HashSet;

use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::model::Result;

/// Hit and NDCG sums over users.
#[derive(Debug, Clone, Default)]
pub struct RankSums {
    /// Users counted.
    pub users: usize,
    /// Hits in the top 10.
    pub hit10: f64,
    /// Hits in the top 20.
    pub hit20: f64,
    /// NDCG@10 sum.
    pub ndcg10: f64,
    /// Hits in the top 100.
    pub hit100: f64,
    /// Sum of the 0-based ranks (a user whose item is not retrievable is not counted here).
    pub rank_sum: f64,
}

impl RankSums {
    /// Adds one user whose held-out item has 0-based `rank` (`None` = not retrievable).
    pub fn add(&mut self, rank: Option<usize>) {
        self.users += 1;
        let Some(r) = rank else { return };
        self.rank_sum += r as f64;
        self.hit100 += (r < 100) as u8 as f64;
        self.hit10 += (r < 10) as u8 as f64;
        self.hit20 += (r < 20) as u8 as f64;
        if r < 10 {
            self.ndcg10 += 1.0 / ((r + 2) as f64).log2();
        }
    }

    /// (Recall@10, Recall@20, NDCG@10) means.
    pub fn means(&self) -> (f64, f64, f64) {
        let n = self.users.max(1) as f64;
        (self.hit10 / n, self.hit20 / n, self.ndcg10 / n)
    }
}

/// 0-based rank of `target` among `candidates` (minus `exclude`) by `scores`, ties broken by
/// item index; `None` when the target is not a candidate.
pub fn rank_of(
    target: u32,
    scores: &[f32],
    candidates: Option<&[u32]>,
    exclude: &HashSet<u32>,
) -> Option<usize> {
    let st = scores[target as usize];
    // the score comparison first: the set lookup is only needed for the few items that beat it
    let beats = |j: u32| {
        (scores[j as usize] > st || (scores[j as usize] == st && j < target))
            && !exclude.contains(&j)
    };
    match candidates {
        None => Some((0..scores.len() as u32).filter(|&j| beats(j)).count()),
        Some(c) if c.contains(&target) => Some(c.iter().filter(|&&j| beats(j)).count()),
        Some(_) => None,
    }
}

/// Cosine scores of `users` (rows `ids` of `u`, `n x d`) against all rows of `items`.
pub fn cosine_scores(u: &[f32], items: &[f32], d: usize, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
    let norm = |m: &[f32]| -> Result<Tensor> {
        let t = Tensor::from_slice(m, (m.len() / d, d), &Device::Cpu)?;
        crate::model::nn::l2n(&t)
    };
    let rows = crate::model::data::Prepared::gather(u, d, ids);
    Ok(norm(&rows)?.matmul(&norm(items)?.t()?)?.to_vec2::<f32>()?)
}

/// Logistic regression on hashed per-level (user code, item code) crosses, trained by SGD.
pub struct Probe {
    w: Vec<f32>,
    bias: f32,
    levels: usize,
    k: usize,
}

impl Probe {
    fn features(&self, uc: &[u32], ic: &[u32]) -> Vec<usize> {
        (0..self.levels)
            .map(|l| (l * self.k + uc[l] as usize) * self.k + ic[l] as usize)
            .collect()
    }

    fn logit(&self, f: &[usize]) -> f32 {
        self.bias + f.iter().map(|&j| self.w[j]).sum::<f32>()
    }

    /// Trains on labelled (user, item) pairs for a few epochs.
    pub fn train(
        samples: &[(u32, u32, f32)],
        ucodes: &[u32],
        icodes: &[u32],
        levels: usize,
        k: usize,
    ) -> Self {
        let mut p = Self {
            w: vec![0.0; levels * k * k],
            bias: 0.0,
            levels,
            k,
        };
        let lr = 0.05f32;
        for _ in 0..3 {
            for &(u, i, y) in samples {
                let f = p.features(
                    &ucodes[u as usize * levels..][..levels],
                    &icodes[i as usize * levels..][..levels],
                );
                let g = 1.0 / (1.0 + (-p.logit(&f)).exp()) - y;
                p.bias -= lr * g;
                f.iter().for_each(|&j| p.w[j] -= lr * (g + 1e-4 * p.w[j]));
            }
        }
        p
    }

    /// AUC on labelled pairs (probability a positive outscores a negative, ties count half).
    pub fn auc(&self, samples: &[(u32, u32, f32)], ucodes: &[u32], icodes: &[u32]) -> f64 {
        let l = self.levels;
        let mut scored: Vec<(f32, f32)> = samples
            .iter()
            .map(|&(u, i, y)| {
                (
                    self.logit(&self.features(
                        &ucodes[u as usize * l..][..l],
                        &icodes[i as usize * l..][..l],
                    )),
                    y,
                )
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        auc_sorted(&scored)
    }
}

fn auc_sorted(scored: &[(f32, f32)]) -> f64 {
    let (mut rank_sum, mut pos, mut i) = (0.0f64, 0usize, 0usize);
    while i < scored.len() {
        let j = (i..scored.len())
            .find(|&j| scored[j].0 != scored[i].0)
            .unwrap_or(scored.len());
        let avg_rank = (i + j + 1) as f64 / 2.0;
        let p = scored[i..j].iter().filter(|s| s.1 > 0.5).count();
        rank_sum += avg_rank * p as f64;
        pos += p;
        i = j;
    }
    let neg = scored.len() - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64
}

/// Positives with `neg_per_pos` uniformly sampled negatives each (items the user has not
/// touched according to `seen`).
pub fn with_negatives(
    pos: &[(u32, u32)],
    n_items: usize,
    neg_per_pos: usize,
    seen: &HashSet<(u32, u32)>,
    rng: &mut ChaCha8Rng,
) -> Vec<(u32, u32, f32)> {
    let mut out = Vec::with_capacity(pos.len() * (1 + neg_per_pos));
    for &(u, i) in pos {
        out.push((u, i, 1.0));
        for _ in 0..neg_per_pos {
            let j = (0..20)
                .map(|_| rng.random_range(0..n_items as u32))
                .find(|&j| !seen.contains(&(u, j)));
            if let Some(j) = j {
                out.push((u, j, 0.0));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_respect_exclusion_candidates_and_ties() {
        let scores = [0.9, 0.5, 0.5, 0.1];
        let none = HashSet::new();
        assert_eq!(
            rank_of(2, &scores, None, &none),
            Some(2),
            "tie with item 1 broken by index"
        );
        assert_eq!(rank_of(2, &scores, None, &HashSet::from([0])), Some(1));
        assert_eq!(rank_of(3, &scores, Some(&[1, 3]), &none), Some(1));
        assert_eq!(rank_of(0, &scores, Some(&[1, 3]), &none), None);
        let mut s = RankSums::default();
        s.add(Some(0));
        s.add(Some(15));
        s.add(Some(150));
        s.add(None);
        let (r10, r20, n10) = s.means();
        assert!(
            (r10 - 1.0 / 4.0).abs() < 1e-9
                && (r20 - 2.0 / 4.0).abs() < 1e-9
                && (n10 - 1.0 / 4.0).abs() < 1e-9
        );
        assert_eq!((s.hit100, s.rank_sum), (2.0, 165.0));
    }

    #[test]
    fn auc_and_probe_learn_a_planted_cross() {
        assert_eq!(auc_sorted(&[(0.1, 0.0), (0.2, 1.0)]), 1.0);
        assert_eq!(auc_sorted(&[(0.1, 1.0), (0.1, 0.0)]), 0.5);
        // users with code c like items with code c
        let ucodes: Vec<u32> = (0..20).map(|u| u % 2).collect();
        let icodes: Vec<u32> = (0..20).map(|i| i % 2).collect();
        let samples: Vec<(u32, u32, f32)> = (0..20)
            .flat_map(|u| (0..20).map(move |i| (u, i, ((u + i) % 2 == 0) as u8 as f32)))
            .collect();
        let p = Probe::train(&samples, &ucodes, &icodes, 1, 2);
        assert!(p.auc(&samples, &ucodes, &icodes) > 0.99);
    }
}
