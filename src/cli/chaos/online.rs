//! The reads of the workload and what each reply is checked for while writes go on: only what
//! the model allows (no content or id that was never written in this incarnation), every item
//! with a SID once a model version is known active, one version per reply, stats that add up.

use std::collections::BTreeSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sidb::proto as pb;

use super::model::{
    item_id, user_id, Kind, Status as WStatus, Val, ITEM_DIM, ITEM_POOL, USER_DIM, USER_POOL,
};
use super::rpc::{call, Call, Clients};
use super::shared::Shared;

fn pool_ids(rng: &mut ChaCha8Rng, kind: Kind) -> Vec<String> {
    let (n, id): (usize, fn(usize) -> String) = match kind {
        Kind::Items => (ITEM_POOL, item_id),
        Kind::Users => (USER_POOL, user_id),
    };
    let k = rng.random_range(1..=8);
    let set: BTreeSet<String> = (0..k).map(|_| id(rng.random_range(0..n))).collect();
    set.into_iter().collect()
}

/// Starts a read of `slot`: its name and whether a version was seen active before it.
fn begin(sh: &Shared, slot: usize, rpc: &str) -> Option<(String, bool)> {
    let mut m = sh.model.lock();
    m.call(rpc);
    let name = m.slots[slot].name.clone();
    let seen = m.present(slot)?.active_seen;
    Some((name, seen))
}

/// One entity read by GetItems / GetUsers: (id, content, SID).
type Got = (String, Val, Option<pb::SemanticId>);

/// GetItems or GetUsers of a few pool ids.
pub async fn get(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize, kind: Kind) {
    let _gate = sh.gates[slot].read().await;
    let rpc = match kind {
        Kind::Items => "GetItems",
        Kind::Users => "GetUsers",
    };
    let Some((name, seen)) = begin(sh, slot, rpc) else {
        return;
    };
    let ids = pool_ids(rng, kind);
    let with_vectors = rng.random_bool(0.5);
    let got: Call<Vec<Got>> = match kind {
        Kind::Items => {
            let req = pb::GetItemsRequest {
                collection: name.clone(),
                ids,
                with_vectors,
            };
            match call(sh.hang, c.items.get_items(req)).await {
                Call::Ok(r) => Call::Ok(
                    r.items
                        .iter()
                        .map(|x| (x.id.clone(), Val::of_item(x), x.sid.clone()))
                        .collect(),
                ),
                Call::Err(s) => Call::Err(s),
                Call::Hung => Call::Hung,
            }
        }
        Kind::Users => {
            let req = pb::GetUsersRequest {
                collection: name.clone(),
                ids,
                with_vectors,
            };
            match call(sh.hang, c.users.get_users(req)).await {
                Call::Ok(r) => Call::Ok(
                    r.users
                        .iter()
                        .map(|x| (x.id.clone(), Val::of_user(x), x.sid.clone()))
                        .collect(),
                ),
                Call::Err(s) => Call::Err(s),
                Call::Hung => Call::Hung,
            }
        }
    };
    let Call::Ok(got) = got else {
        sh.judge(rpc, slot, &got, true);
        return;
    };
    for v in check_get(sh, slot, kind, &got, with_vectors, seen) {
        sh.fail(&v.0, &name, v.1);
    }
}

/// The online checks of one GetItems/GetUsers reply; (class, detail) of each violation.
pub fn check_get(
    sh: &Shared,
    slot: usize,
    kind: Kind,
    got: &[Got],
    with_vectors: bool,
    seen: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut m = sh.model.lock();
    let Some(inc) = m.present(slot) else {
        return out;
    };
    let any_sid = got.iter().any(|g| g.2.is_some());
    for (id, val, sid) in got {
        let possible = inc.possible(kind, id);
        let fits = |p: &Option<&Val>| match p {
            Some(p) if with_vectors => *p == val,
            Some(p) => p.attrs == val.attrs,
            None => false,
        };
        if !possible.iter().any(fits) {
            out.push((
                "phantom-value".into(),
                format!(
                    "{} {id} read with content of op {:?}, never written there",
                    kind.noun(),
                    val.op()
                ),
            ));
        }
        if kind == Kind::Items && sid.is_none() && (seen || any_sid) {
            let racing: Vec<String> = inc
                .writes
                .iter()
                .filter(|w| {
                    w.status == WStatus::Pending
                        && w.what.entity() == Some(kind)
                        && w.ents.iter().any(|e| &e.0 == id)
                })
                .map(|w| format!("{:?} op {}", w.what, w.op))
                .collect();
            out.push(("torn-read".into(), format!(
                "GetItems returned item {id} without a SID while a model version is active (other items of the reply have one: {any_sid}; writes of {id} in flight: {racing:?})"
            )));
        }
    }
    let versions: BTreeSet<u64> = got
        .iter()
        .filter_map(|g| g.2.as_ref().map(|s| s.model_version))
        .collect();
    if versions.len() > 1 {
        out.push((
            "torn-read".into(),
            format!(
                "one {} reply holds SIDs of versions {versions:?}",
                kind.noun()
            ),
        ));
    }
    inc.active_seen |= any_sid;
    out
}

