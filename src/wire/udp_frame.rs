//! Builders for whole Ethernet + IPv4 (+ UDP) frames around a payload that
//! is already in place: what the gateway's DNS and NAT send to sandboxes.

use core::net::{IpAddr, SocketAddrV4};

use super::ipv4::{IpProtocol, Ipv4Repr};
use super::udp::UdpRepr;
use super::{MacAddr, Result};

/// Ethernet (14) + IPv4 (20) + UDP (8) header bytes: where the payload starts.
pub const HEADERS_LEN: usize = 14 + 20 + 8;

/// Who sends a datagram to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrameAddrs {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// IP source and UDP source port.
    pub src: SocketAddrV4,
    /// IP destination and UDP destination port.
    pub dst: SocketAddrV4,
}

/// Ethernet (14) + IPv4 (20): where an IP payload starts.
pub const IP_HEADERS_LEN: usize = 14 + 20;

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

/// Writes the Ethernet, IPv4 and UDP headers (with checksums) in front of the
/// `payload_len` bytes already at `buf[HEADERS_LEN..]`; returns the frame
/// length.
pub fn emit(buf: &mut [u8], a: &UdpFrameAddrs, payload_len: usize) -> Result<usize> {
    let total = emit_ipv4(
        buf,
        (a.src_mac, a.dst_mac),
        (*a.src.ip(), *a.dst.ip()),
        IpProtocol::Udp,
        8 + payload_len,
    )?;
    let udp = UdpRepr {
        src_port: a.src.port(),
        dst_port: a.dst.port(),
    };
    let (src, dst) = (IpAddr::V4(*a.src.ip()), IpAddr::V4(*a.dst.ip()));
    udp.emit(&mut buf[34..], payload_len, &src, &dst)?;
    Ok(total)
}

/// Copies `payload` into place and writes the headers around it; returns the
/// frame length.
pub fn write(buf: &mut [u8], a: &UdpFrameAddrs, payload: &[u8]) -> Result<usize> {
    buf.get_mut(HEADERS_LEN..HEADERS_LEN + payload.len())
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
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 53),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
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
}
