//! One endpoint's policy map and its lookup: keys as Cilium's BPF policy map has them
//! (direction, remote identity, protocol, port prefix; identity 0 and protocol 0 are
//! wildcards), a port range stored as the power-of-two-aligned prefixes that cover it. It must
//! never let an allow entry win over a deny entry found by the same lookup.

use std::collections::HashMap;

use crate::http::HttpRule;
use crate::identity::IdentityId;
use crate::model::{Direction, Protocol};

/// The wildcard identity.
pub(super) const ANY: u32 = 0;
/// The wildcard protocol.
pub(super) const ANY_PROTO: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub direction: Direction,
    pub identity: IdentityId,
    pub protocol: u8,
    /// Port (or ICMP type) with the bits below `prefix` cleared.
    pub port: u16,
    /// Number of significant leading port bits, 0..=16.
    pub prefix: u8,
}

#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub deny: bool,
    pub allow: bool,
    /// For allow entries: `None` leaves L7 unrestricted, else these HTTP rules apply.
    pub http: Option<Vec<HttpRule>>,
}

/// The outcome of one map lookup.
#[derive(Debug, Clone)]
pub struct MapVerdict {
    pub allowed: bool,
    /// Constraining L7 rules of an allowed connection (`None`: unrestricted).
    pub http: Option<Vec<HttpRule>>,
}

/// One endpoint's policy map.
#[derive(Debug, Clone, Default)]
pub struct PolicyMap {
    entries: HashMap<Key, Entry>,
}

impl PolicyMap {
    /// A map holding exactly `entries` (a later duplicate key replaces an earlier one), e.g.
    /// one decoded from the L7 proxy's configuration.
    pub fn from_entries(entries: impl IntoIterator<Item = (Key, Entry)>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// Every entry, for loading the map into the data path.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn add(&mut self, key: Key, deny: bool, http: Option<Vec<HttpRule>>) {
        let e = self.entries.entry(key).or_insert_with(|| Entry {
            deny: false,
            allow: false,
            http: Some(Vec::new()),
        });
        if deny {
            e.deny = true;
            return;
        }
        e.allow = true;
        // Union of L7 rules; a rule without L7 restrictions lifts them for this key.
        match (&mut e.http, http) {
            (Some(have), Some(more)) => have.extend(more),
            (slot, _) => *slot = None,
        }
    }

    pub fn lookup(
        &self,
        dir: Direction,
        identity: IdentityId,
        protocol: Protocol,
        port: u16,
    ) -> MapVerdict {
        let (allowed, http) = self.lookup_rules(dir, identity, protocol, port);
        MapVerdict {
            allowed,
            http: http.map(|rules| rules.into_iter().cloned().collect()),
        }
    }

    /// [`PolicyMap::lookup`] lending the HTTP rules rather than copying them (a copied regex
    /// starts with an empty match cache): whether the connection is allowed, and the rules that
    /// constrain it (`None`: unrestricted, or not allowed). The L7 filter calls this per request.
    pub fn lookup_rules(
        &self,
        dir: Direction,
        identity: IdentityId,
        protocol: Protocol,
        port: u16,
    ) -> (bool, Option<Vec<&HttpRule>>) {
        let mut allowed = false;
        let mut denied = false;
        let mut http: Option<Vec<&HttpRule>> = Some(Vec::new());
        for id in [identity, ANY] {
            for proto in [protocol.number(), ANY_PROTO] {
                for prefix in 0..=16u8 {
                    let key = Key {
                        direction: dir,
                        identity: id,
                        protocol: proto,
                        port: mask(port, prefix),
                        prefix,
                    };
                    let Some(e) = self.entries.get(&key) else {
                        continue;
                    };
                    denied |= e.deny;
                    if e.allow {
                        allowed = true;
                        match (&mut http, &e.http) {
                            (Some(have), Some(more)) => have.extend(more.iter()),
                            (slot, _) => *slot = None,
                        }
                    }
                }
            }
        }
        let allowed = allowed && !denied;
        (allowed, if allowed { http } else { None })
    }
}

fn mask(port: u16, prefix: u8) -> u16 {
    match prefix {
        0 => 0,
        p => port & (u16::MAX << (16 - u32::from(p).min(16))),
    }
}

/// Covers `lo..=hi` with aligned prefixes (at most 30 for any range).
pub fn range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = u32::from(lo);
    let end = u32::from(hi);
    while start <= end {
        // Largest aligned block starting at `start` that stays within `end`.
        let mut size: u32 = 1 << start.trailing_zeros().min(16);
        while start + size - 1 > end {
            size >>= 1;
        }
        let bits = size.trailing_zeros();
        out.push((
            u16::try_from(start).unwrap_or(u16::MAX),
            u8::try_from(16 - bits).unwrap_or(0),
        ));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_exactly() {
        for (lo, hi) in [
            (0u16, 65535u16),
            (80, 80),
            (1, 65535),
            (8000, 9000),
            (32000, 32768),
            (65535, 65535),
        ] {
            let ps = range_prefixes(lo, hi);
            assert!(ps.len() <= 30, "{lo}-{hi}: {}", ps.len());
            for port in [
                0u16, 1, 79, 80, 81, 7999, 8000, 8500, 9000, 9001, 32767, 32768, 65534, 65535,
            ] {
                let covered = ps.iter().any(|(p, len)| mask(port, *len) == *p);
                assert_eq!(covered, (lo..=hi).contains(&port), "{lo}-{hi} port {port}");
            }
        }
    }
}
