//! `wiremesh apply/delete -f` on the wire: the manifests the CLI read (each with where the user
//! wrote it) and what the agent did with each object.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One manifest and where the user wrote it (`file (document N)`), for messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sourced {
    pub origin: String,
    pub manifest: Value,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ObjectsRequest {
    #[serde(default)]
    pub apply: Vec<Sourced>,
    #[serde(default)]
    pub delete: Vec<Sourced>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ObjectsResponse {
    pub configured: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    pub not_found: Vec<String>,
}
