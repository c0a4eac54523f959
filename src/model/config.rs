//! [`DasConfig`]: every size and weight of the DAS model, with the defaults explained in `docs/model.md`.
use serde::{Deserialize, Serialize};

use super::{ModelError, Result};

/// Settings of the DAS model and its trainer. `serde(default)` lets a JSON file name only what it
/// changes. Field docs give the default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DasConfig {
    /// Seed of every random choice (init, sampling, k-means). Default 42.
    pub seed: u64,
    /// Centre the (L2-normalised) inputs on their training mean and re-normalise; the means are
    /// part of the model. Default true.
    pub center_inputs: bool,
    /// Residual levels per quantizer. Default 3.
    pub levels: usize,
    /// Codes per level; `None` picks from the catalogue size ([`default_codes`]). Default `None`.
    pub codes: Option<usize>,
    /// Dimension of the quantized space `D`. Default 32.
    pub code_dim: usize,
    /// Hidden sizes of the encoder MLP (the decoder mirrors them). Default `[256, 128]`.
    pub hidden: Vec<usize>,
    /// Commitment weight `beta_c`. Default 0.25.
    pub beta_commit: f64,
    /// Entities sampled for the k-means codebook init (all if fewer). Default 8192.
    pub kmeans_sample: usize,
    /// Initialise codebooks by k-means on encoder outputs (else small random). Default true.
    pub kmeans_init: bool,
    /// Autoencoder-only steps (no quantization) before the k-means init. Default 0.
    pub ae_warmup_steps: usize,
    /// Re-run the k-means codebook init once when the alignment ramp ends (step
    /// `warmup_steps + ramp_steps` of the quantizer stage), on the encoder as alignment has
    /// shaped it: codes fitted to the content-only encoder would otherwise keep the content
    /// clusters and only migrate slowly. Default false: measured on the planted synthetic data, the
    /// refresh destroys the behaviour structure that alignment had written into the codes directly.
    pub refresh_codebooks: bool,
    /// Lloyd iterations per level. Default 25.
    pub kmeans_iters: usize,
    /// A code unused for this many steps is re-seeded from current residuals. Default 20.
    pub dead_window: usize,
    /// Check for dead codes every this many steps (0 = never re-seed). Default 10.
    pub reseed_every: usize,
    /// Dimension of the ICDM ID vectors; must equal `code_dim` (alignment compares them). Default 32.
    pub id_dim: usize,
    /// Hidden size of the bias-statistics MLPs. Default 16.
    pub bias_hidden: usize,
    /// Temperature of the CF softmax on cosine scores. Default 0.1.
    pub tau_cf: f64,
    /// Temperature of the MDAM InfoNCE. Default 0.1.
    pub tau_align: f64,
    /// Temperature of the dual self terms (z_u<->u_int, z_i<->i_pro). At `tau_align` (0.1)
    /// the self InfoNCE is instance discrimination: each `z` must single out its own CF vector
    /// among the batch's, which competes with the user-to-item terms for what a few shared
    /// codes can express; at 0.3 it is a softer pull towards the own vector. Chosen on the
    /// validation split of MovieLens-1M over seeds 42 and 43 (`sidb eval --on-validation`):
    /// R@10 of `z_u . z_i` 0.0683 / 0.0650 at 0.3 against 0.0572 / 0.0638 at 0.1. Default 0.3.
    pub tau_self: f64,
    /// Weight of the CF loss `alpha`. Default 1.0.
    pub alpha: f64,
    /// Weight of the alignment loss `beta`. Default 0.5.
    pub beta: f64,
    /// Weight of the bias-target similarity terms. Default 0.1.
    pub w_bias: f64,
    /// Weight of the orthogonality terms. Default 0.1.
    pub w_orth: f64,
    /// Apply the log-popularity (logQ) correction to the in-batch softmax. Default true.
    pub logq_correction: bool,
    /// Alignment families switched on (for ablations). Default all true.
    pub align_u2i: bool,
    /// Dual self alignment (z_u<->u_int, z_i<->i_pro). Default true.
    pub align_self: bool,
    /// Dual co-occurrence alignment (z_u<->z_u+, z_i<->z_i+). Default true.
    pub align_co: bool,
    /// Use the debiased vectors (`u_int`, `i_pro`) in the alignment; when false the fused full
    /// vectors are used and the debiasing terms are off (ablation `das-no-debias`). Default true.
    pub debias: bool,
    /// Apply the logQ correction to the dual user-to-item InfoNCE too: in-batch candidates are
    /// drawn in proportion to their interaction counts, and without the correction the codes
    /// learn a score biased against popular items. Default true.
    pub align_logq: bool,
    /// Strength of that correction, in [0, 1]: each candidate's logit is lowered by this times
    /// its log sampling probability. At 1 the codes learn the log's own `p(i | u)`, popularity
    /// included; towards 0 they learn how much more often than its popularity predicts a user
    /// takes an item (0 = `align_logq: false`), which lifts the catalogue's tail at the cost of
    /// overall recall. Chosen on the MovieLens-1M validation split with the route alignment on
    /// (`sidb eval --on-validation`, seeds 42 / 43 / 44; R@10 of the SID bucket (a), of
    /// `z_u . z_i` over all items (b), and the mean rank share in (b) of the held-out cold
    /// items, <= 5 train positives): 1.0 -> (a) 0.0558 / 0.0535 / 0.0611, (b) 0.1142 / 0.1107 /
    /// 0.1097, cold 0.311 / 0.342 / 0.358; 0.75 -> (a) 0.0645 / 0.0557 / 0.0625, (b) 0.1147 /
    /// 0.1036 / 0.1099, cold 0.255 / 0.260 / 0.344; 0.5 -> (a) 0.0548, (b) 0.0895 at seed 42.
    /// Default 0.75.
    pub align_logq_scale: f64,
    /// Weight of the dual user-to-item terms within `L_align`. Default 1.0.
    pub w_u2i: f64,
    /// Weight of the dual self terms within `L_align`. Default 1.0.
    pub w_self: f64,
    /// Weight of the dual co-occurrence terms within `L_align`. With causal user inputs the two
    /// terms at full weight cost retrieval on the MovieLens-1M validation split (`sidb eval
    /// --on-validation`, R@10 of the SID route, seeds 42 / 43): 1.0 -> 0.1049 / 0.1165, 0.5 ->
    /// 0.1196 / 0.1211 (0.1158 at seed 44), without them 0.1215 / 0.1210 / 0.1153; either term
    /// alone at 1.0 scores like none (0.1205 user side, 0.1193 item side, seed 42). Default 0.5.
    pub w_co: f64,
    /// Weight within `L_align` of the route alignment **(choice beyond the paper)**: each
    /// interaction's `z_u`, scaled to the batch's mean item `z` length as a served user is,
    /// must pick the level-1 item code of the item it took among all level-1 item codes
    /// (softmax over `-||z_u - e_k||^2`, see [`crate::model::mdam::route_nce`]). This is the
    /// decision `Recommend` takes for a user (nearest item bucket), trained directly: the other
    /// terms align `z_u` with single items, none with the coarse item buckets a user is routed
    /// into. Its gradient reaches the user encoder and codes and the item level-1 codebook.
    /// Chosen on the MovieLens-1M validation split (`sidb eval --on-validation`, R@10 of the
    /// SID bucket (a) / of `z_u . z_i` over all items (b)): seed 42, 0 -> 0.0505 / 0.1175,
    /// 0.3 -> 0.0522 / 0.1195, 1.0 -> 0.0558 / 0.1142, 2.0 -> 0.0557 / 0.1100; seed 43, 0 ->
    /// 0.0383 / 0.1216, 1.0 -> 0.0535 / 0.1107. With the codebook detached (user side only) 1.0
    /// gives 0.0573 / 0.1080 and 0.0338 / 0.1001. Default 1.0; 0 = off.
    pub w_route: f64,
    /// Temperature of the route alignment, relative to the squared mean item `z` length.
    /// Default 0.1.
    pub tau_route: f64,
    /// Let the alignment gradients reach the ICDM side (`u_int`, `i_pro` and, without debiasing,
    /// the fusion MLPs) as well as the codes. When false the CF vectors are targets only: ICDM
    /// learns from the log alone while the codes follow it, both still in one stage. Default
    /// false, measured on MovieLens-1M (seed 42, 1,500 steps): with the gradient, alignment drags
    /// the CF vectors towards the content codes and the model's own `u_int . i_pro` Recall@10
    /// falls from 0.060 to 0.047; without it SID retrieval (a) Recall@10 0.0176 -> 0.0191,
    /// Recall@20 0.0302 -> 0.0373, while `z_u . z_i` (b) stays level (0.0177 -> 0.0171).
    pub align_cf_grad: bool,
    /// Hub damping exponent: a co-occurrence pair whose anchor has d partners (its item's
    /// users, or its user's items) weighs min(1, (`cooc_cap` / d)^`hub_damping`) in the
    /// co-occurrence terms, so hubs do not dominate them. Default 0.5.
    pub hub_damping: f64,
    /// Partner-list length up to which a co-occurrence pair weighs fully (see `hub_damping`);
    /// partners are drawn from the whole list. Default 200.
    pub cooc_cap: usize,
    /// Rows of the batch that enter the InfoNCE alignments (their cost is quadratic in this).
    /// Default 512.
    pub align_rows: usize,
    /// When > 0, the anchors of the item-side co-occurrence term (`z_i` <-> `z_i+`) are drawn
    /// apart from the batch, this share of them item first (an item uniformly among those with
    /// positives, then one of its users; the partner is another item of that user), the rest
    /// from the log. From the log alone items come in proportion to their popularity, and the
    /// item encoder hardly learns where the catalogue's tail belongs. The user-to-item and self
    /// terms keep the log's anchors, so the codes still learn the log's score. In [0, 1].
    /// Chosen on the MovieLens-1M validation split (`sidb eval --on-validation`, seeds 42 / 43):
    /// the mean rank of the held-out cold items (<= 5 train positives) under `z_u . z_i` moves
    /// from 44 % / 39 % of the catalogue to 29 % / 34 %, while R@10 of `z_u . z_i` stays level
    /// (0.0683 / 0.0708 -> 0.0693 / 0.0693). Anchors drawn item first for every term instead
    /// turn the learned score into a popularity-blind PMI (R@10 0.0683 -> 0.0389 at a share of
    /// 0.5). Default 1.0.
    pub co_item_first: f64,
    /// Interactions per training batch. Default 1024.
    pub batch: usize,
    /// Extra uniformly sampled entities per side in the semantic loss (covers cold items). Default 256.
    pub sem_uniform: usize,
    /// Training steps. Default 1500.
    pub steps: usize,
    /// Steps of semantic (+ CF) loss only before alignment starts. Default 200.
    pub warmup_steps: usize,
    /// Steps over which alpha/beta ramp linearly to full after warm-up. Default 200.
    pub ramp_steps: usize,
    /// Learning rate of the dense parameters (MLPs, codebooks). Default 1e-3.
    pub lr: f64,
    /// Warm starts only: weight of the stability anchor `||enc(x) - enc_prev(x)||^2` (summed
    /// over dimensions, mean over the batch's rows, both quantizers), which keeps a retrain's
    /// encoders, and so its codes, near the previous version's unless the data pulls them away.
    /// Default 1.0; 0 = off.
    pub stability_weight: f64,
    /// Warm starts only: the dense learning rate (`lr`; the ID tables keep `lr_id`, new
    /// entities must still be learned) is scaled by this, so a retrain refines the previous
    /// version instead of travelling as far as a first training does. Default 0.03.
    pub warm_lr_scale: f64,
    /// Learning rate of the ID tables (row-wise Adam). Default 1e-2.
    pub lr_id: f64,
    /// Half-life (in days) of the recency weights of the user input. Default 180.
    pub recency_half_life_days: f64,
    /// Half-life (in newer positive events of the same user) of the recency weights of the user
    /// input; 0 = by age only. On MovieLens-1M consecutive positives are seconds apart, so age
    /// says nothing about what came last, and the last one or two items predict the next best.
    /// Chosen on the validation split (`sidb eval --on-validation`, seed 42, see docs/model.md).
    /// Default 2.
    pub recency_half_life_events: f64,
    /// Each training pair's user input is the user's profile over its positives *before* that
    /// pair ([`crate::model::data::Prepared::causal_input`]), the input it had when it acted,
    /// instead of its profile over all of them, which holds the very item the pair asks the
    /// codes to predict (and no served profile holds the item to be recommended). The user-side
    /// co-occurrence partner of a pair, another user of its item, likewise takes its profile
    /// before that item. Users with own embeddings are unaffected. Chosen on the validation
    /// split; default true.
    pub causal_user_inputs: bool,
    /// Trainer threads (rayon pool for candle's CPU kernels). Default 1. Batches are drawn on
    /// one more thread, ahead of the steps (a few per cent of a core on MovieLens-1M).
    pub threads: usize,
}

