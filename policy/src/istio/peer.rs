//! PeerAuthentication: spec → [`PeerAuthn`] (validated as Istio's webhook does) and the mTLS
//! mode in force for one workload port, with Istio's precedence: port-level, then workload
//! (selector), then namespace, then mesh (root namespace), then PERMISSIVE. Here "mTLS" means
//! the connection arrived through the WireGuard tunnel from a mesh node, or from a mesh pod of
//! the same node (docs/policy.md); this file only resolves the mode, never judges traffic.

use std::collections::BTreeMap;

use super::model::{IstioId, IstioKind, IstioSettings, MtlsMode, PeerAuthn};
use super::spec::{PeerAuthenticationSpec, PortKey};
use crate::error::FieldError;
use crate::model::Endpoint;

fn mode(m: Option<&str>, field: &str) -> Result<MtlsMode, FieldError> {
    Ok(match m {
        None | Some("UNSET") => MtlsMode::Unset,
        Some("DISABLE") => MtlsMode::Disable,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        Some("STRICT") => MtlsMode::Strict,
        Some(other) => {
            return Err(FieldError::new(
                field,
                format!("unknown mode {other:?} (expected UNSET, DISABLE, PERMISSIVE or STRICT)"),
            ))
        }
    })
}

/// Converts the spec of PeerAuthentication `namespace/name`.
pub fn peer_authentication(
    spec: &PeerAuthenticationSpec,
    namespace: &str,
    name: &str,
) -> Result<PeerAuthn, FieldError> {
    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .filter(|l| !l.is_empty());
    let mut port_level = BTreeMap::new();
    let ports = spec.port_level_mtls.as_ref().filter(|m| !m.is_empty());
    if ports.is_some() && selector.is_none() {
        // Istio's validation: "portLevelMtls requires selector".
        return Err(FieldError::new(
            "spec.portLevelMtls",
            "portLevelMtls requires a selector (as Istio validates)",
        ));
    }
    for (key, m) in ports.into_iter().flatten() {
        let shown = match key {
            PortKey::Int(n) => n.to_string(),
            PortKey::Str(s) => s.clone(),
        };
        let field = format!("spec.portLevelMtls[{shown}]");
        let port = shown
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| FieldError::new(&field, format!("invalid port {shown:?}")))?;
        port_level.insert(port, mode(m.mode.as_deref(), &format!("{field}.mode"))?);
    }
    Ok(PeerAuthn {
        id: IstioId {
            kind: IstioKind::PeerAuthentication,
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        selector,
        mode: mode(
            spec.mtls.as_ref().and_then(|m| m.mode.as_deref()),
            "spec.mtls.mode",
        )?,
        port_level,
    })
}

/// The mode in force for `workload` on its port `port` (never `Unset`). With several
/// candidates at one level Istio takes the oldest; wiremesh has no creation times and takes
/// the first by name, so the answer is at least deterministic.
pub fn effective_mode(
    policies: &[PeerAuthn],
    settings: &IstioSettings,
    workload: &Endpoint,
    port: u16,
) -> MtlsMode {
    let workload_level = first_by_name(
        policies
            .iter()
            .filter(|p| p.id.namespace == workload.namespace)
            .filter(|p| {
                p.selector
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
            }),
    );
    let namespace_level = |ns: &str| {
        first_by_name(
            policies
                .iter()
                .filter(|p| p.id.namespace == ns && p.selector.is_none()),
        )
    };
    let chain = [
        workload_level.and_then(|p| p.port_level.get(&port).copied()),
        workload_level.map(|p| p.mode),
        namespace_level(&workload.namespace).map(|p| p.mode),
        namespace_level(&settings.root_namespace).map(|p| p.mode),
    ];
    chain
        .into_iter()
        .flatten()
        .find(|m| *m != MtlsMode::Unset)
        .unwrap_or(MtlsMode::Permissive)
}

fn first_by_name<'a>(v: impl Iterator<Item = &'a PeerAuthn>) -> Option<&'a PeerAuthn> {
    v.min_by(|a, b| a.id.name.cmp(&b.id.name))
}

/// Whether a connection is accepted under `mode`: `mesh` when it came through the tunnel from
/// a mesh node or from a mesh pod of the same node.
pub fn admits(mode: MtlsMode, mesh: bool) -> bool {
    mode != MtlsMode::Strict || mesh
}
