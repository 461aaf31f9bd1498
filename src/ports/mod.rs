//! Ports: where frames enter and leave the switch. A [`Port`] is polled by
//! exactly one worker, which is also the only one that writes to it.

pub mod fault;
pub mod memory;
pub mod tap;
pub mod vxlan;

use std::io;
use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::pipeline::frame::Frame;
use crate::pipeline::pool::BufferPool;

/// Identifies a port across the data plane (index into the topology).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct PortId(pub u32);

impl core::fmt::Display for PortId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Largest headers (Ethernet through TCP) a GSO frame may have for a
/// [`PortCaps::segments_gso`] port to take it whole; one with longer ones
/// is segmented by the switch instead.
pub const CUT_MAX_HEADER: usize = 240;

/// Most segments a GSO frame may cut into for a [`PortCaps::segments_gso`]
/// port to take it whole.
pub const CUT_MAX_SEGMENTS: usize = 256;

/// What a port can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCaps {
    /// Accepts frames with a virtio-net header: GSO frames up to 64 KiB and
    /// partial checksums. Without it, the switch segments and completes
    /// checksums in software before sending.
    pub offload: bool,
    /// Largest L3 packet the port takes (for non-GSO frames).
    pub mtu: u16,
    /// Without `offload`: takes TCP GSO frames whole anyway and cuts them to
    /// `mtu` itself while sending, each segment's headers built apart and
    /// its payload left in place (a VXLAN tunnel port: no copy before the
    /// kernel's). Partial checksums and other GSO types are still completed
    /// or segmented by the switch.
    pub segments_gso: bool,
    /// With `offload`: also takes UDP segmentation offload frames
    /// (virtio-net `UDP_L4`, Linux 6.2 and later), so the switch coalesces
    /// consecutive datagrams of one flow into one frame for it (see
    /// [`crate::wire::udp_gro`]), and a sandbox's UDP GSO burst crosses to it
    /// whole; a port without it gets such a burst cut into datagrams (see
    /// [`crate::wire::udp_gso`]). A TAP port with it also reads such bursts.
    pub uso: bool,
}

/// Outcome of [`Port::send`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxResult {
    /// Frames written.
    pub sent: usize,
    /// Bytes written (frames only, no offload headers).
    pub bytes: u64,
    /// Frames the port refused (full queue, error).
    pub failed: usize,
}

/// A source and sink of frames.
pub trait Port: Send {
    /// Name for logs and `switchyard stats` (e.g. the TAP's name).
    fn name(&self) -> &str;

    /// What the port can take.
    fn caps(&self) -> PortCaps;

    /// The fd a worker registers with its poller (edge-triggered), if any.
    /// Ports without one are polled on every loop iteration.
    fn raw_fd(&self) -> Option<RawFd>;

    /// Appends up to `max` received frames to `out`, taking buffers from
    /// `pool`. `Ok(0)` means nothing more is ready now (`EAGAIN`).
    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize>;

    /// False for a transmit-only port (a VXLAN tunnel port shares its
    /// worker's socket with the receiving port): the worker never reads it.
    fn has_rx(&self) -> bool {
        true
    }

    /// Frames the port read but had to discard (e.g. shorter than an
    /// Ethernet header) since the last call; the worker counts them as
    /// `malformed` drops and port rx errors.
    fn take_rx_errors(&mut self) -> u64 {
        0
    }

    /// Received packets the port joined to the frame before them (receive
    /// coalescing) since the last call; the worker counts them as
    /// `gro-merged` events.
    fn take_rx_coalesced(&mut self) -> u64 {
        0
    }

    /// Datagrams the port cut from UDP segmentation offload frames it read
    /// since the last call; the worker counts them as `uso-split` events.
    fn take_rx_split(&mut self) -> u64 {
        0
    }

    /// Tells the port the MAC of its network's gateway, the switch's own
    /// address (ARP, ICMP, DNS, NAT and publishing answer there). A TAP port
    /// cuts UDP segmentation offload frames it reads into datagrams only
    /// when they go there, or to a group address, or while it does not know
    /// the gateway; others cross whole (see [`crate::wire::udp_gso`]).
    fn set_gateway_mac(&mut self, _mac: Option<crate::wire::MacAddr>) {}

    /// Writes every frame in `frames` (draining it) and returns the buffers to
    /// `pool`. Frames it cannot write are counted in `failed`, never retried.
    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult;

    /// Gives back to `pool` the frames the port still holds between calls
    /// (a frame half cut, datagrams read ahead), before it is dropped: a
    /// frame is a pool buffer, and one dropped with its port would be lost
    /// to the pool for good.
    fn release(&mut self, _pool: &mut BufferPool) {}
}
