//! A small named parameter store and MLPs with seeded initialisation.
//!
//! candle's `VarBuilder` initialises from an unseeded RNG on the CPU, which would break the
//! "one seed, same SIDs" promise; so parameters are drawn here from a `ChaCha8Rng` and kept as
//! named `Var`s, which also gives the checkpoint its tensor names.
use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Result;

/// Named trainable parameters in a deterministic (sorted) order.
#[derive(Debug, Default, Clone)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    /// Adds (or replaces) a parameter.
    pub fn insert(&mut self, name: &str, var: Var) {
        self.vars.insert(name.to_string(), var);
    }

    /// All parameters, sorted by name (the order the optimiser sees them).
    pub fn vars(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }

    /// Parameters whose name starts with `prefix`.
    pub fn vars_with_prefix(&self, prefix: &str) -> Vec<Var> {
        self.vars
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Name -> tensor copies, for saving.
    pub fn tensors(&self) -> std::collections::HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect()
    }

    /// Copies into this store the value of every parameter of `from` with the same name and
    /// shape (a copy: the two stores stay independent). Returns how many were copied.
    pub fn copy_matching(&self, from: &Params) -> Result<usize> {
        let mut copied = 0;
        for (name, var) in &self.vars {
            let Some(src) = from.vars.get(name) else {
                continue;
            };
            if src.as_tensor().dims() == var.as_tensor().dims() {
                var.set(&src.as_detached_tensor())?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// Overwrites every parameter from `loaded` (shapes must match; missing names are an error).
    pub fn load(&self, loaded: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let t = loaded.get(name).ok_or_else(|| super::ModelError::Format {
                path: "checkpoint".into(),
                reason: format!("tensor {name} missing"),
            })?;
            var.set(t)?;
        }
        Ok(())
    }
}

/// Uniform(-a, a) matrix from a seeded RNG.
pub fn uniform(rng: &mut ChaCha8Rng, rows: usize, cols: usize, a: f32) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-a..=a)).collect();
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

/// A linear layer `y = x W^T + b` whose parameters live in a [`Params`].
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Creates `name.weight` (`out x inp`, Kaiming-uniform) and `name.bias` (zeros).
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        name: &str,
        inp: usize,
        out: usize,
    ) -> Result<Self> {
        let w = Var::from_tensor(&uniform(rng, out, inp, (6.0 / inp as f32).sqrt() / 2.0)?)?;
        let b = Var::zeros(out, DType::F32, &Device::Cpu)?;
        p.insert(&format!("{name}.weight"), w.clone());
        p.insert(&format!("{name}.bias"), b.clone());
        Ok(Self {
            inner: candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone())),
        })
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x)?)
    }

    /// Applies the layer to a constant input (data, not the output of a trainable layer): same
    /// value as [`Linear::forward`], but the backward pass skips the gradient of `x`.
    pub fn forward_const(&self, x: &Tensor) -> Result<Tensor> {
        let xw = super::ops::const_lhs_matmul(x, self.inner.weight())?;
        Ok(match self.inner.bias() {
            Some(b) => xw.broadcast_add(b)?,
            None => xw,
        })
    }
}

/// An MLP with ReLU between layers and a linear output.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Builds layers `sizes[0] -> sizes[1] -> ... -> sizes[n]` named `name.{k}`.
    pub fn new(p: &mut Params, rng: &mut ChaCha8Rng, name: &str, sizes: &[usize]) -> Result<Self> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(k, w)| Linear::new(p, rng, &format!("{name}.{k}"), w[0], w[1]))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Applies the MLP.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// Applies the MLP to a constant input (see [`Linear::forward_const`]): same value, cheaper
    /// backward.
    pub fn forward_const(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, const_input: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (k, l) in self.layers.iter().enumerate() {
            h = if k == 0 && const_input {
                l.forward_const(&h)?
            } else {
                l.forward(&h)?
            };
            if k + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// A seeded RNG derived from a base seed and a stream name (so adding a consumer does not shift
/// every other stream).
pub fn rng_for(seed: u64, stream: &str) -> ChaCha8Rng {
    let h = stream.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

/// Row-wise L2 normalisation of a 2-D tensor (differentiable).
pub fn l2n(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

/// Test support shared by the loss modules.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};

    /// Asserts that autograd's gradient of the scalar `f` at `x0` matches central finite
    /// differences (step 1e-2) within `tol`, or `tol * (1 + |fd|)` when `relative`.
    pub(crate) fn check_grad(
        f: &dyn Fn(&Tensor) -> Tensor,
        x0: &[f32],
        shape: (usize, usize),
        tol: f32,
        relative: bool,
    ) {
        let var = Var::from_slice(x0, shape, &Device::Cpu).expect("var");
        let g = f(var.as_tensor())
            .backward()
            .expect("bw")
            .get(var.as_tensor())
            .expect("g")
            .flatten_all()
            .expect("f");
        let g = g.to_vec1::<f32>().expect("v");
        let val = |v: &[f32]| {
            f(&Tensor::from_slice(v, shape, &Device::Cpu).expect("t"))
                .to_scalar::<f32>()
                .expect("s")
        };
        for k in 0..x0.len() {
            let (mut p, mut m) = (x0.to_vec(), x0.to_vec());
            p[k] += 1e-2;
            m[k] -= 1e-2;
            let fd = (val(&p) - val(&m)) / 2e-2;
            let bound = if relative {
                tol * (1.0 + fd.abs())
            } else {
                tol
            };
            assert!(
                (fd - g[k]).abs() < bound,
                "coord {k}: fd {fd} vs grad {}",
                g[k]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_input_forward_matches_and_gives_the_same_weight_gradients() {
        let mut p = Params::default();
        let mut rng = rng_for(3, "test");
        let mlp = Mlp::new(&mut p, &mut rng, "m", &[5, 4, 3]).expect("mlp");
        let x = uniform(&mut rng, 6, 5, 1.0).expect("x");
        let (a, b) = (
            mlp.forward(&x).expect("f"),
            mlp.forward_const(&x).expect("f"),
        );
        let diff = (&a - &b)
            .expect("d")
            .abs()
            .expect("a")
            .max_all()
            .expect("m");
        assert!(diff.to_scalar::<f32>().expect("s") < 1e-6);
        let (ga, gb) = (
            a.sqr()
                .expect("s")
                .sum_all()
                .expect("s")
                .backward()
                .expect("bw"),
            b.sqr()
                .expect("s")
                .sum_all()
                .expect("s")
                .backward()
                .expect("bw"),
        );
        for v in p.vars() {
            let (u, w) = (
                ga.get(v.as_tensor()).expect("grad"),
                gb.get(v.as_tensor()).expect("grad"),
            );
            let d = (u - w)
                .expect("d")
                .abs()
                .expect("a")
                .flatten_all()
                .expect("f");
            assert!(d.max(0).expect("m").to_scalar::<f32>().expect("s") < 1e-5);
        }
    }
}
