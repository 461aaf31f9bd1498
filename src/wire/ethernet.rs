//! Ethernet II frames with up to two 802.1Q / 802.1ad VLAN tags: the
//! [`Frame`] view, the per-packet fast path [`parse_l2`], and [`EthernetRepr`].

use super::{Error, MacAddr, Result};

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = 4;

/// The EtherType / TPID field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// IPv4 (0x0800).
    Ipv4,
    /// ARP (0x0806).
    Arp,
    /// IPv6 (0x86DD).
    Ipv6,
    /// 802.1Q C-tag (0x8100).
    Vlan,
    /// 802.1ad S-tag (0x88A8).
    QinQ,
    /// Anything else, kept verbatim.
    Unknown(u16),
}

impl Default for EtherType {
    /// Zero: not a valid EtherType, the value of a frame not parsed yet.
    fn default() -> EtherType {
        EtherType::Unknown(0)
    }
}

impl From<u16> for EtherType {
    fn from(v: u16) -> EtherType {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86DD => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88A8 => EtherType::QinQ,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86DD,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88A8,
            EtherType::Unknown(other) => other,
        }
    }
}

#[inline(always)]
/// Whether an EtherType is an 802.1Q or 802.1ad VLAN tag.
pub fn is_tag(v: u16) -> bool {
    v == 0x8100 || v == 0x88A8
}

/// A VLAN tag control information field (TCI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTag {
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier (12 bits).
    pub vid: u16,
}

impl VlanTag {
    /// Decodes a 16-bit TCI.
    pub fn from_tci(tci: u16) -> VlanTag {
        VlanTag {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    /// Encodes as a 16-bit TCI (excess bits of `pcp`/`vid` are masked off).
    pub fn to_tci(self) -> u16 {
        ((self.pcp as u16 & 7) << 13) | ((self.dei as u16) << 12) | (self.vid & 0x0fff)
    }
}

/// Byte ranges of the fixed header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Destination MAC.
    pub const DESTINATION: Field = 0..6;
    /// Source MAC.
    pub const SOURCE: Field = 6..12;
    /// Outer EtherType or TPID.
    pub const ETHERTYPE: Field = 12..14;
    /// TCI of the first VLAN tag.
    pub const TCI1: Field = 14..16;
    /// EtherType (or inner TPID) after the first tag.
    pub const ETHERTYPE1: Field = 16..18;
    /// TCI of the second VLAN tag.
    pub const TCI2: Field = 18..20;
    /// EtherType after the second tag.
    pub const ETHERTYPE2: Field = 20..22;
}

/// Zero-copy view of an Ethernet frame.
///
/// After [`Frame::new_checked`] / [`Frame::check_len`] succeeded, no accessor
/// panics: the base header and every VLAN tag counted by
/// [`Frame::payload_offset`] are inside the buffer.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking anything.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer and calls [`Frame::check_len`].
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let f = Frame::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Ensures the header and up to two VLAN tags fit in the buffer.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b.len() < self.payload_offset() {
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

    /// Destination MAC address.
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// Source MAC address.
    pub fn src(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType / TPID at offset 12.
    pub fn outer_ethertype(&self) -> EtherType {
        EtherType::from(self.be16(field::ETHERTYPE))
    }

    /// The first VLAN tag (802.1Q or 802.1ad), if any.
    pub fn vlan(&self) -> Option<VlanTag> {
        if is_tag(self.be16(field::ETHERTYPE)) {
            Some(VlanTag::from_tci(self.be16(field::TCI1)))
        } else {
            None
        }
    }

    /// The second (inner) VLAN tag, if the frame is double tagged.
    pub fn inner_vlan(&self) -> Option<VlanTag> {
        if self.payload_offset() == HEADER_LEN + 2 * VLAN_TAG_LEN {
            Some(VlanTag::from_tci(self.be16(field::TCI2)))
        } else {
            None
        }
    }

    /// Offset of the L3 payload: 14, 18 or 22. Only reads bytes that exist
    /// (an unchecked short buffer yields the offset the tags would need).
    pub fn payload_offset(&self) -> usize {
        let b = self.buffer.as_ref();
        let at = |i: usize| match (b.get(i), b.get(i + 1)) {
            (Some(&x), Some(&y)) => u16::from_be_bytes([x, y]),
            _ => 0,
        };
        if !is_tag(at(12)) {
            HEADER_LEN
        } else if !is_tag(at(16)) {
            HEADER_LEN + VLAN_TAG_LEN
        } else {
            HEADER_LEN + 2 * VLAN_TAG_LEN
        }
    }

    /// The EtherType after at most two VLAN tags. A third tag is reported
    /// as-is (`Vlan`/`QinQ`), i.e. as an unhandled protocol.
    pub fn ethertype(&self) -> EtherType {
        let o = self.payload_offset();
        EtherType::from(self.be16(o - 2..o))
    }

    /// The bytes after the Ethernet header and VLAN tags.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_offset()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType that [`Frame::ethertype`] returns (after the tags).
    pub fn set_ethertype(&mut self, et: EtherType) {
        let o = self.payload_offset();
        self.buffer.as_mut()[o - 2..o].copy_from_slice(&u16::from(et).to_be_bytes());
    }

    /// Sets the EtherType / TPID at offset 12.
    pub fn set_outer_ethertype(&mut self, et: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(et).to_be_bytes());
    }

    /// Mutable bytes after the Ethernet header and VLAN tags.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let o = self.payload_offset();
        &mut self.buffer.as_mut()[o..]
    }
}

