//! `wiremesh-lab bench-l7` in its smallest run, so the benchmark cannot rot: every mode is
//! brought into force and measured, the table has every row, requests were answered and none
//! failed (the benchmark itself fails on any error). It asserts no speed: a run ends after
//! [`REQUESTS`] requests or its time, whichever comes first.

mod common;

use std::process::Command;
use std::time::Duration;

/// Requests per mode: the runs usually end on this cap, well before their time limit.
const REQUESTS: u64 = 100;
const ROWS: [&str; 5] = [
    "(a) no policy",
    "(d) nginx, no policy",
    "(b) L4 policy",
    "(c) L7, 10 HTTP rules",
    "(c) L7, 1000 HTTP rules",
];

#[test]
fn bench_l7_measures_every_mode_without_errors() {
    common::require_agent();
    if let Err(e) = wiremesh_lab::require_tools(&["nginx", "curl"]) {
        panic!("bench-l7 compares with nginx: {e}");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wiremesh-lab"));
    cmd.args(["bench-l7", "--seconds", "20", "--connections", "2"])
        .args(["--warmup-ms", "200", "--repeats", "1", "--rules", "10,1000"])
        .args(["--requests", &REQUESTS.to_string()]);
    let out = wiremesh_lab::output(&mut cmd, None, Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("running bench-l7: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-l7 failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("==> Results"))
        .filter(|l| l.starts_with("| ("))
        .collect();
    assert_eq!(table.len(), ROWS.len(), "one row per mode:\n{stdout}");
    for (line, mode) in table.iter().zip(ROWS) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | mode | path | req/s | .. | answered | errors |
        let n = cells.len();
        assert_eq!(cells[1], mode, "rows in order:\n{stdout}");
        let answered: u64 = cells[n - 3]
            .parse()
            .unwrap_or_else(|e| panic!("{mode}: answered {:?}: {e}", cells[n - 3]));
        assert!(
            (1..=REQUESTS).contains(&answered) && cells[n - 2] == "0",
            "{mode}: requests answered 200 (at most the cap), no error:\n{stdout}"
        );
        let rps: f64 = cells[3]
            .parse()
            .unwrap_or_else(|e| panic!("{mode}: req/s {:?}: {e}", cells[3]));
        assert!(rps > 0.0, "{mode}: no rate measured:\n{stdout}");
    }
}
