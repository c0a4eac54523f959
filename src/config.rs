//! Server configuration: one serde tree with documented defaults.
//!
//! Sources, later ones winning: built-in defaults -> TOML file (`--config`) -> environment
//! variables `SIDB__SECTION__KEY` (e.g. `SIDB__SERVER__LISTEN=0.0.0.0:7707`) -> command-line
//! flags. Unknown keys are errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::neighbours::NeighbourSettings;
use crate::model::recommend::RecommendSettings;

pub use crate::auth::AuthConfig;
use crate::storage::wal::WalOptions;
use crate::storage::StoreOptions;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network settings.
    pub server: ServerConfig,
    /// Disk settings.
    pub storage: StorageConfig,
    /// Request limits.
    pub limits: Limits,
    /// Logging.
    pub log: LogConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// Vector indexes, prefix queries and recommendations.
    pub retrieval: RetrievalConfig,
    /// Background DAS training and model versions.
    pub training: TrainingConfig,
}

/// `[server]`: the gRPC listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:7707` (loopback only; use `0.0.0.0:7707` to
    /// serve other hosts).
    pub listen: String,
    /// Largest request message in bytes; larger ones get RESOURCE_EXHAUSTED. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Seconds in-flight requests get to finish on shutdown. Default 30.
    pub shutdown_grace_secs: u64,
    /// TLS on the gRPC port.
    pub tls: TlsConfig,
    /// Address of the HTTP port: `/metrics` (Prometheus), `/healthz`, `/readyz`. Default
    /// `127.0.0.1:7708` (loopback only); empty turns it off, and with it the request metrics.
    pub http_listen: String,
}

/// `[server.tls]`: TLS on the gRPC port (rustls). Off while `cert_file` is empty; then the port
/// speaks plaintext HTTP/2, which is fine on loopback only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain (leaf first). Setting it turns TLS on and
    /// plaintext clients are refused. Default empty (off).
    pub cert_file: PathBuf,
    /// PEM file with the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file with the CA certificates that client certificates must chain to. Setting it makes
    /// a client certificate mandatory (mutual TLS). Default empty (no client certificates).
    pub client_ca_file: PathBuf,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// Checks that the files come in the pairs they need.
    pub fn validate(&self) -> Result<(), String> {
        let key = !self.key_file.as_os_str().is_empty();
        let client_ca = !self.client_ca_file.as_os_str().is_empty();
        if self.enabled() != key {
            return Err("server.tls.cert_file and server.tls.key_file: set both or neither".into());
        }
        if client_ca && !self.enabled() {
            return Err(
                "server.tls.client_ca_file: needs server.tls.cert_file and key_file (client \
                 certificates are checked only over TLS)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7707".into(),
            max_message_bytes: 64 << 20,
            shutdown_grace_secs: 30,
            tls: TlsConfig::default(),
            http_listen: "127.0.0.1:7708".into(),
        }
    }
}

/// `[storage]`: the data directory and durability tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory, created if missing. Default `./sidb-data`.
    pub data_dir: PathBuf,
    /// Longest time a BUFFERED write stays in memory before it is synced. Default 100 ms.
    pub flush_interval_ms: u64,
    /// WAL segment size before rotation. Default 64 MiB.
    pub wal_segment_bytes: u64,
    /// Writes are refused (RESOURCE_EXHAUSTED) while more than this many bytes wait for the disk.
    /// Default 512 MiB.
    pub max_pending_bytes: usize,
    /// Seconds between checkpoints (sled made durable, old WAL segments deleted). Default 60.
    pub checkpoint_interval_secs: u64,
    /// sled page cache in bytes. Default 512 MiB.
    pub cache_bytes: u64,
    /// Open a store whose sled state is behind what was acknowledged (see `storage::watermark`)
    /// instead of refusing with DATA_LOSS: the lost writes stay lost, and the watermark is reset
    /// to what is left. For one start after a damage has been looked at (`sidb serve
    /// --accept-data-loss`); never leave it on. Default false.
    pub accept_data_loss: bool,
    /// Writes are refused with RESOURCE_EXHAUSTED, before anything of them is logged, while the
    /// data directory's file system has less than this many bytes free beyond twice the write
    /// (0: no check). A reserve for sled's own writes and checkpoints. Default 128 MiB.
    pub min_free_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./sidb-data"),
            flush_interval_ms: 100,
            wal_segment_bytes: 64 << 20,
            max_pending_bytes: 512 << 20,
            checkpoint_interval_secs: 60,
            cache_bytes: 512 << 20,
            accept_data_loss: false,
            min_free_bytes: 128 << 20,
        }
    }
}

