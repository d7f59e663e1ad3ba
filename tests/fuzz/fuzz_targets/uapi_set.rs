//! Fuzz target `uapi_set`: the input goes to [`wiremesh_fuzz::uapi::set`], which documents it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wiremesh_fuzz::uapi::set(data));
