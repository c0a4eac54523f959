//! The load clients of `sidb bench`: `ingest` streams items into a running server over gRPC
//! from several concurrent connections, `search` loads clustered vectors and searches them,
//! `recommend` asks a collection's users for recommendations next to plain similarity searches
//! for the same users; each reports throughput and latency percentiles.
//!
//! Requests are generated (seeded) before the clock starts, so the client's own CPU use during
//! the run is only gRPC encoding; the server and client share this machine's cores either way,
//! which the report states.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use sidb::error::{Error, Result};
use sidb::proto as pb;
use sidb::types::Durability;

use super::target::{Conn, Target};

/// What to load.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The server.
    pub target: Target,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// Items in total.
    pub items: usize,
    /// Vector dimension.
    pub dim: u32,
    /// Items per request.
    pub batch: usize,
    /// Durability of every write.
    pub durability: Durability,
    /// RNG seed of the vectors.
    pub seed: u64,
    /// Write into this existing collection (its first modality and dimension) instead of a
    /// fresh one: e.g. one with an active model, to measure online SID assignment.
    pub collection: Option<String>,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Durability of the writes.
    pub durability: Durability,
    /// The run; `counted` is the items written.
    pub run: Timed,
}

impl IngestReport {
    /// Items per second.
    pub fn items_per_sec(&self) -> f64 {
        self.run.counted as f64 / self.run.seconds
    }
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<9} {:>9} items {:>7.2} s {:>10.0} items/s | batch latency ms {} ({} requests)",
            format!("{:?}", self.durability).to_uppercase(),
            self.run.counted,
            self.run.seconds,
            self.items_per_sec(),
            self.run.percentiles(),
            self.run.requests
        )
    }
}

fn transport(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("load client: {e}"))
}

async fn connect(target: &Target) -> Result<Conn> {
    target
        .connect()
        .await
        .map_err(|e| transport(format!("{e:#}")))
}

/// Creates a fresh collection `<prefix>_<seed>_<now>` with one modality "emb" of `dim`.
async fn create_collection(channel: &Conn, prefix: &str, seed: u64, dim: u32) -> Result<String> {
    let name = format!("{prefix}_{seed}_{}", sidb::types::now_ms());
    pb::collections_client::CollectionsClient::new(channel.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: name.clone(),
            config: Some(pb::CollectionConfig {
                item_modalities: vec![pb::Modality {
                    name: "emb".into(),
                    dim,
                }],
                ..Default::default()
            }),
        })
        .await
        .map_err(transport)?;
    Ok(name)
}

/// A deterministic xorshift64* stream.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A float in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// An index in `0..n` (`n` >= 1).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }
}

/// What one timed run of requests measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timed {
    /// Requests answered.
    pub requests: u64,
    /// Sum over the replies of what the call counts (items written, hits returned).
    pub counted: u64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Request latency percentiles in milliseconds: p50, p90, p99, max.
    pub latency_ms: [f64; 4],
}

impl Timed {
    /// Requests per second.
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The latency percentiles as printed: `p50 .. p90 .. p99 .. max ..` (ms).
    fn percentiles(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms;
        format!("p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.2}")
    }
}

impl std::fmt::Display for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.2} s = {:.0}/s | latency ms {}",
            self.requests,
            self.seconds,
            self.per_sec(),
            self.percentiles()
        )
    }
}

