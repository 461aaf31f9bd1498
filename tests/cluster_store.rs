//! Cluster store against a real etcd started by the test: propagation
//! between hosts, cluster-wide uniqueness of VNIs and addresses, lease expiry
//! of a crashed host, and surviving an etcd outage.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use switchyard::control::cluster::{
    Cluster, ClusterConfig, ClusterError, ClusterEvent, ClusterState, EndpointRecord, NetworkRecord,
};
use switchyard::wire::MacAddr;

use common::etcd::Etcd;

const TTL: Duration = Duration::from_secs(3);
const PROPAGATION: Duration = Duration::from_secs(1);

fn config(etcd: &Etcd, host: &str, octet: u8) -> ClusterConfig {
    let advertise = IpAddr::V4(Ipv4Addr::new(192, 0, 2, octet));
    let mut c = ClusterConfig::new(&etcd.url(), advertise).expect("config");
    c.host = host.to_string();
    c.lease_ttl = TTL;
    c.op_timeout = Duration::from_secs(5);
    c
}

fn connect(etcd: &Etcd, host: &str, octet: u8) -> (Cluster, Receiver<ClusterEvent>) {
    let c = Cluster::connect(config(etcd, host, octet)).expect("connect");
    let events = c.events();
    (c, events)
}

fn network(name: &str, vni: Option<u32>) -> NetworkRecord {
    NetworkRecord {
        name: name.to_string(),
        subnet: "10.77.0.0/16".parse().expect("cidr"),
        gateway: "10.77.0.1".parse().expect("ip"),
        subnet6: None,
        vni,
        mtu: 1450,
        internal: false,
        isolate: false,
        mac_cap: None,
        host_loopback: false,
    }
}

fn endpoint(c: &Cluster, net: &str, name: &str, ip: Ipv4Addr) -> EndpointRecord {
    EndpointRecord {
        network: net.to_string(),
        name: name.to_string(),
        aliases: vec![format!("{name}-alias")],
        mac: MacAddr([2, 0, 0, 0, 0, ip.octets()[3]]),
        ipv4: ip,
        ipv6: None,
        host: c.config().host.clone(),
        vtep: c.config().vtep(),
    }
}

/// Creates network `front` (10.77.0.0/16) and leases an address of it to
/// endpoint `web` of `c`'s host.
fn front_with_web(c: &Cluster) -> Ipv4Addr {
    c.create_network(network("front", None)).expect("create");
    c.allocate_ip(
        "front",
        "10.77.0.0/16".parse().expect("cidr"),
        "10.77.0.1".parse().expect("ip"),
        None,
        "web",
    )
    .expect("ip")
}

/// A plain etcd client for setting up what no `Cluster` would write.
fn raw_client(etcd: &Etcd) -> (tokio::runtime::Runtime, etcd_client::Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = etcd.url().replace("etcd://", "http://");
    let client = rt
        .block_on(etcd_client::Client::connect([url], None))
        .expect("raw client");
    (rt, client)
}

/// Waits until `pred` holds on `c`'s snapshot, checking after each event;
/// returns how long it took.
fn wait_for(
    c: &Cluster,
    events: &Receiver<ClusterEvent>,
    within: Duration,
    what: &str,
    pred: impl Fn(&ClusterState) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = start + within;
    loop {
        if pred(&c.snapshot()) {
            return start.elapsed();
        }
        if events.recv_deadline(deadline).is_err() {
            assert!(pred(&c.snapshot()), "{what}: not seen within {within:?}");
            return start.elapsed();
        }
    }
}

/// Waits for an event matching `pred`.
fn wait_event(
    events: &Receiver<ClusterEvent>,
    within: Duration,
    pred: impl Fn(&ClusterEvent) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        match events.recv_deadline(start + within) {
            Ok(e) if pred(&e) => return start.elapsed(),
            Ok(_) => {}
            Err(_) => panic!("expected event not seen within {within:?}"),
        }
    }
}

