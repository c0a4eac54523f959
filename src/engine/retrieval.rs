//! The Retrieval queries: similarity search, SID prefix scans and stats, SID lookups, and
//! recommendations. Validation first (every message names the field), then the collection's
//! [`CollectionIndex`] on a blocking thread.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::index::{CollectionIndex, EntityHit, IndexState, Restrict, SpaceId};
use super::served::LoadedModel;
use super::{validate, Engine};
use crate::error::{echo, Error, Result};
use crate::index::{distance, PointId};
use crate::model::recommend::{self, Catalogue, RecommendSettings, UserView};
use crate::profile::Recency;
use crate::storage::models::ModelSid;
use crate::storage::Collection;
use crate::trie::Cursor;
use crate::types::{CollectionConfig, EntityKind, InteractionRecord, SemanticId};

/// Largest HNSW search breadth a request may ask for.
pub const MAX_EF: u32 = 10_000;
/// Default page of a prefix scan.
pub const DEFAULT_SCAN_PAGE: usize = 100;

/// What a search is near.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// A vector in the searched space.
    Vector(Vec<f32>),
    /// An item's vector; the item itself is excluded.
    ItemId(String),
    /// A user's vector (own, or its history's profile).
    UserId(String),
}

/// A search request, in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchInput {
    /// What to search near (`None`: the client set nothing, an error).
    pub query: Option<Query>,
    /// Item modality ("" = the first).
    pub modality: String,
    /// Hits wanted.
    pub k: u32,
    /// HNSW breadth (0 = default).
    pub ef: u32,
    /// Only entities under this SID prefix.
    pub sid_prefix: Vec<u32>,
    /// Ids never to return.
    pub exclude_ids: Vec<String>,
    /// Return the stored vectors with the hits.
    pub with_vectors: bool,
    /// Items or users.
    pub entity: EntityKind,
}

/// A recommendation request, in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct RecommendInput {
    /// The user.
    pub user_id: String,
    /// Items wanted.
    pub k: u32,
    /// Leave out items the user interacted with.
    pub exclude_seen: bool,
    /// Item modality ("" = the first).
    pub modality: String,
}

/// One result of a search or recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// Entity id.
    pub id: String,
    /// Similarity, higher = closer.
    pub score: f32,
    /// Its SID, when it has one.
    pub sid: Option<SemanticId>,
    /// Its stored vector in the searched space, when asked for.
    pub vector: Option<Vec<f32>>,
}

/// One page of a prefix scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    /// Entities in (codes, suffix, id) order.
    pub entries: Vec<(String, SemanticId)>,
    /// Token of the next page, "" when this is the last.
    pub next_page_token: String,
}

/// Counts under a prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixStats {
    /// Entities under the prefix.
    pub total: u64,
    /// Entities under each child code.
    pub children: BTreeMap<u32, u64>,
}

/// SIDs found by a lookup, and the ids without one.
#[derive(Debug, Clone, PartialEq)]
pub struct SidLookup {
    /// (id, SID) in request order.
    pub found: Vec<(String, SemanticId)>,
    /// Ids without a SID in that version (or unknown).
    pub missing: Vec<String>,
}

impl Engine {
    fn collection_index(&self, name: &str) -> Result<(Arc<Collection>, Arc<CollectionIndex>)> {
        let coll = self.store.collection(name)?;
        let index = self.indexes.get(coll.entry.id)?;
        Ok((coll, index))
    }

