//! Fault-injecting port: wraps any [`Port`] and loses, duplicates or delays
//! (reorders) a chosen share of the frames crossing it in either direction,
//! as a bad link would, from a seeded generator so a run can be repeated.
//! For testing what sits behind the switch (the gateway's TCP, DNS retries,
//! the sandboxes' own stacks) under loss: `daemon --fault-inject`. Faults
//! are the wire's doing, so they are not drops of the switch's counters.

use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Port, PortCaps, TxResult};
use crate::pipeline::frame::Frame;
use crate::pipeline::pool::BufferPool;

/// What share of frames, in parts per thousand, meets each fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Lost.
    pub drop: u16,
    /// Delivered twice.
    pub duplicate: u16,
    /// Held back and delivered after the next frame of its batch.
    pub reorder: u16,
    /// Seed of the generator (each port mixes in its own name).
    pub seed: u64,
}

impl FromStr for FaultPlan {
    type Err = String;

    /// `drop=2%,duplicate=0.5%,reorder=1%,seed=7`: any subset, shares from
    /// 0 to 50 % in steps of 0.1 %.
    fn from_str(s: &str) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan::default();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected KEY=VALUE"))?;
            if key == "seed" {
                plan.seed = value
                    .parse()
                    .map_err(|_| format!("seed {value:?}: expected a number"))?;
                continue;
            }
            let share = value
                .strip_suffix('%')
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|p| (0.0..=50.0).contains(p))
                .ok_or_else(|| format!("{key}={value}: expected a share from 0% to 50%"))?;
            let per_mille = (share * 10.0).round() as u16;
            match key {
                "drop" => plan.drop = per_mille,
                "duplicate" => plan.duplicate = per_mille,
                "reorder" => plan.reorder = per_mille,
                _ => {
                    return Err(format!(
                        "unknown fault {key:?}: expected drop, duplicate, reorder or seed"
                    ))
                }
            }
        }
        Ok(plan)
    }
}

/// Faults injected so far, over all ports (`switchyard stats` shows them
/// as `fault-dropped`, `fault-duplicated` and `fault-reordered`).
#[derive(Debug, Default)]
pub struct FaultCounters {
    /// Frames lost.
    pub dropped: AtomicU64,
    /// Frames delivered twice.
    pub duplicated: AtomicU64,
    /// Frames held back behind the next one.
    pub reordered: AtomicU64,
}

impl FaultCounters {
    /// Each counter with its name in `switchyard stats`.
    pub fn named(&self) -> [(&'static str, u64); 3] {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("fault-dropped", load(&self.dropped)),
            ("fault-duplicated", load(&self.duplicated)),
            ("fault-reordered", load(&self.reordered)),
        ]
    }
}

/// A port whose frames meet the faults of a [`FaultPlan`].
pub struct FaultyPort {
    inner: Box<dyn Port>,
    plan: FaultPlan,
    rng: u64,
    counters: Arc<FaultCounters>,
    /// Frames read from the inner port, before the faults.
    got: Vec<Frame>,
    /// A spare vector for [`FaultyPort::apply`] to build into.
    spare: Vec<Frame>,
}

