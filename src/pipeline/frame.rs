//! Frames and their buffers: one preallocated buffer per frame, with headroom
//! so encapsulation can prepend headers without copying, and the per-frame
//! metadata the pipeline stages read and write.

use crate::ports::PortId;
use crate::tables::topology::NetworkId;
use crate::wire::ethernet::EtherType;
use crate::wire::virtio_net::VirtioNetHdr;
use crate::wire::MacAddr;

use super::drop::DropReason;

/// Bytes kept free before the frame for headers pushed later (VXLAN over IPv6
/// needs 14 + 40 + 8 + 8 = 70).
pub const HEADROOM: usize = 128;
/// The largest frame a buffer holds: a 64 KiB GSO IP packet behind an Ethernet
/// header with two VLAN tags.
pub const MAX_FRAME_LEN: usize = 65_535 + 22;
/// Size of every buffer.
pub const BUFFER_LEN: usize = HEADROOM + MAX_FRAME_LEN;

/// What the pipeline decided to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// No decision yet; later stages look at it.
    #[default]
    Continue,
    /// Drop and count.
    Drop(DropReason),
    /// Send out of this port.
    Output(PortId),
    /// Send to every port of the frame's network except the ingress port.
    Flood,
    /// A stage took care of the frame (its buffer goes back to the pool).
    Consumed,
    /// Hand the frame to the gateway stack (userspace TCP/IP).
    Punt,
}

impl Action {
    /// True once a stage has decided the frame's fate.
    pub fn is_final(&self) -> bool {
        !matches!(self, Action::Continue)
    }
}

/// What the stages know about a frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    /// Port the frame came in on.
    pub in_port: PortId,
    /// Network of the ingress port (set by the port-check stage).
    pub network: NetworkId,
    /// Destination MAC (set by the parse stage).
    pub dst: MacAddr,
    /// Source MAC (set by the parse stage).
    pub src: MacAddr,
    /// EtherType after any VLAN tags.
    pub ethertype: EtherType,
    /// Offset of the L3 header in the frame.
    pub l3_offset: u16,
    /// The decision so far.
    pub action: Action,
    /// Underlay source of a frame received by a VXLAN port (read by the
    /// decap stage; `None` for every other port).
    pub underlay_src: Option<std::net::SocketAddr>,
}

/// One frame in a preallocated buffer. The handle is a single pointer, so
/// moving a frame between batches, queues and the pool copies 8 bytes; the
/// metadata lives in [`FrameInner`], reached through `Deref`.
pub struct Frame(Box<FrameInner>);

/// The metadata and buffer of a [`Frame`].
pub struct FrameInner {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
    /// Offload metadata (from or for a TAP with `IFF_VNET_HDR`).
    pub vnet: VirtioNetHdr,
    /// Pipeline metadata.
    pub meta: Meta,
}

#[cfg(test)]
impl Frame {
    /// A frame holding `bytes` with its L2 metadata filled in as the parse
    /// stage would, arriving on `in_port` of network 0 (tests).
    pub fn parsed(bytes: &[u8], in_port: PortId) -> Frame {
        let mut f = Frame::alloc();
        f.fill(bytes);
        let h = crate::wire::ethernet::parse_l2(bytes).expect("test frame parses");
        f.meta.in_port = in_port;
        f.meta.network = NetworkId(0);
        f.meta.dst = h.dst;
        f.meta.src = h.src;
        f.meta.ethertype = h.ethertype;
        f.meta.l3_offset = h.l3_offset;
        f
    }
}

impl Frame {
    /// Allocates a buffer. Only pools call this, at start-up.
    pub fn alloc() -> Frame {
        Frame::with_buffer(Frame::new_buffer())
    }

    /// Allocates `count` frames with their metadata side by side in memory,
    /// apart from the buffers: every stage walks the metadata of a whole
    /// batch, and 64 frames then span a few pages instead of 64, which
    /// keeps the walks within the CPU's first-level TLB.
    pub fn alloc_many(count: usize) -> Vec<Frame> {
        let bufs: Vec<Box<[u8]>> = (0..count).map(|_| Frame::new_buffer()).collect();
        bufs.into_iter().map(Frame::with_buffer).collect()
    }

