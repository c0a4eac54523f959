//! Offline evaluation of DAS and its baselines on a dataset directory.
//!
//! Protocol ([`split`]): positives are ratings `>= min_rating`; per user the last positive is
//! the test item. Every method trains on the train positives only, with the same step budget.
//! Per method ([`evaluate`]):
//! - (a) SID-native retrieval, the code `Recommend` runs ([`crate::model::recommend`]): candidates
//!   from a beam over the user's route into the item SID trie and from the buckets of the user's
//!   newest train items, ranked by the learned `z`s (and a popularity prior), the user's train
//!   items excluded. Recall@10/@20, NDCG@10.
//! - (b) the same cosine over all items (`recall@10_z`).
//! - `cf` scores by `u_int . i_pro` and `popularity` by train counts, for both (a) and (b).
//! - the classical recommenders `itemknn`, `ease` and `svd` ([`classical`]) rank the whole
//!   catalogue too, with their settings chosen on the validation pairs ([`tuning`]).
//! - the cold slice: test items with `<= cold_max` train positives, retrieval (a).
//! - a logistic CTR probe on per-level user-code x item-code crosses (AUC), the SID quality
//!   report, and the training time split.
pub mod classical;
pub mod external;
pub mod metrics;
pub mod split;
pub mod summary;
pub mod tuning;

use std::collections::HashSet;
use std::sync::OnceLock;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::data::{Dataset, Prepared};
use crate::model::neighbours::{ItemNeighbours, NeighbourSettings};
use crate::model::recommend::{self, Catalogue, RecommendSettings, RowCatalogue, UserView};
use crate::model::sid::QualityReport;
use crate::model::{trainer, DasConfig, Method, ModelError, Result, TrainStats, TrainedModel};
use classical::ClassicalOptions;
use external::ExternalSids;
use metrics::{cosine_scores, rank_of, with_negatives, Probe, RankSums};
use recommend::BeamLevel;
pub use tuning::TuningPoint;

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Base model settings (the seed here seeds the split and the probe too).
    pub config: DasConfig,
    /// Positives are ratings >= this (0 = all).
    pub min_rating: f32,
    /// Retrieval (a)'s settings: `Recommend`'s (the server's defaults unless set).
    pub recommend: RecommendSettings,
    /// Further settings of retrieval (a) scored on the validation pairs for every SID method
    /// (reported in [`MethodResult::tuning`], never used for the held-out scores): for choosing
    /// `Recommend`'s defaults over a whole matrix of data sets.
    pub recommend_grid: Vec<RecommendSettings>,
    /// Test items with at most this many train positives form the cold slice. Default 5.
    pub cold_max: usize,
    /// Score the validation pairs (each user's second-last positive) instead of the test pairs,
    /// to choose settings without looking at the test set. Default false.
    pub on_validation: bool,
    /// Set every timestamp to 0 before the split: a seeded random leave-one-out, as on a
    /// catalogue without time. Default false.
    pub timeless: bool,
    /// The grids of the classical baselines.
    pub classical: ClassicalOptions,
    /// How the co-occurrence neighbours retrieval (a) ranks with are built (the server's
    /// `[training.neighbours]` defaults unless set).
    pub neighbours: NeighbourSettings,
    /// Where the `sids:NAME` methods (external SID sets, [`external`]) are read:
    /// `DIR/NAME/seed-<seed>/`.
    pub sids_dir: Option<std::path::PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            config: DasConfig::default(),
            min_rating: 4.0,
            recommend: RecommendSettings::default(),
            recommend_grid: Vec::new(),
            cold_max: 5,
            on_validation: false,
            timeless: false,
            classical: ClassicalOptions::default(),
            neighbours: NeighbourSettings::default(),
            sids_dir: None,
        }
    }
}

