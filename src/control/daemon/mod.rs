//! The daemon's state machine: owns the model, IPAM, the store, the attacher
//! and the [`Dataplane`], and applies requests so that each one either takes
//! effect everywhere (data plane, sandbox, disk, memory) or nowhere.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

mod cluster;
mod etcd_store;
mod gateway;
mod overlay;
mod publish;

pub use cluster::{
    spawn_cluster_sync, ClusterSnapshot, ClusterStore, ClusterWatch, EndpointRecord,
};
pub use overlay::{parse_peer, OverlaySettings, OVERLAY_MTU};

use super::api::{
    self, NetworkCreate, NetworkDetail, Pong, PortOwner, Request, Response, StatsReply,
};
use super::attach::{netns_file, AttachSpec, Attacher};
use super::error::DaemonError;
use super::ipam::{self, Ipam, RouteSource};
use super::model::{
    endpoint_mac, fnv1a, validate_mtu, validate_name, Driver, Endpoint, Network, Publication,
    DEFAULT_MTU,
};
use super::store::{State, Store, StoreError};
use super::trace;
use crate::clock::SystemClock;
use crate::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use crate::dns::forward::{Forwarder, ForwarderConfig, UpstreamSource};
use crate::dns::records::DnsSettings;
use crate::dns::{DnsService, ReplyRoute};
use crate::gateway::dns_reply::GatewaySink;
use crate::gateway::stack::GatewayStack;
use crate::pipeline::Pipeline;
use crate::ports::PortId;
use crate::tables::topology::{GatewayInfo, NetworkId, PortSecurity};
use crate::wire::MacAddr;

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
    listeners: HashMap<(String, Publication), Vec<u64>>,
    next_listener: u64,
    overlay: Option<OverlaySettings>,
    cluster: Option<Box<dyn ClusterStore>>,
    /// Endpoints of other hosts, from the cluster store.
    remote: cluster::RemoteView,
}

