//! `wiremesh policy trace`: with `-f`, reads the manifest files and prints what the `policy`
//! crate answers (offline); without, asks the local agent, which answers from the policy it
//! enforces (online).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use policy::{parse_port, render_text, trace, Bundle, HttpRequest, Protocol, Query};

use super::ask::ask;
use crate::api::error_chain;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Manifest file (multi-document YAML or `kind: List`: Namespace, Pod, Node,
    /// NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy). Repeatable.
    /// Loaded as `wiremesh apply` loads it: what wiremesh cannot enforce as written (a policy
    /// kind it does not enforce, HTTP rules, ...) is refused, with no verdict. Without it the
    /// trace asks the local agent, which answers from the policy it enforces.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Source: `namespace/pod` or an IP address.
    #[arg(long, required_unless_present = "queries")]
    pub from: Option<String>,
    /// Destination: `namespace/pod` or an IP address.
    #[arg(long, required_unless_present = "queries")]
    pub to: Option<String>,
    /// `PORT[/PROTO]` (PROTO: TCP (default), UDP, SCTP, ICMP, ICMPv6; for ICMP the port is
    /// the ICMP type and may be left out: `--port ICMP`).
    #[arg(long)]
    pub port: Option<String>,
    /// HTTP method of the request, to evaluate L7 rules.
    #[arg(long)]
    pub http_method: Option<String>,
    /// HTTP path of the request.
    #[arg(long)]
    pub http_path: Option<String>,
    /// HTTP header `Name: value`. Repeatable.
    #[arg(long)]
    pub http_header: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Batch mode: one JSON query per line (`{"from", "to", "port", "protocol", "http"}`);
    /// prints one JSON result per line, in order.
    #[arg(long, conflicts_with_all = ["from", "to", "port"])]
    pub queries: Option<PathBuf>,
}

/// `wiremesh policy trace`: offline with `-f`, else against the agent of `run_dir`.
pub fn run(args: TraceArgs, run_dir: &Path) -> ExitCode {
    if args.files.is_empty() {
        return online(&args, run_dir);
    }
    let bundle = match load(&args.files) {
        Ok(b) => b,
        Err(message) => {
            eprintln!("wiremesh policy trace: {message}");
            return ExitCode::from(2);
        }
    };
    for note in &bundle.notes {
        eprintln!("note: {note}");
    }
    match &args.queries {
        Some(path) => batch(&bundle, path),
        None => single(&bundle, &args),
    }
}

fn load(files: &[PathBuf]) -> Result<Bundle, String> {
    let mut texts = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        texts.push((path.display().to_string(), text));
    }
    policy::load_with(
        texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        crate::agent::policy::load_options(),
    )
    .map_err(|e| e.to_string())
}

/// Asks the local agent: the queries go as JSON lines, the answers come back as printed.
fn online(args: &TraceArgs, run_dir: &Path) -> ExitCode {
    let (lines, text) = match &args.queries {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => (t, false),
            Err(e) => {
                eprintln!("wiremesh policy trace: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => match query_of(args) {
            Ok(q) => (q.to_json_line(), matches!(args.output, Output::Text)),
            Err(e) => {
                eprintln!("wiremesh policy trace: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match ask(
        run_dir,
        |agent| async move { agent.trace(lines, text).await },
    ) {
        Ok(out) => {
            let out = match (&args.queries, args.output) {
                // One JSON answer: pretty, as offline.
                (None, Output::Json) => serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .map_or(out, |s| s + "\n"),
                _ => out,
            };
            if std::io::stdout().lock().write_all(out.as_bytes()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wiremesh policy trace: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The query of `--from/--to/--port/--http-*`.
fn query_of(args: &TraceArgs) -> Result<Query, String> {
    let (port, protocol) = match args.port.as_deref().map(parse_port) {
        None => (None, Protocol::Tcp),
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(format!("--port: {e}")),
    };
    let mut http = HttpRequest {
        method: args.http_method.clone(),
        path: args.http_path.clone(),
        ..HttpRequest::default()
    };
    for h in &args.http_header {
        let Some((k, v)) = h.split_once(':') else {
            return Err(format!("--http-header {h:?}: expected 'Name: value'"));
        };
        http.headers
            .insert(k.trim().to_string(), v.trim().to_string());
    }
    let has_http = http.method.is_some() || http.path.is_some() || !http.headers.is_empty();
    Ok(Query {
        from: args.from.clone().unwrap_or_default(),
        to: args.to.clone().unwrap_or_default(),
        port,
        protocol,
        http: has_http.then_some(http),
    })
}

fn single(bundle: &Bundle, args: &TraceArgs) -> ExitCode {
    let query = match query_of(args) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("wiremesh policy trace: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match trace(bundle, &query) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wiremesh policy trace: {e}");
            return ExitCode::from(2);
        }
    };
    for note in &bundle.notes {
        eprintln!("note: {note}");
    }
    let text = match args.output {
        Output::Text => render_text(&result),
        Output::Json => match serde_json::to_string_pretty(&result) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("wiremesh policy trace: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
        return ExitCode::FAILURE;
    }
    // The verdict is the output; the exit code only reports whether the trace ran.
    ExitCode::SUCCESS
}

fn batch(bundle: &Bundle, path: &PathBuf) -> ExitCode {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wiremesh policy trace: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("wiremesh policy trace: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        // A bad line still gets an output line, so results stay aligned with queries.
        let value = match Query::from_json_line(&line, i + 1).and_then(|q| trace(bundle, &q)) {
            Ok(r) => serde_json::to_string(&r)
                .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}).to_string()),
            Err(e) => {
                failed = true;
                eprintln!("wiremesh policy trace: {}:{}: {e}", path.display(), i + 1);
                serde_json::json!({"verdict": null, "deniedBy": null, "error": e.to_string()})
                    .to_string()
            }
        };
        if writeln!(out, "{value}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