impl StorageConfig {
    /// The storage layer's options.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.cache_bytes,
            wal: WalOptions {
                flush_interval: Duration::from_millis(self.flush_interval_ms.max(1)),
                segment_bytes: self.wal_segment_bytes.max(1 << 16),
                max_pending_bytes: self.max_pending_bytes,
            },
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval_secs.max(1)),
            lock_wait: crate::storage::DEFAULT_LOCK_WAIT,
            accept_data_loss: self.accept_data_loss,
            min_free_bytes: self.min_free_bytes,
        }
    }
}

/// `[limits]`: per-request bounds (violations are INVALID_ARGUMENT).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Items or users per write request. Default 10,000.
    pub max_batch: usize,
    /// Interactions per write request. Default 100,000.
    pub max_interactions: usize,
    /// Ids per read or delete request. Default 10,000.
    pub max_ids: usize,
    /// Page size of paged reads. Default 10,000.
    pub max_page: usize,
    /// Largest `k` of a search. Default 1,000.
    pub max_k: usize,
    /// Largest reply in bytes. A request whose reply would be larger (many hits or entities with
    /// their vectors) gets RESOURCE_EXHAUSTED naming the fields to change (`k`, `ids`,
    /// `with_vectors`, `limit`), estimated before the work where the request tells enough.
    /// Default 32 MiB.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch: 10_000,
            max_interactions: 100_000,
            max_ids: 10_000,
            max_page: 10_000,
            max_k: 1_000,
            max_response_bytes: 32 << 20,
        }
    }
}

/// `[retrieval]`: the vector indexes and how queries use them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    /// HNSW links per node and layer (`M`). Default 16.
    pub hnsw_m: usize,
    /// HNSW candidate list while inserting. Default 200.
    pub hnsw_ef_construction: usize,
    /// HNSW search breadth when a request sends `ef` 0. Default 64. A collection's graph may
    /// raise it (never lower it) to reach `hnsw_target_recall`.
    pub hnsw_ef_search: usize,
    /// Recall@10 the default search breadth should reach: once a graph of at least 2,000 points
    /// has caught up, again once 100 searches have been sampled, and each time it has doubled,
    /// the indexer measures its recall against exact search on 100 queries (a sample of the
    /// collection's searches once there is one, else its own points) and raises that
    /// collection's default `ef` to the smallest of 16, 32, ..., 2,048 that reaches this. In [0, 1); 0 = off (always
    /// `hnsw_ef_search`). Default 0.95.
    pub hnsw_target_recall: f64,
    /// Share of dead graph nodes (replaced or deleted points) above which an index is rebuilt in
    /// the background. Default 0.25.
    pub rebuild_tombstone_ratio: f64,
    /// A SID-prefix filter whose bucket holds at most this many entities is answered by an exact
    /// scan of the bucket; larger buckets use the filtered HNSW walk. Default 4,096.
    pub exact_scan_max: usize,
    /// `Recommend`'s retrieval (`[retrieval.recommend]`, see
    /// [`crate::model::recommend`]): with a model, candidates from a beam over the user's route
    /// and the buckets of its newest items, ranked by the learned `z`s; without one, the items
    /// under the longest prefix of the user's SID holding at least `min_bucket` items, ranked
    /// by similarity.
    pub recommend: RecommendSettings,
    /// Newest interactions used for a user's profile vector (users without an own vector) and
    /// for `exclude_seen`. Default 1,000.
    pub profile_events: usize,
    /// Half-life in days of an interaction's weight in a user's profile vector, and in the
    /// user inputs of the semantic-ID trainer. Default 180.
    pub recency_half_life_days: f64,
    /// Half-life of that weight in newer positive interactions of the same user (0 = by age
    /// only); the trainer's user inputs use it too. Default 2: on MovieLens-1M the latest one or
    /// two items predict the next best (see docs/model.md).
    pub recency_half_life_events: f64,
    /// Threads that insert into the HNSW graphs in the background. Default 1, so on a small
    /// machine the other cores keep serving.
    pub index_threads: usize,
    /// Points the background indexer inserts per round. Default 1,024.
    pub index_batch: usize,
    /// Seconds after which a collection whose graphs took inserts since its last checkpoint is
    /// checkpointed (graphs and point ids written to `index/<collection id>/` while serving,
    /// by the indexer), so a restart after a crash loads them and inserts only what was written
    /// since. 0 = only at clean shutdown. Default 60.
    pub graph_checkpoint_secs: u64,
    /// Graph inserts after which a collection is checkpointed sooner than
    /// `graph_checkpoint_secs` (0 = by time only). Default 200,000.
    pub graph_checkpoint_inserts: u64,
}

