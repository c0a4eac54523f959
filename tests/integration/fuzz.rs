//! A bounded gRPC fuzz client against a spawned `sidb serve`: for every method of
//! `proto/sidb/v1/*.proto`, seeded mutations of a valid request, of its field values (huge,
//! negative, NaN and infinite numbers; empty, long and unicode strings; repeated fields up to and
//! past the limits; random SID prefixes and page tokens) and of the bytes of its encoding, all
//! sent with a bytes codec. Every call must answer within [`TIMEOUT`], never with INTERNAL or
//! UNKNOWN, with a status message under 4 KiB; the server must stay up (health answers, its log
//! shows no panic).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sidb::proto as pb;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::*;

/// Seed of the run; `SIDB_FUZZ_SEED` overrides it (for longer runs by hand).
const SEED: u64 = 0x51DB;
/// Requests per method; `SIDB_FUZZ_ROUNDS` overrides it.
const ROUNDS: usize = 120;
/// Concurrent clients (each with its own seeded generator).
const WORKERS: usize = 3;
/// Longest any call may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest status message allowed.
const MAX_MESSAGE: usize = 4096;

const MAX_BATCH: usize = 256;
const MAX_IDS: usize = 64;
const MAX_INTERACTIONS: usize = 500;
const MAX_PAGE: usize = 256;
const MAX_K: usize = 64;
const DIM: usize = 16;
const IMG: usize = 4;

/// The fuzzed server's settings: small limits, so that "repeated fields up to the limits" stay
/// CI-sized; quick training, never automatic (the fuzz triggers its own).
const ENV: &[(&str, &str)] = &[
    ("SIDB__LIMITS__MAX_BATCH", "256"),
    ("SIDB__LIMITS__MAX_IDS", "64"),
    ("SIDB__LIMITS__MAX_INTERACTIONS", "500"),
    ("SIDB__LIMITS__MAX_PAGE", "256"),
    ("SIDB__LIMITS__MAX_K", "64"),
    ("SIDB__SERVER__MAX_MESSAGE_BYTES", "1048576"),
    ("SIDB__STORAGE__CACHE_BYTES", "16777216"),
    ("SIDB__STORAGE__MIN_FREE_BYTES", "0"),
    ("SIDB__TRAINING__AUTO", "false"),
    ("SIDB__TRAINING__MIN_ITEMS", "60"),
    ("SIDB__TRAINING__CHECK_INTERVAL_MS", "100"),
    ("SIDB__TRAINING__MIN_INTERVAL_SECS", "0"),
    ("SIDB__TRAINING__QUIET_SECS", "0"),
    ("SIDB__TRAINING__STEPS", "120"),
    ("SIDB__TRAINING__WARM_STEPS", "40"),
    ("SIDB__TRAINING__BATCH", "128"),
    ("SIDB__TRAINING__KEEP_VERSIONS", "2"),
    ("SIDB__RETRIEVAL__RECOMMEND__MIN_BUCKET", "3"),
];

/// A collection the valid requests aim at.
#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    /// Has the second modality "img".
    img: bool,
    user_dim: usize,
}

/// Client-written SIDs (3 levels, codebook 16), two modalities, users with vectors.
const F: Target = Target {
    name: "f",
    img: true,
    user_dim: DIM,
};
/// The planted catalogue of the training tests, with a trained model (automatic codebook).
const P: Target = Target {
    name: "p",
    img: false,
    user_dim: 0,
};

/// Seeded random values, valid and hostile.
struct Gen {
    rng: ChaCha8Rng,
    /// Whether this request's fields are mutated.
    mutating: bool,
    /// Real page tokens, to replay and to mutate.
    tokens: Vec<String>,
}

