//! VXLAN between two data planes in one process, over loopback: each "host"
//! is an inline `Dataplane` with memory ports and its VXLAN endpoint bound to
//! its own 127.x address; a plain UDP socket stands in for a third VTEP to
//! observe what is replicated to it. Static-peer (learning) and control-plane
//! (remotes, ARP suppression) modes, split horizon, unknown unicast and the
//! decap drop reasons.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use switchyard::clock::FakeClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, DataplaneError, NetworkSpec, PortSpec};
use switchyard::pipeline::drop::DropReason;
use switchyard::pipeline::worker::Worker;
use switchyard::ports::memory::{MemoryPort, MemoryPortHandle};
use switchyard::ports::PortCaps;
use switchyard::tables::overlay::{OverlaySpec, RemoteEndpoint, VxlanConfig};
use switchyard::tables::topology::{NetworkId, PortSecurity};
use switchyard::wire::MacAddr;

const VNI: u32 = 4242;
const CAPS: PortCaps = PortCaps {
    offload: true,
    mtu: 1450,
    segments_gso: false,
    uso: false,
};

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, i])
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, i)
}

/// Ethernet + IPv4/UDP frame from `src` (address `ip(src_ip)`).
fn frame(dst: MacAddr, src: MacAddr, src_ip: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&ip(src_ip).octets());
    f.extend_from_slice(&ip(99).octets());
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 26, 0, 0]);
    f.resize(60, 0xab);
    f
}

fn arp_request(src: MacAddr, src_ip: u8, target: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ip(src_ip).octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip(target).octets());
    f.resize(60, 0);
    f
}

fn network(subnet4: Option<(Ipv4Addr, u8)>) -> NetworkSpec {
    NetworkSpec {
        name: "ovl".into(),
        gateway: None,
        isolate: false,
        internal: false,
        mac_cap: None,
        subnet4,
        subnet6: None,
        host_loopback: false,
    }
}

struct Host {
    dp: Dataplane,
    workers: Vec<Worker>,
    net: NetworkId,
    vtep: SocketAddr,
}

impl Host {
    fn new(addr: Ipv4Addr) -> Host {
        let config = DataplaneConfig {
            workers: 1,
            pool_frames: 2048,
            ..DataplaneConfig::default()
        };
        let (mut dp, workers) =
            Dataplane::inline(config, Arc::new(FakeClock::new())).expect("data plane");
        let net = dp.add_network(network(Some((ip(0), 24)))).expect("network");
        dp.start_vxlan(VxlanConfig {
            bind: SocketAddr::new(addr.into(), 0),
        })
        .expect("VXLAN socket on loopback");
        let vtep = dp.vxlan_addr().expect("started");
        Host {
            dp,
            workers,
            net,
            vtep,
        }
    }

    fn endpoint(&mut self, m: MacAddr, ip_last: u8) -> MemoryPortHandle {
        let (port, handle) = MemoryPort::new("ep", CAPS, 256);
        self.dp
            .add_port(
                PortSpec {
                    network: self.net,
                    security: PortSecurity {
                        mac: Some(m),
                        ipv4: vec![ip(ip_last)],
                        ipv6: vec![],
                    },
                    worker: Some(0),
                },
                Box::new(port),
            )
            .expect("port");
        handle
    }

    fn overlay(&mut self, vteps: Vec<SocketAddr>, remotes: Vec<RemoteEndpoint>, learn: bool) {
        self.dp
            .set_overlay(
                self.net,
                OverlaySpec {
                    vni: VNI,
                    vteps,
                    remotes,
                    learn,
                    mtu: switchyard::dataplane::OVERLAY_MTU,
                },
            )
            .expect("set_overlay");
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.dp.stats().drops_for(r)
    }
}

