//! VXLAN ports. Each worker owns one [`VxlanSockets`]: a receive socket bound
//! to the VTEP address with `SO_REUSEPORT` (the kernel spreads flows over the
//! workers' sockets) and a few transmit sockets on ephemeral ports, so the
//! outer UDP source port follows a hash of the inner flow (RFC 7348 ECMP
//! entropy) while peers still send to the well-known port.
//!
//! [`VxlanRxPort`] reads datagrams (`recvmmsg`) into frame buffers and keeps
//! each one's underlay source for the `decap` stage. A [`TunnelPort`] is one
//! worker's queue of the logical port towards one remote VTEP: it has no
//! receive side, pushes the VXLAN header onto each (already segmented) frame
//! and sends the batch with `sendmmsg`, runs of equal-size datagrams (the
//! segments of one TCP segment) as one UDP GSO send each.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Port, PortCaps, TxResult};
use crate::pipeline::frame::Frame;
use crate::pipeline::pool::BufferPool;
use crate::sys::udp::{self, MAX_BATCH};
use crate::wire::vxlan::{VxlanRepr, HEADER_LEN};

/// Transmit sockets per worker: the number of distinct outer source ports.
pub const TX_SOCKETS: usize = 8;

/// One worker's VXLAN sockets.
#[derive(Debug)]
pub struct VxlanSockets {
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    /// UDP GSO works on this path; cleared for good on the first send that
    /// the kernel refuses.
    gso: AtomicBool,
}

impl VxlanSockets {
    /// Binds the receive socket to `bind` (shared with the other workers'
    /// through `SO_REUSEPORT`) and [`TX_SOCKETS`] transmit sockets to
    /// ephemeral ports on the same address.
    pub fn open(bind: SocketAddr) -> io::Result<VxlanSockets> {
        let rx = udp::bind_udp(bind, true)?;
        let granted = udp::grow_buffer(&rx, true, udp::VXLAN_SOCKET_BUFFER)?;
        if granted < udp::VXLAN_SOCKET_BUFFER {
            tracing::warn!(
                "VXLAN receive buffer is {} KiB (net.core.rmem_max); bursts beyond it are lost \
                 (UdpRcvbufErrors). As root: sysctl -w net.core.rmem_max={}",
                granted / 1024,
                udp::VXLAN_SOCKET_BUFFER
            );
        }
        let tx = (0..TX_SOCKETS)
            .map(|_| {
                let s = udp::bind_udp(SocketAddr::new(bind.ip(), 0), false)?;
                udp::grow_buffer(&s, false, udp::VXLAN_SOCKET_BUFFER)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(VxlanSockets {
            rx,
            tx,
            gso: AtomicBool::new(true),
        })
    }

    /// The address the receive socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rx.local_addr()
    }
}

/// A worker's VXLAN receive port.
pub struct VxlanRxPort {
    name: String,
    sockets: Arc<VxlanSockets>,
}

impl VxlanRxPort {
    /// The receive port over `sockets`.
    pub fn new(name: &str, sockets: Arc<VxlanSockets>) -> VxlanRxPort {
        VxlanRxPort {
            name: name.to_string(),
            sockets,
        }
    }
}

impl Port for VxlanRxPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        // Nothing is ever sent through the receive port.
        PortCaps {
            offload: false,
            mtu: 1500,
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sockets.rx.as_raw_fd())
    }

    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        let want = max.min(MAX_BATCH);
        let start = out.len();
        while out.len() - start < want {
            let Some(f) = pool.alloc() else { break };
            out.push(f);
        }
        let frames = &mut out[start..];
        let n = frames.len();
        let mut it = frames.iter_mut();
        let mut bufs: [&mut [u8]; MAX_BATCH] =
            std::array::from_fn(|_| it.next().map_or(&mut [][..], |f| f.receive_space()));
        let mut meta = [(0usize, None); MAX_BATCH];
        let got = udp::recv_batch(&self.sockets.rx, &mut bufs[..n], &mut meta[..n]);
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                for f in out.drain(start..) {
                    pool.free(f);
                }
                return Err(e);
            }
        };
        for (f, (len, src)) in out[start..start + got].iter_mut().zip(meta) {
            f.set_len(len);
            f.meta.underlay_src = src;
        }
        for f in out.drain(start + got..) {
            pool.free(f);
        }
        Ok(got)
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

/// One worker's queue of the port towards a remote VTEP.
pub struct TunnelPort {
    name: String,
    vni: u32,
    vtep: SocketAddr,
    mtu: u16,
    sockets: Arc<VxlanSockets>,
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
        }
    }
}

impl TunnelPort {
    /// Sends one run of datagrams: with UDP GSO (one send per run of equal
    /// sizes: a segmented TCP segment leaves as one) while the kernel takes
    /// it, else one datagram each.
    fn send_run(&self, sock: &UdpSocket, datagrams: &[&[u8]]) -> usize {
        if self.sockets.gso.load(Ordering::Relaxed) {
            match udp::send_batch_gso(sock, self.vtep, datagrams) {
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
                    self.sockets.gso.store(false, Ordering::Relaxed);
                }
            }
        }
        udp::send_batch(sock, self.vtep, datagrams).unwrap_or(0)
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
        // No offloads: GSO frames are segmented to the overlay MTU before
        // they reach `send`, so every datagram fits the underlay.
        PortCaps {
            offload: false,
            mtu: self.mtu,
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
        let socks = &self.sockets.tx;
        let mut i = 0;
        while i < frames.len() {
            // A run of frames of one flow (one socket), at most one batch.
            let pick = |f: &Frame| flow_hash(f.data()) as usize % socks.len().max(1);
            let sock = pick(&frames[i]);
            let mut end = i;
            while end < frames.len() && end - i < MAX_BATCH && pick(&frames[end]) == sock {
                if !encapsulate(&mut frames[end], self.vni) {
                    res.failed += 1;
                    // Keep the run contiguous: send it without this frame.
                    let f = frames.remove(end);
                    pool.free(f);
                    continue;
                }
                end += 1;
            }
            let run = &frames[i..end];
            let mut it = run.iter();
            let datagrams: [&[u8]; MAX_BATCH] =
                std::array::from_fn(|_| it.next().map_or(&[][..], |f| f.data()));
            let sent = match socks.get(sock) {
                Some(s) => self.send_run(s, &datagrams[..run.len()]),
                None => 0,
            };
            res.sent += sent;
            res.failed += run.len() - sent;
            res.bytes += run[..sent]
                .iter()
                .map(|f| (f.len() - HEADER_LEN) as u64)
                .sum::<u64>();
            i = end;
        }
        for f in frames.drain(..) {
            pool.free(f);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulate_pushes_a_valid_header() {
        let mut f = Frame::alloc();
        f.fill(&[0xaa; 60]);
        assert!(encapsulate(&mut f, 0x12_3456));
        assert_eq!(f.len(), 68);
        assert_eq!(&f.data()[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert!(!encapsulate(&mut f, 1 << 24));
    }

    #[test]
    fn flow_hash_follows_the_flow_not_the_packet() {
        let mut a = [0u8; 60];
        a[12] = 0x08;
        a[14] = 0x45;
        a[23] = 17;
        a[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        a[34..38].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        let mut b = a;
        b[18] = 0x99; // IP ID differs: same flow
        assert_eq!(flow_hash(&a), flow_hash(&b));
        b[35] = 0x3a; // source port differs: another flow
        assert_ne!(flow_hash(&a), flow_hash(&b));
        let _ = flow_hash(&[]);
    }
}
