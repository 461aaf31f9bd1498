//! ICMPv6 (RFC 4443) and NDP (RFC 4861): the [`Packet`] view, bounded NDP
//! option walking ([`NdpOptions`]) and [`Icmpv6Repr`] for echo and
//! router/neighbor solicitation/advertisement.

use super::checksum;
use super::{Error, MacAddr, Result};
use core::net::Ipv6Addr;

mod ndp;
use super::PROTO_ICMPV6 as PROTO;
use ndp::emit_lladdr;
pub use ndp::{NdpOption, NdpOptionType, NdpOptions};

/// Length of the common header plus the 4-byte message body start.
pub const HEADER_LEN: usize = 8;

/// ICMPv6 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Destination unreachable (1).
    DstUnreachable,
    /// Packet too big (2).
    PktTooBig,
    /// Time exceeded (3).
    TimeExceeded,
    /// Parameter problem (4).
    ParamProblem,
    /// Echo request (128).
    EchoRequest,
    /// Echo reply (129).
    EchoReply,
    /// Router solicitation (133).
    RouterSolicit,
    /// Router advertisement (134).
    RouterAdvert,
    /// Neighbor solicitation (135).
    NeighborSolicit,
    /// Neighbor advertisement (136).
    NeighborAdvert,
    /// Redirect (137).
    Redirect,
    /// Anything else, kept verbatim.
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(v: u8) -> Message {
        match v {
            1 => Message::DstUnreachable,
            2 => Message::PktTooBig,
            3 => Message::TimeExceeded,
            4 => Message::ParamProblem,
            128 => Message::EchoRequest,
            129 => Message::EchoReply,
            133 => Message::RouterSolicit,
            134 => Message::RouterAdvert,
            135 => Message::NeighborSolicit,
            136 => Message::NeighborAdvert,
            137 => Message::Redirect,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(v: Message) -> u8 {
        match v {
            Message::DstUnreachable => 1,
            Message::PktTooBig => 2,
            Message::TimeExceeded => 3,
            Message::ParamProblem => 4,
            Message::EchoRequest => 128,
            Message::EchoReply => 129,
            Message::RouterSolicit => 133,
            Message::RouterAdvert => 134,
            Message::NeighborSolicit => 135,
            Message::NeighborAdvert => 136,
            Message::Redirect => 137,
            Message::Unknown(other) => other,
        }
    }
}

impl Message {
    /// Fixed length of this message before data/options.
    pub fn fixed_len(self) -> usize {
        match self {
            Message::RouterAdvert => 16,
            Message::NeighborSolicit | Message::NeighborAdvert => 24,
            Message::Redirect => 40,
            _ => HEADER_LEN,
        }
    }
}

/// Byte ranges of the header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Message type.
    pub const TYPE: usize = 0;
    /// Message code.
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Field = 2..4;
    /// Echo identifier.
    pub const ECHO_IDENT: Field = 4..6;
    /// Echo sequence number.
    pub const ECHO_SEQNO: Field = 6..8;
    /// RA current hop limit.
    pub const RA_HOP_LIMIT: usize = 4;
    /// RA flags (M 0x80, O 0x40).
    pub const RA_FLAGS: usize = 5;
    /// RA router lifetime (seconds).
    pub const RA_ROUTER_LIFETIME: Field = 6..8;
    /// RA reachable time (ms).
    pub const RA_REACHABLE_TIME: Field = 8..12;
    /// RA retransmit timer (ms).
    pub const RA_RETRANS_TIME: Field = 12..16;
    /// NA flags (R 0x80, S 0x40, O 0x20).
    pub const NA_FLAGS: usize = 4;
    /// NS/NA target address.
    pub const TARGET_ADDR: Field = 8..24;
}

/// Neighbor advertisement flag: sender is a router.
pub const NA_ROUTER: u8 = 0x80;
/// Neighbor advertisement flag: response to a solicitation.
pub const NA_SOLICITED: u8 = 0x40;
/// Neighbor advertisement flag: override cache entry.
pub const NA_OVERRIDE: u8 = 0x20;

