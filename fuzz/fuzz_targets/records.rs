//! `cargo fuzz run records`: see `sidb::fuzz::records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidb::fuzz::records(data));
