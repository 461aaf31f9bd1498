//! The punt queue: frames a stage hands to the gateway stack (a control-plane
//! thread running the userspace TCP/IP stack) move there whole, as frame
//! handles, through one lock-free queue shared by all workers. A full queue
//! is a counted drop; the stack is woken only when it sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::queue::ArrayQueue;
use mio::Waker;

use super::frame::Frame;

/// Frames waiting for the gateway stack.
pub struct PuntQueue {
    /// The frames.
    pub frames: ArrayQueue<Frame>,
    /// Set while the stack is (about to be) blocked in its poll.
    pub sleeping: AtomicBool,
    /// Wakes the stack; set once when it starts.
    pub waker: OnceLock<Arc<Waker>>,
}

impl PuntQueue {
    /// A queue holding at most `depth` frames.
    pub fn new(depth: usize) -> PuntQueue {
        PuntQueue {
            frames: ArrayQueue::new(depth.max(1)),
            sleeping: AtomicBool::new(false),
            waker: OnceLock::new(),
        }
    }

    /// Queues a frame; gives it back if the queue is full.
    pub fn push(&self, f: Frame) -> Result<(), Frame> {
        self.frames.push(f)
    }

    /// Wakes the stack if it sleeps (after one or more pushes).
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            if let Some(w) = self.waker.get() {
                // A failed wake only delays the stack until its poll timeout.
                let _ = w.wake();
            }
        }
    }
}