/// Results of one method.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MethodResult {
    /// Method name as given.
    pub method: String,
    /// Recall@10 of retrieval (a).
    #[serde(rename = "recall@10")]
    pub recall10: f64,
    /// Recall@20 of retrieval (a).
    #[serde(rename = "recall@20")]
    pub recall20: f64,
    /// NDCG@10 of retrieval (a).
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    /// Recall@10 of retrieval (b).
    #[serde(rename = "recall@10_z")]
    pub recall10_z: f64,
    /// Recall@20 of retrieval (b).
    #[serde(rename = "recall@20_z")]
    pub recall20_z: f64,
    /// NDCG@10 of retrieval (b).
    #[serde(rename = "ndcg@10_z")]
    pub ndcg10_z: f64,
    /// Recall@10 of retrieval (a) on the cold slice.
    #[serde(rename = "recall@10_cold")]
    pub recall10_cold: f64,
    /// Test users in the cold slice.
    pub cold_users: usize,
    /// Recall@10 of retrieval (b) on the cold slice (a diagnostic: the slice is small, and a
    /// hit count alone hides how far off the misses are).
    #[serde(rename = "recall@10_z_cold", default)]
    pub recall10_z_cold: f64,
    /// Recall@100 of retrieval (b) on the cold slice (diagnostic).
    #[serde(rename = "recall@100_z_cold", default)]
    pub recall100_z_cold: f64,
    /// Mean rank of the cold slice's held-out items in retrieval (b), as a share of the
    /// catalogue: 0 = always first, about 0.5 = no better than chance (diagnostic).
    #[serde(default)]
    pub cold_mean_rank_share: f64,
    /// 0-based rank of each cold-slice user's held-out item in retrieval (a), in test-user
    /// order (the same users for every method); `None` = not among the candidates.
    #[serde(default)]
    pub cold_ranks: Vec<Option<usize>>,
    /// The cold slice user by user against `cf` (when `cf` is in the same run): the slice is
    /// too small for its Recall@10 alone to separate two methods.
    #[serde(default)]
    pub cold_vs_cf: Option<PairedRanks>,
    /// Recall@10 of the model's own ICDM vectors `u_int . i_pro` over all items (DAS and
    /// two-stage: shows what the alignment target is worth, and whether joint training hurts it).
    #[serde(rename = "recall@10_cf")]
    pub recall10_cf: Option<f64>,
    /// Mean size of the candidate sets of retrieval (a).
    pub mean_candidates: f64,
    /// AUC of the code-cross CTR probe (None without SIDs).
    pub auc_probe: Option<f64>,
    /// Fraction of codes used per level of the item quantizer.
    pub level_usage: Vec<f64>,
    /// Collision rate of item SIDs before the suffix.
    pub collision_rate: Option<f64>,
    /// Full item SID quality report.
    pub quality: Option<QualityReport>,
    /// Training seconds (all stages).
    pub train_seconds: f64,
    /// Training statistics (steps, time split).
    pub train: Option<TrainStats>,
    /// Users with a test item.
    pub test_users: usize,
    /// The setting chosen on the validation pairs (classical baselines; SID methods: the
    /// best point of the retrieval (a) grid, for information).
    #[serde(default)]
    pub chosen: Option<String>,
    /// Every grid point tried on the validation pairs (classical baselines).
    #[serde(default)]
    pub tuning: Vec<TuningPoint>,
    /// CPU seconds of the process while fitting and tuning (classical baselines; every thread).
    #[serde(default)]
    pub fit_cpu_s: Option<f64>,
}

impl MethodResult {
    /// CPU seconds of training or fitting, when measured.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.train.as_ref().and_then(|t| t.cpu_s).or(self.fit_cpu_s)
    }
}

/// Two methods' ranks of the same held-out items, user by user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairedRanks {
    /// Users whose item this method ranks higher than the other.
    pub better: usize,
    /// Users whose item it ranks lower.
    pub worse: usize,
    /// Same rank (or retrievable by neither).
    pub tied: usize,
    /// Two-sided sign test of better against worse (ties left out).
    pub p_sign: f64,
}

impl PairedRanks {
    /// Compares `mine` with `other` (same users, same order; `None` = not retrievable, below
    /// every rank).
    pub fn of(mine: &[Option<usize>], other: &[Option<usize>]) -> PairedRanks {
        let key = |r: &Option<usize>| r.unwrap_or(usize::MAX);
        let mut out = PairedRanks::default();
        for (a, b) in mine.iter().zip(other) {
            match key(a).cmp(&key(b)) {
                std::cmp::Ordering::Less => out.better += 1,
                std::cmp::Ordering::Greater => out.worse += 1,
                std::cmp::Ordering::Equal => out.tied += 1,
            }
        }
        out.p_sign = sign_test(out.better, out.worse);
        out
    }
}

/// Two-sided exact sign test: P(a count at least as far from n/2 as `a` vs `b`) under p = 1/2.
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    let k = a.min(b);
    // sum over i <= k of C(n, i) / 2^n, in logs (n may be large)
    let mut ln_c = 0.0f64;
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_c - n as f64 * std::f64::consts::LN_2).exp();
    }
    (2.0 * tail).min(1.0)
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Dataset name.
    pub dataset: String,
    /// The held-out pairs scored: `test` (each user's last positive) or `validation` (the one
    /// before it).
    #[serde(default)]
    pub holdout: String,
    /// Seed of the split and of every trained method.
    #[serde(default)]
    pub seed: u64,
    /// Positives were ratings >= this (0 = all).
    #[serde(default)]
    pub min_rating: f32,
    /// Timestamps were set to 0 (random leave-one-out).
    #[serde(default)]
    pub timeless: bool,
    /// One entry per method, in the order asked.
    pub results: Vec<MethodResult>,
}

