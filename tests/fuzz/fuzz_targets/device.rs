//! Fuzz target `device`: the input goes to [`wiremesh_fuzz::device::run`], which documents it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wiremesh_fuzz::device::run(data));
