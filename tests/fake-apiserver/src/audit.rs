//! The audit log: one JSON line per request (who, what, the answer's status code), flushed per
//! line so a test can read it while the server runs. Never holds a token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::rbac::Attributes;

/// One request as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub api_group: String,
    /// Empty for a non-resource request (then `path` says what was asked).
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The HTTP status code answered.
    pub code: u16,
    /// The URL path (without the query).
    #[serde(default)]
    pub path: String,
}

impl AuditRecord {
    pub fn new(a: &Attributes, code: u16) -> Self {
        Self {
            user: a.user.clone(),
            groups: a.groups.clone(),
            verb: a.verb.clone(),
            api_group: a.api_group.clone(),
            resource: a.resource.clone(),
            subresource: a.subresource.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            code,
            path: a.path.clone(),
        }
    }

    /// The request as the authorizer sees it, to replay the log against other RBAC objects.
    pub fn attributes(&self) -> Attributes {
        Attributes {
            user: self.user.clone(),
            groups: self.groups.clone(),
            verb: self.verb.clone(),
            api_group: self.api_group.clone(),
            resource: self.resource.clone(),
            subresource: self.subresource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            path: self.path.clone(),
        }
    }
}

/// Reads an audit log file written by [`AuditLog`].
pub fn read(path: &Path) -> std::io::Result<Vec<AuditRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

/// The open audit log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Opens `path` for appending (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Appends one line; a failure is reported on stderr (the request was answered anyway).
    pub fn record(&self, record: &AuditRecord) {
        let mut line = serde_json::to_string(record).expect("audit records serialise");
        line.push('\n');
        let mut file = self.file.lock().expect("audit lock: no holder panics");
        if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            eprintln!(
                "wiremesh-fake-apiserver: audit log {}: {e}",
                self.path.display()
            );
        }
    }
}
