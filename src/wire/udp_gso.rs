//! UDP segmentation offload frames read from a TAP (virtio-net `UDP_L4`): a
//! sender in the sandbox that uses `UDP_SEGMENT` (QUIC stacks do) hands the
//! kernel a burst of equal-size datagrams, and a TAP that accepts USO passes
//! the burst to the switch whole, one read instead of one per datagram. This
//! module cuts such a frame back into its datagrams as Linux's
//! `__udp_gso_segment` does: every datagram but the last carries `gso_size`
//! bytes of payload, the IPv4 id counts up from the frame's, and each one's
//! UDP checksum is left partial (the pseudo-header sum with the checksum
//! offload request in its own virtio-net header), to be completed by whatever
//! port finally needs it. No I/O, no allocation.

use core::net::IpAddr;

use super::virtio_net::{GsoType, VirtioNetHdr};
use super::{ipv4, ipv6, udp_gro, Error, IpProtocol, Result};

const UDP: usize = 8;
/// Most datagrams one frame may hold (Linux's own cap on a UDP GSO send).
pub const MAX_SEGMENTS: usize = 128;

/// How a USO frame cuts: found once by [`plan`], then used by
/// [`write_segment`] for each datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Where the IP header starts (after the Ethernet header and any VLAN tag).
    l3: usize,
    /// Where the UDP header starts.
    l4: usize,
    v4: bool,
    /// Payload bytes per datagram (the last may carry fewer).
    mss: usize,
    /// The frame's length without Ethernet padding.
    end: usize,
    /// Number of datagrams.
    pub segments: usize,
}

impl Plan {
    /// Length of datagram `i`'s frame.
    pub fn segment_len(&self, i: usize) -> usize {
        let payload_start = self.l4 + UDP + i * self.mss;
        self.l4 + UDP + (self.end - payload_start).min(self.mss)
    }
}

/// Checks USO frame `frame` (its virtio-net header `vnet`): Ethernet
/// (optionally one 802.1Q tag), IPv4 (options allowed, not a fragment) or
/// IPv6 (no extension headers), UDP, lengths that agree with the frame, a
/// segment size and at most [`MAX_SEGMENTS`] datagrams.
pub fn plan(frame: &[u8], vnet: &VirtioNetHdr) -> Result<Plan> {
    if vnet.gso_type != GsoType::UdpL4 {
        return Err(Error::Unsupported);
    }
    let mss = usize::from(vnet.gso_size);
    let l3 = match frame.get(12..14).ok_or(Error::Truncated)? {
        [0x81, 0x00] => 18,
        _ => 14,
    };
    let ethertype = frame.get(l3 - 2..l3).ok_or(Error::Truncated)?;
    let (v4, l4, end) = match ethertype {
        [0x08, 0x00] => {
            let ip = ipv4::Packet::new_checked(&frame[l3..])?;
            if ip.protocol() != IpProtocol::Udp || ip.is_fragment() {
                return Err(Error::Unsupported);
            }
            let total = usize::from(ip.total_len());
            (true, l3 + usize::from(ip.header_len()), l3 + total)
        }
        [0x86, 0xdd] => {
            let ip = ipv6::Packet::new_checked(&frame[l3..])?;
            if ip.next_header() != IpProtocol::Udp {
                return Err(Error::Unsupported);
            }
            let payload = usize::from(ip.payload_len());
            (false, l3 + 40, l3 + 40 + payload)
        }
        _ => return Err(Error::Unsupported),
    };
    if end > frame.len() || end < l4 + UDP {
        return Err(Error::Truncated);
    }
    let payload = end - l4 - UDP;
    if mss == 0 || payload == 0 {
        return Err(Error::Malformed);
    }
    let segments = payload.div_ceil(mss);
    if segments > MAX_SEGMENTS {
        return Err(Error::Malformed);
    }
    Ok(Plan {
        l3,
        l4,
        v4,
        mss,
        end,
        segments,
    })
}

