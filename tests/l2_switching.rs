//! L2 switching through the whole pipeline with in-memory ports and workers
//! driven by hand: learning, flooding, isolation, port security, cross-worker
//! hand-off and learn synchronisation.

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
use switchyard::wire::MacAddr;

const CAPS: PortCaps = PortCaps {
    offload: true,
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
        let (port, handle) = MemoryPort::new("mem", CAPS, 256);
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
