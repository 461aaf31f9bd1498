//! The transmit side: one worker's queue of the port towards a remote VTEP,
//! which pushes the VXLAN header onto each frame and sends the batch, runs
//! of equal-size datagrams as one UDP GSO send each, from a transmit socket
//! chosen by a hash of the inner flow.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::{Port, PortCaps, TxResult, CUT_MAX_HEADER, CUT_MAX_SEGMENTS};
use super::VxlanSockets;
use crate::pipeline::frame::Frame;
use crate::pipeline::offload;
use crate::pipeline::pool::BufferPool;
use crate::sys::udp::{self, Pieces};
use crate::wire::vxlan::{VxlanRepr, HEADER_LEN};

/// One worker's queue of the port towards a remote VTEP.
pub struct TunnelPort {
    name: String,
    vni: u32,
    vtep: SocketAddr,
    mtu: u16,
    sockets: Arc<VxlanSockets>,
    /// The datagrams of the send being prepared.
    datagrams: Vec<Datagram>,
    /// Header slots ([`SLOT`] bytes each) for the segments of GSO frames:
    /// VXLAN header, then the segment's own Ethernet..TCP headers.
    headers: Box<[u8]>,
}

/// Bytes per header slot: the VXLAN header and the largest headers a GSO
/// frame kept whole may have.
const SLOT: usize = HEADER_LEN + CUT_MAX_HEADER;

// A GSO frame the switch lets through whole fits one send.
const _: () = assert!(CUT_MAX_SEGMENTS <= udp::MAX_SEND);

/// One datagram of a send: a frame with the VXLAN header pushed in front,
/// or a segment of a GSO frame (headers in a slot, payload in the frame).
#[derive(Clone, Copy)]
enum Datagram {
    Whole {
        frame: usize,
    },
    Cut {
        frame: usize,
        slot: usize,
        header: usize,
        payload: (usize, usize),
    },
}

impl TunnelPort {
    /// The port towards `vtep` for VNI `vni`, whose inner frames are at most
    /// `mtu` (L3) bytes, sending through `sockets`.
    pub fn new(
        name: &str,
        vni: u32,
        vtep: SocketAddr,
        mtu: u16,
        sockets: Arc<VxlanSockets>,
    ) -> TunnelPort {
        TunnelPort {
            name: name.to_string(),
            vni,
            vtep,
            mtu,
            sockets,
            datagrams: Vec::with_capacity(udp::MAX_SEND),
            headers: vec![0; udp::MAX_SEND * SLOT].into_boxed_slice(),
        }
    }
}

impl TunnelPort {
    /// Sends one run of datagrams: with UDP GSO (one send per run of equal
    /// sizes: a segmented TCP segment leaves as one) while the kernel takes
    /// it, else one datagram each.
    fn send_run(&self, sock: &UdpSocket, datagrams: &[Pieces<'_>]) -> usize {
        if self.sockets.tx.gso.load(Ordering::Relaxed) {
            match udp::send_pieces(sock, self.vtep, datagrams, true) {
                Ok(n) => return n,
                // Anything but a refusal of GSO itself is a failed send.
                Err(e)
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
                    ) =>
                {
                    return 0
                }
                Err(e) => {
                    tracing::info!(
                        "UDP GSO refused towards {} ({e}); sending datagrams one by one",
                        self.vtep
                    );
                    self.sockets.tx.gso.store(false, Ordering::Relaxed);
                }
            }
        }
        udp::send_pieces(sock, self.vtep, datagrams, false).unwrap_or(0)
    }

    /// Adds frame `index`'s datagrams to the send being prepared: the frame
    /// itself behind a VXLAN header, or, for a GSO frame, one datagram per
    /// segment with its headers built in a slot. False if there is no room
    /// left (send first, then try again) or the frame cannot be sent (then
    /// `refused` is set).
    fn describe(&mut self, frames: &mut [Frame], index: usize, refused: &mut bool) -> bool {
        let f = &mut frames[index];
        if !f.vnet.is_gso() {
            if self.datagrams.len() >= udp::MAX_SEND {
                return false;
            }
            *refused = !encapsulate(f, self.vni);
            if !*refused {
                self.datagrams.push(Datagram::Whole { frame: index });
            }
            return true;
        }
        // The switch let this frame through whole by the same rule.
        let Some(mut seg) = offload::cut_whole(f, self.mtu) else {
            *refused = true;
            return true;
        };
        if self.datagrams.len() + seg.segment_count() > udp::MAX_SEND {
            return false;
        }
        let mut vxlan = [0u8; HEADER_LEN];
        if (VxlanRepr { vni: self.vni }).emit(&mut vxlan).is_err() {
            *refused = true;
            return true;
        }
        let before = self.datagrams.len();
        for _ in 0..seg.segment_count() {
            // Checked above: every segment has a slot.
            let slot = self.datagrams.len();
            let Some(out) = self.headers.get_mut(slot * SLOT..(slot + 1) * SLOT) else {
                break;
            };
            out[..HEADER_LEN].copy_from_slice(&vxlan);
            match seg.next_header_into(&mut out[HEADER_LEN..]) {
                Some(Ok((header, payload))) => self.datagrams.push(Datagram::Cut {
                    frame: index,
                    slot,
                    header: HEADER_LEN + header,
                    payload: (payload.start, payload.end),
                }),
                None | Some(Err(_)) => break,
            }
        }
        if self.datagrams.len() - before != seg.segment_count() {
            // Checked above; should it happen, the frame goes unsent.
            self.datagrams.truncate(before);
            *refused = true;
        }
        true
    }
}