/// Runs both hosts' workers until loopback datagrams have been read.
fn settle(hosts: &mut [&mut Host]) {
    for _ in 0..6 {
        for h in hosts.iter_mut() {
            for w in h.workers.iter_mut() {
                w.run_once(Duration::ZERO);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn drain(h: &MemoryPortHandle) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| h.take_sent()).collect()
}

/// A bare UDP socket playing a third VTEP.
fn observer(addr: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind((addr, 0)).expect("observer socket");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

fn received(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

#[test]
fn static_peers_learn_flood_and_keep_split_horizon() {
    let mut a = Host::new(Ipv4Addr::new(127, 61, 0, 1));
    let mut b = Host::new(Ipv4Addr::new(127, 61, 0, 2));
    let c = observer(Ipv4Addr::new(127, 61, 0, 3));
    let c_addr = c.local_addr().expect("addr");
    let a1 = a.endpoint(mac(1), 1);
    let a2 = a.endpoint(mac(2), 2);
    let b1 = b.endpoint(mac(11), 11);
    // A's list includes itself (as a cluster store would): ignored.
    a.overlay(vec![a.vtep, b.vtep, c_addr], vec![], true);
    b.overlay(vec![a.vtep], vec![], true);

    // Broadcast from A: local port, B's endpoint, and the third VTEP.
    let bc = frame(MacAddr::BROADCAST, mac(1), 1);
    a1.inject(&bc);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&a2), vec![bc.clone()]);
    assert_eq!(drain(&b1), vec![bc.clone()]);
    let at_c = received(&c);
    assert_eq!(at_c.len(), 1);
    assert_eq!(at_c[0][..8], vxlan_header(VNI));
    assert_eq!(at_c[0][8..], bc[..]);

    // B learned mac(1) behind A: unicast crosses to a1 only.
    let uni = frame(mac(1), mac(11), 11);
    b1.inject(&uni);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&a1), vec![uni.clone()]);
    assert!(drain(&a2).is_empty());

    // A broadcast from B reaches A's endpoints but is not relayed to C.
    let bc_b = frame(MacAddr::BROADCAST, mac(11), 11);
    b1.inject(&bc_b);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&a1), vec![bc_b.clone()]);
    assert_eq!(drain(&a2), vec![bc_b]);
    assert!(received(&c).is_empty(), "split horizon");

    // A reply from a1 to b1 (learned behind B) goes to B only.
    let reply = frame(mac(11), mac(1), 1);
    a1.inject(&reply);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&b1), vec![reply]);
    assert!(drain(&a2).is_empty());
    assert!(received(&c).is_empty());

    // Unknown unicast: flooded locally, never to a VTEP, counted.
    let unknown = frame(mac(77), mac(1), 1);
    a1.inject(&unknown);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&a2), vec![unknown]);
    assert!(drain(&b1).is_empty());
    assert!(received(&c).is_empty());
    assert_eq!(a.drops(DropReason::OverlayUnknownUnicast), 1);

    // The tunnel ports' counters are in the stats.
    let stats = a.dp.stats();
    let to_b = stats
        .ports
        .iter()
        .find(|p| p.name.ends_with(&b.vtep.to_string()))
        .expect("tunnel port to B in stats");
    assert_eq!(to_b.tx_packets, 2);
    assert!(stats.ports.iter().any(|p| p.name.starts_with("vxlan-rx")));
}

#[test]
fn decap_refuses_bad_datagrams_with_counters() {
    let mut a = Host::new(Ipv4Addr::new(127, 62, 0, 1));
    let peer = observer(Ipv4Addr::new(127, 62, 0, 2));
    let stranger = observer(Ipv4Addr::new(127, 62, 0, 3));
    let a1 = a.endpoint(mac(1), 1);
    a.overlay(vec![peer.local_addr().expect("addr")], vec![], true);
    let to = a.vtep;
    let send = |s: &UdpSocket, header: [u8; 8], inner: &[u8]| {
        let mut d = header.to_vec();
        d.extend_from_slice(inner);
        s.send_to(&d, to).expect("send");
    };
    let inner = frame(mac(1), mac(20), 20);
    let mut bad = vxlan_header(VNI);
    bad[0] = 0;
    send(&peer, bad, &inner);
    let mut reserved = vxlan_header(VNI);
    reserved[7] = 1;
    send(&peer, reserved, &inner);
    send(&peer, vxlan_header(VNI + 1), &inner);
    send(&stranger, vxlan_header(VNI), &inner);
    // A remote VTEP must not speak for a local endpoint.
    send(
        &peer,
        vxlan_header(VNI),
        &frame(MacAddr::BROADCAST, mac(1), 1),
    );
    peer.send_to(&[0x08, 0, 0], to).expect("send");
    settle(&mut [&mut a]);
    assert!(drain(&a1).is_empty());
    assert_eq!(a.drops(DropReason::VxlanBadHeader), 3);
    assert_eq!(a.drops(DropReason::VxlanUnknownVni), 1);
    assert_eq!(a.drops(DropReason::VxlanUnknownVtep), 1);
    assert_eq!(a.drops(DropReason::VxlanSpoofed), 1);
    // A valid one gets through.
    send(&peer, vxlan_header(VNI), &inner);
    settle(&mut [&mut a]);
    assert_eq!(drain(&a1), vec![inner]);
}

