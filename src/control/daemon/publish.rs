//! Publications of endpoints: finding the endpoint a user names, adding and
//! removing publications, refusing host ports another endpoint publishes,
//! and binding the host sockets here (so a port in use or a privileged port
//! is a clear error to the caller) before the gateway stack serves them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use super::Daemon;
use crate::control::api::PublishSpec;
use crate::control::error::DaemonError;
use crate::control::model::{Endpoint, Proto, Publication};
use crate::gateway::publish::{HostSocket, PublishTarget};

/// Host sockets bound for one publication, not yet served.
pub(super) type Bound = Vec<(HostSocket, PublishTarget)>;

impl Daemon {
    /// Index of the endpoint named by id, `NETWORK/NAME`, or a name unique
    /// across networks.
    pub(super) fn find_endpoint(&self, reference: &str) -> Result<usize, DaemonError> {
        let eps = &self.state.endpoints;
        if let Some(i) = eps.iter().position(|e| e.id == reference) {
            return Ok(i);
        }
        if let Some((net, name)) = reference.split_once('/') {
            return eps
                .iter()
                .position(|e| e.network == net && e.name == name)
                .ok_or_else(|| DaemonError::NoSuchEndpoint(reference.into()));
        }
        let hits: Vec<usize> = (0..eps.len())
            .filter(|i| eps[*i].name == reference)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err(DaemonError::NoSuchEndpoint(reference.into())),
            many => Err(DaemonError::AmbiguousEndpoint {
                name: reference.into(),
                networks: many
                    .iter()
                    .map(|i| eps[*i].network.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Rejects a publication whose host ports overlap another's.
    pub(super) fn check_publication(&self, p: &Publication) -> Result<(), DaemonError> {
        for e in &self.state.endpoints {
            for q in &e.publications {
                let same_ip = p.host_ip.is_none() || q.host_ip.is_none() || p.host_ip == q.host_ip;
                let overlap = p.host_ports.start <= q.host_ports.end
                    && q.host_ports.start <= p.host_ports.end;
                if p.proto == q.proto && same_ip && overlap {
                    return Err(DaemonError::PortTaken {
                        spec: p.to_string(),
                        endpoint: format!("{}/{}", e.network, e.name),
                    });
                }
            }
        }
        Ok(())
    }

    /// Adds a publication to an endpoint and serves it.
    pub fn publish(&mut self, req: PublishSpec) -> Result<Endpoint, DaemonError> {
        let i = self.find_endpoint(&req.endpoint)?;
        let ep = &self.state.endpoints[i];
        if ep.publications.contains(&req.spec) {
            return Ok(ep.clone());
        }
        self.check_publication(&req.spec)?;
        let bound = self.bind_publication(ep, &req.spec)?;
        let mut next = self.state.clone();
        next.endpoints[i].publications.push(req.spec);
        let ep = next.endpoints[i].clone();
        self.commit(next)?;
        self.serve_publication(&ep.id, req.spec, bound);
        Ok(ep)
    }

    /// Binds the host sockets of `p` for `ep` (every port of a range, or
    /// none).
    pub(super) fn bind_publication(
        &self,
        ep: &Endpoint,
        p: &Publication,
    ) -> Result<Bound, DaemonError> {
        let (Some(&network), Some(&port)) = (
            self.net_ids.get(&ep.network),
            self.ports.get(&ep.id).and_then(|v| v.first()),
        ) else {
            return Err(DaemonError::NoSuchEndpoint(format!(
                "{}/{}",
                ep.network, ep.name
            )));
        };
        let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut bound = Vec::new();
        for (host, container) in
            (p.host_ports.start..=p.host_ports.end).zip(p.container_ports.start..)
        {
            let addr = SocketAddr::new(ip, host);
            let socket = match p.proto {
                Proto::Tcp => std::net::TcpListener::bind(addr).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(HostSocket::Tcp(mio::net::TcpListener::from_std(l)))
                }),
                Proto::Udp => std::net::UdpSocket::bind(addr).and_then(|u| {
                    u.set_nonblocking(true)?;
                    Ok(HostSocket::Udp(mio::net::UdpSocket::from_std(u)))
                }),
            };
            let socket = socket.map_err(|source| DaemonError::Bind {
                spec: p.to_string(),
                reason: bind_reason(addr, &source),
                source,
            })?;
            let service = SocketAddrV4::new(ep.ipv4, container);
            let splice = self.attacher.can_connect_in().then(|| {
                let (attacher, sandbox) = (self.attacher.clone(), ep.sandbox.clone());
                let connect: crate::gateway::splice::Connector = std::sync::Arc::new(move || {
                    attacher
                        .connect_in(&sandbox, service.into())
                        .unwrap_or_else(|| Err(std::io::Error::other("no in-sandbox connect")))
                });
                connect
            });
            let target = PublishTarget {
                network,
                service,
                service6: ep
                    .ipv6
                    .map(|ip| std::net::SocketAddrV6::new(ip, container, 0, 0)),
                mac: ep.mac,
                port,
                splice,
            };
            bound.push((socket, target));
        }
        Ok(bound)
    }

    /// Hands bound sockets to the gateway stack.
    pub(super) fn serve_publication(&mut self, ep_id: &str, p: Publication, bound: Bound) {
        let mut ids = Vec::with_capacity(bound.len());
        for (socket, target) in bound {
            self.next_listener += 1;
            let id = self.next_listener;
            self.stack.listen(id, socket, target);
            ids.push(id);
        }
        self.listeners.insert((ep_id.to_string(), p), ids);
    }

    /// Closes the host sockets of `ep_id`'s publications (all, or only
    /// `only`), waiting until they are closed so the ports are free.
    pub(super) fn close_publications(&mut self, ep_id: &str, only: Option<&Publication>) {
        let keys: Vec<_> = self
            .listeners
            .keys()
            .filter(|(e, p)| e == ep_id && only.is_none_or(|o| o == p))
            .cloned()
            .collect();
        for key in keys {
            for id in self.listeners.remove(&key).unwrap_or_default() {
                self.stack.close(id);
            }
        }
    }

    /// Removes a publication from an endpoint.
    pub fn unpublish(&mut self, req: PublishSpec) -> Result<Endpoint, DaemonError> {
        let i = self.find_endpoint(&req.endpoint)?;
        let ep = &self.state.endpoints[i];
        if !ep.publications.contains(&req.spec) {
            return Err(DaemonError::NoSuchPublication {
                endpoint: format!("{}/{}", ep.network, ep.name),
                spec: req.spec.to_string(),
            });
        }
        let mut next = self.state.clone();
        next.endpoints[i].publications.retain(|p| *p != req.spec);
        let ep = next.endpoints[i].clone();
        self.commit(next)?;
        self.close_publications(&ep.id, Some(&req.spec));
        Ok(ep)
    }
}

/// What a failed bind means for the user.
fn bind_reason(addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!("host port {addr} is already in use"),
        std::io::ErrorKind::PermissionDenied => format!(
            "no permission to bind {addr} (ports below net.ipv4.ip_unprivileged_port_start, \
             usually 1024, need root)"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this host", addr.ip())
        }
        _ => format!("cannot bind {addr}: {e}"),
    }
}
