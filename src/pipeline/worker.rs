//! A run-to-completion worker: polls the ports it owns (mio, edge-triggered),
//! runs each received batch through the pipeline, and sends the results out
//! grouped by port. Frames for a port owned by another worker cross through
//! that worker's lock-free inbox; a full inbox drops with a counter, never
//! blocks. No locks and no allocation per packet: buffers come from the pool,
//! lists are preallocated and reused.
//!
//! Where a processed batch goes is [`output`]'s; how an idle worker waits
//! for work, [`wait`]'s.

mod output;
mod wait;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use crossbeam::queue::ArrayQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::busy_poll::BusyPoll;
use super::capture::CaptureSink;
use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::offload;
use super::pool::BufferPool;
use super::punt::PuntQueue;
use super::stage::{Pipeline, StageContext};
use super::trace::{self, TraceReport, TraceStep};
use super::BATCH_SIZE;
use crate::clock::{Clock, Millis};
use crate::ports::{Port, PortCaps, PortId};
use crate::stats::{bump, PortCounters, WorkerCounters};
use crate::tables::mac::{LearnMsg, MacConfig, MacTable};
use crate::tables::topology::{NetworkId, SharedTopology, Topology, WorkerId};

const WAKER: Token = Token(usize::MAX);
/// Interval between aging sweeps of the MAC table.
const AGING_SWEEP_MS: Millis = 1_000;

/// What other workers (and the control plane) see of a worker.
pub struct WorkerShared {
    /// Frames handed over by other workers, already decided (`Output`).
    pub inbox: ArrayQueue<Frame>,
    /// MAC learn announcements from other workers.
    pub learn_inbox: ArrayQueue<LearnMsg>,
    /// Set while the worker is (about to be) blocked in `poll`.
    pub sleeping: AtomicBool,
    /// Wakes the worker's poll.
    pub waker: Option<Waker>,
    /// The worker's counters.
    pub counters: Arc<WorkerCounters>,
}

/// Whether a learn inbox is full enough that its worker should drain it now.
fn learn_inbox_needs_draining(q: &ArrayQueue<LearnMsg>) -> bool {
    q.len() * 2 >= q.capacity()
}

impl WorkerShared {
    /// Wakes the worker if it is sleeping.
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            if let Some(w) = &self.waker {
                // A failed wake only delays the worker until its poll timeout.
                let _ = w.wake();
            }
        }
    }
}

/// Messages from the control plane.
pub enum Command {
    /// Start polling a port. Its topology entry must be published first.
    AddPort {
        /// Id in the topology.
        id: PortId,
        /// The port.
        port: Box<dyn Port>,
        /// Its counters (shared with the stats reader).
        counters: Arc<PortCounters>,
    },
    /// Stop polling a port and close it. Its topology entry must already be
    /// gone, so no new frames are routed to it.
    RemovePort(PortId),
    /// Forget MAC entries of a port that was removed from any worker.
    FlushPort(PortId),
    /// Forget MAC entries of a removed network.
    FlushNetwork(NetworkId),
    /// Explain what the pipeline does with a frame arriving on a port.
    Trace {
        /// Ingress port.
        in_port: PortId,
        /// The frame.
        frame: Vec<u8>,
        /// Where the report goes.
        reply: crossbeam::channel::Sender<TraceReport>,
    },
    /// Start (`Some`) or stop (`None`) copying a port's frames into a
    /// capture.
    Capture {
        /// The port.
        port: PortId,
        /// Where the copies go.
        sink: Option<CaptureSink>,
    },
    /// Leave the run loop.
    Stop,
}

/// Settings of a worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Batches read from one port before moving on to the next one.
    pub port_budget: usize,
    /// MAC aging and cap.
    pub mac: MacConfig,
    /// Initial capacity of the MAC table.
    pub mac_capacity: usize,
    /// Poll timeout when idle.
    pub idle_timeout: Duration,
    /// The most an idle worker keeps polling without sleeping, so a frame
    /// arriving soon after the last one needs no wake-up (zero: sleep at
    /// once). The budget actually spent adapts to the gaps between work
    /// ([`super::busy_poll`]): an idle switch or a trickle of traffic
    /// sleeps at once.
    pub busy_poll: Duration,
    /// Coalesce runs of datagrams of one UDP flow into one frame for ports
    /// that take UDP segmentation offload ([`crate::wire::udp_gro`]), and
    /// pass a sandbox's UDP GSO bursts to them whole; off, every datagram
    /// leaves as its own frame. TCP coalescing is not affected.
    pub udp_gro: bool,
}

