//! ICDM: the ID-based collaborative model with popularity debiasing.
//!
//! Each user has an interest vector `u_int` and a conformity vector `u_con`; each item a property
//! vector `i_pro` and a popularity vector `i_pop`. The fused vectors `u = MLP([u_int, u_con])`,
//! `i = MLP([i_pro, i_pop])` must explain the log (CF loss); the debiased pair `u_int . i_pro` must
//! too (second CF loss), while `u_con` / `i_pop` are pulled towards targets computed from
//! popularity statistics and kept orthogonal to `u_int` / `i_pro`. So popularity has a place to go
//! that is not the debiased vectors, which are the ones MDAM aligns the codes with.
//!
//! Scores are cosine / `tau_cf`. The CF loss is an in-batch softmax over the batch's items; the
//! logQ correction subtracts `log p(item)` from each logit, because in-batch negatives are drawn
//! in proportion to popularity. With explicit negatives in the log, a BCE term is added.
use candle_core::{backprop::GradStore, Device, Tensor};
use rand_chacha::ChaCha8Rng;

use super::config::DasConfig;
use super::data::Prepared;
use super::nn::{l2n, Mlp, Params};
use super::ops::masked_lse;
use super::sparse::{Gathered, IdTable};
use super::Result;

/// The ICDM parameters: four ID tables (row-wise Adam) and four small MLPs (in [`Params`]).
#[derive(Debug, Clone)]
pub struct Icdm {
    /// User interest vectors.
    pub u_int: IdTable,
    /// User conformity vectors.
    pub u_con: IdTable,
    /// Item property vectors.
    pub i_pro: IdTable,
    /// Item popularity vectors.
    pub i_pop: IdTable,
    fuse_u: Mlp,
    fuse_i: Mlp,
    bias_u: Mlp,
    bias_i: Mlp,
    log_pop: Vec<f32>,
}

/// One batch through ICDM.
#[derive(Debug)]
pub struct IcdmOut {
    /// Gathered rows of u_int, u_con, i_pro, i_pop (for the sparse update).
    pub gathered: [Gathered; 4],
    /// Total ICDM loss (CF full + CF debiased + bias + orthogonality), unweighted by alpha.
    pub loss: Tensor,
    /// `u_int` rows of the batch's positive pairs (`B x d`).
    pub u_int: Tensor,
    /// `i_pro` rows of the batch's positive pairs.
    pub i_pro: Tensor,
    /// Fused user vectors of the batch.
    pub u_full: Tensor,
    /// Fused item vectors of the batch.
    pub i_full: Tensor,
}

fn scalar(v: f32) -> Result<Tensor> {
    Ok(Tensor::new(v, &Device::Cpu)?)
}

/// `ln(count / total)` per entity: the log of the probability that a row sampled uniformly from
/// the positives holds it, the logQ correction of an in-batch softmax (a count of 0 is taken as
/// 1: such entities are never sampled).
pub fn log_share(counts: impl Iterator<Item = f32>) -> Vec<f32> {
    let c: Vec<f32> = counts.collect();
    let total = c.iter().sum::<f32>().max(1.0);
    c.iter().map(|&v| (v.max(1.0) / total).ln()).collect()
}

/// Row-wise cosine of two `B x d` tensors.
pub fn row_cos(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((l2n(a)? * l2n(b)?)?.sum(1)?)
}

/// In-batch softmax CF loss: user row `k` must pick item column `k`; columns with the same item
/// id are masked; `log_q` (per column) is subtracted when given. Computed as log-sum-exp minus
/// the row-wise positive logit (no `B x B` one-hot product).
pub fn sampled_softmax(
    u: &Tensor,
    i: &Tensor,
    items: &[u32],
    log_q: Option<&Tensor>,
    tau: f64,
) -> Result<Tensor> {
    let b = items.len();
    let (un, inn) = (l2n(u)?, l2n(i)?);
    let mut pos = (&un * &inn)?.sum(1)?.affine(1.0 / tau, 0.0)?;
    let mut bias = None;
    if let Some(q) = log_q {
        pos = (pos - q)?;
        bias = Some(q.neg()?.to_vec1::<f32>()?);
    }
    let mut mask = vec![false; b * b];
    for r in 0..b {
        for c in 0..b {
            mask[r * b + c] = r != c && items[r] == items[c];
        }
    }
    let lse = masked_lse(&un.matmul(&inn.t()?)?, 1.0 / tau, bias, mask)?;
    Ok((lse - pos)?.mean(0)?)
}

/// Numerically stable softplus `log(1 + e^x)`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let e = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((x.relu()? + e)?)
}

/// BCE on cosine scores: positives `(up, ip)` labelled 1, negatives `(un, in_)` labelled 0.
pub fn bce(up: &Tensor, ip: &Tensor, un: &Tensor, in_: &Tensor, tau: f64) -> Result<Tensor> {
    let sp = (row_cos(up, ip)? / tau)?;
    let sn = (row_cos(un, in_)? / tau)?;
    Ok((softplus(&sp.neg()?)?.mean(0)? + softplus(&sn)?.mean(0)?)?)
}

