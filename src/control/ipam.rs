//! IP address management: picks subnets for new networks from the default
//! pool (skipping the host's routes and existing networks) and allocates
//! endpoint addresses inside a network's subnet. Leases are the endpoints'
//! addresses themselves, so releasing an endpoint releases its address and the
//! persisted state has a single source of truth.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::net::{Ipv4Net, Ipv6Net};

/// The default pool, tried in order and split into /24s. 10.89-10.91 follow
/// Podman's convention (10.88/16 is its default network, so we skip it);
/// 172.28-172.31 sit at the top of 172.16/12, far from Docker's 172.17 start.
pub const DEFAULT_POOL: [&str; 7] = [
    "10.89.0.0/16",
    "10.90.0.0/16",
    "10.91.0.0/16",
    "172.28.0.0/16",
    "172.29.0.0/16",
    "172.30.0.0/16",
    "172.31.0.0/16",
];

/// Length of the subnets carved out of the pool.
pub const POOL_SUBNET_PREFIX: u8 = 24;

/// Longest IPv4 prefix a network may have: /30 leaves one endpoint address
/// next to the network, gateway and broadcast addresses.
pub const MAX_V4_PREFIX: u8 = 30;

/// Longest IPv6 prefix a network may have (gateway ::1 and one endpoint).
pub const MAX_V6_PREFIX: u8 = 126;

/// Special-purpose IPv4 blocks (RFC 6890) no network may overlap: their
/// addresses are not ordinary unicast ones (and the gateway never carries
/// loopback or "this network" addresses out).
const SPECIAL_V4: [(Ipv4Addr, u8, &str); 4] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// The IPv6 ones: unspecified and loopback (`::/127`), IPv4-mapped,
/// link-local (every interface has its own there) and multicast.
const SPECIAL_V6: [(Ipv6Addr, u8, &str); 4] = [
    (Ipv6Addr::UNSPECIFIED, 127, "unspecified and loopback"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every pool subnet overlaps a host route or an existing network.
    #[error("the default address pool is exhausted (every /24 of {} overlaps a host route or a network); give the network an explicit --subnet", DEFAULT_POOL.join(", "))]
    PoolExhausted,
    /// A requested subnet overlaps another network.
    #[error(
        "subnet {subnet} overlaps network {other:?} ({other_subnet}); pick a different --subnet"
    )]
    SubnetOverlap {
        /// Requested subnet.
        subnet: String,
        /// The network it overlaps.
        other: String,
        /// That network's subnet.
        other_subnet: String,
    },
    /// A requested subnet overlaps a special-purpose block.
    #[error("subnet {subnet} overlaps {block}, the {what} block, whose addresses sandboxes cannot use; pick a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (fd00::/8 for IPv6)")]
    SpecialSubnet {
        /// Requested subnet.
        subnet: String,
        /// The block it overlaps.
        block: String,
        /// What the block is for.
        what: &'static str,
    },
    /// Subnet too small to hold an endpoint.
    #[error("subnet {0} is too small: use a prefix of /{MAX_V4_PREFIX} or shorter (/{MAX_V6_PREFIX} for IPv6)")]
    SubnetTooSmall(String),
    /// Gateway address not usable in the subnet.
    #[error("gateway {gateway} is not a host address of subnet {subnet}; pick one inside it (not the network or broadcast address)")]
    BadGateway {
        /// The gateway.
        gateway: String,
        /// The subnet.
        subnet: String,
    },
    /// An overlay network's IPv6 subnet cannot mirror its IPv4 subnet.
    #[error("IPv6 subnet {subnet6} is too small for overlay network {network:?}: its endpoints' IPv6 addresses mirror their IPv4 addresses in {subnet4}, so use a prefix of /{max_prefix} or shorter")]
    Ipv6TooSmallForOverlay {
        /// Network name.
        network: String,
        /// Its IPv4 subnet.
        subnet4: String,
        /// Its IPv6 subnet.
        subnet6: String,
        /// The longest IPv6 prefix that would do.
        max_prefix: u8,
    },
    /// Every host address of the network is taken.
    #[error("network {network:?} ({subnet}) has no free addresses; disconnect an endpoint or create a network with a larger subnet")]
    Exhausted {
        /// Network name.
        network: String,
        /// Its subnet.
        subnet: String,
    },
    /// A static address outside the network's subnet.
    #[error(
        "address {ip} is outside subnet {subnet} of network {network:?}; pick an address inside it"
    )]
    OutsideSubnet {
        /// Requested address.
        ip: String,
        /// Network name.
        network: String,
        /// Its subnet.
        subnet: String,
    },
    /// A static address that is the network, broadcast or gateway address.
    #[error("address {ip} is reserved in network {network:?} (network, broadcast or gateway address); pick another")]
    Reserved {
        /// Requested address.
        ip: String,
        /// Network name.
        network: String,
    },
    /// A static address already leased.
    #[error("address {ip} is already in use in network {network:?}; pick another or let switchyard choose")]
    InUse {
        /// Requested address.
        ip: String,
        /// Network name.
        network: String,
    },
    /// A static IPv6 address the network cannot take.
    #[error("network {network:?} cannot take a static IPv6 address: {why}")]
    NoStaticIpv6 {
        /// Network name.
        network: String,
        /// Why not.
        why: &'static str,
    },
    /// The host routing table could not be read.
    #[error("cannot read host routes from {path}: {source}")]
    Routes {
        /// File read.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where the host's IPv4 routes come from (injectable for tests).
pub trait RouteSource: Send + Sync {
    /// The destination subnets of the host's routes, default route excluded.
    fn routes(&self) -> Result<Vec<Ipv4Net>, IpamError>;
}

/// Reads `/proc/net/route` (or another file of the same format).
#[derive(Debug, Clone)]
pub struct ProcRoutes {
    /// File to read.
    pub path: PathBuf,
}

impl Default for ProcRoutes {
    fn default() -> Self {
        ProcRoutes {
            path: PathBuf::from("/proc/net/route"),
        }
    }
}

impl RouteSource for ProcRoutes {
    fn routes(&self) -> Result<Vec<Ipv4Net>, IpamError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| IpamError::Routes {
            path: self.path.clone(),
            source,
        })?;
        Ok(parse_proc_route(&text))
    }
}

