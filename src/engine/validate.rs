//! Request validation: the INVALID_ARGUMENT rows of the API's error table.
//!
//! Every check names the field by its path in the request (`items[3].vectors["text"]`) and the
//! offending value, so a client can find the problem without reading server logs. Validation
//! runs over a whole batch before anything is written: one bad entity rejects the batch.

use std::collections::{BTreeMap, HashSet};

use crate::config::Limits;
use crate::error::{echo, Error, Result};
use crate::types::{
    CollectionConfig, InteractionRecord, ItemRecord, Metric, Modality, SemanticId, UserRecord,
    DEFAULT_SID_LEVELS,
};

/// Longest entity id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest vector dimension.
pub const MAX_DIM: u32 = 65_536;
/// Most item modalities per collection.
pub const MAX_MODALITIES: usize = 16;
/// Most SID levels.
pub const MAX_SID_LEVELS: u32 = 8;
/// Largest codebook.
pub const MAX_CODEBOOK: u32 = 65_536;
/// Most attributes per entity.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, in bytes.
pub const MAX_ATTR_KEY: usize = 128;
/// Longest attribute value, in bytes.
pub const MAX_ATTR_VALUE: usize = 4096;
/// Longest interaction kind, in bytes.
pub const MAX_KIND: usize = 64;
/// Largest interaction weight magnitude: far above any rating or count, far below where a
/// user's profile (a weighted sum of item vectors) loses precision.
pub const MAX_WEIGHT: f32 = 1e6;

/// An item as a client sent it, before validation.
#[derive(Debug, Clone, Default)]
pub struct ItemInput {
    /// Id.
    pub id: String,
    /// Vectors by modality name.
    pub vectors: Vec<(String, Vec<f32>)>,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Client-computed SID, if any.
    pub sid: Option<SemanticId>,
}

/// A user as a client sent it, before validation.
#[derive(Debug, Clone, Default)]
pub struct UserInput {
    /// Id.
    pub id: String,
    /// Own vector, if any.
    pub vector: Option<Vec<f32>>,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Client-computed SID, if any.
    pub sid: Option<SemanticId>,
}

/// A collection name: `[A-Za-z0-9_-]{1,64}`.
pub fn collection_name(field: &str, name: &str) -> Result<()> {
    name_like(field, name, 64)
}

fn name_like(field: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field}: {} must be 1..={max} characters of [A-Za-z0-9_-]",
            echo(name)
        )))
    }
}

/// Checks a collection config and fills in its defaults.
pub fn collection_config(mut c: CollectionConfig) -> Result<CollectionConfig> {
    if c.item_modalities.is_empty() || c.item_modalities.len() > MAX_MODALITIES {
        return Err(Error::invalid(format!(
            "config.item_modalities: {} given; declare 1..={MAX_MODALITIES}",
            c.item_modalities.len()
        )));
    }
    let mut names = HashSet::new();
    for (i, Modality { name, dim }) in c.item_modalities.iter().enumerate() {
        name_like(&format!("config.item_modalities[{i}].name"), name, 64)?;
        if !names.insert(name) {
            return Err(Error::invalid(format!(
                "config.item_modalities[{i}].name: {name:?} is declared twice"
            )));
        }
        if *dim == 0 || *dim > MAX_DIM {
            return Err(Error::invalid(format!(
                "config.item_modalities[{i}].dim: {dim} is outside 1..={MAX_DIM}"
            )));
        }
    }
    if c.user_dim > MAX_DIM {
        return Err(Error::invalid(format!(
            "config.user_dim: {} exceeds {MAX_DIM}",
            c.user_dim
        )));
    }
    if c.sid_levels == 0 {
        c.sid_levels = DEFAULT_SID_LEVELS;
    }
    if c.sid_levels > MAX_SID_LEVELS {
        return Err(Error::invalid(format!(
            "config.sid_levels: {} exceeds {MAX_SID_LEVELS}",
            c.sid_levels
        )));
    }
    if c.sid_codebook_size == 1 || c.sid_codebook_size > MAX_CODEBOOK {
        return Err(Error::invalid(format!(
            "config.sid_codebook_size: {} is outside 2..={MAX_CODEBOOK} (0 = automatic)",
            c.sid_codebook_size
        )));
    }
    Ok(c)
}

