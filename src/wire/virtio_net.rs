//! The virtio-net header (`struct virtio_net_hdr`, 10 bytes) that a TAP opened
//! with `IFF_VNET_HDR` puts before every frame: checksum and GSO metadata.
//!
//! TAP uses the host's native byte order for this header unless `TUNSETVNETBE`
//! or `TUNSETVNETLE` is set; we never set either, so fields are native-endian.

use super::{Error, Result};

/// Length of the header as configured with `TUNSETVNETHDRSZ`.
pub const HEADER_LEN: usize = 10;

/// `flags`: the L4 checksum is partial; complete it from `csum_start`/`csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already validated.
pub const F_DATA_VALID: u8 = 2;

/// Kind of segmentation offload the frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GsoType {
    /// A normal frame.
    #[default]
    None,
    /// TCP over IPv4, to be cut into `gso_size` segments.
    TcpV4,
    /// UDP fragmentation offload (legacy UFO).
    Udp,
    /// TCP over IPv6.
    TcpV6,
    /// UDP segmentation offload (USO).
    UdpL4,
    /// A value this code does not know; kept so parse -> emit loses nothing.
    Unknown(u8),
}

impl GsoType {
    const ECN: u8 = 0x80;

    fn from_raw(v: u8) -> GsoType {
        match v & !Self::ECN {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            3 => GsoType::Udp,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            other => GsoType::Unknown(other),
        }
    }

    fn to_raw(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Unknown(v) => v,
        }
    }
}

/// Parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// `F_NEEDS_CSUM` / `F_DATA_VALID`.
    pub flags: u8,
    /// Segmentation requested for this frame.
    pub gso_type: GsoType,
    /// The ECN bit of `gso_type` (sender understands CWR).
    pub gso_ecn: bool,
    /// Length of all headers (Ethernet + IP + L4) as the sender saw it.
    pub hdr_len: u16,
    /// Maximum payload per segment.
    pub gso_size: u16,
    /// Where checksumming starts (offset from the Ethernet header).
    pub csum_start: u16,
    /// Where the checksum is stored, relative to `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// A header that asks for nothing: plain frame, checksum complete.
    pub const NONE: VirtioNetHdr = VirtioNetHdr {
        flags: 0,
        gso_type: GsoType::None,
        gso_ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// A UDP datagram whose UDP header starts at `l4` and whose checksum
    /// field holds the pseudo-header sum: the checksum is to be completed.
    pub fn udp_partial(l4: usize) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 6,
            ..VirtioNetHdr::NONE
        }
    }

    /// A USO frame (`UDP_L4`) of datagrams with `mss` payload bytes each,
    /// its UDP header at `l4` and its checksum partial.
    pub fn uso(l4: usize, mss: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            gso_type: GsoType::UdpL4,
            hdr_len: (l4 + 8) as u16,
            gso_size: mss,
            ..VirtioNetHdr::udp_partial(l4)
        }
    }

    /// Parses the first [`HEADER_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<VirtioNetHdr> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        Ok(VirtioNetHdr {
            flags: buf[0],
            gso_type: GsoType::from_raw(buf[1]),
            gso_ecn: buf[1] & GsoType::ECN != 0,
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < HEADER_LEN {
            return Err(Error::BufferTooSmall);
        }
        buf[0] = self.flags;
        buf[1] = self.gso_type.to_raw() | if self.gso_ecn { GsoType::ECN } else { 0 };
        buf[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        Ok(())
    }

    /// The header as the 10 bytes TAP expects.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        // Cannot fail: the array has exactly HEADER_LEN bytes.
        let _ = self.emit(&mut b);
        b
    }

    /// True when the frame must be segmented before it can leave through a
    /// port without segmentation offload.
    pub fn is_gso(&self) -> bool {
        self.gso_type != GsoType::None
    }

    /// True when the L4 checksum still has to be completed.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_unknown_and_ecn() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::Unknown(9),
            gso_ecn: true,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHdr::parse(&h.to_bytes()), Ok(h));
        assert_eq!(VirtioNetHdr::parse(&[0u8; 9]), Err(Error::Truncated));
    }
}