impl Icdm {
    /// Creates tables for `prep`'s users and items and the MLPs (seeded).
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        n_users: usize,
        item_count: &[f32],
        cfg: &DasConfig,
    ) -> Result<Self> {
        let (d, s, n_items) = (cfg.id_dim, 0.1, item_count.len());
        Ok(Self {
            u_int: IdTable::new(n_users, d, s, rng),
            u_con: IdTable::new(n_users, d, s, rng),
            i_pro: IdTable::new(n_items, d, s, rng),
            i_pop: IdTable::new(n_items, d, s, rng),
            fuse_u: Mlp::new(p, rng, "icdm.fuse_u", &[2 * d, d, d])?,
            fuse_i: Mlp::new(p, rng, "icdm.fuse_i", &[2 * d, d, d])?,
            bias_u: Mlp::new(p, rng, "icdm.bias_u", &[2, cfg.bias_hidden, d])?,
            bias_i: Mlp::new(p, rng, "icdm.bias_i", &[3, cfg.bias_hidden, d])?,
            log_pop: log_share(item_count.iter().copied()),
        })
    }

    /// Forward pass for positive pairs `(users[k], items[k])` plus optional explicit negatives
    /// (appended to the gather so their rows get gradients too).
    pub fn forward(
        &self,
        prep: &Prepared,
        users: &[u32],
        items: &[u32],
        neg: &[(u32, u32)],
        cfg: &DasConfig,
    ) -> Result<IcdmOut> {
        let b = users.len();
        let all_u: Vec<u32> = users
            .iter()
            .copied()
            .chain(neg.iter().map(|n| n.0))
            .collect();
        let all_i: Vec<u32> = items
            .iter()
            .copied()
            .chain(neg.iter().map(|n| n.1))
            .collect();
        let g = [
            self.u_int.gather(&all_u)?,
            self.u_con.gather(&all_u)?,
            self.i_pro.gather(&all_i)?,
            self.i_pop.gather(&all_i)?,
        ];
        let u_full_all = self
            .fuse_u
            .forward(&Tensor::cat(&[&g[0].rows, &g[1].rows], 1)?)?;
        let i_full_all = self
            .fuse_i
            .forward(&Tensor::cat(&[&g[2].rows, &g[3].rows], 1)?)?;
        let pos = |t: &Tensor| t.narrow(0, 0, b);
        let (u_int, u_con, i_pro, i_pop) = (
            pos(&g[0].rows)?,
            pos(&g[1].rows)?,
            pos(&g[2].rows)?,
            pos(&g[3].rows)?,
        );
        let (u_full, i_full) = (pos(&u_full_all)?, pos(&i_full_all)?);
        let lq: Vec<f32> = items.iter().map(|&i| self.log_pop[i as usize]).collect();
        let lq = Tensor::from_vec(lq, b, &Device::Cpu)?;
        let lq = cfg.logq_correction.then_some(&lq);
        let mut loss = sampled_softmax(&u_full, &i_full, items, lq, cfg.tau_cf)?;
        if !neg.is_empty() {
            let negs = |t: &Tensor| t.narrow(0, b, neg.len());
            loss = (loss
                + bce(
                    &u_full,
                    &i_full,
                    &negs(&u_full_all)?,
                    &negs(&i_full_all)?,
                    cfg.tau_cf,
                )?)?;
        }
        if cfg.debias {
            loss = (loss + sampled_softmax(&u_int, &i_pro, items, lq, cfg.tau_cf)?)?;
            loss = (loss + self.bias_terms(prep, users, items, (&u_con, &i_pop), cfg)?)?;
            loss = (loss
                + self
                    .orth_terms((&u_int, &u_con), (&i_pro, &i_pop))?
                    .affine(cfg.w_orth, 0.0)?)?;
        }
        Ok(IcdmOut {
            gathered: g,
            loss,
            u_int,
            i_pro,
            u_full,
            i_full,
        })
    }

    /// `w_bias * [(1 - cos(u_con, target_u)) + (1 - cos(i_pop, target_i))]`, batch means.
    fn bias_terms(
        &self,
        prep: &Prepared,
        users: &[u32],
        items: &[u32],
        (u_con, i_pop): (&Tensor, &Tensor),
        cfg: &DasConfig,
    ) -> Result<Tensor> {
        let us: Vec<f32> = users
            .iter()
            .flat_map(|&u| prep.user_stats[u as usize])
            .collect();
        let is: Vec<f32> = items
            .iter()
            .flat_map(|&i| prep.item_stats[i as usize])
            .collect();
        let tu = self
            .bias_u
            .forward(&Tensor::from_vec(us, (users.len(), 2), &Device::Cpu)?)?;
        let ti = self
            .bias_i
            .forward(&Tensor::from_vec(is, (items.len(), 3), &Device::Cpu)?)?;
        let su = row_cos(u_con, &tu)?.mean(0)?;
        let si = row_cos(i_pop, &ti)?.mean(0)?;
        Ok((scalar(2.0)? - (su + si)?)?.affine(cfg.w_bias, 0.0)?)
    }

    /// `cos^2(u_int, u_con) + cos^2(i_pro, i_pop)`, batch means.
    pub fn orth_terms(
        &self,
        (ui, uc): (&Tensor, &Tensor),
        (ip, ipop): (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        Ok((row_cos(ui, uc)?.sqr()?.mean(0)? + row_cos(ip, ipop)?.sqr()?.mean(0)?)?)
    }

    /// Row-wise Adam on the gathered rows of every table.
    pub fn apply_grads(&mut self, out: &IcdmOut, grads: &GradStore, lr: f32) -> Result<()> {
        let tables = [
            &mut self.u_int,
            &mut self.u_con,
            &mut self.i_pro,
            &mut self.i_pop,
        ];
        for (t, g) in tables.into_iter().zip(&out.gathered) {
            if let Some(grad) = grads.get(g.var.as_tensor()) {
                t.adam_step(&g.ids, grad, lr)?;
            }
        }
        Ok(())
    }

    /// Names and tensors of the ID tables (for checkpoints).
    pub fn tables(&self) -> Result<Vec<(String, Tensor)>> {
        let t = |x: &IdTable| Tensor::from_slice(&x.data, (x.len(), x.dim), &Device::Cpu);
        Ok(vec![
            ("icdm.u_int".into(), t(&self.u_int)?),
            ("icdm.u_con".into(), t(&self.u_con)?),
            ("icdm.i_pro".into(), t(&self.i_pro)?),
            ("icdm.i_pop".into(), t(&self.i_pop)?),
        ])
    }

    /// Restores the ID tables from a checkpoint.
    pub fn load_tables(
        &mut self,
        loaded: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        let get = |n: &str| -> Result<IdTable> {
            let t = loaded.get(n).ok_or_else(|| super::ModelError::Format {
                path: "checkpoint".into(),
                reason: format!("tensor {n} missing"),
            })?;
            Ok(IdTable::from_data(
                t.flatten_all()?.to_vec1::<f32>()?,
                t.dim(1)?,
            ))
        };
        self.u_int = get("icdm.u_int")?;
        self.u_con = get("icdm.u_con")?;
        self.i_pro = get("icdm.i_pro")?;
        self.i_pop = get("icdm.i_pop")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn t(rng: &mut ChaCha8Rng, b: usize, d: usize) -> Vec<f32> {
        (0..b * d).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Relative tolerance 2e-2, as these losses reach values of several nats.
    fn check_grad(f: &dyn Fn(&Tensor) -> Tensor, x0: &[f32], shape: (usize, usize)) {
        crate::model::nn::testing::check_grad(f, x0, shape, 2e-2, true);
    }

    #[test]
    fn cf_losses_have_correct_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let u0 = t(&mut rng, 4, 3);
        let i = Tensor::from_vec(t(&mut rng, 4, 3), (4, 3), &Device::Cpu).expect("t");
        let q = Tensor::from_vec(vec![-1.0f32, -2.0, -1.0, -3.0], 4, &Device::Cpu).expect("t");
        let items = [0u32, 1, 0, 2];
        check_grad(
            &|u| sampled_softmax(u, &i, &items, Some(&q), 0.5).expect("cf"),
            &u0,
            (4, 3),
        );
        let i2 = i.clone();
        check_grad(&|u| bce(u, &i2, &i2, u, 0.5).expect("bce"), &u0, (4, 3));
        let c = Tensor::from_vec(t(&mut rng, 4, 3), (4, 3), &Device::Cpu).expect("t");
        check_grad(
            &|u| {
                row_cos(u, &c)
                    .expect("cos")
                    .sqr()
                    .expect("sq")
                    .mean(0)
                    .expect("m")
            },
            &u0,
            (4, 3),
        );
    }

    #[test]
    fn icdm_forward_shapes_and_sparse_update() {
        let s = super::super::synth::generate(&Default::default());
        let cfg = DasConfig::default();
        let prep = Prepared::new(&s.data, crate::profile::Recency::by_age(180.0)).expect("prep");
        let mut p = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut icdm =
            Icdm::new(&mut p, &mut rng, prep.n_users, &prep.item_count, &cfg).expect("icdm");
        let (users, items) = (vec![0u32, 1, 2, 3], vec![5u32, 6, 5, 7]);
        let out = icdm
            .forward(&prep, &users, &items, &[(9, 9)], &cfg)
            .expect("fwd");
        assert_eq!(out.u_int.dims(), &[4, 32]);
        assert_eq!(out.i_full.dims(), &[4, 32]);
        let before = icdm.i_pro.data.clone();
        let grads = out.loss.backward().expect("bw");
        icdm.apply_grads(&out, &grads, 0.01).expect("step");
        let moved: Vec<usize> = (0..prep.n_items)
            .filter(|&r| icdm.i_pro.row(r) != &before[r * 32..(r + 1) * 32])
            .collect();
        assert_eq!(moved, vec![5, 6, 7, 9]);
    }
}
