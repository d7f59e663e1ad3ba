//! Reading what an agent and its data path report about themselves: a `/metrics` scrape (admin
//! socket or `metricsAddress`) parsed into families, the list of metrics docs/config.md
//! documents, a process's CPU time, and a node's kernel UDP counters.
//!
//! Parsing is pure and unit-tested; the scrapes only run `curl` in the lab's namespaces.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::exec::run;
use crate::handles::{AgentHandle, NodeHandle};

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// One metric family of a Prometheus text exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricFamily {
    /// `counter`, `gauge`, ... as `# TYPE` says.
    pub kind: String,
    /// Every sample: its full name (`x_total`), its label text (`a="b",c="d"`) and its value.
    pub samples: Vec<(String, String, f64)>,
}

/// Families by name (the `# TYPE` name: a counter's without `_total`).
pub type Exposition = BTreeMap<String, MetricFamily>;

/// Parses a text exposition; a sample line outside any declared family is an error.
pub fn parse_exposition(text: &str) -> Result<Exposition> {
    let mut families = Exposition::new();
    let bad = |line: &str| LabError::Parse {
        what: "a Prometheus exposition line".into(),
        input: line.into(),
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| bad(line))?;
            families.entry(name.into()).or_default().kind = kind.trim().into();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad(line))?;
        let value: f64 = value.parse().map_err(|_| bad(line))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = families
            .iter_mut()
            .filter(|(f, _)| {
                name == f.as_str()
                    || name.strip_prefix(f.as_str()).is_some_and(|s| {
                        ["_total", "_created", "_bucket", "_sum", "_count"].contains(&s)
                    })
            })
            .map(|(_, fam)| fam)
            .next()
            .ok_or_else(|| bad(line))?;
        family.samples.push((name.into(), labels.into(), value));
    }
    Ok(families)
}

/// A metric as docs/config.md documents it: `wiremesh_x_total{a,b}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedMetric {
    /// As written, without labels (`wiremesh_policy_packets_total`).
    pub name: String,
    pub labels: Vec<String>,
}

impl DocumentedMetric {
    /// The family name and type the name promises: Prometheus' convention, which the docs
    /// follow, is that a counter's samples end in `_total`, a latency histogram's name in
    /// `_duration_seconds`, and anything else here is a gauge.
    pub fn family(&self) -> (&str, &'static str) {
        match self.name.strip_suffix("_total") {
            Some(base) => (base, "counter"),
            None if self.name.ends_with("_duration_seconds") => (&self.name, "histogram"),
            None => (&self.name, "gauge"),
        }
    }
}

/// Every `wiremesh_` metric named in the `metricsAddress` row of docs/config.md.
pub fn documented_metrics(config_md: &str) -> Result<Vec<DocumentedMetric>> {
    let row = config_md
        .lines()
        .find(|l| l.starts_with("| `metricsAddress`"))
        .ok_or_else(|| LabError::Parse {
            what: "the `metricsAddress` row of docs/config.md".into(),
            input: String::new(),
        })?;
    let mut out: Vec<DocumentedMetric> = Vec::new();
    for code in row.split('`').skip(1).step_by(2) {
        let Some(code) = code.strip_prefix("wiremesh_").map(|_| code) else {
            continue;
        };
        let (name, labels) = match code.split_once('{') {
            Some((n, l)) => (
                n,
                l.trim_end_matches('}')
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
            None => (code, Vec::new()),
        };
        if !out.iter().any(|m| m.name == name) {
            out.push(DocumentedMetric {
                name: name.into(),
                labels,
            });
        }
    }
    Ok(out)
}

/// A process's CPU time so far (user + system), from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| LabError::io(&path, e))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(LabError::Parse {
            what: format!("utime and stime from {path}"),
            input: text,
        });
    };
    Ok(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// The unit of `/proc/<pid>/stat` times: the kernel's USER_HZ, 100 on x86-64 and arm64.
const USER_HZ: u64 = 100;

/// The `Udp:` counters of `/proc/net/snmp` text, by name.
pub fn parse_udp_snmp(text: &str) -> BTreeMap<String, u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

impl AgentHandle<'_> {
    /// `/metrics` from the node's admin socket.
    pub fn metrics(&self) -> Result<String> {
        self.admin_get("/metrics")
    }

    /// `/healthz?verbose` from the node's admin socket: one line per supervised task.
    pub fn healthz_verbose(&self) -> Result<String> {
        self.admin_get("/healthz?verbose")
    }

    /// The L7 proxy's counters (`GET /v1/stats` on its control socket): `forwarded`,
    /// `dropped`, `audit` and `error` count what it judged since it started.
    pub fn proxy_stats(&self) -> Result<serde_json::Value> {
        let text = self.socket_get("proxy.sock", "/v1/stats")?;
        serde_json::from_str(&text).map_err(|_| LabError::Parse {
            what: "the proxy's /v1/stats".into(),
            input: text,
        })
    }

    /// `GET path` on the node's admin socket; an error for anything but 2xx.
    fn admin_get(&self, path: &str) -> Result<String> {
        self.socket_get("wiremesh.sock", path)
    }

    /// `GET path` on the socket `name` in the node's run directory.
    fn socket_get(&self, name: &str, path: &str) -> Result<String> {
        let node = self.node;
        let socket = self.lab.node_dir(node).join("run").join(name);
        run(
            Command::new("curl")
                .args(["-sSf", "--max-time", "8", "--unix-socket"])
                .arg(&socket)
                .arg(format!("http://localhost{path}")),
            SCRAPE_TIMEOUT,
        )
    }
}

