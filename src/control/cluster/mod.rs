//! Cluster store: networks, VNIs, IPAM leases, endpoints and hosts shared by
//! every Switchyard host through etcd (v3 API as of etcd 3.4: KV, txn, lease,
//! watch). A synchronous facade: [`Cluster`] owns one thread that runs the
//! async etcd client on its own tokio runtime; every method blocks for at most
//! [`ClusterConfig::op_timeout`], and changes arrive as [`ClusterEvent`]s on
//! a crossbeam channel.
//!
//! Guarantees:
//! - **Uniqueness**: VNIs, addresses and endpoint names are claimed with
//!   transactions (`create_revision == 0`), so two hosts never get the same.
//! - **Liveness**: this host's records (its [`HostRecord`], endpoints and
//!   address leases) are attached to a lease kept alive by the thread; a host
//!   that dies loses them after [`ClusterConfig::lease_ttl`]; a clean close
//!   (drop) revokes the lease so they go at once. Networks and VNI claims
//!   are persistent.
//! - **Availability**: [`Cluster::snapshot`] is served from memory and keeps
//!   the last known state while etcd is away; [`Cluster::status`] and a
//!   [`ClusterEvent::Disconnected`] report the loss. The thread retries
//!   with backoff (at most 2 s apart); on return it reuses the lease (or gets
//!   a new one), deletes the records this host withdrew meanwhile (a
//!   withdrawal is never undone by a reconnect), puts back every record
//!   this host still owns, reloads the state, watches from the new revision
//!   and emits [`ClusterEvent::Connected`] and [`ClusterEvent::Changed`].
//! - **Propagation**: a change made by another host is in `snapshot()`, and
//!   announced by `Changed`, as soon as etcd's watch delivers it (well under
//!   a second on a healthy cluster). A caller's own writes are in its
//!   `snapshot()` when the call returns.
//!
//! The key layout is in [`keys`]. Typical use by the daemon:
//! ```no_run
//! # use std::sync::Arc;
//! # use switchyard::control::cluster::*;
//! # fn main() -> Result<(), ClusterError> {
//! # let advertise = std::net::IpAddr::from([192, 0, 2, 10]);
//! let config = ClusterConfig::new("etcd://127.0.0.1:2379", advertise)?;
//! let cluster = Arc::new(Cluster::connect(config)?);
//! let events = cluster.events();
//! let reader = Arc::clone(&cluster);
//! std::thread::spawn(move || {
//!     for event in events {
//!         if let ClusterEvent::Changed { .. } = event {
//!             let state = reader.snapshot();
//!             for remote in state.remote_endpoints("front", &reader.config().host) {
//!                 // program remote.mac / remote.ipv4 behind remote.vtep
//!                 let _ = remote;
//!             }
//!         }
//!     }
//! });
//! # Ok(()) }
//! ```

mod alloc;
mod config;
mod engine;
mod error;
mod host;
pub mod keys;
mod member;
mod ops;
mod records;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver};
use tokio::sync::mpsc::UnboundedSender;

pub use alloc::FIRST_AUTO_VNI;
pub use config::{
    parse_store_url, ClusterConfig, DEFAULT_ETCD_PORT, DEFAULT_LEASE_TTL, DEFAULT_OP_TIMEOUT,
    DEFAULT_PREFIX, DEFAULT_VXLAN_PORT, MIN_LEASE_TTL,
};
pub use error::ClusterError;
pub use records::{ClusterState, EndpointRecord, HostRecord, IpamLease, NetworkRecord, MAX_VNI};

use crate::control::net::Ipv4Net;
use engine::{Command, Engine, IpRequest, Op, Shared};

/// Events are dropped (not queued without bound) past this many unread; a
/// consumer that far behind reads `snapshot()` and `status()` anyway.
pub const EVENT_QUEUE: usize = 1024;

/// What the store tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Connected to etcd (first time or again); a `Changed` follows.
    Connected,
    /// Lost etcd; the last known state is still served. The reason says why.
    Disconnected(String),
    /// The state changed (a watch batch, a resync or our own write): read
    /// [`Cluster::snapshot`].
    Changed {
        /// etcd revision of the new state.
        revision: i64,
    },
}

/// Health of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Whether the thread holds a working connection, lease and watch.
    pub connected: bool,
    /// The most recent failure (kept after recovery, for `status` output).
    pub last_error: Option<String>,
    /// etcd revision of the state in `snapshot()`.
    pub revision: i64,
}

