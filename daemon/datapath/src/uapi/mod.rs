//! The WireGuard cross-platform userspace API (UAPI) text protocol, as `wg` speaks it over
//! `/var/run/wireguard/<interface>.sock`: `get=1` and `set=1` requests of `key=value` lines ended
//! by an empty line, answered with `errno=N`. Pure: text in, typed requests out, and back.
//! Reference: <https://www.wireguard.com/xplatform/>.

pub mod client;
pub mod reader;
pub mod server;
pub mod state;

#[cfg(test)]
mod props;

use std::net::SocketAddr;

use wiremesh_key::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::model::{PeerChange, Psk, SetRequest};

#[derive(Debug)]
pub enum Request {
    /// `get=1`, or `wiremesh_get=1` for the extended answer wiremesh's own agent reads.
    Get {
        extended: bool,
    },
    Set(SetRequest),
}

/// A request that does not parse. Requests carry private keys, so an error never holds a line
/// as sent: only its number, a key name that cannot be a secret, and values of keys that are
/// not secrets (see [`shown`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    #[error("line {line}: expected key=value ({len} bytes, not shown)")]
    Syntax { line: usize, len: usize },
    #[error("line {line}: unknown key {key}")]
    UnknownKey { line: usize, key: String },
    #[error("line {line}: invalid value for {key}: {value}")]
    Value {
        line: usize,
        key: String,
        value: String,
    },
    #[error("line {line}: {key} must follow a public_key line")]
    PeerKeyOutsidePeer { line: usize, key: String },
    #[error("first line must be get=1 or set=1 (answers must end with errno=)")]
    Operation,
    #[error("the device answered errno={0}")]
    Errno(i32),
}

/// The keys whose values are secrets.
const SECRET_KEYS: [&str; 3] = ["private_key", "wiremesh_next_private_key", "preshared_key"];

/// How a request's key or value may appear in an error: quoted if it cannot be a secret (a
/// short value of a key that is not secret, not shaped like a key), otherwise only its length.
pub fn shown(key: &str, value: &str) -> String {
    let t = value.trim();
    let key_shaped = t.len() >= 40
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if SECRET_KEYS.contains(&key) || key_shaped || value.len() > 64 {
        format!("<{} bytes, not shown>", value.len())
    } else {
        format!("{value:?}")
    }
}

/// A key name as it may appear in an error: a plausible key name, or only its length.
pub fn shown_key(key: &str) -> String {
    if !key.is_empty()
        && key.len() <= 40
        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        format!("{key:?}")
    } else {
        format!("<{} bytes, not shown>", key.len())
    }
}

impl UapiError {
    pub fn syntax(line: usize, text: &str) -> Self {
        UapiError::Syntax {
            line,
            len: text.len(),
        }
    }

    pub fn unknown_key(line: usize, key: &str) -> Self {
        UapiError::UnknownKey {
            line,
            key: shown_key(key),
        }
    }

    pub fn value(line: usize, key: &str, value: &str) -> Self {
        UapiError::Value {
            line,
            key: shown_key(key),
            value: shown(key, value),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Operation => libc::EIO,
            UapiError::Errno(n) => *n,
            _ => libc::EINVAL,
        }
    }
}

