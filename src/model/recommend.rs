//! `Recommend`'s retrieval through the semantic IDs, shared by the server
//! (`engine::retrieval`) and `sidb eval`'s retrieval (a), so that what is measured is what is
//! served.
//!
//! Candidates come from the item SID trie, never from a scan of the catalogue:
//! - a **beam over the user's route**: at each level the populated buckets one code below the
//!   `beam` best of the level above, ordered by the squared distance of what remains of the
//!   user's `z` (rescaled into item code space); the candidates are the items of the buckets
//!   of the deepest level that holds `candidates` items, best bucket first, until that many are
//!   in (level 1 holds the whole catalogue: the budget, not one bucket, sets the size);
//! - the **buckets of the user's newest items**: for each of up to `recent_buckets` of them, the
//!   `min_bucket` items nearest it: the buckets of a beam of `recent_beam` over the item's own
//!   `z`, from the deepest level that holds `min_bucket` items, best bucket first, until that
//!   many are in (its own bucket first, then its nearest siblings; with `recent_beam` 0 the
//!   whole deepest prefix of its SID that holds `min_bucket` items, which in a large catalogue
//!   is a level-1 bucket of hundreds);
//! - the `cooc_candidates` items with the most **co-occurrence votes** (below) that are not in
//!   yet.
//!
//! They are ranked by what the model version learned, each term a setting:
//!
//! ```text
//! w_user * cos(z_u, z_i) + w_recent * sum_r w_r cos(z_r, z_i) / sum_r w_r
//!     + w_pop * pop_i + w_cooc * votes_i
//! ```
//!
//! with `w_r` the recency weight of the user's item `r`, `pop_i` the item's popularity prior (in
//! `[0, 1]`, from the catalogue) and `votes_i = sum_r w_r sim(r, i) / sum_r w_r` over the user's
//! newest `cooc_items` items, `sim` the version's item co-occurrence neighbours
//! ([`super::neighbours`]; 0 for an item outside `r`'s list).
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::index::PointHashing;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use super::das::TrainedModel;
use super::neighbours::ItemNeighbours;
use super::{ModelError, Result};
use crate::profile::Recency;

/// Recommend's retrieval settings. The defaults were chosen on the validation pairs of the whole
/// evaluation matrix (MovieLens-100K, -1M, -1M implicit timeless, latest-small; `sidb eval
/// --on-validation --recommend-grid`, see docs/evaluation.md), by the mean Recall@10 over the
/// data sets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendSettings {
    /// Item codes kept per level of the user's route. Default 4.
    pub beam: usize,
    /// Candidates taken through the route beam (whole buckets, so it can be exceeded by the
    /// last one). Default 1,000.
    pub candidates: usize,
    /// Smallest bucket a newest item's candidates come from. Default 50.
    pub min_bucket: usize,
    /// Newest items of the user whose buckets add candidates. Default 5.
    pub recent_buckets: usize,
    /// Width of the beam over a newest item's `z` that finds its nearest buckets (0: the whole
    /// deepest prefix of its SID holding `min_bucket` items). Default 0.
    pub recent_beam: usize,
    /// Weight of the cosine of the user's `z` and the item's. Default 1.
    pub w_user: f32,
    /// Weight of the recency-weighted mean cosine of the user's items' `z` and the item's.
    /// Default 2.
    pub w_recent: f32,
    /// Weight of the popularity prior. Default 0.5.
    pub w_pop: f32,
    /// Weight of the co-occurrence votes of the user's newest items. Default 8.
    pub w_cooc: f32,
    /// Newest items of the user whose co-occurrence neighbours vote. Default 300.
    pub cooc_items: usize,
    /// Items with the most votes added to the candidates (0: the SID candidates only).
    /// Default 200.
    pub cooc_candidates: usize,
}

impl Default for RecommendSettings {
    fn default() -> Self {
        Self {
            beam: 4,
            candidates: 1000,
            min_bucket: 50,
            recent_buckets: 5,
            recent_beam: 0,
            w_user: 1.0,
            w_recent: 2.0,
            w_pop: 0.5,
            w_cooc: 8.0,
            cooc_items: 300,
            cooc_candidates: 200,
        }
    }
}

impl RecommendSettings {
    /// Checks every field, naming it (with `prefix`, e.g. `retrieval.recommend_`) in the error.
    pub fn validate(&self, prefix: &str) -> std::result::Result<(), String> {
        if self.beam == 0 || self.beam > 1024 {
            return Err(format!(
                "{prefix}beam: expected 1..=1024, got {}",
                self.beam
            ));
        }
        if self.candidates == 0 || self.candidates > 1_000_000 {
            return Err(format!(
                "{prefix}candidates: expected 1..=1000000, got {}",
                self.candidates
            ));
        }
        if self.min_bucket == 0 {
            return Err(format!("{prefix}min_bucket: expected >= 1, got 0"));
        }
        for (name, n) in [
            ("recent_buckets", self.recent_buckets),
            ("recent_beam", self.recent_beam),
        ] {
            if n > 1024 {
                return Err(format!("{prefix}{name}: expected 0..=1024, got {n}"));
            }
        }
        for (name, n) in [
            ("cooc_items", self.cooc_items),
            ("cooc_candidates", self.cooc_candidates),
        ] {
            if n > 100_000 {
                return Err(format!("{prefix}{name}: expected 0..=100000, got {n}"));
            }
        }
        for (name, w) in [
            ("w_user", self.w_user),
            ("w_recent", self.w_recent),
            ("w_pop", self.w_pop),
            ("w_cooc", self.w_cooc),
        ] {
            if !w.is_finite() || w.abs() > 1e6 {
                return Err(format!(
                    "{prefix}{name}: expected a finite weight with |w| <= 1e6, got {w}"
                ));
            }
        }
        Ok(())
    }
}

