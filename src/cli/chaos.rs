//! `sidb chaos`: a crash tester. It runs the real `sidb serve` (this executable) on a data
//! directory, drives it from concurrent clients with a seeded mix of every kind of RPC, and
//! SIGKILLs it at seeded moments (some timed to land while a model version is published). After
//! every restart it waits for SERVING, then checks the server against an exact client-side
//! model of what was acknowledged ([`model`], [`verify`]):
//!
//! - every DURABLE-acknowledged write is there with its exact bytes unless a later write
//!   replaced it; in-flight writes are all or nothing per batch; BUFFERED ones are lost only
//!   as a suffix of the log;
//! - nothing is present that was never written, and scans hold no duplicates;
//! - the SID trie agrees with itself and with the entities (PrefixScan at every prefix,
//!   PrefixStats, GetSemanticIds, GetItems, Search under a prefix);
//! - one active model version, which every SID carries, never one older than acknowledged;
//! - deleted collections stay deleted, created ones stay.
//!
//! The run ends with a clean SIGTERM (exit code 0) and one more restart and check; `--self-test`
//! then tampers with the data, the model and the observations in known ways and asserts that
//! the checker reports each ([`selftest`]).

mod model;
mod observe;
mod online;
mod report;
mod rpc;
mod selftest;
mod server;
mod shared;
mod verify;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sidb::proto as pb;

use model::{Model, WriteKind, ITEM_POOL, USER_POOL};
use report::{Findings, Summary};
use rpc::Clients;
use server::{Launch, LogSink, Proc};
use shared::Shared;

/// `sidb chaos` options.
#[derive(Args, Clone)]
pub struct ChaosArgs {
    /// SIGKILLs (each followed by a restart and a check).
    #[arg(long, default_value_t = 10)]
    kills: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Seed of the workload and of the kill times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the summary as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data directory (must be empty or absent); default a fresh one under the temp dir,
    /// removed after a run without violations.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Tamper with data, model and observations in known ways and assert the checker catches
    /// each.
    #[arg(long)]
    self_test: bool,
    /// A start slower than this to SERVING is a violation.
    #[arg(long, default_value_t = 30)]
    serving_timeout_secs: u64,
    /// A call without an answer for this long is a hang.
    #[arg(long, default_value_t = 20)]
    hang_secs: u64,
    /// Shortest workload between two kills.
    #[arg(long, default_value_t = 300)]
    min_epoch_ms: u64,
    /// Longest workload between two kills.
    #[arg(long, default_value_t = 2500)]
    max_epoch_ms: u64,
    /// Share of the kills timed to land during the publication of a model version.
    #[arg(long, default_value_t = 0.3)]
    publish_kill_ratio: f64,
    /// `training.keep_versions` of the server.
    #[arg(long, default_value_t = 2)]
    keep_versions: usize,
    /// Violation classes that do not fail the run (still reported), comma-separated.
    #[arg(long, value_delimiter = ',')]
    tolerate: Vec<String>,
}

/// The collection names: the first lives all run, the others are created and deleted.
const SLOTS: [&str; 3] = ["chaos-main", "chaos-churn-1", "chaos-churn-2"];

/// `storage.flush_interval_ms` of the server under test.
const FLUSH_MS: u64 = 100;

