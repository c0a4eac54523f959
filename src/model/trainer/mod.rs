//! The training loops: DAS in one stage, and the baselines on the same budget.
//!
//! One DAS step: sample `batch` positive pairs `(u, i)` from the log (so items come in proportion
//! to popularity, like serving traffic), and `sem_uniform` uniform entities per side (so cold
//! items are reconstructed too). The item-side co-occurrence term gets its own anchors, drawn
//! item first (`co_item_first`), so the tail of the catalogue is aligned too; the other terms
//! use the first `align_rows` pairs. Co-occurrence partners: `u+` (another user of `i`) and
//! `i+` (another item of the anchor's user). Each quantizer runs once on
//! `[pairs, uniform, separate anchors, partners]`; ICDM runs on the pairs; the six InfoNCE
//! terms tie `z_u`, `z_i` to `u_int`, `i_pro` and to each other.
//! `alpha` is on from the start (ICDM shares no parameters with the codes, so it only needs a
//! head start); `beta` is 0 during `warmup_steps` and ramps linearly over `ramp_steps`, so
//! untrained CF vectors do not drag the codes around.
//!
//! [`train_with`] adds the controls a background trainer needs ([`TrainControl`]): a cancel
//! flag checked every step, progress reports over the whole run, and a warm start from the
//! previous version (see [`train_with`] for what carries over).
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::DasConfig;
use super::das::{Method, ModelMeta, TrainedModel};
use super::data::{center_rows, col_mean, PairSampler, Prepared, TrainingData};
use super::icdm::{log_share, IcdmOut};
use super::mdam::{info_nce, info_nce_q, route_nce, sample_partners};
use super::nn::rng_for;
use super::rqvae::{QuantOut, QuantRows, RqVae};
use super::{kmeans, ModelError, Result};

mod sampler;
mod step;
#[cfg(test)]
mod tests;

use sampler::*;

/// Where the training time went, and the last losses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainStats {
    /// Steps run (all stages).
    pub steps: usize,
    /// Wall seconds of the whole run (including k-means init).
    pub seconds: f64,
    /// CPU seconds of the training thread over the whole run (Linux; `None` elsewhere): what the
    /// run costs whatever else the machine is doing. With `threads = 1` candle's kernels run on
    /// this thread, so on an idle machine it matches `seconds`. The batch sampler's thread is
    /// not counted (see `sample_s`).
    #[serde(default)]
    pub cpu_s: Option<f64>,
    /// Seconds the training steps waited for their batches (sampling runs ahead on a thread of
    /// its own; what is left here is what it could not hide).
    pub data_s: f64,
    /// Seconds the batch sampler thread spent drawing batches and building their inputs
    /// (overlapping the steps).
    #[serde(default)]
    pub sample_s: f64,
    /// Seconds in forward passes.
    pub forward_s: f64,
    /// Seconds in backward passes.
    pub backward_s: f64,
    /// Seconds in optimiser updates (dense + sparse) and re-seeding.
    pub optim_s: f64,
    /// Codes re-seeded over the run.
    pub reseeded: usize,
    /// Last semantic, CF and alignment losses (0 when not part of the method).
    pub last_losses: [f32; 3],
}

impl TrainStats {
    /// Steps per second.
    pub fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.seconds.max(1e-9)
    }
}

/// Which parts a step trains.
#[derive(Debug, Clone, Copy)]
struct Plan {
    sem_item: bool,
    sem_user: bool,
    cf: bool,
    /// Joint alignment (DAS), frozen (two-stage) or none.
    align: Align,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Align {
    None,
    Joint,
    Frozen,
}

/// Controls of one training run. `Default` is a plain run: no cancel, no reports, from scratch.
#[derive(Clone, Copy, Default)]
pub struct TrainControl<'a> {
    /// When set (by another thread, or from `progress`), training stops at the next step with
    /// [`ModelError::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
    /// Called at most every 10 steps and at the end of each stage.
    pub progress: Option<&'a (dyn Fn(&Progress) + Sync)>,
    /// The previous version to start from, if compatible (see [`train_with`]).
    pub warm_start: Option<&'a TrainedModel>,
    /// Called on the training thread after every progress step; a background trainer paces
    /// itself here (sleeps while the server is busy).
    pub pace: Option<&'a (dyn Fn() + Sync)>,
}

