//! The store's own thread: a single-threaded tokio runtime that owns the
//! etcd client, keeps this host's lease alive, mirrors the prefix through a
//! watch, runs the blocking API's operations one at a time, and reconnects
//! with bounded backoff. Nothing async leaves this file and `ops.rs`.
//!
//! It also keeps what this host owes etcd: the records it owns (put back on
//! every reconnect) and the withdrawals that did not reach etcd (retried on
//! reconnect and every [`MAX_BACKOFF`] while connected), so a record removed
//! during an outage is never put back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam::channel::{Sender, TrySendError};
use etcd_client::{
    Client, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, WatchOptions, WatchStream,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

use super::config::ClusterConfig;
use super::error::ClusterError;
use super::keys::Key;
use super::keys::Keys;
use super::member::describe;
use super::records::{ClusterState, EndpointRecord, IpamLease, Mirror, NetworkRecord};
use super::{ClusterEvent, ClusterStatus};
use crate::control::model::validate_name;
use crate::control::net::Ipv4Net;

/// First retry delay after losing etcd.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay, so a returning etcd is noticed within ~2 s; also
/// how often withdrawals that failed are retried while connected.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a blocking caller waits for its answer.
pub(super) type Reply<T> = Sender<Result<T, ClusterError>>;

/// One blocking call.
pub(super) enum Op {
    /// Answers the record and whether this call created it.
    CreateNetwork(NetworkRecord, Reply<(NetworkRecord, bool)>),
    RemoveNetwork(String, Reply<()>),
    AllocateIp(IpRequest, Reply<Ipv4Addr>),
    ReleaseIp(String, Ipv4Addr, Reply<()>),
    PutEndpoint(EndpointRecord, Reply<()>),
    RemoveEndpoint(String, String, Reply<()>),
}

impl Op {
    /// The key a withdrawal (`ReleaseIp`, `RemoveEndpoint`) deletes; `None`
    /// for other operations and invalid names (those fail without effect).
    fn withdrawal(&self, keys: &Keys) -> Option<String> {
        match self {
            Op::ReleaseIp(net, ip, _) => validate_name("network", net)
                .ok()
                .map(|()| keys.key(&Key::Ipam(net.clone(), *ip))),
            Op::RemoveEndpoint(net, name, _) => validate_name("network", net)
                .and_then(|()| validate_name("endpoint", name))
                .ok()
                .map(|()| keys.key(&Key::Endpoint(net.clone(), name.clone()))),
            _ => None,
        }
    }

    /// Answers with an error without running.
    fn fail(self, e: ClusterError) {
        // A caller that gave up has dropped its receiver; nothing to tell.
        match self {
            Op::CreateNetwork(_, r) => {
                let _ = r.send(Err(e));
            }
            Op::AllocateIp(_, r) => {
                let _ = r.send(Err(e));
            }
            Op::RemoveNetwork(_, r)
            | Op::ReleaseIp(_, _, r)
            | Op::PutEndpoint(_, r)
            | Op::RemoveEndpoint(_, _, r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

/// The arguments of `Cluster::allocate_ip`.
pub(super) struct IpRequest {
    pub(super) network: String,
    pub(super) subnet: Ipv4Net,
    pub(super) gateway: Ipv4Addr,
    pub(super) requested: Option<Ipv4Addr>,
    pub(super) endpoint: String,
}

/// What the handle sends to the thread.
pub(super) enum Command {
    /// Run an operation unless `deadline` has passed.
    Op(Op, Instant),
    /// Stop; revoke the lease first unless this simulates a crash.
    Shutdown { revoke: bool },
}

/// State shared with the handle: read by `snapshot()` and `status()`.
pub(super) struct Shared {
    inner: Mutex<(ClusterState, ClusterStatus)>,
    events: Sender<ClusterEvent>,
}

impl Shared {
    pub(super) fn new(events: Sender<ClusterEvent>) -> Shared {
        Shared {
            inner: Mutex::new(Default::default()),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, (ClusterState, ClusterStatus)> {
        // The data is replaced whole, so a panicking writer leaves it usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn snapshot(&self) -> ClusterState {
        self.lock().0.clone()
    }

    pub(super) fn status(&self) -> ClusterStatus {
        self.lock().1.clone()
    }

    /// Queues an event; when the consumer is that far behind, dropping is
    /// fine: it will read `snapshot()` and `status()` anyway.
    fn emit(&self, event: ClusterEvent) {
        if let Err(TrySendError::Full(e)) = self.events.try_send(event) {
            tracing::debug!(event = ?e, "cluster event queue full; dropped");
        }
    }
}

/// Records this host wrote and puts back after losing etcd, by key, and
/// keys it asked to delete that may still be in etcd. A key is in at most
/// one of them: asking to withdraw a record takes it out of `endpoints` or
/// `ips` at once, whether or not etcd answers, so a reconnect never puts it
/// back; writing it again takes it out of `withdrawn`.
#[derive(Default)]
pub(super) struct Owned {
    pub(super) endpoints: BTreeMap<String, EndpointRecord>,
    pub(super) ips: BTreeMap<String, IpamLease>,
    pub(super) withdrawn: BTreeSet<String>,
}

impl Owned {
    /// Stops owning `key` and queues its deletion.
    pub(super) fn withdraw(&mut self, key: &str) {
        self.endpoints.remove(key);
        self.ips.remove(key);
        self.withdrawn.insert(key.to_string());
    }
}

/// How a session ended without an error.
enum Stop {
    Closed,
}

/// Why a session ended.
pub(super) enum SessionError {
    /// etcd failed or did not answer: retried with backoff.
    Lost(String),
    /// etcd answered, but this host may not join it as it is: fatal at the
    /// first connection, retried with backoff after that.
    Refused(ClusterError),
}

impl From<String> for SessionError {
    fn from(reason: String) -> SessionError {
        SessionError::Lost(reason)
    }
}

impl SessionError {
    /// What a caller of `Cluster::connect` is told.
    fn into_connect_error(self, endpoints: &[String]) -> ClusterError {
        match self {
            SessionError::Lost(reason) => ClusterError::Unreachable {
                endpoints: endpoints.join(","),
                reason,
            },
            SessionError::Refused(e) => e,
        }
    }

    /// Why the store is disconnected, for status and logs.
    fn reason(self) -> String {
        match self {
            SessionError::Lost(reason) => reason,
            SessionError::Refused(e) => e.to_string(),
        }
    }
}

/// The thread's state.
pub(super) struct Engine {
    pub(super) config: ClusterConfig,
    pub(super) keys: Keys,
    shared: Arc<Shared>,
    commands: UnboundedReceiver<Command>,
    /// This host's lease, kept across reconnects while etcd still knows it.
    lease: Option<i64>,
    /// Index in `config.endpoints` of the member to try first.
    pub(super) member: usize,
    pub(super) owned: Owned,
    pub(super) mirror: Mirror,
}

impl Engine {
    pub(super) fn new(
        config: ClusterConfig,
        shared: Arc<Shared>,
        commands: UnboundedReceiver<Command>,
    ) -> Engine {
        Engine {
            keys: Keys::new(&config.prefix),
            config,
            shared,
            commands,
            lease: None,
            member: 0,
            owned: Owned::default(),
            mirror: Mirror::default(),
        }
    }

    /// The thread body. `ready` gets the outcome of the first connection;
    /// if that fails the thread ends.
    pub(super) fn run(mut self, ready: Sender<Result<(), ClusterError>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(ClusterError::Spawn(e)));
                return;
            }
        };
        runtime.block_on(self.main(ready));
    }

    async fn main(&mut self, ready: Sender<Result<(), ClusterError>>) {
        let mut ready = Some(ready);
        let mut backoff = MIN_BACKOFF;
        loop {
            let was_connected = self.shared.status().connected;
            match self.session(&mut ready).await {
                Ok(Stop::Closed) => return,
                Err(e) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(e.into_connect_error(&self.config.endpoints)));
                        return;
                    }
                    let reason = e.reason();
                    self.next_member();
                    if self.shared.status().connected {
                        backoff = MIN_BACKOFF;
                    } else if !was_connected {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    self.set_disconnected(reason);
                    if self.wait_out(backoff).await.is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `backoff` while refusing operations; `Some` on shutdown.
    async fn wait_out(&mut self, backoff: Duration) -> Option<Stop> {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return None,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown { .. }) => return Some(Stop::Closed),
                    Some(Command::Op(op, _)) => {
                        // Done once etcd is back: the caller has moved on.
                        if let Some(key) = op.withdrawal(&self.keys) {
                            self.owned.withdraw(&key);
                        }
                        let why = self.shared.status().last_error.unwrap_or_default();
                        op.fail(ClusterError::Disconnected(why));
                    }
                },
            }
        }
    }

    /// One connection's life: connect, lease, restore, load, watch, serve.
    async fn session(
        &mut self,
        ready: &mut Option<Sender<Result<(), ClusterError>>>,
    ) -> Result<Stop, SessionError> {
        let t = self.config.op_timeout;
        let (mut client, lease) = self.connect_member().await?;
        let (keeper, alive) = bounded(t, client.lease_keep_alive(lease)).await?;
        // Its own task, so a slow operation never delays a renewal.
        let period =
            Duration::from_secs(u64::try_from(self.config.lease_ttl_secs()).unwrap_or(10)) / 3;
        let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
        let _renewals = AbortOnDrop(tokio::spawn(async move {
            let _ = lost_tx.send(renew(keeper, alive, period, t).await);
        }));
        self.restore(&mut client, lease).await?;
        let revision = self.load(&mut client).await?;
        let mut watch = self.watch_from(&mut client, revision + 1).await?;
        self.set_connected();
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let mut retry = tokio::time::interval(MAX_BACKOFF);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown { revoke: true }) => {
                        if let Err(e) = bounded(t, client.lease_revoke(lease)).await {
                            tracing::warn!("cannot revoke the cluster lease ({e}); it expires by itself");
                        }
                        return Ok(Stop::Closed);
                    }
                    Some(Command::Shutdown { revoke: false }) => return Ok(Stop::Closed),
                    Some(Command::Op(op, deadline)) => self.serve(&mut client, lease, op, deadline).await,
                },
                msg = watch.message() => self.on_watch(msg)?,
                _ = retry.tick(), if !self.owned.withdrawn.is_empty() => {
                    self.retry_withdrawals(&mut client).await;
                }
                reason = &mut lost => {
                    let reason = reason.unwrap_or_else(|_| "the lease renewal task ended".into());
                    return Err(SessionError::Lost(reason));
                }
            }
        }
    }

    /// Reuses the lease if etcd still has it, else grants a new one.
    pub(super) async fn ensure_lease(&mut self, client: &mut Client) -> Result<i64, String> {
        let t = self.config.op_timeout;
        if let Some(id) = self.lease {
            let left = bounded(t, client.lease_time_to_live(id, None)).await?;
            if left.ttl() > 0 {
                return Ok(id);
            }
            tracing::info!("cluster lease {id:x} expired while etcd was away; granting a new one");
        }
        let granted = bounded(t, client.lease_grant(self.config.lease_ttl_secs(), None)).await?;
        self.lease = Some(granted.id());
        Ok(granted.id())
    }

    /// Loads everything under the prefix; returns the revision.
    async fn load(&mut self, client: &mut Client) -> Result<i64, String> {
        let root = self.keys.root().to_string();
        let resp = bounded(
            self.config.op_timeout,
            client.get(root, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let bad = self.mirror.reset(
            &self.keys,
            resp.kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value(), kv.mod_revision())),
            revision,
        );
        for key in bad {
            tracing::warn!("ignoring invalid cluster record {key}");
        }
        Ok(revision)
    }

    async fn watch_from(&mut self, client: &mut Client, start: i64) -> Result<WatchStream, String> {
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let root = self.keys.root().to_string();
        bounded(self.config.op_timeout, client.watch(root, Some(options))).await
    }

    /// Applies one watch batch; an error ends the session (then resync).
    fn on_watch(
        &mut self,
        msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) -> Result<(), String> {
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err("the etcd watch stream ended".into()),
            Err(e) => return Err(format!("the etcd watch failed: {}", describe(&e))),
        };
        if resp.canceled() {
            return Err(format!(
                "etcd cancelled the watch ({}; compacted at {})",
                resp.cancel_reason(),
                resp.compact_revision()
            ));
        }
        if resp.events().is_empty() {
            return Ok(());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    if let Err(key) =
                        self.mirror
                            .put(&self.keys, kv.key(), kv.value(), kv.mod_revision())
                    {
                        tracing::warn!("ignoring invalid cluster record {key}");
                    }
                }
                EventType::Delete => self.mirror.delete(&self.keys, kv.key(), kv.mod_revision()),
            }
        }
        if let Some(h) = resp.header() {
            self.mirror.state.revision = self.mirror.state.revision.max(h.revision());
        }
        self.publish();
        Ok(())
    }

    /// Runs one operation within its deadline and answers it.
    async fn serve(&mut self, client: &mut Client, lease: i64, op: Op, deadline: Instant) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            if let Some(key) = op.withdrawal(&self.keys) {
                self.owned.withdraw(&key);
            }
            op.fail(ClusterError::Timeout(self.config.op_timeout));
            return;
        };
        let t = self.config.op_timeout;
        macro_rules! run {
            ($reply:expr, $fut:expr) => {{
                let r = match tokio::time::timeout(left, $fut).await {
                    Ok(r) => r,
                    Err(_) => Err(ClusterError::Timeout(t)),
                };
                // Publish first, so the caller reads its own write.
                self.publish();
                let _ = $reply.send(r);
            }};
        }
        match op {
            Op::CreateNetwork(n, reply) => run!(reply, self.create_network(client, n)),
            Op::RemoveNetwork(n, reply) => run!(reply, self.remove_network(client, &n)),
            Op::AllocateIp(req, reply) => run!(reply, self.allocate_ip(client, lease, &req)),
            Op::ReleaseIp(n, ip, reply) => run!(reply, self.release_ip(client, &n, ip)),
            Op::PutEndpoint(e, reply) => run!(reply, self.put_endpoint(client, lease, e)),
            Op::RemoveEndpoint(n, e, reply) => {
                run!(reply, self.remove_endpoint(client, &n, &e))
            }
        }
    }

    /// Copies the mirror out to readers and says it changed.
    pub(super) fn publish(&self) {
        let revision = self.mirror.state.revision;
        {
            let mut g = self.shared.lock();
            if g.0 == self.mirror.state {
                return;
            }
            g.0 = self.mirror.state.clone();
            g.1.revision = revision;
        }
        self.shared.emit(ClusterEvent::Changed { revision });
    }

    fn set_connected(&self) {
        {
            let mut g = self.shared.lock();
            g.0 = self.mirror.state.clone();
            g.1.connected = true;
            g.1.revision = self.mirror.state.revision;
        }
        self.shared.emit(ClusterEvent::Connected);
        self.shared.emit(ClusterEvent::Changed {
            revision: self.mirror.state.revision,
        });
    }

    fn set_disconnected(&self, reason: String) {
        let was = {
            let mut g = self.shared.lock();
            g.1.last_error = Some(reason.clone());
            std::mem::replace(&mut g.1.connected, false)
        };
        if was {
            tracing::warn!("lost the cluster store: {reason}; serving the last known state");
            self.shared.emit(ClusterEvent::Disconnected(reason));
        }
    }

    /// Notes a failure that does not end the session.
    pub(super) fn note_error(&self, what: String) {
        tracing::warn!("{what}");
        self.shared.lock().1.last_error = Some(what);
    }
}

