//! Counters: per worker (drop reasons, MAC events) and per port (rx/tx).
//!
//! Every counter has exactly one writer (the worker that owns it), which
//! updates it with a plain load + store instead of a locked read-modify-write;
//! readers on any thread load the values and sum across workers. Counter blocks
//! are aligned to 128 bytes so two workers never share a cache line (adjacent
//! line prefetch pairs 64-byte lines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::pipeline::drop::DropReason;
use crate::ports::PortId;

/// Adds `n` to a counter that has a single writer.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Events of a worker that are not per port.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Dropped frames by reason.
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Addresses learned (new entries).
    pub mac_learned: AtomicU64,
    /// Addresses that moved port.
    pub mac_moved: AtomicU64,
    /// Entries evicted to respect a network's cap.
    pub mac_evicted: AtomicU64,
    /// Entries removed by aging.
    pub mac_aged: AtomicU64,
    /// Entries in the worker's MAC table now (a gauge, published after
    /// learning and at each aging sweep).
    pub mac_entries: AtomicU64,
    /// Frames flooded (counted once per frame, not per copy).
    pub flooded: AtomicU64,
    /// TCP segments and UDP datagrams coalesced into a previous one before
    /// a TAP write (GRO).
    pub gro_merged: AtomicU64,
    /// Datagrams cut from UDP segmentation offload frames: at a TAP read
    /// (for the gateway or a group address) or before a port without USO.
    pub uso_split: AtomicU64,
    /// Frames handed to another worker.
    pub cross_sent: AtomicU64,
    /// Frames received from other workers.
    pub cross_received: AtomicU64,
    /// Learn messages that found a peer's queue full (the peer floods until it
    /// learns the address itself).
    pub learn_msgs_lost: AtomicU64,
    /// Batches processed.
    pub batches: AtomicU64,
    /// Times the worker's loop panicked (a bug) and was restarted, dropping
    /// the frames it had in hand.
    pub worker_restarts: AtomicU64,
    /// DNS queries to a gateway.
    pub dns_queries: AtomicU64,
    /// DNS queries answered from the network's records.
    pub dns_answered: AtomicU64,
    /// Local answers that were NXDOMAIN.
    pub dns_nxdomain: AtomicU64,
    /// Local answers sent with TC (too large for UDP).
    pub dns_truncated: AtomicU64,
    /// Queries refused (internal network, name not ours).
    pub dns_refused: AtomicU64,
    /// Queries answered FORMERR, NOTIMP or BADVERS.
    pub dns_formerr: AtomicU64,
    /// Queries handed to the upstream forwarder.
    pub dns_forwarded: AtomicU64,
}

impl WorkerCounters {
    /// Counts one drop.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }
}

/// Traffic of one port as seen by the worker that owns it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames read but discarded by the port (too short to be a frame).
    pub rx_errors: AtomicU64,
    /// Frames sent.
    pub tx_packets: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Frames the port refused to send.
    pub tx_errors: AtomicU64,
}

/// Port counters summed at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    /// Port id.
    pub port: PortId,
    /// Port name.
    pub name: String,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames read but discarded by the port.
    pub rx_errors: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames the port refused.
    pub tx_errors: u64,
}

/// Everything `switchyard stats` shows, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Per port.
    pub ports: Vec<PortStats>,
    /// Drops by reason name (every reason listed, zeros included).
    pub drops: BTreeMap<String, u64>,
    /// Other events by name.
    pub events: BTreeMap<String, u64>,
}

impl StatsSnapshot {
    /// Total drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }

    /// Drops for one reason.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.name()).copied().unwrap_or(0)
    }
}

/// A registered port's counters.
#[derive(Debug, Clone)]
pub struct PortCounterEntry {
    /// Port id.
    pub port: PortId,
    /// Port name.
    pub name: String,
    /// Counter blocks, one per queue/worker serving the port.
    pub blocks: Vec<Arc<PortCounters>>,
}

/// Sums counter blocks into a snapshot.
pub fn snapshot(workers: &[Arc<WorkerCounters>], ports: &[PortCounterEntry]) -> StatsSnapshot {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut s = StatsSnapshot::default();
    for r in DropReason::ALL {
        let v = workers.iter().map(|w| load(&w.drops[*r as usize])).sum();
        s.drops.insert(r.name().to_string(), v);
    }
    type Field = fn(&WorkerCounters) -> &AtomicU64;
    let events: [(&str, Field); 19] = [
        ("mac-learned", |w| &w.mac_learned),
        ("mac-moved", |w| &w.mac_moved),
        ("mac-evicted", |w| &w.mac_evicted),
        ("mac-aged", |w| &w.mac_aged),
        ("flooded", |w| &w.flooded),
        ("gro-merged", |w| &w.gro_merged),
        ("uso-split", |w| &w.uso_split),
        ("cross-worker-sent", |w| &w.cross_sent),
        ("cross-worker-received", |w| &w.cross_received),
        ("learn-msgs-lost", |w| &w.learn_msgs_lost),
        ("batches", |w| &w.batches),
        ("worker-restarts", |w| &w.worker_restarts),
        ("dns-queries", |w| &w.dns_queries),
        ("dns-answered", |w| &w.dns_answered),
        ("dns-nxdomain", |w| &w.dns_nxdomain),
        ("dns-truncated", |w| &w.dns_truncated),
        ("dns-refused", |w| &w.dns_refused),
        ("dns-formerr", |w| &w.dns_formerr),
        ("dns-forwarded", |w| &w.dns_forwarded),
    ];
    for (name, get) in events {
        let v = workers.iter().map(|w| load(get(w))).sum();
        s.events.insert(name.to_string(), v);
    }
    // Every worker holds a converging copy of the same table: the fullest.
    let entries = workers.iter().map(|w| load(&w.mac_entries)).max();
    s.events.insert("mac-entries".into(), entries.unwrap_or(0));
    for p in ports {
        let sum = |get: fn(&PortCounters) -> &AtomicU64| -> u64 {
            p.blocks.iter().map(|b| load(get(b))).sum()
        };
        s.ports.push(PortStats {
            port: p.port,
            name: p.name.clone(),
            rx_packets: sum(|b| &b.rx_packets),
            rx_bytes: sum(|b| &b.rx_bytes),
            rx_errors: sum(|b| &b.rx_errors),
            tx_packets: sum(|b| &b.tx_packets),
            tx_bytes: sum(|b| &b.tx_bytes),
            tx_errors: sum(|b| &b.tx_errors),
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<WorkerCounters>() >= 128);
        assert!(std::mem::align_of::<PortCounters>() >= 128);
    }

    #[test]
    fn snapshot_sums_workers_and_queues() {
        let w1 = Arc::new(WorkerCounters::default());
        let w2 = Arc::new(WorkerCounters::default());
        w1.count_drop(DropReason::Malformed);
        w2.count_drop(DropReason::Malformed);
        bump(&w2.mac_learned, 3);
        let b1 = Arc::new(PortCounters::default());
        let b2 = Arc::new(PortCounters::default());
        bump(&b1.rx_packets, 5);
        bump(&b2.rx_packets, 7);
        let s = snapshot(
            &[w1, w2],
            &[PortCounterEntry {
                port: PortId(4),
                name: "tap0".into(),
                blocks: vec![b1, b2],
            }],
        );
        assert_eq!(s.drops_for(DropReason::Malformed), 2);
        assert_eq!(s.events["mac-learned"], 3);
        assert_eq!(s.ports[0].rx_packets, 12);
        assert_eq!(s.drops.len(), DropReason::COUNT);
    }
}
