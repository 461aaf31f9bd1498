//! Receive coalescing (GRO) of UDP datagrams over IPv4 and IPv6: consecutive
//! datagrams of one flow, every one but the last with the same payload size,
//! become one USO frame (virtio-net `UDP_L4`, partial checksum) that a TAP
//! takes whole. The receiving kernel cuts it back into the same datagrams in
//! one pass (or hands it whole to a socket that enabled `UDP_GRO`), so a
//! flood of small datagrams costs it one write, one route lookup and one
//! firewall pass per frame instead of per datagram.
//!
//! The rules follow Linux's `udp_gro_receive` and `inet_gro_receive`: same
//! MAC and IP addresses, ports, TOS or traffic class and flow label, TTL or
//! hop limit, DF; no IP options, extension headers or fragments; IPv4 ids
//! consecutive unless DF is set (RFC 6864: an atomic datagram's id carries
//! nothing, and the kernel numbers the segments from the first one's id).
//! A datagram whose checksums do not verify is never merged, so coalescing
//! cannot turn a corrupt datagram into a good one; a partial checksum (a
//! local sender's offload) is taken as it is. No I/O, no allocation.

use core::net::IpAddr;

use super::gso::partial_pseudo_csum;
use super::virtio_net::{GsoType, VirtioNetHdr, F_DATA_VALID};
use super::{ipv4, ipv6, udp, IpProtocol};

const ETH: usize = 14;
const UDP: usize = 8;
/// Largest IPv4 total length or IPv6 payload length.
const MAX_IP_LEN: usize = 65_535;
/// Most datagrams one frame carries (Linux caps UDP GSO sends at 128).
pub const MAX_SEGMENTS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn be16(f: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([f[at], f[at + 1]]))
}

/// The UDP view of a frame this module handles: Ethernet + option-less
/// IPv4 or extension-less IPv6 + UDP, not fragmented; `f` stops where the IP
/// packet ends (Ethernet padding cut off).
struct Dgram<'a> {
    f: &'a [u8],
    fam: Family,
    l4: usize,
}

impl<'a> Dgram<'a> {
    fn parse(f: &'a [u8]) -> Option<Dgram<'a>> {
        match f.get(12..14)? {
            [0x08, 0x00] => {
                if f.len() < ETH + 20 + UDP || f[ETH] != 0x45 || f[ETH + 9] != 17 {
                    return None;
                }
                let tot = be16(f, ETH + 2);
                // More-fragments or an offset: not a whole datagram.
                if be16(f, ETH + 6) & 0x3fff != 0 || tot < 20 + UDP || ETH + tot > f.len() {
                    return None;
                }
                let f = &f[..ETH + tot];
                let l4 = ETH + 20;
                (be16(f, l4 + 4) == tot - 20).then_some(Dgram {
                    f,
                    fam: Family::V4,
                    l4,
                })
            }
            [0x86, 0xdd] => {
                if f.len() < ETH + 40 + UDP || f[ETH] >> 4 != 6 || f[ETH + 6] != 17 {
                    return None;
                }
                let plen = be16(f, ETH + 4);
                if plen < UDP || ETH + 40 + plen > f.len() {
                    return None;
                }
                let f = &f[..ETH + 40 + plen];
                let l4 = ETH + 40;
                (be16(f, l4 + 4) == plen).then_some(Dgram {
                    f,
                    fam: Family::V6,
                    l4,
                })
            }
            _ => None,
        }
    }

    fn payload_len(&self) -> usize {
        self.f.len() - self.l4 - UDP
    }

    /// The IP source and destination, for the pseudo header.
    fn addrs(&self) -> (IpAddr, IpAddr) {
        let ip = &self.f[ETH..];
        match self.fam {
            Family::V4 => {
                let p = ipv4::Packet::new_unchecked(ip);
                (p.src_addr().into(), p.dst_addr().into())
            }
            Family::V6 => {
                let p = ipv6::Packet::new_unchecked(ip);
                (p.src_addr().into(), p.dst_addr().into())
            }
        }
    }

    /// True if the datagram may be merged as far as checksums go: the IPv4
    /// header checksum verifies, and the UDP checksum is partial (as a local
    /// sender's offload leaves it), vouched for by the sender's
    /// `DATA_VALID`, or verifies (absent counts only for IPv4).
    fn checksums_ok(&self, vnet: &VirtioNetHdr) -> bool {
        if self.fam == Family::V4 && !ipv4::Packet::new_unchecked(&self.f[ETH..]).verify_checksum()
        {
            return false;
        }
        if vnet.needs_csum() {
            return usize::from(vnet.csum_start) == self.l4 && vnet.csum_offset == 6;
        }
        if vnet.flags & F_DATA_VALID != 0 {
            return true;
        }
        let (src, dst) = self.addrs();
        udp::Packet::new_unchecked(&self.f[self.l4..]).verify_checksum(&src, &dst)
    }
}

/// How to merge a datagram into the frame before it (see [`continues`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    /// The head frame's length without Ethernet padding: cut it to this
    /// before appending.
    pub head_len: usize,
    /// The next frame's UDP payload: `next[payload.0..payload.1]`, to append.
    pub payload: (usize, usize),
    /// The segment size of the merged frame.
    pub mss: u16,
}