/// Sends every client's requests in order, all clients at once (one task and connection each),
/// and times each request. `call` sends one request on a clone of its client (tonic clients
/// share their connection) and returns what the reply counts.
async fn timed<C, R, F, Fut>(work: Vec<(C, Vec<R>)>, call: F) -> Result<Timed>
where
    C: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(C, R) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    let histogram = || {
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("static histogram bounds are valid")
    };
    let start = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(client, reqs)| {
            tokio::spawn(async move {
                let mut lat = histogram();
                let mut counted = 0;
                for req in reqs {
                    let t = Instant::now();
                    counted += call(client.clone(), req).await?;
                    lat.saturating_record(t.elapsed().as_micros() as u64);
                }
                Ok::<_, Error>((lat, counted))
            })
        })
        .collect();
    let mut all = histogram();
    let mut counted = 0;
    for t in tasks {
        let (lat, n) = t.await.map_err(|e| Error::Internal(e.to_string()))??;
        all.add(&lat).map_err(|e| Error::Internal(e.to_string()))?;
        counted += n;
    }
    let seconds = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(Timed {
        requests: all.len(),
        counted,
        seconds,
        latency_ms: [ms(0.5), ms(0.9), ms(0.99), all.max() as f64 / 1000.0],
    })
}

fn requests(
    opts: &IngestOptions,
    (collection, modality, dim): (&str, &str, u32),
    client: usize,
) -> Vec<pb::UpsertItemsRequest> {
    let mut rng = Rng(opts.seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let per_client = opts.items / opts.clients + usize::from(client < opts.items % opts.clients);
    let durability = match opts.durability {
        Durability::Durable => pb::Durability::Durable,
        Durability::Buffered => pb::Durability::Buffered,
    } as i32;
    (0..per_client)
        .collect::<Vec<_>>()
        .chunks(opts.batch)
        .map(|chunk| pb::UpsertItemsRequest {
            collection: collection.to_string(),
            durability,
            items: chunk
                .iter()
                .map(|i| pb::Item {
                    id: format!("bench-{}-c{client}-{i}", opts.seed),
                    vectors: [(
                        modality.to_string(),
                        pb::Vector {
                            values: (0..dim).map(|_| rng.next_f32()).collect(),
                        },
                    )]
                    .into(),
                    ..Default::default()
                })
                .collect(),
        })
        .collect()
}

/// Creates a fresh collection and loads `opts.items` items into it; returns the measurements.
pub async fn ingest(opts: &IngestOptions) -> Result<IngestReport> {
    if opts.clients == 0 || opts.batch == 0 || opts.items < opts.clients {
        return Err(Error::invalid(
            "clients and batch must be >= 1 and items >= clients",
        ));
    }
    let channel = connect(&opts.target).await?;
    let (collection, modality, dim) = match &opts.collection {
        Some(name) => {
            let c = pb::collections_client::CollectionsClient::new(channel.clone())
                .get_collection(pb::GetCollectionRequest { name: name.clone() })
                .await
                .map_err(transport)?
                .into_inner();
            let m = c
                .config
                .and_then(|c| c.item_modalities.into_iter().next())
                .ok_or_else(|| Error::invalid(format!("collection {name} has no modality")))?;
            (name.clone(), m.name, m.dim)
        }
        None => (
            create_collection(&channel, "bench_ingest", opts.seed, opts.dim).await?,
            "emb".to_string(),
            opts.dim,
        ),
    };
    let mut work = Vec::with_capacity(opts.clients);
    for c in 0..opts.clients {
        let client = pb::items_client::ItemsClient::new(connect(&opts.target).await?)
            .max_encoding_message_size(usize::MAX);
        work.push((client, requests(opts, (&collection, &modality, dim), c)));
    }
    let run = timed(work, |mut client, req| async move {
        let reply = client.upsert_items(req).await.map_err(transport)?;
        Ok(reply.into_inner().written)
    })
    .await?;
    Ok(IngestReport {
        durability: opts.durability,
        run,
    })
}

/// What `sidb bench search` runs.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// The server.
    pub target: Target,
    /// Items loaded before searching.
    pub items: usize,
    /// Vector dimension.
    pub dim: u32,
    /// Concurrent search clients, one connection each.
    pub clients: usize,
    /// Searches in total (after warm-up).
    pub queries: usize,
    /// Hits per search.
    pub k: u32,
    /// HNSW breadth (0 = the server default).
    pub ef: u32,
    /// Queries whose exact answer is computed here to report recall@k.
    pub recall_sample: usize,
    /// RNG seed of data and queries.
    pub seed: u64,
    /// Search this collection, loaded by an earlier run with the same `items`, `dim` and
    /// `seed` (so the data and the recall oracle match), instead of loading a fresh one: runs
    /// before and during a training then measure the same index.
    pub reuse: Option<String>,
}

