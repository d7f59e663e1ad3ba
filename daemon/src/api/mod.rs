//! The admin API's contract: where the socket is, the paths it serves, and the request and
//! response types that travel on it, shared by the server (`crate::admin`) and its one client
//! ([`AgentClient`]). It holds no handler and no agent state: both sides depend on it, it
//! depends on neither.

mod client;
pub mod clustermesh;
pub mod health;
pub mod objects;
pub mod paths;
pub mod status;

pub use client::{error_chain, AgentClient, ApiError};
pub use clustermesh::ClusterMeshStatus;
pub use health::{Health, TaskState, TaskStatus};
pub use objects::{ObjectsRequest, ObjectsResponse, Sourced};
pub use paths::{socket_path, DEFAULT_RUN_DIR, SOCKET_NAME};
pub use status::{EncryptStatus, KeyState, NodeStatus, PeerStatus, StoreHealthStatus};