impl Gen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// Whether to mutate the next field.
    fn mutate(&mut self) -> bool {
        self.mutating && self.chance(0.2)
    }

    fn target(&mut self) -> Target {
        if self.chance(0.6) {
            F
        } else {
            P
        }
    }

    fn string(&mut self) -> String {
        let r = &mut self.rng;
        match r.random_range(0..14) {
            0 => String::new(),
            1 => "f".into(),
            2 => "p".into(),
            3 => format!("x{}", r.random_range(0..100)),
            4 => format!("i{:04}", r.random_range(0..260)),
            5 => format!("u{:03}", r.random_range(0..45)),
            6 => "é日本🎉\u{202e}".repeat(r.random_range(1..60)),
            7 => "\u{0}".into(),
            8 => "n".repeat(r.random_range(60..400)),
            9 => "L".repeat(20_000),
            10 => " \t\n".into(),
            11 => (0..r.random_range(1..40))
                .map(|_| r.random_range(0x20u8..0x7f) as char)
                .collect(),
            12 => (0..r.random_range(1..16))
                .filter_map(|_| char::from_u32(r.random_range(0..0x11_0000)))
                .collect(),
            _ => "text".into(),
        }
    }

    fn collection(&mut self, valid: &str) -> String {
        if !self.mutate() {
            return valid.into();
        }
        match self.rng.random_range(0..3) {
            0 => ["f", "p", "scratch0", "scratch1"][self.rng.random_range(0..4)].into(),
            _ => self.string(),
        }
    }

    fn u32(&mut self) -> u32 {
        let r = &mut self.rng;
        match r.random_range(0..9) {
            0 => 0,
            1 => 1,
            2 => r.random_range(2..20),
            3 => [15, 16, 17, 63, 64, 65, 255, 256, 257][r.random_range(0..9)],
            4 => [1000, 1001, 10_000, 10_001, 65_536, 65_537][r.random_range(0..6)],
            5 => u32::MAX,
            6 => u32::MAX - 1,
            7 => 1 << 31,
            _ => r.random(),
        }
    }

    fn u64(&mut self) -> u64 {
        match self.rng.random_range(0..6) {
            0 => 0,
            1 => 1,
            2 => self.rng.random_range(2..5),
            3 => u64::MAX,
            4 => 1 << 63,
            _ => self.rng.random(),
        }
    }

    fn i64(&mut self) -> i64 {
        match self.rng.random_range(0..6) {
            0 => 0,
            1 => -1,
            2 => i64::MIN,
            3 => i64::MAX,
            4 => self.rng.random_range(0..2_000_000_000_000),
            _ => self.rng.random(),
        }
    }

    /// An enum value: known ones and others.
    fn enum_value(&mut self) -> i32 {
        match self.rng.random_range(0..6) {
            0..=2 => self.rng.random_range(0..4),
            3 => -1,
            4 => i32::MAX,
            _ => self.rng.random(),
        }
    }

    fn f32(&mut self) -> f32 {
        let r = &mut self.rng;
        match r.random_range(0..14) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 0.0,
            4 => -0.0,
            5 => 1e-40,
            6 => f32::MIN_POSITIVE,
            7 => f32::MAX,
            8 => -f32::MAX,
            9 => 3e38,
            10 => 1e6,
            11 => -1e6 - 1.0,
            12 => r.random_range(-1.0..1.0) * 1e20,
            _ => r.random_range(-1.0..1.0),
        }
    }

    fn vector(&mut self, dim: usize) -> pb::Vector {
        let len = match self.mutate() {
            false => dim,
            true => match self.rng.random_range(0..5) {
                0 => 0,
                1 => dim + 1,
                2 => dim.saturating_sub(1),
                3 => 1000,
                _ => dim,
            },
        };
        let special = self.mutate();
        let values = (0..len)
            .map(|_| match special && self.chance(0.3) {
                true => self.f32(),
                false => self.rng.random_range(-1.0..1.0),
            })
            .collect();
        pb::Vector { values }
    }

    fn codes(&mut self) -> Vec<u32> {
        let n = self.rng.random_range(0..=5);
        (0..n)
            .map(|_| match self.chance(0.7) {
                true => self.rng.random_range(0..18),
                false => self.u32(),
            })
            .collect()
    }

    fn token(&mut self) -> String {
        let hex = |r: &mut ChaCha8Rng, n: usize| -> String {
            (0..n)
                .map(|_| b"0123456789abcdef"[r.random_range(0..16)] as char)
                .collect()
        };
        match self.rng.random_range(0..7) {
            0 => String::new(),
            1 | 2 if !self.tokens.is_empty() => {
                let t = self.tokens[self.rng.random_range(0..self.tokens.len())].clone();
                match self.chance(0.5) {
                    true => t,
                    false => mutate_bytes(&mut self.rng, t.as_bytes())
                        .into_iter()
                        .map(char::from)
                        .collect(),
                }
            }
            3 => format!("h1.{}", hex(&mut self.rng, 40)),
            4 => {
                let n = self.rng.random_range(0..200);
                hex(&mut self.rng, n)
            }
            _ => self.string(),
        }
    }

    fn id(&mut self, valid: impl FnOnce(&mut ChaCha8Rng) -> String) -> String {
        match self.mutate() {
            true => self.string(),
            false => valid(&mut self.rng),
        }
    }

    fn ids(&mut self, valid: fn(&mut ChaCha8Rng) -> String) -> Vec<String> {
        let n = match self.mutate() {
            false => self.rng.random_range(1..4),
            true => [0, 1, MAX_IDS, MAX_IDS + 1][self.rng.random_range(0..4)],
        };
        (0..n).map(|_| self.id(valid)).collect()
    }

    /// How many entries a repeated field gets: a few, or (mutating) none, the limit, one more.
    fn count(&mut self, max: usize) -> usize {
        match self.mutate() {
            false => self.rng.random_range(1..4),
            true => [0, 1, max, max + 1][self.rng.random_range(0..4)],
        }
    }
}

