//! Prometheus metrics: what requests, the log, the indexes and the trainer are doing.
//!
//! Two kinds, one text page (`GET /metrics` on the HTTP port, see [`crate::http`]):
//!
//! - **Events**, counted where they happen, in one process-wide registry ([`events`]): gRPC
//!   requests by method, collection and status code with their latency ([`RequestMetricsLayer`],
//!   the outermost tower layer, so it sees the codes that auth and size checks give too), and the
//!   write-ahead log's syncs (duration, entries per group commit, bytes).
//! - **State**, read at scrape time from the engine ([`render`]): per collection its counts,
//!   per vector space the graph's points, tombstones and the vectors not yet indexed, the trainer's
//!   phase and step, the active version with its training time and code use per level, the log's
//!   pending bytes, and the process's memory. Built fresh for each scrape, so a deleted
//!   collection's series disappear with it.
//!
//! The `collection` label of a request is set by its handler ([`label_collection`]). It is kept
//! only for answers other than NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED and PERMISSION_DENIED,
//! so clients sending made-up names cannot grow the number of series; those get `collection=""`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::engine::Engine;

/// Latency buckets of requests, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The event metrics, registered once per process.
pub struct Events {
    registry: Registry,
    /// `sidb_requests_total{rpc, collection, code}`.
    pub requests: IntCounterVec,
    /// `sidb_request_duration_seconds{rpc, collection}`.
    pub request_seconds: HistogramVec,
    /// `sidb_wal_sync_duration_seconds`: one write + `fdatasync` of a group commit.
    pub wal_sync_seconds: Histogram,
    /// `sidb_wal_sync_entries`: log entries per group commit.
    pub wal_sync_entries: Histogram,
    /// `sidb_wal_synced_bytes_total`.
    pub wal_synced_bytes: IntCounter,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram")
}

impl Events {
    fn new() -> Events {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sidb_requests_total",
                "gRPC requests answered, by method, collection and status code.",
            ),
            &["rpc", "collection", "code"],
        )
        .expect("valid counter");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sidb_request_duration_seconds",
                "gRPC request latency, from the request's arrival to the end of its answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc", "collection"],
        )
        .expect("valid histogram");
        let wal_sync_seconds = histogram(
            "sidb_wal_sync_duration_seconds",
            "Write-ahead log: time of one group commit (write and fdatasync).",
            LATENCY_BUCKETS.to_vec(),
        );
        let wal_sync_entries = histogram(
            "sidb_wal_sync_entries",
            "Write-ahead log: entries made durable by one group commit.",
            prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
        );
        let wal_synced_bytes = IntCounter::new(
            "sidb_wal_synced_bytes_total",
            "Write-ahead log: bytes written and synced.",
        )
        .expect("valid counter");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(wal_sync_seconds.clone()),
            Box::new(wal_sync_entries.clone()),
            Box::new(wal_synced_bytes.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Events {
            registry,
            requests,
            request_seconds,
            wal_sync_seconds,
            wal_sync_entries,
            wal_synced_bytes,
        }
    }
}

static EVENTS: LazyLock<Events> = LazyLock::new(Events::new);

/// The process's event metrics.
pub fn events() -> &'static Events {
    &EVENTS
}

/// What a request's handler tells the metrics layer about it.
#[derive(Default)]
struct RequestLabels {
    collection: OnceLock<String>,
}

tokio::task_local! {
    static LABELS: Arc<RequestLabels>;
}

/// Labels the current request with its collection (a no-op outside a request, e.g. in tests
/// that call handlers directly). The first call of a request wins.
pub fn label_collection(name: &str) {
    let mut end = name.len().min(128);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let _ = LABELS.try_with(|l| l.collection.set(name[..end].to_string()));
}

/// The method name of a sidb gRPC path (`/sidb.v1.Items/UpsertItems` -> `UpsertItems`), or
/// None for other services (health, reflection), which are not counted.
fn rpc_of(path: &str) -> Option<&str> {
    path.strip_prefix("/sidb.v1.")?
        .split_once('/')
        .map(|(_, m)| m)
}

/// The gRPC status code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_of(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<usize>().ok().filter(|c| *c < CODES.len())
}

/// One request being answered; recorded once, when its answer ends or is dropped.
struct Record {
    rpc: String,
    labels: Arc<RequestLabels>,
    started: Instant,
    code: Option<usize>,
}

