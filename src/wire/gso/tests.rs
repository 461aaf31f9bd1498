//! Segmentation tests: super-frames built like Linux TAP hands them over,
//! every segment cross-checked with etherparse.

use super::*;
use crate::wire::ethernet::{EthernetRepr, VlanTag};
use crate::wire::ipv4::Ipv4Repr;
use crate::wire::ipv6::Ipv6Repr;
use crate::wire::virtio_net::F_NEEDS_CSUM;
use crate::wire::MacAddr;
use core::net::{Ipv4Addr, Ipv6Addr};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proptest::prelude::*;

const TCP_OPTS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
const SEQ: u32 = 0xffff_f000; // wraps during the test

struct Built {
    frame: Vec<u8>,
    hdr: VirtioNetHdr,
    payload: Vec<u8>,
}

/// Builds an Ethernet+IP+TCP super-frame the way a Linux TAP delivers it:
/// TCP checksum = pseudo-header partial sum without length, IPv4 header
/// checksum garbage.
fn build(v6: bool, vlan: bool, hbh: bool, payload_len: usize, flags: TcpFlags) -> Built {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + i / 251) as u8).collect();
    let tcp_len = 20 + TCP_OPTS.len() + payload_len;
    let mut f = vec![0u8; 22 + 40 + 8 + tcp_len];
    let eth = EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        vlan: vlan.then_some(VlanTag {
            pcp: 0,
            dei: false,
            vid: 100,
        }),
        ethertype: if v6 { EtherType::Ipv6 } else { EtherType::Ipv4 },
    };
    let l3 = eth.emit(&mut f).unwrap();
    let (src, dst): (IpAddr, IpAddr);
    let l4 = if v6 {
        let s = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
        let d = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        (src, dst) = (s.into(), d.into());
        let ext = if hbh { 8 } else { 0 };
        Ipv6Repr {
            src_addr: s,
            dst_addr: d,
            next_header: if hbh {
                IpProtocol::HopByHop
            } else {
                IpProtocol::Tcp
            },
            payload_len: (ext + tcp_len).min(0xffff) as u16,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x12345,
        }
        .emit(&mut f[l3..])
        .unwrap();
        if hbh {
            f[l3 + 40..l3 + 48].copy_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        }
        l3 + 40 + ext
    } else {
        let s = Ipv4Addr::new(10, 0, 0, 1);
        let d = Ipv4Addr::new(10, 0, 0, 2);
        (src, dst) = (s.into(), d.into());
        Ipv4Repr {
            src_addr: s,
            dst_addr: d,
            protocol: IpProtocol::Tcp,
            payload_len: tcp_len.min(0xffff - 20) as u16,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0xfffe,
            dont_frag: true,
        }
        .emit(&mut f[l3..])
        .unwrap();
        f[l3 + 10] = 0xde; // do not trust the header checksum
        l3 + 20
    };
    let end = l4 + tcp_len;
    f.truncate(end);
    f[l4 + 32..].copy_from_slice(&payload);
    f[l4 + 20..l4 + 32].copy_from_slice(&TCP_OPTS);
    let mut t = tcp::Packet::new_unchecked(&mut f[l4..]);
    t.set_src_port(40000);
    t.set_dst_port(80);
    t.set_seq_number(SEQ);
    t.set_ack_number(77);
    t.set_header_len(32);
    t.set_flags(flags);
    t.set_window_len(512);
    t.set_checksum(partial_pseudo_csum(&src, &dst, IpProtocol::Tcp, 0));
    let hdr = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
        gso_ecn: false,
        hdr_len: (l4 + 32) as u16,
        gso_size: 1448,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    Built {
        frame: f,
        hdr,
        payload,
    }
}

/// Segments and checks every frame; returns the segment count.
fn check(b: &Built, mss: u16, flags: TcpFlags) -> usize {
    let mut seg = Segmenter::new(&b.frame, &b.hdr, Some(mss)).unwrap();
    let n = seg.segment_count();
    let mut out = vec![0u8; seg.max_frame_len()];
    let mut got = Vec::new();
    let mut i = 0;
    let mut ident = None;
    while let Some(r) = seg.next_into(&mut out) {
        let len = r.unwrap();
        let frame = &out[..len];
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("no tcp")
        };
        let csum = match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                assert_eq!(
                    h.total_len() as usize,
                    len - (frame.len() - ip.payload().payload.len() - h.slice().len())
                );
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                let id = h.identification();
                assert_eq!(id, ident.map_or(0xfffe, |x: u16| x.wrapping_add(1)));
                ident = Some(id);
                t.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                assert_eq!(
                    h.payload_length() as usize,
                    len - (frame.len()
                        - ip.payload().payload.len()
                        - 40
                        - ip.extensions().slice().len())
                        - 40
                );
                t.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
            }
            _ => panic!("no ip"),
        };
        assert_eq!(csum, t.checksum(), "segment {i} checksum");
        assert_eq!(t.sequence_number(), SEQ.wrapping_add(got.len() as u32));
        assert_eq!(t.options(), &TCP_OPTS);
        let last = i + 1 == n;
        assert_eq!(t.fin(), last && flags.contains(TcpFlags::FIN));
        assert_eq!(t.psh(), last && flags.contains(TcpFlags::PSH));
        assert_eq!(t.cwr(), i == 0 && flags.contains(TcpFlags::CWR));
        assert!(t.ack());
        assert!(t.payload().len() <= mss as usize);
        got.extend_from_slice(t.payload());
        i += 1;
    }
    assert_eq!(i, n);
    assert_eq!(got, b.payload);
    n
}

