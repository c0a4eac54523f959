//! The model's input: embeddings and an interaction log in plain memory.
//!
//! [`TrainingData`] is what the server's background trainer fills from its store and what the
//! dataset loader ([`load_dataset`]) fills from files. Everything derived from it (normalised
//! inputs, user profiles, popularity statistics, adjacency lists) is computed once by
//! [`Prepared::new`] so the training loop only indexes arrays.
use std::path::Path;

use super::{ModelError, Result};
pub use crate::profile::Recency;

/// One logged interaction. `weight > 0` is a positive (its strength), `weight <= 0` an explicit
/// negative (an impression without a click, a low rating).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    /// User index, `< n_users`.
    pub user: u32,
    /// Item index, `< n_items`.
    pub item: u32,
    /// Positive strength, or `<= 0` for an explicit negative.
    pub weight: f32,
    /// Event time, milliseconds since the epoch (all equal when unknown).
    pub ts_ms: i64,
}

/// Everything the trainer needs, in memory. Rows are row-major `f32`.
#[derive(Debug, Clone, Default)]
pub struct TrainingData {
    /// `n_items x item_dim` item embeddings (several modalities concatenated in a fixed order).
    pub item_emb: Vec<f32>,
    /// Dimension of one item embedding.
    pub item_dim: usize,
    /// Optional `n_users x user_dim` user embeddings written by the client.
    pub user_emb: Option<Vec<f32>>,
    /// Dimension of one user embedding (ignored when `user_emb` is `None`).
    pub user_dim: usize,
    /// The interaction log.
    pub interactions: Vec<Interaction>,
    /// Number of users (ids are `0..n_users`).
    pub n_users: usize,
}

impl TrainingData {
    /// Number of items (rows of `item_emb`).
    pub fn n_items(&self) -> usize {
        self.item_emb.len().checked_div(self.item_dim).unwrap_or(0)
    }

    /// Rejects empty, inconsistent or non-finite data with a typed error.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidData(m));
        if self.item_dim == 0 || self.item_emb.is_empty() {
            return bad("no items (item_emb empty or item_dim 0)".into());
        }
        if !self.item_emb.len().is_multiple_of(self.item_dim) {
            return bad(format!(
                "item_emb has {} values, not a multiple of item_dim {}",
                self.item_emb.len(),
                self.item_dim
            ));
        }
        if let Some(p) = self.item_emb.iter().position(|v| !v.is_finite()) {
            return bad(format!("item_emb value {p} is not finite"));
        }
        self.validate_users()?;
        self.validate_log()
    }

    fn validate_users(&self) -> Result<()> {
        let Some(u) = &self.user_emb else {
            return Ok(());
        };
        if self.user_dim == 0 || u.len() != self.n_users * self.user_dim {
            return Err(ModelError::InvalidData(format!(
                "user_emb has {} values, expected n_users {} x user_dim {}",
                u.len(),
                self.n_users,
                self.user_dim
            )));
        }
        if u.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::InvalidData(
                "user_emb holds a non-finite value".into(),
            ));
        }
        Ok(())
    }

    fn validate_log(&self) -> Result<()> {
        let n_items = self.n_items();
        if self.n_users == 0 || !self.interactions.iter().any(|x| x.weight > 0.0) {
            return Err(ModelError::InvalidData(
                "no users or no positive interactions".into(),
            ));
        }
        for (k, x) in self.interactions.iter().enumerate() {
            if x.user as usize >= self.n_users || x.item as usize >= n_items {
                return Err(ModelError::InvalidData(format!(
                    "interaction {k}: user {} / item {} out of range ({} users, {n_items} items)",
                    x.user, x.item, self.n_users
                )));
            }
            if !x.weight.is_finite() {
                return Err(ModelError::InvalidData(format!(
                    "interaction {k}: weight not finite"
                )));
            }
        }
        Ok(())
    }
}

