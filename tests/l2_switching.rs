//! L2 switching through the whole pipeline with in-memory ports and workers
//! driven by hand: learning, flooding, isolation, port security, cross-worker
//! hand-off and learn synchronisation.
//!
//! Also its hardening, with races run in a chosen order: frames never cross
//! networks when a port id is reused while a learn message is in flight;
//! a secured port cannot hide a neighbour advertisement for another's
//! address behind extension headers; a partial checksum cannot be aimed at
//! the headers port security checked; TCP coalescing never merges a segment
//! whose checksum does not hold.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use switchyard::clock::FakeClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use switchyard::pipeline::capture::capture_queue;
use switchyard::pipeline::drop::DropReason;
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
/// A port without offloads (the switch completes checksums for it).
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
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend_from_slice(&[0xab; 50]);
    f
}

struct Switch {
    dp: Dataplane,
    workers: Vec<Worker>,
    clock: FakeClock,
}

impl Switch {
    fn new(workers: usize) -> Switch {
        let clock = FakeClock::new();
        let config = DataplaneConfig {
            workers,
            pool_frames: 2048,
            ..DataplaneConfig::default()
        };
        let (dp, workers) = Dataplane::inline(config, Arc::new(clock.clone())).unwrap();
        Switch { dp, workers, clock }
    }

    fn network(&mut self, name: &str, isolate: bool) -> NetworkId {
        self.dp
            .add_network(NetworkSpec {
                name: name.into(),
                gateway: None,
                isolate,
                internal: false,
                mac_cap: None,
                subnet4: None,
                subnet6: None,
                host_loopback: false,
            })
            .unwrap()
    }

    fn port(&mut self, net: NetworkId, worker: usize, sec: PortSecurity) -> MemoryPortHandle {
        self.port_with_id(net, worker, sec).0
    }

    fn port_with_id(
        &mut self,
        net: NetworkId,
        worker: usize,
        sec: PortSecurity,
    ) -> (MemoryPortHandle, PortId) {
        self.port_with_caps(net, worker, sec, CAPS)
    }

    fn port_with_caps(
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
            .unwrap();
        (handle, id)
    }

    /// Runs every worker a few times so frames and learn messages settle.
    fn settle(&mut self) {
        for _ in 0..4 {
            for w in self.workers.iter_mut() {
                w.run_once(Duration::ZERO);
            }
        }
    }
}

fn drain(h: &MemoryPortHandle) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| h.take_sent()).collect()
}

/// The port security of sandbox `me` at 10.0.0.2, and at `ipv6` if given.
fn secured(me: MacAddr, ipv6: Option<Ipv6Addr>) -> PortSecurity {
    PortSecurity {
        mac: Some(me),
        ipv4: vec![Ipv4Addr::new(10, 0, 0, 2)],
        ipv6: ipv6.into_iter().collect(),
    }
}

/// Like [`drain`], with each frame's virtio-net header.
fn drain_with(h: &MemoryPortHandle) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    std::iter::from_fn(|| h.take_sent_with()).collect()
}

#[test]
fn learns_then_forwards_only_to_the_known_port() {
    let mut sw = Switch::new(1);
    let n = sw.network("n", false);
    let [a, b, c] = [0, 1, 2].map(|_| sw.port(n, 0, PortSecurity::default()));
    sw.settle();

    // Unknown destination: flooded to everyone but the sender.
    a.inject(&frame(mac(2), mac(1)));
    sw.settle();
    assert_eq!(drain(&a).len(), 0);
    assert_eq!(drain(&b).len(), 1);
    assert_eq!(drain(&c).len(), 1);

    // The reply goes to A only: its address was learned.
    b.inject(&frame(mac(1), mac(2)));
    sw.settle();
    assert_eq!(drain(&a), vec![frame(mac(1), mac(2))]);
    assert!(drain(&c).is_empty());

    // Broadcast reaches everyone but the sender.
    c.inject(&frame(MacAddr::BROADCAST, mac(3)));
    sw.settle();
    assert_eq!(
        (drain(&a).len(), drain(&b).len(), drain(&c).len()),
        (1, 1, 0)
    );

    let stats = sw.dp.stats();
    assert_eq!(stats.events["mac-learned"], 3);
    assert_eq!(stats.events["mac-entries"], 3);
    assert_eq!(stats.events["flooded"], 2);
    assert_eq!(stats.total_drops(), 0);
}

