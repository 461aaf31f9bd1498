//! Builders for whole Ethernet + IPv4 or IPv6 (+ UDP) frames around a
//! payload that is already in place: what the gateway's DNS and NAT send to
//! sandboxes.

use core::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::ipv4::{IpProtocol, Ipv4Repr};
use super::ipv6::Ipv6Repr;
use super::udp::UdpRepr;
use super::{MacAddr, Result};

/// Ethernet (14) + IPv4 (20) + UDP (8) header bytes: where the payload starts.
pub const HEADERS_LEN: usize = 14 + 20 + 8;
/// Ethernet (14) + IPv6 (40) + UDP (8) header bytes.
pub const HEADERS_LEN_V6: usize = 14 + 40 + 8;

/// Who sends a datagram to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrameAddrs {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// IP source and UDP source port.
    pub src: SocketAddr,
    /// IP destination and UDP destination port (same family as `src`).
    pub dst: SocketAddr,
}

impl UdpFrameAddrs {
    /// Where the payload starts in a frame to these addresses.
    pub fn headers_len(&self) -> usize {
        if self.src.is_ipv4() {
            HEADERS_LEN
        } else {
            HEADERS_LEN_V6
        }
    }
}

/// Ethernet (14) + IPv4 (20): where an IP payload starts.
pub const IP_HEADERS_LEN: usize = 14 + 20;
/// Ethernet (14) + IPv6 (40): where an IPv6 payload starts.
pub const IP6_HEADERS_LEN: usize = 14 + 40;

/// Writes the Ethernet and IPv6 headers in front of the `l4_len` bytes of a
/// `protocol` packet already at `buf[IP6_HEADERS_LEN..]`; returns the frame
/// length.
pub fn emit_ipv6(
    buf: &mut [u8],
    macs: (MacAddr, MacAddr),
    ips: (Ipv6Addr, Ipv6Addr),
    protocol: IpProtocol,
    l4_len: usize,
) -> Result<usize> {
    emit_ipv6_hops(buf, macs, ips, protocol, l4_len, 64)
}

/// [`emit_ipv6`] with a hop limit of the caller's (neighbour discovery
/// insists on 255).
pub fn emit_ipv6_hops(
    buf: &mut [u8],
    macs: (MacAddr, MacAddr),
    ips: (Ipv6Addr, Ipv6Addr),
    protocol: IpProtocol,
    l4_len: usize,
    hop_limit: u8,
) -> Result<usize> {
    let total = IP6_HEADERS_LEN + l4_len;
    let buf = buf.get_mut(..total).ok_or(super::Error::BufferTooSmall)?;
    buf[0..6].copy_from_slice(&macs.1 .0);
    buf[6..12].copy_from_slice(&macs.0 .0);
    buf[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = Ipv6Repr {
        src_addr: ips.0,
        dst_addr: ips.1,
        next_header: protocol,
        payload_len: u16::try_from(l4_len).map_err(|_| super::Error::Malformed)?,
        hop_limit,
        traffic_class: 0,
        flow_label: 0,
    };
    ip.emit(&mut buf[14..IP6_HEADERS_LEN])?;
    Ok(total)
}

/// Writes the Ethernet and IPv4 headers in front of the `l4_len` bytes of a
/// `protocol` packet already at `buf[IP_HEADERS_LEN..]`; returns the frame
/// length.
pub fn emit_ipv4(
    buf: &mut [u8],
    macs: (MacAddr, MacAddr),
    ips: (core::net::Ipv4Addr, core::net::Ipv4Addr),
    protocol: IpProtocol,
    l4_len: usize,
) -> Result<usize> {
    let total = IP_HEADERS_LEN + l4_len;
    let buf = buf.get_mut(..total).ok_or(super::Error::BufferTooSmall)?;
    buf[0..6].copy_from_slice(&macs.1 .0);
    buf[6..12].copy_from_slice(&macs.0 .0);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = Ipv4Repr {
        src_addr: ips.0,
        dst_addr: ips.1,
        protocol,
        payload_len: u16::try_from(l4_len).map_err(|_| super::Error::Malformed)?,
        ttl: 64,
        dscp_ecn: 0,
        ident: 0,
        dont_frag: true,
    };
    ip.emit(&mut buf[14..34])?;
    Ok(total)
}

/// Writes the Ethernet, IP and UDP headers (with checksums) in front of the
/// `payload_len` bytes already at `buf[a.headers_len()..]`; returns the frame
/// length.
pub fn emit(buf: &mut [u8], a: &UdpFrameAddrs, payload_len: usize) -> Result<usize> {
    let macs = (a.src_mac, a.dst_mac);
    let (total, l4) = match (a.src.ip(), a.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            emit_ipv4(buf, macs, (s, d), IpProtocol::Udp, 8 + payload_len)?,
            IP_HEADERS_LEN,
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            emit_ipv6(buf, macs, (s, d), IpProtocol::Udp, 8 + payload_len)?,
            IP6_HEADERS_LEN,
        ),
        _ => return Err(super::Error::Malformed),
    };
    let udp = UdpRepr {
        src_port: a.src.port(),
        dst_port: a.dst.port(),
    };
    udp.emit(&mut buf[l4..], payload_len, &a.src.ip(), &a.dst.ip())?;
    Ok(total)
}

/// Copies `payload` into place and writes the headers around it; returns the
/// frame length.
pub fn write(buf: &mut [u8], a: &UdpFrameAddrs, payload: &[u8]) -> Result<usize> {
    let at = a.headers_len();
    buf.get_mut(at..at + payload.len())
        .ok_or(super::Error::BufferTooSmall)?
        .copy_from_slice(payload);
    emit(buf, a, payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn builds_a_frame_etherparse_accepts() {
        let mut buf = vec![0u8; 100];
        buf[HEADERS_LEN..HEADERS_LEN + 5].copy_from_slice(b"hello");
        let a = UdpFrameAddrs {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 53)),
            dst: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 40000)),
        };
        let n = emit(&mut buf, &a, 5).unwrap();
        assert_eq!(n, HEADERS_LEN + 5);
        assert!(emit(&mut buf[..40], &a, 5).is_err());
        let p = etherparse::SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("not udp")
        };
        assert_eq!((u.source_port(), u.destination_port()), (53, 40000));
        assert_eq!(u.payload(), b"hello");
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not ipv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            u.to_header()
                .calc_checksum_ipv4_raw(h.source, h.destination, b"hello")
                .unwrap(),
            u.checksum()
        );
    }

    #[test]
    fn builds_an_ipv6_frame_etherparse_accepts() {
        let mut buf = vec![0u8; 120];
        let a = UdpFrameAddrs {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src: "[2001:db8::1]:53".parse().unwrap(),
            dst: "[fd00:1::2]:40000".parse().unwrap(),
        };
        let n = write(&mut buf, &a, b"hello").unwrap();
        assert_eq!(n, HEADERS_LEN_V6 + 5);
        let p = etherparse::SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("not udp")
        };
        assert_eq!(u.payload(), b"hello");
        let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
            panic!("not ipv6")
        };
        let h = ip.header().to_header();
        assert_eq!(
            u.to_header()
                .calc_checksum_ipv6_raw(h.source, h.destination, b"hello")
                .unwrap(),
            u.checksum()
        );
        // Mixed families are refused, not written.
        let mixed = UdpFrameAddrs {
            dst: "10.0.0.2:1".parse().unwrap(),
            ..a
        };
        assert!(write(&mut [0u8; 120], &mixed, b"x").is_err());
    }
}
