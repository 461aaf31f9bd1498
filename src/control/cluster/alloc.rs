//! Pure choices behind cluster-wide allocation: the lowest free VNI and the
//! lowest free address. Uniqueness itself comes from etcd transactions; these
//! only pick the next candidate to try.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::records::MAX_VNI;
use crate::control::net::Ipv4Net;

/// Lowest VNI handed out automatically; lower ones are left for `--vni`.
pub const FIRST_AUTO_VNI: u32 = 256;

/// The lowest VNI from [`FIRST_AUTO_VNI`] up that is not in `taken`.
pub fn lowest_free_vni(taken: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_AUTO_VNI..=MAX_VNI).find(|v| !taken.contains(v))
}

/// Whether `ip` is a host address of `subnet` (not its network or broadcast
/// address) and not the gateway.
pub fn usable(subnet: Ipv4Net, gateway: Option<Ipv4Addr>, ip: Ipv4Addr) -> bool {
    subnet.contains(ip)
        && subnet.prefix() < 31
        && ip != subnet.addr()
        && ip != subnet.broadcast()
        && Some(ip) != gateway
}

/// The lowest usable address of `subnet` not in `taken`.
pub fn lowest_free_ip(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    (1..subnet.size().saturating_sub(1))
        .filter_map(|n| subnet.nth(n))
        .find(|&ip| usable(subnet, Some(gateway), ip) && !taken.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn vni_starts_at_256_and_fills_gaps() {
        assert_eq!(lowest_free_vni(&BTreeSet::new()), Some(256));
        assert_eq!(lowest_free_vni(&[1, 256, 257, 259].into()), Some(258));
    }

    #[test]
    fn ip_skips_network_gateway_broadcast_and_taken() {
        let net: Ipv4Net = "10.9.0.0/30".parse().expect("cidr");
        assert_eq!(
            lowest_free_ip(net, ip("10.9.0.1"), &BTreeSet::new()),
            Some(ip("10.9.0.2"))
        );
        assert_eq!(
            lowest_free_ip(net, ip("10.9.0.1"), &[ip("10.9.0.2")].into()),
            None
        );
        let net: Ipv4Net = "10.9.0.0/24".parse().expect("cidr");
        let taken = [ip("10.9.0.2"), ip("10.9.0.3")].into();
        assert_eq!(
            lowest_free_ip(net, ip("10.9.0.1"), &taken),
            Some(ip("10.9.0.4"))
        );
        assert!(!usable(net, Some(ip("10.9.0.1")), ip("10.9.0.1")));
        assert!(!usable(net, None, ip("10.9.0.0")));
        assert!(!usable(net, None, ip("10.9.0.255")));
        assert!(!usable(net, None, ip("10.9.1.1")));
        assert!(usable(net, None, ip("10.9.0.254")));
        let tiny: Ipv4Net = "10.9.0.0/31".parse().expect("cidr");
        assert_eq!(lowest_free_ip(tiny, ip("10.9.0.0"), &BTreeSet::new()), None);
    }
}
