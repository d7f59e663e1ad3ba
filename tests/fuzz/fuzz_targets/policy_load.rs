//! Fuzz target `policy_load`: the input goes to [`wiremesh_fuzz::policy_load::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wiremesh_fuzz::policy_load::run(data));
