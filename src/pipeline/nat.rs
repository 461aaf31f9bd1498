//! Stage `nat`: IPv4 and IPv6 packets that leave the network through the gateway
//! (destination outside the subnet), and connections to the gateway address
//! itself (the host's loopback on `--host-loopback` networks, replies to
//! clients of published ports), go to the gateway stack, which carries them
//! over host sockets. Internal networks drop them, and so does every network
//! for another network's subnet.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::ndp::{ECHO_REQUEST, PROTO_ICMPV6};
use super::stage::{Stage, StageContext};
use crate::tables::topology::{NetworkInfo, Topology};
use crate::wire::ethernet::EtherType;
use crate::wire::ipv6::addr_at;

use crate::wire::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// The NAT hand-off stage.
pub struct Nat;

fn decide(topo: &Topology, net: &NetworkInfo, f: &Frame) -> Option<Action> {
    let gw = net.gateway.as_ref()?;
    if f.meta.dst != gw.mac {
        return None;
    }
    let l3 = f.meta.l3_offset as usize;
    match f.meta.ethertype {
        EtherType::Ipv4 => decide4(topo, net, gw.ipv4?, f.data().get(l3..)?),
        EtherType::Ipv6 => decide6(topo, net, gw.ipv6?, f.data().get(l3..)?),
        _ => None,
    }
}

fn decide4(topo: &Topology, net: &NetworkInfo, gw4: Ipv4Addr, ip: &[u8]) -> Option<Action> {
    let ip = ip.get(..20)?;
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    if dst == gw4 {
        // Connections to the host's loopback (--host-loopback) and replies
        // to clients of published ports that appear as the gateway; the
        // stack refuses the rest with a RST or ICMP unreachable.
        return matches!(proto, PROTO_TCP | PROTO_UDP).then_some(Action::Punt);
    }
    if net.on_subnet(dst) || dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
        return None;
    }
    if net.internal {
        return Some(Action::Drop(DropReason::InternalNetwork));
    }
    // Another network of this switch: networks never exchange packets, and
    // the host has no route there (it would leak to the host's default
    // route).
    if topo.networks().any(|n| n.on_subnet(dst)) {
        return Some(Action::Drop(DropReason::Isolated));
    }
    Some(match proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => Action::Punt,
        _ => Action::Drop(DropReason::GatewayUnhandled),
    })
}

/// Like [`decide4`]; the upper-layer header must follow the fixed header
/// (no extension headers), and of ICMPv6 only echo requests leave.
fn decide6(topo: &Topology, net: &NetworkInfo, gw6: Ipv6Addr, ip: &[u8]) -> Option<Action> {
    let fixed = ip.get(..40)?;
    let (src, dst) = (addr_at(fixed, 8)?, addr_at(fixed, 24)?);
    let proto = fixed[6];
    // Only a sandbox's own address is carried: never `::` or a link-local
    // one (which port security lets any sandbox use).
    let owned = !(src.is_unspecified() || src.is_unicast_link_local());
    if dst == gw6 {
        // As for IPv4; ICMPv6 to the gateway is the gateway stage's.
        return matches!(proto, PROTO_TCP | PROTO_UDP).then_some(if owned {
            Action::Punt
        } else {
            Action::Drop(DropReason::GatewayUnhandled)
        });
    }
    if net.on_subnet6(dst)
        || dst.is_multicast()
        || dst.is_unspecified()
        || dst.is_unicast_link_local()
    {
        return None;
    }
    if net.internal {
        return Some(Action::Drop(DropReason::InternalNetwork));
    }
    if !owned {
        return Some(Action::Drop(DropReason::GatewayUnhandled));
    }
    if topo.networks().any(|n| n.on_subnet6(dst)) {
        return Some(Action::Drop(DropReason::Isolated));
    }
    Some(match proto {
        PROTO_TCP | PROTO_UDP => Action::Punt,
        PROTO_ICMPV6 if ip.get(40) == Some(&ECHO_REQUEST) => Action::Punt,
        _ => Action::Drop(DropReason::GatewayUnhandled),
    })
}

