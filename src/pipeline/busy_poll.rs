//! Adaptive busy polling: how long an idle worker keeps polling before it
//! sleeps. Spinning pays when the next frame comes soon (no wake-up to pay
//! for) and is waste when it does not (a core burnt for nothing, which on a
//! small machine the sandboxes' own programs needed). The policy is the one
//! KVM uses for halt polling: after each idle period, compare how long the
//! worker was idle with the budget and the configured maximum:
//!
//! - work came within the budget: the spin caught it, nothing changes;
//! - work came later, but about within the maximum: a longer spin would
//!   have caught it, so the budget doubles (up to the maximum);
//! - work came well after the maximum, or never: spinning would not have
//!   caught it, so the budget halves (to zero below [`MIN_BUDGET`]).
//!
//! "About" and "well after" allow for [`WAKE_SLACK`]: the idle time the
//! worker sees includes its own wake-up, which on a virtual machine takes
//! tens of microseconds. Without the slack, a flood with gaps of a few
//! microseconds looked like long gaps whenever the worker did fall asleep,
//! the budget collapsed, and 64-byte UDP lost a fifth of its rate in
//! alternating runs on the 2-core VM.
//!
//! The spin yields the CPU between polls (`sched_yield`), so it only uses
//! a CPU that no other runnable thread wants. With a plain spin, the worker
//! took CPU from the programs whose traffic it waited for: on the 2-core VM
//! (2026-11-29, three alternating rounds each) a published port's TCP
//! stream from another namespace at MTU 65520 went from 8.05-8.75 to
//! 9.6-10.5 Gbit/s, and the overlay's TCP stream from 7.7-8.9 to 8.5-9.9,
//! while TAP-to-TAP runs stayed within their noise. The price: on a CPU
//! that another thread keeps busy, a frame arriving during the spin waits
//! for the worker's next turn rather than waking it, as a sleeping worker
//! would be; the budget then shrinks, since such idle periods overrun it.
//!
//! Under a steady stream the budget stays at the maximum; for traffic that
//! arrives in gaps well beyond the maximum (pings 10 ms apart, a trickle of
//! requests) it falls to zero within a few wake-ups, so the worker sleeps at
//! once.

use std::time::Duration;

/// The smallest budget worth spinning; growth starts here and a budget that
/// halves below it becomes zero.
pub const MIN_BUDGET: Duration = Duration::from_micros(10);

/// What a wake-up may add to an idle period before it counts as a gap that
/// no spin within the maximum would have caught.
pub const WAKE_SLACK: Duration = Duration::from_micros(200);

/// A worker's busy-poll budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    max: Duration,
    budget: Duration,
}

impl BusyPoll {
    /// A budget of at most `max` (zero: never spin), starting at `max`.
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll { max, budget: max }
    }

    /// How long to spin before sleeping now.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Adjusts the budget after an idle period of `idle` (spin and sleep
    /// together) that ended with work, or with a timeout (`idle` then is
    /// the whole timeout).
    pub fn idle_ended(&mut self, idle: Duration) {
        if idle <= self.budget {
            return;
        }
        if idle > self.max + WAKE_SLACK {
            self.budget /= 2;
            if self.budget < MIN_BUDGET {
                self.budget = Duration::ZERO;
            }
        } else {
            self.budget = (self.budget * 2).max(MIN_BUDGET).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn work_within_the_budget_keeps_it() {
        let mut b = BusyPoll::new(50 * US);
        for _ in 0..100 {
            b.idle_ended(3 * US);
            b.idle_ended(50 * US);
        }
        assert_eq!(b.budget(), 50 * US);
    }

    #[test]
    fn long_gaps_shrink_it_to_zero_and_short_ones_bring_it_back() {
        let mut b = BusyPoll::new(50 * US);
        let mut steps = 0;
        while b.budget() > Duration::ZERO {
            b.idle_ended(Duration::from_millis(10));
            steps += 1;
            assert!(steps <= 4, "{b:?}");
        }
        // Gaps the maximum would catch grow it back: 10, 20, 40, 50.
        let mut seen = vec![];
        for _ in 0..5 {
            b.idle_ended(45 * US);
            seen.push(b.budget().as_micros());
        }
        assert_eq!(seen, [10, 20, 40, 50, 50]);
    }

    #[test]
    fn a_slow_wake_up_does_not_count_as_a_long_gap() {
        let mut b = BusyPoll::new(50 * US);
        b.idle_ended(Duration::from_millis(10));
        assert_eq!(b.budget(), 25 * US);
        // Gaps of a few microseconds plus a slow wake-up: grow back.
        b.idle_ended(50 * US + WAKE_SLACK);
        assert_eq!(b.budget(), 50 * US);
        b.idle_ended(51 * US + WAKE_SLACK);
        assert_eq!(b.budget(), 25 * US);
    }

    #[test]
    fn zero_maximum_never_spins() {
        let mut b = BusyPoll::new(Duration::ZERO);
        for idle in [0, 1, 5, 1000, 100_000] {
            b.idle_ended(idle * US);
            assert_eq!(b.budget(), Duration::ZERO);
        }
    }

    #[test]
    fn the_budget_stays_within_its_bounds() {
        let mut b = BusyPoll::new(20_000 * US);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.idle_ended(Duration::from_nanos(x % 50_000_000));
            let v = b.budget();
            assert!(
                v <= 20_000 * US && (v.is_zero() || v >= MIN_BUDGET),
                "{v:?}"
            );
        }
    }
}
