//! Fuzz target `policy_load`: the input goes to [`policy_fuzz::run`], which documents it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_fuzz::run(data));
