//! The data plane as the control plane sees it: starts the workers, publishes
//! topology changes (single writer), hands ports to workers and takes them
//! back, and sums counters. Adding or removing a port or network publishes a
//! new snapshot and never pauses traffic between other ports. Overlay
//! networks (the VXLAN endpoint and tunnel ports) are [`overlay`]'s.

mod overlay;

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{self, Sender};

use crate::clock::Clock;
use crate::pipeline::inject::Injector;
use crate::pipeline::pool::{shared_pool, BufferPool, SharedPool};
use crate::pipeline::punt::PuntQueue;
use crate::pipeline::trace::TraceReport;
use crate::pipeline::worker::{self, Command, Worker, WorkerConfig, WorkerParts, WorkerShared};
use crate::pipeline::Pipeline;
use crate::ports::fault::{FaultCounters, FaultPlan, FaultyPort};
use crate::ports::vxlan::{TunnelPort, VxlanRxPort, VxlanSockets};
use crate::ports::{Port, PortId};
use crate::stats::{self, PortCounterEntry, PortCounters, StatsSnapshot, WorkerCounters};
use crate::tables::mac::DEFAULT_CAP;
use crate::tables::overlay::{OverlaySpec, PortRole, VxlanConfig, MAX_VNI};
use crate::tables::topology::{
    shared_topology, GatewayInfo, NetworkId, NetworkInfo, PortInfo, PortSecurity, SharedTopology,
    Topology, WorkerId,
};

pub use overlay::OVERLAY_MTU;
use overlay::{OverlayState, VxlanState};

/// Errors of data-plane reconfiguration.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Starting a worker failed.
    #[error("cannot start data-plane worker: {0}")]
    Start(#[source] std::io::Error),
    /// Pinning a worker to its CPU failed.
    #[error("cannot pin data-plane worker {0} to CPU {1}: {2}")]
    Pin(usize, usize, #[source] std::io::Error),
    /// No such network.
    #[error("network {0:?} does not exist in the data plane")]
    UnknownNetwork(NetworkId),
    /// No such port.
    #[error("port {0} does not exist in the data plane")]
    UnknownPort(PortId),
    /// The network still has ports.
    #[error("network {0:?} still has {1} port(s) attached")]
    NetworkInUse(NetworkId, usize),
    /// More networks than the data plane can index.
    #[error("too many networks")]
    TooManyNetworks,
    /// A port was given without any queue.
    #[error("a port needs at least one queue")]
    NoQueues,
    /// A worker stopped.
    #[error("data-plane worker {0} is not running")]
    WorkerGone(WorkerId),
    /// The VXLAN socket could not be opened.
    #[error("cannot open the VXLAN socket on {0}: {1}")]
    Vxlan(std::net::SocketAddr, #[source] std::io::Error),
    /// An overlay network needs the VXLAN socket first.
    #[error("VXLAN is not started (no --advertise address)")]
    VxlanNotStarted,
    /// Not a valid VXLAN network identifier.
    #[error("invalid VNI {0} (1..=16777215)")]
    BadVni(u32),
    /// The VNI belongs to another overlay network of this switch.
    #[error("VNI {0} is already used by another overlay network here")]
    VniInUse(u32),
}

/// Data-plane settings.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Number of worker threads.
    pub workers: usize,
    /// Frame buffers preallocated in all.
    pub pool_frames: usize,
    /// Depth of each worker's inbox (frames and learn messages).
    pub inbox_depth: usize,
    /// Per-worker settings.
    pub worker: WorkerConfig,
    /// Gateway-stack threads, each with its own punt queue (0: one per
    /// worker).
    pub gateway_threads: usize,
    /// CPUs to pin workers to: worker `i` runs on `cpus[i % cpus.len()]`
    /// (`None` or empty: wherever the scheduler puts them).
    pub cpu_affinity: Option<Vec<usize>>,
    /// Faults every port's frames meet (testing: `--fault-inject`).
    pub fault: Option<FaultPlan>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pool_frames: 4096,
            inbox_depth: 1024,
            worker: WorkerConfig::default(),
            gateway_threads: 0,
            cpu_affinity: None,
            fault: None,
        }
    }
}

