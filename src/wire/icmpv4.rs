//! ICMPv4 (RFC 792): the [`Packet`] view, [`Icmpv4Repr`] for echo and
//! destination-unreachable, and [`make_echo_reply_in_place`].

use super::checksum;
use super::ipv4;
use super::{Error, IpProtocol, MacAddr, Result};

/// Length of the ICMP header (type, code, checksum, 4 bytes rest-of-header).
pub const HEADER_LEN: usize = 8;

/// ICMPv4 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Echo reply (0).
    EchoReply,
    /// Destination unreachable (3).
    DstUnreachable,
    /// Echo request (8).
    EchoRequest,
    /// Time exceeded (11).
    TimeExceeded,
    /// Anything else, kept verbatim.
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(v: u8) -> Message {
        match v {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(v: Message) -> u8 {
        match v {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::Unknown(other) => other,
        }
    }
}

/// Destination-unreachable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DstUnreachable {
    /// Net unreachable (0).
    NetUnreachable,
    /// Host unreachable (1).
    HostUnreachable,
    /// Protocol unreachable (2).
    ProtoUnreachable,
    /// Port unreachable (3).
    PortUnreachable,
    /// Fragmentation needed and DF set (4); carries the next-hop MTU.
    FragRequired,
    /// Communication administratively prohibited (13).
    AdminProhibited,
    /// Anything else, kept verbatim.
    Unknown(u8),
}

impl From<u8> for DstUnreachable {
    fn from(v: u8) -> DstUnreachable {
        match v {
            0 => DstUnreachable::NetUnreachable,
            1 => DstUnreachable::HostUnreachable,
            2 => DstUnreachable::ProtoUnreachable,
            3 => DstUnreachable::PortUnreachable,
            4 => DstUnreachable::FragRequired,
            13 => DstUnreachable::AdminProhibited,
            other => DstUnreachable::Unknown(other),
        }
    }
}

impl From<DstUnreachable> for u8 {
    fn from(v: DstUnreachable) -> u8 {
        match v {
            DstUnreachable::NetUnreachable => 0,
            DstUnreachable::HostUnreachable => 1,
            DstUnreachable::ProtoUnreachable => 2,
            DstUnreachable::PortUnreachable => 3,
            DstUnreachable::FragRequired => 4,
            DstUnreachable::AdminProhibited => 13,
            DstUnreachable::Unknown(other) => other,
        }
    }
}

/// Byte ranges of the header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Message type.
    pub const TYPE: usize = 0;
    /// Message code.
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Field = 2..4;
    /// Echo identifier.
    pub const ECHO_IDENT: Field = 4..6;
    /// Echo sequence number.
    pub const ECHO_SEQNO: Field = 6..8;
    /// Next-hop MTU of "fragmentation needed".
    pub const MTU: Field = 6..8;
}

/// Zero-copy view of an ICMPv4 message; the buffer must end where the message
/// ends (the IPv4 payload).
///
/// After [`Packet::check_len`] succeeded (>= 8 bytes) no accessor panics.
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

    /// Checks that the 8-byte header is present.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// Message type.
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Stored checksum.
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    /// Echo identifier.
    pub fn echo_ident(&self) -> u16 {
        self.be16(field::ECHO_IDENT)
    }

    /// Echo sequence number.
    pub fn echo_seq_no(&self) -> u16 {
        self.be16(field::ECHO_SEQNO)
    }

    /// Next-hop MTU (meaningful for "fragmentation needed").
    pub fn next_hop_mtu(&self) -> u16 {
        self.be16(field::MTU)
    }

    /// Data after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True when the checksum over the whole buffer verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_be16(&mut self, r: field::Field, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the message type.
    pub fn set_msg_type(&mut self, m: Message) {
        self.buffer.as_mut()[field::TYPE] = m.into();
    }

    /// Sets the message code.
    pub fn set_msg_code(&mut self, c: u8) {
        self.buffer.as_mut()[field::CODE] = c;
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v)
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, v: u16) {
        self.set_be16(field::ECHO_IDENT, v)
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.set_be16(field::ECHO_SEQNO, v)
    }

    /// Sets bytes 4..8 (unused / next-hop MTU) for error messages.
    pub fn set_rest_of_header(&mut self, v: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes and stores the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.buffer.as_ref()));
        self.set_checksum(c);
    }

    /// Mutable data after the header.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// High-level ICMPv4 messages this switch handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv4Repr<'a> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Destination unreachable.
    DstUnreachable {
        /// Reason.
        reason: DstUnreachable,
        /// Next-hop MTU (only sent with `FragRequired`, else 0).
        mtu: u16,
        /// Offending IP header + at least 8 bytes of its payload.
        data: &'a [u8],
    },
}