/// The item side as `Recommend` sees it: the SID trie's counts and items, and each item's `z`
/// and popularity prior.
pub trait Catalogue {
    /// An item handle.
    type Item: Copy + Eq + Hash + Ord;
    /// Items under `prefix` (all items for the empty prefix).
    fn count(&self, prefix: &[u32]) -> usize;
    /// Calls `f` for every item under `prefix`.
    fn for_each_under(&self, prefix: &[u32], f: &mut dyn FnMut(Self::Item));
    /// The item's SID codes, if it has one.
    fn codes(&self, item: Self::Item) -> Option<&[u32]>;
    /// The item's `z` under the serving model, if it has one.
    fn z(&self, item: Self::Item) -> Option<&[f32]>;
    /// The item's popularity prior in `[0, 1]`.
    fn popularity(&self, item: Self::Item) -> f32;
    /// Slots of the co-occurrence targets: every slot [`Catalogue::neighbours`] gives is below
    /// this (the votes gather in an array of this length).
    fn neighbour_slots(&self) -> usize;
    /// The co-occurrence targets of `source`, by slot, and their similarities (two slices of
    /// the same length; empty for an item without a list).
    fn neighbours(&self, source: Self::Item) -> (&[u32], &[f32]);
    /// The item in a target slot (`None`: no such item now).
    fn slot_item(&self, slot: u32) -> Option<Self::Item>;
}

/// A catalogue of rows: item `i`'s codes are `codes[i * levels..]`, its `z` `z[i * dim..]`, its
/// prior `popularity[i]`; items under a prefix in index order. The evaluation's items, and any
/// caller holding a version's items as arrays.
pub struct RowCatalogue<'a> {
    index: PrefixIndex,
    codes: &'a [u32],
    levels: usize,
    z: &'a [f32],
    dim: usize,
    popularity: Vec<f32>,
    neighbours: &'a ItemNeighbours,
}

impl<'a> RowCatalogue<'a> {
    /// Indexes `codes` (`n x levels`) with the `z`s (`n x dim`), priors (`n`) and co-occurrence
    /// neighbours of the same items.
    pub fn new(
        codes: &'a [u32],
        levels: usize,
        z: &'a [f32],
        dim: usize,
        popularity: Vec<f32>,
        neighbours: &'a ItemNeighbours,
    ) -> Self {
        Self {
            index: PrefixIndex::new(codes, levels),
            codes,
            levels,
            z,
            dim,
            popularity,
            neighbours,
        }
    }
}

impl Catalogue for RowCatalogue<'_> {
    type Item = u32;
    fn count(&self, prefix: &[u32]) -> usize {
        self.index.count(prefix)
    }
    fn for_each_under(&self, prefix: &[u32], f: &mut dyn FnMut(u32)) {
        self.index.items(prefix).iter().for_each(|&i| f(i));
    }
    fn codes(&self, item: u32) -> Option<&[u32]> {
        let at = item as usize * self.levels;
        self.codes.get(at..at + self.levels)
    }
    fn z(&self, item: u32) -> Option<&[f32]> {
        let at = item as usize * self.dim;
        self.z.get(at..at + self.dim)
    }
    fn popularity(&self, item: u32) -> f32 {
        self.popularity.get(item as usize).copied().unwrap_or(0.0)
    }
    fn neighbour_slots(&self) -> usize {
        self.neighbours.len()
    }
    fn neighbours(&self, source: u32) -> (&[u32], &[f32]) {
        self.neighbours.lists_of(source)
    }
    fn slot_item(&self, slot: u32) -> Option<u32> {
        Some(slot)
    }
}

/// Items grouped by every SID prefix (length 1..=levels).
pub struct PrefixIndex {
    buckets: BTreeMap<Vec<u32>, Vec<u32>>,
    all: Vec<u32>,
}

impl PrefixIndex {
    /// Indexes item codes (`n x levels`).
    pub fn new(codes: &[u32], levels: usize) -> Self {
        let mut buckets: BTreeMap<Vec<u32>, Vec<u32>> = BTreeMap::new();
        for (i, t) in codes.chunks(levels).enumerate() {
            for l in 1..=levels {
                buckets.entry(t[..l].to_vec()).or_default().push(i as u32);
            }
        }
        Self {
            all: (0..(codes.len() / levels.max(1)) as u32).collect(),
            buckets,
        }
    }

    /// Items under `prefix` (all items for the empty prefix).
    pub fn count(&self, prefix: &[u32]) -> usize {
        self.items(prefix).len()
    }

    /// The items under `prefix` (all items for the empty prefix).
    pub fn items(&self, prefix: &[u32]) -> &[u32] {
        match prefix.is_empty() {
            true => &self.all,
            false => self.buckets.get(prefix).map_or(&[], Vec::as_slice),
        }
    }
}

/// The user as `Recommend` sees it.
pub struct UserView<'a, I> {
    /// The user's `z` under the serving model.
    pub z: &'a [f32],
    /// The user's items, newest first, with their recency weights.
    pub recent: &'a [(I, f32)],
}

