//! TAP ports: one [`TapPort`] per queue fd of a TAP device opened with
//! `IFF_VNET_HDR`. Every frame crosses the fd behind its 10-byte virtio-net
//! header, so offloaded (GSO, partial checksum) frames pass unsplit. A UDP
//! segmentation offload frame read from a TAP (a `UDP_SEGMENT` burst from
//! the sandbox) crosses whole to another endpoint, as TCP GSO frames do; one
//! for the gateway (whose DNS, NAT and publishing stages work on single
//! datagrams) or for a group address is cut into its datagrams right here.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{Port, PortCaps, TxResult};
use crate::pipeline::frame::Frame;
use crate::pipeline::offload;
use crate::pipeline::pool::BufferPool;
use crate::sys::tun;
use crate::wire::virtio_net::{GsoType, VirtioNetHdr, HEADER_LEN};
use crate::wire::{ethernet, udp_gso, MacAddr};

pub use crate::sys::tun::TapError;

/// One queue of a TAP device as a switch port.
#[derive(Debug)]
pub struct TapPort {
    file: File,
    name: String,
    caps: PortCaps,
    malformed: u64,
    malformed_reported: u64,
    /// A USO frame read but not yet wholly cut into datagrams (the batch
    /// filled up first).
    cut: Option<PendingCut>,
    /// Datagrams cut from USO frames since the last [`Port::take_rx_split`].
    split: u64,
    /// Set once the data plane said where the gateway is (see
    /// [`Port::set_gateway_mac`]); until then every USO frame is cut.
    placed: bool,
    /// The network's gateway MAC, if it has a gateway.
    gateway: Option<MacAddr>,
}

/// A USO frame being cut: its plan and the next datagram to write.
#[derive(Debug)]
struct PendingCut {
    frame: Frame,
    plan: udp_gso::Plan,
    next: usize,
}

impl TapPort {
    /// Wraps a TAP queue fd (opened with `IFF_VNET_HDR` and a 10-byte header
    /// size) received from elsewhere, e.g. [`crate::ns::attach::attach`];
    /// makes it non-blocking. `offload` says whether `TUNSETOFFLOAD` was
    /// accepted for the device, `uso` whether it knows UDP segmentation
    /// offload too (see [`crate::sys::tun::TapQueue`]).
    pub fn from_fd(
        fd: OwnedFd,
        name: &str,
        mtu: u16,
        offload: bool,
        uso: bool,
    ) -> io::Result<TapPort> {
        Ok(TapPort {
            file: tun::tap_file_from_fd(fd)?,
            name: name.to_string(),
            caps: PortCaps {
                offload,
                mtu,
                segments_gso: false,
                uso: offload && uso,
            },
            malformed: 0,
            malformed_reported: 0,
            cut: None,
            split: 0,
            placed: false,
            gateway: None,
        })
    }

    /// Creates TAP `name` with `queues` queues in the current network
    /// namespace, one port per queue. The device is not configured (no
    /// address, still down).
    pub fn create(name: &str, queues: usize, mtu: u16) -> Result<Vec<TapPort>, TapError> {
        Ok(tun::open_tap(name, queues)?
            .into_iter()
            .map(|q| TapPort {
                file: q.file,
                name: q.name,
                caps: PortCaps {
                    offload: q.offload,
                    mtu,
                    segments_gso: false,
                    uso: q.uso,
                },
                malformed: 0,
                malformed_reported: 0,
                cut: None,
                split: 0,
                placed: false,
                gateway: None,
            })
            .collect())
    }

    /// Frames read but discarded because they were shorter than a virtio-net
    /// header plus an Ethernet header, or USO frames that could not be cut.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// True if USO frame `f` must be cut into datagrams before the
    /// pipeline: it goes to the gateway or to a group address, or the port
    /// has not been told where the gateway is.
    fn must_cut(&self, f: &Frame) -> bool {
        let dst = &f.data()[..6];
        !self.placed || dst[0] & 1 != 0 || self.gateway.is_some_and(|g| dst == g.0)
    }

    /// Cuts the pending USO frame's next datagrams into frames appended to
    /// `out`, at most `room` of them; frees the USO frame once it is wholly
    /// cut. Returns how many it appended (fewer than `room` while the cut
    /// is still pending only if the pool ran dry).
    fn continue_cut(&mut self, pool: &mut BufferPool, out: &mut Vec<Frame>, room: usize) -> usize {
        let Some(c) = self.cut.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while n < room && c.next < c.plan.segments {
            match offload::cut_datagram(&c.frame, &c.plan, c.next, pool) {
                Ok(Some(f)) => {
                    out.push(f);
                    n += 1;
                }
                Ok(None) => break,
                Err(_) => self.malformed += 1,
            }
            c.next += 1;
        }
        self.split += n as u64;
        if c.next >= c.plan.segments {
            if let Some(done) = self.cut.take() {
                pool.free(done.frame);
            }
        }
        n
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        self.caps
    }

    fn take_rx_split(&mut self) -> u64 {
        std::mem::take(&mut self.split)
    }

    fn set_gateway_mac(&mut self, mac: Option<MacAddr>) {
        self.placed = true;
        self.gateway = mac;
    }

    fn release(&mut self, pool: &mut BufferPool) {
        if let Some(cut) = self.cut.take() {
            pool.free(cut.frame);
        }
    }

