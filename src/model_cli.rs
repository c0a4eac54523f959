//! `sidb train` and `sidb eval`: the semantic-ID model on a dataset directory, no server needed.
use std::path::{Path, PathBuf};

use anyhow::Context;
use sidb::eval::{evaluate_with_progress, markdown_table, EvalOptions};
use sidb::model::data::{load_dataset, Prepared};
use sidb::model::sid::{churn, dedup_suffixes};
use sidb::model::{align_codes, DasConfig, Method, TrainControl, TrainedModel, TrainingData};

/// Model settings shared by `train` and `eval`.
#[derive(clap::Args)]
struct ModelArgs {
    /// Dataset directory (items.tsv, interactions.tsv, item_emb.f32, item_emb.json).
    #[arg(long)]
    data: PathBuf,
    /// JSON file with DasConfig fields to override.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed (overrides the config).
    #[arg(long)]
    seed: Option<u64>,
    /// Training steps (overrides the config).
    #[arg(long)]
    steps: Option<usize>,
    /// Positives are ratings >= this (0 = all).
    #[arg(long, default_value_t = 4.0)]
    min_rating: f32,
    /// Trainer threads (candle's CPU kernels; process-wide, set before any work).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// `sidb train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    args: ModelArgs,
    /// das, rqvae, rqkmeans, two-stage or cf.
    #[arg(long, default_value = "das")]
    method: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// A model directory written by an earlier `sidb train` to warm-start from, as the server's
    /// retrains do: the new codebooks are then matched to the old ones and the churn of the item
    /// SIDs against that model is printed.
    #[arg(long)]
    warm_start: Option<PathBuf>,
}

/// `sidb eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    args: ModelArgs,
    /// Comma-separated methods (das, das-no-u2i, das-no-self, das-no-co, das-no-debias,
    /// das-no-logq, rqvae, rqkmeans, two-stage, cf, popularity).
    #[arg(long, default_value = "das,rqvae,rqkmeans,two-stage,cf,popularity")]
    methods: String,
    /// JSON report path.
    #[arg(long)]
    out: PathBuf,
    /// Score each user's validation pair (second-last positive) instead of the test pair: for
    /// choosing settings without looking at the test set.
    #[arg(long)]
    on_validation: bool,
}

/// Runs `sidb train`.
pub fn run_train(a: &TrainArgs) -> anyhow::Result<()> {
    set_threads(a.args.threads);
    train(&a.args, &a.method, &a.out, a.warm_start.as_deref())
}

/// Runs `sidb eval`.
pub fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    set_threads(a.args.threads);
    eval(&a.args, &a.methods, &a.out, a.on_validation)
}

fn config(args: &ModelArgs) -> anyhow::Result<DasConfig> {
    let mut cfg = match &args.config {
        Some(p) => DasConfig::from_json(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("settings file {}", p.display()))?,
        None => DasConfig::default(),
    };
    cfg.seed = args.seed.unwrap_or(cfg.seed);
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg.threads = args.threads;
    // checked here, before the dataset is loaded and prepared, for `train` and `eval` alike
    cfg.validate()?;
    Ok(cfg)
}

/// candle reads its thread count from the environment once; set it before any tensor work.
pub(crate) fn set_threads(n: usize) {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, n.to_string());
        }
    }
}

fn train(
    args: &ModelArgs,
    method: &str,
    out: &Path,
    warm_start: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = config(args)?;
    let ds = load_dataset(&args.data)?;
    let ratings: Vec<_> = ds
        .ratings
        .iter()
        .filter(|r| args.min_rating <= 0.0 || r.rating >= args.min_rating)
        .copied()
        .collect();
    let data: TrainingData = ds.training_data(&ratings);
    let method: Method = method.parse()?;
    let prev = match warm_start {
        Some(dir) => Some((
            dir,
            TrainedModel::load(dir).with_context(|| format!("loading {}", dir.display()))?,
        )),
        None => None,
    };
    let ctl = TrainControl {
        warm_start: prev.as_ref().map(|p| &p.1),
        ..Default::default()
    };
    let prep = Prepared::new(&data, cfg.recency())?;
    let (mut model, stats) = sidb::model::train_with(&prep, method, &cfg, &ctl)?;
    if let Some((_, prev)) = &prev {
        align_codes(&mut model, prev)?;
    }
    model.save(out)?;
    let items = model.encode_items(&ds.item_emb)?;
    if let Some((dir, prev)) = &prev {
        let old = prev.encode_items(&ds.item_emb)?.codes;
        let c = churn(&old, &items.codes, cfg.levels);
        println!(
            "item SID churn against {}: per level (prefix length 1..{}) {:?}",
            dir.display(),
            cfg.levels,
            c.per_level
        );
    }
    let suffix = dedup_suffixes(&items.codes, cfg.levels);
    let mut tsv = String::from("item_idx\titem_key\tsid\tsuffix\n");
    for (i, (codes, s)) in items.codes.chunks(cfg.levels).zip(suffix).enumerate() {
        let sid: Vec<String> = codes.iter().map(|c| c.to_string()).collect();
        tsv.push_str(&format!(
            "{i}\t{}\t{}\t{s}\n",
            ds.item_keys[i],
            sid.join(",")
        ));
    }
    std::fs::write(out.join("item_sids.tsv"), tsv)?;
    std::fs::write(
        out.join("train_stats.json"),
        serde_json::to_string_pretty(&stats)?,
    )?;
    println!(
        "{}",
        serde_json::to_string_pretty(&model.item_quality(&ds.item_emb)?)?
    );
    println!(
        "trained {method:?} in {:.1} s ({:.2} steps/s)",
        stats.seconds,
        stats.steps_per_s()
    );
    Ok(())
}

fn eval(args: &ModelArgs, methods: &str, out: &Path, on_validation: bool) -> anyhow::Result<()> {
    let opts = EvalOptions {
        config: config(args)?,
        min_rating: args.min_rating,
        on_validation,
        ..EvalOptions::default()
    };
    let ds = load_dataset(&args.data)?;
    let methods: Vec<String> = methods
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut write = |r: &sidb::eval::EvalReport| {
        let json = serde_json::to_string_pretty(r).expect("report serialises: plain data");
        if let Err(e) = std::fs::write(out, json) {
            tracing::warn!(error = %e, "could not write the partial report");
        }
        eprintln!("{}", markdown_table(r));
    };
    let report = evaluate_with_progress(&ds, &methods, &opts, &mut write)?;
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", markdown_table(&report));
    Ok(())
}
