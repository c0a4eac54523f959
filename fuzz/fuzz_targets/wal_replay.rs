//! `cargo fuzz run wal_replay`: see `sidb::fuzz::wal_replay`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidb::fuzz::wal_replay(data));
