//! One gateway stack thread: its smoltcp interfaces per network, the loop
//! that takes punted frames, commands and host-socket events in rounds, and
//! polls the interfaces until the next timer. What it does with NAT flows,
//! published ports and neighbours lives in the modules beside it, as more
//! `impl Runner` blocks.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::{Events, Poll};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::dns::answer::Responder;
use crate::dns::DnsService;
use crate::gateway::device::{PuntDevice, TxTally};
use crate::gateway::dns_tcp::{ConnIds, DnsTcp};
use crate::gateway::flow::{FlowTable, PacketInfo, PROTO_TCP};
use crate::gateway::nat::Flow;
use crate::gateway::publish::{Listener, StackCommand};
use crate::pipeline::frame::Frame;
use crate::pipeline::inject::Injector;
use crate::pipeline::punt::{PuntQueue, PuntShard};
use crate::ports::PortId;
use crate::stats::bump;
use crate::tables::topology::{GatewayInfo, NetworkId, SharedTopology};
use crate::wire::ethernet::EtherType;
use crate::wire::MacAddr;

use super::{StackCounters, TcpAnswers, MAX_SLEEP_MS, ROUND};

pub(in crate::gateway) struct NetStack {
    pub(in crate::gateway) gw: GatewayInfo,
    pub(in crate::gateway) iface: Interface,
    /// The interface of flows to sandboxes whose ports take offloads (MTU
    /// 64 KiB, TCP checksums left partial).
    pub(in crate::gateway) large: Interface,
    /// ARP for `large`'s neighbour cache.
    pub(in crate::gateway) large_rx: VecDeque<Frame>,
    idle: SocketSet<'static>,
    sockets: SocketSet<'static>,
    pub(in crate::gateway) rx: VecDeque<Frame>,
    /// Packets of no flow, polled against an empty socket set so smoltcp
    /// answers them (RST, ICMP port unreachable).
    pub(in crate::gateway) reject_rx: VecDeque<Frame>,
    reject: SocketSet<'static>,
    pub(in crate::gateway) clients: HashMap<MacAddr, PortId>,
    /// The clients announced to smoltcp, with when.
    pub(in crate::gateway) neighbours: HashMap<IpAddr, (MacAddr, i64)>,
    dns: DnsTcp,
    pub(in crate::gateway) mtu: usize,
    pub(in crate::gateway) host_loopback: bool,
}

pub(in crate::gateway) struct Runner {
    punt: Arc<PuntQueue>,
    /// This thread's punt shard (and answer queue).
    shard: usize,
    answers: Arc<TcpAnswers>,
    pub(in crate::gateway) injector: Injector,
    dns: Arc<DnsService>,
    pub(super) topo: SharedTopology,
    pub(in crate::gateway) nets: HashMap<NetworkId, NetStack>,
    responder: Responder,
    scratch: Vec<u8>,
    pub(in crate::gateway) done: Vec<Frame>,
    conns: ConnIds,
    pub(super) stop: Arc<AtomicBool>,
    pub(in crate::gateway) poll: Poll,
    epoch: std::time::Instant,
    pub(in crate::gateway) counters: Arc<StackCounters>,
    pub(in crate::gateway) flows: FlowTable<Flow>,
    pub(in crate::gateway) dirty: Vec<usize>,
    pub(in crate::gateway) udp_buf: Vec<u8>,
    commands: crossbeam::channel::Receiver<StackCommand>,
    pub(in crate::gateway) listeners: HashMap<u64, Listener>,
    pub(in crate::gateway) ready_listeners: Vec<u64>,
    pub(in crate::gateway) udp_peers: HashMap<(u64, std::net::SocketAddr), usize>,
    pub(in crate::gateway) next_ephemeral: u16,
    /// Loopback clients of this thread's published ports, spliced.
    pub(in crate::gateway) spliced: Arc<crate::gateway::splice::Spliced>,
    /// Clients smoltcp asked for since the last look (see
    /// [`Runner::heal_neighbours`]).
    pub(in crate::gateway) neighbour_misses: Vec<(NetworkId, IpAddr)>,
}