/// One level of a route beam: every populated extension of the previous level's `beam` best
/// prefixes, with the squared distance of the residual, best first.
pub type BeamLevel = Vec<(Vec<u32>, f32)>;

impl TrainedModel {
    /// The beam over a user's route into the item SID space, one [`BeamLevel`] per level: at each
    /// level the `beam` best prefixes of the level above are extended by each item code whose
    /// bucket is populated (`count(prefix) > 0`), scored by the squared distance of the residual
    /// so far, and sorted. With `beam` 1 the first of each level is the greedy route of
    /// [`TrainedModel::route_users_within`] under `count > 0`.
    pub fn route_beam(
        &self,
        user_z: &[f32],
        mean_item_norm: f32,
        beam: usize,
        count: &dyn Fn(&[u32]) -> usize,
    ) -> Result<Vec<BeamLevel>> {
        let (books, d) = self.item_books()?;
        let start = self.user_start(user_z, mean_item_norm, d)?;
        Ok(beam_over_books(&books, d, start, beam, count))
    }

    /// Where a user's route into the item codes starts: its `z`, rescaled to the mean item
    /// length when users have a quantizer of their own (their `z` live at another scale).
    fn user_start(&self, user_z: &[f32], mean_item_norm: f32, d: usize) -> Result<Vec<f32>> {
        if user_z.len() != d {
            return Err(ModelError::DimMismatch {
                expected: d,
                got: user_z.len(),
            });
        }
        Ok(match self.user_q.is_some() {
            true => scaled_to(user_z, mean_item_norm),
            false => user_z.to_vec(),
        })
    }
}

/// The beam of [`TrainedModel::route_beam`] over any residual codebooks (`books[l]` is level
/// `l`'s codes, `d` floats each) from `start`, a point of the space the books quantize.
pub fn beam_over_books(
    books: &[Vec<f32>],
    d: usize,
    start: Vec<f32>,
    beam: usize,
    count: &dyn Fn(&[u32]) -> usize,
) -> Vec<BeamLevel> {
    // (prefix, residual, cost) of the kept prefixes
    let mut kept: Vec<(Vec<u32>, Vec<f32>, f32)> = vec![(Vec::new(), start, 0.0)];
    let mut levels = Vec::with_capacity(books.len());
    let d = d.max(1);
    for book in books {
        // (kept prefix, code, cost): the residuals are made for the new kept ones only
        let mut next: Vec<(usize, u32, f32)> = Vec::new();
        let mut prefix = Vec::new();
        for (k, (p, r, _)) in kept.iter().enumerate() {
            for (c, e) in book.chunks(d).enumerate() {
                prefix.clear();
                prefix.extend_from_slice(p);
                prefix.push(c as u32);
                if count(&prefix) == 0 {
                    continue;
                }
                let cost = r.iter().zip(e).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
                next.push((k, c as u32, cost));
            }
        }
        if next.is_empty() {
            break;
        }
        let extended = |&(k, c, _): &(usize, u32, f32)| {
            let mut p = kept[k].0.clone();
            p.push(c);
            p
        };
        // best first: lower cost, then the lower prefix (the prefixes of one level have one
        // length, so comparing (kept prefix, code) is comparing the extended prefixes)
        next.sort_by(|a, b| {
            (a.2.total_cmp(&b.2))
                .then_with(|| kept[a.0].0.cmp(&kept[b.0].0))
                .then_with(|| a.1.cmp(&b.1))
        });
        levels.push(next.iter().map(|x| (extended(x), x.2)).collect());
        next.truncate(beam.max(1));
        kept = next
            .iter()
            .map(|x| {
                let (_, r, _) = &kept[x.0];
                let e = &book[x.1 as usize * d..][..d];
                let res = r.iter().zip(e).map(|(a, b)| a - b).collect();
                (extended(x), res, x.2)
            })
            .collect();
    }
    levels
}

/// `v` rescaled to length `len` (a user's `z` is routed at an item's length: the user's vector
/// lives in another tower, or is a mean of item vectors, and is shorter).
pub fn scaled_to(v: &[f32], len: f32) -> Vec<f32> {
    let s = len / l2(v).max(1e-9);
    v.iter().map(|x| x * s).collect()
}

