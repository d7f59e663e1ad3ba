//! Small value parsers shared by the NetworkPolicy and Cilium converters.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a value is refused; the converter adds the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error(
        "{0:?} is neither a port number nor a valid port name (IANA service name: \
             at most 15 lower-case letters, digits and '-')"
    )]
    PortName(String),
}

/// Parses `a.b.c.d/n` or `x::/n` (host bits are masked off, as `net.ParseCIDR` does). With
/// `bare_ip`, a plain address is taken as a single-address prefix (Cilium accepts that).
pub fn parse_cidr(s: &str, bare_ip: bool) -> Result<IpNet, ValueError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if bare_ip {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
    }
    Err(ValueError::Cidr(s.to_string()))
}

/// An IANA service name as Kubernetes validates a named port: at most 15 characters,
/// lower-case letters, digits and '-', at least one letter, no leading, trailing or doubled
/// '-'.
pub fn valid_port_name(name: &str) -> Result<(), ValueError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(ValueError::PortName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.1.2.3/8", false).expect("valid").to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_cidr("10.1.2.3", false).is_err());
        assert_eq!(
            parse_cidr("10.1.2.3", true).expect("valid").to_string(),
            "10.1.2.3/32"
        );
        assert!(parse_cidr("10.0.0.0/33", false).is_err());
    }

    #[test]
    fn port_names() {
        assert!(valid_port_name("http").is_ok());
        assert!(valid_port_name("dns-tcp").is_ok());
        assert!(valid_port_name("HTTP").is_err());
        assert!(valid_port_name("8080").is_err());
        assert!(valid_port_name("a-very-long-port-name").is_err());
    }
}