/// What `sidb bench search` measured.
#[derive(Debug, Clone)]
pub struct SearchReport {
    /// The collection searched.
    pub collection: String,
    /// Seconds the load took (acknowledged, BUFFERED).
    pub load_seconds: f64,
    /// Seconds from the end of the load until every vector was in the graph.
    pub index_seconds: f64,
    /// The search run.
    pub run: Timed,
    /// Mean recall@k against the exact answer over the sample.
    pub recall: f64,
}

impl std::fmt::Display for SearchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "collection {}: load {:.1} s, graph caught up {:.1} s later\nsearch: {} queries in {:.2} s = {:.0} QPS | latency ms {} | recall@k {:.3}",
            self.collection,
            self.load_seconds,
            self.index_seconds,
            self.run.requests,
            self.run.seconds,
            self.run.per_sec(),
            self.run.percentiles(),
            self.recall
        )
    }
}

/// Loads `opts.items` clustered vectors into a fresh collection, waits until the background
/// indexer has put all of them in the graph, then runs `opts.queries` searches from
/// `opts.clients` connections and reports QPS, latency and recall.
pub async fn search(opts: &SearchOptions) -> Result<SearchReport> {
    if opts.clients == 0 || opts.items == 0 || opts.queries < opts.clients || opts.k == 0 {
        return Err(Error::invalid(
            "clients, items and k must be >= 1 and queries >= clients",
        ));
    }
    let dim = opts.dim as usize;
    // One draw, so queries come from the same clusters as the data (as real queries do; queries
    // from other centres would be equidistant from everything and measure nothing useful).
    let mut data =
        sidb::index::synth::clustered(opts.items + opts.queries, dim, 100, 0.25, opts.seed);
    let queries = data.split_off(opts.items * dim);
    let channel = connect(&opts.target).await?;
    let (collection, load) = match &opts.reuse {
        Some(name) => (name.clone(), false),
        None => (
            create_collection(&channel, "bench_search", opts.seed, opts.dim).await?,
            true,
        ),
    };
    let mut collections = pb::collections_client::CollectionsClient::new(channel.clone());

    let start = Instant::now();
    let mut items =
        pb::items_client::ItemsClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
    let to_load = if load { &data[..] } else { &[] };
    for (b, chunk) in to_load.chunks(512 * dim).enumerate() {
        let batch = chunk
            .chunks(dim)
            .enumerate()
            .map(|(i, v)| pb::Item {
                id: format!("i{}", b * 512 + i),
                vectors: [("emb".to_string(), pb::Vector { values: v.to_vec() })].into(),
                ..Default::default()
            })
            .collect();
        items
            .upsert_items(pb::UpsertItemsRequest {
                collection: collection.clone(),
                items: batch,
                durability: pb::Durability::Buffered as i32,
            })
            .await
            .map_err(transport)?;
    }
    let load_seconds = start.elapsed().as_secs_f64();
    let indexed = Instant::now();
    loop {
        let c = collections
            .get_collection(pb::GetCollectionRequest {
                name: collection.clone(),
            })
            .await
            .map_err(transport)?
            .into_inner();
        if c.index_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let index_seconds = indexed.elapsed().as_secs_f64();

    let request = |q: &[f32]| pb::SearchRequest {
        collection: collection.clone(),
        query: Some(pb::search_request::Query::Vector(pb::Vector {
            values: q.to_vec(),
        })),
        k: opts.k,
        ef: opts.ef,
        ..Default::default()
    };
    // Recall on a sample, against brute force here (cosine, the collection's metric).
    let mut retrieval = pb::retrieval_client::RetrievalClient::new(channel.clone());
    let sample = opts.recall_sample.min(opts.queries);
    let mut recall = 0.0;
    for q in queries.chunks(dim).take(sample) {
        let hits = retrieval
            .search(request(q))
            .await
            .map_err(transport)?
            .into_inner()
            .hits;
        let exact = exact_top(&data, dim, q, opts.k as usize);
        let got: std::collections::HashSet<String> = hits.into_iter().map(|h| h.id).collect();
        recall += exact
            .iter()
            .filter(|i| got.contains(&format!("i{i}")))
            .count() as f64
            / exact.len().max(1) as f64;
    }
    let recall = if sample > 0 {
        recall / sample as f64
    } else {
        f64::NAN
    };

    let per_client: Vec<Vec<pb::SearchRequest>> = (0..opts.clients)
        .map(|c| {
            queries
                .chunks(dim)
                .skip(c)
                .step_by(opts.clients)
                .map(request)
                .collect()
        })
        .collect();
    let clients = retrieval_clients(&opts.target, opts.clients).await?;
    let run = timed(paired(&clients, per_client), search_call).await?;
    Ok(SearchReport {
        collection: collection.clone(),
        load_seconds,
        index_seconds,
        run,
        recall,
    })
}

type RetrievalClient = pb::retrieval_client::RetrievalClient<Conn>;

/// `n` clients, one connection each.
async fn retrieval_clients(target: &Target, n: usize) -> Result<Vec<RetrievalClient>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(RetrievalClient::new(connect(target).await?));
    }
    Ok(clients)
}

