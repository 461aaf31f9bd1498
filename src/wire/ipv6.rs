//! IPv6 headers (RFC 8200): the [`Packet`] view, [`Ipv6Repr`] and a bounded
//! extension-header walker.

pub use super::IpProtocol;
use super::{Error, Result};
use core::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Most extension headers [`walk_extension_headers`] will step over.
pub const MAX_EXT_HEADERS: usize = 8;

/// Byte ranges of the header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Version, traffic class and flow label.
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length.
    pub const LENGTH: Field = 4..6;
    /// Next header.
    pub const NXT_HDR: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Field = 8..24;
    /// Destination address.
    pub const DST_ADDR: Field = 24..40;
}

/// Zero-copy view of an IPv6 packet.
///
/// After [`Packet::check_len`] succeeded no accessor panics: the fixed header
/// and `payload_len` bytes of payload are inside the buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking anything.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer and calls [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks `40 + payload_len <= buffer length`.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + self.payload_len() as usize {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn be32(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Version field (6 for IPv6).
    pub fn version(&self) -> u8 {
        (self.be32() >> 28) as u8
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        (self.be32() >> 20) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        self.be32() & 0x000f_ffff
    }

    /// Payload length (everything after the fixed header).
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Next header after the fixed header.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The payload (`payload_len` bytes after the fixed header).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len() as usize]
    }

    /// Walks extension headers in the payload; returns the upper-layer
    /// protocol and its offset from the start of the IPv6 header.
    pub fn upper_layer(&self) -> Result<(IpProtocol, usize)> {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + self.payload_len() as usize).min(b.len());
        let payload = b.get(HEADER_LEN..end).ok_or(Error::Truncated)?;
        let (p, off) = walk_extension_headers(payload, self.next_header())?;
        Ok((p, HEADER_LEN + off))
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Steps over at most [`MAX_EXT_HEADERS`] hop-by-hop, routing, fragment and
/// destination-options headers at the start of `buf` (an IPv6 payload) whose
/// first header is `first`. Returns the final protocol and its offset in `buf`.
///
/// A fragment header with a non-zero offset ends the walk with
/// `(Ipv6Frag, offset of that fragment header)`: no upper-layer header follows.
/// Too many headers are `Malformed`; a header past the buffer is `Truncated`.
pub fn walk_extension_headers(buf: &[u8], first: IpProtocol) -> Result<(IpProtocol, usize)> {
    let mut proto = first;
    let mut off = 0usize;
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match proto {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                let l = *buf.get(off + 1).ok_or(Error::Truncated)?;
                (l as usize + 1) * 8
            }
            IpProtocol::Ipv6Frag => {
                let h = buf.get(off..off + 8).ok_or(Error::Truncated)?;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Ok((IpProtocol::Ipv6Frag, off));
                }
                8
            }
            _ => return Ok((proto, off)),
        };
        if buf.len() < off + len {
            return Err(Error::Truncated);
        }
        proto = IpProtocol::from(buf[off]);
        off += len;
    }
    Err(Error::Malformed)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_be32(&mut self, v: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the version nibble.
    pub fn set_version(&mut self, v: u8) {
        let w = self.be32();
        self.set_be32((w & 0x0fff_ffff) | ((v as u32 & 0xf) << 28));
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, v: u8) {
        let w = self.be32();
        self.set_be32((w & 0xf00f_ffff) | ((v as u32) << 20));
    }

    /// Sets the flow label (20 bits).
    pub fn set_flow_label(&mut self, v: u32) {
        let w = self.be32();
        self.set_be32((w & 0xfff0_0000) | (v & 0x000f_ffff));
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, p: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = p.into();
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.payload_len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The IPv6 address at `b[at..at + 16]`, if `b` is long enough.
pub fn addr_at(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(s))
}

/// High-level IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next header.
    pub next_header: IpProtocol,
    /// Payload length.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Parses a packet; version must be 6 (`Malformed`).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Ipv6Repr> {
        p.check_len()?;
        if p.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(Ipv6Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
        })
    }

    /// Header length (always 40).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 40-byte fixed header; returns 40.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let b = buf.get_mut(..HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        let mut p = Packet::new_unchecked(b);
        p.set_be32(0x6000_0000);
        p.set_traffic_class(self.traffic_class);
        p.set_flow_label(self.flow_label);
        p.set_payload_len(self.payload_len);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn walks_extension_headers() {
        // hop-by-hop (8) -> fragment offset 0 (8) -> dest opts (16) -> TCP
        let mut b = [0u8; 40];
        b[0] = 44;
        b[8] = 60;
        b[16] = 6;
        b[17] = 1;
        assert_eq!(
            walk_extension_headers(&b, IpProtocol::HopByHop),
            Ok((IpProtocol::Tcp, 32))
        );
        assert_eq!(
            walk_extension_headers(&b[..31], IpProtocol::HopByHop),
            Err(Error::Truncated)
        );
        // non-first fragment
        b[10] = 0x01;
        assert_eq!(
            walk_extension_headers(&b, IpProtocol::HopByHop),
            Ok((IpProtocol::Ipv6Frag, 8))
        );
        // loop of hop-by-hop headers is bounded
        let z = [0u8; 200];
        assert_eq!(
            walk_extension_headers(&z, IpProtocol::HopByHop),
            Err(Error::Malformed)
        );
    }

    fn arb_repr() -> impl Strategy<Value = Ipv6Repr> {
        (
            any::<u128>(),
            any::<u128>(),
            any::<u8>(),
            0u16..64,
            any::<u8>(),
            any::<u8>(),
            0u32..0x10_0000,
        )
            .prop_map(|(s, d, n, l, h, tc, fl)| Ipv6Repr {
                src_addr: s.into(),
                dst_addr: d.into(),
                next_header: n.into(),
                payload_len: l,
                hop_limit: h,
                traffic_class: tc,
                flow_label: fl,
            })
    }

    proptest! {
        #[test]
        fn repr_round_trip(r in arb_repr()) {
            let mut buf = [0u8; 120];
            r.emit(&mut buf).unwrap();
            let len = HEADER_LEN + r.payload_len as usize;
            let p = Packet::new_checked(&buf[..len]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&p).unwrap(), r);
            let e = etherparse::Ipv6HeaderSlice::from_slice(&buf[..len]).unwrap();
            prop_assert_eq!(e.flow_label().value(), r.flow_label);
            prop_assert_eq!(e.traffic_class(), r.traffic_class);
        }

        #[test]
        fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = walk_extension_headers(&b, IpProtocol::HopByHop);
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.version(), p.traffic_class(), p.flow_label(), p.payload_len());
                let _ = (p.next_header(), p.hop_limit(), p.src_addr(), p.dst_addr());
                let _ = (p.payload().len(), p.upper_layer(), Ipv6Repr::parse(&p));
                p.set_flow_label(7);
                p.payload_mut();
            }
        }
    }
}
