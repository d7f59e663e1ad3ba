//! The pod parts the loader reads beyond metadata: its addresses from `status` and its named
//! container ports. Values are validated here, naming the field; nothing is defaulted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::PodSpec;

use super::{parse_ip, push_unique};
use crate::error::FieldError;
use crate::model::Protocol;

/// The addresses a pod's status lists (`list_field[i].ip`), then the single one (`one_field`)
/// if not listed already.
pub(super) fn status_ips<'a>(
    list: impl Iterator<Item = &'a str>,
    one: Option<&str>,
    (list_field, one_field): (&str, &str),
) -> Result<Vec<IpAddr>, FieldError> {
    let mut ips = Vec::new();
    for (i, ip) in list.enumerate() {
        ips.push(
            parse_ip(ip)
                .map_err(|e| FieldError::new(format!("{list_field}[{i}].ip"), e.message))?,
        );
    }
    if let Some(ip) = one {
        push_unique(
            &mut ips,
            parse_ip(ip).map_err(|e| FieldError::new(one_field, e.message))?,
        );
    }
    Ok(ips)
}

/// The pod's named container ports: name → (protocol, number).
pub(super) fn named_ports(spec: &PodSpec) -> Result<BTreeMap<String, (Protocol, u16)>, FieldError> {
    let mut named_ports = BTreeMap::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let Some(port_name) = &p.name else { continue };
            let proto = match p.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(other) => {
                    return Err(FieldError::new(
                        format!("{field}.protocol"),
                        format!("unknown protocol {other:?}"),
                    ))
                }
            };
            let number = u16::try_from(p.container_port)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    FieldError::new(
                        format!("{field}.containerPort"),
                        format!("port {} is out of range (1-65535)", p.container_port),
                    )
                })?;
            if named_ports
                .insert(port_name.clone(), (proto, number))
                .is_some()
            {
                return Err(FieldError::new(
                    format!("{field}.name"),
                    format!("port name {port_name:?} is used twice in this pod"),
                ));
            }
        }
    }
    Ok(named_ports)
}
