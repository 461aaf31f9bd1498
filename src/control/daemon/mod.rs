//! The daemon's state machine: owns the model, IPAM, the store, the attacher
//! and the [`Dataplane`], and applies requests so that each one either takes
//! effect everywhere (data plane, sandbox, disk, memory) or nowhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod capture;
mod cluster;
mod endpoints;
mod etcd_store;
mod gateway;
mod overlay;
mod publish;
mod restore;

pub use cluster::{
    spawn_cluster_sync, ClusterSnapshot, ClusterStore, ClusterWatch, EndpointRecord, IpamLease,
    RecordedNetwork,
};
pub use overlay::{parse_peer, OverlaySettings, OVERLAY_MTU};

use super::api::{
    self, NetworkCreate, NetworkDetail, Pong, PortOwner, Request, Response, StatsReply,
};
use super::attach::Attacher;
use super::error::DaemonError;
use super::ipam::{self, Ipam, RouteSource};
use super::model::{
    validate_mtu, validate_name, Driver, Endpoint, Network, Publication, DEFAULT_MTU,
};
use super::store::{State, Store, StoreError};
use super::trace;
use crate::clock::SystemClock;
use crate::dataplane::{Dataplane, DataplaneConfig, NetworkSpec};
use crate::dns::forward::{Forwarder, ForwarderConfig, UpstreamSource};
use crate::dns::records::DnsSettings;
use crate::dns::{DnsService, ReplyRoute};
use crate::gateway::dns_reply::GatewaySink;
use crate::gateway::stack::GatewayStack;
use crate::pipeline::Pipeline;
use crate::ports::PortId;
use crate::tables::topology::{GatewayInfo, NetworkId};
use crate::wire::MacAddr;

/// A random salt for endpoint ids. Without entropy the clock stands in:
/// it still differs between two starts of the daemon.
fn id_salt() -> [u8; 8] {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (nanos ^ u64::from(std::process::id())).to_be_bytes();
    }
    b
}

/// Name of the network that always exists.
pub const DEFAULT_NETWORK: &str = "default";

/// How to start a daemon.
pub struct DaemonConfig {
    /// Where state is kept.
    pub state_dir: PathBuf,
    /// Data-plane settings.
    pub dataplane: DataplaneConfig,
    /// Host routes IPAM avoids.
    pub routes: Box<dyn RouteSource>,
    /// The gateways' DNS.
    pub dns: DnsSettings,
    /// Where names that are not ours are resolved.
    pub dns_upstream: UpstreamSource,
    /// Caps on NAT flows.
    pub nat_limits: crate::gateway::flow::FlowLimits,
    /// This host's VTEP and overlay peers (`None`: no overlay networks).
    pub overlay: Option<OverlaySettings>,
    /// The cluster store shared with other hosts (needs `overlay`).
    pub cluster: Option<Box<dyn ClusterStore>>,
    /// Set when the daemon is asked to stop: a start still retrying
    /// endpoints it cannot re-attach gives up at once and keeps them for
    /// the next start.
    pub stopping: Arc<AtomicBool>,
}

/// The running control plane.
pub struct Daemon {
    state: State,
    store: Store,
    ipam: Ipam,
    dataplane: Dataplane,
    attacher: Arc<dyn Attacher>,
    net_ids: HashMap<String, NetworkId>,
    ports: HashMap<String, Vec<PortId>>,
    dns: Arc<DnsService>,
    stack: GatewayStack,
    forwarder: Arc<Forwarder<ReplyRoute>>,
    /// Published sockets being served, per endpoint id and publication.
    listeners: HashMap<(String, Publication), publish::Served>,
    next_listener: u64,
    overlay: Option<OverlaySettings>,
    cluster: Option<Box<dyn ClusterStore>>,
    /// Endpoints of other hosts, from the cluster store.
    remote: cluster::RemoteView,
    /// Cluster problems already logged (by key), so each is logged once.
    cluster_problems: std::collections::BTreeSet<String>,
    /// Endpoints (ids) with a capture running.
    capturing: std::collections::HashSet<String>,
    /// Drawn at start and mixed into new endpoints' ids: a daemon started
    /// on a fresh state counts from the same sequence number again, and
    /// must not hand out an id a client still holds for an endpoint of the
    /// daemon before (see `Disconnect::id`).
    id_salt: [u8; 8],
}

