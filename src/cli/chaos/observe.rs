//! What the checker reads from a quiescent server: every collection's config, counts,
//! entities (the whole id pool, with vectors), interaction histories, model versions, full SID
//! scans, and the trie probed at every prefix its SIDs hold. Plain data: the verification
//! ([`super::verify`]) is a pure function of the model and this, so the self-test can tamper
//! with either.

use std::collections::{BTreeMap, BTreeSet};

use sidb::proto as pb;
use tonic::Code;

use super::model::{item_id, user_id, Kind, Val, ITEM_DIM, ITEM_POOL, USER_POOL};
use super::rpc::Clients;

/// Hits asked for by the checker's searches: more than a pool holds.
pub const SEARCH_K: u32 = 100;

/// One trie probe: a prefix, its PrefixStats and its PrefixScan.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Items or users.
    pub kind: Kind,
    /// The prefix.
    pub prefix: Vec<u32>,
    /// PrefixStats total.
    pub total: u64,
    /// PrefixStats children.
    pub children: BTreeMap<u32, u64>,
    /// PrefixScan ids, every page.
    pub ids: Vec<String>,
}

/// The SID side of one entity kind.
#[derive(Debug, Clone)]
pub struct SidObs {
    /// The full PrefixScan (every page, in order), or the code it was refused with.
    pub scan: Result<Vec<pb::PrefixEntry>, Code>,
    /// GetSemanticIds of the present entities: found, missing.
    pub lookup: Option<(BTreeMap<String, pb::SemanticId>, Vec<String>)>,
    /// PrefixStats of the root: total, children.
    pub root: Option<(u64, BTreeMap<u32, u64>)>,
}

/// One collection as read.
#[derive(Debug, Clone)]
pub struct CollObs {
    /// GetCollection.
    pub info: pb::Collection,
    /// Present items: content and the SID GetItems served.
    pub items: BTreeMap<String, (Val, Option<pb::SemanticId>)>,
    /// Present users.
    pub users: BTreeMap<String, (Val, Option<pb::SemanticId>)>,
    /// Every user's history, in the order served (newest first).
    pub history: BTreeMap<String, Vec<pb::Interaction>>,
    /// ListModelVersions.
    pub versions: Vec<pb::ModelVersion>,
    /// Per kind.
    pub sids: BTreeMap<Kind, SidObs>,
    /// Trie probes.
    pub probes: Vec<Probe>,
    /// Search with `sid_prefix` = one level-1 code: (code, hit ids).
    pub prefix_searches: Vec<(u32, Vec<String>)>,
    /// A plain vector search with vectors.
    pub search: Vec<pb::Hit>,
}

impl CollObs {
    /// Present entities of `kind`.
    pub fn present(&self, kind: Kind) -> &BTreeMap<String, (Val, Option<pb::SemanticId>)> {
        match kind {
            Kind::Items => &self.items,
            Kind::Users => &self.users,
        }
    }
}

/// A whole server as read.
#[derive(Debug, Clone, Default)]
pub struct Obs {
    /// ListCollections names.
    pub listed: Vec<String>,
    /// Each listed collection.
    pub colls: BTreeMap<String, CollObs>,
    /// Calls that failed (each is a violation: a quiescent server answers every read).
    pub errors: Vec<String>,
}

type R<T> = Result<T, String>;

fn failed(what: &str, s: tonic::Status) -> String {
    format!("{what}: {:?} {}", s.code(), s.message())
}

/// Reads everything.
pub async fn observe(c: &mut Clients) -> Obs {
    let mut obs = Obs::default();
    let list = c
        .collections
        .list_collections(pb::ListCollectionsRequest {})
        .await;
    match list {
        Ok(r) => {
            obs.listed = r
                .into_inner()
                .collections
                .into_iter()
                .map(|c| c.name)
                .collect()
        }
        Err(s) => obs.errors.push(failed("ListCollections", s)),
    }
    for name in obs.listed.clone() {
        match collection(c, &name).await {
            Ok(co) => {
                obs.colls.insert(name, co);
            }
            Err(e) => obs.errors.push(format!("collection {name:?}: {e}")),
        }
    }
    obs
}

