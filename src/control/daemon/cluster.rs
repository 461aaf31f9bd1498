//! The daemon's side of a cluster store: the [`ClusterStore`] seam (etcd in
//! production, a fake in tests), and the reconciliation that turns the
//! store's shared state into local networks, the data plane's remote
//! endpoints and VTEPs, and DNS records of endpoints on other hosts, and
//! keeps this host's own records in the store in line with its endpoints.
//!
//! The store's state is read from its last snapshot, which it keeps while
//! the store is unreachable: the data plane keeps forwarding with what it
//! last knew, and nothing is removed until the store answers again.
//!
//! Endpoints of other hosts are used only on local networks of the overlay
//! driver: a bridge network that happens to share an overlay network's name
//! is this host's alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use super::Daemon;
use crate::control::api::NetworkCreate;
use crate::control::cluster::ClusterError;
pub use crate::control::cluster::{EndpointRecord, IpamLease};
use crate::control::error::DaemonError;
use crate::control::ipam::IpamError;
use crate::control::model::{Driver, Endpoint, Network};
use crate::tables::overlay::RemoteEndpoint;

impl EndpointRecord {
    /// The record of a local endpoint.
    pub fn local(ep: &Endpoint, host: &str, vtep: SocketAddr) -> EndpointRecord {
        EndpointRecord {
            network: ep.network.clone(),
            name: ep.name.clone(),
            aliases: ep.aliases.clone(),
            mac: ep.mac,
            ipv4: ep.ipv4,
            ipv6: ep.ipv6,
            host: host.to_string(),
            vtep,
        }
    }

    /// What the data plane needs of it.
    pub fn remote(&self) -> RemoteEndpoint {
        RemoteEndpoint {
            mac: self.mac,
            ipv4: Some(self.ipv4),
            ipv6: self.ipv6,
            vtep: self.vtep,
        }
    }
}

/// The cluster's shared state as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Overlay networks.
    pub networks: Vec<Network>,
    /// Endpoints of every host, this one included.
    pub endpoints: Vec<EndpointRecord>,
    /// Address leases of every host, by network, then address.
    pub leases: BTreeMap<String, BTreeMap<Ipv4Addr, IpamLease>>,
    /// False while the store is unreachable (the snapshot is then stale).
    pub connected: bool,
}

/// An overlay network as recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedNetwork {
    /// Its VNI.
    pub vni: u32,
    /// True when this call created the record, false when it was there
    /// (then it is not this host's to take back).
    pub created: bool,
}

/// What the daemon needs from a cluster store. Calls block for at most the
/// store's operation timeout.
pub trait ClusterStore: Send {
    /// This host's id in the store.
    fn host(&self) -> &str;

    /// Records an overlay network (identical records are accepted again) and
    /// returns its VNI, allocated cluster-wide when `net.vni` is `None`.
    fn create_network(&self, net: &Network) -> Result<RecordedNetwork, DaemonError>;

    /// Removes an overlay network's record and frees its VNI.
    fn remove_network(&self, name: &str) -> Result<(), DaemonError>;

