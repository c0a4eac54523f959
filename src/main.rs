//! The `sidb` command: `serve` runs the database; `import` and `training` talk to a running one;
//! `bench` loads it; `train` and `eval` run the semantic-ID model on a dataset directory.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use cli::loadgen::{self, IngestOptions};
use cli::{admin, chaos, model};
use sidb::config::Config;
use sidb::types::Durability;

#[derive(Parser)]
#[command(
    name = "sidb",
    version,
    about = "Vector-and-semantic-ID database server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults: ./sidb-data, 127.0.0.1:7707).
    Serve(ServeArgs),
    /// Print the effective configuration (defaults <- file <- SIDB__* env <- flags) as TOML.
    Config(ServeArgs),
    /// Load generators against a running server.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train one semantic-ID method on a dataset directory; write the checkpoint and SIDs.
    Train(model::TrainArgs),
    /// Evaluate semantic-ID methods (leave-last-out) on a dataset directory; write a JSON report.
    Eval(Box<model::EvalArgs>),
    /// Load a dataset directory (the layout of docs/dataset-format.md) into a running server,
    /// with progress.
    Import(admin::ImportArgs),
    /// The background trainer of a running server: trigger, status, watch, versions, activate.
    #[command(subcommand)]
    Training(admin::TrainingCommand),
    /// Crash test: run `sidb serve` on a data directory under a mixed workload, SIGKILL it at
    /// seeded moments, and check every restart against a model of what was acknowledged.
    Chaos(chaos::ChaosArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address HOST:PORT (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// HTTP port for /metrics, /healthz and /readyz, HOST:PORT; "" turns it off
    /// (server.http_listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// Log format (log.format).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Log filter, RUST_LOG syntax (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Open a data directory whose database is behind what was acknowledged (a damaged or
    /// deleted `db/`), serving what is left, instead of refusing to start with DATA_LOSS
    /// (storage.accept_data_loss). For one start, after the damage has been looked at.
    #[arg(long)]
    accept_data_loss: bool,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(d) = &self.data_dir {
            c.storage.data_dir = d.clone();
        }
        if let Some(l) = &self.listen {
            c.server.listen = l.clone();
        }
        if let Some(h) = &self.http_listen {
            c.server.http_listen = h.clone();
        }
        if let Some(f) = &self.log_format {
            c.log.format = f.clone();
        }
        if let Some(l) = &self.log_level {
            c.log.level = l.clone();
        }
        c.storage.accept_data_loss |= self.accept_data_loss;
        c.validate()?;
        Ok(c)
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Stream 256-d items from N concurrent clients; report items/s and latency percentiles.
    Ingest(IngestArgs),
    /// Load clustered vectors, wait for the graph, then search from N clients; report QPS,
    /// latency percentiles and recall@k.
    Search(SearchArgs),
    /// Ask a trained collection's users for recommendations from N clients, then search by the
    /// same user ids; report both (QPS, latency percentiles) and their ratio.
    Recommend(RecommendArgs),
}

#[derive(Args)]
struct RecommendArgs {
    #[command(flatten)]
    target: cli::target::Target,
    /// A collection with an active model (its users are listed by their SIDs).
    #[arg(long)]
    collection: String,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Requests of each kind.
    #[arg(long, default_value_t = 5_000)]
    queries: usize,
    /// Items per answer.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Recommend with exclude_seen (reads each user's history).
    #[arg(long)]
    exclude_seen: bool,
    /// Seed of the user draw.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the report as one JSON object (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    target: cli::target::Target,
    /// Items loaded first.
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 256)]
    dim: u32,
    /// Concurrent search clients (one connection each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Searches in total.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Hits per search.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// HNSW breadth (0 = the server default).
    #[arg(long, default_value_t = 0)]
    ef: u32,
    /// Queries checked against brute force for recall.
    #[arg(long, default_value_t = 200)]
    recall_sample: usize,
    /// Seed of data and queries.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Search this collection, loaded by an earlier run with the same --items, --dim and --seed,
    /// instead of loading a fresh one (e.g. to compare runs before and during a training).
    #[arg(long)]
    reuse: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Durable,
    Buffered,
    Both,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    target: cli::target::Target,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Items per run.
    #[arg(long, default_value_t = 200_000)]
    items: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 256)]
    dim: u32,
    /// Items per request.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Which durability to measure.
    #[arg(long, value_enum, default_value = "both")]
    durability: DurabilityArg,
    /// Seed of the generated vectors (and of the item ids).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write into this existing collection (its first modality and dimension; --dim is ignored)
    /// instead of a fresh one, e.g. one with an active model to measure online SID assignment.
    #[arg(long)]
    collection: Option<String>,
}

