//! Overlay networks in the control plane, without namespaces: two in-process
//! daemons ("hosts") with VXLAN endpoints on loopback addresses share a fake
//! cluster store (or only a static peer list); networks, addresses, remote
//! endpoints and DNS records follow the shared state, and each host's own
//! records follow its endpoints even when the store failed to take a change.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use common::{small_dataplane, TempDir};
use switchyard::control::api::{Connect, NetworkCreate};
use switchyard::control::attach_fake::FakeAttacher;
use switchyard::control::daemon::{
    ClusterSnapshot, ClusterStore, ClusterWatch, Daemon, DaemonConfig, EndpointRecord, IpamLease,
    OverlaySettings, RecordedNetwork,
};
use switchyard::control::error::DaemonError;
use switchyard::control::ipam::StaticRoutes;
use switchyard::control::model::{Driver, Network, SandboxTarget};

/// The shared state of a fake cluster: what etcd would hold.
#[derive(Default)]
struct Shared {
    networks: Vec<Network>,
    endpoints: Vec<EndpointRecord>,
    leases: BTreeMap<(String, Ipv4Addr), IpamLease>,
    connected: bool,
    /// Withdrawals fail without effect (etcd unreachable at that moment).
    fail_withdrawals: bool,
    /// Allocations are committed but answered with a timeout.
    lose_allocations: bool,
}

fn unreachable_store() -> DaemonError {
    DaemonError::Invalid("cluster store unreachable".into())
}

/// One host's client of the fake cluster.
struct FakeStore {
    host: String,
    shared: Arc<Mutex<Shared>>,
}

