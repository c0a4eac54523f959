//! What the chaos clients share with the driver: the model of what was acknowledged, the
//! per-collection gates, the kill and stop flags, and the violations seen while running. Its
//! own module so that the workload and its online checks both use it without importing each
//! other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::RwLock;
use tonic::{Code, Status};

use super::model::Model;
use super::report::Violation;
use super::rpc::{is_refusal, Call};

/// What the clients share with the driver.
pub struct Shared {
    /// The model.
    pub model: Mutex<Model>,
    /// Per slot: writes and reads hold it shared, Create/DeleteCollection exclusively.
    pub gates: Vec<RwLock<()>>,
    /// Set just before the SIGKILL: errors from now on are the kill's.
    pub killing: AtomicBool,
    /// Clients stop starting calls.
    pub stop: AtomicBool,
    /// A call without an answer for this long is a hang.
    pub hang: Duration,
    /// Violations seen by the clients.
    pub violations: Mutex<Vec<Violation>>,
}

impl Shared {
    /// For `slots` collection names.
    pub fn new(model: Model, hang: Duration) -> Shared {
        let gates = model.slots.iter().map(|_| RwLock::new(())).collect();
        Shared {
            model: Mutex::new(model),
            gates,
            killing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            hang,
            violations: Mutex::new(Vec::new()),
        }
    }

    /// Records a violation of the workload.
    pub fn fail(&self, class: &str, collection: &str, detail: String) {
        self.violations.lock().push(Violation {
            class: class.into(),
            at: String::new(),
            collection: collection.into(),
            detail,
        });
    }

    pub(super) fn killing(&self) -> bool {
        self.killing.load(Ordering::SeqCst)
    }

    pub(super) fn name(&self, slot: usize) -> String {
        self.model.lock().slots[slot].name.clone()
    }

    /// Classifies a failed or hung call: `true` when the kill explains it or the code is an
    /// expected refusal; else a violation.
    pub fn judge<T>(&self, rpc: &str, slot: usize, r: &Call<T>, guarded: bool) -> bool {
        let name = self.name(slot);
        match r {
            Call::Ok(_) => true,
            Call::Hung => {
                self.fail(
                    "hang",
                    &name,
                    format!("{rpc}: no answer within {:?}", self.hang),
                );
                false
            }
            Call::Err(_) if self.killing() => true,
            Call::Err(s) if s.code() == Code::NotFound && collection_missing(s) && guarded => {
                self.fail(
                    "collection-vanished",
                    &name,
                    format!("{rpc}: {}", s.message()),
                );
                false
            }
            Call::Err(s) if is_refusal(s) => {
                self.model.lock().refused(rpc, s.code());
                true
            }
            Call::Err(s) => {
                self.fail(
                    "server-error",
                    &name,
                    format!("{rpc}: {:?} {}", s.code(), s.message()),
                );
                false
            }
        }
    }
}

/// NOT_FOUND because the collection itself is gone (not an entity of it).
pub(super) fn collection_missing(s: &Status) -> bool {
    s.message().starts_with("collection ") && s.message().ends_with("not found")
}
