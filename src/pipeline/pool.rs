//! Buffer pool: every frame buffer is allocated at start-up; workers take and
//! return them without locks. Each worker keeps a local free list and trades
//! surplus or shortage with a shared lock-free queue, so buffers that crossed
//! to another worker flow back.

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use super::frame::Frame;

/// Frames moved between a local list and the shared queue at a time.
const TRADE: usize = 64;

/// The shared part of the pool, one per data plane.
pub type SharedPool = Arc<ArrayQueue<Frame>>;

/// Creates the shared queue holding `count` preallocated frames.
pub fn shared_pool(count: usize) -> SharedPool {
    let q = ArrayQueue::new(count.max(1));
    for f in Frame::alloc_many(count) {
        // Cannot fail: the queue was made with room for `count` frames.
        let _ = q.push(f);
    }
    Arc::new(q)
}

/// A worker's view of the pool.
pub struct BufferPool {
    free: Vec<Frame>,
    shared: SharedPool,
    high_water: usize,
}

impl BufferPool {
    /// A local pool that borrows from `shared`; keeps at most `high_water`
    /// frames before giving some back.
    pub fn new(shared: SharedPool, high_water: usize) -> BufferPool {
        let high_water = high_water.max(2 * TRADE);
        BufferPool {
            free: Vec::with_capacity(high_water + TRADE),
            shared,
            high_water,
        }
    }

    /// A pool with its own `count` frames and nothing shared (tests, benches).
    pub fn standalone(count: usize) -> BufferPool {
        BufferPool::new(shared_pool(count), count)
    }

    /// Takes a clean frame, or `None` when every buffer is in use.
    pub fn alloc(&mut self) -> Option<Frame> {
        if self.free.is_empty() {
            for _ in 0..TRADE {
                match self.shared.pop() {
                    Some(f) => self.free.push(f),
                    None => break,
                }
            }
        }
        self.free.pop()
    }

    /// Returns a frame.
    pub fn free(&mut self, mut frame: Frame) {
        frame.reset();
        self.free.push(frame);
        if self.free.len() > self.high_water {
            for _ in 0..TRADE {
                let Some(f) = self.free.pop() else { break };
                if let Err(f) = self.shared.push(f) {
                    self.free.push(f);
                    break;
                }
            }
        }
    }

    /// Frames available locally right now.
    pub fn local_len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_bounded_and_come_back() {
        let shared = shared_pool(130);
        let mut a = BufferPool::new(shared.clone(), 128);
        let mut b = BufferPool::new(shared.clone(), 128);
        let mut taken = Vec::new();
        while let Some(f) = a.alloc() {
            taken.push(f);
        }
        assert_eq!(taken.len(), 130);
        assert!(b.alloc().is_none());
        for f in taken {
            b.free(f);
        }
        // b gave its surplus back to the shared queue, so a can allocate again.
        assert!(a.alloc().is_some());
    }
}
