//! One side of UISM: a residual-quantized VAE (encoder MLP, L codebooks, mirrored decoder).
//!
//! Forward pass, per batch: `h = enc(x)`; for each level the nearest code to the residual is
//! chosen (argmin of squared distance, no gradient), `r <- r - sg(e)`. `z` is the sum of chosen
//! codes. Three views of `z` leave the pass:
//! - `z_st = h + sg(z - h)`: the straight-through input of the decoder (gradient goes to `h`);
//! - `z_align = z + h - sg(h)`: value `z`, gradient to the chosen codes *and* (straight-through)
//!   the encoder; this is what the alignment losses see, as the spec asks;
//! - the codes, which the caller records as the SID.
//!
//! Collapse guards: codebooks start from k-means on encoder outputs of a sample
//! ([`RqVae::init_codebooks`]), and codes unused for `dead_window` steps are re-seeded from
//! current residuals ([`RqVae::reseed_dead`]).
use candle_core::{Device, Tensor, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::kmeans::{residual_kmeans, sq_dists};
use super::nn::{uniform, Mlp, Params};
use super::Result;

/// Shape of one quantizer.
#[derive(Debug, Clone, Copy)]
pub struct RqShape {
    /// Input dimension.
    pub in_dim: usize,
    /// Quantized dimension `D`.
    pub code_dim: usize,
    /// Levels `L`.
    pub levels: usize,
    /// Codes per level `K`.
    pub codes: usize,
}

/// A residual-quantized VAE; its parameters live in the shared [`Params`] under `name.`.
#[derive(Debug, Clone)]
pub struct RqVae {
    /// Shape.
    pub shape: RqShape,
    enc: Mlp,
    dec: Mlp,
    books: Vec<Var>,
    last_used: Vec<Vec<usize>>,
}

/// Output of a training forward pass.
#[derive(Debug)]
pub struct QuantOut {
    /// Quantized vectors: value `z`, gradient to codes and encoder (`n x D`).
    pub z_align: Tensor,
    /// Chosen codes, row-major `n x L`.
    pub codes: Vec<u32>,
    /// Reconstruction loss, summed over dimensions, mean over rows.
    pub recon: Tensor,
    /// Codebook + `beta_c` * commitment loss, summed over levels and dimensions, mean over rows.
    pub code_loss: Tensor,
    /// Detached residual entering each level (for dead-code re-seeding).
    pub residuals: Vec<Tensor>,
}

impl QuantOut {
    /// The semantic loss `L_sem` of this side.
    pub fn sem_loss(&self) -> Result<Tensor> {
        Ok((&self.recon + &self.code_loss)?)
    }
}

impl RqVae {
    /// Builds encoder `in -> hidden.. -> D`, decoder mirrored, codebooks small-uniform.
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        name: &str,
        shape: RqShape,
        hidden: &[usize],
    ) -> Result<Self> {
        let mut sizes = vec![shape.in_dim];
        sizes.extend_from_slice(hidden);
        sizes.push(shape.code_dim);
        let enc = Mlp::new(p, rng, &format!("{name}.enc"), &sizes)?;
        sizes.reverse();
        let dec = Mlp::new(p, rng, &format!("{name}.dec"), &sizes)?;
        let books = (0..shape.levels)
            .map(|l| {
                let v = Var::from_tensor(&uniform(rng, shape.codes, shape.code_dim, 0.1)?)?;
                p.insert(&format!("{name}.book{l}"), v.clone());
                Ok(v)
            })
            .collect::<Result<_>>()?;
        let last_used = vec![vec![0; shape.codes]; shape.levels];
        Ok(Self {
            shape,
            enc,
            dec,
            books,
            last_used,
        })
    }

    /// Encoder output `h` for `x` (`n x in_dim`).
    pub fn encode_h(&self, x: &Tensor) -> Result<Tensor> {
        self.enc.forward(x)
    }

    /// Training forward pass (see the module notes); `beta_c` weighs the commitment term. Only
    /// the first `recon_rows` rows are decoded (the decoder is the costliest part; rows that
    /// only serve the alignment need no reconstruction).
    pub fn forward(&self, x: &Tensor, beta_c: f64, recon_rows: usize) -> Result<QuantOut> {
        let h = self.enc.forward(x)?;
        let n = h.dim(0)?;
        let mut r = h.clone();
        let mut z: Option<Tensor> = None;
        let mut code_loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
        let mut codes = vec![0u32; n * self.shape.levels];
        let mut residuals = Vec::with_capacity(self.shape.levels);
        for (l, book) in self.books.iter().enumerate() {
            let rd = r.detach();
            let idx = sq_dists(&rd, &book.as_detached_tensor())?.argmin(D::Minus1)?;
            let e = book.as_tensor().index_select(&idx, 0)?;
            let codebook = (&rd - &e)?.sqr()?.sum(1)?.mean(0)?;
            let commit = (&r - e.detach())?.sqr()?.sum(1)?.mean(0)?;
            code_loss = ((code_loss + codebook)? + commit.affine(beta_c, 0.0)?)?;
            for (i, c) in idx.to_vec1::<u32>()?.into_iter().enumerate() {
                codes[i * self.shape.levels + l] = c;
            }
            residuals.push(rd);
            r = (&r - e.detach())?;
            z = Some(match z {
                None => e,
                Some(z) => (z + e)?,
            });
        }
        let z = z.expect("levels >= 1 is validated by DasConfig");
        let m = recon_rows.min(n);
        let (hm, zm) = (h.narrow(0, 0, m)?, z.narrow(0, 0, m)?);
        let z_st = (&hm + (&zm - &hm)?.detach())?;
        let recon = (self.dec.forward(&z_st)? - x.narrow(0, 0, m)?)?
            .sqr()?
            .sum(1)?
            .mean(0)?;
        let z_align = ((&z + &h)? - h.detach())?;
        Ok(QuantOut {
            z_align,
            codes,
            recon,
            code_loss,
            residuals,
        })
    }

    /// Plain autoencoder loss `||x - dec(enc(x))||^2` (summed over dimensions, mean over rows):
    /// the warm-up before k-means, so codebooks are fitted to an encoder that has stopped
    /// moving fast (fitted to a random encoder, they die within a few dozen steps).
    pub fn ae_loss(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.dec.forward(&self.enc.forward(x)?)?;
        Ok((y - x)?.sqr()?.sum(1)?.mean(0)?)
    }

    /// Inference: codes (`n x L`, row-major) and `z` (`n x D`) for `x` (`n x in_dim`), in chunks.
    pub fn encode(&self, x: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        let d = self.shape.in_dim;
        let mut codes = Vec::with_capacity(x.len() / d * self.shape.levels);
        let mut zs = Vec::with_capacity(x.len() / d * self.shape.code_dim);
        for chunk in x.chunks(4096 * d) {
            let xt = Tensor::from_slice(chunk, (chunk.len() / d, d), &Device::Cpu)?;
            let h = self.enc.forward(&xt)?;
            let (c, z) = self.quantize_h(&h)?;
            codes.extend(c);
            zs.extend(z.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok((codes, zs))
    }

    /// Greedy residual quantization of already-encoded vectors `h` (`n x D`).
    pub fn quantize_h(&self, h: &Tensor) -> Result<(Vec<u32>, Tensor)> {
        let n = h.dim(0)?;
        let mut r = h.detach();
        let mut z = Tensor::zeros_like(&r)?;
        let mut codes = vec![0u32; n * self.shape.levels];
        for (l, book) in self.books.iter().enumerate() {
            let idx = sq_dists(&r, &book.as_detached_tensor())?.argmin(D::Minus1)?;
            let e = book.as_detached_tensor().index_select(&idx, 0)?;
            for (i, c) in idx.to_vec1::<u32>()?.into_iter().enumerate() {
                codes[i * self.shape.levels + l] = c;
            }
            r = (r - &e)?;
            z = (z + e)?;
        }
        Ok((codes, z))
    }

    /// Codebook `l` as a row-major `K x D` vector.
    pub fn book(&self, l: usize) -> Result<Vec<f32>> {
        Ok(self.books[l]
            .as_detached_tensor()
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// k-means++/Lloyd init of every codebook on the encoder outputs of `x_sample`, level by
    /// level on the residuals.
    pub fn init_codebooks(
        &mut self,
        x_sample: &[f32],
        iters: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        let n = x_sample.len() / self.shape.in_dim;
        let xt = Tensor::from_slice(x_sample, (n, self.shape.in_dim), &Device::Cpu)?;
        let h = self.enc.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
        let (k, d) = (self.shape.codes, self.shape.code_dim);
        let books = residual_kmeans(&h, d, self.shape.levels, k, iters, rng)?;
        for (var, b) in self.books.iter().zip(books) {
            var.set(&Tensor::from_vec(b, (k, d), &Device::Cpu)?)?;
        }
        Ok(())
    }

    /// Records which codes a batch used at `step`.
    pub fn mark_used(&mut self, codes: &[u32], step: usize) {
        let levels = self.shape.levels;
        for row in codes.chunks(levels) {
            for (l, &c) in row.iter().enumerate() {
                self.last_used[l][c as usize] = step;
            }
        }
    }

    /// Re-seeds every code unused for more than `window` steps with a random residual of the
    /// current batch (plus tiny noise so two re-seeded codes never coincide). Returns how many.
    pub fn reseed_dead(
        &mut self,
        step: usize,
        window: usize,
        residuals: &[Tensor],
        rng: &mut ChaCha8Rng,
    ) -> Result<usize> {
        let mut total = 0;
        for (l, res) in residuals.iter().enumerate() {
            let dead: Vec<usize> = (0..self.shape.codes)
                .filter(|&c| step.saturating_sub(self.last_used[l][c]) > window)
                .collect();
            if dead.is_empty() {
                continue;
            }
            let rows = res.to_vec2::<f32>()?;
            let mut book = self.book(l)?;
            let d = self.shape.code_dim;
            for &c in &dead {
                let src = &rows[rng.random_range(0..rows.len())];
                for j in 0..d {
                    book[c * d + j] = src[j] + rng.random_range(-1e-3..1e-3);
                }
                self.last_used[l][c] = step;
            }
            self.books[l].set(&Tensor::from_vec(
                book,
                (self.shape.codes, d),
                &Device::Cpu,
            )?)?;
            total += dead.len();
        }
        Ok(total)
    }
}

impl RqVae {
    /// Decoder output for the quantized `x` (inference, row-major `n x in_dim`).
    pub fn reconstruct(&self, x: &[f32]) -> Result<Vec<f32>> {
        let d = self.shape.in_dim;
        let mut out = Vec::with_capacity(x.len());
        for chunk in x.chunks(4096 * d) {
            let xt = Tensor::from_slice(chunk, (chunk.len() / d, d), &Device::Cpu)?;
            let (_, z) = self.quantize_h(&self.enc.forward(&xt)?)?;
            out.extend(self.dec.forward(&z)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn setup() -> (RqVae, Params, Tensor) {
        let mut p = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let shape = RqShape {
            in_dim: 6,
            code_dim: 4,
            levels: 2,
            codes: 5,
        };
        let mut q = RqVae::new(&mut p, &mut rng, "t", shape, &[8]).expect("build");
        let x: Vec<f32> = (0..60).map(|_| rng.random_range(-1.0..1.0)).collect();
        q.init_codebooks(&x, 5, &mut rng).expect("init");
        (q, p, Tensor::from_vec(x, (10, 6), &Device::Cpu).expect("t"))
    }

    #[test]
    fn forward_shapes_and_codebook_gradient_is_exact() {
        let (q, p, x) = setup();
        let out = q.forward(&x, 0.25, 10).expect("fwd");
        assert_eq!(out.z_align.dims(), &[10, 4]);
        assert_eq!(out.codes.len(), 20);
        assert_eq!(out.residuals.len(), 2);
        let grads = out.code_loss.backward().expect("bw");
        let book = &p.vars_with_prefix("t.book0")[0];
        let g = grads
            .get(book.as_tensor())
            .expect("codebook gets a gradient")
            .to_vec2::<f32>()
            .expect("v");
        // d/de_c of mean_i ||sg(r_i) - e_c||^2 = (2/n) sum_{i -> c} (e_c - r_i)
        let e = book.as_tensor().to_vec2::<f32>().expect("v");
        let r = out.residuals[0].to_vec2::<f32>().expect("v");
        for c in 0..5 {
            for j in 0..4 {
                let want: f32 = (0..10)
                    .filter(|&i| out.codes[i * 2] == c as u32)
                    .map(|i| 2.0 * (e[c][j] - r[i][j]) / 10.0)
                    .sum();
                assert!(
                    (want - g[c][j]).abs() < 1e-4,
                    "code {c} dim {j}: {want} vs {}",
                    g[c][j]
                );
            }
        }
    }

    #[test]
    fn alignment_gradient_reaches_codes_and_encoder_and_recon_reaches_encoder() {
        let (q, p, x) = setup();
        let out = q.forward(&x, 0.25, 10).expect("fwd");
        let grads = out.z_align.sum_all().expect("sum").backward().expect("bw");
        let book = &p.vars_with_prefix("t.book1")[0];
        let g = grads
            .get(book.as_tensor())
            .expect("code gradient")
            .sum(1)
            .expect("s")
            .to_vec1::<f32>()
            .expect("v");
        // each use of code c adds 1 per dimension: the gradient counts its uses
        for (c, gc) in g.iter().enumerate() {
            let uses = out.codes.chunks(2).filter(|t| t[1] == c as u32).count() as f32;
            assert!((gc - 4.0 * uses).abs() < 1e-4);
        }
        assert!(
            grads
                .get(p.vars_with_prefix("t.enc.0.weight")[0].as_tensor())
                .is_some(),
            "straight-through to encoder"
        );
        let grads = out.recon.backward().expect("bw");
        assert!(grads
            .get(p.vars_with_prefix("t.enc.0.weight")[0].as_tensor())
            .is_some());
        assert!(
            grads
                .get(p.vars_with_prefix("t.book0")[0].as_tensor())
                .is_none(),
            "recon is straight-through, not into codes"
        );
    }

    #[test]
    fn encode_matches_training_codes() {
        let (q, _, x) = setup();
        let out = q.forward(&x, 0.25, 10).expect("fwd");
        let flat = x.flatten_all().expect("f").to_vec1::<f32>().expect("v");
        let (codes, z) = q.encode(&flat).expect("enc");
        assert_eq!(codes, out.codes);
        assert_eq!(z.len(), 40);
    }
}
