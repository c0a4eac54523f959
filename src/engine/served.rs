//! A model version as the engine serves it: [`LoadedModel`] (the quantizers, how they encode,
//! the popularity priors), its checkpoint files and its quality report.
//!
//! A version's checkpoint is `models/<collection id>/<version>/`: `model.safetensors` and
//! `model.json` (the tensors and shapes, `model::das`), `serving.json` ([`ServingInfo`]) and
//! `popularity.json` (the items' priors for `Recommend`) and `neighbours.bin` (the items'
//! co-occurrence neighbours for `Recommend`, [`VersionNeighbours`]). It is written to a `.tmp` sibling,
//! fsync'ed and renamed, so a directory under its final name is whole; reading a damaged one is
//! DATA_LOSS. This module knows nothing of the index or of publication (`engine::models`):
//! both use it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{remove_dir_if_present, replace_dir, sibling, sync_tree};
use crate::model::neighbours::ItemNeighbours;
use crate::model::{Encoded, ModelError, TrainedModel};
use crate::storage::models::ModelSid;
use crate::storage::{Collection, Store};
use crate::types::{InteractionRecord, UserRecord};

/// Rows encoded per model call.
const ENCODE_CHUNK: usize = 4096;

/// What serving needs to know about a model besides its tensors (`serving.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServingInfo {
    /// Users were encoded from item profiles (no own vectors).
    pub users_from_profiles: bool,
    /// Mean norm of the items' `z` (routes users into the item code space).
    pub mean_item_z_norm: f32,
    /// Profile half-life by age the model was trained with.
    pub half_life_days: f64,
    /// Profile half-life by position the model was trained with (absent in versions written
    /// before it existed: 0, by age only).
    #[serde(default)]
    pub half_life_events: f64,
}

impl ServingInfo {
    /// The recency weighting of the profiles the model's users were encoded from.
    pub fn recency(&self) -> crate::profile::Recency {
        crate::profile::Recency {
            half_life_days: self.half_life_days,
            half_life_events: self.half_life_events,
        }
    }
}

/// The model of the active version.
#[derive(Debug)]
pub struct LoadedModel {
    /// Its version.
    pub version: u64,
    /// The quantizers.
    pub model: TrainedModel,
    /// How it encodes.
    pub info: ServingInfo,
    /// Each trained item's popularity prior for `Recommend` (log(1 + positives in the training
    /// snapshot), scaled to `[0, 1]`); items written since weigh 0, as do all items of versions
    /// saved before the prior existed.
    pub popularity: HashMap<Arc<str>, f32>,
    /// The trained items' co-occurrence neighbours for `Recommend` (empty in versions saved
    /// before they existed).
    pub neighbours: VersionNeighbours,
}

/// File of a version's popularity priors: a JSON array of `[item id, prior]`.
const POPULARITY_FILE: &str = "popularity.json";

/// File of a version's co-occurrence neighbours ([`VersionNeighbours::to_bytes`]).
const NEIGHBOURS_FILE: &str = "neighbours.bin";

/// First bytes of [`NEIGHBOURS_FILE`].
const NEIGHBOURS_MAGIC: &[u8; 8] = b"SIDBNBR1";

/// A version's item co-occurrence neighbours ([`ItemNeighbours`]) over its training items:
/// row `r` of `lists` is item `items[r]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionNeighbours {
    /// The item id of each row.
    pub items: Vec<Arc<str>>,
    /// The lists, shared with the index that serves them.
    pub lists: Arc<ItemNeighbours>,
}

