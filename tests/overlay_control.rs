//! Overlay networks in the control plane, without namespaces: two in-process
//! daemons ("hosts") with VXLAN endpoints on loopback addresses share a fake
//! cluster store (or only a static peer list); networks, addresses, remote
//! endpoints and DNS records follow the shared state.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use common::{small_dataplane, TempDir};
use switchyard::control::api::{Connect, NetworkCreate};
use switchyard::control::attach_fake::FakeAttacher;
use switchyard::control::daemon::{
    ClusterSnapshot, ClusterStore, ClusterWatch, Daemon, DaemonConfig, EndpointRecord,
    OverlaySettings,
};
use switchyard::control::error::DaemonError;
use switchyard::control::ipam::StaticRoutes;
use switchyard::control::model::{Driver, Network, SandboxTarget};

/// The shared state of a fake cluster: what etcd would hold.
#[derive(Default)]
struct Shared {
    networks: Vec<Network>,
    endpoints: Vec<EndpointRecord>,
    leases: BTreeSet<(String, Ipv4Addr)>,
    connected: bool,
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

    fn create_network(&self, net: &Network) -> Result<u32, DaemonError> {
        let mut s = lock(&self.shared);
        if let Some(n) = s.networks.iter().find(|n| n.name == net.name) {
            return n.vni.ok_or_else(|| DaemonError::Invalid("no vni".into()));
        }
        let vni = net.vni.unwrap_or(256 + s.networks.len() as u32);
        let mut rec = net.clone();
        rec.vni = Some(vni);
        s.networks.push(rec);
        Ok(vni)
    }

    fn remove_network(&self, name: &str) -> Result<(), DaemonError> {
        lock(&self.shared).networks.retain(|n| n.name != name);
        Ok(())
    }

    fn allocate_ip(
        &self,
        net: &Network,
        requested: Option<Ipv4Addr>,
        _owner: &str,
    ) -> Result<Ipv4Addr, DaemonError> {
        let mut s = lock(&self.shared);
        let base = u32::from(net.subnet4.addr());
        let ip = match requested {
            Some(ip) => ip,
            None => (2..254)
                .map(|n| Ipv4Addr::from(base + n))
                .find(|ip| !s.leases.contains(&(net.name.clone(), *ip)))
                .ok_or_else(|| DaemonError::Invalid("exhausted".into()))?,
        };
        s.leases.insert((net.name.clone(), ip));
        Ok(ip)
    }

    fn release_ip(&self, network: &str, ip: Ipv4Addr) -> Result<(), DaemonError> {
        lock(&self.shared).leases.remove(&(network.to_string(), ip));
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
        lock(&self.shared)
            .endpoints
            .retain(|e| !(e.network == network && e.name == name));
        Ok(())
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let s = lock(&self.shared);
        ClusterSnapshot {
            networks: s.networks.clone(),
            endpoints: s.endpoints.clone(),
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
    assert!(!lock(&shared).leases.contains(&("ovl".into(), eb.ipv4)));
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
