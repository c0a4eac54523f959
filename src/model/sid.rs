//! SID bookkeeping: dedup suffixes for identical code tuples and the SID quality report.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Dedup suffix per entity: 0 for the first entity (in index order) holding its code tuple, 1
/// for the second, and so on. Stable: depends only on the codes and the entity order.
pub fn dedup_suffixes(codes: &[u32], levels: usize) -> Vec<u32> {
    let mut seen: HashMap<&[u32], u32> = HashMap::new();
    codes
        .chunks(levels)
        .map(|t| {
            let c = seen.entry(t).or_insert(0);
            *c += 1;
            *c - 1
        })
        .collect()
}

/// Usage statistics of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelQuality {
    /// Distinct codes used.
    pub used: usize,
    /// Codes available (K).
    pub codes: usize,
    /// `used / codes`.
    pub usage: f64,
    /// Perplexity `exp(entropy)` of the code distribution (K = perfectly uniform).
    pub perplexity: f64,
    /// Codes never used (`codes - used`).
    pub dead: usize,
}

/// Quality of a set of SIDs (the metrics of docs/model.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Entities measured.
    pub entities: usize,
    /// Per level statistics.
    pub levels: Vec<LevelQuality>,
    /// Share of entities whose full code tuple is also held by an earlier entity (they need a
    /// non-zero suffix).
    pub collision_rate: f64,
    /// Entities in the largest bucket of identical tuples.
    pub largest_bucket: usize,
    /// Reconstruction R^2 of the inputs, when measured.
    pub recon_r2: Option<f64>,
}

/// Builds the report for `codes` (`n x levels`, K codes per level).
pub fn quality(codes: &[u32], levels: usize, k: usize, recon_r2: Option<f64>) -> QualityReport {
    let n = codes.len() / levels.max(1);
    let levels_q = (0..levels)
        .map(|l| level_quality(codes.chunks(levels).map(|t| t[l]), k, n))
        .collect();
    let mut buckets: HashMap<&[u32], usize> = HashMap::new();
    for t in codes.chunks(levels) {
        *buckets.entry(t).or_default() += 1;
    }
    QualityReport {
        entities: n,
        levels: levels_q,
        collision_rate: (n - buckets.len()) as f64 / n.max(1) as f64,
        largest_bucket: buckets.values().copied().max().unwrap_or(0),
        recon_r2,
    }
}

fn level_quality(codes: impl Iterator<Item = u32>, k: usize, n: usize) -> LevelQuality {
    let mut counts = vec![0usize; k];
    for c in codes {
        counts[(c as usize).min(k - 1)] += 1;
    }
    let used = counts.iter().filter(|&&c| c > 0).count();
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum();
    LevelQuality {
        used,
        codes: k,
        usage: used as f64 / k as f64,
        perplexity: entropy.exp(),
        dead: k - used,
    }
}

/// `1 - SSE / SST` of a reconstruction `y` of `x` (both `n x d`, SST around the column means).
pub fn r2(x: &[f32], y: &[f32], d: usize) -> f64 {
    let n = (x.len() / d).max(1);
    let mut mean = vec![0.0f64; d];
    for row in x.chunks(d) {
        row.iter()
            .zip(&mut mean)
            .for_each(|(v, m)| *m += *v as f64 / n as f64);
    }
    let sse: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let sst: f64 = x
        .chunks(d)
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| (*v as f64 - m).powi(2)))
        .sum();
    1.0 - sse / sst.max(1e-12)
}

/// Churn between two versions' SIDs over the same entities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// Share of entities whose level-1 code changed.
    pub level1: f64,
    /// Share of entities whose full code tuple changed.
    pub full: f64,
    /// Per level `l`: share of entities whose code prefix of length `l + 1` changed (the first
    /// is `level1`, the last `full`).
    pub per_level: Vec<f64>,
}

/// Churn of `new` against `old` (both `n x levels`, same entity order).
pub fn churn(old: &[u32], new: &[u32], levels: usize) -> Churn {
    let n = (old.len() / levels.max(1)).max(1) as f64;
    let per_level: Vec<f64> = (1..=levels)
        .map(|len| {
            let changed = old
                .chunks(levels)
                .zip(new.chunks(levels))
                .filter(|(a, b)| a[..len] != b[..len])
                .count();
            changed as f64 / n
        })
        .collect();
    Churn {
        level1: per_level.first().copied().unwrap_or(0.0),
        full: per_level.last().copied().unwrap_or(0.0),
        per_level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_stable_counters() {
        let codes = [1, 2, 3, 1, 2, 3, 0, 0, 0, 1, 2, 3];
        assert_eq!(dedup_suffixes(&codes, 3), vec![0, 1, 0, 2]);
    }

    #[test]
    fn quality_counts_usage_collisions_and_perplexity() {
        let codes = [0, 0, 1, 0, 0, 0, 1, 1];
        let q = quality(&codes, 2, 4, None);
        assert_eq!(q.levels[0].used, 2);
        assert_eq!(q.levels[0].dead, 2);
        assert!(
            (q.levels[0].perplexity - 2.0).abs() < 1e-9,
            "two codes, uniform"
        );
        assert_eq!(q.largest_bucket, 2);
        assert!((q.collision_rate - 0.25).abs() < 1e-9);
        let c = churn(&codes, &[0, 0, 1, 1, 0, 0, 0, 1], 2);
        assert_eq!((c.level1, c.full), (0.25, 0.5));
        assert!((r2(&[0.0, 2.0], &[0.0, 2.0], 1) - 1.0).abs() < 1e-12);
    }
}
