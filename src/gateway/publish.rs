//! Published ports in the gateway stack: host sockets the daemon bound (so
//! bind errors reach the user at once) are polled here. A TCP connection
//! accepted on one is carried into the sandbox *from the client's own address
//! and port*, so the service sees who calls; a client on the host's loopback
//! (an address the sandbox cannot answer) appears as the gateway address.
//! UDP keeps a session per client, with the same idle timeouts as NAT flows.

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
    /// Close a published socket (its flows keep running); the reply says
    /// it is closed, so the port is free.
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
                let _ = done.send(());
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
        match (peer, target.service6) {
            (SocketAddr::V4(_), _) if routable => return Some((v4, peer)),
            (SocketAddr::V6(p), Some(s6)) if routable && !p.ip().is_unicast_link_local() => {
                return Some((SocketAddr::V6(s6), peer))
            }
            _ => {}
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
            if let Some(connect) = target.splice.as_ref().filter(|_| peer.ip().is_loopback()) {
                if super::splice::try_reserve() {
                    let fd = std::os::fd::OwnedFd::from(stream);
                    bump(&self.counters.published_spliced, 1);
                    super::splice::spawn(std::net::TcpStream::from(fd), connect.clone());
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
        if let Some(Listener {
            socket: HostSocket::Udp(u),
            ..
        }) = self.listeners.get(&listener)
        {
            if u.send_to(payload, peer).is_err() {
                bump(&self.counters.nat_udp_send_errors, 1);
            }
        }
    }

    /// Makes sure the stack can address the sandbox's `service` before the
    /// sandbox first spoke.
    fn learn_sandbox(&mut self, target: &PublishTarget, service: SocketAddr) {
        let now = self.now().total_millis();
        self.announce_neighbour(target.network, target.mac, service.ip(), target.port, now);
    }
}
