//! Domain types shared by the storage, engine and service layers, with their invariants.
//!
//! These are what the core works with; the protobuf types never leave `service`.

use std::collections::BTreeMap;

/// Similarity metric of a collection. Scores are "higher = closer" for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// Cosine similarity (the default).
    #[default]
    Cosine,
    /// Inner product.
    Dot,
    /// Negated squared Euclidean distance.
    L2,
}

/// How durable a write must be before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledged once the write-ahead log holding it is fdatasync'ed (the default).
    #[default]
    Durable,
    /// Acknowledged from memory; on disk within the configured flush interval.
    Buffered,
}

/// Which kind of entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EntityKind {
    /// Items (the default).
    #[default]
    Items,
    /// Users.
    Users,
}

/// One embedding space of a collection's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modality {
    /// Unique name within the collection.
    pub name: String,
    /// Vector dimension, >= 1.
    pub dim: u32,
}

/// Default number of semantic-ID levels.
pub const DEFAULT_SID_LEVELS: u32 = 3;

/// The settings of a collection, fixed at creation. Invariants (checked by
/// `engine::validate::collection_config`): at least one modality, unique names, dims >= 1,
/// `sid_levels` >= 1 once defaults are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionConfig {
    /// Item embedding spaces, in the order the quantizer concatenates them.
    pub item_modalities: Vec<Modality>,
    /// Dimension of users' own vectors; 0 = users carry none.
    pub user_dim: u32,
    /// Search metric.
    pub metric: Metric,
    /// Levels of the semantic IDs.
    pub sid_levels: u32,
    /// Codes per level; 0 = chosen from the catalogue size at training time.
    pub sid_codebook_size: u32,
}

impl CollectionConfig {
    /// Position of a modality by name.
    pub fn modality_index(&self, name: &str) -> Option<usize> {
        self.item_modalities.iter().position(|m| m.name == name)
    }
}

/// A semantic ID: one code per level (coarse first), a dedup suffix and the model that made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SemanticId {
    /// Codes, coarse first.
    pub codes: Vec<u32>,
    /// Dedup suffix among entities with identical codes.
    pub suffix: u32,
    /// Model version that assigned it; 0 = written by the client.
    pub model_version: u64,
}

/// A stored item. `vectors[i]` belongs to `config.item_modalities[i]` and has its dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    /// Id, 1..=256 bytes.
    pub id: String,
    /// One vector per modality, in the collection's modality order.
    pub vectors: Vec<Vec<f32>>,
    /// Free attributes, sorted by key.
    pub attributes: BTreeMap<String, String>,
    /// Current semantic ID.
    pub sid: Option<SemanticId>,
}

/// A stored user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// Id, 1..=256 bytes.
    pub id: String,
    /// Own embedding, of the collection's `user_dim`.
    pub vector: Option<Vec<f32>>,
    /// Free attributes, sorted by key.
    pub attributes: BTreeMap<String, String>,
    /// Current semantic ID.
    pub sid: Option<SemanticId>,
}

/// A stored interaction.
#[derive(Debug, Clone, PartialEq)]
pub struct InteractionRecord {
    /// The acting user.
    pub user_id: String,
    /// The item acted on.
    pub item_id: String,
    /// Free event kind.
    pub kind: String,
    /// Finite weight.
    pub weight: f32,
    /// Event time, ms since the Unix epoch (the server's clock when the client sent 0).
    pub timestamp_ms: i64,
    /// Write sequence of the batch that stored it (0 until written).
    pub sequence: u64,
}

/// Entity counts and write position of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CollectionStats {
    /// Items stored.
    pub items: u64,
    /// Users stored.
    pub users: u64,
    /// Interactions stored.
    pub interactions: u64,
    /// Last applied write sequence.
    pub last_sequence: u64,
}

/// A collection as reported to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    /// Name.
    pub name: String,
    /// Settings.
    pub config: CollectionConfig,
    /// Counts and write position.
    pub stats: CollectionStats,
    /// Active model version (0 = none).
    pub active_model_version: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Vectors not yet in the HNSW graphs (searched exactly meanwhile).
    pub index_pending: u64,
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// Entities written (or deleted).
    pub written: u64,
    /// The collection's write sequence of this write.
    pub sequence: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