impl Daemon {
    /// Opens the state directory, loads state (a corrupt file is moved aside
    /// and logged), starts the data plane, re-creates networks, re-attaches
    /// endpoints whose sandboxes still exist, drops the others (see
    /// `restore.rs` for the retries and `DaemonConfig::stopping`), and makes
    /// sure the `default` network exists.
    pub fn new(config: DaemonConfig, attacher: Box<dyn Attacher>) -> Result<Daemon, DaemonError> {
        let store = Store::open(&config.state_dir)?;
        let state = match store.load() {
            Ok(s) => s,
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!("{e}");
                State::empty()
            }
            Err(e) => return Err(e.into()),
        };
        let dns = DnsService::new(config.dns);
        let mut dataplane =
            Dataplane::start_with(config.dataplane, Arc::new(SystemClock::new()), |_| {
                Pipeline::with_gateway_services(dns.clone())
            })?;
        let punt = dataplane.punted();
        let injectors = (0..punt.shards()).map(|_| dataplane.injector()).collect();
        let stack = GatewayStack::start(
            punt,
            injectors,
            dns.clone(),
            dataplane.shared_topology(),
            config.nat_limits,
        )
        .map_err(crate::dataplane::DataplaneError::Start)?;
        let topo = dataplane.shared_topology();
        // Never forward to one of our own gateways: that would loop.
        let is_own = Arc::new(move |ip: std::net::IpAddr| {
            topo.load()
                .networks()
                .filter_map(|n| n.gateway.as_ref())
                .any(|g| g.ipv4.map(Into::into) == Some(ip) || g.ipv6.map(Into::into) == Some(ip))
        });
        let sink = GatewaySink {
            injector: dataplane.injector(),
            tcp: stack.tcp_answers(),
        };
        let forwarder = Arc::new(
            Forwarder::start(
                ForwarderConfig {
                    upstreams: config.dns_upstream,
                    ..ForwarderConfig::default()
                },
                is_own,
                Box::new(sink),
            )
            .map_err(crate::dataplane::DataplaneError::Start)?,
        );
        let _ = dns.forwarder.set(forwarder.clone());
        let mut d = Daemon {
            state: State::empty(),
            store,
            ipam: Ipam::new(config.routes),
            dataplane,
            attacher: Arc::from(attacher),
            net_ids: HashMap::new(),
            ports: HashMap::new(),
            dns,
            stack,
            forwarder,
            listeners: HashMap::new(),
            next_listener: 0,
            overlay: config.overlay,
            cluster: config.cluster,
            remote: cluster::RemoteView::new(),
            cluster_problems: std::collections::BTreeSet::new(),
            capturing: std::collections::HashSet::new(),
            id_salt: id_salt(),
        };
        d.start_overlay()?;
        d.restore(state, &config.stopping)?;
        d.rejoin_cluster();
        if d.network(DEFAULT_NETWORK).is_none() {
            d.create_network(NetworkCreate {
                name: DEFAULT_NETWORK.into(),
                ..NetworkCreate::default()
            })?;
        }
        Ok(d)
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The data plane (for tests and stats).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The gateways' DNS (records and forwarder).
    pub fn dns(&self) -> &Arc<DnsService> {
        &self.dns
    }

    /// Data-plane ports of an endpoint, by endpoint id.
    pub fn endpoint_ports(&self, id: &str) -> &[PortId] {
        self.ports.get(id).map_or(&[], Vec::as_slice)
    }

    fn network(&self, name: &str) -> Option<&Network> {
        self.state.networks.iter().find(|n| n.name == name)
    }

