//! The crate's errors; each carries the offending value.

/// A problem with one field of one resource, before the loader adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the resource root: `spec.ingress[0].ports[1].port`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a set of manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: document {document}: invalid YAML: {source}")]
    Yaml {
        file: String,
        document: usize,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{file}: document {document}: {message}")]
    Document {
        file: String,
        document: usize,
        message: String,
    },
    /// `file: NetworkPolicy default/allow-dns: spec.ingress[0].ports[1].port: message`
    #[error("{file}: {resource}: {field}: {message}")]
    Invalid {
        file: String,
        resource: String,
        field: String,
        message: String,
    },
    #[error("{file}: {resource}: defined twice (also in {first_file})")]
    Duplicate {
        file: String,
        resource: String,
        first_file: String,
    },
}

/// Why a trace query cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0:?} is neither namespace/pod nor an IP address")]
    BadPeer(String),
    #[error("pod {0} is not in the manifests")]
    UnknownPod(String),
    #[error("pod {0} is host-network: name its node's IP address instead")]
    HostNetworkPod(String),
    #[error("{protocol} needs a port")]
    MissingPort { protocol: String },
    #[error("invalid port {0:?} (expected PORT or PORT/PROTO, PROTO one of TCP, UDP, SCTP, ICMP, ICMPv6)")]
    BadPort(String),
    #[error("unknown protocol {0:?} (expected TCP, UDP, SCTP, ICMP or ICMPv6)")]
    BadProtocol(String),
    #[error("invalid query line {line}: {message}")]
    BadQueryLine { line: usize, message: String },
}
