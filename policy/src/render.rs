//! Text rendering of a trace result.

use std::fmt::Write as _;

use crate::trace::{DeniedBy, IstioReport, SideReport, TraceResult, Verdict};

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::Denied => "denied",
    }
}

fn side(out: &mut String, title: &str, s: &SideReport) {
    let Some(endpoint) = &s.endpoint else {
        let _ = writeln!(out, "{title}: {}", s.reason);
        return;
    };
    let _ = writeln!(
        out,
        "{title} of {endpoint} (peer {}): {}",
        s.peer,
        verdict(s.verdict)
    );
    if s.isolated {
        let _ = writeln!(out, "  selected by: {}", s.selected_by.join(", "));
    }
    let _ = writeln!(out, "  {}", s.reason);
    for r in &s.denied_by {
        let _ = writeln!(out, "  denied by {} {}", r.policy, r.rule);
    }
    for r in &s.allowed_by {
        let _ = writeln!(out, "  allowed by {} {}", r.policy, r.rule);
    }
    for r in &s.l7_rules {
        let _ = writeln!(out, "  L7 rule applies: {r}");
    }
}

/// Renders a result for people: the verdict first, then each direction.
pub fn render_text(r: &TraceResult) -> String {
    let mut out = String::new();
    let by = match r.denied_by {
        None => String::new(),
        Some(DeniedBy::Egress) => " (by the source's egress policy)".into(),
        Some(DeniedBy::Ingress) => " (by the destination's ingress policy)".into(),
        Some(DeniedBy::Istio) => " (by Istio policy at the destination)".into(),
        Some(DeniedBy::L7) => " (by L7 rules: no HTTP rule admits the request)".into(),
    };
    let _ = writeln!(out, "verdict: {}{by}", verdict(r.verdict));
    side(&mut out, "egress", &r.egress);
    side(&mut out, "ingress", &r.ingress);
    match r.l7_matched {
        Some(true) => out.push_str("L7: the HTTP request is admitted\n"),
        Some(false) => out.push_str("L7: no rule admits the HTTP request\n"),
        None => {}
    }
    if let Some(i) = &r.istio {
        istio(&mut out, i);
    }
    out
}

fn istio(out: &mut String, i: &IstioReport) {
    let verdict = if i.allowed { "allowed" } else { "denied" };
    let _ = writeln!(out, "istio at the destination: {verdict}");
    let from = if i.from_mesh {
        "from the mesh"
    } else {
        "not from the mesh"
    };
    let _ = writeln!(out, "  mTLS mode {} (source {from})", i.mtls_mode);
    for p in &i.policies {
        let _ = writeln!(out, "  applies: {p}");
    }
    if let Some(by) = &i.enforced_by {
        let _ = writeln!(out, "  enforced by the {by}");
    }
    if i.needs_http {
        out.push_str("  HTTP rules apply: the L7 filter decides each request\n");
    }
    if let Some(d) = &i.decision {
        if let Some(by) = &d.deciding {
            let _ = writeln!(
                out,
                "  decided by {} {} ({})",
                by.policy, by.rule, by.action
            );
        }
        if let Some(a) = &d.audited_by {
            let _ = writeln!(out, "  audited by {} {}", a.policy, a.rule);
        }
    }
    let _ = writeln!(out, "  {}", i.reason);
}