impl std::fmt::Debug for TrainControl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainControl")
            .field("cancel", &self.cancel)
            .field("progress", &self.progress.is_some())
            .field("warm_start", &self.warm_start.map(|m| m.meta.method))
            .field("pace", &self.pace.is_some())
            .finish()
    }
}

/// A progress report. `step / total_steps` is the share of the run done (0..1): `total_steps`
/// counts every stage, including the autoencoder warm-up and one step per k-means
/// initialisation, so a caller can derive an ETA from it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Progress {
    /// The stage the step belongs to: `"warmup"` (autoencoder), `"kmeans"` (codebook init, or
    /// the whole RQ-KMeans fit), `"cf"` (the CF stage of two-stage) or `"train"`.
    pub stage: &'static str,
    /// Steps done in the whole run, `1..=total_steps`.
    pub step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Last semantic, CF and alignment losses (0 when not part of the method or stage).
    pub losses: [f32; 3],
}

struct Trainer<'a> {
    /// The data with centred inputs, as the quantizers see them.
    prep: &'a Prepared,
    /// The same data as prepared (inputs not centred): causal user inputs are profiles of it.
    raw: &'a Prepared,
    cfg: DasConfig,
    model: TrainedModel,
    opt: AdamW,
    /// Initialisation and code re-seeding (batches draw from their own stream, in
    /// [`BatchSampler`]).
    rng: ChaCha8Rng,
    stats: TrainStats,
    /// Cancel flag and progress callback (`warm_start` is `Some` only when it is used).
    ctl: TrainControl<'a>,
    /// Progress steps done and planned.
    done: usize,
    total: usize,
    /// Log of the probability that a batch row holds each item / user (positives are sampled
    /// uniformly, so it is the entity's share of them), times `align_logq_scale`: the logQ
    /// correction of the alignment.
    log_q_items: Vec<f32>,
    log_q_users: Vec<f32>,
}

/// Trains `method` on `data` with `cfg`. Same seed and data give identical SIDs.
pub fn train(
    data: &TrainingData,
    method: Method,
    cfg: &DasConfig,
) -> Result<(TrainedModel, TrainStats)> {
    cfg.validate()?;
    let prep = Prepared::new(data, cfg.recency())?;
    train_prepared(&prep, method, cfg)
}

/// Like [`train`], on already prepared data.
pub fn train_prepared(
    prep: &Prepared,
    method: Method,
    cfg: &DasConfig,
) -> Result<(TrainedModel, TrainStats)> {
    train_with(prep, method, cfg, &TrainControl::default())
}