#[test]
fn control_plane_remotes_arp_suppression_and_spoofing() {
    let mut a = Host::new(Ipv4Addr::new(127, 63, 0, 1));
    let mut b = Host::new(Ipv4Addr::new(127, 63, 0, 2));
    let a1 = a.endpoint(mac(1), 1);
    let b1 = b.endpoint(mac(11), 11);
    let remote = |m, i, vtep| RemoteEndpoint {
        mac: m,
        ipv4: Some(ip(i)),
        ipv6: None,
        vtep,
    };
    let (av, bv) = (a.vtep, b.vtep);
    a.overlay(vec![bv], vec![remote(mac(11), 11, bv)], false);
    b.overlay(vec![av], vec![remote(mac(1), 1, av)], false);
    // Idempotent replacement keeps working.
    a.overlay(vec![bv], vec![remote(mac(11), 11, bv)], false);

    // a1 asks for b1's address: answered by A itself, nothing crosses.
    a1.inject(&arp_request(mac(1), 1, 11));
    settle(&mut [&mut a, &mut b]);
    let replies = drain(&a1);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0][6..12], mac(11).0);
    assert_eq!(replies[0][20..22], [0, 2]);
    assert!(drain(&b1).is_empty());

    // Unicast to a known remote goes straight to its VTEP, both ways.
    let there = frame(mac(11), mac(1), 1);
    a1.inject(&there);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&b1), vec![there]);
    let back = frame(mac(1), mac(11), 11);
    b1.inject(&back);
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&a1), vec![back]);

    // The control plane now says b1 has another address: A's decap refuses
    // frames from b1 that claim the old one (inner source check).
    a.overlay(vec![bv], vec![remote(mac(11), 12, bv)], false);
    let b_real_ip = frame(mac(1), mac(11), 11);
    b1.inject(&b_real_ip);
    settle(&mut [&mut a, &mut b]);
    assert!(drain(&a1).is_empty());
    assert_eq!(a.drops(DropReason::VxlanSpoofed), 1);
}

#[test]
fn a_vtep_another_process_holds_is_refused() {
    let taken = UdpSocket::bind("127.64.0.3:0").expect("bind");
    let bind = taken.local_addr().expect("addr");
    let start = |bind| {
        let config = DataplaneConfig {
            workers: 2,
            ..DataplaneConfig::default()
        };
        let (mut dp, w) = Dataplane::inline(config, Arc::new(FakeClock::new())).expect("dp");
        let started = dp.start_vxlan(VxlanConfig { bind });
        (dp, w, started)
    };
    let (_dp, _w, held) = start(bind);
    let Err(DataplaneError::Vxlan(at, e)) = held else {
        panic!("a plain socket holds {bind}: {held:?}");
    };
    assert_eq!((at, e.kind()), (bind, std::io::ErrorKind::AddrInUse));
    drop(taken);
    // Another daemon's VXLAN sockets (SO_REUSEPORT, as this one's): the
    // kernel would split the VTEP's traffic between the two.
    let (_first, _w1, first) = start(bind);
    first.expect("a free VTEP");
    let (_second, _w2, second) = start(bind);
    assert!(
        matches!(&second, Err(DataplaneError::Vxlan(_, e)) if e.kind() == std::io::ErrorKind::AddrInUse),
        "{second:?}"
    );
    let text = second.expect_err("refused").to_string();
    assert!(text.contains("--vxlan-port"), "{text}");
}

