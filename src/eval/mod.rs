//! Evaluation (see eval/mod.rs).
