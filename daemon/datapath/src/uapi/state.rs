//! The UAPI `get` answer both ways: formatted by the data path, parsed by wiremesh's own agent
//! when the data path runs as a separate process. `wiremesh_get=1` adds wiremesh's rotation
//! fields (`wiremesh_*` keys), which stock `wg` never asks for and so never sees.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use wiremesh_key::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::UapiError;
use crate::model::{DeviceState, HandshakeStats, PeerState, ProcessInfo, Psk};

/// Device-level extension keys `wiremesh_handshakes_<outcome>=N`: the data path's handshake
/// counters ([`HandshakeStats`]).
const HANDSHAKES_PREFIX: &str = "wiremesh_handshakes_";
/// Device-level extension keys naming the data-path process ([`ProcessInfo`]).
const VERSION_KEY: &str = "wiremesh_version";
const PID_KEY: &str = "wiremesh_pid";
const INSTANCE_KEY: &str = "wiremesh_instance";

/// Formats a `get` answer, including the final `errno=0` and empty line. The answer holds the
/// private key: it is zeroed on drop, and built without a reallocation after the key is in.
pub fn format_get(state: &DeviceState, extended: bool) -> Zeroizing<String> {
    let rest = format_public(state, extended);
    let key = state.private_key.as_ref().map(|k| k.to_hex_for_uapi());
    let key_len = key.as_ref().map_or(0, |k| "private_key=\n".len() + k.len());
    let mut out = Zeroizing::new(String::with_capacity(key_len + rest.len()));
    if let Some(key) = key {
        out.push_str("private_key=");
        out.push_str(&key);
        out.push('\n');
    }
    out.push_str(&rest);
    out
}

/// Everything in a `get` answer but the private key.
fn format_public(state: &DeviceState, extended: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "listen_port={}", state.listen_port);
    if state.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", state.fwmark);
    }
    if let (true, Some(next)) = (extended, state.next_public_key) {
        let _ = writeln!(out, "wiremesh_next_public_key={}", next.to_hex());
    }
    if let (true, Some(p)) = (extended, &state.process) {
        let _ = writeln!(out, "{VERSION_KEY}={}", p.version);
        let _ = writeln!(out, "{PID_KEY}={}", p.pid);
        let _ = writeln!(out, "{INSTANCE_KEY}={:016x}", p.instance);
    }
    if let (true, Some(stats)) = (extended, state.handshakes) {
        for (outcome, n) in stats.outcomes() {
            let _ = writeln!(out, "{HANDSHAKES_PREFIX}{outcome}={n}");
        }
    }
    for p in &state.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(psk) = p.preshared_key {
            let _ = writeln!(
                out,
                "preshared_key={}",
                PublicKey::from_bytes(psk.0).to_hex()
            );
        }
        let _ = writeln!(out, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
        if extended {
            if let Some(k) = p.next_public_key {
                let _ = writeln!(out, "wiremesh_next_public_key={}", k.to_hex());
            }
            if let Some(k) = p.active_key {
                let _ = writeln!(out, "wiremesh_active_key={}", k.to_hex());
            }
            for k in &p.ready_for {
                let _ = writeln!(out, "wiremesh_ready_for={}", k.to_hex());
            }
        }
    }
    out.push_str("errno=0\n\n");
    out
}

const NANOS: u32 = 1_000_000_000;

/// Parses a `get` answer (without its terminating empty line).
pub fn parse_get(text: &str) -> Result<DeviceState, UapiError> {
    let mut state = DeviceState {
        private_key: None,
        next_public_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
        handshakes: None,
        process: None,
    };
    let mut errno = None;
    let mut handshake = (0u64, 0u32);
    for (line, text) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if text.is_empty() {
            break;
        }
        let Some((key, value)) = text.split_once('=') else {
            return Err(UapiError::syntax(line, text));
        };
        let bad = || UapiError::value(line, key, value);
        let hex_key = || PublicKey::from_hex(value).map_err(|_| bad());
        if key == "public_key" {
            finish_handshake(&mut state, handshake);
            handshake = (0, 0);
            state.peers.push(empty_peer(hex_key()?));
            continue;
        }
        if key == "errno" {
            errno = Some(value.parse::<i32>().map_err(|_| bad())?);
            continue;
        }
        match state.peers.last_mut() {
            None => device_line(&mut state, line, key, value)?,
            Some(p) => peer_line(p, &mut handshake, line, key, value)?,
        }
    }
    finish_handshake(&mut state, handshake);
    match errno {
        Some(0) => Ok(state),
        Some(n) => Err(UapiError::Errno(n)),
        None => Err(UapiError::Operation),
    }
}