/// Zero-copy view of an ICMPv6 message; the buffer must end where the message
/// ends (the upper-layer payload of the IPv6 packet).
///
/// After [`Packet::check_len`] succeeded no accessor panics: the fixed part of
/// the message's own type is inside the buffer, and accessors for fields of
/// other types return zero when those bytes are missing.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking anything.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer and calls [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the fixed part of the message type is present.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || b.len() < self.msg_type().fixed_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref().get(i).copied().unwrap_or(0)
    }

    fn be16(&self, r: field::Field) -> u16 {
        match self.buffer.as_ref().get(r) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    fn be32(&self, r: field::Field) -> u32 {
        match self.buffer.as_ref().get(r) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    /// Message type.
    pub fn msg_type(&self) -> Message {
        Message::from(self.byte(field::TYPE))
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.byte(field::CODE)
    }

    /// Stored checksum.
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    /// Echo identifier.
    pub fn echo_ident(&self) -> u16 {
        self.be16(field::ECHO_IDENT)
    }

    /// Echo sequence number.
    pub fn echo_seq_no(&self) -> u16 {
        self.be16(field::ECHO_SEQNO)
    }

    /// RA current hop limit.
    pub fn ra_hop_limit(&self) -> u8 {
        self.byte(field::RA_HOP_LIMIT)
    }

    /// RA flags byte.
    pub fn ra_flags(&self) -> u8 {
        self.byte(field::RA_FLAGS)
    }

    /// RA router lifetime in seconds.
    pub fn ra_router_lifetime(&self) -> u16 {
        self.be16(field::RA_ROUTER_LIFETIME)
    }

    /// RA reachable time in ms.
    pub fn ra_reachable_time(&self) -> u32 {
        self.be32(field::RA_REACHABLE_TIME)
    }

    /// RA retransmit timer in ms.
    pub fn ra_retrans_time(&self) -> u32 {
        self.be32(field::RA_RETRANS_TIME)
    }

    /// NA flags byte (`NA_ROUTER | NA_SOLICITED | NA_OVERRIDE`).
    pub fn na_flags(&self) -> u8 {
        self.byte(field::NA_FLAGS)
    }

    /// NS/NA target address (unspecified if missing).
    pub fn target_addr(&self) -> Ipv6Addr {
        match self.buffer.as_ref().get(field::TARGET_ADDR) {
            Some(b) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                Ipv6Addr::from(a)
            }
            None => Ipv6Addr::UNSPECIFIED,
        }
    }

    /// Bytes after the fixed part: echo data, NDP options, or error payload.
    pub fn body(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(self.msg_type().fixed_len()..).unwrap_or(&[])
    }

    /// NDP options following the fixed part.
    pub fn ndp_options(&self) -> NdpOptions<'_> {
        NdpOptions::new(self.body())
    }

    /// Verifies the checksum with the IPv6 pseudo header.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header_v6(src, dst, PROTO, d.len() as u32) + checksum::sum(d);
        checksum::fold(s) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_bytes(&mut self, at: usize, v: &[u8]) {
        if let Some(b) = self.buffer.as_mut().get_mut(at..at + v.len()) {
            b.copy_from_slice(v);
        }
    }

    /// Sets the message type.
    pub fn set_msg_type(&mut self, m: Message) {
        self.set_bytes(field::TYPE, &[m.into()]);
    }

    /// Sets the message code.
    pub fn set_msg_code(&mut self, c: u8) {
        self.set_bytes(field::CODE, &[c]);
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_bytes(field::CHECKSUM.start, &v.to_be_bytes());
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, v: u16) {
        self.set_bytes(field::ECHO_IDENT.start, &v.to_be_bytes());
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.set_bytes(field::ECHO_SEQNO.start, &v.to_be_bytes());
    }

    /// Sets bytes 4..8 (reserved / flags / MTU) as one word.
    pub fn set_word1(&mut self, v: u32) {
        self.set_bytes(4, &v.to_be_bytes());
    }

    /// Sets the NS/NA target address.
    pub fn set_target_addr(&mut self, a: Ipv6Addr) {
        self.set_bytes(field::TARGET_ADDR.start, &a.octets());
    }

    /// Sets RA reachable time and retransmit timer.
    pub fn set_ra_timers(&mut self, reachable: u32, retrans: u32) {
        self.set_bytes(field::RA_REACHABLE_TIME.start, &reachable.to_be_bytes());
        self.set_bytes(field::RA_RETRANS_TIME.start, &retrans.to_be_bytes());
    }

    /// Computes and stores the checksum over the whole buffer.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header_v6(src, dst, PROTO, d.len() as u32) + checksum::sum(d);
        self.set_checksum(checksum::finish(s));
    }
}