    /// Leases an address of `net` to `owner` (the requested one, or the lowest
    /// free); no two hosts ever hold the same.
    fn allocate_ip(
        &self,
        net: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, DaemonError>;

    /// Gives an address back. It is not this host's any more even if this
    /// fails; the store retries a release it could not make.
    fn release_ip(&self, network: &str, ip: Ipv4Addr) -> Result<(), DaemonError>;

    /// Publishes one of this host's endpoints (it disappears with the host).
    fn put_endpoint(&self, ep: &EndpointRecord) -> Result<(), DaemonError>;

    /// Withdraws one of this host's endpoints; like `release_ip`, a failed
    /// withdrawal is retried by the store.
    fn remove_endpoint(&self, network: &str, name: &str) -> Result<(), DaemonError>;

    /// The last known shared state.
    fn snapshot(&self) -> ClusterSnapshot;

    /// A waiter for changes of the shared state, for a thread of its own
    /// (it must not hold the daemon while it waits).
    fn watch(&self) -> Box<dyn ClusterWatch>;
}

/// Waits for the cluster store's state to change.
pub trait ClusterWatch: Send {
    /// Blocks until the shared state changed (true) or `timeout` passed
    /// (false). Several changes may be reported by one wake-up.
    fn wait(&mut self, timeout: std::time::Duration) -> bool;
}

/// How often the daemon re-reads the store's state even without a change
/// notice (a notice lost across a reconnection is caught up by this).
const RESYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the thread that applies the cluster store's changes to `daemon`
/// (within a second of the store seeing them); it ends with the daemon.
pub fn spawn_cluster_sync(daemon: &std::sync::Arc<std::sync::Mutex<Daemon>>) {
    let Some(mut watch) = daemon
        .lock()
        .ok()
        .and_then(|d| d.cluster.as_ref().map(|c| c.watch()))
    else {
        return;
    };
    let weak = std::sync::Arc::downgrade(daemon);
    let spawned = std::thread::Builder::new()
        .name("sy-cluster-sync".into())
        .spawn(move || loop {
            watch.wait(RESYNC_INTERVAL);
            let Some(daemon) = weak.upgrade() else { return };
            let mut d = daemon
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            d.sync_cluster();
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the cluster sync thread: {e}");
    }
}

/// Endpoints of other hosts, per network name (never of a network that is
/// not an overlay network here).
pub(super) type RemoteView = HashMap<String, Vec<EndpointRecord>>;

/// How many addresses the store may hand out that local endpoints already
/// use (each one's lease is repaired on the way) before `connect` gives up.
const MAX_LOCAL_CLASHES: usize = 8;

impl Daemon {
    /// This host's id and VTEP, when it has a cluster store.
    fn cluster_identity(&self) -> Option<(String, SocketAddr)> {
        let store = self.cluster.as_ref()?;
        let vtep = self.overlay.as_ref()?.vtep();
        Some((store.host().to_string(), vtep))
    }

    /// Brings the local view in line with the store: adopts overlay networks
    /// created on other hosts, drops those removed there (when no local
    /// endpoint uses them), reconciles this host's own records
    /// ([`Daemon::reconcile_own`]), and hands every overlay network's remote
    /// endpoints to the data plane and to DNS. Does nothing while the store
    /// is unreachable.
    pub fn sync_cluster(&mut self) {
        let Some(store) = self.cluster.as_ref() else {
            return;
        };
        let snap = store.snapshot();
        let me = store.host().to_string();
        if !snap.connected {
            return;
        }
        let mut problems = BTreeMap::new();
        for net in &snap.networks {
            if self.network(&net.name).is_none() {
                if let Err(e) = self.adopt_network(net) {
                    problems.insert(
                        format!("adopt/{}", net.name),
                        format!(
                            "cannot adopt overlay network {} of the cluster store here \
                             (retried at every sync): {e}",
                            net.name
                        ),
                    );
                }
            }
        }
        // Overlay networks the store lacks: removed on another host when no
        // local endpoint is on them, else lost by the store (etcd started
        // empty or from an old backup), as removal needs a network unused
        // everywhere. Those are recorded again, so that their VNIs go to no
        // other network and other hosts keep them.
        let (lost, gone): (Vec<Network>, Vec<Network>) = self
            .state
            .networks
            .iter()
            .filter(|n| n.driver == Driver::Overlay)
            .filter(|n| snap.networks.iter().all(|s| s.name != n.name))
            .cloned()
            .partition(|n| self.state.endpoints.iter().any(|e| e.network == n.name));
        for net in &lost {
            match self.record_network_again(net) {
                Ok(()) => tracing::info!(
                    "recorded network {} in the cluster store again: the store had lost it",
                    net.name
                ),
                Err(why) => {
                    problems.insert(format!("lost/{}", net.name), why);
                }
            }
        }
        for Network { name, .. } in gone {
            if let Err(e) = self.remove_network_locally(&name) {
                tracing::warn!("network {name} was removed from the cluster, but: {e}");
            }
        }
        problems.append(&mut self.reconcile_own(&snap, &me));
        for net in &snap.networks {
            if self
                .network(&net.name)
                .is_some_and(|n| n.driver != Driver::Overlay)
            {
                problems.insert(
                    format!("clash/{}", net.name),
                    format!(
                        "network {} is an overlay network in the cluster store but a bridge \
                         network here: its endpoints on other hosts are not used here; \
                         rename one of them",
                        net.name
                    ),
                );
            }
        }
        self.note_problems(problems);
        let mut remote = RemoteView::new();
        for ep in snap.endpoints.into_iter().filter(|e| e.host != me) {
            if !self
                .network(&ep.network)
                .is_some_and(|n| n.driver != Driver::Overlay)
            {
                remote.entry(ep.network.clone()).or_default().push(ep);
            }
        }
        self.remote = remote;
        let overlays: Vec<Network> = self
            .state
            .networks
            .iter()
            .filter(|n| n.driver == Driver::Overlay)
            .cloned()
            .collect();
        for net in &overlays {
            if let Err(e) = self.apply_overlay(net) {
                tracing::warn!("overlay network {}: {e}", net.name);
            }
        }
        self.publish_dns();
    }

    /// Logs each problem once: those already logged by an earlier round are
    /// not logged again while they last, and are logged anew if they come
    /// back after being solved.
    fn note_problems(&mut self, problems: BTreeMap<String, String>) {
        for (key, what) in &problems {
            if !self.cluster_problems.contains(key) {
                tracing::warn!("{what}");
            }
        }
        self.cluster_problems = problems.into_keys().collect();
    }

    /// Brings this host's records in the store in line with its endpoints,
    /// which the store alone cannot: withdraws endpoint records and address
    /// leases of this host that no local endpoint matches (a withdrawal the
    /// store gave up on, an allocation whose caller timed out after etcd
    /// had committed it, records of a previous run), and leases and puts
    /// back what local overlay endpoints lack (a re-lease that failed after
    /// a restart). Returns the problems it could not solve, by key.
    fn reconcile_own(&self, snap: &ClusterSnapshot, me: &str) -> BTreeMap<String, String> {
        let mut problems = BTreeMap::new();
        let (Some(store), Some((host, vtep))) = (&self.cluster, self.cluster_identity()) else {
            return problems;
        };
        let local: Vec<&Endpoint> = self
            .state
            .endpoints
            .iter()
            .filter(|e| self.is_overlay(&e.network))
            .collect();
        let names: BTreeSet<(&str, &str)> = local
            .iter()
            .map(|e| (e.network.as_str(), e.name.as_str()))
            .collect();
        let holders: BTreeSet<(&str, Ipv4Addr, &str)> = local
            .iter()
            .map(|e| (e.network.as_str(), e.ipv4, e.id.as_str()))
            .collect();
        let mut recorded = BTreeMap::new();
        for rec in snap.endpoints.iter().filter(|e| e.host == me) {
            if names.contains(&(rec.network.as_str(), rec.name.as_str())) {
                recorded.insert((rec.network.as_str(), rec.name.as_str()), rec);
                continue;
            }
            match store.remove_endpoint(&rec.network, &rec.name) {
                Ok(()) => tracing::info!(
                    "withdrew endpoint {}/{} from the cluster store: it is not here any more",
                    rec.network,
                    rec.name
                ),
                Err(e) => {
                    problems.insert(
                        format!("stale/{}/{}", rec.network, rec.name),
                        format!(
                            "cannot withdraw stale endpoint {}/{} from the cluster store: {e}",
                            rec.network, rec.name
                        ),
                    );
                }
            }
        }
        let mut released = BTreeSet::new();
        for (network, leases) in &snap.leases {
            for (ip, lease) in leases.iter().filter(|(_, l)| l.host == me) {
                if holders.contains(&(network.as_str(), *ip, lease.endpoint.as_str())) {
                    continue;
                }
                match store.release_ip(network, *ip) {
                    Ok(()) => {
                        released.insert((network.as_str(), *ip));
                        tracing::info!(
                            "released address {ip} of {network} in the cluster store: \
                             no endpoint here holds it"
                        );
                    }
                    Err(e) => {
                        problems.insert(
                            format!("stale/{network}/{ip}"),
                            format!(
                                "cannot release stale address {ip} of {network} in the \
                                 cluster store: {e}"
                            ),
                        );
                    }
                }
            }
        }
        for ep in local {
            let Some(net) = self.network(&ep.network) else {
                continue;
            };
            let held = !released.contains(&(ep.network.as_str(), ep.ipv4))
                && snap
                    .leases
                    .get(&ep.network)
                    .and_then(|m| m.get(&ep.ipv4))
                    .is_some_and(|l| l.host == me && l.endpoint == ep.id);
            if !held {
                if let Err(e) = store.allocate_ip(net, Some(ep.ipv4), &ep.id) {
                    problems.insert(
                        format!("lease/{}", ep.id),
                        format!(
                            "cannot lease address {} of endpoint {}/{} in the cluster store: \
                             {e}",
                            ep.ipv4, ep.network, ep.name
                        ),
                    );
                }
            }
            let record = EndpointRecord::local(ep, &host, vtep);
            let key = (ep.network.as_str(), ep.name.as_str());
            if recorded.get(&key) != Some(&&record) {
                if let Err(e) = store.put_endpoint(&record) {
                    problems.insert(
                        format!("record/{}", ep.id),
                        format!(
                            "cannot record endpoint {}/{} in the cluster store: {e}",
                            ep.network, ep.name
                        ),
                    );
                }
            }
        }
        problems
    }

    /// Records a local overlay network in the store (again); says what is
    /// wrong when the store refuses it or holds it with another VNI.
    fn record_network_again(&self, net: &Network) -> Result<(), String> {
        let Some(store) = &self.cluster else {
            return Ok(());
        };
        match store.create_network(net) {
            Ok(r) if Some(r.vni) != net.vni => Err(format!(
                "network {} has VNI {} in the cluster store but {:?} here; remove and \
                 create it again on this host",
                net.name, r.vni, net.vni
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot record network {}: {e}", net.name)),
        }
    }

    /// Creates locally an overlay network another host recorded.
    fn adopt_network(&mut self, net: &Network) -> Result<(), DaemonError> {
        self.create_network_from(
            NetworkCreate {
                name: net.name.clone(),
                driver: Driver::Overlay,
                subnet: Some(net.subnet4),
                gateway: Some(net.gateway4),
                ipv6_subnet: net.subnet6,
                internal: net.internal,
                isolate: net.isolate,
                vni: net.vni,
                mtu: Some(u32::from(net.mtu)),
                mac_cap: net.mac_cap,
                host_loopback: net.host_loopback,
            },
            false,
        )
        .map(|_| ())
    }

    /// Records a new overlay network in the store; returns its VNI and
    /// whether this call created the record.
    pub(super) fn cluster_create_network(
        &self,
        net: &Network,
    ) -> Result<(Option<u32>, bool), DaemonError> {
        match &self.cluster {
            Some(store) if net.driver == Driver::Overlay => {
                let recorded = store.create_network(net)?;
                Ok((Some(recorded.vni), recorded.created))
            }
            _ => Ok((net.vni, false)),
        }
    }

    /// Takes back the record of a network this host just created in the
    /// store when creating it here failed; a failure is logged (the record
    /// then stays, and this host adopts the network once it can).
    pub(super) fn cluster_undo_network(&self, net: &Network) {
        let Some(store) = &self.cluster else {
            return;
        };
        if let Err(e) = store.remove_network(&net.name) {
            tracing::warn!(
                "network {} could not be created here, and stays in the cluster store: {e}",
                net.name
            );
        }
    }

    /// Checks that an overlay network has no endpoints on other hosts, and
    /// withdraws its record.
    pub(super) fn cluster_remove_network(&self, net: &Network) -> Result<(), DaemonError> {
        let Some(store) = &self.cluster else {
            return Ok(());
        };
        if net.driver != Driver::Overlay {
            return Ok(());
        }
        let count = self.remote_of(&net.name).len();
        if count > 0 {
            return Err(DaemonError::NetworkInUse {
                name: net.name.clone(),
                count,
            });
        }
        store.remove_network(&net.name)
    }

    /// Endpoints of other hosts on `network`; none unless it is a local
    /// overlay network.
    pub(super) fn remote_of(&self, network: &str) -> &[EndpointRecord] {
        if !self.is_overlay(network) {
            return &[];
        }
        self.remote.get(network).map_or(&[], Vec::as_slice)
    }

    /// True if `name` is taken on `network` by an endpoint of another host.
    pub(super) fn remote_name_taken(&self, network: &str, name: &str) -> bool {
        self.remote_of(network).iter().any(|e| e.name == name)
    }

    /// Leases an address from the store for a new endpoint of an overlay
    /// network; `None` when addresses are local (no store, bridge network).
    /// The store never hands out an address a local endpoint uses unless it
    /// lost that endpoint's lease (a re-lease that failed after a restart):
    /// such an address goes back to its endpoint and the next one is taken;
    /// a requested one fails as in use.
    pub(super) fn cluster_allocate(
        &self,
        net: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Option<Ipv4Addr>, DaemonError> {
        let Some(store) = self
            .cluster
            .as_ref()
            .filter(|_| net.driver == Driver::Overlay)
        else {
            return Ok(None);
        };
        let holder = |ip: Ipv4Addr| {
            self.state
                .endpoints
                .iter()
                .find(|e| e.network == net.name && e.ipv4 == ip)
        };
        if let Some(ip) = requested.filter(|ip| holder(*ip).is_some()) {
            return Err(IpamError::InUse {
                ip: ip.to_string(),
                network: net.name.clone(),
            }
            .into());
        }
        for _ in 0..MAX_LOCAL_CLASHES {
            let ip = store.allocate_ip(net, requested, owner)?;
            let Some(ep) = holder(ip) else {
                return Ok(Some(ip));
            };
            tracing::warn!(
                "the cluster store had lost the lease of {ip} of endpoint {}/{}; leasing it again",
                ep.network,
                ep.name
            );
            let repaired = store
                .release_ip(&net.name, ip)
                .and_then(|()| store.allocate_ip(net, Some(ip), &ep.id));
            if let Err(e) = repaired {
                tracing::warn!("cannot lease {ip} again ({e}); the cluster sync retries");
            }
        }
        Err(ClusterError::Contention("allocating an address no local endpoint uses").into())
    }

    /// Publishes a new local endpoint of an overlay network.
    pub(super) fn cluster_put_endpoint(&self, ep: &Endpoint) -> Result<(), DaemonError> {
        let Some((host, vtep)) = self.cluster_identity() else {
            return Ok(());
        };
        if !self.is_overlay(&ep.network) {
            return Ok(());
        }
        if let Some(store) = &self.cluster {
            store.put_endpoint(&EndpointRecord::local(ep, &host, vtep))?;
        }
        Ok(())
    }

    /// Withdraws a local endpoint and its address; failures are logged: the
    /// store retries them, and the cluster sync withdraws whatever of this
    /// host's no local endpoint matches.
    pub(super) fn cluster_forget_endpoint(&self, ep: &Endpoint) {
        let Some(store) = &self.cluster else {
            return;
        };
        if !self.is_overlay(&ep.network) {
            return;
        }
        if let Err(e) = store.remove_endpoint(&ep.network, &ep.name) {
            tracing::warn!(
                "endpoint {}/{} is withdrawn from the cluster store later: {e}",
                ep.network,
                ep.name
            );
        }
        self.cluster_release_ip(&ep.network, ep.ipv4);
    }

    /// Gives an address leased for `network` back; failures are logged (and
    /// retried, as in `cluster_forget_endpoint`).
    pub(super) fn cluster_release_ip(&self, network: &str, ip: Ipv4Addr) {
        let Some(store) = &self.cluster else {
            return;
        };
        if let Err(e) = store.release_ip(network, ip) {
            tracing::warn!("address {ip} of {network} is released in the cluster store later: {e}");
        }
    }

    fn is_overlay(&self, network: &str) -> bool {
        self.network(network)
            .is_some_and(|n| n.driver == Driver::Overlay)
    }

    /// Remote endpoints of `network` for the data plane.
    pub(super) fn remote_endpoints(&self, network: &str) -> Vec<RemoteEndpoint> {
        self.remote_of(network)
            .iter()
            .map(EndpointRecord::remote)
            .collect()
    }

    /// Endpoints of other hosts (for `switchyard ps` and DNS).
    pub fn remote_view(&self) -> Vec<EndpointRecord> {
        let mut all: Vec<EndpointRecord> = self.remote.values().flatten().cloned().collect();
        all.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        all
    }

    /// Adds the cluster store's state to `stats` events: whether it is
    /// reachable now, and how many endpoints of other hosts are known.
    pub(super) fn cluster_events(&self, events: &mut std::collections::BTreeMap<String, u64>) {
        if let Some(store) = &self.cluster {
            events.insert(
                "cluster-connected".into(),
                u64::from(store.snapshot().connected),
            );
            events.insert(
                "cluster-remote-endpoints".into(),
                self.remote.values().map(|v| v.len() as u64).sum(),
            );
        }
    }

    /// True when the daemon has a cluster store.
    pub fn has_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Leaves the cluster store at a clean stop: closing it revokes this
    /// host's lease, so other hosts drop its endpoints and addresses at
    /// once. The daemon's stop calls it: dropping the daemon would do the
    /// same, but an API client still connected holds the daemon until the
    /// process has exited, and then the records stay until the lease TTL.
    pub fn leave_cluster(&mut self) {
        if self.cluster.take().is_some() {
            tracing::info!("left the cluster store");
        }
    }
}

impl Daemon {
    /// After start: records this host's overlay networks and endpoints in the
    /// store again (a restarted daemon's records went with its old lease, or
    /// go with it when it expires: claiming them again moves them to this
    /// run's lease), then takes in the others'. What fails here is retried
    /// by every sync ([`Daemon::reconcile_own`]).
    pub(super) fn rejoin_cluster(&mut self) {
        let Some(store) = &self.cluster else {
            return;
        };
        let Some((host, vtep)) = self.cluster_identity() else {
            return;
        };
        for net in self
            .state
            .networks
            .iter()
            .filter(|n| n.driver == Driver::Overlay)
        {
            if let Err(why) = self.record_network_again(net) {
                tracing::warn!("{why}");
            }
            for ep in self
                .state
                .endpoints
                .iter()
                .filter(|e| e.network == net.name)
            {
                let kept = store
                    .allocate_ip(net, Some(ep.ipv4), &ep.id)
                    .and_then(|_| store.put_endpoint(&EndpointRecord::local(ep, &host, vtep)));
                if let Err(e) = kept {
                    tracing::warn!(
                        "cannot record endpoint {}/{}: {e}; retrying in the background",
                        ep.network,
                        ep.name
                    );
                }
            }
        }
        self.sync_cluster();
    }
}