impl RetrievalConfig {
    /// The recency weighting of user profiles.
    pub fn recency(&self) -> crate::profile::Recency {
        crate::profile::Recency {
            half_life_days: self.recency_half_life_days,
            half_life_events: self.recency_half_life_events,
        }
    }
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        RetrievalConfig {
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 64,
            hnsw_target_recall: 0.95,
            rebuild_tombstone_ratio: 0.25,
            exact_scan_max: 4096,
            recommend: RecommendSettings::default(),
            profile_events: 1000,
            recency_half_life_days: 180.0,
            recency_half_life_events: 2.0,
            index_threads: 1,
            index_batch: 1024,
            graph_checkpoint_secs: 60,
            graph_checkpoint_inserts: 200_000,
        }
    }
}

/// `[training]`: when the background trainer retrains a collection, and with what budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Train automatically when the triggers below fire. Default true (`TriggerTraining` works
    /// either way).
    pub auto: bool,
    /// Items a collection needs before its first training (and before `TriggerTraining` is
    /// accepted). Default 100.
    pub min_items: u64,
    /// Retrain when the items written since the active version's snapshot reach this share of
    /// the items it was trained on. Default 0.2.
    pub new_items_ratio: f64,
    /// Retrain when the interactions logged since the snapshot reach this share of those it was
    /// trained on. Default 0.5.
    pub new_interactions_ratio: f64,
    /// Least time between the end of one automatic training and the start of the next. Default
    /// 600 s.
    pub min_interval_secs: u64,
    /// Automatic trainings wait until the collection has taken no write for this long, so a
    /// bulk load is trained on whole, not on its first batches. Default 10 s.
    pub quiet_secs: u64,
    /// How often the scheduler looks at the triggers. Default 2,000 ms.
    pub check_interval_ms: u64,
    /// Threads of the training's compute pool. Default 1, so serving keeps the other cores.
    pub threads: usize,
    /// Nice value (0..=19) of the training threads, so that serving threads win the CPU when
    /// both want it. Default 10; 0 = same priority as serving.
    pub nice: i32,
    /// Run the training threads under Linux's `SCHED_IDLE` policy: they get a core only when
    /// no serving thread wants it (a retrain takes longer under load, serving does not wait).
    /// Default true.
    pub sched_idle: bool,
    /// While the server is answering requests, a training runs at most this share of the time:
    /// after a step during which requests arrived it sleeps `step time x (1 - duty) / duty`
    /// (at most 1 s), so serving gets idle cores, not only lower priority. 1 = no pacing; a
    /// retrain takes up to 1 / duty times longer under steady load. Default 0.5.
    pub serving_duty: f64,
    /// Weight of the warm-start stability anchor (see `model::DasConfig::stability_weight`):
    /// higher keeps more codes across retrains, 0 lets a retrain move freely. Default 10.
    pub stability_weight: f64,
    /// Model versions kept for rollback (the active one included). Default 3.
    pub keep_versions: usize,
    /// Training steps of a first (cold) training; 0 = the DAS default (1,500).
    pub steps: usize,
    /// Training steps of a retrain warm-started from the active version; 0 = half of `steps`.
    pub warm_steps: usize,
    /// Interactions per training step; 0 = the DAS default (1,024).
    pub batch: usize,
    /// Seed of the trainer. Default 42.
    pub seed: u64,
    /// The item co-occurrence neighbours trained with each version for `Recommend`'s ranking
    /// (`[training.neighbours]`, see [`crate::model::neighbours`]): each item keeps its `k`
    /// most co-occurring items (cosine of the user sets, `shrink` added to the denominator)
    /// from each user's newest `user_cap` positives; a source item's list is cut at
    /// `max_fanout`. Memory: 8 bytes per kept pair, at most `k` per item.
    pub neighbours: NeighbourSettings,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            auto: true,
            min_items: 100,
            new_items_ratio: 0.2,
            new_interactions_ratio: 0.5,
            min_interval_secs: 600,
            quiet_secs: 10,
            check_interval_ms: 2000,
            threads: 1,
            nice: 10,
            sched_idle: true,
            serving_duty: 0.5,
            stability_weight: 10.0,
            keep_versions: 3,
            steps: 0,
            warm_steps: 0,
            batch: 0,
            seed: 42,
            neighbours: NeighbourSettings::default(),
        }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human-readable, the default) or `json`.
    pub format: String,
    /// Filter in `RUST_LOG` syntax. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// A configuration that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML or a value in it is wrong.
    #[error("config: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod reference;