/// Pairs each client's requests with its client (a handle on the same connection).
fn paired<R>(
    clients: &[RetrievalClient],
    per_client: Vec<Vec<R>>,
) -> Vec<(RetrievalClient, Vec<R>)> {
    clients.iter().cloned().zip(per_client).collect()
}

/// One `Search`; counts its hits.
async fn search_call(mut client: RetrievalClient, req: pb::SearchRequest) -> Result<u64> {
    let reply = client.search(req).await.map_err(transport)?;
    Ok(reply.into_inner().hits.len() as u64)
}

/// One `Recommend`; counts its hits.
async fn recommend_call(mut client: RetrievalClient, req: pb::RecommendRequest) -> Result<u64> {
    let reply = client.recommend(req).await.map_err(transport)?;
    Ok(reply.into_inner().hits.len() as u64)
}

/// What `sidb bench recommend` runs.
#[derive(Debug, Clone)]
pub struct RecommendOptions {
    /// The server.
    pub target: Target,
    /// An existing collection whose users have SIDs (an active model): they are listed with
    /// `PrefixScan`.
    pub collection: String,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// Requests in total, of each kind (after a warm-up of 20 per client).
    pub queries: usize,
    /// Items per answer.
    pub k: u32,
    /// `Recommend`'s `exclude_seen`.
    pub exclude_seen: bool,
    /// Seed of the user draw (with replacement).
    pub seed: u64,
}

/// What `sidb bench recommend` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecommendReport {
    /// The collection.
    pub collection: String,
    /// Users with a SID, the pool queries are drawn from.
    pub users: usize,
    /// `Recommend` for the drawn users.
    pub recommend: Timed,
    /// `Search` by `user_id` for the same users, the same `k`: plain similarity over the whole
    /// catalogue, what `Recommend` serves without a model.
    pub search: Timed,
}

impl std::fmt::Display for RecommendReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hits = |t: &Timed| t.counted as f64 / t.requests.max(1) as f64;
        writeln!(
            f,
            "collection {}: {} users with a SID",
            self.collection, self.users
        )?;
        writeln!(
            f,
            "recommend: {} | {:.1} hits each",
            self.recommend,
            hits(&self.recommend)
        )?;
        writeln!(
            f,
            "search by user_id: {} | {:.1} hits each",
            self.search,
            hits(&self.search)
        )?;
        write!(
            f,
            "recommend / search: throughput {:.2}x, p50 latency {:.2}x, p99 latency {:.2}x",
            self.recommend.per_sec() / self.search.per_sec(),
            self.recommend.latency_ms[0] / self.search.latency_ms[0],
            self.recommend.latency_ms[2] / self.search.latency_ms[2]
        )
    }
}

