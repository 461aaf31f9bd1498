//! Neighbour discovery and ICMPv6 echo answered in place: a neighbour
//! solicitation for an address the switch answers for (the gateway's, or a
//! remote endpoint's on an overlay) becomes the solicited advertisement, and
//! an echo request to the gateway its reply, rewritten in the frame that
//! brought it and sent back out of the ingress port.

use std::net::Ipv6Addr;

use super::frame::Frame;
use crate::wire::icmpv6::{self, Icmpv6Repr};
use crate::wire::ipv6::addr_at as ipv6_at;
use crate::wire::MacAddr;

/// IPv6 fixed header length.
pub const IPV6_HEADER: usize = 40;
pub use crate::wire::PROTO_ICMPV6;
/// A solicitation with its source link-layer address option: 24 + 8 bytes.
/// Only these are answered for remote endpoints; others are flooded.
const NDP_WITH_LLADDR: usize = 32;

/// The target of a neighbour solicitation that can be answered in place: a
/// checksummed NS with hop limit 255, a specified source and a source
/// link-layer address option.
pub fn ns_target(f: &Frame) -> Option<Ipv6Addr> {
    match solicitation(f)? {
        (target, Some(_), NDP_WITH_LLADDR) => Some(target),
        _ => None,
    }
}

/// A checksummed neighbour solicitation with hop limit 255 and a specified
/// source: its target, source link-layer address option and length.
fn solicitation(f: &Frame) -> Option<(Ipv6Addr, Option<MacAddr>, usize)> {
    let l3 = usize::from(f.meta.l3_offset);
    let b = f.data();
    let ip = b.get(l3..l3 + IPV6_HEADER)?;
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip[6] != PROTO_ICMPV6 || ip[7] != 255 {
        return None;
    }
    let (src, dst) = (ipv6_at(ip, 8)?, ipv6_at(ip, 24)?);
    if src.is_unspecified() {
        return None;
    }
    let body = b.get(l3 + IPV6_HEADER..l3 + IPV6_HEADER + plen)?;
    let p = icmpv6::Packet::new_checked(body).ok()?;
    match Icmpv6Repr::parse(&p, &src, &dst).ok()? {
        Icmpv6Repr::NeighborSolicit {
            target_addr,
            lladdr,
        } => Some((target_addr, lladdr, plen)),
        _ => None,
    }
}

/// ICMPv6 type of an echo request.
pub const ECHO_REQUEST: u8 = 128;
/// ICMPv6 type of an echo reply.
const ECHO_REPLY: u8 = 129;

/// True if the IPv6 frame is an ICMPv6 echo request to `to` (right after the
/// fixed header).
pub fn is_echo_request_to(f: &Frame, to: Ipv6Addr) -> bool {
    let l3 = usize::from(f.meta.l3_offset);
    let b = f.data();
    b.get(l3 + 6) == Some(&PROTO_ICMPV6)
        && ipv6_at(b, l3 + 24) == Some(to)
        && b.get(l3 + IPV6_HEADER) == Some(&ECHO_REQUEST)
}

/// Rewrites an ICMPv6 echo request (checked by [`is_echo_request_to`]) into
/// its reply from `our_mac`, back to the requester; `None` if the packet is
/// truncated or its checksum is wrong.
pub fn echo_reply_in_place(b: &mut [u8], l3: usize, our_mac: MacAddr) -> Option<()> {
    let ip = b.get(l3..l3 + IPV6_HEADER)?;
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (src, dst) = (ipv6_at(ip, 8)?, ipv6_at(ip, 24)?);
    let body = b.get_mut(l3 + IPV6_HEADER..l3 + IPV6_HEADER + plen)?;
    let p = icmpv6::Packet::new_checked(&mut body[..]).ok()?;
    if !p.verify_checksum(&src, &dst) || p.msg_code() != 0 {
        return None;
    }
    body[0] = ECHO_REPLY;
    let mut p = icmpv6::Packet::new_checked(&mut body[..]).ok()?;
    p.fill_checksum(&dst, &src);
    b.get_mut(l3 + 8..l3 + 24)?.copy_from_slice(&dst.octets());
    b.get_mut(l3 + 24..l3 + 40)?.copy_from_slice(&src.octets());
    b.get_mut(l3 + 7).map(|h| *h = 64)?;
    let requester = MacAddr::from_bytes(b.get(6..12)?);
    b.get_mut(0..6)?.copy_from_slice(&requester.0);
    b.get_mut(6..12)?.copy_from_slice(&our_mac.0);
    Some(())
}

/// The target of a neighbour solicitation with or without options (as a
/// sandbox sends them to confirm a neighbour it knows): checksummed, hop
/// limit 255, specified source.
pub fn solicited(f: &Frame) -> Option<Ipv6Addr> {
    solicitation(f).map(|(target, _, _)| target)
}

/// Replaces a solicitation checked by [`solicited`] or [`ns_target`] with
/// the advertisement of its target at `our_mac` (with `flags`, e.g.
/// [`icmpv6::NA_ROUTER`] for the gateway), back to the requester, whatever
/// options the solicitation carried.
pub fn advertise(f: &mut Frame, our_mac: MacAddr, flags: u8) -> Option<()> {
    use crate::wire::ipv6::Ipv6Repr;
    use crate::wire::IpProtocol;
    const NA_LEN: usize = 32;
    let l3 = usize::from(f.meta.l3_offset);
    let b = f.data();
    let requester_ip = ipv6_at(b, l3 + 8)?;
    let target = ipv6_at(b, l3 + IPV6_HEADER + 8)?;
    // Room for the Ethernet header with two VLAN tags (QinQ).
    let mut out = [0u8; 22 + IPV6_HEADER + NA_LEN];
    let n = l3 + IPV6_HEADER + NA_LEN;
    let head = out.get_mut(..l3)?;
    head.copy_from_slice(b.get(..l3)?);
    head.get_mut(0..6)?.copy_from_slice(b.get(6..12)?);
    head.get_mut(6..12)?.copy_from_slice(&our_mac.0);
    let ip = Ipv6Repr {
        src_addr: target,
        dst_addr: requester_ip,
        next_header: IpProtocol::Icmpv6,
        payload_len: NA_LEN as u16,
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    ip.emit(out.get_mut(l3..l3 + IPV6_HEADER)?).ok()?;
    let na = Icmpv6Repr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr: Some(our_mac),
    };
    na.emit(out.get_mut(l3 + IPV6_HEADER..n)?, &target, &requester_ip)
        .ok()?;
    f.fill(&out[..n]);
    Some(())
}