/// A capture copies what a port receives and what it sends (here a frame
/// handed over from the other worker), in order; once stopped it copies
/// nothing more, and its source ends when every worker has let go of it.
#[test]
fn a_capture_copies_both_directions_of_one_port() {
    let mut sw = Switch::new(2);
    let n = sw.network("n", false);
    let (a, a_id) = sw.port_with_id(n, 0, PortSecurity::default());
    let b = sw.port(n, 1, PortSecurity::default());
    sw.settle();
    let (sink, source) = capture_queue(1 << 20);
    sw.dp.capture(a_id, Some(sink)).unwrap();
    sw.settle();
    let (out, back) = (frame(mac(2), mac(1)), frame(mac(1), mac(2)));
    a.inject(&out);
    sw.settle();
    b.inject(&back);
    sw.settle();
    assert_eq!(drain(&a), vec![back.clone()]);
    let captured: Vec<Vec<u8>> =
        std::iter::from_fn(|| source.recv_timeout(Duration::ZERO).ok().map(|c| c.data)).collect();
    assert_eq!(captured, vec![out.clone(), back]);
    assert_eq!(source.lost(), 0);

    sw.dp.capture(a_id, None).unwrap();
    sw.settle();
    a.inject(&out);
    sw.settle();
    assert_eq!(
        source.recv_timeout(Duration::ZERO).err(),
        Some(crossbeam::channel::RecvTimeoutError::Disconnected)
    );
}

#[test]
fn networks_never_see_each_other() {
    let mut sw = Switch::new(1);
    let n1 = sw.network("one", false);
    let n2 = sw.network("two", false);
    let a = sw.port(n1, 0, PortSecurity::default());
    let b = sw.port(n1, 0, PortSecurity::default());
    let x = sw.port(n2, 0, PortSecurity::default());
    sw.settle();
    a.inject(&frame(MacAddr::BROADCAST, mac(1)));
    // Even a destination learned on the other network is not reachable.
    x.inject(&frame(mac(9), mac(7)));
    a.inject(&frame(mac(7), mac(1)));
    sw.settle();
    assert_eq!(drain(&x).len(), 0);
    assert_eq!(drain(&b).len(), 2);
}

#[test]
fn isolated_network_drops_endpoint_to_endpoint() {
    let mut sw = Switch::new(1);
    let n = sw.network("iso", true);
    let a = sw.port(n, 0, PortSecurity::default());
    let b = sw.port(n, 0, PortSecurity::default());
    sw.settle();
    a.inject(&frame(mac(2), mac(1)));
    a.inject(&frame(MacAddr::BROADCAST, mac(1)));
    sw.settle();
    assert!(drain(&b).is_empty());
    assert_eq!(sw.dp.stats().drops_for(DropReason::Isolated), 2);
}

#[test]
fn bad_frames_are_counted_drops() {
    let mut sw = Switch::new(1);
    let n = sw.network("n", false);
    let sec = PortSecurity {
        mac: Some(mac(1)),
        ipv4: vec![],
        ipv6: vec![],
    };
    let a = sw.port(n, 0, sec);
    let b = sw.port(n, 0, PortSecurity::default());
    sw.settle();
    a.inject(&[1, 2, 3]); // too short
    a.inject(&frame(mac(2), mac(66))); // not A's address
    a.inject(&frame(mac(2), MacAddr::BROADCAST)); // multicast source
    a.inject(&frame(mac(2), mac(1))); // fine
    sw.settle();
    assert_eq!(drain(&b).len(), 1);
    let s = sw.dp.stats();
    assert_eq!(s.drops_for(DropReason::Malformed), 1);
    assert_eq!(s.drops_for(DropReason::Spoofed), 1);
    assert_eq!(s.drops_for(DropReason::InvalidSource), 1);
    let a_stats = s.ports.iter().find(|p| p.rx_packets == 4).unwrap();
    assert_eq!(a_stats.tx_packets, 0);
}

