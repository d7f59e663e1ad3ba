//! The bench's results as tables: one per workload plus the data paths' cost, each value with
//! its ratio to wireguard-go and to the plain underlay measured in the same invocation; printed
//! once aligned for a terminal and once as markdown for docs/BENCHMARKS.md.

use super::workload::{Metric, RR_BYTES, UDP_PAYLOAD, UDP_RATE};

/// The baselines every ratio is taken against, by mode key.
const BASELINES: [(&str, &str); 2] = [("wireguard-go", "× wg-go"), ("plain", "× plain")];

/// What one mode yielded.
#[derive(Debug)]
pub struct ModeResult {
    pub key: &'static str,
    /// Medians over the runs (peak RSS: the maximum).
    pub values: Vec<(Metric, f64)>,
    /// What could not be measured, and why.
    pub failures: Vec<String>,
    /// Whether the mode has data-path processes to measure (the plain underlay has none).
    pub data_path: bool,
}

impl ModeResult {
    fn get(&self, metric: Metric) -> Option<f64> {
        self.values.iter().find(|v| v.0 == metric).map(|v| v.1)
    }
}

/// One table: a title and its metrics (columns).
struct Table {
    title: String,
    metrics: &'static [Metric],
}

fn tables() -> [Table; 5] {
    [
        Table {
            title: format!(
                "Request/response latency: sockperf ping-pong, UDP, {RR_BYTES}-byte messages, round trip"
            ),
            metrics: &[Metric::RttP50, Metric::RttP99],
        },
        Table {
            title: "TCP, 1 stream: iperf3".into(),
            metrics: &[Metric::Tcp1Gbps, Metric::Tcp1Retransmits],
        },
        Table {
            title: "TCP, 4 streams: iperf3 -P 4".into(),
            metrics: &[Metric::Tcp4Gbps, Metric::Tcp4Retransmits],
        },
        Table {
            title: format!(
                "UDP at a fixed offered rate: iperf3 -u -b {UDP_RATE} -l {UDP_PAYLOAD}"
            ),
            metrics: &[Metric::UdpSentGbps, Metric::UdpGbps, Metric::UdpLossPercent],
        },
        Table {
            title: "Data-path cost: CPU seconds of both nodes' data paths per GB received \
                    (1-stream TCP run); peak RSS (VmHWM) of the larger node's data path \
                    over the whole mode"
                .into(),
            metrics: &[Metric::CpuPerGb, Metric::PeakRssMib],
        },
    ]
}

/// Every table twice (aligned, then markdown), then what was not measured.
pub fn print(results: &[ModeResult], command: &str, runs: usize) {
    let tables = tables();
    for table in &tables {
        println!("\n{} (median of {runs})", table.title);
        print_aligned(&cells(table, results));
    }
    println!("\n---- markdown (for docs/BENCHMARKS.md) ----\n");
    println!("`{command}`; medians of {runs} runs; ratios to wireguard-go and to plain (unencrypted underlay) from the same invocation.\n");
    for table in &tables {
        println!("**{}**\n", table.title);
        print_markdown(&cells(table, results));
        println!();
    }
    for r in results {
        for f in &r.failures {
            println!("{}: NOT MEASURED: {f}", r.key);
        }
    }
}

/// The header row, then one row per mode.
fn cells(table: &Table, results: &[ModeResult]) -> Vec<Vec<String>> {
    let mut header = vec!["mode".to_owned()];
    for m in table.metrics {
        header.push(m.column().to_owned());
        if m.has_ratios() {
            header.extend(BASELINES.iter().map(|b| b.1.to_owned()));
        }
    }
    let baseline =
        |key: &str, m: Metric| results.iter().find(|r| r.key == key).and_then(|r| r.get(m));
    let mut rows = vec![header];
    for r in results {
        let mut row = vec![r.key.to_owned()];
        for &m in table.metrics {
            let value = r.get(m);
            row.push(match value {
                Some(v) => format!("{v:.*}", m.decimals()),
                None if m.is_data_path_cost() && !r.data_path => "kernel".into(),
                None => "not measured".into(),
            });
            if m.has_ratios() {
                row.extend(BASELINES.iter().map(|b| ratio(value, baseline(b.0, m))));
            }
        }
        rows.push(row);
    }
    rows
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "—".into(),
    }
}

fn print_aligned(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| match c {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        println!("  {}", line.join("  "));
    }
}

fn print_markdown(rows: &[Vec<String>]) {
    let Some((header, body)) = rows.split_first() else {
        return;
    };
    println!("| {} |", header.join(" | "));
    let align: Vec<&str> = (0..header.len())
        .map(|c| if c == 0 { "---" } else { "---:" })
        .collect();
    println!("|{}|", align.join("|"));
    for row in body {
        println!("| {} |", row.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_against_the_same_invocations_baselines() {
        let mode = |key, gbps: Option<f64>, failures: Vec<String>| ModeResult {
            key,
            data_path: key != "plain",
            values: gbps
                .map(|g| vec![(Metric::Tcp1Gbps, g)])
                .unwrap_or_default(),
            failures,
        };
        let results = [
            mode("plain", Some(10.0), vec![]),
            mode("wireguard-go", Some(0.5), vec![]),
            mode("wiremesh", Some(0.75), vec![]),
            mode("gotatun", None, vec!["not available".into()]),
        ];
        let table = Table {
            title: String::new(),
            metrics: &[Metric::Tcp1Gbps, Metric::Tcp1Retransmits],
        };
        let rows = cells(&table, &results);
        assert_eq!(
            rows[0],
            ["mode", "Gbit/s", "× wg-go", "× plain", "retransmits"]
        );
        assert_eq!(
            rows[3],
            ["wiremesh", "0.750", "1.50", "0.07", "not measured"]
        );
        assert_eq!(
            rows[4],
            ["gotatun", "not measured", "—", "—", "not measured"]
        );
        let cost = Table {
            title: String::new(),
            metrics: &[Metric::CpuPerGb],
        };
        assert_eq!(cells(&cost, &results)[1], ["plain", "kernel", "—", "—"]);
    }
}