/// Like [`train_prepared`], under the controls `ctl`: cancellation, progress reports and warm
/// start.
///
/// **Warm start.** When `ctl.warm_start` is a compatible previous version (same method, input
/// dimensions, levels, codes per level, code dimension and hidden sizes; otherwise it is ignored
/// and the reason logged at info level), the run starts from it:
/// - every parameter whose name and shape match is copied: encoders, decoders and codebooks of
///   both quantizers, and the ICDM fusion / bias-statistics MLPs;
/// - the previous input means are reused (not recomputed on the new data), so the copied
///   encoders see inputs centred exactly as they were trained on;
/// - the autoencoder warm-up, the k-means codebook init and the k-means codebook refresh are
///   skipped (they would throw the copied codebooks away); RQ-KMeans runs Lloyd from the
///   previous codebooks instead of k-means++;
/// - the ICDM ID tables are new, sized by the current entity counts (entity indexes are not
///   stable across data snapshots). `u_con` / `i_pop` start random as usual, but the debiased
///   vectors `u_int` / `i_pro` start at the previous version's encoder outputs `h` of the
///   current entities (`seed_cf_from_encoder`): random ones would span a new orientation and the
///   alignment would turn the whole code space after them. Measured on the planted synthetic data
///   (8 groups, 8 codes): level-1 churn after warm start + [`crate::model::align_codes`] is
///   0.4 % with these tables, 63 % with random ones (a cold retrain: 67 %). The alignment
///   warm-up and ramp still apply.
///
/// The optimiser state is fresh either way. Warm start makes a retrain's codes stay close to the
/// previous ones; [`crate::model::align_codes`] then fixes the code numbers.
pub fn train_with(
    prep: &Prepared,
    method: Method,
    cfg: &DasConfig,
    ctl: &TrainControl,
) -> Result<(TrainedModel, TrainStats)> {
    cfg.validate()?;
    let (start, cpu0) = (Instant::now(), thread_cpu_seconds());
    let mut model = build_model(prep, method, cfg)?;
    let warm = ctl
        .warm_start
        .filter(|prev| match warm_mismatch(prev, &model.meta) {
            None => true,
            Some(why) => {
                tracing::info!(why, "warm start ignored: previous model is incompatible");
                false
            }
        });
    let mut work = prep.clone();
    if let Some(prev) = warm {
        let copied = model.params.copy_matching(&prev.params)?;
        tracing::info!(copied, "warm start from the previous model");
        model.item_mean = prev.item_mean.clone();
        model.user_mean = prev.user_mean.clone();
    } else if cfg.center_inputs {
        model.item_mean = col_mean(&prep.x_item, prep.item_dim);
        model.user_mean = col_mean(&prep.x_user, prep.user_dim);
    }
    work.x_item = center_rows(&prep.x_item, prep.item_dim, &model.item_mean);
    work.x_user = center_rows(&prep.x_user, prep.user_dim, &model.user_mean);
    if let Some(prev) = warm {
        seed_cf_from_encoder(&mut model, prev, &work)?;
    }
    let scaled;
    let cfg = match warm {
        Some(_) => {
            scaled = DasConfig {
                lr: cfg.lr * cfg.warm_lr_scale,
                ..cfg.clone()
            };
            &scaled
        }
        None => cfg,
    };
    let mut t = Trainer::new(&work, prep, model, cfg)?;
    t.ctl = TrainControl {
        warm_start: warm,
        ..*ctl
    };
    t.total = total_steps(method, cfg, warm.is_some());
    t.run(method)?;
    t.stats.seconds = start.elapsed().as_secs_f64();
    t.stats.cpu_s = thread_cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    Ok((t.model, t.stats))
}

/// Starts the debiased ID vectors (`i_pro`, `u_int`) of a warm start at the previous version's
/// encoder outputs `h` of the current entities. Fresh random ID vectors would span an arbitrary
/// new orientation, and the alignment would then turn the whole code space (and every code
/// assignment) to follow it; started at `h`, the CF space the codes align with keeps the
/// previous orientation. The tables are still sized by the current entity counts and indexed by
/// the current entities (their inputs are encoded here), so no index needs to be stable.
///
/// `h`, not the quantized `z`: entities that shared a full code tuple share one `z`, so seeding
/// from `z` started them with identical CF vectors, which the self alignment then held together.
/// On MovieLens-1M (seed 42, v1 1,500 steps with 10.97 % collisions, warm retrain 750 steps):
/// seeded from `z` the retrain had 11.54 % collisions, from `h` 10.35 %, at level-1 churn 3.5 %
/// and 3.8 %.
fn seed_cf_from_encoder(
    model: &mut TrainedModel,
    prev: &TrainedModel,
    work: &Prepared,
) -> Result<()> {
    let Some(icdm) = &mut model.icdm else {
        return Ok(());
    };
    if let Some(q) = &prev.item_q {
        icdm.i_pro.data = q.encoder_outputs(&work.x_item)?;
    }
    if let Some(q) = &prev.user_q {
        icdm.u_int.data = q.encoder_outputs(&work.x_user)?;
    }
    Ok(())
}

/// Why `prev` cannot warm-start a model of `meta`, or `None` when it can.
fn warm_mismatch(prev: &TrainedModel, meta: &ModelMeta) -> Option<String> {
    let (p, c) = (&prev.meta, &meta.config);
    let checks = [
        (p.method == meta.method, "method"),
        (p.item_dim == meta.item_dim, "item_dim"),
        (p.user_dim == meta.user_dim, "user_dim"),
        (p.codes == meta.codes, "codes per level"),
        (p.config.levels == c.levels, "levels"),
        (p.config.code_dim == c.code_dim, "code_dim"),
        (p.config.hidden == c.hidden, "hidden sizes"),
        (
            meta.method != Method::RqKMeans || prev.rqk_books.is_some(),
            "codebooks",
        ),
    ];
    checks
        .iter()
        .find(|(ok, _)| !ok)
        .map(|(_, what)| format!("{what} differs"))
}