#[test]
fn frames_cross_workers_and_learning_syncs() {
    let mut sw = Switch::new(2);
    let n = sw.network("n", false);
    let a = sw.port(n, 0, PortSecurity::default());
    let b = sw.port(n, 1, PortSecurity::default());
    let c = sw.port(n, 1, PortSecurity::default());
    sw.settle();
    a.inject(&frame(mac(2), mac(1)));
    sw.settle();
    assert_eq!(drain(&b).len(), 1);
    assert_eq!(drain(&c).len(), 1);
    // Worker 1 learned from worker 0's announcement where mac(1) lives, so
    // B's reply is not flooded to C.
    b.inject(&frame(mac(1), mac(2)));
    sw.settle();
    assert_eq!(drain(&a).len(), 1);
    assert!(drain(&c).is_empty());
    assert!(sw.workers[1].mac_table().lookup(n, mac(1), 0).is_some());
    let s = sw.dp.stats();
    // Two flooded copies from worker 0 plus the reply from worker 1.
    assert_eq!(s.events["cross-worker-sent"], 3);
    assert_eq!(s.events["cross-worker-received"], 3);
}

#[test]
fn moved_address_follows_its_new_port_and_removed_ports_are_forgotten() {
    let mut sw = Switch::new(1);
    let n = sw.network("n", false);
    let a = sw.port(n, 0, PortSecurity::default());
    let b = sw.port(n, 0, PortSecurity::default());
    let c = sw.port(n, 0, PortSecurity::default());
    sw.settle();
    a.inject(&frame(MacAddr::BROADCAST, mac(1)));
    sw.settle();
    b.inject(&frame(MacAddr::BROADCAST, mac(1))); // mac(1) moved to B
    sw.settle();
    drain(&a);
    drain(&b);
    drain(&c);
    c.inject(&frame(mac(1), mac(3)));
    sw.settle();
    assert_eq!(drain(&b).len(), 1);
    assert!(drain(&a).is_empty());
    assert_eq!(sw.dp.stats().events["mac-moved"], 1);

    let b_id = sw.dp.topology().network(n).unwrap().ports[1];
    sw.dp.remove_port(b_id).unwrap();
    sw.settle();
    // mac(1) is unknown again: flooded to the remaining port.
    c.inject(&frame(mac(1), mac(3)));
    sw.settle();
    assert_eq!(drain(&a).len(), 1);
}

#[test]
fn aging_forgets_silent_addresses() {
    let mut sw = Switch::new(1);
    let n = sw.network("n", false);
    let a = sw.port(n, 0, PortSecurity::default());
    let b = sw.port(n, 0, PortSecurity::default());
    let c = sw.port(n, 0, PortSecurity::default());
    sw.settle();
    a.inject(&frame(MacAddr::BROADCAST, mac(1)));
    sw.settle();
    sw.clock.advance(301_000);
    sw.settle();
    drain(&b);
    drain(&c);
    b.inject(&frame(mac(1), mac(2)));
    sw.settle();
    // Forgotten after 300 s: flooded again.
    assert_eq!(drain(&c).len(), 1);
    assert_eq!(sw.dp.stats().events["mac-aged"], 1);
}

