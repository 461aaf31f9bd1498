//! ARP for Ethernet and IPv4 (RFC 826): request/reply rewriting for the
//! gateway.

use super::{Error, MacAddr, Result};

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;
/// `oper` of a request.
pub const OP_REQUEST: u16 = 1;
/// `oper` of a reply.
pub const OP_REPLY: u16 = 2;

/// Turns the Ethernet + ARP request in `frame` (ARP at `l3`) into the reply
/// from `our_mac` for the requested address, in place.
pub fn make_reply_in_place(frame: &mut [u8], l3: usize, our_mac: MacAddr) -> Result<()> {
    let arp = frame.get_mut(l3..l3 + PACKET_LEN).ok_or(Error::Truncated)?;
    // htype Ethernet, ptype IPv4, hlen 6, plen 4.
    if arp[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return Err(Error::Unsupported);
    }
    if u16::from_be_bytes([arp[6], arp[7]]) != OP_REQUEST {
        return Err(Error::Malformed);
    }
    let mut sender = [0u8; 10];
    sender.copy_from_slice(&arp[8..18]);
    let mut target_ip = [0u8; 4];
    target_ip.copy_from_slice(&arp[24..28]);
    arp[6..8].copy_from_slice(&OP_REPLY.to_be_bytes());
    arp[8..14].copy_from_slice(&our_mac.0);
    arp[14..18].copy_from_slice(&target_ip);
    arp[18..28].copy_from_slice(&sender);
    frame[0..6].copy_from_slice(&sender[0..6]);
    frame[6..12].copy_from_slice(&our_mac.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_becomes_reply() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        let gw = MacAddr([2, 0x5e, 0, 0, 0, 9]);
        make_reply_in_place(&mut f, 14, gw).unwrap();
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &gw.0);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[22..28], &gw.0);
        assert_eq!(&f[28..32], &[10, 0, 0, 1]);
        assert_eq!(&f[32..42], &[2, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
        assert_eq!(make_reply_in_place(&mut f, 14, gw), Err(Error::Malformed));
        assert_eq!(
            make_reply_in_place(&mut f[..30], 14, gw),
            Err(Error::Truncated)
        );
    }
}
