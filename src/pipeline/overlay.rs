//! Stage `overlay` (before `forward`), on overlay networks only: answers a
//! local endpoint's broadcast ARP request for a remote endpoint's IPv4
//! address, and its neighbour solicitation for a remote endpoint's IPv6
//! address, itself (ARP/NDP suppression: the request never crosses the
//! tunnel),
//! sends unicast to a control-plane remote straight to its VTEP's tunnel
//! port, and enforces split horizon (a frame from one remote VTEP is never
//! relayed to another). Unknown unicast and the tunnel side of flooding are
//! handled by the worker's flood (see `worker::flood`).

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::ndp::{advertise, ns_target};
use super::stage::{Stage, StageContext};
use crate::clock::Millis;
use crate::tables::mac::MacTable;
use crate::tables::overlay::OverlayNet;
use crate::tables::topology::Topology;
use crate::wire::ethernet::EtherType;
use crate::wire::icmpv6::{NA_OVERRIDE, NA_SOLICITED};
use crate::wire::{arp, MacAddr};

const ARP_REQUEST: u16 = 1;

/// The overlay stage.
pub struct Overlay;

/// What the overlay does with one frame of an overlay network, or `None` to
/// leave it to `forward`.
pub fn decide(
    topo: &Topology,
    net: &OverlayNet,
    mac: &MacTable,
    now: Millis,
    f: &mut Frame,
) -> Option<Action> {
    let from_tunnel = topo.overlay.is_tunnel(f.meta.in_port);
    let isolate = topo.network(f.meta.network).is_some_and(|n| n.isolate);
    if f.meta.dst.is_multicast() {
        if from_tunnel {
            return None;
        }
        if f.meta.ethertype == EtherType::Ipv6 {
            let remote = ns_target(f).and_then(|ip| net.by_ipv6.get(&ip).copied())?;
            if isolate {
                return Some(Action::Drop(DropReason::Isolated));
            }
            return Some(match advertise(f, remote, NA_SOLICITED | NA_OVERRIDE) {
                Some(()) => Action::Output(f.meta.in_port),
                None => Action::Drop(DropReason::Malformed),
            });
        }
        if f.meta.ethertype != EtherType::Arp || f.meta.dst != MacAddr::BROADCAST {
            return None;
        }
        let remote = arp_request_target(f).and_then(|ip| net.by_ipv4.get(&ip).copied())?;
        if isolate {
            return Some(Action::Drop(DropReason::Isolated));
        }
        let l3 = usize::from(f.meta.l3_offset);
        return Some(match arp::make_reply_in_place(f.data_mut(), l3, remote) {
            Ok(()) => Action::Output(f.meta.in_port),
            Err(_) => Action::Drop(DropReason::Malformed),
        });
    }
    if let Some(r) = net.remotes.get(&f.meta.dst) {
        return Some(if from_tunnel {
            Action::Drop(DropReason::OverlaySplitHorizon)
        } else if isolate {
            Action::Drop(DropReason::Isolated)
        } else {
            Action::Output(r.port)
        });
    }
    if from_tunnel {
        let learned = mac.lookup(f.meta.network, f.meta.dst, now)?;
        if topo.overlay.is_tunnel(learned) {
            return Some(Action::Drop(DropReason::OverlaySplitHorizon));
        }
    }
    None
}

/// The target IPv4 address of an ARP request.
fn arp_request_target(f: &Frame) -> Option<std::net::Ipv4Addr> {
    let l3 = usize::from(f.meta.l3_offset);
    let b = f.data();
    let op = b.get(l3 + 6..l3 + 8)?;
    if u16::from_be_bytes([op[0], op[1]]) != ARP_REQUEST {
        return None;
    }
    let t = b.get(l3 + 24..l3 + 28)?;
    Some(std::net::Ipv4Addr::new(t[0], t[1], t[2], t[3]))
}