/// Ids of `kind` never written in this incarnation, among `ids`.
fn unknown_ids<'a>(
    sh: &Shared,
    slot: usize,
    kind: Kind,
    ids: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut m = sh.model.lock();
    let Some(inc) = m.present(slot) else {
        return Vec::new();
    };
    ids.filter(|id| !inc.known(kind, id))
        .map(str::to_string)
        .collect()
}

/// Search by a vector, an item or a user, of items or users, sometimes under a SID prefix.
pub async fn search(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize) {
    use pb::search_request::Query;
    let _gate = sh.gates[slot].read().await;
    let Some((name, seen)) = begin(sh, slot, "Search") else {
        return;
    };
    let kind = if rng.random_bool(0.25) {
        Kind::Users
    } else {
        Kind::Items
    };
    let dim = if kind == Kind::Users {
        USER_DIM
    } else {
        ITEM_DIM
    };
    let query = match rng.random_range(0..3) {
        0 if kind == Kind::Items => Query::ItemId(item_id(rng.random_range(0..ITEM_POOL))),
        1 => Query::UserId(user_id(rng.random_range(0..USER_POOL))),
        _ => Query::Vector(pb::Vector {
            values: (0..dim).map(|_| rng.random_range(0.1f32..1.0)).collect(),
        }),
    };
    let sid_prefix = if seen && rng.random_bool(0.3) {
        vec![rng.random_range(0..super::model::CODES)]
    } else {
        vec![]
    };
    let req = pb::SearchRequest {
        collection: name.clone(),
        query: Some(query),
        k: rng.random_range(1..=20),
        sid_prefix: sid_prefix.clone(),
        entity: kind.proto(),
        with_vectors: rng.random_bool(0.3),
        ..Default::default()
    };
    let r = call(sh.hang, c.retrieval.search(req)).await;
    let Call::Ok(resp) = r else {
        sh.judge("Search", slot, &r, true);
        return;
    };
    let mut ids = BTreeSet::new();
    for h in &resp.hits {
        if !ids.insert(h.id.as_str()) {
            sh.fail(
                "search-duplicate",
                &name,
                format!("Search returned {} twice", h.id),
            );
        }
        let under = h
            .sid
            .as_ref()
            .is_some_and(|s| s.codes.starts_with(&sid_prefix));
        if !sid_prefix.is_empty() && !under {
            sh.fail(
                "search-prefix-mismatch",
                &name,
                format!(
                    "Search under {sid_prefix:?} returned {} with SID {:?}",
                    h.id, h.sid
                ),
            );
        }
    }
    for id in unknown_ids(sh, slot, kind, ids.into_iter()) {
        sh.fail(
            "phantom-id",
            &name,
            format!(
                "Search returned {} {id}, never written in this collection",
                kind.noun()
            ),
        );
    }
}

/// One page of a PrefixScan.
pub async fn prefix_scan(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize) {
    let _gate = sh.gates[slot].read().await;
    let Some((name, _)) = begin(sh, slot, "PrefixScan") else {
        return;
    };
    let kind = if rng.random_bool(0.3) {
        Kind::Users
    } else {
        Kind::Items
    };
    let prefix = if rng.random_bool(0.5) {
        vec![rng.random_range(0..super::model::CODES)]
    } else {
        vec![]
    };
    let req = pb::PrefixScanRequest {
        collection: name.clone(),
        entity: kind.proto(),
        prefix: prefix.clone(),
        limit: rng.random_range(1..=50),
        page_token: String::new(),
    };
    let r = call(sh.hang, c.retrieval.prefix_scan(req)).await;
    let Call::Ok(page) = r else {
        sh.judge("PrefixScan", slot, &r, true);
        return;
    };
    let mut ids = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for e in &page.entries {
        if !ids.insert(e.id.as_str()) {
            sh.fail(
                "scan-duplicate",
                &name,
                format!("one PrefixScan page holds {} twice", e.id),
            );
        }
        let sid = e.sid.as_ref();
        versions.insert(sid.map(|s| s.model_version).unwrap_or(0));
        if !sid.is_some_and(|s| s.codes.starts_with(&prefix)) {
            sh.fail(
                "trie-disagreement",
                &name,
                format!("PrefixScan {prefix:?} returned {} with SID {sid:?}", e.id),
            );
        }
    }
    if versions.len() > 1 {
        sh.fail(
            "sid-wrong-version",
            &name,
            format!("one PrefixScan page holds SIDs of versions {versions:?}"),
        );
    }
    if !page.entries.is_empty() {
        if let Some(inc) = sh.model.lock().present(slot) {
            inc.active_seen = true;
        }
    }
    for id in unknown_ids(sh, slot, kind, ids.into_iter()) {
        sh.fail(
            "phantom-id",
            &name,
            format!(
                "PrefixScan returned {} {id}, never written in this collection",
                kind.noun()
            ),
        );
    }
}

