//! `hostAddress`, `labels` and `hostNamespace`: a host without pods (a VM or bare-metal
//! machine) in the pod network, checked. Problems are collected, never fatal one by one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// `hostAddress`: an address of the pod network (inside `clusterPodCIDRs`), none of this
/// node's own pods' (outside its `podCIDRs`).
fn host_address(
    raw: Option<String>,
    pod_cidrs: &[IpNet],
    pool: &[IpNet],
    errors: &mut Vec<String>,
) -> Option<IpAddr> {
    let raw = raw?;
    let Ok(ip) = raw.parse::<IpAddr>() else {
        errors.push(format!(
            "hostAddress: {raw:?} is not an IP address (e.g. 10.244.200.1)"
        ));
        return None;
    };
    if !pool.is_empty() && !pool.iter().any(|p| p.contains(&ip)) {
        errors.push(format!(
            "hostAddress: {ip} is not inside clusterPodCIDRs ({}): pods reach the host at an \
             address of the pod network",
            pool.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some((i, net)) = pod_cidrs.iter().enumerate().find(|(_, n)| n.contains(&ip)) {
        errors.push(format!(
            "hostAddress: {ip} lies inside podCIDRs[{i}] ({net}); the host's address is no pod's"
        ));
    }
    Some(ip)
}

/// `hostAddress`, `labels` and `hostNamespace`.
pub(super) fn host(
    (address, labels, namespace): (
        Option<String>,
        Option<BTreeMap<String, String>>,
        Option<String>,
    ),
    pod_cidrs: &[IpNet],
    pool: &[IpNet],
    errors: &mut Vec<String>,
) -> (Option<IpAddr>, BTreeMap<String, String>, String) {
    let address = host_address(address, pod_cidrs, pool, errors);
    let labels = host_labels(labels, address, errors);
    (address, labels, host_namespace(namespace, errors))
}

fn host_namespace(raw: Option<String>, errors: &mut Vec<String>) -> String {
    let ns = raw.unwrap_or_else(|| "default".into());
    if !policy::names::is_dns_label(&ns) {
        errors.push(format!(
            "hostNamespace: {ns:?} is not a namespace name (a lowercase RFC 1123 label)"
        ));
    }
    ns
}

/// `labels`: Kubernetes label syntax, and only with `hostAddress` (the address they label).
fn host_labels(
    raw: Option<BTreeMap<String, String>>,
    host_address: Option<IpAddr>,
    errors: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let labels = raw.unwrap_or_default();
    if !labels.is_empty() && host_address.is_none() {
        errors.push(
            "labels: needs hostAddress (a host's labels are its endpoint's, at that address)"
                .into(),
        );
    }
    for (k, v) in &labels {
        if !is_label_key(k) {
            errors.push(format!(
                "labels: key {k:?} is not a label key ([prefix/]name, name 1-63 characters of \
                 [A-Za-z0-9._-], starting and ending alphanumeric)"
            ));
        }
        if !(v.is_empty() || is_label_name(v)) {
            errors.push(format!(
                "labels.{k}: value {v:?} is not a label value (at most 63 characters of \
                 [A-Za-z0-9._-], starting and ending alphanumeric)"
            ));
        }
    }
    labels
}

/// Kubernetes' label name (and value) syntax.
fn is_label_name(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(ok_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_key(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => policy::names::is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}