    /// k nearest entities to a vector, an item or a user.
    pub async fn search(&self, collection: &str, input: SearchInput) -> Result<Vec<SearchHit>> {
        let (coll, index) = self.collection_index(collection)?;
        let config = coll.config().clone();
        let k = validate::k("k", input.k, &self.limits)?;
        let ef = self.ef(input.ef)?;
        let space = space_for(&config, input.entity, &input.modality)?;
        check_prefix("sid_prefix", &input.sid_prefix, &config, &index)?;
        if !input.sid_prefix.is_empty() {
            require_sids(&coll)?;
        }
        validate::optional_ids("exclude_ids", &input.exclude_ids, &self.limits)?;
        let query = input
            .query
            .ok_or_else(|| Error::invalid("query: set one of vector, item_id or user_id"))?;
        let dim = space_dim(&config, space);
        if input.with_vectors {
            let per_hit = validate::vector_reply_bytes(dim);
            let mut hits = k as u64;
            if hits * per_hit > self.limits.max_response_bytes as u64 {
                // no more hits than entities (read only then: it takes the writer lock briefly)
                hits = hits.min(space_count(&coll, space));
            }
            validate::response_size(
                "k, with_vectors",
                &format!("up to {hits} hits with {dim}-d vectors"),
                hits * per_hit,
                &self.limits,
            )?;
        }
        match &query {
            Query::Vector(v) => validate::vector("query.vector", v, dim as u32, config.metric)?,
            Query::ItemId(id) => validate::id("query.item_id", id)?,
            Query::UserId(id) => validate::id("query.user_id", id)?,
        }
        let (prefix, mut exclude, with_vectors) =
            (input.sid_prefix, input.exclude_ids, input.with_vectors);
        self.blocking(move |e| {
            let q = match query {
                Query::Vector(v) => v,
                Query::ItemId(id) => {
                    let SpaceId::Item(_) = space else {
                        return Err(Error::invalid(
                            "query.item_id: items live in another space than users; search USERS by vector or user_id",
                        ));
                    };
                    let v = index.vector_of(space, &id).ok_or_else(|| {
                        Error::NotFound(format!("query.item_id: item {} not found", echo(&id)))
                    })?;
                    exclude.push(id);
                    v
                }
                Query::UserId(id) => {
                    let v = e.user_vector(&coll, &index, &id, space, None)?;
                    if space == SpaceId::User {
                        exclude.push(id);
                    }
                    v
                }
            };
            let restrict = Restrict {
                prefix: &prefix,
                exclude: &exclude,
            };
            let ef = ef.unwrap_or_else(|| index.default_ef(space, e.retrieval.hnsw_ef_search));
            let hits = index.search(space, &q, k, ef, &restrict, e.retrieval.exact_scan_max)?;
            e.finish_hits(&coll, space, hits, with_vectors)
        })
        .await
    }

    /// Items for a user: candidates under the user's SID prefix, ranked by similarity.
    pub async fn recommend(
        &self,
        collection: &str,
        input: RecommendInput,
    ) -> Result<Vec<SearchHit>> {
        let (coll, index) = self.collection_index(collection)?;
        let config = coll.config().clone();
        let k = validate::k("k", input.k, &self.limits)?;
        validate::id("user_id", &input.user_id)?;
        let space = space_for(&config, EntityKind::Items, &input.modality)?;
        self.blocking(move |e| {
            let ef = index.default_ef(space, e.retrieval.hnsw_ef_search);
            let user = input.user_id;
            // One history read serves the profile (its newest events), the model's current view
            // of the user and `exclude_seen`.
            let model = index.model.load_full();
            // the model's view of the user (a profile) and Recommend's newest items both read
            // the newest events
            let events = match input.exclude_seen {
                true => Some(e.limits.max_interactions),
                false => model.is_some().then_some(e.retrieval.profile_events),
            };
            let history = match events {
                Some(n) => Some(e.store.user_history(&coll, &user, n, None)?.0),
                None => None,
            };
            let q = e.user_vector(&coll, &index, &user, space, history.as_deref())?;
            let current = match (&model, &history) {
                (Some(m), Some(h)) => m
                    .current_user_sid(&e.store, &coll, h)?
                    .map(|sid| (m.version, sid)),
                _ => None,
            };
            let mut exclude: Vec<String> = match (input.exclude_seen, &history) {
                (true, Some(seen)) => {
                    let unique: HashSet<&str> = seen.iter().map(|x| &x.item_id[..]).collect();
                    unique.into_iter().map(String::from).collect()
                }
                _ => Vec::new(),
            };
            // With an active model: candidates through the SIDs, ranked by the learned `z`s
            // (`model::recommend`, the code the evaluation's retrieval (a) runs).
            let settings = &e.retrieval.recommend;
            let user_now = current.as_ref().map(|(v, sid)| (*v, sid));
            let newest = history
                .as_deref()
                .map(|h| &h[..h.len().min(e.retrieval.profile_events)]);
            if let Some(mut hits) = model_candidates(
                &index,
                model.as_deref(),
                &user,
                user_now,
                newest.unwrap_or_default(),
                k,
                &exclude,
                settings,
                e.retrieval.recency(),
            )? {
                if hits.len() < k {
                    exclude.extend(hits.iter().map(|h| h.id.to_string()));
                    let rest = Restrict {
                        prefix: &[],
                        exclude: &exclude,
                    };
                    let exact_max = e.retrieval.exact_scan_max;
                    hits.extend(index.search(space, &q, k - hits.len(), ef, &rest, exact_max)?);
                }
                return e.finish_hits(&coll, space, hits, false);
            }
            let prefix: Vec<u32> = {
                let st = index.state.read();
                match st.users.trie.get(&user) {
                    Some(sid) => st
                        .items
                        .trie
                        .longest_prefix_with_at_least(
                            &sid.codes,
                            e.retrieval.recommend.min_bucket as u64,
                        )
                        .unwrap_or_default()
                        .to_vec(),
                    None => Vec::new(),
                }
            };
            let exact_max = e.retrieval.exact_scan_max;
            let restrict = Restrict {
                prefix: &prefix,
                exclude: &exclude,
            };
            let mut hits = index.search(space, &q, k, ef, &restrict, exact_max)?;
            if hits.len() < k && !prefix.is_empty() {
                // The bucket ran short (after exclusions): fill up by plain similarity.
                exclude.extend(hits.iter().map(|h| h.id.to_string()));
                let rest = Restrict {
                    prefix: &[],
                    exclude: &exclude,
                };
                let more = index.search(space, &q, k - hits.len(), ef, &rest, exact_max)?;
                hits.extend(more);
            }
            e.finish_hits(&coll, space, hits, false)
        })
        .await
    }

