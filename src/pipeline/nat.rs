//! Stage `nat`: IPv4 packets that leave the network through the gateway
//! (destination outside the subnet), and connections to the gateway address
//! itself on networks that map it to the host's loopback, go to the gateway
//! stack, which carries them over host sockets. Internal networks drop them.

use std::net::Ipv4Addr;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::tables::topology::NetworkInfo;
use crate::wire::ethernet::EtherType;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The NAT hand-off stage.
pub struct Nat;

fn decide(net: &NetworkInfo, f: &Frame) -> Option<Action> {
    let gw = net.gateway.as_ref()?;
    let gw4 = gw.ipv4?;
    if f.meta.dst != gw.mac || f.meta.ethertype != EtherType::Ipv4 {
        return None;
    }
    let l3 = f.meta.l3_offset as usize;
    let ip = f.data().get(l3..l3 + 20)?;
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
    Some(match proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => Action::Punt,
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
            if let Some(action) = decide(net, f) {
                f.meta.action = action;
            }
        }
    }
}