async fn collection(c: &mut Clients, name: &str) -> R<CollObs> {
    let info = c
        .collections
        .get_collection(pb::GetCollectionRequest { name: name.into() })
        .await
        .map_err(|s| failed("GetCollection", s))?
        .into_inner();
    let mut co = CollObs {
        info,
        items: items(c, name).await?,
        users: users(c, name).await?,
        history: BTreeMap::new(),
        versions: Vec::new(),
        sids: BTreeMap::new(),
        probes: Vec::new(),
        prefix_searches: Vec::new(),
        search: Vec::new(),
    };
    for u in 0..USER_POOL {
        let id = user_id(u);
        let h = history(c, name, &id).await?;
        co.history.insert(id, h);
    }
    co.versions = c
        .training
        .list_model_versions(pb::ListModelVersionsRequest {
            collection: name.into(),
        })
        .await
        .map_err(|s| failed("ListModelVersions", s))?
        .into_inner()
        .versions;
    for kind in Kind::BOTH {
        let s = sids(c, name, kind, &co).await?;
        if let Ok(entries) = &s.scan {
            co.probes.extend(probes(c, name, kind, entries).await?);
            if kind == Kind::Items {
                co.prefix_searches = prefix_searches(c, name, entries).await?;
            }
        }
        co.sids.insert(kind, s);
    }
    co.search = search(c, name, Vec::new()).await?;
    Ok(co)
}

fn pool(n: usize, id: fn(usize) -> String) -> Vec<String> {
    (0..n).map(id).collect()
}

async fn items(c: &mut Clients, name: &str) -> R<BTreeMap<String, (Val, Option<pb::SemanticId>)>> {
    let r = c
        .items
        .get_items(pb::GetItemsRequest {
            collection: name.into(),
            ids: pool(ITEM_POOL, item_id),
            with_vectors: true,
        })
        .await
        .map_err(|s| failed("GetItems", s))?
        .into_inner();
    Ok(r.items
        .into_iter()
        .map(|it| (it.id.clone(), (Val::of_item(&it), it.sid)))
        .collect())
}

async fn users(c: &mut Clients, name: &str) -> R<BTreeMap<String, (Val, Option<pb::SemanticId>)>> {
    let r = c
        .users
        .get_users(pb::GetUsersRequest {
            collection: name.into(),
            ids: pool(USER_POOL, user_id),
            with_vectors: true,
        })
        .await
        .map_err(|s| failed("GetUsers", s))?
        .into_inner();
    Ok(r.users
        .into_iter()
        .map(|u| (u.id.clone(), (Val::of_user(&u), u.sid)))
        .collect())
}

/// A user's whole history, paged (small pages, so paging itself is exercised).
async fn history(c: &mut Clients, name: &str, user: &str) -> R<Vec<pb::Interaction>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .interactions
            .get_user_history(pb::GetUserHistoryRequest {
                collection: name.into(),
                user_id: user.into(),
                limit: 64,
                page_token: token,
            })
            .await
            .map_err(|s| failed("GetUserHistory", s))?
            .into_inner();
        out.extend(page.interactions);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// A full PrefixScan under `prefix`, in pages of 7.
async fn scan(
    c: &mut Clients,
    name: &str,
    kind: Kind,
    prefix: &[u32],
) -> Result<Vec<pb::PrefixEntry>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .retrieval
            .prefix_scan(pb::PrefixScanRequest {
                collection: name.into(),
                entity: kind.proto(),
                prefix: prefix.to_vec(),
                limit: 7,
                page_token: token,
            })
            .await?
            .into_inner();
        out.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

