//! NDP options (RFC 4861 section 4.6): types and a bounded iterator.

use crate::wire::{Error, MacAddr, Result};

/// NDP option type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NdpOptionType {
    /// Source link-layer address (1).
    SourceLinkLayerAddr,
    /// Target link-layer address (2).
    TargetLinkLayerAddr,
    /// Prefix information (3).
    PrefixInformation,
    /// Redirected header (4).
    RedirectedHeader,
    /// MTU (5).
    Mtu,
    /// Anything else, kept verbatim.
    Unknown(u8),
}

impl From<u8> for NdpOptionType {
    fn from(v: u8) -> NdpOptionType {
        match v {
            1 => NdpOptionType::SourceLinkLayerAddr,
            2 => NdpOptionType::TargetLinkLayerAddr,
            3 => NdpOptionType::PrefixInformation,
            4 => NdpOptionType::RedirectedHeader,
            5 => NdpOptionType::Mtu,
            other => NdpOptionType::Unknown(other),
        }
    }
}

impl From<NdpOptionType> for u8 {
    fn from(v: NdpOptionType) -> u8 {
        match v {
            NdpOptionType::SourceLinkLayerAddr => 1,
            NdpOptionType::TargetLinkLayerAddr => 2,
            NdpOptionType::PrefixInformation => 3,
            NdpOptionType::RedirectedHeader => 4,
            NdpOptionType::Mtu => 5,
            NdpOptionType::Unknown(other) => other,
        }
    }
}

/// One NDP option: its type and the bytes after the type/length pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdpOption<'a> {
    /// Option type.
    pub kind: NdpOptionType,
    /// Option data (`8 * length - 2` bytes).
    pub data: &'a [u8],
}

impl NdpOption<'_> {
    /// The link-layer address of a source/target link-layer address option.
    pub fn link_layer_addr(&self) -> Option<MacAddr> {
        match self.kind {
            NdpOptionType::SourceLinkLayerAddr | NdpOptionType::TargetLinkLayerAddr
                if self.data.len() >= 6 =>
            {
                Some(MacAddr::from_bytes(self.data))
            }
            _ => None,
        }
    }
}

/// Iterator over NDP options. Yields `Err(Malformed)` for a zero-length
/// option and `Err(Truncated)` for one running past the buffer, then stops.
/// Every step consumes at least 8 bytes, so iteration is bounded.
#[derive(Debug, Clone)]
pub struct NdpOptions<'a> {
    buf: &'a [u8],
}

impl<'a> NdpOptions<'a> {
    /// Iterates over the options in `buf` (the bytes after an NDP message's
    /// fixed part).
    pub fn new(buf: &'a [u8]) -> NdpOptions<'a> {
        NdpOptions { buf }
    }
}

impl<'a> Iterator for NdpOptions<'a> {
    type Item = Result<NdpOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let b = self.buf;
        self.buf = &[];
        let Some(&[kind, len]) = b.first_chunk::<2>() else {
            return Some(Err(Error::Truncated));
        };
        let n = len as usize * 8;
        if n == 0 {
            return Some(Err(Error::Malformed));
        }
        let Some(opt) = b.get(2..n) else {
            return Some(Err(Error::Truncated));
        };
        self.buf = &b[n..];
        Some(Ok(NdpOption {
            kind: kind.into(),
            data: opt,
        }))
    }
}

/// Emits a link-layer address option (8 bytes) at the start of `buf`.
pub(super) fn emit_lladdr(buf: &mut [u8], kind: NdpOptionType, mac: MacAddr) {
    buf[0] = kind.into();
    buf[1] = 1;
    buf[2..8].copy_from_slice(&mac.0);
}
