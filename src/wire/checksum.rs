//! Internet checksum (RFC 1071): fast ones-complement sums, pseudo headers and
//! RFC 1624 incremental updates.
//!
//! Partial sums are carried as `u32` values that are already folded to 16 bits
//! (so thousands of them can be added without overflow); [`fold`] and
//! [`finish`] turn any accumulated sum into the 16-bit checksum.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ones-complement sum of `data` taken as big-endian 16-bit words; an odd
/// trailing byte is padded with zero. The result is folded to at most 0xffff.
///
/// Adds the data as native-endian 32-bit words into four independent 64-bit
/// accumulators (no carry handling needed: 2^32 words would have to pass
/// before one could overflow), which the compiler turns into vector adds.
/// The ones-complement sum is independent of byte order up to a final swap
/// (RFC 1071, 2.B), and a sum of 32-bit words folds to the sum of their
/// 16-bit halves because 2^32 - 1 is a multiple of 2^16 - 1.
pub fn sum(data: &[u8]) -> u32 {
    let mut acc = [0u64; 4];
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        for (a, w) in acc.iter_mut().zip(b.chunks_exact(4)) {
            *a += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut total = acc[0] + acc[1] + acc[2] + acc[3];
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        total += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let left = words.remainder();
    tail[..left.len()].copy_from_slice(left);
    total += u64::from(u32::from_ne_bytes(tail));
    let folded = fold(total);
    u32::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// Folds a ones-complement accumulator (`u32` or `u64`) to 16 bits with
/// end-around carries. Does not complement.
pub fn fold<S: Into<u64>>(sum: S) -> u16 {
    let mut s: u64 = sum.into();
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum to store: the complement of the folded sum.
pub fn finish<S: Into<u64>>(sum: S) -> u16 {
    !fold(sum)
}

/// Adds two partial sums (ones-complement addition, result folded).
pub fn combine(a: u32, b: u32) -> u32 {
    fold(a as u64 + b as u64) as u32
}

/// Partial sum of the IPv4 pseudo header (RFC 793 / RFC 768).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u32 {
    let s = u32::from(src) as u64;
    let d = u32::from(dst) as u64;
    fold((s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + proto as u64 + len as u64) as u32
}

/// Partial sum of the IPv6 pseudo header (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u32 {
    let total = sum(&src.octets()) as u64
        + sum(&dst.octets()) as u64
        + (len >> 16) as u64
        + (len & 0xffff) as u64
        + next_header as u64;
    fold(total) as u32
}

/// Partial pseudo-header sum for either family. With mixed families the
/// address bytes of both are summed (the result then verifies nothing).
pub fn pseudo_header(src: &IpAddr, dst: &IpAddr, proto: u8, len: u32) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_header_v4(*s, *d, proto, len),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_header_v6(s, d, proto, len),
        _ => {
            let a = match src {
                IpAddr::V4(s) => sum(&s.octets()),
                IpAddr::V6(s) => sum(&s.octets()),
            };
            let b = match dst {
                IpAddr::V4(d) => sum(&d.octets()),
                IpAddr::V6(d) => sum(&d.octets()),
            };
            fold(a as u64 + b as u64 + proto as u64 + (len >> 16) as u64 + (len & 0xffff) as u64)
                as u32
        }
    }
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changed from `old` to
/// `new`: `HC' = ~(~HC + ~m + m')`.
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(!csum as u32 + !old as u32 + new as u32)
}

/// Incremental update for a 32-bit field (two adjacent aligned words).
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let s = !csum as u32
        + !(old >> 16) as u16 as u32
        + !(old as u16) as u32
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

/// Incremental update for a field that changed from `old` to `new` bytes.
///
/// Both slices must start at an even offset of the checksummed data and have
/// the same (normally even) length; an odd trailing byte is treated as the
/// high byte of a zero-padded word. Never panics.
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let s = !csum as u32 + !(fold(sum(old))) as u32 + sum(new);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                (c[0] as u16) << 8
            };
            s += w as u32;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(finish(sum(&d)), !0xddf2);
    }

    #[test]
    fn pseudo_v4_matches_manual() {
        let s = Ipv4Addr::new(10, 0, 0, 1);
        let d = Ipv4Addr::new(10, 0, 0, 2);
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&s.octets());
        b[4..8].copy_from_slice(&d.octets());
        b[9] = 6;
        b[10..12].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(fold(pseudo_header_v4(s, d, 6, 100)), fold(sum(&b)));
    }

    proptest! {
        #[test]
        fn sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let a = fold(sum(&data));
            let b = naive(&data);
            // 0 and 0xffff are the same value in ones complement.
            prop_assert!(a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0));
        }

        #[test]
        fn incremental_matches_full(
            words in proptest::collection::vec(any::<u16>(), 4..100),
            pos in 0usize..100,
            new16 in any::<u16>(),
            new32 in any::<u32>(),
        ) {
            let mut data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let same = |a: u16, b: u16| a == b || (a | b == 0xffff && (a == 0 || b == 0));
            let pos = (pos % (words.len() - 1)) * 2;
            let csum = finish(sum(&data));
            let old = u16::from_be_bytes([data[pos], data[pos + 1]]);
            data[pos..pos + 2].copy_from_slice(&new16.to_be_bytes());
            let inc = update_u16(csum, old, new16);
            prop_assert!(same(inc, finish(sum(&data))));
            let old32 = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
            let before = old32.to_be_bytes();
            data[pos..pos + 4].copy_from_slice(&new32.to_be_bytes());
            let full2 = finish(sum(&data));
            prop_assert!(same(update_u32(inc, old32, new32), full2));
            prop_assert!(same(update_bytes(inc, &before, &new32.to_be_bytes()), full2));
        }
    }
}
