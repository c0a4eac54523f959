//! The semantic-ID prefix trie: entity id -> [`SemanticId`], answering prefix questions exactly.
//!
//! # Design
//! A "trie" here is two flat maps rather than a pointer tree, because the questions asked are
//! "list a bucket in a stable order, page by page" and "how many under each child":
//!
//! - `entries`: a `BTreeSet` of `(codes, suffix, id)`. Lexicographic order on `Vec<u32>` puts every
//!   SID under a prefix `P` in one contiguous range that starts at `(P, 0, "")`, so the first page of
//!   a bucket is one `O(log n)` seek plus `limit` steps, whatever the size of the trie. A page cursor
//!   is simply the last key returned; the next page resumes strictly after it, which keeps the order
//!   stable and gives every entity exactly once across pages, even if writes land between pages
//!   (an entity present for the whole scan is seen once; one added or removed meanwhile may or may
//!   not be).
//! - `nodes`: for every prefix that has entities under it, a map child code -> count, plus the
//!   number of entities under it. `count` and `children` are then one hash lookup, never a scan.
//!   Each insert or remove touches `codes.len() + 1` nodes.
//!
//! `by_id` maps an id to its current SID, so an insert replaces the id's previous SID.
//! The trie does no I/O and knows nothing of storage; the engine rebuilds it with
//! [`SidTrie::from_entries`] at start and keeps it in step with writes.
//!
//! Ids are `Arc<str>` so the two maps share one allocation per entity. Each entry also carries a
//! `u64` tag of the caller's (the engine keeps the entity's point id there), so a bucket can be
//! walked without looking each id up again ([`SidTrie::tags_under`]).

mod cursor;
#[cfg(test)]
mod tests;

pub use cursor::Cursor;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::types::SemanticId;

/// The ordering key of one entity: codes, then suffix, then id.
type Key = (Vec<u32>, u32, Arc<str>);

/// Counts kept for one prefix.
#[derive(Debug, Default, Clone)]
struct Node {
    /// Entities whose codes start with this prefix (including those whose codes equal it).
    total: u64,
    /// Child code -> entities under `prefix + [code]`.
    children: BTreeMap<u32, u64>,
}

/// One entity returned by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrieEntry {
    /// The entity id.
    pub id: Arc<str>,
    /// Its semantic ID.
    pub sid: SemanticId,
}

/// A prefix trie over entity ids and their semantic IDs. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct SidTrie {
    by_id: HashMap<Arc<str>, SemanticId>,
    /// Every entity's key -> its tag.
    entries: BTreeMap<Key, u64>,
    nodes: HashMap<Vec<u32>, Node>,
}