/// PrefixStats of the root: the children add up to the total.
pub async fn prefix_stats(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize) {
    let _gate = sh.gates[slot].read().await;
    let Some((name, _)) = begin(sh, slot, "PrefixStats") else {
        return;
    };
    let kind = if rng.random_bool(0.3) {
        Kind::Users
    } else {
        Kind::Items
    };
    let req = pb::PrefixStatsRequest {
        collection: name.clone(),
        entity: kind.proto(),
        prefix: vec![],
    };
    let r = call(sh.hang, c.retrieval.prefix_stats(req)).await;
    let Call::Ok(st) = r else {
        sh.judge("PrefixStats", slot, &r, true);
        return;
    };
    let sum: u64 = st.children.values().sum();
    if sum != st.total {
        sh.fail(
            "stats-mismatch",
            &name,
            format!(
                "PrefixStats root total {} but children sum to {sum}",
                st.total
            ),
        );
    }
}

/// GetSemanticIds of a few ids: only ids asked for, one version.
pub async fn semantic_ids(sh: &Shared, c: &mut Clients, rng: &mut ChaCha8Rng, slot: usize) {
    let _gate = sh.gates[slot].read().await;
    let Some((name, _)) = begin(sh, slot, "GetSemanticIds") else {
        return;
    };
    let kind = if rng.random_bool(0.3) {
        Kind::Users
    } else {
        Kind::Items
    };
    let ids = pool_ids(rng, kind);
    let req = pb::GetSemanticIdsRequest {
        collection: name.clone(),
        entity: kind.proto(),
        ids: ids.clone(),
        model_version: 0,
    };
    let r = call(sh.hang, c.retrieval.get_semantic_ids(req)).await;
    let Call::Ok(resp) = r else {
        sh.judge("GetSemanticIds", slot, &r, true);
        return;
    };
    let versions: BTreeSet<u64> = resp.sids.values().map(|s| s.model_version).collect();
    if versions.len() > 1 {
        sh.fail(
            "sid-wrong-version",
            &name,
            format!("one GetSemanticIds reply holds versions {versions:?}"),
        );
    }
    for id in resp.sids.keys().chain(&resp.missing_ids) {
        if !ids.contains(id) {
            sh.fail(
                "sid-disagreement",
                &name,
                format!("GetSemanticIds answered for {id}, not asked for"),
            );
        }
    }
    if resp.sids.len() + resp.missing_ids.len() != ids.len() {
        sh.fail(
            "sid-disagreement",
            &name,
            format!(
                "GetSemanticIds of {} ids answered {} + {} missing",
                ids.len(),
                resp.sids.len(),
                resp.missing_ids.len()
            ),
        );
    }
}

/// GetCollection: the config is the one created; a version seen active is remembered.
pub async fn info(sh: &Shared, c: &mut Clients, slot: usize) {
    let _gate = sh.gates[slot].read().await;
    let Some((name, _)) = begin(sh, slot, "GetCollection") else {
        return;
    };
    let r = call(
        sh.hang,
        c.collections
            .get_collection(pb::GetCollectionRequest { name: name.clone() }),
    )
    .await;
    let Call::Ok(info) = r else {
        sh.judge("GetCollection", slot, &r, true);
        return;
    };
    let mut m = sh.model.lock();
    let Some(inc) = m.present(slot) else { return };
    if info.config.as_ref() != Some(&inc.config) {
        let detail = format!("GetCollection config {:?}", info.config);
        drop(m);
        sh.fail("config-changed", &name, detail);
        return;
    }
    inc.active_seen |= info.active_model_version != 0;
}
