//! The command-line tools of the `sidb` binary, compiled into it only (the library knows none of
//! them): they talk to a running server over gRPC or run the model offline.
//!
//! - [`admin`]: `sidb import` and `sidb training ...` against a running server.
//! - [`model`]: `sidb train` and `sidb eval` on a dataset directory, no server.
//! - [`loadgen`]: `sidb bench ingest`, `sidb bench search` and `sidb bench recommend`.
//! - [`chaos`]: `sidb chaos`, the crash tester.
//! - [`target`]: the server flags every client command shares (URL, TLS, API key).

pub mod admin;
pub mod chaos;
pub mod loadgen;
pub mod model;
pub mod target;