/// L2-normalises every row of a row-major matrix in place (zero rows stay zero).
pub fn l2_normalise_rows(m: &mut [f32], dim: usize) {
    for row in m.chunks_mut(dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 1e-12 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
}

/// Column means of a row-major matrix.
pub fn col_mean(m: &[f32], dim: usize) -> Vec<f32> {
    let n = (m.len() / dim).max(1) as f32;
    let mut mean = vec![0.0f32; dim];
    for row in m.chunks(dim) {
        mean.iter_mut().zip(row).for_each(|(a, v)| *a += v / n);
    }
    mean
}

/// Subtracts `mean` from every row and L2-normalises again (no-op copy when `mean` is empty).
/// Text-encoder embeddings share a large common direction (MiniLM on MovieLens: mean cosine
/// 0.44 between items and 0.93 between users' profile means); centring removes it, so the
/// encoder sees the differences between entities instead of their common part.
pub fn center_rows(m: &[f32], dim: usize, mean: &[f32]) -> Vec<f32> {
    let mut out = m.to_vec();
    if mean.is_empty() {
        return out;
    }
    for row in out.chunks_mut(dim) {
        row.iter_mut().zip(mean).for_each(|(v, mu)| *v -= mu);
    }
    l2_normalise_rows(&mut out, dim);
    out
}

/// Everything derived from [`TrainingData`] that training and evaluation index into.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Number of items.
    pub n_items: usize,
    /// Number of users.
    pub n_users: usize,
    /// L2-normalised item inputs, `n_items x item_dim`.
    pub x_item: Vec<f32>,
    /// Item input dimension.
    pub item_dim: usize,
    /// L2-normalised user inputs, `n_users x user_dim`.
    pub x_user: Vec<f32>,
    /// User input dimension (the item dimension when users are item-profile means).
    pub user_dim: usize,
    /// Positive interactions as (user, item) pairs, by user, then time (then item).
    pub positives: Vec<(u32, u32)>,
    /// Weight and time (ms) of each positive.
    pub positive_meta: Vec<(f32, i64)>,
    /// User `u`'s positives are `positives[user_offsets[u]..user_offsets[u + 1]]`.
    pub user_offsets: Vec<usize>,
    /// Users are described by profiles of their items (no own embeddings).
    pub users_from_profiles: bool,
    /// The recency weighting of those profiles.
    pub recency: Recency,
    /// Explicit negatives as (user, item) pairs.
    pub negatives: Vec<(u32, u32)>,
    /// Items of each user (positives, time order).
    pub user_items: Vec<Vec<u32>>,
    /// Users of each item (positives).
    pub item_users: Vec<Vec<u32>>,
    /// Positive count per item.
    pub item_count: Vec<f32>,
    /// Item popularity features: log(1+count), recent rate, age (all scaled to ~[0, 1]).
    pub item_stats: Vec<[f32; 3]>,
    /// User features: mean log-popularity of touched items, log(1+activity).
    pub user_stats: Vec<[f32; 2]>,
}

impl Prepared {
    /// Validates `data` and derives the training views; `recency` weighs the user profiles.
    pub fn new(data: &TrainingData, recency: Recency) -> Result<Self> {
        data.validate()?;
        recency.validate("").map_err(ModelError::InvalidConfig)?;
        let (n_items, n_users) = (data.n_items(), data.n_users);
        let mut x_item = data.item_emb.clone();
        l2_normalise_rows(&mut x_item, data.item_dim);
        let mut log: Vec<Interaction> = data.interactions.clone();
        log.sort_by_key(|x| (x.user, x.ts_ms, x.item));
        let positives: Vec<(u32, u32)> = log
            .iter()
            .filter(|x| x.weight > 0.0)
            .map(|x| (x.user, x.item))
            .collect();
        let positive_meta = log
            .iter()
            .filter(|x| x.weight > 0.0)
            .map(|x| (x.weight, x.ts_ms))
            .collect();
        let mut user_offsets = vec![0usize; n_users + 1];
        for &(u, _) in &positives {
            user_offsets[u as usize + 1] += 1;
        }
        for u in 0..n_users {
            user_offsets[u + 1] += user_offsets[u];
        }
        let negatives = log
            .iter()
            .filter(|x| x.weight <= 0.0)
            .map(|x| (x.user, x.item))
            .collect();
        let mut user_items = vec![Vec::new(); n_users];
        let mut item_users = vec![Vec::new(); n_items];
        for &(u, i) in &positives {
            user_items[u as usize].push(i);
            item_users[i as usize].push(u);
        }
        let item_count: Vec<f32> = item_users.iter().map(|v| v.len() as f32).collect();
        let (x_user, user_dim) = user_inputs(data, &log, recency);
        let item_stats = item_features(&log, &item_count, n_items);
        let user_stats = user_features(&user_items, &item_count);
        Ok(Self {
            n_items,
            n_users,
            x_item,
            item_dim: data.item_dim,
            x_user,
            user_dim,
            positives,
            positive_meta,
            user_offsets,
            users_from_profiles: data.user_emb.is_none(),
            recency,
            negatives,
            user_items,
            item_users,
            item_count,
            item_stats,
            user_stats,
        })
    }