impl Stage for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        if !cx.topo.overlay.any() {
            return;
        }
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            let Some(net) = cx.topo.overlay.net(f.meta.network) else {
                continue;
            };
            if let Some(a) = decide(cx.topo, net, cx.mac, cx.now, f) {
                f.meta.action = a;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::tables::mac::MacTable;
    use crate::tables::overlay::fixture::*;
    use crate::tables::topology::NetworkId;
    use crate::wire::icmpv6::{self, Icmpv6Repr};

    fn frame(bytes: &[u8], in_port: crate::ports::PortId) -> Frame {
        Frame::parsed(bytes, in_port)
    }

    fn decide_on(topo: &Topology, mac: &MacTable, f: &mut Frame) -> Option<Action> {
        let net = topo.overlay.net(NetworkId(0)).expect("overlay");
        decide(topo, net, mac, 0, f)
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    #[test]
    fn arp_for_a_remote_is_answered_locally() {
        let topo = topology(false);
        let mac = MacTable::new(Default::default(), 16);
        let mut f = frame(&arp_request(LOCAL, ip(1), ip(12)), LOCAL_PORT);
        assert_eq!(
            decide_on(&topo, &mac, &mut f),
            Some(Action::Output(LOCAL_PORT))
        );
        let b = f.data();
        assert_eq!(&b[0..6], &LOCAL.0, "to the requester");
        assert_eq!(&b[6..12], &REMOTE_C.0, "from the remote");
        assert_eq!(&b[20..22], &[0, 2], "reply");
        assert_eq!(&b[22..28], &REMOTE_C.0, "sender MAC");
        assert_eq!(&b[28..32], &[10, 0, 0, 12], "sender IP");
        assert_eq!(&b[32..38], &LOCAL.0, "target MAC");
        assert_eq!(&b[38..42], &[10, 0, 0, 1], "target IP");
        // Unknown target: left to flooding (replicated to the VTEPs).
        let mut f = frame(&arp_request(LOCAL, ip(1), ip(77)), LOCAL_PORT);
        assert_eq!(decide_on(&topo, &mac, &mut f), None);
        // Static mode knows no remote IPs: ARP is replicated.
        let mut f = frame(&arp_request(LOCAL, ip(1), ip(12)), LOCAL_PORT);
        assert_eq!(decide_on(&topology(true), &mac, &mut f), None);
        // A remote's ARP is never answered on its behalf.
        let mut f = frame(&arp_request(REMOTE_B, ip(11), ip(12)), TUNNEL_B);
        assert_eq!(decide_on(&topo, &mac, &mut f), None);
    }

    #[test]
    fn neighbour_solicitation_for_a_remote_is_answered_locally() {
        let topo = topology(false);
        let mac = MacTable::new(Default::default(), 16);
        let me = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
        let target = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12);
        let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 12);
        let ns = Icmpv6Repr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(LOCAL),
        };
        let mut b = vec![0u8; 14 + 40 + 32];
        b[0..6].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 12]);
        b[6..12].copy_from_slice(&LOCAL.0);
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        b[14..22].copy_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
        b[22..38].copy_from_slice(&me.octets());
        b[38..54].copy_from_slice(&group.octets());
        ns.emit(&mut b[54..], &me, &group).expect("NS");
        let mut f = frame(&b, LOCAL_PORT);
        assert_eq!(
            decide_on(&topo, &mac, &mut f),
            Some(Action::Output(LOCAL_PORT))
        );
        let r = f.data();
        assert_eq!(&r[0..6], &LOCAL.0);
        assert_eq!(&r[6..12], &REMOTE_C.0);
        assert_eq!(&r[22..38], &target.octets());
        assert_eq!(&r[38..54], &me.octets());
        let p = icmpv6::Packet::new_checked(&r[54..]).expect("NA");
        assert_eq!(
            Icmpv6Repr::parse(&p, &target, &me),
            Ok(Icmpv6Repr::NeighborAdvert {
                flags: icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE,
                target_addr: target,
                lladdr: Some(REMOTE_C),
            })
        );
        // An unknown target, or a corrupted checksum, is left to flooding.
        b[60] ^= 1;
        let mut f = frame(&b, LOCAL_PORT);
        assert_eq!(decide_on(&topo, &mac, &mut f), None);
    }

    #[test]
    fn unicast_to_a_remote_goes_to_its_vtep() {
        let topo = topology(false);
        let mac = MacTable::new(Default::default(), 16);
        let mut f = frame(&ipv4_frame(REMOTE_C, LOCAL, ip(1)), LOCAL_PORT);
        assert_eq!(
            decide_on(&topo, &mac, &mut f),
            Some(Action::Output(TUNNEL_C))
        );
        let mut f = frame(&ipv4_frame(LOCAL, REMOTE_B, ip(11)), TUNNEL_B);
        assert_eq!(decide_on(&topo, &mac, &mut f), None, "to forward");
    }

    #[test]
    fn split_horizon_between_vteps() {
        let topo = topology(false);
        let mut mac = MacTable::new(Default::default(), 16);
        let mut f = frame(&ipv4_frame(REMOTE_C, REMOTE_B, ip(11)), TUNNEL_B);
        assert_eq!(
            decide_on(&topo, &mac, &mut f),
            Some(Action::Drop(DropReason::OverlaySplitHorizon))
        );
        // Static mode: a MAC learned behind C is not reachable from B.
        let learned = MacAddr([2, 5, 5, 5, 5, 5]);
        let _ = mac.learn(NetworkId(0), learned, TUNNEL_C, 0, || 16);
        let topo = topology(true);
        let mut f = frame(&ipv4_frame(learned, REMOTE_B, ip(11)), TUNNEL_B);
        assert_eq!(
            decide_on(&topo, &mac, &mut f),
            Some(Action::Drop(DropReason::OverlaySplitHorizon))
        );
        let mut f = frame(&ipv4_frame(learned, LOCAL, ip(1)), LOCAL_PORT);
        assert_eq!(
            decide_on(&topo, &mac, &mut f),
            None,
            "local to remote: forward"
        );
    }
}
