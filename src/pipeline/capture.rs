//! Port capture: while `switchyard capture` runs on an endpoint, the worker
//! serving each of its ports copies every frame the port receives and every
//! frame it sends (as written, offloads included) into a queue that the
//! capture writer empties into a pcap file. Only captured ports pay: one
//! copy per frame; a port without a capture pays one `Option` test per
//! batch. The queue is bounded in bytes; what does not fit is counted as
//! lost, never waited for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};

use super::frame::Frame;

/// Bytes of frames a capture may hold between the workers and its writer.
pub const DEFAULT_QUEUE_BYTES: usize = 32 << 20;

/// One captured frame.
#[derive(Debug)]
pub struct Captured {
    /// When, in nanoseconds since the Unix epoch.
    pub nanos: u64,
    /// The frame, from its Ethernet header.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Shared {
    /// Bytes queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// Most bytes queued at once.
    limit: usize,
    /// Frames not captured because the queue was full.
    lost: AtomicU64,
}

/// The workers' end of a capture (cloned into each worker serving one of
/// the endpoint's ports).
#[derive(Debug, Clone)]
pub struct CaptureSink {
    tx: Sender<Captured>,
    shared: Arc<Shared>,
}

/// The writer's end of a capture.
#[derive(Debug)]
pub struct CaptureSource {
    rx: Receiver<Captured>,
    shared: Arc<Shared>,
}

/// A new capture queue holding at most `limit` bytes of frames.
pub fn capture_queue(limit: usize) -> (CaptureSink, CaptureSource) {
    let (tx, rx) = channel::unbounded();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        limit,
        lost: AtomicU64::new(0),
    });
    (
        CaptureSink {
            tx,
            shared: shared.clone(),
        },
        CaptureSource { rx, shared },
    )
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl CaptureSink {
    /// Copies `frames` into the queue, all stamped with the current time.
    pub fn record(&self, frames: &[Frame]) {
        if frames.is_empty() {
            return;
        }
        let nanos = now_nanos();
        for f in frames {
            let data = f.data();
            let before = self.shared.queued.fetch_add(data.len(), Ordering::Relaxed);
            let sent = before + data.len() <= self.shared.limit
                && self
                    .tx
                    .try_send(Captured {
                        nanos,
                        data: data.to_vec(),
                    })
                    .is_ok();
            if !sent {
                self.shared.queued.fetch_sub(data.len(), Ordering::Relaxed);
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl CaptureSource {
    /// The next frame, waiting at most `timeout`; `Disconnected` once every
    /// sink is gone (the capture was stopped or its ports removed) and the
    /// queue is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Captured, RecvTimeoutError> {
        let c = self.rx.recv_timeout(timeout)?;
        self.shared
            .queued
            .fetch_sub(c.data.len(), Ordering::Relaxed);
        Ok(c)
    }

    /// Frames lost so far because the queue was full.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::pool::BufferPool;

    fn frames(pool: &mut BufferPool, sizes: &[usize]) -> Vec<Frame> {
        sizes
            .iter()
            .map(|&n| {
                let mut f = pool.alloc().unwrap();
                f.receive_space()[..n].fill(n as u8);
                f.set_len(n);
                f
            })
            .collect()
    }

    #[test]
    fn frames_are_copied_in_order_and_the_byte_limit_counts_losses() {
        let mut pool = BufferPool::standalone(8);
        let (sink, source) = capture_queue(250);
        let batch = frames(&mut pool, &[60, 100, 80, 30]);
        sink.record(&batch);
        // 60 + 100 + 80 fit in 250 bytes; 30 more do not.
        let got: Vec<Vec<u8>> = (0..3)
            .map(|_| source.recv_timeout(Duration::ZERO).unwrap().data)
            .collect();
        assert_eq!(got, vec![vec![60; 60], vec![100; 100], vec![80; 80]]);
        assert_eq!(source.lost(), 1);
        // Taking frames frees room.
        sink.record(&batch[3..]);
        assert_eq!(
            source.recv_timeout(Duration::ZERO).unwrap().data,
            vec![30; 30]
        );
        drop(sink);
        assert_eq!(
            source.recv_timeout(Duration::ZERO).err(),
            Some(RecvTimeoutError::Disconnected)
        );
        for f in batch {
            pool.free(f);
        }
    }
}