/// Pushes the VXLAN header for `vni` in front of the frame; false when the
/// headroom is exhausted or the VNI does not fit 24 bits.
pub fn encapsulate(f: &mut Frame, vni: u32) -> bool {
    match f.push_front(HEADER_LEN) {
        Some(h) => VxlanRepr { vni }.emit(h).is_ok(),
        None => false,
    }
}

/// FNV-1a over the inner flow's addresses and ports, for the outer source
/// port: one flow always leaves from one port (no reordering), different
/// flows spread over the underlay's ECMP paths.
pub fn flow_hash(frame: &[u8]) -> u32 {
    fn mix(h: u32, bytes: &[u8]) -> u32 {
        bytes
            .iter()
            .fold(h, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
    }
    let get = |r: core::ops::Range<usize>| frame.get(r).unwrap_or(&[]);
    let mut h = mix(0x811c_9dc5, get(0..12));
    match get(12..14) {
        [0x08, 0x00] => {
            let ihl = frame.get(14).map_or(20, |v| usize::from(v & 0x0f) * 4);
            h = mix(h, get(23..24));
            h = mix(h, get(26..34));
            h = mix(h, get(14 + ihl..18 + ihl));
        }
        [0x86, 0xdd] => {
            h = mix(h, get(20..21));
            h = mix(h, get(22..58));
        }
        _ => {}
    }
    h
}

impl Port for TunnelPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        // TCP GSO frames arrive whole and are cut to the overlay MTU while
        // sending; everything else arrives MTU-sized with full checksums.
        PortCaps {
            offload: false,
            mtu: self.mtu,
            segments_gso: true,
            uso: false,
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn has_rx(&self) -> bool {
        false
    }

    fn recv(&mut self, _: &mut BufferPool, _: &mut Vec<Frame>, _: usize) -> io::Result<usize> {
        Ok(0)
    }

    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        let mut res = TxResult::default();
        let socks = self.sockets.tx.socks.len().max(1);
        let pick = |f: &Frame| flow_hash(f.data()) as usize % socks;
        let mut i = 0;
        while i < frames.len() {
            // The frames of one flow (one socket) that fit one send.
            let sock = pick(&frames[i]);
            self.datagrams.clear();
            let mut end = i;
            while end < frames.len() && (end == i || pick(&frames[end]) == sock) {
                let mut refused = false;
                if !self.describe(frames, end, &mut refused) {
                    break;
                }
                res.failed += usize::from(refused);
                end += 1;
            }
            let mut pieces: [Pieces<'_>; udp::MAX_SEND] = [[&[], &[]]; udp::MAX_SEND];
            for (p, d) in pieces.iter_mut().zip(&self.datagrams) {
                *p = match *d {
                    Datagram::Whole { frame } => [frames[frame].data(), &[]],
                    Datagram::Cut {
                        frame,
                        slot,
                        header,
                        payload: (a, b),
                    } => [
                        &self.headers[slot * SLOT..slot * SLOT + header],
                        &frames[frame].data()[a..b],
                    ],
                };
            }
            let n = self.datagrams.len();
            let sent = match self.sockets.tx.socks.get(sock) {
                Some(s) if n > 0 => self.send_run(s, &pieces[..n]),
                _ => 0,
            };
            res.sent += sent;
            res.failed += n - sent;
            res.bytes += pieces[..sent]
                .iter()
                .map(|p| (p[0].len() + p[1].len() - HEADER_LEN) as u64)
                .sum::<u64>();
            // A frame that did not fit even an empty send was refused.
            i = end.max(i + 1);
        }
        for f in frames.drain(..) {
            pool.free(f);
        }
        res
    }
}
