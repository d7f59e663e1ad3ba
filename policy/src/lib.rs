//! The policy core: it owns the policy model (Kubernetes NetworkPolicy, CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy parsed from manifests into one normalised form; Istio
//! AuthorizationPolicy and PeerAuthentication in their own, [`istio`]), security
//! identities and the IP → identity cache, the per-endpoint policy maps compiled from them,
//! and the trace evaluator that explains a verdict.
//!
//! It must never do I/O: no files, sockets, clocks or logging side effects. Manifests come in
//! as (name, text) pairs and results go out as values; the daemon reads files, talks to the
//! store and loads the data path.
//!
//! Flow: [`load`] → [`Bundle`] → [`trace`] (direct evaluator, explains) and
//! [`Compiled::build`] (identities + policy maps, what the data path enforces). The two agree
//! by construction of a shared peer matcher and by a property test.

mod cilium;
mod cluster;
mod cnp;
pub mod compile;
mod error;
pub mod eval;
pub mod http;
pub mod identity;
pub mod istio;
pub mod kinds;
pub mod labels;
mod manifest;
pub mod model;
pub mod names;
mod np;
mod parse;
mod render;
mod strict;
pub mod trace;

pub use compile::{Compiled, MapVerdict, PolicyMap};
pub use error::{FieldError, LoadError, QueryError};
pub use http::HttpRequest;
pub use identity::{Identities, IdentityId};
pub use manifest::{load, load_with, IstioModel, LoadOptions};
pub use model::{Bundle, Direction, Endpoint, Policy, PolicyId, Protocol, Service};
pub use render::render_text;
pub use trace::{parse_port, trace, DeniedBy, IstioReport, Query, TraceResult, Verdict};
