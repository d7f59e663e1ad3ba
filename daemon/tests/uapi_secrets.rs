#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! No private key in any log line or error, even from a malformed request: malformed `set`
//! requests carrying a private key go to the real UAPI server, every log line (TRACE and up) is
//! captured, and neither the logs nor the errors may hold the key. The control: the capture does
//! see the "malformed" lines, and the key does travel where it must (to the data path).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{exchange, FakeDatapath, PEER_HEX, SECRET_B64, SECRET_HEX};
use wiremesh_datapath::listen::{Access, Limits};
use wiremesh_datapath::model::SetRequest;
use wiremesh_datapath::uapi::server::UapiServer;
use wiremesh_datapath::uapi::{self, Request};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `text` holds the secret, or any 16-character piece of it (hex or base64).
fn leaks(text: &str) -> bool {
    let pieces = |s: &str| -> Vec<String> {
        (0..=s.len() - 16)
            .map(|i| s[i..i + 16].to_string())
            .collect()
    };
    pieces(SECRET_HEX)
        .iter()
        .chain(pieces(SECRET_B64).iter())
        .any(|p| text.contains(p.as_str()))
}

/// Malformed requests that each carry the secret somewhere.
fn malformed() -> Vec<String> {
    vec![
        // A key one digit too long, one too short, with a bad digit.
        format!("set=1\nprivate_key={SECRET_HEX}0\n\n"),
        format!("set=1\nprivate_key={}\n\n", &SECRET_HEX[..63]),
        format!("set=1\nprivate_key={}zz\n\n", &SECRET_HEX[..62]),
        // No '=' at all.
        format!("set=1\nprivate_key {SECRET_HEX}\n\n"),
        format!("set=1\nprivate_key:{SECRET_B64}\n\n"),
        // The key in the key's place.
        format!("set=1\n{SECRET_HEX}=1\n\n"),
        // The key in base64 where hex is expected, and under the wrong (non-secret) keys.
        format!("set=1\nprivate_key={SECRET_B64}\n\n"),
        format!("set=1\nwiremesh_next_private_key={SECRET_HEX}x\n\n"),
        format!("set=1\nlisten_port={SECRET_HEX}\n\n"),
        format!("set=1\npublic_key={PEER_HEX}\nendpoint={SECRET_B64}\n\n"),
        format!("set=1\npublic_key={PEER_HEX}\npreshared_key={SECRET_HEX}q\n\n"),
        format!("set=1\npublic_key={PEER_HEX}\nallowed_ip={SECRET_HEX}\n\n"),
        format!("set=1\nfwmark={SECRET_B64}\n\n"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_in_any_log_line_or_error() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // The parser's errors, both Display and Debug.
    for text in malformed() {
        let err = uapi::parse(text.trim_end()).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!leaks(&shown), "error shows the key: {shown}");
        // The answer side too: a `get` answer that is malformed.
        let text = text.replacen("set=1\n", "", 1);
        if let Err(e) = wiremesh_datapath::uapi::state::parse_get(&text) {
            let shown = format!("{e} {e:?}");
            assert!(!leaks(&shown), "get-answer error shows the key: {shown}");
        }
    }

    // The real server, fed each malformed request.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDatapath::start(dir.path());
    let sock = dir.path().join("wm_test0.sock");
    let _server =
        UapiServer::bind_at(&sock, fake.datapath(), Access::default(), Limits::UAPI).unwrap();
    let s = sock.clone();
    let answers = tokio::task::spawn_blocking(move || {
        malformed()
            .iter()
            .map(|r| exchange(&s, r.as_bytes()).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for a in &answers {
        assert_eq!(a, &format!("errno={}\n\n", libc::EINVAL));
    }
    assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A valid set from the agent's side: the key reaches the data path (and only there).
    let mut req = SetRequest {
        private_key: Some(keymgr::PrivateKey::from_hex(SECRET_HEX).unwrap()),
        ..SetRequest::default()
    };
    req.listen_port = Some(51871);
    tracing::debug!(?req, "the request, as a careless log line would print it");
    let client = wiremesh_datapath::uapi::client::UapiClient::new(&sock);
    client.set(&req).await.unwrap();
    let received = fake.received.lock().unwrap().concat();
    assert!(
        received.contains(&format!("private_key={SECRET_HEX}")),
        "{received}"
    );
    let Request::Set(back) = uapi::parse(&uapi::format_set(&req)).unwrap() else {
        panic!("not a set")
    };
    tracing::debug!(?back, "parsed back");

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    // The control: the capture works and saw every malformed request.
    assert_eq!(
        logs.matches("malformed UAPI request").count(),
        malformed().len(),
        "{logs}"
    );
    assert!(logs.contains("PrivateKey(<redacted>)"), "{logs}");
    assert!(!leaks(&logs), "a log line holds the key:\n{logs}");
}
