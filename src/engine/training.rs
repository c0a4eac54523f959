//! The background trainer: one scheduler thread that retrains collections with DAS and publishes
//! the results as new model versions (see [`super::models`]).
//!
//! - **Triggers** (`[training]`): a collection is trained when it has at least `min_items` items
//!   and at least one interaction (DAS learns from behaviour: without any, a training could only
//!   fail, after loading every vector) and either has no version yet, or has grown by
//!   `new_items_ratio` items or `new_interactions_ratio` interactions since the active
//!   version's snapshot,
//!   `min_interval_secs` passed since the last training ended, and no write came for
//!   `quiet_secs` (a bulk load is trained on whole); or when `TriggerTraining` asks.
//! - **One training at a time**, on the scheduler thread, with candle's kernels in a rayon pool
//!   of `training.threads` (default 1): serving keeps the other cores. The pool runs at
//!   `training.nice` under `SCHED_IDLE`, and while requests arrive it is paced to
//!   `training.serving_duty` of the time ([`Pacer`]), so serving also gets idle cores.
//! - **Warm start and stable codes:** a retrain starts from the active version's quantizers and
//!   its new codebooks are matched to the old ones level by level (`model::align_codes`), so code
//!   numbers keep their meaning; the churn against the previous version is in the report.
//! - **Failure** (an error, a panic, a cancel at shutdown or collection deletion) leaves the
//!   active version serving; the status says `FAILED` and why.
//! - **Status:** each collection has a `tokio::sync::watch` channel of [`TrainingStatus`]:
//!   `GetTrainingStatus` reads it, `WatchTraining` streams it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lock::{Mutex, Rank};
use tokio::sync::watch;

use super::index::VersionSids;
use super::indexer::Indexes;
use super::models::{self, das_config, encode_snapshot, PublishCtx, Snapshot};
use super::served::{LoadedModel, ModelReport, ServingInfo, VersionNeighbours};

mod job;
use crate::config::{RetrievalConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::model::data::Prepared;
use crate::model::neighbours::ItemNeighbours;
use crate::model::{self as das, Method, Progress, TrainControl};
use crate::storage::{Collection, Store};
use crate::types::EntityKind;
pub use job::Candidate;

/// Phase of a collection's trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing running.
    #[default]
    Idle,
    /// Reading the collection.
    Snapshot,
    /// Training.
    Training,
    /// Writing and activating the new version.
    Publishing,
    /// The last training failed (the active version keeps serving).
    Failed,
}

impl Phase {
    /// The name of api.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "IDLE",
            Phase::Snapshot => "SNAPSHOT",
            Phase::Training => "TRAINING",
            Phase::Publishing => "PUBLISHING",
            Phase::Failed => "FAILED",
        }
    }
}

/// What `GetTrainingStatus` / `WatchTraining` report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingStatus {
    /// Collection name.
    pub collection: String,
    /// Phase.
    pub phase: Phase,
    /// Passes over the positive interactions so far.
    pub epoch: u32,
    /// Steps so far.
    pub step: u64,
    /// Last losses by name (`sem`, `cf`, `align`).
    pub losses: Vec<(String, f32)>,
    /// 0..1 of the current training.
    pub progress: f64,
    /// Seconds left, estimated from the pace so far (0 when unknown).
    pub eta_seconds: f64,
    /// The version serving.
    pub active_model_version: u64,
    /// The version being trained (0 when none).
    pub training_model_version: u64,
    /// The last failure.
    pub error: String,
}

/// One collection's trainer state.
struct Slot {
    status: watch::Sender<TrainingStatus>,
    requested: AtomicBool,
    running: AtomicBool,
    cancel: AtomicBool,
    last_end: Mutex<Option<Instant>>,
    /// The last write sequence seen by the scheduler, and when it was first seen.
    last_write: Mutex<(u64, Instant)>,
}

impl Slot {
    fn update(&self, f: impl FnOnce(&mut TrainingStatus)) {
        self.status.send_modify(f);
    }
}