fn with_plain_logging(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    f()
}

fn init_logging(c: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log.level)
        .with_context(|| format!("log.level: bad filter {:?}", c.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if c.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The model commands need no runtime, and must set candle's thread count before any thread
    // pool exists.
    match &cli.command {
        Command::Train(a) => return with_plain_logging(|| model::run_train(a)),
        Command::Eval(a) => return with_plain_logging(|| model::run_eval(a)),
        // The background trainer's candle kernels: sized once, before any thread exists, to the
        // trainer's pool (training.threads) so serving keeps the other cores.
        Command::Serve(args) => model::set_threads(args.load()?.training.threads),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            init_logging(&config)?;
            rt.block_on(async {
                let listener = sidb::server::bind(&config).await?;
                sidb::server::serve(config, listener, sidb::server::shutdown_signal()).await
            })?;
        }
        Command::Config(args) => print!("{}", toml::to_string_pretty(&args.load()?)?),
        Command::Bench(BenchCommand::Ingest(a)) => rt.block_on(bench_ingest(a))?,
        Command::Bench(BenchCommand::Search(a)) => rt.block_on(bench_search(a))?,
        Command::Bench(BenchCommand::Recommend(a)) => rt.block_on(bench_recommend(a))?,
        Command::Import(a) => rt.block_on(admin::import(a))?,
        Command::Training(c) => rt.block_on(admin::training(c))?,
        Command::Chaos(a) => {
            if !rt.block_on(chaos::run(a))? {
                std::process::exit(1);
            }
        }
        Command::Train(_) | Command::Eval(_) => unreachable!("handled above"),
    }
    Ok(())
}

async fn bench_search(a: SearchArgs) -> anyhow::Result<()> {
    println!(
        "search: {} items x {}-d (clustered), k {}, ef {}, {} clients, {} queries, server {}",
        a.items, a.dim, a.k, a.ef, a.clients, a.queries, a.target.addr
    );
    let opts = loadgen::SearchOptions {
        target: a.target,
        items: a.items,
        dim: a.dim,
        clients: a.clients,
        queries: a.queries,
        k: a.k,
        ef: a.ef,
        recall_sample: a.recall_sample,
        seed: a.seed,
        reuse: a.reuse,
    };
    println!("{}", loadgen::search(&opts).await?);
    Ok(())
}

async fn bench_recommend(a: RecommendArgs) -> anyhow::Result<()> {
    if !a.json {
        println!(
            "recommend: collection {}, k {}, exclude_seen {}, {} clients, {} requests of each kind, server {}",
            a.collection, a.k, a.exclude_seen, a.clients, a.queries, a.target.addr
        );
    }
    let opts = loadgen::RecommendOptions {
        target: a.target,
        collection: a.collection,
        clients: a.clients,
        queries: a.queries,
        k: a.k,
        exclude_seen: a.exclude_seen,
        seed: a.seed,
    };
    let report = loadgen::recommend(&opts).await?;
    match a.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => println!("{report}"),
    }
    Ok(())
}

async fn bench_ingest(a: IngestArgs) -> anyhow::Result<()> {
    let modes = match a.durability {
        DurabilityArg::Durable => vec![Durability::Durable],
        DurabilityArg::Buffered => vec![Durability::Buffered],
        DurabilityArg::Both => vec![Durability::Durable, Durability::Buffered],
    };
    println!(
        "ingest: {} items x {}-d, {} clients, {} items/request, server {}",
        a.items, a.dim, a.clients, a.batch, a.target.addr
    );
    for durability in modes {
        let opts = IngestOptions {
            target: a.target.clone(),
            clients: a.clients,
            items: a.items,
            dim: a.dim,
            batch: a.batch,
            durability,
            seed: a.seed,
            collection: a.collection.clone(),
        };
        println!("{}", loadgen::ingest(&opts).await?);
    }
    Ok(())
}
