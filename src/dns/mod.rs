//! Embedded DNS at every network's gateway: records published by the control
//! plane ([`records`]), the allocation-free responder the data-plane workers
//! call per query ([`answer`]), and the forwarder that takes names that are
//! not ours to the host's upstream resolvers ([`forward`], [`upstream`]).

pub mod answer;
pub mod forward;
pub mod records;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::ports::PortId;
use crate::wire::udp_frame::UdpFrameAddrs;
use crate::wire::MacAddr;
use records::{DnsSettings, DnsTable};

/// The UDP and TCP port the gateway serves DNS on.
pub const DNS_PORT: u16 = 53;

/// Where the answer to a forwarded query goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyRoute {
    /// A UDP client: the answer leaves as a frame from the gateway, out of
    /// the port the query came in on.
    Udp {
        /// The client's port.
        port: PortId,
        /// Gateway to client, as the answer's frame carries it.
        addrs: UdpFrameAddrs,
    },
    /// A TCP client of the gateway stack.
    Tcp {
        /// The stack's connection id.
        conn: u64,
    },
}

impl ReplyRoute {
    /// The route answering a UDP query sent from `client` (MAC, address) to
    /// the gateway (MAC, address).
    pub fn udp(
        port: PortId,
        gateway: (MacAddr, SocketAddr),
        client: (MacAddr, SocketAddr),
    ) -> ReplyRoute {
        ReplyRoute::Udp {
            port,
            addrs: UdpFrameAddrs {
                src_mac: gateway.0,
                dst_mac: client.0,
                src: gateway.1,
                dst: client.1,
            },
        }
    }
}

/// Takes queries for names that are not ours. Called from data-plane workers:
/// must not block.
pub trait QueryForwarder: Send + Sync {
    /// Queues `query` (a DNS message); its answer, at most `max_len` bytes,
    /// goes to `reply`. False if the queue is full.
    fn submit(&self, query: &[u8], reply: ReplyRoute, max_len: u16) -> bool;
}

/// What the data plane's DNS stage shares with the control plane: the
/// published records and, once started, the forwarder.
pub struct DnsService {
    /// Current records (single writer: the control plane).
    pub table: ArcSwap<DnsTable>,
    /// The forwarder, set once at start-up; without it, names that are not
    /// ours get SERVFAIL.
    pub forwarder: OnceLock<Arc<dyn QueryForwarder>>,
}

impl DnsService {
    /// A service with no records yet.
    pub fn new(settings: DnsSettings) -> Arc<DnsService> {
        Arc::new(DnsService {
            table: ArcSwap::from_pointee(DnsTable::build(settings, &[])),
            forwarder: OnceLock::new(),
        })
    }

    /// Publishes a new table.
    pub fn publish(&self, table: DnsTable) {
        self.table.store(Arc::new(table));
    }
}