impl Default for DasConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            center_inputs: true,
            levels: 3,
            codes: None,
            code_dim: 32,
            hidden: vec![256, 128],
            beta_commit: 0.25,
            kmeans_sample: 8192,
            kmeans_init: true,
            ae_warmup_steps: 0,
            refresh_codebooks: false,
            kmeans_iters: 25,
            dead_window: 20,
            reseed_every: 10,
            id_dim: 32,
            bias_hidden: 16,
            tau_cf: 0.1,
            tau_align: 0.1,
            tau_self: 0.3,
            alpha: 1.0,
            beta: 0.5,
            w_bias: 0.1,
            w_orth: 0.1,
            logq_correction: true,
            align_u2i: true,
            align_self: true,
            align_co: true,
            debias: true,
            align_logq: true,
            align_logq_scale: 0.75,
            w_u2i: 1.0,
            w_self: 1.0,
            w_co: 0.5,
            w_route: 1.0,
            tau_route: 0.1,
            align_cf_grad: false,
            hub_damping: 0.5,
            cooc_cap: 200,
            align_rows: 512,
            batch: 1024,
            sem_uniform: 256,
            co_item_first: 1.0,
            steps: 1500,
            warmup_steps: 200,
            ramp_steps: 200,
            lr: 1e-3,
            stability_weight: 1.0,
            warm_lr_scale: 0.03,
            lr_id: 1e-2,
            recency_half_life_days: 180.0,
            recency_half_life_events: 2.0,
            causal_user_inputs: true,
            threads: 1,
        }
    }
}

