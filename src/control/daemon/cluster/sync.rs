//! Reconciliation with the cluster store: the thread that applies the
//! store's changes, adopting and dropping overlay networks, keeping this
//! host's own records in line with its endpoints, and recording them all
//! again after a start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use super::super::Daemon;
use super::{ClusterSnapshot, EndpointRecord, RemoteView};
use crate::control::api::NetworkCreate;
use crate::control::error::DaemonError;
use crate::control::model::{Driver, Endpoint, Network};

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

impl Daemon {
    /// This host's id and VTEP, when it has a cluster store.
    pub(super) fn cluster_identity(&self) -> Option<(String, SocketAddr)> {
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
}

impl Daemon {
    /// After start: records this host's overlay networks and endpoints in the
    /// store again (a restarted daemon's records went with its old lease, or
    /// go with it when it expires: claiming them again moves them to this
    /// run's lease), then takes in the others'. What fails here is retried
    /// by every sync ([`Daemon::reconcile_own`]).
    pub(in crate::control::daemon) fn rejoin_cluster(&mut self) {
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
