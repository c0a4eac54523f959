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

/// The rows a training batch feeds one quantizer. A batch repeats entities (anchors are drawn
/// in proportion to popularity, partners and uniform extras add more), so each distinct entity is
/// encoded and decoded once and its result copied to every row that names it (`index_select`,
/// whose backward sums the copies' gradients): the same loss and gradients as running every row,
/// for the cost of the distinct ones.
#[derive(Debug)]
pub struct QuantRows {
    /// Inputs of the distinct entities, in order of first appearance (`u x in_dim`).
    pub(crate) x: Tensor,
    /// Slot in `x` of every batch row (`n`).
    pos: Tensor,
    /// Distinct slots among the reconstructed rows (the first `recon_rows` batch rows) ...
    recon_slots: Tensor,
    /// ... the batch row where each first appears ...
    recon_first: Tensor,
    /// ... and its share of the reconstructed rows (count / `recon_rows`).
    recon_share: Tensor,
}

impl QuantRows {
    /// Rows `ids` (entity ids into the row-major `x_all` of dimension `d`); the first
    /// `recon_rows` of them are reconstructed.
    pub fn new(ids: &[u32], x_all: &[f32], d: usize, recon_rows: usize) -> Result<Self> {
        let mut slot_of = std::collections::HashMap::with_capacity(ids.len());
        let (mut distinct, mut pos) = (Vec::new(), Vec::with_capacity(ids.len()));
        for &id in ids {
            let next = distinct.len() as u32;
            let s = *slot_of.entry(id).or_insert_with(|| {
                distinct.push(id);
                next
            });
            pos.push(s);
        }
        let m = recon_rows.min(ids.len());
        // slots are numbered by first appearance, so those of the first m rows are 0..k
        let k = pos[..m].iter().max().map_or(0, |&s| s as usize + 1);
        let (mut first, mut count) = (vec![u32::MAX; k], vec![0f32; k]);
        for (row, &s) in pos[..m].iter().enumerate() {
            if first[s as usize] == u32::MAX {
                first[s as usize] = row as u32;
            }
            count[s as usize] += 1.0 / m as f32;
        }
        let dev = &Device::Cpu;
        let x = Tensor::from_vec(gather(x_all, d, &distinct), (distinct.len(), d), dev)?;
        Ok(Self {
            x,
            pos: Tensor::from_vec(pos, ids.len(), dev)?,
            recon_slots: Tensor::arange(0u32, k as u32, dev)?,
            recon_first: Tensor::from_vec(first, k, dev)?,
            recon_share: Tensor::from_vec(count, k, dev)?,
        })
    }

    /// Number of distinct entities (what the encoder runs on).
    pub fn distinct(&self) -> usize {
        self.x.dim(0).unwrap_or(0)
    }

    /// The input of batch row `r`.
    #[cfg(test)]
    pub(crate) fn row_input(&self, r: usize) -> Result<Vec<f32>> {
        let slot = self.pos.get(r)?.to_scalar::<u32>()?;
        Ok(self.x.get(slot as usize)?.to_vec1::<f32>()?)
    }
}