const ALL: TcpFlags =
    TcpFlags(TcpFlags::ACK.0 | TcpFlags::PSH.0 | TcpFlags::FIN.0 | TcpFlags::CWR.0);

#[test]
fn tcpv4_64k() {
    let b = build(false, true, false, 65_000, ALL);
    assert_eq!(check(&b, 1448, ALL), 65_000usize.div_ceil(1448));
}

#[test]
fn tcpv6_64k() {
    let b = build(true, false, false, 65_400, ALL);
    assert_eq!(check(&b, 1448, ALL), 65_400usize.div_ceil(1448));
    let b = build(true, true, true, 65_400, ALL);
    assert_eq!(check(&b, 1448, ALL), 65_400usize.div_ceil(1448));
}

#[test]
fn errors() {
    let b = build(false, false, false, 3000, ALL);
    let mut h = b.hdr;
    h.gso_type = GsoType::UdpL4;
    assert_eq!(
        Segmenter::new(&b.frame, &h, None).err(),
        Some(Error::Unsupported)
    );
    assert_eq!(
        Segmenter::new(&b.frame, &b.hdr, Some(0)).err(),
        Some(Error::Malformed)
    );
    h.gso_type = GsoType::TcpV6;
    assert_eq!(
        Segmenter::new(&b.frame, &h, None).err(),
        Some(Error::Malformed)
    );
    assert_eq!(
        Segmenter::new(&b.frame[..40], &b.hdr, None).err(),
        Some(Error::Truncated)
    );
    let mut s = Segmenter::new(&b.frame, &b.hdr, None).unwrap();
    let mut small = [0u8; 100];
    assert_eq!(s.next_into(&mut small), Some(Err(Error::BufferTooSmall)));
    let mut big = [0u8; 2000];
    assert_eq!(s.next_into(&mut big), Some(Ok(s.header_len() + 1448)));
    // headers only: one segment
    let b = build(false, false, false, 0, ALL);
    assert_eq!(check(&b, 1448, ALL), 1);
}