fn lock(s: &Arc<Mutex<Shared>>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterStore for FakeStore {
    fn host(&self) -> &str {
        &self.host
    }

    fn create_network(&self, net: &Network) -> Result<RecordedNetwork, DaemonError> {
        let mut s = lock(&self.shared);
        if let Some(n) = s.networks.iter().find(|n| n.name == net.name) {
            let vni = n.vni.ok_or_else(|| DaemonError::Invalid("no vni".into()))?;
            return Ok(RecordedNetwork {
                vni,
                created: false,
            });
        }
        let vni = net.vni.unwrap_or(256 + s.networks.len() as u32);
        let mut rec = net.clone();
        rec.vni = Some(vni);
        s.networks.push(rec);
        Ok(RecordedNetwork { vni, created: true })
    }

    fn remove_network(&self, name: &str) -> Result<(), DaemonError> {
        lock(&self.shared).networks.retain(|n| n.name != name);
        Ok(())
    }

    fn allocate_ip(
        &self,
        net: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, DaemonError> {
        let mut s = lock(&self.shared);
        let base = u32::from(net.subnet4.addr());
        let mine = IpamLease {
            host: self.host.clone(),
            endpoint: owner.into(),
        };
        let ip = match requested {
            Some(ip) => match s.leases.get(&(net.name.clone(), ip)) {
                Some(l) if *l != mine => return Err(DaemonError::Invalid("taken".into())),
                _ => ip,
            },
            None => (2..254)
                .map(|n| Ipv4Addr::from(base + n))
                .find(|ip| !s.leases.contains_key(&(net.name.clone(), *ip)))
                .ok_or_else(|| DaemonError::Invalid("exhausted".into()))?,
        };
        s.leases.insert((net.name.clone(), ip), mine);
        if s.lose_allocations {
            return Err(DaemonError::Invalid("no answer in time".into()));
        }
        Ok(ip)
    }

    fn release_ip(&self, network: &str, ip: Ipv4Addr) -> Result<(), DaemonError> {
        let mut s = lock(&self.shared);
        if s.fail_withdrawals {
            return Err(unreachable_store());
        }
        s.leases.remove(&(network.to_string(), ip));
        Ok(())
    }

    fn put_endpoint(&self, ep: &EndpointRecord) -> Result<(), DaemonError> {
        let mut s = lock(&self.shared);
        s.endpoints
            .retain(|e| !(e.network == ep.network && e.name == ep.name));
        s.endpoints.push(ep.clone());
        Ok(())
    }

    fn remove_endpoint(&self, network: &str, name: &str) -> Result<(), DaemonError> {
        let mut s = lock(&self.shared);
        if s.fail_withdrawals {
            return Err(unreachable_store());
        }
        s.endpoints
            .retain(|e| !(e.network == network && e.name == name));
        Ok(())
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let s = lock(&self.shared);
        let mut leases: BTreeMap<String, BTreeMap<Ipv4Addr, IpamLease>> = BTreeMap::new();
        for ((net, ip), l) in &s.leases {
            leases
                .entry(net.clone())
                .or_default()
                .insert(*ip, l.clone());
        }
        ClusterSnapshot {
            networks: s.networks.clone(),
            endpoints: s.endpoints.clone(),
            leases,
            connected: s.connected,
        }
    }

    fn watch(&self) -> Box<dyn ClusterWatch> {
        Box::new(NoWatch)
    }
}

/// The tests call `sync_cluster` themselves.
struct NoWatch;

impl ClusterWatch for NoWatch {
    fn wait(&mut self, timeout: std::time::Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}

fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn host(
    dir: &TempDir,
    advertise: &str,
    peers: Vec<SocketAddr>,
    store: Option<Box<dyn ClusterStore>>,
) -> (Daemon, FakeAttacher) {
    let attacher = FakeAttacher::new();
    let mut overlay = OverlaySettings::new(advertise.parse().expect("ip"));
    overlay.vxlan_port = free_udp_port(advertise);
    overlay.peers = peers;
    let d = Daemon::new(
        DaemonConfig {
            state_dir: dir.path().to_path_buf(),
            dataplane: small_dataplane(),
            routes: Box::new(StaticRoutes(vec![])),
            dns: Default::default(),
            dns_upstream: switchyard::dns::forward::UpstreamSource::Static(vec![]),
            nat_limits: Default::default(),
            overlay: Some(overlay),
            cluster: store,
            stopping: Default::default(),
        },
        Box::new(attacher.clone()),
    )
    .expect("daemon starts");
    (d, attacher)
}

fn overlay_net(name: &str, vni: Option<u32>) -> NetworkCreate {
    NetworkCreate {
        name: name.into(),
        driver: Driver::Overlay,
        subnet: Some("10.77.0.0/24".parse().expect("cidr")),
        vni,
        ..NetworkCreate::default()
    }
}

fn connect(
    d: &mut Daemon,
    dir: &TempDir,
    net: &str,
    name: &str,
) -> switchyard::control::model::Endpoint {
    // Any existing file stands in for a namespace with the fake attacher.
    let ns = dir.path().join(format!("ns-{name}"));
    std::fs::write(&ns, b"").expect("ns file");
    d.connect(Connect {
        network: net.into(),
        target: SandboxTarget::Netns {
            path: ns,
            userns: None,
        },
        name: Some(name.into()),
        aliases: vec![format!("{name}-alias")],
        ip: None,
        ip6: None,
        publish: vec![],
        port_security: true,
        ifname: None,
        container_id: None,
        cni_network: None,
    })
    .expect("connect")
}

fn resolves(d: &Daemon, net: &str, name: &str) -> bool {
    let table = d.dns().table.load();
    let Some(id) = d
        .dataplane()
        .topology()
        .networks()
        .find(|n| n.name == net)
        .map(|n| n.id)
    else {
        return false;
    };
    table
        .zone(id)
        .is_some_and(|z| z.lookup(name.as_bytes()).is_some())
}

#[test]
fn cluster_store_shares_networks_endpoints_and_names() {
    let shared = Arc::new(Mutex::new(Shared {
        connected: true,
        ..Shared::default()
    }));
    let store = |h: &str| -> Option<Box<dyn ClusterStore>> {
        Some(Box::new(FakeStore {
            host: h.into(),
            shared: shared.clone(),
        }))
    };
    let (da, db) = (TempDir::new("ovl-a"), TempDir::new("ovl-b"));
    let (mut a, _) = host(&da, "127.0.0.1", vec![], store("a"));
    let (mut b, _) = host(&db, "127.0.0.1", vec![], store("b"));

    let net = a.create_network(overlay_net("ovl", None)).expect("create");
    assert_eq!(net.vni, Some(256), "the store allocates the VNI");
    assert_eq!(net.mtu, 1450);
    b.sync_cluster();
    let seen = b.state().networks.iter().find(|n| n.name == "ovl").cloned();
    assert_eq!(
        seen.map(|n| (n.vni, n.subnet4)),
        Some((net.vni, net.subnet4))
    );

    let ea = connect(&mut a, &da, "ovl", "web");
    let eb = connect(&mut b, &db, "ovl", "db");
    assert_ne!(ea.ipv4, eb.ipv4, "the store keeps addresses unique");
    assert_ne!(ea.mac, eb.mac);
    a.sync_cluster();
    b.sync_cluster();
    let names = |d: &Daemon| {
        d.remote_view()
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), vec!["db"]);
    assert_eq!(names(&b), vec!["web"]);
    assert!(resolves(&b, "ovl", "web"), "a remote name resolves");
    assert!(resolves(&b, "ovl", "web-alias"), "and its alias");
    assert!(resolves(&a, "ovl", "db"));

    // A name taken on another host is taken here too.
    let ns = da.path().join("ns-dup");
    std::fs::write(&ns, b"").expect("ns");
    let dup = a.connect(Connect {
        network: "ovl".into(),
        target: SandboxTarget::Netns {
            path: ns,
            userns: None,
        },
        name: Some("db".into()),
        aliases: vec![],
        ip: None,
        ip6: None,
        publish: vec![],
        port_security: true,
        ifname: None,
        container_id: None,
        cni_network: None,
    });
    assert!(
        matches!(dup, Err(DaemonError::EndpointExists { .. })),
        "{dup:?}"
    );

    // The store is unreachable: B keeps what it knew.
    lock(&shared).connected = false;
    lock(&shared).endpoints.retain(|e| e.host != "a");
    b.sync_cluster();
    assert_eq!(
        names(&b),
        vec!["web"],
        "nothing is dropped while disconnected"
    );
    // Back, without A's records (its lease expired): they go.
    lock(&shared).connected = true;
    b.sync_cluster();
    assert!(names(&b).is_empty());
    assert!(!resolves(&b, "ovl", "web"));

    // A network removed elsewhere goes once no local endpoint uses it.
    b.disconnect("ovl", "db").expect("disconnect");
    assert!(lock(&shared).endpoints.iter().all(|e| e.name != "db"));
    assert!(!lock(&shared).leases.contains_key(&("ovl".into(), eb.ipv4)));
    lock(&shared).networks.clear();
    b.sync_cluster();
    assert!(b.state().networks.iter().all(|n| n.name != "ovl"));
}

#[test]
fn static_peers_agree_on_vni_and_split_addresses() {
    let (da, db) = (TempDir::new("st-a"), TempDir::new("st-b"));
    let pa: SocketAddr = "127.0.0.1:4789".parse().expect("sa");
    let pb: SocketAddr = "127.0.0.2:4789".parse().expect("sa");
    let (mut a, _) = host(&da, "127.0.0.1", vec![pb], None);
    let (mut b, _) = host(&db, "127.0.0.2", vec![pa], None);
    let na = a.create_network(overlay_net("shared", None)).expect("a");
    let nb = b.create_network(overlay_net("shared", None)).expect("b");
    assert_eq!(na.vni, nb.vni, "derived from the name on both hosts");
    let mut ips = BTreeSet::new();
    for i in 0..5 {
        assert!(ips.insert(connect(&mut a, &da, "shared", &format!("a{i}")).ipv4));
        assert!(ips.insert(connect(&mut b, &db, "shared", &format!("b{i}")).ipv4));
    }
    let taken = a.create_network(overlay_net("other", na.vni));
    assert!(matches!(taken, Err(DaemonError::Invalid(_))), "{taken:?}");
    let bad = a.create_network(overlay_net("bad", Some(1 << 24)));
    assert!(matches!(bad, Err(DaemonError::Invalid(_))), "{bad:?}");
}

/// A fake cluster every host of a test shares, connected.
fn fake_cluster() -> Arc<Mutex<Shared>> {
    Arc::new(Mutex::new(Shared {
        connected: true,
        ..Shared::default()
    }))
}

fn client(shared: &Arc<Mutex<Shared>>, host: &str) -> Option<Box<dyn ClusterStore>> {
    Some(Box::new(FakeStore {
        host: host.into(),
        shared: shared.clone(),
    }))
}

fn overlay_on(name: &str, subnet: &str, vni: Option<u32>) -> NetworkCreate {
    NetworkCreate {
        subnet: Some(subnet.parse().expect("cidr")),
        ..overlay_net(name, vni)
    }
}

/// A host of a test and its state directory.
type HostDir = (Daemon, TempDir);

/// Hosts `a` and `b` on one fake cluster, each with its state directory.
fn clustered_pair(tag: &str) -> (Arc<Mutex<Shared>>, HostDir, HostDir) {
    let shared = fake_cluster();
    let (da, db) = (
        TempDir::new(&format!("{tag}-a")),
        TempDir::new(&format!("{tag}-b")),
    );
    let (a, _) = host(&da, "127.0.0.1", vec![], client(&shared, "a"));
    let (b, _) = host(&db, "127.0.0.1", vec![], client(&shared, "b"));
    (shared, (a, da), (b, db))
}

/// A connect request for a new sandbox of `dir`, with an optional address.
fn connect_req(dir: &TempDir, net: &str, name: &str, ip: Option<Ipv4Addr>) -> Connect {
    let ns = dir.path().join(format!("ns-{name}"));
    std::fs::write(&ns, b"").expect("ns file");
    Connect {
        network: net.into(),
        target: SandboxTarget::Netns {
            path: ns,
            userns: None,
        },
        name: Some(name.into()),
        aliases: vec![],
        ip,
        ip6: None,
        publish: vec![],
        port_security: true,
        ifname: None,
        container_id: None,
        cni_network: None,
    }
}

/// Host `host`'s records in the fake store: endpoint names, and leases as
/// (address, endpoint id).
fn own_records(shared: &Arc<Mutex<Shared>>, host: &str) -> (Vec<String>, Vec<(Ipv4Addr, String)>) {
    let s = lock(shared);
    let mut names: Vec<String> = s
        .endpoints
        .iter()
        .filter(|e| e.host == host)
        .map(|e| e.name.clone())
        .collect();
    names.sort();
    let leases = s
        .leases
        .iter()
        .filter(|(_, l)| l.host == host)
        .map(|((_, ip), l)| (*ip, l.endpoint.clone()))
        .collect();
    (names, leases)
}

#[test]
fn failed_withdrawals_and_lost_allocations_are_cleaned_up_by_the_sync() {
    let shared = fake_cluster();
    let da = TempDir::new("own-a");
    let (mut a, _) = host(&da, "127.0.0.1", vec![], client(&shared, "a"));
    a.create_network(overlay_net("ovl", None)).expect("create");
    let web = connect(&mut a, &da, "ovl", "web");
    connect(&mut a, &da, "ovl", "db");

    // The store cannot be reached while `db` goes: its records stay there.
    lock(&shared).fail_withdrawals = true;
    a.disconnect("ovl", "db")
        .expect("disconnect works without the store");
    assert_eq!(own_records(&shared, "a").0, vec!["db", "web"]);
    a.sync_cluster();
    // Back: the next sync withdraws what no local endpoint matches.
    lock(&shared).fail_withdrawals = false;
    a.sync_cluster();
    let only_web = (vec!["web".to_string()], vec![(web.ipv4, web.id.clone())]);
    assert_eq!(own_records(&shared, "a"), only_web);

    // An allocation committed by the store but answered too late fails the
    // connect; the sync releases the address it left behind.
    lock(&shared).lose_allocations = true;
    let late = a.connect(connect_req(&da, "ovl", "late", None));
    assert!(late.is_err(), "{late:?}");
    assert_eq!(own_records(&shared, "a").1.len(), 2, "the lease leaked");
    lock(&shared).lose_allocations = false;
    a.sync_cluster();
    assert_eq!(own_records(&shared, "a"), only_web);
}

#[test]
fn a_local_address_whose_lease_was_lost_is_not_handed_out_again() {
    let shared = fake_cluster();
    let da = TempDir::new("lost-a");
    let (mut a, _) = host(&da, "127.0.0.1", vec![], client(&shared, "a"));
    a.create_network(overlay_net("ovl", None)).expect("create");
    let web = connect(&mut a, &da, "ovl", "web");
    // The store lost web's lease and record (say a re-lease failed after a
    // restart), so it would hand web's address out again.
    lock(&shared).leases.clear();
    lock(&shared).endpoints.clear();

    let next = connect(&mut a, &da, "ovl", "next");
    assert_ne!(next.ipv4, web.ipv4, "two local endpoints, one address");
    let leases = own_records(&shared, "a").1;
    assert!(leases.contains(&(web.ipv4, web.id.clone())), "{leases:?}");
    assert!(leases.contains(&(next.ipv4, next.id.clone())), "{leases:?}");

    // Asking for it is refused as in use, even while the store has no lease.
    lock(&shared).leases.retain(|(_, ip), _| *ip != web.ipv4);
    let asked = a.connect(connect_req(&da, "ovl", "asks", Some(web.ipv4)));
    assert!(
        matches!(
            asked,
            Err(DaemonError::Ipam(
                switchyard::control::ipam::IpamError::InUse { .. }
            ))
        ),
        "{asked:?}"
    );
    // The sync leases and records again what the store lacks.
    a.sync_cluster();
    let (names, leases) = own_records(&shared, "a");
    assert_eq!(names, vec!["next", "web"]);
    assert!(leases.contains(&(web.ipv4, web.id.clone())), "{leases:?}");
}

#[test]
fn a_network_that_fails_here_is_taken_back_from_the_store() {
    let shared = fake_cluster();
    let da = TempDir::new("undo-a");
    let (mut a, _) = host(&da, "127.0.0.1", vec![], client(&shared, "a"));
    a.create_network(overlay_on("one", "10.77.1.0/24", Some(257)))
        .expect("one");
    // The fake store gives "two" VNI 257 too, which the data plane refuses.
    let two = a.create_network(overlay_on("two", "10.77.2.0/24", None));
    assert!(matches!(two, Err(DaemonError::Dataplane(_))), "{two:?}");
    assert!(a.state().networks.iter().all(|n| n.name != "two"));
    let recorded = |name: &str| lock(&shared).networks.iter().any(|n| n.name == name);
    assert!(!recorded("two"), "the store must not keep it");

    // A record this host did not create stays, whatever happens here.
    let mut other = a
        .state()
        .networks
        .iter()
        .find(|n| n.name == "one")
        .cloned()
        .expect("one");
    other.name = "three".into();
    other.subnet4 = "10.77.3.0/24".parse().expect("cidr");
    lock(&shared).networks.push(other);
    let three = a.create_network(overlay_on("three", "10.77.3.0/24", None));
    assert!(matches!(three, Err(DaemonError::Dataplane(_))), "{three:?}");
    assert!(recorded("three"), "another host's network stays");
}

#[test]
fn a_bridge_network_ignores_remote_endpoints_of_a_same_named_overlay() {
    let (shared, (mut a, da), (mut b, db)) = clustered_pair("clash");
    a.create_network(overlay_net("front", None))
        .expect("overlay");
    connect(&mut a, &da, "front", "web");
    // B has a bridge network of the same name before it syncs.
    b.create_network(NetworkCreate {
        name: "front".into(),
        subnet: Some("10.78.0.0/24".parse().expect("cidr")),
        ..NetworkCreate::default()
    })
    .expect("bridge");
    b.sync_cluster();
    let front = b.state().networks.iter().find(|n| n.name == "front");
    assert_eq!(front.map(|n| n.driver), Some(Driver::Bridge));
    assert!(b.remote_view().is_empty(), "{:?}", b.remote_view());
    assert!(!resolves(&b, "front", "web"), "A's web is not in B's zone");
    // The name is free on B's bridge network, and B publishes nothing.
    let local = connect(&mut b, &db, "front", "web");
    b.sync_cluster();
    assert!(resolves(&b, "front", "web"));
    assert!(own_records(&shared, "b").0.is_empty());
    assert!(local.ipv4.octets()[..3] == [10, 78, 0]);
}

/// What `tracing` logs on this thread while `f` runs.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn an_overlay_that_clashes_with_a_local_network_is_reported_once_and_adopted_once_free() {
    let (_shared, (mut a, _da), (mut b, _db)) = clustered_pair("adopt");
    b.create_network(NetworkCreate {
        name: "local".into(),
        subnet: Some("10.60.0.0/24".parse().expect("cidr")),
        ..NetworkCreate::default()
    })
    .expect("bridge");
    a.create_network(overlay_on("ovl", "10.60.0.0/24", None))
        .expect("overlay");
    // Every sync (at least every 5 s) tries again; the reason is logged once.
    let log = logged(|| {
        for _ in 0..3 {
            b.sync_cluster();
        }
    });
    assert_eq!(
        log.matches("cannot adopt overlay network ovl").count(),
        1,
        "{log}"
    );
    assert!(log.contains("overlaps"), "{log}");
    assert!(b.state().networks.iter().all(|n| n.name != "ovl"));
    // Once the clash is gone, the next sync adopts it.
    b.remove_network("local").expect("rm");
    b.sync_cluster();
    assert!(b.state().networks.iter().any(|n| n.name == "ovl"));
}

#[test]
fn a_network_the_store_lost_is_recorded_again_while_endpoints_are_on_it() {
    let (shared, (mut a, da), (mut b, _db)) = clustered_pair("lost-net");
    a.create_network(overlay_on("used", "10.61.0.0/24", None))
        .expect("used");
    a.create_network(overlay_on("empty", "10.62.0.0/24", None))
        .expect("empty");
    connect(&mut a, &da, "used", "web");
    b.sync_cluster();
    let vni = |d: &Daemon, name: &str| {
        d.state()
            .networks
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.vni)
    };
    let used = vni(&a, "used").expect("a VNI");
    assert_eq!(vni(&b, "used"), Some(used));
    // etcd is back without its data: the store puts back each host's
    // endpoints and leases, but it had no networks of its own to put back.
    lock(&shared).networks.clear();
    a.sync_cluster();
    let recorded: Vec<(String, Option<u32>)> = lock(&shared)
        .networks
        .iter()
        .map(|n| (n.name.clone(), n.vni))
        .collect();
    assert_eq!(recorded, vec![("used".to_string(), Some(used))]);
    b.sync_cluster();
    assert_eq!(vni(&b, "used"), Some(used), "B keeps it, with its VNI");
    // A network nobody is on cannot be told from one removed elsewhere.
    assert_eq!(vni(&a, "empty"), None);
    assert_eq!(vni(&b, "empty"), None);
}
