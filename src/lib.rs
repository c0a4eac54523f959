//! sidb: an embedded vector-and-semantic-ID database server.
#![warn(missing_docs)]

pub mod eval;
pub mod model;
