//! Two candle ops with hand-written backward passes, for the two places where candle's generic
//! autograd does far more work than the maths needs (measured with `perf` on MovieLens-1M).
//!
//! - [`const_lhs_matmul`]: `x W^T` for a constant `x`. candle's matmul backward computes the
//!   gradient of both operands whether or not anything needs it; for an MLP's first layer over
//!   a batch of raw 384-d inputs that wasted product is as costly as the layer itself.
//! - [`masked_lse`]: the row-wise log-sum-exp of an in-batch softmax (`B x B` logits, scaled,
//!   with a per-column bias and masked cells). As candle ops this is ~6 passes over the matrix
//!   forward (affine, bias, mask, max, exp, sum) and as many backward, plus a zero-filled
//!   gradient buffer per intermediate; fused it is one pass forward, and the backward pass
//!   reuses the softmax that the forward pass kept.
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::Result;

/// The contiguous `f32` data and 2-D shape of an op's argument.
fn matrix<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (Some((start, end)), (r, c)) = (l.contiguous_offsets(), l.shape().dims2()?) else {
        candle_core::bail!("expected a contiguous matrix");
    };
    Ok((&s.as_slice::<f32>()?[start..end], r, c))
}

struct ConstLhsMatmul {
    x: Tensor,
}

/// `x W^T` where only `w` (`out x in`) gets a gradient; `x` (`n x in`) is treated as a constant.
pub fn const_lhs_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(w.apply_op1(ConstLhsMatmul { x: x.detach() })?)
}

impl CustomOp1 for ConstLhsMatmul {
    fn name(&self) -> &'static str {
        "const-lhs-matmul"
    }

    fn cpu_fwd(&self, w: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (w, out, inp) = matrix(w, l)?;
        let w = Tensor::from_slice(w, (out, inp), &Device::Cpu)?;
        let y = self.x.matmul(&w.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _w: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.t()?.matmul(&self.x)?))
    }
}

struct MaskedLse {
    scale: f32,
    col_bias: Option<Vec<f32>>,
    masked: Vec<bool>,
    /// The softmax of the forward pass (`B x C`, 0 on masked cells), kept for the backward
    /// pass: recomputing it there doubled the op's `exp` calls, which were the largest single
    /// cost of a training step after the matmuls (perf, MovieLens-1M).
    softmax: Mutex<Vec<f32>>,
}

/// Row-wise `lse_i = log sum_j exp(scale * s_ij + bias_j)` over the cells `(i, j)` that are not
/// `masked` (row-major, `B x C`; every row must keep at least one cell). Gradient:
/// `d lse_i / d s_ij = scale * softmax_ij`.
pub fn masked_lse(
    s: &Tensor,
    scale: f64,
    col_bias: Option<Vec<f32>>,
    masked: Vec<bool>,
) -> Result<Tensor> {
    let op = MaskedLse {
        scale: scale as f32,
        col_bias,
        masked,
        softmax: Mutex::new(Vec::new()),
    };
    Ok(s.contiguous()?.apply_op1(op)?)
}

impl CustomOp1 for MaskedLse {
    fn name(&self) -> &'static str {
        "masked-lse"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (s, r, c) = matrix(st, l)?;
        if self.masked.len() != r * c || self.col_bias.as_ref().is_some_and(|b| b.len() != c) {
            candle_core::bail!("masked-lse: mask or bias does not match the {r}x{c} logits");
        }
        // whole-row passes without per-cell branches on the bias, so that they vectorize
        let mut p = Vec::with_capacity(r * c);
        let mut lse = Vec::with_capacity(r);
        for (si, mi) in s.chunks_exact(c).zip(self.masked.chunks_exact(c)) {
            let start = p.len();
            match &self.col_bias {
                Some(b) => p.extend(si.iter().zip(b).map(|(v, b)| self.scale * v + b)),
                None => p.extend(si.iter().map(|v| self.scale * v)),
            }
            let row = &mut p[start..];
            // masked cells hold -inf, whose exp below is exactly 0
            for (v, &m) in row.iter_mut().zip(mi) {
                if m {
                    *v = f32::NEG_INFINITY;
                }
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
            lse.push(max + sum.ln());
        }
        *self
            .softmax
            .lock()
            .map_err(|_| candle_core::Error::Msg("masked-lse: poisoned".into()))? = p;
        Ok((CpuStorage::F32(lse), Shape::from(r)))
    }

    fn bwd(&self, s: &Tensor, _lse: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (r, c) = s.dims2()?;
        let g = grad.to_vec1::<f32>()?;
        let p = self
            .softmax
            .lock()
            .map_err(|_| candle_core::Error::Msg("masked-lse: poisoned".into()))?;
        if p.len() != r * c {
            candle_core::bail!("masked-lse: backward without a forward pass");
        }
        let mut out = p.clone();
        for (row, gi) in out.chunks_exact_mut(c).zip(&g) {
            let k = gi * self.scale;
            row.iter_mut().for_each(|v| *v *= k);
        }
        Ok(Some(Tensor::from_vec(out, (r, c), s.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::nn::testing::check_grad;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn masked_lse_matches_the_candle_composition_and_its_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let v: Vec<f32> = (0..20).map(|_| rng.random_range(-1.0..1.0)).collect();
        let masked: Vec<bool> = (0..20).map(|k| k % 7 == 3).collect();
        let bias = vec![0.5f32, -1.0, 0.0, 2.0, 0.1];
        let s = Tensor::from_slice(&v, (4, 5), &Device::Cpu).expect("t");
        let fused = masked_lse(&s, 2.0, Some(bias.clone()), masked.clone()).expect("lse");
        let add: Vec<f32> = masked.iter().map(|&m| if m { -1e4 } else { 0.0 }).collect();
        let plain = s
            .affine(2.0, 0.0)
            .and_then(|t| t.broadcast_add(&Tensor::new(&bias[..], &Device::Cpu)?))
            .and_then(|t| t + Tensor::from_vec(add, (4, 5), &Device::Cpu)?)
            .and_then(|t| t.log_sum_exp(1))
            .expect("plain");
        let (a, b) = (
            fused.to_vec1::<f32>().expect("v"),
            plain.to_vec1::<f32>().expect("v"),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let w = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0], &Device::Cpu).expect("w");
        check_grad(
            &|s| {
                let lse = masked_lse(s, 2.0, Some(bias.clone()), masked.clone()).expect("lse");
                (lse * &w).expect("m").sum_all().expect("s")
            },
            &v,
            (4, 5),
            2e-2,
            true,
        );
    }

    #[test]
    fn const_lhs_matmul_gives_the_weight_gradient_only() {
        let x = Tensor::new(&[[1f32, 2.0], [3.0, -1.0], [0.5, 0.0]], &Device::Cpu).expect("x");
        let w = candle_core::Var::new(&[[1f32, 0.0], [2.0, 1.0]], &Device::Cpu).expect("w");
        let y = const_lhs_matmul(&x, w.as_tensor()).expect("y");
        let want = x.matmul(&w.as_tensor().t().expect("t")).expect("mm");
        assert_eq!(
            y.to_vec2::<f32>().expect("v"),
            want.to_vec2::<f32>().expect("v")
        );
        let g = y.sum_all().expect("s").backward().expect("bw");
        // d sum(x W^T) / dW_kj = sum_i x_ij
        let gw = g
            .get(w.as_tensor())
            .expect("grad")
            .to_vec2::<f32>()
            .expect("v");
        assert_eq!(gw, vec![vec![4.5, 1.0], vec![4.5, 1.0]]);
    }
}