impl NodeHandle<'_> {
    /// `/metrics` from `http://<addr>/metrics` inside the node's network namespace.
    pub fn metrics_tcp(&self, addr: &str) -> Result<String> {
        let node = self.node;
        run(
            Command::new("ip")
                .args(["netns", "exec", &self.lab.node_ns(node)])
                .args(["curl", "-sSf", "--max-time", "8"])
                .arg(format!("http://{addr}/metrics")),
            SCRAPE_TIMEOUT,
        )
    }

    /// `GET http://<healthAddress><path>` inside the node's network namespace, as kubelet
    /// probes a `hostNetwork` pod: the status code and the body.
    pub fn probe(&self, path: &str) -> Result<(u16, String)> {
        let node = self.node;
        let out = run(
            Command::new("ip")
                .args(["netns", "exec", &self.lab.node_ns(node)])
                .args(["curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}"])
                .arg(format!("http://{}{path}", crate::HEALTH_ADDRESS)),
            SCRAPE_TIMEOUT,
        )?;
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        let code = code.parse().map_err(|_| LabError::Node {
            node,
            what: format!("curl {path}: no status code in {out:?}"),
        })?;
        Ok((code, body.to_string()))
    }

    /// The kernel's UDP counters in the node's namespace (`InDatagrams`, `RcvbufErrors`, ...).
    pub fn udp_counters(&self) -> Result<BTreeMap<String, u64>> {
        let node = self.node;
        let text = run(
            Command::new("ip")
                .args(["netns", "exec", &self.lab.node_ns(node)])
                .args(["cat", "/proc/net/snmp"]),
            SCRAPE_TIMEOUT,
        )?;
        Ok(parse_udp_snmp(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_families_and_samples() {
        let text = "# HELP wiremesh_peers Peers.\n# TYPE wiremesh_peers gauge\nwiremesh_peers 2\n\
                    # TYPE wiremesh_handshakes counter\n\
                    wiremesh_handshakes_total{outcome=\"processed\"} 5\n\
                    wiremesh_handshakes_total{outcome=\"rate_limited\"} 7\n# EOF\n";
        let e = parse_exposition(text).unwrap();
        assert_eq!(e["wiremesh_peers"].kind, "gauge");
        assert_eq!(
            e["wiremesh_peers"].samples,
            vec![("wiremesh_peers".into(), String::new(), 2.0)]
        );
        let h = &e["wiremesh_handshakes"];
        assert_eq!(h.kind, "counter");
        assert_eq!(
            h.samples[1],
            (
                "wiremesh_handshakes_total".into(),
                "outcome=\"rate_limited\"".into(),
                7.0
            )
        );
        assert!(parse_exposition("stray_sample 1\n").is_err());
    }

    #[test]
    fn documented_metrics_come_from_the_metrics_address_row() {
        let md = "| `keyRotation.interval` | `24h` | `wiremesh_not_this` |\n\
                  | `metricsAddress` | — | Metrics: `wiremesh_peers`, `wiremesh_x_total{a,b}`, `0.0.0.0:9871`. |\n";
        let d = documented_metrics(md).unwrap();
        assert_eq!(
            d,
            vec![
                DocumentedMetric {
                    name: "wiremesh_peers".into(),
                    labels: vec![]
                },
                DocumentedMetric {
                    name: "wiremesh_x_total".into(),
                    labels: vec!["a".into(), "b".into()]
                },
            ]
        );
        assert_eq!(d[1].family(), ("wiremesh_x", "counter"));
        assert_eq!(d[0].family(), ("wiremesh_peers", "gauge"));
    }

    #[test]
    fn udp_snmp_counters() {
        let text =
            "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 10 0 3 20 2\nUdpLite: InDatagrams\nUdpLite: 0\n";
        let c = parse_udp_snmp(text);
        assert_eq!(c["InDatagrams"], 10);
        assert_eq!(c["RcvbufErrors"], 2);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let t = process_cpu(std::process::id()).unwrap();
        assert!(t < Duration::from_secs(100_000));
    }
}