impl VersionNeighbours {
    /// The file encoding: the magic, the id count (u64 LE), each id (u32 LE length, UTF-8),
    /// the length of the lists' encoding (u64 LE) and that encoding
    /// ([`ItemNeighbours::to_bytes`]), then the CRC-32 of all of it (u32 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = NEIGHBOURS_MAGIC.to_vec();
        out.extend_from_slice(&(self.items.len() as u64).to_le_bytes());
        for id in &self.items {
            out.extend_from_slice(&(id.len() as u32).to_le_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        let lists = self.lists.to_bytes();
        out.extend_from_slice(&(lists.len() as u64).to_le_bytes());
        out.extend_from_slice(&lists);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes [`VersionNeighbours::to_bytes`]; any damage is an error that says what.
    pub fn from_bytes(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < NEIGHBOURS_MAGIC.len() + 4 || &b[..8] != NEIGHBOURS_MAGIC {
            return Err("not a neighbours file (magic)".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        let mut at = 8usize;
        let mut take = |n: usize| -> std::result::Result<&[u8], String> {
            let s = body
                .get(at..at.checked_add(n).ok_or("length overflow")?)
                .ok_or_else(|| format!("truncated at byte {at}"))?;
            at += n;
            Ok(s)
        };
        let n = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        if n > body.len() as u64 / 4 {
            return Err(format!("{n} item ids do not fit {} bytes", body.len()));
        }
        let mut items = Vec::with_capacity(n as usize);
        for k in 0..n {
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let id =
                std::str::from_utf8(take(len)?).map_err(|_| format!("item id {k} is not UTF-8"))?;
            items.push(Arc::from(id));
        }
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let lists = take(usize::try_from(len).map_err(|_| "length overflow")?)?;
        let lists = ItemNeighbours::from_bytes(lists).map_err(|e| e.0)?;
        if at != body.len() {
            return Err(format!("{} bytes after the lists", body.len() - at));
        }
        if lists.len() != items.len() {
            return Err(format!(
                "{} lists for {} item ids",
                lists.len(),
                items.len()
            ));
        }
        Ok(Self {
            items,
            lists: Arc::new(lists),
        })
    }
}

/// The SID quality report of a version (stored as JSON in its record).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelReport {
    /// Item quantizer, per level: (codebook size, codes used, perplexity).
    pub levels: Vec<(u32, u32, f32)>,
    /// User quantizer, per level.
    pub user_levels: Vec<(u32, u32, f32)>,
    /// Share of items whose code tuple another item already holds.
    pub collision_rate: f32,
    /// Items in the largest bucket of identical tuples.
    pub max_bucket: u32,
    /// Share of items (present in both) whose level-1 code changed vs the previous version.
    pub churn_level1: f32,
    /// Share whose full code tuple changed.
    pub churn_full: f32,
    /// Per level `l`: share whose code prefix of length `l + 1` changed.
    #[serde(default)]
    pub churn_per_level: Vec<f32>,
    /// Training wall seconds.
    pub train_seconds: f64,
    /// Items, users, interactions trained on.
    pub items: u64,
    /// Users trained on.
    pub users: u64,
    /// Interactions trained on.
    pub interactions: u64,
    /// Steps run, and whether warm-started from the previous version.
    pub steps: u64,
    /// Warm-started from the previous version.
    pub warm_start: bool,
}

/// Where a version's checkpoint lives.
pub fn model_dir(data_dir: &Path, coll_id: u64, version: u64) -> PathBuf {
    collection_models_dir(data_dir, coll_id).join(version.to_string())
}

/// Where a collection's checkpoints live.
pub fn collection_models_dir(data_dir: &Path, coll_id: u64) -> PathBuf {
    data_dir.join("models").join(coll_id.to_string())
}

/// Loads a version's checkpoint.
pub fn load_model(data_dir: &Path, coll_id: u64, version: u64) -> Result<LoadedModel> {
    let dir = model_dir(data_dir, coll_id, version);
    let model = TrainedModel::load(&dir).map_err(|e| {
        Error::DataLoss(format!(
            "checkpoint of model version {version} ({}): {e}",
            dir.display()
        ))
    })?;
    let path = dir.join("serving.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let info = serde_json::from_str(&text)
        .map_err(|e| Error::DataLoss(format!("{}: {e}", path.display())))?;
    let path = dir.join(POPULARITY_FILE);
    let popularity = match std::fs::read(&path) {
        Ok(bytes) => {
            let rows: Vec<(String, f32)> = serde_json::from_slice(&bytes)
                .map_err(|e| Error::DataLoss(format!("{}: {e}", path.display())))?;
            if let Some((id, p)) = rows.iter().find(|(_, p)| !(0.0..=1.0).contains(p)) {
                return Err(Error::DataLoss(format!(
                    "{}: item {}: prior {p} outside [0, 1]",
                    path.display(),
                    crate::error::echo(id)
                )));
            }
            rows.into_iter().map(|(id, p)| (Arc::from(id), p)).collect()
        }
        // a version saved before the prior existed
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let path = dir.join(NEIGHBOURS_FILE);
    let neighbours = match std::fs::read(&path) {
        Ok(bytes) => VersionNeighbours::from_bytes(&bytes)
            .map_err(|e| Error::DataLoss(format!("{}: {e}", path.display())))?,
        // a version saved before the neighbours existed
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => VersionNeighbours::default(),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    Ok(LoadedModel {
        version,
        model,
        info,
        popularity,
        neighbours,
    })
}

pub(super) fn save_model(data_dir: &Path, coll_id: u64, m: &LoadedModel) -> Result<()> {
    let dir = model_dir(data_dir, coll_id, m.version);
    let tmp = sibling(&dir, "tmp")?;
    remove_dir_if_present(&tmp)?;
    m.model.save(&tmp).map_err(Error::from)?;
    write_serving_info(&tmp, &m.info)?;
    let mut rows: Vec<(&str, f32)> = m.popularity.iter().map(|(id, p)| (&id[..], *p)).collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let json = serde_json::to_vec(&rows).expect("plain data serialises");
    crate::fsutil::write_synced(&tmp.join(POPULARITY_FILE), &json)?;
    crate::fsutil::write_synced(&tmp.join(NEIGHBOURS_FILE), &m.neighbours.to_bytes())?;
    sync_tree(&tmp)?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    replace_dir(&tmp, &dir)
}

fn write_serving_info(dir: &Path, info: &ServingInfo) -> Result<()> {
    let json = serde_json::to_vec_pretty(info).expect("plain data serialises");
    crate::fsutil::write_synced(&dir.join("serving.json"), &json)
}

/// Replaces `serving.json` of a saved version (write aside, fsync, rename).
pub(super) fn save_serving_info(data_dir: &Path, coll_id: u64, m: &LoadedModel) -> Result<()> {
    let dir = model_dir(data_dir, coll_id, m.version);
    let tmp = dir.join("serving.json.tmp");
    let json = serde_json::to_vec_pretty(&m.info).expect("plain data serialises");
    crate::fsutil::write_synced(&tmp, &json)?;
    std::fs::rename(&tmp, dir.join("serving.json"))
        .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
    crate::fsutil::sync_dir(&dir)
}

/// Encodes `x` (`n x dim`) in chunks.
fn encode_rows(
    x: &[f32],
    dim: usize,
    f: impl Fn(&[f32]) -> std::result::Result<Encoded, ModelError>,
) -> Result<Encoded> {
    let mut out = Encoded {
        codes: Vec::new(),
        z: Vec::new(),
        dim: 0,
    };
    for chunk in x.chunks(ENCODE_CHUNK * dim.max(1)) {
        let e = f(chunk).map_err(Error::from)?;
        out.codes.extend(e.codes);
        out.z.extend(e.z);
        out.dim = e.dim;
    }
    Ok(out)
}

/// Splits encoded rows into per-entity SIDs (suffix 0 for now).
fn to_sids(enc: &Encoded, routes: Option<&[u32]>, levels: usize) -> Vec<ModelSid> {
    let n = enc.codes.len() / levels.max(1);
    (0..n)
        .map(|i| ModelSid {
            codes: enc.codes[i * levels..(i + 1) * levels].to_vec(),
            suffix: 0,
            route: routes
                .map(|r| r[i * levels..(i + 1) * levels].to_vec())
                .unwrap_or_default(),
            z: enc.z[i * enc.dim..(i + 1) * enc.dim].to_vec(),
        })
        .collect()
}

impl LoadedModel {
    /// Levels of the item quantizer.
    pub fn levels(&self) -> usize {
        self.model.meta.config.levels
    }

    /// Item SIDs of raw concatenated item vectors.
    pub fn encode_items(&self, x: &[f32]) -> Result<Vec<ModelSid>> {
        let dim = self.model.meta.item_dim;
        let enc = encode_rows(x, dim, |c| self.model.encode_items(c))?;
        Ok(to_sids(&enc, None, self.levels()))
    }

    /// User SIDs (with routes) of user inputs (own vectors or profiles, `user_dim` each).
    pub fn encode_users(&self, x: &[f32]) -> Result<Vec<ModelSid>> {
        let dim = self.model.meta.user_dim;
        let enc = encode_rows(x, dim, |c| self.model.encode_users(c))?;
        let routes = self
            .model
            .route_users_scaled(&enc, self.info.mean_item_z_norm)
            .map_err(Error::from)?;
        Ok(to_sids(&enc, Some(&routes), self.levels()))
    }

    /// The model's input for one user: its own vector, or the profile of its history.
    pub(super) fn user_input(
        &self,
        store: &Store,
        coll: &Collection,
        user: &UserRecord,
        profile_events: usize,
    ) -> Result<Option<Vec<f32>>> {
        if !self.info.users_from_profiles {
            return Ok(user.vector.clone());
        }
        let (history, _) = store.user_history(coll, &user.id, profile_events, None)?;
        self.profile_of(store, coll, &history)
    }

    /// The model's profile input of a user from its `history` (newest first): its newest
    /// positives that can weigh anything ([`crate::profile::Recency::window`]), their items
    /// read from the store. `None` without any.
    fn profile_of(
        &self,
        store: &Store,
        coll: &Collection,
        history: &[InteractionRecord],
    ) -> Result<Option<Vec<f32>>> {
        let recency = self.info.recency();
        let newest: Vec<&InteractionRecord> = crate::profile::weighted_positives(history, recency)
            .into_iter()
            .map(|(x, _)| x)
            .collect();
        let ids: Vec<String> = newest.iter().map(|x| x.item_id.clone()).collect();
        let items = store.get_items(coll, &ids)?;
        // Oldest first, the order training sums a profile in.
        let rows: Vec<(Vec<f32>, f32, i64)> = newest
            .iter()
            .zip(items)
            .rev()
            .filter_map(|(x, it)| it.map(|it| (it.vectors.concat(), x.weight, x.timestamp_ms)))
            .collect();
        let events: Vec<(&[f32], f32, i64)> =
            rows.iter().map(|(v, w, t)| (&v[..], *w, *t)).collect();
        Ok(crate::model::data::profile_input(
            &events,
            self.model.meta.item_dim,
            recency,
        ))
    }

    /// The SID, route and `z` a user described by its profile has *now*, from its `history`
    /// (newest first), as an upsert of the user would store them: what `Recommend` routes and
    /// ranks by, since a stored SID dates from the user's last upsert or training and its
    /// newest interactions weigh most. `None` when users have own vectors (theirs are
    /// current) or the history holds no positive.
    pub fn current_user_sid(
        &self,
        store: &Store,
        coll: &Collection,
        history: &[InteractionRecord],
    ) -> Result<Option<ModelSid>> {
        if !self.info.users_from_profiles {
            return Ok(None);
        }
        match self.profile_of(store, coll, history)? {
            Some(x) => Ok(self.encode_users(&x)?.pop()),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_saved_before_positional_recency_weighs_by_age_only() {
        let old =
            r#"{"users_from_profiles": true, "mean_item_z_norm": 1.5, "half_life_days": 30.0}"#;
        let info: ServingInfo = serde_json::from_str(old).expect("old serving.json");
        assert_eq!(info.recency(), crate::profile::Recency::by_age(30.0));
        let new = ServingInfo {
            half_life_events: 2.0,
            ..info.clone()
        };
        let back: ServingInfo =
            serde_json::from_str(&serde_json::to_string(&new).expect("json")).expect("read");
        assert_eq!(back.recency().half_life_events, 2.0);
    }

    fn sample() -> VersionNeighbours {
        VersionNeighbours {
            items: vec![Arc::from("a"), Arc::from("b\u{e9}"), Arc::from("")],
            lists: Arc::new(ItemNeighbours::from_lists(vec![
                vec![(1, 0.5), (2, 0.25)],
                vec![(0, 0.5)],
                vec![],
            ])),
        }
    }

    #[test]
    fn neighbours_files_round_trip_and_every_damage_is_named() {
        let v = sample();
        let b = v.to_bytes();
        assert_eq!(VersionNeighbours::from_bytes(&b).expect("round trip"), v);
        let empty = VersionNeighbours::default();
        assert_eq!(
            VersionNeighbours::from_bytes(&empty.to_bytes()).expect("empty"),
            empty
        );
        // every flipped byte and every truncation is an error, never a panic
        for k in 0..b.len() {
            let mut d = b.clone();
            d[k] ^= 0x40;
            assert!(VersionNeighbours::from_bytes(&d).is_err(), "byte {k}");
            assert!(VersionNeighbours::from_bytes(&b[..k]).is_err(), "cut {k}");
        }
        let mut d = b.clone();
        d[20] ^= 1;
        assert_eq!(
            VersionNeighbours::from_bytes(&d).unwrap_err(),
            "checksum mismatch"
        );
        // well-formed lists of another size than the id table
        let odd = VersionNeighbours {
            items: vec![Arc::from("a")],
            ..sample()
        };
        let err = VersionNeighbours::from_bytes(&odd.to_bytes()).unwrap_err();
        assert!(err.contains("3 lists for 1 item ids"), "{err}");
    }
}
