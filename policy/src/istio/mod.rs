//! Istio `security.istio.io` (v1 and v1beta1) AuthorizationPolicy and PeerAuthentication:
//! the input schema ([`spec`]), the normalised model ([`model`], serialisable so the agent can
//! ship it to the proxy process), conversion with Istio's validation and wiremesh's refusals
//! ([`convert`], [`peer`]), matching ([`matching`]) and the decision ([`eval`]). Istio policy is
//! enforced at the destination workload only (ingress), as Istio does. Like the rest of the
//! crate it does no I/O.

pub mod convert;
pub mod eval;
pub mod l4;
pub mod matching;
pub mod model;
pub mod peer;
pub mod spec;

pub use eval::{evaluate, Deciding, IstioDecision, IstioRequest};
pub use l4::{enforcement, AuthzEnforcement};
pub use model::{
    Action, AuthzPolicy, AuthzRule, IstioId, IstioKind, IstioSettings, MtlsMode, PeerAuthn,
    StrMatch, Workloads,
};
pub use peer::{admits, effective_mode};