/// Default busy-poll budget: on the 2-core reference machine 50 µs gave the
/// overlay's TCP stream 7-15 % more throughput in each of four alternating
/// A/B pairs against 0 (wake-ups between the tunnel socket and the TAP are
/// saved), 200 µs no more than 0, and TAP-to-TAP runs were unchanged within
/// their noise.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            port_budget: 8,
            mac: MacConfig::default(),
            mac_capacity: 1024,
            idle_timeout: Duration::from_millis(100),
            busy_poll: DEFAULT_BUSY_POLL,
            udp_gro: true,
        }
    }
}

struct Slot {
    port: Box<dyn Port>,
    caps: PortCaps,
    counters: Arc<PortCounters>,
    pending: Vec<Frame>,
    has_fd: bool,
    /// A running `switchyard capture` of this port.
    capture: Option<CaptureSink>,
}

/// One worker.
pub struct Worker {
    id: WorkerId,
    config: WorkerConfig,
    pipeline: Pipeline,
    pool: BufferPool,
    mac: MacTable,
    slots: Vec<Option<Slot>>,
    /// Ports without an fd: polled every iteration.
    unpolled: Vec<PortId>,
    /// Ports that were readable when their budget ran out.
    ready: VecDeque<PortId>,
    /// Ports with frames waiting in `pending`.
    dirty: Vec<PortId>,
    me: Arc<WorkerShared>,
    peers: Vec<Arc<WorkerShared>>,
    peers_to_wake: Vec<bool>,
    commands: Receiver<Command>,
    topo: SharedTopology,
    clock: Arc<dyn Clock>,
    poll: Option<Poll>,
    events: Events,
    batch: Vec<Frame>,
    scratch: Vec<Frame>,
    learned: Vec<LearnMsg>,
    last_sweep: Millis,
    punt: Arc<PuntQueue>,
    /// Punt shards pushed to in this batch, one bit each.
    punted: u64,
    /// How long to spin before sleeping, adapted to the gaps between work.
    busy: BusyPoll,
}

/// Everything needed to build a worker.
pub struct WorkerParts {
    /// Index of this worker.
    pub id: WorkerId,
    /// Settings.
    pub config: WorkerConfig,
    /// Stages to run.
    pub pipeline: Pipeline,
    /// Buffers.
    pub pool: BufferPool,
    /// This worker's shared side.
    pub me: Arc<WorkerShared>,
    /// Every worker's shared side, indexed by worker id (including this one).
    pub peers: Vec<Arc<WorkerShared>>,
    /// Control messages.
    pub commands: Receiver<Command>,
    /// Published topology.
    pub topo: SharedTopology,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The poller whose registry made `me.waker`, or `None` for a worker driven
    /// by hand (tests, benches) with only fd-less ports.
    pub poll: Option<Poll>,
    /// Where `Action::Punt` frames go.
    pub punt: Arc<PuntQueue>,
}

impl Worker {
    /// Builds a worker.
    pub fn new(parts: WorkerParts) -> Worker {
        let now = parts.clock.now();
        let n = parts.peers.len();
        Worker {
            id: parts.id,
            config: parts.config,
            busy: BusyPoll::new(parts.config.busy_poll),
            pipeline: parts.pipeline,
            pool: parts.pool,
            mac: MacTable::new(parts.config.mac, parts.config.mac_capacity),
            slots: Vec::new(),
            unpolled: Vec::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            me: parts.me,
            peers: parts.peers,
            peers_to_wake: vec![false; n],
            commands: parts.commands,
            topo: parts.topo,
            clock: parts.clock,
            poll: parts.poll,
            events: Events::with_capacity(256),
            batch: Vec::with_capacity(BATCH_SIZE),
            scratch: Vec::with_capacity(BATCH_SIZE * 4),
            learned: Vec::with_capacity(BATCH_SIZE),
            last_sweep: now,
            punt: parts.punt,
            punted: 0,
        }
    }

