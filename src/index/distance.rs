//! Distance kernels shared by the flat and HNSW indexes.
//!
//! # Why our own kernels
//! When the graph was hnsw_rs 0.3.5, its `anndists` distances were traps for us: `DistCosine` has
//! no SIMD path (a scalar loop that also recomputes both norms), `DistDot` `assert!`s
//! `dot <= 1.000002` so rounding on normalised vectors panics, and `DistL2` takes a square root
//! the ordering does not need. Every metric goes through [`dot`] / [`l2_sq`] here instead:
//! AVX2+FMA with four independent accumulators when the CPU has them (checked once, at first
//! use), a portable 8-lane loop the compiler vectorises otherwise. Cosine vectors are normalised
//! once on the way in, so cosine is a plain dot product.

use std::sync::OnceLock;

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

/// Hints the CPU to start pulling the first two cache lines of `v` into cache, so a distance
/// computed on it a little later does not stall on memory (the graph walk calls it one neighbour
/// ahead). A no-op off x86_64.
#[inline(always)]
pub fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = v.as_ptr().cast::<i8>();
        // SAFETY: `_mm_prefetch` needs SSE, which is in the x86_64 baseline (every x86_64 CPU
        // has it, so no run-time check is needed), and a prefetch is only a hint: it never
        // faults, reads into the program or writes, whatever the address. `wrapping_add` keeps
        // the second address computation defined even past the end of `v`.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn prefetch_is_a_harmless_hint_on_any_slice() {
        // Empty, shorter than one line, and the last element of a long slice: past-the-end
        // addresses must not fault, and nothing observable changes.
        let v: Vec<f32> = (0..100).map(|i| i as f32).collect();
        prefetch(&[]);
        prefetch(&v[..3]);
        prefetch(&v[99..]);
        prefetch(&v);
        assert_eq!(v[99], 99.0);
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
}
