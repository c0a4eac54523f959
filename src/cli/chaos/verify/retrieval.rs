//! The checks of what the restarted server serves beyond the stored rows: model versions, SIDs,
//! paged prefix scans against the trie's counts, and searches.

use super::*;

pub(super) fn versions(inc: &Inc, co: &CollObs, ctx: &Ctx, f: &mut Findings) {
    f.invariant();
    let active = co.info.active_model_version;
    let listed: Vec<u64> = co.versions.iter().map(|v| v.version).collect();
    let flagged: Vec<u64> = co
        .versions
        .iter()
        .filter(|v| v.active)
        .map(|v| v.version)
        .collect();
    let want: Vec<u64> = if active == 0 { vec![] } else { vec![active] };
    f.cmp(flagged == want, "active-version", || {
        format!("active_model_version {active}, versions flagged active {flagged:?} (listed {listed:?})")
    });
    f.cmp(
        listed.len() <= ctx.keep_versions,
        "versions-beyond-keep",
        || {
            format!(
                "{} versions kept {listed:?}, keep_versions {}",
                listed.len(),
                ctx.keep_versions
            )
        },
    );
    let v = &inc.versions;
    f.cmp(v.allows(active), "active-version-rolled-back", || {
        format!(
            "active version {active}; known active {:?} (versions above {} or {:?} may have followed)",
            v.floor, v.floor_max_seen, v.after
        )
    });
}

pub(super) fn same_sid(a: Option<&pb::SemanticId>, b: Option<&pb::SemanticId>) -> bool {
    a == b
}

pub(super) fn sids(co: &CollObs, f: &mut Findings) {
    let active = co.info.active_model_version;
    for kind in Kind::BOTH {
        f.invariant();
        let Some(s) = co.sids.get(&kind) else {
            continue;
        };
        match (&s.scan, active) {
            (Err(code), 0) => {
                f.cmp(
                    *code == Code::FailedPrecondition,
                    "sid-without-model",
                    || format!("PrefixScan refused with {code:?}"),
                );
                for (id, (_, sid)) in co.present(kind) {
                    f.cmp(sid.is_none(), "sid-without-model", || {
                        format!("{} {id} has SID {sid:?} with no model active", kind.noun())
                    });
                }
            }
            (Ok(entries), 0) => {
                f.cmp(entries.is_empty(), "sid-without-model", || {
                    format!(
                        "{} {}s under SIDs with no model active",
                        entries.len(),
                        kind.noun()
                    )
                });
            }
            (Err(code), _) => f.fail(
                "sid-missing",
                format!(
                    "PrefixScan of {}s refused with {code:?} while version {active} is active",
                    kind.noun()
                ),
            ),
            (Ok(entries), _) => scanned(co, kind, entries, active, s, f),
        }
    }
}

pub(super) fn scanned(
    co: &CollObs,
    kind: Kind,
    entries: &[pb::PrefixEntry],
    active: u64,
    s: &super::super::observe::SidObs,
    f: &mut Findings,
) {
    let noun = kind.noun();
    let present = co.present(kind);
    let mut by_id: BTreeMap<&str, &pb::SemanticId> = BTreeMap::new();
    let mut tuples = BTreeSet::new();
    let mut prev: Option<(Vec<u32>, u32, &str)> = None;
    for e in entries {
        let Some(sid) = e.sid.as_ref() else {
            f.fail("sid-invalid", format!("scan entry {} without a SID", e.id));
            continue;
        };
        f.cmp(by_id.insert(&e.id, sid).is_none(), "scan-duplicate", || {
            format!("{noun} {} scanned twice", e.id)
        });
        f.cmp(present.contains_key(&e.id), "phantom-in-scan", || {
            format!("{noun} {} scanned but not present", e.id)
        });
        f.cmp(sid.model_version == active, "sid-wrong-version", || {
            format!(
                "{noun} {} has a SID of version {}, active {active}",
                e.id, sid.model_version
            )
        });
        f.cmp(
            sid.codes.len() == LEVELS as usize && sid.codes.iter().all(|c| *c < CODES),
            "sid-invalid",
            || format!("{noun} {}: codes {:?}", e.id, sid.codes),
        );
        f.cmp(
            tuples.insert((sid.codes.clone(), sid.suffix)),
            "sid-duplicate",
            || {
                format!(
                    "{noun} {}: SID {:?}/{} held twice",
                    e.id, sid.codes, sid.suffix
                )
            },
        );
        let key = (sid.codes.clone(), sid.suffix, e.id.as_str());
        if let Some(p) = &prev {
            f.cmp(*p < key, "scan-order", || {
                format!("{noun} {} scanned after {}", e.id, p.2)
            });
        }
        prev = Some(key);
    }
    for (id, (_, sid)) in present {
        let scanned = by_id.get(id.as_str()).copied();
        if kind == Kind::Items {
            f.cmp(scanned.is_some(), "sid-missing", || {
                format!("item {id} has no SID while version {active} is active")
            });
        }
        f.cmp(same_sid(sid.as_ref(), scanned), "sid-disagreement", || {
            format!("{noun} {id}: GetItems/GetUsers SID {sid:?}, PrefixScan {scanned:?}")
        });
    }
    if let Some((found, missing)) = &s.lookup {
        for id in present.keys() {
            let (a, b) = (found.get(id), by_id.get(id.as_str()).copied());
            f.cmp(same_sid(a, b), "sid-disagreement", || {
                format!("{noun} {id}: GetSemanticIds {a:?}, PrefixScan {b:?}")
            });
        }
        let want: Vec<&String> = present
            .keys()
            .filter(|id| !by_id.contains_key(id.as_str()))
            .collect();
        let got: Vec<&String> = missing.iter().collect();
        f.cmp(got == want, "sid-disagreement", || {
            format!("GetSemanticIds missing {got:?}, without SID in the scan {want:?}")
        });
    }
    trie(co, kind, entries, s, f);
}

