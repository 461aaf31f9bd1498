//! Data-plane hardening, end to end through the in-memory switch (workers
//! driven by hand, so races run in a chosen order): frames never cross
//! networks when a port id is reused while a learn message is in flight;
//! a secured port cannot hide a neighbour advertisement for another's
//! address behind extension headers; a partial checksum cannot be aimed
//! at the headers port security checked; TCP coalescing never merges a
//! segment whose checksum does not hold.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use switchyard::clock::FakeClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use switchyard::pipeline::worker::Worker;
use switchyard::ports::memory::{MemoryPort, MemoryPortHandle};
use switchyard::ports::{PortCaps, PortId};
use switchyard::tables::topology::{NetworkId, PortSecurity};
use switchyard::wire::icmpv6::Icmpv6Repr;
use switchyard::wire::virtio_net::{GsoType, VirtioNetHdr, F_NEEDS_CSUM};
use switchyard::wire::MacAddr;

const CAPS: PortCaps = PortCaps {
    offload: true,
    mtu: 1500,
    segments_gso: false,
    uso: false,
};
const PLAIN: PortCaps = PortCaps {
    offload: false,
    mtu: 1500,
    segments_gso: false,
    uso: false,
};

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, i])
}

fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&[0xab; 50]);
    f
}

struct Switch {
    dp: Dataplane,
    workers: Vec<Worker>,
}

impl Switch {
    fn new(workers: usize) -> Switch {
        let clock = FakeClock::new();
        let config = DataplaneConfig {
            workers,
            pool_frames: 2048,
            ..DataplaneConfig::default()
        };
        let (dp, workers) = Dataplane::inline(config, Arc::new(clock)).expect("test setup");
        Switch { dp, workers }
    }

    fn network(&mut self, name: &str) -> NetworkId {
        self.dp
            .add_network(NetworkSpec {
                name: name.into(),
                gateway: None,
                isolate: false,
                internal: false,
                mac_cap: None,
                subnet4: None,
                subnet6: None,
                host_loopback: false,
            })
            .expect("test setup")
    }

    fn port(
        &mut self,
        net: NetworkId,
        worker: usize,
        sec: PortSecurity,
        caps: PortCaps,
    ) -> (MemoryPortHandle, PortId) {
        let (port, handle) = MemoryPort::new("mem", caps, 256);
        let id = self
            .dp
            .add_port(
                PortSpec {
                    network: net,
                    security: sec,
                    worker: Some(worker),
                },
                Box::new(port),
            )
            .expect("test setup");
        (handle, id)
    }

    fn settle(&mut self) {
        for _ in 0..4 {
            for w in self.workers.iter_mut() {
                w.run_once(Duration::ZERO);
            }
        }
    }
}

fn drain(h: &MemoryPortHandle) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    std::iter::from_fn(|| h.take_sent_with()).collect()
}

/// A learn announcement still in a peer's learn inbox when that peer
/// handles FlushPort used to be applied after the flush; with the port id
/// then reused on another network, frames of network A went into network
/// B.
#[test]
fn a_stale_learn_message_never_sends_frames_into_another_network() {
    let mut sw = Switch::new(2);
    let a = sw.network("a");
    let b = sw.network("b");
    let (pa, _) = sw.port(a, 0, PortSecurity::default(), CAPS);
    let (x, x_id) = sw.port(a, 1, PortSecurity::default(), CAPS);
    sw.settle();
    // Sandbox X (MAC 0x20) sends; only worker 1 runs: it learns and
    // announces to worker 0, which has not woken up yet.
    x.inject(&frame(MacAddr::BROADCAST, mac(0x20)));
    sw.workers[1].run_once(Duration::ZERO);
    // X is disconnected: RemovePort to worker 1, FlushPort to worker 0.
    sw.dp.remove_port(x_id).expect("test setup");
    sw.workers[1].run_once(Duration::ZERO);
    // Worker 0 wakes: FlushPort first, then the learn inbox.
    sw.workers[0].run_once(Duration::ZERO);
    drain(&pa);
    // A new sandbox Y connects to network B and gets X's old id.
    let (y, y_id) = sw.port(b, 0, PortSecurity::default(), CAPS);
    assert_eq!(y_id, x_id, "lowest free id is reused");
    sw.settle();
    drain(&y);
    // On network A, pa sends to X's MAC (e.g. a TCP retransmission).
    pa.inject(&frame(mac(0x20), mac(0x10)));
    sw.settle();
    let leaked = drain(&y);
    assert!(
        leaked.is_empty(),
        "frame of network {a:?} delivered to port {y_id} on network {b:?}: {} frames",
        leaked.len()
    );
}

fn tcp_segment(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1).0, mac(2).0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(1000, 2000, seq, 1000)
        .ack(1)
        .write(&mut f, payload)
        .expect("test setup");
    f
}