/// An entity id: 1..=256 bytes.
pub fn id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{field}: must not be empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(format!(
            "{field}: {} bytes long, at most {MAX_ID_BYTES} allowed (id {})",
            id.len(),
            echo(id)
        )));
    }
    Ok(())
}

/// A vector of exactly `dim` finite values that the collection's metric can score: its squared
/// norm must be finite, and under cosine it must not be zero (a zero vector has no direction).
pub fn vector(field: &str, values: &[f32], dim: u32, metric: Metric) -> Result<()> {
    if values.len() != dim as usize {
        return Err(Error::invalid(format!(
            "{field}: expected {dim} values, got {}",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{field}[{i}]: {} is not a finite number",
            values[i]
        )));
    }
    let norm_sq = crate::index::distance::dot(values, values);
    if !norm_sq.is_finite() {
        return Err(Error::invalid(format!(
            "{field}: values too large, the squared norm overflows a 32-bit float"
        )));
    }
    if metric == Metric::Cosine && norm_sq <= 0.0 {
        if let Some(i) = values.iter().position(|&v| v != 0.0) {
            return Err(Error::invalid(format!(
                "{field}: the norm is too small to normalise (the squared norm underflows a \
                 32-bit float; values like [{i}] = {:e} are subnormal or nearly so): scale the \
                 vector up, it has no usable direction under the COSINE metric as it is",
                values[i]
            )));
        }
        return Err(Error::invalid(format!(
            "{field}: all values are zero, which has no direction under the COSINE metric"
        )));
    }
    Ok(())
}

fn attributes(field: &str, attrs: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(format!(
            "{field}: {} attributes, at most {MAX_ATTRIBUTES} allowed",
            attrs.len()
        )));
    }
    for (k, v) in &attrs {
        if k.is_empty() || k.len() > MAX_ATTR_KEY {
            return Err(Error::invalid(format!(
                "{field}: key {} must be 1..={MAX_ATTR_KEY} bytes",
                echo(k)
            )));
        }
        if v.len() > MAX_ATTR_VALUE {
            return Err(Error::invalid(format!(
                "{field}[{k:?}]: value is {} bytes, at most {MAX_ATTR_VALUE} allowed",
                v.len()
            )));
        }
    }
    Ok(attrs.into_iter().collect())
}

/// A client-written SID: one code per level, each below the codebook size when that is set.
pub fn sid(field: &str, sid: &SemanticId, config: &CollectionConfig) -> Result<()> {
    if sid.codes.len() != config.sid_levels as usize {
        return Err(Error::invalid(format!(
            "{field}.codes: expected {} codes (the collection's sid_levels), got {}",
            config.sid_levels,
            sid.codes.len()
        )));
    }
    sid_codes(&format!("{field}.codes"), &sid.codes, config)
}

/// SID codes or a prefix of them: at most `sid_levels` codes, each below the codebook size.
pub fn sid_codes(field: &str, codes: &[u32], config: &CollectionConfig) -> Result<()> {
    if codes.len() > config.sid_levels as usize {
        return Err(Error::invalid(format!(
            "{field}: {} codes, but the collection has {} levels",
            codes.len(),
            config.sid_levels
        )));
    }
    let k = config.sid_codebook_size;
    if let Some(i) = codes.iter().position(|&c| k > 0 && c >= k) {
        return Err(Error::invalid(format!(
            "{field}[{i}]: code {} >= codebook size {k}",
            codes[i]
        )));
    }
    Ok(())
}

/// Batch size within `1..=max`.
pub fn batch_len(field: &str, len: usize, max: usize) -> Result<()> {
    if len == 0 || len > max {
        return Err(Error::invalid(format!(
            "{field}: {len} entries; send 1..={max} per request"
        )));
    }
    Ok(())
}

/// Validates items against the collection and orders their vectors by modality. An id repeated
/// in the batch: the last one wins (the earlier ones are validated, then dropped).
pub fn items(
    config: &CollectionConfig,
    limits: &Limits,
    items: Vec<ItemInput>,
) -> Result<Vec<ItemRecord>> {
    batch_len("items", items.len(), limits.max_batch)?;
    let items = items
        .into_iter()
        .enumerate()
        .map(|(i, it)| item(config, &format!("items[{i}]"), it))
        .collect::<Result<Vec<_>>>()?;
    Ok(last_of_each(items, |x| &x.id))
}