/// What a method name means; `None` for the references that train nothing (`popularity`:
/// train counts; `content`: the user's input profile against the item embeddings, cosine).
fn parse_method(name: &str, base: &DasConfig) -> Result<Option<(Method, DasConfig)>> {
    let mut cfg = base.clone();
    let method = match name {
        "popularity" | "content" => return Ok(None),
        n if tuning::is_classical(n) || n.starts_with("sids:") => return Ok(None),
        "das-no-u2i" => {
            cfg.align_u2i = false;
            Method::Das
        }
        "das-no-self" => {
            cfg.align_self = false;
            Method::Das
        }
        "das-no-co" => {
            cfg.align_co = false;
            Method::Das
        }
        "das-no-debias" => {
            cfg.debias = false;
            Method::Das
        }
        "das-no-logq" => {
            cfg.align_logq = false;
            Method::Das
        }
        other => other.parse()?,
    };
    Ok(Some((method, cfg)))
}

/// Scores of a chunk of users (one row per user id, or one shared row).
type ScoreFn<'a> = dyn Fn(&[u32]) -> Result<Vec<Vec<f32>>> + 'a;

/// Retrieval (a) of one (user, held-out item) pair: the item's 0-based rank in `Recommend`'s
/// list and the user's candidate count.
type RecommendRank<'a> = dyn Fn(u32, u32) -> (Option<usize>, usize) + 'a;

/// A SID method's beam into the item trie: `(user z, mean item norm, width, count)`.
type RouteFn<'a> =
    dyn Fn(&[f32], f32, usize, &dyn Fn(&[u32]) -> usize) -> Result<Vec<BeamLevel>> + 'a;

/// The codes and vectors a SID method ranks with (rows in item and user index order).
struct SidSides<'a> {
    levels: usize,
    item_codes: &'a [u32],
    item_z: &'a [f32],
    user_z: &'a [f32],
    dim: usize,
}

/// How deep retrieval (a)'s lists go: ranks beyond it count as misses (the metrics stop at 20,
/// the cold ranks at 100).
const RANKED: usize = 100;

/// Held-out data and lookups shared by all methods.
struct Ctx<'a> {
    ds: &'a Dataset,
    prep: Prepared,
    split: split::Split,
    train_sets: Vec<HashSet<u32>>,
    opts: &'a EvalOptions,
    /// The train positives' co-occurrence neighbours, built on first use (the SID methods').
    neighbours: OnceLock<ItemNeighbours>,
    /// Each user's train items, newest first, with their recency weights, made on first use.
    recent: OnceLock<Vec<Vec<(u32, f32)>>>,
}

/// Runs every method in `methods` on `ds`.
pub fn evaluate(ds: &Dataset, methods: &[String], opts: &EvalOptions) -> Result<EvalReport> {
    evaluate_with_progress(ds, methods, opts, &mut |_| {})
}

/// Like [`evaluate`], calling `progress` with the report so far after every method (a long
/// run keeps its finished results if it is stopped).
pub fn evaluate_with_progress(
    ds: &Dataset,
    methods: &[String],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&EvalReport),
) -> Result<EvalReport> {
    let timeless;
    let ds = match opts.timeless {
        true => {
            let mut d = ds.clone();
            d.ratings.iter_mut().for_each(|r| r.ts_ms = 0);
            timeless = d;
            &timeless
        }
        false => ds,
    };
    let mut split = split::split(&ds.ratings, ds.n_users, opts.min_rating, opts.config.seed);
    if opts.on_validation {
        // the test pairs stay out of training either way; only the held-out pairs scored change
        split.test = split.valid.clone();
    }
    if split.test.is_empty() {
        return Err(ModelError::InvalidData(
            "no user has 3 positives: nothing to test".into(),
        ));
    }
    let prep = Prepared::new(&ds.training_data(&split.train), opts.config.recency())?;
    let train_sets = prep
        .user_items
        .iter()
        .map(|v| v.iter().copied().collect())
        .collect();
    let ctx = Ctx {
        ds,
        prep,
        split,
        train_sets,
        opts,
        neighbours: OnceLock::new(),
        recent: OnceLock::new(),
    };
    let mut report = EvalReport {
        dataset: ds.name.clone(),
        holdout: match opts.on_validation {
            true => "validation".into(),
            false => "test".into(),
        },
        seed: opts.config.seed,
        min_rating: opts.min_rating,
        timeless: opts.timeless,
        results: Vec::new(),
    };
    for name in methods {
        tracing::info!(method = %name, "evaluating");
        report.results.push(ctx.run(name)?);
        pair_with_cf(&mut report.results);
        progress(&report);
    }
    Ok(report)
}

