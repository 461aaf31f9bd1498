//! Publications of endpoints: finding the endpoint a user names, adding and
//! removing publications, refusing host ports another endpoint publishes,
//! and binding the host sockets here (so a port in use or a privileged port
//! is a clear error to the caller) before the gateway stack serves them. A
//! publication without a host address listens on one dual-stack `[::]`
//! socket per port, for IPv4 and IPv6 clients alike, or on `0.0.0.0` where
//! the host has no IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn6,
};

use super::Daemon;
use crate::control::api::{EndpointStatus, PublishSpec, UnpublishSpec};
use crate::control::error::DaemonError;
use crate::control::model::{Endpoint, Proto, Publication};
use crate::control::publication_pattern::Selection;
use crate::gateway::publish::{HostSocket, PublishTarget};

/// Where the host sockets of a publication listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listening {
    /// The publication's own host address.
    Exact(IpAddr),
    /// `[::]` with `IPV6_V6ONLY` off: IPv4 clients (as `::ffff:a.b.c.d`)
    /// and IPv6 clients on one socket.
    DualStack,
    /// `0.0.0.0`: no host address, on a host without IPv6.
    Ipv4Only,
}

/// Host sockets bound for one publication, not yet served.
pub(super) struct Bound {
    sockets: Vec<(HostSocket, PublishTarget)>,
    at: Listening,
}

/// The gateway stack's ids of a publication's sockets, and where they
/// listen.
pub(super) struct Served {
    ids: Vec<u64>,
    at: Listening,
}

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
        let mut at = match p.host_ip {
            Some(ip) => Listening::Exact(ip),
            None => Listening::DualStack,
        };
        let mut bound = Vec::new();
        for (host, container) in
            (p.host_ports.start..=p.host_ports.end).zip(p.container_ports.start..)
        {
            let (socket, now_at) =
                bind_host(p.proto, at, host).map_err(|(addr, source)| DaemonError::Bind {
                    spec: p.to_string(),
                    reason: bind_reason(addr, &source),
                    source,
                })?;
            // A host without IPv6 has none for the range's other ports.
            at = now_at;
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
        Ok(Bound { sockets: bound, at })
    }

    /// Hands bound sockets to the gateway stack.
    pub(super) fn serve_publication(&mut self, ep_id: &str, p: Publication, bound: Bound) {
        let mut ids = Vec::with_capacity(bound.sockets.len());
        for (socket, target) in bound.sockets {
            self.next_listener += 1;
            let id = self.next_listener;
            self.stack.listen(id, socket, target);
            ids.push(id);
        }
        let served = Served { ids, at: bound.at };
        self.listeners.insert((ep_id.to_string(), p), served);
    }

    /// The endpoints with where their publications listen (`ps`).
    pub(super) fn ps(&self) -> Vec<EndpointStatus> {
        self.state
            .endpoints
            .iter()
            .map(|ep| EndpointStatus {
                listening: ep
                    .publications
                    .iter()
                    .flat_map(|p| match self.listeners.get(&(ep.id.clone(), *p)) {
                        Some(served) => listening(p, served.at),
                        None => vec![format!("{p} (not listening)")],
                    })
                    .collect(),
                endpoint: ep.clone(),
            })
            .collect()
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
            for id in self
                .listeners
                .remove(&key)
                .map(|s| s.ids)
                .unwrap_or_default()
            {
                self.stack.close(id);
            }
        }
    }

    /// Removes the publication of an endpoint that `req.spec` names (see
    /// [`PublicationPattern`](crate::control::publication_pattern::PublicationPattern)).
    pub fn unpublish(&mut self, req: UnpublishSpec) -> Result<Endpoint, DaemonError> {
        let i = self.find_endpoint(&req.endpoint)?;
        let ep = &self.state.endpoints[i];
        let list = |ps: &[Publication]| {
            if ps.is_empty() {
                "nothing".to_string()
            } else {
                ps.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let spec = match req.spec.select(&ep.publications) {
            Ok(p) => p,
            Err(Selection::None) => {
                return Err(DaemonError::NoSuchPublication {
                    endpoint: format!("{}/{}", ep.network, ep.name),
                    spec: req.spec.to_string(),
                    published: list(&ep.publications),
                })
            }
            Err(Selection::Several(hits)) => {
                return Err(DaemonError::AmbiguousPublication {
                    endpoint: format!("{}/{}", ep.network, ep.name),
                    spec: req.spec.to_string(),
                    matches: list(&hits),
                })
            }
        };
        let mut next = self.state.clone();
        next.endpoints[i].publications.retain(|p| *p != spec);
        let ep = next.endpoints[i].clone();
        self.commit(next)?;
        self.close_publications(&ep.id, Some(&spec));
        Ok(ep)
    }
}

/// Binds host port `port` where `at` says; a dual-stack bind on a host
/// without IPv6 falls back to `0.0.0.0` (the second value says which was
/// bound). The error names the address that failed.
fn bind_host(
    proto: Proto,
    at: Listening,
    port: u16,
) -> Result<(HostSocket, Listening), (SocketAddr, io::Error)> {
    let exact = |addr: SocketAddr| bind_std(proto, addr).map_err(|e| (addr, e));
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    match at {
        Listening::Exact(ip) => Ok((exact(SocketAddr::new(ip, port))?, at)),
        Listening::Ipv4Only => Ok((exact(v4)?, at)),
        Listening::DualStack => match bind_dual_stack(proto, port) {
            Ok(s) => Ok((s, at)),
            Err(e) if no_ipv6(&e) => {
                tracing::info!("no IPv6 on this host ({e}): host port {port} listens on IPv4 only");
                Ok((exact(v4)?, Listening::Ipv4Only))
            }
            Err(e) => Err((SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), e)),
        },
    }
}

