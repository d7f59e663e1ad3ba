//! Which interfaces carry the policy programs: the pure decision of each policy pass, from what
//! the kernel lists now and what was attached before.
//!
//! An attachment is a (name, ifindex) pair, never a name alone: an interface re-created under
//! the same name (a pod restarted by its runtime, the TUN device of a restarted data path) is a
//! new device with no tc filters, and must get the programs again. An endpoint whose interface
//! cannot be resolved for a moment (its veth is back but its route not yet) keeps its last
//! interface name closed: the programs are attached there with no endpoint config, which drops
//! every packet, rather than left off, which would pass every packet.
//!
//! The WireGuard device always carries a program on tc ingress once it exists: the host
//! endpoint's pair when a host policy selects this node, else the tunnel program alone, which
//! hands SYNs for local pods' HTTP rules to the L7 proxy.

use std::collections::{BTreeMap, BTreeSet};

/// What carries the programs now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Interface name → the ifindex the pod programs were attached to.
    pub pods: BTreeMap<String, u32>,
    /// The ifindex of the WireGuard device the host programs were attached to.
    pub host: Option<u32>,
    /// The ifindex of the WireGuard device the tunnel program alone was attached to.
    pub tunnel: Option<u32>,
    /// Endpoint → the interface it was last enforced on.
    pub last: BTreeMap<String, String>,
}

/// What one pass sees.
pub struct Observed<'a> {
    /// Every interface: name → ifindex.
    pub links: &'a BTreeMap<String, u32>,
    /// Local endpoints → the interface (name, ifindex) their address is routed to.
    pub resolved: &'a BTreeMap<String, (String, u32)>,
    /// Local endpoints whose interface cannot be found now.
    pub unresolved: &'a [String],
    /// Interfaces to keep closed whatever the policy says (the saved ones while no set has
    /// loaded).
    pub closed: &'a [String],
    /// The WireGuard interface's name.
    pub wg: &'a str,
    /// Whether a host policy selects this node (its programs go on the WireGuard device).
    pub host_wanted: bool,
}

/// What to do with the programs on the WireGuard device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    Keep,
    /// Attach the host endpoint's programs to the device with this ifindex (new, or never
    /// attached, or carrying the tunnel program alone).
    Attach(u32),
    /// Attach the tunnel program alone (no host policy), replacing the host programs if the
    /// device carries them.
    Tunnel(u32),
    /// Forget without touching anything: the device they were on is gone.
    Forget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Interfaces to attach the pod programs to, with the ifindex seen.
    pub attach: Vec<(String, u32)>,
    /// Interfaces to remove the programs from (still the device they were attached to).
    pub detach: Vec<String>,
    /// Interfaces to forget without touching them: gone, or another device by now.
    pub forget: Vec<String>,
    pub host: HostAction,
    /// Interfaces that carry the programs without an endpoint config this pass: they drop
    /// everything.
    pub closed: Vec<String>,
}

pub fn plan(attached: &Attached, seen: &Observed) -> Plan {
    let mut want: BTreeMap<&str, u32> = seen
        .resolved
        .values()
        .map(|(name, index)| (name.as_str(), *index))
        .collect();
    let mut closed = BTreeSet::new();
    let last_names = seen
        .unresolved
        .iter()
        .filter_map(|ep| attached.last.get(ep))
        .map(String::as_str);
    for name in last_names.chain(seen.closed.iter().map(String::as_str)) {
        if let Some(&index) = seen.links.get(name) {
            if want.insert(name, index).is_none() {
                closed.insert(name.to_string());
            }
        }
    }
    let attach = want
        .iter()
        .filter(|(name, index)| attached.pods.get(**name) != Some(index))
        .map(|(name, index)| (name.to_string(), *index))
        .collect();
    let (mut detach, mut forget) = (Vec::new(), Vec::new());
    for (name, index) in &attached.pods {
        if want.contains_key(name.as_str()) {
            continue;
        }
        if seen.links.get(name) == Some(index) {
            detach.push(name.clone());
        } else {
            forget.push(name.clone());
        }
    }
    let now = seen.links.get(seen.wg).copied();
    let was = attached.host.or(attached.tunnel);
    let host = match (now, seen.host_wanted) {
        (Some(now), true) if attached.host != Some(now) => HostAction::Attach(now),
        (Some(now), false) if attached.tunnel != Some(now) => HostAction::Tunnel(now),
        (Some(_), _) => HostAction::Keep,
        (None, _) if was.is_some() => HostAction::Forget,
        (None, _) => HostAction::Keep,
    };
    Plan {
        attach,
        detach,
        forget,
        host,
        closed: closed.into_iter().collect(),
    }
}

