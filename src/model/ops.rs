//! Two candle ops with hand-written backward passes, for the two places where candle's generic
//! autograd does far more work than the maths needs (measured with `perf` on MovieLens-1M).
//!
//! - [`const_lhs_matmul`]: `x W^T` for a constant `x`. candle's matmul backward computes the
//!   gradient of both operands whether or not anything needs it; for an MLP's first layer over
//!   a batch of raw 384-d inputs that wasted product is as costly as the layer itself.
//! - [`masked_lse`]: the row-wise log-sum-exp of an in-batch softmax (`B x B` logits, scaled,
//!   with a per-column bias and masked cells). As candle ops this is ~6 passes over the matrix
//!   forward (affine, bias, mask, max, exp, sum) and as many backward, plus a zero-filled
//!   gradient buffer per intermediate; fused it is one pass each way.
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
    };
    Ok(s.contiguous()?.apply_op1(op)?)
}

impl MaskedLse {
    /// The scaled, biased logit of cell `(i, j)`, or None when masked.
    fn logit(&self, s: &[f32], c: usize, i: usize, j: usize) -> Option<f32> {
        if self.masked[i * c + j] {
            return None;
        }
        let b = self.col_bias.as_ref().map_or(0.0, |b| b[j]);
        Some(self.scale * s[i * c + j] + b)
    }
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
        let lse = (0..r)
            .map(|i| {
                let row = || (0..c).filter_map(move |j| self.logit(s, c, i, j));
                let max = row().fold(f32::NEG_INFINITY, f32::max);
                max + row().map(|v| (v - max).exp()).sum::<f32>().ln()
            })
            .collect();
        Ok((CpuStorage::F32(lse), Shape::from(r)))
    }

    fn bwd(&self, s: &Tensor, lse: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (r, c) = s.dims2()?;
        let sv = s.flatten_all()?.to_vec1::<f32>()?;
        let (lse, g) = (lse.to_vec1::<f32>()?, grad.to_vec1::<f32>()?);
        let mut out = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                if let Some(v) = self.logit(&sv, c, i, j) {
                    out[i * c + j] = g[i] * self.scale * (v - lse[i]).exp();
                }
            }
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