    /// Saves `next`, then makes it current: on failure nothing changes.
    fn commit(&mut self, next: State) -> Result<(), DaemonError> {
        self.store.save(&next)?;
        self.state = next;
        self.publish_dns();
        Ok(())
    }

    /// Applies one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::NetworkCreate(c) => self.create_network(c).map(|n| Response::success(&n)),
            Request::NetworkList => Ok(Response::success(&self.state.networks)),
            Request::NetworkInspect(b) => self.inspect(&b.name).map(|d| Response::success(&d)),
            Request::NetworkRemove(b) => {
                self.remove_network(&b.name).map(|n| Response::success(&n))
            }
            Request::Connect(c) => self.connect(c).map(|e| Response::success(&e)),
            Request::Disconnect(d) => self
                .disconnect_checked(&d.network, &d.endpoint, d.id.as_deref())
                .map(|e| Response::success(&e)),
            Request::Publish(p) => self.publish(p).map(|e| Response::success(&e)),
            Request::Unpublish(p) => self.unpublish(p).map(|e| Response::success(&e)),
            Request::Ps => Ok(Response::success(&self.ps())),
            Request::RemoteEndpoints => Ok(Response::success(&self.remote_view())),
            Request::Stats => Ok(Response::success(&self.stats())),
            Request::Trace(t) => self.trace(t).map(|r| Response::success(&r)),
            // It runs for as long as the capture does, so the API server
            // serves it without holding the daemon (`control::capture`).
            Request::Capture(_) => Err(DaemonError::Invalid(
                "capture is served by the API server, on a connection of its own".into(),
            )),
            Request::Ping => Ok(Response::success(&Pong {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            })),
        };
        result.unwrap_or_else(|e| Response::failure(api::ApiError::from(e)))
    }

    /// Creates a network (an overlay network is recorded in the cluster
    /// store, if any).
    pub fn create_network(&mut self, req: NetworkCreate) -> Result<Network, DaemonError> {
        self.create_network_from(req, true)
    }

    /// Creates a network; `record`: also record an overlay network in the
    /// cluster store (false when adopting one from it).
    fn create_network_from(
        &mut self,
        req: NetworkCreate,
        record: bool,
    ) -> Result<Network, DaemonError> {
        validate_name("network", &req.name)?;
        if self.network(&req.name).is_some() {
            return Err(DaemonError::NetworkExists(req.name));
        }
        let vni = match req.driver {
            Driver::Overlay => self.overlay_vni(&req.name, req.vni)?,
            Driver::Bridge => None,
        };
        if req.vni.is_some() && vni.is_none() {
            return Err(DaemonError::Invalid(
                "--vni applies only to overlay networks; drop it for a bridge network".into(),
            ));
        }
        if req.host_loopback && req.internal {
            return Err(DaemonError::Invalid(
                "--host-loopback needs a way out; an --internal network has none".into(),
            ));
        }
        if req
            .mac_cap
            .is_some_and(|n| n == 0 || n > super::MAX_MAC_CAP)
        {
            return Err(DaemonError::Invalid(format!(
                "mac_cap must be 1 to {}",
                super::MAX_MAC_CAP
            )));
        }
        let default_mtu = match req.driver {
            Driver::Overlay => OVERLAY_MTU,
            Driver::Bridge => DEFAULT_MTU,
        };
        let mtu = validate_mtu(req.mtu.unwrap_or(u32::from(default_mtu)))?;
        let existing: Vec<(String, _)> = self
            .state
            .networks
            .iter()
            .map(|n| (n.name.clone(), n.subnet4))
            .collect();
        let subnet4 = match req.subnet {
            Some(s) => {
                self.ipam.check_subnet(s, &existing)?;
                s
            }
            None => {
                let taken: Vec<_> = existing.iter().map(|(_, s)| *s).collect();
                self.ipam.pick_subnet(&taken)?
            }
        };
        let gateway4 = ipam::gateway4(subnet4, req.gateway)?;
        let gateway6 = match req.ipv6_subnet {
            Some(s6) => {
                ipam::check_special6(s6)?;
                if let Some(o) = self
                    .state
                    .networks
                    .iter()
                    .find(|n| n.subnet6.is_some_and(|o| o.overlaps(&s6)))
                {
                    return Err(ipam::IpamError::SubnetOverlap {
                        subnet: s6.to_string(),
                        other: o.name.clone(),
                        other_subnet: o.subnet6.map(|s| s.to_string()).unwrap_or_default(),
                    }
                    .into());
                }
                Some(ipam::gateway6(s6)?)
            }
            None => None,
        };
        if let (Some(s6), Driver::Overlay) = (req.ipv6_subnet, req.driver) {
            ipam::check_overlay_ipv6(&req.name, subnet4, s6)?;
        }
        let mut net = Network {
            name: req.name,
            driver: req.driver,
            subnet4,
            gateway4,
            subnet6: req.ipv6_subnet,
            gateway6,
            internal: req.internal,
            isolate: req.isolate,
            mtu,
            mac_cap: req.mac_cap,
            vni,
            host_loopback: req.host_loopback,
        };
        let mut recorded = false;
        if record {
            (net.vni, recorded) = self.cluster_create_network(&net)?;
        }
        if let Err(e) = self.install_network(&net) {
            // Other hosts would adopt a network that does not exist here.
            if recorded {
                self.cluster_undo_network(&net);
            }
            return Err(e);
        }
        self.publish_dns();
        Ok(net)
    }

    /// Adds a new network to the data plane and the saved state; undoes
    /// both on failure.
    fn install_network(&mut self, net: &Network) -> Result<(), DaemonError> {
        let id = self.dataplane.add_network(network_spec(net))?;
        self.net_ids.insert(net.name.clone(), id);
        let applied = self.apply_overlay(net);
        let mut next = self.state.clone();
        next.networks.push(net.clone());
        if let Err(e) = applied.and_then(|()| self.commit(next)) {
            self.net_ids.remove(&net.name);
            let _ = self.dataplane.remove_network(id);
            return Err(e);
        }
        Ok(())
    }

    fn inspect(&self, name: &str) -> Result<NetworkDetail, DaemonError> {
        let network = self
            .network(name)
            .ok_or_else(|| DaemonError::NoSuchNetwork(name.into()))?
            .clone();
        let endpoints = self
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == name)
            .cloned()
            .collect();
        Ok(NetworkDetail {
            network,
            endpoints,
            dns_domain: self.dns.table.load().settings.domain.clone(),
        })
    }

    /// Removes a network that has no endpoints.
    pub fn remove_network(&mut self, name: &str) -> Result<Network, DaemonError> {
        let net = self
            .network(name)
            .ok_or_else(|| DaemonError::NoSuchNetwork(name.into()))?
            .clone();
        if name == DEFAULT_NETWORK {
            return Err(DaemonError::DefaultNetwork);
        }
        let count = self
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == name)
            .count();
        if count > 0 {
            return Err(DaemonError::NetworkInUse {
                name: name.into(),
                count,
            });
        }
        self.cluster_remove_network(&net)?;
        self.remove_network_locally(name)
    }

    /// Forgets a network without endpoints here (the store is not told).
    fn remove_network_locally(&mut self, name: &str) -> Result<Network, DaemonError> {
        let net = self
            .network(name)
            .ok_or_else(|| DaemonError::NoSuchNetwork(name.into()))?
            .clone();
        let mut next = self.state.clone();
        next.networks.retain(|n| n.name != name);
        self.commit(next)?;
        if let Some(id) = self.net_ids.remove(name) {
            if let Err(e) = self.dataplane.remove_network(id) {
                tracing::warn!("data plane kept network {name}: {e}");
            }
        }
        Ok(net)
    }

    /// Explains what the data plane does with a described frame from an
    /// endpoint (`in=` names it by name or id on the network, or as
    /// `NETWORK/NAME`).
    pub fn trace(&self, req: api::TraceRequest) -> Result<api::TraceReply, DaemonError> {
        let net = self
            .network(&req.network)
            .ok_or_else(|| DaemonError::NoSuchNetwork(req.network.clone()))?;
        let on_net = |e: &&Endpoint| e.network == req.network;
        let ingress = req.frame.ingress.as_str();
        let name = ingress
            .strip_prefix(req.network.as_str())
            .and_then(|n| n.strip_prefix('/'))
            .unwrap_or(ingress);
        if name.contains('/') {
            return Err(DaemonError::Invalid(format!(
                "in={ingress} is not an endpoint of network {:?}; trace it on its own network",
                req.network
            )));
        }
        let ep = self
            .state
            .endpoints
            .iter()
            .filter(on_net)
            .find(|e| e.name == name || e.id == name)
            .ok_or_else(|| DaemonError::NoSuchEndpoint(format!("{}/{name}", req.network)))?;
        let port = *self
            .endpoint_ports(&ep.id)
            .first()
            .ok_or_else(|| DaemonError::NoSuchEndpoint(ep.id.clone()))?;
        let spec = &req.frame;
        let src_ip = match spec.probe.dst_ip() {
            Some(IpAddr::V6(_)) => IpAddr::V6(ep.ipv6.ok_or_else(|| {
                DaemonError::Invalid(format!(
                    "endpoint {}/{} has no IPv6 address to send from; trace IPv4, \
                     or use a network created with --ipv6-subnet",
                    ep.network, ep.name
                ))
            })?),
            _ => IpAddr::V4(ep.ipv4),
        };
        let dst = spec.dst.unwrap_or_else(|| match spec.probe {
            trace::Probe::Arp(_) | trace::Probe::Raw(_) => MacAddr::BROADCAST,
            probe => self
                .state
                .endpoints
                .iter()
                .filter(on_net)
                .find(|e| {
                    probe.dst_ip().is_some_and(|ip| {
                        ip == IpAddr::V4(e.ipv4) || Some(ip) == e.ipv6.map(IpAddr::V6)
                    })
                })
                .map_or_else(|| net.gateway_mac(), |e| e.mac),
        });
        let src = spec.src.unwrap_or(ep.mac);
        let frame = trace::build(spec.probe, src, src_ip, dst);
        let report = self.dataplane.trace(port, frame)?;
        let built = trace::FrameSpec {
            src: Some(src),
            dst: Some(dst),
            ..spec.clone()
        };
        Ok(api::TraceReply {
            frame: built.to_string(),
            report,
        })
    }

    /// Counters plus which endpoint owns each port.
    pub fn stats(&self) -> StatsReply {
        let mut endpoints = Vec::new();
        for ep in &self.state.endpoints {
            for port in self.endpoint_ports(&ep.id) {
                endpoints.push(PortOwner {
                    port: *port,
                    network: ep.network.clone(),
                    endpoint: ep.name.clone(),
                    endpoint_id: ep.id.clone(),
                });
            }
        }
        endpoints.sort_by_key(|o| o.port);
        let mut stats = self.dataplane.stats();
        self.stack_events(&mut stats.events);
        self.cluster_events(&mut stats.events);
        if let Some(n) = crate::ns::neigh::read_table_fulls() {
            stats.events.insert("host-arp-table-full".into(), n);
        }
        StatsReply { stats, endpoints }
    }
}

fn network_spec(net: &Network) -> NetworkSpec {
    NetworkSpec {
        name: net.name.clone(),
        gateway: Some(GatewayInfo {
            mac: net.gateway_mac(),
            ipv4: Some(net.gateway4),
            ipv6: net.gateway6,
        }),
        isolate: net.isolate,
        internal: net.internal,
        mac_cap: net.mac_cap,
        subnet4: Some((net.subnet4.addr(), net.subnet4.prefix())),
        subnet6: net.subnet6.map(|s| (s.addr(), s.prefix())),
        host_loopback: net.host_loopback,
    }
}
