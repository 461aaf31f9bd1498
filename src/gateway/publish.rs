//! Published ports in the gateway stack: host sockets the daemon bound (so
//! bind errors reach the user at once) are polled here. A TCP connection
//! accepted on one is carried into the sandbox *from the client's own address
//! and port*, so the service sees who calls; a client on the host's loopback
//! (an address the sandbox cannot answer) appears as the gateway address, as
//! does a client whose address and port already carry a flow to the same
//! service (one client of two published ports leading to one container
//! port): a 5-tuple names one flow. UDP keeps a session per client, with the
//! same idle timeouts as NAT flows; sessions end with their published socket
//! (their replies would have no socket to leave by), TCP connections do not.
//! A sandbox leaving its network ends all of them, spliced ones too.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Token};

use super::flow::{FlowKey, PROTO_TCP, PROTO_UDP};
use super::nat::Flow;
use super::stack::Runner;
use super::tcp_nat::TcpFlow;
use crate::ports::PortId;
use crate::stats::bump;
use crate::tables::topology::NetworkId;
use crate::wire::udp_frame::UdpFrameAddrs;
use crate::wire::MacAddr;

/// Tokens at and above this are published sockets (below: flows).
pub const LISTENER_BASE: usize = 1 << 40;
/// Ephemeral ports given to loopback clients as seen from the sandbox.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Where a published port leads.
#[derive(Clone)]
pub struct PublishTarget {
    /// The sandbox's network.
    pub network: NetworkId,
    /// The service: the sandbox's address and container port.
    pub service: SocketAddrV4,
    /// The same port on the sandbox's IPv6 address, if it has one: IPv6
    /// clients reach it from their own address.
    pub service6: Option<SocketAddrV6>,
    /// The sandbox's MAC.
    pub mac: MacAddr,
    /// The sandbox's port in the data plane.
    pub port: PortId,
    /// Opens a connection to the service from inside the sandbox, for
    /// loopback clients (spliced); `None`: they take the stack path.
    pub splice: Option<super::splice::Connector>,
}

/// A bound host socket.
pub enum HostSocket {
    /// TCP.
    Tcp(TcpListener),
    /// UDP.
    Udp(UdpSocket),
}

/// A published socket and where it leads.
pub struct Listener {
    socket: HostSocket,
    target: PublishTarget,
}

/// A UDP session of a published port: datagrams from one client.
pub struct UdpInFlow {
    /// The published socket it came through.
    pub listener: u64,
    /// The client.
    pub peer: SocketAddr,
    /// How the client's datagrams are addressed to the sandbox.
    pub to_sandbox: UdpFrameAddrs,
    /// The sandbox's port.
    pub port: PortId,
    /// Last datagram either way (ms).
    pub last_active: i64,
}

/// Commands from the daemon.
pub enum StackCommand {
    /// Serve a published socket.
    Listen {
        /// Daemon-chosen id.
        id: u64,
        /// The bound socket.
        socket: HostSocket,
        /// Where it leads.
        target: PublishTarget,
    },
    /// Drop every flow of a sandbox address that left the network (its
    /// address may be handed out again).
    Forget {
        /// The network.
        network: NetworkId,
        /// The sandbox's address.
        ip: std::net::IpAddr,
    },
    /// Close a published socket (its TCP connections keep running, its UDP
    /// sessions end); the reply says it is closed, so the port is free.
    Close {
        /// Its id.
        id: u64,
        /// Acknowledgement.
        done: crossbeam::channel::Sender<()>,
    },
}

impl Runner {
    /// Applies a daemon command.
    pub(super) fn command(&mut self, cmd: StackCommand) {
        match cmd {
            StackCommand::Listen {
                id,
                mut socket,
                target,
            } => {
                let token = Token(LISTENER_BASE + id as usize);
                let r = match &mut socket {
                    HostSocket::Tcp(l) => {
                        self.poll.registry().register(l, token, Interest::READABLE)
                    }
                    HostSocket::Udp(u) => {
                        self.poll.registry().register(u, token, Interest::READABLE)
                    }
                };
                if let Err(e) = r {
                    tracing::warn!("cannot serve published port: {e}");
                    return;
                }
                self.listeners.insert(id, Listener { socket, target });
                // Anything that arrived before registration.
                self.ready_listeners.push(id);
            }
            StackCommand::Forget { network, ip } => self.forget(network, ip),
            StackCommand::Close { id, done } => {
                if let Some(mut l) = self.listeners.remove(&id) {
                    let _ = match &mut l.socket {
                        HostSocket::Tcp(s) => self.poll.registry().deregister(s),
                        HostSocket::Udp(s) => self.poll.registry().deregister(s),
                    };
                }
                self.end_udp_sessions(id);
                let _ = done.send(());
            }
        }
    }

