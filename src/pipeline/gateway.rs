//! Stage `gateway`: the switch's own address on each network. Answers ARP
//! requests for the gateway IPv4 address, neighbour solicitations for its
//! IPv6 address (as a router), and ICMP / ICMPv6 echo requests to either, by
//! rewriting the request into the reply in place and sending it back out of
//! the ingress port. Other frames addressed to the gateway MAC are dropped as
//! `gateway-unhandled` (stages for NAT insert themselves before this one).

use std::net::Ipv4Addr;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::ndp;
use super::stage::{Stage, StageContext};
use crate::tables::topology::GatewayInfo;
use crate::wire::ethernet::EtherType;
use crate::wire::{arp, icmpv4, icmpv6};

const ARP_REQUEST: u16 = 1;
use crate::wire::PROTO_ICMP;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The gateway stage.
pub struct Gateway;

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// What the gateway does with one frame, or `None` to let it pass.
fn decide(gw: &GatewayInfo, f: &mut Frame) -> Option<Action> {
    let l3 = f.meta.l3_offset as usize;
    let to_gateway_mac = f.meta.dst == gw.mac;
    match f.meta.ethertype {
        EtherType::Arp => {
            let b = f.data();
            let op = b
                .get(l3 + 6..l3 + 8)
                .map(|o| u16::from_be_bytes([o[0], o[1]]));
            let target = ipv4_at(b, l3 + 24);
            if gw.ipv4.is_none() || target != gw.ipv4 {
                // ARP between endpoints; a reply to us we do not need.
                return to_gateway_mac.then_some(Action::Consumed);
            }
            if op != Some(ARP_REQUEST) {
                return Some(Action::Consumed);
            }
            Some(match arp::make_reply_in_place(f.data_mut(), l3, gw.mac) {
                Ok(()) => Action::Output(f.meta.in_port),
                Err(_) => Action::Drop(DropReason::Malformed),
            })
        }
        EtherType::Ipv4 if to_gateway_mac => {
            let b = f.data();
            let ihl = b.get(l3).map_or(0, |v| ((v & 0x0f) as usize) * 4);
            let is_echo_to_us = gw.ipv4.is_some()
                && ipv4_at(b, l3 + 16) == gw.ipv4
                && b.get(l3 + 9) == Some(&PROTO_ICMP)
                && b.get(l3 + ihl) == Some(&ICMP_ECHO_REQUEST);
            if !is_echo_to_us {
                return Some(Action::Drop(DropReason::GatewayUnhandled));
            }
            Some(
                match icmpv4::make_echo_reply_in_place(f.data_mut(), l3, gw.mac) {
                    Ok(()) => Action::Output(f.meta.in_port),
                    Err(_) => Action::Drop(DropReason::Malformed),
                },
            )
        }
        EtherType::Ipv6 => {
            let gw6 = gw.ipv6?;
            if ndp::solicited(f) == Some(gw6) {
                let flags = icmpv6::NA_ROUTER | icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE;
                return Some(match ndp::advertise(f, gw.mac, flags) {
                    Some(()) => Action::Output(f.meta.in_port),
                    None => Action::Drop(DropReason::Malformed),
                });
            }
            if !to_gateway_mac {
                return None;
            }
            if !ndp::is_echo_request_to(f, gw6) {
                return Some(Action::Drop(DropReason::GatewayUnhandled));
            }
            Some(match ndp::echo_reply_in_place(f.data_mut(), l3, gw.mac) {
                Some(()) => Action::Output(f.meta.in_port),
                None => Action::Drop(DropReason::Malformed),
            })
        }
        _ if to_gateway_mac => Some(Action::Drop(DropReason::GatewayUnhandled)),
        _ => None,
    }
}