async fn stats(
    c: &mut Clients,
    name: &str,
    kind: Kind,
    prefix: &[u32],
) -> R<(u64, BTreeMap<u32, u64>)> {
    let r = c
        .retrieval
        .prefix_stats(pb::PrefixStatsRequest {
            collection: name.into(),
            entity: kind.proto(),
            prefix: prefix.to_vec(),
        })
        .await
        .map_err(|s| failed("PrefixStats", s))?
        .into_inner();
    Ok((r.total, r.children.into_iter().collect()))
}

async fn sids(c: &mut Clients, name: &str, kind: Kind, co: &CollObs) -> R<SidObs> {
    let scan = match scan(c, name, kind, &[]).await {
        Ok(v) => Ok(v),
        Err(s) if s.code() == Code::FailedPrecondition => Err(s.code()),
        Err(s) => return Err(failed("PrefixScan", s)),
    };
    let mut out = SidObs {
        scan,
        lookup: None,
        root: None,
    };
    if out.scan.is_err() {
        return Ok(out);
    }
    out.root = Some(stats(c, name, kind, &[]).await?);
    let ids: Vec<String> = co.present(kind).keys().cloned().collect();
    if !ids.is_empty() {
        let r = c
            .retrieval
            .get_semantic_ids(pb::GetSemanticIdsRequest {
                collection: name.into(),
                entity: kind.proto(),
                ids,
                model_version: 0,
            })
            .await
            .map_err(|s| failed("GetSemanticIds", s))?
            .into_inner();
        let mut missing = r.missing_ids;
        missing.sort();
        out.lookup = Some((r.sids.into_iter().collect(), missing));
    }
    Ok(out)
}

/// Every prefix the scanned SIDs hold (each level-1 code, each full code tuple).
pub fn prefixes_of(entries: &[pb::PrefixEntry]) -> BTreeSet<Vec<u32>> {
    let mut out = BTreeSet::new();
    for e in entries {
        let codes = e.sid.as_ref().map(|s| s.codes.clone()).unwrap_or_default();
        for n in 1..=codes.len() {
            out.insert(codes[..n].to_vec());
        }
    }
    out
}

async fn probes(
    c: &mut Clients,
    name: &str,
    kind: Kind,
    entries: &[pb::PrefixEntry],
) -> R<Vec<Probe>> {
    let mut out = Vec::new();
    for prefix in prefixes_of(entries) {
        let (total, children) = stats(c, name, kind, &prefix).await?;
        let ids = scan(c, name, kind, &prefix)
            .await
            .map_err(|s| failed("PrefixScan", s))?
            .into_iter()
            .map(|e| e.id)
            .collect();
        out.push(Probe {
            kind,
            prefix,
            total,
            children,
            ids,
        });
    }
    Ok(out)
}

async fn prefix_searches(
    c: &mut Clients,
    name: &str,
    entries: &[pb::PrefixEntry],
) -> R<Vec<(u32, Vec<String>)>> {
    let firsts: BTreeSet<u32> = entries
        .iter()
        .filter_map(|e| e.sid.as_ref()?.codes.first().copied())
        .collect();
    let mut out = Vec::new();
    for code in firsts {
        let hits = search(c, name, vec![code]).await?;
        out.push((code, hits.into_iter().map(|h| h.id).collect()));
    }
    Ok(out)
}

/// The checker's query vector.
pub fn query_vector() -> pb::Vector {
    pb::Vector {
        values: (0..ITEM_DIM).map(|d| 1.0 / (d as f32 + 1.0)).collect(),
    }
}

async fn search(c: &mut Clients, name: &str, sid_prefix: Vec<u32>) -> R<Vec<pb::Hit>> {
    let r = c
        .retrieval
        .search(pb::SearchRequest {
            collection: name.into(),
            query: Some(pb::search_request::Query::Vector(query_vector())),
            k: SEARCH_K,
            sid_prefix,
            with_vectors: true,
            ..Default::default()
        })
        .await
        .map_err(|s| failed("Search", s))?
        .into_inner();
    Ok(r.hits)
}