/// What the forwarding fast path needs from an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType after at most two VLAN tags.
    pub ethertype: EtherType,
    /// VID of the first (outer) VLAN tag.
    pub vlan: Option<u16>,
    /// Offset of the L3 header (14, 18 or 22).
    pub l3_offset: u16,
}

/// Parses the Ethernet header of `buf` for forwarding: minimal and
/// branch-light (one branch for the untagged common case). Never panics.
#[inline]
pub fn parse_l2(buf: &[u8]) -> Result<L2Header> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(Error::Truncated);
    };
    let dst = MacAddr([h[0], h[1], h[2], h[3], h[4], h[5]]);
    let src = MacAddr([h[6], h[7], h[8], h[9], h[10], h[11]]);
    let et = u16::from_be_bytes([h[12], h[13]]);
    if !is_tag(et) {
        return Ok(L2Header {
            dst,
            src,
            ethertype: EtherType::from(et),
            vlan: None,
            l3_offset: HEADER_LEN as u16,
        });
    }
    parse_tagged(buf, dst, src)
}

#[inline(never)]
fn parse_tagged(buf: &[u8], dst: MacAddr, src: MacAddr) -> Result<L2Header> {
    let Some(t) = buf.first_chunk::<22>().map(|a| &a[..]).or(buf.get(..18)) else {
        return Err(Error::Truncated);
    };
    let vid = u16::from_be_bytes([t[14], t[15]]) & 0x0fff;
    let et1 = u16::from_be_bytes([t[16], t[17]]);
    if !is_tag(et1) {
        return Ok(L2Header {
            dst,
            src,
            ethertype: EtherType::from(et1),
            vlan: Some(vid),
            l3_offset: 18,
        });
    }
    if t.len() < 22 {
        return Err(Error::Truncated);
    }
    Ok(L2Header {
        dst,
        src,
        ethertype: EtherType::from(u16::from_be_bytes([t[20], t[21]])),
        vlan: Some(vid),
        l3_offset: 22,
    })
}