impl Stage for Gateway {
    fn name(&self) -> &'static str {
        "gateway"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            let Some(gw) = cx
                .topo
                .network(f.meta.network)
                .and_then(|n| n.gateway.as_ref())
            else {
                continue;
            };
            if let Some(action) = decide(gw, f) {
                // The reply leaves with offloads already resolved.
                f.vnet = crate::wire::virtio_net::VirtioNetHdr::NONE;
                f.meta.action = action;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::pipeline::nat::tests::{topology, GW6, GW_MAC, ME6, SANDBOX};
    use crate::ports::PortId;
    use crate::tables::topology::NetworkId;
    use crate::wire::icmpv6::{self, Icmpv6Repr};
    use crate::wire::ipv6::Ipv6Repr;
    use crate::wire::IpProtocol;
    use crate::wire::MacAddr;

    /// A neighbour solicitation for the gateway from the sandbox, to `dst`
    /// (MAC, address), with or without the source link-layer option.
    fn solicitation(dst: (MacAddr, [u8; 16]), lladdr: bool) -> Vec<u8> {
        let (me, to) = (Ipv6Addr::from(ME6), Ipv6Addr::from(dst.1));
        let ns = Icmpv6Repr::NeighborSolicit {
            target_addr: Ipv6Addr::from(GW6),
            lladdr: lladdr.then_some(SANDBOX),
        };
        let len = ns.buffer_len();
        let mut b = vec![0u8; 54 + len];
        b[0..6].copy_from_slice(&dst.0 .0);
        b[6..12].copy_from_slice(&SANDBOX.0);
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        let ip = Ipv6Repr {
            src_addr: me,
            dst_addr: to,
            next_header: IpProtocol::Icmpv6,
            payload_len: len as u16,
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        };
        ip.emit(&mut b[14..54]).unwrap();
        ns.emit(&mut b[54..], &me, &to).unwrap();
        b
    }

    fn gateway(f: &mut Frame) -> Option<Action> {
        let t = topology(false);
        let gw = t
            .network(NetworkId(0))
            .and_then(|n| n.gateway.clone())
            .unwrap();
        decide(&gw, f)
    }

    #[test]
    fn solicitations_for_the_gateway_get_a_router_advertisement() {
        let group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1];
        let multicast = MacAddr([0x33, 0x33, 0xff, 0, 0, 1]);
        for (dst, lladdr) in [((multicast, group), true), ((GW_MAC, GW6), false)] {
            let mut f = Frame::parsed(&solicitation(dst, lladdr), PortId(3));
            assert_eq!(gateway(&mut f), Some(Action::Output(PortId(3))));
            let r = f.data();
            assert_eq!((&r[0..6], &r[6..12]), (&SANDBOX.0[..], &GW_MAC.0[..]));
            assert_eq!((r[20], r[21]), (58, 255), "ICMPv6, hop limit 255");
            let (gw, me) = (Ipv6Addr::from(GW6), Ipv6Addr::from(ME6));
            let p = icmpv6::Packet::new_checked(&r[54..]).unwrap();
            assert_eq!(
                Icmpv6Repr::parse(&p, &gw, &me),
                Ok(Icmpv6Repr::NeighborAdvert {
                    flags: icmpv6::NA_ROUTER | icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE,
                    target_addr: gw,
                    lladdr: Some(GW_MAC),
                })
            );
        }
        // A solicitation for another address is not the gateway's to answer.
        let mut b = solicitation((GW_MAC, GW6), true);
        let target = 54 + 8 + 15;
        b[target] = 9;
        let mut f = Frame::parsed(&b, PortId(3));
        assert_eq!(
            gateway(&mut f),
            Some(Action::Drop(DropReason::GatewayUnhandled))
        );
    }

    #[test]
    fn double_tagged_solicitations_are_answered_with_their_tags() {
        let mut b = solicitation((GW_MAC, GW6), true);
        // Outer 802.1ad tag 100, inner 802.1Q tag 200, before 0x86dd.
        b.splice(12..12, [0x88, 0xa8, 0x00, 100, 0x81, 0x00, 0x00, 200]);
        let mut f = Frame::parsed(&b, PortId(3));
        assert_eq!(f.meta.l3_offset, 22);
        assert_eq!(gateway(&mut f), Some(Action::Output(PortId(3))));
        let r = f.data();
        assert_eq!(
            &r[12..22],
            &[0x88, 0xa8, 0, 100, 0x81, 0, 0, 200, 0x86, 0xdd]
        );
        assert_eq!(r.len(), 22 + 40 + 32);
        assert_eq!(r[22 + 40], 136, "a neighbour advertisement");
    }

    #[test]
    fn echo_to_the_gateway_is_answered() {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2(SANDBOX.0, GW_MAC.0)
            .ipv6(ME6, GW6, 64)
            .icmpv6_echo_request(7, 3)
            .write(&mut b, b"hello")
            .unwrap();
        let mut f = Frame::parsed(&b, PortId(2));
        assert_eq!(gateway(&mut f), Some(Action::Output(PortId(2))));
        let p = etherparse::SlicedPacket::from_ethernet(f.data()).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not ipv6")
        };
        assert_eq!(ip.header().source(), GW6);
        assert_eq!(ip.header().destination(), ME6);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not icmpv6")
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 3 })
        );
        let sum = icmp
            .header()
            .icmp_type
            .calc_checksum(GW6, ME6, icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), sum);
        // A corrupted request is dropped, not answered.
        b[60] ^= 0xff;
        let mut f = Frame::parsed(&b, PortId(2));
        assert_eq!(gateway(&mut f), Some(Action::Drop(DropReason::Malformed)));
    }
}
