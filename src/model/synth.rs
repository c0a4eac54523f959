//! Seeded synthetic data with planted structure, for tests and benches.
//!
//! Items belong to a content cluster and, independently, to a behaviour group. The embedding is
//! dominated by the content cluster; the behaviour group adds a weaker direction. Users belong to
//! one behaviour group and interact only with items of that group. So content clusters disagree
//! with behaviour groups, and a quantizer of the embedding alone puts content first, while an
//! aligned quantizer should put behaviour first: exactly what DAS has to show.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::DasConfig;
use super::data::{Interaction, TrainingData};

/// A model small enough to train on these data sets in well under a second per 100 steps: two
/// levels of 8 codes, 16-d codes and ID vectors, one hidden layer of 32, batches of 64 and 100
/// steps (20 of warm-up, 20 of ramp). Tests change what they need.
pub fn small_config() -> DasConfig {
    DasConfig {
        levels: 2,
        codes: Some(8),
        code_dim: 16,
        id_dim: 16,
        hidden: vec![32],
        batch: 64,
        sem_uniform: 32,
        steps: 100,
        warmup_steps: 20,
        ramp_steps: 20,
        kmeans_iters: 5,
        ..DasConfig::default()
    }
}

/// Shape of a synthetic data set.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Items.
    pub n_items: usize,
    /// Users.
    pub n_users: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Content clusters (dominant in the embedding).
    pub content_clusters: usize,
    /// Behaviour groups (weak in the embedding, decisive in the log).
    pub behaviour_groups: usize,
    /// Interactions per user.
    pub per_user: usize,
    /// Scale of the behaviour direction relative to the content direction (1.0).
    pub behaviour_scale: f32,
    /// Noise scale.
    pub noise: f32,
    /// Seed.
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            n_items: 512,
            n_users: 256,
            dim: 16,
            content_clusters: 8,
            behaviour_groups: 4,
            per_user: 24,
            behaviour_scale: 0.5,
            noise: 0.15,
            seed: 7,
        }
    }
}

/// A synthetic data set with its planted labels.
#[derive(Debug, Clone)]
pub struct Synth {
    /// The data to train on.
    pub data: TrainingData,
    /// Content cluster of each item.
    pub item_content: Vec<usize>,
    /// Behaviour group of each item.
    pub item_group: Vec<usize>,
    /// Behaviour group of each user.
    pub user_group: Vec<usize>,
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller: keeps the dependency list to rand alone.
    let u1: f32 = rng.random_range(1e-7..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn centroids(rng: &mut ChaCha8Rng, n: usize, dim: usize, scale: f32) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| (0..dim).map(|_| gaussian(rng) * scale).collect())
        .collect()
}

/// Generates the data set described by `spec` (deterministic in `spec.seed`).
pub fn generate(spec: &SynthSpec) -> Synth {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let content = centroids(&mut rng, spec.content_clusters, spec.dim, 1.0);
    let behaviour = centroids(
        &mut rng,
        spec.behaviour_groups,
        spec.dim,
        spec.behaviour_scale,
    );
    let item_content: Vec<usize> = (0..spec.n_items)
        .map(|i| i % spec.content_clusters)
        .collect();
    let item_group: Vec<usize> = (0..spec.n_items)
        .map(|i| (i / spec.content_clusters) % spec.behaviour_groups)
        .collect();
    let mut item_emb = Vec::with_capacity(spec.n_items * spec.dim);
    for i in 0..spec.n_items {
        for d in 0..spec.dim {
            let v = content[item_content[i]][d] + behaviour[item_group[i]][d];
            item_emb.push(v + gaussian(&mut rng) * spec.noise);
        }
    }
    let user_group: Vec<usize> = (0..spec.n_users)
        .map(|u| u % spec.behaviour_groups)
        .collect();
    let by_group: Vec<Vec<u32>> = (0..spec.behaviour_groups)
        .map(|g| {
            (0..spec.n_items as u32)
                .filter(|&i| item_group[i as usize] == g)
                .collect()
        })
        .collect();
    let mut interactions = Vec::new();
    for (u, &g) in user_group.iter().enumerate() {
        for k in 0..spec.per_user {
            let item = by_group[g][rng.random_range(0..by_group[g].len())];
            interactions.push(Interaction {
                user: u as u32,
                item,
                weight: 1.0,
                ts_ms: k as i64 * 1000,
            });
        }
    }
    let data = TrainingData {
        item_emb,
        item_dim: spec.dim,
        user_emb: None,
        user_dim: 0,
        interactions,
        n_users: spec.n_users,
    };
    Synth {
        data,
        item_content,
        item_group,
        user_group,
    }
}

/// Purity of `labels` within the buckets given by `codes`: the share of entities whose label is
/// the majority label of their bucket (1.0 = buckets never mix labels).
pub fn purity(codes: &[u32], labels: &[usize]) -> f64 {
    let mut counts: std::collections::BTreeMap<(u32, usize), usize> = Default::default();
    for (&c, &l) in codes.iter().zip(labels) {
        *counts.entry((c, l)).or_default() += 1;
    }
    let mut best: std::collections::BTreeMap<u32, usize> = Default::default();
    for (&(c, _), &n) in &counts {
        let b = best.entry(c).or_default();
        *b = (*b).max(n);
    }
    best.values().sum::<usize>() as f64 / codes.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_valid() {
        let a = generate(&SynthSpec::default());
        let b = generate(&SynthSpec::default());
        assert_eq!(a.data.item_emb, b.data.item_emb);
        assert_eq!(a.data.interactions, b.data.interactions);
        a.data.validate().expect("synthetic data is valid");
    }

    #[test]
    fn purity_counts_majorities() {
        assert_eq!(purity(&[0, 0, 1, 1], &[0, 0, 1, 1]), 1.0);
        assert_eq!(purity(&[0, 0, 0, 0], &[0, 1, 0, 1]), 0.5);
    }
}
