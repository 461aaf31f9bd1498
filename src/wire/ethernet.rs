//! Ethernet II header with up to two VLAN tags: the per-packet L2 parse.

use super::{Error, MacAddr, Result};

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;

/// EtherType values the switch looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    /// IPv4.
    Ipv4,
    /// ARP.
    Arp,
    /// IPv6.
    Ipv6,
    /// 802.1Q VLAN tag.
    Vlan,
    /// 802.1ad service tag.
    QinQ,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> EtherType {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(e: EtherType) -> u16 {
        match e {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::Unknown(v) => v,
        }
    }
}

/// What the pipeline needs from the L2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    /// Destination.
    pub dst: MacAddr,
    /// Source.
    pub src: MacAddr,
    /// EtherType after the VLAN tags.
    pub ethertype: EtherType,
    /// VLAN id of the outer tag, if tagged.
    pub vlan: Option<u16>,
    /// Offset of the L3 header.
    pub l3_offset: u16,
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn is_tag(t: u16) -> bool {
    t == 0x8100 || t == 0x88a8
}

/// Parses the Ethernet header and at most two VLAN tags.
#[inline]
pub fn parse_l2(b: &[u8]) -> Result<L2Header> {
    if b.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let mut t = be16(b, 12);
    let mut off = HEADER_LEN;
    let mut vlan = None;
    if is_tag(t) {
        for _ in 0..2 {
            if !is_tag(t) {
                break;
            }
            if b.len() < off + 4 {
                return Err(Error::Truncated);
            }
            vlan.get_or_insert(be16(b, off) & 0x0fff);
            t = be16(b, off + 2);
            off += 4;
        }
        if is_tag(t) {
            return Err(Error::Unsupported);
        }
    }
    Ok(L2Header {
        dst: MacAddr::from_bytes(&b[0..6]),
        src: MacAddr::from_bytes(&b[6..12]),
        ethertype: EtherType::from(t),
        vlan,
        l3_offset: off as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_and_tagged() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 20]);
        let h = parse_l2(&f).unwrap();
        assert_eq!(
            (h.ethertype, h.vlan, h.l3_offset),
            (EtherType::Ipv4, None, 14)
        );
        let mut t = f[..12].to_vec();
        t.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a, 0x86, 0xdd]);
        t.extend_from_slice(&[0u8; 40]);
        let h = parse_l2(&t).unwrap();
        assert_eq!(
            (h.ethertype, h.vlan, h.l3_offset),
            (EtherType::Ipv6, Some(42), 18)
        );
        assert_eq!(parse_l2(&t[..15]), Err(Error::Truncated));
        assert_eq!(parse_l2(&f[..13]), Err(Error::Truncated));
    }
}