#[test]
fn overlay_needs_vxlan_and_a_valid_vni() {
    let config = DataplaneConfig {
        workers: 1,
        ..DataplaneConfig::default()
    };
    let (mut dp, _w) = Dataplane::inline(config, Arc::new(FakeClock::new())).expect("dp");
    let net = dp.add_network(network(None)).expect("network");
    let spec = |vni| OverlaySpec {
        vni,
        vteps: vec![],
        remotes: vec![],
        learn: true,
        mtu: switchyard::dataplane::OVERLAY_MTU,
    };
    assert!(matches!(
        dp.set_overlay(net, spec(1)),
        Err(DataplaneError::VxlanNotStarted)
    ));
    dp.start_vxlan(VxlanConfig {
        bind: "127.64.0.1:0".parse().expect("addr"),
    })
    .expect("start");
    assert!(matches!(
        dp.set_overlay(net, spec(0)),
        Err(DataplaneError::BadVni(0))
    ));
    assert!(matches!(
        dp.set_overlay(net, spec(1 << 24)),
        Err(DataplaneError::BadVni(_))
    ));
    let peer: SocketAddr = "127.64.0.2:4789".parse().expect("addr");
    dp.set_overlay(
        net,
        OverlaySpec {
            vteps: vec![peer],
            ..spec(7)
        },
    )
    .expect("overlay");
    assert_eq!(dp.topology().network(net).expect("net").ports.len(), 1);
    // Removing the network takes its tunnel port with it.
    dp.remove_network(net).expect("remove");
    assert!(dp.topology().overlay.network_of_vni(7).is_none());
    assert_eq!(dp.topology().ports().count(), 1, "only the VXLAN rx port");
}

#[test]
fn gso_frames_are_segmented_to_the_overlay_mtu_before_encapsulation() {
    use etherparse::PacketBuilder;
    use switchyard::wire::virtio_net::{GsoType, VirtioNetHdr};

    let mut a = Host::new(Ipv4Addr::new(127, 65, 0, 1));
    let mut b = Host::new(Ipv4Addr::new(127, 65, 0, 2));
    let a1 = a.endpoint(mac(1), 1);
    let b1 = b.endpoint(mac(11), 11);
    a.overlay(vec![b.vtep], vec![], true);
    b.overlay(vec![a.vtep], vec![], true);
    // A learns where mac(11) is.
    b1.inject(&frame(MacAddr::BROADCAST, mac(11), 11));
    settle(&mut [&mut a, &mut b]);
    assert_eq!(drain(&a1).len(), 1);

    const PAYLOAD: usize = 10_000;
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let builder = PacketBuilder::ethernet2(mac(1).0, mac(11).0)
        .ipv4(ip(1).octets(), ip(11).octets(), 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(7);
    let mut big = Vec::with_capacity(builder.size(PAYLOAD));
    builder.write(&mut big, &payload).expect("GSO frame");
    let hdr = VirtioNetHdr {
        flags: 0,
        gso_type: GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    assert!(a1.inject_with(hdr, &big));
    settle(&mut [&mut a, &mut b]);
    // The tunnel carried MTU-sized datagrams (8 bytes of VXLAN header on
    // each inner frame)...
    let tunnel: Vec<_> =
        a.dp.stats()
            .ports
            .into_iter()
            .filter(|p| p.name.starts_with("vxlan:"))
            .collect();
    let sent: u64 = tunnel.iter().map(|p| p.tx_packets).sum();
    let bytes: u64 = tunnel.iter().map(|p| p.tx_bytes).sum();
    assert!(sent >= PAYLOAD.div_ceil(1448) as u64, "{sent} datagrams");
    assert!(
        bytes <= sent * (1450 + 14),
        "{bytes} bytes in {sent} datagrams"
    );
    // ...and B's endpoint, which takes offloads, got them coalesced back
    // (GRO) with the payload intact.
    let got = drain(&b1);
    let carried: usize = got.iter().map(|f| f.len() - 54).sum();
    assert_eq!(carried, PAYLOAD);
    assert!(
        got.len() < sent as usize,
        "{} frames: not coalesced",
        got.len()
    );
    assert_eq!(a.drops(DropReason::TooBig), 0);
}