impl SidTrie {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a trie from `(id, sid)` pairs; a later pair for the same id replaces an earlier one.
    pub fn from_entries<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, SemanticId)>,
        S: Into<Arc<str>>,
    {
        Self::from_tagged(entries.into_iter().map(|(id, sid)| (id, sid, 0)))
    }

    /// [`from_entries`](Self::from_entries) with each entry's tag.
    pub fn from_tagged<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, SemanticId, u64)>,
        S: Into<Arc<str>>,
    {
        let entries: Vec<(Arc<str>, SemanticId, u64)> = entries
            .into_iter()
            .map(|(id, sid, tag)| (id.into(), sid, tag))
            .collect();
        let mut by_id: HashMap<Arc<str>, SemanticId> = HashMap::with_capacity(entries.len());
        let mut keys: Vec<(Key, u64)> = Vec::with_capacity(entries.len());
        // newest first, so that the last pair given for an id is the one kept
        for (id, sid, tag) in entries.into_iter().rev() {
            if let std::collections::hash_map::Entry::Vacant(slot) = by_id.entry(Arc::clone(&id)) {
                keys.push(((sid.codes.clone(), sid.suffix, id), tag));
                slot.insert(sid);
            }
        }
        // Bulk-building the BTreeMap from a sorted vector is much faster than one insert each.
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut trie = SidTrie {
            by_id,
            entries: BTreeMap::new(),
            nodes: HashMap::new(),
        };
        for ((codes, _, _), _) in &keys {
            trie.add_counts(codes);
        }
        trie.entries = keys.into_iter().collect();
        trie
    }

    /// Number of entities in the trie.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when the trie holds no entity.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Sets the SID of `id`, replacing (and un-indexing) its previous one. Returns the previous SID.
    pub fn insert(&mut self, id: &str, sid: SemanticId) -> Option<SemanticId> {
        self.insert_tagged(id, sid, 0)
    }

    /// [`insert`](Self::insert) with the entry's tag.
    pub fn insert_tagged(&mut self, id: &str, sid: SemanticId, tag: u64) -> Option<SemanticId> {
        let previous = self.remove(id);
        let id: Arc<str> = Arc::from(id);
        self.add_counts(&sid.codes);
        self.entries
            .insert((sid.codes.clone(), sid.suffix, Arc::clone(&id)), tag);
        self.by_id.insert(id, sid);
        previous
    }

    /// Removes `id`; returns its SID if it was present.
    pub fn remove(&mut self, id: &str) -> Option<SemanticId> {
        let (id, sid) = self.by_id.remove_entry(id)?;
        let removed = self.entries.remove(&(sid.codes.clone(), sid.suffix, id));
        debug_assert!(removed.is_some(), "by_id and entries are kept in step");
        self.sub_counts(&sid.codes);
        Some(sid)
    }

    /// The current SID of `id`.
    pub fn get(&self, id: &str) -> Option<&SemanticId> {
        self.by_id.get(id)
    }

    /// Entities whose codes start with `prefix` (all of them for an empty prefix).
    pub fn count(&self, prefix: &[u32]) -> u64 {
        self.nodes.get(prefix).map_or(0, |n| n.total)
    }

    /// Child code -> entities under `prefix + [code]`. Entities whose codes equal `prefix` exactly
    /// are counted by [`count`](Self::count) but belong to no child.
    pub fn children(&self, prefix: &[u32]) -> BTreeMap<u32, u64> {
        self.nodes
            .get(prefix)
            .map(|n| n.children.clone())
            .unwrap_or_default()
    }

    /// One page of the entities under `prefix`, in (codes, suffix, id) order, starting after
    /// `after`. Returns the page and the cursor of the next page (`None` when this was the last).
    ///
    /// Errors with `InvalidArgument` when `after` was issued for another prefix.
    pub fn scan(
        &self,
        prefix: &[u32],
        after: Option<&Cursor>,
        limit: usize,
    ) -> crate::error::Result<(Vec<TrieEntry>, Option<Cursor>)> {
        let start = match after {
            Some(c) => {
                c.check_prefix(prefix)?;
                Bound::Excluded(c.key())
            }
            None => Bound::Included((prefix.to_vec(), 0, Arc::from(""))),
        };
        let mut iter = self
            .entries
            .range((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|(codes, _, _)| codes.starts_with(prefix));
        let page: Vec<TrieEntry> = iter.by_ref().take(limit).map(|k| self.entry(k)).collect();
        let more = limit > 0 && iter.next().is_some();
        let next = match page.last() {
            Some(last) if more => Some(Cursor::after(prefix, &last.sid, &last.id)),
            _ => None,
        };
        Ok((page, next))
    }

    /// Ids under `prefix`, in scan order.
    pub fn ids_under<'a>(&'a self, prefix: &'a [u32]) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        self.under(prefix).map(|((_, _, id), _)| id)
    }

    /// The tags of the entities under `prefix`, in scan order.
    pub fn tags_under<'a>(&'a self, prefix: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
        self.under(prefix).map(|(_, &tag)| tag)
    }

    fn under<'a>(&'a self, prefix: &'a [u32]) -> impl Iterator<Item = (&'a Key, &'a u64)> + 'a {
        let start = (prefix.to_vec(), 0u32, Arc::<str>::from(""));
        self.entries
            .range(start..)
            .take_while(move |((codes, _, _), _)| codes.starts_with(prefix))
    }

    /// The longest prefix of `codes` (possibly empty) whose bucket holds at least `min` entities;
    /// `None` when even the whole trie holds fewer.
    pub fn longest_prefix_with_at_least<'c>(
        &self,
        codes: &'c [u32],
        min: u64,
    ) -> Option<&'c [u32]> {
        // Counts only shrink as the prefix grows, so the first failing length ends the search.
        (0..=codes.len())
            .take_while(|&len| self.count(&codes[..len]) >= min)
            .last()
            .map(|len| &codes[..len])
    }

    /// Every `(id, sid)` in scan order (for rebuilding and checks).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &SemanticId)> + '_ {
        self.entries.keys().map(|(_, _, id)| {
            let sid = self
                .by_id
                .get(id)
                .expect("entries and by_id are kept in step");
            (id, sid)
        })
    }

    fn entry(&self, key: &Key) -> TrieEntry {
        let sid = self
            .by_id
            .get(&key.2)
            .expect("entries and by_id are kept in step");
        TrieEntry {
            id: Arc::clone(&key.2),
            sid: sid.clone(),
        }
    }

    /// Counts one more entity under every prefix of `codes`.
    fn add_counts(&mut self, codes: &[u32]) {
        for len in 0..=codes.len() {
            let node = self.nodes.entry(codes[..len].to_vec()).or_default();
            node.total += 1;
            if let Some(&child) = codes.get(len) {
                *node.children.entry(child).or_default() += 1;
            }
        }
    }

    /// Counts one entity less under every prefix of `codes`, dropping emptied nodes.
    fn sub_counts(&mut self, codes: &[u32]) {
        for len in 0..=codes.len() {
            let node = self
                .nodes
                .get_mut(&codes[..len])
                .expect("a present entity has a node at every prefix");
            node.total -= 1;
            if let Some(&child) = codes.get(len) {
                let c = node
                    .children
                    .get_mut(&child)
                    .expect("child counted at insert");
                *c -= 1;
                if *c == 0 {
                    node.children.remove(&child);
                }
            }
            if node.total == 0 {
                self.nodes.remove(&codes[..len]);
            }
        }
    }
}
