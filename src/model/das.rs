//! The trained artefact: quantizers (+ ICDM tables), batched inference and checkpoints.
//!
//! A [`TrainedModel`] is what a training run hands over: it encodes item and user vectors to
//! codes and `z`, routes a user into the item SID space, and saves / loads itself as
//! `model.safetensors` + `model.json`. Loading rebuilds the same structure from the JSON and
//! overwrites every tensor, so a loaded model gives bit-identical SIDs.
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::DasConfig;
use super::data::{center_rows, l2_normalise_rows};
use super::icdm::Icdm;
use super::kmeans;
use super::nn::{rng_for, Params};
use super::rqvae::{RqShape, RqVae};
use super::{ModelError, Result};

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The one-stage dual-aligned model (UISM + ICDM + MDAM).
    Das,
    /// RQ-VAE on item content only; users are encoded by the item quantizer from their profile.
    RqVae,
    /// Residual k-means on item content (no network); users quantized by the same codebooks.
    RqKMeans,
    /// ICDM first, then RQ-VAEs with one contrastive term each against the frozen CF vectors.
    TwoStage,
    /// ICDM alone (no SIDs): the ID-only reference.
    Cf,
}

impl std::str::FromStr for Method {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "das" => Ok(Self::Das),
            "rqvae" => Ok(Self::RqVae),
            "rqkmeans" => Ok(Self::RqKMeans),
            "two-stage" => Ok(Self::TwoStage),
            "cf" => Ok(Self::Cf),
            _ => Err(ModelError::InvalidConfig(format!("unknown method {s}"))),
        }
    }
}

/// Sizes fixed at training time, saved with the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    /// Method trained.
    pub method: Method,
    /// Full configuration.
    pub config: DasConfig,
    /// Item input dimension.
    pub item_dim: usize,
    /// User input dimension.
    pub user_dim: usize,
    /// Codes per level actually used.
    pub codes: usize,
    /// Items trained on.
    pub n_items: usize,
    /// Users trained on.
    pub n_users: usize,
}

/// A trained model (any [`Method`]).
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// Sizes and settings.
    pub meta: ModelMeta,
    pub(crate) params: Params,
    pub(crate) item_q: Option<RqVae>,
    pub(crate) user_q: Option<RqVae>,
    pub(crate) icdm: Option<Icdm>,
    pub(crate) rqk_books: Option<Vec<Vec<f32>>>,
    /// Training means of the item / user inputs (empty = no centring).
    pub(crate) item_mean: Vec<f32>,
    pub(crate) user_mean: Vec<f32>,
}

/// Codes (`n x L`, row-major) and vectors (`n x dim`) of a batch of entities.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Codes, row-major `n x levels`.
    pub codes: Vec<u32>,
    /// Quantized vectors, row-major `n x dim`.
    pub z: Vec<f32>,
    /// Dimension of `z`.
    pub dim: usize,
}

impl TrainedModel {
    /// Builds an untrained model of the given shape (the trainer and the loader both start here).
    pub fn build(meta: ModelMeta, item_count: &[f32]) -> Result<Self> {
        let cfg = &meta.config;
        let mut rng = rng_for(cfg.seed, "init");
        let mut params = Params::default();
        let shape = |in_dim| RqShape {
            in_dim,
            code_dim: cfg.code_dim,
            levels: cfg.levels,
            codes: meta.codes,
        };
        let net_items = matches!(meta.method, Method::Das | Method::RqVae | Method::TwoStage);
        let net_users = matches!(meta.method, Method::Das | Method::TwoStage);
        let with_icdm = matches!(meta.method, Method::Das | Method::TwoStage | Method::Cf);
        let item_q = net_items
            .then(|| {
                RqVae::new(
                    &mut params,
                    &mut rng,
                    "item",
                    shape(meta.item_dim),
                    &cfg.hidden,
                )
            })
            .transpose()?;
        let user_q = net_users
            .then(|| {
                RqVae::new(
                    &mut params,
                    &mut rng,
                    "user",
                    shape(meta.user_dim),
                    &cfg.hidden,
                )
            })
            .transpose()?;
        let icdm = with_icdm
            .then(|| Icdm::new(&mut params, &mut rng, meta.n_users, item_count, cfg))
            .transpose()?;
        Ok(Self {
            meta,
            params,
            item_q,
            user_q,
            icdm,
            rqk_books: None,
            item_mean: Vec::new(),
            user_mean: Vec::new(),
        })
    }

