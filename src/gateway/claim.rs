//! Bounded claims on a process-wide count: one of at most N things at once
//! (spliced connections, flows with large buffers), given back when the
//! claim is dropped, on whatever path its holder ends.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One of the claims counted in a static counter.
#[derive(Debug)]
pub struct Claim(&'static AtomicUsize);

impl Claim {
    /// One of `max` claims counted in `held`, if one is free.
    pub fn take(held: &'static AtomicUsize, max: usize) -> Option<Claim> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Claim(held))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_at_once_and_given_back_when_dropped() {
        static HELD: AtomicUsize = AtomicUsize::new(0);
        let mut claims: Vec<_> = (0..3)
            .map(|_| Claim::take(&HELD, 3).expect("free"))
            .collect();
        assert!(Claim::take(&HELD, 3).is_none(), "all taken");
        claims.pop();
        assert_eq!(
            HELD.load(Ordering::Acquire),
            2,
            "a dropped claim is given back"
        );
        claims.push(Claim::take(&HELD, 3).expect("free again"));
        drop(claims);
        assert_eq!(HELD.load(Ordering::Acquire), 0);
    }
}
