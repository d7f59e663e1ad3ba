//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use policy::{
    load, load_with, trace, Bundle, DeniedBy, HttpRequest, LoadOptions, Protocol, Query,
    TraceResult, Verdict,
};

/// Loads files from `examples/` through the same loader the CLI uses.
pub fn examples(names: &[&str]) -> Bundle {
    examples_with(names, LoadOptions::default()).expect("examples load")
}

/// Loads files from `examples/` with HTTP rules accepted (the default: the L7 filter enforces
/// them).
pub fn examples_l7_model(names: &[&str]) -> Bundle {
    examples_with(names, LoadOptions::default()).expect("examples load")
}

/// Options for a node without the L7 filter: HTTP rules refused.
pub fn without_l7() -> LoadOptions {
    LoadOptions {
        l7_model: false,
        ..LoadOptions::default()
    }
}

pub fn examples_with(names: &[&str], options: LoadOptions) -> Result<Bundle, policy::LoadError> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let files: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let path = format!("{dir}/{n}");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (path, text)
        })
        .collect();
    load_with(files.iter().map(|(a, b)| (a.as_str(), b.as_str())), options)
}

pub fn yaml(text: &str) -> Bundle {
    load([("test.yaml", text)]).unwrap_or_else(|e| panic!("load: {e}"))
}

pub fn run(b: &Bundle, from: &str, to: &str, port: u16, protocol: Protocol) -> TraceResult {
    let q = Query {
        from: from.into(),
        to: to.into(),
        port: Some(port),
        protocol,
        http: None,
    };
    trace(b, &q).unwrap_or_else(|e| panic!("trace {from} -> {to}: {e}"))
}

pub fn http(
    b: &Bundle,
    from: &str,
    to: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> TraceResult {
    let q = Query {
        from: from.into(),
        to: to.into(),
        port: Some(port),
        protocol: Protocol::Tcp,
        http: Some(HttpRequest {
            method: Some(method.into()),
            path: Some(path.into()),
            host: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
    };
    trace(b, &q).unwrap_or_else(|e| panic!("trace {from} -> {to}: {e}"))
}

/// Short form of a verdict: "allowed", "egress", "ingress", "istio" or "l7".
pub fn short(r: &TraceResult) -> &'static str {
    match (r.verdict, r.denied_by) {
        (Verdict::Allowed, _) => "allowed",
        (Verdict::Denied, Some(DeniedBy::Egress)) => "egress",
        (Verdict::Denied, Some(DeniedBy::Ingress)) => "ingress",
        (Verdict::Denied, Some(DeniedBy::L7)) => "l7",
        (Verdict::Denied, Some(DeniedBy::Istio)) => "istio",
        (Verdict::Denied, None) => "denied-without-reason",
    }
}

pub fn tcp(b: &Bundle, from: &str, to: &str, port: u16) -> &'static str {
    short(&run(b, from, to, port, Protocol::Tcp))
}

pub fn udp(b: &Bundle, from: &str, to: &str, port: u16) -> &'static str {
    short(&run(b, from, to, port, Protocol::Udp))
}