/// A corrupted segment merged into a GSO frame would get a "partial"
/// checksum, which the receiving kernel completes over the corrupted bytes
/// and trusts: it must go out on its own, with its bad checksum.
#[test]
fn tcp_coalescing_keeps_a_corrupt_segment_apart() {
    let mut sw = Switch::new(1);
    let n = sw.network("n");
    let (a, _) = sw.port(n, 0, PortSecurity::default(), CAPS);
    let (bport, _) = sw.port(n, 0, PortSecurity::default(), CAPS);
    sw.settle();
    let s1 = tcp_segment(100, &[1u8; 100]);
    let mut s2 = tcp_segment(200, &[2u8; 100]);
    let last = s2.len() - 1;
    s2[last] ^= 0xff; // corrupt payload, checksum now wrong
    a.inject(&s1);
    a.inject(&s2);
    sw.settle();
    let out = drain(&bport);
    assert_eq!(
        out.len(),
        2,
        "bad segment merged: {:?}",
        out.iter()
            .map(|(v, f)| (v.gso_type, f.len()))
            .collect::<Vec<_>>()
    );
}

/// Port security checks the neighbour-advertisement target wherever the
/// extension headers put the ICMPv6 message.
#[test]
fn an_advertisement_behind_a_hop_by_hop_header_is_checked() {
    let mut sw = Switch::new(1);
    let n = sw.network("n");
    let me = mac(2);
    let sec = PortSecurity {
        mac: Some(me),
        ipv4: vec![Ipv4Addr::new(10, 0, 0, 2)],
        ipv6: vec!["fd00::2".parse().expect("test setup")],
    };
    let (a, _) = sw.port(n, 0, sec, CAPS);
    let (victim_side, _) = sw.port(n, 0, PortSecurity::default(), CAPS);
    sw.settle();
    let src: Ipv6Addr = "fe80::2".parse().expect("test setup");
    let dst: Ipv6Addr = "ff02::1".parse().expect("test setup");
    let na = Icmpv6Repr::NeighborAdvert {
        flags: 0x20,                                         // override
        target_addr: "fd00::3".parse().expect("test setup"), // another sandbox's address
        lladdr: Some(me),
    };
    let build = |hbh: bool| {
        let ext = if hbh { 8 } else { 0 };
        let plen = ext + na.buffer_len();
        let mut b = vec![0u8; 54 + plen];
        b[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        b[6..12].copy_from_slice(&me.0);
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        b[14..22].copy_from_slice(&[0x60, 0, 0, 0, 0, plen as u8, if hbh { 0 } else { 58 }, 255]);
        b[22..38].copy_from_slice(&src.octets());
        b[38..54].copy_from_slice(&dst.octets());
        if hbh {
            // next header 58, length 0, PadN of 4 bytes
            b[54..62].copy_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
        }
        na.emit(&mut b[54 + ext..], &src, &dst).expect("test setup");
        b
    };
    a.inject(&build(false));
    sw.settle();
    assert_eq!(
        drain(&victim_side).len(),
        0,
        "plain NA for fd00::3 is spoofed"
    );
    a.inject(&build(true));
    sw.settle();
    assert_eq!(
        drain(&victim_side).len(),
        0,
        "NA with hop-by-hop for fd00::3 must be dropped too"
    );
}

/// Completing a partial checksum whose csum_start points into the IPv4
/// header, for a port without offloads, would rewrite the source address
/// after port security checked it: such frames are dropped as malformed.
#[test]
fn a_partial_checksum_aimed_at_the_ip_header_is_dropped() {
    let mut sw = Switch::new(1);
    let n = sw.network("n");
    let me = mac(2);
    let sec = PortSecurity {
        mac: Some(me),
        ipv4: vec![Ipv4Addr::new(10, 0, 0, 2)],
        ipv6: vec![],
    };
    let (a, _) = sw.port(n, 0, sec, CAPS);
    let (plain, _) = sw.port(n, 0, PortSecurity::default(), PLAIN);
    sw.settle();
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(me.0, mac(9).0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 9], 64)
        .udp(1, 2)
        .write(&mut f, &[0x5a; 40])
        .expect("test setup");
    let vnet = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::None,
        csum_start: 20,
        csum_offset: 6, // 26: first half of the IPv4 source
        ..VirtioNetHdr::NONE
    };
    a.inject_with(vnet, &f);
    sw.settle();
    assert!(drain(&plain).is_empty(), "dropped, not rewritten");
    // The same frame with its checksum where it belongs passes, completed.
    let vnet = VirtioNetHdr {
        csum_start: 34,
        ..vnet
    };
    a.inject_with(vnet, &f);
    sw.settle();
    let out = drain(&plain);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].1[26..30], &[10, 0, 0, 2]);
}
