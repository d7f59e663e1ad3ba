//! Pod-to-pod traffic between nodes never appears in the clear on the underlay: a marker sent
//! over TCP and inside ping payloads is absent from a capture of the bridge, and nothing but
//! WireGuard UDP (port 51871) flows between node addresses. The same exchange with the tunnel
//! bypassed must show the marker, or the detector proves nothing.

mod common;

use std::time::Duration;

use wiremesh_lab::{marker, Host, Lab, LeakReport, Ping};

/// Sends the marker both ways over TCP and in ping payloads while capturing the underlay.
fn exchange_marker(lab: &Lab, mark: &[u8; 16], name: &str) -> LeakReport {
    let (a, b) = (Host::Pod(1, 1), Host::Pod(2, 1));
    let capture = lab
        .switch()
        .capture(name)
        .expect("tcpdump starts on the underlay");
    for (from, to) in [(a, b), (b, a)] {
        let got = lab
            .host(from)
            .tcp_send(to, mark, common::TRAFFIC)
            .unwrap_or_else(|e| panic!("TCP {from} -> {to}: {e}"));
        assert_eq!(got, mark, "TCP {from} -> {to} did not deliver the marker");
        let ping = Ping::new(to.ip())
            .count(3)
            .interval(Duration::from_millis(100))
            .pattern(mark);
        let result = lab
            .host(from)
            .ping(&ping)
            .unwrap_or_else(|e| panic!("ping {from} -> {to}: {e}"));
        assert!(
            result.all_received(),
            "ping with marker payload {from} -> {to}: {result}"
        );
    }
    if lab.options().uses_etcd() {
        // Long enough for every agent's lease keep-alive to cross the bridge during the capture.
        std::thread::sleep(common::LEASE_TTL / 2 + Duration::from_millis(500));
    }
    let file = capture.stop().expect("tcpdump stops");
    file.analyze(mark).expect("capture decodes")
}

/// Strict mode off: these tests are about the tunnel itself, and their control routes pod
/// traffic around it, which strict mode would drop (e2e_strict tests that).
fn no_strict() -> wiremesh_lab::LabOptions {
    wiremesh_lab::LabOptions::default().strict_mode(false)
}

#[test]
fn marker_never_crosses_the_underlay_in_the_clear() {
    common::require_agent();
    let lab = common::lab_with(2, 1, no_strict());
    marker_stays_encrypted(&lab);
}

/// The same with the agents on etcd: their store traffic to the switch (198.18.0.254:2379)
/// crosses the same bridge, is counted apart, and never mistaken for traffic between nodes.
#[test]
fn marker_never_crosses_the_underlay_in_the_clear_with_etcd() {
    common::require_agent();
    let lab = common::lab_with(
        2,
        1,
        wiremesh_lab::LabOptions::etcd(common::LEASE_TTL).strict_mode(false),
    );
    marker_stays_encrypted(&lab);
}

fn marker_stays_encrypted(lab: &Lab) {
    common::start_mesh(lab);
    common::assert_ping(lab, Host::Pod(1, 1), Host::Pod(2, 1));
    let mark = marker();

    let report = exchange_marker(lab, &mark, "tunnel");
    eprintln!("tunnel capture: {}", report.summary());
    if lab.options().uses_etcd() {
        assert!(
            report.store > 0,
            "no etcd traffic captured, so the store classification went untested:\n{}",
            report.summary()
        );
    }
    assert!(
        !report.marker_found,
        "marker seen in the clear on the underlay:\n{}",
        report.summary()
    );
    assert!(
        report.other.is_empty(),
        "traffic other than WireGuard UDP between nodes crossed the underlay:\n{}",
        report.summary()
    );
    assert!(
        report.wireguard > 0,
        "no WireGuard packets captured, so the capture proves nothing:\n{}",
        report.summary()
    );

    // Control: the same exchange routed around the tunnel must be caught.
    lab.node(1).bypass_tunnel(2).expect("bypass on node 1");
    lab.node(2).bypass_tunnel(1).expect("bypass on node 2");
    let control = exchange_marker(lab, &mark, "control");
    assert!(
        control.marker_found,
        "the detector missed a cleartext marker:\n{}",
        control.summary()
    );
    assert!(
        !control.other.is_empty(),
        "cleartext pod traffic not classified as a leak:\n{}",
        control.summary()
    );
}