/// Progress steps of a whole run of `method`: training steps per stage, plus the autoencoder
/// warm-up and one step per k-means init when the codebooks are initialised from scratch.
fn total_steps(method: Method, cfg: &DasConfig, warm: bool) -> usize {
    let init = if cfg.kmeans_init && !warm {
        cfg.ae_warmup_steps + 1
    } else {
        0
    };
    match method {
        Method::RqKMeans => 1,
        Method::Cf => cfg.steps,
        Method::RqVae | Method::Das => init + cfg.steps,
        Method::TwoStage => cfg.steps + init + cfg.steps,
    }
}

/// CPU time of the calling thread, from `/proc/thread-self/schedstat` (nanoseconds on CPU).
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// A freshly initialised (seeded) model of `method` sized for `prep`.
fn build_model(prep: &Prepared, method: Method, cfg: &DasConfig) -> Result<TrainedModel> {
    let meta = ModelMeta {
        method,
        config: cfg.clone(),
        item_dim: prep.item_dim,
        user_dim: prep.user_dim,
        codes: cfg.codes_for(prep.n_items.max(prep.n_users)),
        n_items: prep.n_items,
        n_users: prep.n_users,
    };
    TrainedModel::build(meta, &prep.item_count)
}

impl<'a> Trainer<'a> {
    fn new(
        prep: &'a Prepared,
        raw: &'a Prepared,
        model: TrainedModel,
        cfg: &DasConfig,
    ) -> Result<Self> {
        let params = ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        };
        let opt = AdamW::new(model.params.vars(), params)?;
        let s = cfg.align_logq_scale as f32;
        let scaled = |q: Vec<f32>| q.into_iter().map(|v| v * s).collect();
        Ok(Self {
            prep,
            raw,
            cfg: cfg.clone(),
            model,
            opt,
            rng: rng_for(cfg.seed, "train"),
            stats: TrainStats::default(),
            ctl: TrainControl::default(),
            done: 0,
            total: 0,
            log_q_items: scaled(log_share(prep.item_count.iter().copied())),
            log_q_users: scaled(log_share(prep.user_items.iter().map(|v| v.len() as f32))),
        })
    }

    /// A batch sampler at the start of its stream.
    fn batches(&self) -> BatchSampler<'a> {
        let cfg = &self.cfg;
        BatchSampler {
            prep: self.prep,
            raw: self.raw,
            cfg: cfg.clone(),
            user_mean: self.model.user_mean.clone(),
            rng: rng_for(cfg.seed, "batches"),
            co_pairs: (cfg.co_item_first > 0.0)
                .then(|| PairSampler::new(self.prep, cfg.co_item_first)),
        }
    }

    /// [`ModelError::Cancelled`] once the cancel flag is set.
    fn check_cancel(&self) -> Result<()> {
        match self.ctl.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(ModelError::Cancelled),
            _ => Ok(()),
        }
    }

    /// Counts one progress step of `stage`; reports every 10th step and the stage's last.
    fn tick(&mut self, stage: &'static str, stage_end: bool) {
        self.done += 1;
        if let Some(pace) = self.ctl.pace {
            pace();
        }
        let Some(report) = self.ctl.progress else {
            return;
        };
        if stage_end || self.done.is_multiple_of(10) {
            report(&Progress {
                stage,
                step: self.done,
                total_steps: self.total.max(self.done),
                losses: self.stats.last_losses,
            });
        }
    }
}

