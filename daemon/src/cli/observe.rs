//! `wiremesh observe`: this node's recent flows (the eBPF programs' connection and drop events
//! and the L7 proxy's requests), as Hubble shows them, from the agent's admin socket: the last
//! N, or followed; filtered by namespace, pod, label, verdict, protocol, HTTP status and port;
//! as a table or as JSON lines. The filters are pure ([`Filter`]); only `run` does I/O.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use wiremesh_l7::flows::{Flow, FlowEndpoint, Verdict};

use super::ask::ask;

/// How long one poll waits for new flows with `--follow`.
const FOLLOW_WAIT: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone, Default)]
pub struct ObserveArgs {
    /// Keep printing new flows until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print the last N flows (before following).
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// Flows from or to this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Flows from this pod (`namespace/pod`, or `pod` with `--namespace`).
    #[arg(long)]
    pub from_pod: Option<String>,
    /// Flows to this pod.
    #[arg(long)]
    pub to_pod: Option<String>,
    /// Flows from a pod with this label (`key=value`).
    #[arg(long)]
    pub from_label: Option<String>,
    /// Flows to a pod with this label.
    #[arg(long)]
    pub to_label: Option<String>,
    /// FORWARDED, DROPPED, AUDIT or ERROR.
    #[arg(long)]
    pub verdict: Option<String>,
    /// tcp, udp, icmp or http.
    #[arg(long)]
    pub protocol: Option<String>,
    /// An HTTP status (`403`) or class (`5xx`).
    #[arg(long)]
    pub http_status: Option<String>,
    /// The destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// `json`: one JSON object per line.
    #[arg(long, short = 'o')]
    pub output: Option<String>,
}

/// The filters of one `observe` invocation.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    args: ObserveArgs,
}

impl Filter {
    pub fn new(args: &ObserveArgs) -> Result<Self, String> {
        if let Some(v) = &args.verdict {
            if !["FORWARDED", "DROPPED", "AUDIT", "ERROR"]
                .contains(&v.to_ascii_uppercase().as_str())
            {
                return Err(format!(
                    "--verdict {v}: expected FORWARDED, DROPPED, AUDIT or ERROR"
                ));
            }
        }
        if let Some(p) = &args.protocol {
            if !["tcp", "udp", "sctp", "icmp", "icmpv6", "http"]
                .contains(&p.to_ascii_lowercase().as_str())
            {
                return Err(format!(
                    "--protocol {p}: expected tcp, udp, sctp, icmp, icmpv6 or http"
                ));
            }
        }
        if let Some(s) = &args.http_status {
            if status_matcher(s).is_none() {
                return Err(format!(
                    "--http-status {s}: expected a status (403) or a class (5xx)"
                ));
            }
        }
        for label in [&args.from_label, &args.to_label].into_iter().flatten() {
            if !label.contains('=') {
                return Err(format!("label {label:?}: expected key=value"));
            }
        }
        match args.output.as_deref() {
            None | Some("json") | Some("table") => {}
            Some(other) => return Err(format!("-o {other}: expected json or table")),
        }
        Ok(Self { args: args.clone() })
    }

    pub fn matches(&self, f: &Flow) -> bool {
        let a = &self.args;
        let ns_ok = a.namespace.as_deref().is_none_or(|ns| {
            f.source.namespace.as_deref() == Some(ns)
                || f.destination.namespace.as_deref() == Some(ns)
        });
        let pod_ok = |want: &Option<String>, side: &FlowEndpoint| {
            want.as_deref()
                .is_none_or(|w| pod_matches(w, a.namespace.as_deref(), side))
        };
        let label_ok = |want: &Option<String>, side: &FlowEndpoint| {
            want.as_deref()
                .is_none_or(|w| side.labels.iter().any(|l| l == w))
        };
        let verdict_ok = a
            .verdict
            .as_deref()
            .is_none_or(|v| verdict_name(f.verdict).eq_ignore_ascii_case(v));
        let protocol_ok =
            a.protocol
                .as_deref()
                .is_none_or(|p| match p.to_ascii_lowercase().as_str() {
                    "http" => f.l7.is_some(),
                    other => f.l7.is_none() && f.l4.protocol.eq_ignore_ascii_case(other),
                });
        let status_ok = a.http_status.as_deref().is_none_or(|s| {
            let matcher = status_matcher(s);
            f.l7.as_ref()
                .is_some_and(|l7| matcher.is_some_and(|m| m(l7.status)))
        });
        let port_ok = a.port.is_none_or(|p| f.l4.port == p);
        ns_ok
            && pod_ok(&a.from_pod, &f.source)
            && pod_ok(&a.to_pod, &f.destination)
            && label_ok(&a.from_label, &f.source)
            && label_ok(&a.to_label, &f.destination)
            && verdict_ok
            && protocol_ok
            && status_ok
            && port_ok
    }
}

