//! Unit tests and model-based property tests of the trie against a `Vec` oracle.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::error::Error;

fn sid(codes: &[u32], suffix: u32) -> SemanticId {
    SemanticId {
        codes: codes.to_vec(),
        suffix,
        model_version: 7,
    }
}

/// Scans the whole bucket of `prefix` page by page, round-tripping each cursor through its token.
fn scan_all(trie: &SidTrie, prefix: &[u32], page_sizes: &[usize]) -> Vec<(String, SemanticId)> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    for i in 0.. {
        let limit = page_sizes[i % page_sizes.len()];
        let (page, next) = trie
            .scan(prefix, cursor.as_ref(), limit)
            .expect("own cursor");
        assert!(page.len() <= limit);
        out.extend(page.into_iter().map(|e| (e.id.to_string(), e.sid)));
        match next {
            Some(c) => cursor = Some(Cursor::from_token(&c.to_token()).expect("own token")),
            None => break,
        }
    }
    out
}

#[test]
fn insert_replaces_and_remove_uncounts() {
    let mut t = SidTrie::new();
    assert_eq!(t.insert("a", sid(&[1, 2], 0)), None);
    t.insert("b", sid(&[1, 3], 0));
    assert_eq!(t.insert("a", sid(&[2, 2], 0)), Some(sid(&[1, 2], 0)));
    assert_eq!(t.count(&[]), 2);
    assert_eq!(t.count(&[1]), 1);
    assert_eq!(t.children(&[]), BTreeMap::from([(1, 1), (2, 1)]));
    assert_eq!(t.remove("b"), Some(sid(&[1, 3], 0)));
    assert_eq!(t.count(&[1]), 0);
    assert!(t.children(&[1]).is_empty());
    assert_eq!(t.get("a"), Some(&sid(&[2, 2], 0)));
    assert_eq!(t.len(), 1);
}

#[test]
fn longest_prefix_stops_at_the_first_small_bucket() {
    let t = SidTrie::from_entries([
        ("a", sid(&[1, 2, 3], 0)),
        ("b", sid(&[1, 2, 4], 0)),
        ("c", sid(&[1, 5, 3], 0)),
    ]);
    assert_eq!(
        t.longest_prefix_with_at_least(&[1, 2, 3], 2),
        Some(&[1, 2][..])
    );
    assert_eq!(
        t.longest_prefix_with_at_least(&[1, 2, 3], 1),
        Some(&[1, 2, 3][..])
    );
    assert_eq!(t.longest_prefix_with_at_least(&[9, 2, 3], 3), Some(&[][..]));
    assert_eq!(t.longest_prefix_with_at_least(&[1], 4), None);
}

#[test]
fn pages_stay_exact_while_writes_land_between_them() {
    let mut t = SidTrie::from_entries((0..50).map(|i| (format!("e{i:02}"), sid(&[i % 3], i))));
    let (first, cursor) = t.scan(&[], None, 20).expect("first page");
    // Writes between pages: remove seen and unseen entities, add new ones.
    t.remove(&first[0].id);
    t.insert("zz", sid(&[0], 999));
    let rest = scan_all_from(&t, cursor.expect("more pages"));
    let mut seen: Vec<String> = first.iter().map(|e| e.id.to_string()).collect();
    seen.extend(rest);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no entity twice");
    for i in 1..50 {
        assert!(
            unique.contains(&format!("e{i:02}")),
            "e{i:02} present throughout, seen once"
        );
    }
}

fn scan_all_from(t: &SidTrie, mut cursor: Cursor) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let (page, next) = t.scan(&[], Some(&cursor), 7).expect("own cursor");
        out.extend(page.iter().map(|e| e.id.to_string()));
        match next {
            Some(c) => cursor = c,
            None => return out,
        }
    }
}

#[test]
fn malformed_tokens_are_invalid_argument_naming_page_token() {
    let t = SidTrie::from_entries([("a", sid(&[1, 2], 0)), ("b", sid(&[1, 3], 0))]);
    let (_, next) = t.scan(&[1], None, 1).expect("scan");
    let token = next.expect("a second page").to_token();
    let mut flipped = token.clone().into_bytes();
    flipped[6] = if flipped[6] == b'0' { b'1' } else { b'0' };
    let bad = [
        String::new(),
        "zz".into(),
        "abc".into(),
        token.to_uppercase(),
        token[..token.len() - 2].to_string(),
        format!("{token}00"),
        String::from_utf8(flipped).expect("hex"),
    ];
    for b in &bad {
        match Cursor::from_token(b) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("page_token"), "{m}"),
            other => panic!("{b:?} gave {other:?}"),
        }
    }
    let cursor = Cursor::from_token(&token).expect("valid");
    match t.scan(&[2], Some(&cursor), 1) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("page_token")),
        other => panic!("foreign prefix gave {other:?}"),
    }
}

#[test]
fn a_foreign_token_of_a_long_prefix_is_named_briefly() {
    // A token may carry 65,536 prefix codes; the message quoted them all (some 400 KB).
    let t = SidTrie::from_entries([("a", sid(&[1, 2], 0))]);
    let long: Vec<u32> = (0..60_000).collect();
    let cursor = Cursor::after(&long, &sid(&long, 0), &std::sync::Arc::from("a"));
    let token = Cursor::from_token(&cursor.to_token()).expect("valid");
    match t.scan(&[1], Some(&token), 1) {
        Err(Error::InvalidArgument(m)) => {
            assert!(
                m.starts_with("page_token was issued for prefix [0, 1,"),
                "{m}"
            );
            assert!(m.contains("(60000 codes), not [1]") && m.len() < 200, "{m}");
        }
        other => panic!("foreign prefix gave {other:?}"),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, Vec<u32>, u32),
    Remove(usize),
    Rebuild,
}

