//! `sidb train` and `sidb eval`: the semantic-ID model on a dataset directory, no server needed.
use std::path::{Path, PathBuf};

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sidb::eval::classical::ClassicalOptions;
use sidb::eval::summary::{cell_table, overview_table, summarise, variant_label, CellSummary};
use sidb::eval::{evaluate_with_progress, markdown_table, EvalOptions, EvalReport};
use sidb::model::data::{load_dataset, Prepared};
use sidb::model::recommend::RecommendSettings;
use sidb::model::sid::{churn, dedup_suffixes};
use sidb::model::{align_codes, DasConfig, Method, TrainControl, TrainedModel, TrainingData};

/// Model settings shared by `train` and `eval`.
#[derive(clap::Args)]
struct ModelArgs {
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
    /// Dataset directory (items.tsv, interactions.tsv, item_emb.f32, item_emb.json; see
    /// docs/dataset-format.md).
    #[arg(long)]
    data: PathBuf,
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
    /// Dataset directory (items.tsv, interactions.tsv, item_emb.f32, item_emb.json; see
    /// docs/dataset-format.md). Repeat it to evaluate several data sets in one run.
    #[arg(long, required_unless_present = "matrix")]
    data: Vec<PathBuf>,
    /// Evaluate every data set directory under this one (each subdirectory holding items.tsv,
    /// in name order), after those given with --data.
    #[arg(long)]
    matrix: Option<PathBuf>,
    #[command(flatten)]
    args: ModelArgs,
    /// Set every timestamp to 0 before the split: a seeded random leave-one-out, as on a
    /// catalogue without time.
    #[arg(long)]
    timeless: bool,
    /// Comma-separated seeds; each seeds the split and every trained method, and the tables
    /// show mean ± sd over them (overrides --seed).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Comma-separated variants to run on every data set, each `base` (the --min-rating and
    /// --timeless given) or a `+`-joined set of `implicit` (min-rating 0) and `timeless`, e.g.
    /// `base,implicit,timeless+implicit`. Default: `base`.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Comma-separated methods (das, das-no-u2i, das-no-self, das-no-co, das-no-debias,
    /// das-no-logq, rqvae, rqkmeans, two-stage, cf, content, the classical baselines
    /// popularity, itemknn, ease, svd, and `sids:NAME`, an external SID set read from
    /// `--sids-dir`, e.g. Cornac's TIGER tokenizers written by benches/peers/cornac/run.sh).
    #[arg(long, default_value = "das,rqvae,rqkmeans,two-stage,cf,popularity")]
    methods: String,
    /// JSON report path: one run's report, or with several runs every report and the summaries.
    #[arg(long)]
    out: PathBuf,
    /// Score each user's validation pair (second-last positive) instead of the test pair: for
    /// choosing settings without looking at the test set.
    #[arg(long)]
    on_validation: bool,
    /// itemknn: half-lives by position to choose from on validation (0 = by age only).
    #[arg(long, value_delimiter = ',')]
    knn_half_lives: Vec<f64>,
    /// itemknn: sources kept per target item to choose from on validation (0 = all).
    #[arg(long, value_delimiter = ',')]
    knn_neighbours: Vec<usize>,
    /// ease: lambdas to choose from on validation.
    #[arg(long, value_delimiter = ',')]
    ease_lambdas: Vec<f64>,
    /// svd: ranks to choose from on validation.
    #[arg(long, value_delimiter = ',')]
    svd_ranks: Vec<usize>,
    /// Retrieval (a)'s settings as JSON, the fields of `[retrieval.recommend]` that differ from
    /// the server's defaults, e.g. `{"w_pop": 0.2}`.
    #[arg(long)]
    recommend: Option<String>,
    /// A JSON array of retrieval (a) settings (each like --recommend) scored on the validation
    /// pairs of every SID method and reported beside the held-out scores: for choosing
    /// `Recommend`'s defaults over a matrix. A file path when it starts with `@`.
    #[arg(long)]
    recommend_grid: Option<String>,
    /// Where `sids:NAME` methods read their SID sets: `DIR/NAME/seed-<seed>/`. Default: the
    /// `sids` directory inside each data set's directory.
    #[arg(long)]
    sids_dir: Option<PathBuf>,
}

/// Runs `sidb train`.
pub fn run_train(a: &TrainArgs) -> anyhow::Result<()> {
    set_threads(a.args.threads);
    train(&a.data, &a.args, &a.method, &a.out, a.warm_start.as_deref())
}

/// Runs `sidb eval`.
pub fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    set_threads(a.args.threads);
    eval(a)
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
    data: &Path,
    args: &ModelArgs,
    method: &str,
    out: &Path,
    warm_start: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = config(args)?;
    let ds = load_dataset(data)?;
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

/// One data set and variant of an evaluation.
struct Cell {
    data: PathBuf,
    min_rating: f32,
    timeless: bool,
}

/// What `sidb eval` writes for several runs.
#[derive(Serialize)]
struct MatrixReport<'a> {
    version: &'static str,
    methods: &'a [String],
    seeds: &'a [u64],
    /// mean ± sd: the sample standard deviation over the seeds
    summaries: &'a [CellSummary],
    runs: &'a [EvalReport],
}

fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let base = EvalOptions {
        config: config(&a.args)?,
        min_rating: a.args.min_rating,
        on_validation: a.on_validation,
        timeless: a.timeless,
        classical: classical_options(a),
        recommend: match &a.recommend {
            Some(j) => serde_json::from_str(j).context("--recommend")?,
            None => RecommendSettings::default(),
        },
        recommend_grid: match &a.recommend_grid {
            Some(j) => {
                let text = match j.strip_prefix('@') {
                    Some(path) => {
                        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                    }
                    None => j.clone(),
                };
                serde_json::from_str(&text).context("--recommend-grid")?
            }
            None => Vec::new(),
        },
        ..EvalOptions::default()
    };
    base.recommend
        .validate("--recommend: ")
        .map_err(anyhow::Error::msg)?;
    let methods: Vec<String> = (a.methods.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let seeds = match a.seeds.is_empty() {
        true => vec![base.config.seed],
        false => a.seeds.clone(),
    };
    let cells = cells(a)?;
    if cells.len() == 1 && seeds.len() == 1 {
        return eval_one(a, &cells[0], &base, &methods);
    }
    let (mut runs, mut summaries) = (Vec::new(), Vec::new());
    let write = |runs: &[EvalReport], summaries: &[CellSummary]| -> anyhow::Result<()> {
        let r = MatrixReport {
            version: concat!("sidb ", env!("CARGO_PKG_VERSION")),
            methods: &methods,
            seeds: &seeds,
            summaries,
            runs,
        };
        std::fs::write(&a.out, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", a.out.display()))
    };
    for cell in &cells {
        let ds =
            load_dataset(&cell.data).with_context(|| format!("loading {}", cell.data.display()))?;
        let first = runs.len();
        for &seed in &seeds {
            let mut opts = base.clone();
            (opts.config.seed, opts.min_rating, opts.timeless) =
                (seed, cell.min_rating, cell.timeless);
            opts.sids_dir = Some(sids_dir(a, cell));
            let label = variant_label(cell.min_rating, cell.timeless);
            eprintln!("== {} ({label}), seed {seed}", ds.name);
            let t0 = Instant::now();
            let report = evaluate_with_progress(&ds, &methods, &opts, &mut |r| {
                let m = r.results.last().expect("called after a method");
                eprintln!("   {} done ({:.1} s)", m.method, m.train_seconds);
            })?;
            eprintln!("{}", markdown_table(&report));
            eprintln!("   run took {:.1} s", t0.elapsed().as_secs_f64());
            runs.push(report);
            write(&runs, &summaries)?;
        }
        summaries.push(summarise(&runs[first..]));
        write(&runs, &summaries)?;
    }
    println!(
        "{} ({} methods, seeds {:?})\n",
        concat!("sidb ", env!("CARGO_PKG_VERSION")),
        methods.len(),
        seeds
    );
    for c in &summaries {
        println!("{}", cell_table(c));
    }
    println!("{}", overview_table(&summaries));
    Ok(())
}

/// The data sets times the variants, in that order.
fn cells(a: &EvalArgs) -> anyhow::Result<Vec<Cell>> {
    let mut dirs = a.data.clone();
    if let Some(m) = &a.matrix {
        let mut under: Vec<PathBuf> = std::fs::read_dir(m)
            .with_context(|| format!("reading {}", m.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.join("items.tsv").is_file())
            .collect();
        under.sort();
        anyhow::ensure!(
            !under.is_empty(),
            "no data set (a directory with items.tsv) under {}",
            m.display()
        );
        dirs.extend(under);
    }
    let variants = match a.variants.is_empty() {
        true => vec!["base".to_string()],
        false => a.variants.clone(),
    };
    let mut out = Vec::new();
    for d in &dirs {
        for v in &variants {
            let (mut min_rating, mut timeless) = (a.args.min_rating, a.timeless);
            for part in v.split('+').map(str::trim) {
                match part {
                    "base" => {}
                    "implicit" => min_rating = 0.0,
                    "timeless" => timeless = true,
                    other => anyhow::bail!(
                        "unknown variant part {other:?} in {v:?} (base, implicit, timeless)"
                    ),
                }
            }
            out.push(Cell {
                data: d.clone(),
                min_rating,
                timeless,
            });
        }
    }
    Ok(out)
}

/// Where a cell's `sids:NAME` methods are read.
fn sids_dir(a: &EvalArgs, cell: &Cell) -> PathBuf {
    a.sids_dir.clone().unwrap_or_else(|| cell.data.join("sids"))
}

fn classical_options(a: &EvalArgs) -> ClassicalOptions {
    let mut c = ClassicalOptions::default();
    if !a.knn_half_lives.is_empty() {
        c.knn_half_lives = a.knn_half_lives.clone();
    }
    if !a.knn_neighbours.is_empty() {
        c.knn_neighbours = a.knn_neighbours.clone();
    }
    if !a.ease_lambdas.is_empty() {
        c.ease_lambdas = a.ease_lambdas.clone();
    }
    if !a.svd_ranks.is_empty() {
        c.svd_ranks = a.svd_ranks.clone();
    }
    c
}

/// One data set, one variant, one seed: the report as it always was.
fn eval_one(
    a: &EvalArgs,
    cell: &Cell,
    base: &EvalOptions,
    methods: &[String],
) -> anyhow::Result<()> {
    let out = &a.out;
    let opts = EvalOptions {
        min_rating: cell.min_rating,
        timeless: cell.timeless,
        sids_dir: Some(sids_dir(a, cell)),
        ..base.clone()
    };
    let ds = load_dataset(&cell.data)?;
    let mut write = |r: &EvalReport| {
        let json = serde_json::to_string_pretty(r).expect("report serialises: plain data");
        if let Err(e) = std::fs::write(out, json) {
            tracing::warn!(error = %e, "could not write the partial report");
        }
        eprintln!("{}", markdown_table(r));
    };
    let report = evaluate_with_progress(&ds, methods, &opts, &mut write)?;
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", markdown_table(&report));
    Ok(())
}
