//! sidb: an embedded vector-and-semantic-ID database server.
//!
//! Layers, bottom up (docs/architecture.md tours them in the order data flows):
//! - [`types`], [`error`], [`config`]: the vocabulary, the error classes, the settings.
//! - [`storage`]: sled plus our write-ahead log; keyspaces, record formats, durability, recovery.
//! - [`trie`], [`index`]: the semantic-ID prefix trie and the vector indexes (HNSW + exact flat);
//!   pure in-memory structures with no I/O but the index dump files.
//! - [`engine`]: the core facade: validation, then storage, off the async workers; it keeps each
//!   collection's trie and indexes in step with its writes and answers the retrieval queries.
//! - [`service`]: thin tonic handlers, proto <-> domain conversion, the one status mapping.
//! - [`server`], [`auth`]: listener, TLS, API keys, health, reflection, startup and graceful
//!   shutdown; [`http`], [`metrics`]: the HTTP port with the Prometheus page and the probes.
//! - [`model`], [`eval`]: the DAS semantic-ID quantizer (candle) and its offline evaluation;
//!   plain in-memory data in, no storage or tokio.
//! - [`lock`]: the ranked locks: the one lock order, checked in debug builds.
//! - [`profile`]: the recency weighting of a user's history (trainer and queries share it).
#![warn(missing_docs)]

pub(crate) mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub(crate) mod fsutil;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod http;
pub mod index;
pub mod lock;
pub mod metrics;
pub mod model;
pub(crate) mod profile;
pub mod proto;
pub mod server;
pub(crate) mod service;
pub mod storage;
pub mod trie;
pub mod types;
