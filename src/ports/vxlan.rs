//! VXLAN ports. Each worker owns one [`VxlanSockets`]: a receive socket bound
//! to the VTEP address with `SO_REUSEPORT` (the kernel spreads flows over the
//! workers' sockets) and, shared by all workers, a few transmit sockets on
//! ephemeral ports, so the outer UDP source port follows a hash of the inner
//! flow (RFC 7348 ECMP entropy) while peers still send to the well-known
//! port.
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

mod rx;
mod tunnel;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::sys::udp;

pub use rx::VxlanRxPort;
pub use tunnel::{encapsulate, flow_hash, TunnelPort};

/// Transmit sockets per worker: the number of distinct outer source ports.
pub const TX_SOCKETS: usize = 8;

/// One worker's VXLAN sockets.
#[derive(Debug)]
pub struct VxlanSockets {
    rx: UdpSocket,
    /// Shared by all workers: a flow's datagrams leave from one outer
    /// source port whichever worker sends them, so the peer's kernel hands
    /// them all to one of its workers' receive sockets, in order.
    tx: Arc<TxSockets>,
}

/// The transmit sockets all workers share.
#[derive(Debug)]
struct TxSockets {
    socks: Vec<UdpSocket>,
    /// UDP GSO works on this path; cleared for good on the first send that
    /// the kernel refuses.
    gso: AtomicBool,
}

