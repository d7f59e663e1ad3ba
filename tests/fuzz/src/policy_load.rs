//! Harness of the `policy_load` fuzz target: a manifest file as `wiremesh apply -f`, the offline
//! trace and the agent's policy loop hand it to `policy::load` (YAML, any number of documents),
//! and, when it loads, the compilation the agent runs next. Property: neither panics, whatever
//! the text; a refused manifest is an error naming the file.

/// The name the manifest is loaded under; every load error must name it.
pub const FILE: &str = "fuzz.yaml";

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match policy::load([(FILE, text.as_ref())]) {
        Ok(bundle) => {
            let _ = policy::Compiled::build(&bundle);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(FILE), "a load error does not name the file: {message}");
        }
    }
}