fn item_id(r: &mut ChaCha8Rng) -> String {
    format!("i{:04}", r.random_range(0..260))
}

fn user_id(r: &mut ChaCha8Rng) -> String {
    format!("u{:03}", r.random_range(0..45))
}

fn new_id(r: &mut ChaCha8Rng) -> String {
    format!("x{}", r.random_range(0..100))
}

/// Byte-level mutations of an encoded message.
fn mutate_bytes(r: &mut ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..r.random_range(1..5) {
        let len = v.len();
        match r.random_range(0..9) {
            0 if len > 0 => {
                let i = r.random_range(0..len);
                v[i] ^= 1 << r.random_range(0..8);
            }
            1 if len > 0 => {
                let i = r.random_range(0..len);
                v[i] = [0x00, 0x7f, 0x80, 0xff, r.random()][r.random_range(0..5)];
            }
            2 => v.truncate(r.random_range(0..=len)),
            3 => {
                let at = r.random_range(0..=len);
                let extra: Vec<u8> = (0..r.random_range(1..9)).map(|_| r.random()).collect();
                v.splice(at..at, extra);
            }
            4 if len > 0 => {
                let a = r.random_range(0..len);
                let b = r.random_range(a..=len.min(a + 16));
                v.drain(a..b);
            }
            5 if len > 0 => {
                // a slice repeated: duplicated fields, duplicated entries
                let a = r.random_range(0..len);
                let b = r.random_range(a..=len);
                let copy = v[a..b].to_vec();
                v.extend(copy);
            }
            6 => {
                // an unknown or known field with a random wire type and payload
                let field: u32 = r.random_range(1..40);
                let wire: u32 = r.random_range(0..8);
                push_varint(&mut v, u64::from((field << 3) | wire));
                let payload: Vec<u8> = (0..r.random_range(0..12)).map(|_| r.random()).collect();
                v.extend(payload);
            }
            7 => {
                // a length-delimited field claiming a huge length
                v.push((r.random_range(1u8..12) << 3) | 2);
                push_varint(
                    &mut v,
                    [u64::MAX, 1 << 31, 1 << 20, 1000][r.random_range(0..4)],
                );
            }
            _ if len > 0 => {
                // a varint that never ends
                let at = r.random_range(0..len);
                v.splice(at..at, std::iter::repeat_n(0xff, r.random_range(1..12)));
            }
            _ => {}
        }
    }
    v
}

fn push_varint(v: &mut Vec<u8>, mut x: u64) {
    loop {
        let b = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            v.push(b);
            return;
        }
        v.push(b | 0x80);
    }
}

// ---- valid requests, with their fields mutated when `g.mutating` ----

fn durability(g: &mut Gen) -> i32 {
    match g.mutate() {
        true => g.enum_value(),
        false => g.rng.random_range(0..3),
    }
}

fn item(g: &mut Gen, t: Target) -> pb::Item {
    let mut vectors: std::collections::HashMap<String, pb::Vector> =
        [("text".to_string(), g.vector(DIM))].into();
    if t.img {
        vectors.insert("img".into(), g.vector(IMG));
    }
    if g.mutate() {
        match g.rng.random_range(0..3) {
            0 => {
                vectors.remove("text");
            }
            1 => {
                let name = g.string();
                let v = g.vector(DIM);
                vectors.insert(name, v);
            }
            _ => vectors.clear(),
        }
    }
    let mut attributes: std::collections::HashMap<String, String> =
        [("k".to_string(), "v".to_string())].into();
    if g.mutate() {
        for _ in 0..[1, 65][g.rng.random_range(0..2)] {
            let (k, v) = (g.string(), g.string());
            attributes.insert(k, v);
        }
    }
    let sid = match (t.name == "f", g.mutate()) {
        (_, true) => Some(pb::SemanticId {
            codes: g.codes(),
            suffix: g.u32(),
            model_version: g.u64(),
        }),
        (true, false) => Some(pb::SemanticId {
            codes: (0..3).map(|_| g.rng.random_range(0..16)).collect(),
            ..Default::default()
        }),
        (false, false) => None,
    };
    pb::Item {
        id: g.id(new_id),
        vectors,
        attributes,
        sid,
    }
}

