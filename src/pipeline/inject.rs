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

    /// Returns a frame taken from the data plane (e.g. a punted one).
    pub fn free(&mut self, f: Frame) {
        self.pool.free(f);
    }

    /// Takes a clean frame to build into, or `None` (counted) when the pool
    /// is empty.
    pub fn alloc(&mut self) -> Option<Frame> {
        let f = self.pool.alloc();
        if f.is_none() {
            self.counters.count_drop(DropReason::NoBuffer);
        }
        f
    }

    /// Sends a built frame out of `port`. True if it was handed to the
    /// port's worker.
    pub fn send_frame(&mut self, port: PortId, mut f: Frame) -> bool {
        let topo = self.topo.load();
        let Some((peer, network)) = topo
            .port(port)
            .and_then(|p| Some((self.peers.get(p.owner)?, p.network)))
        else {
            self.counters.count_drop(DropReason::NoRoute);
            self.pool.free(f);
            return false;
        };
        f.meta.action = Action::Output(port);
        f.meta.network = network;
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

    /// Sends `payload` as a UDP datagram addressed by `addrs` out of `port`.
    pub fn send_udp(
        &mut self,
        port: PortId,
        addrs: &crate::wire::udp_frame::UdpFrameAddrs,
        payload: &[u8],
    ) -> bool {
        self.send(port, |f| {
            match crate::wire::udp_frame::write(f.receive_space(), addrs, payload) {
                Ok(len) => {
                    f.set_len(len);
                    true
                }
                Err(_) => false,
            }
        })
    }

    /// Builds a frame with `build` (false: abandon it) and sends it out of
    /// `port`. True if it was handed to the port's worker.
    pub fn send(&mut self, port: PortId, build: impl FnOnce(&mut Frame) -> bool) -> bool {
        let Some(mut f) = self.alloc() else {
            return false;
        };
        if !build(&mut f) {
            self.pool.free(f);
            self.counters.count_drop(DropReason::TooBig);
            return false;
        }
        self.send_frame(port, f)
    }
}
