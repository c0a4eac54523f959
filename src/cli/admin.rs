//! Client commands against a running server: `sidb import` (a dataset directory over gRPC) and
//! `sidb training ...` (trigger, follow, list, roll back).

use std::io::IsTerminal;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use sidb::model::data::load_dataset;
use sidb::proto as pb;

use super::target::{Conn, Target};

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    target: Target,
    /// Dataset directory in the layout of docs/dataset-format.md (items.tsv, interactions.tsv,
    /// item_emb.f32, item_emb.json).
    #[arg(long)]
    data: PathBuf,
    /// Collection to create and fill.
    #[arg(long)]
    collection: String,
    /// Ratings at or above this become interactions of weight 1; lower ones are skipped (0 = all).
    #[arg(long, default_value_t = 4.0)]
    min_rating: f32,
    /// Entities or interactions per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

#[derive(Subcommand)]
pub enum TrainingCommand {
    /// Start a training now.
    Trigger(CollArgs),
    /// Print the trainer's status.
    Status(CollArgs),
    /// Follow the trainer with a progress bar until the current training ends.
    Watch(CollArgs),
    /// List the kept model versions with their reports.
    Versions(CollArgs),
    /// Make a kept version active (rollback / pin).
    Activate(ActivateArgs),
}

#[derive(Args)]
pub struct CollArgs {
    #[command(flatten)]
    target: Target,
    /// Collection.
    #[arg(long)]
    collection: String,
}

#[derive(Args)]
pub struct ActivateArgs {
    #[command(flatten)]
    coll: CollArgs,
    /// Version to activate.
    #[arg(long)]
    version: u64,
}

/// A one-line progress bar on stderr.
struct Bar {
    what: &'static str,
    total: usize,
    started: Instant,
}

impl Bar {
    fn new(what: &'static str, total: usize) -> Bar {
        Bar {
            what,
            total,
            started: Instant::now(),
        }
    }

    /// Redraws the bar; only on a terminal (a log gets the final line alone).
    fn show(&self, done: usize, extra: &str) {
        if std::io::stderr().is_terminal() {
            let frac = done as f64 / self.total.max(1) as f64;
            draw(self.what, frac, &format!("{done}/{} {extra}", self.total));
        }
    }

    fn finish(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        draw(self.what, 1.0, &format!("{} in {secs:.1} s", self.total));
        eprintln!();
    }
}

fn draw(what: &str, frac: f64, text: &str) {
    const W: usize = 30;
    let full = ((frac.clamp(0.0, 1.0)) * W as f64) as usize;
    let bar = format!(
        "{what:<12} [{}{}] {:>5.1}% {text}",
        "#".repeat(full),
        " ".repeat(W - full),
        frac * 100.0
    );
    match std::io::stderr().is_terminal() {
        true => eprint!("\r{bar}\x1b[K"),
        false => eprint!("{bar}"),
    }
    let _ = std::io::stderr().flush();
}

