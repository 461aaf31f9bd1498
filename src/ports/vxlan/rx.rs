//! The receive side of a worker's VXLAN sockets: datagrams read in batches,
//! `UDP_GRO` bursts split back into their VXLAN packets, and the packets
//! that continue one TCP segment joined into one GSO frame.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::super::{Port, PortCaps, TxResult};
use super::VxlanSockets;
use crate::pipeline::frame::Frame;
use crate::pipeline::pool::BufferPool;
use crate::sys::udp::{self, RecvMeta, MAX_BATCH};
use crate::wire::gro;
use crate::wire::virtio_net::VirtioNetHdr;
use crate::wire::vxlan::HEADER_LEN;

/// A worker's VXLAN receive port.
pub struct VxlanRxPort {
    name: String,
    sockets: Arc<VxlanSockets>,
    /// Datagrams read but not yet handed out, oldest first: coalesced ones
    /// (`UDP_GRO`) being split into one frame per VXLAN packet, and the
    /// plain ones that arrived after them. Entries are (datagram, bytes
    /// already split off, segment size or 0). At most one batch: the socket
    /// is read only once this is empty.
    pub(super) pending: VecDeque<(Frame, usize, usize)>,
    /// Packets joined to the one before them since the last
    /// [`Port::take_rx_coalesced`].
    coalesced: u64,
}

impl VxlanRxPort {
    /// The receive port over `sockets`.
    pub fn new(name: &str, sockets: Arc<VxlanSockets>) -> VxlanRxPort {
        VxlanRxPort {
            name: name.to_string(),
            sockets,
            pending: VecDeque::with_capacity(MAX_BATCH),
            coalesced: 0,
        }
    }

    /// Moves pending datagrams into `out` (whose frames from `start` on
    /// this receive produced) until it holds `limit` frames or
    /// the pool runs dry, splitting coalesced ones into their VXLAN packets.
    /// A packet that continues the TCP segment of the frame before it (same
    /// VXLAN header and underlay source, and what [`gro::continues`] asks)
    /// is appended to that frame, which becomes a GSO frame: the 45 or so
    /// packets of one 64 KiB segment cross the pipeline as one frame, and
    /// `decap` checks the one header and inner source they share. Any other
    /// packet is copied into a frame of its own.
    fn drain_pending(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        start: usize,
        limit: usize,
    ) {
        // The last frame this receive produced (`out[start..]`): the only
        // one a packet may join.
        let mut open = (out.len() > start).then(|| out.len() - 1);
        while let Some((f, off, seg)) = self.pending.front_mut() {
            if *seg == 0 || f.len() <= *seg {
                // A plain datagram: joined, or handed out as it is.
                let joined = open.and_then(|i| out.get_mut(i)).is_some_and(|head| {
                    head.meta.underlay_src == f.meta.underlay_src && join(head, f.data())
                });
                if !joined && out.len() >= limit {
                    return;
                }
                let Some((f, _, _)) = self.pending.pop_front() else {
                    return;
                };
                if joined {
                    self.coalesced += 1;
                    pool.free(f);
                } else {
                    out.push(f);
                    open = Some(out.len() - 1);
                }
                continue;
            }
            let step = *seg;
            while *off < f.len() {
                let end = (*off + step).min(f.len());
                let packet = &f.data()[*off..end];
                if let Some(head) = open.and_then(|i| out.get_mut(i)) {
                    if head.meta.underlay_src == f.meta.underlay_src && join(head, packet) {
                        self.coalesced += 1;
                        *off = end;
                        continue;
                    }
                }
                if out.len() >= limit {
                    return;
                }
                let Some(mut g) = pool.alloc() else { return };
                g.fill(packet);
                g.meta.underlay_src = f.meta.underlay_src;
                out.push(g);
                open = Some(out.len() - 1);
                *off = end;
            }
            if let Some((f, _, _)) = self.pending.pop_front() {
                pool.free(f);
            }
        }
    }
}