const ENV_PREFIX: &str = "SIDB__";

impl Config {
    /// Defaults, then the file (if any), then the `SIDB__SECTION__KEY` variables among `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let from_file: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
            merge(&mut tree, from_file);
        }
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix(ENV_PREFIX) {
                set_path(&mut tree, &key, rest, &value)?;
            }
        }
        let config: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format: expected \"text\" or \"json\", got {:?}",
                self.log.format
            )));
        }
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(format!(
                "server.max_message_bytes: at least 1024, got {}",
                self.server.max_message_bytes
            )));
        }
        if self.limits.max_response_bytes < 1024 {
            return Err(ConfigError::Invalid(format!(
                "limits.max_response_bytes: at least 1024, got {}",
                self.limits.max_response_bytes
            )));
        }
        self.auth.validate().map_err(ConfigError::Invalid)?;
        self.server.tls.validate().map_err(ConfigError::Invalid)?;
        let r = &self.retrieval;
        r.recommend
            .validate("retrieval.recommend.")
            .map_err(ConfigError::Invalid)?;
        let positive = [
            ("retrieval.hnsw_m", r.hnsw_m),
            ("retrieval.hnsw_ef_construction", r.hnsw_ef_construction),
            ("retrieval.hnsw_ef_search", r.hnsw_ef_search),
            ("retrieval.index_threads", r.index_threads),
            ("retrieval.index_batch", r.index_batch),
            ("retrieval.profile_events", r.profile_events),
            ("training.threads", self.training.threads),
            ("training.keep_versions", self.training.keep_versions),
            (
                "training.check_interval_ms",
                self.training.check_interval_ms as usize,
            ),
            ("training.min_items", self.training.min_items as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name}: must be at least 1")));
            }
        }
        if !(r.rebuild_tombstone_ratio > 0.0 && r.rebuild_tombstone_ratio < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "retrieval.rebuild_tombstone_ratio: expected a value in (0, 1), got {}",
                r.rebuild_tombstone_ratio
            )));
        }
        if !(r.hnsw_target_recall >= 0.0 && r.hnsw_target_recall < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "retrieval.hnsw_target_recall: expected a value in [0, 1), got {}",
                r.hnsw_target_recall
            )));
        }
        r.recency()
            .validate("retrieval.")
            .map_err(ConfigError::Invalid)?;
        let t = &self.training;
        t.neighbours
            .validate("training.neighbours.")
            .map_err(ConfigError::Invalid)?;
        if !(0..=19).contains(&t.nice) {
            return Err(ConfigError::Invalid(format!(
                "training.nice: expected 0..=19, got {}",
                t.nice
            )));
        }
        if !(t.serving_duty > 0.0 && t.serving_duty <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "training.serving_duty: expected a number in (0, 1], got {}",
                t.serving_duty
            )));
        }
        if !(t.stability_weight.is_finite() && t.stability_weight >= 0.0) {
            return Err(ConfigError::Invalid(format!(
                "training.stability_weight: expected a number >= 0, got {}",
                t.stability_weight
            )));
        }
        for (name, v) in [
            ("training.new_items_ratio", t.new_items_ratio),
            ("training.new_interactions_ratio", t.new_interactions_ratio),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: expected a positive number, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Overlays `over` onto `base`, table by table.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Sets `SECTION__KEY` (case-insensitive) to `value`, parsed as a TOML value when it is one
/// (numbers, booleans) and taken as a string otherwise.
fn set_path(tree: &mut toml::Value, var: &str, path: &str, value: &str) -> Result<(), ConfigError> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Invalid(format!(
            "{var}: malformed variable name"
        )));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("{var}: {part} is not a section")))?;
        if i + 1 == parts.len() {
            table.insert(part.clone(), parsed);
            return Ok(());
        }
        node = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_sources() {
        assert_eq!(Config::load(None, []).unwrap(), Config::default());
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sidb.toml");
        std::fs::write(
            &f,
            "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\nflush_interval_ms = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            env(&[
                ("SIDB__SERVER__LISTEN", "127.0.0.1:2"),
                ("SIDB__LOG__FORMAT", "json"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2");
        assert_eq!(c.storage.flush_interval_ms, 7);
        assert_eq!(c.log.format, "json");
        let c = Config::load(None, env(&[("SIDB__STORAGE__FLUSH_INTERVAL_MS", "9")])).unwrap();
        assert_eq!(c.storage.flush_interval_ms, 9);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let e = Config::load(None, env(&[("SIDB__SERVER__LISTN", "x")])).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e =
            Config::load(None, env(&[("SIDB__STORAGE__FLUSH_INTERVAL_MS", "soon")])).unwrap_err();
        assert!(e.to_string().contains("flush_interval_ms"), "{e}");
        let e = Config::load(None, env(&[("SIDB__LOG__FORMAT", "xml")])).unwrap_err();
        assert!(e.to_string().contains("log.format"), "{e}");
        for duty in ["0", "1.5", "-0.5"] {
            let e = Config::load(None, env(&[("SIDB__TRAINING__SERVING_DUTY", duty)])).unwrap_err();
            assert!(e.to_string().contains("training.serving_duty"), "{e}");
        }
        let c = Config::load(None, env(&[("SIDB__TRAINING__SERVING_DUTY", "1")])).expect("1 = off");
        assert_eq!(c.training.serving_duty, 1.0);
        for target in ["1", "1.5", "-0.1", "NaN"] {
            let e = Config::load(
                None,
                env(&[("SIDB__RETRIEVAL__HNSW_TARGET_RECALL", target)]),
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("retrieval.hnsw_target_recall"),
                "{e}"
            );
        }
        let c = Config::load(None, env(&[("SIDB__RETRIEVAL__HNSW_TARGET_RECALL", "0")]))
            .expect("0 = off");
        assert_eq!(c.retrieval.hnsw_target_recall, 0.0);
        let e = Config::load(None, env(&[("SIDB__LIMITS__MAX_RESPONSE_BYTES", "10")])).unwrap_err();
        assert!(e.to_string().contains("limits.max_response_bytes"), "{e}");
    }

    #[test]
    fn empty_api_keys_are_refused_at_load() {
        // Regression: `api_keys = [""]` loaded, and then `x-api-key:` with no value had full
        // access.
        let dir = tempfile::tempdir().unwrap();
        for (toml, field) in [
            ("[auth]\napi_keys = [\"\"]\n", "auth.api_keys[0]"),
            (
                "[auth]\napi_keys = [\"k\"]\nread_only_keys = [\"r\", \"\"]\n",
                "auth.read_only_keys[1]",
            ),
        ] {
            let f = dir.path().join("sidb.toml");
            std::fs::write(&f, toml).unwrap();
            let e = Config::load(Some(&f), []).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
        let f = dir.path().join("ok.toml");
        std::fs::write(&f, "[auth]\napi_keys = [\"k\"]\n").unwrap();
        assert_eq!(Config::load(Some(&f), []).unwrap().auth.api_keys, ["k"]);
    }
}