#[test]
fn network_created_on_one_host_reaches_the_other_within_a_second() {
    let Some(etcd) = Etcd::start("net") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let (b, b_events) = connect(&etcd, "host-b", 2);
    let t0 = Instant::now();
    let created = a.create_network(network("front", None)).expect("create");
    assert_eq!(created.vni, Some(256));
    // A reads its own write at once.
    assert_eq!(a.snapshot().networks.get("front"), Some(&created));
    wait_for(&b, &b_events, PROPAGATION, "network on B", |s| {
        s.networks.get("front") == Some(&created)
            && s.vnis.get(&256).map(String::as_str) == Some("front")
    });
    eprintln!("network propagated A->B in {:?}", t0.elapsed());
    // Idempotent for the same options, typed errors otherwise.
    assert_eq!(
        b.create_network(network("front", None)).expect("same"),
        created
    );
    let mut other = network("front", None);
    other.mtu = 1400;
    assert!(matches!(
        b.create_network(other),
        Err(ClusterError::NetworkConflict { .. })
    ));
    match b.create_network(network("back", Some(256))) {
        Err(ClusterError::VniTaken { vni: 256, network }) => assert_eq!(network, "front"),
        other => panic!("expected VniTaken, got {other:?}"),
    }
    // Removal propagates too, and frees the VNI.
    b.remove_network("front").expect("remove");
    wait_for(&a, &a.events(), PROPAGATION, "removal on A", |s| {
        s.networks.is_empty() && s.vnis.is_empty()
    });
    assert_eq!(
        a.create_network(network("back", None)).expect("reuse").vni,
        Some(256)
    );
}

#[test]
fn endpoints_propagate_and_a_clean_close_withdraws_them() {
    let Some(etcd) = Etcd::start("ep") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let (b, b_events) = connect(&etcd, "host-b", 2);
    assert!(b.snapshot().hosts.contains_key("host-a"));
    let ip = front_with_web(&a);
    let ep = endpoint(&a, "front", "web", ip);
    let t0 = Instant::now();
    a.put_endpoint(ep.clone()).expect("put");
    wait_for(&b, &b_events, PROPAGATION, "endpoint on B", |s| {
        s.remote_endpoints("front", "host-b").any(|e| *e == ep)
    });
    eprintln!("endpoint propagated A->B in {:?}", t0.elapsed());
    assert_eq!(b.snapshot().hosts["host-a"].vtep, a.config().vtep());
    // B cannot take the name or the address.
    let mut stolen = endpoint(&b, "front", "web", "10.77.0.99".parse().expect("ip"));
    stolen.host = "host-b".into();
    assert!(matches!(
        b.put_endpoint(stolen),
        Err(ClusterError::NotOwner { .. })
    ));
    assert!(matches!(
        b.remove_endpoint("front", "web"),
        Err(ClusterError::NotOwner { .. })
    ));
    // A clean close revokes the lease: B drops A's records at once.
    let t0 = Instant::now();
    a.close();
    wait_for(&b, &b_events, PROPAGATION, "withdrawal on B", |s| {
        s.endpoints.is_empty() && s.ipam.is_empty() && !s.hosts.contains_key("host-a")
    });
    eprintln!(
        "clean close withdrew A's records on B in {:?}",
        t0.elapsed()
    );
    assert!(
        b.snapshot().networks.contains_key("front"),
        "networks are persistent"
    );
}

#[test]
fn stale_vni_claim_is_taken_over_by_its_network() {
    let Some(etcd) = Etcd::start("stale") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    // A claim without its network, as a hand edit could leave.
    let (rt, mut raw) = raw_client(&etcd);
    rt.block_on(raw.put("/switchyard/vni/300", "\"orphan\"", None))
        .expect("put");
    let created = a
        .create_network(network("orphan", Some(300)))
        .expect("take over");
    assert_eq!(created.vni, Some(300));
    assert!(matches!(
        a.create_network(network("other", Some(300))),
        Err(ClusterError::VniTaken { vni: 300, .. })
    ));
}

