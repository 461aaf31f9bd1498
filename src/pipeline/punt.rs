//! The punt queue: frames a stage hands to the gateway stack (control-plane
//! threads running the userspace TCP/IP stack) move there whole, as frame
//! handles, through lock-free queues shared by all workers: one shard per
//! gateway-stack thread. A sandbox's frames always go to the same shard
//! (chosen by the data-plane port they came in on), so each thread owns all
//! the flows of its sandboxes. A full queue is a counted drop; a thread is
//! woken only when it sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::queue::ArrayQueue;
use mio::Waker;

use super::frame::Frame;
use crate::ports::PortId;

/// Most shards (gateway-stack threads); a worker tracks the shards it
/// pushed to in one `u64`.
pub const MAX_SHARDS: usize = 64;

/// Frames waiting for one gateway-stack thread.
pub struct PuntShard {
    /// The frames.
    pub frames: ArrayQueue<Frame>,
    /// Set while the thread is (about to be) blocked in its poll.
    pub sleeping: AtomicBool,
    /// Wakes the thread; set once when it starts.
    pub waker: OnceLock<Arc<Waker>>,
}

impl PuntShard {
    /// Wakes the thread if it sleeps (after one or more pushes).
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            if let Some(w) = self.waker.get() {
                // A failed wake only delays the thread until its poll timeout.
                let _ = w.wake();
            }
        }
    }
}

/// Frames waiting for the gateway stack, in `shards` queues.
pub struct PuntQueue {
    shards: Box<[PuntShard]>,
}

impl PuntQueue {
    /// `shards` queues (1 to [`MAX_SHARDS`]) of at most `depth` frames each.
    pub fn new(depth: usize, shards: usize) -> PuntQueue {
        let shards = (0..shards.clamp(1, MAX_SHARDS))
            .map(|_| PuntShard {
                frames: ArrayQueue::new(depth.max(1)),
                sleeping: AtomicBool::new(false),
                waker: OnceLock::new(),
            })
            .collect();
        PuntQueue { shards }
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Shard `i` (taken modulo the count).
    pub fn shard(&self, i: usize) -> &PuntShard {
        &self.shards[i % self.shards.len()]
    }

    /// The shard that serves frames from data-plane port `port`.
    pub fn shard_of(&self, port: PortId) -> usize {
        port.0 as usize % self.shards.len()
    }

    /// Queues a frame on its port's shard and returns the shard's index;
    /// gives the frame back if that queue is full.
    pub fn push(&self, f: Frame) -> Result<usize, Frame> {
        let i = self.shard_of(f.meta.in_port);
        self.shards[i].frames.push(f).map(|()| i)
    }

    /// Wakes the sleeping shards among those whose bit is set in `mask`.
    pub fn wake(&self, mut mask: u64) {
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let Some(s) = self.shards.get(i) {
                s.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::pool::BufferPool;

    #[test]
    fn a_port_always_lands_on_the_same_shard() {
        let q = PuntQueue::new(8, 3);
        assert_eq!(q.shards(), 3);
        let mut local = BufferPool::standalone(16);
        for port in [0u32, 1, 2, 3, 7, 7] {
            let mut f = local.alloc().expect("frame");
            f.meta.in_port = PortId(port);
            let Ok(shard) = q.push(f) else {
                panic!("no room for port {port}")
            };
            assert_eq!(shard, port as usize % 3);
        }
        assert_eq!(q.shard(0).frames.len(), 2);
        assert_eq!(q.shard(1).frames.len(), 3);
        assert_eq!(q.shard(2).frames.len(), 1);
        // Shard counts are clamped to what a worker's mask can hold.
        assert_eq!(PuntQueue::new(8, 0).shards(), 1);
        assert_eq!(PuntQueue::new(8, 1000).shards(), MAX_SHARDS);
        // Waking shards nobody sleeps on, or past the end, is harmless.
        q.wake(u64::MAX);
        for i in 0..3 {
            while let Some(f) = q.shard(i).frames.pop() {
                local.free(f);
            }
        }
    }
}