/// A device-level line of a `get` answer (before the first `public_key`).
fn device_line(
    state: &mut DeviceState,
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), UapiError> {
    let bad = || UapiError::value(line, key, value);
    match key {
        "private_key" => state.private_key = Some(PrivateKey::from_hex(value).map_err(|_| bad())?),
        "listen_port" => state.listen_port = value.parse().map_err(|_| bad())?,
        "fwmark" => state.fwmark = value.parse().map_err(|_| bad())?,
        "wiremesh_next_public_key" => {
            state.next_public_key = Some(PublicKey::from_hex(value).map_err(|_| bad())?)
        }
        VERSION_KEY => process(state).version = value.to_string(),
        PID_KEY => process(state).pid = value.parse().map_err(|_| bad())?,
        INSTANCE_KEY => {
            process(state).instance = u64::from_str_radix(value, 16).map_err(|_| bad())?;
        }
        k if k.starts_with(HANDSHAKES_PREFIX) => {
            let n = value.parse().map_err(|_| bad())?;
            let stats = state.handshakes.get_or_insert_with(HandshakeStats::default);
            if !stats.set(&k[HANDSHAKES_PREFIX.len()..], n) {
                return Err(UapiError::UnknownKey {
                    line,
                    key: key.into(),
                });
            }
        }
        _ => return Err(UapiError::unknown_key(line, key)),
    }
    Ok(())
}

/// A line of a peer's section; `handshake` collects its last handshake time (seconds, nanos).
fn peer_line(
    p: &mut PeerState,
    handshake: &mut (u64, u32),
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), UapiError> {
    let bad = || UapiError::value(line, key, value);
    let hex_key = || PublicKey::from_hex(value).map_err(|_| bad());
    match key {
        "preshared_key" => {
            let k = hex_key()?;
            p.preshared_key = (!k.is_zero()).then_some(Psk(*k.as_bytes()));
        }
        "protocol_version" => {}
        "endpoint" => p.endpoint = Some(value.parse().map_err(|_| bad())?),
        "last_handshake_time_sec" => {
            handshake.0 = value.parse().map_err(|_| bad())?;
            // A time `SystemTime` cannot hold would panic in `finish_handshake`.
            UNIX_EPOCH
                .checked_add(Duration::new(handshake.0, NANOS - 1))
                .ok_or_else(bad)?;
        }
        "last_handshake_time_nsec" => {
            handshake.1 = value.parse().map_err(|_| bad())?;
            if handshake.1 >= NANOS {
                return Err(bad());
            }
        }
        "tx_bytes" => p.tx_bytes = value.parse().map_err(|_| bad())?,
        "rx_bytes" => p.rx_bytes = value.parse().map_err(|_| bad())?,
        "persistent_keepalive_interval" => {
            p.persistent_keepalive = value.parse().map_err(|_| bad())?
        }
        "allowed_ip" => p.allowed_ips.push(value.parse().map_err(|_| bad())?),
        "wiremesh_next_public_key" => p.next_public_key = Some(hex_key()?),
        "wiremesh_active_key" => p.active_key = Some(hex_key()?),
        "wiremesh_ready_for" => p.ready_for.push(hex_key()?),
        _ => return Err(UapiError::unknown_key(line, key)),
    }
    Ok(())
}

fn process(state: &mut DeviceState) -> &mut ProcessInfo {
    state.process.get_or_insert_with(|| ProcessInfo {
        version: String::new(),
        pid: 0,
        instance: 0,
    })
}

