//! The HTTP port over the real binary: the probes answer, and `/metrics` is a Prometheus text
//! page whose numbers are the requests, log syncs and collection state that the test produced.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use sidb::proto as pb;

use crate::common::*;

/// One `GET` over HTTP/1.1: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    // axum answers small bodies with a length, not chunked
    (code, body.to_string())
}

/// [`http_get`] off the test's runtime thread: for a server running in the test's own runtime,
/// which a blocking read there would starve.
pub async fn http_get_async(port: u16, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || http_get(port, path))
        .await
        .unwrap()
}

/// A sample: metric name and its labels.
pub type Key = (String, BTreeMap<String, String>);

/// Parses the text exposition format: `name{k="v",...} value` lines; `# HELP` / `# TYPE` lines
/// must name a metric that has samples or is a histogram's family.
pub fn parse(page: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in page.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).expect("a type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("a number in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name:?}"
        );
        out.insert((name, labels), value);
    }
    out
}

/// The value of `name` with exactly `labels`.
pub fn get(m: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.get(&(name.to_string(), labels)).copied()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_metrics_page_counts_requests_syncs_and_state_and_the_probes_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let process = spawn_sidb(tmp.path(), &[("SIDB__SERVER__HTTP_LISTEN", &listen)]).await;
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz").0, 200);
    assert_eq!(http_get(port, "/nothing").0, 404);

    let channel = connect(&process.url).await;
    let mut colls = pb::collections_client::CollectionsClient::new(channel.clone());
    colls
        .create_collection(pb::CreateCollectionRequest {
            name: "shop".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let mut items = pb::items_client::ItemsClient::new(channel.clone());
    let batch: Vec<pb::Item> = (0..30).map(|i| item(&format!("i{i}"), i as f32)).collect();
    items.upsert_items(upsert("shop", batch)).await.unwrap();
    items
        .upsert_items(upsert("shop", vec![item("i0", 1.0), item("i1", 2.0)]))
        .await
        .unwrap();
    // a bad batch: rejected, counted under its collection
    let mut bad = item("x", 0.0);
    bad.vectors
        .insert("text".into(), pb::Vector { values: vec![1.0] });
    assert!(items.upsert_items(upsert("shop", vec![bad])).await.is_err());
    // a made-up collection: counted without its name
    let missing = colls
        .get_collection(pb::GetCollectionRequest {
            name: "made-up".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut retrieval = pb::retrieval_client::RetrievalClient::new(channel);
    for _ in 0..3 {
        retrieval
            .search(pb::SearchRequest {
                collection: "shop".into(),
                query: Some(pb::search_request::Query::ItemId("i3".into())),
                k: 5,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let (code, page) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let m = parse(&page);
    let requests = |rpc: &str, collection: &str, code: &str| {
        get(
            &m,
            "sidb_requests_total",
            &[("code", code), ("collection", collection), ("rpc", rpc)],
        )
    };
    assert_eq!(requests("CreateCollection", "shop", "OK"), Some(1.0));
    assert_eq!(requests("UpsertItems", "shop", "OK"), Some(2.0));
    assert_eq!(requests("UpsertItems", "", "INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(requests("GetCollection", "", "NOT_FOUND"), Some(1.0));
    assert_eq!(requests("GetCollection", "made-up", "NOT_FOUND"), None);
    assert_eq!(requests("Search", "shop", "OK"), Some(3.0));
    let search = [("collection", "shop"), ("rpc", "Search")];
    assert_eq!(
        get(&m, "sidb_request_duration_seconds_count", &search),
        Some(3.0)
    );
    let slowest = get(
        &m,
        "sidb_request_duration_seconds_bucket",
        &[("collection", "shop"), ("le", "+Inf"), ("rpc", "Search")],
    );
    assert_eq!(slowest, Some(3.0));
    // two DURABLE writes, one after the other: a group commit each (the catalogue's change is
    // not a log entry)
    let syncs = get(&m, "sidb_wal_sync_duration_seconds_count", &[]).unwrap();
    assert!(syncs >= 2.0, "{syncs}");
    let entries = get(&m, "sidb_wal_sync_entries_sum", &[]).unwrap();
    assert_eq!(entries, 2.0);
    assert!(get(&m, "sidb_wal_synced_bytes_total", &[]).unwrap() > 0.0);
    assert!(get(&m, "sidb_wal_pending_bytes", &[]).is_some());
    let shop = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("collection", "shop")];
        labels.extend_from_slice(extra);
        get(&m, name, &labels)
    };
    assert_eq!(
        shop("sidb_collection_entities", &[("kind", "items")]),
        Some(30.0)
    );
    assert_eq!(
        shop("sidb_collection_entities", &[("kind", "users")]),
        Some(0.0)
    );
    assert_eq!(shop("sidb_collection_last_sequence", &[]), Some(2.0));
    let space = [("space", "item:text")];
    let points = shop("sidb_index_points", &space).unwrap();
    let pending = shop("sidb_index_pending", &space).unwrap();
    assert!(shop("sidb_index_tombstones", &space).is_some());
    assert_eq!(
        points + pending,
        30.0,
        "every live vector is in the graph or pending"
    );
    assert_eq!(shop("sidb_training_phase", &[("phase", "idle")]), Some(1.0));
    assert_eq!(
        shop("sidb_training_phase", &[("phase", "training")]),
        Some(0.0)
    );
    assert_eq!(shop("sidb_model_active_version", &[]), Some(0.0));
    assert_eq!(get(&m, "sidb_ready", &[]), Some(1.0));
    let rss = get(&m, "process_memory_bytes", &[("kind", "resident")]).unwrap();
    assert!(rss > 1e6, "{rss}");

    // A deleted collection's state series go with it.
    colls
        .delete_collection(pb::DeleteCollectionRequest {
            name: "shop".into(),
        })
        .await
        .unwrap();
    let m = parse(&http_get(port, "/metrics").1);
    assert_eq!(
        get(
            &m,
            "sidb_collection_last_sequence",
            &[("collection", "shop")]
        ),
        None
    );
    process.kill_9();
}

#[test]
fn a_taken_or_malformed_http_port_stops_the_start_with_its_setting_named() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for value in [taken.as_str(), "localhost"] {
        let dir = tmp.path().to_str().unwrap();
        let serve = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            value,
            "--data-dir",
            dir,
        ];
        let (ok, stderr) = run_sidb(&serve, &[]);
        assert!(!ok);
        assert!(stderr.contains("server.http_listen"), "{stderr}");
    }
}
