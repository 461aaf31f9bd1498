//! TCP segment headers (RFC 9293): the [`Packet`] view, [`TcpFlags`] and
//! [`TcpRepr`].

use super::checksum;
use super::PROTO_TCP as PROTO;
use super::{Error, Result};
use core::net::IpAddr;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Longest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// Byte ranges of the header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgment number.
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (high nibble of byte 12) and flags (low 9 bits).
    pub const FLAGS: Field = 12..14;
    /// Window.
    pub const WIN_SIZE: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT: Field = 18..20;
}

/// The nine TCP flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// FIN.
    pub const FIN: TcpFlags = TcpFlags(0x001);
    /// SYN.
    pub const SYN: TcpFlags = TcpFlags(0x002);
    /// RST.
    pub const RST: TcpFlags = TcpFlags(0x004);
    /// PSH.
    pub const PSH: TcpFlags = TcpFlags(0x008);
    /// ACK.
    pub const ACK: TcpFlags = TcpFlags(0x010);
    /// URG.
    pub const URG: TcpFlags = TcpFlags(0x020);
    /// ECE.
    pub const ECE: TcpFlags = TcpFlags(0x040);
    /// CWR.
    pub const CWR: TcpFlags = TcpFlags(0x080);
    /// NS (historic ECN nonce / AE).
    pub const NS: TcpFlags = TcpFlags(0x100);

    /// True when every bit of `other` is set.
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: TcpFlags) {
        self.0 |= other.0;
    }

    /// Clears the bits of `other`.
    pub fn remove(&mut self, other: TcpFlags) {
        self.0 &= !other.0;
    }

    /// The raw 9-bit value.
    pub fn bits(self) -> u16 {
        self.0 & 0x1ff
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// Zero-copy view of a TCP segment. The buffer must end where the segment
/// ends (slice it to the IP payload) for checksums and [`Packet::payload`].
///
/// After [`Packet::check_len`] succeeded no accessor panics: the header
/// including options (`20 <= header_len <= buffer length`) is inside.
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

    /// Checks that the fixed header and the options fit.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len() as usize;
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if hl > len {
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

    fn be32(&self, r: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        self.be32(field::SEQ_NUM)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        self.be32(field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::FLAGS.start] >> 4) * 4
    }

    /// Flag bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.be16(field::FLAGS) & 0x1ff)
    }

    /// Window size.
    pub fn window_len(&self) -> u16 {
        self.be16(field::WIN_SIZE)
    }

    /// Stored checksum.
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        self.be16(field::URGENT)
    }

    /// Option bytes (`20..header_len`).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len() as usize]
    }

    /// Payload (`header_len..`).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len() as usize..]
    }

    /// Verifies the checksum over the whole buffer with the pseudo header.
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header(src, dst, PROTO, d.len() as u32) + checksum::sum(d);
        checksum::fold(s) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_be16(&mut self, r: field::Field, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    fn set_be32(&mut self, r: field::Field, v: u32) {
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

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        self.set_be32(field::SEQ_NUM, v)
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, v: u32) {
        self.set_be32(field::ACK_NUM, v)
    }

    /// Sets the header length in bytes (rounded down to a multiple of 4).
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::FLAGS.start];
        *b = (*b & 0x0f) | ((len / 4) << 4);
    }

    /// Sets the flag bits (keeps the data offset).
    pub fn set_flags(&mut self, f: TcpFlags) {
        let v = (self.be16(field::FLAGS) & 0xfe00) | f.bits();
        self.set_be16(field::FLAGS, v)
    }

    /// Sets the window size.
    pub fn set_window_len(&mut self, v: u16) {
        self.set_be16(field::WIN_SIZE, v)
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v)
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_be16(field::URGENT, v)
    }

    /// Computes and stores the checksum over the whole buffer.
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header(src, dst, PROTO, d.len() as u32) + checksum::sum(d);
        self.set_checksum(checksum::finish(s));
    }

    /// Mutable payload (`header_len..`).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len() as usize;
        &mut self.buffer.as_mut()[h..]
    }
}