impl Daemon {
    /// Opens the state directory, loads state (a corrupt file is moved aside
    /// and logged), starts the data plane, re-creates networks, re-attaches
    /// endpoints whose sandboxes still exist, drops the others, and makes
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
        };
        d.start_overlay()?;
        d.restore(state)?;
        d.rejoin_cluster();
        if d.network(DEFAULT_NETWORK).is_none() {
            d.create_network(NetworkCreate {
                name: DEFAULT_NETWORK.into(),
                ..NetworkCreate::default()
            })?;
        }
        Ok(d)
    }

    fn restore(&mut self, loaded: State) -> Result<(), DaemonError> {
        let mut state = loaded.clone();
        for net in &loaded.networks {
            let id = self.dataplane.add_network(network_spec(net))?;
            self.net_ids.insert(net.name.clone(), id);
            self.apply_overlay(net)?;
        }
        state.endpoints.clear();
        for ep in loaded.endpoints.iter().cloned() {
            let Some(net) = loaded.networks.iter().find(|n| n.name == ep.network) else {
                tracing::warn!(
                    "dropping endpoint {} of unknown network {}",
                    ep.name,
                    ep.network
                );
                continue;
            };
            if self.attacher.namespace_id(&ep.sandbox) != Some(ep.netns_id) {
                tracing::warn!(
                    "sandbox {} of endpoint {}/{} is gone; released {}",
                    ep.sandbox,
                    ep.network,
                    ep.name,
                    ep.ipv4
                );
                continue;
            }
            match self.reattach_ports(&ep, net) {
                Ok(ports) => {
                    self.ports.insert(ep.id.clone(), ports);
                    for p in &ep.publications {
                        match self.bind_publication(&ep, p) {
                            Ok(bound) => self.serve_publication(&ep.id, *p, bound),
                            Err(e) => tracing::warn!("endpoint {}/{}: {e}", ep.network, ep.name),
                        }
                    }
                    state.endpoints.push(ep);
                }
                Err(e) => tracing::warn!(
                    "cannot re-attach endpoint {}/{}: {e}; released {}",
                    ep.network,
                    ep.name,
                    ep.ipv4
                ),
            }
        }
        if state != loaded {
            self.store.save(&state)?;
        }
        self.state = state;
        self.publish_dns();
        Ok(())
    }

    /// Re-creates an endpoint's interface after a restart. The previous
    /// daemon's TAP disappears when its fds close, but the kernel may still be
    /// unregistering it (its name taken) for a moment, so failures are retried
    /// for up to three seconds.
    fn reattach_ports(&mut self, ep: &Endpoint, net: &Network) -> Result<Vec<PortId>, DaemonError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match self.attach_ports(ep, net) {
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!("re-attaching {}/{}: {e}; retrying", ep.network, ep.name);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => return r,
            }
        }
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
                .disconnect(&d.network, &d.endpoint)
                .map(|e| Response::success(&e)),
            Request::Publish(p) => self.publish(p).map(|e| Response::success(&e)),
            Request::Unpublish(p) => self.unpublish(p).map(|e| Response::success(&e)),
            Request::Ps => Ok(Response::success(&self.state.endpoints)),
            Request::RemoteEndpoints => Ok(Response::success(&self.remote_view())),
            Request::Stats => Ok(Response::success(&self.stats())),
            Request::Trace(t) => self.trace(t).map(|r| Response::success(&r)),
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
        if record {
            net.vni = self.cluster_create_network(&net)?;
        }
        let id = self.dataplane.add_network(network_spec(&net))?;
        self.net_ids.insert(net.name.clone(), id);
        let applied = self.apply_overlay(&net);
        let mut next = self.state.clone();
        next.networks.push(net.clone());
        if let Err(e) = applied.and_then(|()| self.commit(next)) {
            self.net_ids.remove(&net.name);
            let _ = self.dataplane.remove_network(id);
            return Err(e);
        }
        self.publish_dns();
        Ok(net)
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

    /// Connects a sandbox to a network.
    pub fn connect(&mut self, req: api::Connect) -> Result<Endpoint, DaemonError> {
        let net = self
            .network(&req.network)
            .ok_or_else(|| DaemonError::NoSuchNetwork(req.network.clone()))?
            .clone();
        let on_net: Vec<&Endpoint> = self
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == net.name)
            .collect();
        let name = match req.name {
            Some(n) => n,
            None => (1..)
                .map(|i| format!("ep{i}"))
                .find(|n| on_net.iter().all(|e| &e.name != n))
                .unwrap_or_default(),
        };
        validate_name("endpoint", &name)?;
        for a in &req.aliases {
            validate_name("alias", a)?;
        }
        if on_net.iter().any(|e| e.name == name) || self.remote_name_taken(&net.name, &name) {
            return Err(DaemonError::EndpointExists {
                network: net.name.clone(),
                name,
            });
        }
        let netns_id =
            self.attacher
                .namespace_id(&req.target)
                .ok_or_else(|| DaemonError::SandboxGone {
                    target: req.target.to_string(),
                    path: netns_file(&req.target).display().to_string(),
                })?;
        if let Some(e) = on_net.iter().find(|e| e.netns_id == netns_id) {
            return Err(DaemonError::AlreadyConnected {
                target: req.target.to_string(),
                network: net.name.clone(),
                endpoint: e.name.clone(),
            });
        }
        let siblings: Vec<&Endpoint> = self
            .state
            .endpoints
            .iter()
            .filter(|e| e.netns_id == netns_id)
            .collect();
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| siblings.iter().all(|e| &e.ifname != n))
            .unwrap_or_default();
        let used4: BTreeSet<_> = on_net.iter().map(|e| e.ipv4).collect();
        let seq = self.state.next_seq;
        let id = format!(
            "{:012x}",
            fnv1a(&[net.name.as_bytes(), name.as_bytes(), &seq.to_be_bytes()]) >> 16
        );
        let mut publications: Vec<Publication> = Vec::new();
        for p in req.publish {
            self.check_publication(&p)?;
            if !publications.contains(&p) {
                publications.push(p);
            }
        }
        let ipv6 = match (net.subnet6, net.gateway6) {
            (Some(s6), Some(g6)) => {
                let used6: BTreeSet<_> = on_net.iter().filter_map(|e| e.ipv6).collect();
                Some(ipam::allocate6(&net.name, s6, g6, &used6)?)
            }
            _ => None,
        };
        // On an overlay, hosts choose MACs independently: the host's address
        // keeps two hosts' endpoints of the same name apart.
        let mac_key = match (&self.overlay, net.driver) {
            (Some(o), Driver::Overlay) => format!("{name}@{}", o.advertise),
            _ => name.clone(),
        };
        let mac = (0..)
            .map(|salt| endpoint_mac(&net.name, &mac_key, salt))
            .find(|m| on_net.iter().all(|e| e.mac != *m))
            .unwrap_or_else(|| endpoint_mac(&net.name, &mac_key, 0));
        // Last, as the store's lease must be given back on any later failure.
        let leased = self.cluster_allocate(&net, req.ip, &id)?;
        let ipv4 = match leased {
            Some(ip) => ip,
            None => {
                let stripe = self.address_stripe(&net);
                ipam::allocate4_striped(
                    &net.name,
                    net.subnet4,
                    net.gateway4,
                    &used4,
                    req.ip,
                    stripe,
                )?
            }
        };
        let ep = Endpoint {
            id,
            name,
            network: net.name.clone(),
            aliases: req.aliases,
            sandbox: req.target,
            netns_id,
            ifname,
            mac,
            ipv4,
            ipv6,
            default_route: siblings.is_empty(),
            publications,
            port_security: req.port_security,
        };
        let attached = self.attach_endpoint(&ep, &net, seq);
        if let Err(e) = &attached {
            if leased.is_some() {
                self.cluster_forget_endpoint(&ep);
            }
            tracing::debug!("connecting {}/{} failed: {e}", ep.network, ep.name);
        } else {
            // The host's ARP table is shared by every namespace: warn before
            // the sandboxes outgrow it (sends fail with ENOBUFS, unseen here).
            let mut sizes = std::collections::BTreeMap::<&str, usize>::new();
            for e in &self.state.endpoints {
                *sizes.entry(e.network.as_str()).or_default() += 1;
            }
            crate::ns::neigh::warn_if_short(sizes.into_values());
        }
        attached.map(|()| ep)
    }

    /// Attaches a new endpoint, binds its publications, saves it and
    /// publishes it to the cluster store; undoes everything on failure.
    fn attach_endpoint(
        &mut self,
        ep: &Endpoint,
        net: &Network,
        seq: u64,
    ) -> Result<(), DaemonError> {
        let ports = self.attach_ports(ep, net)?;
        self.ports.insert(ep.id.clone(), ports.clone());
        let mut bound = Vec::new();
        for p in &ep.publications {
            match self.bind_publication(ep, p) {
                Ok(b) => bound.push((*p, b)),
                Err(e) => {
                    self.ports.remove(&ep.id);
                    self.release_ports(ep, ports);
                    return Err(e);
                }
            }
        }
        let mut next = self.state.clone();
        next.endpoints.push(ep.clone());
        next.next_seq = seq + 1;
        if let Err(e) = self
            .cluster_put_endpoint(ep)
            .and_then(|()| self.commit(next))
        {
            self.ports.remove(&ep.id);
            self.release_ports(ep, ports);
            return Err(e);
        }
        for (p, b) in bound {
            self.serve_publication(&ep.id, p, b);
        }
        Ok(())
    }

    /// Creates the endpoint's interface and switches its ports; on failure
    /// undoes whatever it did.
    fn attach_ports(&mut self, ep: &Endpoint, net: &Network) -> Result<Vec<PortId>, DaemonError> {
        let network = *self
            .net_ids
            .get(&net.name)
            .ok_or_else(|| DaemonError::NoSuchNetwork(net.name.clone()))?;
        let spec = AttachSpec {
            target: ep.sandbox.clone(),
            ifname: ep.ifname.clone(),
            mac: ep.mac,
            ipv4: Some((ep.ipv4, net.subnet4.prefix())),
            ipv6: ep.ipv6.zip(net.subnet6.map(|s| s.prefix())),
            mtu: net.mtu,
            gateway4: Some(net.gateway4),
            gateway6: net.gateway6,
            default_route: ep.default_route,
        };
        let attached = self
            .attacher
            .attach(&spec)
            .map_err(|source| DaemonError::Attach {
                target: ep.sandbox.to_string(),
                network: net.name.clone(),
                source,
            })?;
        // Without port security, every field empty: any source passes.
        let security = if ep.port_security {
            PortSecurity {
                mac: Some(ep.mac),
                ipv4: vec![ep.ipv4],
                ipv6: ep.ipv6.into_iter().collect(),
            }
        } else {
            PortSecurity::default()
        };
        let spec = PortSpec {
            network,
            security,
            worker: None,
        };
        // One port, one queue per worker: no frame to or from it crosses
        // between workers.
        let id = self.dataplane.add_port_queues(spec, attached)?;
        Ok(vec![id])
    }

    /// Takes the ports out of the data plane (closing them) and removes the
    /// interface, logging failures: teardown keeps going.
    fn release_ports(&mut self, ep: &Endpoint, ports: Vec<PortId>) {
        for id in ports {
            if let Err(e) = self.dataplane.remove_port(id) {
                tracing::warn!("removing port {id} of endpoint {}: {e}", ep.name);
            }
        }
        if let Err(e) = self.attacher.detach(&ep.sandbox, &ep.ifname) {
            tracing::warn!("removing {} from {}: {e}", ep.ifname, ep.sandbox);
        }
    }

    /// Disconnects endpoint `endpoint` (name or id) from `network`.
    pub fn disconnect(&mut self, network: &str, endpoint: &str) -> Result<Endpoint, DaemonError> {
        if self.network(network).is_none() {
            return Err(DaemonError::NoSuchNetwork(network.into()));
        }
        let ep = self
            .state
            .endpoints
            .iter()
            .find(|e| e.network == network && (e.name == endpoint || e.id == endpoint))
            .cloned()
            .ok_or_else(|| DaemonError::NoSuchEndpoint(format!("{network}/{endpoint}")))?;
        let mut next = self.state.clone();
        next.endpoints.retain(|e| e.id != ep.id);
        self.commit(next)?;
        self.cluster_forget_endpoint(&ep);
        self.close_publications(&ep.id, None);
        if let Some(&network) = self.net_ids.get(&ep.network) {
            // Its flows must not pass to the next sandbox given its address.
            self.stack.forget(network, ep.ipv4.into());
            if let Some(ip6) = ep.ipv6 {
                self.stack.forget(network, ip6.into());
            }
        }
        let ports = self.ports.remove(&ep.id).unwrap_or_default();
        self.release_ports(&ep, ports);
        Ok(ep)
    }

    /// Explains what the data plane does with a described frame from an
    /// endpoint.
    pub fn trace(&self, req: api::TraceRequest) -> Result<api::TraceReply, DaemonError> {
        let net = self
            .network(&req.network)
            .ok_or_else(|| DaemonError::NoSuchNetwork(req.network.clone()))?;
        let on_net = |e: &&Endpoint| e.network == req.network;
        let ep = self
            .state
            .endpoints
            .iter()
            .filter(on_net)
            .find(|e| e.name == req.frame.ingress || e.id == req.frame.ingress)
            .ok_or_else(|| {
                DaemonError::NoSuchEndpoint(format!("{}/{}", req.network, req.frame.ingress))
            })?;
        let port = *self
            .endpoint_ports(&ep.id)
            .first()
            .ok_or_else(|| DaemonError::NoSuchEndpoint(ep.id.clone()))?;
        let spec = &req.frame;
        let dst = spec.dst.unwrap_or_else(|| match spec.probe {
            trace::Probe::Arp(_) | trace::Probe::Raw(_) => MacAddr::BROADCAST,
            probe => self
                .state
                .endpoints
                .iter()
                .filter(on_net)
                .find(|e| Some(e.ipv4) == probe.dst_ip())
                .map_or_else(|| net.gateway_mac(), |e| e.mac),
        });
        let src = spec.src.unwrap_or(ep.mac);
        let frame = trace::build(spec.probe, src, ep.ipv4, dst);
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

    /// Disconnects endpoints whose sandbox no longer exists (the process
    /// exited or was killed without detaching) and returns them, so their
    /// addresses and ports are freed without waiting for a restart.
    pub fn reap_vanished(&mut self) -> Vec<Endpoint> {
        let gone: Vec<Endpoint> = self
            .state
            .endpoints
            .iter()
            .filter(|ep| self.attacher.namespace_id(&ep.sandbox) != Some(ep.netns_id))
            .cloned()
            .collect();
        let mut reaped = Vec::new();
        for ep in gone {
            match self.disconnect(&ep.network, &ep.id) {
                Ok(ep) => {
                    tracing::info!(
                        "sandbox {} of endpoint {}/{} is gone; released {}",
                        ep.sandbox,
                        ep.network,
                        ep.name,
                        ep.ipv4
                    );
                    reaped.push(ep);
                }
                Err(e) => tracing::warn!("cannot release vanished endpoint {}: {e}", ep.id),
            }
        }
        reaped
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
