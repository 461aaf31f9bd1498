//! Software segmentation offload and checksum completion for frames carrying
//! a virtio-net header: [`Segmenter`] cuts TCP super-frames into wire-sized
//! frames, [`complete_checksum`] finishes `F_NEEDS_CSUM` checksums. No
//! allocation: every segment is written into a caller buffer.

use super::checksum;
use super::ethernet::{parse_l2, EtherType};
use super::ipv4;
use super::ipv6;
use super::tcp::{self, TcpFlags};
use super::virtio_net::{GsoType, VirtioNetHdr};
use super::{Error, IpProtocol, Result};
use core::net::IpAddr;

/// Cuts one TCP GSO super-frame (IPv4 or IPv6, optional VLAN tags) into
/// complete Ethernet frames of at most `mss` payload bytes each.
///
/// Headers are parsed from the frame itself (`hdr_len` and the IP length
/// fields are not trusted); payload lengths come from the buffer length. Each
/// segment gets: IPv4 total length, ident (+1 per segment) and header
/// checksum, or IPv6 payload length; TCP sequence number advanced, FIN/PSH
/// only on the last segment, CWR only on the first, and a full TCP checksum.
#[derive(Debug, Clone)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    v6: bool,
    l3: usize,
    l4: usize,
    hdr_end: usize,
    mss: usize,
    offset: usize,
    index: usize,
    count: usize,
    seq: u32,
    ident: u16,
    flags: TcpFlags,
}

