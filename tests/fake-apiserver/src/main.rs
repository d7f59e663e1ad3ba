//! `wiremesh-fake-apiserver`: the fake Kubernetes API server as a process. It stands in for
//! kube-apiserver, which cannot be installed on the project's machines; what it implements and
//! what it does not is listed in the library's documentation (`src/lib.rs`).
//!
//! Prints exactly one line, `ready <url>`, to stdout once it listens; exits 0 on SIGTERM or
//! SIGINT. Tokens are given as `--token TOKEN=USER[:GROUP,GROUP...]` or, one such line per
//! token (blank lines and `#` comments skipped), in `--tokens FILE`; without any token every
//! request is served as `system:anonymous`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use wiremesh_fake_apiserver::audit::AuditLog;
use wiremesh_fake_apiserver::auth::Tokens;
use wiremesh_fake_apiserver::rbac::Authorizer;
use wiremesh_fake_apiserver::serve::{serve, Shared};
use wiremesh_fake_apiserver::state::Store;
use wiremesh_fake_apiserver::tls;

#[derive(Parser)]
#[command(about = "A fake Kubernetes API server standing in for kube-apiserver in tests")]
struct Cli {
    /// Address to listen on (port 0: any free port; the `ready` line names it).
    #[arg(long)]
    listen: SocketAddr,
    /// Serve HTTPS with `ca.crt`, `tls.crt` and `tls.key` from this directory, generated there
    /// when `ca.crt` is missing.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// A bearer token and its user, `TOKEN=USER[:GROUP,GROUP...]` (repeatable).
    #[arg(long = "token", value_name = "TOKEN=USER[:GROUPS]")]
    tokens: Vec<String>,
    /// A file of token lines as `--token` takes them.
    #[arg(long = "tokens", value_name = "FILE")]
    token_files: Vec<PathBuf>,
    /// Multi-document YAML with the RBAC objects to enforce (repeatable); without it every
    /// authenticated user may do everything.
    #[arg(long = "rbac", value_name = "FILE")]
    rbac: Vec<PathBuf>,
    /// Append one JSON line per request to this file.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Keep the objects in this file (written on every change, read at start).
    #[arg(long)]
    state: Option<PathBuf>,
}

fn tokens(cli: &Cli) -> anyhow::Result<Tokens> {
    let mut specs: Vec<(String, String)> = cli
        .tokens
        .iter()
        .map(|s| ("--token".to_owned(), s.clone()))
        .collect();
    for file in &cli.token_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading tokens file {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                specs.push((format!("{}:{}", file.display(), n + 1), line.to_owned()));
            }
        }
    }
    if specs.is_empty() {
        return Ok(Tokens::none());
    }
    let parsed = specs
        .iter()
        .map(|(origin, spec)| Tokens::parse_spec(spec).with_context(|| origin.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tokens::with(parsed))
}

fn authorizer(cli: &Cli) -> anyhow::Result<Option<Authorizer>> {
    if cli.rbac.is_empty() {
        return Ok(None);
    }
    let mut authorizer = Authorizer::default();
    for file in &cli.rbac {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading RBAC file {}", file.display()))?;
        authorizer
            .add_yaml(&text)
            .with_context(|| format!("RBAC file {}", file.display()))?;
    }
    Ok(Some(authorizer))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tokens = tokens(&cli)?;
    let authorizer = authorizer(&cli)?;
    let audit = match &cli.audit {
        Some(path) => Some(
            AuditLog::open(path)
                .with_context(|| format!("opening audit log {}", path.display()))?,
        ),
        None => None,
    };
    let store = Store::open(cli.state.clone())?;
    let acceptor = match &cli.tls_dir {
        Some(dir) => Some(tls::acceptor(dir, cli.listen.ip())?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let addr = listener.local_addr().context("the listener's address")?;
    let shared = Arc::new(Shared {
        store: Arc::new(store),
        tokens,
        authorizer,
        audit,
    });
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let server = tokio::spawn(serve(listener, shared, acceptor));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {scheme}://{addr}").context("writing the ready line")?;
        out.flush().context("flushing the ready line")?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        r = server => bail!("the server task ended: {r:?}"),
    }
    Ok(())
}
