//! Outbound NAT in the gateway stack: punted packets find their flow in the
//! flow table; a TCP SYN or a first UDP datagram opens one (within the caps),
//! with a host socket to the real destination (the host's 127.0.0.1 for the
//! gateway address on `--host-loopback` networks). A destination that is the
//! host's own loopback or unspecified address (127/8, 0/8, `::1`, `::`, and
//! those mapped into IPv6) is never dialled: a host socket would reach the
//! host's loopback services, which only `--host-loopback` may open, and only
//! through the gateway address. Host socket readiness and timers drive the
//! flows ([`drive`]); packets of no flow get a RST or ICMP unreachable from
//! smoltcp. This module owns opening and forgetting flows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mio::{Interest, Token};

use super::flow::{
    PacketInfo, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN,
};
use super::icmp_nat::IcmpFlow;
use super::publish::UdpInFlow;
use super::stack::Runner;
use super::tcp_nat::TcpFlow;
use super::udp_nat::UdpFlow;
use crate::pipeline::frame::Frame;
use crate::stats::bump;

mod drive;

/// Established TCP flows idle this long are closed (ms).
const TCP_IDLE_MS: i64 = 2 * 3600 * 1000;
/// A host connect that has not finished by then is given up (ms).
const CONNECT_TIMEOUT_MS: i64 = 30_000;

/// A flow's state.
pub enum Flow {
    /// TCP, terminated by smoltcp on the sandbox side.
    Tcp(TcpFlow),
    /// UDP, relayed datagram by datagram.
    Udp(UdpFlow),
    /// UDP from a client of a published port.
    UdpIn(UdpInFlow),
    /// ICMP echo over a ping socket.
    Icmp(IcmpFlow),
}

fn token(slot: usize) -> Token {
    Token(slot + 1)
}

/// Where the host socket of a flow to `remote` connects, on a network with
/// gateway addresses `gw`; `None`: nowhere (rejected).
fn host_target(
    remote: SocketAddr,
    gw: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    host_loopback: bool,
) -> Option<SocketAddr> {
    let loopback = match remote.ip() {
        IpAddr::V4(ip) if Some(ip) == gw.0 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if Some(ip) == gw.1 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip if host_local(ip) => return None,
        _ => return Some(remote),
    };
    // Only networks that opted in reach the host's loopback.
    host_loopback.then(|| SocketAddr::new(loopback, remote.port()))
}

/// True for addresses that a host socket would take to the host itself
/// rather than out: loopback and unspecified ones (connecting to 0.0.0.0
/// or `::` reaches the loopback too), also as IPv4-mapped IPv6 addresses.
fn host_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
    }
}

impl Runner {
    /// Where the host socket of a flow to `info`'s remote connects.
    fn host_target(&mut self, info: &PacketInfo) -> Option<SocketAddr> {
        let net = self.nets.get(&info.key.network)?;
        host_target(
            info.key.remote,
            (net.gw.ipv4, net.gw.ipv6),
            net.host_loopback,
        )
    }

    fn reject(&mut self, f: Frame, info: &PacketInfo) {
        bump(&self.counters.nat_rejected, 1);
        match self.nets.get_mut(&info.key.network) {
            Some(net) => net.reject_rx.push_back(f),
            None => self.injector.free(f),
        }
    }

    /// Hands a punted packet to its flow, opening one if it may.
    pub(super) fn dispatch(&mut self, f: Frame, info: PacketInfo, now: i64) {
        if let Some(slot) = self.flows.find(&info.key) {
            self.deliver(slot, f, &info, now);
            return;
        }
        match info.key.proto {
            PROTO_TCP => {
                let syn = info.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
                match (syn, self.host_target(&info)) {
                    (true, Some(to)) => self.open_tcp(f, info, to, now),
                    _ => self.reject(f, &info),
                }
            }
            PROTO_UDP => match self.host_target(&info) {
                Some(to) => self.open_udp(f, info, to, now),
                None => self.reject(f, &info),
            },
            // The host's loopback answers pings as itself: not the sandbox's
            // to probe (it has its own). Nothing is sent back.
            PROTO_ICMP | PROTO_ICMPV6 if host_local(info.key.remote.ip()) => {
                bump(&self.counters.nat_rejected, 1);
                self.injector.free(f);
            }
            PROTO_ICMP | PROTO_ICMPV6 if info.is_echo_request(&f) => self.open_icmp(f, info, now),
            _ => {
                bump(&self.counters.nat_unsupported, 1);
                self.injector.free(f);
            }
        }
    }

