//! Receive coalescing (GRO) of plain IPv4 TCP segments: decides whether a
//! segment continues a (possibly already coalesced) one, and rewrites the
//! coalesced frame's headers into a GSO frame (virtio-net `TCPV4`, partial
//! checksum) that a TAP with offloads takes whole. The rules follow Linux's
//! `tcp_gro_receive`: same flow, same headers but the sequence number,
//! contiguous sequence, every segment but the last exactly one MSS, only
//! ACK (PSH on the last) set, identical options, and valid checksums (the
//! coalesced frame's is partial, which receivers trust). No I/O, no
//! allocation.

use core::net::IpAddr;

use super::gso::partial_pseudo_csum;
use super::virtio_net::{GsoType, VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM};
use super::{ipv4, tcp, IpProtocol};

const ETH: usize = 14;
const IP: usize = 20;
/// Largest IPv4 total length.
const MAX_IP_LEN: usize = 65_535;

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The TCP view of a frame GRO can handle: Ethernet + option-less IPv4 +
/// TCP, not fragmented, no padding.
struct Seg<'a> {
    f: &'a [u8],
    thl: usize,
}

impl<'a> Seg<'a> {
    fn parse(f: &'a [u8]) -> Option<Seg<'a>> {
        if f.len() < ETH + IP + 20 || f[12..14] != [0x08, 0x00] || f[ETH] != 0x45 {
            return None;
        }
        let tot = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
        let frag = u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]);
        // More-fragments or an offset: not a whole segment.
        if f[ETH + 9] != 6 || frag & 0x3fff != 0 || tot != f.len() - ETH {
            return None;
        }
        let thl = usize::from(f[ETH + IP + 12] >> 4) * 4;
        if thl < 20 || ETH + IP + thl > f.len() {
            return None;
        }
        Some(Seg { f, thl })
    }

    fn tcp(&self) -> &[u8] {
        &self.f[ETH + IP..ETH + IP + self.thl]
    }

    /// Whether the IPv4 header and TCP checksums hold (or the sender's
    /// kernel vouched for them): coalescing makes the checksum partial,
    /// which the receiver trusts, so it must not turn a corrupt segment
    /// into a good one.
    fn checksums_ok(&self, vnet: &VirtioNetHdr) -> bool {
        let ip = ipv4::Packet::new_unchecked(&self.f[ETH..]);
        if !ip.verify_checksum() {
            return false;
        }
        if vnet.flags & F_DATA_VALID != 0 {
            return true;
        }
        let (src, dst): (IpAddr, IpAddr) = (ip.src_addr().into(), ip.dst_addr().into());
        tcp::Packet::new_unchecked(&self.f[ETH + IP..]).verify_checksum(&src, &dst)
    }

    fn flags(&self) -> u8 {
        self.f[ETH + IP + 13]
    }

    fn seq(&self) -> u32 {
        let t = self.tcp();
        u32::from_be_bytes([t[4], t[5], t[6], t[7]])
    }

    fn payload_len(&self) -> usize {
        self.f.len() - ETH - IP - self.thl
    }
}

/// The segment size of a run that an `np`-byte segment continues, its head
/// carrying `hp` bytes of payload, coalesced with segment size `merged` or
/// plain (then its payload is the size): every segment but the last must
/// be exactly that size, none empty. Shared by TCP and UDP coalescing.
pub(crate) fn run_mss(merged: Option<u16>, hp: usize, np: usize) -> Option<usize> {
    let mss = merged.map_or(hp, usize::from);
    (mss != 0 && np != 0 && np <= mss && hp % mss == 0).then_some(mss)
}

/// If `next` (a plain frame) continues `head` (plain, or coalesced by
/// [`finish`] with `head_vnet`), returns where `next`'s payload starts and
/// the MSS of the coalesced frame; append `next[offset..]` to `head`, then
/// call [`finish`].
pub fn continues(
    head: &[u8],
    head_vnet: &VirtioNetHdr,
    next: &[u8],
    next_vnet: &VirtioNetHdr,
) -> Option<(usize, u16)> {
    if next_vnet.is_gso() || next_vnet.needs_csum() {
        return None;
    }
    let merged = match head_vnet.gso_type {
        GsoType::None if !head_vnet.needs_csum() => false,
        GsoType::TcpV4 if head_vnet.needs_csum() => true,
        _ => return None,
    };
    let (h, n) = (Seg::parse(head)?, Seg::parse(next)?);
    let (hp, np) = (h.payload_len(), n.payload_len());
    let mss = run_mss(merged.then_some(head_vnet.gso_size), hp, np)?;
    if h.flags() != ACK || (n.flags() != ACK && n.flags() != ACK | PSH) {
        return None;
    }
    // IP: same TOS, flags (DF), TTL, protocol, addresses.
    let same_ip = head[ETH + 1] == next[ETH + 1]
        && head[ETH + 6..ETH + 10] == next[ETH + 6..ETH + 10]
        && head[ETH + 12..ETH + IP] == next[ETH + 12..ETH + IP];
    // TCP: ports, ack, header length, window, options identical.
    let (ht, nt) = (h.tcp(), n.tcp());
    let same_tcp = h.thl == n.thl
        && ht[0..4] == nt[0..4]
        && ht[8..13] == nt[8..13]
        && ht[14..16] == nt[14..16]
        && ht[20..] == nt[20..];
    if !same_ip || !same_tcp || head[..12] != next[..12] {
        return None;
    }
    if n.seq() != h.seq().wrapping_add(hp as u32) || head.len() - ETH + np > MAX_IP_LEN {
        return None;
    }
    // Last, as it reads the payload: a merged head was checked when it was
    // a plain one.
    if !n.checksums_ok(next_vnet) || (!merged && !h.checksums_ok(head_vnet)) {
        return None;
    }
    Some((ETH + IP + n.thl, u16::try_from(mss).ok()?))
}

/// Rewrites a frame that had payload appended (see [`continues`]) into a GSO
/// frame: IPv4 total length and checksum, PSH if the last segment had it,
/// the TCP checksum field set to the pseudo-header partial sum. Returns its
/// virtio-net header.
pub fn finish(frame: &mut [u8], mss: u16, last_psh: bool) -> VirtioNetHdr {
    let ip_len = (frame.len() - ETH) as u16;
    let mut ip = ipv4::Packet::new_unchecked(&mut frame[ETH..]);
    ip.set_total_len(ip_len);
    ip.fill_checksum();
    let (src, dst): (IpAddr, IpAddr) = (ip.src_addr().into(), ip.dst_addr().into());
    let tcp = ETH + IP;
    let thl = usize::from(frame[tcp + 12] >> 4) * 4;
    if last_psh {
        frame[tcp + 13] |= PSH;
    }
    let partial = partial_pseudo_csum(&src, &dst, IpProtocol::Tcp, u32::from(ip_len) - IP as u32);
    frame[tcp + 16..tcp + 18].copy_from_slice(&partial.to_be_bytes());
    VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: (tcp + thl) as u16,
        gso_size: mss,
        csum_start: tcp as u16,
        csum_offset: 16,
    }
}

/// True if `frame` had PSH set (read before appending it).
pub fn has_psh(frame: &[u8]) -> bool {
    frame.get(ETH + IP + 13).is_some_and(|f| f & PSH != 0)
}