/// Everything a training needs from the engine.
#[derive(Clone)]
pub struct TrainCtx {
    /// Requests served (pacing).
    pub activity: Arc<Activity>,
    /// The store.
    pub store: Store,
    /// The retrieval states (one per collection).
    pub indexes: Arc<Indexes>,
    /// Retrieval settings.
    pub retrieval: Arc<RetrievalConfig>,
    /// Training settings.
    pub training: Arc<TrainingConfig>,
    /// Data directory (checkpoints).
    pub data_dir: PathBuf,
}

/// Data requests the server has started (the Training service's RPCs are not counted); the
/// trainer's [`Pacer`] watches it to see whether the server is busy.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    /// Counts one request.
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Paces a training while the server is busy: after a step during which requests arrived, it
/// sleeps so that training runs at most `duty` of the time (each pause at most 1 s, so a cancel
/// is still seen quickly). `SCHED_IDLE` alone gives serving priority on a core, but a core busy
/// with the trainer still slowed the serving threads next to it (Search p99 2.1x its idle value
/// on the 2-core machine); pauses give serving idle cores.
struct Pacer<'a> {
    activity: &'a Activity,
    duty: f64,
    /// Requests seen at the last step, the end of the last pause, and the time slept so far.
    state: std::sync::Mutex<(u64, Instant, Duration)>,
}

impl<'a> Pacer<'a> {
    fn new(activity: &'a Activity, duty: f64) -> Self {
        Pacer {
            activity,
            duty,
            state: std::sync::Mutex::new((activity.count(), Instant::now(), Duration::ZERO)),
        }
    }

    /// Called after each training step.
    fn pace(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seen = self.activity.count();
        if self.duty < 1.0 && seen != st.0 {
            let ran = st.1.elapsed();
            let pause = ran
                .mul_f64((1.0 - self.duty) / self.duty)
                .min(Duration::from_secs(1));
            std::thread::sleep(pause);
            st.2 += pause;
        }
        st.0 = seen;
        st.1 = Instant::now();
    }

    fn slept(&self) -> Duration {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).2
    }
}

/// The background trainer of every collection.
pub struct Trainers {
    ctx: TrainCtx,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    wake: Arc<(std::sync::Mutex<bool>, Condvar)>,
    worker: Mutex<Option<JoinHandle<()>>>,
    pool: rayon::ThreadPool,
}

impl Trainers {
    /// Starts the scheduler thread.
    pub fn start(ctx: TrainCtx) -> Result<Arc<Trainers>> {
        let (nice, idle) = (ctx.training.nice, ctx.training.sched_idle);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(ctx.training.threads.max(1))
            .thread_name(|i| format!("sidb-train-{i}"))
            .start_handler(move |_| lower_priority(nice, idle))
            .build()
            .map_err(|e| Error::Internal(format!("training pool: {e}")))?;
        let t = Arc::new(Trainers {
            ctx,
            slots: Mutex::new(Rank::Registry, "trainer slots", HashMap::new()),
            wake: Arc::new((std::sync::Mutex::new(false), Condvar::new())),
            worker: Mutex::new(Rank::Leaf, "trainer thread", None),
            pool,
        });
        let weak = Arc::downgrade(&t);
        let wake = Arc::clone(&t.wake);
        let every = Duration::from_millis(t.ctx.training.check_interval_ms);
        let handle = std::thread::Builder::new()
            .name("sidb-trainer".into())
            .spawn(move || {
                lower_priority(nice, idle);
                loop {
                    {
                        let (lock, cv) = &*wake;
                        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                        if *guard {
                            return;
                        }
                        let (guard, _) = cv
                            .wait_timeout(guard, every)
                            .unwrap_or_else(|e| e.into_inner());
                        if *guard {
                            return;
                        }
                    }
                    let Some(t) = weak.upgrade() else { return };
                    t.round();
                }
            })
            .map_err(|e| Error::Internal(format!("starting the trainer: {e}")))?;
        *t.worker.lock() = Some(handle);
        Ok(t)
    }