/// Entries under `prefix`.
pub(super) fn under<'a>(
    entries: &'a [pb::PrefixEntry],
    prefix: &[u32],
) -> Vec<&'a pb::PrefixEntry> {
    entries
        .iter()
        .filter(|e| e.sid.as_ref().is_some_and(|s| s.codes.starts_with(prefix)))
        .collect()
}

pub(super) fn children(entries: &[&pb::PrefixEntry], depth: usize) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for e in entries {
        if let Some(c) = e.sid.as_ref().and_then(|s| s.codes.get(depth)) {
            *out.entry(*c).or_default() += 1;
        }
    }
    out
}

pub(super) fn trie(
    co: &CollObs,
    kind: Kind,
    entries: &[pb::PrefixEntry],
    s: &super::super::observe::SidObs,
    f: &mut Findings,
) {
    f.invariant();
    if let Some((total, kids)) = &s.root {
        let all: Vec<&pb::PrefixEntry> = entries.iter().collect();
        f.cmp(*total == entries.len() as u64, "stats-mismatch", || {
            format!(
                "PrefixStats root total {total}, PrefixScan {}",
                entries.len()
            )
        });
        let want = children(&all, 0);
        f.cmp(*kids == want, "stats-mismatch", || {
            format!("PrefixStats root children {kids:?}, PrefixScan {want:?}")
        });
    }
    for p in co.probes.iter().filter(|p| p.kind == kind) {
        let local = under(entries, &p.prefix);
        let mut want: Vec<&str> = local.iter().map(|e| e.id.as_str()).collect();
        let mut got: Vec<&str> = p.ids.iter().map(|s| s.as_str()).collect();
        want.sort();
        got.sort();
        f.cmp(got == want, "trie-disagreement", || {
            format!(
                "PrefixScan {:?} holds {got:?}, the full scan {want:?}",
                p.prefix
            )
        });
        f.cmp(p.total == p.ids.len() as u64, "stats-mismatch", || {
            format!(
                "PrefixStats {:?} total {}, PrefixScan {}",
                p.prefix,
                p.total,
                p.ids.len()
            )
        });
        let kids = children(&local, p.prefix.len());
        f.cmp(p.children == kids, "stats-mismatch", || {
            format!(
                "PrefixStats {:?} children {:?}, PrefixScan {kids:?}",
                p.prefix, p.children
            )
        });
    }
    if kind == Kind::Items {
        for (code, hits) in &co.prefix_searches {
            let mut want: Vec<&str> = under(entries, &[*code])
                .iter()
                .map(|e| e.id.as_str())
                .collect();
            let mut got: Vec<&str> = hits.iter().map(|s| s.as_str()).collect();
            want.sort();
            got.sort();
            let exact = want.len() <= SEARCH_K as usize;
            f.cmp(!exact || got == want, "search-prefix-mismatch", || {
                format!("Search under [{code}] found {got:?}, the bucket holds {want:?}")
            });
        }
    }
}

pub(super) fn search(co: &CollObs, f: &mut Findings) {
    f.invariant();
    let scan: BTreeMap<&str, &pb::SemanticId> = match co.sids.get(&Kind::Items).map(|s| &s.scan) {
        Some(Ok(entries)) => entries
            .iter()
            .filter_map(|e| Some((e.id.as_str(), e.sid.as_ref()?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut seen = BTreeSet::new();
    for h in &co.search {
        f.cmp(seen.insert(&h.id), "search-duplicate", || {
            format!("Search returned {} twice", h.id)
        });
        let Some((val, _)) = co.items.get(&h.id) else {
            f.fail(
                "search-phantom",
                format!("Search returned {}, which is not present", h.id),
            );
            continue;
        };
        let stored = val.vectors.first().map(|v| &v.1);
        let got: Option<Vec<u32>> = h
            .vector
            .as_ref()
            .map(|v| v.values.iter().map(|x| x.to_bits()).collect());
        f.cmp(got.as_ref() == stored, "search-mismatch", || {
            format!("Search hit {}: vector differs from GetItems", h.id)
        });
        let want = scan.get(h.id.as_str()).copied();
        f.cmp(same_sid(h.sid.as_ref(), want), "sid-disagreement", || {
            format!("Search hit {} SID {:?}, PrefixScan {want:?}", h.id, h.sid)
        });
    }
}