/// Sets `cold_vs_cf` of every method other than `cf` when `cf` has run.
fn pair_with_cf(results: &mut [MethodResult]) {
    let Some(cf) = results.iter().find(|r| r.method == "cf") else {
        return;
    };
    let cf = cf.cold_ranks.clone();
    for r in results.iter_mut().filter(|r| r.method != "cf") {
        r.cold_vs_cf = Some(PairedRanks::of(&r.cold_ranks, &cf));
    }
}

impl Ctx<'_> {
    fn run(&self, name: &str) -> Result<MethodResult> {
        let mut r = MethodResult {
            method: name.to_string(),
            test_users: self.split.test.len(),
            ..Default::default()
        };
        let Some((method, cfg)) = parse_method(name, &self.opts.config)? else {
            if tuning::is_classical(name) {
                self.run_classical(name, &mut r)?;
                return Ok(r);
            }
            if let Some(set) = name.strip_prefix("sids:") {
                self.run_external(set, &mut r)?;
                return Ok(r);
            }
            if name == "content" {
                // the user's quantizer input (the recency-weighted mean of its train items'
                // embeddings) against each item's embedding: the content signal alone
                let p = &self.prep;
                if p.user_dim != p.item_dim {
                    return Err(ModelError::InvalidData(format!(
                        "content: user inputs have {} dimensions, items {}",
                        p.user_dim, p.item_dim
                    )));
                }
                let score = |ids: &[u32]| cosine_scores(&p.x_user, &p.x_item, p.item_dim, ids);
                self.fill_ranking(&mut r, &score, None, false)?;
                return Ok(r);
            }
            let pop: Vec<f32> = self.prep.item_count.clone();
            self.fill_ranking(&mut r, &|_| Ok(vec![pop.clone(); 1]), None, true)?;
            return Ok(r);
        };
        let (model, stats) = trainer::train_prepared(&self.prep, method, &cfg)?;
        r.train_seconds = stats.seconds;
        r.train = Some(stats);
        if method == Method::Cf {
            let (u, i, d) = model.cf_vectors().expect("cf trains ICDM");
            self.fill_ranking(&mut r, &|ids| cosine_scores(u, i, d, ids), None, false)?;
            return Ok(r);
        }
        self.fill_sid_method(&mut r, &model)?;
        Ok(r)
    }

    fn fill_sid_method(&self, r: &mut MethodResult, model: &TrainedModel) -> Result<()> {
        let items = model.encode_items(&self.ds.item_emb)?;
        let users = model.encode_users(&self.prep.x_user)?;
        let levels = model.meta.config.levels;
        let sides = SidSides {
            levels,
            item_codes: &items.codes,
            item_z: &items.z,
            user_z: &users.z,
            dim: items.dim,
        };
        self.fill_sid_retrieval(r, &sides, &|z, mean, width, count| {
            model.route_beam(z, mean, width, count)
        })?;
        let q = model.item_quality(&self.ds.item_emb)?;
        r.level_usage = q.levels.iter().map(|l| l.usage).collect();
        r.collision_rate = Some(q.collision_rate);
        r.quality = Some(q);
        r.auc_probe = Some(self.probe(&users.codes, &items.codes, levels, model.meta.codes));
        if let Some((u, i, d)) = model.cf_vectors() {
            let mut cf = MethodResult::default();
            self.fill_ranking(&mut cf, &|ids| cosine_scores(u, i, d, ids), None, false)?;
            r.recall10_cf = Some(cf.recall10);
        }
        Ok(())
    }

    /// An external SID set (`sids:NAME`, [`external`]), scored like the SID methods trained
    /// here: the same retrieval (a) and (b), quality report and probe.
    fn run_external(&self, set: &str, r: &mut MethodResult) -> Result<()> {
        let root = self.opts.sids_dir.as_ref().ok_or_else(|| {
            ModelError::InvalidConfig(format!(
                "method sids:{set}: no directory of external SID sets given (--sids-dir)"
            ))
        })?;
        let dir = root
            .join(set)
            .join(format!("seed-{}", self.opts.config.seed));
        let ext = ExternalSids::load(&dir, self.ds.n_items())?;
        let m = &ext.meta;
        let user_z = ext.user_z(self.recent_items());
        let sides = SidSides {
            levels: m.levels,
            item_codes: &ext.codes,
            item_z: &ext.z,
            user_z: &user_z,
            dim: m.dim,
        };
        self.fill_sid_retrieval(r, &sides, &|z, mean, width, count| {
            let start = recommend::scaled_to(z, mean);
            Ok(recommend::beam_over_books(
                &ext.books, m.dim, start, width, count,
            ))
        })?;
        let q = crate::model::sid::quality(&ext.codes, m.levels, m.codes, None);
        r.level_usage = q.levels.iter().map(|l| l.usage).collect();
        r.collision_rate = Some(q.collision_rate);
        r.quality = Some(q);
        r.auc_probe = Some(self.probe(&ext.route(&user_z), &ext.codes, m.levels, m.codes));
        r.train_seconds = m.seconds;
        Ok(())
    }

    /// Retrieval (a) (`Recommend`'s code over these codes and `z`s, the grid of
    /// [`EvalOptions::recommend_grid`] on the validation pairs) and (b) of one SID method.
    /// `route(user_z, mean_item_norm, width, count)` is the method's beam into the item trie.
    fn fill_sid_retrieval(
        &self,
        r: &mut MethodResult,
        sides: &SidSides,
        route: &RouteFn,
    ) -> Result<()> {
        let d = sides.dim;
        // the train counts' log-popularity, as a published version keeps it
        let popularity = self.prep.item_stats.iter().map(|s| s[0]).collect();
        // the neighbours a published version keeps, from the same train positives
        let neighbours = self.neighbours.get_or_init(|| {
            let p = &self.prep;
            ItemNeighbours::build(&p.user_items, p.n_items, &self.opts.neighbours)
        });
        let catalogue = RowCatalogue::new(
            sides.item_codes,
            sides.levels,
            sides.item_z,
            d,
            popularity,
            neighbours,
        );
        let mean_item = crate::model::mean_length(sides.item_z.chunks(d.max(1)));
        let recent = self.recent_items();
        let user_z = |u: usize| &sides.user_z[u * d..][..d];
        // one beam per user serves every grid point of the same width
        let beams = |width: usize| -> Result<Vec<Vec<BeamLevel>>> {
            (0..self.prep.n_users)
                .map(|u| route(user_z(u), mean_item, width, &|p| catalogue.count(p)))
                .collect()
        };
        // (rank of the held-out item in Recommend's list, candidates) of each pair
        let ranks = |beams: &[Vec<BeamLevel>], s: &RecommendSettings, pairs: &[(u32, u32)]| {
            pairs
                .iter()
                .map(|&(u, target)| {
                    let excl = &self.train_sets[u as usize];
                    let recent = &recent[u as usize];
                    let beam = &beams[u as usize];
                    let votes = recommend::votes(&catalogue, recent, s);
                    let skip = |i: u32| excl.contains(&i);
                    // an item's `z` is routed at its own length: no rescaling
                    let near = |i: u32| {
                        let z = &sides.item_z[i as usize * d..][..d];
                        let len = crate::model::das::l2_norm(z);
                        route(z, len, s.recent_beam, &|p| catalogue.count(p)).ok()
                    };
                    let cands =
                        recommend::candidates(beam, &near, &catalogue, recent, &votes, &skip, s);
                    let user = UserView {
                        z: user_z(u as usize),
                        recent,
                    };
                    let top = recommend::rank(&catalogue, &user, &votes, &cands, RANKED, s);
                    (top.iter().position(|&(i, _)| i == target), cands.len())
                })
                .collect::<Vec<_>>()
        };
        let base = &self.opts.recommend;
        let mut by_width: Vec<(usize, Vec<Vec<BeamLevel>>)> = vec![(base.beam, beams(base.beam)?)];
        for (k, point) in self.opts.recommend_grid.iter().enumerate() {
            point
                .validate("recommend.")
                .map_err(ModelError::InvalidConfig)?;
            if !by_width.iter().any(|(w, _)| *w == point.beam) {
                by_width.push((point.beam, beams(point.beam)?));
            }
            let b = &by_width
                .iter()
                .find(|(w, _)| *w == point.beam)
                .expect("added")
                .1;
            let t0 = std::time::Instant::now();
            let mut sums = RankSums::default();
            let mut cands = 0usize;
            for (rank, n) in ranks(b, point, &self.split.valid) {
                sums.add(rank);
                cands += n;
            }
            let (r10, _, n10) = sums.means();
            let setting = serde_json::to_string(point).expect("plain settings");
            tracing::info!(method = %r.method, point = k, %setting, valid_recall10 = r10, "recommend grid point");
            r.tuning.push(TuningPoint {
                setting,
                valid_recall10: r10,
                valid_ndcg10: n10,
                seconds: t0.elapsed().as_secs_f64(),
                mean_candidates: cands as f64 / self.split.valid.len().max(1) as f64,
            });
        }
        r.chosen = tuning::best_point(&r.tuning).map(|k| r.tuning[k].setting.clone());
        base.validate("recommend.")
            .map_err(ModelError::InvalidConfig)?;
        let held_out = ranks(&by_width[0].1, base, &self.split.test);
        let by_pair: std::collections::HashMap<(u32, u32), (Option<usize>, usize)> =
            self.split.test.iter().copied().zip(held_out).collect();
        let rank = |u: u32, target: u32| by_pair[&(u, target)];
        self.fill_ranking(
            r,
            &|ids| cosine_scores(sides.user_z, sides.item_z, d, ids),
            Some(&rank),
            false,
        )
    }

    /// Each user's train items, newest first, with their recency weights (the weights of the
    /// user's profile input).
    fn recent_items(&self) -> &[Vec<(u32, f32)>] {
        self.recent.get_or_init(|| {
            let p = &self.prep;
            (0..p.n_users)
                .map(|u| {
                    let range = p.user_offsets[u]..p.user_offsets[u + 1];
                    let events: Vec<(u32, f32, i64)> = range
                        .map(|k| (p.positives[k].1, p.positive_meta[k].0, p.positive_meta[k].1))
                        .collect();
                    recommend::recent_weights(&events, p.recency)
                })
                .collect()
        })
    }

    /// Retrieval (a), (b) and the cold slice. `scores(ids)` gives one row per user id (or one
    /// shared row when `shared`): retrieval (b), and (a) too unless `recommend(user, target)`
    /// gives (a)'s 0-based rank of `target` (`None` = not in its first [`RANKED`]) and its
    /// candidate count.
    fn fill_ranking(
        &self,
        r: &mut MethodResult,
        scores: &ScoreFn,
        recommend: Option<&RecommendRank>,
        shared: bool,
    ) -> Result<()> {
        let (mut a, mut b, mut cold, mut cold_z) = (
            RankSums::default(),
            RankSums::default(),
            RankSums::default(),
            RankSums::default(),
        );
        let n_items = self.ds.n_items().max(1) as f64;
        let mut cand_total = 0usize;
        for chunk in self.split.test.chunks(512) {
            let ids: Vec<u32> = chunk.iter().map(|t| t.0).collect();
            let rows = scores(&ids)?;
            for (k, &(u, target)) in chunk.iter().enumerate() {
                let s = &rows[if shared { 0 } else { k }];
                let excl = &self.train_sets[u as usize];
                let rb = rank_of(target, s, None, excl);
                let ra = match recommend {
                    Some(f) => {
                        let (rank, n) = f(u, target);
                        cand_total += n;
                        rank
                    }
                    None => {
                        cand_total += s.len() - excl.len();
                        rb
                    }
                };
                a.add(ra);
                b.add(rb);
                if self.prep.item_count[target as usize] <= self.opts.cold_max as f32 {
                    r.cold_ranks.push(ra);
                    cold.add(ra);
                    cold_z.add(rb);
                }
            }
        }
        (r.recall10, r.recall20, r.ndcg10) = a.means();
        (r.recall10_z, r.recall20_z, r.ndcg10_z) = b.means();
        r.recall10_cold = cold.means().0;
        r.cold_users = cold.users;
        r.recall10_z_cold = cold_z.means().0;
        r.recall100_z_cold = cold_z.hit100 / cold_z.users.max(1) as f64;
        r.cold_mean_rank_share = cold_z.rank_sum / n_items / cold_z.users.max(1) as f64;
        r.mean_candidates = cand_total as f64 / a.users.max(1) as f64;
        Ok(())
    }

    /// AUC of the code-cross probe: trained on up to 100k train positives + 1 negative each,
    /// tested on the test positives + 4 negatives each.
    fn probe(&self, ucodes: &[u32], icodes: &[u32], levels: usize, k: usize) -> f64 {
        let mut rng = crate::model::nn::rng_for(self.opts.config.seed, "probe");
        let mut seen: HashSet<(u32, u32)> = self.prep.positives.iter().copied().collect();
        seen.extend(self.split.test.iter().chain(&self.split.valid).copied());
        let pos = &self.prep.positives;
        let train_pos: Vec<(u32, u32)> = (0..pos.len().min(100_000))
            .map(|_| pos[rng.random_range(0..pos.len())])
            .collect();
        let n_items = self.ds.n_items();
        let train = with_negatives(&train_pos, n_items, 1, &seen, &mut rng);
        let test = with_negatives(&self.split.test, n_items, 4, &seen, &mut rng);
        Probe::train(&train, ucodes, icodes, levels, k).auc(&test, ucodes, icodes)
    }
}