/// A network to add.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// The user's name.
    pub name: String,
    /// The gateway, if any.
    pub gateway: Option<GatewayInfo>,
    /// Endpoints may only talk to the gateway.
    pub isolate: bool,
    /// No traffic leaves through the gateway.
    pub internal: bool,
    /// MAC table cap (default 8192).
    pub mac_cap: Option<usize>,
    /// IPv4 subnet (address, prefix length): destinations outside it are
    /// the gateway's to carry out.
    pub subnet4: Option<(std::net::Ipv4Addr, u8)>,
    /// IPv6 subnet (address, prefix length), likewise.
    pub subnet6: Option<(std::net::Ipv6Addr, u8)>,
    /// The gateway address reaches the host's loopback.
    pub host_loopback: bool,
}

/// A port to add.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Network to attach to.
    pub network: NetworkId,
    /// What the port may send.
    pub security: PortSecurity,
    /// Worker to own it (default: the one with fewest ports).
    pub worker: Option<WorkerId>,
}

/// The running data plane.
pub struct Dataplane {
    topo: SharedTopology,
    shared: Vec<Arc<WorkerShared>>,
    commands: Vec<Sender<Command>>,
    threads: Vec<JoinHandle<()>>,
    port_counters: Vec<PortCounterEntry>,
    load: Vec<usize>,
    pool: SharedPool,
    punt: Arc<PuntQueue>,
    /// Counters of injectors (summed with the workers').
    injector_counters: Vec<Arc<WorkerCounters>>,
    /// The VXLAN endpoint, once started.
    vxlan: Option<VxlanState>,
    /// Overlay networks: their spec and tunnel ports.
    overlays: std::collections::BTreeMap<NetworkId, OverlayState>,
    /// Faults every new port's frames meet, and their counts.
    fault: Option<(FaultPlan, Arc<FaultCounters>)>,
}