fn user(g: &mut Gen, t: Target) -> pb::User {
    let vector = match (t.user_dim, g.mutate()) {
        (0, false) => None,
        (d, false) => Some(g.vector(d)),
        (d, true) => Some(g.vector(d.max(DIM))),
    };
    let sid = match g.mutate() {
        true => Some(pb::SemanticId {
            codes: g.codes(),
            suffix: g.u32(),
            model_version: g.u64(),
        }),
        false => None,
    };
    let mut attributes = std::collections::HashMap::new();
    if g.mutate() {
        let (k, v) = (g.string(), g.string());
        attributes.insert(k, v);
    }
    pb::User {
        id: g.id(new_id),
        vector,
        attributes,
        sid,
    }
}

fn interaction(g: &mut Gen) -> pb::Interaction {
    let mut x = pb::Interaction {
        user_id: g.id(user_id),
        item_id: g.id(item_id),
        kind: "click".into(),
        weight: 1.0,
        timestamp_ms: 1_000 + g.rng.random_range(0..10_000),
        sequence: 0,
    };
    if g.mutate() {
        x.kind = g.string();
    }
    if g.mutate() {
        x.weight = g.f32();
    }
    if g.mutate() {
        x.timestamp_ms = g.i64();
    }
    if g.mutate() {
        x.sequence = g.u64();
    }
    x
}

fn create_collection(g: &mut Gen) -> Vec<u8> {
    let mut config = pb::CollectionConfig {
        item_modalities: vec![pb::Modality {
            name: "text".into(),
            dim: DIM as u32,
        }],
        ..Default::default()
    };
    if g.mutate() {
        let n = [0, 1, 2, 16, 17][g.rng.random_range(0..5)];
        config.item_modalities = (0..n)
            .map(|i| pb::Modality {
                name: match g.chance(0.5) {
                    true => format!("m{i}"),
                    false => g.string(),
                },
                dim: match g.chance(0.5) {
                    true => g.rng.random_range(1..64),
                    false => g.u32(),
                },
            })
            .collect();
    }
    if g.mutate() {
        config.user_dim = g.u32();
    }
    if g.mutate() {
        config.metric = g.enum_value();
    }
    if g.mutate() {
        config.sid_levels = g.u32();
    }
    if g.mutate() {
        config.sid_codebook_size = g.u32();
    }
    let mut r = pb::CreateCollectionRequest {
        name: format!("scratch{}", g.rng.random_range(0..2)),
        config: Some(config),
    };
    if g.mutate() {
        r.name = g.string();
    }
    if g.mutate() {
        r.config = None;
    }
    r.encode_to_vec()
}

fn get_collection(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    pb::GetCollectionRequest {
        name: g.collection(t.name),
    }
    .encode_to_vec()
}

fn list_collections(_: &mut Gen) -> Vec<u8> {
    pb::ListCollectionsRequest {}.encode_to_vec()
}

fn delete_collection(g: &mut Gen) -> Vec<u8> {
    let mut name = format!("scratch{}", g.rng.random_range(0..2));
    if g.mutate() {
        name = g.string();
    }
    pb::DeleteCollectionRequest { name }.encode_to_vec()
}

fn upsert_items_request(g: &mut Gen) -> pb::UpsertItemsRequest {
    let t = g.target();
    let n = g.count(MAX_BATCH);
    pb::UpsertItemsRequest {
        collection: g.collection(t.name),
        items: (0..n).map(|_| item(g, t)).collect(),
        durability: durability(g),
    }
}

fn upsert_items(g: &mut Gen) -> Vec<u8> {
    upsert_items_request(g).encode_to_vec()
}

fn get_items(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    pb::GetItemsRequest {
        collection: g.collection(t.name),
        ids: g.ids(item_id),
        with_vectors: g.chance(0.5),
    }
    .encode_to_vec()
}

fn delete_items(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    pb::DeleteItemsRequest {
        collection: g.collection(t.name),
        ids: g.ids(new_id),
        durability: durability(g),
    }
    .encode_to_vec()
}

fn upsert_users(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    let n = g.count(MAX_BATCH);
    pb::UpsertUsersRequest {
        collection: g.collection(t.name),
        users: (0..n).map(|_| user(g, t)).collect(),
        durability: durability(g),
    }
    .encode_to_vec()
}

fn get_users(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    pb::GetUsersRequest {
        collection: g.collection(t.name),
        ids: g.ids(user_id),
        with_vectors: g.chance(0.5),
    }
    .encode_to_vec()
}

fn delete_users(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    pb::DeleteUsersRequest {
        collection: g.collection(t.name),
        ids: g.ids(new_id),
        durability: durability(g),
    }
    .encode_to_vec()
}

fn write_interactions_request(g: &mut Gen) -> pb::WriteInteractionsRequest {
    let t = g.target();
    let n = g.count(MAX_INTERACTIONS);
    pb::WriteInteractionsRequest {
        collection: g.collection(t.name),
        interactions: (0..n).map(|_| interaction(g)).collect(),
        durability: durability(g),
    }
}