/// Awaits `fut` for at most `t`, turning both failures into a reason.
pub(super) async fn bounded<T>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer from etcd within {t:?}")),
    }
}

/// Renews the lease every `period` until that fails; returns why.
async fn renew(
    mut keeper: LeaseKeeper,
    mut alive: LeaseKeepAliveStream,
    period: Duration,
    t: Duration,
) -> String {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = bounded(t, keeper.keep_alive()).await {
                    return format!("cannot renew the cluster lease: {e}");
                }
            }
            msg = alive.message() => match msg {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(Some(_)) => return "etcd says the cluster lease expired".into(),
                Ok(None) => return "the lease keep-alive stream ended".into(),
                Err(e) => return format!("the lease keep-alive failed: {}", describe(&e)),
            },
        }
    }
}

/// Stops a task when the session that started it ends (also on abandon,
/// which is how a crash stops renewals).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(network: &str, name: &str) -> EndpointRecord {
        EndpointRecord {
            network: network.into(),
            name: name.into(),
            aliases: vec![],
            mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            ipv4: Ipv4Addr::new(10, 0, 0, 2),
            ipv6: None,
            host: "h".into(),
            vtep: "192.0.2.1:4789".parse().expect("vtep"),
        }
    }

    #[test]
    fn a_withdrawn_record_is_no_longer_owned_but_queued() {
        let mut owned = Owned::default();
        owned.endpoints.insert("k/ep".into(), record("front", "db"));
        owned.ips.insert(
            "k/ip".into(),
            IpamLease {
                host: "h".into(),
                endpoint: "db".into(),
            },
        );
        owned.withdraw("k/ep");
        owned.withdraw("k/ip");
        assert!(owned.endpoints.is_empty() && owned.ips.is_empty());
        assert_eq!(owned.withdrawn.len(), 2);
    }

    #[test]
    fn only_valid_withdrawals_have_a_key() {
        let keys = Keys::new("/sy");
        let (tx, _rx) = crossbeam::channel::bounded(1);
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let release = Op::ReleaseIp("front".into(), ip, tx.clone());
        assert_eq!(
            release.withdrawal(&keys),
            Some(keys.key(&Key::Ipam("front".into(), ip)))
        );
        let remove = Op::RemoveEndpoint("front".into(), "db".into(), tx.clone());
        assert_eq!(
            remove.withdrawal(&keys),
            Some(keys.key(&Key::Endpoint("front".into(), "db".into())))
        );
        let bad = Op::RemoveEndpoint("front".into(), "no/slash".into(), tx.clone());
        assert_eq!(bad.withdrawal(&keys), None);
        let (tx2, _rx2) = crossbeam::channel::bounded(1);
        let put = Op::PutEndpoint(record("front", "db"), tx2);
        assert_eq!(put.withdrawal(&keys), None);
    }
}