/// Writes datagram `i` of the frame `plan` describes into `buf`: the
/// frame's headers with lengths, IPv4 id and header checksum made its own,
/// then its slice of the payload. Returns its length and its virtio-net
/// header (a partial UDP checksum to complete).
pub fn write_segment(
    frame: &[u8],
    plan: &Plan,
    i: usize,
    buf: &mut [u8],
) -> Result<(usize, VirtioNetHdr)> {
    if i >= plan.segments {
        return Err(Error::Malformed);
    }
    let hdr = plan.l4 + UDP;
    let start = hdr + i * plan.mss;
    let len = plan.segment_len(i);
    let payload = frame
        .get(start..start + (len - hdr))
        .ok_or(Error::Truncated)?;
    let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    out[..hdr].copy_from_slice(&frame[..hdr]);
    out[hdr..].copy_from_slice(payload);
    let udp_len = (len - plan.l4) as u16;
    let (src, dst): (IpAddr, IpAddr) = if plan.v4 {
        let mut ip = ipv4::Packet::new_unchecked(&mut out[plan.l3..]);
        ip.set_total_len((len - plan.l3) as u16);
        ip.set_ident(ip.ident().wrapping_add(i as u16));
        ip.fill_checksum();
        (ip.src_addr().into(), ip.dst_addr().into())
    } else {
        let mut ip = ipv6::Packet::new_unchecked(&mut out[plan.l3..]);
        ip.set_payload_len(udp_len);
        (ip.src_addr().into(), ip.dst_addr().into())
    };
    udp_gro::set_partial_checksum(out, plan.l4, &src, &dst, udp_len);
    let vnet = VirtioNetHdr::udp_partial(plan.l4);
    Ok((len, vnet))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::gso::complete_checksum;

    /// A USO frame as a TAP hands one over: `count` datagrams of `mss`
    /// payload bytes, the last `last` bytes, with a partial checksum.
    fn uso_frame(
        v6: bool,
        vlan: bool,
        mss: u16,
        count: usize,
        last: usize,
    ) -> (Vec<u8>, VirtioNetHdr) {
        let payload: Vec<u8> = (0..usize::from(mss) * (count - 1) + last)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut f = Vec::new();
        if v6 {
            let b = eth.ipv6([0xfd; 16], [0xfe; 16], 64).udp(4433, 5000);
            b.write(&mut f, &payload).expect("frame");
        } else {
            let b = eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(4433, 5000);
            b.write(&mut f, &payload).expect("frame");
            let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
            ip.set_ident(0x1234);
            ip.fill_checksum();
        }
        if vlan {
            let mut tagged = f[..12].to_vec();
            tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
            tagged.extend_from_slice(&f[12..]);
            f = tagged;
        }
        let l3 = if vlan { 18 } else { 14 };
        let l4 = l3 + if v6 { 40 } else { 20 };
        let vnet = VirtioNetHdr::uso(l4, mss);
        (f, vnet)
    }

    fn cut(frame: &[u8], vnet: &VirtioNetHdr) -> Vec<Vec<u8>> {
        let plan = plan(frame, vnet).expect("plan");
        (0..plan.segments)
            .map(|i| {
                let mut buf = vec![0u8; 2048];
                let (n, v) = write_segment(frame, &plan, i, &mut buf).expect("segment");
                buf.truncate(n);
                complete_checksum(&mut buf, &v).expect("checksum");
                buf
            })
            .collect()
    }

    #[test]
    fn datagrams_come_out_whole_with_their_own_headers() {
        for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
            let (f, vnet) = uso_frame(v6, vlan, 300, 5, 120);
            let segs = cut(&f, &vnet);
            assert_eq!(segs.len(), 5);
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let p = etherparse::SlicedPacket::from_ethernet(s).expect("parses");
                let want = if i == 4 { 120 } else { 300 };
                let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else {
                    panic!("udp")
                };
                assert_eq!(u.payload().len(), want, "segment {i}");
                assert_eq!(usize::from(u.length()), want + UDP);
                payload.extend_from_slice(u.payload());
                match p.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        let h = ip.header().to_header();
                        assert_eq!(h.identification, 0x1234 + i as u16);
                        assert_eq!(h.header_checksum, h.calc_header_checksum());
                        let sum = u
                            .to_header()
                            .calc_checksum_ipv4(&h, u.payload())
                            .expect("sum");
                        assert_eq!(u.checksum(), sum);
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => {
                        let h = ip.header().to_header();
                        let sum = u
                            .to_header()
                            .calc_checksum_ipv6(&h, u.payload())
                            .expect("sum");
                        assert_eq!(u.checksum(), sum);
                    }
                    _ => panic!("ip"),
                }
            }
            let (orig, _) = uso_frame(v6, vlan, 300, 5, 120);
            let hdr = vnet.csum_start as usize + UDP;
            assert_eq!(payload, orig[hdr..], "v6 {v6} vlan {vlan}");
        }
    }

    #[test]
    fn cutting_then_coalescing_gives_the_frame_back() {
        for v6 in [false, true] {
            let (f, vnet) = uso_frame(v6, false, 200, 7, 200);
            let segs = cut(&f, &vnet);
            let mut head = segs[0].clone();
            let mut hv = VirtioNetHdr::NONE;
            for s in &segs[1..] {
                let m = udp_gro::continues(&head, &hv, s, &VirtioNetHdr::NONE).expect("merges");
                head.truncate(m.head_len);
                head.extend_from_slice(&s[m.payload.0..m.payload.1]);
                hv = udp_gro::finish(&mut head, m.mss);
            }
            assert_eq!(hv.gso_size, 200);
            let hdr = vnet.csum_start as usize + UDP;
            assert_eq!(head[hdr..], f[hdr..]);
            assert_eq!(
                head[..hdr - 2],
                f[..hdr - 2],
                "headers (all but the checksum)"
            );
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let (f, vnet) = uso_frame(false, false, 100, 3, 100);
        let plain = VirtioNetHdr::NONE;
        assert_eq!(plan(&f, &plain), Err(Error::Unsupported));
        let zero = VirtioNetHdr {
            gso_size: 0,
            ..vnet
        };
        assert_eq!(plan(&f, &zero), Err(Error::Malformed));
        assert!(
            plan(&f[..f.len() - 1], &vnet).is_err(),
            "IP length beyond the frame"
        );
        assert!(plan(&f[..30], &vnet).is_err());
        let mut frag = f.clone();
        frag[20] = 0x20; // more fragments
        assert_eq!(plan(&frag, &vnet), Err(Error::Unsupported));
        let mut tcp = f.clone();
        tcp[23] = 6;
        assert_eq!(plan(&tcp, &vnet), Err(Error::Unsupported));
        let one = VirtioNetHdr {
            gso_size: 1,
            ..vnet
        };
        assert_eq!(
            plan(&f, &one),
            Err(Error::Malformed),
            "300 datagrams of one byte"
        );
        let p = plan(&f, &vnet).expect("plan");
        assert_eq!(p.segments, 3);
        let mut small = [0u8; 64];
        assert_eq!(
            write_segment(&f, &p, 0, &mut small),
            Err(Error::BufferTooSmall)
        );
        assert!(write_segment(&f, &p, 3, &mut [0u8; 2048]).is_err());
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let (mut f, vnet) = uso_frame(false, false, 10, 2, 5);
        f.extend_from_slice(&[0xee; 20]);
        let segs = cut(&f, &vnet);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].len(), 42 + 5);
    }
}
