//! Item co-occurrence neighbours: what the interaction log says goes with what, learned with
//! each model version beside the semantic IDs and used by `Recommend`'s ranking
//! ([`super::recommend`]).
//!
//! The similarity of items `a` and `b` is the cosine of their (binary) user sets,
//! `|U_a & U_b| / (sqrt(|U_a| |U_b|) + shrink)`. Each **target** item keeps its `k` most similar
//! **source** items (item-kNN with a neighbourhood: a target is scored only through the items
//! most like it, so that a popular item that co-occurs with everything does not crowd every
//! list). The lists are stored by source, so that a user's newest items give, each, the targets
//! they vote for: `score(i) = sum_r w_r sim(r, i)` over the user's items `r` with recency
//! weights `w_r`. A source's list is cut at `max_fanout` (its best targets), which bounds the
//! work of one request on a large catalogue.
//!
//! Cost of a build: `sum_u min(|I_u|, user_cap)^2` additions (a user's newest `user_cap`
//! positives count), one dense accumulator of the catalogue's size; memory: 8 bytes per kept
//! pair, at most `k` per item.
use serde::{Deserialize, Serialize};

use super::recommend::keep_best;

/// How the neighbours are built.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeighbourSettings {
    /// Sources kept per target item (0 builds no neighbours). Default 100.
    pub k: usize,
    /// Added to the cosine's denominator: pairs seen by few users count less. Default 0.
    pub shrink: f32,
    /// A user's newest positives that count (bounds the cost of very active users).
    /// Default 1,000.
    pub user_cap: usize,
    /// Targets kept per source item, the most similar first. Default 2,000.
    pub max_fanout: usize,
}

impl Default for NeighbourSettings {
    fn default() -> Self {
        Self {
            k: 100,
            shrink: 0.0,
            user_cap: 1000,
            max_fanout: 2000,
        }
    }
}

impl NeighbourSettings {
    /// Checks every field, naming it (with `prefix`, e.g. `training.neighbours_`) in the error.
    pub fn validate(&self, prefix: &str) -> std::result::Result<(), String> {
        if self.k > 10_000 {
            return Err(format!("{prefix}k: expected 0..=10000, got {}", self.k));
        }
        if !self.shrink.is_finite() || !(0.0..=1e6).contains(&self.shrink) {
            return Err(format!(
                "{prefix}shrink: expected a finite value in 0..=1e6, got {}",
                self.shrink
            ));
        }
        if self.user_cap == 0 {
            return Err(format!("{prefix}user_cap: expected >= 1, got 0"));
        }
        if self.max_fanout == 0 {
            return Err(format!("{prefix}max_fanout: expected >= 1, got 0"));
        }
        Ok(())
    }
}

/// Each source item's targets with their similarities, best first (a compressed sparse row
/// matrix over the item indices of the data it was built from).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemNeighbours {
    offsets: Vec<u64>,
    targets: Vec<u32>,
    sims: Vec<f32>,
}

impl Default for ItemNeighbours {
    fn default() -> Self {
        Self::from_lists(Vec::new())
    }
}

/// Why stored neighbours cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedNeighbours(pub String);