#[test]
fn concurrent_network_creation_gets_unique_vnis() {
    let Some(etcd) = Etcd::start("vni") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let (b, b_events) = connect(&etcd, "host-b", 2);
    let create_ten = |tag: &str, cluster: &Cluster| {
        (0..10)
            .map(|i| {
                let created = cluster.create_network(network(&format!("{tag}{i}"), None));
                created.expect("create").vni.expect("vni set")
            })
            .collect::<Vec<u32>>()
    };
    let vnis: Vec<u32> = std::thread::scope(|s| {
        let ha = s.spawn(|| create_ten("a", &a));
        let hb = s.spawn(|| create_ten("b", &b));
        let mut all = ha.join().expect("a thread");
        all.extend(hb.join().expect("b thread"));
        all
    });
    let unique: BTreeSet<u32> = vnis.iter().copied().collect();
    assert_eq!(unique.len(), 20, "duplicate VNIs: {vnis:?}");
    assert_eq!(unique, (256..276).collect(), "lowest free VNIs from 256");
    wait_for(&b, &b_events, PROPAGATION, "all networks on B", |s| {
        s.vnis.len() == 20
    });
}

#[test]
fn concurrent_ip_allocation_is_unique_across_hosts() {
    let Some(etcd) = Etcd::start("ipam") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let (b, b_events) = connect(&etcd, "host-b", 2);
    let subnet = "10.78.0.0/24".parse().expect("cidr");
    let gateway: Ipv4Addr = "10.78.0.1".parse().expect("ip");
    let t0 = Instant::now();
    let run = |tag: &'static str, cluster: &Cluster| {
        (0..50)
            .map(|i| {
                cluster
                    .allocate_ip("front", subnet, gateway, None, &format!("{tag}{i}"))
                    .expect("allocate")
            })
            .collect::<Vec<_>>()
    };
    let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let ha = s.spawn(|| run("a", &a));
        let hb = s.spawn(|| run("b", &b));
        let mut all = ha.join().expect("a thread");
        all.extend(hb.join().expect("b thread"));
        all
    });
    eprintln!(
        "100 concurrent allocations from two hosts took {:?}",
        t0.elapsed()
    );
    let unique: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(unique.len(), 100, "duplicate addresses");
    assert!(!unique.contains(&gateway));
    assert_eq!(unique.first(), Some(&"10.78.0.2".parse().expect("ip")));
    assert_eq!(unique.last(), Some(&"10.78.0.101".parse().expect("ip")));
    wait_for(&b, &b_events, PROPAGATION, "all leases on B", |s| {
        s.ipam.get("front").map(|m| m.len()) == Some(100)
    });
    // Static addresses: taken is an error naming the holder; free works.
    let taken: Ipv4Addr = "10.78.0.2".parse().expect("ip");
    let holder = b.snapshot().ipam["front"][&taken].clone();
    let other = if holder.host == "host-a" { &b } else { &a };
    match other.allocate_ip("front", subnet, gateway, Some(taken), "static") {
        Err(ClusterError::AddressTaken { host, endpoint, .. }) => {
            assert_eq!(
                (host, endpoint),
                (holder.host.clone(), holder.endpoint.clone())
            )
        }
        r => panic!("expected AddressTaken, got {r:?}"),
    }
    assert!(matches!(
        a.allocate_ip("front", subnet, gateway, Some(gateway), "gw"),
        Err(ClusterError::BadAddress { .. })
    ));
    let free: Ipv4Addr = "10.78.0.200".parse().expect("ip");
    assert_eq!(
        a.allocate_ip("front", subnet, gateway, Some(free), "s")
            .expect("static"),
        free
    );
    assert_eq!(
        a.allocate_ip("front", subnet, gateway, Some(free), "s")
            .expect("again"),
        free
    );
    // Releasing: only the holder may; then the address is free again.
    let owner = if holder.host == "host-a" { &a } else { &b };
    assert!(matches!(
        other.release_ip("front", taken),
        Err(ClusterError::NotOwner { .. })
    ));
    owner.release_ip("front", taken).expect("release");
    assert_eq!(
        other
            .allocate_ip("front", subnet, gateway, None, "again")
            .expect("reuse"),
        taken
    );
}

