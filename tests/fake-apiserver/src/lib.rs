//! A fake Kubernetes API server. It stands in for kube-apiserver, which cannot be installed on
//! the project's machines: the store tests run it in process ([`FakeApiServer`], plain HTTP),
//! the network-namespace lab runs it as a process (`wiremesh-fake-apiserver`, HTTPS with bearer
//! tokens, RBAC and an audit log) and drives it with the real `kubectl`. It holds objects in
//! memory (and, with `--state`, in a file); it must never be mistaken for a conformant server.
//!
//! Implemented:
//! * resources: `nodes`, `namespaces`, `pods`, `services`, `configmaps`,
//!   `networking.k8s.io/v1 networkpolicies`, `cilium.io/v2` `ciliumnetworkpolicies` and
//!   `ciliumclusterwidenetworkpolicies`, `security.istio.io/v1` `authorizationpolicies` and
//!   `peerauthentications` (every kind the agent's object store follows);
//! * verbs: list (`kind: XList`, `metadata.resourceVersion`, `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`), watch (resourceVersion, bookmarks, `timeoutSeconds`,
//!   410 Gone after a compaction or a restart), get, create (`POST`, 409 AlreadyExists),
//!   replace (`PUT`, 404 if missing, 409 Conflict on a stale resourceVersion), patch (merge and
//!   strategic merge, applied as a JSON merge patch; resourceVersion precondition), delete;
//!   server-set metadata (uid, creationTimestamp, resourceVersion, generation);
//! * discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, `/version`) in the
//!   plain form, which kubectl falls back to when it asks for aggregated discovery;
//! * bearer-token authentication, RBAC authorization ([`rbac`]), an audit log ([`audit`]),
//!   TLS with a generated CA ([`tls`]), errors as `Status` objects.
//!
//! Not implemented: the OpenAPI documents (`/openapi/v2`, `/openapi/v3` answer 404, so kubectl
//! must run with `--validate=false`), server-side apply, JSON patch, label selectors, paging
//! (`limit`/`continue` are ignored: the whole list always fits), `deletecollection`, the Table
//! form of lists (kubectl prints the plain objects itself), admission and validation,
//! finalizers and graceful deletion, subresources (`status` is served as the object itself: a
//! Node created by `POST` keeps its `status`, where the real server would take status only
//! through the `status` subresource, which kubectl 1.20 cannot write), namespace existence
//! checks, protobuf.

pub mod audit;
pub mod auth;
mod crud;
mod discovery;
mod harness;
mod objects;
pub mod rbac;
pub mod request;
pub mod resources;
mod response;
pub mod serve;
pub mod state;
pub mod tls;
mod watch;

pub use audit::AuditRecord;
pub use harness::{kubelet_node, FakeApiServer};