#[test]
fn complete_checksum_like_linux() {
    let mut b = build(false, false, false, 999, ALL);
    // Linux partial sum for NEEDS_CSUM without GSO includes the length.
    let l4 = b.hdr.csum_start as usize;
    let tcp_len = (b.frame.len() - l4) as u32;
    let (s, d) = (
        IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::from(Ipv4Addr::new(10, 0, 0, 2)),
    );
    let partial = partial_pseudo_csum(&s, &d, IpProtocol::Tcp, tcp_len);
    b.frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    complete_checksum(&mut b.frame, &b.hdr).unwrap();
    assert!(tcp::Packet::new_checked(&b.frame[l4..])
        .unwrap()
        .verify_checksum(&s, &d));
    let mut h = b.hdr;
    h.csum_offset = 60_000;
    assert_eq!(complete_checksum(&mut b.frame, &h), Err(Error::Truncated));
    h.csum_start = u16::MAX;
    h.csum_offset = u16::MAX;
    assert_eq!(complete_checksum(&mut b.frame, &h), Err(Error::Truncated));
    assert_eq!(complete_checksum(&mut [], &VirtioNetHdr::NONE), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn segments_any_size(v6 in any::<bool>(), vlan in any::<bool>(), hbh in any::<bool>(),
                         len in 0usize..6000, mss in 1u16..2000, flags in 0u16..0x200) {
        let flags = TcpFlags(flags | TcpFlags::ACK.0);
        let b = build(v6, vlan, hbh, len, flags);
        let n = check(&b, mss, flags);
        prop_assert_eq!(n, len.div_ceil(mss as usize).max(1));
    }

    #[test]
    fn any_bytes_never_panic(mut f in proptest::collection::vec(any::<u8>(), 0..200), h in any::<[u8; 10]>(), mss in proptest::option::of(any::<u16>())) {
        let mut h = VirtioNetHdr::parse(&h).unwrap();
        h.gso_type = if h.gso_type == GsoType::None { GsoType::TcpV4 } else { h.gso_type };
        if let Ok(mut s) = Segmenter::new(&f, &h, mss) {
            let mut out = [0u8; 300];
            let _ = s.segment_count();
            for _ in 0..400 {
                if s.next_into(&mut out).is_none() { break; }
            }
        }
        let _ = complete_checksum(&mut f, &h);
    }
}

fn segments(frame: &[u8], hdr: &VirtioNetHdr, mss: u16) -> Vec<Vec<u8>> {
    let mut seg = Segmenter::new(frame, hdr, Some(mss)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(n) = seg.next_into(&mut buf) {
        out.push(buf[..n.unwrap()].to_vec());
    }
    out
}

/// GRO undoes GSO: segments coalesced back into one frame (plain checksums
/// in, partial checksum out) segment again into the very same bytes.
#[test]
fn gro_coalesces_what_gso_segmented() {
    let flags = TcpFlags(TcpFlags::ACK.0 | TcpFlags::PSH.0);
    let b = build(false, false, false, 20_000, flags);
    let segs = segments(&b.frame, &b.hdr, 1400);
    assert_eq!(segs.len(), 15);
    let mut head = segs[0].clone();
    let mut vnet = VirtioNetHdr::NONE;
    for s in &segs[1..] {
        let (at, mss) =
            crate::wire::gro::continues(&head, &vnet, s, &VirtioNetHdr::NONE).expect("continues");
        assert_eq!(mss, 1400);
        let psh = crate::wire::gro::has_psh(s);
        head.extend_from_slice(&s[at..]);
        vnet = crate::wire::gro::finish(&mut head, mss, psh);
    }
    assert_eq!(vnet.gso_size, 1400);
    assert_eq!(segments(&head, &vnet, 1400), segs);
    // Out of order, a gap, or a different flow: no.
    let none = VirtioNetHdr::NONE;
    assert!(crate::wire::gro::continues(&segs[0], &none, &segs[2], &none).is_none());
    assert!(crate::wire::gro::continues(&segs[1], &none, &segs[0], &none).is_none());
    let mut other = segs[1].clone();
    other[14 + 20 + 1] ^= 1; // source port
    assert!(crate::wire::gro::continues(&segs[0], &none, &other, &none).is_none());
    // The short last segment ends the run; PSH on the first stops it too.
    let last = &segs[14];
    assert!(crate::wire::gro::continues(last, &none, &segs[0], &none).is_none());
    // Not TCP over IPv4, or offloads asked of the next frame: ruled out.
    let mut udp = segs[1].clone();
    udp[14 + 9] = 17;
    assert!(crate::wire::gro::continues(&segs[0], &none, &udp, &none).is_none());
    assert!(crate::wire::gro::continues(&udp, &none, &segs[1], &none).is_none());
    assert!(crate::wire::gro::continues(&segs[0], &none, &segs[1], &b.hdr).is_none());
}

/// Coalescing makes the checksum partial, which the receiver trusts: a
/// segment whose checksum does not hold (head or next) is never merged,
/// unless the sender's kernel marked it valid.
#[test]
fn gro_never_merges_a_corrupt_segment() {
    use crate::wire::gro::continues;
    use crate::wire::virtio_net::F_DATA_VALID;
    let b = build(false, false, false, 5_000, TcpFlags::ACK);
    let segs = segments(&b.frame, &b.hdr, 1400);
    let none = VirtioNetHdr::NONE;
    assert!(continues(&segs[0], &none, &segs[1], &none).is_some());
    let mut bad_payload = segs[1].clone();
    let last = bad_payload.len() - 1;
    bad_payload[last] ^= 0xff;
    assert!(continues(&segs[0], &none, &bad_payload, &none).is_none());
    let mut bad_head = segs[0].clone();
    let last = bad_head.len() - 1;
    bad_head[last] ^= 0xff;
    assert!(continues(&bad_head, &none, &segs[1], &none).is_none());
    let mut bad_ip = segs[1].clone();
    bad_ip[14 + 10] ^= 0xff; // the IPv4 header checksum
    assert!(continues(&segs[0], &none, &bad_ip, &none).is_none());
    // The sender vouched for the TCP checksum (not for the IP header).
    let valid = VirtioNetHdr {
        flags: F_DATA_VALID,
        ..VirtioNetHdr::NONE
    };
    assert!(continues(&segs[0], &none, &bad_payload, &valid).is_some());
    assert!(continues(&segs[0], &none, &bad_ip, &valid).is_none());
}