/// High-level ICMPv6 messages this switch handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6Repr<'a> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Router solicitation.
    RouterSolicit {
        /// Source link-layer address option.
        lladdr: Option<MacAddr>,
    },
    /// Router advertisement (basic: no prefix options are carried).
    RouterAdvert {
        /// Current hop limit.
        hop_limit: u8,
        /// Flags byte (M 0x80, O 0x40).
        flags: u8,
        /// Router lifetime (s).
        router_lifetime: u16,
        /// Reachable time (ms).
        reachable_time: u32,
        /// Retransmit timer (ms).
        retrans_time: u32,
        /// Source link-layer address option.
        lladdr: Option<MacAddr>,
        /// MTU option.
        mtu: Option<u32>,
    },
    /// Neighbor solicitation.
    NeighborSolicit {
        /// Address being resolved.
        target_addr: Ipv6Addr,
        /// Source link-layer address option.
        lladdr: Option<MacAddr>,
    },
    /// Neighbor advertisement.
    NeighborAdvert {
        /// `NA_ROUTER | NA_SOLICITED | NA_OVERRIDE`.
        flags: u8,
        /// Address advertised.
        target_addr: Ipv6Addr,
        /// Target link-layer address option.
        lladdr: Option<MacAddr>,
    },
}

impl<'a> Icmpv6Repr<'a> {
    /// Parses a message, verifying its checksum against `src`/`dst`. NDP
    /// messages need code 0 and well-formed options (unknown options are
    /// skipped); other types are `Unsupported`. The IPv6 hop limit 255 check
    /// for NDP is the caller's.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        p: &'a Packet<&'a T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Icmpv6Repr<'a>> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let buf: &'a [u8] = p.buffer.as_ref();
        let t = p.msg_type();
        let ndp = matches!(
            t,
            Message::RouterSolicit
                | Message::RouterAdvert
                | Message::NeighborSolicit
                | Message::NeighborAdvert
        );
        if !ndp && !matches!(t, Message::EchoRequest | Message::EchoReply) {
            return Err(Error::Unsupported);
        }
        if p.msg_code() != 0 {
            return Err(Error::Malformed);
        }
        let body = &buf[t.fixed_len()..];
        let mut src_ll = None;
        let mut tgt_ll = None;
        let mut mtu = None;
        if ndp {
            for opt in NdpOptions::new(body) {
                let opt = opt?;
                match opt.kind {
                    NdpOptionType::SourceLinkLayerAddr => src_ll = opt.link_layer_addr(),
                    NdpOptionType::TargetLinkLayerAddr => tgt_ll = opt.link_layer_addr(),
                    NdpOptionType::Mtu if opt.data.len() >= 6 => {
                        let d = opt.data;
                        mtu = Some(u32::from_be_bytes([d[2], d[3], d[4], d[5]]));
                    }
                    _ => {}
                }
            }
        }
        match t {
            Message::EchoRequest => Ok(Icmpv6Repr::EchoRequest {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
                data: body,
            }),
            Message::EchoReply => Ok(Icmpv6Repr::EchoReply {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
                data: body,
            }),
            Message::RouterSolicit => Ok(Icmpv6Repr::RouterSolicit { lladdr: src_ll }),
            Message::RouterAdvert => Ok(Icmpv6Repr::RouterAdvert {
                hop_limit: p.ra_hop_limit(),
                flags: p.ra_flags(),
                router_lifetime: p.ra_router_lifetime(),
                reachable_time: p.ra_reachable_time(),
                retrans_time: p.ra_retrans_time(),
                lladdr: src_ll,
                mtu,
            }),
            Message::NeighborSolicit => Ok(Icmpv6Repr::NeighborSolicit {
                target_addr: p.target_addr(),
                lladdr: src_ll,
            }),
            Message::NeighborAdvert => Ok(Icmpv6Repr::NeighborAdvert {
                flags: p.na_flags() & 0xe0,
                target_addr: p.target_addr(),
                lladdr: tgt_ll,
            }),
            _ => Err(Error::Unsupported),
        }
    }

    fn parts(&self) -> (Message, usize) {
        let ll = |o: &Option<MacAddr>| if o.is_some() { 8 } else { 0 };
        match self {
            Icmpv6Repr::EchoRequest { data, .. } => (Message::EchoRequest, HEADER_LEN + data.len()),
            Icmpv6Repr::EchoReply { data, .. } => (Message::EchoReply, HEADER_LEN + data.len()),
            Icmpv6Repr::RouterSolicit { lladdr } => (Message::RouterSolicit, 8 + ll(lladdr)),
            Icmpv6Repr::RouterAdvert { lladdr, mtu, .. } => (
                Message::RouterAdvert,
                16 + ll(lladdr) + if mtu.is_some() { 8 } else { 0 },
            ),
            Icmpv6Repr::NeighborSolicit { lladdr, .. } => {
                (Message::NeighborSolicit, 24 + ll(lladdr))
            }
            Icmpv6Repr::NeighborAdvert { lladdr, .. } => (Message::NeighborAdvert, 24 + ll(lladdr)),
        }
    }

    /// Message length including options.
    pub fn buffer_len(&self) -> usize {
        self.parts().1
    }

    /// Writes the message with its checksum; returns its length.
    pub fn emit(&self, buf: &mut [u8], src: &Ipv6Addr, dst: &Ipv6Addr) -> Result<usize> {
        let (t, len) = self.parts();
        let b = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        b.fill(0);
        b[0] = t.into();
        match *self {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                b[4..6].copy_from_slice(&ident.to_be_bytes());
                b[6..8].copy_from_slice(&seq_no.to_be_bytes());
                b[8..].copy_from_slice(data);
            }
            Icmpv6Repr::RouterSolicit { lladdr } => {
                if let Some(m) = lladdr {
                    emit_lladdr(&mut b[8..], NdpOptionType::SourceLinkLayerAddr, m);
                }
            }
            Icmpv6Repr::RouterAdvert {
                hop_limit,
                flags,
                router_lifetime,
                reachable_time,
                retrans_time,
                lladdr,
                mtu,
            } => {
                b[4] = hop_limit;
                b[5] = flags;
                b[6..8].copy_from_slice(&router_lifetime.to_be_bytes());
                b[8..12].copy_from_slice(&reachable_time.to_be_bytes());
                b[12..16].copy_from_slice(&retrans_time.to_be_bytes());
                let mut o = 16;
                if let Some(m) = lladdr {
                    emit_lladdr(&mut b[o..], NdpOptionType::SourceLinkLayerAddr, m);
                    o += 8;
                }
                if let Some(m) = mtu {
                    b[o] = NdpOptionType::Mtu.into();
                    b[o + 1] = 1;
                    b[o + 4..o + 8].copy_from_slice(&m.to_be_bytes());
                }
            }
            Icmpv6Repr::NeighborSolicit {
                target_addr,
                lladdr,
            } => {
                b[8..24].copy_from_slice(&target_addr.octets());
                if let Some(m) = lladdr {
                    emit_lladdr(&mut b[24..], NdpOptionType::SourceLinkLayerAddr, m);
                }
            }
            Icmpv6Repr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => {
                b[4] = flags & 0xe0;
                b[8..24].copy_from_slice(&target_addr.octets());
                if let Some(m) = lladdr {
                    emit_lladdr(&mut b[24..], NdpOptionType::TargetLinkLayerAddr, m);
                }
            }
        }
        Packet::new_unchecked(b).fill_checksum(src, dst);
        Ok(len)
    }
}

#[cfg(test)]
mod tests;