    fn new_buffer() -> Box<[u8]> {
        // A zeroed allocation of this size is fresh memory: pages become
        // resident only when touched, so small frames cost one page.
        vec![0u8; BUFFER_LEN].into_boxed_slice()
    }

    fn with_buffer(buf: Box<[u8]>) -> Frame {
        Frame(Box::new(FrameInner {
            buf,
            start: HEADROOM,
            len: 0,
            vnet: VirtioNetHdr::NONE,
            meta: Meta::default(),
        }))
    }
}

impl core::ops::Deref for Frame {
    type Target = FrameInner;
    #[inline]
    fn deref(&self) -> &FrameInner {
        &self.0
    }
}

impl core::ops::DerefMut for Frame {
    #[inline]
    fn deref_mut(&mut self) -> &mut FrameInner {
        &mut self.0
    }
}

impl FrameInner {
    /// Forgets content and the decision. The rest of the metadata is
    /// rewritten by every receive and stage, so it is left as is.
    #[inline]
    pub fn reset(&mut self) {
        self.start = HEADROOM;
        self.len = 0;
        self.vnet = VirtioNetHdr::NONE;
        self.meta.action = Action::Continue;
        self.meta.underlay_src = None;
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Length of the frame.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole space after the headroom, for a port to receive into; follow
    /// with [`FrameInner::set_len`].
    pub fn receive_space(&mut self) -> &mut [u8] {
        self.start = HEADROOM;
        &mut self.buf[HEADROOM..]
    }

    /// Like [`FrameInner::receive_space`], with `prefix` bytes of the headroom
    /// before it (at most [`HEADROOM`]), so one `read` takes a header the
    /// frame does not keep (a TAP's virtio-net header) and the frame; follow
    /// with [`FrameInner::set_len`] of what was read minus `prefix`.
    pub fn receive_space_after(&mut self, prefix: usize) -> &mut [u8] {
        self.start = HEADROOM;
        &mut self.buf[HEADROOM - prefix.min(HEADROOM)..]
    }

    /// The frame with `prefix` bytes of headroom before it, for writing a
    /// header the frame does not keep in front of it and sending both with
    /// one `write`; `None` when the headroom is shorter. The frame itself
    /// (start, length) is unchanged.
    pub fn with_prefix(&mut self, prefix: usize) -> Option<&mut [u8]> {
        let from = self.start.checked_sub(prefix)?;
        Some(&mut self.buf[from..self.start + self.len])
    }

    /// Sets the frame length after receiving into [`FrameInner::receive_space`]
    /// (clamped to the space available).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len() - self.start);
    }

    /// Replaces the content with a copy of `bytes` (truncated to the maximum).
    pub fn fill(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(MAX_FRAME_LEN);
        self.start = HEADROOM;
        self.buf[HEADROOM..HEADROOM + n].copy_from_slice(&bytes[..n]);
        self.len = n;
    }

    /// Makes this frame a copy of `other` (data, offload header and metadata).
    pub fn copy_from(&mut self, other: &FrameInner) {
        self.fill(other.data());
        self.vnet = other.vnet;
        self.meta = other.meta;
    }

    /// Appends `bytes` after the frame; false (and nothing changes) when the
    /// buffer has no room for them.
    pub fn append(&mut self, bytes: &[u8]) -> bool {
        let end = self.start + self.len;
        if end + bytes.len() > self.buf.len() {
            return false;
        }
        self.buf[end..end + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        true
    }

    /// Prepends `n` bytes of header space and returns it, or `None` when the
    /// headroom is exhausted.
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        self.len += n;
        Some(&mut self.buf[self.start..self.start + n])
    }

    /// Removes `n` bytes from the front (e.g. an outer header); false if the
    /// frame is shorter.
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.start += n;
        self.len -= n;
        true
    }
}

impl core::fmt::Debug for Frame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.len)
            .field("vnet", &self.vnet)
            .field("meta", &self.meta)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_headers() {
        let mut f = Frame::alloc();
        f.fill(&[1, 2, 3]);
        f.push_front(2).unwrap().copy_from_slice(&[9, 8]);
        assert_eq!(f.data(), &[9, 8, 1, 2, 3]);
        assert!(f.pull_front(2));
        assert_eq!(f.data(), &[1, 2, 3]);
        assert!(f.push_front(HEADROOM + 1).is_none());
        assert!(!f.pull_front(4));
    }
}