/// Appends VXLAN packet `packet` to the still encapsulated frame `head` if
/// both carry the same VXLAN header and the inner TCP segment continues
/// `head`'s (then `head`'s inner frame is a GSO frame); false, and nothing
/// changes, otherwise.
fn join(head: &mut Frame, packet: &[u8]) -> bool {
    if packet.len() <= HEADER_LEN || head.len() <= HEADER_LEN {
        return false;
    }
    if head.data()[..HEADER_LEN] != packet[..HEADER_LEN] {
        return false;
    }
    let inner = &packet[HEADER_LEN..];
    let Some((at, mss)) = gro::continues(
        &head.data()[HEADER_LEN..],
        &head.vnet,
        inner,
        &VirtioNetHdr::NONE,
    ) else {
        return false;
    };
    let psh = gro::has_psh(inner);
    if !head.append(&inner[at..]) {
        return false;
    }
    head.vnet = gro::finish(&mut head.data_mut()[HEADER_LEN..], mss, psh);
    true
}

impl Port for VxlanRxPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn release(&mut self, pool: &mut BufferPool) {
        for (f, _, _) in self.pending.drain(..) {
            pool.free(f);
        }
    }

    fn caps(&self) -> PortCaps {
        // Nothing is ever sent through the receive port.
        PortCaps {
            offload: false,
            mtu: 1500,
            segments_gso: false,
            uso: false,
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sockets.rx.as_raw_fd())
    }

    fn take_rx_coalesced(&mut self) -> u64 {
        std::mem::take(&mut self.coalesced)
    }

    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        let start = out.len();
        let limit = start + max;
        self.drain_pending(pool, out, start, limit);
        // The socket is read only when nothing is left over, so the order
        // of datagrams is kept and `pending` stays within one batch. A
        // short return must mean the socket is drained (edge-triggered
        // polling raises no new event for what is already queued), so it
        // is read again while reads come back full: joining can turn a full
        // read into a handful of frames.
        while self.pending.is_empty() && out.len() < limit {
            let first = out.len();
            let want = (limit - first).min(MAX_BATCH);
            while out.len() - first < want {
                let Some(f) = pool.alloc() else { break };
                out.push(f);
            }
            let frames = &mut out[first..];
            let n = frames.len();
            if n == 0 {
                break;
            }
            let mut it = frames.iter_mut();
            let mut bufs: [&mut [u8]; MAX_BATCH] =
                std::array::from_fn(|_| it.next().map_or(&mut [][..], |f| f.receive_space()));
            let mut meta = [RecvMeta::default(); MAX_BATCH];
            let got = match udp::recv_batch(&self.sockets.rx, &mut bufs[..n], &mut meta[..n]) {
                Ok(g) => g,
                Err(e) => {
                    for f in out.drain(first..) {
                        pool.free(f);
                    }
                    return if first > start {
                        Ok(first - start)
                    } else {
                        Err(e)
                    };
                }
            };
            for (f, m) in out[first..first + got].iter_mut().zip(&meta) {
                f.set_len(m.len);
                f.meta.underlay_src = m.src;
            }
            for f in out.drain(first + got..) {
                pool.free(f);
            }
            // From the first coalesced datagram on, everything waits its turn.
            let coalesced = meta[..got]
                .iter()
                .position(|m| m.segment > 0 && m.len > m.segment);
            if let Some(k) = coalesced {
                for (f, m) in out.drain(first + k..).zip(&meta[k..got]) {
                    self.pending.push_back((f, 0, m.segment));
                }
                self.drain_pending(pool, out, start, limit);
            }
            if got < n {
                break;
            }
        }
        Ok(out.len() - start)
    }

    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        let failed = frames.len();
        for f in frames.drain(..) {
            pool.free(f);
        }
        TxResult {
            failed,
            ..TxResult::default()
        }
    }
}