    /// Removes the UDP sessions of published socket `id`.
    pub(super) fn end_udp_sessions(&mut self, id: u64) {
        let mut ended = Vec::new();
        self.udp_peers.retain(|&(listener, _), &mut slot| {
            let theirs = listener == id;
            if theirs {
                ended.push(slot);
            }
            !theirs
        });
        for slot in ended {
            if let Some((key, flow)) = self.flows.remove(slot) {
                debug_assert!(matches!(flow, Flow::UdpIn(_)), "{key:?}");
            }
        }
    }

    /// Serves published sockets that were readable.
    pub(super) fn serve_listeners(&mut self) {
        let now = self.now().total_millis();
        let ready = std::mem::take(&mut self.ready_listeners);
        for id in ready {
            let Some(l) = self.listeners.get(&id) else {
                continue;
            };
            let target = l.target.clone();
            match &l.socket {
                HostSocket::Tcp(_) => self.accept_tcp(id, target, now),
                HostSocket::Udp(_) => self.recv_udp(id, target, now),
            }
        }
    }

    /// Which service address a client reaches and from where, as the
    /// sandbox sees it: an IPv4 client (also one mapped into IPv6 by a
    /// dual-stack listener) the IPv4 service from its own address; an IPv6
    /// client the IPv6 service from its own address, if the sandbox has
    /// one; anyone else (loopback, IPv6 to an IPv4-only sandbox) the IPv4
    /// service from the gateway with a free port.
    fn visible_peer(
        &mut self,
        peer: SocketAddr,
        target: &PublishTarget,
        proto: u8,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let v4 = SocketAddr::V4(target.service);
        let peer = match peer {
            SocketAddr::V6(p) => match p.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddr::from((ip, p.port())),
                None => peer,
            },
            p => p,
        };
        let routable = !peer.ip().is_loopback() && !peer.ip().is_unspecified();
        let service = match (peer, target.service6) {
            (SocketAddr::V4(_), _) if routable => Some(v4),
            (SocketAddr::V6(p), Some(s6)) if routable && !p.ip().is_unicast_link_local() => {
                Some(SocketAddr::V6(s6))
            }
            _ => None,
        };
        if let Some(service) = service {
            let key = FlowKey {
                network: target.network,
                proto,
                local: service,
                remote: peer,
            };
            if self.flows.find(&key).is_none() {
                return Some((service, peer));
            }
        }
        let gw4 = self.net(target.network)?.gw.ipv4?;
        for _ in 0..64 {
            self.next_ephemeral = if self.next_ephemeral >= *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                self.next_ephemeral.max(*EPHEMERAL.start()) + 1
            };
            let cand = SocketAddr::from((gw4, self.next_ephemeral));
            let key = FlowKey {
                network: target.network,
                proto,
                local: v4,
                remote: cand,
            };
            if self.flows.find(&key).is_none() {
                return Some((v4, cand));
            }
        }
        None
    }

    fn accept_tcp(&mut self, id: u64, target: PublishTarget, now: i64) {
        for _ in 0..256 {
            let Some(Listener {
                socket: HostSocket::Tcp(l),
                ..
            }) = self.listeners.get(&id)
            else {
                return;
            };
            let (stream, peer) = match l.accept() {
                Ok(c) => c,
                Err(_) => return,
            };
            // `to_canonical`: a dual-stack listener sees an IPv4 loopback
            // client as ::ffff:127.0.0.1.
            let loopback = peer.ip().to_canonical().is_loopback();
            if let Some(connect) = target.splice.as_ref().filter(|_| loopback) {
                if let Some(slot) = super::splice::try_reserve() {
                    let fd = std::os::fd::OwnedFd::from(stream);
                    bump(&self.counters.published_spliced, 1);
                    let owner = super::splice::Owner {
                        network: target.network,
                        ip4: *target.service.ip(),
                        ip6: target.service6.map(|s| *s.ip()),
                    };
                    let client = std::net::TcpStream::from(fd);
                    super::splice::spawn(client, connect.clone(), slot, &self.spliced, owner);
                    continue;
                }
            }
            let Some((service, remote)) = self.visible_peer(peer, &target, PROTO_TCP) else {
                bump(&self.counters.nat_flow_cap, 1);
                continue;
            };
            self.learn_sandbox(&target, service);
            let large = self.port_offload(target.port);
            let Some(net) = self.nets.get_mut(&target.network) else {
                return;
            };
            let iface = if large {
                &mut net.large
            } else {
                &mut net.iface
            };
            let Some(mut flow) = TcpFlow::accepted(stream, iface.context(), remote, service, now)
            else {
                continue;
            };
            flow.large = large;
            let key = FlowKey {
                network: target.network,
                proto: PROTO_TCP,
                local: service,
                remote,
            };
            // `visible_peer` chose a key no flow has; a refusal here would
            // be a cap, and the client's socket closes with `flow`.
            match self.flows.insert(key, Flow::Tcp(flow)) {
                Ok(slot) => {
                    bump(&self.counters.published_tcp, 1);
                    if let Some((_, Flow::Tcp(t))) = self.flows.get_mut(slot) {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        let _ =
                            self.poll
                                .registry()
                                .register(&mut t.host, Token(slot + 1), interest);
                    }
                    self.dirty.push(slot);
                }
                Err(_) => bump(&self.counters.nat_flow_cap, 1),
            }
        }
        // More may be waiting: look again next round.
        self.ready_listeners.push(id);
    }

    fn recv_udp(&mut self, id: u64, target: PublishTarget, now: i64) {
        let Some(gw_mac) = self.net(target.network).map(|n| n.gw.mac) else {
            return;
        };
        for _ in 0..256 {
            let Some(Listener {
                socket: HostSocket::Udp(u),
                ..
            }) = self.listeners.get(&id)
            else {
                return;
            };
            let (n, peer) = match u.recv_from(&mut self.udp_buf) {
                Ok(r) => r,
                Err(_) => return,
            };
            let slot = match self.udp_session(id, peer, &target, gw_mac, now) {
                Some(slot) => slot,
                None => {
                    bump(&self.counters.nat_flow_cap, 1);
                    continue;
                }
            };
            let Some((_, Flow::UdpIn(s))) = self.flows.get_mut(slot) else {
                continue;
            };
            s.last_active = now;
            let (addrs, port) = (s.to_sandbox, s.port);
            self.injector.send_udp(port, &addrs, &self.udp_buf[..n]);
        }
        self.ready_listeners.push(id);
    }

    /// The session of `peer` on published socket `id`, opened if new.
    fn udp_session(
        &mut self,
        id: u64,
        peer: SocketAddr,
        target: &PublishTarget,
        gw_mac: MacAddr,
        now: i64,
    ) -> Option<usize> {
        if let Some(&slot) = self.udp_peers.get(&(id, peer)) {
            return Some(slot);
        }
        let (service, remote) = self.visible_peer(peer, target, PROTO_UDP)?;
        self.learn_sandbox(target, service);
        let key = FlowKey {
            network: target.network,
            proto: PROTO_UDP,
            local: service,
            remote,
        };
        let flow = UdpInFlow {
            listener: id,
            peer,
            to_sandbox: UdpFrameAddrs {
                src_mac: gw_mac,
                dst_mac: target.mac,
                src: remote,
                dst: service,
            },
            port: target.port,
            last_active: now,
        };
        let slot = self.flows.insert(key, Flow::UdpIn(flow)).ok()?;
        bump(&self.counters.published_udp, 1);
        self.udp_peers.insert((id, peer), slot);
        self.flows
            .wake_at(slot, now + super::udp_nat::STREAM_IDLE_MS);
        Some(slot)
    }

    /// A reply from the sandbox to a UDP client of a published port.
    pub(super) fn udp_in_reply(&mut self, listener: u64, peer: SocketAddr, payload: &[u8]) {
        let sent = match self.listeners.get(&listener) {
            Some(Listener {
                socket: HostSocket::Udp(u),
                ..
            }) => u.send_to(payload, peer).is_ok(),
            // Sessions end with their socket; counted should one outlive it.
            _ => false,
        };
        if !sent {
            bump(&self.counters.nat_udp_send_errors, 1);
        }
    }

    /// Makes sure the stack can address the sandbox's `service` before the
    /// sandbox first spoke.
    fn learn_sandbox(&mut self, target: &PublishTarget, service: SocketAddr) {
        let now = self.now().total_millis();
        self.announce_neighbour(target.network, target.mac, service.ip(), target.port, now);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::stack::harness::*;
    use super::*;

    fn target() -> PublishTarget {
        PublishTarget {
            network: NET,
            service: "10.0.0.2:53".parse().expect("addr"),
            service6: None,
            mac: mac(1),
            port: PortId(1),
            splice: None,
        }
    }

    fn listen(h: &mut Harness, id: u64) -> SocketAddr {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        std.set_nonblocking(true).expect("nonblocking");
        let at = std.local_addr().expect("addr");
        let socket = HostSocket::Udp(UdpSocket::from_std(std));
        h.runner.command(StackCommand::Listen {
            id,
            socket,
            target: target(),
        });
        at
    }

    /// Sessions used to outlive `unpublish`, and the sandbox's replies on
    /// them were dropped uncounted.
    #[test]
    fn unpublishing_a_udp_port_ends_its_sessions() {
        let mut h = Harness::new(false);
        let (kept, closed) = (listen(&mut h, 1), listen(&mut h, 2));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        client.send_to(b"q1", kept).expect("send");
        client.send_to(b"q2", closed).expect("send");
        for _ in 0..20 {
            h.round(10);
            if h.runner.udp_peers.len() == 2 {
                break;
            }
        }
        assert_eq!((h.runner.udp_peers.len(), h.runner.flows.len()), (2, 2));
        assert_eq!(h.sent().len(), 2, "both datagrams went to the sandbox");

        let (done, ack) = crossbeam::channel::bounded(1);
        h.runner.command(StackCommand::Close { id: 2, done });
        ack.try_recv().expect("closed");
        assert_eq!(h.runner.flows.len(), 1, "only the open port's session");
        let peers: Vec<_> = h.runner.udp_peers.keys().map(|k| k.0).collect();
        assert_eq!(peers, [1]);
        let slot = h.runner.udp_peers[&(1, client.local_addr().expect("addr"))];
        assert!(matches!(
            h.runner.flows.get_mut(slot),
            Some((_, Flow::UdpIn(s))) if s.listener == 1
        ));

        // A reply for a socket that is gone is counted, not lost silently.
        let peer = client.local_addr().expect("addr");
        h.runner.udp_in_reply(2, peer, b"late");
        let errors = &h.runner.counters.nat_udp_send_errors;
        assert_eq!(errors.load(Ordering::Relaxed), 1);
    }

    /// A client whose address and port already carry a flow to the
    /// service (here: one on another published port leading to it) would
    /// have needed the same flow key; it appears as the gateway instead.
    #[test]
    fn a_client_whose_5_tuple_is_taken_appears_as_the_gateway() {
        let mut h = Harness::new(false);
        let t = target();
        let client: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let first = h.runner.visible_peer(client, &t, PROTO_UDP);
        assert_eq!(first, Some((SocketAddr::V4(t.service), client)));
        let key = FlowKey {
            network: NET,
            proto: PROTO_UDP,
            local: SocketAddr::V4(t.service),
            remote: client,
        };
        h.runner
            .flows
            .insert(key, Flow::UdpIn(session(1, client)))
            .expect("first session");
        let (service, remote) = h
            .runner
            .visible_peer(client, &t, PROTO_UDP)
            .expect("second session");
        assert_eq!(service, SocketAddr::V4(t.service));
        assert_eq!(remote.ip(), std::net::IpAddr::V4(GW4));
        assert!(EPHEMERAL.contains(&remote.port()));
        // Other protocols do not collide.
        assert_eq!(h.runner.visible_peer(client, &t, PROTO_TCP), first);
    }

    fn session(listener: u64, peer: SocketAddr) -> UdpInFlow {
        UdpInFlow {
            listener,
            peer,
            to_sandbox: UdpFrameAddrs {
                src_mac: GW_MAC,
                dst_mac: mac(1),
                src: peer,
                dst: target().service.into(),
            },
            port: PortId(1),
            last_active: 0,
        }
    }
}
