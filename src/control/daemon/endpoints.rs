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
}