/// What a stack thread is given; the rest of its state starts empty.
pub(in crate::gateway) struct RunnerSetup {
    pub(in crate::gateway) punt: Arc<PuntQueue>,
    pub(in crate::gateway) shard: usize,
    pub(in crate::gateway) answers: Arc<TcpAnswers>,
    pub(in crate::gateway) injector: Injector,
    pub(in crate::gateway) dns: Arc<DnsService>,
    pub(in crate::gateway) topo: SharedTopology,
    pub(in crate::gateway) conns: ConnIds,
    pub(in crate::gateway) flows: FlowTable<Flow>,
    pub(in crate::gateway) commands: crossbeam::channel::Receiver<StackCommand>,
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // Without entropy smoltcp still works; only its ISNs get predictable.
    let _ = getrandom::fill(&mut b);
    u64::from_ne_bytes(b)
}

impl Runner {
    pub(in crate::gateway) fn new(s: RunnerSetup) -> io::Result<Runner> {
        Ok(Runner {
            punt: s.punt,
            shard: s.shard,
            answers: s.answers,
            injector: s.injector,
            dns: s.dns,
            topo: s.topo,
            nets: HashMap::new(),
            responder: Responder::default(),
            scratch: Vec::with_capacity(u16::MAX as usize),
            done: Vec::new(),
            conns: s.conns,
            stop: Arc::new(AtomicBool::new(false)),
            poll: Poll::new()?,
            epoch: std::time::Instant::now(),
            counters: Arc::default(),
            flows: s.flows,
            dirty: Vec::new(),
            udp_buf: vec![0; u16::MAX as usize],
            commands: s.commands,
            listeners: HashMap::new(),
            ready_listeners: Vec::new(),
            udp_peers: HashMap::new(),
            next_ephemeral: 0,
            spliced: Arc::default(),
            neighbour_misses: Vec::new(),
        })
    }