    /// The index into the positives of `user`'s newest positive with `item`, if any.
    pub fn positive_index(&self, user: u32, item: u32) -> Option<usize> {
        let u = user as usize;
        let range = *self.user_offsets.get(u)?..*self.user_offsets.get(u + 1)?;
        range.rev().find(|&p| self.positives[p].1 == item)
    }

    /// The causal input of the user of positive `p`: its profile ([`profile_input`]) over its
    /// positives strictly earlier than `p` only (at most [`Recency::window`] of them), the input
    /// it had when it made that interaction. A user's full profile holds the very item each of
    /// its training pairs is to predict, an item no profile holds when it is served. Positives
    /// at the same time as `p` are not before it (in a log without time none is). When none is
    /// earlier, the profile of the newest window of its other positives (again without `p`),
    /// which all weigh alike when they tie in time. `None` for a user with one positive, or
    /// when users have own embeddings.
    pub fn causal_input(&self, p: usize) -> Option<Vec<f32>> {
        if !self.users_from_profiles {
            return None;
        }
        let (u, _) = *self.positives.get(p)?;
        let (first, end) = (
            self.user_offsets[u as usize],
            self.user_offsets[u as usize + 1],
        );
        let window = self.recency.window();
        // positives at the time of `p` (a log without time ties them all) came neither before
        // nor after it: they share its position
        let ts = self.positive_meta[p].1;
        let lo = first + self.positive_meta[first..p].partition_point(|m| m.1 < ts);
        let picked: Vec<usize> = if lo > first {
            (first.max(lo.saturating_sub(window))..lo).collect()
        } else {
            // nothing before it: the newest window of the others
            let mut others: Vec<usize> = (first..end)
                .rev()
                .filter(|&j| j != p)
                .take(window)
                .collect();
            others.reverse();
            others
        };
        let d = self.item_dim;
        let events: Vec<(&[f32], f32, i64)> = picked
            .into_iter()
            .map(|j| {
                let i = self.positives[j].1 as usize;
                let (w, ts) = self.positive_meta[j];
                (&self.x_item[i * d..(i + 1) * d], w, ts)
            })
            .collect();
        // the items are normalised already
        recency_mean(&events, d, self.recency, false)
    }

    /// Copies the rows `ids` of a row-major matrix into one contiguous buffer.
    pub fn gather(m: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &i in ids {
            let i = i as usize;
            out.extend_from_slice(&m[i * dim..(i + 1) * dim]);
        }
        out
    }
}

/// Draws positive pairs: a share `1 - item_first` uniformly from the log (so items in
/// proportion to their positives), the rest item first: an item uniformly among those with
/// positives, then one of its users. The item-first share reaches the catalogue's tail, whose
/// items the log alone almost never draws.
pub struct PairSampler {
    item_first: f64,
    /// Items with at least one positive.
    items: Vec<u32>,
}

impl PairSampler {
    /// A sampler over `prep`'s positives with item-first share `item_first` (in [0, 1]).
    pub fn new(prep: &Prepared, item_first: f64) -> Self {
        let items = (0..prep.n_items as u32)
            .filter(|&i| !prep.item_users[i as usize].is_empty())
            .collect();
        Self { item_first, items }
    }

    /// One positive pair (user, item). Draws nothing extra from `rng` when the item-first share
    /// is 0, so that setting reproduces plain log sampling exactly.
    pub fn sample(&self, prep: &Prepared, rng: &mut impl rand::Rng) -> (u32, u32) {
        if self.item_first > 0.0 && rng.random::<f64>() < self.item_first {
            let i = self.items[rng.random_range(0..self.items.len())];
            let users = &prep.item_users[i as usize];
            return (users[rng.random_range(0..users.len())], i);
        }
        prep.positives[rng.random_range(0..prep.positives.len())]
    }
}

/// User inputs: own embeddings when given, else each user's [`profile_input`] over its events
/// (in log order: user, time, item); a user without a positive event keeps a zero row.
fn user_inputs(data: &TrainingData, log: &[Interaction], recency: Recency) -> (Vec<f32>, usize) {
    if let Some(u) = &data.user_emb {
        let mut x = u.clone();
        l2_normalise_rows(&mut x, data.user_dim);
        return (x, data.user_dim);
    }
    let d = data.item_dim;
    let mut out = vec![0.0f32; data.n_users * d];
    // `log` is sorted by user, so each user's events are one contiguous run
    for run in log.chunk_by(|a, b| a.user == b.user) {
        let events: Vec<(&[f32], f32, i64)> = run
            .iter()
            .map(|x| {
                let i = x.item as usize;
                (&data.item_emb[i * d..(i + 1) * d], x.weight, x.ts_ms)
            })
            .collect();
        if let Some(p) = profile_input(&events, d, recency) {
            let u = run[0].user as usize;
            out[u * d..(u + 1) * d].copy_from_slice(&p);
        }
    }
    (out, d)
}

