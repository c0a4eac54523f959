//! MDAM: InfoNCE alignments with in-batch negatives, and co-occurrence partner sampling.
//!
//! InfoNCE here is symmetric (a->b and b->a, averaged), on cosine / tau. Two rows of a batch can
//! carry the same id (a popular item twice): its copy must not count as a negative, so those
//! logits are masked out. Rows can be weighted (0 = no partner: the row is dropped from the loss
//! *and* its column from the negatives; hub damping gives fractional weights).
//!
//! The route alignment ([`route_nce`], our addition to the paper's six terms) is a softmax
//! over codebook rows instead of batch rows: a user must pick its item's level-1 code.
//!
//! candle's `softmax_last_dim` has no backward pass; this uses `log_softmax`, which has one.
use candle_core::{Device, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::kmeans::sq_dists;
use super::nn::l2n;
use super::ops::masked_lse;
use super::Result;

/// Cells left out of the negatives: column `j != i` with the same id as row `i`'s positive, or
/// whose row is dropped (weight 0).
fn negative_mask(ids: &[u32], weights: &[f32]) -> Vec<bool> {
    let b = ids.len();
    let mut m = vec![false; b * b];
    for i in 0..b {
        for j in 0..b {
            m[i * b + j] = j != i && (ids[j] == ids[i] || weights[j] <= 0.0);
        }
    }
    m
}

/// One direction: rows of `a` must pick their own row of `b` among all of `b`. Computed as
/// `logsumexp_j(logit_ij)` over the unmasked cells minus `logit_ii`, with the positive logit
/// taken row-wise, so the only `B x B` work is the score matrix and its fused log-sum-exp.
/// With `log_q_b` (the log sampling probability of each row of `b`), every logit of column `j`
/// is lowered by `log_q_b[j]` (logQ correction): in-batch negatives are drawn in proportion to
/// how often an entity appears in the log, and without the correction the loss learns a score
/// biased against frequent entities (a PMI rather than the full softmax).
fn nce_direction(
    an: &Tensor,
    bn: &Tensor,
    ids_b: &[u32],
    w: &Tensor,
    wv: &[f32],
    tau: f64,
    log_q_b: Option<&[f32]>,
) -> Result<Tensor> {
    let lse = masked_lse(
        &an.matmul(&bn.t()?)?,
        1.0 / tau,
        log_q_b.map(|q| q.iter().map(|v| -v).collect()),
        negative_mask(ids_b, wv),
    )?;
    let mut pos = (an * bn)?.sum(1)?.affine(1.0 / tau, 0.0)?;
    if let Some(q) = log_q_b {
        pos = (pos - Tensor::from_slice(q, q.len(), &Device::Cpu)?)?;
    }
    let total: f32 = wv.iter().sum();
    Ok(((lse - pos)? * w)?
        .sum_all()?
        .affine(1.0 / total.max(1e-6) as f64, 0.0)?)
}

/// Symmetric InfoNCE between paired rows of `a` and `b` (`B x D` each). `ids_a`, `ids_b` are the
/// entity ids of the rows (for masking accidental positives); `weights` per row (0 = masked).
pub fn info_nce(
    a: &Tensor,
    b: &Tensor,
    ids_a: &[u32],
    ids_b: &[u32],
    weights: &[f32],
    tau: f64,
) -> Result<Tensor> {
    info_nce_q(a, b, ids_a, ids_b, weights, tau, None)
}

/// [`info_nce`] with the logQ correction: `log_q = (per row of a, per row of b)`, the log of the
/// probability with which each row's entity is sampled into a batch. Each direction corrects
/// the logits of its candidate side.
pub fn info_nce_q(
    a: &Tensor,
    b: &Tensor,
    ids_a: &[u32],
    ids_b: &[u32],
    weights: &[f32],
    tau: f64,
    log_q: Option<(&[f32], &[f32])>,
) -> Result<Tensor> {
    if weights.iter().all(|&w| w <= 0.0) {
        return Ok(Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?);
    }
    let w = Tensor::from_slice(weights, weights.len(), &Device::Cpu)?;
    let (an, bn) = (l2n(a)?, l2n(b)?);
    let ab = nce_direction(&an, &bn, ids_b, &w, weights, tau, log_q.map(|q| q.1))?;
    let ba = nce_direction(&bn, &an, ids_a, &w, weights, tau, log_q.map(|q| q.0))?;
    Ok(((ab + ba)? * 0.5)?)
}

/// Route alignment: each row of `z_u`, rescaled to the mean length of the rows of `z_ref` (the
/// batch's item `z`, detached), picks its target code among the rows of `book` (the item
/// level-1 codebook, `K x D`) by a softmax over `-||z_u - e_k||^2 / (tau * m^2)`, `m` that mean
/// length. Mean cross-entropy over rows. The rescaling is the one routing applies at serving
/// time, so the loss trains the exact decision that picks a user's bucket.
pub fn route_nce(
    z_u: &Tensor,
    z_ref: &Tensor,
    book: &Tensor,
    target: &[u32],
    tau: f64,
) -> Result<Tensor> {
    let m = f64::from(
        z_ref
            .detach()
            .sqr()?
            .sum(1)?
            .sqrt()?
            .mean_all()?
            .to_scalar::<f32>()?,
    )
    .max(1e-6);
    let zs = l2n(z_u)?.affine(m, 0.0)?;
    let logits = sq_dists(&zs, book)?.affine(-1.0 / (tau * m * m), 0.0)?;
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let t = Tensor::from_slice(target, (target.len(), 1), &Device::Cpu)?;
    Ok(lp.gather(&t, 1)?.mean_all()?.neg()?)
}

/// Picks, for each anchor, another member of its neighbour list (`lists[anchor_key]`), not equal
/// to `exclude`. Returns the partner (or the anchor's own id when none) and a weight: 0 without a
/// partner, else `min(1, (cap / degree)^damping)`, so hubs (whose co-occurrences say little)
/// count less.
pub fn sample_partners(
    keys: &[u32],
    exclude: &[u32],
    lists: &[Vec<u32>],
    cap: usize,
    damping: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<u32>, Vec<f32>) {
    let mut partners = Vec::with_capacity(keys.len());
    let mut weights = Vec::with_capacity(keys.len());
    for (&k, &ex) in keys.iter().zip(exclude) {
        let list = &lists[k as usize];
        // up to 4 draws: a list of 2+ entries almost always yields a partner that is not `ex`
        let found = if list.len() < 2 {
            None
        } else {
            (0..4)
                .map(|_| list[rng.random_range(0..list.len())])
                .find(|&p| p != ex)
        };
        match found {
            Some(p) => {
                partners.push(p);
                let w = (cap as f64 / list.len() as f64).powf(damping).min(1.0);
                weights.push(w as f32);
            }
            None => {
                partners.push(ex);
                weights.push(0.0);
            }
        }
    }
    (partners, weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rand_t(rng: &mut ChaCha8Rng, b: usize, d: usize) -> Vec<f32> {
        (0..b * d).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn aligned_pairs_give_low_loss_and_masking_removes_duplicates() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = Tensor::from_vec(rand_t(&mut rng, 8, 4), (8, 4), &Device::Cpu).expect("t");
        let r = Tensor::from_vec(rand_t(&mut rng, 8, 4), (8, 4), &Device::Cpu).expect("t");
        let ids: Vec<u32> = (0..8).collect();
        let w = vec![1.0; 8];
        let same = info_nce(&a, &a, &ids, &ids, &w, 0.1)
            .expect("nce")
            .to_scalar::<f32>()
            .expect("s");
        let rnd = info_nce(&a, &r, &ids, &ids, &w, 0.1)
            .expect("nce")
            .to_scalar::<f32>()
            .expect("s");
        assert!(same < rnd, "aligned {same} vs random {rnd}");
        // two rows with the same target id: without the mask the duplicate would be a negative
        let dup = Tensor::cat(
            &[a.narrow(0, 0, 1).expect("n"), a.narrow(0, 0, 1).expect("n")],
            0,
        )
        .expect("cat");
        let loss = info_nce(&dup, &dup, &[0, 0], &[5, 5], &[1.0, 1.0], 0.1).expect("nce");
        assert!(
            loss.to_scalar::<f32>().expect("s").abs() < 1e-4,
            "duplicate masked: loss ~ 0"
        );
        let none = info_nce(&a, &r, &ids, &ids, &[0.0; 8], 0.1).expect("nce");
        assert_eq!(none.to_scalar::<f32>().expect("s"), 0.0);
    }

    #[test]
    fn info_nce_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let av = rand_t(&mut rng, 5, 3);
        let b = Tensor::from_vec(rand_t(&mut rng, 5, 3), (5, 3), &Device::Cpu).expect("t");
        let ids: Vec<u32> = vec![0, 1, 2, 1, 3];
        let w = vec![1.0, 0.5, 1.0, 0.0, 1.0];
        crate::model::nn::testing::check_grad(
            &|a| info_nce(a, &b, &ids, &ids, &w, 0.5).expect("nce"),
            &av,
            (5, 3),
            2e-2,
            false,
        );
    }

    #[test]
    fn route_nce_picks_the_nearest_code_and_its_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let book_v = rand_t(&mut rng, 4, 3);
        let book = Tensor::from_vec(book_v.clone(), (4, 3), &Device::Cpu).expect("t");
        let z_ref = Tensor::from_vec(book_v.clone(), (4, 3), &Device::Cpu).expect("t");
        // users placed on the codes themselves: low loss for their own code, high for another
        let on_codes = Tensor::from_vec(book_v, (4, 3), &Device::Cpu).expect("t");
        let loss = |z: &Tensor, t: &[u32]| {
            route_nce(z, &z_ref, &book, t, 0.1)
                .expect("route")
                .to_scalar::<f32>()
                .expect("s")
        };
        let own = loss(&on_codes, &[0, 1, 2, 3]);
        let other = loss(&on_codes, &[1, 2, 3, 0]);
        assert!(own < other, "own code {own} vs another {other}");
        // only the direction of z_u counts: the route rescales every user to one length
        let doubled = on_codes.affine(2.0, 0.0).expect("scale");
        assert!((loss(&doubled, &[0, 1, 2, 3]) - own).abs() < 1e-4);
        let zv = rand_t(&mut rng, 5, 3);
        let targets = [0, 3, 1, 1, 2];
        crate::model::nn::testing::check_grad(
            &|z| route_nce(z, &z_ref, &book, &targets, 0.5).expect("route"),
            &zv,
            (5, 3),
            2e-2,
            false,
        );
    }

    /// Plain reference of one direction of [`info_nce_q`] with every weight 1 and distinct ids:
    /// mean over rows `i` of `lse_j(cos(a_i, b_j) / tau - q_j) - (cos(a_i, b_i) / tau - q_i)`.
    fn reference_direction(a: &[f32], b: &[f32], q: &[f32], n: usize, d: usize, tau: f64) -> f64 {
        let cos = |x: &[f32], y: &[f32]| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| (*p * *q) as f64).sum();
            let nx: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            dot / (nx * ny)
        };
        let row = |m: &[f32], i: usize| m[i * d..(i + 1) * d].to_vec();
        let mut total = 0.0;
        for i in 0..n {
            let logit = |j: usize| cos(&row(a, i), &row(b, j)) / tau - q[j] as f64;
            let lse = (0..n).map(|j| logit(j).exp()).sum::<f64>().ln();
            total += lse - logit(i);
        }
        total / n as f64
    }

    #[test]
    fn logq_correction_lowers_each_candidate_by_its_log_probability() {
        let (n, d, tau) = (6, 4, 0.2);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (av, bv) = (rand_t(&mut rng, n, d), rand_t(&mut rng, n, d));
        let a = Tensor::from_vec(av.clone(), (n, d), &Device::Cpu).expect("t");
        let b = Tensor::from_vec(bv.clone(), (n, d), &Device::Cpu).expect("t");
        let ids: Vec<u32> = (0..n as u32).collect();
        let w = vec![1.0; n];
        // a skewed sampling distribution: the first rows are "popular"
        let qa: Vec<f32> = (0..n).map(|k| -(k as f32) * 0.7).collect();
        let qb: Vec<f32> = (0..n).map(|k| -((n - k) as f32) * 0.4).collect();
        let got = info_nce_q(&a, &b, &ids, &ids, &w, tau, Some((&qa, &qb)))
            .expect("nce")
            .to_scalar::<f32>()
            .expect("s") as f64;
        let want = 0.5
            * (reference_direction(&av, &bv, &qb, n, d, tau)
                + reference_direction(&bv, &av, &qa, n, d, tau));
        assert!(
            (got - want).abs() < 1e-4,
            "logQ loss {got} vs reference {want}"
        );
        let plain = info_nce(&a, &b, &ids, &ids, &w, tau)
            .expect("nce")
            .to_scalar::<f32>()
            .expect("s") as f64;
        assert!(
            (got - plain).abs() > 1e-3,
            "a skewed q must change the loss"
        );
        // a uniform q is a constant shift of every logit: the softmax does not change
        let flat = vec![-3.0f32; n];
        let uniform = info_nce_q(&a, &b, &ids, &ids, &w, tau, Some((&flat, &flat)))
            .expect("nce")
            .to_scalar::<f32>()
            .expect("s") as f64;
        assert!((uniform - plain).abs() < 1e-5, "{uniform} vs {plain}");
        crate::model::nn::testing::check_grad(
            &|x| info_nce_q(x, &b, &ids, &ids, &w, 0.5, Some((&qa, &qb))).expect("nce"),
            &av,
            (n, d),
            2e-2,
            false,
        );
    }

    #[test]
    fn partners_exclude_anchor_and_damp_hubs() {
        let lists = vec![vec![0, 1], vec![1], (0..100).collect()];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (p, w) = sample_partners(&[0, 1, 2], &[0, 1, 5], &lists, 25, 0.5, &mut rng);
        assert_eq!(p[0], 1);
        assert_eq!(w[1], 0.0, "single-member list has no partner");
        assert_ne!(p[2], 5);
        assert!((w[2] - 0.5).abs() < 1e-6, "(25/100)^0.5 = 0.5");
    }
}
