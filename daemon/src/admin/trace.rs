//! The online `wiremesh policy trace` on the agent's side: JSON-lines queries in, answers from
//! the policy in force out. It reads the policy view only; it never loads or changes policy.

use policy::{render_text, trace, Query};

use super::server::{Reply, Routes};
use super::view::{PolicyView, View};
use crate::api::paths;

/// `POST /v1/policy/trace[?output=text]`.
pub fn register(routes: &mut Routes, policy: View<PolicyView>) {
    routes.post_body(paths::TRACE, move |call| {
        let text = call.query.as_deref() == Some("output=text");
        let out = trace_online(&policy.get(), &String::from_utf8_lossy(&call.body), text);
        async move { Reply::ok(out) }
    });
}

/// One answer per query line (JSON), or the text rendering when `text` and there is one
/// query.
pub fn trace_online(state: &PolicyView, body: &str, text: bool) -> String {
    let mut out = String::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Query::from_json_line(line, i + 1).and_then(|q| trace(&state.bundle, &q)) {
            Ok(r) if text => out.push_str(&render_text(&r)),
            Ok(r) => {
                out.push_str(&serde_json::to_string(&r).unwrap_or_default());
                out.push('\n');
            }
            Err(e) => {
                let v =
                    serde_json::json!({"verdict": null, "deniedBy": null, "error": e.to_string()});
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
    }
    if let Some(why) = &state.refused {
        let note = format!(
            "note: the store holds objects that do not load ({why}); this answer is from the \
             policy in force (generation {})\n",
            state.generation
        );
        if text {
            out.push_str(&note);
        }
    }
    out
}
