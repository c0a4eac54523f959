//! Violations, check tallies and the run's summary.

use std::collections::BTreeMap;

use serde::Serialize;

/// The two violation classes of known faults (fixed separately): reported on their own so a
/// run tells them apart from anything new.
pub const KNOWN: [(&str, &str); 2] = [
    (
        "torn-read",
        "(a) GetItems/GetUsers read the record and the SID under separate locks",
    ),
    (
        "versions-beyond-keep",
        "(b) a kill between a version's activation and the prune of old versions",
    ),
];

/// Whether `class` is one of [`KNOWN`].
pub fn known(class: &str) -> Option<&'static str> {
    KNOWN.iter().find(|(c, _)| *c == class).map(|(_, why)| *why)
}

/// One broken invariant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Violation {
    /// Its class (a short kebab-case name).
    pub class: String,
    /// When: "epoch N check", "epoch N workload", "final", "self-test ...".
    pub at: String,
    /// The collection, if one.
    pub collection: String,
    /// What exactly.
    pub detail: String,
}

/// What one verification found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Invariants evaluated (per collection and kind).
    pub invariant_checks: u64,
    /// Individual comparisons (an entity's content, a SID, a count, a row).
    pub comparisons: u64,
    /// Broken ones.
    pub violations: Vec<Violation>,
    /// In-doubt batches found applied, not applied, undecided.
    pub doubt: [u64; 3],
    /// Acknowledged BUFFERED batches lost (allowed).
    pub buffered_lost: u64,
    collection: String,
}

impl Findings {
    /// The collection the next findings are about.
    pub fn on(&mut self, collection: &str) {
        self.collection = collection.to_string();
    }

    /// One invariant evaluated.
    pub fn invariant(&mut self) {
        self.invariant_checks += 1;
    }

    /// One comparison; records a violation of `class` when `ok` is false.
    pub fn cmp(&mut self, ok: bool, class: &str, detail: impl FnOnce() -> String) -> bool {
        self.comparisons += 1;
        if !ok {
            self.fail(class, detail());
        }
        ok
    }

    /// Records a violation.
    pub fn fail(&mut self, class: &str, detail: String) {
        self.violations.push(Violation {
            class: class.to_string(),
            at: String::new(),
            collection: self.collection.clone(),
            detail,
        });
    }
}

/// Time from spawning `sidb serve` to health SERVING.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServingTimes {
    /// Every start, milliseconds.
    pub samples_ms: Vec<f64>,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// The bound (a start slower than this is a violation).
    pub bound_ms: f64,
}

impl ServingTimes {
    /// Adds one start.
    pub fn add(&mut self, ms: f64) {
        self.samples_ms.push(ms);
        self.max_ms = self.max_ms.max(ms);
        self.mean_ms = self.samples_ms.iter().sum::<f64>() / self.samples_ms.len() as f64;
    }
}

/// One tampering of the self-test.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTestCase {
    /// What was tampered with.
    pub name: String,
    /// The class the checker must report.
    pub expect: String,
    /// Whether it did.
    pub caught: bool,
    /// The violation it reported (or what it reported instead).
    pub detail: String,
}

/// The run's summary (`--out`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Seed.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// SIGKILLs sent.
    pub kills: u64,
    /// Server starts after the first.
    pub restarts: u64,
    /// Clean SIGTERM shutdowns (exit code checked).
    pub clean_shutdowns: u64,
    /// Wall seconds of the run.
    pub seconds: f64,
    /// Client-side counters.
    pub counters: super::model::Counters,
    /// Checker runs (one after every start).
    pub checker_runs: u64,
    /// Invariants evaluated.
    pub invariant_checks: u64,
    /// Comparisons made.
    pub comparisons: u64,
    /// Time to SERVING.
    pub time_to_serving: ServingTimes,
    /// Model versions seen active after a restart, per check (max over collections).
    pub versions_active_after_restart: u64,
    /// Violations per class.
    pub violations_by_class: BTreeMap<String, u64>,
    /// Known classes among them, with what they are.
    pub known_classes: BTreeMap<String, String>,
    /// Every violation (duplicates folded: `repeats` counts them).
    pub violations: Vec<Violation>,
    /// Folded duplicates.
    pub repeats: u64,
    /// The self-test, if run.
    pub self_test: Vec<SelfTestCase>,
    /// The data directory (kept when anything failed).
    pub data_dir: String,
    /// Lines the server logged at ERROR level or with a panic.
    pub server_errors: Vec<String>,
}