    /// Stops the scheduler: cancels a running training and waits for the thread.
    pub fn stop(&self) {
        for slot in self.slots.lock().values() {
            slot.cancel.store(true, Ordering::SeqCst);
        }
        {
            let (lock, cv) = &*self.wake;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = self.worker.lock().take() {
            let _ = h.join();
        }
    }

    fn notify(&self) {
        self.wake.1.notify_all();
    }

    fn slot(&self, coll: &Collection) -> Arc<Slot> {
        // Read before the registry lock: the writer lock ranks below it (src/lock.rs).
        let active = self.ctx.store.active_version(coll);
        let mut slots = self.slots.lock();
        let slot = slots.entry(coll.entry.id).or_insert_with(|| {
            let status = TrainingStatus {
                collection: coll.entry.name.clone(),
                active_model_version: active,
                ..Default::default()
            };
            Arc::new(Slot {
                status: watch::Sender::new(status),
                requested: AtomicBool::new(false),
                running: AtomicBool::new(false),
                cancel: AtomicBool::new(false),
                last_end: Mutex::new(Rank::Leaf, "last training end", None),
                last_write: Mutex::new(Rank::Leaf, "last write seen", (0, Instant::now())),
            })
        });
        Arc::clone(slot)
    }

    /// Forgets a deleted collection (cancelling its training).
    pub fn remove(&self, coll_id: u64) {
        if let Some(slot) = self.slots.lock().remove(&coll_id) {
            slot.cancel.store(true, Ordering::SeqCst);
        }
    }

    /// The collection's status now.
    pub fn status(&self, coll: &Collection) -> TrainingStatus {
        self.slot(coll).status.borrow().clone()
    }

    /// A receiver of the collection's status changes.
    pub fn watch(&self, coll: &Collection) -> watch::Receiver<TrainingStatus> {
        self.slot(coll).status.subscribe()
    }

    /// Why `coll` cannot be trained yet (too few items, no interactions), if it cannot: the
    /// one check behind both the automatic triggers and `TriggerTraining`.
    fn not_trainable(&self, coll: &Collection) -> Option<String> {
        let (min, stats) = (self.ctx.training.min_items, coll.info().stats);
        let name = &coll.entry.name;
        if stats.items < min {
            return Some(format!(
                "collection {name:?} has {} items; training needs at least {min} (training.min_items)",
                stats.items
            ));
        }
        (stats.interactions == 0).then(|| {
            format!(
                "collection {name:?} has no interactions; DAS learns from them: write some first"
            )
        })
    }

    /// Asks for a training now. FAILED_PRECONDITION when one is running or queued, or the
    /// collection cannot be trained yet ([`Trainers::not_trainable`]).
    pub fn trigger(&self, coll: &Collection) -> Result<TrainingStatus> {
        if let Some(why) = self.not_trainable(coll) {
            return Err(Error::FailedPrecondition(why));
        }
        let slot = self.slot(coll);
        if slot.running.load(Ordering::SeqCst) || slot.requested.swap(true, Ordering::SeqCst) {
            return Err(Error::FailedPrecondition(format!(
                "a training of collection {:?} is already running",
                coll.entry.name
            )));
        }
        self.notify();
        let now = slot.status.borrow().clone();
        Ok(now)
    }

    /// Runs `f` as the collection's only model-changing job (a rollback), or FAILED_PRECONDITION
    /// while a training runs.
    pub fn exclusive<T>(&self, coll: &Collection, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let slot = self.slot(coll);
        if slot
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Error::FailedPrecondition(format!(
                "a training of collection {:?} is running; wait for it to finish",
                coll.entry.name
            )));
        }
        let out = f();
        slot.running.store(false, Ordering::SeqCst);
        let active = self.ctx.store.active_version(coll);
        slot.update(|s| s.active_model_version = active);
        out
    }

    /// One scheduler round: train every collection that is due, one after the other.
    fn round(&self) {
        for info in self.ctx.store.list_collections() {
            let Ok(coll) = self.ctx.store.collection(&info.name) else {
                continue;
            };
            let slot = self.slot(&coll);
            let asked = slot.requested.load(Ordering::SeqCst);
            let due = asked || (self.ctx.training.auto && self.due(&coll, &slot));
            if !due {
                continue;
            }
            if slot
                .running
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            slot.requested.store(false, Ordering::SeqCst);
            slot.cancel.store(false, Ordering::SeqCst);
            self.run(&coll, &slot);
            *slot.last_end.lock() = Some(Instant::now());
            slot.running.store(false, Ordering::SeqCst);
            if *self.wake.0.lock().unwrap_or_else(|e| e.into_inner()) {
                return;
            }
        }
    }

    /// Whether the automatic triggers fire for `coll`.
    fn due(&self, coll: &Collection, slot: &Slot) -> bool {
        if self.not_trainable(coll).is_some() {
            return false;
        }
        let t = &self.ctx.training;
        let stats = coll.info().stats;
        {
            // Quiet period: wait for the writes to pause (a bulk load trains once, whole).
            let mut seen = slot.last_write.lock();
            if seen.0 != stats.last_sequence {
                *seen = (stats.last_sequence, Instant::now());
            }
            if seen.1.elapsed() < Duration::from_secs(t.quiet_secs) {
                return false;
            }
        }
        let since_last = slot.last_end.lock().map(|e| e.elapsed());
        if since_last.is_some_and(|d| d < Duration::from_secs(t.min_interval_secs)) {
            return false;
        }
        let active = self.ctx.store.active_version(coll);
        if active == 0 {
            return true;
        }
        let Some(report) = self.report_of(coll, active) else {
            return false;
        };
        let grown = |now: u64, then: u64, ratio: f64| now as f64 >= then as f64 * (1.0 + ratio);
        grown(stats.items, report.items, t.new_items_ratio)
            || grown(
                stats.interactions,
                report.interactions.max(1),
                t.new_interactions_ratio,
            )
    }

    fn report_of(&self, coll: &Collection, version: u64) -> Option<ModelReport> {
        let rec = self
            .ctx
            .store
            .versions(coll)
            .ok()?
            .into_iter()
            .find(|r| r.version == version)?;
        parse_report(&rec.report, version).ok()
    }

    /// One training of `coll`, start to end; failures end up in the status.
    fn run(&self, coll: &Collection, slot: &Slot) {
        let name = coll.entry.name.clone();
        let Ok(index) = self.ctx.indexes.get(coll.entry.id) else {
            return;
        };
        let next = self
            .ctx
            .store
            .versions(coll)
            .map(|v| v.iter().map(|r| r.version).max().unwrap_or(0) + 1)
            .unwrap_or(1);
        slot.update(|s| {
            *s = TrainingStatus {
                collection: name.clone(),
                phase: Phase::Snapshot,
                active_model_version: s.active_model_version,
                training_model_version: next,
                ..Default::default()
            }
        });
        tracing::info!(collection = %name, version = next, "training started");
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.train_and_publish(coll, slot, next)
        }));
        let result = match outcome {
            Ok(r) => r,
            Err(panic) => Err(Error::Internal(format!(
                "training panicked: {}",
                panic_message(&panic)
            ))),
        };
        index.stop_tracking();
        let active = self.ctx.store.active_version(coll);
        match result {
            Ok(report) => {
                tracing::info!(collection = %name, version = next, seconds = started.elapsed().as_secs_f64(), churn_level1 = report.churn_level1, "model version published");
                slot.update(|s| {
                    s.phase = Phase::Idle;
                    s.progress = 1.0;
                    s.eta_seconds = 0.0;
                    s.active_model_version = active;
                    s.training_model_version = 0;
                });
            }
            Err(e) => {
                tracing::warn!(collection = %name, version = next, error = %e, "training failed; the active version keeps serving");
                slot.update(|s| {
                    s.phase = Phase::Failed;
                    s.error = e.to_string();
                    s.eta_seconds = 0.0;
                    s.active_model_version = active;
                    s.training_model_version = 0;
                });
            }
        }
    }

    /// Trains a candidate on a snapshot and publishes it: the job ([`job::train`]) only reads
    /// the snapshot and the previous model; [`models::publish`] is the one place a version goes
    /// live.
    fn train_and_publish(
        &self,
        coll: &Collection,
        slot: &Slot,
        version: u64,
    ) -> Result<ModelReport> {
        let ctx = &self.ctx;
        let index = ctx.indexes.get(coll.entry.id)?;
        // From here on the index records what is written, for the activation to re-encode.
        index.start_tracking();
        let snap = Snapshot::take(&ctx.store, coll)?;
        let prev = index.model.load_full();
        let job = job::Job {
            ctx,
            pool: &self.pool,
            coll,
            slot,
            version,
            snap: &snap,
            prev: prev.as_deref(),
        };
        let Candidate {
            model,
            sids,
            mut report,
        } = job::train(&job)?;
        if let Some(p) = &prev {
            let c = churn_vs_index(&index, &sids, p.version, model.levels());
            report.churn_level1 = c.level1 as f32;
            report.churn_full = c.full as f32;
            report.churn_per_level = c.per_level.iter().map(|x| *x as f32).collect();
        }
        let pctx = PublishCtx {
            store: &ctx.store,
            coll,
            index: &index,
            data_dir: &ctx.data_dir,
            retrieval: &ctx.retrieval,
            training: &ctx.training,
        };
        models::publish(&pctx, model, &snap, sids, Some(&report))?;
        Ok(report)
    }
}