/// The quantizer input of one user without an own embedding, exactly as training computes it:
/// the recency-weighted mean of the user's positive items, L2-normalised.
///
/// `events` are `(raw item vector, weight, ts_ms)`, oldest first; each vector is L2-normalised
/// here (as [`Prepared`] normalises items), only `weight > 0` counts, and an event's weight fades
/// by `recency` ([`Recency::weight`]) with its age before the user's latest positive event and
/// the positive events after it. Events are summed in the order given (training sums them in
/// time order), so the same events give bit-identical inputs. Vectors whose length is not `dim`
/// are skipped. `None` when no positive event remains.
pub fn profile_input(
    events: &[(&[f32], f32, i64)],
    dim: usize,
    recency: Recency,
) -> Option<Vec<f32>> {
    recency_mean(events, dim, recency, true)
}

/// [`profile_input`]; `normalise_each: false` when the vectors are unit already (no copies).
fn recency_mean(
    events: &[(&[f32], f32, i64)],
    dim: usize,
    recency: Recency,
    normalise_each: bool,
) -> Option<Vec<f32>> {
    let positive: Vec<&(&[f32], f32, i64)> = events
        .iter()
        .filter(|(v, w, _)| *w > 0.0 && v.len() == dim)
        .collect();
    if positive.is_empty() {
        return None;
    }
    let meta: Vec<(f32, i64)> = positive.iter().map(|e| (e.1, e.2)).collect();
    let weights = recency.weigh(&meta);
    let mut out = vec![0.0f32; dim];
    let mut item = vec![0.0f32; dim];
    for (&&(v, _, _), w) in positive.iter().zip(weights) {
        let v = match normalise_each {
            true => {
                item.copy_from_slice(v);
                l2_normalise_rows(&mut item, dim);
                &item[..]
            }
            false => v,
        };
        out.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
    }
    l2_normalise_rows(&mut out, dim);
    Some(out)
}

/// Item popularity features: log(1+count) / max, share of the item's events in the last 10 % of
/// the log's time span, and age (time since the item's first event) / span.
fn item_features(log: &[Interaction], count: &[f32], n_items: usize) -> Vec<[f32; 3]> {
    let pos = || log.iter().filter(|x| x.weight > 0.0);
    let t_min = pos().map(|x| x.ts_ms).min().unwrap_or(0);
    let t_max = pos().map(|x| x.ts_ms).max().unwrap_or(0);
    // timestamps are the client's, any i64: differences in u64, which holds them all
    let span = t_max.abs_diff(t_min).max(1) as f32;
    let recent_from = t_max.saturating_sub((span * 0.1) as i64);
    let mut first = vec![t_max; n_items];
    let mut recent = vec![0.0f32; n_items];
    for x in pos() {
        let i = x.item as usize;
        first[i] = first[i].min(x.ts_ms);
        if x.ts_ms >= recent_from {
            recent[i] += 1.0;
        }
    }
    let max_log = count.iter().map(|c| c.ln_1p()).fold(1e-6f32, f32::max);
    (0..n_items)
        .map(|i| {
            let rate = recent[i] / count[i].max(1.0);
            [
                count[i].ln_1p() / max_log,
                rate,
                t_max.abs_diff(first[i]) as f32 / span,
            ]
        })
        .collect()
}

/// User features: mean scaled log-popularity of the user's items, and scaled log(1+activity).
fn user_features(user_items: &[Vec<u32>], count: &[f32]) -> Vec<[f32; 2]> {
    let max_log = count.iter().map(|c| c.ln_1p()).fold(1e-6f32, f32::max);
    let max_act = user_items
        .iter()
        .map(|v| (v.len() as f32).ln_1p())
        .fold(1e-6f32, f32::max);
    user_items
        .iter()
        .map(|items| {
            let pop: f32 = items
                .iter()
                .map(|&i| count[i as usize].ln_1p())
                .sum::<f32>();
            let mean = pop / items.len().max(1) as f32 / max_log;
            [mean, (items.len() as f32).ln_1p() / max_act]
        })
        .collect()
}

/// A rated interaction as read from a dataset directory (before any split).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rating {
    /// User index.
    pub user: u32,
    /// Item index.
    pub item: u32,
    /// Rating value (or 1 for implicit data).
    pub rating: f32,
    /// Event time in milliseconds.
    pub ts_ms: i64,
}