/// Default codes per level from the catalogue size (the DAS paper): <= 1e4: 64, <= 1e5: 128,
/// <= 1e6: 256, else 512.
pub fn default_codes(entities: usize) -> usize {
    match entities {
        0..=10_000 => 64,
        10_001..=100_000 => 128,
        100_001..=1_000_000 => 256,
        _ => 512,
    }
}

impl DasConfig {
    /// The recency weighting of the user inputs.
    pub fn recency(&self) -> crate::profile::Recency {
        crate::profile::Recency {
            half_life_days: self.recency_half_life_days,
            half_life_events: self.recency_half_life_events,
        }
    }

    /// Codes per level for a catalogue of `entities` (the explicit setting wins).
    pub fn codes_for(&self, entities: usize) -> usize {
        self.codes.unwrap_or_else(|| default_codes(entities))
    }

    /// Parses a settings file (a JSON object naming only what it changes) and validates it. A
    /// key that is not a setting is an error: a misspelt setting would otherwise be ignored and
    /// the run would train with the default without a word.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |m: String| ModelError::InvalidConfig(m);
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Some(keys) = value.as_object() else {
            return Err(bad("settings must be a JSON object".into()));
        };
        let known = serde_json::to_value(Self::default()).expect("plain data serialises");
        let known = known.as_object().expect("a struct serialises to an object");
        if let Some(k) = keys.keys().find(|k| !known.contains_key(*k)) {
            let mut names: Vec<&str> = known.keys().map(|k| k.as_str()).collect();
            names.sort_unstable();
            return Err(bad(format!(
                "unknown setting `{k}` (settings: {})",
                names.join(", ")
            )));
        }
        let cfg: Self = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and consistency; every trainer entry point calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(ModelError::InvalidConfig(m.to_string()));
        if self.levels == 0 || self.code_dim == 0 || self.batch < 2 {
            return bad("levels, code_dim must be > 0 and batch >= 2");
        }
        if self.codes == Some(0) || self.codes == Some(1) {
            return bad("codes must be >= 2");
        }
        if self.id_dim != self.code_dim {
            return bad("id_dim must equal code_dim (alignment compares the two spaces)");
        }
        if self.tau_cf <= 0.0
            || self.tau_align <= 0.0
            || self.tau_self <= 0.0
            || self.tau_route <= 0.0
            || self.lr <= 0.0
            || self.lr_id <= 0.0
            || self.warm_lr_scale <= 0.0
        {
            return bad("temperatures and learning rates must be > 0");
        }
        self.recency()
            .validate("")
            .map_err(ModelError::InvalidConfig)?;
        if !(0.0..=1.0).contains(&self.co_item_first) {
            return bad("co_item_first must be in [0, 1]");
        }
        if !(self.w_route >= 0.0 && self.w_route.is_finite()) {
            return bad("w_route must be a finite number >= 0");
        }
        if !(0.0..=1.0).contains(&self.align_logq_scale) {
            return bad("align_logq_scale must be in [0, 1]");
        }
        if self.hidden.contains(&0) || self.threads == 0 {
            return bad("hidden sizes and threads must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_codes_follow_catalogue_size() {
        assert_eq!(default_codes(3_706), 64);
        assert_eq!(default_codes(100_000), 128);
        assert_eq!(default_codes(1_000_000), 256);
        assert_eq!(default_codes(5_000_000), 512);
    }

    #[test]
    fn config_round_trips_and_partial_json_uses_defaults() {
        let c: DasConfig = serde_json::from_str(r#"{"levels": 2}"#).expect("valid json");
        assert_eq!(c.levels, 2);
        assert_eq!(c.code_dim, 32);
        let back: DasConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("serialise")).expect("parse");
        assert_eq!(back, c);
    }

    #[test]
    fn from_json_names_unknown_settings_and_bad_values() {
        let c = DasConfig::from_json(r#"{"beta": 0.25, "codes": 32}"#).expect("valid");
        assert_eq!((c.beta, c.codes, c.levels), (0.25, Some(32), 3));
        let err = |text: &str| match DasConfig::from_json(text) {
            Err(ModelError::InvalidConfig(m)) => m,
            other => panic!("{text}: {other:?}"),
        };
        assert!(err(r#"{"align_logq_scal": 0.5}"#).contains("unknown setting `align_logq_scal`"));
        assert!(err(r#"{"beta": "high"}"#).contains("invalid type"));
        assert!(err(r#"{"align_logq_scale": 2.0}"#).contains("align_logq_scale"));
        assert!(err("[1, 2]").contains("JSON object"));
        assert!(err("{").contains("not valid JSON"));
    }

    #[test]
    fn validate_rejects_inconsistent_dims_and_bad_temperatures() {
        let c = DasConfig {
            id_dim: 16,
            ..DasConfig::default()
        };
        assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(_))));
        for bad in [0.0, -1.0] {
            for c in [
                DasConfig {
                    tau_self: bad,
                    ..DasConfig::default()
                },
                DasConfig {
                    recency_half_life_days: bad,
                    ..DasConfig::default()
                },
                DasConfig {
                    recency_half_life_events: bad - 0.5,
                    ..DasConfig::default()
                },
            ] {
                assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(_))));
            }
        }
        for share in [-0.1, 1.5, f64::NAN] {
            let c = DasConfig {
                co_item_first: share,
                ..DasConfig::default()
            };
            assert!(
                matches!(c.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("co_item_first"))
            );
            let c = DasConfig {
                align_logq_scale: share,
                ..DasConfig::default()
            };
            assert!(
                matches!(c.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("align_logq_scale"))
            );
        }
    }
}
