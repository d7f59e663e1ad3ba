//! What the load generators report, read from their output: iperf3's `--json` end summary (TCP
//! and UDP) and sockperf ping-pong's percentile lines. Pure: text in, numbers out.

use anyhow::{bail, Context};
use serde_json::Value;

/// The receiver's side of one iperf3 run, summed over its streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfEnd {
    /// Received goodput, as iperf3 computed it over the receiver's time.
    pub gbps: f64,
    /// What the sender put on the wire (for UDP: the offered rate it really reached).
    pub sent_gbps: f64,
    pub bytes_received: u64,
    /// TCP only (0 for UDP).
    pub retransmits: u64,
    /// UDP only (0 for TCP): datagrams sent but not received, in percent.
    pub lost_percent: f64,
}

/// Parses iperf3's `--json` report; iperf3's own `error` becomes the error.
pub fn iperf_end(json: &str) -> anyhow::Result<IperfEnd> {
    let doc: Value = serde_json::from_str(json).with_context(|| {
        format!(
            "iperf3 wrote no JSON report: {}",
            json.chars().take(500).collect::<String>()
        )
    })?;
    if let Some(e) = doc.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let end = doc.get("end").context("iperf3's report has no `end`")?;
    let num = |section: &str, key: &str| {
        end.get(section)
            .and_then(|s| s.get(key))
            .and_then(Value::as_f64)
    };
    let bps = num("sum_received", "bits_per_second")
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(IperfEnd {
        gbps: bps / 1e9,
        sent_gbps: num("sum_sent", "bits_per_second").unwrap_or(0.0) / 1e9,
        bytes_received: num("sum_received", "bytes").unwrap_or(0.0) as u64,
        retransmits: num("sum_sent", "retransmits").unwrap_or(0.0) as u64,
        lost_percent: num("sum_received", "lost_percent").unwrap_or(0.0),
    })
}

/// Round-trip percentiles of one sockperf ping-pong run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Reads `sockperf: ---> percentile 50.000 =   13.479` and the 99.000 line.
pub fn sockperf_rtt(text: &str) -> anyhow::Result<Rtt> {
    let percentile = |p: &str| {
        let key = format!("---> percentile {p} =");
        text.lines()
            .find_map(|l| l.split_once(key.as_str()))
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
    };
    let (Some(p50_us), Some(p99_us)) = (percentile("50.000"), percentile("99.000")) else {
        bail!(
            "sockperf printed no 50th/99th percentile: {}",
            wiremesh_lab::tail(text, 8)
        );
    };
    Ok(Rtt { p50_us, p99_us })
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_udp_report() {
        let json = r#"{"end":{
            "sum_sent":{"bytes":343723776,"bits_per_second":1374886854.6,"lost_percent":0},
            "sum_received":{"bytes":161907696,"bits_per_second":646515867.3,
                            "lost_packets":130494,"packets":246807,"lost_percent":52.84}}}"#;
        let end = iperf_end(json).expect("parses");
        assert!((end.gbps - 0.6465).abs() < 1e-3);
        assert!((end.sent_gbps - 1.3749).abs() < 1e-3);
        assert_eq!((end.bytes_received, end.retransmits), (161_907_696, 0));
        assert!((end.lost_percent - 52.84).abs() < 1e-9);
    }

    #[test]
    fn reads_a_tcp_report_and_iperfs_own_error() {
        let json = r#"{"end":{"sum_sent":{"bytes":2000,"retransmits":7},
            "sum_received":{"bytes":1000,"bits_per_second":2e9}}}"#;
        let end = iperf_end(json).expect("parses");
        assert_eq!((end.gbps, end.retransmits, end.lost_percent), (2.0, 7, 0.0));
        let err = iperf_end(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(iperf_end("iperf3: error").is_err());
        assert!(iperf_end(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn reads_sockperf_percentiles() {
        let text = "sockperf: Summary: Round trip is 15.440 usec\n\
            sockperf: ---> <MAX> observation = 12026.401\n\
            sockperf: ---> percentile 99.900 =   73.778\n\
            sockperf: ---> percentile 99.000 =   34.991\n\
            sockperf: ---> percentile 50.000 =   13.479\n\
            sockperf: ---> <MIN> observation =   11.196\n";
        let rtt = sockperf_rtt(text).expect("parses");
        assert_eq!((rtt.p50_us, rtt.p99_us), (13.479, 34.991));
        assert!(sockperf_rtt("sockperf: ERROR: no reply").is_err());
    }

    #[test]
    fn takes_the_median() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