    pub(in crate::gateway) fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as i64)
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::SeqCst) {
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd);
            }
            self.take_punted();
            self.take_answers();
            self.serve_listeners();
            let mut delay = self.service();
            self.drive_flows();
            // Flows that waited for a lost neighbour go on next round.
            let healed = self.heal_neighbours();
            if let Some(t) = self.flows.next_wake() {
                let ms = (t - self.now().total_millis()).max(0) as u64;
                delay = delay.min(std::time::Duration::from_millis(ms));
            }
            self.inbox().sleeping.store(true, Ordering::SeqCst);
            // A connect that failed this round left its SYN in `reject_rx`
            // for the next `service()` to answer with a RST: at once, not
            // after the longest sleep.
            let busy = !self.inbox().frames.is_empty()
                || !self.answers.queues[self.shard].is_empty()
                || !self.ready_listeners.is_empty()
                || !self.commands.is_empty()
                || !self.dirty.is_empty()
                || self.nets.values().any(|n| !n.reject_rx.is_empty())
                || healed;
            let timeout = if busy {
                std::time::Duration::ZERO
            } else {
                delay
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("gateway stack poll failed: {e}");
                }
            }
            self.inbox().sleeping.store(false, Ordering::SeqCst);
            self.host_events(&events);
        }
        for (_, mut net) in self.nets.drain() {
            for f in net.rx.drain(..) {
                self.injector.free(f);
            }
        }
    }

    /// This thread's punt shard.
    fn inbox(&self) -> &PuntShard {
        self.punt.shard(self.shard)
    }

    /// True if the data-plane port takes offloads (GSO, partial checksums).
    pub(in crate::gateway) fn port_offload(&self, port: PortId) -> bool {
        self.topo.load().port(port).is_some_and(|p| p.caps.offload)
    }

    /// The network's stack, (re)built when its gateway, `--host-loopback` or
    /// MTU changed (a network removed and created again under the same id
    /// and gateway must not keep the old one's settings).
    pub(in crate::gateway) fn net(&mut self, id: NetworkId) -> Option<&mut NetStack> {
        let topo = self.topo.load();
        let Some(info) = topo.network(id) else {
            self.drop_net(id);
            return None;
        };
        let host_loopback = info.host_loopback;
        let Some(gw) = info.gateway.as_ref() else {
            self.drop_net(id);
            return None;
        };
        let table = self.dns.table.load();
        let zone = table.zone(id);
        let mtu = zone.map_or(1500, |z| usize::from(z.mtu));
        // Called per punted frame: compare in place, clone only to rebuild.
        match self.nets.get(&id) {
            Some(n) if n.gw == *gw && n.host_loopback == host_loopback && n.mtu == mtu => {
                return self.nets.get_mut(&id)
            }
            Some(_) => self.drop_net(id),
            None => {}
        }
        let gw = gw.clone();
        let prefix = |v4: bool| {
            zone.and_then(|z| {
                z.subnets
                    .iter()
                    .find(|(a, _)| a.is_ipv4() == v4)
                    .map(|s| s.1)
            })
        };
        let mut addrs = Vec::new();
        if let Some(gw4) = gw.ipv4 {
            addrs.push(IpCidr::new(gw4.into(), prefix(true).unwrap_or(24)));
        }
        if let Some(gw6) = gw.ipv6 {
            addrs.push(IpCidr::new(gw6.into(), prefix(false).unwrap_or(64)));
        }
        if addrs.is_empty() {
            return None;
        }
        let now = self.now();
        let iface = self.make_iface(&gw, &addrs, mtu, false, now);
        let large = self.make_iface(&gw, &addrs, mtu, true, now);
        self.nets.insert(
            id,
            NetStack {
                gw,
                iface,
                large,
                large_rx: VecDeque::new(),
                idle: SocketSet::new(Vec::new()),
                sockets: SocketSet::new(Vec::new()),
                rx: VecDeque::new(),
                reject_rx: VecDeque::new(),
                reject: SocketSet::new(Vec::new()),
                clients: HashMap::new(),
                neighbours: HashMap::new(),
                dns: DnsTcp::default(),
                mtu,
                host_loopback,
            },
        );
        self.nets.get_mut(&id)
    }

    /// A smoltcp interface for a network's gateway that answers for every
    /// address (NAT); `offload` ones send large TCP segments.
    fn make_iface(
        &mut self,
        gw: &GatewayInfo,
        addrs: &[IpCidr],
        mtu: usize,
        offload: bool,
        now: Instant,
    ) -> Interface {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(gw.mac.0)));
        config.random_seed = random_seed();
        let mut rx = VecDeque::new();
        let mut done = Vec::new();
        let clients = HashMap::new();
        let mut tally = TxTally::default();
        // The interface takes its capabilities from this device, once.
        let mut dev = PuntDevice::new(
            &mut rx,
            &mut done,
            &mut self.injector,
            &clients,
            &mut tally,
            mtu,
            offload,
        );
        let mut iface = Interface::new(config, &mut dev, now);
        iface.update_ip_addrs(|a| {
            for cidr in addrs {
                let _ = a.push(*cidr);
            }
        });
        // NAT: answer for every address the sandboxes dial.
        iface.set_any_ip(true);
        if let Some(gw4) = gw.ipv4 {
            let _ = iface.routes_mut().add_default_ipv4_route(gw4);
        }
        if let Some(gw6) = gw.ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(gw6);
        }
        iface
    }

    fn drop_net(&mut self, id: NetworkId) {
        if let Some(mut n) = self.nets.remove(&id) {
            for f in n.rx.drain(..).chain(n.reject_rx.drain(..)) {
                self.injector.free(f);
            }
        }
    }

    fn take_punted(&mut self) {
        let now = self.now().total_millis();
        for _ in 0..ROUND {
            let Some(f) = self.inbox().frames.pop() else {
                break;
            };
            if !matches!(f.meta.ethertype, EtherType::Ipv4 | EtherType::Ipv6) {
                bump(&self.counters.punt_unhandled, 1);
                self.injector.free(f);
                continue;
            }
            let (mac, port, id) = (f.meta.src, f.meta.in_port, f.meta.network);
            let Some(info) = PacketInfo::parse(&f) else {
                bump(&self.counters.punt_unhandled, 1);
                self.injector.free(f);
                continue;
            };
            self.announce_neighbour(id, mac, info.key.local.ip(), port, now);
            let Some(net) = self.nets.get_mut(&id) else {
                bump(&self.counters.punt_unhandled, 1);
                self.injector.free(f);
                continue;
            };
            let gw = info.key.remote.ip();
            let to_dns = info.key.proto == PROTO_TCP
                && info.key.remote.port() == crate::dns::DNS_PORT
                && (Some(gw) == net.gw.ipv4.map(IpAddr::V4)
                    || Some(gw) == net.gw.ipv6.map(IpAddr::V6));
            if to_dns {
                net.rx.push_back(f);
            } else {
                self.dispatch(f, info, now);
            }
        }
    }

    fn take_answers(&mut self) {
        while let Some((conn, answer)) = self.answers.queues[self.shard].pop() {
            for net in self.nets.values_mut() {
                if let Some(h) = net.dns.socket_of(conn) {
                    net.dns.deliver(&mut net.sockets, h, &answer);
                    break;
                }
            }
        }
    }

    /// Polls every interface and serves DNS; returns how long to sleep.
    pub(super) fn service(&mut self) -> std::time::Duration {
        let now = self.now();
        let table = self.dns.table.load();
        let forwarder = self.dns.forwarder.get().cloned();
        let mut sleep = std::time::Duration::from_millis(MAX_SLEEP_MS);
        let mut tally = TxTally::default();
        for (id, net) in self.nets.iter_mut() {
            net.dns.listen(&mut net.sockets, &mut self.conns, now);
            let mut reject = PuntDevice::new(
                &mut net.reject_rx,
                &mut self.done,
                &mut self.injector,
                &net.clients,
                &mut tally,
                net.mtu,
                false,
            );
            net.iface.poll(now, &mut reject, &mut net.reject);
            let mut arp = PuntDevice::new(
                &mut net.large_rx,
                &mut self.done,
                &mut self.injector,
                &net.clients,
                &mut tally,
                net.mtu,
                true,
            );
            net.large.poll(now, &mut arp, &mut net.idle);
            for _ in 0..2 {
                let mut dev = PuntDevice::new(
                    &mut net.rx,
                    &mut self.done,
                    &mut self.injector,
                    &net.clients,
                    &mut tally,
                    net.mtu,
                    false,
                );
                net.iface.poll(now, &mut dev, &mut net.sockets);
                let served = net.dns.serve(
                    &mut net.sockets,
                    now,
                    &table.settings,
                    table.zone(*id),
                    &mut self.responder,
                    forwarder.as_deref(),
                    &mut self.scratch,
                );
                bump(&self.counters.dns_tcp_connections, served.accepted);
                bump(&self.counters.dns_tcp_queries, served.queries);
                bump(&self.counters.dns_tcp_forwarded, served.forwarded);
                bump(&self.counters.dns_tcp_malformed, served.malformed);
                bump(&self.counters.dns_tcp_answered, served.answered);
                bump(&self.counters.dns_tcp_nxdomain, served.nxdomain);
                bump(&self.counters.dns_tcp_refused, served.refused);
            }
            if let Some(d) = net.iface.poll_delay(now, &net.sockets) {
                sleep = sleep.min(std::time::Duration::from_millis(d.total_millis()));
            }
            let lost = tally.solicited.drain(..).map(|ip| (*id, ip));
            self.neighbour_misses.extend(lost);
        }
        for f in self.done.drain(..) {
            self.injector.free(f);
        }
        bump(&self.counters.unroutable, tally.unroutable);
        sleep
    }
}