/// Remembers each resolved endpoint's interface, and forgets endpoints the policy no longer
/// has (`unresolved` ones keep theirs).
pub fn remember(attached: &mut Attached, seen: &Observed) {
    attached
        .last
        .retain(|ep, _| seen.resolved.contains_key(ep) || seen.unresolved.iter().any(|u| u == ep));
    for (ep, (name, _)) in seen.resolved {
        attached.last.insert(ep.clone(), name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    }

    fn resolved(pairs: &[(&str, &str, u32)]) -> BTreeMap<String, (String, u32)> {
        pairs
            .iter()
            .map(|(ep, n, i)| (ep.to_string(), (n.to_string(), *i)))
            .collect()
    }

    struct Case {
        links: BTreeMap<String, u32>,
        resolved: BTreeMap<String, (String, u32)>,
        unresolved: Vec<String>,
        closed: Vec<String>,
        host_wanted: bool,
    }

    impl Case {
        fn new(l: &[(&str, u32)], r: &[(&str, &str, u32)]) -> Self {
            Self {
                links: links(l),
                resolved: resolved(r),
                unresolved: Vec::new(),
                closed: Vec::new(),
                host_wanted: false,
            }
        }

        fn seen(&self) -> Observed<'_> {
            Observed {
                links: &self.links,
                resolved: &self.resolved,
                unresolved: &self.unresolved,
                closed: &self.closed,
                wg: "wiremesh_wg0",
                host_wanted: self.host_wanted,
            }
        }
    }

    fn tunnel_on(index: u32) -> Attached {
        Attached {
            tunnel: Some(index),
            ..Attached::default()
        }
    }

    fn attached(pods: &[(&str, u32)], host: Option<u32>) -> Attached {
        Attached {
            pods: links(pods),
            host,
            tunnel: None,
            last: BTreeMap::new(),
        }
    }

    #[test]
    fn attaches_new_endpoints_and_leaves_attached_ones_alone() {
        let c = Case::new(
            &[("pod1", 10), ("pod2", 11)],
            &[("demo/a", "pod1", 10), ("demo/b", "pod2", 11)],
        );
        let p = plan(&attached(&[("pod1", 10)], None), &c.seen());
        assert_eq!(p.attach, vec![("pod2".to_string(), 11)]);
        assert!(p.detach.is_empty() && p.forget.is_empty() && p.closed.is_empty());
        assert_eq!(p.host, HostAction::Keep);
    }

    #[test]
    fn a_veth_recreated_under_the_same_name_is_attached_again() {
        let c = Case::new(&[("pod1", 42)], &[("demo/a", "pod1", 42)]);
        let p = plan(&attached(&[("pod1", 10)], None), &c.seen());
        assert_eq!(p.attach, vec![("pod1".to_string(), 42)]);
        assert!(p.detach.is_empty());
    }

    #[test]
    fn a_recreated_veth_without_its_route_yet_is_closed_not_open() {
        let mut c = Case::new(&[("pod1", 42)], &[]);
        c.unresolved = vec!["demo/a".into()];
        let mut was = attached(&[("pod1", 10)], None);
        was.last.insert("demo/a".into(), "pod1".into());
        let p = plan(&was, &c.seen());
        assert_eq!(p.attach, vec![("pod1".to_string(), 42)]);
        assert_eq!(p.closed, vec!["pod1".to_string()]);
        assert!(p.detach.is_empty() && p.forget.is_empty());
        // Still closed while it stays unresolved, without attaching again.
        let mut now = attached(&[("pod1", 42)], None);
        now.last = was.last.clone();
        let p = plan(&now, &c.seen());
        assert!(p.attach.is_empty());
        assert_eq!(p.closed, vec!["pod1".to_string()]);
    }

    #[test]
    fn gone_endpoints_are_detached_and_vanished_interfaces_forgotten() {
        let c = Case::new(&[("pod1", 10), ("pod3", 77)], &[]);
        let p = plan(
            &attached(&[("pod1", 10), ("pod2", 11), ("pod3", 12)], None),
            &c.seen(),
        );
        assert_eq!(p.detach, vec!["pod1".to_string()]);
        // pod2 is gone; pod3 is another device now, which never had our filters.
        assert_eq!(p.forget, vec!["pod2".to_string(), "pod3".to_string()]);
        assert!(p.attach.is_empty());
    }

    #[test]
    fn saved_interfaces_are_kept_closed() {
        let mut c = Case::new(&[("pod1", 10), ("pod2", 11)], &[]);
        c.closed = vec!["pod2".into(), "gone".into()];
        let p = plan(&Attached::default(), &c.seen());
        assert_eq!(p.attach, vec![("pod2".to_string(), 11)]);
        assert_eq!(p.closed, vec!["pod2".to_string()]);
    }

    #[test]
    fn host_programs_follow_the_wireguard_device_across_a_data_path_restart() {
        let mut c = Case::new(&[("wiremesh_wg0", 5)], &[]);
        c.host_wanted = true;
        assert_eq!(
            plan(&attached(&[], None), &c.seen()).host,
            HostAction::Attach(5)
        );
        assert_eq!(
            plan(&attached(&[], Some(5)), &c.seen()).host,
            HostAction::Keep
        );
        // The data path died and a new TUN device came up.
        c.links = links(&[("wiremesh_wg0", 9)]);
        assert_eq!(
            plan(&attached(&[], Some(5)), &c.seen()).host,
            HostAction::Attach(9)
        );
        // In between, no device at all.
        c.links = links(&[]);
        assert_eq!(
            plan(&attached(&[], Some(5)), &c.seen()).host,
            HostAction::Forget
        );
        c.host_wanted = false;
        c.links = links(&[("wiremesh_wg0", 9)]);
        assert_eq!(
            plan(&attached(&[], Some(9)), &c.seen()).host,
            HostAction::Tunnel(9),
            "the host policy is gone: the tunnel program replaces the host pair"
        );
        assert_eq!(plan(&tunnel_on(9), &c.seen()).host, HostAction::Keep);
        c.host_wanted = true;
        assert_eq!(plan(&tunnel_on(9), &c.seen()).host, HostAction::Attach(9));
    }

    /// Without a host policy the device still carries the tunnel program (the L7 redirect of
    /// connections from other nodes), across data path restarts too.
    #[test]
    fn the_tunnel_program_follows_the_wireguard_device() {
        let mut c = Case::new(&[("wiremesh_wg0", 5)], &[]);
        assert_eq!(
            plan(&Attached::default(), &c.seen()).host,
            HostAction::Tunnel(5)
        );
        assert_eq!(plan(&tunnel_on(5), &c.seen()).host, HostAction::Keep);
        c.links = links(&[("wiremesh_wg0", 9)]);
        assert_eq!(plan(&tunnel_on(5), &c.seen()).host, HostAction::Tunnel(9));
        c.links = links(&[]);
        assert_eq!(plan(&tunnel_on(5), &c.seen()).host, HostAction::Forget);
        assert_eq!(plan(&Attached::default(), &c.seen()).host, HostAction::Keep);
    }

    #[test]
    fn remembers_resolved_endpoints_and_keeps_unresolved_ones() {
        let mut c = Case::new(&[], &[("demo/a", "pod1", 10)]);
        c.unresolved = vec!["demo/b".into()];
        let mut a = Attached::default();
        a.last.insert("demo/b".into(), "pod2".into());
        a.last.insert("demo/gone".into(), "pod3".into());
        remember(&mut a, &c.seen());
        assert_eq!(
            a.last,
            BTreeMap::from([
                ("demo/a".to_string(), "pod1".to_string()),
                ("demo/b".to_string(), "pod2".to_string()),
            ])
        );
    }
}
