//! The one check of Kubernetes object names, as the API server applies it
//! (`k8s.io/apimachinery/pkg/util/validation`): a DNS-1123 subdomain (most kinds: Pods, Nodes,
//! NetworkPolicies) and a DNS-1123 label (Namespaces). Every other crate asks here, so that the
//! node name in a record, in the agent's config and in a stored object is judged the same way.
//!
//! It must never accept what the API server refuses: a name accepted here is used as a file
//! name and an etcd key segment, where `/`, `_` or an empty segment would name another object.

/// Longest DNS-1123 subdomain (`DNS1123SubdomainMaxLength`).
pub const MAX_SUBDOMAIN_LEN: usize = 253;
/// Longest DNS-1123 label (`DNS1123LabelMaxLength`).
pub const MAX_LABEL_LEN: usize = 63;

/// A lowercase RFC 1123 subdomain as Kubernetes defines it: at most 253 characters, one or more
/// labels joined by `.`, each of lowercase alphanumerics and `-`, starting and ending with an
/// alphanumeric. A label may be longer than 63 characters here: Kubernetes limits only the whole.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_SUBDOMAIN_LEN && s.split('.').all(is_label_text)
}

/// A lowercase RFC 1123 label as Kubernetes defines it: at most 63 characters of lowercase
/// alphanumerics and `-`, starting and ending with an alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= MAX_LABEL_LEN && is_label_text(s)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, of any length.
fn is_label_text(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_as_kubernetes_validates_them() {
        for ok in [
            "a",
            "node-1",
            "0",
            "a.b.c",
            "worker-1.example.com",
            "a-b--c",
        ] {
            assert!(is_dns_subdomain(ok), "{ok:?} is a subdomain");
        }
        let long_ok = ["a"; 127].join(".");
        assert_eq!(long_ok.len(), 253);
        assert!(is_dns_subdomain(&long_ok));
        for bad in [
            "", "A", "Node-1", "-a", "a-", ".a", "a.", "a..b", "a_b", "a/b", "a b", "é", "a.-b",
        ] {
            assert!(!is_dns_subdomain(bad), "{bad:?} is not a subdomain");
        }
        let too_long = ["a"; 127].join(".") + "b";
        assert_eq!(too_long.len(), 254);
        assert!(!is_dns_subdomain(&too_long));
    }

    /// Where the three copies this module replaced disagreed. The agent config's and the node
    /// record's copies refused a label over 63 characters inside a subdomain; Kubernetes accepts
    /// it (a Node may be named so). The stored objects' copy accepted `-`, `.` and empty labels
    /// anywhere; Kubernetes refuses them.
    #[test]
    fn the_cases_the_old_copies_disagreed_on_follow_kubernetes() {
        let long_label = "a".repeat(64);
        assert!(is_dns_subdomain(&long_label));
        assert!(is_dns_subdomain(&format!("{long_label}.example")));
        assert!(!is_dns_label(&long_label));
        for bad in ["-", ".", "-a", "a-", "a..b", ".a", "a."] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn labels_as_kubernetes_validates_them() {
        for ok in ["a", "kube-system", "x1", "a".repeat(63).as_str()] {
            assert!(is_dns_label(ok), "{ok:?} is a label");
        }
        for bad in ["", "a.b", "-a", "a-", "A", "a".repeat(64).as_str()] {
            assert!(!is_dns_label(bad), "{bad:?} is not a label");
        }
    }
}
