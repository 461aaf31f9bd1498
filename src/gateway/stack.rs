//! The gateway stack: control-plane threads (one per punt shard, by default
//! one per worker) each running a smoltcp interface per network, fed with the
//! frames workers punt to its shard and sending through an [`Injector`] of
//! its own. They terminate TCP connections to the gateway (DNS over TCP) and
//! carry sandboxes' flows to the outside over host sockets (NAT, see
//! [`super::nat`]). A sandbox's frames always reach the same thread, which
//! owns all its flows, so threads share nothing but the cap on flows in all.
//! Clients are announced to smoltcp's neighbour cache by
//! [`super::neighbours`]. This module owns the handle the control plane
//! holds (starting, commanding and stopping the threads) and what they
//! share with it (counters, DNS-over-TCP answers); each thread's state and
//! loop are [`runner`]'s.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::queue::ArrayQueue;
use mio::{Token, Waker};

use super::dns_tcp::ConnIds;
use super::flow::{FlowLimits, FlowTable};
use super::publish::{HostSocket, PublishTarget, StackCommand};
use crate::dns::DnsService;
use crate::pipeline::inject::Injector;
use crate::pipeline::punt::PuntQueue;
use crate::tables::topology::{NetworkId, SharedTopology};

mod runner;

pub(super) use runner::{NetStack, Runner, RunnerSetup};

const WAKER: Token = Token(0);
/// Frames taken from the punt queue per round, so answers keep flowing.
const ROUND: usize = 1024;
// smoltcp's neighbour cache (a cargo feature of smoltcp) holds a /24 of
// sandboxes per network and thread, not its default 8; clients beyond it
// are announced again when smoltcp asks for them (`heal_neighbours`).
const _: () = assert!(smoltcp::config::IFACE_NEIGHBOR_CACHE_COUNT >= 256);
/// Longest sleep when nothing is scheduled.
const MAX_SLEEP_MS: u64 = 500;

/// Counters of the gateway stack (single writer: its thread).
#[derive(Debug, Default)]
pub struct StackCounters {
    /// TCP connections to the gateway's DNS.
    pub dns_tcp_connections: AtomicU64,
    /// Queries read from them.
    pub dns_tcp_queries: AtomicU64,
    /// Of those, forwarded upstream.
    pub dns_tcp_forwarded: AtomicU64,
    /// Connections aborted for an unparsable message.
    pub dns_tcp_malformed: AtomicU64,
    /// Queries over TCP answered by the gateway (not forwarded).
    pub dns_tcp_answered: AtomicU64,
    /// Of those, NXDOMAIN.
    pub dns_tcp_nxdomain: AtomicU64,
    /// Of those, REFUSED.
    pub dns_tcp_refused: AtomicU64,
    /// Punted frames the stack could not take (unknown network, GSO).
    pub punt_unhandled: AtomicU64,
    /// Frames from the stack with no known port (or no buffer).
    pub unroutable: AtomicU64,
    /// TCP flows opened through the gateway.
    pub nat_tcp_flows: AtomicU64,
    /// UDP flows opened through the gateway.
    pub nat_udp_flows: AtomicU64,
    /// Host connects that failed (answered with RST).
    pub nat_refused: AtomicU64,
    /// Flows refused by the per-sandbox or total cap.
    pub nat_flow_cap: AtomicU64,
    /// Packets of no flow (RST or ICMP unreachable sent).
    pub nat_rejected: AtomicU64,
    /// Packets of protocols the gateway does not carry (e.g. ICMP echo
    /// where ping sockets are not allowed).
    pub nat_unsupported: AtomicU64,
    /// UDP datagrams that could not leave: the host socket refused them,
    /// or a published socket was gone.
    pub nat_udp_send_errors: AtomicU64,
    /// Flows open now (a gauge).
    pub nat_active: AtomicU64,
    /// ICMP echo flows opened through ping sockets.
    pub nat_icmp_flows: AtomicU64,
    /// ICMP echo refused: ping sockets are not allowed for the daemon's
    /// group (net.ipv4.ping_group_range).
    pub nat_icmp_denied: AtomicU64,
    /// Connections accepted on published TCP ports.
    pub published_tcp: AtomicU64,
    /// Loopback clients of published ports served by splice.
    pub published_spliced: AtomicU64,
    /// Client sessions on published UDP ports.
    pub published_udp: AtomicU64,
    /// Requests of the stack's smoltcp for a client it lost from its
    /// neighbour cache (dropped; the client is announced again).
    pub neighbour_misses: AtomicU64,
}