fn empty_peer(public_key: PublicKey) -> PeerState {
    PeerState {
        public_key,
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: 0,
        allowed_ips: Vec::new(),
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        next_public_key: None,
        active_key: None,
        ready_for: Vec::new(),
    }
}

fn finish_handshake(state: &mut DeviceState, (sec, nsec): (u64, u32)) {
    if let (Some(p), true) = (state.peers.last_mut(), sec != 0 || nsec != 0) {
        p.last_handshake = Some(UNIX_EPOCH + Duration::new(sec, nsec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn sample() -> DeviceState {
        DeviceState {
            private_key: Some(PrivateKey::generate()),
            next_public_key: Some(PrivateKey::generate().public_key()),
            listen_port: 51871,
            fwmark: 0,
            peers: vec![PeerState {
                public_key: PrivateKey::generate().public_key(),
                preshared_key: None,
                endpoint: Some("198.18.0.2:51871".parse().unwrap()),
                persistent_keepalive: 0,
                allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                next_public_key: Some(PrivateKey::generate().public_key()),
                active_key: None,
                ready_for: vec![PrivateKey::generate().public_key()],
            }],
            handshakes: Some(HandshakeStats {
                processed: 1,
                invalid_mac: 2,
                cookie_sent: 3,
                cookie_suppressed: 4,
                rate_limited: 5,
            }),
            process: Some(ProcessInfo {
                version: "1.2.3-v2".into(),
                pid: 4242,
                instance: 0x00c0_ffee_1234_5678,
            }),
        }
    }

    #[test]
    fn stock_get_has_what_wg_show_reads_and_no_extensions() {
        let state = sample();
        let text = format_get(&state, false);
        let p = &state.peers[0];
        assert!(text.contains(&format!("public_key={}\n", p.public_key.to_hex())));
        assert!(text.contains("last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n"));
        assert!(text.contains("tx_bytes=20\nrx_bytes=10\n"));
        assert!(text.contains("allowed_ip=10.244.2.0/24\n"));
        assert!(
            !text.contains("wiremesh_"),
            "stock wg would reject extension keys:\n{}",
            text.as_str()
        );
        assert!(text.ends_with("errno=0\n\n"));
    }

    #[test]
    fn extended_get_round_trips() {
        let state = sample();
        let back = parse_get(&format_get(&state, true)).unwrap();
        assert_eq!(back.peers, state.peers);
        assert_eq!(back.next_public_key, state.next_public_key);
        assert_eq!(back.handshakes, state.handshakes);
        assert_eq!(back.process, state.process);
        assert_eq!(back.listen_port, 51871);
        assert_eq!(
            back.private_key.map(|k| k.public_key()),
            state.private_key.map(|k| k.public_key())
        );
    }

    /// Found while writing the `uapi_get` fuzz target: a handshake time past what `SystemTime`
    /// holds panicked the agent's UAPI client instead of being refused.
    #[test]
    fn absurd_handshake_times_are_refused_naming_the_line() {
        let peer = PrivateKey::generate().public_key().to_hex();
        for (field, value) in [
            ("last_handshake_time_sec", "18446744073709551615"),
            ("last_handshake_time_sec", "9223372036854775808"),
            ("last_handshake_time_nsec", "1000000000"),
        ] {
            let text = format!("public_key={peer}\n{field}={value}\nerrno=0\n");
            match parse_get(&text) {
                Err(UapiError::Value { line: 2, key, .. }) => {
                    assert_eq!(key, crate::uapi::shown_key(field))
                }
                other => panic!("{field}={value}: {other:?}"),
            }
        }
        let text = format!("public_key={peer}\nlast_handshake_time_sec=1\nerrno=0\n");
        assert!(parse_get(&text).unwrap().peers[0].last_handshake.is_some());
    }

    #[test]
    fn errno_is_reported() {
        assert_eq!(parse_get("errno=19\n").unwrap_err(), UapiError::Errno(19));
    }
}