impl Drop for Trainers {
    fn drop(&mut self) {
        let (lock, cv) = &*self.wake;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

/// Lowers the calling thread's CPU priority (Linux: nice values and scheduling policies are per
/// thread): `nice`, and `SCHED_IDLE` when `idle`, so the trainer yields the CPU to serving
/// threads. Best effort: a failure is logged.
fn lower_priority(nice: i32, idle: bool) {
    #[cfg(target_os = "linux")]
    {
        if nice != 0 {
            // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes only the calling
            // thread's nice value; it reads no memory of ours.
            let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
            if rc != 0 {
                tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower the trainer's priority");
            }
        }
        if idle {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is the calling thread; `param` outlives the call.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if rc != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "could not move the trainer to SCHED_IDLE");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (nice, idle);
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The SID quality of a version's items and users.
/// Churn of the new items' codes against those the index serves now (version `prev`), over the
/// items in both (`model::sid::churn`).
fn churn_vs_index(
    index: &super::index::CollectionIndex,
    sids: &VersionSids,
    prev: u64,
    levels: usize,
) -> das::sid::Churn {
    let st = index.state.read();
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for (id, s) in &sids.items {
        match st.items.trie.get(id) {
            Some(o) if o.model_version == prev && o.codes.len() == levels => {
                old.extend_from_slice(&o.codes);
                new.extend_from_slice(&s.codes);
            }
            _ => {}
        }
    }
    das::sid::churn(&old, &new, levels)
}

/// One kept model version, as `ListModelVersions` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// When it was published.
    pub created_ms: i64,
    /// Whether it serves.
    pub active: bool,
    /// Its quality report.
    pub report: ModelReport,
}

impl super::Engine {
    /// Counts one request the server started (the trainer paces itself while requests come).
    pub fn note_request(&self) {
        self.trainers.ctx.activity.note();
    }

    /// Requests counted as serving load so far (what the trainer's pacing watches).
    pub fn requests_noted(&self) -> u64 {
        self.trainers.ctx.activity.count()
    }

    /// `TriggerTraining`.
    pub fn trigger_training(&self, collection: &str) -> Result<TrainingStatus> {
        let coll = self.store.collection(collection)?;
        self.trainers.trigger(&coll)
    }

    /// `GetTrainingStatus`.
    pub fn training_status(&self, collection: &str) -> Result<TrainingStatus> {
        let coll = self.store.collection(collection)?;
        Ok(self.trainers.status(&coll))
    }

    /// `WatchTraining`: the current status, then every change.
    pub fn watch_training(&self, collection: &str) -> Result<watch::Receiver<TrainingStatus>> {
        let coll = self.store.collection(collection)?;
        Ok(self.trainers.watch(&coll))
    }

    /// `ListModelVersions`: the kept versions, oldest first.
    pub async fn model_versions(&self, collection: &str) -> Result<Vec<VersionInfo>> {
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let active = e.store.active_version(&coll);
            e.store
                .versions(&coll)?
                .into_iter()
                .filter(|r| r.activated)
                .map(|r| {
                    Ok(VersionInfo {
                        version: r.version,
                        created_ms: r.created_ms,
                        active: r.version == active,
                        report: parse_report(&r.report, r.version)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// `GetModelReport` (`version` 0 = the active one).
    pub async fn model_report(&self, collection: &str, version: u64) -> Result<VersionInfo> {
        let coll = self.store.collection(collection)?;
        let versions = self.model_versions(collection).await?;
        let want = match version {
            0 => self.store.active_version(&coll),
            v => v,
        };
        if want == 0 {
            return Err(Error::FailedPrecondition(format!(
                "collection {collection:?} has no model version yet"
            )));
        }
        versions
            .into_iter()
            .find(|v| v.version == want)
            .ok_or_else(|| self.version_gone(&coll, "version", want))
    }

    /// `ActivateModelVersion`: rollback or pin to a kept version. FAILED_PRECONDITION while a
    /// training runs or when the version is no longer kept; NOT_FOUND when it never existed.
    pub async fn activate_version(&self, collection: &str, version: u64) -> Result<VersionInfo> {
        if version == 0 {
            return Err(Error::invalid(
                "version: must be a published version (>= 1)",
            ));
        }
        let coll = self.store.collection(collection)?;
        let info = self
            .blocking(move |e| e.activate_kept(&coll, version))
            .await?;
        tracing::info!(collection, version, "model version activated");
        Ok(info)
    }

    /// The work of `ActivateModelVersion`, all of it in the collection's exclusive trainer slot:
    /// whether `version` is still kept is decided there, because a training that ends after an
    /// earlier look prunes old versions (their checkpoints gone, a rollback would read missing
    /// files), and the reply is read there, before a training can switch to a newer version.
    fn activate_kept(&self, coll: &Arc<Collection>, version: u64) -> Result<VersionInfo> {
        let index = self.indexes.get(coll.entry.id)?;
        self.trainers.exclusive(coll, || {
            let kept = self.store.versions(coll)?;
            let Some(rec) = kept.iter().find(|r| r.version == version && r.activated) else {
                return Err(self.version_gone(coll, "version", version));
            };
            if self.store.active_version(coll) != version {
                let ctx = PublishCtx {
                    store: &self.store,
                    coll,
                    index: &index,
                    data_dir: self.store.dir(),
                    retrieval: &self.retrieval,
                    training: &self.training,
                };
                models::rollback(&ctx, version)?;
            }
            Ok(VersionInfo {
                version,
                created_ms: rec.created_ms,
                active: self.store.active_version(coll) == version,
                report: parse_report(&rec.report, version)?,
            })
        })
    }

    /// NOT_FOUND for a version never published, FAILED_PRECONDITION for one pruned; the message
    /// starts with the request `field`.
    pub(super) fn version_gone(&self, coll: &Collection, field: &str, version: u64) -> Error {
        let newest = self
            .store
            .versions(coll)
            .ok()
            .and_then(|v| v.iter().map(|r| r.version).max())
            .unwrap_or(0);
        match version <= newest {
            true => Error::FailedPrecondition(format!(
                "{field}: {version}: that model version of {:?} is no longer kept (training.keep_versions)",
                coll.entry.name
            )),
            false => Error::NotFound(format!(
                "{field}: {version} not found: {:?} never published that model version",
                coll.entry.name
            )),
        }
    }
}

pub(super) fn parse_report(json: &str, version: u64) -> Result<ModelReport> {
    serde_json::from_str(json)
        .map_err(|e| Error::DataLoss(format!("report of model version {version}: {e}")))
}

#[cfg(test)]
mod activate_tests;

#[cfg(test)]
mod pacer_tests;