impl Dataplane {
    /// Starts `config.workers` workers running the standard pipeline.
    pub fn start(
        config: DataplaneConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Dataplane, DataplaneError> {
        Self::start_with(config, clock, |_| Pipeline::standard())
    }

    /// Starts workers whose pipelines come from `make_pipeline(worker_id)`.
    pub fn start_with(
        config: DataplaneConfig,
        clock: Arc<dyn Clock>,
        make_pipeline: impl Fn(WorkerId) -> Pipeline,
    ) -> Result<Dataplane, DataplaneError> {
        let cpus = config.cpu_affinity.clone().unwrap_or_default();
        let (mut dp, workers) = Self::build(config, clock, make_pipeline, true)?;
        for w in workers {
            let id = dp.threads.len();
            let handle = std::thread::Builder::new()
                .name(format!("sy-worker-{id}"))
                .spawn(move || w.run())
                .map_err(DataplaneError::Start)?;
            // Pinned before it has a port: nothing runs on the wrong CPU.
            let pinned = match cpus.get(id % cpus.len().max(1)) {
                Some(&cpu) => crate::sys::affinity::pin(&handle, cpu)
                    .map(|()| tracing::info!(worker = id, cpu, "worker pinned"))
                    .map_err(|e| DataplaneError::Pin(id, cpu, e)),
                None => Ok(()),
            };
            dp.threads.push(handle);
            // On failure `dp` is dropped, which stops the workers started.
            pinned?;
        }
        Ok(dp)
    }

    /// A data plane whose workers are returned to the caller instead of
    /// running on threads: tests, fuzzing and benchmarks drive them by hand
    /// with [`Worker::run_once`]. Only fd-less ports (memory ports) work here.
    pub fn inline(
        config: DataplaneConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Dataplane, Vec<Worker>), DataplaneError> {
        Self::inline_with(config, clock, |_| Pipeline::standard())
    }

    /// [`Dataplane::inline`] with the pipeline `make_pipeline` builds for
    /// each worker.
    pub fn inline_with(
        config: DataplaneConfig,
        clock: Arc<dyn Clock>,
        make_pipeline: impl Fn(WorkerId) -> Pipeline,
    ) -> Result<(Dataplane, Vec<Worker>), DataplaneError> {
        Self::build(config, clock, make_pipeline, false)
    }

    fn build(
        config: DataplaneConfig,
        clock: Arc<dyn Clock>,
        make_pipeline: impl Fn(WorkerId) -> Pipeline,
        polled: bool,
    ) -> Result<(Dataplane, Vec<Worker>), DataplaneError> {
        // Port queue masks are 64 bits wide.
        let n = config.workers.clamp(1, 64);
        let topo = shared_topology();
        let pool = shared_pool(config.pool_frames.max(n * 256));
        let (shared, polls) = if polled {
            let (s, p) =
                worker::make_shared(n, config.inbox_depth).map_err(DataplaneError::Start)?;
            (s, p.into_iter().map(Some).collect())
        } else {
            let s = (0..n)
                .map(|_| worker::make_shared_unpolled(config.inbox_depth))
                .collect();
            (s, (0..n).map(|_| None).collect::<Vec<_>>())
        };
        let gateway_threads = match config.gateway_threads {
            0 => n,
            t => t,
        };
        let punt = Arc::new(PuntQueue::new(config.inbox_depth, gateway_threads));
        let mut commands = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for (id, poll) in polls.into_iter().enumerate() {
            let (tx, rx) = channel::unbounded();
            workers.push(Worker::new(WorkerParts {
                id,
                config: config.worker,
                pipeline: make_pipeline(id),
                pool: BufferPool::new(pool.clone(), config.pool_frames / n / 2),
                me: shared[id].clone(),
                peers: shared.clone(),
                commands: rx,
                topo: topo.clone(),
                clock: clock.clone(),
                poll,
                punt: punt.clone(),
            }));
            commands.push(tx);
        }
        let dp = Dataplane {
            topo,
            shared,
            commands,
            threads: Vec::with_capacity(n),
            port_counters: Vec::new(),
            load: vec![0; n],
            pool,
            punt,
            injector_counters: Vec::new(),
            vxlan: None,
            overlays: std::collections::BTreeMap::new(),
            fault: config
                .fault
                .map(|p| (p, Arc::new(FaultCounters::default()))),
        };
        Ok((dp, workers))
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.len()
    }

    /// The current topology snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.topo.load_full()
    }

    fn publish(&self, change: impl FnOnce(&mut Topology)) {
        let mut t = (*self.topo.load_full()).clone();
        change(&mut t);
        t.refresh_overlay_locals();
        self.topo.store(Arc::new(t));
    }

    fn send(&self, worker: WorkerId, cmd: Command) -> Result<(), DataplaneError> {
        let tx = self
            .commands
            .get(worker)
            .ok_or(DataplaneError::WorkerGone(worker))?;
        tx.send(cmd)
            .map_err(|_| DataplaneError::WorkerGone(worker))?;
        if let Some(w) = self.shared[worker].waker.as_ref() {
            let _ = w.wake();
        }
        Ok(())
    }

    /// Adds a network.
    pub fn add_network(&mut self, spec: NetworkSpec) -> Result<NetworkId, DataplaneError> {
        let id = self
            .topo
            .load()
            .free_network_id()
            .ok_or(DataplaneError::TooManyNetworks)?;
        self.publish(|t| {
            t.set_network(NetworkInfo {
                id,
                name: spec.name,
                ports: Vec::new(),
                gateway: spec.gateway,
                isolate: spec.isolate,
                internal: spec.internal,
                mac_cap: spec.mac_cap.unwrap_or(DEFAULT_CAP),
                subnet4: spec.subnet4,
                subnet6: spec.subnet6,
                host_loopback: spec.host_loopback,
            })
        });
        Ok(id)
    }