/// Handle to the cluster store. Blocking, `Send + Sync`; dropping it closes
/// the store cleanly (revokes the lease).
pub struct Cluster {
    config: ClusterConfig,
    commands: UnboundedSender<Command>,
    shared: Arc<Shared>,
    events: Receiver<ClusterEvent>,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Starts the store's thread, connects, grants and keeps alive this
    /// host's lease, registers the host, loads the state and starts the
    /// watch. Fails with [`ClusterError::Unreachable`] when etcd does not
    /// answer (each step bounded by `op_timeout`).
    pub fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let (commands, rx) = tokio::sync::mpsc::unbounded_channel();
        let (events_tx, events) = channel::bounded(EVENT_QUEUE);
        let shared = Arc::new(Shared::new(events_tx));
        let engine = Engine::new(config.clone(), Arc::clone(&shared), rx);
        let (ready_tx, ready) = channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("cluster-store".into())
            .spawn(move || engine.run(ready_tx))
            .map_err(ClusterError::Spawn)?;
        let outcome = ready.recv().unwrap_or(Err(ClusterError::Stopped));
        if let Err(e) = outcome {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Cluster {
            config,
            commands,
            shared,
            events,
            thread: Some(thread),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Creates an overlay network, with its VNI claimed in the same
    /// transaction (`network.vni: None` takes the lowest free from 256 up).
    /// Idempotent: an existing network with the same options is returned
    /// as stored; other options give [`ClusterError::NetworkConflict`], a
    /// VNI of another network [`ClusterError::VniTaken`].
    pub fn create_network(&self, network: NetworkRecord) -> Result<NetworkRecord, ClusterError> {
        self.claim_network(network).map(|(stored, _)| stored)
    }

    /// [`Cluster::create_network`], also saying whether this call created
    /// the network (true) or found it already recorded (false): only the
    /// creator may take it back when its own later steps fail.
    pub fn claim_network(
        &self,
        network: NetworkRecord,
    ) -> Result<(NetworkRecord, bool), ClusterError> {
        self.call(|r| Op::CreateNetwork(network, r))
    }

    /// Removes a network, its VNI claim and its address leases. Succeeds if
    /// it does not exist; [`ClusterError::NetworkInUse`] while any host
    /// still has an endpoint on it.
    pub fn remove_network(&self, name: &str) -> Result<(), ClusterError> {
        self.call(|r| Op::RemoveNetwork(name.to_string(), r))
    }

    /// Leases an address of `subnet` to `endpoint` on this host, unique in
    /// the cluster: `requested` if free ([`ClusterError::AddressTaken`]
    /// otherwise; asking again for an address this endpoint holds succeeds),
    /// else the lowest free one, never the network, broadcast or `gateway`
    /// address. The lease lives as long as this host's etcd lease.
    pub fn allocate_ip(
        &self,
        network: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        requested: Option<Ipv4Addr>,
        endpoint: &str,
    ) -> Result<Ipv4Addr, ClusterError> {
        let request = IpRequest {
            network: network.to_string(),
            subnet,
            gateway,
            requested,
            endpoint: endpoint.to_string(),
        };
        self.call(|r| Op::AllocateIp(request, r))
    }

    /// Gives an address back. Succeeds if it is not leased;
    /// [`ClusterError::NotOwner`] if another host holds it. The lease is no
    /// longer this host's from the call on: when etcd does not answer, the
    /// error says so, the release is retried until etcd deletes the lease,
    /// and a reconnect never puts it back.
    pub fn release_ip(&self, network: &str, ip: Ipv4Addr) -> Result<(), ClusterError> {
        self.call(|r| Op::ReleaseIp(network.to_string(), ip, r))
    }

    /// Publishes (or updates) an endpoint of this host; `endpoint.host` must
    /// be this host's id. [`ClusterError::NotOwner`] if another host has an
    /// endpoint of that name on the network.
    pub fn put_endpoint(&self, endpoint: EndpointRecord) -> Result<(), ClusterError> {
        self.call(|r| Op::PutEndpoint(endpoint, r))
    }

    /// Withdraws an endpoint of this host. Succeeds if it does not exist.
    /// Like [`Cluster::release_ip`], a withdrawal etcd does not answer is
    /// retried (on reconnect, and every 2 s while connected) and the record
    /// is never put back; putting the endpoint again cancels the retry.
    pub fn remove_endpoint(&self, network: &str, name: &str) -> Result<(), ClusterError> {
        self.call(|r| Op::RemoveEndpoint(network.to_string(), name.to_string(), r))
    }

    /// The last known cluster state, from memory (works while etcd is down).
    pub fn snapshot(&self) -> ClusterState {
        self.shared.snapshot()
    }

    /// Connection health, last error and revision.
    pub fn status(&self) -> ClusterStatus {
        self.shared.status()
    }

    /// The event stream. Every clone shares one queue: have one consumer.
    /// It disconnects when the store stops (close, abandon or drop), so a
    /// consumer thread should not be what keeps the last handle alive.
    pub fn events(&self) -> Receiver<ClusterEvent> {
        self.events.clone()
    }

    /// Stops like a crash: no more keep-alives, no revoke, so this host's
    /// records stay until the lease TTL runs out. For tests of failure
    /// handling.
    pub fn abandon(mut self) {
        self.stop(false);
    }

    /// Closes cleanly: revokes the lease so other hosts drop this host's
    /// endpoints and addresses at once. Same as dropping the handle.
    pub fn close(mut self) {
        self.stop(true);
    }

    fn stop(&mut self, revoke: bool) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Shutdown { revoke });
            if thread.join().is_err() {
                tracing::error!("the cluster store thread panicked");
            }
        }
    }

    /// Sends an operation and waits for its answer until its deadline.
    fn call<T>(
        &self,
        make: impl FnOnce(channel::Sender<Result<T, ClusterError>>) -> Op,
    ) -> Result<T, ClusterError> {
        let (tx, rx) = channel::bounded(1);
        let deadline = Instant::now() + self.config.op_timeout;
        self.commands
            .send(Command::Op(make(tx), deadline))
            .map_err(|_| ClusterError::Stopped)?;
        // The thread answers by the deadline; the grace covers its last step.
        match rx.recv_deadline(deadline + Duration::from_millis(500)) {
            Ok(r) => r,
            Err(channel::RecvTimeoutError::Timeout) => {
                Err(ClusterError::Timeout(self.config.op_timeout))
            }
            Err(channel::RecvTimeoutError::Disconnected) => Err(ClusterError::Stopped),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Cluster>();
        check::<ClusterError>();
    }
}
