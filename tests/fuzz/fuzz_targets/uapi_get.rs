//! Fuzz target `uapi_get`: the input goes to [`wiremesh_fuzz::uapi::get`], which documents it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wiremesh_fuzz::uapi::get(data));
