//! Cluster mesh in policy: Cilium's `policy-default-local-cluster`. A selector that does not
//! name the cluster (`io.cilium.k8s.policy.cluster`) selects only this cluster's endpoints; one
//! that names it selects that cluster's. Applied once, at load, by adding the requirement to
//! every such selector, as Cilium does when it parses a policy: a policy written for one
//! cluster never admits another cluster's pods by accident.

use crate::labels::Selector;
use crate::model::{Entity, Peer, Peers, Policy, Subject, CLUSTER_LABEL};

/// Makes every endpoint selector of `policies` that does not name a cluster select only
/// `local`'s endpoints. Selectors of reserved identities (`reserved:host`) and of nodes are
/// left alone; `fromEntities: [cluster]` becomes this cluster's endpoints, the host and the
/// remote nodes.
pub(crate) fn default_local_cluster(policies: &mut [Policy], local: &str) {
    for p in policies {
        match &mut p.subject {
            Subject::Pods { selector, .. } | Subject::Endpoints(selector) => {
                local_only(selector, local)
            }
            Subject::Nodes(_) => {}
        }
        let rules = p
            .ingress
            .iter_mut()
            .chain(p.egress.iter_mut())
            .chain(p.ingress_deny.iter_mut())
            .chain(p.egress_deny.iter_mut());
        for rule in rules {
            let Peers::List(peers) = &mut rule.peers else {
                continue;
            };
            for peer in std::mem::take(peers) {
                expand(peer, local, peers);
            }
        }
    }
}

fn local_only(selector: &mut Selector, local: &str) {
    if !selector.has_key(CLUSTER_LABEL) && !selector.names_reserved() {
        selector
            .requirements
            .push(Selector::equals(CLUSTER_LABEL, local));
    }
}

fn expand(peer: Peer, local: &str, out: &mut Vec<Peer>) {
    match peer {
        Peer::Pods { pods, namespaces } => {
            let mut selector = pods.unwrap_or_default();
            local_only(&mut selector, local);
            out.push(Peer::Pods {
                pods: Some(selector),
                namespaces,
            });
        }
        Peer::Endpoints(mut selector) => {
            local_only(&mut selector, local);
            out.push(Peer::Endpoints(selector));
        }
        Peer::Entity(Entity::Cluster) => {
            let mut selector = Selector::default();
            local_only(&mut selector, local);
            out.extend([
                Peer::Endpoints(selector),
                Peer::Entity(Entity::Host),
                Peer::Entity(Entity::RemoteNode),
            ]);
        }
        other => out.push(other),
    }
}