/// If datagram `next` (a plain frame) continues `head` (plain, or already
/// merged by [`finish`] with `head_vnet`), says how to merge it: cut `head`
/// to `head_len`, append `next`'s payload, then call [`finish`].
pub fn continues(
    head: &[u8],
    head_vnet: &VirtioNetHdr,
    next: &[u8],
    next_vnet: &VirtioNetHdr,
) -> Option<Merge> {
    if next_vnet.is_gso() {
        return None;
    }
    let merged = match head_vnet.gso_type {
        GsoType::None => false,
        GsoType::UdpL4 if head_vnet.needs_csum() => true,
        _ => return None,
    };
    let (h, n) = (Dgram::parse(head)?, Dgram::parse(next)?);
    if h.fam != n.fam || head[..12] != next[..12] {
        return None;
    }
    let (hp, np) = (h.payload_len(), n.payload_len());
    let mss = super::gro::run_mss(merged.then_some(head_vnet.gso_size), hp, np)?;
    let segments = hp / mss;
    // IPv4's total length counts its header, IPv6's payload length not.
    let ip_start = if h.fam == Family::V4 { ETH } else { h.l4 };
    if segments >= MAX_SEGMENTS || h.f.len() - ip_start + np > MAX_IP_LEN {
        return None;
    }
    let (hf, nf) = (h.f, n.f);
    let same_ip = match h.fam {
        // TOS; flags (fragment bits are zero, so DF); TTL and protocol;
        // addresses. The id must follow the head's unless DF is set.
        Family::V4 => {
            let df = hf[ETH + 6] & 0x40 != 0;
            let id_follows = be16(nf, ETH + 4) == (be16(hf, ETH + 4) + segments) & 0xffff;
            hf[ETH + 1] == nf[ETH + 1]
                && hf[ETH + 6..ETH + 10] == nf[ETH + 6..ETH + 10]
                && hf[ETH + 12..ETH + 20] == nf[ETH + 12..ETH + 20]
                && (df || id_follows)
        }
        // Version, traffic class and flow label; next header and hop
        // limit; addresses.
        Family::V6 => {
            hf[ETH..ETH + 4] == nf[ETH..ETH + 4] && hf[ETH + 6..ETH + 40] == nf[ETH + 6..ETH + 40]
        }
    };
    if !same_ip || hf[h.l4..h.l4 + 4] != nf[n.l4..n.l4 + 4] {
        return None;
    }
    // Checksums last: the costliest test, and a merged head was checked
    // when its first datagram was merged.
    if (!merged && !h.checksums_ok(head_vnet)) || !n.checksums_ok(next_vnet) {
        return None;
    }
    Some(Merge {
        head_len: hf.len(),
        payload: (n.l4 + UDP, nf.len()),
        mss: u16::try_from(mss).ok()?,
    })
}

