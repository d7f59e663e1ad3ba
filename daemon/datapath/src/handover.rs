//! The in-place upgrade of the userspace data path: a running `wiremesh datapath` hands its UDP
//! sockets and its device's configuration to a successor (`wiremesh datapath --take-over`) over
//! `<runDir>/datapath-handover.sock` (root only), and keeps decrypting, for a while, the packets
//! of the sessions it made, which the successor forwards to it.
//!
//! The stream protocol, one connection per upgrade:
//! 1. successor connects; the old process checks it is root;
//! 2. old → successor: one `sendmsg` carrying the body's length (4 bytes, big-endian) and, as
//!    `SCM_RIGHTS`, the UDP v4 socket, the forwarding datagram socket and the UDP v6 socket if
//!    any; then the body ([`Offer`] as text, which holds the private keys: never logged);
//! 3. successor → old: `detach\n` once it has attached its own TUN queue: the old process
//!    encrypts what is left in its queue and detaches it;
//! 4. successor → old: `leave\n` (or the connection closing) once every peer has a session with
//!    it; the old process exits, leaving the interface, the UAPI socket and the PID file alone.
//!
//! Forwarded datagrams (successor → old, on the datagram socket): the source address as text, a
//! NUL byte, the datagram ([`encode_forwarded`]).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use zeroize::Zeroizing;

/// The handover socket's name in the run directory (next to `datapath.pid`).
pub const SOCKET_NAME: &str = "datapath-handover.sock";
/// The largest offer body accepted: a configuration of tens of thousands of peers.
const MAX_BODY: usize = 64 << 20;
const MAGIC: &str = "wiremesh_handover=1";

/// The handover socket next to a PID file.
pub fn socket_path(pid_file: &Path) -> PathBuf {
    pid_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(SOCKET_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("handover offer: {0}")]
    Malformed(String),
}

/// What the old data path hands over besides the sockets.
pub struct Offer {
    /// The old data path's version, for the successor's log line.
    pub version: String,
    /// The first receiver index the successor may use: those below are the old sessions'.
    pub index_base: u32,
    /// Whether an IPv6 socket follows the v4 and forwarding sockets.
    pub v6: bool,
    /// The whole device as a UAPI `set` request (private keys included).
    pub config: Zeroizing<String>,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer")
            .field("version", &self.version)
            .field("index_base", &self.index_base)
            .field("v6", &self.v6)
            .field(
                "config",
                &format_args!("<{} bytes, not shown>", self.config.len()),
            )
            .finish()
    }
}

/// The offer as text: three header lines, then the `set` request.
pub fn encode_offer(offer: &Offer) -> Zeroizing<String> {
    let header = format!(
        "{MAGIC}\nversion={}\nindex_base={}\nv6={}\n",
        offer.version, offer.index_base, offer.v6
    );
    let mut out = Zeroizing::new(String::with_capacity(header.len() + offer.config.len()));
    out.push_str(&header);
    out.push_str(&offer.config);
    out
}

pub fn decode_offer(text: &str) -> Result<Offer, HandoverError> {
    let bad = |what: &str| HandoverError::Malformed(what.to_string());
    let mut rest = text;
    let mut line = || -> Result<&str, HandoverError> {
        let (l, r) = rest
            .split_once('\n')
            .ok_or_else(|| bad("truncated header"))?;
        rest = r;
        Ok(l)
    };
    if line()? != MAGIC {
        return Err(bad("not a wiremesh handover (first line)"));
    }
    let version = field(line()?, "version")?.to_string();
    let index_base = field(line()?, "index_base")?
        .parse()
        .map_err(|_| bad("index_base is not a number"))?;
    let v6 = match field(line()?, "v6")? {
        "true" => true,
        "false" => false,
        _ => return Err(bad("v6 is neither true nor false")),
    };
    if !rest.starts_with("set=1\n") {
        return Err(bad("no set=1 request after the header"));
    }
    Ok(Offer {
        version,
        index_base,
        v6,
        config: Zeroizing::new(rest.to_string()),
    })
}

fn field<'a>(line: &'a str, key: &str) -> Result<&'a str, HandoverError> {
    line.strip_prefix(key)
        .and_then(|r| r.strip_prefix('='))
        .ok_or_else(|| HandoverError::Malformed(format!("expected {key}= in the header")))
}

/// A forwarded datagram: its source, a NUL, the datagram.
pub fn encode_forwarded(from: SocketAddr, datagram: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.clear();
    let _ = write!(out, "{from}\0");
    out.extend_from_slice(datagram);
}

pub fn decode_forwarded(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    let from = std::str::from_utf8(&bytes[..nul]).ok()?.parse().ok()?;
    Some((from, &bytes[nul + 1..]))
}