    /// This worker's MAC table (for inspection and tests).
    pub fn mac_table(&self) -> &MacTable {
        &self.mac
    }

    /// Runs until a `Stop` command arrives or the command channel closes.
    pub fn run(mut self) {
        while self.run_once_catching(self.config.idle_timeout) {}
    }

    /// [`Worker::run_once`], but a panic inside is caught. A panic is a bug,
    /// but it must not leave the switch up and silently forwarding nothing:
    /// it is logged and counted (`worker-restarts`), the frames in hand are
    /// dropped, and the worker goes on with the same ports and tables.
    pub fn run_once_catching(&mut self, timeout: Duration) -> bool {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_once(timeout)));
        let payload = match run {
            Ok(more) => return more,
            Err(payload) => payload,
        };
        bump(&self.me.counters.worker_restarts, 1);
        let restarts = self.me.counters.worker_restarts.load(Ordering::Relaxed);
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // Logged at first and then sparingly: a bug that every frame hits
        // would otherwise flood the log.
        if restarts <= 10 || restarts.is_power_of_two() {
            tracing::error!(
                worker = self.id,
                restarts,
                "worker loop panicked ({what}); frames in hand dropped, loop restarted"
            );
        }
        self.drop_in_flight();
        true
    }

    /// Returns every frame the worker holds between stages to the pool
    /// (after a panic left them in an unknown state).
    fn drop_in_flight(&mut self) {
        for f in self.batch.drain(..).chain(self.scratch.drain(..)) {
            self.pool.free(f);
        }
        for slot in self.slots.iter_mut().flatten() {
            for f in slot.pending.drain(..) {
                self.pool.free(f);
            }
        }
        self.dirty.clear();
    }

    /// One loop iteration: commands, inboxes, ports, aging, then poll for at
    /// most `timeout` (zero when work is pending). Returns false on `Stop`.
    pub fn run_once(&mut self, timeout: Duration) -> bool {
        if !self.handle_commands() {
            return false;
        }
        self.drain_inboxes();
        self.service_ports();
        self.sweep();
        self.wait(timeout);
        true
    }

    fn handle_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::AddPort { id, port, counters } => self.add_port(id, port, counters),
                Command::RemovePort(id) => self.remove_port(id),
                Command::FlushPort(id) => {
                    self.mac.flush_port(id);
                }
                Command::FlushNetwork(id) => {
                    self.mac.flush_network(id);
                }
                Command::Trace {
                    in_port,
                    frame,
                    reply,
                } => {
                    let _ = reply.send(self.trace(in_port, &frame));
                }
                Command::Capture { port, sink } => {
                    if let Some(Some(slot)) = self.slots.get_mut(port.0 as usize) {
                        slot.capture = sink;
                    }
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn add_port(&mut self, id: PortId, port: Box<dyn Port>, counters: Arc<PortCounters>) {
        let i = id.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        let fd = port.raw_fd();
        let registered = match (fd, &self.poll) {
            (Some(fd), Some(poll)) => poll
                .registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                .map_err(|e| tracing::warn!(port = %port.name(), error = %e, "cannot poll port"))
                .is_ok(),
            _ => false,
        };
        if registered {
            // Edge-triggered: read whatever arrived before registration.
            self.ready.push_back(id);
        } else if port.has_rx() {
            self.unpolled.push(id);
        }
        let mut caps = port.caps();
        caps.uso &= self.config.udp_gro;
        self.slots[i] = Some(Slot {
            port,
            caps,
            counters,
            pending: Vec::with_capacity(BATCH_SIZE),
            has_fd: registered,
            capture: None,
        });
    }

    fn remove_port(&mut self, id: PortId) {
        let Some(mut slot) = self.slots.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        if slot.has_fd {
            if let (Some(fd), Some(poll)) = (slot.port.raw_fd(), &self.poll) {
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
            }
        }
        for f in slot.pending.drain(..) {
            self.pool.free(f);
        }
        slot.port.release(&mut self.pool);
        self.unpolled.retain(|p| *p != id);
        self.ready.retain(|p| *p != id);
        self.dirty.retain(|p| *p != id);
        self.mac.flush_port(id);
    }

    fn drain_inboxes(&mut self) {
        let topo = self.topo.load();
        while let Some(msg) = self.me.learn_inbox.pop() {
            // A message about a port removed since (its flush may have come
            // first) must not revive the entry: the id may already serve
            // another network.
            if !topo.port_on(msg.port, msg.network) {
                continue;
            }
            let cap = topo
                .network(msg.network)
                .map_or(self.config.mac.default_cap, |n| n.mac_cap);
            self.mac.learn_remote(msg, cap);
        }
        // Bounded, so a busy peer cannot starve this worker's own ports.
        let mut n = 0;
        while n < BATCH_SIZE * self.config.port_budget {
            let Some(f) = self.me.inbox.pop() else { break };
            n += 1;
            match f.meta.action {
                // Checked again here: the port may have been replaced by one
                // of another network while the frame waited.
                Action::Output(p) if topo.port_on(p, f.meta.network) => {
                    self.enqueue_local(p, f);
                }
                Action::Output(_) => {
                    self.me.counters.count_drop(DropReason::NoRoute);
                    self.pool.free(f);
                }
                _ => self.pool.free(f),
            }
        }
        if n > 0 {
            bump(&self.me.counters.cross_received, n as u64);
            self.flush();
        }
    }

    fn service_ports(&mut self) {
        for i in 0..self.unpolled.len() {
            let id = self.unpolled[i];
            self.read_port(id);
        }
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if self.read_port(id) {
                self.ready.push_back(id);
            }
        }
    }

    /// Reads up to the budget of batches from a port; true if it may have more.
    fn read_port(&mut self, id: PortId) -> bool {
        for _ in 0..self.config.port_budget {
            let Some(Some(slot)) = self.slots.get_mut(id.0 as usize) else {
                return false;
            };
            let got = match slot.port.recv(&mut self.pool, &mut self.batch, BATCH_SIZE) {
                Ok(n) => n,
                // Counted, not logged: a dead TAP would log per wake-up.
                Err(_) => {
                    bump(&slot.counters.rx_errors, 1);
                    0
                }
            };
            let coalesced = slot.port.take_rx_coalesced();
            if coalesced > 0 {
                bump(&self.me.counters.gro_merged, coalesced);
            }
            let split = slot.port.take_rx_split();
            if split > 0 {
                bump(&self.me.counters.uso_split, split);
            }
            let errors = slot.port.take_rx_errors();
            if errors > 0 {
                bump(&slot.counters.rx_errors, errors);
                bump(
                    &self.me.counters.drops[DropReason::Malformed as usize],
                    errors,
                );
            }
            // A short read either hit EAGAIN (drained: the next arrival
            // raises a new edge) or ran out of buffers (keep the port ready).
            let starved = self.pool.local_len() == 0;
            if got == 0 {
                if starved {
                    self.me.counters.count_drop(DropReason::NoBuffer);
                }
                return starved;
            }
            if let Some(capture) = &slot.capture {
                capture.record(&self.batch);
            }
            let bytes: u64 = self.batch.iter().map(|f| f.len() as u64).sum();
            bump(&slot.counters.rx_packets, got as u64);
            bump(&slot.counters.rx_bytes, bytes);
            for f in self.batch.iter_mut() {
                f.meta.in_port = id;
            }
            self.process_batch();
            if got < BATCH_SIZE {
                return starved;
            }
        }
        true
    }

    /// Runs the pipeline over `self.batch` and sends the results.
    pub fn process_batch(&mut self) {
        let topo = self.topo.load_full();
        let now = self.clock.now();
        {
            let mut cx = StageContext {
                now,
                topo: &topo,
                mac: &mut self.mac,
                learned: &mut self.learned,
                counters: &self.me.counters,
                dry_run: false,
            };
            self.pipeline.run(&mut cx, &mut self.batch);
        }
        bump(&self.me.counters.batches, 1);
        self.dispatch(&topo);
        self.flush();
        self.announce();
    }

    /// Runs `bytes` through the pipeline as if received on `in_port`, on a
    /// copy of the MAC table and with scratch counters; nothing is sent.
    pub fn trace(&mut self, in_port: PortId, bytes: &[u8]) -> TraceReport {
        let topo = self.topo.load_full();
        let mut report = TraceReport {
            in_port,
            steps: Vec::new(),
            result: String::new(),
        };
        let Some(mut f) = self.pool.alloc() else {
            report.result = "drop: no-buffer".into();
            return report;
        };
        f.fill(bytes);
        f.meta.in_port = in_port;
        let mut frames = vec![f];
        let mut mac = self.mac.clone();
        let mut learned = Vec::new();
        let scratch = WorkerCounters::default();
        let mut cx = StageContext {
            now: self.clock.now(),
            topo: &topo,
            mac: &mut mac,
            learned: &mut learned,
            counters: &scratch,
            dry_run: true,
        };
        self.pipeline.run_traced(&mut cx, &mut frames, |stage, fs| {
            if let Some(f) = fs.first() {
                report.steps.push(TraceStep {
                    stage: stage.to_string(),
                    action: trace::describe(f.meta.action, &topo),
                });
            }
        });
        for f in frames {
            report.result = trace::outcome(&f, &topo);
            self.pool.free(f);
        }
        report
    }

    fn announce(&mut self) {
        if self.learned.is_empty() {
            return;
        }
        self.publish_mac_entries();
        for (w, peer) in self.peers.iter().enumerate() {
            if w == self.id {
                continue;
            }
            for msg in &self.learned {
                if peer.learn_inbox.push(*msg).is_err() {
                    bump(&self.me.counters.learn_msgs_lost, 1);
                }
            }
            // An idle peer reads its inbox only when it wakes: past half
            // full, wake it before a burst of new MACs (a flood) overflows
            // it. Below that, messages wait for its next wake-up.
            if learn_inbox_needs_draining(&peer.learn_inbox) {
                peer.wake();
            }
        }
        self.learned.clear();
    }

    fn sweep(&mut self) {
        let now = self.clock.now();
        if now.saturating_sub(self.last_sweep) >= AGING_SWEEP_MS {
            self.last_sweep = now;
            let aged = self.mac.age(now);
            bump(&self.me.counters.mac_aged, aged as u64);
            // Also catches what peers' messages and flushes changed.
            self.publish_mac_entries();
        }
    }

    fn publish_mac_entries(&self) {
        self.me
            .counters
            .mac_entries
            .store(self.mac.len() as u64, Ordering::Relaxed);
    }
}

