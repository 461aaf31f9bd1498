//! Stage `ingress`: the ingress port must be attached; its network is
//! recorded; source MACs that are multicast or zero, and sources the port's
//! security settings forbid (MAC, IPv4 source, ARP sender, IPv6 source,
//! neighbour advertisement target behind any extension headers, router
//! advertisements and redirects), are dropped.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::tables::topology::PortSecurity;
use crate::wire::ethernet::EtherType;
use crate::wire::ipv6::{addr_at, walk_extension_headers};
use crate::wire::IpProtocol;

/// The ingress-checks stage.
pub struct Ingress;

/// The IPv4 source a frame claims: the IP source address, or the ARP sender.
fn claimed_ipv4(f: &Frame) -> Option<Ipv4Addr> {
    claimed_ipv4_in(f.data(), f.meta.ethertype, f.meta.l3_offset as usize)
}

/// The IPv4 source claimed by `frame` whose L3 header of type `ethertype`
/// starts at `l3`: the IP source address, or the ARP sender.
pub(crate) fn claimed_ipv4_in(frame: &[u8], ethertype: EtherType, l3: usize) -> Option<Ipv4Addr> {
    let at = match ethertype {
        EtherType::Ipv4 => l3 + 12,
        EtherType::Arp => l3 + 14,
        _ => return None,
    };
    let b = frame.get(at..at + 4)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// ICMPv6 type of a router advertisement.
const ROUTER_ADVERT: u8 = 134;
/// ICMPv6 type of a neighbour advertisement.
const NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 type of a redirect.
const REDIRECT: u8 = 137;

/// The IPv6 addresses an IPv6 frame claims as its own: the source, and the
/// target of a neighbour advertisement (the counterpart of an ARP sender),
/// wherever the extension headers put it. None when the frame may not be
/// sent at all from a secured port: router advertisements and redirects
/// (only the gateway routes; RA guard, RFC 6105), and extension headers
/// that do not parse (the target could hide behind them).
fn claimed_ipv6(f: &Frame) -> Option<[Option<Ipv6Addr>; 2]> {
    let l3 = f.meta.l3_offset as usize;
    let b = f.data();
    let source = addr_at(b, l3 + 8);
    let first = IpProtocol::from(*b.get(l3 + 6)?);
    let (proto, ext) = walk_extension_headers(b.get(l3 + 40..)?, first).ok()?;
    if proto != IpProtocol::Icmpv6 {
        return Some([source, None]);
    }
    let icmp = l3 + 40 + ext;
    match b.get(icmp) {
        Some(&NEIGHBOR_ADVERT) => Some([source, Some(addr_at(b, icmp + 8)?)]),
        Some(&ROUTER_ADVERT) | Some(&REDIRECT) => None,
        _ => Some([source, None]),
    }
}

/// Addresses a port may use without owning them: `::` (duplicate address
/// detection) and link-local ones (neighbour discovery; the gateway never
/// carries them out).
fn unowned_ipv6(ip: &Ipv6Addr) -> bool {
    ip.is_unspecified() || ip.is_unicast_link_local()
}

fn allowed(sec: &PortSecurity, f: &Frame) -> bool {
    if sec.mac.is_some_and(|m| m != f.meta.src) {
        return false;
    }
    if f.meta.ethertype == EtherType::Ipv6 {
        // A secured port never routes, with or without IPv6 addresses of
        // its own (its neighbours still take router advertisements).
        let Some(claimed) = claimed_ipv6(f) else {
            return false;
        };
        return sec.ipv6.is_empty()
            || claimed
                .iter()
                .flatten()
                .all(|ip| unowned_ipv6(ip) || sec.ipv6.contains(ip));
    }
    if sec.ipv4.is_empty() {
        return true;
    }
    match claimed_ipv4(f) {
        // 0.0.0.0 is the source of ARP probes (RFC 5227) and DHCP discovery.
        Some(ip) => ip.is_unspecified() || sec.ipv4.contains(&ip),
        None => true,
    }
}

impl Stage for Ingress {
    fn name(&self) -> &'static str {
        "ingress"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        // A batch comes from one port: look it up once, and skip the source
        // checks of a port without port security.
        let mut cached = None;
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            let (port, open) = match cached {
                Some((id, port, open)) if id == f.meta.in_port => (port, open),
                _ => {
                    let Some(port) = cx.topo.port(f.meta.in_port) else {
                        f.meta.action = Action::Drop(DropReason::UnknownPort);
                        continue;
                    };
                    let open = port.security.is_open();
                    cached = Some((f.meta.in_port, port, open));
                    (port, open)
                }
            };
            f.meta.network = port.network;
            if f.meta.src.is_multicast() || f.meta.src.is_zero() {
                f.meta.action = Action::Drop(DropReason::InvalidSource);
            } else if !open && !allowed(&port.security, f) {
                f.meta.action = Action::Drop(DropReason::Spoofed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortId;
    use crate::wire::icmpv6::Icmpv6Repr;
    use crate::wire::MacAddr;

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn sec() -> PortSecurity {
        PortSecurity {
            mac: Some(MAC),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 2)],
            ipv6: vec!["fd00::2".parse().unwrap()],
        }
    }

    fn udp6(src: &str) -> Frame {
        let src: Ipv6Addr = src.parse().unwrap();
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2(MAC.0, [2, 0, 0, 0, 0, 1])
            .ipv6(src.octets(), [0x20; 16], 64)
            .udp(1, 2)
            .write(&mut b, b"x")
            .unwrap();
        Frame::parsed(&b, PortId(1))
    }

    /// An ICMPv6 frame from the port's link-local address, behind the
    /// extension headers `ext` (whose first next-header field must already
    /// say 58 at its end), or directly after the fixed header.
    fn icmp6(ext: &[u8], first: u8, body: &[u8]) -> Frame {
        let (src, dst): (Ipv6Addr, Ipv6Addr) =
            ("fe80::2".parse().unwrap(), "fe80::1".parse().unwrap());
        let plen = ext.len() + body.len();
        let mut b = vec![0u8; 54];
        b[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        b[6..12].copy_from_slice(&MAC.0);
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        b[14..22].copy_from_slice(&[0x60, 0, 0, 0, 0, plen as u8, first, 255]);
        b[22..38].copy_from_slice(&src.octets());
        b[38..54].copy_from_slice(&dst.octets());
        b.extend_from_slice(ext);
        b.extend_from_slice(body);
        Frame::parsed(&b, PortId(1))
    }

    fn advert_body(target: &str) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) =
            ("fe80::2".parse().unwrap(), "fe80::1".parse().unwrap());
        let na = Icmpv6Repr::NeighborAdvert {
            flags: 0x20,
            target_addr: target.parse().unwrap(),
            lladdr: Some(MAC),
        };
        let mut body = vec![0u8; na.buffer_len()];
        na.emit(&mut body, &src, &dst).unwrap();
        body
    }

    fn advert(target: &str) -> Frame {
        icmp6(&[], 58, &advert_body(target))
    }

    /// Hop-by-hop header with a PadN option, then ICMPv6.
    const HOP_BY_HOP: [u8; 8] = [58, 0, 1, 4, 0, 0, 0, 0];

    #[test]
    fn advertised_targets_are_checked_behind_extension_headers() {
        let sec = sec();
        assert!(allowed(
            &sec,
            &icmp6(&HOP_BY_HOP, 0, &advert_body("fd00::2"))
        ));
        assert!(
            !allowed(&sec, &icmp6(&HOP_BY_HOP, 0, &advert_body("fd00::3"))),
            "a hop-by-hop header must not hide the target"
        );
        // Destination options (60), then hop-by-hop order does not matter.
        let dest_opts = [58u8, 0, 1, 4, 0, 0, 0, 0];
        assert!(!allowed(
            &sec,
            &icmp6(&dest_opts, 60, &advert_body("fd00::3"))
        ));
        // A chain that does not parse could hide anything.
        assert!(!allowed(
            &sec,
            &icmp6(&[58, 9, 1, 4], 0, &advert_body("fd00::2"))
        ));
    }

    #[test]
    fn router_advertisements_and_redirects_are_only_the_gateways() {
        let sec = sec();
        let ra = [134u8, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        let redirect = [137u8, 0, 0, 0, 0, 0, 0, 0];
        assert!(!allowed(&sec, &icmp6(&[], 58, &ra)), "RA guard");
        assert!(!allowed(&sec, &icmp6(&HOP_BY_HOP, 0, &ra)));
        assert!(!allowed(&sec, &icmp6(&[], 58, &redirect)));
        // Solicitations and echo stay allowed.
        assert!(allowed(&sec, &icmp6(&[], 58, &[133, 0, 0, 0, 0, 0, 0, 0])));
        assert!(allowed(&sec, &icmp6(&[], 58, &[128, 0, 0, 0, 0, 1, 0, 1])));
        let v4_only = PortSecurity {
            ipv6: vec![],
            ..sec
        };
        assert!(
            !allowed(&v4_only, &icmp6(&[], 58, &ra)),
            "on a network without IPv6 too"
        );
        assert!(allowed(&v4_only, &icmp6(&[], 58, &advert_body("fd00::3"))));
    }

    #[test]
    fn ipv6_sources_and_advertised_targets_must_be_the_ports_own() {
        let sec = sec();
        assert!(allowed(&sec, &udp6("fd00::2")));
        assert!(allowed(&sec, &udp6("fe80::1234")), "link-local");
        assert!(allowed(&sec, &udp6("::")), "duplicate address detection");
        assert!(!allowed(&sec, &udp6("fd00::3")), "another's address");
        assert!(!allowed(&sec, &udp6("2001:db8::2")));
        assert!(allowed(&sec, &advert("fd00::2")));
        assert!(allowed(&sec, &advert("fe80::2")));
        assert!(
            !allowed(&sec, &advert("fd00::3")),
            "poisoning another's entry"
        );
        // No IPv6 list: anything (ports the control plane did not restrict).
        let open = PortSecurity {
            ipv6: vec![],
            ..sec
        };
        assert!(allowed(&open, &udp6("fd00::3")));
    }
}
