//! Harnesses for the daemon's fuzz targets (`fuzz_targets/`), in a library so that the seed
//! generator (`examples/seeds.rs`) builds inputs in exactly the format the targets read. Each
//! harness feeds untrusted bytes to the same code the daemon runs and checks a property that
//! must hold for every input; a panic is a finding (docs/FUZZING.md).

pub mod device;
pub mod uapi;