impl Drop for Record {
    fn drop(&mut self) {
        // No status seen: the client went away before the answer ended.
        let code = self.code.unwrap_or(1);
        let keep = !matches!(code, 3 | 5 | 7 | 16);
        let collection = match (keep, self.labels.collection.get()) {
            (true, Some(c)) => c.as_str(),
            _ => "",
        };
        let e = events();
        e.requests
            .with_label_values(&[self.rpc.as_str(), collection, CODES[code]])
            .inc();
        e.request_seconds
            .with_label_values(&[self.rpc.as_str(), collection])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A response body that records its request when its trailers (the status) pass or when it is
/// dropped.
struct ObservedBody {
    inner: tonic::body::Body,
    record: Option<Record>,
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_of) {
                    if let Some(r) = &mut self.record {
                        r.code = Some(code);
                    }
                    self.record = None; // recorded now, not when the connection lets go
                }
            }
            Poll::Ready(None) => self.record = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The tower layer that counts and times every sidb RPC (or, disabled, passes them through: the
/// server disables it while the HTTP port is off, as nobody could read the counts).
#[derive(Clone, Default)]
pub struct RequestMetricsLayer {
    enabled: bool,
}

impl RequestMetricsLayer {
    /// A layer that counts when `enabled`.
    pub fn new(enabled: bool) -> Self {
        RequestMetricsLayer { enabled }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service produced by [`RequestMetricsLayer`].
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    enabled: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = match self.enabled {
            true => rpc_of(req.uri().path()).map(str::to_string),
            false => None,
        };
        let Some(rpc) = rpc else {
            return Box::pin(self.inner.call(req));
        };
        let labels = Arc::new(RequestLabels::default());
        let started = Instant::now();
        let answer = LABELS.scope(labels.clone(), self.inner.call(req));
        Box::pin(async move {
            let resp = answer.await?;
            let (parts, body) = resp.into_parts();
            let record = Record {
                rpc,
                labels,
                started,
                code: code_of(&parts.headers),
            };
            // A trailers-only answer (every error) carries its status in the headers: record it
            // now; otherwise the status comes with the body's trailers.
            let record = match record.code {
                Some(_) => {
                    drop(record);
                    None
                }
                None => Some(record),
            };
            let body = tonic::body::Body::new(ObservedBody {
                inner: body,
                record,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// Bytes of this process's resident and virtual memory, from `/proc/self/statm` (Linux).
fn process_memory() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
    let virt = fields.next()??;
    let resident = fields.next()??;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some((resident * page, virt * page))
}

/// The state metrics of one scrape, in a registry of their own.
struct State {
    registry: Registry,
}

impl State {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
        let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        self.registry
            .register(Box::new(g.clone()))
            .expect("unique metric names");
        g
    }
}

/// The whole metrics page: the events, then the state of `engine` (None while it starts up or
/// shuts down; then only the process and readiness are reported).
pub fn render(engine: Option<&Engine>) -> String {
    let state = State {
        registry: Registry::new(),
    };
    let up = state.gauge(
        "sidb_ready",
        "1 while the engine serves (recovery done), 0 while starting or stopping.",
        &[],
    );
    up.with_label_values(&[] as &[&str])
        .set(engine.is_some() as u8 as f64);
    let memory = state.gauge(
        "process_memory_bytes",
        "Memory of the sidb process (resident and virtual), from /proc/self/statm.",
        &["kind"],
    );
    if let Some((resident, virt)) = process_memory() {
        memory.with_label_values(&["resident"]).set(resident as f64);
        memory.with_label_values(&["virtual"]).set(virt as f64);
    }
    if let Some(engine) = engine {
        engine_state(&state, engine);
    }
    let mut families = events().registry.gather();
    families.extend(state.registry.gather());
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of valid metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

fn engine_state(state: &State, engine: &Engine) {
    let wal_pending = state.gauge(
        "sidb_wal_pending_bytes",
        "Write-ahead log: bytes appended and not yet synced (writes are refused above storage.max_pending_bytes).",
        &[],
    );
    wal_pending
        .with_label_values(&[] as &[&str])
        .set(engine.wal_pending_bytes() as f64);
    let entities = state.gauge(
        "sidb_collection_entities",
        "Entities stored, by collection and kind (items, users, interactions).",
        &["collection", "kind"],
    );
    let sequence = state.gauge(
        "sidb_collection_last_sequence",
        "The collection's last applied write sequence.",
        &["collection"],
    );
    let points = state.gauge(
        "sidb_index_points",
        "Live points in the HNSW graph of a vector space.",
        &["collection", "space"],
    );
    let tombstones = state.gauge(
        "sidb_index_tombstones",
        "Graph nodes of replaced or deleted vectors, until the next rebuild.",
        &["collection", "space"],
    );
    let pending = state.gauge(
        "sidb_index_pending",
        "Vectors not yet in the graph (searched exactly meanwhile).",
        &["collection", "space"],
    );
    let phase = state.gauge(
        "sidb_training_phase",
        "1 for the trainer's current phase of the collection (idle, snapshot, training, publishing, failed).",
        &["collection", "phase"],
    );
    let step = state.gauge(
        "sidb_training_step",
        "Steps of the training running now (0 when none); its rate is the step rate.",
        &["collection"],
    );
    let progress = state.gauge(
        "sidb_training_progress_ratio",
        "0..1 of the training running now.",
        &["collection"],
    );
    let version = state.gauge(
        "sidb_model_active_version",
        "The model version serving (0 = none yet).",
        &["collection"],
    );
    let train_seconds = state.gauge(
        "sidb_model_train_seconds",
        "Training wall time of the active version.",
        &["collection"],
    );
    let steps_per_second = state.gauge(
        "sidb_model_train_steps_per_second",
        "Steps per second of the active version's training.",
        &["collection"],
    );
    let code_use = state.gauge(
        "sidb_model_code_use_ratio",
        "Share of a level's codes that the active version uses, by quantizer (item, user) and level (1-based).",
        &["collection", "quantizer", "level"],
    );
    let perplexity = state.gauge(
        "sidb_model_code_perplexity",
        "Perplexity of a level's code distribution in the active version.",
        &["collection", "quantizer", "level"],
    );
    let collisions = state.gauge(
        "sidb_model_collision_ratio",
        "Share of items whose code tuple another item already holds, in the active version.",
        &["collection"],
    );
    for c in engine.observe() {
        let name = c.info.name.as_str();
        let s = &c.info.stats;
        for (kind, n) in [
            ("items", s.items),
            ("users", s.users),
            ("interactions", s.interactions),
        ] {
            entities.with_label_values(&[name, kind]).set(n as f64);
        }
        sequence
            .with_label_values(&[name])
            .set(s.last_sequence as f64);
        for sp in &c.spaces {
            let l = [name, sp.name.as_str()];
            points.with_label_values(&l).set(sp.points as f64);
            tombstones.with_label_values(&l).set(sp.tombstones as f64);
            pending.with_label_values(&l).set(sp.pending as f64);
        }
        let current = c.training.phase.as_str().to_ascii_lowercase();
        for p in ["idle", "snapshot", "training", "publishing", "failed"] {
            phase
                .with_label_values(&[name, p])
                .set((p == current.as_str()) as u8 as f64);
        }
        step.with_label_values(&[name]).set(c.training.step as f64);
        progress.with_label_values(&[name]).set(c.training.progress);
        version
            .with_label_values(&[name])
            .set(c.info.active_model_version as f64);
        if let Some(r) = &c.report {
            train_seconds
                .with_label_values(&[name])
                .set(r.train_seconds);
            if r.train_seconds > 0.0 {
                steps_per_second
                    .with_label_values(&[name])
                    .set(r.steps as f64 / r.train_seconds);
            }
            collisions
                .with_label_values(&[name])
                .set(r.collision_rate as f64);
            for (quantizer, levels) in [("item", &r.levels), ("user", &r.user_levels)] {
                for (l, &(size, used, ppl)) in levels.iter().enumerate() {
                    let level = (l + 1).to_string();
                    let labels = [name, quantizer, level.as_str()];
                    code_use
                        .with_label_values(&labels)
                        .set(used as f64 / size.max(1) as f64);
                    perplexity.with_label_values(&labels).set(ppl as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_are_the_sidb_methods_only() {
        assert_eq!(rpc_of("/sidb.v1.Items/UpsertItems"), Some("UpsertItems"));
        assert_eq!(rpc_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(rpc_of("/sidb.v1.Items"), None);
    }

    #[test]
    fn a_request_is_recorded_with_its_code_and_its_collection_only_when_it_names_a_real_one() {
        let rec = |rpc: &str, collection: Option<&str>, code: Option<usize>| {
            let labels = Arc::new(RequestLabels::default());
            if let Some(c) = collection {
                labels.collection.set(c.to_string()).unwrap();
            }
            drop(Record {
                rpc: rpc.into(),
                labels,
                started: Instant::now(),
                code,
            });
        };
        let count = |rpc: &str, collection: &str, code: &str| {
            events()
                .requests
                .with_label_values(&[rpc, collection, code])
                .get()
        };
        rec("TestOk", Some("movies"), Some(0));
        rec("TestOk", Some("made-up"), Some(5));
        rec("TestOk", Some("movies"), None);
        assert_eq!(count("TestOk", "movies", "OK"), 1);
        assert_eq!(count("TestOk", "", "NOT_FOUND"), 1);
        assert_eq!(count("TestOk", "made-up", "NOT_FOUND"), 0);
        assert_eq!(count("TestOk", "movies", "CANCELLED"), 1);
        let page = render(None);
        assert!(
            page.contains(
                "sidb_requests_total{code=\"OK\",collection=\"movies\",rpc=\"TestOk\"} 1"
            ),
            "{page}"
        );
        assert!(page.contains("sidb_ready 0"));
        assert!(page.contains("process_memory_bytes{kind=\"resident\"}"));
    }
}
