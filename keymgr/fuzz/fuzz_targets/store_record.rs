//! Fuzz target `store_record`: the input goes to [`keymgr_fuzz::run`], which documents it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keymgr_fuzz::run(data));