impl ItemNeighbours {
    /// Builds the neighbours of `n_items` items from each user's positive items (in time order;
    /// repeats count once).
    pub fn build(user_items: &[Vec<u32>], n_items: usize, s: &NeighbourSettings) -> Self {
        if s.k == 0 || n_items == 0 {
            return Self::from_lists(vec![Vec::new(); n_items]);
        }
        // each user's distinct newest `user_cap` items, and each item's users
        let users: Vec<Vec<u32>> = user_items
            .iter()
            .map(|items| {
                let mut seen = std::collections::HashSet::new();
                let mut newest: Vec<u32> = items
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&i| (i as usize) < n_items && seen.insert(i))
                    .take(s.user_cap)
                    .collect();
                newest.sort_unstable();
                newest
            })
            .collect();
        let mut item_users: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        for (u, items) in users.iter().enumerate() {
            for &i in items {
                item_users[i as usize].push(u as u32);
            }
        }
        let norm: Vec<f32> = item_users.iter().map(|u| (u.len() as f32).sqrt()).collect();
        // per target: co-occurrence counts with every item its users touched, the best k sources
        let mut acc = vec![0u32; n_items];
        let mut touched: Vec<u32> = Vec::new();
        let mut by_source: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_items];
        let mut best: Vec<(u32, f32)> = Vec::new();
        for (target, us) in item_users.iter().enumerate() {
            for &u in us {
                for &r in &users[u as usize] {
                    if acc[r as usize] == 0 {
                        touched.push(r);
                    }
                    acc[r as usize] += 1;
                }
            }
            best.clear();
            for &r in &touched {
                let c = std::mem::take(&mut acc[r as usize]);
                if r as usize == target {
                    continue;
                }
                let sim = c as f32 / (norm[target] * norm[r as usize] + s.shrink);
                if sim > 0.0 && sim.is_finite() {
                    best.push((r, sim));
                }
            }
            touched.clear();
            keep_best(&mut best, s.k);
            for &(r, sim) in &best {
                by_source[r as usize].push((target as u32, sim));
            }
        }
        by_source
            .iter_mut()
            .for_each(|list| keep_best(list, s.max_fanout));
        Self::from_lists(by_source)
    }

    /// From one list of `(target, similarity)` per source.
    pub fn from_lists(lists: Vec<Vec<(u32, f32)>>) -> Self {
        let mut out = Self {
            offsets: Vec::with_capacity(lists.len() + 1),
            targets: Vec::new(),
            sims: Vec::new(),
        };
        out.offsets.push(0);
        for list in lists {
            for (t, s) in list {
                out.targets.push(t);
                out.sims.push(s);
            }
            out.offsets.push(out.targets.len() as u64);
        }
        out
    }

    /// Number of source items (the catalogue it was built over).
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether it holds no source item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of kept pairs.
    pub fn pairs(&self) -> usize {
        self.targets.len()
    }

    /// The targets of `source` with their similarities, best first (none for an unknown one).
    pub fn of(&self, source: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (targets, sims) = self.lists_of(source);
        targets.iter().copied().zip(sims.iter().copied())
    }

    /// [`ItemNeighbours::of`] as two slices of the same length: targets and similarities.
    pub fn lists_of(&self, source: u32) -> (&[u32], &[f32]) {
        let s = source as usize;
        let range = match (self.offsets.get(s), self.offsets.get(s + 1)) {
            (Some(&a), Some(&b)) => a as usize..b as usize,
            _ => 0..0,
        };
        (&self.targets[range.clone()], &self.sims[range])
    }

    /// The little-endian encoding: `n` (u64), `pairs` (u64), the `n + 1` offsets (u64), the
    /// targets (u32), the similarities (f32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.offsets.len() + 8 * self.targets.len());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.pairs() as u64).to_le_bytes());
        self.offsets
            .iter()
            .for_each(|o| out.extend_from_slice(&o.to_le_bytes()));
        self.targets
            .iter()
            .for_each(|t| out.extend_from_slice(&t.to_le_bytes()));
        self.sims
            .iter()
            .for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
        out
    }

    /// Decodes [`ItemNeighbours::to_bytes`], checking every length, offset, target and
    /// similarity.
    pub fn from_bytes(b: &[u8]) -> std::result::Result<Self, MalformedNeighbours> {
        let bad = |m: String| MalformedNeighbours(m);
        let word = |at: usize| -> std::result::Result<u64, MalformedNeighbours> {
            b.get(at..at + 8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .ok_or_else(|| bad(format!("truncated at byte {at} of {}", b.len())))
        };
        let n = word(0)?;
        let pairs = word(8)?;
        (n + 1)
            .checked_mul(8)
            .and_then(|o| pairs.checked_mul(8).and_then(|p| o.checked_add(p)))
            .and_then(|x| x.checked_add(16))
            .filter(|&x| x == b.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "{n} items and {pairs} pairs do not fit {} bytes",
                    b.len()
                ))
            })?;
        let (n, pairs) = (n as usize, pairs as usize);
        let mut offsets = Vec::with_capacity(n + 1);
        for k in 0..=n {
            offsets.push(word(16 + 8 * k)?);
        }
        if offsets[0] != 0 || offsets[n] != pairs as u64 || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err(bad("offsets are not a partition of the pairs".into()));
        }
        let at = 16 + 8 * (n + 1);
        let four = |k: usize| -> [u8; 4] { b[k..k + 4].try_into().expect("4 bytes") };
        let targets: Vec<u32> = (0..pairs)
            .map(|k| u32::from_le_bytes(four(at + 4 * k)))
            .collect();
        let sims: Vec<f32> = (0..pairs)
            .map(|k| f32::from_le_bytes(four(at + 4 * pairs + 4 * k)))
            .collect();
        if let Some(t) = targets.iter().find(|&&t| t as usize >= n) {
            return Err(bad(format!("target {t} is not below {n} items")));
        }
        if let Some(s) = sims.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(bad(format!("similarity {s} is not a finite value >= 0")));
        }
        Ok(Self {
            offsets,
            targets,
            sims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dense cosines, then each target's best `k` sources, the reference the build must
    /// equal.
    fn reference(user_items: &[Vec<u32>], n: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
        let sets: Vec<std::collections::BTreeSet<u32>> = (0..n as u32)
            .map(|i| {
                (0..user_items.len() as u32)
                    .filter(|&u| user_items[u as usize].contains(&i))
                    .collect()
            })
            .collect();
        let mut by_source = vec![Vec::new(); n];
        for t in 0..n {
            let mut cands: Vec<(u32, f32)> = (0..n)
                .filter(|&r| r != t)
                .filter_map(|r| {
                    let c = sets[t].intersection(&sets[r]).count() as f32;
                    let (a, b) = (sets[t].len() as f32, sets[r].len() as f32);
                    let s = c / (a.sqrt() * b.sqrt());
                    (c > 0.0).then_some((r as u32, s))
                })
                .collect();
            cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            cands.truncate(k);
            for (r, s) in cands {
                by_source[r as usize].push((t as u32, s));
            }
        }
        for l in &mut by_source {
            l.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        by_source
    }

    fn log(seed: u64, users: usize, n: u32) -> Vec<Vec<u32>> {
        let mut x = seed;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        (0..users)
            .map(|_| (0..2 + next() % 8).map(|_| next() % n).collect())
            .collect()
    }

    #[test]
    fn the_build_equals_the_dense_cosines_cut_per_target() {
        let ui = log(7, 60, 25);
        for k in [1, 3, 100] {
            let s = NeighbourSettings {
                k,
                ..NeighbourSettings::default()
            };
            let got = ItemNeighbours::build(&ui, 25, &s);
            let want = reference(&ui, 25, k);
            for (src, w) in want.iter().enumerate() {
                let g: Vec<(u32, f32)> = got.of(src as u32).collect();
                assert_eq!(g.len(), w.len(), "k {k} source {src} {g:?} {w:?}");
                for (a, b) in g.iter().zip(w) {
                    assert_eq!(a.0, b.0, "k {k} source {src}");
                    assert!((a.1 - b.1).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn a_popular_item_does_not_reach_every_target_with_a_small_k() {
        // item 0 is in every user's set; items 1-4 and 5-8 form two groups
        let mut ui = Vec::new();
        for u in 0..20u32 {
            let g = if u % 2 == 0 { 1 } else { 5 };
            ui.push(vec![0, g, g + 1, g + 2, g + 3]);
        }
        let s = NeighbourSettings {
            k: 2,
            ..NeighbourSettings::default()
        };
        let nb = ItemNeighbours::build(&ui, 9, &s);
        // target 1's best two sources are its group mates (cosine 1), not item 0 (1/sqrt 2)
        assert_eq!(nb.of(0).count(), 0, "item 0 is nobody's top 2");
        // and each group target's two sources are its group mates
        for t in 1..=8u32 {
            let g = if t <= 4 { 1..=4 } else { 5..=8 };
            let sources: Vec<u32> = (0..9).filter(|&s| nb.of(s).any(|x| x.0 == t)).collect();
            assert_eq!(sources.len(), 2, "target {t}: {sources:?}");
            assert!(
                sources.iter().all(|s| g.contains(s)),
                "target {t}: {sources:?}"
            );
        }
        // every target keeps at most k sources
        let mut per_target = [0usize; 9];
        (0..9).for_each(|s| nb.of(s).for_each(|(t, _)| per_target[t as usize] += 1));
        assert!(per_target.iter().all(|&c| c <= 2));
    }

    #[test]
    fn repeats_count_once_and_the_user_cap_keeps_the_newest() {
        let ui = vec![vec![0, 0, 0, 1], vec![0, 1]];
        let nb = ItemNeighbours::build(&ui, 2, &NeighbourSettings::default());
        let got: Vec<(u32, f32)> = nb.of(0).collect();
        assert_eq!(got.len(), 1);
        assert!((got[0].1 - 1.0).abs() < 1e-6, "{got:?}");
        // user_cap 1: each user counts only its newest item, nothing co-occurs
        let one = NeighbourSettings {
            user_cap: 1,
            ..NeighbourSettings::default()
        };
        assert_eq!(ItemNeighbours::build(&ui, 2, &one).pairs(), 0);
        // max_fanout cuts a source's list to its best targets
        let ui = log(3, 80, 12);
        let cut = NeighbourSettings {
            max_fanout: 2,
            ..NeighbourSettings::default()
        };
        let full = ItemNeighbours::build(&ui, 12, &NeighbourSettings::default());
        let short = ItemNeighbours::build(&ui, 12, &cut);
        for s in 0..12 {
            let f: Vec<_> = full.of(s).take(2).collect();
            assert_eq!(short.of(s).collect::<Vec<_>>(), f);
        }
    }

    #[test]
    fn bytes_round_trip_and_damage_is_an_error() {
        let nb = ItemNeighbours::build(&log(5, 40, 15), 15, &NeighbourSettings::default());
        assert!(nb.pairs() > 0);
        let b = nb.to_bytes();
        assert_eq!(ItemNeighbours::from_bytes(&b).expect("round trip"), nb);
        assert!(ItemNeighbours::from_bytes(&b[..b.len() - 1]).is_err());
        assert!(ItemNeighbours::from_bytes(&[]).is_err());
        // a target out of range
        let mut t = b.clone();
        let at = 16 + 8 * (nb.len() + 1);
        t[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(ItemNeighbours::from_bytes(&t)
            .unwrap_err()
            .0
            .contains("target 99"));
        // a NaN similarity
        let mut s = b.clone();
        let at = at + 4 * nb.pairs();
        s[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(ItemNeighbours::from_bytes(&s).is_err());
        // a count that does not fit
        let mut c = b;
        c[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ItemNeighbours::from_bytes(&c).is_err());
    }

    #[test]
    fn settings_are_validated_by_name() {
        assert!(NeighbourSettings::default().validate("x.").is_ok());
        let bad = NeighbourSettings {
            user_cap: 0,
            ..NeighbourSettings::default()
        };
        assert!(bad.validate("x.").unwrap_err().contains("x.user_cap"));
        let nan = NeighbourSettings {
            shrink: f32::NAN,
            ..NeighbourSettings::default()
        };
        assert!(nan.validate("x.").unwrap_err().contains("x.shrink"));
    }
}