    fn take_rx_errors(&mut self) -> u64 {
        let n = self.malformed - self.malformed_reported;
        self.malformed_reported = self.malformed;
        n
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        // What is left of a USO frame first, in order; while some is still
        // left the batch is full (or the pool dry) and the worker comes back.
        let mut got = self.continue_cut(pool, out, max);
        if self.cut.is_some() {
            return Ok(got);
        }
        while got < max {
            let Some(mut frame) = pool.alloc() else {
                break;
            };
            // One plain `read` into the headroom and the frame: the kernel
            // takes a single-buffer iterator, cheaper than `readv`'s vector.
            let mut hdr = [0u8; HEADER_LEN];
            let res = {
                let space = frame.receive_space_after(HEADER_LEN);
                let res = (&self.file).read(space);
                if matches!(res, Ok(n) if n >= HEADER_LEN) {
                    hdr.copy_from_slice(&space[..HEADER_LEN]);
                }
                res
            };
            let n = match res {
                Ok(n) => n,
                Err(e) => {
                    pool.free(frame);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(got),
                        _ if got > 0 => Ok(got),
                        _ => Err(e),
                    };
                }
            };
            if n < HEADER_LEN + ethernet::HEADER_LEN {
                self.malformed += 1;
                pool.free(frame);
                continue;
            }
            match VirtioNetHdr::parse(&hdr) {
                Ok(vnet) => frame.vnet = vnet,
                Err(_) => {
                    self.malformed += 1;
                    pool.free(frame);
                    continue;
                }
            }
            frame.set_len(n - HEADER_LEN);
            if frame.vnet.gso_type == GsoType::UdpL4 && self.must_cut(&frame) {
                match udp_gso::plan(frame.data(), &frame.vnet) {
                    Ok(plan) => {
                        self.cut = Some(PendingCut {
                            frame,
                            plan,
                            next: 0,
                        });
                        got += self.continue_cut(pool, out, max - got);
                        if self.cut.is_some() {
                            return Ok(got);
                        }
                    }
                    Err(_) => {
                        self.malformed += 1;
                        pool.free(frame);
                    }
                }
                continue;
            }
            out.push(frame);
            got += 1;
        }
        Ok(got)
    }

    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        let mut res = TxResult::default();
        for mut frame in frames.drain(..) {
            let hdr = frame.vnet.to_bytes();
            // The header goes into the headroom when there is room, so one
            // plain `write` sends both (as for `recv`); else `writev`.
            let written = match frame.with_prefix(HEADER_LEN) {
                Some(buf) => {
                    buf[..HEADER_LEN].copy_from_slice(&hdr);
                    (&self.file).write(buf)
                }
                None => {
                    (&self.file).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame.data())])
                }
            };
            // EAGAIN (queue full), ENOBUFS and EIO (device down) alike: the
            // frame is lost and counted, never retried.
            match written {
                Ok(_) => {
                    res.sent += 1;
                    res.bytes += frame.len() as u64;
                }
                Err(_) => res.failed += 1,
            }
            pool.free(frame);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A socketpair stands in for a TAP fd: datagrams keep frame boundaries.
    fn pair() -> (TapPort, File) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let port = TapPort::from_fd(a, "t0", 1500, true, false).expect("wrap");
        (port, File::from(b))
    }

    #[test]
    fn frames_cross_with_their_header_and_runts_are_counted() {
        let (mut port, mut peer) = pair();
        let mut pool = BufferPool::standalone(8);
        let hdr = VirtioNetHdr {
            flags: crate::wire::virtio_net::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::NONE
        };
        let mut msg = hdr.to_bytes().to_vec();
        msg.extend_from_slice(&[0xab; 60]);
        peer.write_all(&msg).expect("write frame");
        peer.write_all(&[0u8; 12]).expect("write runt");
        let mut out = Vec::new();
        assert_eq!(port.recv(&mut pool, &mut out, 8).expect("recv"), 1);
        assert_eq!(out[0].len(), 60);
        assert_eq!(out[0].vnet, hdr);
        assert_eq!(port.malformed(), 1);
        assert_eq!(port.take_rx_errors(), 1);
        assert_eq!(port.take_rx_errors(), 0);
        assert_eq!(port.recv(&mut pool, &mut out, 8).expect("recv"), 0);

        let res = port.send(&mut out, &mut pool);
        assert_eq!((res.sent, res.bytes, res.failed), (1, 60, 0));
        assert!(out.is_empty());
        let mut back = [0u8; 128];
        let n = peer.read(&mut back).expect("read back");
        assert_eq!(&back[..n], &msg[..]);
        assert_eq!(port.raw_fd(), Some(port.file.as_fd().as_raw_fd()));
    }

    #[test]
    fn a_frame_without_headroom_for_the_header_is_sent_whole() {
        // Headers pushed in front (as encapsulation does) can leave less
        // headroom than the virtio-net header: `writev` then, same bytes.
        let (mut port, mut peer) = pair();
        let mut pool = BufferPool::standalone(4);
        let mut f = pool.alloc().expect("frame");
        f.fill(&[0x5a; 60]);
        let room = crate::pipeline::frame::HEADROOM - 4;
        f.push_front(room).expect("headroom").fill(0xc3);
        assert!(f.with_prefix(HEADER_LEN).is_none());
        let mut out = vec![f];
        let res = port.send(&mut out, &mut pool);
        assert_eq!((res.sent, res.bytes, res.failed), (1, 60 + room as u64, 0));
        let mut back = vec![0u8; 512];
        let n = peer.read(&mut back).expect("read back");
        assert_eq!(n, HEADER_LEN + room + 60);
        assert_eq!(&back[..HEADER_LEN], &VirtioNetHdr::NONE.to_bytes());
        assert!(back[HEADER_LEN..HEADER_LEN + room]
            .iter()
            .all(|b| *b == 0xc3));
        assert!(back[HEADER_LEN + room..n].iter().all(|b| *b == 0x5a));
    }
}