/// The last record of each id, in the order of those last records: what a batch that names an
/// id twice stores, and what its `written` counts.
fn last_of_each<T>(records: Vec<T>, id: fn(&T) -> &String) -> Vec<T> {
    let mut keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(records.len());
        records.iter().rev().map(|r| seen.insert(id(r))).collect()
    };
    if keep.iter().all(|&k| k) {
        return records;
    }
    keep.reverse();
    records
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

fn item(config: &CollectionConfig, field: &str, it: ItemInput) -> Result<ItemRecord> {
    id(&format!("{field}.id"), &it.id)?;
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; config.item_modalities.len()];
    for (name, values) in it.vectors {
        let Some(m) = config.modality_index(&name) else {
            let declared: Vec<&str> = config
                .item_modalities
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            return Err(Error::invalid(format!(
                "{field}.vectors[{}]: unknown modality; the collection declares {declared:?}",
                echo(&name)
            )));
        };
        vector(
            &format!("{field}.vectors[{name:?}]"),
            &values,
            config.item_modalities[m].dim,
            config.metric,
        )?;
        slots[m] = Some(values);
    }
    let vectors = slots
        .into_iter()
        .zip(&config.item_modalities)
        .map(|(v, m)| {
            v.ok_or_else(|| {
                Error::invalid(format!(
                    "{field}.vectors[{:?}]: missing ({} values required)",
                    m.name, m.dim
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(s) = &it.sid {
        sid(&format!("{field}.sid"), s, config)?;
    }
    Ok(ItemRecord {
        id: it.id,
        vectors,
        attributes: attributes(&format!("{field}.attributes"), it.attributes)?,
        sid: it.sid.map(|s| SemanticId {
            model_version: 0,
            ..s
        }),
    })
}

/// Validates users against the collection; an id repeated in the batch: the last one wins.
pub fn users(
    config: &CollectionConfig,
    limits: &Limits,
    users: Vec<UserInput>,
) -> Result<Vec<UserRecord>> {
    batch_len("users", users.len(), limits.max_batch)?;
    let users = users
        .into_iter()
        .enumerate()
        .map(|(i, u)| user(config, &format!("users[{i}]"), u))
        .collect::<Result<Vec<_>>>()?;
    Ok(last_of_each(users, |x| &x.id))
}

fn user(config: &CollectionConfig, field: &str, u: UserInput) -> Result<UserRecord> {
    id(&format!("{field}.id"), &u.id)?;
    if let Some(v) = &u.vector {
        if config.user_dim == 0 {
            return Err(Error::invalid(format!(
                "{field}.vector: the collection has user_dim 0 (users carry no vector), got {} values",
                v.len()
            )));
        }
        vector(
            &format!("{field}.vector"),
            v,
            config.user_dim,
            config.metric,
        )?;
    }
    if let Some(s) = &u.sid {
        sid(&format!("{field}.sid"), s, config)?;
    }
    Ok(UserRecord {
        id: u.id,
        vector: u.vector,
        attributes: attributes(&format!("{field}.attributes"), u.attributes)?,
        sid: u.sid.map(|s| SemanticId {
            model_version: 0,
            ..s
        }),
    })
}

/// Validates interactions; a zero timestamp becomes `now_ms`.
pub fn interactions(
    limits: &Limits,
    xs: Vec<InteractionRecord>,
    now_ms: i64,
) -> Result<Vec<InteractionRecord>> {
    batch_len("interactions", xs.len(), limits.max_interactions)?;
    xs.into_iter()
        .enumerate()
        .map(|(i, mut x)| {
            id(&format!("interactions[{i}].user_id"), &x.user_id)?;
            id(&format!("interactions[{i}].item_id"), &x.item_id)?;
            if x.kind.len() > MAX_KIND {
                return Err(Error::invalid(format!(
                    "interactions[{i}].kind: {} bytes, at most {MAX_KIND} allowed",
                    x.kind.len()
                )));
            }
            if !x.weight.is_finite() {
                return Err(Error::invalid(format!(
                    "interactions[{i}].weight: {} is not a finite number",
                    x.weight
                )));
            }
            if x.weight.abs() > MAX_WEIGHT {
                return Err(Error::invalid(format!(
                    "interactions[{i}].weight: {:e} is outside -{MAX_WEIGHT:e}..={MAX_WEIGHT:e}",
                    x.weight
                )));
            }
            if x.timestamp_ms == 0 {
                x.timestamp_ms = now_ms;
            }
            x.sequence = 0;
            Ok(x)
        })
        .collect()
}

/// A list of ids for a read or delete.
pub fn ids(field: &str, ids: &[String], limits: &Limits) -> Result<()> {
    batch_len(field, ids.len(), limits.max_ids)?;
    ids.iter()
        .enumerate()
        .try_for_each(|(i, x)| id(&format!("{field}[{i}]"), x))
}

/// Ids that may be absent (at most `limits.max_ids`), each a valid id.
pub fn optional_ids(field: &str, list: &[String], limits: &Limits) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    ids(field, list, limits)
}

/// A result count `k` within `1..=limits.max_k`.
pub fn k(field: &str, k: u32, limits: &Limits) -> Result<usize> {
    let (k, max) = (k as usize, limits.max_k);
    if k == 0 || k > max {
        return Err(Error::invalid(format!("{field}: {k} is outside 1..={max}")));
    }
    Ok(k)
}

/// Bytes a vector of `dim` values adds to a reply: the values and their framing.
pub fn vector_reply_bytes(dim: usize) -> u64 {
    dim as u64 * 4 + 12
}

/// RESOURCE_EXHAUSTED when a reply of `bytes` (estimated before the work, or measured after it)
/// exceeds `limits.max_response_bytes`; the message starts with the request fields that make it
/// smaller (`fields`) and says what the reply holds (`what`).
pub fn response_size(fields: &str, what: &str, bytes: u64, limits: &Limits) -> Result<()> {
    let max = limits.max_response_bytes as u64;
    if bytes <= max {
        return Ok(());
    }
    Err(Error::ResourceExhausted(format!(
        "{fields}: the reply ({what}) would be about {bytes} bytes, more than \
         limits.max_response_bytes ({max}); ask for less"
    )))
}

/// A page size: 0 means `default`, at most `limits.max_page`.
pub fn page_limit(field: &str, limit: u32, default: usize, limits: &Limits) -> Result<usize> {
    match limit as usize {
        0 => Ok(default),
        n if n > limits.max_page => Err(Error::invalid(format!(
            "{field}: {n} exceeds the maximum page size {}",
            limits.max_page
        ))),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Metric;

    fn cfg() -> CollectionConfig {
        collection_config(CollectionConfig {
            item_modalities: vec![Modality {
                name: "text".into(),
                dim: 3,
            }],
            user_dim: 2,
            metric: Metric::Cosine,
            sid_levels: 0,
            sid_codebook_size: 16,
        })
        .unwrap()
    }

    fn item_in(id: &str, v: Vec<f32>) -> ItemInput {
        ItemInput {
            id: id.into(),
            vectors: vec![("text".into(), v)],
            ..Default::default()
        }
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        match r.unwrap_err() {
            Error::InvalidArgument(m) => m,
            e => panic!("expected InvalidArgument, got {e:?}"),
        }
    }

    #[test]
    fn item_errors_name_the_field_and_value() {
        let l = Limits::default();
        let ok = item_in("a", vec![1.0, 2.0, 3.0]);
        let m = err(items(
            &cfg(),
            &l,
            vec![ok.clone(), item_in("b", vec![1.0, 2.0])],
        ));
        assert_eq!(m, "items[1].vectors[\"text\"]: expected 3 values, got 2");
        let m = err(items(
            &cfg(),
            &l,
            vec![item_in("b", vec![1.0, f32::NAN, 0.0])],
        ));
        assert_eq!(
            m,
            "items[0].vectors[\"text\"][1]: NaN is not a finite number"
        );
        let m = err(items(&cfg(), &l, vec![item_in("", vec![1.0; 3])]));
        assert_eq!(m, "items[0].id: must not be empty");
        let m = err(items(
            &cfg(),
            &l,
            vec![item_in(&"x".repeat(257), vec![1.0; 3])],
        ));
        assert!(m.starts_with("items[0].id: 257 bytes long"), "{m}");
        let mut bad = ok.clone();
        bad.vectors.push(("image".into(), vec![1.0]));
        assert!(err(items(&cfg(), &l, vec![bad]))
            .contains("items[0].vectors[\"image\"]: unknown modality"));
        let mut missing = ok.clone();
        missing.vectors.clear();
        assert!(err(items(&cfg(), &l, vec![missing])).contains("missing"));
        let mut s = ok.clone();
        s.sid = Some(SemanticId {
            codes: vec![1, 2, 16],
            suffix: 0,
            model_version: 0,
        });
        assert_eq!(
            err(items(&cfg(), &l, vec![s])),
            "items[0].sid.codes[2]: code 16 >= codebook size 16"
        );
        assert!(err(items(&cfg(), &l, vec![])).starts_with("items: 0 entries"));
    }

    #[test]
    fn config_defaults_and_errors() {
        assert_eq!(cfg().sid_levels, DEFAULT_SID_LEVELS);
        let mut c = cfg();
        c.item_modalities.push(Modality {
            name: "text".into(),
            dim: 3,
        });
        assert!(err(collection_config(c)).contains("declared twice"));
        let mut c = cfg();
        c.item_modalities[0].dim = 0;
        assert!(err(collection_config(c)).starts_with("config.item_modalities[0].dim"));
        assert!(collection_name("name", "ads-jp_1").is_ok());
        assert!(err(collection_name("name", "a b")).starts_with("name: \"a b\""));
    }

    #[test]
    fn users_and_interactions() {
        let l = Limits::default();
        let u = UserInput {
            id: "u".into(),
            vector: Some(vec![1.0]),
            ..Default::default()
        };
        assert_eq!(
            err(users(&cfg(), &l, vec![u])),
            "users[0].vector: expected 2 values, got 1"
        );
        let x = InteractionRecord {
            user_id: "u".into(),
            item_id: "i".into(),
            kind: "click".into(),
            weight: f32::INFINITY,
            timestamp_ms: 0,
            sequence: 0,
        };
        assert_eq!(
            err(interactions(&l, vec![x.clone()], 5)),
            "interactions[0].weight: inf is not a finite number"
        );
        let ok = interactions(
            &l,
            vec![InteractionRecord {
                weight: 1.0,
                ..x.clone()
            }],
            5,
        )
        .unwrap();
        assert_eq!(ok[0].timestamp_ms, 5);
        // Regression: 3e38 was accepted, and a profile summing two of them overflowed.
        let huge = InteractionRecord {
            weight: 3e38,
            ..x.clone()
        };
        assert_eq!(
            err(interactions(&l, vec![huge], 5)),
            "interactions[0].weight: 3e38 is outside -1e6..=1e6"
        );
        for w in [MAX_WEIGHT, -MAX_WEIGHT, 0.0] {
            assert!(interactions(
                &l,
                vec![InteractionRecord {
                    weight: w,
                    ..x.clone()
                }],
                5
            )
            .is_ok());
        }
    }

    #[test]
    fn a_subnormal_vector_is_too_small_not_zero() {
        // Regression: its squared norm underflows to 0 and it was reported as all zeros.
        let m = err(vector("v", &[0.0, 1e-40, 0.0], 3, Metric::Cosine));
        assert!(
            m.starts_with("v: the norm is too small to normalise"),
            "{m}"
        );
        assert!(m.contains("[1] = 1e-40"), "{m}");
        let m = err(vector("v", &[0.0; 3], 3, Metric::Cosine));
        assert!(m.starts_with("v: all values are zero"), "{m}");
        // tiny but normalisable, and any length under the other metrics
        assert!(vector("v", &[1e-20, 0.0, 0.0], 3, Metric::Cosine).is_ok());
        assert!(vector("v", &[1e-40, 0.0, 0.0], 3, Metric::Dot).is_ok());
    }

    #[test]
    fn an_id_repeated_in_a_batch_keeps_its_last_entry() {
        // Regression: both entries were written and counted (`written: 2` for one item).
        let l = Limits::default();
        let got = items(
            &cfg(),
            &l,
            vec![
                item_in("a", vec![1.0, 0.0, 0.0]),
                item_in("b", vec![0.0, 1.0, 0.0]),
                item_in("a", vec![0.0, 0.0, 1.0]),
            ],
        )
        .unwrap();
        let ids: Vec<&str> = got.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(got[1].vectors[0], [0.0, 0.0, 1.0]);
        let u = |id: &str| UserInput {
            id: id.into(),
            ..Default::default()
        };
        assert_eq!(users(&cfg(), &l, vec![u("x"), u("x")]).unwrap().len(), 1);
    }
}