/// The server's settings: quick trainings, frequent checkpoints, small log segments.
fn server_env(a: &ChaosArgs) -> Vec<(String, String)> {
    let keep = a.keep_versions.to_string();
    let flush = FLUSH_MS.to_string();
    [
        ("SIDB__TRAINING__AUTO", "false"),
        ("SIDB__TRAINING__MIN_ITEMS", "16"),
        ("SIDB__TRAINING__STEPS", "40"),
        ("SIDB__TRAINING__WARM_STEPS", "20"),
        ("SIDB__TRAINING__BATCH", "64"),
        ("SIDB__TRAINING__KEEP_VERSIONS", keep.as_str()),
        ("SIDB__TRAINING__SERVING_DUTY", "1.0"),
        ("SIDB__TRAINING__SCHED_IDLE", "false"),
        ("SIDB__TRAINING__NICE", "0"),
        ("SIDB__TRAINING__CHECK_INTERVAL_MS", "20"),
        ("SIDB__STORAGE__CHECKPOINT_INTERVAL_SECS", "1"),
        ("SIDB__STORAGE__WAL_SEGMENT_BYTES", "65536"),
        ("SIDB__STORAGE__FLUSH_INTERVAL_MS", flush.as_str()),
        ("SIDB__STORAGE__CACHE_BYTES", "16777216"),
        ("SIDB__RETRIEVAL__RECOMMEND__MIN_BUCKET", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The run's state.
struct Run {
    args: ChaosArgs,
    launch: Launch,
    sh: Arc<Shared>,
    summary: Summary,
    rng: ChaCha8Rng,
    proc: Option<Proc>,
    starts: u64,
}

/// Runs the crash test; `Ok(true)` when no violation fails it.
pub async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let (dir, temp) = data_dir(&args)?;
    let log_path = dir.with_extension("server.log");
    let launch = Launch {
        exe: std::env::current_exe().context("finding this executable")?,
        dir: dir.clone(),
        env: server_env(&args),
        log: LogSink::open(&log_path)?,
        bound: Duration::from_secs(args.serving_timeout_secs),
    };
    println!(
        "chaos: data dir {}, server log {}",
        dir.display(),
        log_path.display()
    );
    let mut run = Run {
        sh: Arc::new(Shared::new(
            Model::new(&SLOTS),
            Duration::from_secs(args.hang_secs),
        )),
        summary: Summary {
            seed: args.seed,
            clients: args.clients,
            data_dir: dir.display().to_string(),
            ..Default::default()
        },
        rng: ChaCha8Rng::seed_from_u64(args.seed),
        launch,
        args,
        proc: None,
        starts: 0,
    };
    run.summary.time_to_serving.bound_ms = run.launch.bound.as_secs_f64() * 1e3;
    let finished = run.all().await;
    if let Err(e) = &finished {
        run.summary.add(
            "run",
            vec![report::Violation {
                class: "run-aborted".into(),
                at: String::new(),
                collection: String::new(),
                detail: format!("{e:#}"),
            }],
        );
    }
    if let Some(p) = run.proc.take() {
        let _ = p.terminate(Duration::from_secs(30)).await;
    }
    run.finish(t0, temp)
}

fn data_dir(a: &ChaosArgs) -> anyhow::Result<(PathBuf, bool)> {
    let (dir, temp) = match &a.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let name = format!("sidb-chaos-{}-{}", std::process::id(), a.seed);
            (std::env::temp_dir().join(name), true)
        }
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!("data dir {} is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    Ok((dir, temp))
}

impl Run {
    async fn all(&mut self) -> anyhow::Result<()> {
        self.start().await?;
        self.check("epoch 0 check", None).await?;
        self.setup().await?;
        for epoch in 1..=self.args.kills {
            self.epoch(epoch).await?;
        }
        self.ensure_model().await?;
        self.clean_restart().await?;
        if self.args.self_test {
            let cases = selftest::run(self).await?;
            self.summary.self_test = cases;
        }
        Ok(())
    }

    /// Starts the server; a start that fails or is slower than the bound ends the run.
    async fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        if self.starts > 1 {
            self.summary.restarts += 1;
        }
        match self.launch.start(self.starts).await {
            Ok((p, took)) => {
                self.summary.time_to_serving.add(took.as_secs_f64() * 1e3);
                self.proc = Some(p);
                Ok(())
            }
            Err(e) => {
                let at = format!("start {}", self.starts);
                self.summary.add(
                    &at,
                    vec![report::Violation {
                        class: "start-failed".into(),
                        at: String::new(),
                        collection: String::new(),
                        detail: e.clone(),
                    }],
                );
                anyhow::bail!("server start {}: {e}", self.starts)
            }
        }
    }

    fn url(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.url.clone())
            .unwrap_or_default()
    }

    fn verify_ctx(&self, kill_at: Option<Instant>) -> verify::Ctx {
        verify::Ctx {
            keep_versions: self.args.keep_versions,
            kill_at,
            flush_bound: Duration::from_millis(FLUSH_MS) + Duration::from_secs(1),
        }
    }

    /// Observes the quiescent server, verifies it against the model, rebases the model.
    async fn check(&mut self, at: &str, kill_at: Option<Instant>) -> anyhow::Result<Findings> {
        let mut c = Clients::connect(&self.url()).await?;
        let obs = observe::observe(&mut c).await;
        let mut f = Findings::default();
        let ctx = self.verify_ctx(kill_at);
        {
            let mut m = self.sh.model.lock();
            verify::verify(&m, &obs, &ctx, &mut f);
            verify::rebase(&mut m, &obs);
            let k = &mut m.counters;
            k.in_doubt_applied += f.doubt[0];
            k.in_doubt_not_applied += f.doubt[1];
            k.in_doubt_undecided += f.doubt[2];
            k.buffered_lost += f.buffered_lost;
        }
        let active = obs
            .colls
            .values()
            .map(|c| c.info.active_model_version)
            .max()
            .unwrap_or(0);
        self.summary.versions_active_after_restart =
            self.summary.versions_active_after_restart.max(active);
        self.summary.absorb(at, f.clone());
        Ok(f)
    }

    /// Creates the long-lived collection and loads it so that trainings can run at once.
    async fn setup(&mut self) -> anyhow::Result<()> {
        let mut c = Clients::connect(&self.url()).await?;
        workload::create(&self.sh, &mut c, 0, SLOTS[0]).await;
        let mut rng = ChaCha8Rng::seed_from_u64(self.args.seed ^ 0x5eed);
        workload::write(
            &self.sh,
            &mut c,
            &mut rng,
            0,
            WriteKind::UpsertItems,
            ITEM_POOL,
            true,
            0,
        )
        .await;
        workload::write(
            &self.sh,
            &mut c,
            &mut rng,
            0,
            WriteKind::UpsertUsers,
            USER_POOL,
            true,
            0,
        )
        .await;
        for _ in 0..4 {
            workload::write(
                &self.sh,
                &mut c,
                &mut rng,
                0,
                WriteKind::Interactions,
                16,
                true,
                0,
            )
            .await;
        }
        self.drain("setup");
        Ok(())
    }

    /// Moves the clients' violations into the summary.
    fn drain(&mut self, at: &str) {
        let v = std::mem::take(&mut *self.sh.violations.lock());
        self.summary.add(at, v);
    }

    /// One workload, one kill, one restart, one check.
    async fn epoch(&mut self, epoch: u64) -> anyhow::Result<()> {
        self.sh.stop.store(false, Ordering::SeqCst);
        self.sh.killing.store(false, Ordering::SeqCst);
        let url = self.url();
        let tasks: Vec<_> = (0..self.args.clients)
            .map(|i| {
                let seed = self.args.seed.wrapping_mul(1_000_003) ^ (epoch << 16) ^ i as u64;
                tokio::spawn(workload::client(self.sh.clone(), url.clone(), seed, i))
            })
            .collect();
        let targeted = self.rng.random_bool(self.args.publish_kill_ratio);
        let waited = match targeted {
            true => self.until_publishing().await,
            false => {
                let ms = self
                    .rng
                    .random_range(self.args.min_epoch_ms..=self.args.max_epoch_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("{ms} ms")
            }
        };
        self.sh.killing.store(true, Ordering::SeqCst);
        self.sh.stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
        let kill_at = Instant::now();
        self.summary.kills += 1;
        for t in tasks {
            let _ = t.await;
        }
        self.sh.model.lock().settle_pending();
        self.drain(&format!("epoch {epoch} workload"));
        self.start().await?;
        let f = self
            .check(&format!("epoch {epoch} check"), Some(kill_at))
            .await?;
        let serving = self
            .summary
            .time_to_serving
            .samples_ms
            .last()
            .copied()
            .unwrap_or(0.0);
        println!(
            "epoch {epoch:>3}: workload {waited}, kill, SERVING in {serving:.0} ms, check: {} invariants, {} comparisons, {} violations",
            f.invariant_checks, f.comparisons, f.violations.len()
        );
        Ok(())
    }

    /// Triggers a training of the long-lived collection and waits until it publishes (then a
    /// few milliseconds more, seeded), at most three longest epochs.
    async fn until_publishing(&mut self) -> String {
        let delay = Duration::from_millis(self.rng.random_range(0..=30));
        let limit = Duration::from_millis(self.args.max_epoch_ms * 3);
        let t0 = Instant::now();
        let Ok(mut c) = Clients::connect(&self.url()).await else {
            return "no connection".into();
        };
        let coll = SLOTS[0].to_string();
        let _ = c
            .training
            .trigger_training(pb::TriggerTrainingRequest {
                collection: coll.clone(),
            })
            .await;
        let watch = c
            .training
            .watch_training(pb::WatchTrainingRequest { collection: coll })
            .await;
        let Ok(stream) = watch else {
            tokio::time::sleep(limit).await;
            return "watch refused".into();
        };
        let mut stream = stream.into_inner();
        let publishing = async {
            while let Ok(Some(st)) = stream.message().await {
                if st.phase == "PUBLISHING" {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(limit, publishing).await {
            Ok(true) => {
                tokio::time::sleep(delay).await;
                format!(
                    "until PUBLISHING ({} ms) + {} ms",
                    t0.elapsed().as_millis() - delay.as_millis(),
                    delay.as_millis()
                )
            }
            _ => format!("{} ms (no publication seen)", t0.elapsed().as_millis()),
        }
    }

    /// Trains the long-lived collection until a version is active (the self-test and the final
    /// checks want SIDs to check).
    async fn ensure_model(&mut self) -> anyhow::Result<()> {
        let mut c = Clients::connect(&self.url()).await?;
        let name = SLOTS[0].to_string();
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let info = c
                .collections
                .get_collection(pb::GetCollectionRequest { name: name.clone() })
                .await?
                .into_inner();
            if info.active_model_version != 0 {
                let mut m = self.sh.model.lock();
                m.versions_seen(0, info.active_model_version, true);
                return Ok(());
            }
            let req = pb::TriggerTrainingRequest {
                collection: name.clone(),
            };
            if c.training.trigger_training(req).await.is_ok() {
                self.sh.model.lock().counters.trainings_triggered += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("no model version became active within 180 s")
    }

    /// SIGTERM (exit code 0 expected), restart, check.
    async fn clean_restart(&mut self) -> anyhow::Result<()> {
        let p = self.proc.take().expect("running");
        match p.terminate(Duration::from_secs(60)).await {
            Ok(s) if s.success() => self.summary.clean_shutdowns += 1,
            other => self.summary.add(
                "final",
                vec![report::Violation {
                    class: "unclean-shutdown".into(),
                    at: String::new(),
                    collection: String::new(),
                    detail: format!("SIGTERM: {other:?}"),
                }],
            ),
        }
        self.start().await?;
        self.check("after clean shutdown", None).await?;
        Ok(())
    }

    fn finish(mut self, t0: Instant, temp: bool) -> anyhow::Result<bool> {
        self.summary.seconds = t0.elapsed().as_secs_f64();
        self.summary.counters = self.sh.model.lock().counters.clone();
        let errors = self.launch.log.errors.lock().clone();
        for e in &errors {
            self.summary.add(
                "server log",
                vec![report::Violation {
                    class: "server-error-log".into(),
                    at: String::new(),
                    collection: String::new(),
                    detail: e.clone(),
                }],
            );
        }
        self.summary.server_errors = errors;
        let missed = self.summary.self_test.iter().filter(|c| !c.caught).count();
        let failing = self.summary.failing(&self.args.tolerate) + missed;
        print!("{}", self.summary.text());
        if let Some(out) = &self.args.out {
            std::fs::write(out, serde_json::to_string_pretty(&self.summary)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        if failing == 0 && temp {
            let _ = std::fs::remove_dir_all(&self.launch.dir);
            let _ = std::fs::remove_file(self.launch.dir.with_extension("server.log"));
        } else if failing > 0 {
            println!("data dir kept: {}", self.launch.dir.display());
        }
        Ok(failing == 0)
    }
}
