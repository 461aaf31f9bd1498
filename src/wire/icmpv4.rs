//! ICMPv4 echo (RFC 792): turning a request to the gateway into its reply.

use super::{Error, MacAddr, Result};

/// Echo reply type.
pub const ECHO_REPLY: u8 = 0;
/// Echo request type.
pub const ECHO_REQUEST: u8 = 8;

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn checksum(data: &[u8]) -> u16 {
    let mut s = sum16(data);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Turns the Ethernet + IPv4 + ICMP echo request in `frame` (IPv4 header at
/// `l3`) into the echo reply from `our_mac`, in place: MACs and addresses
/// swapped, type 0, TTL 64, both checksums recomputed.
pub fn make_echo_reply_in_place(frame: &mut [u8], l3: usize, our_mac: MacAddr) -> Result<()> {
    let ip = frame.get(l3..l3 + 20).ok_or(Error::Truncated)?;
    if ip[0] >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl + 8 || frame.len() < l3 + total {
        return Err(Error::Truncated);
    }
    // Fragments carry no complete echo request.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(Error::Unsupported);
    }
    if frame[l3 + ihl] != ECHO_REQUEST {
        return Err(Error::Malformed);
    }
    let src_mac: [u8; 6] = frame[6..12].try_into().map_err(|_| Error::Truncated)?;
    frame[0..6].copy_from_slice(&src_mac);
    frame[6..12].copy_from_slice(&our_mac.0);
    let ip = &mut frame[l3..l3 + total];
    let mut src = [0u8; 4];
    src.copy_from_slice(&ip[12..16]);
    ip.copy_within(16..20, 12);
    ip[16..20].copy_from_slice(&src);
    ip[8] = 64;
    ip[10..12].fill(0);
    let c = checksum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut ip[ihl..];
    icmp[0] = ECHO_REPLY;
    icmp[2..4].fill(0);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket};

    #[test]
    fn echo_request_becomes_valid_reply() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0x5e, 0, 0, 0, 9])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 20)
            .icmpv4_echo_request(7, 3);
        let mut f = Vec::new();
        b.write(&mut f, b"hello ping").unwrap();
        make_echo_reply_in_place(&mut f, 14, MacAddr([2, 0x5e, 0, 0, 0, 9])).unwrap();
        let copy = f.clone();
        let p = SlicedPacket::from_ethernet(&copy).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("ipv4")
        };
        assert_eq!(ip.header().source(), [10, 0, 0, 1]);
        assert_eq!(ip.header().destination(), [10, 0, 0, 2]);
        let hdr = ip.header().to_header();
        assert_eq!(hdr.header_checksum, hdr.calc_header_checksum());
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
            panic!("icmp")
        };
        assert!(matches!(icmp.icmp_type(), Icmpv4Type::EchoReply(h) if h.id == 7 && h.seq == 3));
        assert_eq!(checksum(icmp.slice()), 0);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        // A reply is not a request: refused.
        assert!(make_echo_reply_in_place(&mut f, 14, MacAddr([2; 6])).is_err());
        assert!(make_echo_reply_in_place(&mut f[..30], 14, MacAddr([2; 6])).is_err());
    }
}
