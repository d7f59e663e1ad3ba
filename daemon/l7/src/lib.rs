//! The L7 filter: a transparent HTTP/1.1 and cleartext HTTP/2 proxy that enforces
//! CiliumNetworkPolicy `rules.http` on the connections the kernel (eBPF marks, nftables
//! `tproxy`) redirects to it, answers denied requests itself (403 `Access denied`, gRPC
//! `grpc-status: 7`) and forwards allowed ones unchanged to the original destination from the
//! client's own address. It keeps one flow record per request and serves its configuration,
//! flows and counters on a root-only Unix control socket.
//!
//! It must never forward a request it has not judged, never judge without a configuration
//! (no configuration, unknown local endpoint: deny), and never compile policy itself: the agent
//! pushes each endpoint's compiled `policy::PolicyMap` ([`config::L7Config`]) and this crate only
//! looks it up ([`decide`]).
//!
//! Layout: [`config`] (wire type) → [`snapshot`] (decoded, what requests are judged against) →
//! [`decide`] (pure verdict) ← [`server`] (listeners, sniffing, HTTP serving) → [`forward`]
//! (upstream connections); [`flows`] (records, ring, counters); [`control`] (socket server) and
//! [`client`] (the agent's side); [`process`] (the `wiremesh proxy` process).

pub mod client;
pub mod config;
pub mod control;
pub mod decide;
pub mod flows;
pub mod forward;
mod framing;
mod handler;
mod io;
pub mod process;
pub mod server;
pub mod snapshot;
pub mod state;
mod uri;

pub use client::{ClientError, ProxyClient};
pub use config::{ConfigError, L7Config, L7Endpoint, PodInfo};
pub use decide::{decide, Decision, Reason, RequestParts};
pub use flows::{Flow, FlowLog, Stats, Verdict};
pub use forward::Mode;
pub use process::{run, run_until, Options};
pub use server::{bind_transparent, serve_listener, ProxyLimits};
pub use snapshot::Snapshot;
pub use state::{Settings, Shared};
