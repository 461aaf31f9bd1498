//! Version-independent reading of an IP packet's fixed header in a frame:
//! addresses, upper-layer protocol and extent, as the data plane's stages and
//! the gateway stack need them. IPv6 extension headers are not followed: the
//! protocol is the fixed header's next header.

use core::net::{IpAddr, Ipv4Addr};

use super::ipv6::addr_at;

/// The fixed IP header of a packet, located in its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpView {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol (IPv4 protocol, IPv6 next header).
    pub proto: u8,
    /// Where the upper-layer header starts in the frame (for IPv4, after the
    /// header length the header claims, even a bad one).
    pub l4: usize,
    /// End of the IP packet in the frame, by its length field, at most the
    /// frame's end.
    pub end: usize,
    /// False for an IPv4 header length below 20 bytes.
    pub header_ok: bool,
    /// True for an IPv4 fragment (more fragments, or an offset).
    pub fragment: bool,
}

impl IpView {
    /// Reads the IPv4 or IPv6 header (by its version) at `frame[l3..]`;
    /// `None` if the frame is shorter than the fixed header or the version is
    /// neither.
    pub fn parse(frame: &[u8], l3: usize) -> Option<IpView> {
        match frame.get(l3).map(|v| v >> 4)? {
            4 => {
                let ip = frame.get(l3..l3 + 20)?;
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                let frag = u16::from_be_bytes([ip[6], ip[7]]);
                Some(IpView {
                    src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).into(),
                    dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]).into(),
                    proto: ip[9],
                    l4: l3 + ihl,
                    end: (l3 + total).min(frame.len()),
                    header_ok: ihl >= 20,
                    fragment: frag & 0x3fff != 0,
                })
            }
            6 => {
                let ip = frame.get(l3..l3 + 40)?;
                let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                let l4 = l3 + 40;
                Some(IpView {
                    src: addr_at(ip, 8)?.into(),
                    dst: addr_at(ip, 24)?.into(),
                    proto: ip[6],
                    l4,
                    end: (l4 + payload).min(frame.len()),
                    header_ok: true,
                    fragment: false,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_versions_and_flags_bad_ipv4_headers() {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(4000, 53)
            .write(&mut b, b"abc")
            .unwrap();
        let v = IpView::parse(&b, 14).unwrap();
        assert_eq!(
            (v.src, v.dst),
            ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap())
        );
        assert_eq!((v.proto, v.l4, v.end), (17, 34, b.len()));
        assert!(v.header_ok && !v.fragment);
        b[14] = 0x44; // header length 16
        b[20] = 0x20; // more fragments
        let v = IpView::parse(&b, 14).unwrap();
        assert_eq!(v.l4, 30);
        assert!(!v.header_ok && v.fragment);
        assert!(IpView::parse(&b[..34], 14).is_some());
        assert!(IpView::parse(&b[..33], 14).is_none(), "short of 20 bytes");
        assert!(IpView::parse(&b, 15).is_none(), "version 0");

        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(4000, 53, 1, 100)
            .write(&mut b, b"")
            .unwrap();
        let v = IpView::parse(&b, 14).unwrap();
        assert_eq!((v.proto, v.l4, v.end), (6, 54, b.len()));
        assert_eq!(v.dst, IpAddr::from([0xfe; 16]));
        // A payload length beyond the frame ends at the frame.
        b[18] = 0xff;
        assert_eq!(IpView::parse(&b, 14).unwrap().end, b.len());
        assert!(IpView::parse(&b[..53], 14).is_none());
    }
}
