//! The daemon's side of a cluster store: the [`ClusterStore`] seam (etcd in
//! production, a fake in tests), and the reconciliation that turns the
//! store's shared state into local networks, the data plane's remote
//! endpoints and VTEPs, and DNS records of endpoints on other hosts.
//!
//! The store's state is read from its last snapshot, which it keeps while
//! the store is unreachable: the data plane keeps forwarding with what it
//! last knew, and nothing is removed until the store answers again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::Daemon;
use crate::control::api::NetworkCreate;
pub use crate::control::cluster::EndpointRecord;
use crate::control::error::DaemonError;
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
    /// False while the store is unreachable (the snapshot is then stale).
    pub connected: bool,
}

/// What the daemon needs from a cluster store. Calls block for at most the
/// store's operation timeout.
pub trait ClusterStore: Send {
    /// This host's id in the store.
    fn host(&self) -> &str;

    /// Records an overlay network (identical records are accepted again) and
    /// returns its VNI, allocated cluster-wide when `net.vni` is `None`.
    fn create_network(&self, net: &Network) -> Result<u32, DaemonError>;

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

    /// Gives an address back.
    fn release_ip(&self, network: &str, ip: Ipv4Addr) -> Result<(), DaemonError>;

    /// Publishes one of this host's endpoints (it disappears with the host).
    fn put_endpoint(&self, ep: &EndpointRecord) -> Result<(), DaemonError>;

    /// Withdraws one of this host's endpoints.
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

/// Endpoints of other hosts, per network name.
pub(super) type RemoteView = HashMap<String, Vec<EndpointRecord>>;

impl Daemon {
    /// This host's id and VTEP, when it has a cluster store.
    fn cluster_identity(&self) -> Option<(String, SocketAddr)> {
        let store = self.cluster.as_ref()?;
        let vtep = self.overlay.as_ref()?.vtep();
        Some((store.host().to_string(), vtep))
    }

    /// Brings the local view in line with the store: adopts overlay networks
    /// created on other hosts, drops those removed there (when no local
    /// endpoint uses them), and hands every overlay network's remote
    /// endpoints to the data plane and to DNS. Does nothing destructive while
    /// the store is unreachable.
    pub fn sync_cluster(&mut self) {
        let Some(store) = self.cluster.as_ref() else {
            return;
        };
        let snap = store.snapshot();
        let me = store.host().to_string();
        if !snap.connected {
            return;
        }
        for net in &snap.networks {
            if self.network(&net.name).is_none() {
                if let Err(e) = self.adopt_network(net) {
                    tracing::warn!("cannot adopt overlay network {}: {e}", net.name);
                }
            }
        }
        let gone: Vec<String> = self
            .state
            .networks
            .iter()
            .filter(|n| n.driver == Driver::Overlay)
            .filter(|n| snap.networks.iter().all(|s| s.name != n.name))
            .filter(|n| self.state.endpoints.iter().all(|e| e.network != n.name))
            .map(|n| n.name.clone())
            .collect();
        for name in gone {
            if let Err(e) = self.remove_network_locally(&name) {
                tracing::warn!("network {name} was removed from the cluster, but: {e}");
            }
        }
        let mut remote = RemoteView::new();
        for ep in snap.endpoints.into_iter().filter(|e| e.host != me) {
            remote.entry(ep.network.clone()).or_default().push(ep);
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

    /// Records a new overlay network in the store; returns its VNI.
    pub(super) fn cluster_create_network(&self, net: &Network) -> Result<Option<u32>, DaemonError> {
        match &self.cluster {
            Some(store) if net.driver == Driver::Overlay => store.create_network(net).map(Some),
            _ => Ok(net.vni),
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
        let count = self.remote.get(&net.name).map_or(0, Vec::len);
        if count > 0 {
            return Err(DaemonError::NetworkInUse {
                name: net.name.clone(),
                count,
            });
        }
        store.remove_network(&net.name)
    }

    /// True if `name` is taken on `network` by an endpoint of another host.
    pub(super) fn remote_name_taken(&self, network: &str, name: &str) -> bool {
        self.remote
            .get(network)
            .is_some_and(|eps| eps.iter().any(|e| e.name == name))
    }

    /// Leases an address from the store for a new endpoint of an overlay
    /// network; `None` when addresses are local (no store, bridge network).
    pub(super) fn cluster_allocate(
        &self,
        net: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Option<Ipv4Addr>, DaemonError> {
        match &self.cluster {
            Some(store) if net.driver == Driver::Overlay => {
                store.allocate_ip(net, requested, owner).map(Some)
            }
            _ => Ok(None),
        }
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

    /// Withdraws a local endpoint and its address; failures are logged (the
    /// host's lease removes them anyway if it goes away).
    pub(super) fn cluster_forget_endpoint(&self, ep: &Endpoint) {
        let Some(store) = &self.cluster else {
            return;
        };
        if !self.is_overlay(&ep.network) {
            return;
        }
        if let Err(e) = store.remove_endpoint(&ep.network, &ep.name) {
            tracing::warn!(
                "cluster store kept endpoint {}/{}: {e}",
                ep.network,
                ep.name
            );
        }
        self.cluster_release_ip(&ep.network, ep.ipv4);
    }

    /// Gives an address leased for `network` back; failures are logged (the
    /// host's lease removes it anyway if it goes away).
    pub(super) fn cluster_release_ip(&self, network: &str, ip: Ipv4Addr) {
        let Some(store) = &self.cluster else {
            return;
        };
        if let Err(e) = store.release_ip(network, ip) {
            tracing::warn!("cluster store kept address {ip} of {network}: {e}");
        }
    }

    fn is_overlay(&self, network: &str) -> bool {
        self.network(network)
            .is_some_and(|n| n.driver == Driver::Overlay)
    }

    /// Remote endpoints of `network` for the data plane.
    pub(super) fn remote_endpoints(&self, network: &str) -> Vec<RemoteEndpoint> {
        self.remote
            .get(network)
            .map(|eps| eps.iter().map(EndpointRecord::remote).collect())
            .unwrap_or_default()
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
}

impl Daemon {
    /// After start: records this host's overlay networks and endpoints in the
    /// store again (a restarted daemon's records went with its old lease),
    /// then takes in the others'.
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
            match store.create_network(net) {
                Ok(vni) if Some(vni) != net.vni => tracing::warn!(
                    "network {} has VNI {vni} in the cluster store, {:?} here",
                    net.name,
                    net.vni
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot record network {}: {e}", net.name),
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
                    tracing::warn!("cannot record endpoint {}/{}: {e}", ep.network, ep.name);
                }
            }
        }
        self.sync_cluster();
    }
}
