//! `sidb bench ingest`: a load client that streams items into a running server over gRPC from
//! several concurrent connections and reports throughput and latency percentiles.
//!
//! Requests are generated (seeded) before the clock starts, so the client's own CPU use during
//! the run is only gRPC encoding; the server and client share this machine's cores either way,
//! which the report states.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::types::Durability;

/// What to load.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Server URL, e.g. `http://127.0.0.1:7707`.
    pub addr: String,
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
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Durability of the writes.
    pub durability: Durability,
    /// Items written.
    pub items: u64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Request latency percentiles in milliseconds: p50, p90, p99, max.
    pub latency_ms: [f64; 4],
    /// Requests sent.
    pub requests: u64,
}

impl IngestReport {
    /// Items per second.
    pub fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.seconds
    }
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [p50, p90, p99, max] = self.latency_ms;
        write!(
            f,
            "{:<9} {:>9} items {:>7.2} s {:>10.0} items/s | batch latency ms p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.2} ({} requests)",
            format!("{:?}", self.durability).to_uppercase(),
            self.items,
            self.seconds,
            self.items_per_sec(),
            self.requests
        )
    }
}

fn transport(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("load client: {e}"))
}

async fn connect(addr: &str) -> Result<Channel> {
    Endpoint::from_shared(addr.to_string())
        .map_err(transport)?
        .connect()
        .await
        .map_err(transport)
}

/// A deterministic xorshift64* stream of floats in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn requests(opts: &IngestOptions, collection: &str, client: usize) -> Vec<pb::UpsertItemsRequest> {
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
                    id: format!("c{client}-{i}"),
                    vectors: [(
                        "emb".to_string(),
                        pb::Vector {
                            values: (0..opts.dim).map(|_| rng.next_f32()).collect(),
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
    let channel = connect(&opts.addr).await?;
    let collection = format!("bench_ingest_{}_{}", opts.seed, crate::types::now_ms());
    pb::collections_client::CollectionsClient::new(channel)
        .create_collection(pb::CreateCollectionRequest {
            name: collection.clone(),
            config: Some(pb::CollectionConfig {
                item_modalities: vec![pb::Modality {
                    name: "emb".into(),
                    dim: opts.dim,
                }],
                ..Default::default()
            }),
        })
        .await
        .map_err(transport)?;
    let mut work = Vec::with_capacity(opts.clients);
    for c in 0..opts.clients {
        let client = pb::items_client::ItemsClient::new(connect(&opts.addr).await?)
            .max_encoding_message_size(usize::MAX);
        work.push((client, requests(opts, &collection, c)));
    }
    let start = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(mut client, reqs)| {
            tokio::spawn(async move {
                let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .expect("static histogram bounds are valid");
                let mut written = 0;
                for req in reqs {
                    let t = Instant::now();
                    let w = client
                        .upsert_items(req)
                        .await
                        .map_err(transport)?
                        .into_inner();
                    lat.saturating_record(t.elapsed().as_micros() as u64);
                    written += w.written;
                }
                Ok::<_, Error>((lat, written))
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("static histogram bounds are valid");
    let mut items = 0;
    for t in tasks {
        let (lat, written) = t.await.map_err(|e| Error::Internal(e.to_string()))??;
        all.add(&lat).map_err(|e| Error::Internal(e.to_string()))?;
        items += written;
    }
    let seconds = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(IngestReport {
        durability: opts.durability,
        items,
        seconds,
        latency_ms: [ms(0.5), ms(0.9), ms(0.99), all.max() as f64 / 1000.0],
        requests: all.len(),
    })
}