/// Builds the shared side of `n` workers; each gets a poller and a waker.
pub fn make_shared(
    n: usize,
    inbox_depth: usize,
) -> io::Result<(Vec<Arc<WorkerShared>>, Vec<Poll>)> {
    let mut shared = Vec::with_capacity(n);
    let mut polls = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        shared.push(Arc::new(WorkerShared {
            inbox: ArrayQueue::new(inbox_depth.max(1)),
            learn_inbox: ArrayQueue::new(inbox_depth.max(1)),
            sleeping: AtomicBool::new(false),
            waker: Some(waker),
            counters: Arc::new(WorkerCounters::default()),
        }));
        polls.push(poll);
    }
    Ok((shared, polls))
}

/// The shared side of a worker without a poller (driven by hand).
pub fn make_shared_unpolled(inbox_depth: usize) -> Arc<WorkerShared> {
    Arc::new(WorkerShared {
        inbox: ArrayQueue::new(inbox_depth.max(1)),
        learn_inbox: ArrayQueue::new(inbox_depth.max(1)),
        sleeping: AtomicBool::new(false),
        waker: None,
        counters: Arc::new(WorkerCounters::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::topology::NetworkId;

    #[test]
    fn a_half_full_learn_inbox_wakes_its_sleeping_worker() {
        let (shared, mut polls) = make_shared(2, 8).unwrap();
        let peer = &shared[1];
        peer.sleeping.store(true, Ordering::SeqCst);
        let msg = |i: u8| LearnMsg {
            network: NetworkId(0),
            mac: crate::wire::MacAddr([2, 0, 0, 0, 0, i]),
            port: PortId(1),
            seen: 0,
        };
        for i in 0..3 {
            peer.learn_inbox.push(msg(i)).unwrap();
        }
        assert!(!learn_inbox_needs_draining(&peer.learn_inbox));
        peer.learn_inbox.push(msg(3)).unwrap();
        assert!(learn_inbox_needs_draining(&peer.learn_inbox));
        peer.wake();
        let mut events = Events::with_capacity(4);
        polls[1].poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.iter().any(|e| e.token() == WAKER), "woken");
    }
}
