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

mod records;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

pub use crate::control::cluster::{EndpointRecord, IpamLease};
use crate::control::error::DaemonError;
use crate::control::model::{Endpoint, Network};
use crate::tables::overlay::RemoteEndpoint;

pub use sync::spawn_cluster_sync;

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

/// Endpoints of other hosts, per network name (never of a network that is
/// not an overlay network here).
pub(super) type RemoteView = HashMap<String, Vec<EndpointRecord>>;