fn write_interactions(g: &mut Gen) -> Vec<u8> {
    write_interactions_request(g).encode_to_vec()
}

fn get_user_history(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    let mut r = pb::GetUserHistoryRequest {
        collection: g.collection(t.name),
        user_id: g.id(user_id),
        limit: g.rng.random_range(0..20),
        page_token: String::new(),
    };
    if g.mutate() {
        r.limit = [MAX_PAGE as u32, MAX_PAGE as u32 + 1, g.u32()][g.rng.random_range(0..3)];
    }
    if g.chance(0.5) {
        r.page_token = g.token();
    }
    r.encode_to_vec()
}

fn search(g: &mut Gen) -> Vec<u8> {
    use pb::search_request::Query;
    let t = g.target();
    let entity = match (t.user_dim > 0, g.mutate()) {
        (_, true) => g.enum_value(),
        (true, false) => g.rng.random_range(0..3),
        (false, false) => 1,
    };
    let query = match g.rng.random_range(0..4) {
        0 => Some(Query::Vector(g.vector(DIM))),
        1 => Some(Query::ItemId(g.id(item_id))),
        2 => Some(Query::UserId(g.id(user_id))),
        _ => g.mutate().then(|| Query::Vector(g.vector(IMG))),
    };
    let mut r = pb::SearchRequest {
        collection: g.collection(t.name),
        query,
        modality: String::new(),
        k: g.rng.random_range(1..=10),
        ef: [0, 16, 64][g.rng.random_range(0..3)],
        sid_prefix: Vec::new(),
        exclude_ids: Vec::new(),
        with_vectors: g.chance(0.3),
        entity,
    };
    if g.mutate() {
        r.modality = match g.chance(0.5) {
            true => ["text", "img"][g.rng.random_range(0..2)].into(),
            false => g.string(),
        };
    }
    if g.mutate() {
        r.k = [0, MAX_K as u32, MAX_K as u32 + 1, g.u32()][g.rng.random_range(0..4)];
    }
    if g.mutate() {
        r.ef = g.u32();
    }
    if g.chance(0.3) {
        r.sid_prefix = g.codes();
    }
    if g.mutate() {
        r.exclude_ids = g.ids(item_id);
    }
    r.encode_to_vec()
}

fn prefix_scan(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    let mut r = pb::PrefixScanRequest {
        collection: g.collection(t.name),
        entity: g.rng.random_range(0..3),
        prefix: vec![g.rng.random_range(0..16)],
        limit: g.rng.random_range(0..30),
        page_token: String::new(),
    };
    if g.mutate() {
        r.entity = g.enum_value();
    }
    if g.mutate() {
        r.prefix = g.codes();
    }
    if g.mutate() {
        r.limit = [MAX_PAGE as u32, MAX_PAGE as u32 + 1, g.u32()][g.rng.random_range(0..3)];
    }
    if g.chance(0.5) {
        r.page_token = g.token();
    }
    r.encode_to_vec()
}

fn prefix_stats(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    let mut r = pb::PrefixStatsRequest {
        collection: g.collection(t.name),
        entity: g.rng.random_range(0..3),
        prefix: vec![g.rng.random_range(0..16)],
    };
    if g.mutate() {
        r.entity = g.enum_value();
    }
    if g.mutate() {
        r.prefix = g.codes();
    }
    r.encode_to_vec()
}

fn get_semantic_ids(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    let mut r = pb::GetSemanticIdsRequest {
        collection: g.collection(t.name),
        entity: g.rng.random_range(0..3),
        ids: g.ids(item_id),
        model_version: g.rng.random_range(0..3),
    };
    if g.mutate() {
        r.entity = g.enum_value();
    }
    if g.mutate() {
        r.model_version = g.u64();
    }
    r.encode_to_vec()
}

fn recommend(g: &mut Gen) -> Vec<u8> {
    let t = g.target();
    let mut r = pb::RecommendRequest {
        collection: g.collection(t.name),
        user_id: g.id(user_id),
        k: g.rng.random_range(1..=10),
        exclude_seen: g.chance(0.5),
        modality: String::new(),
    };
    if g.mutate() {
        r.k = [0, MAX_K as u32, MAX_K as u32 + 1, g.u32()][g.rng.random_range(0..4)];
    }
    if g.mutate() {
        r.modality = g.string();
    }
    r.encode_to_vec()
}

/// The collection of a training request: mostly `f`, whose catalogue is too small to train
/// (so a fuzz run starts few trainings), sometimes the trained `p`.
fn training_collection(g: &mut Gen) -> String {
    let valid = if g.chance(0.85) { "f" } else { "p" };
    g.collection(valid)
}

