//! Where a worker's processed batch goes: each frame to its port's pending
//! list (written in one batch per port by [`Worker::flush`]), to the inbox of
//! the worker that serves the port, to the gateway's punt queue, or copied
//! to every port of its network (flooding, with the overlay's head-end
//! replication and split horizon); every frame that goes nowhere is a
//! counted drop.

use super::*;

impl Worker {
    pub(super) fn dispatch(&mut self, topo: &Topology) {
        let mut batch = std::mem::take(&mut self.batch);
        // The port the previous frame was queued on locally: a batch mostly
        // goes to one port, and its followers skip the route lookup.
        let mut last_local = None;
        for f in batch.drain(..) {
            match f.meta.action {
                // Pushed here rather than through enqueue_local: the slot is
                // already marked dirty, and the call per frame cost 20 more
                // instructions per frame in the 1k-MAC bench (callgrind).
                Action::Output(p) if last_local == Some(p) => {
                    match self.slots.get_mut(p.0 as usize) {
                        Some(Some(slot)) => slot.pending.push(f),
                        _ => {
                            self.enqueue_local(p, f);
                        }
                    }
                }
                Action::Drop(reason) => {
                    self.me.counters.count_drop(reason);
                    self.pool.free(f);
                }
                Action::Consumed => self.pool.free(f),
                Action::Continue => {
                    self.me.counters.count_drop(DropReason::NoRoute);
                    self.pool.free(f);
                }
                Action::Output(p) => {
                    last_local = self.route(topo, p, f).then_some(p);
                }
                Action::Flood => {
                    last_local = None;
                    self.flood(topo, f);
                }
                Action::Punt => match self.punt.push(f) {
                    Ok(shard) => self.punted |= 1 << shard,
                    Err(f) => {
                        self.me.counters.count_drop(DropReason::PuntFull);
                        self.pool.free(f);
                    }
                },
            }
        }
        self.batch = batch;
        let punted = std::mem::take(&mut self.punted);
        if punted != 0 {
            self.punt.wake(punted);
        }
    }

    fn flood(&mut self, topo: &Topology, f: Frame) {
        bump(&self.me.counters.flooded, 1);
        let Some(net) = topo.network(f.meta.network) else {
            self.me.counters.count_drop(DropReason::UnknownPort);
            self.pool.free(f);
            return;
        };
        // Overlay: broadcast and multicast from a local port are replicated
        // to every remote VTEP (head-end replication); nothing from a VTEP
        // goes back out to VTEPs (split horizon), nor does unknown unicast.
        let in_port = f.meta.in_port;
        let tunnels = topo
            .overlay
            .net(f.meta.network)
            .is_some_and(|o| !o.tunnels.is_empty());
        let from_tunnel = tunnels && topo.overlay.is_tunnel(in_port);
        let unicast = !f.meta.dst.is_multicast();
        let local_only = tunnels && (unicast || from_tunnel);
        if tunnels && unicast && !from_tunnel {
            self.me
                .counters
                .count_drop(DropReason::OverlayUnknownUnicast);
        }
        let targets = net
            .ports
            .iter()
            .filter(|p| **p != in_port && !(local_only && topo.overlay.is_tunnel(**p)));
        let count = targets.clone().count();
        if count == 0 {
            self.me.counters.count_drop(DropReason::NoRoute);
            self.pool.free(f);
            return;
        }
        for (i, &p) in targets.enumerate() {
            if i + 1 == count {
                let mut last = f;
                last.meta.action = Action::Output(p);
                self.route(topo, p, last);
                return;
            }
            let Some(mut copy) = self.pool.alloc() else {
                self.me.counters.count_drop(DropReason::NoBuffer);
                continue;
            };
            copy.copy_from(&f);
            copy.meta.action = Action::Output(p);
            self.route(topo, p, copy);
        }
    }

    /// Queues `f` for port `p`: on this worker when it serves one of the
    /// port's queues, else in the owner's inbox. True if queued locally.
    fn route(&mut self, topo: &Topology, p: PortId, mut f: Frame) -> bool {
        let Some(info) = topo.port(p) else {
            self.me.counters.count_drop(DropReason::NoRoute);
            self.pool.free(f);
            return false;
        };
        if info.queue_workers & (1 << self.id) != 0 {
            return self.enqueue_local(p, f);
        }
        let Some(peer) = self.peers.get(info.owner) else {
            self.me.counters.count_drop(DropReason::NoRoute);
            self.pool.free(f);
            return false;
        };
        f.meta.action = Action::Output(p);
        match peer.inbox.push(f) {
            Ok(()) => {
                bump(&self.me.counters.cross_sent, 1);
                self.peers_to_wake[info.owner] = true;
            }
            Err(f) => {
                self.me.counters.count_drop(DropReason::QueueFull);
                self.pool.free(f);
            }
        }
        false
    }

    /// Adds `f` to port `p`'s pending frames; false (frame dropped) when
    /// this worker has no such port.
    pub(super) fn enqueue_local(&mut self, p: PortId, f: Frame) -> bool {
        match self.slots.get_mut(p.0 as usize) {
            Some(Some(slot)) => {
                if slot.pending.is_empty() {
                    self.dirty.push(p);
                }
                slot.pending.push(f);
                true
            }
            _ => {
                self.me.counters.count_drop(DropReason::NoRoute);
                self.pool.free(f);
                false
            }
        }
    }

    /// Sends every pending frame, one write batch per port, and wakes peers
    /// that were handed frames.
    pub(super) fn flush(&mut self) {
        for i in 0..self.dirty.len() {
            let p = self.dirty[i];
            let Some(Some(slot)) = self.slots.get_mut(p.0 as usize) else {
                continue;
            };
            offload::adapt(
                slot.caps,
                &mut slot.pending,
                &mut self.scratch,
                &mut self.pool,
                &self.me.counters,
            );
            if let Some(capture) = &slot.capture {
                capture.record(&slot.pending);
            }
            let res = slot.port.send(&mut slot.pending, &mut self.pool);
            bump(&slot.counters.tx_packets, res.sent as u64);
            bump(&slot.counters.tx_bytes, res.bytes);
            if res.failed > 0 {
                bump(&slot.counters.tx_errors, res.failed as u64);
                bump(
                    &self.me.counters.drops[DropReason::TxError as usize],
                    res.failed as u64,
                );
            }
        }
        self.dirty.clear();
        for (w, wake) in self.peers_to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                self.peers[w].wake();
            }
        }
    }
}
