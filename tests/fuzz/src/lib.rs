//! Harnesses of wiremesh's fuzz targets (`fuzz_targets/`, docs/FUZZING.md), in a library so
//! that the seed generator (`examples/seeds/`) builds inputs in exactly the format the targets
//! read. Each harness feeds untrusted bytes to the same code the agent and the data path run and
//! checks a property that must hold for every input; a panic is a finding.
//!
//! One crate for every target, so that their dependencies are built once (`scripts/test.sh`
//! builds them for its fuzz smoke).

pub mod device;
pub mod policy_load;
pub mod store_record;
pub mod uapi;