/// A fixed list of routes.
#[derive(Debug, Clone, Default)]
pub struct StaticRoutes(pub Vec<Ipv4Net>);

impl RouteSource for StaticRoutes {
    fn routes(&self) -> Result<Vec<Ipv4Net>, IpamError> {
        Ok(self.0.clone())
    }
}

/// Parses the `/proc/net/route` format: a header line, then whitespace
/// separated columns where Destination (2nd) and Mask (8th) are hex in host
/// (little-endian) byte order. Unparsable lines and the default route are
/// skipped.
pub fn parse_proc_route(text: &str) -> Vec<Ipv4Net> {
    // The kernel prints the big-endian address as a native u32.
    let addr = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let dest = addr(cols.get(1)?)?;
            let mask = u32::from(addr(cols.get(7)?)?);
            let prefix = mask.leading_ones() as u8;
            let contiguous = mask.count_ones() == u32::from(prefix);
            (prefix > 0 && contiguous).then_some(())?;
            Ipv4Net::new(dest, prefix)
        })
        .collect()
}

/// Address management policy over the host's routes.
pub struct Ipam {
    routes: Box<dyn RouteSource>,
}

impl Ipam {
    /// IPAM that consults `routes` when picking subnets.
    pub fn new(routes: Box<dyn RouteSource>) -> Ipam {
        Ipam { routes }
    }

    /// The first pool /24 that overlaps neither a host route nor an existing
    /// network.
    pub fn pick_subnet(&self, existing: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
        let routes = self.routes.routes()?;
        DEFAULT_POOL
            .iter()
            .filter_map(|s| s.parse::<Ipv4Net>().ok())
            .flat_map(|block| block.subnets(POOL_SUBNET_PREFIX).collect::<Vec<_>>())
            .find(|cand| {
                !routes.iter().any(|r| r.overlaps(cand))
                    && !existing.iter().any(|e| e.overlaps(cand))
            })
            .ok_or(IpamError::PoolExhausted)
    }