/// `sidb import`.
pub async fn import(a: ImportArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let ds = load_dataset(&a.data).with_context(|| format!("loading {}", a.data.display()))?;
    let channel = a.target.connect().await?;
    let mut colls = pb::collections_client::CollectionsClient::new(channel.clone());
    colls
        .create_collection(pb::CreateCollectionRequest {
            name: a.collection.clone(),
            config: Some(pb::CollectionConfig {
                item_modalities: vec![pb::Modality {
                    name: "text".into(),
                    dim: ds.item_dim as u32,
                }],
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("creating collection {}", a.collection))?;
    let batch = a.batch.max(1);
    let mut items = pb::items_client::ItemsClient::new(channel.clone());
    let n_items = ds.item_keys.len();
    let bar = Bar::new("items", n_items);
    for start in (0..n_items).step_by(batch) {
        let end = (start + batch).min(n_items);
        let chunk = (start..end)
            .map(|i| pb::Item {
                id: ds.item_keys[i].clone(),
                vectors: [(
                    "text".to_string(),
                    pb::Vector {
                        values: ds.item_emb[i * ds.item_dim..(i + 1) * ds.item_dim].to_vec(),
                    },
                )]
                .into(),
                ..Default::default()
            })
            .collect();
        items
            .upsert_items(pb::UpsertItemsRequest {
                collection: a.collection.clone(),
                items: chunk,
                ..Default::default()
            })
            .await
            .context("UpsertItems")?;
        bar.show(end, "");
    }
    bar.finish();
    let user_id = |u: u32| format!("u{u}");
    let mut users = pb::users_client::UsersClient::new(channel.clone());
    let bar = Bar::new("users", ds.n_users);
    for start in (0..ds.n_users).step_by(batch) {
        let end = (start + batch).min(ds.n_users);
        let chunk = (start..end)
            .map(|u| pb::User {
                id: user_id(u as u32),
                ..Default::default()
            })
            .collect();
        users
            .upsert_users(pb::UpsertUsersRequest {
                collection: a.collection.clone(),
                users: chunk,
                ..Default::default()
            })
            .await
            .context("UpsertUsers")?;
        bar.show(end, "");
    }
    bar.finish();
    let kept: Vec<_> = ds
        .ratings
        .iter()
        .filter(|r| a.min_rating <= 0.0 || r.rating >= a.min_rating)
        .collect();
    let mut inter = pb::interactions_client::InteractionsClient::new(channel.clone());
    let bar = Bar::new("interactions", kept.len());
    for (n, chunk) in kept.chunks(batch).enumerate() {
        let xs = chunk
            .iter()
            .map(|r| pb::Interaction {
                user_id: user_id(r.user),
                item_id: ds.item_keys[r.item as usize].clone(),
                kind: "rating".into(),
                weight: 1.0,
                timestamp_ms: r.ts_ms,
                ..Default::default()
            })
            .collect();
        inter
            .write_interactions(pb::WriteInteractionsRequest {
                collection: a.collection.clone(),
                interactions: xs,
                ..Default::default()
            })
            .await
            .context("WriteInteractions")?;
        bar.show(((n + 1) * batch).min(kept.len()), "");
    }
    bar.finish();
    println!(
        "imported {} items ({}-d), {} users, {} interactions (of {} ratings, min rating {}) into {:?} in {:.1} s",
        n_items,
        ds.item_dim,
        ds.n_users,
        kept.len(),
        ds.ratings.len(),
        a.min_rating,
        a.collection,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_status(s: &pb::TrainingStatus) {
    let mut losses: Vec<_> = s.losses.iter().collect();
    losses.sort_by(|a, b| a.0.cmp(b.0));
    let losses: Vec<String> = losses.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
    println!(
        "{}: phase {} step {} epoch {} progress {:.1}% eta {:.0}s active v{} training v{} losses [{}]{}",
        s.collection,
        s.phase,
        s.step,
        s.epoch,
        s.progress * 100.0,
        s.eta_seconds,
        s.active_model_version,
        s.training_model_version,
        losses.join(" "),
        match s.error.is_empty() {
            true => String::new(),
            false => format!(" error: {}", s.error),
        }
    );
}

fn print_version(v: &pb::ModelVersion) {
    let r = v.report.clone().unwrap_or_default();
    let levels: Vec<String> = r
        .levels
        .iter()
        .map(|l| {
            format!(
                "{}/{} (ppl {:.0})",
                l.codes_used, l.codebook_size, l.perplexity
            )
        })
        .collect();
    println!(
        "v{}{} created_ms {} items {} users {} interactions {} levels [{}] collisions {:.2}% max bucket {} churn per level {:?} train {:.1}s steps {}{}",
        v.version,
        if v.active { " (active)" } else { "" },
        v.created_ms,
        r.items,
        r.users,
        r.interactions,
        levels.join(", "),
        r.collision_rate * 100.0,
        r.max_bucket,
        r.churn_per_level
            .iter()
            .map(|c| format!("{:.2}%", c * 100.0))
            .collect::<Vec<_>>(),
        r.train_seconds,
        r.steps,
        if r.warm_start { " warm" } else { "" }
    );
}

/// `sidb training ...`.
pub async fn training(cmd: TrainingCommand) -> anyhow::Result<()> {
    let target = match &cmd {
        TrainingCommand::Trigger(c)
        | TrainingCommand::Status(c)
        | TrainingCommand::Watch(c)
        | TrainingCommand::Versions(c) => &c.target,
        TrainingCommand::Activate(a) => &a.coll.target,
    };
    let mut client = pb::training_client::TrainingClient::new(target.connect().await?);
    match cmd {
        TrainingCommand::Trigger(c) => {
            let s = client
                .trigger_training(pb::TriggerTrainingRequest {
                    collection: c.collection,
                })
                .await?
                .into_inner();
            print_status(&s);
        }
        TrainingCommand::Status(c) => {
            let s = client
                .get_training_status(pb::GetTrainingStatusRequest {
                    collection: c.collection,
                })
                .await?
                .into_inner();
            print_status(&s);
        }
        TrainingCommand::Watch(c) => watch(&mut client, c.collection).await?,
        TrainingCommand::Versions(c) => {
            let r = client
                .list_model_versions(pb::ListModelVersionsRequest {
                    collection: c.collection,
                })
                .await?
                .into_inner();
            r.versions.iter().for_each(print_version);
        }
        TrainingCommand::Activate(a) => {
            let v = client
                .activate_model_version(pb::ActivateModelVersionRequest {
                    collection: a.coll.collection,
                    version: a.version,
                })
                .await?
                .into_inner();
            print_version(&v);
        }
    }
    Ok(())
}

/// Follows `WatchTraining` with a bar until a training that was seen running ends.
async fn watch(
    client: &mut pb::training_client::TrainingClient<Conn>,
    collection: String,
) -> anyhow::Result<()> {
    let mut stream = client
        .watch_training(pb::WatchTrainingRequest { collection })
        .await?
        .into_inner();
    let mut seen_running = false;
    // Without a terminal (a log), one line per phase and per tenth of the run.
    let terminal = std::io::stderr().is_terminal();
    let mut logged: Option<(String, u32)> = None;
    while let Some(s) = stream.message().await? {
        let running = !matches!(s.phase.as_str(), "IDLE" | "FAILED");
        if running {
            seen_running = true;
            let mark = (s.phase.clone(), (s.progress * 10.0) as u32);
            if !terminal && logged.as_ref() == Some(&mark) {
                continue;
            }
            let losses: Vec<String> = {
                let mut l: Vec<_> = s.losses.iter().collect();
                l.sort_by(|a, b| a.0.cmp(b.0));
                l.iter().map(|(k, v)| format!("{k} {v:.3}")).collect()
            };
            draw(
                &format!("v{} {}", s.training_model_version, s.phase.to_lowercase()),
                s.progress,
                &format!(
                    "step {} epoch {} eta {:.0}s {}",
                    s.step,
                    s.epoch,
                    s.eta_seconds,
                    losses.join(" ")
                ),
            );
            if !terminal {
                eprintln!();
                logged = Some(mark);
            }
        } else if seen_running {
            if terminal {
                eprintln!();
            }
            print_status(&s);
            if s.phase == "FAILED" {
                anyhow::bail!("training failed: {}", s.error);
            }
            return Ok(());
        } else {
            print_status(&s);
            eprintln!("(waiting for a training to start; Ctrl-C to stop)");
        }
    }
    Ok(())
}