impl<'a> Icmpv4Repr<'a> {
    /// Parses a message, verifying its checksum. Echo messages need code 0;
    /// other types are `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &'a Packet<&'a T>) -> Result<Icmpv4Repr<'a>> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        let data: &'a [u8] = &p.buffer.as_ref()[HEADER_LEN..];
        match (p.msg_type(), p.msg_code()) {
            (Message::EchoRequest, 0) => Ok(Icmpv4Repr::EchoRequest {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
                data,
            }),
            (Message::EchoReply, 0) => Ok(Icmpv4Repr::EchoReply {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
                data,
            }),
            (Message::DstUnreachable, code) => {
                let reason = DstUnreachable::from(code);
                let mtu = if reason == DstUnreachable::FragRequired {
                    p.next_hop_mtu()
                } else {
                    0
                };
                Ok(Icmpv4Repr::DstUnreachable { reason, mtu, data })
            }
            (Message::EchoRequest | Message::EchoReply, _) => Err(Error::Malformed),
            _ => Err(Error::Unsupported),
        }
    }

    /// Message length (header + data).
    pub fn buffer_len(&self) -> usize {
        match self {
            Icmpv4Repr::EchoRequest { data, .. }
            | Icmpv4Repr::EchoReply { data, .. }
            | Icmpv4Repr::DstUnreachable { data, .. } => HEADER_LEN + data.len(),
        }
    }

    /// Writes the message with its checksum; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let b = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        let mut p = Packet::new_unchecked(b);
        let data = match *self {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                let t = if matches!(self, Icmpv4Repr::EchoRequest { .. }) {
                    Message::EchoRequest
                } else {
                    Message::EchoReply
                };
                p.set_msg_type(t);
                p.set_msg_code(0);
                p.set_echo_ident(ident);
                p.set_echo_seq_no(seq_no);
                data
            }
            Icmpv4Repr::DstUnreachable { reason, mtu, data } => {
                p.set_msg_type(Message::DstUnreachable);
                p.set_msg_code(reason.into());
                p.set_rest_of_header(mtu as u32);
                data
            }
        };
        p.data_mut().copy_from_slice(data);
        p.fill_checksum();
        Ok(len)
    }
}