fn gather(x: &[f32], d: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * d);
    for &i in ids {
        out.extend_from_slice(&x[i as usize * d..(i as usize + 1) * d]);
    }
    out
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
    /// Encoder output of the distinct input rows (`QuantRows::x`), with gradient.
    pub h_distinct: Tensor,
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
    /// the reconstructed rows of `rows` are decoded (the decoder is the costliest part; rows that
    /// only serve the alignment need no reconstruction).
    pub fn forward(&self, rows: &QuantRows, beta_c: f64) -> Result<QuantOut> {
        let h_distinct = self.enc.forward_const(&rows.x)?;
        let h = h_distinct.index_select(&rows.pos, 0)?;
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
        // mean over the reconstructed rows = share-weighted sum over their distinct entities
        let hm = h_distinct.index_select(&rows.recon_slots, 0)?;
        let zm = z.index_select(&rows.recon_first, 0)?;
        let z_st = (&hm + (&zm - &hm)?.detach())?;
        let xm = rows.x.index_select(&rows.recon_slots, 0)?;
        let recon =
            ((self.dec.forward(&z_st)? - xm)?.sqr()?.sum(1)? * &rows.recon_share)?.sum_all()?;
        let z_align = ((&z + &h)? - h.detach())?;
        Ok(QuantOut {
            z_align,
            codes,
            recon,
            code_loss,
            residuals,
            h_distinct,
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
        self.encode_with(x, true)
    }

    /// The encoder outputs `h` (before quantization) of the rows of `x`, row-major `n x D`.
    pub fn encoder_outputs(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self.encode_with(x, false)?.1)
    }

    /// Codes and `z` when `quantize`, else no codes and `h`.
    fn encode_with(&self, x: &[f32], quantize: bool) -> Result<(Vec<u32>, Vec<f32>)> {
        let d = self.shape.in_dim;
        let mut codes = Vec::with_capacity(x.len() / d * self.shape.levels);
        let mut zs = Vec::with_capacity(x.len() / d * self.shape.code_dim);
        for chunk in x.chunks(4096 * d) {
            let xt = Tensor::from_slice(chunk, (chunk.len() / d, d), &Device::Cpu)?;
            let h = self.enc.forward(&xt)?;
            if !quantize {
                zs.extend(h.flatten_all()?.to_vec1::<f32>()?);
                continue;
            }
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

    /// Codebook of level `l` (`K x D`), with gradient.
    pub fn book_tensor(&self, l: usize) -> &Tensor {
        self.books[l].as_tensor()
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

    /// Relabels the codes of level `l`: row `c` of the new codebook is old row `src[c]` (`src`
    /// is a permutation of `0..K`). Residual quantization picks the same vectors, only their
    /// numbers change. The codebook is overwritten in place (clones of this quantizer share it).
    pub fn permute_codes(&mut self, l: usize, src: &[u32]) -> Result<()> {
        let idx = Tensor::from_slice(src, src.len(), &Device::Cpu)?;
        let book = self.books[l].as_detached_tensor().index_select(&idx, 0)?;
        self.books[l].set(&book)?;
        let used = &self.last_used[l];
        self.last_used[l] = src.iter().map(|&c| used[c as usize]).collect();
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

    fn setup() -> (RqVae, Params, QuantRows) {
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
        let ids: Vec<u32> = (0..10).collect();
        (q, p, QuantRows::new(&ids, &x, 6, 10).expect("rows"))
    }

    #[test]
    fn forward_shapes_and_codebook_gradient_is_exact() {
        let (q, p, x) = setup();
        let out = q.forward(&x, 0.25).expect("fwd");
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
        let out = q.forward(&x, 0.25).expect("fwd");
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
        let out = q.forward(&x, 0.25).expect("fwd");
        let flat = x.x.flatten_all().expect("f").to_vec1::<f32>().expect("v");
        let (codes, z) = q.encode(&flat).expect("enc");
        assert_eq!(codes, out.codes);
        assert_eq!(z.len(), 40);
    }

    #[test]
    fn repeated_rows_are_encoded_once_with_the_same_losses_and_gradients() {
        let (q, p, rows) = setup();
        let x = rows
            .x
            .flatten_all()
            .expect("f")
            .to_vec1::<f32>()
            .expect("v");
        let ids = [3u32, 1, 3, 7, 1, 3, 2];
        // the same batch with every row a distinct entity (a copy of the input)
        let copies: Vec<f32> = ids
            .iter()
            .flat_map(|&i| x[i as usize * 6..(i as usize + 1) * 6].to_vec())
            .collect();
        let seq: Vec<u32> = (0..ids.len() as u32).collect();
        let dedup = QuantRows::new(&ids, &x, 6, 5).expect("rows");
        let plain = QuantRows::new(&seq, &copies, 6, 5).expect("rows");
        assert_eq!((dedup.distinct(), plain.distinct()), (4, 7));
        let loss = |r: &QuantRows| {
            let out = q.forward(r, 0.25).expect("fwd");
            let sem = out.sem_loss().expect("l");
            let total = (sem + out.z_align.sum_all().expect("s")).expect("add");
            let g = total.backward().expect("bw");
            let grad = |name: &str| {
                let v = &p.vars_with_prefix(name)[0];
                g.get(v.as_tensor())
                    .expect("grad")
                    .flatten_all()
                    .expect("f")
                    .to_vec1::<f32>()
                    .expect("v")
            };
            let (recon, codes) = (out.recon.to_scalar::<f32>().expect("s"), out.codes);
            (recon, codes, grad("t.enc.0.weight"), grad("t.dec.1.weight"))
        };
        let (a, b) = (loss(&dedup), loss(&plain));
        assert!((a.0 - b.0).abs() < 1e-5, "recon {} vs {}", a.0, b.0);
        assert_eq!(a.1, b.1);
        for (ga, gb) in [(&a.2, &b.2), (&a.3, &b.3)] {
            for (u, v) in ga.iter().zip(gb.iter()) {
                assert!((u - v).abs() < 1e-5, "{u} vs {v}");
            }
        }
    }
}
