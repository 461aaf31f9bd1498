//! Frames made outside the workers (answers from the DNS forwarder) enter the
//! data plane here: written into a pool buffer and handed, already decided,
//! to the inbox of the worker that owns the output port. Lock-free like the
//! workers' own hand-offs; a full inbox or empty pool is a counted drop.

use std::sync::Arc;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::pool::BufferPool;
use super::worker::WorkerShared;
use crate::ports::PortId;
use crate::stats::WorkerCounters;
use crate::tables::topology::SharedTopology;

/// A sender of frames into the data plane, owned by one non-worker thread.
pub struct Injector {
    pool: BufferPool,
    peers: Vec<Arc<WorkerShared>>,
    topo: SharedTopology,
    counters: Arc<WorkerCounters>,
}

impl Injector {
    /// An injector over the workers `peers`, counting into `counters` (which
    /// must have no other writer).
    pub fn new(
        pool: BufferPool,
        peers: Vec<Arc<WorkerShared>>,
        topo: SharedTopology,
        counters: Arc<WorkerCounters>,
    ) -> Injector {
        Injector {
            pool,
            peers,
            topo,
            counters,
        }
    }

    /// Builds a frame with `build` (false: abandon it) and sends it out of
    /// `port`. True if it was handed to the port's worker.
    pub fn send(&mut self, port: PortId, build: impl FnOnce(&mut Frame) -> bool) -> bool {
        let Some(owner) = self.topo.load().port(port).map(|p| p.owner) else {
            self.counters.count_drop(DropReason::NoRoute);
            return false;
        };
        let Some(peer) = self.peers.get(owner) else {
            self.counters.count_drop(DropReason::NoRoute);
            return false;
        };
        let Some(mut f) = self.pool.alloc() else {
            self.counters.count_drop(DropReason::NoBuffer);
            return false;
        };
        if !build(&mut f) {
            self.pool.free(f);
            self.counters.count_drop(DropReason::TooBig);
            return false;
        }
        f.meta.action = Action::Output(port);
        match peer.inbox.push(f) {
            Ok(()) => {
                peer.wake();
                true
            }
            Err(f) => {
                self.pool.free(f);
                self.counters.count_drop(DropReason::QueueFull);
                false
            }
        }
    }
}
