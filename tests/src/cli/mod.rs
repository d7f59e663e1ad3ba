//! The `wiremesh-lab` subcommands and what they share: signal handling and section headers.

pub mod demo;
pub mod grpc;
pub mod http_load;
pub mod http_server;
pub mod raw_tcp;
pub mod up;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag instead of killing us, so the lab always gets torn down.
/// Children get the default dispositions back when they exec.
pub fn install_signal_handlers() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and no other
        // code in this process installs a handler for these signals.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails if the user asked to stop, so long sequences end at the next step.
pub fn check_interrupted() -> anyhow::Result<()> {
    if stop_requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// A section header a human can spot in a scrolling terminal.
pub fn section(title: &str) {
    println!("\n==> {title}");
}
