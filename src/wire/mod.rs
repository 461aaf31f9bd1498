//! Packet views and builders: zero-copy, bounds-checked, no I/O, no allocation.
//!
//! Panic contract (as in smoltcp): every view has `new_unchecked` and
//! `new_checked`; once `new_checked` (or `check_len`) has succeeded, no accessor
//! panics. Untrusted bytes always enter through `new_checked`. Every malformed
//! input yields an [`Error`] value.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod gro;
pub mod gso;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod pcap;
pub mod tcp;
pub mod udp;
pub mod udp_frame;
pub mod udp_gro;
pub mod udp_gso;
pub mod virtio_net;
pub mod vxlan;

mod mac;
pub use ipv4::IpProtocol;
pub use mac::MacAddr;

/// IP protocol number of ICMP, as the IPv4 header's protocol byte holds it
/// (for the byte tests of the data plane's stages; [`IpProtocol`] for
/// building).
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next-header number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Why a packet could not be parsed or built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header or the length fields claim.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the protocol does not allow.
    #[error("malformed packet")]
    Malformed,
    /// A checksum did not verify.
    #[error("bad checksum")]
    Checksum,
    /// Valid but not something this code handles (e.g. an unknown GSO type).
    #[error("unsupported packet")]
    Unsupported,
    /// The output buffer is too small for what must be written.
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// Result of parsing or building a packet.
pub type Result<T> = core::result::Result<T, Error>;
