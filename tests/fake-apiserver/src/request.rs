//! What a request asks for, as kube-apiserver's `RequestInfoFactory` reads it from the method,
//! path and query: the verb, API group and version, resource and subresource, namespace, name.
//! Pure: routing, authorization and the audit log all read this one parse.

use std::collections::BTreeMap;

/// A request's query parameters, percent-decoded.
pub type Query = BTreeMap<String, String>;

pub fn query(raw: Option<&str>) -> Query {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `watch=true` (or `1`) on a collection.
pub fn is_watch(query: &Query) -> bool {
    query.get("watch").is_some_and(|w| w == "true" || w == "1")
}

/// `metadata.name=X` and `metadata.namespace=Y` terms of a `fieldSelector` (others are not
/// supported and ignored).
pub fn field_selector(query: &Query) -> (Option<String>, Option<String>) {
    let (mut name, mut namespace) = (None, None);
    for term in query
        .get("fieldSelector")
        .map_or("", String::as_str)
        .split(',')
    {
        let Some((field, value)) = term.split_once('=') else {
            continue;
        };
        let value = value.trim_start_matches('=').to_owned();
        match field {
            "metadata.name" => name = Some(value),
            "metadata.namespace" => namespace = Some(value),
            _ => {}
        }
    }
    (name, namespace)
}

/// What one request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection (for
    /// non-resource paths the lower-case HTTP method).
    pub verb: String,
    /// Empty for a non-resource request and for the core group.
    pub api_group: String,
    pub api_version: String,
    /// Empty for a non-resource request.
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

impl RequestInfo {
    pub fn is_resource_request(&self) -> bool {
        !self.resource.is_empty()
    }
}

/// Namespaces' own subresources (`/api/v1/namespaces/x/status`), not a resource inside one.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

pub fn parse(method: &str, path: &str, query: &Query) -> RequestInfo {
    let mut info = RequestInfo {
        verb: method.to_ascii_lowercase(),
        path: path.to_owned(),
        ..RequestInfo::default()
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let parts: &[&str] = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => {
            info.api_version = (*version).to_owned();
            rest
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            info.api_group = (*group).to_owned();
            info.api_version = (*version).to_owned();
            rest
        }
        _ => return info,
    };
    let mut parts = parts;
    if let ["namespaces", ns, rest @ ..] = parts {
        info.namespace = (*ns).to_owned();
        if !rest.is_empty() && !NAMESPACE_SUBRESOURCES.contains(&rest[0]) {
            parts = rest;
        }
    }
    info.resource = parts[0].to_owned();
    info.name = parts.get(1).map_or("", |n| *n).to_owned();
    info.subresource = parts.get(2).map_or("", |s| *s).to_owned();
    if parts.len() > 3 {
        // Deeper paths (`pods/x/proxy/...`) are not served; keep the verb from the method.
        info.subresource = parts[2..].join("/");
    }
    info.verb = match (method, info.name.is_empty()) {
        ("GET" | "HEAD", true) if is_watch(query) => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        (other, _) => {
            return RequestInfo {
                verb: other.to_ascii_lowercase(),
                ..info
            }
        }
    }
    .to_owned();
    // A list or watch of one name (what `kubectl delete --wait` sends) is authorized as that
    // name, as the real server does.
    if matches!(info.verb.as_str(), "list" | "watch") {
        if let (Some(name), _) = field_selector(query) {
            info.name = name;
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, path_query: &str) -> RequestInfo {
        let (path, q) = path_query.split_once('?').unwrap_or((path_query, ""));
        parse(method, path, &query(Some(q)))
    }

    #[test]
    fn reads_resource_requests() {
        let i = p("GET", "/api/v1/nodes/n1");
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str(), i.name.as_str()),
            ("get", "nodes", "n1")
        );
        let i = p("GET", "/api/v1/nodes?watch=true");
        assert_eq!(i.verb, "watch");
        let i = p(
            "GET",
            "/apis/cilium.io/v2/namespaces/a/ciliumnetworkpolicies",
        );
        assert_eq!(
            (i.verb.as_str(), i.api_group.as_str(), i.namespace.as_str()),
            ("list", "cilium.io", "a")
        );
        let i = p("PATCH", "/api/v1/nodes/n1/status");
        assert_eq!(
            (i.verb.as_str(), i.subresource.as_str()),
            ("patch", "status")
        );
        let i = p("DELETE", "/api/v1/namespaces/a/pods");
        assert_eq!(i.verb, "deletecollection");
        let i = p("GET", "/api/v1/namespaces/a");
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.namespace.as_str()),
            ("namespaces", "a", "a")
        );
        let i = p("PUT", "/api/v1/namespaces/a/finalize");
        assert_eq!(
            (i.resource.as_str(), i.subresource.as_str()),
            ("namespaces", "finalize")
        );
        let i = p(
            "GET",
            "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3Dx",
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "x"));
    }

    #[test]
    fn reads_non_resource_requests() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/cilium.io/v2",
            "/version",
            "/healthz",
        ] {
            let i = p("GET", path);
            assert!(!i.is_resource_request(), "{path}");
            assert_eq!(i.verb, "get", "{path}");
        }
    }
}
