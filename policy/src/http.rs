//! Cilium `rules.http`: parsed, validated and evaluated for traces (the L7 proxy that will
//! enforce them is not part of this crate).

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

/// One `rules.http` entry. Cilium documents `method`, `path` and `host` as extended POSIX
/// regular expressions matched against the whole value; an absent field matches anything.
#[derive(Debug, Clone)]
pub struct HttpRule {
    /// Where it is in the manifest (`spec.ingress[0].toPorts[0].rules.http[1]`).
    pub field: String,
    pub method: Option<Pattern>,
    pub path: Option<Pattern>,
    pub host: Option<Pattern>,
    /// `headers: ["X-Token: abc"]` (value must equal) or `["X-Token"]` (must be present),
    /// and `headerMatches` `{name, value}`.
    pub headers: Vec<(String, Option<String>)>,
}

/// A regular expression anchored at both ends, with its source kept for display.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    regex: Regex,
    shortcut: Shortcut,
}

/// Most patterns in policies are a literal (`/healthz`) or a literal then `.*`
/// (`/api/v1/.*`): those are decided by comparing strings, exactly as the regex would decide
/// them, without running it (a proxy with many rules spends its time in the regexes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shortcut {
    /// Run the regex.
    None,
    /// The whole value equals this.
    Exact(String),
    /// The value starts with this, and the rest holds no `\n` (`.` matches any character
    /// but a newline).
    Prefix(String),
}

impl Shortcut {
    fn of(source: &str) -> Self {
        let literal = |s: &str| regex::escape(s) == s;
        if literal(source) {
            return Self::Exact(source.to_string());
        }
        match source.strip_suffix(".*") {
            Some(prefix) if literal(prefix) => Self::Prefix(prefix.to_string()),
            _ => Self::None,
        }
    }
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = Regex::new(&format!("^(?:{source})$"))?;
        Ok(Self {
            source: source.to_string(),
            regex,
            shortcut: Shortcut::of(source),
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        match &self.shortcut {
            Shortcut::None => self.regex.is_match(s),
            Shortcut::Exact(literal) => s == literal,
            Shortcut::Prefix(prefix) => s
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| !rest.contains('\n')),
        }
    }
}

/// The HTTP part of a trace query.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpRequest {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl HttpRule {
    /// Whether `req` satisfies every condition of this rule. A condition on a part the
    /// request does not carry fails (the trace cannot assume a value).
    pub fn matches(&self, req: &HttpRequest) -> bool {
        let field_ok = |p: &Option<Pattern>, v: &Option<String>| match (p, v) {
            (None, _) => true,
            (Some(p), Some(v)) => p.is_match(v),
            (Some(_), None) => false,
        };
        field_ok(&self.method, &req.method)
            && field_ok(&self.path, &req.path)
            && field_ok(&self.host, &req.host)
            && self.headers.iter().all(|(name, want)| {
                // HTTP header names are case-insensitive (RFC 9110, 5.1).
                let got = req
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim());
                match (want, got) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(w), Some(g)) => w == g,
                }
            })
    }
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = &self.method {
            parts.push(format!("method={}", m.source));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path={}", p.source));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host={}", h.source));
        }
        for (k, v) in &self.headers {
            match v {
                Some(v) => parts.push(format!("header {k}: {v}")),
                None => parts.push(format!("header {k}")),
            }
        }
        if parts.is_empty() {
            parts.push("any request".to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        method: Option<&str>,
        path: Option<&str>,
        headers: &[(&str, Option<&str>)],
    ) -> HttpRule {
        HttpRule {
            field: "x".into(),
            method: method.map(|m| Pattern::new(m).expect("valid")),
            path: path.map(|p| Pattern::new(p).expect("valid")),
            host: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: Some(method.into()),
            path: Some(path.into()),
            host: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    // Cilium docs, HTTP policy: "Path is an extended POSIX regex matched against the path of
    // a request"; the regex must match the whole path (`/public` does not admit `/public/x`
    // unless written `/public/.*`).
    #[test]
    fn path_regex_is_anchored() {
        let r = rule(Some("GET"), Some("/public/.*"), &[]);
        assert!(r.matches(&req("GET", "/public/a", &[])));
        assert!(!r.matches(&req("GET", "/private/public/a", &[])));
        assert!(!r.matches(&req("POST", "/public/a", &[])));
        let r = rule(None, Some("/public"), &[]);
        assert!(!r.matches(&req("GET", "/public/x", &[])));
    }

    // Cilium docs: "Headers is a list of HTTP headers which must be present in the request.
    // If explicit values are given, the values must match."
    #[test]
    fn headers_presence_and_value() {
        let r = rule(
            None,
            None,
            &[("X-My-Header", Some("true")), ("X-Other", None)],
        );
        assert!(r.matches(&req(
            "GET",
            "/",
            &[("x-my-header", "true"), ("X-Other", "1")]
        )));
        assert!(!r.matches(&req(
            "GET",
            "/",
            &[("X-My-Header", "false"), ("X-Other", "1")]
        )));
        assert!(!r.matches(&req("GET", "/", &[("X-My-Header", "true")])));
    }

    /// Patterns that take a shortcut decide every value as their regex does. Control: each
    /// generated pattern does take one, so two different matchers are compared.
    mod shortcut {
        use super::super::{Pattern, Shortcut};
        use proptest::prelude::*;

        fn pattern() -> impl Strategy<Value = String> {
            ("[/ab]{0,4}", any::<bool>()).prop_map(
                |(l, dots)| {
                    if dots {
                        format!("{l}.*")
                    } else {
                        l
                    }
                },
            )
        }

        proptest! {
            #[test]
            fn decides_as_the_regex(source in pattern(), value in "[/ab\n.*]{0,6}") {
                let p = Pattern::new(&source).expect("valid");
                prop_assert_ne!(&p.shortcut, &Shortcut::None, "{} took no shortcut", source);
                prop_assert_eq!(p.is_match(&value), p.regex.is_match(&value), "{:?} on {:?}", source, value);
            }
        }

        #[test]
        fn patterns_with_metacharacters_run_the_regex() {
            for source in ["/a/[0-9]+", "/a.b", "(/a|/b).*", "/a.*/b", "/a-b.*"] {
                let p = Pattern::new(source).expect("valid");
                assert_eq!(p.shortcut, Shortcut::None, "{source}");
            }
            assert!(!Pattern::new("/a.*").expect("valid").is_match("/a/\n"));
            assert!(Pattern::new("/a.*").expect("valid").is_match("/a/x"));
            assert!(!Pattern::new("/a").expect("valid").is_match("/a/"));
        }
    }

    #[test]
    fn condition_on_missing_part_fails() {
        let r = rule(Some("GET"), None, &[]);
        assert!(!r.matches(&HttpRequest::default()));
        assert!(rule(None, None, &[]).matches(&HttpRequest::default()));
    }
}
