//! ARP for Ethernet/IPv4 (RFC 826): the [`Packet`] view, [`ArpRepr`] and
//! [`make_reply_in_place`] for answering requests inside the receive buffer.

use super::{Error, MacAddr, Result};
use core::net::Ipv4Addr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Request (1).
    Request,
    /// Reply (2).
    Reply,
    /// Anything else, kept verbatim.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Operation {
        match v {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(v: Operation) -> u16 {
        match v {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// Byte ranges of the fields (Ethernet/IPv4 layout).
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Hardware type.
    pub const HTYPE: Field = 0..2;
    /// Protocol type.
    pub const PTYPE: Field = 2..4;
    /// Hardware address length.
    pub const HLEN: usize = 4;
    /// Protocol address length.
    pub const PLEN: usize = 5;
    /// Operation.
    pub const OPER: Field = 6..8;
    /// Sender hardware address.
    pub const SHA: Field = 8..14;
    /// Sender protocol address.
    pub const SPA: Field = 14..18;
    /// Target hardware address.
    pub const THA: Field = 18..24;
    /// Target protocol address.
    pub const TPA: Field = 24..28;
}

/// Zero-copy view of an Ethernet/IPv4 ARP packet.
///
/// After [`Packet::check_len`] succeeded (buffer >= 28 bytes) no accessor
/// panics. Whether the packet really is Ethernet/IPv4 is checked by
/// [`Packet::check_ethernet_ipv4`] / [`ArpRepr::parse`].
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

    /// Checks that 28 bytes are present.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// `Unsupported` unless htype 1, ptype 0x0800, hlen 6, plen 4.
    pub fn check_ethernet_ipv4(&self) -> Result<()> {
        if self.hardware_type() != 1
            || self.protocol_type() != 0x0800
            || self.hardware_len() != 6
            || self.protocol_len() != 4
        {
            return Err(Error::Unsupported);
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

    fn ip(&self, r: field::Field) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        self.be16(field::HTYPE)
    }

    /// Protocol type (0x0800 = IPv4).
    pub fn protocol_type(&self) -> u16 {
        self.be16(field::PTYPE)
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation.
    pub fn operation(&self) -> Operation {
        Operation::from(self.be16(field::OPER))
    }

    /// Sender MAC.
    pub fn source_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    /// Sender IPv4 address.
    pub fn source_ip(&self) -> Ipv4Addr {
        self.ip(field::SPA)
    }

    /// Target MAC.
    pub fn target_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    /// Target IPv4 address.
    pub fn target_ip(&self) -> Ipv4Addr {
        self.ip(field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes htype 1, ptype 0x0800, hlen 6, plen 4.
    pub fn set_ethernet_ipv4(&mut self) {
        self.buffer.as_mut()[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, op: Operation) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&u16::from(op).to_be_bytes());
    }

    /// Sets the sender MAC.
    pub fn set_source_mac(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&m.0);
    }

    /// Sets the sender IPv4 address.
    pub fn set_source_ip(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&a.octets());
    }

    /// Sets the target MAC.
    pub fn set_target_mac(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&m.0);
    }

    /// Sets the target IPv4 address.
    pub fn set_target_ip(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&a.octets());
    }
}

/// High-level Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Operation.
    pub operation: Operation,
    /// Sender MAC.
    pub source_mac: MacAddr,
    /// Sender IPv4 address.
    pub source_ip: Ipv4Addr,
    /// Target MAC.
    pub target_mac: MacAddr,
    /// Target IPv4 address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 ARP packet (others are `Unsupported`).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<ArpRepr> {
        p.check_len()?;
        p.check_ethernet_ipv4()?;
        Ok(ArpRepr {
            operation: p.operation(),
            source_mac: p.source_mac(),
            source_ip: p.source_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        })
    }

    /// Packet length (28).
    pub fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the 28-byte packet; returns 28.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let b = buf.get_mut(..PACKET_LEN).ok_or(Error::BufferTooSmall)?;
        let mut p = Packet::new_unchecked(b);
        p.set_ethernet_ipv4();
        p.set_operation(self.operation);
        p.set_source_mac(self.source_mac);
        p.set_source_ip(self.source_ip);
        p.set_target_mac(self.target_mac);
        p.set_target_ip(self.target_ip);
        Ok(PACKET_LEN)
    }
}