    /// Checks a user-chosen subnet against the existing networks
    /// (`(name, subnet)` pairs). Host routes are not checked: the user chose.
    pub fn check_subnet(
        &self,
        subnet: Ipv4Net,
        existing: &[(String, Ipv4Net)],
    ) -> Result<(), IpamError> {
        if subnet.prefix() > MAX_V4_PREFIX {
            return Err(IpamError::SubnetTooSmall(subnet.to_string()));
        }
        check_special4(subnet)?;
        match existing.iter().find(|(_, s)| s.overlaps(&subnet)) {
            Some((name, s)) => Err(IpamError::SubnetOverlap {
                subnet: subnet.to_string(),
                other: name.clone(),
                other_subnet: s.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// Refuses an IPv4 subnet that overlaps a special-purpose block.
pub fn check_special4(subnet: Ipv4Net) -> Result<(), IpamError> {
    let hit = SPECIAL_V4.iter().find_map(|&(addr, prefix, what)| {
        let block = Ipv4Net::new(addr, prefix)?;
        block.overlaps(&subnet).then(|| (block.to_string(), what))
    });
    refuse_special(subnet.to_string(), hit)
}

/// Refuses an IPv6 subnet that overlaps a special-purpose block.
pub fn check_special6(subnet: Ipv6Net) -> Result<(), IpamError> {
    let hit = SPECIAL_V6.iter().find_map(|&(addr, prefix, what)| {
        let block = Ipv6Net::new(addr, prefix)?;
        block.overlaps(&subnet).then(|| (block.to_string(), what))
    });
    refuse_special(subnet.to_string(), hit)
}

/// The error for `subnet` if it overlaps a special-purpose block (`hit`).
fn refuse_special(subnet: String, hit: Option<(String, &'static str)>) -> Result<(), IpamError> {
    match hit {
        Some((block, what)) => Err(IpamError::SpecialSubnet {
            subnet,
            block,
            what,
        }),
        None => Ok(()),
    }
}

/// The default gateway of a subnet (its first host address) or checks a
/// chosen one.
pub fn gateway4(subnet: Ipv4Net, chosen: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
    if subnet.prefix() > MAX_V4_PREFIX {
        return Err(IpamError::SubnetTooSmall(subnet.to_string()));
    }
    let gw = chosen.unwrap_or_else(|| subnet.nth(1).unwrap_or(subnet.addr()));
    if !subnet.contains(gw) || gw == subnet.addr() || gw == subnet.broadcast() {
        return Err(IpamError::BadGateway {
            gateway: gw.to_string(),
            subnet: subnet.to_string(),
        });
    }
    Ok(gw)
}

/// The IPv6 gateway of a subnet: its `::1` address.
pub fn gateway6(subnet: Ipv6Net) -> Result<Ipv6Addr, IpamError> {
    if subnet.prefix() > MAX_V6_PREFIX {
        return Err(IpamError::SubnetTooSmall(subnet.to_string()));
    }
    subnet
        .nth(1)
        .ok_or_else(|| IpamError::SubnetTooSmall(subnet.to_string()))
}

/// Allocates an IPv4 address in `subnet` for network `network`: the static
/// `requested` one if usable, else the lowest free host address. `used` holds
/// the current leases.
pub fn allocate4(
    network: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    allocate4_striped(network, subnet, gateway, used, requested, Stripe::WHOLE)
}

/// The share of a subnet one host allocates from when several hosts share a
/// network without a cluster store: host `index` of `count` takes the
/// addresses whose offset in the subnet is `index` modulo `count`. Every host
/// derives the same split from the same peer list, so no two hand out the
/// same address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    /// This host's position.
    pub index: u32,
    /// Number of hosts.
    pub count: u32,
}

impl Stripe {
    /// The whole subnet (one host).
    pub const WHOLE: Stripe = Stripe { index: 0, count: 1 };

    fn holds(&self, offset: u64) -> bool {
        offset % u64::from(self.count.max(1)) == u64::from(self.index)
    }
}

/// A static address asked for on `network` (either family): it must lie in
/// `subnet` (`inside`), not be one of its reserved addresses, and be free.
fn check_requested<A: Ord + std::fmt::Display>(
    network: &str,
    subnet: &dyn std::fmt::Display,
    ip: A,
    inside: bool,
    reserved: bool,
    used: &BTreeSet<A>,
) -> Result<A, IpamError> {
    let (ip_s, network) = (ip.to_string(), network.to_string());
    if !inside {
        return Err(IpamError::OutsideSubnet {
            ip: ip_s,
            network,
            subnet: subnet.to_string(),
        });
    }
    if reserved {
        return Err(IpamError::Reserved { ip: ip_s, network });
    }
    if used.contains(&ip) {
        return Err(IpamError::InUse { ip: ip_s, network });
    }
    Ok(ip)
}

/// Like [`allocate4`], but picks (when no address is requested) only from
/// `stripe`. A requested address may lie anywhere in the subnet.
pub fn allocate4_striped(
    network: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
    stripe: Stripe,
) -> Result<Ipv4Addr, IpamError> {
    let reserved = |ip: Ipv4Addr| ip == subnet.addr() || ip == subnet.broadcast() || ip == gateway;
    if let Some(ip) = requested {
        return check_requested(
            network,
            &subnet,
            ip,
            subnet.contains(ip),
            reserved(ip),
            used,
        );
    }
    (1..subnet.size().saturating_sub(1))
        .filter(|n| stripe.holds(*n))
        .filter_map(|n| subnet.nth(n))
        .find(|ip| !reserved(*ip) && !used.contains(ip))
        .ok_or_else(|| IpamError::Exhausted {
            network: network.to_string(),
            subnet: subnet.to_string(),
        })
}

/// The IPv6 address of an overlay endpoint whose IPv4 address is `ipv4`:
/// the same offset into `subnet6` (10.0.9.5 -> fd00::5 for 10.0.9.0/24 and
/// fd00::/64). Hosts of an overlay hand out IPv4 addresses that never clash
/// (striped in static-peer mode, leased from the cluster store otherwise),
/// so these never clash either, with no coordination of their own. Offset 1
/// would be the IPv6 gateway (`::1`); an endpoint there (the IPv4 gateway is
/// elsewhere) takes the offset of the IPv4 broadcast address instead, which
/// no endpoint holds.
pub fn overlay_ipv6(
    network: &str,
    subnet4: Ipv4Net,
    ipv4: Ipv4Addr,
    subnet6: Ipv6Net,
) -> Result<Ipv6Addr, IpamError> {
    check_overlay_ipv6(network, subnet4, subnet6)?;
    let offset = u64::from(u32::from(ipv4).wrapping_sub(u32::from(subnet4.addr())));
    let offset = if offset == 1 {
        subnet4.size() - 1
    } else {
        offset
    };
    subnet6
        .nth(u128::from(offset))
        .ok_or_else(|| IpamError::OutsideSubnet {
            ip: ipv4.to_string(),
            network: network.to_string(),
            subnet: subnet4.to_string(),
        })
}

/// Whether `subnet6` can mirror every address of `subnet4` (see
/// [`overlay_ipv6`]).
pub fn check_overlay_ipv6(
    network: &str,
    subnet4: Ipv4Net,
    subnet6: Ipv6Net,
) -> Result<(), IpamError> {
    if subnet6.nth(u128::from(subnet4.size() - 1)).is_some() {
        return Ok(());
    }
    Err(IpamError::Ipv6TooSmallForOverlay {
        network: network.to_string(),
        subnet4: subnet4.to_string(),
        subnet6: subnet6.to_string(),
        max_prefix: 96 + subnet4.prefix(),
    })
}

/// Allocates an IPv6 address: `requested` if it is a free host address of
/// the subnet (not the subnet-router anycast `::` nor the gateway), else
/// sequentially from `::2`, skipping `used` and the gateway.
pub fn allocate6(
    network: &str,
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    used: &BTreeSet<Ipv6Addr>,
    requested: Option<Ipv6Addr>,
) -> Result<Ipv6Addr, IpamError> {
    if let Some(ip) = requested {
        let reserved = ip == gateway || ip == subnet.addr();
        return check_requested(network, &subnet, ip, subnet.contains(ip), reserved, used);
    }
    (2u128..)
        .map_while(|n| subnet.nth(n))
        .take(used.len() + 2)
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or_else(|| IpamError::Exhausted {
            network: network.to_string(),
            subnet: subnet.to_string(),
        })
}

#[cfg(test)]
mod tests {

    #[test]
    fn stripes_never_overlap() {
        let subnet: Ipv4Net = "10.9.0.0/24".parse().unwrap();
        let gw = Ipv4Addr::new(10, 9, 0, 1);
        let mut seen = BTreeSet::new();
        for index in 0..3 {
            let stripe = Stripe { index, count: 3 };
            let mut used = BTreeSet::new();
            while let Ok(ip) = allocate4_striped("n", subnet, gw, &used, None, stripe) {
                assert!(seen.insert(ip), "{ip} handed out twice");
                used.insert(ip);
            }
        }
        // Every host address but the gateway, exactly once.
        assert_eq!(seen.len(), 253);
    }

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const PROC_ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100590A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000590A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
garbage line
";

    #[test]
    fn parses_proc_net_route() {
        let r = parse_proc_route(PROC_ROUTE);
        assert_eq!(r, vec![net("10.89.0.0/24"), net("172.17.0.0/16")]);
    }

    #[test]
    fn picks_first_free_pool_subnet_skipping_routes_and_networks() {
        let ipam = Ipam::new(Box::new(StaticRoutes(parse_proc_route(PROC_ROUTE))));
        assert_eq!(ipam.pick_subnet(&[]).unwrap(), net("10.89.1.0/24"));
        assert_eq!(
            ipam.pick_subnet(&[net("10.89.1.0/24")]).unwrap(),
            net("10.89.2.0/24")
        );
        let ipam = Ipam::new(Box::new(StaticRoutes(vec![net("10.0.0.0/8")])));
        assert_eq!(ipam.pick_subnet(&[]).unwrap(), net("172.28.0.0/24"));
    }

    #[test]
    fn pool_exhaustion_is_an_error() {
        let ipam = Ipam::new(Box::new(StaticRoutes(vec![
            net("10.0.0.0/8"),
            net("172.16.0.0/12"),
        ])));
        assert!(matches!(
            ipam.pick_subnet(&[]),
            Err(IpamError::PoolExhausted)
        ));
    }

    #[test]
    fn explicit_subnet_checks() {
        let ipam = Ipam::new(Box::new(StaticRoutes::default()));
        let existing = vec![("a".to_string(), net("10.1.0.0/16"))];
        assert!(ipam.check_subnet(net("10.2.0.0/16"), &existing).is_ok());
        let e = ipam
            .check_subnet(net("10.1.5.0/24"), &existing)
            .unwrap_err();
        assert!(e.to_string().contains("overlaps network \"a\""));
        assert!(ipam.check_subnet(net("10.0.0.0/8"), &existing).is_err());
        assert!(matches!(
            ipam.check_subnet(net("10.3.0.0/31"), &existing),
            Err(IpamError::SubnetTooSmall(_))
        ));
    }

    #[test]
    fn gateway_defaults_and_checks() {
        let s = net("10.5.0.0/24");
        assert_eq!(gateway4(s, None).unwrap(), Ipv4Addr::new(10, 5, 0, 1));
        assert_eq!(
            gateway4(s, Some(Ipv4Addr::new(10, 5, 0, 254))).unwrap(),
            Ipv4Addr::new(10, 5, 0, 254)
        );
        for bad in [
            Ipv4Addr::new(10, 5, 0, 0),
            Ipv4Addr::new(10, 5, 0, 255),
            Ipv4Addr::new(10, 6, 0, 1),
        ] {
            assert!(matches!(
                gateway4(s, Some(bad)),
                Err(IpamError::BadGateway { .. })
            ));
        }
    }

    #[test]
    fn allocates_sequentially_and_static() {
        let s = net("10.5.0.0/29");
        let gw = Ipv4Addr::new(10, 5, 0, 1);
        let mut used = BTreeSet::new();
        let a = allocate4("n", s, gw, &used, None).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 5, 0, 2));
        used.insert(a);
        let b = allocate4("n", s, gw, &used, Some(Ipv4Addr::new(10, 5, 0, 6))).unwrap();
        used.insert(b);
        let err = |ip| allocate4("n", s, gw, &used, Some(ip)).unwrap_err();
        assert!(matches!(
            err(Ipv4Addr::new(10, 5, 0, 6)),
            IpamError::InUse { .. }
        ));
        assert!(matches!(
            err(Ipv4Addr::new(10, 5, 0, 9)),
            IpamError::OutsideSubnet { .. }
        ));
        assert!(matches!(
            err(Ipv4Addr::new(10, 5, 0, 7)),
            IpamError::Reserved { .. }
        ));
        assert!(matches!(err(gw), IpamError::Reserved { .. }));
        for want in [3, 4, 5] {
            let ip = allocate4("n", s, gw, &used, None).unwrap();
            assert_eq!(ip, Ipv4Addr::new(10, 5, 0, want));
            used.insert(ip);
        }
        assert!(matches!(
            allocate4("n", s, gw, &used, None),
            Err(IpamError::Exhausted { .. })
        ));
        used.remove(&Ipv4Addr::new(10, 5, 0, 4));
        assert_eq!(
            allocate4("n", s, gw, &used, None).unwrap(),
            Ipv4Addr::new(10, 5, 0, 4)
        );
    }

    #[test]
    fn slash_30_holds_one_endpoint() {
        let s = net("10.7.0.0/30");
        let gw = gateway4(s, None).unwrap();
        let mut used = BTreeSet::new();
        used.insert(allocate4("n", s, gw, &used, None).unwrap());
        assert!(matches!(
            allocate4("n", s, gw, &used, None),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn overlay_ipv6_mirrors_ipv4_and_avoids_the_gateway() {
        let s4: Ipv4Net = "10.0.9.0/24".parse().unwrap();
        let s6: Ipv6Net = "fd00:9::/64".parse().unwrap();
        let v6 = |ip: &str| overlay_ipv6("n", s4, ip.parse().unwrap(), s6).unwrap();
        assert_eq!(v6("10.0.9.5"), "fd00:9::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6("10.0.9.254"), "fd00:9::fe".parse::<Ipv6Addr>().unwrap());
        // .1 as an endpoint (gateway elsewhere) must not become ::1.
        assert_eq!(v6("10.0.9.1"), "fd00:9::ff".parse::<Ipv6Addr>().unwrap());
        let mut seen = BTreeSet::new();
        for n in 1..255u8 {
            let ip = Ipv4Addr::new(10, 0, 9, n);
            assert!(seen.insert(overlay_ipv6("n", s4, ip, s6).unwrap()));
        }
        assert!(!seen.contains(&gateway6(s6).unwrap()));
        // A /120 holds a /24's offsets; a /121 does not.
        assert!(check_overlay_ipv6("n", s4, "fd00::/120".parse().unwrap()).is_ok());
        let err = check_overlay_ipv6("n", s4, "fd00::/121".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("/120 or shorter"), "{err}");
    }

    #[test]
    fn v6_static_addresses_are_checked() {
        let s: Ipv6Net = "fd00:5::/64".parse().unwrap();
        let gw = gateway6(s).unwrap();
        let used: BTreeSet<Ipv6Addr> = ["fd00:5::2".parse().unwrap()].into();
        let ask = |ip: &str| allocate6("n", s, gw, &used, Some(ip.parse().unwrap()));
        assert_eq!(
            ask("fd00:5::99").unwrap(),
            "fd00:5::99".parse::<Ipv6Addr>().unwrap()
        );
        assert!(matches!(
            ask("fd00:6::9"),
            Err(IpamError::OutsideSubnet { .. })
        ));
        assert!(matches!(ask("fd00:5::1"), Err(IpamError::Reserved { .. })));
        assert!(matches!(ask("fd00:5::"), Err(IpamError::Reserved { .. })));
        assert!(matches!(ask("fd00:5::2"), Err(IpamError::InUse { .. })));
    }

    #[test]
    fn v6_sequential() {
        let s: Ipv6Net = "fd00::/126".parse().unwrap();
        let gw = gateway6(s).unwrap();
        let mut used = BTreeSet::new();
        let a = allocate6("n", s, gw, &used, None).unwrap();
        assert_eq!(a.to_string(), "fd00::2");
        used.insert(a);
        used.insert(allocate6("n", s, gw, &used, None).unwrap());
        assert!(allocate6("n", s, gw, &used, None).is_err());
        assert!(gateway6("fd00::/127".parse().unwrap()).is_err());
    }

    #[test]
    fn special_purpose_blocks_are_refused_their_neighbours_not() {
        let usable = |s: &str| {
            if s.contains(':') {
                check_special6(s.parse().unwrap()).is_ok()
            } else {
                check_special4(net(s)).is_ok()
            }
        };
        let refused = [
            "0.0.0.0/24",
            "127.1.0.0/16",
            "224.0.0.0/24",
            "255.255.255.252/30",
            "::/64",
            "::ffff:0:0/112",
            "fe80::/64",
            "febf::/64",
            "ff02::/64",
        ];
        let allowed = [
            "1.0.0.0/24",
            "126.255.255.0/24",
            "128.0.0.0/24",
            "223.255.255.0/24",
            "::2/127",
            "fd00::/64",
            "fec0::/64",
            "2001:db8::/64",
        ];
        for s in refused {
            assert!(!usable(s), "{s} accepted");
        }
        for s in allowed {
            assert!(usable(s), "{s} refused");
        }
    }
}