fn pod_matches(want: &str, namespace: Option<&str>, side: &FlowEndpoint) -> bool {
    let (ns, pod) = match want.split_once('/') {
        Some((ns, pod)) => (Some(ns), pod),
        None => (namespace, want),
    };
    side.pod.as_deref() == Some(pod) && ns.is_none_or(|ns| side.namespace.as_deref() == Some(ns))
}

/// `403` matches exactly; `4xx` a class.
fn status_matcher(s: &str) -> Option<impl Fn(u16) -> bool> {
    let exact = s.parse::<u16>().ok();
    let class = s
        .strip_suffix("xx")
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (1..=5).contains(c));
    if exact.is_none() && class.is_none() {
        return None;
    }
    Some(move |status: u16| exact == Some(status) || class == Some(status / 100))
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "FORWARDED",
        Verdict::Dropped => "DROPPED",
        Verdict::Audit => "AUDIT",
        Verdict::Error => "ERROR",
    }
}

/// `Mar 14 10:23:01.123` from the record's RFC 3339 time.
fn timestamp(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts = rfc3339
        .get(5..7)
        .zip(rfc3339.get(8..10))
        .zip(rfc3339.get(11..23));
    let Some(((month, day), time)) = parts else {
        return rfc3339.to_string();
    };
    let month = month
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("???");
    format!("{month} {day} {time}")
}