fn l2(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Co-occurrence votes by item (hashed like points: the items are the catalogue's own
/// numbers, never a client's).
pub type Votes<I> = HashMap<I, f32, PointHashing>;

/// The co-occurrence votes of a user's newest `cooc_items` items (see the module doc); empty
/// when `w_cooc` and `cooc_candidates` are both 0. The sums gather in a per-thread array by
/// target slot (one add per list entry, no hashing); only the items voted for are hashed.
pub fn votes<C: Catalogue>(
    catalogue: &C,
    recent: &[(C::Item, f32)],
    s: &RecommendSettings,
) -> Votes<C::Item> {
    let mut votes = Votes::default();
    if s.w_cooc == 0.0 && s.cooc_candidates == 0 {
        return votes;
    }
    thread_local! {
        /// (sum by slot, all zero between calls; the slots touched)
        static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<u32>)> = Default::default();
    }
    SCRATCH.with(|scratch| {
        let (sums, touched) = &mut *scratch.borrow_mut();
        let slots = catalogue.neighbour_slots();
        if sums.len() < slots {
            sums.resize(slots, 0.0);
        }
        let mut total = 0.0f32;
        for &(r, w) in recent.iter().take(s.cooc_items).filter(|(_, w)| *w > 0.0) {
            total += w;
            let (targets, sims) = catalogue.neighbours(r);
            for (&t, &sim) in targets.iter().zip(sims) {
                if let Some(v) = sums.get_mut(t as usize) {
                    if *v == 0.0 {
                        touched.push(t);
                    }
                    *v += w * sim;
                }
            }
        }
        votes.reserve(touched.len());
        for t in touched.drain(..) {
            // a slot whose sum is still 0 (a zero similarity) may be listed twice: the first
            // take leaves 0 behind, and 0 is no vote
            let v = std::mem::take(&mut sums[t as usize]);
            if v == 0.0 || total <= 0.0 {
                continue;
            }
            if let Some(item) = catalogue.slot_item(t) {
                votes.insert(item, v / total);
            }
        }
    });
    votes
}

/// The beam over an item's own `z` through the item codebooks, width
/// [`RecommendSettings::recent_beam`] (`None`: the item has no `z` under the serving model).
pub type ItemBeam<'a, I> = dyn Fn(I) -> Option<Vec<BeamLevel>> + 'a;

/// The candidates of one user (see the module doc), deduplicated, without `exclude`d items.
/// `near` gives a newest item's beam (called only when `recent_beam` > 0).
pub fn candidates<C: Catalogue>(
    beam: &[BeamLevel],
    near: &ItemBeam<'_, C::Item>,
    catalogue: &C,
    recent: &[(C::Item, f32)],
    votes: &Votes<C::Item>,
    exclude: &dyn Fn(C::Item) -> bool,
    s: &RecommendSettings,
) -> Vec<C::Item> {
    let mut seen: HashSet<C::Item, PointHashing> = HashSet::default();
    let mut out = Vec::new();
    let mut take = |prefix: &[u32], out: &mut Vec<C::Item>| {
        catalogue.for_each_under(prefix, &mut |i| {
            if seen.insert(i) && !exclude(i) {
                out.push(i);
            }
        })
    };
    if let Some(level) = level_holding(beam, catalogue, s.candidates) {
        for (prefix, _) in level {
            if out.len() >= s.candidates {
                break;
            }
            take(prefix, &mut out);
        }
    }
    for &(item, _) in recent.iter().take(s.recent_buckets) {
        let near = match s.recent_beam {
            0 => None,
            _ => near(item).filter(|b| !b.is_empty()),
        };
        if let Some(near) = near {
            let Some(level) = level_holding(&near, catalogue, s.min_bucket) else {
                continue;
            };
            // its own bucket at that depth first (the greedy route of a quantized `z` may
            // start elsewhere), then the nearest others; counted by their sizes, not by what
            // is new in them, so an item's reach does not depend on what the others took
            let depth = level.first().map_or(0, |(p, _)| p.len());
            let own = catalogue
                .codes(item)
                .filter(|c| c.len() >= depth)
                .map(|c| &c[..depth]);
            let others = level
                .iter()
                .map(|(p, _)| &p[..])
                .filter(|&p| Some(p) != own);
            let mut reached = 0;
            for prefix in own.into_iter().chain(others) {
                if reached >= s.min_bucket {
                    break;
                }
                reached += catalogue.count(prefix);
                take(prefix, &mut out);
            }
            continue;
        }
        let Some(codes) = catalogue.codes(item) else {
            continue;
        };
        if let Some(l) = (1..=codes.len())
            .rev()
            .find(|&l| catalogue.count(&codes[..l]) >= s.min_bucket)
        {
            take(&codes[..l], &mut out);
        }
    }
    if s.cooc_candidates > 0 {
        let mut best: Vec<(C::Item, f32)> = votes
            .iter()
            .filter(|(i, _)| !seen.contains(i) && !exclude(**i))
            .map(|(i, v)| (*i, *v))
            .collect();
        keep_best(&mut best, s.cooc_candidates);
        out.extend(best.into_iter().map(|(i, _)| i));
    }
    out
}

/// The deepest level of `beam` whose buckets hold `budget` items together (level 1, the whole
/// populated catalogue, when none does; `None` for an empty beam).
fn level_holding<'b, C: Catalogue>(
    beam: &'b [BeamLevel],
    catalogue: &C,
    budget: usize,
) -> Option<&'b BeamLevel> {
    let holds = |level: &BeamLevel| level.iter().map(|(p, _)| catalogue.count(p)).sum::<usize>();
    let at = beam.iter().rposition(|l| holds(l) >= budget).unwrap_or(0);
    beam.get(at)
}