fn trigger_training(g: &mut Gen) -> Vec<u8> {
    pb::TriggerTrainingRequest {
        collection: training_collection(g),
    }
    .encode_to_vec()
}

fn get_training_status(g: &mut Gen) -> Vec<u8> {
    pb::GetTrainingStatusRequest {
        collection: training_collection(g),
    }
    .encode_to_vec()
}

fn watch_training(g: &mut Gen) -> Vec<u8> {
    pb::WatchTrainingRequest {
        collection: training_collection(g),
    }
    .encode_to_vec()
}

fn list_model_versions(g: &mut Gen) -> Vec<u8> {
    pb::ListModelVersionsRequest {
        collection: training_collection(g),
    }
    .encode_to_vec()
}

fn activate_model_version(g: &mut Gen) -> Vec<u8> {
    let mut r = pb::ActivateModelVersionRequest {
        collection: g.collection("p"),
        version: g.rng.random_range(1..3),
    };
    if g.mutate() {
        r.version = g.u64();
    }
    r.encode_to_vec()
}

fn get_model_report(g: &mut Gen) -> Vec<u8> {
    let mut r = pb::GetModelReportRequest {
        collection: g.collection("p"),
        version: g.rng.random_range(0..3),
    };
    if g.mutate() {
        r.version = g.u64();
    }
    r.encode_to_vec()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unary,
    ClientStream,
    ServerStream,
}

struct Method {
    path: &'static str,
    kind: Kind,
    make: fn(&mut Gen) -> Vec<u8>,
}

const fn m(path: &'static str, kind: Kind, make: fn(&mut Gen) -> Vec<u8>) -> Method {
    Method { path, kind, make }
}

/// Every method of `proto/sidb/v1/*.proto` (checked against the descriptor set below).
const METHODS: &[Method] = &[
    m(
        "/sidb.v1.Collections/CreateCollection",
        Kind::Unary,
        create_collection,
    ),
    m(
        "/sidb.v1.Collections/GetCollection",
        Kind::Unary,
        get_collection,
    ),
    m(
        "/sidb.v1.Collections/ListCollections",
        Kind::Unary,
        list_collections,
    ),
    m(
        "/sidb.v1.Collections/DeleteCollection",
        Kind::Unary,
        delete_collection,
    ),
    m("/sidb.v1.Items/UpsertItems", Kind::Unary, upsert_items),
    m(
        "/sidb.v1.Items/UpsertItemsStream",
        Kind::ClientStream,
        upsert_items,
    ),
    m("/sidb.v1.Items/GetItems", Kind::Unary, get_items),
    m("/sidb.v1.Items/DeleteItems", Kind::Unary, delete_items),
    m("/sidb.v1.Users/UpsertUsers", Kind::Unary, upsert_users),
    m("/sidb.v1.Users/GetUsers", Kind::Unary, get_users),
    m("/sidb.v1.Users/DeleteUsers", Kind::Unary, delete_users),
    m(
        "/sidb.v1.Interactions/WriteInteractions",
        Kind::Unary,
        write_interactions,
    ),
    m(
        "/sidb.v1.Interactions/WriteInteractionsStream",
        Kind::ClientStream,
        write_interactions,
    ),
    m(
        "/sidb.v1.Interactions/GetUserHistory",
        Kind::Unary,
        get_user_history,
    ),
    m("/sidb.v1.Retrieval/Search", Kind::Unary, search),
    m("/sidb.v1.Retrieval/PrefixScan", Kind::Unary, prefix_scan),
    m("/sidb.v1.Retrieval/PrefixStats", Kind::Unary, prefix_stats),
    m(
        "/sidb.v1.Retrieval/GetSemanticIds",
        Kind::Unary,
        get_semantic_ids,
    ),
    m("/sidb.v1.Retrieval/Recommend", Kind::Unary, recommend),
    m(
        "/sidb.v1.Training/TriggerTraining",
        Kind::Unary,
        trigger_training,
    ),
    m(
        "/sidb.v1.Training/GetTrainingStatus",
        Kind::Unary,
        get_training_status,
    ),
    m(
        "/sidb.v1.Training/WatchTraining",
        Kind::ServerStream,
        watch_training,
    ),
    m(
        "/sidb.v1.Training/ListModelVersions",
        Kind::Unary,
        list_model_versions,
    ),
    m(
        "/sidb.v1.Training/ActivateModelVersion",
        Kind::Unary,
        activate_model_version,
    ),
    m(
        "/sidb.v1.Training/GetModelReport",
        Kind::Unary,
        get_model_report,
    ),
];