/// Parses one request: everything up to (not including) the terminating empty line.
pub fn parse(text: &str) -> Result<Request, UapiError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, "get=1")) => return Ok(Request::Get { extended: false }),
        Some((_, "wiremesh_get=1")) => return Ok(Request::Get { extended: true }),
        Some((_, "set=1")) => {}
        _ => return Err(UapiError::Operation),
    }
    let mut req = SetRequest::default();
    for (line, text) in lines {
        if text.is_empty() {
            break;
        }
        let Some((key, value)) = text.split_once('=') else {
            return Err(UapiError::syntax(line, text));
        };
        let bad = || UapiError::value(line, key, value);
        match key {
            "private_key" => {
                req.private_key = Some(PrivateKey::from_hex(value).map_err(|_| bad())?)
            }
            "listen_port" => req.listen_port = Some(value.parse().map_err(|_| bad())?),
            "fwmark" => req.fwmark = Some(value.parse().map_err(|_| bad())?),
            "wiremesh_next_private_key" => {
                let bytes = *PublicKey::from_hex(value).map_err(|_| bad())?.as_bytes();
                req.next_private_key =
                    Some((bytes != [0; 32]).then(|| PrivateKey::from_bytes(bytes)));
            }
            "replace_peers" => req.replace_peers = parse_true(value).ok_or_else(bad)?,
            "public_key" => {
                let key = PublicKey::from_hex(value).map_err(|_| bad())?;
                req.peers.push(PeerChange::new(key));
            }
            "remove" => last(&mut req, line, key)?.remove = parse_true(value).ok_or_else(bad)?,
            "update_only" => {
                last(&mut req, line, key)?.update_only = parse_true(value).ok_or_else(bad)?
            }
            "preshared_key" => {
                let bytes = *PublicKey::from_hex(value).map_err(|_| bad())?.as_bytes();
                let psk = (bytes != [0; 32]).then_some(Psk(bytes));
                last(&mut req, line, key)?.preshared_key = Some(psk);
            }
            "wiremesh_next_public_key" => {
                let pk = PublicKey::from_hex(value).map_err(|_| bad())?;
                last(&mut req, line, key)?.next_public_key = Some((!pk.is_zero()).then_some(pk));
            }
            "endpoint" => {
                last(&mut req, line, key)?.endpoint =
                    Some(value.parse::<SocketAddr>().map_err(|_| bad())?)
            }
            "persistent_keepalive_interval" => {
                last(&mut req, line, key)?.persistent_keepalive =
                    Some(value.parse().map_err(|_| bad())?)
            }
            "replace_allowed_ips" => {
                last(&mut req, line, key)?.replace_allowed_ips =
                    parse_true(value).ok_or_else(bad)?
            }
            "allowed_ip" => {
                let net: ipnet::IpNet = value.parse().map_err(|_| bad())?;
                last(&mut req, line, key)?.allowed_ips.push(net.trunc());
            }
            "protocol_version" => {
                last(&mut req, line, key)?;
                if value != "1" {
                    return Err(bad());
                }
            }
            _ => return Err(UapiError::unknown_key(line, key)),
        }
    }
    Ok(Request::Set(req))
}

/// The peer the current line applies to: the one opened by the latest `public_key=`.
fn last<'a>(
    req: &'a mut SetRequest,
    line: usize,
    key: &str,
) -> Result<&'a mut PeerChange, UapiError> {
    req.peers
        .last_mut()
        .ok_or_else(|| UapiError::PeerKeyOutsidePeer {
            line,
            key: shown_key(key),
        })
}

fn parse_true(v: &str) -> Option<bool> {
    (v == "true").then_some(true)
}

/// Formats a `set` request (with its terminating empty line): what wiremesh's agent sends to a
/// data path running as a separate process. The text holds private keys: it is zeroed on drop,
/// and the buffer is sized before they go in (no reallocation leaves a copy behind).
pub fn format_set(req: &SetRequest) -> Zeroizing<String> {
    let mut secret: Vec<(&str, Zeroizing<String>)> = Vec::new();
    if let Some(k) = &req.private_key {
        secret.push(("private_key", k.to_hex_for_uapi()));
    }
    match &req.next_private_key {
        Some(Some(k)) => secret.push(("wiremesh_next_private_key", k.to_hex_for_uapi())),
        Some(None) => secret.push(("wiremesh_next_private_key", Zeroizing::new("0".repeat(64)))),
        None => {}
    }
    let rest = format_set_public(req);
    let len = secret
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Zeroizing::new(String::with_capacity("set=1\n".len() + len + rest.len()));
    out.push_str("set=1\n");
    for (key, value) in &secret {
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    out.push_str(&rest);
    out
}

/// The lines of a `set` request after its private keys.
fn format_set_public(req: &SetRequest) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(p) = req.listen_port {
        let _ = writeln!(out, "listen_port={p}");
    }
    if let Some(m) = req.fwmark {
        let _ = writeln!(out, "fwmark={m}");
    }
    if req.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for p in &req.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if p.remove {
            out.push_str("remove=true\n");
            continue;
        }
        if p.update_only {
            out.push_str("update_only=true\n");
        }
        if let Some(psk) = &p.preshared_key {
            let bytes = psk.map_or([0; 32], |k| k.0);
            let _ = writeln!(
                out,
                "preshared_key={}",
                PublicKey::from_bytes(bytes).to_hex()
            );
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(out, "persistent_keepalive_interval={k}");
        }
        if p.replace_allowed_ips {
            out.push_str("replace_allowed_ips=true\n");
        }
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
        if let Some(next) = &p.next_public_key {
            let k = next.unwrap_or(PublicKey::from_bytes([0; 32]));
            let _ = writeln!(out, "wiremesh_next_public_key={}", k.to_hex());
        }
    }
    out.push('\n');
    out
}

