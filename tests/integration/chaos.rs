//! The crash tester at CI size: the debug `sidb chaos` with a few SIGKILLs of the real server,
//! two clients, a fixed seed and the self-test (the checker must catch every tampering) exits 0
//! with no violation of any class.

use std::process::Command;
use std::time::Instant;

#[test]
fn chaos_kills_with_self_test_find_no_violation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("summary.json");
    let t0 = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_sidb"))
        .args(["chaos", "--kills", "5", "--clients", "2", "--seed", "7"])
        .args(["--max-epoch-ms", "1500", "--self-test"])
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("SIDB_PAUSE_AT")
        .output()
        .expect("run sidb chaos");
    let text =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    eprintln!("{text}");
    assert!(run.status.success(), "sidb chaos failed: {}", run.status);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("summary written")).expect("JSON");
    assert_eq!(summary["kills"], 5);
    assert!(summary["counters"]["acked_durable"].as_u64() > Some(0));
    assert!(summary["counters"]["acked_buffered"].as_u64() > Some(0));
    assert!(summary["comparisons"].as_u64() > Some(1000));
    let cases = summary["self_test"].as_array().expect("self-test ran");
    assert!(cases.len() >= 10, "{cases:?}");
    assert!(cases.iter().all(|c| c["caught"] == true), "{cases:?}");
    let violations = summary["violations"].as_array().expect("violations listed");
    assert!(violations.is_empty(), "{violations:?}");
    eprintln!("chaos CI run: {:.1} s", t0.elapsed().as_secs_f64());
}