/// The request bodies of one call: the method's valid request with mutated fields, mutated
/// bytes, both, or neither.
fn bodies(g: &mut Gen, method: &Method) -> Vec<Vec<u8>> {
    let n = match method.kind {
        Kind::ClientStream => g.rng.random_range(1..=3),
        _ => 1,
    };
    let mode = g.rng.random_range(0..20);
    (0..n)
        .map(|_| {
            g.mutating = (2..15).contains(&mode);
            let body = (method.make)(g);
            match mode >= 10 {
                true => mutate_bytes(&mut g.rng, &body),
                false => body,
            }
        })
        .collect()
}

/// The outcome of one call: the code (`Ok` for a reply) and its status message.
async fn call(ch: &Channel, method: &Method, bodies: Vec<Vec<u8>>) -> (Code, String) {
    let r = match method.kind {
        Kind::Unary => raw_unary(ch, method.path, bodies.into_iter().next().unwrap())
            .await
            .map(drop),
        Kind::ClientStream => raw_client_stream(ch, method.path, bodies).await.map(drop),
        Kind::ServerStream => {
            raw_server_stream_first(ch, method.path, bodies.into_iter().next().unwrap())
                .await
                .map(drop)
        }
    };
    match r {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// What a worker saw.
#[derive(Default)]
struct Tally {
    requests: usize,
    codes: BTreeMap<String, usize>,
    /// Replies (OK) per method: what got past validation.
    ok: BTreeMap<&'static str, usize>,
    failures: Vec<String>,
    slowest: Duration,
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn worker(ch: Channel, w: usize, tokens: Vec<String>) -> Tally {
    let seed = env_or("SIDB_FUZZ_SEED", SEED);
    let rounds = env_or("SIDB_FUZZ_ROUNDS", ROUNDS);
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed + w as u64),
        mutating: false,
        tokens,
    };
    let mut t = Tally::default();
    for round in (w..rounds).step_by(WORKERS) {
        for method in METHODS {
            let bodies = bodies(&mut g, method);
            if method.path.ends_with("/DeleteCollection") {
                // never the collections the fuzz runs on
                let name = pb::DeleteCollectionRequest::decode(&bodies[0][..]).map(|r| r.name);
                if name.is_ok_and(|n| n == "f" || n == "p") {
                    continue;
                }
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(TIMEOUT, call(&ch, method, bodies.clone())).await;
            let took = started.elapsed();
            t.requests += 1;
            t.slowest = t.slowest.max(took);
            let (code, message) = match outcome {
                Ok(o) => o,
                Err(_) => {
                    t.failures.push(format!(
                        "{} (round {round}): no answer within {TIMEOUT:?}; request {}",
                        method.path,
                        hex(&bodies[0])
                    ));
                    *t.codes.entry("TIMEOUT".into()).or_default() += 1;
                    continue;
                }
            };
            *t.codes.entry(format!("{code:?}")).or_default() += 1;
            if code == Code::Ok {
                let name = method.path.rsplit('/').next().unwrap_or_default();
                *t.ok.entry(name).or_default() += 1;
            }
            let bad_code = matches!(code, Code::Internal | Code::Unknown);
            if bad_code || message.len() >= MAX_MESSAGE {
                t.failures.push(format!(
                    "{} (round {round}): {code:?} with a {} byte message {:.400?}; request {}",
                    method.path,
                    message.len(),
                    message,
                    hex(&bodies[0])
                ));
            }
        }
        if round % 30 == w {
            assert_healthy(&ch).await;
        }
    }
    t
}

fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(300).map(|x| format!("{x:02x}")).collect();
    match b.len() > 300 {
        true => format!("{shown}… ({} bytes)", b.len()),
        false => shown,
    }
}

async fn assert_healthy(ch: &Channel) {
    let mut health = HealthClient::new(ch.clone());
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    let r = tokio::time::timeout(TIMEOUT, check)
        .await
        .expect("health answers in time")
        .expect("health answers");
    assert_eq!(r.into_inner().status, 1, "SERVING");
}

/// Kills the server when the test ends, passed or not.
struct Killed(SidbProcess);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// `f`: 50 items with client SIDs (3 levels, codebook 16) in two modalities, 20 users with
/// vectors, 200 interactions.
async fn load_f(ch: &Channel) {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 0xF);
    CollectionsClient::new(ch.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: "f".into(),
            config: Some(pb::CollectionConfig {
                item_modalities: vec![
                    pb::Modality {
                        name: "text".into(),
                        dim: DIM as u32,
                    },
                    pb::Modality {
                        name: "img".into(),
                        dim: IMG as u32,
                    },
                ],
                user_dim: DIM as u32,
                sid_levels: 3,
                sid_codebook_size: 16,
                ..Default::default()
            }),
        })
        .await
        .expect("create f");
    let mut v = |dim: usize| pb::Vector {
        values: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
    };
    let items: Vec<pb::Item> = (0..50)
        .map(|i| pb::Item {
            id: format!("i{i:04}"),
            vectors: [("text".to_string(), v(DIM)), ("img".to_string(), v(IMG))].into(),
            attributes: Default::default(),
            sid: Some(pb::SemanticId {
                codes: vec![i % 4, i % 16, i % 7],
                ..Default::default()
            }),
        })
        .collect();
    ItemsClient::new(ch.clone())
        .upsert_items(upsert("f", items))
        .await
        .expect("f items");
    let users: Vec<pb::User> = (0..20)
        .map(|u| pb::User {
            id: format!("u{u:03}"),
            vector: Some(v(DIM)),
            ..Default::default()
        })
        .collect();
    UsersClient::new(ch.clone())
        .upsert_users(pb::UpsertUsersRequest {
            collection: "f".into(),
            users,
            durability: 0,
        })
        .await
        .expect("f users");
    let xs: Vec<pb::Interaction> = (0..200)
        .map(|k| {
            crate::common::interaction(
                &format!("u{:03}", k % 30),
                &format!("i{:04}", (k * 7) % 60),
                1_000 + k as i64,
            )
        })
        .collect();
    InteractionsClient::new(ch.clone())
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "f".into(),
            interactions: xs,
            durability: 0,
        })
        .await
        .expect("f interactions");
}