    fn check_dim(x: &[f32], dim: usize) -> Result<usize> {
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(ModelError::DimMismatch {
                expected: dim,
                got: x.len(),
            });
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::InvalidData(
                "input vector holds a non-finite value".into(),
            ));
        }
        Ok(x.len() / dim)
    }

    /// Encodes item vectors (`n x item_dim`, normalised here) to item SIDs and `z`.
    pub fn encode_items(&self, x: &[f32]) -> Result<Encoded> {
        Self::check_dim(x, self.meta.item_dim)?;
        self.encode_item_space(&self.item_inputs(x))
    }

    /// Raw item vectors -> quantizer inputs: L2-normalised, centred, re-normalised.
    fn item_inputs(&self, x: &[f32]) -> Vec<f32> {
        let mut x = x.to_vec();
        l2_normalise_rows(&mut x, self.meta.item_dim);
        center_rows(&x, self.meta.item_dim, &self.item_mean)
    }

    fn encode_item_space(&self, x: &[f32]) -> Result<Encoded> {
        if let Some(q) = &self.item_q {
            let (codes, z) = q.encode(x)?;
            return Ok(Encoded {
                codes,
                z,
                dim: q.shape.code_dim,
            });
        }
        if let Some(books) = &self.rqk_books {
            let (codes, z) = kmeans::quantize(x, self.meta.item_dim, books)?;
            return Ok(Encoded {
                codes,
                z,
                dim: self.meta.item_dim,
            });
        }
        Err(ModelError::InvalidConfig(
            "method cf has no quantizer".into(),
        ))
    }

    /// Encodes user vectors (`n x user_dim`: own embeddings or item-profile means) to user SIDs
    /// and `z`. Baselines without a user quantizer encode users with the item quantizer.
    pub fn encode_users(&self, x: &[f32]) -> Result<Encoded> {
        Self::check_dim(x, self.meta.user_dim)?;
        let mut x = x.to_vec();
        l2_normalise_rows(&mut x, self.meta.user_dim);
        match &self.user_q {
            Some(q) => {
                let (codes, z) = q.encode(&center_rows(&x, self.meta.user_dim, &self.user_mean))?;
                Ok(Encoded {
                    codes,
                    z,
                    dim: q.shape.code_dim,
                })
            }
            // profile means live in item space: centre them like items for the item quantizer
            None if self.meta.user_dim == self.meta.item_dim => {
                self.encode_item_space(&center_rows(&x, self.meta.user_dim, &self.item_mean))
            }
            None => Err(ModelError::InvalidConfig(
                "baseline needs item-space user profiles".into(),
            )),
        }
    }

    /// A user's route into the item SID space: the item codes its `z_u` falls into, choosing at
    /// each level the nearest code whose bucket passes `populated` (see
    /// [`TrainedModel::route_users_within`]). The mean item `z` norm is taken from `item_z`.
    pub fn route_users(
        &self,
        users: &Encoded,
        item_z: &[f32],
        populated: &dyn Fn(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let mean_item = mean_length(item_z.chunks(users.dim.max(1)));
        self.route_users_within(users, mean_item, populated)
    }

    /// The unconstrained route ([`TrainedModel::route_users_within`] with every bucket
    /// populated): plain residual quantization of the user's `z` by the item codebooks.
    pub fn route_users_scaled(&self, users: &Encoded, mean_item_norm: f32) -> Result<Vec<u32>> {
        self.route_users_within(users, mean_item_norm, &|_| true)
    }

    /// Routes users into the item SID space (`n x levels` codes). The user's `z` is brought into
    /// item code space (with a user quantizer of its own, rescaled to `mean_item_norm`, the mean
    /// item `z` norm, since the two codebooks are separate; without one, it already is a sum of
    /// item codes) and residual-quantized by the item codebooks, taking at each level the
    /// nearest code whose bucket (the codes chosen so far plus this one) passes `populated`.
    /// Once no code does, the remaining levels take the nearest code regardless, so the longest
    /// populated prefix of the route is the populated bucket nearest to the user, level by level,
    /// and with `populated` always true this is plain greedy residual quantization.
    ///
    /// A route into an empty bucket makes a recommender fall back to the whole catalogue: most
    /// of the K^L code tuples hold no item, and a user's nearest tuple is often one of them.
    pub fn route_users_within(
        &self,
        users: &Encoded,
        mean_item_norm: f32,
        populated: &dyn Fn(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let d = users.dim;
        let (books, book_dim) = self.item_books()?;
        if d != book_dim || !users.z.len().is_multiple_of(d.max(1)) {
            return Err(ModelError::InvalidData(format!(
                "user z has {d} dimensions, the item codes {book_dim}"
            )));
        }
        let scale_to = self.user_q.as_ref().map(|_| mean_item_norm);
        let levels = books.len();
        let mut routes = Vec::with_capacity(users.z.len() / d.max(1) * levels);
        let mut dists: Vec<(f32, u32)> = Vec::new();
        for row in users.z.chunks(d) {
            let mut r: Vec<f32> = row.to_vec();
            if let Some(target) = scale_to {
                let s = target / l2_norm(&r).max(1e-9);
                r.iter_mut().for_each(|x| *x *= s);
            }
            let start = routes.len();
            let mut constrained = true;
            for book in &books {
                dists.clear();
                let nearest = book.chunks(d).enumerate();
                dists.extend(nearest.map(|(c, e)| (kmeans::row_dist(&r, e), c as u32)));
                dists.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut pick = dists[0].1;
                if constrained {
                    let mut prefix = routes[start..].to_vec();
                    prefix.push(0);
                    let last = prefix.len() - 1;
                    match dists.iter().find(|&&(_, c)| {
                        prefix[last] = c;
                        populated(&prefix)
                    }) {
                        Some(&(_, c)) => pick = c,
                        None => constrained = false,
                    }
                }
                routes.push(pick);
                let e = &book[pick as usize * d..][..d];
                r.iter_mut().zip(e).for_each(|(a, b)| *a -= b);
            }
        }
        Ok(routes)
    }

    /// The item codebooks, level by level (`codes x dim` each), and their dimension.
    pub(crate) fn item_books(&self) -> Result<(Vec<Vec<f32>>, usize)> {
        match (&self.item_q, &self.rqk_books) {
            (Some(iq), _) => Ok((
                (0..iq.shape.levels)
                    .map(|l| iq.book(l))
                    .collect::<Result<_>>()?,
                iq.shape.code_dim,
            )),
            (None, Some(books)) => Ok((books.clone(), self.meta.item_dim)),
            (None, None) => Err(ModelError::InvalidConfig(
                "method cf has no quantizer".into(),
            )),
        }
    }

    /// The ICDM debiased vectors (`u_int` for all users, `i_pro` for all items), if trained.
    pub fn cf_vectors(&self) -> Option<(&[f32], &[f32], usize)> {
        self.icdm
            .as_ref()
            .map(|m| (&m.u_int.data[..], &m.i_pro.data[..], m.u_int.dim))
    }

    /// Writes `model.safetensors` and `model.json` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |source| ModelError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tensors = self.params.tensors();
        if let Some(icdm) = &self.icdm {
            tensors.extend(icdm.tables()?);
        }
        for (l, b) in self.rqk_books.iter().flatten().enumerate() {
            let t = Tensor::from_slice(
                b,
                (b.len() / self.meta.item_dim, self.meta.item_dim),
                &Device::Cpu,
            )?;
            tensors.insert(format!("rqkmeans.book{l}"), t);
        }
        for (name, mean) in [
            ("input.item_mean", &self.item_mean),
            ("input.user_mean", &self.user_mean),
        ] {
            if !mean.is_empty() {
                tensors.insert(
                    name.into(),
                    Tensor::from_slice(mean, mean.len(), &Device::Cpu)?,
                );
            }
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        let json = serde_json::to_string_pretty(&self.meta).expect("meta serialises: plain data");
        std::fs::write(dir.join("model.json"), json).map_err(io)
    }

    /// Loads a model written by [`TrainedModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let jp = dir.join("model.json");
        let text = std::fs::read_to_string(&jp).map_err(|source| ModelError::Io {
            path: jp.display().to_string(),
            source,
        })?;
        let format = |e: serde_json::Error| ModelError::Format {
            path: jp.display().to_string(),
            reason: e.to_string(),
        };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(format)?;
        // models saved before these settings existed trained on full, age-weighted profiles,
        // without the route alignment, with the full logQ correction in the alignment
        if let Some(cfg) = value.get_mut("config").and_then(|c| c.as_object_mut()) {
            for (key, then) in [
                ("recency_half_life_events", serde_json::json!(0.0)),
                ("causal_user_inputs", serde_json::json!(false)),
                ("w_route", serde_json::json!(0.0)),
                ("align_logq_scale", serde_json::json!(1.0)),
            ] {
                cfg.entry(key).or_insert(then);
            }
        }
        let meta: ModelMeta = serde_json::from_value(value).map_err(format)?;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
        let mut m = Self::build(meta, &[])?;
        if let Some(icdm) = &mut m.icdm {
            icdm.load_tables(&tensors)?;
        }
        m.params.load(&tensors)?;
        let mean = |n: &str| -> Result<Vec<f32>> {
            tensors
                .get(n)
                .map_or(Ok(Vec::new()), |t| Ok(t.to_vec1::<f32>()?))
        };
        m.item_mean = mean("input.item_mean")?;
        m.user_mean = mean("input.user_mean")?;
        if m.meta.method == Method::RqKMeans {
            let books = (0..m.meta.config.levels)
                .map(|l| {
                    let t = tensors.get(&format!("rqkmeans.book{l}")).ok_or_else(|| {
                        ModelError::Format {
                            path: dir.display().to_string(),
                            reason: format!("rqkmeans.book{l} missing"),
                        }
                    })?;
                    Ok(t.flatten_all()?.to_vec1::<f32>()?)
                })
                .collect::<Result<_>>()?;
            m.rqk_books = Some(books);
        }
        Ok(m)
    }
}

impl TrainedModel {
    /// The SID quality report of the items `x` (`n x item_dim`, raw), with reconstruction R^2.
    pub fn item_quality(&self, x: &[f32]) -> Result<super::sid::QualityReport> {
        Self::check_dim(x, self.meta.item_dim)?;
        let x = self.item_inputs(x);
        let enc = self.encode_item_space(&x)?;
        let recon = match &self.item_q {
            Some(q) => q.reconstruct(&x)?,
            None => enc.z.clone(),
        };
        let r2 = super::sid::r2(&x, &recon, self.meta.item_dim);
        Ok(super::sid::quality(
            &enc.codes,
            self.meta.config.levels,
            self.meta.codes,
            Some(r2),
        ))
    }
}

/// Euclidean length of a row.
pub(crate) fn l2_norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Mean Euclidean length of `rows` (0 for none), summed in `f64`: the item `z` length users are
/// rescaled to when routed into the item codes ([`TrainedModel::route_users_within`]).
pub fn mean_length<'a>(rows: impl ExactSizeIterator<Item = &'a [f32]>) -> f32 {
    let n = rows.len();
    let sum: f64 = rows.map(|r| f64::from(l2_norm(r))).sum();
    (sum / n.max(1) as f64) as f32
}