#[test]
fn crashed_host_records_expire_with_its_lease() {
    let Some(etcd) = Etcd::start("crash") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let (b, b_events) = connect(&etcd, "host-b", 2);
    a.create_network(network("front", None)).expect("create");
    let subnet = "10.77.0.0/16".parse().expect("cidr");
    let ip = a
        .allocate_ip(
            "front",
            subnet,
            "10.77.0.1".parse().expect("ip"),
            None,
            "web",
        )
        .expect("ip");
    a.put_endpoint(endpoint(&a, "front", "web", ip))
        .expect("put");
    wait_for(&b, &b_events, PROPAGATION, "A's records on B", |s| {
        s.all_endpoints().count() == 1 && s.ipam.contains_key("front")
    });
    let t0 = Instant::now();
    a.abandon();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.snapshot().all_endpoints().count(),
        1,
        "a crash is not a clean close"
    );
    wait_for(
        &b,
        &b_events,
        TTL + Duration::from_secs(3),
        "expiry on B",
        |s| s.endpoints.is_empty() && s.ipam.is_empty() && !s.hosts.contains_key("host-a"),
    );
    let took = t0.elapsed();
    eprintln!("crashed host's records expired on B after {took:?} (TTL {TTL:?})");
    // Keep-alives go every TTL/3, so the last one was at most that long ago.
    assert!(
        took >= TTL - TTL / 3 - Duration::from_millis(500),
        "expired before the TTL: {took:?}"
    );
    assert!(b.snapshot().networks.contains_key("front"));
}