impl FaultyPort {
    /// Wraps `inner`, counting what it injects into `counters`.
    pub fn new(inner: Box<dyn Port>, plan: FaultPlan, counters: Arc<FaultCounters>) -> FaultyPort {
        // FNV-1a of the name, so ports of one daemon draw different faults.
        let name = inner.name().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        FaultyPort {
            inner,
            plan,
            rng: (plan.seed ^ name) | 1,
            counters,
            got: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// True with a chance of `per_mille` in a thousand (xorshift64*).
    fn chance(&mut self, per_mille: u16) -> bool {
        if per_mille == 0 {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let draw = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        draw % 1000 < u64::from(per_mille)
    }

    /// Applies the plan to `frames` in place, leaving at most `room` of
    /// them: lost ones go back to `pool`, duplicates are copied from it, and
    /// a frame held back swaps places with the next one of the batch (or is
    /// delivered last: a fault delays, never loses, what it holds).
    fn apply(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool, room: usize) {
        let mut out = std::mem::take(&mut self.spare);
        let mut held = None;
        for f in frames.drain(..) {
            if self.chance(self.plan.drop) {
                pool.free(f);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let room_for_copy = out.len() + usize::from(held.is_some()) + 2 <= room;
            let copy = if room_for_copy && self.chance(self.plan.duplicate) {
                pool.alloc().map(|mut c| {
                    c.copy_from(&f);
                    c
                })
            } else {
                None
            };
            if copy.is_some() {
                self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            if held.is_none() && self.chance(self.plan.reorder) {
                self.counters.reordered.fetch_add(1, Ordering::Relaxed);
                held = Some(f);
            } else {
                out.push(f);
                out.extend(held.take());
            }
            out.extend(copy);
        }
        out.extend(held);
        // The drained vector is kept for the next call: no allocation per
        // batch once the vectors have grown.
        std::mem::swap(frames, &mut out);
        self.spare = out;
    }
}

impl Port for FaultyPort {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn caps(&self) -> PortCaps {
        self.inner.caps()
    }

    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }

    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        // A short count tells the worker the port is drained (its poller is
        // edge-triggered), so lost frames are made up by reading on until
        // the inner port really is.
        let mut total = 0;
        let mut got = std::mem::take(&mut self.got);
        while total < max {
            let want = max - total;
            let n = match self.inner.recv(pool, &mut got, want) {
                Ok(n) => n,
                Err(e) if total == 0 => {
                    self.got = got;
                    return Err(e);
                }
                Err(_) => break,
            };
            self.apply(&mut got, pool, want);
            total += got.len();
            out.append(&mut got);
            if n < want {
                break;
            }
        }
        self.got = got;
        Ok(total)
    }

    fn has_rx(&self) -> bool {
        self.inner.has_rx()
    }

    fn take_rx_errors(&mut self) -> u64 {
        self.inner.take_rx_errors()
    }

    fn take_rx_coalesced(&mut self) -> u64 {
        self.inner.take_rx_coalesced()
    }

    fn take_rx_split(&mut self) -> u64 {
        self.inner.take_rx_split()
    }

    fn set_gateway_mac(&mut self, mac: Option<crate::wire::MacAddr>) {
        self.inner.set_gateway_mac(mac);
    }

    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        self.apply(frames, pool, usize::MAX);
        self.inner.send(frames, pool)
    }

    fn release(&mut self, pool: &mut BufferPool) {
        for f in self.got.drain(..).chain(self.spare.drain(..)) {
            pool.free(f);
        }
        self.inner.release(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::{MemoryPort, MemoryPortHandle};

    const CAPS: PortCaps = PortCaps {
        offload: false,
        mtu: 1500,
        segments_gso: false,
        uso: false,
    };

    fn frame(i: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[14..16].copy_from_slice(&i.to_be_bytes());
        f
    }

    fn faulty(plan: &str) -> (FaultyPort, MemoryPortHandle) {
        let (port, handle) = MemoryPort::new("f0", CAPS, 2048);
        let counters = Arc::new(FaultCounters::default());
        (
            FaultyPort::new(Box::new(port), plan.parse().unwrap(), counters),
            handle,
        )
    }

    /// Injects `n` numbered frames and reads them all in batches of 64;
    /// every batch but the last is full (a short one means drained).
    fn through_rx(port: &mut FaultyPort, h: &MemoryPortHandle, n: u16) -> Vec<u16> {
        let mut pool = BufferPool::standalone(4096);
        for i in 0..n {
            assert!(h.inject(&frame(i)));
        }
        let mut seen = Vec::new();
        loop {
            let mut batch = Vec::new();
            let got = port.recv(&mut pool, &mut batch, 64).unwrap();
            assert_eq!(got, batch.len());
            seen.extend(
                batch
                    .iter()
                    .map(|f| u16::from_be_bytes([f.data()[14], f.data()[15]])),
            );
            for f in batch {
                pool.free(f);
            }
            if got < 64 {
                let mut rest = Vec::new();
                assert_eq!(port.recv(&mut pool, &mut rest, 64).unwrap(), 0, "drained");
                return seen;
            }
        }
    }

    #[test]
    fn plans_parse_with_clear_errors() {
        let p: FaultPlan = "drop=2%,duplicate=0.5%,reorder=1%,seed=7".parse().unwrap();
        assert_eq!(
            p,
            FaultPlan {
                drop: 20,
                duplicate: 5,
                reorder: 10,
                seed: 7
            }
        );
        assert_eq!("".parse::<FaultPlan>(), Ok(FaultPlan::default()));
        for bad in [
            "drop",
            "drop=2",
            "drop=60%",
            "drop=-1%",
            "jitter=1%",
            "seed=x",
        ] {
            let e = bad.parse::<FaultPlan>().unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn no_faults_pass_everything_in_order() {
        let (mut port, h) = faulty("");
        assert_eq!(through_rx(&mut port, &h, 300), (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn losses_leave_the_rest_in_order_and_batches_full_until_drained() {
        let (mut port, h) = faulty("drop=30%,seed=1");
        let seen = through_rx(&mut port, &h, 1000);
        assert!(
            (550..850).contains(&seen.len()),
            "{} of 1000 kept",
            seen.len()
        );
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    }

    #[test]
    fn duplicates_follow_their_original() {
        let (mut port, h) = faulty("duplicate=20%,seed=2");
        let seen = through_rx(&mut port, &h, 500);
        assert!(seen.len() > 550, "{} frames for 500", seen.len());
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn reordering_delays_without_losing() {
        let (mut port, h) = faulty("reorder=20%,seed=3");
        let seen = through_rx(&mut port, &h, 500);
        assert!(seen.windows(2).any(|w| w[0] > w[1]), "something reordered");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn the_same_seed_draws_the_same_faults() {
        let runs: Vec<Vec<u16>> = (0..2)
            .map(|_| {
                let (mut port, h) = faulty("drop=10%,duplicate=5%,reorder=5%,seed=9");
                through_rx(&mut port, &h, 400)
            })
            .collect();
        assert_eq!(runs[0], runs[1]);
    }

    #[test]
    fn injected_faults_are_counted() {
        let (port, h) = MemoryPort::new("f1", CAPS, 2048);
        let counters = Arc::new(FaultCounters::default());
        let plan = "drop=10%,duplicate=10%,reorder=10%,seed=5".parse().unwrap();
        let mut port = FaultyPort::new(Box::new(port), plan, counters.clone());
        let seen = through_rx(&mut port, &h, 1000);
        let [(_, dropped), (_, duplicated), (_, reordered)] = counters.named();
        assert!(dropped > 0 && duplicated > 0 && reordered > 0);
        assert_eq!(seen.len() as u64, 1000 - dropped + duplicated);
    }

    #[test]
    fn sends_meet_the_faults_too() {
        let (mut port, h) = faulty("drop=50%,seed=4");
        let mut pool = BufferPool::standalone(256);
        let mut frames: Vec<Frame> = (0..100)
            .map(|i| {
                let mut f = pool.alloc().unwrap();
                f.fill(&frame(i));
                f
            })
            .collect();
        let res = port.send(&mut frames, &mut pool);
        assert!((20..80).contains(&res.sent), "{} of 100 sent", res.sent);
        assert_eq!(h.sent_count(), res.sent as u64);
    }
}
