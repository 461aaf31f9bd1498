//! In-memory ports for tests, fuzzing and benchmarks: frames are injected into
//! a queue and transmitted frames are kept (or only counted).

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use super::{Port, PortCaps, TxResult};
use crate::pipeline::frame::Frame;
use crate::pipeline::pool::BufferPool;
use crate::wire::virtio_net::VirtioNetHdr;

/// The test side of a [`MemoryPort`]: inject frames, read what was sent.
/// Lock-free, so a test thread can drive a port owned by a worker thread.
#[derive(Clone)]
pub struct MemoryPortHandle {
    rx: Arc<ArrayQueue<(VirtioNetHdr, Vec<u8>)>>,
    tx: Arc<ArrayQueue<(VirtioNetHdr, Vec<u8>)>>,
    tx_count: Arc<AtomicU64>,
}

impl MemoryPortHandle {
    /// Queues a frame for the switch to receive; false if the queue is full.
    pub fn inject(&self, frame: &[u8]) -> bool {
        self.inject_with(VirtioNetHdr::NONE, frame)
    }

    /// Queues a frame with an offload header.
    pub fn inject_with(&self, vnet: VirtioNetHdr, frame: &[u8]) -> bool {
        self.rx.push((vnet, frame.to_vec())).is_ok()
    }

    /// Takes the next frame the switch sent out of this port.
    pub fn take_sent(&self) -> Option<Vec<u8>> {
        self.tx.pop().map(|(_, f)| f)
    }

    /// Takes the next sent frame with its offload header.
    pub fn take_sent_with(&self) -> Option<(VirtioNetHdr, Vec<u8>)> {
        self.tx.pop()
    }

    /// All frames sent so far (kept or not).
    pub fn sent_count(&self) -> u64 {
        self.tx_count.load(Ordering::Relaxed)
    }
}

/// A port backed by memory queues.
pub struct MemoryPort {
    name: String,
    caps: PortCaps,
    rx: Arc<ArrayQueue<(VirtioNetHdr, Vec<u8>)>>,
    tx: Arc<ArrayQueue<(VirtioNetHdr, Vec<u8>)>>,
    tx_count: Arc<AtomicU64>,
    keep_sent: bool,
}

impl MemoryPort {
    /// A port whose queues hold up to `depth` frames each; sent frames are
    /// kept for [`MemoryPortHandle::take_sent`].
    pub fn new(name: &str, caps: PortCaps, depth: usize) -> (MemoryPort, MemoryPortHandle) {
        let rx = Arc::new(ArrayQueue::new(depth.max(1)));
        let tx = Arc::new(ArrayQueue::new(depth.max(1)));
        let tx_count = Arc::new(AtomicU64::new(0));
        let handle = MemoryPortHandle {
            rx: rx.clone(),
            tx: tx.clone(),
            tx_count: tx_count.clone(),
        };
        let port = MemoryPort {
            name: name.to_string(),
            caps,
            rx,
            tx,
            tx_count,
            keep_sent: true,
        };
        (port, handle)
    }

    /// Only counts sent frames instead of keeping them (benchmarks).
    pub fn discard_sent(mut self) -> MemoryPort {
        self.keep_sent = false;
        self
    }
}

impl Port for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        self.caps
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            let Some(mut frame) = pool.alloc() else { break };
            match self.rx.pop() {
                Some((vnet, bytes)) => {
                    frame.fill(&bytes);
                    frame.vnet = vnet;
                    out.push(frame);
                    n += 1;
                }
                None => {
                    pool.free(frame);
                    break;
                }
            }
        }
        Ok(n)
    }

    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        let mut res = TxResult::default();
        for frame in frames.drain(..) {
            res.bytes += frame.len() as u64;
            if self.keep_sent && self.tx.push((frame.vnet, frame.data().to_vec())).is_err() {
                res.failed += 1;
            } else {
                res.sent += 1;
            }
            pool.free(frame);
        }
        self.tx_count.fetch_add(res.sent as u64, Ordering::Relaxed);
        res
    }
}

/// A port that endlessly replays a fixed set of frames and discards what is
/// sent to it: the benchmark's traffic generator and sink. Replaying copies
/// each frame into a pool buffer, as a real port's read would.
pub struct ReplayPort {
    name: String,
    caps: PortCaps,
    frames: VecDeque<Vec<u8>>,
    sent: Arc<AtomicU64>,
}

impl ReplayPort {
    /// A port replaying `frames` in order, round and round.
    pub fn new(name: &str, caps: PortCaps, frames: Vec<Vec<u8>>) -> (ReplayPort, Arc<AtomicU64>) {
        let sent = Arc::new(AtomicU64::new(0));
        (
            ReplayPort {
                name: name.to_string(),
                caps,
                frames: frames.into(),
                sent: sent.clone(),
            },
            sent,
        )
    }
}

impl Port for ReplayPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        self.caps
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        if self.frames.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        while n < max {
            let Some(mut frame) = pool.alloc() else { break };
            if let Some(bytes) = self.frames.pop_front() {
                frame.fill(&bytes);
                self.frames.push_back(bytes);
            }
            out.push(frame);
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        let mut res = TxResult::default();
        for frame in frames.drain(..) {
            res.sent += 1;
            res.bytes += frame.len() as u64;
            pool.free(frame);
        }
        self.sent.fetch_add(res.sent as u64, Ordering::Relaxed);
        res
    }
}
