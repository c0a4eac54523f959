//! Distance kernels shared by the flat and HNSW indexes, and the hnsw_rs distance adapters.
//!
//! # Why our own kernels
//! hnsw_rs 0.3.5 ships its distances in `anndists`, and three of them are traps for us:
//! - `DistCosine` has no SIMD path at all (a scalar loop that also recomputes both norms);
//! - `DistDot` (SIMD) is really "1 - dot" for *normalised* vectors and `assert!`s `dot <= 1.000002`,
//!   so rounding on normalised vectors panics (raw inner product is reduced to cosine instead:
//!   see `hnsw`);
//! - `DistL2` takes a square root per call that the ordering does not need.
//!
//! So every metric goes through [`dot`] / [`l2_sq`] here: AVX2+FMA with four independent
//! accumulators when the CPU has them (checked once, at first use), a portable 8-lane loop the
//! compiler vectorises otherwise. hnsw_rs requires distances `>= 0` (it negates them for its heaps
//! and asserts the sign) and never NaN (it `unwrap`s `partial_cmp`), which the adapters guarantee.

use std::sync::OnceLock;

use hnsw_rs::prelude::Distance;

type Kernel = fn(&[f32], &[f32]) -> f32;

/// The kernels picked for this CPU, once.
struct Kernels {
    dot: Kernel,
    l2_sq: Kernel,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Kernels {
                dot: avx2::dot,
                l2_sq: avx2::l2_sq,
            };
        }
        Kernels {
            dot: portable::dot,
            l2_sq: portable::l2_sq,
        }
    })
}

/// Inner product of two equally long slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (kernels().dot)(a, b)
}

/// Squared Euclidean distance of two equally long slices.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (kernels().l2_sq)(a, b)
}

/// Scales `v` to unit length; returns false (leaving `v` as is) when its norm is zero or not finite.
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = dot(v, v).sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

mod portable {
    //! Eight independent lanes: written so that LLVM vectorises it with whatever the target has.

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        fold(a, b, |x, y| x * y)
    }

    pub(super) fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        fold(a, b, |x, y| (x - y) * (x - y))
    }

    #[inline(always)]
    fn fold(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; 8];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(bc.remainder())
            .map(|(x, y)| f(*x, *y))
            .sum();
        for (x, y) in ac.zip(bc) {
            for i in 0..8 {
                acc[i] += f(x[i], y[i]);
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA kernels: 32 floats per step in four accumulators to hide the FMA latency.
    use std::arch::x86_64::*;

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only installed by `kernels()` after checking avx2 and fma at run time.
        unsafe { dot_impl(a, b) }
    }

    pub(super) fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { l2_impl(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            acc[0] = _mm256_fmadd_ps(x, _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = (i..n).map(|j| a[j] * b[j]).sum();
        hsum(sum) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                let d = _mm256_sub_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * k)),
                    _mm256_loadu_ps(pb.add(i + 8 * k)),
                );
                *s = _mm256_fmadd_ps(d, d, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = (i..n).map(|j| (a[j] - b[j]) * (a[j] - b[j])).sum();
        hsum(sum) + tail
    }
}

/// hnsw_rs distance for unit vectors (cosine and normalised dot): `1 - dot`, clamped at 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDotDistance;

/// hnsw_rs distance for L2: the squared distance (same order as L2, no square root).
#[derive(Debug, Clone, Copy, Default)]
pub struct L2SqDistance;

/// NaN would make hnsw_rs panic in `partial_cmp().unwrap()`: sort it last instead.
#[inline]
fn sane(d: f32) -> f32 {
    if d.is_nan() {
        f32::MAX
    } else {
        d
    }
}

impl Distance<f32> for UnitDotDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        sane((1.0 - dot(a, b)).max(0.0))
    }
}

impl Distance<f32> for L2SqDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        sane(l2_sq(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn kernels_agree_with_naive_sums_at_every_length() {
        for n in 0..80 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!((dot(&a, &b) - naive_dot(&a, &b)).abs() < 1e-4, "dot n={n}");
            assert!((l2_sq(&a, &b) - l2).abs() < 1e-4, "l2 n={n}");
            assert!((portable::dot(&a, &b) - naive_dot(&a, &b)).abs() < 1e-4);
        }
    }

    #[test]
    fn adapters_never_go_negative_or_nan() {
        // Rounding just above 1 on unit vectors must not panic or go negative.
        let u = [1.0000005f32, 0.0];
        assert_eq!(UnitDotDistance.eval(&u, &u), 0.0);
        // inf * 0 is NaN: sorted last instead of panicking inside hnsw_rs.
        assert_eq!(
            L2SqDistance.eval(&[f32::INFINITY], &[f32::INFINITY]),
            f32::MAX
        );
    }
}
