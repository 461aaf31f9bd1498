//! VXLAN ports. Each worker owns one [`VxlanSockets`]: a receive socket bound
//! to the VTEP address with `SO_REUSEPORT` (the kernel spreads flows over the
//! workers' sockets) and a few transmit sockets on ephemeral ports, so the
//! outer UDP source port follows a hash of the inner flow (RFC 7348 ECMP
//! entropy) while peers still send to the well-known port.
//!
//! [`VxlanRxPort`] reads datagrams (`recvmmsg`) into frame buffers and keeps
//! each one's underlay source for the `decap` stage. The receive socket asks
//! for `UDP_GRO`, so a peer's UDP GSO send (all the VXLAN packets of one
//! 64 KiB TCP segment) arrives as one datagram in one read; the port splits
//! it back into its VXLAN packets and joins those that continue one TCP
//! segment into one GSO frame on the way (receive coalescing, as Linux's
//! `tcp_gro_receive` would). A [`TunnelPort`] is one
//! worker's queue of the logical port towards one remote VTEP: it has no
//! receive side, pushes the VXLAN header onto each (already segmented) frame
//! and sends the batch with `sendmmsg`, runs of equal-size datagrams (the
//! segments of one TCP segment) as one UDP GSO send each.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Port, PortCaps, TxResult};
use crate::pipeline::frame::Frame;
use crate::pipeline::pool::BufferPool;
use crate::sys::udp::{self, RecvMeta, MAX_BATCH};
use crate::wire::gro;
use crate::wire::virtio_net::VirtioNetHdr;
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
        if !udp::enable_gro(&rx) {
            tracing::debug!("UDP_GRO not offered by the kernel; VXLAN datagrams arrive one by one");
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
    /// Datagrams read but not yet handed out, oldest first: coalesced ones
    /// (`UDP_GRO`) being split into one frame per VXLAN packet, and the
    /// plain ones that arrived after them. Entries are (datagram, bytes
    /// already split off, segment size or 0). At most one batch: the socket
    /// is read only once this is empty.
    pending: VecDeque<(Frame, usize, usize)>,
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

    /// Moves pending datagrams into `out` until it holds `limit` frames or
    /// the pool runs dry, splitting coalesced ones into their VXLAN packets.
    /// A packet that continues the TCP segment of the frame before it (same
    /// VXLAN header and underlay source, and what [`gro::continues`] asks)
    /// is appended to that frame, which becomes a GSO frame: the 45 or so
    /// packets of one 64 KiB segment cross the pipeline as one frame, and
    /// `decap` checks the one header and inner source they share. Any other
    /// packet is copied into a frame of its own.
    fn drain_pending(&mut self, pool: &mut BufferPool, out: &mut Vec<Frame>, limit: usize) {
        // The frame this call made last: the only one a packet may join.
        let mut open: Option<usize> = None;
        while let Some((f, off, seg)) = self.pending.front_mut() {
            let step = if *seg == 0 { f.len() } else { *seg };
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
        self.drain_pending(pool, out, limit);
        // The socket is read only when nothing is left over, so the order
        // of datagrams is kept and `pending` stays within one batch.
        if !self.pending.is_empty() || out.len() >= limit {
            return Ok(out.len() - start);
        }
        let first = out.len();
        let want = (limit - first).min(MAX_BATCH);
        while out.len() - first < want {
            let Some(f) = pool.alloc() else { break };
            out.push(f);
        }
        let frames = &mut out[first..];
        let n = frames.len();
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
            self.drain_pending(pool, out, limit);
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

    /// A receive port on loopback, a socket to send to it, and its address.
    fn rx_port_and_sender() -> (VxlanRxPort, UdpSocket, SocketAddr) {
        let sockets = Arc::new(VxlanSockets::open("127.0.0.1:0".parse().unwrap()).unwrap());
        let dst = sockets.local_addr().unwrap();
        let tx = udp::bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        (VxlanRxPort::new("vx", sockets), tx, dst)
    }

    #[test]
    fn coalesced_datagrams_come_out_one_frame_per_packet_in_order() {
        let (mut port, tx, dst) = rx_port_and_sender();
        // Seven 200-byte packets and a short one in one GSO send, then a
        // plain datagram: nine packets, in this order.
        let payloads: Vec<Vec<u8>> = (0..8u8)
            .map(|i| vec![i; if i == 7 { 50 } else { 200 }])
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(udp::send_batch_gso(&tx, dst, &refs).unwrap(), 8);
        assert_eq!(udp::send_batch(&tx, dst, &[&[8u8; 30]]).unwrap(), 1);
        let mut pool = BufferPool::standalone(32);
        let mut out = Vec::new();
        for _ in 0..200 {
            // Three at a time, so the split continues across calls.
            port.recv(&mut pool, &mut out, 3).unwrap();
            if out.len() >= 9 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let lens: Vec<usize> = out.iter().map(|f| f.len()).collect();
        assert_eq!(lens, [200, 200, 200, 200, 200, 200, 200, 50, 30]);
        for (i, f) in out.iter().enumerate() {
            assert!(f.data().iter().all(|b| usize::from(*b) == i));
            assert_eq!(f.meta.underlay_src, Some(tx.local_addr().unwrap()));
        }
        assert!(port.pending.is_empty());
    }

    /// The VXLAN packets of `payload_len` bytes of one TCP flow, segmented
    /// at `mss`, each behind a VXLAN header for `vni`.
    fn vxlan_segments(vni: u32, seq: u32, payload_len: usize, mss: u16) -> Vec<Vec<u8>> {
        use crate::wire::gso::Segmenter;
        use crate::wire::virtio_net::GsoType;
        let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 5201, seq, 65535)
            .ack(7);
        let mut big = Vec::new();
        builder.write(&mut big, &payload).unwrap();
        let hdr = VirtioNetHdr {
            flags: 0,
            gso_type: GsoType::TcpV4,
            gso_ecn: false,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut seg = Segmenter::new(&big, &hdr, Some(mss)).unwrap();
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        while let Some(n) = seg.next_into(&mut buf) {
            let mut d = vec![0u8; HEADER_LEN];
            VxlanRepr { vni }.emit(&mut d).unwrap();
            d.extend_from_slice(&buf[..n.unwrap()]);
            out.push(d);
        }
        out
    }

    #[test]
    fn packets_of_one_tcp_segment_join_into_one_gso_frame() {
        let (mut port, tx, dst) = rx_port_and_sender();
        // 10,000 bytes at MSS 1400 (8 packets), then the flow's next 2,800
        // bytes on another VNI: those must not join the first frame.
        let first = vxlan_segments(7, 1, 10_000, 1400);
        let other = vxlan_segments(8, 10_001, 2_800, 1400);
        for run in [&first, &other] {
            let refs: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
            assert_eq!(udp::send_batch_gso(&tx, dst, &refs).unwrap(), run.len());
        }
        let mut pool = BufferPool::standalone(32);
        let mut out = Vec::new();
        for _ in 0..200 {
            port.recv(&mut pool, &mut out, 64).unwrap();
            if out.len() >= 2 && port.pending.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(out.len(), 2, "one frame per VNI");
        assert_eq!(port.take_rx_coalesced(), 7 + 1);
        let inner = &out[0].data()[HEADER_LEN..];
        assert_eq!(out[0].vnet.gso_size, 1400);
        assert_eq!(inner.len(), 54 + 10_000);
        assert!(inner[54..]
            .iter()
            .enumerate()
            .all(|(i, b)| usize::from(*b) == i % 251));
        // Segmenting the joined frame again gives back the very packets.
        let mut seg = crate::wire::gso::Segmenter::new(inner, &out[0].vnet, Some(1400)).unwrap();
        let mut buf = vec![0u8; 2048];
        for packet in &first {
            let n = seg.next_into(&mut buf).unwrap().unwrap();
            assert_eq!(&buf[..n], &packet[HEADER_LEN..]);
        }
        assert_eq!(&out[1].data()[..HEADER_LEN], &other[0][..HEADER_LEN]);
    }
}
