//! UDP datagrams (RFC 768): the [`Packet`] view and [`UdpRepr`].

use super::checksum;
use super::PROTO_UDP as PROTO;
use super::{Error, Result};
use core::net::IpAddr;

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// Byte ranges of the header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length (header + payload).
    pub const LENGTH: Field = 4..6;
    /// Checksum.
    pub const CHECKSUM: Field = 6..8;
}

/// Zero-copy view of a UDP datagram.
///
/// After [`Packet::check_len`] succeeded no accessor panics: the header and
/// `len` bytes are inside the buffer and `len >= 8`.
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

    /// Checks `8 <= len <= buffer length`.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref().len();
        if b < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = self.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if l > b {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn be16(&self, r: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    /// Length field (header + payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.be16(field::LENGTH)
    }

    /// Stored checksum (0 = none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    /// The payload (`8..len`).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }

    /// Verifies the checksum with the pseudo header of `src`/`dst`. A zero
    /// checksum is accepted for IPv4 and rejected for IPv6.
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        if self.checksum() == 0 {
            return src.is_ipv4();
        }
        let len = self.len();
        let Some(d) = self.buffer.as_ref().get(..len as usize) else {
            return false;
        };
        let s = checksum::pseudo_header(src, dst, PROTO, len as u32) + checksum::sum(d);
        checksum::fold(s) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_be16(&mut self, r: field::Field, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.set_be16(field::SRC_PORT, v)
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_be16(field::DST_PORT, v)
    }

    /// Sets the length field.
    pub fn set_len(&mut self, v: u16) {
        self.set_be16(field::LENGTH, v)
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v)
    }

    /// Computes and stores the checksum over `..len` (0 is sent as 0xffff).
    /// Does nothing if `len` exceeds the buffer.
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let len = self.len();
        if let Some(d) = self.buffer.as_ref().get(..len as usize) {
            let s = checksum::pseudo_header(src, dst, PROTO, len as u32) + checksum::sum(d);
            let c = checksum::finish(s);
            self.set_checksum(if c == 0 { 0xffff } else { c });
        }
    }

    /// Mutable payload (`8..len`).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }
}

/// High-level UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Parses a datagram and verifies its checksum (`Checksum` on failure).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: &IpAddr, dst: &IpAddr) -> Result<UdpRepr> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
        })
    }

    /// Header length (8).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header for a payload of `payload_len` bytes that already
    /// sits at `buf[8..]`, with a zero checksum. Returns 8.
    pub fn emit_header(&self, buf: &mut [u8], payload_len: usize) -> Result<usize> {
        let total: u16 = (payload_len + HEADER_LEN)
            .try_into()
            .map_err(|_| Error::Malformed)?;
        let b = buf.get_mut(..HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        let mut p = Packet::new_unchecked(b);
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len(total);
        p.set_checksum(0);
        Ok(HEADER_LEN)
    }

    /// Like [`UdpRepr::emit_header`], then computes the checksum over the
    /// header and the payload already at `buf[8..8 + payload_len]`.
    pub fn emit(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        src: &IpAddr,
        dst: &IpAddr,
    ) -> Result<usize> {
        let total = payload_len + HEADER_LEN;
        let b = buf.get_mut(..total).ok_or(Error::BufferTooSmall)?;
        self.emit_header(b, payload_len)?;
        Packet::new_unchecked(b).fill_checksum(src, dst);
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    fn addrs(v6: bool, a: u128, b: u128) -> (IpAddr, IpAddr) {
        if v6 {
            (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
        } else {
            (
                Ipv4Addr::from(a as u32).into(),
                Ipv4Addr::from(b as u32).into(),
            )
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(sp in any::<u16>(), dp in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..50),
                           v6 in any::<bool>(), a in any::<u128>(), b in any::<u128>()) {
            let (s, d) = addrs(v6, a, b);
            let r = UdpRepr { src_port: sp, dst_port: dp };
            let mut buf = vec![0u8; 8 + payload.len()];
            buf[8..].copy_from_slice(&payload);
            r.emit(&mut buf, payload.len(), &s, &d).unwrap();
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(UdpRepr::parse(&p, &s, &d).unwrap(), r);
            prop_assert_eq!(p.payload(), &payload[..]);
            // cross-check with etherparse
            let h = etherparse::UdpHeader::from_slice(&buf).unwrap().0;
            let c = match (s, d) {
                (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &payload).unwrap(),
                (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), &payload).unwrap(),
                _ => unreachable!(),
            };
            prop_assert_eq!(c, p.checksum());
        }

        #[test]
        fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (s, d) = addrs(false, 1, 2);
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.src_port(), p.dst_port(), p.len(), p.checksum(), p.payload().len());
                let _ = (p.verify_checksum(&s, &d), UdpRepr::parse(&p, &s, &d));
                p.fill_checksum(&s, &d);
                prop_assert!(p.verify_checksum(&s, &d));
                p.payload_mut();
            }
        }
    }
}