impl VxlanSockets {
    /// Binds the receive socket to `bind` (shared with the other workers'
    /// through `SO_REUSEPORT`) and [`TX_SOCKETS`] transmit sockets to
    /// ephemeral ports on the same address.
    pub fn open(bind: SocketAddr) -> io::Result<VxlanSockets> {
        Self::claim(bind)?;
        let socks = (0..TX_SOCKETS)
            .map(|_| {
                let s = udp::bind_udp(SocketAddr::new(bind.ip(), 0), false)?;
                udp::grow_buffer(&s, false, udp::VXLAN_SOCKET_BUFFER)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let tx = Arc::new(TxSockets {
            socks,
            gso: AtomicBool::new(true),
        });
        Ok(VxlanSockets {
            rx: Self::open_rx(bind)?,
            tx,
        })
    }

    /// Another worker's sockets on `bind`: a receive socket of its own
    /// (`SO_REUSEPORT`), the transmit sockets of `first`.
    pub fn open_sharing(bind: SocketAddr, first: &VxlanSockets) -> io::Result<VxlanSockets> {
        Ok(VxlanSockets {
            rx: Self::open_rx(bind)?,
            tx: first.tx.clone(),
        })
    }

    /// Fails with `AddrInUse` when any socket holds `bind` already, saying
    /// what to do about that and about an address that is not this host's. The
    /// receive sockets share their address through `SO_REUSEPORT`, which
    /// also lets a second daemon of the same user bind the same VTEP: the
    /// kernel would then split the VXLAN traffic between the two. A plain
    /// bind is refused while any socket holds the address, and the
    /// reuse-port group, bound next, refuses later plain binds in turn.
    fn claim(bind: SocketAddr) -> io::Result<()> {
        if bind.port() == 0 {
            return Ok(());
        }
        match udp::bind_udp(bind, false) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process receives VXLAN there (a second switchyard daemon, or a \
                 kernel vxlan device on that port); give this daemon another --advertise \
                 address or --vxlan-port",
            )),
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(io::Error::new(
                e.kind(),
                format!("{e}: it is no address of this host; give --advertise one that is"),
            )),
            Err(e) => Err(e),
        }
    }

    fn open_rx(bind: SocketAddr) -> io::Result<UdpSocket> {
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
        Ok(rx)
    }

    /// The address the receive socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rx.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::frame::Frame;
    use crate::pipeline::pool::BufferPool;
    use crate::ports::Port;
    use crate::wire::gso::Segmenter;
    use crate::wire::virtio_net::VirtioNetHdr;
    use crate::wire::vxlan::{VxlanRepr, HEADER_LEN};

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

    #[test]
    fn datagrams_read_ahead_go_back_to_the_pool_on_release() {
        let (mut port, tx, dst) = rx_port_and_sender();
        let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 200]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(udp::send_batch_gso(&tx, dst, &refs).unwrap(), 8);
        let mut pool = BufferPool::standalone(32);
        let mut out = Vec::new();
        for _ in 0..200 {
            port.recv(&mut pool, &mut out, 1).unwrap();
            if !out.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(out.len(), 1);
        assert!(!port.pending.is_empty(), "the rest waits in the port");
        for f in out.drain(..) {
            pool.free(f);
        }
        port.release(&mut pool);
        assert!(port.pending.is_empty());
        assert_eq!(pool.local_len(), 32, "every buffer is back");
    }

    /// A TCP GSO frame of `payload_len` bytes from sequence number `seq`,
    /// to be cut at `mss`.
    fn tcp_gso_frame(seq: u32, payload_len: usize, mss: u16) -> (Vec<u8>, VirtioNetHdr) {
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
        (big, hdr)
    }

    /// The VXLAN packets of `payload_len` bytes of one TCP flow, segmented
    /// at `mss`, each behind a VXLAN header for `vni`.
    fn vxlan_segments(vni: u32, seq: u32, payload_len: usize, mss: u16) -> Vec<Vec<u8>> {
        let (big, hdr) = tcp_gso_frame(seq, payload_len, mss);
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
    fn tunnel_port_cuts_gso_frames_into_the_segments_a_copy_would_make() {
        let rx = udp::bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let dst = rx.local_addr().unwrap();
        let sockets = Arc::new(VxlanSockets::open("127.0.0.1:0".parse().unwrap()).unwrap());
        // MTU 1450 cuts the 1448-byte MSS of the frame to 1410.
        let mut port = TunnelPort::new("t", 7, dst, 1450, sockets);
        assert!(port.caps().segments_gso);
        let (big, hdr) = tcp_gso_frame(1, 30_000, 1448);
        let mut pool = BufferPool::standalone(8);
        let mut frames = Vec::new();
        for _ in 0..2 {
            let mut f = pool.alloc().unwrap();
            f.fill(&big);
            f.vnet = hdr;
            frames.push(f);
        }
        let mut plain = pool.alloc().unwrap();
        plain.fill(&[0x5a; 60]);
        frames.push(plain);
        let res = port.send(&mut frames, &mut pool);
        let want = vxlan_segments(7, 1, 30_000, 1410);
        assert_eq!(want.len(), 22);
        assert_eq!(res.sent, 2 * want.len() + 1);
        assert_eq!(res.failed, 0);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        for _ in 0..200 {
            match rx.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(_) if got.len() < res.sent => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Err(_) => break,
            }
        }
        assert_eq!(got.len(), res.sent);
        assert_eq!(&got[..want.len()], &want[..]);
        assert_eq!(&got[want.len()..2 * want.len()], &want[..]);
        assert_eq!(&got[2 * want.len()][HEADER_LEN..], &[0x5a; 60]);
        assert!(frames.is_empty());
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
        let mut seg = Segmenter::new(inner, &out[0].vnet, Some(1400)).unwrap();
        let mut buf = vec![0u8; 2048];
        for packet in &first {
            let n = seg.next_into(&mut buf).unwrap().unwrap();
            assert_eq!(&buf[..n], &packet[HEADER_LEN..]);
        }
        assert_eq!(&out[1].data()[..HEADER_LEN], &other[0][..HEADER_LEN]);
    }

    #[test]
    fn a_short_return_means_the_socket_is_drained() {
        let (mut port, tx, dst) = rx_port_and_sender();
        // 80 sends of 3 packets each, all of one TCP segment stream: more
        // datagrams than one read takes, yet they join into one frame. The
        // port must not stop after the first read (edge-triggered polling
        // would leave the rest queued until something new arrives).
        let packets = vxlan_segments(7, 1, 24_000, 100);
        for run in packets.chunks(3) {
            let refs: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
            assert_eq!(udp::send_batch_gso(&tx, dst, &refs).unwrap(), 3);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut pool = BufferPool::standalone(128);
        let mut out = Vec::new();
        let got = port.recv(&mut pool, &mut out, 64).unwrap();
        assert_eq!(got, 1);
        assert_eq!(out[0].len(), HEADER_LEN + 54 + 24_000);
        assert_eq!(port.recv(&mut pool, &mut out, 64).unwrap(), 0);
    }

    #[test]
    fn a_send_of_exactly_max_send_datagrams() {
        // One GSO frame of 256 segments fills a send to the last slot.
        let rx = udp::bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let sockets = Arc::new(VxlanSockets::open("127.0.0.1:0".parse().unwrap()).unwrap());
        let mut port = TunnelPort::new("t", 7, rx.local_addr().unwrap(), 1450, sockets);
        let (big, hdr) = tcp_gso_frame(1, 256 * 100, 100);
        let mut pool = BufferPool::standalone(4);
        let mut f = pool.alloc().unwrap();
        f.fill(&big);
        f.vnet = hdr;
        let mut frames = vec![f];
        let res = port.send(&mut frames, &mut pool);
        assert_eq!(res.sent + res.failed, udp::MAX_SEND);
        assert_eq!(res.failed, 0);
    }
}
