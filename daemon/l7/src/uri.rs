//! Request paths the filter will not judge. Rules match the path as the client wrote it, but a
//! server resolves `/api/v1/products/../../admin` to `/admin`: a path rule that allows the
//! first would let the second through (Istio normalises paths before matching for this reason,
//! and Envoy rejects escaped slashes). The filter forwards requests unchanged, so instead of
//! rewriting the path it refuses (400) every path whose meaning a server could change by
//! normalising it: dot segments, and percent-encoded dots, slashes and backslashes.

/// Why the path of `target` (a request target; its query and fragment are not looked at) is
/// refused, or `None` when it is in normal form.
pub fn abnormal_path(target: &str) -> Option<&'static str> {
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path == "*" {
        return None;
    }
    if !path.starts_with('/') {
        return Some("the path does not start with /");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some("the path has a . or .. segment");
    }
    if path.contains('\\') {
        return Some("the path has a backslash");
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'%' {
            continue;
        }
        let escape = bytes.get(i + 1..i + 3).map(|e| e.to_ascii_lowercase());
        match escape.as_deref() {
            Some(b"2e") => return Some("the path has a percent-encoded dot (%2E)"),
            Some(b"2f") => return Some("the path has a percent-encoded slash (%2F)"),
            Some(b"5c") => return Some("the path has a percent-encoded backslash (%5C)"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::abnormal_path;

    #[test]
    fn paths_in_normal_form_are_judged() {
        for p in [
            "/",
            "/api/v1/products",
            "/api/v1/products?id=../x",
            "/a.b/c..d/.e",
            "/a%20b",
            "*",
            "/a//b",
        ] {
            assert_eq!(abnormal_path(p), None, "{p}");
        }
    }

    #[test]
    fn paths_a_server_could_resolve_elsewhere_are_refused() {
        for p in [
            "/api/v1/products/../../admin",
            "/api/v1/products/..",
            "/./admin",
            "/api/v1/products/%2e%2e/admin",
            "/api/v1/products/%2E%2e/admin",
            "/api/v1/products%2F..%2Fadmin",
            "/api/v1/products%5cadmin",
            "/api/v1/products\\..\\admin",
            "api/v1",
        ] {
            assert!(abnormal_path(p).is_some(), "{p}");
        }
    }
}
