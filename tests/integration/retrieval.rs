//! Retrieval: every RPC over real gRPC, against an exact oracle computed here, and its error rows.

use std::collections::{HashMap, HashSet};

use sidb::proto as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;

type Retrieval = pb::retrieval_client::RetrievalClient<Channel>;

const DIM: usize = 16;

async fn retrieval(s: &TestServer) -> Retrieval {
    pb::retrieval_client::RetrievalClient::new(s.channel().await)
}

/// Seeded clustered vectors, one per item, with client SIDs `(cluster-ish code, i % 4, i)`.
struct Data {
    ids: Vec<String>,
    vectors: Vec<Vec<f32>>,
    sids: Vec<Vec<u32>>,
}

fn data(n: usize, seed: u64) -> Data {
    let flat = sidb::index::synth::clustered(n, DIM, 8, 0.3, seed);
    let vectors: Vec<Vec<f32>> = flat.chunks(DIM).map(|c| c.to_vec()).collect();
    // Level 1: (i / 16) % 4; level 2: i % 4; level 3: i % 16 (which fixes level 2). Buckets hold
    // about n/4, n/16 and n/64 items, so tests can hit small and large buckets.
    let sids = (0..n)
        .map(|i| vec![((i / 16) % 4) as u32, (i % 4) as u32, (i % 16) as u32])
        .collect();
    Data {
        ids: (0..n).map(|i| format!("item-{i:05}")).collect(),
        vectors,
        sids,
    }
}

fn sid_config() -> pb::CollectionConfig {
    pb::CollectionConfig {
        item_modalities: vec![pb::Modality {
            name: "text".into(),
            dim: DIM as u32,
        }],
        user_dim: DIM as u32,
        sid_levels: 3,
        sid_codebook_size: 16,
        ..Default::default()
    }
}

async fn load(s: &TestServer, name: &str, d: &Data, with_sids: bool) {
    s.collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: name.into(),
            config: Some(sid_config()),
        })
        .await
        .unwrap();
    let mut items = s.items().await;
    for chunk in (0..d.ids.len()).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|&i| pb::Item {
                id: d.ids[i].clone(),
                vectors: [(
                    "text".to_string(),
                    pb::Vector {
                        values: d.vectors[i].clone(),
                    },
                )]
                .into(),
                attributes: Default::default(),
                sid: with_sids.then(|| pb::SemanticId {
                    codes: d.sids[i].clone(),
                    suffix: 0,
                    model_version: 0,
                }),
            })
            .collect();
        items.upsert_items(upsert(name, batch)).await.unwrap();
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The exact top `k` ids among `allowed` items.
fn oracle(d: &Data, q: &[f32], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<String> {
    let mut scored: Vec<(f32, usize)> = (0..d.ids.len())
        .filter(|&i| allowed(i))
        .map(|i| (cosine(q, &d.vectors[i]), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(k)
        .map(|(_, i)| d.ids[i].clone())
        .collect()
}

fn recall(got: &[pb::Hit], want: &[String]) -> f64 {
    let got: HashSet<&str> = got.iter().map(|h| h.id.as_str()).collect();
    want.iter().filter(|w| got.contains(w.as_str())).count() as f64 / want.len() as f64
}

fn by_vector(collection: &str, v: &[f32], k: u32) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: collection.into(),
        query: Some(pb::search_request::Query::Vector(pb::Vector {
            values: v.to_vec(),
        })),
        k,
        ..Default::default()
    }
}

fn queries(n: usize) -> Vec<Vec<f32>> {
    sidb::index::synth::clustered(n, DIM, 8, 0.3, 99)
        .chunks(DIM)
        .map(|c| c.to_vec())
        .collect()
}

#[tokio::test]
async fn search_by_vector_matches_the_exact_oracle() {
    let s = TestServer::start().await;
    let d = data(3000, 1);
    load(&s, "c", &d, true).await;
    let mut r = retrieval(&s).await;
    let mut total = 0.0;
    let qs = queries(40);
    for q in &qs {
        let hits = r
            .search(by_vector("c", q, 10))
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 10);
        assert!(
            hits.windows(2).all(|w| w[0].score >= w[1].score),
            "best first"
        );
        let top = &hits[0];
        let i = d.ids.iter().position(|x| *x == top.id).unwrap();
        assert!(
            (top.score - cosine(q, &d.vectors[i])).abs() < 1e-4,
            "score is the cosine"
        );
        assert_eq!(
            top.sid.as_ref().unwrap().codes,
            d.sids[i],
            "hits carry their SIDs"
        );
        total += recall(&hits, &oracle(&d, q, 10, |_| true));
    }
    let mean = total / qs.len() as f64;
    assert!(mean >= 0.95, "recall@10 {mean}");
}