/// Whether a failed `[::]` socket or bind means the host has no IPv6 (the
/// kernel was booted with `ipv6.disable=1`, or IPv6 is not built in).
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// A non-blocking socket bound to `addr`, as std binds it.
fn bind_std(proto: Proto, addr: SocketAddr) -> io::Result<HostSocket> {
    Ok(match proto {
        Proto::Tcp => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            HostSocket::Tcp(mio::net::TcpListener::from_std(l))
        }
        Proto::Udp => {
            let u = std::net::UdpSocket::bind(addr)?;
            u.set_nonblocking(true)?;
            HostSocket::Udp(mio::net::UdpSocket::from_std(u))
        }
    })
}

/// A non-blocking socket on `[::]:port` that takes IPv4 clients too,
/// whatever `net.ipv6.bindv6only` says. One socket rather than one per
/// family: a port another process holds on either family fails the one
/// bind, and there is no half-bound state to undo.
fn bind_dual_stack(proto: Proto, port: u16) -> io::Result<HostSocket> {
    let ty = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd: OwnedFd = socket(AddressFamily::Inet6, ty, flags, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    Ok(match proto {
        Proto::Tcp => {
            // As std's TcpListener::bind: a port whose last connections
            // linger in TIME_WAIT can be published again at once.
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
            listen(&fd, Backlog::MAXCONN)?;
            HostSocket::Tcp(mio::net::TcpListener::from_std(fd.into()))
        }
        Proto::Udp => {
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
            HostSocket::Udp(mio::net::UdpSocket::from_std(fd.into()))
        }
    })
}

/// Where publication `p` listens, in Docker's `ADDR:HOSTPORT->PORT/PROTO`
/// notation, one entry per address family it serves.
pub(super) fn listening(p: &Publication, at: Listening) -> Vec<String> {
    let ports = format!("{}->{}/{}", p.host_ports, p.container_ports, p.proto);
    match at {
        Listening::Exact(IpAddr::V4(ip)) => vec![format!("{ip}:{ports}")],
        Listening::Exact(IpAddr::V6(ip)) => vec![format!("[{ip}]:{ports}")],
        Listening::DualStack => vec![format!("0.0.0.0:{ports}"), format!("[::]:{ports}")],
        Listening::Ipv4Only => vec![format!("0.0.0.0:{ports}")],
    }
}

/// What a failed bind means for the user.
fn bind_reason(addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        // `[::]` takes the port on IPv4 too, so either family may hold it.
        std::io::ErrorKind::AddrInUse if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => format!(
            "host port {} is already in use (on 0.0.0.0, [::] or one of the host's addresses; \
             without a host address a publication takes the port on IPv4 and IPv6)",
            addr.port()
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(s: &str) -> Publication {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn listening_in_dockers_notation() {
        let p = publication("8080:80");
        assert_eq!(
            listening(&p, Listening::DualStack),
            ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]
        );
        assert_eq!(listening(&p, Listening::Ipv4Only), ["0.0.0.0:8080->80/tcp"]);
        let p = publication("[::1]:5000-5001:53-54/udp");
        let at = Listening::Exact(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(listening(&p, at), ["[::1]:5000-5001->53-54/udp"]);
    }

    /// Without a host address the port used to be bound on 0.0.0.0 only.
    #[test]
    fn without_a_host_address_ipv4_and_ipv6_clients_connect() {
        let Ok((HostSocket::Tcp(l), at)) = bind_host(Proto::Tcp, Listening::DualStack, 0) else {
            panic!("bind");
        };
        let port = l.local_addr().expect("addr").port();
        let v4 = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        assert!(v4.is_ok(), "IPv4 client: {v4:?}");
        if at == Listening::DualStack {
            let v6 = std::net::TcpStream::connect((Ipv6Addr::LOCALHOST, port));
            assert!(
                v6.is_ok() || std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err(),
                "IPv6 client: {v6:?}"
            );
        } else {
            assert_eq!(at, Listening::Ipv4Only);
        }
    }

    /// A port held on IPv4 alone is refused, with a reason naming both
    /// families.
    #[test]
    fn a_port_held_on_either_family_is_refused() {
        let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = held.local_addr().expect("addr").port();
        let Err((addr, e)) = bind_host(Proto::Tcp, Listening::DualStack, port) else {
            panic!("bound a port held on 127.0.0.1");
        };
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let reason = bind_reason(addr, &e);
        assert!(
            reason.contains("already in use") && reason.contains(&port.to_string()),
            "{reason}"
        );
        assert!(no_ipv6(&io::Error::from_raw_os_error(libc::EAFNOSUPPORT)));
        assert!(!no_ipv6(&e));
    }
}