impl<'a> Segmenter<'a> {
    /// Validates `frame` (Ethernet onwards) for `hdr.gso_type` TcpV4/TcpV6;
    /// other GSO types are `Unsupported`. `mss_override` replaces
    /// `hdr.gso_size`; an MSS of 0 or one making a segment's IP length exceed
    /// 65535 is `Malformed`.
    pub fn new(
        frame: &'a [u8],
        hdr: &VirtioNetHdr,
        mss_override: Option<u16>,
    ) -> Result<Segmenter<'a>> {
        let v6 = match hdr.gso_type {
            GsoType::TcpV4 => false,
            GsoType::TcpV6 => true,
            _ => return Err(Error::Unsupported),
        };
        let mss = mss_override.unwrap_or(hdr.gso_size) as usize;
        if mss == 0 {
            return Err(Error::Malformed);
        }
        let l2 = parse_l2(frame)?;
        let l3 = l2.l3_offset as usize;
        let want = if v6 { EtherType::Ipv6 } else { EtherType::Ipv4 };
        if l2.ethertype != want {
            return Err(Error::Malformed);
        }
        let ip = &frame[l3..];
        let (l4, ident) = if v6 {
            if ip.len() < ipv6::HEADER_LEN {
                return Err(Error::Truncated);
            }
            let p = ipv6::Packet::new_unchecked(ip);
            if p.version() != 6 {
                return Err(Error::Malformed);
            }
            let (proto, off) =
                ipv6::walk_extension_headers(&ip[ipv6::HEADER_LEN..], p.next_header())?;
            if proto != IpProtocol::Tcp {
                return Err(Error::Malformed);
            }
            (l3 + ipv6::HEADER_LEN + off, 0)
        } else {
            if ip.len() < ipv4::HEADER_LEN {
                return Err(Error::Truncated);
            }
            let p = ipv4::Packet::new_unchecked(ip);
            let ihl = p.header_len() as usize;
            if p.version() != 4
                || ihl < ipv4::HEADER_LEN
                || p.protocol() != IpProtocol::Tcp
                || p.is_fragment()
            {
                return Err(Error::Malformed);
            }
            if ip.len() < ihl {
                return Err(Error::Truncated);
            }
            (l3 + ihl, p.ident())
        };
        let t = tcp::Packet::new_checked(&frame[l4..])?;
        let hdr_end = l4 + t.header_len() as usize;
        let payload = frame.len() - hdr_end;
        let max_seg = mss.min(payload);
        let ip_fixed = if v6 { ipv6::HEADER_LEN } else { 0 };
        if hdr_end - l3 - ip_fixed + max_seg > 0xffff {
            return Err(Error::Malformed);
        }
        Ok(Segmenter {
            frame,
            v6,
            l3,
            l4,
            hdr_end,
            mss,
            offset: 0,
            index: 0,
            count: payload.div_ceil(mss).max(1),
            seq: t.seq_number(),
            ident,
            flags: t.flags(),
        })
    }

    /// Total number of segments this frame yields (at least 1).
    pub fn segment_count(&self) -> usize {
        self.count
    }

    /// Length of the copied headers (Ethernet through TCP options).
    pub fn header_len(&self) -> usize {
        self.hdr_end
    }

    /// Length of the IP and TCP headers each segment carries (options and
    /// IPv6 extension headers included).
    pub fn l3_header_len(&self) -> usize {
        self.hdr_end - self.l3
    }

    /// Longest frame [`Segmenter::next_into`] can produce.
    pub fn max_frame_len(&self) -> usize {
        self.hdr_end + self.mss.min(self.frame.len() - self.hdr_end)
    }

    /// Writes the next segment into `out` and returns its length; `None`
    /// when all segments were produced. `BufferTooSmall` does not advance.
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<Result<usize>> {
        let seg = self.mss.min(self.frame.len() - self.hdr_end - self.offset);
        if out.len() < self.hdr_end + seg {
            return (self.index < self.count).then_some(Err(Error::BufferTooSmall));
        }
        let (h, payload) = match self.next_header_into(out)? {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e)),
        };
        let payload = &self.frame[payload];
        out[h..h + payload.len()].copy_from_slice(payload);
        Some(Ok(h + payload.len()))
    }

    /// Like [`Segmenter::next_into`], but writes only the next segment's
    /// headers (checksums included) into `out` and returns their length
    /// and where its payload lies in the super-frame: a sender can then
    /// pass the two pieces to the kernel side by side (scatter-gather)
    /// instead of copying the payload.
    pub fn next_header_into(
        &mut self,
        out: &mut [u8],
    ) -> Option<Result<(usize, core::ops::Range<usize>)>> {
        if self.index >= self.count {
            return None;
        }
        let h = self.hdr_end;
        let start = h + self.offset;
        let seg = self.mss.min(self.frame.len() - start);
        let Some(out) = out.get_mut(..h) else {
            return Some(Err(Error::BufferTooSmall));
        };
        out.copy_from_slice(&self.frame[..h]);
        let payload = &self.frame[start..start + seg];
        let total = h + seg;
        let first = self.index == 0;
        let last = self.index + 1 == self.count;
        let (src, dst): (IpAddr, IpAddr) = if self.v6 {
            let mut ip = ipv6::Packet::new_unchecked(&mut out[self.l3..]);
            ip.set_payload_len((total - self.l3 - ipv6::HEADER_LEN) as u16);
            (ip.src_addr().into(), ip.dst_addr().into())
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut out[self.l3..]);
            ip.set_total_len((total - self.l3) as u16);
            ip.set_ident(self.ident.wrapping_add(self.index as u16));
            ip.fill_checksum();
            (ip.src_addr().into(), ip.dst_addr().into())
        };
        let mut t = tcp::Packet::new_unchecked(&mut out[self.l4..]);
        t.set_seq_number(self.seq.wrapping_add(self.offset as u32));
        let mut f = self.flags;
        if !last {
            f.remove(TcpFlags::FIN | TcpFlags::PSH);
        }
        if !first {
            f.remove(TcpFlags::CWR);
        }
        t.set_flags(f);
        // The TCP header is a whole number of 32-bit words, so its sum and
        // the payload's add up to the sum over both.
        t.set_checksum(0);
        let tcp_len = (total - self.l4) as u32;
        let sum = checksum::pseudo_header(&src, &dst, u8::from(IpProtocol::Tcp), tcp_len)
            + checksum::sum(&out[self.l4..h])
            + checksum::sum(payload);
        tcp::Packet::new_unchecked(&mut out[self.l4..]).set_checksum(checksum::finish(sum));
        self.offset += seg;
        self.index += 1;
        Some(Ok((h, start..start + seg)))
    }
}

/// Completes a partial checksum the way Linux `skb_checksum_help` does: when
/// `hdr` has `F_NEEDS_CSUM`, sums `frame[csum_start..]` (the checksum field
/// already holds the pseudo-header partial sum) and stores the complemented
/// result (0 as 0xffff) at `csum_start + csum_offset`. Without the flag it
/// does nothing. `Truncated` if the field lies outside the frame.
pub fn complete_checksum(frame: &mut [u8], hdr: &VirtioNetHdr) -> Result<()> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = hdr.csum_start as usize;
    let at = start + hdr.csum_offset as usize;
    if at + 2 > frame.len() {
        return Err(Error::Truncated);
    }
    let c = checksum::finish(checksum::sum(&frame[start..]));
    let c = if c == 0 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The partial checksum Linux leaves in a TCP/UDP header for `F_NEEDS_CSUM`
/// and GSO frames: the folded pseudo-header sum for `len` bytes, not
/// complemented. Coalescing ([`super::gro`], [`super::udp_gro`]) writes it
/// into the frames it builds; tests build frames with it.
pub fn partial_pseudo_csum(src: &IpAddr, dst: &IpAddr, proto: IpProtocol, len: u32) -> u16 {
    checksum::fold(checksum::pseudo_header(src, dst, proto.into(), len))
}

#[cfg(test)]
mod tests;
