//! DNS records: what each network's gateway answers, as one immutable
//! snapshot per change. The control plane builds a new [`DnsTable`] from the
//! model after every attach, detach or alias change and publishes it through
//! [`super::DnsService`] (arc-swap); data-plane workers read the current one
//! without a lock.
//!
//! Names are scoped as in Docker: a network's zone holds only the names of
//! endpoints attached to that network, so a query from one network never sees
//! another network's sandboxes. Every zone also knows the names of all the
//! networks in the table, so that `NAME.OTHERNETWORK` is answered (NXDOMAIN)
//! rather than sent upstream. Keys are lowercase, without trailing dot.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::tables::topology::NetworkId;

/// The search domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "switchyard.internal";

/// Settings shared by every zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Search domain, lowercase, without leading or trailing dot.
    pub domain: String,
    /// TTL of local answers, in seconds (0 like aardvark-dns: containers come
    /// and go).
    pub ttl: u32,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            domain: DEFAULT_DOMAIN.into(),
            ttl: 0,
        }
    }
}

/// The longest search domain: the longest name answered,
/// `tasks.NAME.NETWORK.DOMAIN` with 63-character names, then still fits the
/// 253 characters a domain name may have (255 bytes on the wire).
pub const MAX_DOMAIN_LEN: usize = 253 - "tasks.".len() - 2 * (63 + 1);

impl DnsSettings {
    /// Settings with a user-given domain, normalised (lowercase, no dots at
    /// either end). `None` if the domain is empty or not a valid name.
    pub fn new(domain: &str, ttl: u32) -> Option<DnsSettings> {
        let d = domain.trim_matches('.').to_ascii_lowercase();
        let valid = !d.is_empty()
            && d.len() <= MAX_DOMAIN_LEN
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        valid.then_some(DnsSettings { domain: d, ttl })
    }
}

/// One endpoint as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The endpoint's own name.
    pub name: String,
    /// Extra names (service names shared with other endpoints allowed).
    pub aliases: Vec<String>,
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Port advertised in SRV answers (first published container port, or 0).
    pub srv_port: u16,
}

/// A network as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRecords {
    /// Data-plane index of the network.
    pub id: NetworkId,
    /// The network's name (so `NAME.NETWORK` resolves).
    pub name: String,
    /// Whether names outside the zone may be forwarded upstream (false for
    /// `--internal` networks).
    pub forward: bool,
    /// MTU of the network (bounds UDP answers).
    pub mtu: u16,
    /// The network's subnets as (address, prefix length): reverse names in
    /// them are answered here, NXDOMAIN when unknown.
    pub subnets: Vec<(IpAddr, u8)>,
    /// Endpoints attached to the network.
    pub endpoints: Vec<EndpointRecord>,
}

/// A name's data in one zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRecord {
    /// IPv4 addresses, one per endpoint carrying the name.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses.
    pub v6: Vec<Ipv6Addr>,
    /// SRV targets: (wire-format FQDN of the endpoint, port).
    pub targets: Vec<(Box<[u8]>, u16)>,
}

/// One network's names.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// The network's name, lowercase.
    pub network: Box<[u8]>,
    /// Forwarding allowed.
    pub forward: bool,
    /// MTU of the network.
    pub mtu: u16,
    /// Names (endpoint names and aliases), lowercase.
    pub names: HashMap<Box<[u8]>, NameRecord>,
    /// Proper parents of dotted names (`b` of `a.b`), lowercase: they exist
    /// as empty non-terminals.
    pub parents: HashSet<Box<[u8]>>,
    /// Reverse records: address to the wire-format FQDN of its endpoint.
    pub ptr: HashMap<IpAddr, Box<[u8]>>,
    /// Subnets (address, prefix length).
    pub subnets: Vec<(IpAddr, u8)>,
    /// The names of every network in the table, this one included,
    /// lowercase: `NAME.NETWORK` and `tasks.NAME.NETWORK` of any of them
    /// belong to the switch and never go upstream (deeper names below
    /// another network do). One set shared by all the zones of a table,
    /// since the responder answers from a single zone.
    pub networks: Arc<HashSet<Box<[u8]>>>,
}

