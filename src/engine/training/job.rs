//! One training job: from a snapshot of a collection and the model it serves now to a finished
//! [`Candidate`]: the new model, every snapshot entity's SID and the quality report. The job
//! reads the snapshot and the previous model only and changes no serving state; the scheduler
//! hands the candidate to `models::publish`, the one place where a version goes live.

use super::*;

/// A trained version, not yet published.
pub struct Candidate {
    /// The model, with its version number, serving info and popularity priors.
    pub model: LoadedModel,
    /// The SIDs of every entity of the snapshot it was trained on.
    pub sids: VersionSids,
    /// Its quality report (churn against the serving version is added by the scheduler).
    pub report: ModelReport,
}

/// What one job trains on.
pub(super) struct Job<'a> {
    pub(super) ctx: &'a TrainCtx,
    pub(super) pool: &'a rayon::ThreadPool,
    pub(super) coll: &'a Collection,
    pub(super) slot: &'a Slot,
    pub(super) version: u64,
    pub(super) snap: &'a Snapshot,
    /// The version serving now, if any: the warm start.
    pub(super) prev: Option<&'a LoadedModel>,
}

/// Trains DAS on the job's snapshot (warm-started from the serving version when it encodes
/// users the same way), matches its codes to that version's, and encodes the snapshot.
pub(super) fn train(job: &Job) -> Result<Candidate> {
    let Job {
        ctx,
        pool,
        coll,
        slot,
        version,
        snap,
        prev,
    } = *job;
    if snap.item_ids.len() < 2 {
        return Err(Error::FailedPrecondition("fewer than 2 items".into()));
    }
    let recency = ctx.retrieval.recency();
    let cfg = das_config(coll.config(), &ctx.training, recency, prev.is_some());
    let data = snap.training_data(false);
    let users_from_profiles = data.user_emb.is_none();
    let prep = Prepared::new(&data, recency).map_err(Error::from)?;
    slot.update(|s| s.phase = Phase::Training);
    let started = Instant::now();
    let positives = prep.positives.len().max(1);
    let progress = |p: &Progress| {
        let frac = p.step as f64 / p.total_steps.max(1) as f64;
        let elapsed = started.elapsed().as_secs_f64();
        slot.update(|s| {
            s.step = p.step as u64;
            s.epoch = (p.step * cfg.batch / positives) as u32;
            s.progress = frac;
            s.eta_seconds = match frac > 0.0 {
                true => elapsed / frac * (1.0 - frac),
                false => 0.0,
            };
            s.losses = vec![
                ("sem".into(), p.losses[0]),
                ("cf".into(), p.losses[1]),
                ("align".into(), p.losses[2]),
            ];
        });
    };
    let warm = prev.filter(|p| p.info.users_from_profiles == users_from_profiles);
    let pacer = Pacer::new(&ctx.activity, ctx.training.serving_duty);
    let pace = || pacer.pace();
    let ctl = TrainControl {
        cancel: Some(&slot.cancel),
        progress: Some(&progress),
        warm_start: warm.map(|p| &p.model),
        pace: Some(&pace),
    };
    let (mut model, stats) = pool
        .install(|| das::train_with(&prep, Method::Das, &cfg, &ctl))
        .map_err(Error::from)?;
    tracing::info!(
        collection = %coll.entry.name,
        seconds = started.elapsed().as_secs_f64(),
        paused_while_serving_s = pacer.slept().as_secs_f64(),
        "training done"
    );
    if let Some(p) = warm {
        if let Err(e) = das::align_codes(&mut model, &p.model) {
            tracing::warn!(collection = %coll.entry.name, error = %e, "codes of the new version not matched to the previous one");
        }
    }
    slot.update(|s| s.phase = Phase::Publishing);
    let mut loaded = LoadedModel {
        version,
        model,
        info: ServingInfo {
            users_from_profiles,
            mean_item_z_norm: 1.0,
            half_life_days: recency.half_life_days,
            half_life_events: recency.half_life_events,
        },
        // the prior the evaluation's retrieval (a) uses: the training positives
        popularity: snap
            .item_ids
            .iter()
            .zip(&prep.item_stats)
            .map(|(id, s)| (Arc::clone(id), s[0].clamp(0.0, 1.0)))
            .collect(),
        // the neighbours the evaluation's retrieval (a) uses: the training positives
        neighbours: VersionNeighbours {
            items: snap.item_ids.to_vec(),
            lists: Arc::new(pool.install(|| {
                ItemNeighbours::build(&prep.user_items, prep.n_items, &ctx.training.neighbours)
            })),
        },
    };
    let sids = pool.install(|| encode_snapshot(&mut loaded, snap, &prep))?;
    let mut report = quality_report(&loaded, &sids);
    report.train_seconds = stats.seconds;
    report.items = snap.item_ids.len() as u64;
    report.users = snap.user_ids.len() as u64;
    report.interactions = snap.interactions.len() as u64;
    report.steps = stats.steps as u64;
    report.warm_start = warm.is_some();
    Ok(Candidate {
        model: loaded,
        sids,
        report,
    })
}

fn quality_report(m: &LoadedModel, sids: &VersionSids) -> ModelReport {
    let levels = m.levels();
    let k = m.model.meta.codes;
    let side = |kind: EntityKind| {
        let mut ids: Vec<_> = sids.of(kind).keys().collect();
        ids.sort();
        let codes: Vec<u32> = ids
            .iter()
            .flat_map(|id| sids.of(kind)[*id].codes.iter().copied())
            .collect();
        das::sid::quality(&codes, levels, k, None)
    };
    let per_level = |q: &das::sid::QualityReport| {
        q.levels
            .iter()
            .map(|l| (l.codes as u32, l.used as u32, l.perplexity as f32))
            .collect()
    };
    let items = side(EntityKind::Items);
    let users = side(EntityKind::Users);
    ModelReport {
        levels: per_level(&items),
        user_levels: per_level(&users),
        collision_rate: items.collision_rate as f32,
        max_bucket: items.largest_bucket as u32,
        ..Default::default()
    }
}