/// A markdown table of the main metrics.
pub fn markdown_table(report: &EvalReport) -> String {
    let mut s = String::from(
        "| method | R@10 (a) | R@20 (a) | NDCG@10 (a) | R@10_z (b) | R@10 cold (a) | cold rank share (b) | AUC probe | L1 usage | collisions | train s | cpu s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    for r in &report.results {
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} | {} | {} | {} | {:.1} | {} |\n",
            r.method,
            r.recall10,
            r.recall20,
            r.ndcg10,
            r.recall10_z,
            r.recall10_cold,
            r.cold_mean_rank_share,
            opt(r.auc_probe),
            r.level_usage
                .first()
                .map_or("-".into(), |u| format!("{u:.3}")),
            opt(r.collision_rate),
            r.train_seconds,
            r.cpu_seconds().map_or("-".into(), |c| format!("{c:.1}"))
        ));
    }
    let paired: Vec<String> = (report.results.iter())
        .filter_map(|r| {
            let p = r.cold_vs_cf?;
            Some(format!(
                "{}: {} better, {} worse, {} tied (sign test p = {:.2e})",
                r.method, p.better, p.worse, p.tied, p.p_sign
            ))
        })
        .collect();
    if !paired.is_empty() {
        s.push_str(&format!(
            "\nCold slice user by user against cf, rank of retrieval (a): {}\n",
            paired.join("; ")
        ));
    }
    let chosen: Vec<String> = (report.results.iter())
        .filter_map(|r| Some(format!("{} {}", r.method, r.chosen.as_ref()?)))
        .collect();
    if !chosen.is_empty() {
        s.push_str(&format!(
            "\nChosen on the validation pairs: {}\n",
            chosen.join("; ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::data::Rating;
    use crate::model::synth::{generate, SynthSpec};

    fn synth_dataset() -> Dataset {
        let s = generate(&SynthSpec {
            n_items: 256,
            n_users: 128,
            ..SynthSpec::default()
        });
        let ratings = s
            .data
            .interactions
            .iter()
            .map(|x| Rating {
                user: x.user,
                item: x.item,
                rating: 5.0,
                ts_ms: x.ts_ms,
            })
            .collect();
        Dataset {
            name: "synth".into(),
            item_keys: (0..256).map(|i| i.to_string()).collect(),
            item_emb: s.data.item_emb,
            item_dim: s.data.item_dim,
            n_users: 128,
            ratings,
        }
    }

    #[test]
    fn evaluation_runs_every_method_and_das_beats_rqvae_on_planted_data() {
        let ds = synth_dataset();
        let config = DasConfig {
            batch: 128,
            sem_uniform: 64,
            steps: 200,
            warmup_steps: 40,
            ramp_steps: 40,
            kmeans_iters: 10,
            lr: 3e-3,
            ..crate::model::synth::small_config()
        };
        let opts = EvalOptions {
            config,
            recommend: RecommendSettings {
                min_bucket: 10,
                ..RecommendSettings::default()
            },
            ..EvalOptions::default()
        };
        let methods: Vec<String> = [
            "das",
            "rqvae",
            "rqkmeans",
            "two-stage",
            "cf",
            "popularity",
            "content",
            "das-no-co",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rep = evaluate(&ds, &methods, &opts).expect("eval");
        eprintln!("{}", markdown_table(&rep));
        assert_eq!(rep.results.len(), 8);
        let get = |m: &str| rep.results.iter().find(|r| r.method == m).expect("present");
        assert_eq!(get("das").test_users, 128);
        assert!(
            get("das").recall10_z > get("rqvae").recall10_z,
            "aligned z must retrieve better"
        );
        assert!(get("das").auc_probe.expect("auc") > 0.6);
        // the planted content clusters disagree with the behaviour groups: content alone ranks
        // by the clusters, above chance (the recall of a random ranking is 10 / 256) and below
        // the aligned codes
        let content = get("content");
        assert!(content.recall10_z > 10.0 / 256.0, "{}", content.recall10_z);
        assert!(content.recall10_z < get("das").recall10_z);
        assert!(content.auc_probe.is_none() && content.train_seconds == 0.0);
        // every method ranks the same cold users, and each is paired with cf
        for r in &rep.results {
            assert_eq!(r.cold_ranks.len(), r.cold_users, "{}", r.method);
            assert_eq!(r.cold_users, get("cf").cold_users);
            let paired = r.cold_vs_cf.map(|p| p.better + p.worse + p.tied);
            match r.method.as_str() {
                "cf" => assert_eq!(paired, None),
                _ => assert_eq!(paired, Some(r.cold_users), "{}", r.method),
            }
        }
        let json = serde_json::to_value(&rep).expect("json");
        assert!(json["results"][0]["recall@10"].is_number());
        assert!(parse_method("nope", &DasConfig::default()).is_err());
        assert_eq!(rep.holdout, "test");
        let (_, c) = parse_method("das-no-logq", &DasConfig::default())
            .expect("known")
            .expect("trains");
        assert!(!c.align_logq);
        // the validation pairs: one per test user
        let valid = EvalOptions {
            on_validation: true,
            ..opts.clone()
        };
        let pop = ["popularity".to_string()];
        let v = evaluate(&ds, &pop, &valid).expect("eval");
        assert_eq!(v.holdout, "validation");
        assert_eq!(v.results[0].test_users, 128);
        let sp = split::split(&ds.ratings, ds.n_users, opts.min_rating, opts.config.seed);
        assert!(sp.valid.iter().zip(&sp.test).all(|(v, t)| v.0 == t.0));
    }

    #[test]
    fn external_sid_sets_are_scored_like_the_trained_ones() {
        let ds = synth_dataset();
        let truth = generate(&SynthSpec {
            n_items: 256,
            n_users: 128,
            ..SynthSpec::default()
        });
        // a tokenizer that found the behaviour groups (level 1 = group, in a 4-d space where
        // group g is the unit vector e_g) and one that assigns groups at random
        let set = |group: &dyn Fn(usize) -> usize| {
            let mut z = vec![0.0f32; 256 * 4];
            let mut codes = Vec::new();
            for i in 0..256 {
                z[i * 4 + group(i)] = 1.0;
                codes.extend([group(i) as u32, (i % 4) as u32]);
            }
            let unit: Vec<f32> = (0..16).map(|k| (k % 5 == 0) as u8 as f32).collect();
            external::ExternalSids {
                meta: external::ExternalMeta {
                    format: external::FORMAT.into(),
                    tokenizer: "test".into(),
                    source: String::new(),
                    levels: 2,
                    codes: 4,
                    dim: 4,
                    items: 256,
                    seed: 1,
                    seconds: 2.5,
                },
                codes,
                z,
                books: vec![unit, vec![0.0; 16]],
            }
        };
        let dir = tempfile::tempdir().expect("tmp");
        let seed = DasConfig::default().seed;
        let at = |name: &str| dir.path().join(name).join(format!("seed-{seed}"));
        set(&|i| truth.item_group[i])
            .save(&at("found"))
            .expect("save");
        set(&|i| (i * 7 + 3) % 11 % 4)
            .save(&at("random"))
            .expect("save");
        let opts = EvalOptions {
            recommend: RecommendSettings {
                min_bucket: 10,
                w_cooc: 0.0,
                cooc_candidates: 0,
                ..RecommendSettings::default()
            },
            sids_dir: Some(dir.path().to_path_buf()),
            ..EvalOptions::default()
        };
        let methods = ["sids:found".to_string(), "sids:random".to_string()];
        let rep = evaluate(&ds, &methods, &opts).expect("eval");
        eprintln!("{}", markdown_table(&rep));
        let (found, random) = (&rep.results[0], &rep.results[1]);
        assert_eq!(found.method, "sids:found");
        assert_eq!(found.test_users, 128);
        assert_eq!(found.train_seconds, 2.5);
        assert_eq!(found.level_usage, vec![1.0, 1.0]);
        let (fa, ra) = (
            found.auc_probe.expect("auc"),
            random.auc_probe.expect("auc"),
        );
        assert!(fa > 0.7 && fa > ra + 0.15, "probe: found {fa}, random {ra}");
        assert!(found.recall10_z > 2.0 * random.recall10_z.max(0.01));
        assert!(found.recall10 > 2.0 * random.recall10.max(0.01));
        assert!(found.mean_candidates > 0.0);
        // a missing set names where it was looked for; no directory at all is a config error
        let e = evaluate(&ds, &["sids:absent".to_string()], &opts).expect_err("absent");
        assert!(e.to_string().contains("absent"), "{e}");
        let none = EvalOptions {
            sids_dir: None,
            ..opts.clone()
        };
        let e = evaluate(&ds, &methods[..1], &none).expect_err("no dir");
        assert!(e.to_string().contains("--sids-dir"), "{e}");
    }

    #[test]
    fn paired_ranks_count_users_and_the_sign_test_is_exact() {
        let p = PairedRanks::of(
            &[Some(0), Some(5), None, Some(7), None],
            &[Some(3), Some(5), Some(9), None, None],
        );
        assert_eq!((p.better, p.worse, p.tied), (2, 1, 2));
        assert_eq!(p.p_sign, 1.0);
        // P(<= 0 of 5) = 1/32, two-sided
        assert!((sign_test(5, 0) - 2.0 / 32.0).abs() < 1e-12);
        assert!((sign_test(0, 10) - 2.0 / 1024.0).abs() < 1e-12);
        // P(<= 1 of 6) = 7/64
        assert!((sign_test(1, 5) - 14.0 / 64.0).abs() < 1e-12);
        assert_eq!(sign_test(3, 3), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
        // large n stays finite: 600 vs 400 is far from even
        let p = sign_test(600, 400);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }
}