/// Page tokens the server issued: a prefix scan's and a history's.
async fn real_tokens(ch: &Channel) -> Vec<String> {
    let mut tokens = Vec::new();
    let scan = pb::retrieval_client::RetrievalClient::new(ch.clone())
        .prefix_scan(pb::PrefixScanRequest {
            collection: "f".into(),
            prefix: vec![1],
            limit: 3,
            ..Default::default()
        })
        .await
        .expect("scan")
        .into_inner();
    tokens.push(scan.next_page_token);
    let history = InteractionsClient::new(ch.clone())
        .get_user_history(pb::GetUserHistoryRequest {
            collection: "f".into(),
            user_id: "u001".into(),
            limit: 2,
            page_token: String::new(),
        })
        .await
        .expect("history")
        .into_inner();
    tokens.push(history.next_page_token);
    assert!(tokens.iter().all(|t| !t.is_empty()), "{tokens:?}");
    tokens
}

#[test]
fn the_fuzz_covers_every_method_of_the_api() {
    let fds = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut api: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "sidb.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| {
            s.method
                .iter()
                .map(move |m| format!("/sidb.v1.{}/{}", s.name(), m.name()))
        })
        .collect();
    let mut fuzzed: Vec<String> = METHODS.iter().map(|m| m.path.to_string()).collect();
    api.sort();
    fuzzed.sort();
    assert_eq!(fuzzed, api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_survives_mutated_requests() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = Killed(spawn_sidb(dir.path(), ENV).await);
    let ch = connect(&server.0.url).await;
    load_f(&ch).await;
    crate::training::load_planted(&ch, "p", 240, 40).await;
    pb::training_client::TrainingClient::new(ch.clone())
        .trigger_training(pb::TriggerTrainingRequest {
            collection: "p".into(),
        })
        .await
        .expect("train p");
    crate::training::wait_active(&ch, "p", 1, Duration::from_secs(120)).await;
    let tokens = real_tokens(&ch).await;
    let setup = started.elapsed();

    let fuzzing = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(ch.clone(), w, tokens.clone())))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        let t = w.await.expect("worker");
        total.requests += t.requests;
        total.failures.extend(t.failures);
        total.slowest = total.slowest.max(t.slowest);
        for (code, n) in t.codes {
            *total.codes.entry(code).or_default() += n;
        }
        for (method, n) in t.ok {
            *total.ok.entry(method).or_default() += n;
        }
    }
    assert_healthy(&ch).await;
    let mut server = server;
    assert!(
        server.0.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let log: Vec<String> = server.0.log.try_iter().collect();
    let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    eprintln!(
        "fuzz: {} requests over {} methods in {:.1?} (setup {:.1?}, slowest call {:.1?}); codes: {:?}",
        total.requests,
        METHODS.len(),
        fuzzing.elapsed(),
        setup,
        total.slowest,
        total.codes
    );
    eprintln!("fuzz: replies (OK) per method: {:?}", total.ok);
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
    assert!(
        total.failures.is_empty(),
        "{} bad answers, the first ones:\n{}",
        total.failures.len(),
        total.failures[..total.failures.len().min(15)].join("\n")
    );
}