    /// One page of the entities under a SID prefix.
    pub fn prefix_scan(
        &self,
        collection: &str,
        entity: EntityKind,
        prefix: &[u32],
        limit: u32,
        page_token: &str,
    ) -> Result<ScanPage> {
        let (coll, index) = self.collection_index(collection)?;
        check_prefix("prefix", prefix, coll.config(), &index)?;
        let limit = validate::page_limit("limit", limit, DEFAULT_SCAN_PAGE, &self.limits)?;
        let after = match page_token {
            "" => None,
            t => Some(Cursor::from_token(t)?),
        };
        require_sids(&coll)?;
        let st = index.state.read();
        let (page, next) = st
            .entities(entity)
            .trie
            .scan(prefix, after.as_ref(), limit)?;
        Ok(ScanPage {
            entries: page
                .into_iter()
                .map(|x| (x.id.to_string(), x.sid))
                .collect(),
            next_page_token: next.map(|c| c.to_token()).unwrap_or_default(),
        })
    }

    /// Entities under a prefix, in total and per child code.
    pub fn prefix_stats(
        &self,
        collection: &str,
        entity: EntityKind,
        prefix: &[u32],
    ) -> Result<PrefixStats> {
        let (coll, index) = self.collection_index(collection)?;
        check_prefix("prefix", prefix, coll.config(), &index)?;
        require_sids(&coll)?;
        let st = index.state.read();
        let trie = &st.entities(entity).trie;
        Ok(PrefixStats {
            total: trie.count(prefix),
            children: trie.children(prefix),
        })
    }

    /// The SIDs of entities, for the active version (the only one kept so far).
    pub fn semantic_ids(
        &self,
        collection: &str,
        entity: EntityKind,
        ids: Vec<String>,
        model_version: u64,
    ) -> Result<SidLookup> {
        let (coll, index) = self.collection_index(collection)?;
        validate::ids("ids", &ids, &self.limits)?;
        require_sids(&coll)?;
        let active = self.store.active_version(&coll);
        if model_version != 0 && model_version != active {
            return self.kept_version_sids(&coll, &index, entity, ids, model_version);
        }
        let st = index.state.read();
        let trie = &st.entities(entity).trie;
        let mut out = SidLookup {
            found: Vec::new(),
            missing: Vec::new(),
        };
        for id in ids {
            match trie.get(&id) {
                Some(sid) => out.found.push((id, sid.clone())),
                None => out.missing.push(id),
            }
        }
        Ok(out)
    }

    /// `GetSemanticIds` of a kept, inactive version: from the store, for the live entities.
    fn kept_version_sids(
        &self,
        coll: &Collection,
        index: &CollectionIndex,
        entity: EntityKind,
        ids: Vec<String>,
        version: u64,
    ) -> Result<SidLookup> {
        let kept = self
            .store
            .versions(coll)?
            .iter()
            .any(|r| r.version == version && r.activated);
        if !kept {
            return Err(self.version_gone(coll, "model_version", version));
        }
        let sids = self.store.model_sids(coll, version, entity, &ids)?;
        let st = index.state.read();
        let mut out = SidLookup {
            found: Vec::new(),
            missing: Vec::new(),
        };
        for (id, sid) in ids.into_iter().zip(sids) {
            match sid.filter(|_| st.entities(entity).point(&id).is_some()) {
                Some(s) => out.found.push((id, s.semantic_id(version))),
                None => out.missing.push(id),
            }
        }
        Ok(out)
    }