/// A dataset directory in the layout of docs/dataset-format.md (see [`load_dataset`]).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Directory name, e.g. `ml-1m`.
    pub name: String,
    /// `n_items x item_dim` embeddings, row = `item_idx`.
    pub item_emb: Vec<f32>,
    /// Embedding dimension (from `item_emb.json`).
    pub item_dim: usize,
    /// External item keys, by `item_idx`.
    pub item_keys: Vec<String>,
    /// Number of users (max `user_idx` + 1).
    pub n_users: usize,
    /// All rated interactions.
    pub ratings: Vec<Rating>,
}

impl Dataset {
    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.item_keys.len()
    }

    /// Training data from a subset of ratings (`weight` = 1 for each positive).
    pub fn training_data(&self, ratings: &[Rating]) -> TrainingData {
        TrainingData {
            item_emb: self.item_emb.clone(),
            item_dim: self.item_dim,
            user_emb: None,
            user_dim: 0,
            interactions: ratings
                .iter()
                .map(|r| Interaction {
                    user: r.user,
                    item: r.item,
                    weight: 1.0,
                    ts_ms: r.ts_ms,
                })
                .collect(),
            n_users: self.n_users,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Format {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Loads `items.tsv` (columns found by the header names `item_idx`, `item_key`),
/// `interactions.tsv` (`user_idx item_idx rating timestamp`, timestamp in Unix seconds),
/// `item_emb.f32` (little-endian f32, `rows x dim`) with `dim` from `item_emb.json`.
pub fn load_dataset(dir: &Path) -> Result<Dataset> {
    let item_keys = read_items(&dir.join("items.tsv"))?;
    let (item_emb, item_dim) = read_embeddings(dir, item_keys.len())?;
    let ratings = read_interactions(&dir.join("interactions.tsv"), item_keys.len())?;
    let n_users = ratings
        .iter()
        .map(|r| r.user as usize + 1)
        .max()
        .unwrap_or(0);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Dataset {
        name,
        item_emb,
        item_dim,
        item_keys,
        n_users,
        ratings,
    })
}

fn header_index(path: &Path, header: &[&str], name: &str) -> Result<usize> {
    header
        .iter()
        .position(|h| *h == name)
        .ok_or_else(|| format_err(path, format!("no column {name}")))
}

fn read_items(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let (ci, ck) = (
        header_index(path, &header, "item_idx")?,
        header_index(path, &header, "item_key")?,
    );
    let mut keys: Vec<Option<String>> = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let field = |c: usize| {
            cols.get(c)
                .ok_or_else(|| format_err(path, format!("line {}: short", n + 2)))
        };
        let idx: usize = field(ci)?
            .parse()
            .map_err(|_| format_err(path, format!("line {}: bad item_idx", n + 2)))?;
        if idx >= keys.len() {
            keys.resize(idx + 1, None);
        }
        keys[idx] = Some(field(ck)?.to_string());
    }
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| k.ok_or_else(|| format_err(path, format!("item_idx {i} missing"))))
        .collect()
}

fn read_embeddings(dir: &Path, n_items: usize) -> Result<(Vec<f32>, usize)> {
    let meta_path = dir.join("item_emb.json");
    let meta = std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| format_err(&meta_path, e.to_string()))?;
    let dim = meta
        .get("dim")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| format_err(&meta_path, "no dim"))? as usize;
    let path = dir.join("item_emb.f32");
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    if dim == 0 || bytes.len() != n_items * dim * 4 {
        return Err(format_err(
            &path,
            format!("{} bytes, expected {n_items} x {dim} x 4", bytes.len()),
        ));
    }
    let emb: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if emb.iter().any(|v| !v.is_finite()) {
        return Err(format_err(&path, "non-finite value"));
    }
    Ok((emb, dim))
}

fn read_interactions(path: &Path, n_items: usize) -> Result<Vec<Rating>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let cols: Vec<usize> = ["user_idx", "item_idx", "rating", "timestamp"]
        .iter()
        .map(|c| header_index(path, &header, c))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || format_err(path, format!("line {}: malformed", n + 2));
        let get = |c: usize| f.get(cols[c]).copied().ok_or_else(bad);
        let r = Rating {
            user: get(0)?.parse().map_err(|_| bad())?,
            item: get(1)?.parse().map_err(|_| bad())?,
            rating: get(2)?.parse().map_err(|_| bad())?,
            ts_ms: get(3)?.parse::<f64>().map_err(|_| bad())? as i64 * 1000,
        };
        if r.item as usize >= n_items || !r.rating.is_finite() {
            return Err(bad());
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