/// The sockets handed over, in the order they travel.
pub struct Sockets {
    pub v4: OwnedFd,
    pub forward: OwnedFd,
    pub v6: Option<OwnedFd>,
}

/// Old side: sends the offer and the sockets (step 2).
pub fn send_offer(stream: &mut UnixStream, offer: &Offer, fds: &[RawFd]) -> std::io::Result<()> {
    let body = encode_offer(offer);
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::other("handover offer over 4 GiB"))?
        .to_be_bytes();
    let cmsg = [ControlMessage::ScmRights(fds)];
    let iov = [IoSlice::new(&len)];
    socket::sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    stream.write_all(body.as_bytes())
}

/// Successor side: receives the offer and the sockets (step 2).
pub fn receive_offer(stream: &mut UnixStream) -> Result<(Offer, Sockets), HandoverError> {
    let io = |source: std::io::Error| HandoverError::Io {
        path: "handover socket".into(),
        source,
    };
    let mut len = [0u8; 4];
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let fds = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io(e.into()))?;
        if msg.bytes != 4 {
            return Err(HandoverError::Malformed(format!(
                "header of {} bytes, expected 4",
                msg.bytes
            )));
        }
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| io(e.into()))? {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: SCM_RIGHTS gave this process these descriptors; nothing else owns them.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        fds
    };
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_BODY {
        return Err(HandoverError::Malformed(format!("body of {n} bytes")));
    }
    let mut body = Zeroizing::new(vec![0u8; n]);
    stream.read_exact(&mut body).map_err(io)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| HandoverError::Malformed("body is not UTF-8".into()))?;
    let offer = decode_offer(text)?;
    let expected = 2 + usize::from(offer.v6);
    if fds.len() != expected {
        return Err(HandoverError::Malformed(format!(
            "{} descriptors, expected {expected}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let (Some(v4), Some(forward)) = (fds.next(), fds.next()) else {
        unreachable!("the count was checked above");
    };
    Ok((
        offer,
        Sockets {
            v4,
            forward,
            v6: fds.next(),
        },
    ))
}

/// Whether the peer at the other end of `stream` is root (or this process's own user).
pub fn peer_is_root(stream: &UnixStream) -> bool {
    socket::getsockopt(stream, socket::sockopt::PeerCredentials)
        .is_ok_and(|c| c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            version: "0.1.0-v1".into(),
            index_base: 42,
            v6: true,
            config: Zeroizing::new("set=1\nlisten_port=51871\n\n".into()),
        }
    }

    #[test]
    fn an_offer_reads_back_as_itself() {
        let back = decode_offer(&encode_offer(&offer())).unwrap();
        assert_eq!(
            (back.version.as_str(), back.index_base, back.v6),
            ("0.1.0-v1", 42, true)
        );
        assert_eq!(back.config.as_str(), offer().config.as_str());
    }

    #[test]
    fn malformed_offers_are_refused_without_showing_the_body() {
        for text in [
            "",
            "hello\n",
            "wiremesh_handover=1\nversion=x\n",
            "wiremesh_handover=1\nversion=x\nindex_base=no\nv6=true\nset=1\n",
            "wiremesh_handover=1\nversion=x\nindex_base=1\nv6=maybe\nset=1\n",
            "wiremesh_handover=1\nversion=x\nindex_base=1\nv6=true\nprivate_key=00\n",
        ] {
            let err = decode_offer(text).unwrap_err().to_string();
            assert!(!err.contains("private_key"), "{err}");
        }
        let debug = format!("{:?}", offer());
        assert!(!debug.contains("listen_port"), "{debug}");
    }

    #[test]
    fn forwarded_datagrams_keep_their_source() {
        let mut buf = Vec::new();
        for from in ["198.18.0.2:51871", "[fd00::2]:1"] {
            let from: SocketAddr = from.parse().unwrap();
            encode_forwarded(from, &[4, 0, 0, 0, 9], &mut buf);
            assert_eq!(decode_forwarded(&buf), Some((from, &[4u8, 0, 0, 0, 9][..])));
        }
        assert_eq!(decode_forwarded(b"no nul"), None);
    }

    #[test]
    fn sockets_and_offer_cross_a_socket_pair() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let (fwd, _fwd_peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let udp6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        send_offer(
            &mut a,
            &offer(),
            &[udp.as_raw_fd(), fwd.as_raw_fd(), udp6.as_raw_fd()],
        )
        .unwrap();
        let (back, sockets) = receive_offer(&mut b).unwrap();
        assert_eq!(back.index_base, 42);
        let v4 = std::net::UdpSocket::from(sockets.v4);
        assert_eq!(v4.local_addr().unwrap().port(), port, "the same socket");
        assert!(sockets.v6.is_some());
    }
}