    /// The request's `ef`; `None` for 0 (the collection's default, see
    /// [`CollectionIndex::default_ef`]).
    fn ef(&self, ef: u32) -> Result<Option<usize>> {
        match ef {
            0 => Ok(None),
            n if n > MAX_EF => Err(Error::invalid(format!(
                "ef: {n} exceeds the maximum {MAX_EF}"
            ))),
            n => Ok(Some(n as usize)),
        }
    }

    /// A user's query vector in `space`: its own vector when it lives there, else the
    /// recency-weighted mean of the vectors of the items it interacted with (positive weights)
    /// among its newest `retrieval.profile_events` interactions. `history` is the user's history,
    /// newest first, when the caller has read it already.
    fn user_vector(
        &self,
        coll: &Collection,
        index: &CollectionIndex,
        user: &str,
        space: SpaceId,
        history: Option<&[InteractionRecord]>,
    ) -> Result<Vec<f32>> {
        let config = coll.config();
        let own_space = match space {
            SpaceId::User => true,
            SpaceId::Item(m) => config.user_dim == config.item_modalities[m].dim,
        };
        if own_space {
            if let Some(v) = index.vector_of(SpaceId::User, user) {
                return Ok(v);
            }
        }
        if space == SpaceId::User {
            let known = index.state.read().users.point(user).is_some();
            return Err(if known {
                Error::FailedPrecondition(format!("user_id: user {} has no vector", echo(user)))
            } else {
                Error::NotFound(format!("user_id: user {} not found", echo(user)))
            });
        }
        let events = self.retrieval.profile_events;
        let read;
        let history = match history {
            Some(h) => &h[..h.len().min(events)],
            None => {
                read = self.store.user_history(coll, user, events, None)?.0;
                &read[..]
            }
        };
        let recency = self.retrieval.recency();
        let dim = space_dim(config, space);
        // summed in f64: bounded weights (`validate::MAX_WEIGHT`) times f32 vectors cannot
        // overflow it, where an f32 sum of two 3e38 weights became infinite
        let mut profile = vec![0.0f64; dim];
        let mut used = 0usize;
        for (x, w) in crate::profile::weighted_positives(history, recency) {
            let Some(v) = index.vector_of(space, &x.item_id) else {
                continue;
            };
            let w = f64::from(w);
            profile
                .iter_mut()
                .zip(&v)
                .for_each(|(p, v)| *p += w * f64::from(*v));
            used += 1;
        }
        if used > 0 {
            if let Some(profile) = usable_profile(profile) {
                return Ok(profile);
            }
        }
        let known = index.state.read().users.point(user).is_some();
        if !known && history.is_empty() {
            return Err(Error::NotFound(format!(
                "user_id: user {} not found and has no interactions",
                echo(user)
            )));
        }
        Err(Error::FailedPrecondition(format!(
            "user_id: user {} has no vector in this space and no positive interactions with stored items",
            echo(user)
        )))
    }

