//! Integration tests: a real sidb server on 127.0.0.1, real gRPC clients.
//!
//! One binary (faster to link than one per file); modules by service.

mod common;

mod chaos;
mod collections;
mod concurrency;
mod damage;
mod durability;
mod errors;
mod fuzz;
mod interactions;
mod items;
mod lifecycle;
mod memory;
mod metrics;
mod retrieval;
mod tls;
mod training;
mod training_crash;
mod users;