#[tokio::test]
async fn search_by_item_excludes_it_and_honours_exclusions_and_vectors() {
    let s = TestServer::start().await;
    let d = data(500, 2);
    load(&s, "c", &d, false).await;
    let mut r = retrieval(&s).await;
    let me = d.ids[7].clone();
    let want = oracle(&d, &d.vectors[7], 6, |i| i != 7);
    let req = |exclude: Vec<String>, with_vectors: bool| pb::SearchRequest {
        collection: "c".into(),
        query: Some(pb::search_request::Query::ItemId(me.clone())),
        k: 5,
        exclude_ids: exclude,
        with_vectors,
        ..Default::default()
    };
    let hits = r.search(req(vec![], true)).await.unwrap().into_inner().hits;
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert!(!ids.contains(&me.as_str()), "the query item is excluded");
    assert_eq!(
        ids,
        want[..5].iter().map(|s| s.as_str()).collect::<Vec<_>>()
    );
    // with_vectors returns what the client stored, not the normalised copy.
    let i = d.ids.iter().position(|x| x == &hits[0].id).unwrap();
    assert_eq!(hits[0].vector.as_ref().unwrap().values, d.vectors[i]);
    assert!(hits[0].sid.is_none(), "no SID was written");

    let hits = r
        .search(req(vec![want[0].clone(), "not-an-item".into()], false))
        .await
        .unwrap()
        .into_inner()
        .hits;
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(
        ids,
        want[1..6].iter().map(|s| s.as_str()).collect::<Vec<_>>()
    );
    assert!(hits[0].vector.is_none());
}

#[tokio::test]
async fn prefix_filtered_search_returns_only_in_prefix_hits_exact_and_filtered() {
    // Buckets of at most 100 entities are scanned exactly; larger ones use the filtered graph.
    let s = TestServer::start_with(|c| c.retrieval.exact_scan_max = 100).await;
    let d = data(3000, 3);
    load(&s, "c", &d, true).await;
    let mut r = retrieval(&s).await;
    // [l1, l2, l3] with l3 = i % 16 fixes l2 = i % 4: buckets of ~47 (exact path);
    // [l1] buckets hold ~750 (filtered graph path).
    for (prefix, exact) in [
        (vec![1u32, 1, 5], true),
        (vec![2u32], false),
        (vec![3u32, 2], false),
    ] {
        let mut total = 0.0;
        for q in queries(20) {
            let mut req = by_vector("c", &q, 10);
            req.sid_prefix = prefix.clone();
            let hits = r.search(req).await.unwrap().into_inner().hits;
            for h in &hits {
                assert!(
                    h.sid.as_ref().unwrap().codes.starts_with(&prefix),
                    "{} is outside {prefix:?}",
                    h.id
                );
            }
            let want = oracle(&d, &q, 10, |i| d.sids[i].starts_with(&prefix));
            assert_eq!(hits.len(), want.len());
            if exact {
                let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
                assert_eq!(ids, want, "small buckets are exact");
            }
            total += recall(&hits, &want);
        }
        assert!(total / 20.0 >= 0.95, "{prefix:?}: recall {}", total / 20.0);
    }
}

