//! `cargo fuzz run page_tokens`: see `sidb::fuzz::page_tokens`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidb::fuzz::page_tokens(data));
