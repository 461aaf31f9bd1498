//! CIDR value types for subnets ([`Ipv4Net`], [`Ipv6Net`]): parsed and
//! validated once at the edge, so the rest of the control plane never sees a
//! malformed prefix or a subnet with host bits set.

use core::fmt;
use core::str::FromStr;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/PREFIX` part.
    #[error("invalid subnet {0:?}: expected ADDRESS/PREFIX, e.g. 10.89.3.0/24")]
    MissingPrefix(String),
    /// The address part does not parse.
    #[error("invalid subnet {0:?}: {1:?} is not an IPv{2} address")]
    BadAddress(String, String, u8),
    /// The prefix is not a number in range.
    #[error("invalid subnet {0:?}: the prefix length must be a number from 0 to {1}")]
    BadPrefix(String, u8),
    /// Bits are set past the prefix.
    #[error("invalid subnet {0:?}: host bits are set; did you mean {1}?")]
    HostBits(String, String),
}

/// An IPv4 subnet: a network address whose host bits are zero, and a prefix
/// length of 0..=32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The subnet `addr/prefix`, or `None` if the prefix exceeds 32 or host
    /// bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        if prefix > 32 || u32::from(addr) & !mask4(prefix) != 0 {
            return None;
        }
        Some(Ipv4Net { addr, prefix })
    }

    /// The network address.
    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as an integer.
    pub fn mask(&self) -> u32 {
        mask4(self.prefix)
    }

    /// The broadcast (last) address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the subnet (0 is the network address), if inside.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }

    /// True if `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// True if the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The consecutive subnets of length `prefix` that make up this one
    /// (empty if `prefix` is shorter than ours or over 32).
    pub fn subnets(&self, prefix: u8) -> impl Iterator<Item = Ipv4Net> + '_ {
        let count = if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1u64 << (prefix - self.prefix)
        };
        let step = 1u64 << (32 - u32::from(prefix.min(32)));
        (0..count).map(move |i| Ipv4Net {
            addr: Ipv4Addr::from((u64::from(u32::from(self.addr)) + i * step) as u32),
            prefix,
        })
    }
}

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// An IPv6 subnet: a network address whose host bits are zero, and a prefix
/// length of 0..=128.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix: u8,
}

impl Ipv6Net {
    /// The subnet `addr/prefix`, or `None` if the prefix exceeds 128 or host
    /// bits are set.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Option<Ipv6Net> {
        if prefix > 128 || u128::from(addr) & !mask6(prefix) != 0 {
            return None;
        }
        Some(Ipv6Net { addr, prefix })
    }

    /// The network address.
    pub const fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask6(self.prefix) == u128::from(self.addr)
    }

    /// True if the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The `n`th address of the subnet (0 is the subnet-router anycast
    /// address), if inside.
    pub fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.prefix);
        let inside = host_bits == 128 || n < (1u128 << host_bits);
        inside.then(|| Ipv6Addr::from(u128::from(self.addr) + n))
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    }
}

fn split(s: &str, max: u8) -> Result<(&str, u8), CidrError> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| CidrError::MissingPrefix(s.to_string()))?;
    let digits_only = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| digits_only && *p <= max)
        .ok_or_else(|| CidrError::BadPrefix(s.to_string(), max))?;
    Ok((addr, prefix))
}

impl FromStr for Ipv4Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, prefix) = split(s, 32)?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| CidrError::BadAddress(s.to_string(), a.to_string(), 4))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| {
            let net = Ipv4Addr::from(u32::from(addr) & mask4(prefix));
            CidrError::HostBits(s.to_string(), format!("{net}/{prefix}"))
        })
    }
}

impl FromStr for Ipv6Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, prefix) = split(s, 128)?;
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| CidrError::BadAddress(s.to_string(), a.to_string(), 6))?;
        Ipv6Net::new(addr, prefix).ok_or_else(|| {
            let net = Ipv6Addr::from(u128::from(addr) & mask6(prefix));
            CidrError::HostBits(s.to_string(), format!("{net}/{prefix}"))
        })
    }
}

macro_rules! text_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.addr, self.prefix)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
text_impls!(Ipv4Net);
text_impls!(Ipv6Net);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_v4() {
        let n: Ipv4Net = "10.89.3.0/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.89.3.0/24");
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 89, 3, 255));
        assert!(n.contains(Ipv4Addr::new(10, 89, 3, 7)));
        assert!(!n.contains(Ipv4Addr::new(10, 89, 4, 0)));
        assert_eq!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().size(), 1 << 32);
        assert_eq!("1.2.3.4/32".parse::<Ipv4Net>().unwrap().size(), 1);
    }

    #[test]
    fn rejects_bad_v4() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "/8",
            "",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            "10.0.0.0/256",
            "::/0",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} accepted");
        }
        let e = "10.1.2.3/16".parse::<Ipv4Net>().unwrap_err();
        assert_eq!(
            e,
            CidrError::HostBits("10.1.2.3/16".into(), "10.1.0.0/16".into())
        );
        assert!(e.to_string().contains("did you mean 10.1.0.0/16"));
    }

    #[test]
    fn overlap_and_split() {
        let a: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let b: Ipv4Net = "10.9.0.0/16".parse().unwrap();
        let c: Ipv4Net = "11.0.0.0/8".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        let subs: Vec<_> = b.subnets(24).collect();
        assert_eq!(subs.len(), 256);
        assert_eq!(subs[255].to_string(), "10.9.255.0/24");
        assert_eq!(b.subnets(8).count(), 0);
        assert_eq!(b.subnets(33).count(), 0);
    }

    #[test]
    fn v6() {
        let n: Ipv6Net = "fd00:89::/64".parse().unwrap();
        assert_eq!(n.nth(2).unwrap().to_string(), "fd00:89::2");
        assert!("fd00::1/64".parse::<Ipv6Net>().is_err());
        assert!("fd00::/129".parse::<Ipv6Net>().is_err());
        assert!("10.0.0.0/8".parse::<Ipv6Net>().is_err());
        assert_eq!(
            "::/0".parse::<Ipv6Net>().unwrap().nth(u128::MAX).unwrap(),
            Ipv6Addr::from(u128::MAX)
        );
        assert!("fd00::/127".parse::<Ipv6Net>().unwrap().nth(2).is_none());
    }

    #[test]
    fn serde_round_trip_and_error() {
        let n: Ipv4Net = serde_json::from_str("\"172.28.0.0/24\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"172.28.0.0/24\"");
        let e = serde_json::from_str::<Ipv4Net>("\"172.28.0.1/24\"").unwrap_err();
        assert!(e.to_string().contains("host bits"));
    }
}
