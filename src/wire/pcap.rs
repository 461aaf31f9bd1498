//! pcap savefile format (the libpcap "tcpdump" format, nanosecond variant):
//! the file header and each record's header, as bytes. No I/O; the capture
//! writer puts them in a file that tcpdump, tshark and Wireshark read.

/// Magic number of a nanosecond-resolution savefile (written little-endian;
/// readers recognise the byte order from it).
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// Savefile format version 2.4.
const VERSION: (u16, u16) = (2, 4);
/// Link type of Ethernet frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Longest frame kept whole: larger than any frame the switch handles
/// (64 KiB segmentation-offload frames with headers).
pub const SNAPLEN: u32 = 262_144;
/// Length of the file header.
pub const FILE_HEADER_LEN: usize = 24;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;

/// The file header: Ethernet frames, nanosecond timestamps.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC_NANOS.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.0.to_le_bytes());
    h[6..8].copy_from_slice(&VERSION.1.to_le_bytes());
    // 8..16: time zone offset and timestamp accuracy, both 0 by convention.
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// A record header for a frame of `original` bytes, seen `nanos` after the
/// Unix epoch, of which `captured` bytes follow (at most [`SNAPLEN`]).
pub fn record_header(nanos: u64, captured: u32, original: u32) -> [u8; RECORD_HEADER_LEN] {
    let secs = u32::try_from(nanos / 1_000_000_000).unwrap_or(u32::MAX);
    let frac = (nanos % 1_000_000_000) as u32;
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&secs.to_le_bytes());
    h[4..8].copy_from_slice(&frac.to_le_bytes());
    h[8..12].copy_from_slice(&captured.min(SNAPLEN).to_le_bytes());
    h[12..16].copy_from_slice(&original.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_is_libpcap_nanosecond_ethernet() {
        // As `tcpdump --time-stamp-precision=nano -w` writes it on x86.
        assert_eq!(
            file_header(),
            [0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn record_header_splits_the_timestamp_and_caps_the_capture() {
        let h = record_header(1_700_000_000_123_456_789, 98, 98);
        assert_eq!(
            u32::from_le_bytes(h[0..4].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 123_456_789);
        assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 98);
        assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), 98);
        let big = record_header(0, 300_000, 300_000);
        assert_eq!(u32::from_le_bytes(big[8..12].try_into().unwrap()), SNAPLEN);
        assert_eq!(u32::from_le_bytes(big[12..16].try_into().unwrap()), 300_000);
    }
}
