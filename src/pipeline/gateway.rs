//! Stage `gateway`: the switch's own address on each network. Answers ARP
//! requests for the gateway IPv4 address and ICMP echo requests to it, by
//! rewriting the request into the reply in place and sending it back out of
//! the ingress port. Other frames addressed to the gateway MAC are dropped as
//! `gateway-unhandled` (stages for NAT insert themselves before this one).

use std::net::Ipv4Addr;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::tables::topology::GatewayInfo;
use crate::wire::ethernet::EtherType;
use crate::wire::{arp, icmpv4};

const ARP_REQUEST: u16 = 1;
const PROTO_ICMP: u8 = 1;
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