/// Rewrites a frame that had payload appended (see [`continues`]) into a USO
/// frame: IP length (and IPv4 header checksum), UDP length, the UDP checksum
/// field set to the pseudo-header partial sum. Returns its virtio-net
/// header. `frame` must be one [`continues`] accepted as head.
pub fn finish(frame: &mut [u8], mss: u16) -> VirtioNetHdr {
    let fam = if frame[12..14] == [0x08, 0x00] {
        Family::V4
    } else {
        Family::V6
    };
    let l4 = if fam == Family::V4 {
        ETH + 20
    } else {
        ETH + 40
    };
    let udp_len = (frame.len() - l4) as u16;
    if fam == Family::V4 {
        let mut ip = ipv4::Packet::new_unchecked(&mut frame[ETH..]);
        ip.set_total_len(udp_len + 20);
        ip.fill_checksum();
    } else {
        ipv6::Packet::new_unchecked(&mut frame[ETH..]).set_payload_len(udp_len);
    }
    let (src, dst) = Dgram { f: frame, fam, l4 }.addrs();
    set_partial_checksum(frame, l4, &src, &dst, udp_len);
    VirtioNetHdr::uso(l4, mss)
}

/// Sets the UDP header at `l4` to length `udp_len` and its checksum field to
/// the pseudo-header sum of `src`, `dst` and that length, as a partial
/// checksum (see [`VirtioNetHdr::udp_partial`]) wants it.
pub(crate) fn set_partial_checksum(
    frame: &mut [u8],
    l4: usize,
    src: &IpAddr,
    dst: &IpAddr,
    udp_len: u16,
) {
    let mut u = udp::Packet::new_unchecked(&mut frame[l4..]);
    u.set_len(udp_len);
    u.set_checksum(partial_pseudo_csum(
        src,
        dst,
        IpProtocol::Udp,
        udp_len.into(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACS: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

    /// Fills in the IPv4 header checksum (for IPv4) and the UDP checksum of
    /// datagram `f`.
    fn fill_checksums(f: &mut [u8]) {
        let d = Dgram::parse(f).expect("parse");
        let (l4, (src, dst), v4) = (d.l4, d.addrs(), d.fam == Family::V4);
        if v4 {
            ipv4::Packet::new_unchecked(&mut f[ETH..]).fill_checksum();
        }
        udp::Packet::new_unchecked(&mut f[l4..]).fill_checksum(&src, &dst);
    }

    /// An IPv4 UDP datagram with valid checksums (or none, with `csum`
    /// false) and `pad` bytes of Ethernet padding.
    fn v4(id: u16, df: bool, payload: &[u8], csum: bool, pad: usize) -> Vec<u8> {
        let mut f = MACS.to_vec();
        f.extend([0x08, 0x00]);
        let tot = (20 + UDP + payload.len()) as u16;
        f.extend([0x45, 0x10]);
        f.extend(tot.to_be_bytes());
        f.extend(id.to_be_bytes());
        f.extend(if df { [0x40, 0] } else { [0, 0] });
        f.extend([64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3]);
        let ulen = (UDP + payload.len()) as u16;
        f.extend([0x13, 0x88, 0x13, 0x89]);
        f.extend(ulen.to_be_bytes());
        f.extend([0, 0]);
        f.extend(payload);
        fill_checksums(&mut f);
        if !csum {
            f[ETH + 20 + 6..ETH + 20 + 8].fill(0);
        }
        f.extend(std::iter::repeat_n(0u8, pad));
        f
    }

    fn v6(payload: &[u8]) -> Vec<u8> {
        let mut f = MACS.to_vec();
        f.extend([0x86, 0xdd, 0x60, 0, 0, 7]);
        f.extend(((UDP + payload.len()) as u16).to_be_bytes());
        f.extend([17, 64]);
        f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        f.extend([0x13, 0x88, 0x13, 0x89]);
        f.extend(((UDP + payload.len()) as u16).to_be_bytes());
        f.extend([0, 0]);
        f.extend(payload);
        fill_checksums(&mut f);
        f
    }

    /// Merges `frames` one after the other into the first; panics if one
    /// does not continue.
    fn merge_all(frames: &[Vec<u8>]) -> (Vec<u8>, VirtioNetHdr) {
        let (mut head, mut vnet) = (frames[0].clone(), VirtioNetHdr::NONE);
        for next in &frames[1..] {
            let m = continues(&head, &vnet, next, &VirtioNetHdr::NONE).expect("continues");
            head.truncate(m.head_len);
            head.extend_from_slice(&next[m.payload.0..m.payload.1]);
            vnet = finish(&mut head, m.mss);
        }
        (head, vnet)
    }

    /// Cuts a USO frame the way Linux does (`__udp_gso_segment` with the
    /// IPv4 ids numbered from the first), completing each checksum.
    fn segment(f: &[u8], vnet: &VirtioNetHdr) -> Vec<Vec<u8>> {
        let l4 = usize::from(vnet.csum_start);
        let mss = usize::from(vnet.gso_size);
        let v4 = f[12..14] == [0x08, 0x00];
        let id = be16(f, ETH + 4);
        f[l4 + UDP..]
            .chunks(mss)
            .enumerate()
            .map(|(i, p)| {
                let mut s = f[..l4 + UDP].to_vec();
                s.extend(p);
                let ulen = (UDP + p.len()) as u16;
                s[l4 + 4..l4 + 6].copy_from_slice(&ulen.to_be_bytes());
                if v4 {
                    s[ETH + 2..ETH + 4].copy_from_slice(&(ulen + 20).to_be_bytes());
                    s[ETH + 4..ETH + 6].copy_from_slice(&((id + i) as u16).to_be_bytes());
                } else {
                    s[ETH + 4..ETH + 6].copy_from_slice(&ulen.to_be_bytes());
                }
                fill_checksums(&mut s);
                s
            })
            .collect()
    }

    fn payload(i: usize, n: usize) -> Vec<u8> {
        (0..n).map(|j| (i * 31 + j) as u8).collect()
    }

    #[test]
    fn ipv4_run_merges_and_cuts_back_into_the_same_datagrams() {
        // Ids follow each other, no DF; the last datagram is shorter.
        let frames: Vec<_> = (0..5)
            .map(|i| {
                v4(
                    7 + i as u16,
                    false,
                    &payload(i, if i == 4 { 60 } else { 100 }),
                    true,
                    0,
                )
            })
            .collect();
        let (merged, vnet) = merge_all(&frames);
        assert_eq!(vnet.gso_type, GsoType::UdpL4);
        assert!(vnet.needs_csum());
        assert_eq!(
            (vnet.gso_size, vnet.csum_start, vnet.csum_offset),
            (100, 34, 6)
        );
        assert_eq!(merged.len(), 34 + UDP + 460);
        assert_eq!(segment(&merged, &vnet), frames);
    }

    #[test]
    fn padded_dont_fragment_datagrams_without_checksum_merge() {
        // As trafgen sends them: 18-byte payloads padded to 60 bytes, DF,
        // id 0 on every one, UDP checksum 0. The kernel numbers the ids
        // and fills in checksums; everything else comes back unchanged.
        let frames: Vec<_> = (0..4)
            .map(|i| v4(0, true, &payload(i, 18), false, 0))
            .collect();
        let padded: Vec<_> = frames
            .iter()
            .map(|f| {
                let mut p = f.clone();
                p.resize(60, 0);
                p
            })
            .collect();
        let (merged, vnet) = merge_all(&padded);
        assert_eq!(merged.len(), 34 + UDP + 4 * 18);
        for (i, (seg, orig)) in segment(&merged, &vnet).iter().zip(&frames).enumerate() {
            assert_eq!(be16(seg, ETH + 4), i, "ids are numbered");
            assert_eq!(seg[..ETH + 4], orig[..ETH + 4]);
            assert_eq!(seg[ETH + 6..ETH + 10], orig[ETH + 6..ETH + 10]);
            assert_eq!(seg[ETH + 12..ETH + 20 + 6], orig[ETH + 12..ETH + 20 + 6]);
            assert_eq!(seg[ETH + 20 + UDP..], orig[ETH + 20 + UDP..]);
        }
    }

    #[test]
    fn ipv6_run_merges_and_cuts_back() {
        let frames: Vec<_> = (0..3).map(|i| v6(&payload(i, 1200))).collect();
        let (merged, vnet) = merge_all(&frames);
        assert_eq!((vnet.gso_size, vnet.csum_start), (1200, 54));
        assert_eq!(segment(&merged, &vnet), frames);
    }

    #[test]
    fn what_does_not_continue() {
        let none = VirtioNetHdr::NONE;
        let a = v4(1, false, &payload(0, 100), true, 0);
        let no = |next: &[u8]| continues(&a, &none, next, &none).is_none();
        // A longer datagram, an id that skips without DF.
        assert!(no(&v4(2, false, &payload(1, 101), true, 0)));
        assert!(no(&v4(3, false, &payload(1, 100), true, 0)));
        // A corrupt UDP checksum, a corrupt IPv4 header checksum.
        let mut bad = v4(2, false, &payload(1, 100), true, 0);
        bad[ETH + 20 + 6] ^= 1;
        assert!(no(&bad));
        let mut bad = v4(2, false, &payload(1, 100), true, 0);
        bad[ETH + 10] ^= 1;
        assert!(no(&bad));
        // Another port, TTL, destination MAC; a fragment; IPv6 after IPv4.
        for (at, v) in [(ETH + 20 + 2, 0x99), (ETH + 8, 3), (0, 9), (ETH + 6, 0x20)] {
            let mut f = v4(2, false, &payload(1, 100), true, 0);
            f[at] = v;
            assert!(no(&f), "byte {at}");
        }
        assert!(no(&v6(&payload(1, 100))));
        // A GSO frame as next; after a short datagram, nothing more.
        let gso = VirtioNetHdr {
            gso_type: GsoType::UdpL4,
            ..none
        };
        let b = v4(2, false, &payload(1, 100), true, 0);
        assert!(continues(&a, &none, &b, &gso).is_none());
        let (short, vnet) = merge_all(&[a.clone(), v4(2, false, &payload(1, 50), true, 0)]);
        let c = v4(3, false, &payload(2, 50), true, 0);
        assert!(continues(&short, &vnet, &c, &none).is_none());
        // A corrupt head is not merged into either.
        let mut bad_head = a.clone();
        bad_head[ETH + 20 + 8] ^= 0xff;
        assert!(continues(&bad_head, &none, &b, &none).is_none());
    }

    #[test]
    fn partial_checksums_from_a_local_sender_merge() {
        let mut frames: Vec<_> = (0..3)
            .map(|i| v4(i as u16, false, &payload(i, 64), false, 0))
            .collect();
        // A partial checksum holds the pseudo-header sum; the content of
        // the field does not matter for merging.
        for f in frames.iter_mut() {
            f[ETH + 20 + 6..ETH + 20 + 8].copy_from_slice(&[0x12, 0x34]);
        }
        let partial = VirtioNetHdr::udp_partial(34);
        let m = continues(&frames[0], &partial, &frames[1], &partial).expect("merges");
        assert_eq!(m.payload, (42, 42 + 64));
        let wrong_offset = VirtioNetHdr {
            csum_offset: 16,
            ..partial
        };
        assert!(continues(&frames[0], &partial, &frames[1], &wrong_offset).is_none());
    }

    #[test]
    fn size_limits_hold() {
        // 64 datagrams at most, and never more than 65,535 bytes of IP.
        let frames: Vec<_> = (0..=MAX_SEGMENTS)
            .map(|i| v4(i as u16, false, &payload(i, 10), true, 0))
            .collect();
        let (merged, vnet) = merge_all(&frames[..MAX_SEGMENTS]);
        assert!(continues(&merged, &vnet, &frames[MAX_SEGMENTS], &VirtioNetHdr::NONE).is_none());
        let big: Vec<_> = (0..3)
            .map(|i| v4(i as u16, false, &payload(i, 30_000), true, 0))
            .collect();
        let (merged, vnet) = merge_all(&big[..2]);
        assert!(continues(&merged, &vnet, &big[2], &VirtioNetHdr::NONE).is_none());
    }
}
