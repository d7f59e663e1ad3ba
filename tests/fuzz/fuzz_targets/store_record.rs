//! Fuzz target `store_record`: the input goes to [`wiremesh_fuzz::store_record::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wiremesh_fuzz::store_record::run(data));