impl Stage for Nat {
    fn name(&self) -> &'static str {
        "nat"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            let Some(net) = cx.topo.network(f.meta.network) else {
                continue;
            };
            if let Some(action) = decide(cx.topo, net, f) {
                f.meta.action = action;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::ports::PortId;
    use crate::tables::topology::{GatewayInfo, NetworkId, NetworkInfo, Topology};
    use crate::wire::MacAddr;

    pub(crate) const GW_MAC: MacAddr = MacAddr([2, 0x5e, 0, 0, 0, 1]);
    pub(crate) const SANDBOX: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    pub(crate) const GW6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    pub(crate) const ME6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// Network 0: 10.0.0.0/24 and fd00::/64 behind gateway .1 / ::1
    /// (`internal` as asked); network 1: fd01::/64.
    pub(crate) fn topology(internal: bool) -> Topology {
        let mut t = Topology::default();
        let net = |id: u16, subnet6: [u8; 16]| NetworkInfo {
            id: NetworkId(id),
            name: format!("n{id}"),
            ports: vec![],
            gateway: Some(GatewayInfo {
                mac: GW_MAC,
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ipv6: Some(Ipv6Addr::from(GW6)),
            }),
            isolate: false,
            internal,
            mac_cap: 16,
            subnet4: Some((Ipv4Addr::new(10, 0, id as u8, 0), 24)),
            subnet6: Some((Ipv6Addr::from(subnet6), 64)),
            host_loopback: false,
        };
        t.set_network(net(0, GW6));
        let mut other = GW6;
        other[1] = 1;
        t.set_network(net(1, other));
        t
    }

    fn v6(dst: [u8; 16]) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        etherparse::PacketBuilder::ethernet2(SANDBOX.0, GW_MAC.0).ipv6(ME6, dst, 64)
    }

    fn decide_for(t: &Topology, bytes: &[u8]) -> Option<Action> {
        let f = Frame::parsed(bytes, PortId(1));
        decide(t, t.network(NetworkId(0)).expect("net"), &f)
    }

    #[test]
    fn ipv6_leaving_the_network_is_punted_and_the_rest_is_not() {
        let t = topology(false);
        let far = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let mut tcp = Vec::new();
        v6(far)
            .tcp(40000, 80, 1, 1000)
            .write(&mut tcp, &[])
            .unwrap();
        assert_eq!(decide_for(&t, &tcp), Some(Action::Punt));
        let mut udp = Vec::new();
        v6(GW6).udp(40000, 5000).write(&mut udp, b"x").unwrap();
        assert_eq!(decide_for(&t, &udp), Some(Action::Punt), "to the gateway");
        let mut echo = Vec::new();
        v6(far)
            .icmpv6_echo_request(7, 1)
            .write(&mut echo, b"ping")
            .unwrap();
        assert_eq!(decide_for(&t, &echo), Some(Action::Punt));
        let mut echo_gw = Vec::new();
        v6(GW6)
            .icmpv6_echo_request(7, 1)
            .write(&mut echo_gw, b"ping")
            .unwrap();
        assert_eq!(decide_for(&t, &echo_gw), None, "the gateway stage's");
        let mut reply = Vec::new();
        v6(far)
            .icmpv6_echo_reply(7, 1)
            .write(&mut reply, b"pong")
            .unwrap();
        assert_eq!(
            decide_for(&t, &reply),
            Some(Action::Drop(DropReason::GatewayUnhandled))
        );
        let mut local = Vec::new();
        let mut peer = ME6;
        peer[15] = 9;
        v6(peer).tcp(1, 2, 1, 1000).write(&mut local, &[]).unwrap();
        assert_eq!(decide_for(&t, &local), None, "on the subnet");
        let mut link_local = Vec::new();
        let mut ll = [0u8; 16];
        ll[0..2].copy_from_slice(&[0xfe, 0x80]);
        ll[15] = 7;
        v6(ll)
            .tcp(1, 2, 1, 1000)
            .write(&mut link_local, &[])
            .unwrap();
        assert_eq!(decide_for(&t, &link_local), None, "link-local");
        let mut other_net = Vec::new();
        let mut o = ME6;
        o[1] = 1;
        v6(o).tcp(1, 2, 1, 1000).write(&mut other_net, &[]).unwrap();
        assert_eq!(
            decide_for(&t, &other_net),
            Some(Action::Drop(DropReason::Isolated))
        );
        let mut from_link_local = Vec::new();
        etherparse::PacketBuilder::ethernet2(SANDBOX.0, GW_MAC.0)
            .ipv6(ll, far, 64)
            .tcp(1, 2, 1, 1000)
            .write(&mut from_link_local, &[])
            .unwrap();
        assert_eq!(
            decide_for(&t, &from_link_local),
            Some(Action::Drop(DropReason::GatewayUnhandled)),
            "only a sandbox's own address leaves"
        );
        let internal = topology(true);
        assert_eq!(
            decide_for(&internal, &tcp),
            Some(Action::Drop(DropReason::InternalNetwork))
        );
    }
}
