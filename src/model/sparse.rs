//! ID embedding tables with a row-wise lazy Adam.
//!
//! A table can have millions of rows; a dense optimiser would touch (and decay the moments of)
//! every row on every step. Here a batch gathers only its unique rows into a fresh `Var`, the
//! loss's gradient for that `Var` comes back, and Adam updates exactly those rows. Each row keeps
//! its own step count, so bias correction is right for rows that are seen rarely ("lazy Adam").
use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Result;

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// A row-major `n x dim` table with per-row Adam state.
#[derive(Debug, Clone)]
pub struct IdTable {
    /// Row dimension.
    pub dim: usize,
    /// Row-major values.
    pub data: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    steps: Vec<u32>,
}

/// The rows of one batch, gathered for autograd.
#[derive(Debug)]
pub struct Gathered {
    /// Unique row ids, ascending.
    pub ids: Vec<u32>,
    /// The unique rows as a trainable leaf (`ids.len() x dim`).
    pub var: Var,
    /// One row per batch position (`index_select` of `var`, so gradients accumulate per row).
    pub rows: Tensor,
}

impl IdTable {
    /// A table of `n` rows initialised uniformly in `[-scale, scale]`.
    pub fn new(n: usize, dim: usize, scale: f32, rng: &mut ChaCha8Rng) -> Self {
        let data = (0..n * dim)
            .map(|_| rng.random_range(-scale..=scale))
            .collect();
        Self {
            dim,
            data,
            m: vec![0.0; n * dim],
            v: vec![0.0; n * dim],
            steps: vec![0; n],
        }
    }

    /// Rebuilds a table from saved values (optimiser state starts fresh).
    pub fn from_data(data: Vec<f32>, dim: usize) -> Self {
        let n = data.len() / dim;
        Self {
            dim,
            m: vec![0.0; n * dim],
            v: vec![0.0; n * dim],
            steps: vec![0; n],
            data,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Gathers the rows for batch positions `batch` (ids may repeat).
    pub fn gather(&self, batch: &[u32]) -> Result<Gathered> {
        let mut slot: BTreeMap<u32, u32> = BTreeMap::new();
        for &id in batch {
            let next = slot.len() as u32;
            slot.entry(id).or_insert(next);
        }
        // BTreeMap iteration is ascending: renumber so slots follow the sorted ids.
        let ids: Vec<u32> = slot.keys().copied().collect();
        let order: BTreeMap<u32, u32> = ids
            .iter()
            .enumerate()
            .map(|(k, &id)| (id, k as u32))
            .collect();
        let mut vals = Vec::with_capacity(ids.len() * self.dim);
        for &id in &ids {
            vals.extend_from_slice(self.row(id as usize));
        }
        let var = Var::from_vec(vals, (ids.len(), self.dim), &Device::Cpu)?;
        let pos: Vec<u32> = batch.iter().map(|id| order[id]).collect();
        let pos = Tensor::from_vec(pos, batch.len(), &Device::Cpu)?;
        let rows = var.as_tensor().index_select(&pos, 0)?;
        Ok(Gathered { ids, var, rows })
    }

    /// One Adam step on the rows `ids` with gradient `grad` (`ids.len() x dim`).
    pub fn adam_step(&mut self, ids: &[u32], grad: &Tensor, lr: f32) -> Result<()> {
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let d = self.dim;
        for (k, &id) in ids.iter().enumerate() {
            let id = id as usize;
            self.steps[id] += 1;
            let t = self.steps[id] as i32;
            let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
            for j in 0..d {
                let (p, gj) = (id * d + j, g[k * d + j]);
                self.m[p] = BETA1 * self.m[p] + (1.0 - BETA1) * gj;
                self.v[p] = BETA2 * self.v[p] + (1.0 - BETA2) * gj * gj;
                self.data[p] -= lr * (self.m[p] / c1) / ((self.v[p] / c2).sqrt() + EPS);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn only_batch_rows_move_and_repeats_accumulate() {
        let mut t = IdTable::new(6, 3, 0.1, &mut ChaCha8Rng::seed_from_u64(1));
        let before = t.data.clone();
        let g = t.gather(&[4, 1, 4]).expect("gather");
        assert_eq!(g.ids, vec![1, 4]);
        // loss = sum of all batch rows: row 4 appears twice, so its gradient is 2
        let loss = g.rows.sum_all().expect("sum");
        let grads = loss.backward().expect("backward");
        let grad = grads.get(g.var.as_tensor()).expect("grad exists");
        assert_eq!(
            grad.to_vec2::<f32>().expect("vec"),
            vec![vec![1.0; 3], vec![2.0; 3]]
        );
        t.adam_step(&g.ids, grad, 0.01).expect("step");
        for r in 0..6 {
            let moved = t.row(r) != &before[r * 3..r * 3 + 3];
            assert_eq!(moved, r == 1 || r == 4, "row {r}");
        }
        // Adam's first step moves by lr in the direction opposite to the gradient
        assert!((before[12] - t.data[12] - 0.01).abs() < 1e-5);
    }
}