/// High-level Ethernet header with at most one 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// Optional 802.1Q tag (emitted with TPID 0x8100).
    pub vlan: Option<VlanTag>,
    /// EtherType of the payload.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Parses a checked frame. Double-tagged frames and 802.1ad outer tags are
    /// `Unsupported` (this repr could not re-emit them unchanged).
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        let vlan = match frame.outer_ethertype() {
            EtherType::Vlan if frame.payload_offset() == 18 => frame.vlan(),
            EtherType::Vlan | EtherType::QinQ => return Err(Error::Unsupported),
            _ => None,
        };
        Ok(EthernetRepr {
            dst: frame.dst(),
            src: frame.src(),
            vlan,
            ethertype: frame.ethertype(),
        })
    }

    /// Header length: 14, or 18 with a tag.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + if self.vlan.is_some() { VLAN_TAG_LEN } else { 0 }
    }

    /// Writes the header to the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let b = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        b[field::DESTINATION].copy_from_slice(&self.dst.0);
        b[field::SOURCE].copy_from_slice(&self.src.0);
        let et = u16::from(self.ethertype).to_be_bytes();
        match self.vlan {
            Some(tag) => {
                b[field::ETHERTYPE].copy_from_slice(&0x8100u16.to_be_bytes());
                b[field::TCI1].copy_from_slice(&tag.to_tci().to_be_bytes());
                b[field::ETHERTYPE1].copy_from_slice(&et);
            }
            None => b[field::ETHERTYPE].copy_from_slice(&et),
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNTAGGED: [u8; 16] = [
        1, 2, 3, 4, 5, 6, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, 0xaa, 0xbb,
    ];

    #[test]
    fn untagged() {
        let f = Frame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst(), MacAddr([1, 2, 3, 4, 5, 6]));
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
        assert_eq!(f.vlan(), None);
        let h = parse_l2(&UNTAGGED).unwrap();
        assert_eq!(
            (h.l3_offset, h.vlan, h.ethertype),
            (14, None, EtherType::Ipv4)
        );
    }

    #[test]
    fn double_tagged() {
        let mut b = [0u8; 22];
        b[12..14].copy_from_slice(&[0x88, 0xa8]);
        b[14..16].copy_from_slice(&[0x20, 0x0a]);
        b[16..18].copy_from_slice(&[0x81, 0x00]);
        b[18..20].copy_from_slice(&[0x00, 0x14]);
        b[20..22].copy_from_slice(&[0x86, 0xdd]);
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.payload_offset(), 22);
        assert_eq!(
            f.vlan(),
            Some(VlanTag {
                pcp: 1,
                dei: false,
                vid: 10
            })
        );
        assert_eq!(f.inner_vlan().unwrap().vid, 20);
        assert_eq!(f.ethertype(), EtherType::Ipv6);
        let h = parse_l2(&b).unwrap();
        assert_eq!(
            (h.l3_offset, h.vlan, h.ethertype),
            (22, Some(10), EtherType::Ipv6)
        );
        assert_eq!(Frame::new_checked(&b[..21]).err(), Some(Error::Truncated));
        assert_eq!(parse_l2(&b[..21]), Err(Error::Truncated));
        assert_eq!(parse_l2(&b[..17]), Err(Error::Truncated));
        assert_eq!(EthernetRepr::parse(&f), Err(Error::Unsupported));
    }

    fn arb_repr() -> impl Strategy<Value = EthernetRepr> {
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            proptest::option::of((0u8..8, any::<bool>(), 0u16..4096)),
            any::<u16>().prop_filter("not a tag", |e| !is_tag(*e)),
        )
            .prop_map(|(d, s, v, e)| EthernetRepr {
                dst: MacAddr(d),
                src: MacAddr(s),
                vlan: v.map(|(pcp, dei, vid)| VlanTag { pcp, dei, vid }),
                ethertype: EtherType::from(e),
            })
    }

    proptest! {
        #[test]
        fn repr_round_trip(r in arb_repr(), payload in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = [0u8; 32];
            let n = r.emit(&mut buf).unwrap();
            buf[n..n + payload.len()].copy_from_slice(&payload);
            let f = Frame::new_checked(&buf[..n + payload.len()]).unwrap();
            prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
            prop_assert_eq!(f.payload(), &payload[..]);
            let h = parse_l2(f.into_inner()).unwrap();
            prop_assert_eq!(h.vlan, r.vlan.map(|t| t.vid));
            prop_assert_eq!(h.ethertype, r.ethertype);
            prop_assert_eq!(h.l3_offset as usize, n);
        }

        #[test]
        fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..40), tag in any::<bool>()) {
            if tag && b.len() > 17 { b[12] = 0x81; b[13] = 0; b[16] = 0x88; b[17] = 0xa8; }
            let l2 = parse_l2(&b);
            if let Ok(mut f) = Frame::new_checked(&mut b[..]) {
                let h = l2.unwrap();
                prop_assert_eq!(h.l3_offset as usize, f.payload_offset());
                prop_assert_eq!(h.ethertype, f.ethertype());
                let _ = (f.dst(), f.src(), f.outer_ethertype(), f.vlan(), f.inner_vlan(), f.payload().len());
                let _ = EthernetRepr::parse(&f);
                let e = f.ethertype();
                f.set_ethertype(e);
                f.set_dst(MacAddr::BROADCAST);
                f.set_src(MacAddr::BROADCAST);
                f.payload_mut();
            } else {
                prop_assert!(l2.is_err());
            }
        }
    }
}