pub fn format_errno(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PUB: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    #[test]
    fn parses_what_wg_set_sends() {
        let text = format!(
            "set=1\nlisten_port=51871\nreplace_peers=true\npublic_key={PUB}\nendpoint=198.18.0.2:51871\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\n\
             allowed_ip=fd00::/64\n"
        );
        let Request::Set(req) = parse(&text).unwrap() else {
            panic!("not a set")
        };
        assert_eq!(req.listen_port, Some(51871));
        assert!(req.replace_peers);
        assert_eq!(req.peers.len(), 1);
        let p = &req.peers[0];
        assert_eq!(p.public_key.to_hex(), PUB);
        assert_eq!(p.endpoint, Some("198.18.0.2:51871".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(p.allowed_ips.len(), 2);
    }

    #[test]
    fn ipv6_endpoint_and_removal() {
        let text = format!(
            "set=1\npublic_key={PUB}\nendpoint=[fd00::1]:51871\npublic_key={PUB}\nremove=true\n"
        );
        let Request::Set(req) = parse(&text).unwrap() else {
            panic!("not a set")
        };
        assert_eq!(
            req.peers[0].endpoint,
            Some("[fd00::1]:51871".parse().unwrap())
        );
        assert!(req.peers[1].remove);
    }

    #[test]
    fn errors_name_the_line_and_key() {
        assert_eq!(
            parse("set=1\nendpoint=1.2.3.4:5\n").unwrap_err(),
            UapiError::PeerKeyOutsidePeer {
                line: 2,
                key: "\"endpoint\"".into()
            }
        );
        assert!(matches!(
            parse("set=1\nbogus=1\n"),
            Err(UapiError::UnknownKey { line: 2, .. })
        ));
        assert!(matches!(
            parse("set=1\nlisten_port=99999\n"),
            Err(UapiError::Value { line: 2, .. })
        ));
        assert_eq!(parse("hello\n").unwrap_err(), UapiError::Operation);
    }

    #[test]
    fn set_round_trips_through_text() {
        let mut c = PeerChange::new(PublicKey::from_hex(PUB).unwrap());
        c.endpoint = Some("[fd00::2]:51871".parse().unwrap());
        c.persistent_keepalive = Some(25);
        c.replace_allowed_ips = true;
        c.allowed_ips = vec!["10.244.2.0/24".parse().unwrap()];
        c.next_public_key = Some(Some(PrivateKey::generate().public_key()));
        c.preshared_key = Some(Some(Psk([7; 32])));
        let req = SetRequest {
            next_private_key: Some(Some(PrivateKey::generate())),
            listen_port: Some(51871),
            peers: vec![
                c.clone(),
                PeerChange::removal(PrivateKey::generate().public_key()),
            ],
            ..SetRequest::default()
        };
        let text = format_set(&req);
        let Request::Set(back) = parse(text.trim_end_matches('\n')).unwrap() else {
            panic!("not a set")
        };
        assert_eq!(back.listen_port, Some(51871));
        assert_eq!(
            back.next_private_key.flatten().map(|k| k.public_key()),
            req.next_private_key
                .clone()
                .flatten()
                .map(|k| k.public_key())
        );
        let p = &back.peers[0];
        assert_eq!(
            (
                p.public_key,
                p.endpoint,
                p.persistent_keepalive,
                p.replace_allowed_ips
            ),
            (c.public_key, c.endpoint, c.persistent_keepalive, true)
        );
        assert_eq!(
            (&p.allowed_ips, p.next_public_key, p.preshared_key),
            (&c.allowed_ips, c.next_public_key, c.preshared_key)
        );
        assert!(back.peers[1].remove);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_keyvalue_noise(
            lines in proptest::collection::vec(("[a-z_]{1,30}", "[ -~]{0,70}"), 0..20)
        ) {
            let mut text = String::from("set=1\n");
            for (k, v) in lines {
                text.push_str(&format!("{k}={v}\n"));
            }
            let _ = parse(&text);
        }
    }
}
