//! `wiremesh-lab raw-tcp`: sends the bytes of stdin to a TCP address exactly as given (at once,
//! or dribbled a few bytes at a time), and prints what came back and how the connection ended
//! as one JSON line, for the hostile-HTTP test. Everything is bounded by `--timeout`: the
//! connection is given up (`"end": "timeout"`) when it has not ended by then.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How the bytes are sent and how long to wait.
pub struct RawArgs {
    pub connect: SocketAddr,
    /// Bytes per write; 0 sends everything in one write.
    pub step: usize,
    /// Pause between two writes.
    pub interval: Duration,
    /// From the connection's start until it is given up.
    pub timeout: Duration,
}

pub fn run(args: &RawArgs) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let start = Instant::now();
    let stream = match TcpStream::connect_timeout(&args.connect, args.timeout) {
        Ok(s) => s,
        Err(e) => {
            report(&[], "connect-failed", start, 0, Some(e.to_string()));
            return Ok(());
        }
    };
    let ended = Arc::new(AtomicBool::new(false));
    let reader = {
        let stream = stream.try_clone().context("cloning the socket")?;
        let ended = ended.clone();
        let deadline = start + args.timeout;
        std::thread::spawn(move || {
            let got = read_until_end(stream, deadline);
            ended.store(true, Ordering::SeqCst);
            got
        })
    };
    let (sent, write_error) = write_paced(&stream, &input, args, &ended, start);
    let (reply, end) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    let _ = stream.shutdown(Shutdown::Both);
    report(&reply, end, start, sent, write_error);
    Ok(())
}

/// Writes `input` in `args.step` pieces; stops early when the reader saw the end or the time is
/// up. Returns the bytes written and the write error, if one ended it.
fn write_paced(
    mut stream: &TcpStream,
    input: &[u8],
    args: &RawArgs,
    ended: &AtomicBool,
    start: Instant,
) -> (usize, Option<String>) {
    let step = if args.step == 0 {
        input.len().max(1)
    } else {
        args.step
    };
    let mut sent = 0;
    for (i, piece) in input.chunks(step).enumerate() {
        if i > 0 {
            let until = Instant::now() + args.interval;
            while Instant::now() < until {
                if ended.load(Ordering::SeqCst) || start.elapsed() >= args.timeout {
                    return (sent, None);
                }
                std::thread::sleep(Duration::from_millis(20).min(args.interval));
            }
        }
        if let Err(e) = stream.write_all(piece) {
            return (sent, Some(e.to_string()));
        }
        sent += piece.len();
    }
    (sent, None)
}

/// Reads until EOF, a reset or `deadline`: the bytes and `"eof"`, `"reset"` or `"timeout"`.
fn read_until_end(mut stream: TcpStream, deadline: Instant) -> (Vec<u8>, &'static str) {
    let mut reply = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return (reply, "timeout");
        }
        match stream.read(&mut buf) {
            Ok(0) => return (reply, "eof"),
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (reply, "timeout")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (reply, "reset"),
        }
    }
}

fn report(reply: &[u8], end: &str, start: Instant, sent: usize, write_error: Option<String>) {
    let out = serde_json::json!({
        "reply": String::from_utf8_lossy(reply),
        "end": end,
        "elapsedMs": start.elapsed().as_millis() as u64,
        "sent": sent,
        "writeError": write_error,
    });
    println!("{out}");
}