#[tokio::test]
async fn search_by_user_uses_its_vector_or_its_history() {
    let s = TestServer::start().await;
    let d = data(400, 4);
    load(&s, "c", &d, false).await;
    let mut users = s.users().await;
    let own = d.vectors[3].clone();
    users
        .upsert_users(pb::UpsertUsersRequest {
            collection: "c".into(),
            users: vec![
                pb::User {
                    id: "u-own".into(),
                    vector: Some(pb::Vector {
                        values: own.clone(),
                    }),
                    ..Default::default()
                },
                pb::User {
                    id: "u-near".into(),
                    vector: Some(pb::Vector {
                        values: d.vectors[4].clone(),
                    }),
                    ..Default::default()
                },
            ],
            durability: 0,
        })
        .await
        .unwrap();
    let mut r = retrieval(&s).await;
    let user_query = |user: &str, entity: pb::EntityKind| pb::SearchRequest {
        collection: "c".into(),
        query: Some(pb::search_request::Query::UserId(user.into())),
        k: 3,
        entity: entity as i32,
        ..Default::default()
    };
    // Own vector (user_dim equals the modality's dimension: one shared space).
    let hits = r
        .search(user_query("u-own", pb::EntityKind::Items))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, d.ids[3]);
    // USERS space: the user itself is excluded.
    let hits = r
        .search(user_query("u-own", pb::EntityKind::Users))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["u-near"]
    );

    // No own vector: the recency-weighted mean of the history; the newest event dominates when
    // the older one is many half-lives back.
    let year = 365 * 86_400_000i64;
    s.interactions()
        .await
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "c".into(),
            interactions: vec![
                interaction("u-hist", &d.ids[10], 1_000),
                interaction("u-hist", &d.ids[20], 1_000 + 20 * year),
            ],
            durability: 0,
        })
        .await
        .unwrap();
    let hits = r
        .search(user_query("u-hist", pb::EntityKind::Items))
        .await
        .unwrap()
        .into_inner()
        .hits;
    // the weight halves every 180 days and every 2 newer positives (the defaults)
    let w_old = 0.5f32.powf(20.0 * 365.0 / 180.0 + 0.5);
    let unit = |v: &Vec<f32>, j: usize| v[j] / v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let profile: Vec<f32> = (0..DIM)
        .map(|j| unit(&d.vectors[20], j) + w_old * unit(&d.vectors[10], j))
        .collect();
    let want = oracle(&d, &profile, 3, |_| true);
    assert_eq!(hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);

    // Seconds apart, age says nothing; position does: 1, 2^-1/2, 1/2, ... from the newest.
    // Item 10, then the item farthest from it.
    let far = (0..d.vectors.len())
        .min_by(|&a, &b| {
            let c = |i: usize| cosine(&d.vectors[10], &d.vectors[i]);
            c(a).total_cmp(&c(b))
        })
        .expect("items");
    let seq = [10usize, far];
    s.interactions()
        .await
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "c".into(),
            interactions: seq
                .iter()
                .enumerate()
                .map(|(k, &i)| interaction("u-seq", &d.ids[i], 5_000 + 1_000 * k as i64))
                .collect(),
            durability: 0,
        })
        .await
        .unwrap();
    let hits = r
        .search(user_query("u-seq", pb::EntityKind::Items))
        .await
        .unwrap()
        .into_inner()
        .hits;
    let profile: Vec<f32> = (0..DIM)
        .map(|j| {
            seq.iter()
                .rev()
                .enumerate()
                .map(|(newer, &i)| 0.5f32.powf(newer as f32 / 2.0) * unit(&d.vectors[i], j))
                .sum()
        })
        .collect();
    let want = oracle(&d, &profile, 3, |_| true);
    assert_eq!(hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);
    // the plain mean would rank differently
    let mean: Vec<f32> = (0..DIM)
        .map(|j| seq.iter().map(|&i| unit(&d.vectors[i], j)).sum())
        .collect();
    assert_ne!(oracle(&d, &mean, 3, |_| true), want, "the test cannot tell");
    assert_status(
        r.search(user_query("nobody", pb::EntityKind::Items)).await,
        Code::NotFound,
        "nobody",
    );
}

