//! Longest-prefix match from an address to a peer. One hash map per prefix length in use, probed
//! longest first: a lookup costs at most one probe per distinct prefix length (≤ 33 for IPv4,
//! ≤ 129 for IPv6) however many peers and routes there are.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Default)]
pub struct AllowedIps<T> {
    // Keyed by `Reverse(prefix_len)` so iteration goes longest prefix first.
    v4: BTreeMap<std::cmp::Reverse<u8>, HashMap<IpAddr, T>>,
    v6: BTreeMap<std::cmp::Reverse<u8>, HashMap<IpAddr, T>>,
}

impl<T: Copy + PartialEq> AllowedIps<T> {
    pub fn new() -> Self {
        Self {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }

    fn table(&mut self, net: &IpNet) -> &mut BTreeMap<std::cmp::Reverse<u8>, HashMap<IpAddr, T>> {
        match net {
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        }
    }

    /// Inserts `net`, taking it over from any other owner (WireGuard's cryptokey routing: an
    /// allowed IP belongs to exactly one peer). Returns the previous owner.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        let net = net.trunc();
        self.table(&net)
            .entry(std::cmp::Reverse(net.prefix_len()))
            .or_default()
            .insert(net.network(), value)
    }

    #[cfg(test)]
    pub fn remove(&mut self, net: IpNet) -> Option<T> {
        let net = net.trunc();
        let table = self.table(&net);
        let key = std::cmp::Reverse(net.prefix_len());
        let map = table.get_mut(&key)?;
        let old = map.remove(&net.network());
        if map.is_empty() {
            table.remove(&key);
        }
        old
    }

    pub fn remove_value(&mut self, value: T) {
        for table in [&mut self.v4, &mut self.v6] {
            for map in table.values_mut() {
                map.retain(|_, v| *v != value);
            }
            table.retain(|_, m| !m.is_empty());
        }
    }

    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        let table = match addr {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        table.iter().find_map(|(std::cmp::Reverse(len), map)| {
            let net = IpNet::new(addr, *len).expect("prefix lengths in the table are valid");
            map.get(&net.network()).copied()
        })
    }

    /// The networks owned by `value`.
    pub fn networks_of(&self, value: T) -> Vec<IpNet> {
        let mut out = Vec::new();
        for table in [&self.v4, &self.v6] {
            for (std::cmp::Reverse(len), map) in table {
                for (addr, v) in map {
                    if *v == value {
                        out.push(
                            IpNet::new(*addr, *len).expect("prefix lengths in the table are valid"),
                        );
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_ownership_moves() {
        let mut t = AllowedIps::new();
        t.insert(net("10.244.0.0/16"), 1);
        t.insert(net("10.244.2.0/24"), 2);
        t.insert(net("fd00::/64"), 3);
        assert_eq!(t.lookup("10.244.2.9".parse().unwrap()), Some(2));
        assert_eq!(t.lookup("10.244.3.9".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("10.245.0.1".parse().unwrap()), None);
        assert_eq!(t.lookup("fd00::5".parse().unwrap()), Some(3));
        assert_eq!(t.insert(net("10.244.2.0/24"), 4), Some(2));
        assert_eq!(t.networks_of(2), vec![]);
        t.remove_value(1);
        assert_eq!(t.lookup("10.244.3.9".parse().unwrap()), None);
        assert_eq!(t.remove(net("10.244.2.0/24")), Some(4));
        assert_eq!(t.lookup("10.244.2.9".parse().unwrap()), None);
    }

    proptest! {
        /// Lookup agrees with a brute-force longest-prefix scan.
        #[test]
        fn matches_linear_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..40),
        ) {
            let mut t = AllowedIps::new();
            let mut owners: Vec<(IpNet, usize)> = Vec::new();
            for (i, (addr, len)) in nets.iter().enumerate() {
                let n = IpNet::new(IpAddr::from(addr.to_be_bytes()), *len).unwrap().trunc();
                t.insert(n, i);
                owners.retain(|(o, _)| *o != n);
                owners.push((n, i));
            }
            for p in probes {
                let addr = IpAddr::from(p.to_be_bytes());
                let expected = owners
                    .iter()
                    .filter(|(n, _)| n.contains(&addr))
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map(|(_, v)| *v);
                prop_assert_eq!(t.lookup(addr), expected);
            }
        }
    }
}