/// Every zone, indexed by network.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    /// Settings.
    pub settings: DnsSettings,
    zones: Vec<Option<Zone>>,
}

/// `label.label.` as DNS wire format (length-prefixed labels, root at the
/// end). Labels that are empty or too long are skipped rather than failing:
/// names come from the validated model.
pub fn wire_name(dotted: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(dotted.len() + 2);
    for label in dotted.split('.').filter(|l| !l.is_empty() && l.len() <= 63) {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out.truncate(255);
    out.into_boxed_slice()
}

impl DnsTable {
    /// Builds the table for `networks`.
    pub fn build(settings: DnsSettings, networks: &[NetworkRecords]) -> DnsTable {
        let names: Arc<HashSet<Box<[u8]>>> = Arc::new(
            networks
                .iter()
                .map(|n| n.name.to_ascii_lowercase().into_bytes().into())
                .collect(),
        );
        let mut zones: Vec<Option<Zone>> = Vec::new();
        for net in networks {
            let i = net.id.0 as usize;
            if zones.len() <= i {
                zones.resize(i + 1, None);
            }
            zones[i] = Some(Zone::build(&settings, net, names.clone()));
        }
        DnsTable { settings, zones }
    }

    /// The zone of a network.
    #[inline]
    pub fn zone(&self, id: NetworkId) -> Option<&Zone> {
        self.zones.get(id.0 as usize).and_then(Option::as_ref)
    }
}

impl Zone {
    fn build(
        settings: &DnsSettings,
        net: &NetworkRecords,
        networks: Arc<HashSet<Box<[u8]>>>,
    ) -> Zone {
        let mut zone = Zone {
            network: net.name.to_ascii_lowercase().into_bytes().into(),
            forward: net.forward,
            mtu: net.mtu,
            subnets: net.subnets.clone(),
            networks,
            ..Zone::default()
        };
        for ep in &net.endpoints {
            let fqdn = wire_name(&format!("{}.{}", ep.name, settings.domain));
            let mut names: Vec<String> = std::iter::once(&ep.name)
                .chain(&ep.aliases)
                .map(|n| n.to_ascii_lowercase())
                .collect();
            names.sort();
            names.dedup();
            for n in names {
                let mut parent = n.as_str();
                while let Some((_, up)) = parent.split_once('.') {
                    if !up.is_empty() {
                        zone.parents.insert(up.as_bytes().into());
                    }
                    parent = up;
                }
                let rec = zone.names.entry(n.into_bytes().into()).or_default();
                rec.v4.extend(ep.ipv4);
                rec.v6.extend(ep.ipv6);
                rec.targets.push((fqdn.clone(), ep.srv_port));
            }
            for ip in [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                zone.ptr.insert(ip, fqdn.clone());
            }
        }
        zone
    }

    /// True if `addr` lies in one of the network's subnets.
    pub fn owns(&self, addr: IpAddr) -> bool {
        self.subnets.iter().any(|&(net, len)| match (net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(len.min(128)))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }

    /// True if the lowercase `name` is a proper parent of a name in the zone.
    #[inline]
    pub fn is_parent(&self, name: &[u8]) -> bool {
        self.parents.contains(name)
    }

    /// True if the lowercase `label` names a network of the table (this one
    /// or another).
    #[inline]
    pub fn is_network(&self, label: &[u8]) -> bool {
        self.networks.contains(label)
    }

    /// The record for a lowercase name.
    #[inline]
    pub fn lookup(&self, name: &[u8]) -> Option<&NameRecord> {
        self.names.get(name)
    }
}

/// Two zones for tests: `front` (forwarding; `web1`, `web2`, service `web`)
/// and `back` (internal; `db`), both in 10.0.0.0/24.
#[cfg(test)]
pub(crate) fn sample() -> DnsTable {
    let ep = |name: &str, aliases: &[&str], last: u8| EndpointRecord {
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        ipv4: Some(Ipv4Addr::new(10, 0, 0, last)),
        ipv6: None,
        srv_port: 80,
    };
    DnsTable::build(
        DnsSettings::default(),
        &[
            NetworkRecords {
                id: NetworkId(0),
                name: "Front".into(),
                forward: true,
                mtu: 1500,
                subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24)],
                endpoints: vec![ep("Web1", &["web"], 2), ep("web2", &["web", "WEB"], 3)],
            },
            NetworkRecords {
                id: NetworkId(2),
                name: "back".into(),
                forward: false,
                mtu: 1500,
                subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24)],
                endpoints: vec![ep("db", &[], 2)],
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_scoped_and_shared() {
        let t = super::sample();
        let front = t.zone(NetworkId(0)).unwrap();
        assert_eq!(&*front.network, b"front");
        assert_eq!(
            front.lookup(b"web1").unwrap().v4,
            [Ipv4Addr::new(10, 0, 0, 2)]
        );
        let web = front.lookup(b"web").unwrap();
        assert_eq!(web.v4.len(), 2, "a service name collects every endpoint");
        assert_eq!(web.targets.len(), 2);
        assert!(front.lookup(b"db").is_none(), "db lives on another network");
        assert!(t.zone(NetworkId(1)).is_none());
        let back = t.zone(NetworkId(2)).unwrap();
        for zone in [front, back] {
            assert!(zone.is_network(b"front") && zone.is_network(b"back"));
            assert!(!zone.is_network(b"Front") && !zone.is_network(b"web1"));
        }
        assert!(!back.forward);
        assert_eq!(
            &*back.ptr[&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))],
            b"\x02db\x0aswitchyard\x08internal\x00"
        );
    }

    #[test]
    fn settings_are_normalised_and_checked() {
        let s = DnsSettings::new(".Corp.Example.", 5).unwrap();
        assert_eq!(s.domain, "corp.example");
        assert_eq!(s.ttl, 5);
        for bad in ["", ".", "a..b", "bad_label", &"x".repeat(64)] {
            assert!(DnsSettings::new(bad, 0).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_longest_name_answered_fits_a_domain_name() {
        let longest = ["a".repeat(63), "b".repeat(55)].join(".");
        assert_eq!(longest.len(), MAX_DOMAIN_LEN);
        assert_eq!(
            MAX_DOMAIN_LEN,
            253 - "tasks.".len() - 2 * (crate::control::model::MAX_NAME_LEN + 1)
        );
        let settings = DnsSettings::new(&longest, 0).expect("the longest domain");
        let too_long = ["a".repeat(63), "b".repeat(56)].join(".");
        assert!(DnsSettings::new(&too_long, 0).is_none());
        let (name, network) = ("n".repeat(63), "w".repeat(63));
        let tasks = format!("tasks.{name}.{network}.{longest}");
        assert_eq!(tasks.len(), 253);
        let net = NetworkRecords {
            id: NetworkId(0),
            name: network,
            forward: true,
            mtu: 1500,
            subnets: vec![],
            endpoints: vec![EndpointRecord {
                name: name.clone(),
                aliases: vec![],
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
                ipv6: None,
                srv_port: 0,
            }],
        };
        let zone = Zone::build(&settings, &net, Arc::default());
        let ptr = zone.ptr.get(&IpAddr::from([10, 0, 0, 2])).expect("PTR");
        assert_eq!(ptr.len(), name.len() + longest.len() + 3, "whole, not cut");
        assert_eq!(ptr.last(), Some(&0));
    }

    #[test]
    fn wire_names() {
        assert_eq!(&*wire_name("a.Bc"), b"\x01a\x02bc\x00");
        assert_eq!(&*wire_name(""), b"\x00");
    }
}