    /// Removes a network that has no ports left (its overlay tunnel ports,
    /// if any, are removed with it).
    pub fn remove_network(&mut self, id: NetworkId) -> Result<(), DataplaneError> {
        let topo = self.topo.load_full();
        let net = topo.network(id).ok_or(DataplaneError::UnknownNetwork(id))?;
        let local = net
            .ports
            .iter()
            .filter(|p| !topo.overlay.is_tunnel(**p))
            .count();
        if local > 0 {
            return Err(DataplaneError::NetworkInUse(id, local));
        }
        self.clear_overlay(id)?;
        let topo = self.topo.load_full();
        let net = topo.network(id).ok_or(DataplaneError::UnknownNetwork(id))?;
        if !net.ports.is_empty() {
            return Err(DataplaneError::NetworkInUse(id, net.ports.len()));
        }
        self.publish(|t| {
            t.remove_network(id);
        });
        for w in 0..self.workers() {
            self.send(w, Command::FlushNetwork(id))?;
        }
        Ok(())
    }

    /// Attaches a port; the chosen worker starts polling it at once.
    pub fn add_port(
        &mut self,
        spec: PortSpec,
        port: Box<dyn Port>,
    ) -> Result<PortId, DataplaneError> {
        self.add_port_queues(spec, vec![port])
    }

    /// Attaches a port with several queues (a multi-queue TAP): queue `i` is
    /// polled and written by its own worker, so frames to and from the port
    /// never cross between workers. With one queue, the worker is
    /// `spec.worker` or the one with the fewest queues. Queues beyond the
    /// number of workers are closed.
    pub fn add_port_queues(
        &mut self,
        spec: PortSpec,
        queues: Vec<Box<dyn Port>>,
    ) -> Result<PortId, DataplaneError> {
        self.add_port_with_role(spec, queues, PortRole::Local)
    }

    fn add_port_with_role(
        &mut self,
        spec: PortSpec,
        mut queues: Vec<Box<dyn Port>>,
        role: PortRole,
    ) -> Result<PortId, DataplaneError> {
        let topo = self.topo.load_full();
        if topo.network(spec.network).is_none() && role != PortRole::VxlanRx {
            return Err(DataplaneError::UnknownNetwork(spec.network));
        }
        let Some(first) = queues.first() else {
            return Err(DataplaneError::NoQueues);
        };
        let (name, caps) = (first.name().to_string(), first.caps());
        queues.truncate(self.workers().min(64));
        if let Some((plan, counters)) = &self.fault {
            queues = queues
                .into_iter()
                .map(|q| Box::new(FaultyPort::new(q, *plan, counters.clone())) as Box<dyn Port>)
                .collect();
        }
        let owners: Vec<WorkerId> = if queues.len() == 1 {
            vec![spec
                .worker
                .filter(|w| *w < self.workers())
                .unwrap_or_else(|| {
                    (0..self.load.len())
                        .min_by_key(|w| self.load[*w])
                        .unwrap_or(0)
                })]
        } else {
            (0..queues.len()).collect()
        };
        let id = topo.free_port_id();
        let gateway_mac = topo
            .network(spec.network)
            .and_then(|n| n.gateway.as_ref())
            .map(|g| g.mac);
        let mut blocks = Vec::with_capacity(queues.len());
        // Every worker must own its queue before others route frames to it.
        for (mut port, &w) in queues.into_iter().zip(&owners) {
            port.set_gateway_mac(gateway_mac);
            let counters = Arc::new(PortCounters::default());
            self.send(
                w,
                Command::AddPort {
                    id,
                    port,
                    counters: counters.clone(),
                },
            )?;
            self.load[w] += 1;
            blocks.push(counters);
        }
        let info = PortInfo {
            id,
            name: name.clone(),
            network: spec.network,
            owner: owners[0],
            queue_workers: owners.iter().fold(0u64, |m, w| m | 1 << w),
            caps,
            security: spec.security,
        };
        self.publish(|t| {
            t.overlay.set_role(id, role);
            t.add_port(info);
        });
        self.port_counters.push(PortCounterEntry {
            port: id,
            name,
            blocks,
        });
        Ok(id)
    }

