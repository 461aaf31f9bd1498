//! What a local change does in the cluster store: creating or removing an
//! overlay network, allocating and releasing addresses, recording and
//! forgetting endpoints, and what the store tells the rest of the daemon
//! (remote endpoints, events).

use std::net::Ipv4Addr;

use super::super::Daemon;
use super::EndpointRecord;
use crate::control::cluster::ClusterError;
use crate::control::error::DaemonError;
use crate::control::ipam::IpamError;
use crate::control::model::{Driver, Endpoint, Network};
use crate::tables::overlay::RemoteEndpoint;

/// How many addresses the store may hand out that local endpoints already
/// use (each one's lease is repaired on the way) before `connect` gives up.
const MAX_LOCAL_CLASHES: usize = 8;

impl Daemon {
    /// Records a new overlay network in the store; returns its VNI and
    /// whether this call created the record.
    pub(in crate::control::daemon) fn cluster_create_network(
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
    pub(in crate::control::daemon) fn cluster_undo_network(&self, net: &Network) {
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
    pub(in crate::control::daemon) fn cluster_remove_network(
        &self,
        net: &Network,
    ) -> Result<(), DaemonError> {
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
    pub(in crate::control::daemon) fn remote_of(&self, network: &str) -> &[EndpointRecord] {
        if !self.is_overlay(network) {
            return &[];
        }
        self.remote.get(network).map_or(&[], Vec::as_slice)
    }

    /// True if `name` is taken on `network` by an endpoint of another host.
    pub(in crate::control::daemon) fn remote_name_taken(&self, network: &str, name: &str) -> bool {
        self.remote_of(network).iter().any(|e| e.name == name)
    }

    /// Leases an address from the store for a new endpoint of an overlay
    /// network; `None` when addresses are local (no store, bridge network).
    /// The store never hands out an address a local endpoint uses unless it
    /// lost that endpoint's lease (a re-lease that failed after a restart):
    /// such an address goes back to its endpoint and the next one is taken;
    /// a requested one fails as in use.
    pub(in crate::control::daemon) fn cluster_allocate(
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
    pub(in crate::control::daemon) fn cluster_put_endpoint(
        &self,
        ep: &Endpoint,
    ) -> Result<(), DaemonError> {
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
    pub(in crate::control::daemon) fn cluster_forget_endpoint(&self, ep: &Endpoint) {
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
    pub(in crate::control::daemon) fn cluster_release_ip(&self, network: &str, ip: Ipv4Addr) {
        let Some(store) = &self.cluster else {
            return;
        };
        if let Err(e) = store.release_ip(network, ip) {
            tracing::warn!("address {ip} of {network} is released in the cluster store later: {e}");
        }
    }

    pub(in crate::control::daemon) fn is_overlay(&self, network: &str) -> bool {
        self.network(network)
            .is_some_and(|n| n.driver == Driver::Overlay)
    }

    /// Remote endpoints of `network` for the data plane.
    pub(in crate::control::daemon) fn remote_endpoints(
        &self,
        network: &str,
    ) -> Vec<RemoteEndpoint> {
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
    pub(in crate::control::daemon) fn cluster_events(
        &self,
        events: &mut std::collections::BTreeMap<String, u64>,
    ) {
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
