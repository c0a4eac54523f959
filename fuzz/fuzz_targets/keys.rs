//! `cargo fuzz run keys`: see `sidb::fuzz::keys`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidb::fuzz::keys(data));
