//! Ethernet MAC address value type.

use core::fmt;
use core::str::FromStr;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Builds an address from the first six bytes of `b` (caller checks length).
    pub fn from_bytes(b: &[u8]) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        MacAddr(m)
    }

    /// Group bit set: broadcast or multicast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// All ones.
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }

    /// All zeros: never a valid source.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Locally administered, unicast address derived from `seed` (used for TAPs
    /// and gateways so addresses are stable across restarts).
    pub fn local_from_u32(prefix: u8, seed: u32) -> MacAddr {
        let s = seed.to_be_bytes();
        MacAddr([0x02, prefix, s[0], s[1], s[2], s[3]])
    }

    /// The address as a u64 (upper 16 bits zero), handy as a hash key.
    pub const fn to_u64(&self) -> u64 {
        let b = self.0;
        ((b[0] as u64) << 40)
            | ((b[1] as u64) << 32)
            | ((b[2] as u64) << 24)
            | ((b[3] as u64) << 16)
            | ((b[4] as u64) << 8)
            | (b[5] as u64)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error for a MAC address string that is not six hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 {
                return Err(ParseMacError(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(ParseMacError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let m: MacAddr = "02:ab:00:00:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:00:00:00:01");
        assert!(!m.is_multicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!("02:ab:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:ab:00:00:00:01:02".parse::<MacAddr>().is_err());
        assert!("zz:ab:00:00:00:01".parse::<MacAddr>().is_err());
        assert_eq!(m.to_u64(), 0x02ab_0000_0001);
    }
}