#[test]
fn gateway_answers_arp_and_ping_and_drops_the_rest() {
    use switchyard::tables::topology::GatewayInfo;
    let mut sw = Switch::new(1);
    let gw_mac = MacAddr([2, 0x5e, 0, 0, 0, 1]);
    let n = sw
        .dp
        .add_network(NetworkSpec {
            name: "gw".into(),
            gateway: Some(GatewayInfo {
                mac: gw_mac,
                ipv4: Some([10, 7, 0, 1].into()),
                ipv6: None,
            }),
            isolate: false,
            internal: false,
            mac_cap: None,
            subnet4: None,
            subnet6: None,
            host_loopback: false,
        })
        .unwrap();
    let a = sw.port(n, 0, PortSecurity::default());
    let b = sw.port(n, 0, PortSecurity::default());
    sw.settle();
    // ARP who-has 10.7.0.1 from 10.7.0.2.
    let mut arp = MacAddr::BROADCAST.0.to_vec();
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[10, 7, 0, 2, 0, 0, 0, 0, 0, 0, 10, 7, 0, 1]);
    a.inject(&arp);
    sw.settle();
    let reply = a.take_sent().expect("ARP reply");
    assert_eq!(&reply[0..6], &mac(1).0);
    assert_eq!(&reply[20..22], &[0, 2]);
    assert_eq!(&reply[22..28], &gw_mac.0);
    assert!(drain(&b).is_empty(), "ARP for the gateway is not flooded");

    let mut ping = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1).0, gw_mac.0)
        .ipv4([10, 7, 0, 2], [10, 7, 0, 1], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut ping, b"abc")
        .unwrap();
    a.inject(&ping);
    let mut udp = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1).0, gw_mac.0)
        .ipv4([10, 7, 0, 2], [192, 0, 2, 1], 64)
        .udp(1, 2)
        .write(&mut udp, b"abc")
        .unwrap();
    a.inject(&udp);
    sw.settle();
    let reply = a.take_sent().expect("echo reply");
    assert_eq!(&reply[26..30], &[10, 7, 0, 1]);
    assert_eq!(reply[34], 0);
    assert!(a.take_sent().is_none());
    assert!(drain(&b).is_empty());
    assert_eq!(sw.dp.stats().drops_for(DropReason::GatewayUnhandled), 1);
}

#[test]
fn multi_queue_ports_never_cross_workers() {
    let mut sw = Switch::new(2);
    let n = sw.network("mq", false);
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (q0, h0) = MemoryPort::new("mq", CAPS, 256);
        let (q1, h1) = MemoryPort::new("mq", CAPS, 256);
        sw.dp
            .add_port_queues(
                PortSpec {
                    network: n,
                    security: PortSecurity::default(),
                    worker: None,
                },
                vec![Box::new(q0), Box::new(q1)],
            )
            .unwrap();
        handles.push((h0, h1));
    }
    sw.settle();
    // A's second queue (worker 1) sends; both workers learn where mac(1) is.
    handles[0].1.inject(&frame(MacAddr::BROADCAST, mac(1)));
    sw.settle();
    assert_eq!(
        drain(&handles[1].1).len(),
        1,
        "flooded on worker 1's queue of B"
    );
    assert!(drain(&handles[1].0).is_empty());
    // B answers through its first queue (worker 0): out of A's worker-0 queue.
    handles[1].0.inject(&frame(mac(1), mac(2)));
    sw.settle();
    assert_eq!(drain(&handles[0].0).len(), 1);
    assert!(drain(&handles[0].1).is_empty());
    let s = sw.dp.stats();
    assert_eq!(s.events["cross-worker-sent"], 0);
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.ports[0].rx_packets + s.ports[1].rx_packets, 2);
    // Removing a port closes every queue.
    let a = sw.dp.topology().network(n).unwrap().ports[0];
    sw.dp.remove_port(a).unwrap();
    sw.settle();
    handles[1].0.inject(&frame(MacAddr::BROADCAST, mac(2)));
    sw.settle();
    assert!(drain(&handles[0].0).is_empty() && drain(&handles[0].1).is_empty());
}

/// A port that sends nothing and panics on its first `send` (standing in for
/// a bug in a port).
struct PanicsOnce(bool);

