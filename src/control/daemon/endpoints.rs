//! Endpoints' lifecycle in the daemon: `connect` (name, MAC, addresses,
//! interface in the sandbox, data-plane ports with their port security,
//! publications, store and cluster records, all or nothing), `disconnect`,
//! and reaping endpoints whose sandbox has gone.

use std::collections::BTreeSet;

use super::Daemon;
use crate::control::api;
use crate::control::attach::AttachSpec;
use crate::control::error::DaemonError;
use crate::control::ipam;
use crate::control::model::{
    endpoint_mac, fnv1a, validate_container_id, validate_ifname, validate_name, Driver, Endpoint,
    Network, Publication,
};
use crate::dataplane::PortSpec;
use crate::ports::PortId;
use crate::tables::topology::PortSecurity;

impl Daemon {
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
        if let Some(i) = &req.ifname {
            validate_ifname(i)?;
        }
        if let Some(c) = &req.container_id {
            validate_container_id(c)?;
        }
        if let Some(n) = &req.cni_network {
            validate_name("CNI network", n)?;
        }
        if on_net.iter().any(|e| e.name == name) || self.remote_name_taken(&net.name, &name) {
            return Err(DaemonError::EndpointExists {
                network: net.name.clone(),
                name,
            });
        }
        let netns_id = self
            .attacher
            .namespace_id(&req.target)
            .map_err(|e| DaemonError::sandbox_unreachable(&req.target, e))?;
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
        let ifname = match req.ifname {
            Some(i) if siblings.iter().any(|e| e.ifname == i) => {
                return Err(DaemonError::IfnameTaken {
                    target: req.target.to_string(),
                    ifname: i,
                })
            }
            Some(i) => i,
            None => (0..)
                .map(|i| format!("eth{i}"))
                .find(|n| siblings.iter().all(|e| &e.ifname != n))
                .unwrap_or_default(),
        };
        let used4: BTreeSet<_> = on_net.iter().map(|e| e.ipv4).collect();
        let seq = self.state.next_seq;
        let id = (0..=u8::MAX)
            .map(|retry| endpoint_id(&net.name, &name, seq, &self.id_salt, retry))
            .find(|id| self.state.endpoints.iter().all(|e| &e.id != id))
            .unwrap_or_default();
        let mut publications: Vec<Publication> = Vec::new();
        for p in req.publish {
            self.check_publication(&p)?;
            if !publications.contains(&p) {
                publications.push(p);
            }
        }
        let used6: BTreeSet<_> = on_net.iter().filter_map(|e| e.ipv6).collect();
        // An overlay spans hosts: its IPv6 addresses mirror the IPv4 ones,
        // which are unique across hosts (see ipam::overlay_ipv6), and are
        // chosen once the IPv4 address is known.
        let no_static6 = |why| ipam::IpamError::NoStaticIpv6 {
            network: net.name.clone(),
            why,
        };
        let mut ipv6 = match (net.subnet6, net.gateway6, net.driver) {
            (Some(s6), _, Driver::Overlay) => {
                if req.ip6.is_some() {
                    return Err(no_static6(
                        "on an overlay the IPv6 address follows the IPv4 one (give --ip)",
                    )
                    .into());
                }
                ipam::check_overlay_ipv6(&net.name, net.subnet4, s6)?;
                None
            }
            (Some(s6), Some(g6), Driver::Bridge) => {
                Some(ipam::allocate6(&net.name, s6, g6, &used6, req.ip6)?)
            }
            _ if req.ip6.is_some() => {
                return Err(
                    no_static6("it has no IPv6 subnet (network create --ipv6-subnet)").into(),
                )
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
        if let (Some(s6), Driver::Overlay) = (net.subnet6, net.driver) {
            // Cannot fail: the subnet was checked above and ipv4 lies in
            // subnet4. A clash means a local endpoint still holds an address
            // handed out before addresses were mirrored.
            let ip6 = ipam::overlay_ipv6(&net.name, net.subnet4, ipv4, s6)
                .ok()
                .filter(|ip6| !used6.contains(ip6));
            if ip6.is_none() && leased.is_some() {
                self.cluster_release_ip(&net.name, ipv4);
            }
            ipv6 = Some(ip6.ok_or_else(|| ipam::IpamError::Exhausted {
                network: net.name.clone(),
                subnet: s6.to_string(),
            })?);
        }
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
            container_id: req.container_id,
            cni_network: req.cni_network,
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
    pub(super) fn attach_ports(
        &mut self,
        ep: &Endpoint,
        net: &Network,
    ) -> Result<Vec<PortId>, DaemonError> {
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
        self.disconnect_checked(network, endpoint, None)
    }

    /// Disconnects endpoint `endpoint` (name or id) from `network`; with
    /// `id`, only if that is its id: a caller holding an endpoint that is
    /// gone must not detach the one that has its name now.
    pub fn disconnect_checked(
        &mut self,
        network: &str,
        endpoint: &str,
        id: Option<&str>,
    ) -> Result<Endpoint, DaemonError> {
        if self.network(network).is_none() {
            return Err(DaemonError::NoSuchNetwork(network.into()));
        }
        let named = |e: &Endpoint| e.network == network && (e.name == endpoint || e.id == endpoint);
        let meant = |e: &Endpoint| named(e) && id.is_none_or(|id| e.id == id);
        let Some(ep) = self.state.endpoints.iter().find(|e| meant(e)).cloned() else {
            let now = self.state.endpoints.iter().find(|e| named(e));
            return Err(match (id, now) {
                (Some(expected), Some(now)) => DaemonError::EndpointReplaced {
                    network: network.into(),
                    name: endpoint.into(),
                    expected: expected.into(),
                    current: now.id.clone(),
                },
                _ => DaemonError::NoSuchEndpoint(format!("{network}/{endpoint}")),
            });
        };
        self.remove_endpoint(ep)
    }

    /// Removes exactly `ep` (by id): from the state, the cluster store, its
    /// publications, the gateway's flows, the data plane and its sandbox.
    fn remove_endpoint(&mut self, ep: Endpoint) -> Result<Endpoint, DaemonError> {
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

    /// Disconnects endpoints whose sandbox no longer exists (the process
    /// exited or was killed without detaching) and returns them, so their
    /// addresses and ports are freed without waiting for a restart.
    pub fn reap_vanished(&mut self) -> Vec<Endpoint> {
        let gone: Vec<Endpoint> = self
            .state
            .endpoints
            .iter()
            .filter(|ep| self.attacher.namespace_id(&ep.sandbox).ok() != Some(ep.netns_id))
            .cloned()
            .collect();
        let mut reaped = Vec::new();
        for ep in gone {
            // By the endpoint itself, never by a name or id looked up
            // again: another endpoint may be named like this one's id.
            let id = ep.id.clone();
            match self.remove_endpoint(ep) {
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
                Err(e) => tracing::warn!("cannot release vanished endpoint {id}: {e}"),
            }
        }
        reaped
    }
}

/// An endpoint's id: 12 hex digits from its network, name, the state's
/// sequence number and the daemon's salt (`retry` moves past the unlikely
/// id another endpoint already has).
fn endpoint_id(network: &str, name: &str, seq: u64, salt: &[u8; 8], retry: u8) -> String {
    format!(
        "{:012x}",
        fnv1a(&[
            network.as_bytes(),
            name.as_bytes(),
            &seq.to_be_bytes(),
            salt,
            &[retry],
        ]) >> 16
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::ErrorKind;
    use crate::control::attach_fake::FakeAttacher;
    use crate::control::daemon::DaemonConfig;
    use crate::control::ipam::StaticRoutes;
    use crate::control::model::SandboxTarget;
    use crate::control::store::tests::TempDir;
    use crate::dataplane::DataplaneConfig;

    fn daemon(state: &std::path::Path) -> Daemon {
        let config = DaemonConfig {
            state_dir: state.to_path_buf(),
            dataplane: DataplaneConfig {
                workers: 1,
                pool_frames: 512,
                ..DataplaneConfig::default()
            },
            routes: Box::new(StaticRoutes::default()),
            dns: Default::default(),
            dns_upstream: crate::dns::forward::UpstreamSource::Static(vec![]),
            nat_limits: Default::default(),
            overlay: None,
            cluster: None,
            stopping: Default::default(),
        };
        Daemon::new(config, Box::new(FakeAttacher::new())).expect("daemon")
    }

    /// Connects `name` to `default`, its sandbox stood in for by the file
    /// `sandbox` under `dir` (the fake attacher's namespaces).
    fn connect(d: &mut Daemon, dir: &TempDir, name: &str, sandbox: &str) -> Endpoint {
        let path = dir.0.join(sandbox);
        std::fs::write(&path, b"").expect("sandbox file");
        d.connect(api::Connect {
            network: "default".into(),
            target: SandboxTarget::Netns { path, userns: None },
            name: Some(name.into()),
            aliases: vec![],
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

    fn names(d: &Daemon) -> Vec<&str> {
        d.state.endpoints.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn a_daemon_on_a_fresh_state_hands_out_new_ids() {
        let dir = TempDir::new("ids-fresh");
        let first = {
            let mut d = daemon(&dir.0.join("one"));
            connect(&mut d, &dir, "web", "ns1").id
        };
        let mut d = daemon(&dir.0.join("two"));
        let again = connect(&mut d, &dir, "web", "ns2");
        assert_eq!(again.id.len(), 12);
        assert_ne!(again.id, first, "same id for an endpoint of another state");
    }

    #[test]
    fn a_checked_disconnect_detaches_only_the_endpoint_meant() {
        let dir = TempDir::new("checked-detach");
        let mut d = daemon(&dir.0.join("state"));
        let old = connect(&mut d, &dir, "web", "ns1");
        d.disconnect("default", "web").expect("plain disconnect");
        let new = connect(&mut d, &dir, "web", "ns2");
        assert_ne!(old.id, new.id);

        let e = d
            .disconnect_checked("default", "web", Some(&old.id))
            .expect_err("the old id must not detach the new endpoint");
        assert_eq!(e.kind(), ErrorKind::Stale);
        let msg = e.to_string();
        assert!(msg.contains(&old.id) && msg.contains(&new.id), "{msg}");
        assert_eq!(names(&d), ["web"]);
        // By id too: the old id names nothing now.
        let e = d
            .disconnect_checked("default", &old.id, Some(&old.id))
            .expect_err("gone");
        assert_eq!(e.kind(), ErrorKind::NotFound);

        let gone = d
            .disconnect_checked("default", "web", Some(&new.id))
            .expect("the id of the endpoint named detaches it");
        assert_eq!(gone.id, new.id);
        let e = d
            .disconnect_checked("default", "web", Some(&new.id))
            .expect_err("detached already");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn the_reaper_releases_the_vanished_endpoint_not_one_named_like_its_id() {
        let dir = TempDir::new("reap-exact");
        let mut d = daemon(&dir.0.join("state"));
        // "twin" is connected first and named like the id "gone" gets next.
        let seq = d.state.next_seq + 1;
        let predicted = endpoint_id("default", "gone", seq, &d.id_salt, 0);
        let twin = connect(&mut d, &dir, &predicted, "ns-twin");
        let gone = connect(&mut d, &dir, "gone", "ns-gone");
        assert_eq!(gone.id, predicted);
        std::fs::remove_file(dir.0.join("ns-gone")).expect("sandbox gone");

        let reaped = d.reap_vanished();
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].id, gone.id);
        assert_eq!(names(&d), [twin.name.as_str()]);
    }
}