    /// Detaches a port; its workers close its queues, and every worker
    /// forgets its MAC entries.
    pub fn remove_port(&mut self, id: PortId) -> Result<(), DataplaneError> {
        let topo = self.topo.load_full();
        let mask = topo
            .port(id)
            .ok_or(DataplaneError::UnknownPort(id))?
            .queue_workers;
        self.publish(|t| {
            t.remove_port(id);
        });
        for w in 0..self.workers() {
            if mask & (1 << w) != 0 {
                self.send(w, Command::RemovePort(id))?;
                self.load[w] = self.load[w].saturating_sub(1);
            } else {
                self.send(w, Command::FlushPort(id))?;
            }
        }
        self.port_counters.retain(|p| p.port != id);
        Ok(())
    }

    /// Explains what the pipeline does with `frame` arriving on `port` (run
    /// by the port's worker on a copy of its tables; nothing is sent).
    pub fn trace(&self, port: PortId, frame: Vec<u8>) -> Result<TraceReport, DataplaneError> {
        let owner = self
            .topo
            .load()
            .port(port)
            .ok_or(DataplaneError::UnknownPort(port))?
            .owner;
        let (tx, rx) = channel::bounded(1);
        self.send(
            owner,
            Command::Trace {
                in_port: port,
                frame,
                reply: tx,
            },
        )?;
        rx.recv_timeout(std::time::Duration::from_secs(2))
            .map_err(|_| DataplaneError::WorkerGone(owner))
    }

    /// Starts (`Some`) or stops (`None`) copying `port`'s frames into a
    /// capture, on every worker serving one of its queues.
    pub fn capture(
        &self,
        port: PortId,
        sink: Option<crate::pipeline::capture::CaptureSink>,
    ) -> Result<(), DataplaneError> {
        if self.topo.load().port(port).is_none() {
            return Err(DataplaneError::UnknownPort(port));
        }
        for w in 0..self.commands.len() {
            self.send(
                w,
                Command::Capture {
                    port,
                    sink: sink.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// The published topology (for control-plane threads that read it).
    pub fn shared_topology(&self) -> SharedTopology {
        self.topo.clone()
    }

    /// Frames the workers hand to the gateway stack.
    pub fn punted(&self) -> Arc<PuntQueue> {
        self.punt.clone()
    }

    /// A sender of frames into the data plane for one non-worker thread
    /// (its drops are counted with the workers').
    pub fn injector(&mut self) -> Injector {
        let counters = Arc::new(WorkerCounters::default());
        self.injector_counters.push(counters.clone());
        Injector::new(
            BufferPool::new(self.pool.clone(), 128),
            self.shared.clone(),
            self.topo.clone(),
            counters,
        )
    }

    /// Counters summed over workers and injectors.
    pub fn stats(&self) -> StatsSnapshot {
        let workers: Vec<_> = self
            .shared
            .iter()
            .map(|s| s.counters.clone())
            .chain(self.injector_counters.iter().cloned())
            .collect();
        let mut s = stats::snapshot(&workers, &self.port_counters);
        if let Some((_, faults)) = &self.fault {
            for (name, v) in faults.named() {
                s.events.insert(name.into(), v);
            }
        }
        s
    }

    /// Stops the workers and waits for them.
    pub fn shutdown(&mut self) {
        for w in 0..self.commands.len() {
            let _ = self.send(w, Command::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}