#[test]
fn a_second_daemon_under_a_running_hosts_id_is_refused() {
    let Some(etcd) = Etcd::start("dup") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let ip = front_with_web(&a);
    a.put_endpoint(endpoint(&a, "front", "web", ip))
        .expect("put");
    // Two daemons under one id would each withdraw the other's records as
    // stale ones of their own, without end.
    let t0 = Instant::now();
    let err = Cluster::connect(config(&etcd, "host-a", 9))
        .err()
        .expect("a second daemon as host-a must be refused");
    assert!(matches!(err, ClusterError::HostTaken { .. }), "{err:?}");
    assert!(err.to_string().contains("--advertise"), "{err}");
    assert!(
        t0.elapsed() < TTL + Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
    let (c, c_events) = connect(&etcd, "host-c", 3);
    wait_for(&c, &c_events, PROPAGATION, "A's records intact", |s| {
        s.all_endpoints().count() == 1
            && s.ipam.get("front").is_some_and(|m| m.len() == 1)
            && s.hosts
                .get("host-a")
                .is_some_and(|h| h.vtep == a.config().vtep())
    });
}

#[test]
fn a_crashed_hosts_next_run_takes_its_id_over() {
    let Some(etcd) = Etcd::start("takeover") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    a.abandon();
    // The crashed run's record is still there, under a lease nobody renews.
    let t0 = Instant::now();
    let (again, _) = connect(&etcd, "host-a", 1);
    eprintln!("took host-a over from a crashed run in {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < TTL + Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    let (c, c_events) = connect(&etcd, "host-c", 3);
    // Only the new run's lease keeps the record: it outlives the old one's TTL.
    std::thread::sleep(TTL + Duration::from_secs(1));
    wait_for(&c, &c_events, PROPAGATION, "host-a registered", |s| {
        s.hosts.contains_key("host-a")
    });
    drop(again);
}

#[test]
fn etcd_outage_keeps_the_snapshot_and_resyncs() {
    let Some(mut etcd) = Etcd::start("outage") else {
        return;
    };
    let (a, _) = connect(&etcd, "host-a", 1);
    let (b, b_events) = connect(&etcd, "host-b", 2);
    a.create_network(network("front", None)).expect("create");
    let subnet = "10.77.0.0/16".parse().expect("cidr");
    let gw = "10.77.0.1".parse().expect("ip");
    let ip = b.allocate_ip("front", subnet, gw, None, "db").expect("ip");
    let ep = endpoint(&b, "front", "db", ip);
    b.put_endpoint(ep.clone()).expect("put");
    wait_for(&b, &b_events, PROPAGATION, "A's network on B", |s| {
        s.networks.contains_key("front")
    });
    let before = b.snapshot();
    while b_events.try_recv().is_ok() {}

    etcd.stop();
    let lost = wait_event(&b_events, Duration::from_secs(5), |e| {
        matches!(e, ClusterEvent::Disconnected(_))
    });
    eprintln!("B noticed the outage after {lost:?}");
    let status = b.status();
    assert!(!status.connected);
    assert!(status.last_error.is_some());
    let during = b.snapshot();
    assert_eq!(during.networks, before.networks);
    assert_eq!(
        during.endpoints, before.endpoints,
        "the last known state stays"
    );
    assert!(matches!(
        b.put_endpoint(endpoint(
            &b,
            "front",
            "db2",
            "10.77.0.50".parse().expect("ip")
        )),
        Err(ClusterError::Disconnected(_) | ClusterError::Timeout(_) | ClusterError::Etcd(_))
    ));

    let t0 = Instant::now();
    etcd.restart();
    let back = wait_event(&b_events, Duration::from_secs(10), |e| {
        *e == ClusterEvent::Connected
    });
    eprintln!(
        "B reconnected {back:?} after etcd was healthy again ({:?} including etcd start)",
        t0.elapsed()
    );
    assert!(b.status().connected);
    let after = b.snapshot();
    assert!(after.remote_endpoints("front", "nobody").any(|e| *e == ep));
    assert!(after.networks.contains_key("front"));
    // B's own records are in etcd, as a newcomer sees them.
    let (c, _) = connect(&etcd, "host-c", 3);
    let seen = c.snapshot();
    assert!(seen.all_endpoints().any(|e| *e == ep));
    assert_eq!(seen.ipam["front"][&ip].host, "host-b");
    assert!(seen.hosts.contains_key("host-a") && seen.hosts.contains_key("host-b"));
    // And B works normally again.
    b.put_endpoint(endpoint(
        &b,
        "front",
        "db2",
        "10.77.0.50".parse().expect("ip"),
    ))
    .expect("put after");
}

#[test]
fn withdrawals_during_an_outage_are_made_when_etcd_is_back() {
    let Some(mut etcd) = Etcd::start("withdraw") else {
        return;
    };
    let (b, b_events) = connect(&etcd, "host-b", 2);
    let subnet = "10.77.0.0/16".parse().expect("cidr");
    let gw = "10.77.0.1".parse().expect("ip");
    let ip = b.allocate_ip("front", subnet, gw, None, "db").expect("ip");
    let gone = endpoint(&b, "front", "db", ip);
    b.put_endpoint(gone.clone()).expect("put");
    let ip2 = b.allocate_ip("front", subnet, gw, None, "web").expect("ip");
    let kept = endpoint(&b, "front", "web", ip2);
    b.put_endpoint(kept.clone()).expect("put");
    while b_events.try_recv().is_ok() {}

    etcd.stop();
    wait_event(&b_events, Duration::from_secs(10), |e| {
        matches!(e, ClusterEvent::Disconnected(_))
    });
    // What the daemon's disconnect does: both fail now, and are not lost.
    let down = |r: Result<(), ClusterError>| {
        matches!(
            r,
            Err(ClusterError::Disconnected(_) | ClusterError::Timeout(_) | ClusterError::Etcd(_))
        )
    };
    assert!(down(b.remove_endpoint("front", "db")));
    assert!(down(b.release_ip("front", ip)));

    etcd.restart();
    wait_event(&b_events, Duration::from_secs(15), |e| {
        *e == ClusterEvent::Connected
    });
    // B's lease lives on, so only what it withdrew is gone; before the fix
    // the reconnect put both back.
    let (c, _) = connect(&etcd, "host-c", 3);
    let seen = c.snapshot();
    assert!(!seen.all_endpoints().any(|e| e.name == "db"), "withdrawn");
    assert!(seen.all_endpoints().any(|e| *e == kept), "kept");
    let leases = seen.ipam.get("front").cloned().unwrap_or_default();
    assert!(!leases.contains_key(&ip), "released: {leases:?}");
    assert!(leases.contains_key(&ip2), "kept: {leases:?}");
    let mine = b.snapshot();
    assert!(!mine.all_endpoints().any(|e| e.name == "db"));

    // The name and the address can be taken again, and stay (no queued
    // withdrawal deletes them later: the retry runs every 2 s).
    assert_eq!(
        b.allocate_ip("front", subnet, gw, Some(ip), "db2")
            .expect("again"),
        ip
    );
    b.put_endpoint(gone.clone()).expect("put again");
    std::thread::sleep(Duration::from_millis(2500));
    let (d, _) = connect(&etcd, "host-d", 4);
    let seen = d.snapshot();
    assert!(seen.all_endpoints().any(|e| *e == gone));
    assert_eq!(seen.ipam["front"][&ip].endpoint, "db2");
}

#[test]
fn lost_lease_is_replaced_and_own_records_put_back() {
    let Some(etcd) = Etcd::start("lease") else {
        return;
    };
    let (b, b_events) = connect(&etcd, "host-b", 2);
    let subnet = "10.77.0.0/16".parse().expect("cidr");
    let ip = b
        .allocate_ip(
            "front",
            subnet,
            "10.77.0.1".parse().expect("ip"),
            None,
            "db",
        )
        .expect("ip");
    let ep = endpoint(&b, "front", "db", ip);
    b.put_endpoint(ep.clone()).expect("put");
    while b_events.try_recv().is_ok() {}
    // Revoke every lease behind B's back, as if it had expired.
    let (rt, mut raw) = raw_client(&etcd);
    let leases = rt.block_on(raw.leases()).expect("leases");
    for l in leases.leases() {
        rt.block_on(raw.lease_revoke(l.id())).expect("revoke");
    }
    let t0 = Instant::now();
    wait_event(&b_events, Duration::from_secs(10), |e| {
        *e == ClusterEvent::Connected
    });
    wait_for(&b, &b_events, PROPAGATION, "records back", |s| {
        s.all_endpoints().any(|e| *e == ep)
            && s.ipam.get("front").is_some_and(|m| m.contains_key(&ip))
    });
    eprintln!(
        "B replaced its lease and restored its records in {:?}",
        t0.elapsed()
    );
    let (c, _) = connect(&etcd, "host-c", 3);
    assert!(c.snapshot().all_endpoints().any(|e| *e == ep));
    assert!(c.snapshot().hosts.contains_key("host-b"));
}

#[test]
fn connect_fails_clearly_when_etcd_is_down() {
    let Some(mut etcd) = Etcd::start("down") else {
        return;
    };
    let mut config = config(&etcd, "host-a", 1);
    config.op_timeout = Duration::from_secs(1);
    etcd.stop();
    let t0 = Instant::now();
    let err = Cluster::connect(config).err().expect("connect must fail");
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot reach etcd at http://127.0.0.1:"),
        "{msg}"
    );
    // The cause in words, not tonic's nested debug output.
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(!msg.contains("tonic::"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_store_member_that_does_not_answer_is_skipped() {
    let Some(etcd) = Etcd::start("member") else {
        return;
    };
    let live = config(&etcd, "host-a", 1).endpoints[0].clone();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    for (round, members) in [[&dead, &live], [&live, &dead]].iter().enumerate() {
        let mut c = config(&etcd, "host-a", 1);
        c.endpoints = members.iter().map(|m| m.to_string()).collect();
        let a = Cluster::connect(c).expect("connect through the member that answers");
        for i in 0..8 {
            a.create_network(network(&format!("n{round}-{i}"), None))
                .expect("every request reaches the member that answers");
        }
        a.close();
    }
}

#[test]
fn bad_store_url_is_rejected_before_connecting() {
    let err = ClusterConfig::new("http://127.0.0.1:2379", "192.0.2.1".parse().expect("ip"))
        .expect_err("bad scheme");
    assert!(err.to_string().contains("etcd://HOST:PORT"), "{err}");
}