/// High-level TCP header; options are kept as raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Window size.
    pub window_len: u16,
    /// Urgent pointer.
    pub urgent_at: u16,
    /// Raw options; length must be a multiple of 4 and at most 40.
    pub options: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a segment and verifies its checksum (`Checksum` on failure).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        p: &'a Packet<&'a T>,
        src: &IpAddr,
        dst: &IpAddr,
    ) -> Result<TcpRepr<'a>> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let b: &'a [u8] = p.buffer.as_ref();
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq_number: p.seq_number(),
            ack_number: p.ack_number(),
            flags: p.flags(),
            window_len: p.window_len(),
            urgent_at: p.urgent_at(),
            options: &b[HEADER_LEN..p.header_len() as usize],
        })
    }

    /// Header length including options.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Writes the header before a payload of `payload_len` bytes that already
    /// sits right after it in `buf`, then fills the checksum. Returns the
    /// header length. `Malformed` if the options are not 4-byte aligned or
    /// longer than 40 bytes.
    pub fn emit(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        src: &IpAddr,
        dst: &IpAddr,
    ) -> Result<usize> {
        let hl = self.buffer_len();
        if self.options.len() % 4 != 0 || hl > MAX_HEADER_LEN {
            return Err(Error::Malformed);
        }
        let b = buf
            .get_mut(..hl + payload_len)
            .ok_or(Error::BufferTooSmall)?;
        b[HEADER_LEN..hl].copy_from_slice(self.options);
        let mut p = Packet::new_unchecked(b);
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq_number);
        p.set_ack_number(self.ack_number);
        p.set_be16(field::FLAGS, ((hl as u16 / 4) << 12) | self.flags.bits());
        p.set_window_len(self.window_len);
        p.set_urgent_at(self.urgent_at);
        p.fill_checksum(src, dst);
        Ok(hl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn repr_round_trip(ports in any::<(u16, u16)>(), seq in any::<u32>(), ack in any::<u32>(),
                           flags in 0u16..0x200, win in any::<u16>(), urg in any::<u16>(),
                           opt_words in 0usize..11, payload in proptest::collection::vec(any::<u8>(), 0..50),
                           v6 in any::<bool>(), a in any::<u128>(), b in any::<u128>()) {
            let (s, d): (IpAddr, IpAddr) = if v6 {
                (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
            } else {
                (Ipv4Addr::from(a as u32).into(), Ipv4Addr::from(b as u32).into())
            };
            let opts = [1u8; 40];
            let r = TcpRepr { src_port: ports.0, dst_port: ports.1, seq_number: seq, ack_number: ack,
                flags: TcpFlags(flags), window_len: win, urgent_at: urg, options: &opts[..opt_words * 4] };
            let hl = r.buffer_len();
            let mut buf = vec![0u8; hl + payload.len()];
            buf[hl..].copy_from_slice(&payload);
            prop_assert_eq!(r.emit(&mut buf, payload.len(), &s, &d).unwrap(), hl);
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(TcpRepr::parse(&p, &s, &d).unwrap(), r);
            prop_assert_eq!(p.payload(), &payload[..]);
            let h = etherparse::TcpHeader::from_slice(&buf).unwrap().0;
            let c = match (s, d) {
                (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &payload).unwrap(),
                (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), &payload).unwrap(),
                _ => unreachable!(),
            };
            prop_assert_eq!(c, p.checksum());
            prop_assert_eq!(h.sequence_number, seq);
        }

        #[test]
        fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let (s, d): (IpAddr, IpAddr) = (Ipv4Addr::new(1, 2, 3, 4).into(), Ipv4Addr::new(5, 6, 7, 8).into());
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(), p.header_len());
                let _ = (p.flags(), p.window_len(), p.checksum(), p.urgent_at(), p.options().len());
                let _ = (p.payload().len(), p.verify_checksum(&s, &d));
                p.fill_checksum(&s, &d);
                prop_assert!(p.verify_checksum(&s, &d));
                let f = p.flags();
                p.set_flags(f);
                p.payload_mut();
            }
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = TcpRepr::parse(&p, &s, &d);
            }
        }
    }
}