impl switchyard::ports::Port for PanicsOnce {
    fn name(&self) -> &str {
        "panics"
    }
    fn caps(&self) -> PortCaps {
        CAPS
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn recv(
        &mut self,
        _: &mut switchyard::pipeline::pool::BufferPool,
        _: &mut Vec<switchyard::pipeline::frame::Frame>,
        _: usize,
    ) -> std::io::Result<usize> {
        Ok(0)
    }
    fn send(
        &mut self,
        frames: &mut Vec<switchyard::pipeline::frame::Frame>,
        pool: &mut switchyard::pipeline::pool::BufferPool,
    ) -> switchyard::ports::TxResult {
        if std::mem::take(&mut self.0) {
            panic!("a bug in a port");
        }
        let sent = frames.len();
        for f in frames.drain(..) {
            pool.free(f);
        }
        switchyard::ports::TxResult {
            sent,
            ..Default::default()
        }
    }
}

#[test]
fn a_panic_in_the_loop_is_counted_and_the_worker_goes_on() {
    let mut sw = Switch::new(1);
    let n = sw.network("n", false);
    let [a, b] = [0, 1].map(|_| sw.port(n, 0, PortSecurity::default()));
    sw.dp
        .add_port(
            PortSpec {
                network: n,
                security: PortSecurity::default(),
                worker: Some(0),
            },
            Box::new(PanicsOnce(true)),
        )
        .unwrap();
    let step = |sw: &mut Switch| {
        for _ in 0..4 {
            assert!(sw.workers[0].run_once_catching(Duration::ZERO));
        }
    };
    step(&mut sw);
    // Flooded to B and to the panicking port: the batch is lost.
    a.inject(&frame(MacAddr::BROADCAST, mac(1)));
    step(&mut sw);
    assert_eq!(sw.dp.stats().events["worker-restarts"], 1);
    // The worker still switches, with its tables intact.
    b.inject(&frame(mac(1), mac(2)));
    step(&mut sw);
    assert_eq!(drain(&a), vec![frame(mac(1), mac(2))]);
    assert_eq!(sw.dp.stats().events["worker-restarts"], 1);
}

/// then reused on another network, frames of network A went into network
/// B.
#[test]
fn a_stale_learn_message_never_sends_frames_into_another_network() {
    let mut sw = Switch::new(2);
    let a = sw.network("a", false);
    let b = sw.network("b", false);
    let (pa, _) = sw.port_with_caps(a, 0, PortSecurity::default(), CAPS);
    let (x, x_id) = sw.port_with_caps(a, 1, PortSecurity::default(), CAPS);
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
    drain_with(&pa);
    // A new sandbox Y connects to network B and gets X's old id.
    let (y, y_id) = sw.port_with_caps(b, 0, PortSecurity::default(), CAPS);
    assert_eq!(y_id, x_id, "lowest free id is reused");
    sw.settle();
    drain_with(&y);
    // On network A, pa sends to X's MAC (e.g. a TCP retransmission).
    pa.inject(&frame(mac(0x20), mac(0x10)));
    sw.settle();
    let leaked = drain_with(&y);
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
    let n = sw.network("n", false);
    let (a, _) = sw.port_with_caps(n, 0, PortSecurity::default(), CAPS);
    let (bport, _) = sw.port_with_caps(n, 0, PortSecurity::default(), CAPS);
    sw.settle();
    let s1 = tcp_segment(100, &[1u8; 100]);
    let mut s2 = tcp_segment(200, &[2u8; 100]);
    let last = s2.len() - 1;
    s2[last] ^= 0xff; // corrupt payload, checksum now wrong
    a.inject(&s1);
    a.inject(&s2);
    sw.settle();
    let out = drain_with(&bport);
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
    let n = sw.network("n", false);
    let me = mac(2);
    let sec = secured(me, Some("fd00::2".parse().expect("test setup")));
    let (a, _) = sw.port_with_caps(n, 0, sec, CAPS);
    let (victim_side, _) = sw.port_with_caps(n, 0, PortSecurity::default(), CAPS);
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
        drain_with(&victim_side).len(),
        0,
        "plain NA for fd00::3 is spoofed"
    );
    a.inject(&build(true));
    sw.settle();
    assert_eq!(
        drain_with(&victim_side).len(),
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
    let n = sw.network("n", false);
    let me = mac(2);
    let sec = secured(me, None);
    let (a, _) = sw.port_with_caps(n, 0, sec, CAPS);
    let (plain, _) = sw.port_with_caps(n, 0, PortSecurity::default(), PLAIN);
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
    assert!(drain_with(&plain).is_empty(), "dropped, not rewritten");
    // The same frame with its checksum where it belongs passes, completed.
    let vnet = VirtioNetHdr {
        csum_start: 34,
        ..vnet
    };
    a.inject_with(vnet, &f);
    sw.settle();
    let out = drain_with(&plain);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].1[26..30], &[10, 0, 0, 2]);
}
