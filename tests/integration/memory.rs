//! Memory bounds with the real `sidb` binary: maximum-size requests, sent again and again and
//! two at a time, keep the server's resident memory within a stated bound.

use std::time::Duration;

use sidb::proto as pb;

use crate::common::*;

/// Resident and peak resident memory of process `pid`, in MiB (Linux `/proc`).
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or_else(|| panic!("{name} missing in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `n` interactions of 100 users over 5,000 items, seeded by `round`.
fn interactions(n: usize, round: usize) -> Vec<pb::Interaction> {
    (0..n)
        .map(|i| {
            let k = i * 7919 + round * 104_729;
            interaction(
                &format!("user-{:05}", k % 100),
                &format!("item-{:06}", k % 5000),
                (round * n + i) as i64,
            )
        })
        .collect()
}

/// sled's page cache of the server under test (`storage.cache_bytes`), in MiB.
const CACHE_MIB: u64 = 64;

/// The bound this test states for the server's peak resident memory while it takes maximum
/// interaction batches (100,000 each, `limits.max_interactions`) six times, two at once: the
/// cache plus 448 MiB of working memory (two decoded requests, the log buffer, sled's page
/// versions and its trees beyond the cache's accounting).
const PEAK_BOUND_MIB: u64 = CACHE_MIB + 448;

/// Regression: one WriteInteractions of 100,000 interactions (~3.4 MB on the wire) raised the
/// server's RSS from 17 MB to 896 MB, and it stayed there; two at once went to 3.15 GB. sled
/// keeps every page version a batch creates until the batch ends, so the store now applies a
/// large interaction batch to sled in slices (the WAL entry stays one atomic write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_interaction_batches_stay_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = (CACHE_MIB << 20).to_string();
    let env = [
        ("SIDB__TRAINING__AUTO", "false"),
        ("SIDB__STORAGE__CACHE_BYTES", cache.as_str()),
    ];
    let mut proc = spawn_sidb(tmp.path(), &env).await;
    let pid = proc.child.id();
    CollectionsClient::new(connect(&proc.url).await)
        .create_collection(pb::CreateCollectionRequest {
            name: "m".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let (start, _) = rss_mib(pid);
    let max = sidb::config::Limits::default().max_interactions;
    for round in 0..3 {
        let mut pair = Vec::new();
        for half in 0..2 {
            let url = proc.url.clone();
            let xs = interactions(max, round * 2 + half);
            pair.push(tokio::spawn(async move {
                InteractionsClient::new(connect(&url).await)
                    .max_encoding_message_size(64 << 20)
                    .write_interactions(pb::WriteInteractionsRequest {
                        collection: "m".into(),
                        interactions: xs,
                        durability: 0,
                    })
                    .await
                    .map(|r| r.into_inner().written)
            }));
        }
        for w in pair {
            assert_eq!(w.await.unwrap().expect("write"), max as u64);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (after, peak) = rss_mib(pid);
    eprintln!(
        "memory: RSS {start} MiB at start, {after} MiB after 6 x {max} interactions \
         (two at once), peak {peak} MiB; bound {PEAK_BOUND_MIB} MiB"
    );
    assert!(
        peak <= PEAK_BOUND_MIB,
        "peak RSS {peak} MiB exceeds the bound of {PEAK_BOUND_MIB} MiB"
    );
    let got = CollectionsClient::new(connect(&proc.url).await)
        .get_collection(pb::GetCollectionRequest { name: "m".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.interaction_count, 6 * max as u64);
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
}