fn op() -> impl Strategy<Value = Op> {
    // Few ids, codes and suffixes so replaces, shared prefixes and ties are common.
    let codes = prop::collection::vec(0u32..3, 0..=3);
    prop_oneof![
        6 => (0usize..24, codes, 0u32..3).prop_map(|(i, c, s)| Op::Insert(i, c, s)),
        3 => (0usize..24).prop_map(Op::Remove),
        1 => Just(Op::Rebuild),
    ]
}

/// Applies `ops` to the trie and to the oracle (a plain `Vec` of `(id, sid)`).
fn run(ops: &[Op]) -> (SidTrie, Vec<(String, SemanticId)>) {
    let mut trie = SidTrie::new();
    let mut oracle: Vec<(String, SemanticId)> = Vec::new();
    for op in ops {
        match op {
            Op::Insert(i, codes, suffix) => {
                let id = format!("id{i}");
                oracle.retain(|(o, _)| *o != id);
                oracle.push((id.clone(), sid(codes, *suffix)));
                trie.insert(&id, sid(codes, *suffix));
            }
            Op::Remove(i) => {
                let id = format!("id{i}");
                let had = oracle
                    .iter()
                    .position(|(o, _)| *o == id)
                    .map(|p| oracle.remove(p));
                assert_eq!(trie.remove(&id), had.map(|(_, s)| s));
            }
            Op::Rebuild => {
                let all: Vec<(Arc<str>, SemanticId)> = trie
                    .iter()
                    .map(|(i, s)| (Arc::clone(i), s.clone()))
                    .collect();
                trie = SidTrie::from_entries(all);
            }
        }
    }
    (trie, oracle)
}

/// Every prefix of every stored SID, plus some that match nothing.
fn prefixes(oracle: &[(String, SemanticId)]) -> BTreeSet<Vec<u32>> {
    let mut out: BTreeSet<Vec<u32>> = [vec![], vec![5], vec![0, 5], vec![1, 1, 1, 1]].into();
    for (_, s) in oracle {
        for len in 0..=s.codes.len() {
            out.insert(s.codes[..len].to_vec());
        }
    }
    out
}

fn oracle_scan(oracle: &[(String, SemanticId)], prefix: &[u32]) -> Vec<(String, SemanticId)> {
    let mut v: Vec<_> = oracle
        .iter()
        .filter(|(_, s)| s.codes.starts_with(prefix))
        .cloned()
        .collect();
    v.sort_by(|a, b| (&a.1.codes, a.1.suffix, &a.0).cmp(&(&b.1.codes, b.1.suffix, &b.0)));
    v
}

fn oracle_children(oracle: &[(String, SemanticId)], prefix: &[u32]) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for (_, s) in oracle {
        if s.codes.starts_with(prefix) && s.codes.len() > prefix.len() {
            *m.entry(s.codes[prefix.len()]).or_default() += 1;
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn trie_matches_vec_oracle(
        ops in prop::collection::vec(op(), 0..80),
        page_sizes in prop::collection::vec(1usize..6, 1..4),
    ) {
        let (trie, oracle) = run(&ops);
        prop_assert_eq!(trie.len(), oracle.len());
        for (id, s) in &oracle {
            prop_assert_eq!(trie.get(id), Some(s));
        }
        for prefix in prefixes(&oracle) {
            let want = oracle_scan(&oracle, &prefix);
            prop_assert_eq!(trie.count(&prefix), want.len() as u64);
            prop_assert_eq!(trie.children(&prefix), oracle_children(&oracle, &prefix));
            prop_assert_eq!(&scan_all(&trie, &prefix, &page_sizes), &want);
            let ids: Vec<String> = trie.ids_under(&prefix).map(|i| i.to_string()).collect();
            let want_ids: Vec<String> = want.iter().map(|(i, _)| i.clone()).collect();
            prop_assert_eq!(ids, want_ids);
            for min in 0..4u64 {
                let got = trie.longest_prefix_with_at_least(&prefix, min).map(|p| p.len());
                let want_len = (0..=prefix.len())
                    .take_while(|&l| oracle_scan(&oracle, &prefix[..l]).len() as u64 >= min)
                    .last();
                prop_assert_eq!(got, want_len);
            }
        }
    }
}

#[test]
fn tags_follow_their_entries_in_scan_order() {
    let mut t = SidTrie::from_tagged([
        ("b", sid(&[1, 2], 0), 20),
        ("a", sid(&[1, 2], 0), 10),
        ("c", sid(&[2], 0), 30),
    ]);
    assert_eq!(t.tags_under(&[1]).collect::<Vec<_>>(), [10, 20]);
    // a new SID moves the entry with its new tag; a removed entry takes its tag with it
    t.insert_tagged("a", sid(&[2, 5], 0), 11);
    t.remove("b");
    assert_eq!(t.tags_under(&[1]).count(), 0);
    assert_eq!(t.tags_under(&[2]).collect::<Vec<_>>(), [30, 11]);
    assert_eq!(t.tags_under(&[]).count(), t.len());
    // untagged inserts carry 0
    t.insert("d", sid(&[3], 0));
    assert_eq!(t.tags_under(&[3]).collect::<Vec<_>>(), [0]);
    // a later pair for the same id replaces the earlier one, tag and all
    let t = SidTrie::from_tagged([("a", sid(&[1], 0), 1), ("a", sid(&[2], 0), 2)]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.get("a"), Some(&sid(&[2], 0)));
    assert_eq!(t.tags_under(&[]).collect::<Vec<_>>(), [2]);
    assert_eq!(t.count(&[1]), 0);
}