impl Trainer<'_> {
    fn run(&mut self, method: Method) -> Result<()> {
        let steps = self.cfg.steps;
        let mut batches = self.batches();
        let p = |sem_item, sem_user, cf, align| Plan {
            sem_item,
            sem_user,
            cf,
            align,
        };
        match method {
            Method::RqKMeans => return self.fit_rqkmeans(),
            Method::Cf => self.stage(
                &mut batches,
                "train",
                p(false, false, true, Align::None),
                steps,
            )?,
            Method::RqVae => {
                self.init_codebooks()?;
                self.stage(
                    &mut batches,
                    "train",
                    p(true, false, false, Align::None),
                    steps,
                )?
            }
            Method::TwoStage => {
                self.stage(
                    &mut batches,
                    "cf",
                    p(false, false, true, Align::None),
                    steps,
                )?;
                self.init_codebooks()?;
                self.stage(
                    &mut batches,
                    "train",
                    p(true, true, false, Align::Frozen),
                    steps,
                )?
            }
            Method::Das => {
                self.init_codebooks()?;
                self.stage(
                    &mut batches,
                    "train",
                    p(true, true, true, Align::Joint),
                    steps,
                )?
            }
        }
        Ok(())
    }

    /// RQ-KMeans: residual k-means on a sample of items (Lloyd from the previous codebooks on
    /// a warm start). One progress step.
    fn fit_rqkmeans(&mut self) -> Result<()> {
        self.check_cancel()?;
        let (d, prep) = (self.prep.item_dim, self.prep);
        let sample = self.sample_rows(&prep.x_item, d, prep.n_items);
        let m = &self.model.meta;
        let (levels, codes, iters) = (m.config.levels, m.codes, m.config.kmeans_iters);
        let prev = self.ctl.warm_start.and_then(|w| w.rqk_books.as_ref());
        let books = match prev {
            Some(init) => kmeans::residual_kmeans_from(&sample, d, init, iters)?,
            None => kmeans::residual_kmeans(&sample, d, levels, codes, iters, &mut self.rng)?,
        };
        self.model.rqk_books = Some(books);
        self.tick("kmeans", true);
        Ok(())
    }

    /// Up to `kmeans_sample` rows of `x` (all when fewer), seeded.
    fn sample_rows(&mut self, x: &[f32], d: usize, n: usize) -> Vec<f32> {
        let want = self.cfg.kmeans_sample.min(n);
        let mut ids: Vec<u32> = (0..n as u32).collect();
        for k in 0..want {
            let j = self.rng.random_range(k..n);
            ids.swap(k, j);
        }
        Prepared::gather(x, d, &ids[..want])
    }

    /// Autoencoder warm-up, then the k-means codebook init (one progress step). Skipped on a
    /// warm start: the codebooks come from the previous version.
    fn init_codebooks(&mut self) -> Result<()> {
        if !self.cfg.kmeans_init || self.ctl.warm_start.is_some() {
            return Ok(());
        }
        let warmup = self.cfg.ae_warmup_steps;
        for s in 0..warmup {
            self.check_cancel()?;
            self.ae_step()?;
            self.tick("warmup", s + 1 == warmup);
        }
        self.check_cancel()?;
        self.kmeans_codebooks()?;
        self.tick("kmeans", true);
        Ok(())
    }

    /// k-means init of both quantizers on a fresh sample of encoder outputs.
    fn kmeans_codebooks(&mut self) -> Result<()> {
        let (iters, prep) = (self.cfg.kmeans_iters, self.prep);
        let xi = self.sample_rows(&prep.x_item, prep.item_dim, prep.n_items);
        let xu = self.sample_rows(&prep.x_user, prep.user_dim, prep.n_users);
        if let Some(q) = &mut self.model.item_q {
            q.init_codebooks(&xi, iters, &mut self.rng)?;
        }
        if let Some(q) = &mut self.model.user_q {
            q.init_codebooks(&xu, iters, &mut self.rng)?;
        }
        Ok(())
    }

    /// One autoencoder step on `batch` uniform entities per side.
    fn ae_step(&mut self) -> Result<()> {
        let (prep, b) = (self.prep, self.cfg.batch);
        let t0 = Instant::now();
        let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
        for (q, x, d, n) in [
            (
                &self.model.item_q,
                &prep.x_item,
                prep.item_dim,
                prep.n_items,
            ),
            (
                &self.model.user_q,
                &prep.x_user,
                prep.user_dim,
                prep.n_users,
            ),
        ] {
            let Some(q) = q else { continue };
            let ids: Vec<u32> = (0..b).map(|_| self.rng.random_range(0..n as u32)).collect();
            let xt = Tensor::from_vec(Prepared::gather(x, d, &ids), (b, d), &Device::Cpu)?;
            loss = (loss + q.ae_loss(&xt)?)?;
        }
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        self.opt.step(&grads)?;
        self.stats.steps += 1;
        self.stats.forward_s += (t1 - t0).as_secs_f64();
        self.stats.backward_s += (t2 - t1).as_secs_f64();
        self.stats.optim_s += t2.elapsed().as_secs_f64();
        Ok(())
    }

    /// Runs `steps` steps of `plan`. The batches are drawn on a thread of their own, at most
    /// [`PREFETCH`] ahead of the step that takes them, so their sampling (the causal user inputs
    /// above all) overlaps the forward and backward passes instead of preceding them; they are
    /// the same batches in the same order as drawn inline.
    fn stage(
        &mut self,
        batches: &mut BatchSampler<'_>,
        name: &'static str,
        plan: Plan,
        steps: usize,
    ) -> Result<()> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(PREFETCH);
            let sampler = std::thread::Builder::new()
                .name("sidb-batches".into())
                .spawn_scoped(scope, move || {
                    let mut busy = 0.0;
                    for _ in 0..steps {
                        let t = Instant::now();
                        let batch = batches.sample(plan);
                        busy += t.elapsed().as_secs_f64();
                        let failed = batch.is_err();
                        // a closed channel: the stage ended early (error or cancel)
                        if tx.send(batch).is_err() || failed {
                            break;
                        }
                    }
                    busy
                })
                .map_err(|e| ModelError::Internal(format!("spawning the batch sampler: {e}")))?;
            let result = self.stage_steps(&rx, name, plan, steps);
            drop(rx);
            match sampler.join() {
                Ok(busy) => self.stats.sample_s += busy,
                Err(panic) => std::panic::resume_unwind(panic),
            }
            result
        })
    }

    fn stage_steps(
        &mut self,
        batches: &std::sync::mpsc::Receiver<Result<Batch>>,
        name: &'static str,
        plan: Plan,
        steps: usize,
    ) -> Result<()> {
        let refresh_at = self.cfg.warmup_steps + self.cfg.ramp_steps;
        let quantizes = plan.sem_item || plan.sem_user;
        let cold = self.ctl.warm_start.is_none();
        for s in 0..steps {
            self.check_cancel()?;
            if quantizes
                && cold
                && self.cfg.kmeans_init
                && self.cfg.refresh_codebooks
                && s == refresh_at
                && s > 0
            {
                self.kmeans_codebooks()?;
            }
            let t0 = Instant::now();
            let batch = batches.recv().map_err(|_| {
                ModelError::Internal("the batch sampler stopped before the stage's end".into())
            })??;
            self.stats.data_s += t0.elapsed().as_secs_f64();
            self.step(plan, s, batch)?;
            self.tick(name, s + 1 == steps);
            if s % 100 == 0 || s + 1 == steps {
                let [sem, cf, align] = self.stats.last_losses;
                tracing::debug!(
                    step = s,
                    sem,
                    cf,
                    align,
                    reseeded = self.stats.reseeded,
                    "train"
                );
            }
        }
        Ok(())
    }

    /// `beta` at step `s`: 0 in warm-up, then a linear ramp to full.
    fn beta_at(&self, s: usize) -> f64 {
        let c = &self.cfg;
        if s < c.warmup_steps {
            return 0.0;
        }
        let r = (s - c.warmup_steps + 1) as f64 / c.ramp_steps.max(1) as f64;
        c.beta * r.min(1.0)
    }

    fn step(&mut self, plan: Plan, s: usize, batch: Batch) -> Result<()> {
        let t1 = Instant::now();
        let (loss, parts, icdm_out, outs) = self.forward(plan, &batch, s)?;
        let t2 = Instant::now();
        let grads = loss.backward()?;
        let t3 = Instant::now();
        self.opt.step(&grads)?;
        if let (Some(out), Some(icdm)) = (&icdm_out, &mut self.model.icdm) {
            icdm.apply_grads(out, &grads, self.cfg.lr_id as f32)?;
        }
        self.track_codes(&batch, outs, s)?;
        let t4 = Instant::now();
        let st = &mut self.stats;
        st.steps += 1;
        st.forward_s += (t2 - t1).as_secs_f64();
        st.backward_s += (t3 - t2).as_secs_f64();
        st.optim_s += (t4 - t3).as_secs_f64();
        st.last_losses = parts;
        Ok(())
    }
}