    fn open_tcp(&mut self, f: Frame, info: PacketInfo, to: SocketAddr, now: i64) {
        if self.flows.admits(&info.key).is_err() {
            bump(&self.counters.nat_flow_cap, 1);
            return self.reject(f, &info);
        }
        let flow = match TcpFlow::connect(to, info.key.remote, now) {
            Ok(mut flow) => {
                flow.large = self.port_offload(f.meta.in_port);
                flow
            }
            Err(_) => {
                bump(&self.counters.nat_refused, 1);
                return self.reject(f, &info);
            }
        };
        let slot = match self.flows.insert(info.key, Flow::Tcp(flow)) {
            Ok(slot) => slot,
            Err(_) => {
                bump(&self.counters.nat_flow_cap, 1);
                return self.reject(f, &info);
            }
        };
        bump(&self.counters.nat_tcp_flows, 1);
        if let Some((_, Flow::Tcp(flow))) = self.flows.get_mut(slot) {
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut flow.host, token(slot), interest)
                .is_err()
            {
                flow.abort();
            }
            let mut spare = Vec::new();
            flow.push_frame(f, &mut spare);
            self.done.extend(spare);
        }
        self.flows.wake_at(slot, now + CONNECT_TIMEOUT_MS);
    }

    fn open_udp(&mut self, f: Frame, info: PacketInfo, to: SocketAddr, now: i64) {
        let Some(gw_mac) = self.nets.get(&info.key.network).map(|n| n.gw.mac) else {
            return self.injector.free(f);
        };
        if self.flows.admits(&info.key).is_err() {
            bump(&self.counters.nat_flow_cap, 1);
            return self.reject(f, &info);
        }
        let local = (f.meta.src, info.key.local, f.meta.in_port);
        let flow = match UdpFlow::open(to, local, info.key.remote, gw_mac, now) {
            Ok(flow) => flow,
            Err(_) => {
                bump(&self.counters.nat_refused, 1);
                return self.reject(f, &info);
            }
        };
        let slot = match self.flows.insert(info.key, Flow::Udp(flow)) {
            Ok(slot) => slot,
            Err(_) => {
                bump(&self.counters.nat_flow_cap, 1);
                return self.injector.free(f);
            }
        };
        bump(&self.counters.nat_udp_flows, 1);
        if let Some((_, Flow::Udp(flow))) = self.flows.get_mut(slot) {
            let _ = self
                .poll
                .registry()
                .register(&mut flow.host, token(slot), Interest::READABLE);
            self.flows.wake_at(slot, now + super::udp_nat::IDLE_MS);
        }
        self.deliver(slot, f, &info, now);
    }

    fn open_icmp(&mut self, f: Frame, info: PacketInfo, now: i64) {
        let Some(gw_mac) = self.nets.get(&info.key.network).map(|n| n.gw.mac) else {
            return self.injector.free(f);
        };
        if self.flows.admits(&info.key).is_err() {
            bump(&self.counters.nat_flow_cap, 1);
            return self.injector.free(f);
        }
        let sandbox = (f.meta.src, info.key.local.ip(), f.meta.in_port);
        let ident = info.key.local.port();
        let flow = match IcmpFlow::open(info.key.remote.ip(), sandbox, ident, gw_mac, now) {
            Ok(flow) => flow,
            Err(e) => {
                let c = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    &self.counters.nat_icmp_denied
                } else {
                    &self.counters.nat_refused
                };
                bump(c, 1);
                return self.injector.free(f);
            }
        };
        let slot = match self.flows.insert(info.key, Flow::Icmp(flow)) {
            Ok(slot) => slot,
            Err(_) => {
                bump(&self.counters.nat_flow_cap, 1);
                return self.injector.free(f);
            }
        };
        bump(&self.counters.nat_icmp_flows, 1);
        if let Some((_, Flow::Icmp(flow))) = self.flows.get_mut(slot) {
            let _ = self
                .poll
                .registry()
                .register(&mut flow.host, token(slot), Interest::READABLE);
            self.flows.wake_at(slot, now + super::icmp_nat::IDLE_MS);
        }
        self.deliver(slot, f, &info, now);
    }

    fn deliver(&mut self, slot: usize, f: Frame, info: &PacketInfo, now: i64) {
        let Some((_, flow)) = self.flows.get_mut(slot) else {
            return self.injector.free(f);
        };
        match flow {
            Flow::Tcp(t) => {
                let mut spare = Vec::new();
                t.push_frame(f, &mut spare);
                self.done.extend(spare);
                self.dirty.push(slot);
            }
            Flow::Udp(u) => {
                let payload = f.data().get(info.l4 + 8..info.end).unwrap_or(&[]);
                if u.host.send(payload).is_err() {
                    bump(&self.counters.nat_udp_send_errors, 1);
                }
                u.last_active = now;
                self.injector.free(f);
            }
            Flow::Icmp(c) => {
                let icmp = f.data().get(info.l4..info.end).unwrap_or(&[]);
                if c.send(icmp).is_err() {
                    bump(&self.counters.nat_udp_send_errors, 1);
                }
                c.last_active = now;
                self.injector.free(f);
            }
            Flow::UdpIn(s) => {
                s.last_active = now;
                let (listener, peer) = (s.listener, s.peer);
                let payload = f.data().get(info.l4 + 8..info.end).unwrap_or(&[]);
                self.udp_in_reply(listener, peer, payload);
                self.injector.free(f);
            }
        }
    }

    /// Removes every flow of `ip` on `network`: TCP flows are reset on the
    /// host side, host sockets closed.
    pub(super) fn forget(&mut self, network: crate::tables::topology::NetworkId, ip: IpAddr) {
        self.spliced.end(network, ip);
        for slot in self.flows.slots() {
            let mine = self
                .flows
                .get_mut(slot)
                .is_some_and(|(k, _)| k.network == network && k.local.ip() == ip);
            if !mine {
                continue;
            }
            match self.flows.remove(slot) {
                Some((_, Flow::Tcp(mut t))) => {
                    t.abort();
                    let _ = self.poll.registry().deregister(&mut t.host);
                    self.done.extend(t.rx.drain(..));
                }
                Some((_, Flow::Udp(mut u))) => {
                    let _ = self.poll.registry().deregister(&mut u.host);
                }
                Some((_, Flow::Icmp(mut c))) => {
                    let _ = self.poll.registry().deregister(&mut c.host);
                }
                Some((_, Flow::UdpIn(s))) => {
                    self.udp_peers.remove(&(s.listener, s.peer));
                }
                None => {}
            }
        }
        for f in self.done.drain(..) {
            self.injector.free(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::drive::UDP_REPLIES_PER_ROUND;
    use std::net::{TcpListener, UdpSocket};
    use std::sync::atomic::Ordering;

    use super::super::stack::harness::*;
    use super::*;
    use crate::ports::PortId;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// Hands `frame`, from sandbox 1 on port 1, to the runner as the stack
    /// does every punted frame: its neighbour announced first (which also
    /// builds the network's stack), then dispatched.
    fn punt_from_sandbox(h: &mut Harness, frame: &[u8], now: i64) {
        let f = Frame::parsed(frame, PortId(1));
        let info = PacketInfo::parse(&f).expect("info");
        h.runner
            .announce_neighbour(NET, mac(1), info.key.local.ip(), PortId(1), now);
        h.runner.dispatch(f, info, now);
    }

    /// A UDP datagram from sandbox 1 to the gateway's IPv4 address.
    fn udp_to_gateway(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(1).0, GW_MAC.0)
            .ipv4([10, 0, 0, 2], GW4.octets(), 64)
            .udp(40000, port)
            .write(&mut b, payload)
            .expect("frame");
        b
    }

    /// A UDP socket on the host's loopback that waits at most 2 s to read.
    fn host_udp_server() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        s
    }

    /// A sandbox dialling the host's loopback (or unspecified) address used
    /// to get a host socket connected there: the host's loopback services,
    /// without `--host-loopback`.
    #[test]
    fn loopback_and_unspecified_destinations_are_never_dialled() {
        let gw = (Some(GW4), Some(GW6));
        for to in [
            "127.0.0.1:6379",
            "127.0.0.53:53",
            "127.255.255.254:22",
            "0.0.0.0:80",
            "0.1.2.3:80",
            "[::1]:22",
            "[::]:80",
            "[::ffff:127.0.0.1]:22",
            "[::ffff:0.0.0.0]:22",
        ] {
            for host_loopback in [false, true] {
                assert_eq!(host_target(addr(to), gw, host_loopback), None, "{to}");
            }
        }
        // Only the gateway address leads there, on networks that opted in.
        assert_eq!(host_target(addr("10.0.0.1:8080"), gw, false), None);
        assert_eq!(
            host_target(addr("10.0.0.1:8080"), gw, true),
            Some(addr("127.0.0.1:8080"))
        );
        assert_eq!(
            host_target(addr("[fd00::1]:8080"), gw, true),
            Some(addr("[::1]:8080"))
        );
        for out in ["192.0.2.1:80", "[2001:db8::1]:443", "[::ffff:192.0.2.1]:80"] {
            assert_eq!(host_target(addr(out), gw, false), Some(addr(out)));
        }
    }

    fn frame(b: etherparse::PacketBuilderStep<etherparse::IpHeaders>, tcp: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let r = if tcp {
            b.tcp(40000, 6379, 1, 64240).syn().write(&mut out, &[])
        } else {
            b.udp(40000, 6379).write(&mut out, b"from the sandbox")
        };
        r.expect("frame");
        out
    }

    #[test]
    fn punted_packets_to_the_hosts_loopback_are_rejected_and_counted() {
        let udp4 = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let udp6 = UdpSocket::bind("[::1]:0").ok();
        let tcp4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        for s in [Some(&udp4), udp6.as_ref()].into_iter().flatten() {
            s.set_nonblocking(true).expect("nonblocking");
        }
        tcp4.set_nonblocking(true).expect("nonblocking");
        let mut h = Harness::new(false);
        let me4 = [10, 0, 0, 2];
        let me6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets();
        let eth = || etherparse::PacketBuilder::ethernet2(mac(1).0, GW_MAC.0);
        let lo6 = Ipv6Addr::LOCALHOST.octets();
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        let port = |p: u16| {
            move |mut b: Vec<u8>, at: usize| {
                b[at..at + 2].copy_from_slice(&p.to_be_bytes());
                b
            }
        };
        let u4 = udp4.local_addr().expect("addr").port();
        let t4 = tcp4.local_addr().expect("addr").port();
        let u6 = udp6
            .as_ref()
            .map_or(9, |s| s.local_addr().expect("addr").port());
        // Destination ports sit at 36 (IPv4) and 56 (IPv6).
        let frames = [
            port(u4)(frame(eth().ipv4(me4, [127, 0, 0, 1], 64), false), 36),
            port(t4)(frame(eth().ipv4(me4, [127, 0, 0, 1], 64), true), 36),
            port(u4)(frame(eth().ipv4(me4, [0, 0, 0, 0], 64), false), 36),
            port(u6)(frame(eth().ipv6(me6, lo6, 64), false), 56),
            port(u4)(frame(eth().ipv6(me6, mapped, 64), false), 56),
            port(t4)(frame(eth().ipv6(me6, mapped, 64), true), 56),
            // The gateway itself, on a network without --host-loopback.
            port(u4)(frame(eth().ipv4(me4, GW4.octets(), 64), false), 36),
        ];
        let now = h.runner.now().total_millis();
        for b in &frames {
            punt_from_sandbox(&mut h, b, now);
        }
        for _ in 0..5 {
            h.round(10);
        }
        let c = &h.runner.counters;
        assert_eq!(c.nat_rejected.load(Ordering::Relaxed), frames.len() as u64);
        assert_eq!(c.nat_udp_flows.load(Ordering::Relaxed), 0);
        assert_eq!(c.nat_tcp_flows.load(Ordering::Relaxed), 0);
        assert!(h.runner.flows.is_empty());
        let mut b = [0u8; 64];
        for s in [Some(&udp4), udp6.as_ref()].into_iter().flatten() {
            assert!(s.recv_from(&mut b).is_err(), "nothing reached the host");
        }
        assert!(tcp4.accept().is_err(), "no connection reached the host");
    }

    #[test]
    fn the_gateway_address_still_reaches_the_hosts_loopback_when_opted_in() {
        let udp4 = host_udp_server();
        let mut h = Harness::new(true);
        let b = udp_to_gateway(udp4.local_addr().expect("addr").port(), b"hello host");
        let now = h.runner.now().total_millis();
        punt_from_sandbox(&mut h, &b, now);
        let mut got = [0u8; 64];
        let (n, _) = udp4.recv_from(&mut got).expect("datagram at the host");
        assert_eq!(&got[..n], b"hello host");
        assert_eq!(h.runner.counters.nat_rejected.load(Ordering::Relaxed), 0);
    }

    /// A burst of replies larger than one round's share is relayed in full
    /// without waiting for another datagram: readiness is edge-triggered.
    #[test]
    fn a_burst_of_udp_replies_is_relayed_whole() {
        let server = host_udp_server();
        let mut h = Harness::new(true);
        let b = udp_to_gateway(server.local_addr().expect("addr").port(), b"start");
        let now = h.runner.now().total_millis();
        punt_from_sandbox(&mut h, &b, now);
        let mut got = [0u8; 64];
        let (_, flow) = server.recv_from(&mut got).expect("datagram at the host");
        let burst = 5 * UDP_REPLIES_PER_ROUND + 3;
        for i in 0..burst {
            server
                .send_to(&(i as u32).to_be_bytes(), flow)
                .expect("reply");
        }
        let _ = h.sent();
        let mut relayed = 0;
        for _ in 0..20 {
            h.round(20);
            relayed += h.sent().len();
            if relayed >= burst {
                break;
            }
        }
        assert_eq!(relayed, burst, "every reply, with no new one arriving");
    }

    /// An ICMP echo to the host's loopback is not carried to the host.
    #[test]
    fn echo_requests_to_the_hosts_loopback_are_rejected() {
        let mut h = Harness::new(true);
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(1).0, GW_MAC.0)
            .ipv4([10, 0, 0, 2], [127, 0, 0, 1], 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut b, b"ping")
            .expect("frame");
        let now = h.runner.now().total_millis();
        punt_from_sandbox(&mut h, &b, now);
        assert!(h.runner.flows.is_empty());
        assert_eq!(h.runner.counters.nat_rejected.load(Ordering::Relaxed), 1);
    }
}
