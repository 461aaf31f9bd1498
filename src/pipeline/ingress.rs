//! Stage `ingress`: the ingress port must be attached; its network is
//! recorded; source MACs that are multicast or zero, and sources the port's
//! security settings forbid (MAC, IPv4 source, ARP sender), are dropped.

use std::net::Ipv4Addr;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::tables::topology::PortSecurity;
use crate::wire::ethernet::EtherType;

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

fn allowed(sec: &PortSecurity, f: &Frame) -> bool {
    if sec.mac.is_some_and(|m| m != f.meta.src) {
        return false;
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
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            let Some(port) = cx.topo.port(f.meta.in_port) else {
                f.meta.action = Action::Drop(DropReason::UnknownPort);
                continue;
            };
            f.meta.network = port.network;
            if f.meta.src.is_multicast() || f.meta.src.is_zero() {
                f.meta.action = Action::Drop(DropReason::InvalidSource);
            } else if !allowed(&port.security, f) {
                f.meta.action = Action::Drop(DropReason::Spoofed);
            }
        }
    }
}