impl Summary {
    /// Adds violations found `at`, folding exact repeats.
    pub fn add(&mut self, at: &str, found: Vec<Violation>) {
        for mut v in found {
            v.at = at.to_string();
            let same = |w: &Violation| {
                w.class == v.class && w.collection == v.collection && w.detail == v.detail
            };
            if self.violations.iter().any(same) {
                self.repeats += 1;
                continue;
            }
            *self.violations_by_class.entry(v.class.clone()).or_default() += 1;
            if let Some(why) = known(&v.class) {
                self.known_classes.insert(v.class.clone(), why.to_string());
            }
            self.violations.push(v);
        }
    }

    /// Adds a verification's tallies and violations.
    pub fn absorb(&mut self, at: &str, f: Findings) {
        self.checker_runs += 1;
        self.invariant_checks += f.invariant_checks;
        self.comparisons += f.comparisons;
        self.add(at, f.violations);
    }

    /// Violations that fail the run: all but the classes in `tolerated`.
    pub fn failing(&self, tolerated: &[String]) -> usize {
        self.violations
            .iter()
            .filter(|v| !tolerated.contains(&v.class))
            .count()
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "chaos: seed {} clients {} | {} kills, {} restarts, {} clean shutdowns, {:.1} s\n",
            self.seed, self.clients, self.kills, self.restarts, self.clean_shutdowns, self.seconds
        );
        s += &format!(
            "acked write batches: {} durable, {} buffered ({} buffered lost at kills, allowed) | in doubt {} (applied {}, not applied {}, undecided {})\n",
            c.acked_durable, c.acked_buffered, c.buffered_lost, c.in_doubt,
            c.in_doubt_applied, c.in_doubt_not_applied, c.in_doubt_undecided
        );
        s += &format!(
            "collections created {} deleted {} (lifecycle in doubt {}) | trainings triggered {}, activations acked {}, highest version {}\n",
            c.collections_created, c.collections_deleted, c.lifecycle_in_doubt,
            c.trainings_triggered, c.activations_acked, c.max_version_seen
        );
        let calls: u64 = c.calls.values().sum();
        s += &format!(
            "calls {calls} | checker runs {}, invariant checks {}, comparisons {}\n",
            self.checker_runs, self.invariant_checks, self.comparisons
        );
        let slow: Vec<String> = c
            .slowest_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        s += &format!("slowest answered call, ms: {}\n", slow.join(", "));
        let t = &self.time_to_serving;
        s += &format!(
            "time to SERVING: max {:.0} ms, mean {:.0} ms over {} starts (bound {:.0} ms)\n",
            t.max_ms,
            t.mean_ms,
            t.samples_ms.len(),
            t.bound_ms
        );
        for case in &self.self_test {
            s += &format!(
                "self-test {:<34} expects {:<28} {}\n",
                case.name,
                case.expect,
                if case.caught {
                    "caught".to_string()
                } else {
                    format!("MISSED: {}", case.detail)
                }
            );
        }
        s += &format!(
            "violations: {} ({} repeats folded)\n",
            self.violations.len(),
            self.repeats
        );
        for (class, n) in &self.violations_by_class {
            let tag = known(class)
                .map(|w| format!(" [known: {w}]"))
                .unwrap_or_default();
            s += &format!("  {class}: {n}{tag}\n");
        }
        for v in &self.violations {
            s += &format!(
                "  - [{}] {} {:?}: {}\n",
                v.class, v.at, v.collection, v.detail
            );
        }
        s
    }
}
