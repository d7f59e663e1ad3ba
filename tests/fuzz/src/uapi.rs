//! The UAPI text parsers, both directions: `set` requests as the data path parses them from `wg`
//! or the agent, and `get` answers as the agent parses them from a data path. Property: whatever
//! parses formats back into text that parses again to the same text (format∘parse is a fixpoint
//! after one round), so the agent and the data path never disagree on what was said.

use wiremesh_datapath::uapi::{self, Request};
use wiremesh_datapath::uapi::state as uapi_state;

/// The input is one request as the UAPI server hands it to the parser (text up to the empty
/// line; invalid UTF-8 is replaced, as it never reaches the parser whole).
pub fn set(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(Request::Set(req)) = uapi::parse(&text) else {
        return;
    };
    let once = uapi::format_set(&req);
    let back = match uapi::parse(&once) {
        Ok(Request::Set(back)) => back,
        other => panic!("format_set wrote a request parse reads as {other:?}:\n{}", once.as_str()),
    };
    let twice = uapi::format_set(&back);
    assert_eq!(once, twice, "set text changed on a second round trip");
}

/// The input is one `get` answer as the agent's UAPI client collects it.
pub fn get(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(state) = uapi_state::parse_get(&text) else {
        return;
    };
    for extended in [false, true] {
        let once = uapi_state::format_get(&state, extended);
        let back = uapi_state::parse_get(&once)
            .unwrap_or_else(|e| panic!("format_get wrote an answer parse_get refuses ({e}):\n{}", once.as_str()));
        let twice = uapi_state::format_get(&back, extended);
        assert_eq!(once, twice, "get text changed on a second round trip");
    }
}