/// Lists the users of `opts.collection` that have a SID, then sends `Recommend` for users drawn
/// from them (seeded, with replacement) from `opts.clients` connections, then `Search` by
/// `user_id` for the same users, and reports both. Either kind failing fails the run.
pub async fn recommend(opts: &RecommendOptions) -> Result<RecommendReport> {
    if opts.clients == 0 || opts.queries < opts.clients || opts.k == 0 {
        return Err(Error::invalid(
            "clients and k must be >= 1 and queries >= clients",
        ));
    }
    let clients = retrieval_clients(&opts.target, opts.clients).await?;
    let mut scan = clients[0].clone();
    let mut users = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = scan
            .prefix_scan(pb::PrefixScanRequest {
                collection: opts.collection.clone(),
                entity: pb::EntityKind::Users as i32,
                limit: 10_000,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(transport)?
            .into_inner();
        users.extend(page.entries.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if users.is_empty() {
        return Err(Error::invalid(format!(
            "collection {}: no user has a SID (train a model first)",
            opts.collection
        )));
    }
    let mut rng = Rng(opts.seed | 1);
    let warm_up = 20 * opts.clients;
    let drawn: Vec<&str> = (0..warm_up + opts.queries)
        .map(|_| users[rng.below(users.len())].as_str())
        .collect();
    let recommend = |ids: &[&str]| -> Vec<Vec<pb::RecommendRequest>> {
        let req = |u: &str| pb::RecommendRequest {
            collection: opts.collection.clone(),
            user_id: u.to_string(),
            k: opts.k,
            exclude_seen: opts.exclude_seen,
            ..Default::default()
        };
        round_robin(ids, opts.clients, req)
    };
    let search = |ids: &[&str]| -> Vec<Vec<pb::SearchRequest>> {
        let req = |u: &str| pb::SearchRequest {
            collection: opts.collection.clone(),
            query: Some(pb::search_request::Query::UserId(u.to_string())),
            k: opts.k,
            ..Default::default()
        };
        round_robin(ids, opts.clients, req)
    };
    // The warm-up runs on the connections the timed runs use.
    let (warm, timed_ids) = drawn.split_at(warm_up);
    timed(paired(&clients, recommend(warm)), recommend_call).await?;
    timed(paired(&clients, search(warm)), search_call).await?;
    let recommend = timed(paired(&clients, recommend(timed_ids)), recommend_call).await?;
    let search = timed(paired(&clients, search(timed_ids)), search_call).await?;
    Ok(RecommendReport {
        collection: opts.collection.clone(),
        users: users.len(),
        recommend,
        search,
    })
}

/// Deals `ids` out to `clients` clients in turn, each as the request `req` makes of it.
fn round_robin<R>(ids: &[&str], clients: usize, req: impl Fn(&str) -> R) -> Vec<Vec<R>> {
    (0..clients)
        .map(|c| {
            ids.iter()
                .skip(c)
                .step_by(clients)
                .map(|u| req(u))
                .collect()
        })
        .collect()
}

/// Exact top-k row indices by cosine similarity.
fn exact_top(data: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
    let norm = |v: &[f32]| {
        sidb::index::distance::dot(v, v)
            .sqrt()
            .max(f32::MIN_POSITIVE)
    };
    let qn = norm(q);
    let mut scored: Vec<(f32, usize)> = data
        .chunks(dim)
        .enumerate()
        .map(|(i, v)| (sidb::index::distance::dot(q, v) / (qn * norm(v)), i))
        .collect();
    let k = k.min(scored.len());
    scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.into_iter().map(|(_, i)| i).collect()
}
