//! The etcd cluster store behind the daemon's [`ClusterStore`] seam: maps the
//! model's networks to [`NetworkRecord`]s and back, and turns the store's
//! event stream into change notices for the sync thread.

use std::net::Ipv4Addr;
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError};

use super::cluster::{ClusterSnapshot, ClusterStore, ClusterWatch, RecordedNetwork};
use crate::control::cluster::{Cluster, ClusterEvent, EndpointRecord, NetworkRecord};
use crate::control::error::DaemonError;
use crate::control::ipam;
use crate::control::model::{Driver, Network};

fn record_of(net: &Network) -> NetworkRecord {
    NetworkRecord {
        name: net.name.clone(),
        subnet: net.subnet4,
        gateway: net.gateway4,
        subnet6: net.subnet6,
        vni: net.vni,
        mtu: net.mtu,
        internal: net.internal,
        isolate: net.isolate,
        mac_cap: net.mac_cap.map(|n| n as u64),
        host_loopback: net.host_loopback,
    }
}

fn network_of(rec: &NetworkRecord) -> Network {
    Network {
        name: rec.name.clone(),
        driver: Driver::Overlay,
        subnet4: rec.subnet,
        gateway4: rec.gateway,
        subnet6: rec.subnet6,
        gateway6: rec.subnet6.and_then(|s| ipam::gateway6(s).ok()),
        internal: rec.internal,
        isolate: rec.isolate,
        mtu: rec.mtu,
        mac_cap: rec.mac_cap.and_then(|n| usize::try_from(n).ok()),
        vni: rec.vni,
        host_loopback: rec.host_loopback,
    }
}

impl ClusterStore for Cluster {
    fn host(&self) -> &str {
        &self.config().host
    }

    fn create_network(&self, net: &Network) -> Result<RecordedNetwork, DaemonError> {
        let (stored, created) = Cluster::claim_network(self, record_of(net))?;
        let vni = stored.vni.ok_or_else(|| {
            DaemonError::Invalid(format!(
                "the cluster store holds network {} without a VNI",
                net.name
            ))
        })?;
        Ok(RecordedNetwork { vni, created })
    }

    fn remove_network(&self, name: &str) -> Result<(), DaemonError> {
        Ok(Cluster::remove_network(self, name)?)
    }

    fn allocate_ip(
        &self,
        net: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, DaemonError> {
        Ok(Cluster::allocate_ip(
            self,
            &net.name,
            net.subnet4,
            net.gateway4,
            requested,
            owner,
        )?)
    }

    fn release_ip(&self, network: &str, ip: Ipv4Addr) -> Result<(), DaemonError> {
        Ok(Cluster::release_ip(self, network, ip)?)
    }

    fn put_endpoint(&self, ep: &EndpointRecord) -> Result<(), DaemonError> {
        Ok(Cluster::put_endpoint(self, ep.clone())?)
    }

    fn remove_endpoint(&self, network: &str, name: &str) -> Result<(), DaemonError> {
        Ok(Cluster::remove_endpoint(self, network, name)?)
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let state = Cluster::snapshot(self);
        ClusterSnapshot {
            networks: state.networks.values().map(network_of).collect(),
            endpoints: state.all_endpoints().cloned().collect(),
            leases: state.ipam,
            connected: self.status().connected,
        }
    }

    fn watch(&self) -> Box<dyn ClusterWatch> {
        Box::new(EventWatch(self.events()))
    }
}

/// Change notices from the store's event stream; connection changes are
/// logged here, once.
struct EventWatch(Receiver<ClusterEvent>);

impl EventWatch {
    fn note(event: &ClusterEvent) {
        match event {
            ClusterEvent::Connected => tracing::info!("cluster store connected"),
            ClusterEvent::Disconnected(why) => tracing::warn!(
                "cluster store disconnected ({why}); forwarding with the last known state"
            ),
            ClusterEvent::Changed { .. } => {}
        }
    }
}

impl ClusterWatch for EventWatch {
    fn wait(&mut self, timeout: Duration) -> bool {
        match self.0.recv_timeout(timeout) {
            Ok(event) => {
                Self::note(&event);
                while let Ok(more) = self.0.try_recv() {
                    Self::note(&more);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            // The store stopped: nothing more will come.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_survive_the_round_trip() {
        let net = Network {
            name: "ovl".into(),
            driver: Driver::Overlay,
            subnet4: "10.77.0.0/24".parse().unwrap(),
            gateway4: "10.77.0.1".parse().unwrap(),
            subnet6: Some("fd77::/64".parse().unwrap()),
            gateway6: Some("fd77::1".parse().unwrap()),
            internal: true,
            isolate: false,
            mtu: 1450,
            mac_cap: Some(64),
            vni: Some(300),
            host_loopback: true,
        };
        assert_eq!(network_of(&record_of(&net)), net);
        let plain = Network {
            mac_cap: None,
            host_loopback: false,
            ..net
        };
        assert_eq!(network_of(&record_of(&plain)), plain);
    }
}