#[tokio::test]
async fn prefix_scan_stats_and_semantic_ids() {
    let s = TestServer::start().await;
    let d = data(1000, 5);
    let mut r = retrieval(&s).await;
    // Before any SID exists, SID queries are a precondition failure.
    s.collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: "plain".into(),
            config: Some(sid_config()),
        })
        .await
        .unwrap();
    assert_status(
        r.prefix_scan(pb::PrefixScanRequest {
            collection: "plain".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "no semantic IDs",
    );
    load(&s, "c", &d, true).await;

    // Pages of 7 under [2, 1]: every entity exactly once, in SID order, then id order.
    let prefix = vec![2u32, 1];
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = r
            .prefix_scan(pb::PrefixScanRequest {
                collection: "c".into(),
                entity: pb::EntityKind::Items as i32,
                prefix: prefix.clone(),
                limit: 7,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 7);
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| (e.sid.unwrap().codes, e.id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut want: Vec<(Vec<u32>, String)> = (0..d.ids.len())
        .filter(|&i| d.sids[i].starts_with(&prefix))
        .map(|i| (d.sids[i].clone(), d.ids[i].clone()))
        .collect();
    want.sort();
    assert_eq!(seen, want);

    let stats = r
        .prefix_stats(pb::PrefixStatsRequest {
            collection: "c".into(),
            entity: 0,
            prefix: vec![2],
        })
        .await
        .unwrap()
        .into_inner();
    let under: Vec<&Vec<u32>> = d.sids.iter().filter(|s| s[0] == 2).collect();
    assert_eq!(stats.total, under.len() as u64);
    let mut children: HashMap<u32, u64> = HashMap::new();
    for s in &under {
        *children.entry(s[1]).or_default() += 1;
    }
    assert_eq!(stats.children, children);

    let got = r
        .get_semantic_ids(pb::GetSemanticIdsRequest {
            collection: "c".into(),
            entity: 0,
            ids: vec![d.ids[0].clone(), "missing".into()],
            model_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.sids[&d.ids[0]].codes, d.sids[0]);
    assert_eq!(got.missing_ids, ["missing"]);
    assert_status(
        r.get_semantic_ids(pb::GetSemanticIdsRequest {
            collection: "c".into(),
            entity: 0,
            ids: vec![d.ids[0].clone()],
            model_version: 7,
        })
        .await,
        Code::NotFound,
        "model_version: 7",
    );
    // Deleting an item takes it out of the trie at once.
    s.items()
        .await
        .delete_items(pb::DeleteItemsRequest {
            collection: "c".into(),
            ids: vec![d.ids[0].clone()],
            durability: 0,
        })
        .await
        .unwrap();
    let got = r
        .get_semantic_ids(pb::GetSemanticIdsRequest {
            collection: "c".into(),
            entity: 0,
            ids: vec![d.ids[0].clone()],
            model_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_ids, [d.ids[0].clone()]);
}

#[tokio::test]
async fn recommend_ranks_the_users_bucket_and_excludes_seen() {
    let s = TestServer::start_with(|c| c.retrieval.recommend.min_bucket = 40).await;
    let d = data(2000, 6);
    load(&s, "c", &d, true).await;
    let user_vec = d.vectors[11].clone();
    s.users()
        .await
        .upsert_users(pb::UpsertUsersRequest {
            collection: "c".into(),
            users: vec![
                pb::User {
                    id: "u1".into(),
                    vector: Some(pb::Vector {
                        values: user_vec.clone(),
                    }),
                    sid: Some(pb::SemanticId {
                        codes: vec![1, 3, 7],
                        suffix: 0,
                        model_version: 0,
                    }),
                    ..Default::default()
                },
                pb::User {
                    id: "u-nosid".into(),
                    vector: Some(pb::Vector {
                        values: user_vec.clone(),
                    }),
                    ..Default::default()
                },
            ],
            durability: 0,
        })
        .await
        .unwrap();
    let mut r = retrieval(&s).await;
    // [1, 3, 7] holds ~31 items (< 40), [1, 3] ~125: the bucket is [1, 3].
    let bucket = |i: usize| d.sids[i].starts_with(&[1, 3]);
    let want = oracle(&d, &user_vec, 10, bucket);
    let rec = |user: &str, exclude_seen: bool| pb::RecommendRequest {
        collection: "c".into(),
        user_id: user.into(),
        k: 10,
        exclude_seen,
        modality: String::new(),
    };
    let hits = r
        .recommend(rec("u1", false))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);

    s.interactions()
        .await
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "c".into(),
            interactions: vec![
                interaction("u1", &want[0], 5),
                interaction("u1", &want[3], 6),
            ],
            durability: 0,
        })
        .await
        .unwrap();
    let hits = r
        .recommend(rec("u1", true))
        .await
        .unwrap()
        .into_inner()
        .hits;
    let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
    let unseen = oracle(&d, &user_vec, 10, |i| {
        bucket(i) && d.ids[i] != want[0] && d.ids[i] != want[3]
    });
    assert_eq!(ids, unseen);

    // No SID: plain similarity over every item.
    let hits = r
        .recommend(rec("u-nosid", false))
        .await
        .unwrap()
        .into_inner()
        .hits;
    let plain = oracle(&d, &user_vec, 10, |_| true);
    assert!(recall(&hits, &plain) >= 0.9);
    assert_status(
        r.recommend(rec("ghost", false)).await,
        Code::NotFound,
        "ghost",
    );

    // A user known only from its log: the profile comes from the same history read that
    // `exclude_seen` uses; the one item it saw is its profile and is left out.
    let seen = 42;
    s.interactions()
        .await
        .write_interactions(pb::WriteInteractionsRequest {
            collection: "c".into(),
            interactions: vec![interaction("u-log", &d.ids[seen], 7)],
            durability: 0,
        })
        .await
        .unwrap();
    let hits = r
        .recommend(rec("u-log", true))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(
        hits.iter().all(|h| h.id != d.ids[seen]),
        "a seen item came back"
    );
    let near = oracle(&d, &d.vectors[seen], 10, |i| i != seen);
    assert!(
        recall(&hits, &near) >= 0.9,
        "profile of the history: {hits:?}"
    );
}

#[tokio::test]
async fn retrieval_error_rows() {
    let s = TestServer::start().await;
    let d = data(50, 7);
    load(&s, "c", &d, true).await;
    s.collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: "nousers".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let mut r = retrieval(&s).await;
    let v = d.vectors[0].clone();
    let with = |f: &dyn Fn(&mut pb::SearchRequest)| {
        let mut q = by_vector("c", &v, 5);
        f(&mut q);
        q
    };
    let cases: Vec<(pb::SearchRequest, Code, &str)> = vec![
        (with(&|q| q.k = 0), Code::InvalidArgument, "k: 0"),
        (with(&|q| q.k = 1001), Code::InvalidArgument, "k: 1001"),
        (with(&|q| q.ef = 10_001), Code::InvalidArgument, "ef: 10001"),
        (
            with(&|q| q.modality = "image".into()),
            Code::InvalidArgument,
            "modality: \"image\"",
        ),
        (
            with(&|q| q.sid_prefix = vec![1, 2, 3, 4]),
            Code::InvalidArgument,
            "sid_prefix: 4 codes",
        ),
        (
            with(&|q| q.sid_prefix = vec![16]),
            Code::InvalidArgument,
            "sid_prefix[0]: code 16",
        ),
        (
            with(&|q| q.exclude_ids = vec![String::new()]),
            Code::InvalidArgument,
            "exclude_ids[0]",
        ),
        (
            with(&|q| q.entity = 9),
            Code::InvalidArgument,
            "entity: unknown value 9",
        ),
        (
            with(&|q| q.query = None),
            Code::InvalidArgument,
            "query: set one of",
        ),
        (
            with(&|q| {
                q.query = Some(pb::search_request::Query::Vector(pb::Vector {
                    values: vec![1.0; 3],
                }))
            }),
            Code::InvalidArgument,
            "query.vector: expected 16 values, got 3",
        ),
        (
            with(&|q| {
                let mut bad = vec![0.5; DIM];
                bad[2] = f32::NAN;
                q.query = Some(pb::search_request::Query::Vector(pb::Vector {
                    values: bad,
                }));
            }),
            Code::InvalidArgument,
            "query.vector[2]: NaN",
        ),
        (
            with(&|q| {
                q.query = Some(pb::search_request::Query::Vector(pb::Vector {
                    values: vec![0.0; DIM],
                }))
            }),
            Code::InvalidArgument,
            "query.vector: all values are zero",
        ),
        (
            with(&|q| q.query = Some(pb::search_request::Query::ItemId("nope".into()))),
            Code::NotFound,
            "query.item_id: item \"nope\" not found",
        ),
        (
            with(&|q| q.query = Some(pb::search_request::Query::ItemId(String::new()))),
            Code::InvalidArgument,
            "query.item_id: must not be empty",
        ),
        (
            with(&|q| q.collection = "missing".into()),
            Code::NotFound,
            "collection \"missing\"",
        ),
        (
            pb::SearchRequest {
                collection: "nousers".into(),
                query: Some(pb::search_request::Query::Vector(pb::Vector {
                    values: vec![1.0; 4],
                })),
                k: 1,
                entity: pb::EntityKind::Users as i32,
                ..Default::default()
            },
            Code::InvalidArgument,
            "entity: USERS",
        ),
        (
            pb::SearchRequest {
                collection: "nousers".into(),
                query: Some(pb::search_request::Query::Vector(pb::Vector {
                    values: vec![1.0; 4],
                })),
                k: 1,
                sid_prefix: vec![0],
                ..Default::default()
            },
            Code::FailedPrecondition,
            "no semantic IDs",
        ),
    ];
    for (req, code, needle) in cases {
        assert_status(r.search(req).await, code, needle);
    }
    let scan = |token: &str, prefix: Vec<u32>, limit: u32| pb::PrefixScanRequest {
        collection: "c".into(),
        entity: 0,
        prefix,
        limit,
        page_token: token.into(),
    };
    assert_status(
        r.prefix_scan(scan("garbage", vec![], 0)).await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        r.prefix_scan(scan("", vec![0; 4], 0)).await,
        Code::InvalidArgument,
        "prefix: 4 codes",
    );
    assert_status(
        r.prefix_scan(scan("", vec![], 10_001)).await,
        Code::InvalidArgument,
        "limit: 10001",
    );
    // A token is bound to its prefix.
    let page = r
        .prefix_scan(scan("", vec![], 1))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        r.prefix_scan(scan(&page.next_page_token, vec![1], 1)).await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        r.prefix_stats(pb::PrefixStatsRequest {
            collection: "c".into(),
            entity: 0,
            prefix: vec![99],
        })
        .await,
        Code::InvalidArgument,
        "prefix[0]: code 99",
    );
    assert_status(
        r.get_semantic_ids(pb::GetSemanticIdsRequest {
            collection: "c".into(),
            entity: 0,
            ids: vec![],
            model_version: 0,
        })
        .await,
        Code::InvalidArgument,
        "ids: 0 entries",
    );
    assert_status(
        r.recommend(pb::RecommendRequest {
            collection: "c".into(),
            user_id: "u".into(),
            k: 0,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "k: 0",
    );
    // A zero vector cannot be stored under cosine: rejected at write time, nothing written.
    let mut items = s.items().await;
    assert_status(
        items
            .upsert_items(upsert(
                "nousers",
                vec![
                    item("fine", 1.0),
                    pb::Item {
                        id: "zero".into(),
                        vectors: [(
                            "text".to_string(),
                            pb::Vector {
                                values: vec![0.0; 4],
                            },
                        )]
                        .into(),
                        ..Default::default()
                    },
                ],
            ))
            .await,
        Code::InvalidArgument,
        "items[1].vectors[\"text\"]: all values are zero",
    );
    assert_eq!(get_collection(&s, "nousers").await.item_count, 0);
}

#[tokio::test]
async fn indexes_survive_restart_and_a_stale_dump_is_never_served() {
    let s = TestServer::start().await;
    let d = data(1500, 8);
    load(&s, "c", &d, true).await;
    let (r, tmp) = s.stop().await;
    r.unwrap();
    let tmp = tmp.unwrap();
    let index_dir = tmp.path().join("index");
    assert!(
        index_dir.join("1").join("points").exists(),
        "clean shutdown dumps the index"
    );
    let old_dump = tempfile::tempdir().unwrap();
    copy_dir(&index_dir.join("1"), &old_dump.path().join("1"));

    // Restart from the dump, then change the data: delete 100 items, move 100 others.
    let s = TestServer::start_in(tmp.path(), |_| {}).await;
    let mut r = retrieval(&s).await;
    let q = queries(1).remove(0);
    let before = r
        .search(by_vector("c", &q, 10))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(recall(&before, &oracle(&d, &q, 10, |_| true)) >= 0.9);
    let deleted: Vec<String> = d.ids[..100].to_vec();
    s.items()
        .await
        .delete_items(pb::DeleteItemsRequest {
            collection: "c".into(),
            ids: deleted.clone(),
            durability: 0,
        })
        .await
        .unwrap();
    let moved: Vec<pb::Item> = (100..200)
        .map(|i| pb::Item {
            id: d.ids[i].clone(),
            vectors: [("text".to_string(), pb::Vector { values: q.clone() })].into(),
            ..Default::default()
        })
        .collect();
    s.items()
        .await
        .upsert_items(upsert("c", moved))
        .await
        .unwrap();
    let (r2, _) = s.stop().await;
    r2.unwrap();

    // Put the first, now stale, dump back: the server must notice and rebuild.
    std::fs::remove_dir_all(index_dir.join("1")).unwrap();
    copy_dir(&old_dump.path().join("1"), &index_dir.join("1"));
    let s = TestServer::start_in(tmp.path(), |_| {}).await;
    let mut r = retrieval(&s).await;
    let hits = r
        .search(by_vector("c", &q, 100))
        .await
        .unwrap()
        .into_inner()
        .hits;
    let ids: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    for i in 100..200 {
        assert!(
            ids.contains(d.ids[i].as_str()),
            "moved item {} missing",
            d.ids[i]
        );
    }
    assert!(
        deleted.iter().all(|x| !ids.contains(x.as_str())),
        "a deleted item came back"
    );
    let (r3, _) = s.stop().await;
    r3.unwrap();

    // A corrupt dump is a rebuild too, never a failed start.
    let meta = index_dir.join("1").join("points");
    let mut bytes = std::fs::read(&meta).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&meta, bytes).unwrap();
    let s = TestServer::start_in(tmp.path(), |_| {}).await;
    let mut r = retrieval(&s).await;
    let hits = r
        .search(by_vector("c", &q, 100))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 100);
    assert!(hits.iter().all(|h| !deleted.contains(&h.id)));
    drop(s);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