impl StackCounters {
    /// Each counter with its name in `switchyard stats`.
    pub fn named(&self) -> [(&'static str, &AtomicU64); 23] {
        [
            ("dns-tcp-connections", &self.dns_tcp_connections),
            ("dns-tcp-queries", &self.dns_tcp_queries),
            ("dns-tcp-forwarded", &self.dns_tcp_forwarded),
            ("dns-tcp-malformed", &self.dns_tcp_malformed),
            ("dns-tcp-answered", &self.dns_tcp_answered),
            ("dns-tcp-nxdomain", &self.dns_tcp_nxdomain),
            ("dns-tcp-refused", &self.dns_tcp_refused),
            ("punt-unhandled", &self.punt_unhandled),
            ("gateway-stack-unroutable", &self.unroutable),
            ("nat-tcp-flows", &self.nat_tcp_flows),
            ("nat-udp-flows", &self.nat_udp_flows),
            ("nat-refused", &self.nat_refused),
            ("nat-flow-cap", &self.nat_flow_cap),
            ("nat-rejected", &self.nat_rejected),
            ("nat-unsupported", &self.nat_unsupported),
            ("nat-udp-send-errors", &self.nat_udp_send_errors),
            ("nat-active-flows", &self.nat_active),
            ("nat-icmp-flows", &self.nat_icmp_flows),
            ("nat-icmp-denied", &self.nat_icmp_denied),
            ("published-tcp-connections", &self.published_tcp),
            ("published-udp-sessions", &self.published_udp),
            ("published-spliced", &self.published_spliced),
            ("gateway-stack-neighbour-misses", &self.neighbour_misses),
        ]
    }
}

/// An answer for a DNS-over-TCP connection: its id and the message.
type Answer = (u64, Vec<u8>);

/// Answers for TCP clients coming back from the forwarder, one queue per
/// stack thread; a connection's id says which thread holds it.
pub struct TcpAnswers {
    queues: Box<[ArrayQueue<Answer>]>,
    punt: Arc<PuntQueue>,
}

impl TcpAnswers {
    /// Queues `answer` for connection `conn` and wakes its thread. False if
    /// the queue is full (the client times out and retries).
    pub fn push(&self, conn: u64, answer: &[u8]) -> bool {
        let i = (conn % self.queues.len() as u64) as usize;
        let ok = self.queues[i].push((conn, answer.to_vec())).is_ok();
        self.punt.shard(i).wake();
        ok
    }
}

/// One stack thread as the daemon sees it.
struct Shard {
    commands: crossbeam::channel::Sender<StackCommand>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<StackCounters>,
}

/// The running stack threads, one per punt shard; stopped on drop.
///
/// Each thread owns the sandboxes whose data-plane port maps to its shard:
/// their NAT flows, published ports and DNS-over-TCP connections, with a
/// smoltcp interface per network of its own. Only the cap on flows in all is
/// shared (an atomic count); a sandbox's own cap stays exact because all its
/// flows live on one thread.
pub struct GatewayStack {
    shards: Vec<Shard>,
    answers: Arc<TcpAnswers>,
    punt: Arc<PuntQueue>,
}

impl GatewayStack {
    /// Starts one stack thread per shard of `punt`, each sending through
    /// one of `injectors` (as many as shards).
    pub fn start(
        punt: Arc<PuntQueue>,
        injectors: Vec<Injector>,
        dns: Arc<DnsService>,
        topo: SharedTopology,
        limits: FlowLimits,
    ) -> io::Result<GatewayStack> {
        let n = punt.shards();
        if injectors.len() != n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one injector per gateway-stack thread",
            ));
        }
        // Flow buffers (`tcp_nat::BUFFER`) each get a mapping of their own.
        if !crate::sys::mem::map_large_allocations(LARGE_ALLOCATION) {
            tracing::debug!("the allocator keeps its own threshold for mapped blocks");
        }
        let answers = Arc::new(TcpAnswers {
            queues: (0..n).map(|_| ArrayQueue::new(1024)).collect(),
            punt: punt.clone(),
        });
        let total = Arc::new(AtomicUsize::new(0));
        let mut stack = GatewayStack {
            shards: Vec::with_capacity(n),
            answers: answers.clone(),
            punt: punt.clone(),
        };
        for (shard, injector) in injectors.into_iter().enumerate() {
            let (commands_tx, commands) = crossbeam::channel::unbounded();
            let runner = Runner::new(RunnerSetup {
                punt: punt.clone(),
                shard,
                answers: answers.clone(),
                injector,
                dns: dns.clone(),
                topo: topo.clone(),
                conns: ConnIds::new(shard as u64, n as u64),
                flows: FlowTable::sharing(limits, total.clone()),
                commands,
            })?;
            let waker = Arc::new(Waker::new(runner.poll.registry(), WAKER)?);
            // Workers wake the thread through its punt shard.
            let _ = punt.shard(shard).waker.set(waker.clone());
            let (stop, counters) = (runner.stop.clone(), runner.counters.clone());
            // On error, `stack` drops here and stops the threads started.
            let thread = std::thread::Builder::new()
                .name(format!("sy-gwstack{shard}"))
                .spawn(move || runner.run())?;
            stack.shards.push(Shard {
                commands: commands_tx,
                stop,
                waker,
                thread: Some(thread),
                counters,
            });
        }
        Ok(stack)
    }

    /// How many stack threads run.
    pub fn threads(&self) -> usize {
        self.shards.len()
    }

    fn send(&self, shard: &Shard, cmd: StackCommand) -> bool {
        let sent = shard.commands.send(cmd).is_ok();
        if sent {
            let _ = shard.waker.wake();
        }
        sent
    }

    /// Serves a published socket on the thread that owns its sandbox.
    pub fn listen(&self, id: u64, socket: HostSocket, target: PublishTarget) {
        let shard = &self.shards[self.punt.shard_of(target.port)];
        self.send(shard, StackCommand::Listen { id, socket, target });
    }

    /// Drops every flow of a sandbox address that left `network`, on every
    /// thread (the address may be handed out again, to another port).
    pub fn forget(&self, network: NetworkId, ip: std::net::IpAddr) {
        for shard in &self.shards {
            self.send(shard, StackCommand::Forget { network, ip });
        }
    }

    /// Closes published socket `id` and waits (up to 2 s) until it is
    /// closed, so its port is free.
    pub fn close(&self, id: u64) {
        let (done, wait) = crossbeam::channel::bounded(self.shards.len());
        let mut asked = 0;
        for s in &self.shards {
            let done = done.clone();
            asked += usize::from(self.send(s, StackCommand::Close { id, done }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for _ in 0..asked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if wait.recv_timeout(left).is_err() {
                break;
            }
        }
    }

    /// Where the forwarder delivers answers for TCP clients.
    pub fn tcp_answers(&self) -> Arc<TcpAnswers> {
        self.answers.clone()
    }

    /// Each thread's counters.
    pub fn counters(&self) -> impl Iterator<Item = &StackCounters> {
        self.shards.iter().map(|s| &*s.counters)
    }

    /// Stops the threads and waits for them.
    pub fn shutdown(&mut self) {
        for s in &self.shards {
            s.stop.store(true, Ordering::SeqCst);
            let _ = s.waker.wake();
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for GatewayStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Allocations from this size up are mappings of their own: the TCP
/// flows' buffers, not the frames or the per-thread scratch buffers.
const LARGE_ALLOCATION: usize = 256 * 1024;

#[cfg(test)]
pub(super) mod harness;

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

    use super::harness::*;
    use super::*;
    use crate::gateway::flow::PacketInfo;
    use crate::pipeline::frame::Frame;
    use crate::ports::PortId;

    /// smoltcp's neighbour cache size (a cargo feature of smoltcp).
    const NEIGHBOUR_CACHE: usize = smoltcp::config::IFACE_NEIGHBOR_CACHE_COUNT;

    /// Sandbox `i` (from 0): IPv4 while the /24 has room, then IPv6.
    fn sandbox_ip(i: usize) -> IpAddr {
        match u8::try_from(i + 2).ok().filter(|&h| h < 255) {
            Some(h) => Ipv4Addr::new(10, 0, 0, h).into(),
            None => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i as u16).into(),
        }
    }

    /// With more sandboxes than smoltcp's neighbour cache holds, the first
    /// one announced is evicted; the SYN-ACK of its next connection used to
    /// wait (its ARP request dropped as chatter) until the sandbox's
    /// announcement was refreshed, 20 s on. Now the request makes the stack
    /// announce it again at once.
    #[test]
    fn an_evicted_sandbox_is_announced_again_and_its_syn_answered() {
        let host = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = host.local_addr().expect("addr").port();
        let mut h = Harness::new(true);
        let now = h.runner.now().total_millis();
        // The first sandbox is announced first, so its entry expires first
        // and is the one evicted.
        h.runner
            .announce_neighbour(NET, mac(1), sandbox_ip(0), PortId(1), now);
        h.round(0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let now = h.runner.now().total_millis();
        for i in 1..=NEIGHBOUR_CACHE {
            let n = i as u16 + 1;
            h.runner
                .announce_neighbour(NET, mac(n), sandbox_ip(i), PortId(n.into()), now);
        }
        h.round(0);
        assert!(h.sent().is_empty(), "announcements are answered to no one");

        let mut syn = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(1).0, GW_MAC.0)
            .ipv4([10, 0, 0, 2], GW4.octets(), 64)
            .tcp(40000, port, 1, 64240)
            .syn()
            .write(&mut syn, &[])
            .expect("syn");
        let f = Frame::parsed(&syn, PortId(1));
        let info = PacketInfo::parse(&f).expect("info");
        h.runner.dispatch(f, info, now);
        let mut syn_ack = None;
        for _ in 0..50 {
            h.round(10);
            syn_ack = h
                .sent()
                .into_iter()
                .find(|f| f[12..14] == [0x08, 0x00] && f[30..34] == [10, 0, 0, 2] && f[47] == 0x12);
            if syn_ack.is_some() {
                break;
            }
        }
        assert!(syn_ack.is_some(), "SYN-ACK within half a second");
        assert!(h.runner.counters.neighbour_misses.load(Ordering::Relaxed) >= 1);
        assert_eq!(h.runner.counters.unroutable.load(Ordering::Relaxed), 0);
    }

    /// A network removed and created again keeps its id and gateway; its
    /// stack used to keep the old network's `--host-loopback` (and MTU).
    #[test]
    fn a_network_recreated_with_other_settings_gets_a_new_stack() {
        let mut h = Harness::new(false);
        h.runner
            .announce_neighbour(NET, mac(1), sandbox_ip(0), PortId(1), 0);
        let net = h.runner.net(NET).expect("net");
        assert!(!net.host_loopback);
        assert_eq!(net.neighbours.len(), 1);
        h.runner.topo.store(Arc::new(topology(true)));
        let net = h.runner.net(NET).expect("net");
        assert!(net.host_loopback, "rebuilt with the new setting");
        assert!(net.neighbours.is_empty(), "nothing of the old one kept");
        // Unchanged settings keep the stack.
        h.runner
            .announce_neighbour(NET, mac(1), sandbox_ip(0), PortId(1), 0);
        assert_eq!(h.runner.net(NET).expect("net").neighbours.len(), 1);
    }
}