/// `q . v / |v|`: the cosine of `q` and `v` times `|q|` (the cosine itself for a unit `q`); 0 for
/// a zero or non-finite `v`.
pub fn dot_over_norm(q: &[f32], v: &[f32]) -> f32 {
    let n = l2(v);
    match n > 0.0 && n.is_finite() {
        true => q.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() / n,
        false => 0.0,
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = l2(v);
    match n > 0.0 && n.is_finite() {
        true => v.iter().map(|x| x / n).collect(),
        false => vec![0.0; v.len()],
    }
}

/// Scores `candidates` for `user` (see the module doc) and returns the best `k`, best first, ties
/// by item.
pub fn rank<C: Catalogue>(
    catalogue: &C,
    user: &UserView<'_, C::Item>,
    votes: &Votes<C::Item>,
    candidates: &[C::Item],
    k: usize,
    s: &RecommendSettings,
) -> Vec<(C::Item, f32)> {
    // Both cosine terms are linear in the candidate's unit `z`, so they fold into one query:
    // w_user u + w_recent sum_r w_r r / sum_r w_r, over unit vectors, one dot per candidate.
    let mut query: Vec<f32> = unit(user.z).iter().map(|x| s.w_user * x).collect();
    if s.w_recent != 0.0 {
        let mut mean = vec![0.0f32; query.len()];
        let mut total = 0.0f32;
        for &(i, w) in user.recent.iter().filter(|(_, w)| *w > 0.0) {
            let Some(z) = catalogue.z(i).filter(|z| z.len() == mean.len()) else {
                continue;
            };
            let r = unit(z);
            mean.iter_mut().zip(&r).for_each(|(m, x)| *m += w * x);
            total += w;
        }
        if total > 0.0 {
            let scale = s.w_recent / total;
            query
                .iter_mut()
                .zip(&mean)
                .for_each(|(q, m)| *q += scale * m);
        }
    }
    let mut scored: Vec<(C::Item, f32)> = candidates
        .iter()
        .filter_map(|&i| {
            let z = catalogue.z(i).filter(|z| z.len() == query.len())?;
            let mut score = dot_over_norm(&query, z);
            if s.w_pop != 0.0 {
                score += s.w_pop * catalogue.popularity(i);
            }
            if s.w_cooc != 0.0 {
                score += s.w_cooc * votes.get(&i).copied().unwrap_or(0.0);
            }
            Some((i, score))
        })
        .collect();
    keep_best(&mut scored, k);
    scored
}

/// Keeps the `k` best of `(item, score)` pairs, best first: higher score, then lower item.
pub fn keep_best<I: Ord>(v: &mut Vec<(I, f32)>, k: usize) {
    let by = |a: &(I, f32), b: &(I, f32)| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    if v.len() > k {
        v.select_nth_unstable_by(k, by);
        v.truncate(k);
    }
    v.sort_by(by);
}

/// `Recommend` for one user: the route beam, the candidates, the ranking.
pub fn recommend<C: Catalogue>(
    model: &TrainedModel,
    mean_item_norm: f32,
    catalogue: &C,
    user: &UserView<'_, C::Item>,
    k: usize,
    exclude: &dyn Fn(C::Item) -> bool,
    s: &RecommendSettings,
) -> Result<Vec<(C::Item, f32)>> {
    let count = |p: &[u32]| catalogue.count(p);
    // the codebooks are copied out of the model once per call, for the user's beam and the
    // newest items' beams alike
    let (books, d) = model.item_books()?;
    let start = model.user_start(user.z, mean_item_norm, d)?;
    let beam = beam_over_books(&books, d, start, s.beam, &count);
    // an item's `z` lives in the item space already: no rescaling
    let near = |i| {
        let z = catalogue.z(i).filter(|z| z.len() == d)?;
        Some(beam_over_books(
            &books,
            d,
            z.to_vec(),
            s.recent_beam,
            &count,
        ))
    };
    let votes = votes(catalogue, user.recent, s);
    let cands = candidates(&beam, &near, catalogue, user.recent, &votes, exclude, s);
    Ok(rank(catalogue, user, &votes, &cands, k, s))
}

/// A user's positive events (`(item, weight, time ms)`, oldest first) as [`UserView::recent`]:
/// newest first, each weighted as in the user's profile input ([`Recency::weigh`]), without the
/// events that weigh nothing.
pub fn recent_weights<I: Copy>(events: &[(I, f32, i64)], recency: Recency) -> Vec<(I, f32)> {
    let meta: Vec<(f32, i64)> = events.iter().map(|e| (e.1, e.2)).collect();
    let weights = recency.weigh(&meta);
    let mut out: Vec<(I, f32)> = events
        .iter()
        .zip(weights)
        .filter(|(_, w)| *w > 0.0)
        .map(|(e, w)| (e.0, w))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::data::Prepared;
    use crate::model::synth::{generate, SynthSpec};
    use crate::model::Method;

    /// Items with fixed codes and `z`s, the prefix counts computed from the codes.
    struct Toy {
        codes: Vec<Vec<u32>>,
        z: Vec<Vec<f32>>,
        pop: Vec<f32>,
        /// the co-occurrence lists, by item
        nb: ItemNeighbours,
        /// slots whose item is gone (deleted since the lists were built)
        gone: Vec<u32>,
    }

    impl Toy {
        fn under(&self, prefix: &[u32]) -> Vec<u32> {
            (0..self.codes.len() as u32)
                .filter(|&i| self.codes[i as usize].starts_with(prefix))
                .collect()
        }
    }

    impl Catalogue for Toy {
        type Item = u32;
        fn count(&self, prefix: &[u32]) -> usize {
            self.under(prefix).len()
        }
        fn for_each_under(&self, prefix: &[u32], f: &mut dyn FnMut(u32)) {
            self.under(prefix).into_iter().for_each(f)
        }
        fn codes(&self, item: u32) -> Option<&[u32]> {
            self.codes.get(item as usize).map(Vec::as_slice)
        }
        fn z(&self, item: u32) -> Option<&[f32]> {
            self.z.get(item as usize).map(Vec::as_slice)
        }
        fn popularity(&self, item: u32) -> f32 {
            self.pop[item as usize]
        }
        fn neighbour_slots(&self) -> usize {
            self.codes.len()
        }
        fn neighbours(&self, source: u32) -> (&[u32], &[f32]) {
            self.nb.lists_of(source)
        }
        fn slot_item(&self, slot: u32) -> Option<u32> {
            (!self.gone.contains(&slot)).then_some(slot)
        }
    }

    /// Co-occurrence lists of `n` items from `(source, target, sim)` triples.
    fn lists(n: u32, triples: &[(u32, u32, f32)]) -> ItemNeighbours {
        let mut by_source = vec![Vec::new(); n as usize];
        for &(s, t, sim) in triples {
            by_source[s as usize].push((t, sim));
        }
        ItemNeighbours::from_lists(by_source)
    }

    fn none() -> Votes<u32> {
        Votes::default()
    }

    /// 4 x 4 buckets of 5 items each: item `i` has codes `[i / 20, (i / 5) % 4]`.
    fn toy() -> Toy {
        let n = 80u32;
        Toy {
            codes: (0..n).map(|i| vec![i / 20, (i / 5) % 4]).collect(),
            z: (0..n).map(|i| vec![1.0, i as f32 / n as f32]).collect(),
            pop: (0..n).map(|i| i as f32 / n as f32).collect(),
            nb: lists(
                n,
                &[(0, 79, 0.5), (0, 60, 0.25), (1, 60, 1.0), (2, 61, 1.0)],
            ),
            gone: Vec::new(),
        }
    }

    fn beam_of(prefixes: &[&[u32]]) -> Vec<BeamLevel> {
        // level 1: the distinct first codes, in order; level 2: the prefixes as given
        let mut l1: Vec<Vec<u32>> = Vec::new();
        for p in prefixes {
            if !l1.contains(&p[..1].to_vec()) {
                l1.push(p[..1].to_vec());
            }
        }
        vec![
            l1.into_iter().map(|p| (p, 0.0)).collect(),
            prefixes.iter().map(|p| (p.to_vec(), 0.0)).collect(),
        ]
    }

    #[test]
    fn a_prefix_index_lists_and_counts_every_prefix() {
        let codes = [0, 0, 0, 1, 0, 1, 1, 0];
        let idx = PrefixIndex::new(&codes, 2);
        assert_eq!(idx.items(&[0, 1]), [1u32, 2]);
        assert_eq!(idx.items(&[0]), [0u32, 1, 2]);
        assert_eq!(idx.items(&[]), [0u32, 1, 2, 3]);
        assert!(idx.items(&[1, 1]).is_empty());
        assert_eq!(
            (idx.count(&[1]), idx.count(&[]), idx.count(&[2])),
            (1, 4, 0)
        );
    }

    #[test]
    fn beam_candidates_reach_items_outside_the_first_bucket() {
        let t = toy();
        let s = RecommendSettings {
            candidates: 12,
            recent_buckets: 0,
            ..RecommendSettings::default()
        };
        let beam = beam_of(&[&[1, 2], &[3, 0], &[1, 1]]);
        let got = candidates(&beam, &|_| None, &t, &[], &none(), &|_| false, &s);
        // whole buckets, best first, until the budget of 12 is in: 5 + 5 + 5
        let want: Vec<u32> = [t.under(&[1, 2]), t.under(&[3, 0]), t.under(&[1, 1])].concat();
        assert_eq!(got, want);
        assert!(got.iter().any(|i| !t.under(&[1, 2]).contains(i)));
        // one bucket's worth of budget: the first bucket alone
        let one = RecommendSettings { candidates: 5, ..s };
        assert_eq!(
            candidates(&beam, &|_| None, &t, &[], &none(), &|_| false, &one),
            t.under(&[1, 2])
        );
    }

    #[test]
    fn a_budget_beyond_the_deepest_beam_takes_a_shallower_level() {
        let t = toy();
        let beam = beam_of(&[&[1, 2], &[3, 0]]);
        // level 2 holds 10 < 30: level 1's beam ([1], [3]: 40 items) is used, whole buckets
        let s = RecommendSettings {
            candidates: 30,
            recent_buckets: 0,
            ..RecommendSettings::default()
        };
        let got = candidates(&beam, &|_| None, &t, &[], &none(), &|_| false, &s);
        assert_eq!(got, [t.under(&[1]), t.under(&[3])].concat());
        // beyond every level: level 1, all of it
        let big = RecommendSettings {
            candidates: 1000,
            ..s
        };
        assert_eq!(
            candidates(&beam, &|_| None, &t, &[], &none(), &|_| false, &big).len(),
            40
        );
    }

    #[test]
    fn the_newest_items_add_their_buckets_and_exclusions_hold() {
        let t = toy();
        let beam = beam_of(&[&[0, 0]]);
        let s = RecommendSettings {
            candidates: 5,
            min_bucket: 5,
            recent_buckets: 1,
            ..RecommendSettings::default()
        };
        // the newest item 47 ([2, 1]) adds its bucket 45..50; the older 70 is past the window
        let recent = [(47u32, 1.0), (70, 0.5)];
        let got = candidates(
            &beam,
            &|_| None,
            &t,
            &recent,
            &none(),
            &|i| i == 46 || i == 2,
            &s,
        );
        let mut want: Vec<u32> = [0, 1, 3, 4, 45, 47, 48, 49].to_vec();
        want.sort();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, want);
        // a bucket below min_bucket is widened to the prefix that holds it
        let wide = RecommendSettings { min_bucket: 6, ..s };
        let got = candidates(&beam, &|_| None, &t, &recent, &none(), &|_| false, &wide);
        assert!(t.under(&[2]).iter().all(|i| got.contains(i)));
    }

    #[test]
    fn a_newest_item_adds_its_nearest_buckets_not_a_whole_level() {
        let t = toy();
        let beam = beam_of(&[&[0, 0]]);
        // the beam over item 47's own z: its bucket [2, 1], then its siblings by distance
        let near = |i: u32| {
            (i == 47).then(|| {
                vec![
                    vec![(vec![2], 0.0), (vec![3], 1.0)],
                    vec![
                        (vec![2, 1], 0.0),
                        (vec![2, 3], 0.5),
                        (vec![2, 0], 0.7),
                        (vec![2, 2], 0.9),
                    ],
                ]
            })
        };
        let s = RecommendSettings {
            candidates: 5,
            min_bucket: 6,
            recent_buckets: 1,
            recent_beam: 1,
            ..RecommendSettings::default()
        };
        let recent = [(47u32, 1.0)];
        let got = candidates(&beam, &near, &t, &recent, &none(), &|_| false, &s);
        // 5 of the user's bucket, then 47's bucket (5 < 6) and its nearest sibling: 10 of
        // [2]'s 20
        let want = [t.under(&[0, 0]), t.under(&[2, 1]), t.under(&[2, 3])].concat();
        assert_eq!(got, want);
        // the nearest buckets count by their sizes: what the user's beam took is no reason to
        // reach further
        let user_took = beam_of(&[&[2, 1]]);
        let got = candidates(&user_took, &near, &t, &recent, &none(), &|_| false, &s);
        assert_eq!(got, [t.under(&[2, 1]), t.under(&[2, 3])].concat());
        // its own bucket comes first even where the beam over its quantized z starts elsewhere
        let elsewhere = |i: u32| {
            (i == 47).then(|| {
                vec![
                    vec![(vec![2], 0.0)],
                    vec![(vec![2, 0], 0.1), (vec![2, 1], 0.2)],
                ]
            })
        };
        let got = candidates(&beam, &elsewhere, &t, &recent, &none(), &|_| false, &s);
        assert_eq!(
            got,
            [t.under(&[0, 0]), t.under(&[2, 1]), t.under(&[2, 0])].concat()
        );
        // an item without a beam keeps the whole prefix; recent_beam 0 never asks for one
        let far = [(70u32, 1.0)];
        let got = candidates(&beam, &near, &t, &far, &none(), &|_| false, &s);
        assert_eq!(got, [t.under(&[0, 0]), t.under(&[3])].concat());
        let whole = RecommendSettings {
            recent_beam: 0,
            ..s
        };
        let got = candidates(
            &beam,
            &|_| panic!("not asked"),
            &t,
            &recent,
            &none(),
            &|_| false,
            &whole,
        );
        assert_eq!(got, [t.under(&[0, 0]), t.under(&[2])].concat());
    }

    #[test]
    fn ranking_weighs_the_user_the_newest_items_and_popularity() {
        let t = Toy {
            codes: vec![vec![0]; 3],
            // the user points along x, item 1 is close to it, item 2 to the newest item 0
            z: vec![vec![0.0, 1.0], vec![1.0, 0.1], vec![0.1, 1.0]],
            pop: vec![0.0, 0.0, 1.0],
            nb: lists(3, &[]),
            gone: Vec::new(),
        };
        let recent = [(0u32, 1.0)];
        let user = UserView {
            z: &[1.0, 0.0],
            recent: &recent,
        };
        let only_user = RecommendSettings {
            w_user: 1.0,
            w_recent: 0.0,
            w_pop: 0.0,
            ..RecommendSettings::default()
        };
        let top = |s: &RecommendSettings| rank(&t, &user, &none(), &[1, 2], 2, s)[0].0;
        assert_eq!(top(&only_user), 1);
        let only_recent = RecommendSettings {
            w_user: 0.0,
            w_recent: 1.0,
            ..only_user
        };
        assert_eq!(top(&only_recent), 2);
        // popularity tips an even race
        let even = RecommendSettings {
            w_user: 1.0,
            w_recent: 0.0,
            w_pop: 2.0,
            ..only_user
        };
        assert_eq!(top(&even), 2);
        // scores are cosines (no length preference), best first, k cuts
        let got = rank(&t, &user, &none(), &[1, 2], 1, &only_user);
        assert_eq!(got.len(), 1);
        assert!((got[0].1 - 1.0 / 1.01f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn votes_sum_each_list_entry_once_and_leave_nothing_for_the_next_user() {
        let mut t = toy();
        // item 3 lists 5 with similarity 0 (listed, but no vote), then 6 twice as a target
        t.nb = lists(
            80,
            &[
                (3, 5, 0.0),
                (3, 6, 0.5),
                (4, 5, 0.0),
                (4, 6, 0.25),
                (4, 70, 1.0),
            ],
        );
        let s = RecommendSettings::default();
        let recent = [(3u32, 1.0), (4, 3.0)];
        let dense = votes(&t, &recent, &s);
        // the sums a map would give, by hand: 6: (0.5 + 3 x 0.25) / 4, 70: 3 / 4
        let want: BTreeMap<u32, f32> = [(6, 1.25 / 4.0), (70, 0.75)].into_iter().collect();
        let got: BTreeMap<u32, f32> = dense.iter().map(|(i, v)| (*i, *v)).collect();
        assert_eq!(got, want);
        // the next user starts from zero sums, in the same thread
        let again = votes(&t, &[(4u32, 1.0)], &s);
        let got: BTreeMap<u32, f32> = again.iter().map(|(i, v)| (*i, *v)).collect();
        assert_eq!(got, [(6, 0.25), (70, 1.0)].into_iter().collect());
        // a slot without an item now gets no vote and does not disturb the others
        t.gone = vec![70];
        let gone = votes(&t, &recent, &s);
        assert_eq!(gone.keys().copied().collect::<Vec<_>>(), vec![6]);
        assert!((gone[&6] - 1.25 / 4.0).abs() < 1e-6);
    }

    #[test]
    fn co_occurrence_votes_add_candidates_outside_the_sid_buckets_and_rank_them() {
        let t = toy();
        let beam = beam_of(&[&[0, 0]]);
        let s = RecommendSettings {
            candidates: 5,
            recent_buckets: 0,
            w_user: 0.0,
            w_recent: 0.0,
            w_pop: 0.0,
            w_cooc: 1.0,
            cooc_items: 2,
            cooc_candidates: 2,
            ..RecommendSettings::default()
        };
        // newest 0 (weight 3), then 1 (weight 1); 2 is past cooc_items
        let recent = [(0u32, 3.0), (1, 1.0), (2, 1.0)];
        let votes = votes(&t, &recent, &s);
        // 60: (3 x 0.25 + 1 x 1) / 4; 79: 3 x 0.5 / 4; 61 has no vote
        assert_eq!(votes.len(), 2);
        assert!((votes[&60] - 1.75 / 4.0).abs() < 1e-6);
        assert!((votes[&79] - 1.5 / 4.0).abs() < 1e-6);
        let cands = candidates(&beam, &|_| None, &t, &recent, &votes, &|_| false, &s);
        // the bucket [0, 0] (items 0-4), then the best-voted items, which no bucket held
        assert_eq!(cands, vec![0, 1, 2, 3, 4, 60, 79]);
        let top = rank(
            &t,
            &UserView {
                z: &[1.0, 0.0],
                recent: &recent,
            },
            &votes,
            &cands,
            2,
            &s,
        );
        assert_eq!(top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![60, 79]);
        // an excluded item is no candidate; cooc_candidates 0 keeps the SID candidates only
        let cands = candidates(&beam, &|_| None, &t, &recent, &votes, &|i| i == 60, &s);
        assert_eq!(cands, vec![0, 1, 2, 3, 4, 79]);
        let sid_only = RecommendSettings {
            cooc_candidates: 0,
            ..s
        };
        let cands = candidates(&beam, &|_| None, &t, &recent, &votes, &|_| false, &sid_only);
        assert_eq!(cands, vec![0, 1, 2, 3, 4]);
        // no weight and no candidates: no votes are gathered
        let off = RecommendSettings {
            w_cooc: 0.0,
            ..sid_only
        };
        assert!(super::votes(&t, &recent, &off).is_empty());
    }

    #[test]
    fn recent_weights_follow_the_profile_recency_newest_first() {
        let r = Recency {
            half_life_days: 1e9,
            half_life_events: 1.0,
        };
        let events = [(7u32, 1.0, 10), (8, 0.0, 20), (9, 2.0, 30)];
        let got = recent_weights(&events, r);
        // the negative-free newest first: 9 (weight 2 x 1), then 7 (1 x 1/2)
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 9);
        assert!((got[0].1 - 2.0).abs() < 1e-6);
        assert_eq!(got[1].0, 7);
        assert!((got[1].1 - 0.5).abs() < 1e-6);
    }

    #[test]
    fn the_route_beam_keeps_the_greedy_route_and_widens_it() {
        let s = generate(&SynthSpec {
            n_items: 128,
            n_users: 64,
            ..SynthSpec::default()
        });
        let cfg = crate::model::synth::small_config();
        let prep = Prepared::new(&s.data, cfg.recency()).expect("prep");
        let (model, _) =
            crate::model::trainer::train_prepared(&prep, Method::Das, &cfg).expect("train");
        let items = model.encode_items(&prep.x_item).expect("items");
        let users = model.encode_users(&prep.x_user).expect("users");
        let mut counts: BTreeMap<Vec<u32>, usize> = BTreeMap::new();
        for c in items.codes.chunks(2) {
            *counts.entry(c[..1].to_vec()).or_default() += 1;
            *counts.entry(c.to_vec()).or_default() += 1;
        }
        let count = |p: &[u32]| counts.get(p).copied().unwrap_or(0);
        let mean = crate::model::mean_length(items.z.chunks(items.dim));
        let greedy = model
            .route_users(&users, &items.z, &|p| count(p) > 0)
            .expect("route");
        for u in 0..prep.n_users {
            let z = &users.z[u * users.dim..][..users.dim];
            let one = model.route_beam(z, mean, 1, &count).expect("beam");
            assert_eq!(one.len(), 2);
            assert_eq!(one[1][0].0, greedy[u * 2..u * 2 + 2], "user {u}");
            let four = model.route_beam(z, mean, 4, &count).expect("beam");
            // level 1 lists every populated code; level 2 the children of the best 4 only
            let populated_l1 = counts.keys().filter(|k| k.len() == 1).count();
            assert_eq!(four[0].len(), populated_l1);
            assert!(four[1]
                .iter()
                .all(|(p, _)| four[0][..4].iter().any(|(q, _)| q[0] == p[0])));
            for level in &four {
                assert!(
                    level.iter().all(|(p, _)| count(p) > 0),
                    "only populated buckets"
                );
                assert!(level.windows(2).all(|w| w[0].1 <= w[1].1), "best first");
            }
            // the wider beam finds the greedy route or a closer one
            assert!(four[1][0].1 <= one[1][0].1 + 1e-5);
        }
    }
}