    /// Turns index hits into results, with the stored vectors when asked for.
    fn finish_hits(
        &self,
        coll: &Collection,
        space: SpaceId,
        hits: Vec<EntityHit>,
        with_vectors: bool,
    ) -> Result<Vec<SearchHit>> {
        let mut out: Vec<SearchHit> = hits
            .into_iter()
            .map(|h| SearchHit {
                id: h.id.to_string(),
                score: h.score,
                sid: h.sid,
                vector: None,
            })
            .collect();
        if with_vectors {
            let dim = space_dim(coll.config(), space);
            validate::response_size(
                "k, with_vectors",
                &format!("{} hits with {dim}-d vectors", out.len()),
                out.len() as u64 * validate::vector_reply_bytes(dim),
                &self.limits,
            )?;
            // The index keeps vectors prepared for the metric (unit length under cosine); the
            // client gets what it stored.
            let ids: Vec<String> = out.iter().map(|h| h.id.clone()).collect();
            match space {
                SpaceId::Item(m) => {
                    let got = self.store.get_items(coll, &ids)?;
                    for (h, it) in out.iter_mut().zip(got) {
                        h.vector = it.map(|mut it| it.vectors.swap_remove(m));
                    }
                }
                SpaceId::User => {
                    let got = self.store.get_users(coll, &ids)?;
                    for (h, u) in out.iter_mut().zip(got) {
                        h.vector = u.and_then(|u| u.vector);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The space a request searches.
fn space_for(config: &CollectionConfig, entity: EntityKind, modality: &str) -> Result<SpaceId> {
    match entity {
        EntityKind::Users => {
            if config.user_dim == 0 {
                return Err(Error::invalid(
                    "entity: USERS cannot be searched, the collection has user_dim 0 (users carry no vectors)",
                ));
            }
            if !modality.is_empty() {
                return Err(Error::invalid(format!(
                    "modality: {} given, but USERS have one vector space; leave it empty",
                    echo(modality)
                )));
            }
            Ok(SpaceId::User)
        }
        EntityKind::Items if modality.is_empty() => Ok(SpaceId::Item(0)),
        EntityKind::Items => config
            .modality_index(modality)
            .map(SpaceId::Item)
            .ok_or_else(|| {
                let declared: Vec<&str> = config
                    .item_modalities
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect();
                Error::invalid(format!(
                    "modality: {} is unknown; the collection declares {declared:?}",
                    echo(modality)
                ))
            }),
    }
}

/// How many entities live in `space` (what bounds a query's hits).
fn space_count(coll: &Collection, space: SpaceId) -> u64 {
    let stats = coll.info().stats;
    match space {
        SpaceId::Item(_) => stats.items,
        SpaceId::User => stats.users,
    }
}

fn space_dim(config: &CollectionConfig, space: SpaceId) -> usize {
    match space {
        SpaceId::Item(m) => config.item_modalities[m].dim as usize,
        SpaceId::User => config.user_dim as usize,
    }
}

/// Recommend's list under an active model ([`crate::model::recommend`]): the user's `z` (as
/// the serving `model` computes it now when that is the version the index serves, else as
/// stored), its newest positives from `history` (newest first), candidates through the item
/// SID trie, ranked by the learned `z`s, without `exclude`. `None` when no model version serves
/// or the user has no model SID.
#[allow(clippy::too_many_arguments)]
fn model_candidates(
    index: &CollectionIndex,
    model: Option<&LoadedModel>,
    user: &str,
    user_now: Option<(u64, &ModelSid)>,
    history: &[InteractionRecord],
    k: usize,
    exclude: &[String],
    settings: &RecommendSettings,
    recency: Recency,
) -> Result<Option<Vec<EntityHit>>> {
    let st = index.state.read();
    if st.sid_version == 0 {
        return Ok(None);
    }
    let user_z: &[f32] = match user_now {
        Some((version, sid)) if version == st.sid_version => &sid.z,
        _ => {
            let Some(entry) = st.users.point(user).and_then(|p| st.users.model.get(&p)) else {
                return Ok(None);
            };
            &entry.z
        }
    };
    let catalogue = IndexCatalogue { st: &st };
    let skip: HashSet<PointId> = exclude.iter().filter_map(|id| st.items.point(id)).collect();
    // oldest first, as the profile weighs them; items without a point cannot be candidates
    let events: Vec<(PointId, f32, i64)> = history
        .iter()
        .rev()
        .filter_map(|x| Some((st.items.point(&x.item_id)?, x.weight, x.timestamp_ms)))
        .collect();
    let recency = model.map_or(recency, |m| m.info.recency());
    let recent = recommend::recent_weights(&events, recency);
    let view = UserView {
        z: user_z,
        recent: &recent,
    };
    let list = match model {
        Some(m) if m.version == st.sid_version => {
            let mean = m.info.mean_item_z_norm;
            recommend::recommend(
                &m.model,
                mean,
                &catalogue,
                &view,
                k,
                &|p| skip.contains(&p),
                settings,
            )
            .map_err(Error::from)?
        }
        // for a moment during a swap the model is of another version than the index's SIDs:
        // the candidates of the user's stored route, ranked the same way
        _ => {
            let Some(route) = st
                .users
                .point(user)
                .and_then(|p| st.users.model.get(&p))
                .map(|e| e.route.to_vec())
            else {
                return Ok(None);
            };
            let beam: Vec<recommend::BeamLevel> = (1..=route.len())
                .map(|l| vec![(route[..l].to_vec(), 0.0)])
                .collect();
            let votes = recommend::votes(&catalogue, &recent, settings);
            let skip = |p: PointId| skip.contains(&p);
            let cands = recommend::candidates(
                &beam,
                &|_| None,
                &catalogue,
                &recent,
                &votes,
                &skip,
                settings,
            );
            recommend::rank(&catalogue, &view, &votes, &cands, k, settings)
        }
    };
    Ok(Some(
        list.into_iter()
            .filter_map(|(p, score)| {
                let id = st.items.id(p)?;
                Some(EntityHit {
                    id: Arc::clone(id),
                    score,
                    sid: st.items.trie.get(id).cloned(),
                })
            })
            .collect(),
    ))
}

/// A collection's items as `Recommend` sees them: the SID trie, the serving model's `z`s and
/// popularity priors.
struct IndexCatalogue<'a> {
    st: &'a IndexState,
}

impl Catalogue for IndexCatalogue<'_> {
    type Item = PointId;
    fn count(&self, prefix: &[u32]) -> usize {
        self.st.items.trie.count(prefix) as usize
    }
    fn for_each_under(&self, prefix: &[u32], f: &mut dyn FnMut(PointId)) {
        // the trie carries each entity's point: no id lookup per candidate
        self.st.items.trie.tags_under(prefix).for_each(f);
    }
    fn codes(&self, item: PointId) -> Option<&[u32]> {
        let id = self.st.items.id(item)?;
        self.st.items.trie.get(id).map(|s| &s.codes[..])
    }
    fn z(&self, item: PointId) -> Option<&[f32]> {
        self.st.items.model.get(&item).map(|e| &e.z[..])
    }
    fn popularity(&self, item: PointId) -> f32 {
        self.st.item_priors.get(&item).copied().unwrap_or(0.0)
    }
    fn neighbour_slots(&self) -> usize {
        self.st.item_neighbours.slots()
    }
    fn neighbours(&self, source: PointId) -> (&[u32], &[f32]) {
        self.st.item_neighbours.lists_of(source)
    }
    fn slot_item(&self, slot: u32) -> Option<PointId> {
        self.st.item_neighbours.point(slot)
    }
}

/// A SID prefix of a query: at most `sid_levels` codes, each below the codebook size: the
/// collection's `sid_codebook_size`, or when that is 0 (automatic) the size the serving model
/// chose. Only client-written SIDs under an automatic size have no bound to check.
fn check_prefix(
    field: &str,
    prefix: &[u32],
    config: &CollectionConfig,
    index: &CollectionIndex,
) -> Result<()> {
    if config.sid_codebook_size > 0 || prefix.is_empty() {
        return validate::sid_codes(field, prefix, config);
    }
    match index.model.load_full() {
        Some(m) => {
            let chosen = CollectionConfig {
                sid_codebook_size: u32::try_from(m.model.meta.codes).unwrap_or(u32::MAX),
                ..config.clone()
            };
            validate::sid_codes(field, prefix, &chosen)
        }
        None => validate::sid_codes(field, prefix, config),
    }
}

/// SID queries need SIDs: a trained model, or SIDs written by clients.
fn require_sids(coll: &Collection) -> Result<()> {
    if coll.info().active_model_version == 0 && !coll.client_sids() {
        return Err(Error::FailedPrecondition(format!(
            "collection {:?} has no semantic IDs yet: no model is trained and no client wrote SIDs",
            coll.entry.name
        )));
    }
    Ok(())
}

/// A profile (summed in f64) as an f32 vector a query can use: as it is when it and its squared
/// length are normal f32s, rescaled to unit length when it is too short or too long for that
/// (weights of events long before the newest underflow; large weights overflow), `None` when it
/// has no direction.
fn usable_profile(profile: Vec<f64>) -> Option<Vec<f32>> {
    // scaled by the largest component first, so the squares cannot overflow f64 either
    let max = profile.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() || profile.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let norm = max
        * profile
            .iter()
            .map(|x| (x / max).powi(2))
            .sum::<f64>()
            .sqrt();
    let as_is: Vec<f32> = profile.iter().map(|&x| x as f32).collect();
    // the index checks lengths in f32 (`distance::normalize`): decide on the same sum
    let norm_sq = distance::dot(&as_is, &as_is);
    if norm_sq.is_finite() && norm_sq >= f32::MIN_POSITIVE {
        return Some(as_is);
    }
    Some(profile.iter().map(|x| (x / norm) as f32).collect())
}

#[cfg(test)]
mod tests;