/// Turns an Ethernet(+VLAN)+IPv4+ICMP echo request whose IPv4 header starts at
/// `l3_offset` into the echo reply from `our_mac`, in place: Ethernet and IP
/// addresses swapped (Ethernet source becomes `our_mac`), ICMP type 0, TTL 64,
/// both checksums updated incrementally (RFC 1624).
///
/// Verified first: EtherType IPv4, version 4, lengths (`Truncated` /
/// `Malformed`), IP header and ICMP checksums (`Checksum`). Fragments, other
/// protocols and other ICMP messages are `Unsupported`.
pub fn make_echo_reply_in_place(
    frame: &mut [u8],
    l3_offset: usize,
    our_mac: MacAddr,
) -> Result<()> {
    if l3_offset < super::ethernet::HEADER_LEN {
        return Err(Error::Malformed);
    }
    if frame.len() < l3_offset.saturating_add(ipv4::HEADER_LEN) {
        return Err(Error::Truncated);
    }
    if frame[l3_offset - 2..l3_offset] != [0x08, 0x00] {
        return Err(Error::Malformed);
    }
    let (eth, l3) = frame.split_at_mut(l3_offset);
    let mut ip = ipv4::Packet::new_checked(l3)?;
    if ip.version() != 4 {
        return Err(Error::Malformed);
    }
    if !ip.verify_checksum() {
        return Err(Error::Checksum);
    }
    if ip.is_fragment() || ip.protocol() != IpProtocol::Icmp {
        return Err(Error::Unsupported);
    }
    {
        let icmp = Packet::new_checked(ip.payload())?;
        if icmp.msg_type() != Message::EchoRequest || icmp.msg_code() != 0 {
            return Err(Error::Unsupported);
        }
        if !icmp.verify_checksum() {
            return Err(Error::Checksum);
        }
    }
    // IP: swapping addresses leaves the checksum unchanged; TTL changes.
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
    let old = u16::from_be_bytes([ip.ttl(), u8::from(ip.protocol())]);
    ip.set_ttl(64);
    let new = u16::from_be_bytes([64, u8::from(ip.protocol())]);
    let c = checksum::update_u16(ip.checksum(), old, new);
    ip.set_checksum(c);
    let mut icmp = Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(Message::EchoReply);
    let c = checksum::update_u16(icmp.checksum(), 0x0800, 0x0000);
    icmp.set_checksum(c);
    let requester = MacAddr::from_bytes(&eth[6..12]);
    eth[0..6].copy_from_slice(&requester.0);
    eth[6..12].copy_from_slice(&our_mac.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{EtherType, EthernetRepr, VlanTag};
    use crate::wire::ipv4::Ipv4Repr;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;

    fn echo_frame(buf: &mut [u8], data: &[u8], vlan: bool) -> (usize, usize) {
        let eth = EthernetRepr {
            dst: MacAddr([2, 0, 0, 0, 0, 0xee]),
            src: MacAddr([2, 0, 0, 0, 0, 1]),
            vlan: vlan.then_some(VlanTag {
                pcp: 0,
                dei: false,
                vid: 5,
            }),
            ethertype: EtherType::Ipv4,
        };
        let l3 = eth.emit(buf).unwrap();
        let icmp = Icmpv4Repr::EchoRequest {
            ident: 0x1234,
            seq_no: 7,
            data,
        };
        let ip = Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 2),
            dst_addr: Ipv4Addr::new(10, 0, 0, 1),
            protocol: IpProtocol::Icmp,
            payload_len: icmp.buffer_len() as u16,
            ttl: 63,
            dscp_ecn: 0,
            ident: 1,
            dont_frag: true,
        };
        ip.emit(&mut buf[l3..]).unwrap();
        let n = icmp.emit(&mut buf[l3 + 20..]).unwrap();
        (l3, l3 + 20 + n)
    }

    proptest! {
        #[test]
        fn echo_reply_in_place(data in proptest::collection::vec(any::<u8>(), 0..100), vlan in any::<bool>()) {
            let mut buf = [0u8; 200];
            let (l3, len) = echo_frame(&mut buf, &data, vlan);
            let me = MacAddr([2, 0, 0, 0, 0, 0x99]);
            make_echo_reply_in_place(&mut buf[..len], l3, me).unwrap();
            let sl = etherparse::SlicedPacket::from_ethernet(&buf[..len]).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &sl.net else { panic!() };
            prop_assert_eq!(ip.header().ttl(), 64);
            prop_assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 0, 1));
            prop_assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
            let ipp = ipv4::Packet::new_checked(&buf[l3..len]).unwrap();
            prop_assert!(ipp.verify_checksum());
            let icmp = Packet::new_checked(ipp.payload()).unwrap();
            prop_assert_eq!(
                Icmpv4Repr::parse(&icmp).unwrap(),
                Icmpv4Repr::EchoReply { ident: 0x1234, seq_no: 7, data: &data[..] }
            );
            prop_assert_eq!(&buf[6..12], &me.0[..]);
            prop_assert_eq!(&buf[0..6], &[2, 0, 0, 0, 0, 1][..]);
            drop(sl);
            // A reply is not answered again.
            prop_assert_eq!(make_echo_reply_in_place(&mut buf[..len], l3, me), Err(Error::Unsupported));
        }

        #[test]
        fn repr_round_trip(code in any::<u8>(), mtu in any::<u16>(), data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let reason = DstUnreachable::from(code);
            let mtu = if reason == DstUnreachable::FragRequired { mtu } else { 0 };
            let r = Icmpv4Repr::DstUnreachable { reason, mtu, data: &data };
            let mut b = [0u8; 64];
            let n = r.emit(&mut b).unwrap();
            let p = Packet::new_checked(&b[..n]).unwrap();
            prop_assert_eq!(Icmpv4Repr::parse(&p).unwrap(), r);
            prop_assert!(etherparse::Icmpv4Slice::from_slice(&b[..n]).is_ok());
        }

        #[test]
        fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..80), off in 0usize..30) {
            let _ = make_echo_reply_in_place(&mut b, off, MacAddr::BROADCAST);
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no());
                let _ = (p.next_hop_mtu(), p.data().len(), p.verify_checksum());
                p.fill_checksum();
                prop_assert!(p.verify_checksum());
            }
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = Icmpv4Repr::parse(&p);
            }
        }
    }

    #[test]
    fn echo_reply_rejects_bad_input() {
        let mut buf = [0u8; 200];
        let (l3, len) = echo_frame(&mut buf, b"abcd", false);
        let me = MacAddr([2, 0, 0, 0, 0, 0x99]);
        assert_eq!(
            make_echo_reply_in_place(&mut buf[..len - 5], l3, me),
            Err(Error::Truncated)
        );
        buf[l3 + 20 + 8] ^= 1;
        assert_eq!(
            make_echo_reply_in_place(&mut buf[..len], l3, me),
            Err(Error::Checksum)
        );
        buf[l3 + 20 + 8] ^= 1;
        buf[l3 + 8] = 1;
        assert_eq!(
            make_echo_reply_in_place(&mut buf[..len], l3, me),
            Err(Error::Checksum)
        );
    }
}