fn name(side: &FlowEndpoint) -> String {
    match (&side.namespace, &side.pod, side.ip) {
        (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
        (_, _, Some(ip)) => ip.to_string(),
        _ => "?".into(),
    }
}

/// One table row.
pub fn row(f: &Flow) -> String {
    let (kind, summary) = match &f.l7 {
        Some(l7) => {
            let outcome = match (f.verdict, &f.drop_reason) {
                (Verdict::Dropped, Some(why)) => why.clone(),
                _ => l7.status.to_string(),
            };
            (
                "L7/HTTP".to_string(),
                format!("{} {} => {outcome}", l7.method, l7.path),
            )
        }
        None => {
            let mut s = format!("{} {}", f.l4.protocol, f.l4.port);
            if let Some(why) = &f.drop_reason {
                s.push_str(&format!(" => {why}"));
            }
            (format!("L4/{}", f.l4.protocol), s)
        }
    };
    let mut line = format!(
        "{:<21} {:<23} {:<23} {:<9} {:<9} {summary}",
        timestamp(&f.time),
        name(&f.source),
        name(&f.destination),
        kind,
        verdict_name(f.verdict),
    );
    if let Some(policy) = &f.policy {
        line.push_str(&format!(" ({policy})"));
    }
    line
}

pub const HEADER: &str =
    "TIMESTAMP             SOURCE                  DESTINATION             TYPE      VERDICT   SUMMARY";

pub fn run(args: &ObserveArgs, run_dir: &Path) -> ExitCode {
    let filter = match Filter::new(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wiremesh observe: {e}");
            return ExitCode::from(2);
        }
    };
    let json = args.output.as_deref() == Some("json");
    let print = |flows: &[Flow]| {
        for f in flows.iter().filter(|f| filter.matches(f)) {
            if json {
                match serde_json::to_string(f) {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!("wiremesh observe: {e}"),
                }
            } else {
                println!("{}", row(f));
            }
        }
    };
    let recent = match ask(run_dir, |c| async move { c.flows(0, Duration::ZERO).await }) {
        Ok(flows) => flows,
        Err(e) => {
            eprintln!("wiremesh observe: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !json {
        println!("{HEADER}");
    }
    let mut matching: Vec<Flow> = recent
        .iter()
        .filter(|f| filter.matches(f))
        .cloned()
        .collect();
    // The proxy's records are brought into the agent's log when someone asks, after kernel
    // events that may be younger: list them by time (RFC 3339 UTC sorts as text).
    matching.sort_by(|a, b| a.time.cmp(&b.time));
    print(&matching[matching.len().saturating_sub(args.last)..]);
    if !args.follow {
        return ExitCode::SUCCESS;
    }
    let mut after = recent.iter().map(|f| f.seq).max().unwrap_or(0);
    loop {
        match ask(
            run_dir,
            |c| async move { c.flows(after, FOLLOW_WAIT).await },
        ) {
            Ok(flows) => {
                after = flows.last().map_or(after, |f| f.seq);
                print(&flows);
            }
            Err(e) => {
                eprintln!("wiremesh observe: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremesh_l7::flows::{L4, L7};

    fn side(ns: &str, pod: &str, app: &str) -> FlowEndpoint {
        FlowEndpoint {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            identity: 300,
            labels: vec![format!("app={app}")],
            ip: Some("10.244.1.2".parse().expect("ip")),
            port: 8080,
        }
    }

    fn http(verdict: Verdict, status: u16) -> Flow {
        let mut f = Flow::now(
            side("production", "frontend", "frontend"),
            side("production", "backend-api", "backend"),
            verdict,
        );
        f.time = "2026-03-14T10:23:01.123Z".into();
        f.l7 = Some(L7 {
            method: "GET".into(),
            path: "/api/v1/products".into(),
            status,
            latency_ms: 1.0,
        });
        f
    }

    fn l4_drop() -> Flow {
        let mut f = Flow::now(
            side("production", "attacker", "attacker"),
            side("production", "redis", "redis"),
            Verdict::Dropped,
        );
        f.l4 = L4 {
            protocol: "TCP".into(),
            port: 6379,
        };
        f.drop_reason = Some("Policy denied".into());
        f
    }

    fn filter(f: impl FnOnce(&mut ObserveArgs)) -> Filter {
        let mut args = ObserveArgs::default();
        f(&mut args);
        Filter::new(&args).expect("valid filter")
    }

    #[test]
    fn rows_read_as_hubble_prints_them() {
        let r = row(&http(Verdict::Forwarded, 200));
        assert!(r.starts_with("Mar 14 10:23:01.123   production/frontend     production/backend-api  L7/HTTP   FORWARDED GET /api/v1/products => 200"), "{r}");
        let r = row(&l4_drop());
        assert!(
            r.contains("L4/TCP    DROPPED   TCP 6379 => Policy denied"),
            "{r}"
        );
    }

    #[test]
    fn each_filter_selects_what_it_names_and_nothing_else() {
        let (ok, denied, drop) = (
            http(Verdict::Forwarded, 200),
            http(Verdict::Dropped, 403),
            l4_drop(),
        );
        let all = [&ok, &denied, &drop];
        let count = |f: &Filter| all.iter().filter(|x| f.matches(x)).count();
        assert_eq!(count(&filter(|_| {})), 3, "no filter: everything");
        assert_eq!(count(&filter(|a| a.verdict = Some("dropped".into()))), 2);
        assert_eq!(count(&filter(|a| a.protocol = Some("http".into()))), 2);
        assert_eq!(count(&filter(|a| a.protocol = Some("tcp".into()))), 1);
        assert_eq!(count(&filter(|a| a.http_status = Some("4xx".into()))), 1);
        assert_eq!(count(&filter(|a| a.http_status = Some("200".into()))), 1);
        assert_eq!(count(&filter(|a| a.port = Some(6379))), 1);
        assert_eq!(
            count(&filter(|a| a.from_pod = Some("production/attacker".into()))),
            1
        );
        assert_eq!(
            count(&filter(|a| {
                a.namespace = Some("production".into());
                a.to_pod = Some("backend-api".into());
            })),
            2
        );
        assert_eq!(count(&filter(|a| a.to_label = Some("app=redis".into()))), 1);
        assert_eq!(count(&filter(|a| a.namespace = Some("other".into()))), 0);
    }

    #[test]
    fn bad_filters_are_refused_naming_the_flag() {
        for (set, flag) in [
            (
                ObserveArgs {
                    verdict: Some("maybe".into()),
                    ..Default::default()
                },
                "--verdict",
            ),
            (
                ObserveArgs {
                    protocol: Some("quic".into()),
                    ..Default::default()
                },
                "--protocol",
            ),
            (
                ObserveArgs {
                    http_status: Some("9xx".into()),
                    ..Default::default()
                },
                "--http-status",
            ),
            (
                ObserveArgs {
                    from_label: Some("app".into()),
                    ..Default::default()
                },
                "key=value",
            ),
            (
                ObserveArgs {
                    output: Some("yaml".into()),
                    ..Default::default()
                },
                "-o",
            ),
        ] {
            assert!(Filter::new(&set).unwrap_err().contains(flag), "{flag}");
        }
    }
}