/// Turns an Ethernet(+VLAN)+ARP request whose ARP header starts at
/// `l3_offset` into the reply from `our_mac` for the requested IP: operation
/// 2, sender = (`our_mac`, requested IP), target = the requester; Ethernet
/// destination = the request's source, Ethernet source = `our_mac`.
///
/// The caller decides whether the requested IP is one we answer for. Errors:
/// `Truncated`, `Malformed` (EtherType before `l3_offset` is not ARP or
/// `l3_offset < 14`), `Unsupported` (not Ethernet/IPv4 or not a request).
pub fn make_reply_in_place(frame: &mut [u8], l3_offset: usize, our_mac: MacAddr) -> Result<()> {
    if l3_offset < super::ethernet::HEADER_LEN {
        return Err(Error::Malformed);
    }
    if frame.len() < l3_offset.saturating_add(PACKET_LEN) {
        return Err(Error::Truncated);
    }
    if frame[l3_offset - 2..l3_offset] != [0x08, 0x06] {
        return Err(Error::Malformed);
    }
    let (eth, rest) = frame.split_at_mut(l3_offset);
    let mut p = Packet::new_checked(rest)?;
    let req = ArpRepr::parse(&p)?;
    if req.operation != Operation::Request {
        return Err(Error::Unsupported);
    }
    p.set_operation(Operation::Reply);
    p.set_source_mac(our_mac);
    p.set_source_ip(req.target_ip);
    p.set_target_mac(req.source_mac);
    p.set_target_ip(req.source_ip);
    let requester = MacAddr::from_bytes(&eth[6..12]);
    eth[0..6].copy_from_slice(&requester.0);
    eth[6..12].copy_from_slice(&our_mac.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{EtherType, EthernetRepr, Frame};
    use proptest::prelude::*;

    #[test]
    fn reply_in_place() {
        let me = MacAddr([2, 0, 0, 0, 0, 0xee]);
        let peer = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut f = [0u8; 60];
        let eth = EthernetRepr {
            dst: MacAddr::BROADCAST,
            src: peer,
            vlan: None,
            ethertype: EtherType::Arp,
        };
        let n = eth.emit(&mut f).unwrap();
        let req = ArpRepr {
            operation: Operation::Request,
            source_mac: peer,
            source_ip: Ipv4Addr::new(10, 0, 0, 2),
            target_mac: MacAddr::default(),
            target_ip: Ipv4Addr::new(10, 0, 0, 1),
        };
        req.emit(&mut f[n..]).unwrap();
        make_reply_in_place(&mut f, n, me).unwrap();
        let fr = Frame::new_checked(&f[..]).unwrap();
        assert_eq!((fr.dst(), fr.src()), (peer, me));
        let rep = ArpRepr::parse(&Packet::new_checked(fr.payload()).unwrap()).unwrap();
        assert_eq!(
            rep,
            ArpRepr {
                operation: Operation::Reply,
                source_mac: me,
                source_ip: req.target_ip,
                target_mac: peer,
                target_ip: req.source_ip,
            }
        );
        // A reply is not answered again.
        assert_eq!(make_reply_in_place(&mut f, n, me), Err(Error::Unsupported));
        assert_eq!(
            make_reply_in_place(&mut f[..41], n, me),
            Err(Error::Truncated)
        );
        assert_eq!(make_reply_in_place(&mut f, 1, me), Err(Error::Malformed));
        assert_eq!(
            make_reply_in_place(&mut f, usize::MAX, me),
            Err(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn repr_round_trip(op in any::<u16>(), sm in any::<[u8; 6]>(), si in any::<u32>(), tm in any::<[u8; 6]>(), ti in any::<u32>()) {
            let r = ArpRepr { operation: op.into(), source_mac: MacAddr(sm), source_ip: si.into(), target_mac: MacAddr(tm), target_ip: ti.into() };
            let mut b = [0u8; 28];
            r.emit(&mut b).unwrap();
            prop_assert_eq!(ArpRepr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
            let e = etherparse::ArpPacketSlice::from_slice(&b).unwrap();
            prop_assert_eq!(e.operation().0, op);
        }

        #[test]
        fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..70), off in 0usize..40) {
            let _ = make_reply_in_place(&mut b, off, MacAddr::BROADCAST);
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = (p.hardware_type(), p.protocol_type(), p.hardware_len(), p.protocol_len(), p.operation());
                let _ = (p.source_mac(), p.source_ip(), p.target_mac(), p.target_ip(), ArpRepr::parse(&p));
            }
        }
    }
}
