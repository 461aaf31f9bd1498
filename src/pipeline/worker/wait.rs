//! How an idle worker waits for work: it spins for its adaptive busy-poll
//! budget (yielding the CPU to any runnable thread), then announces that it
//! sleeps and blocks in its poller until a port, a peer or the control plane
//! wakes it.

use super::*;

impl Worker {
    pub(super) fn wait(&mut self, timeout: Duration) {
        let busy = !self.ready.is_empty() || !self.me.inbox.is_empty();
        let timeout = if busy {
            Duration::ZERO
        } else if !self.unpolled.is_empty() {
            // Ports without an fd must be looked at again soon.
            timeout.min(Duration::from_millis(1))
        } else {
            timeout
        };
        let Some(poll) = self.poll.as_mut() else {
            return;
        };
        // When the worker went idle: the budget adapts to how long it stays so.
        let idle_from = (timeout > Duration::ZERO).then(Instant::now);
        let spin = self.busy.budget();
        if let Some(from) = idle_from.filter(|_| spin > Duration::ZERO) {
            let until = from + spin;
            loop {
                let res = poll.poll(&mut self.events, Some(Duration::ZERO));
                let work = !self.events.is_empty()
                    || !self.me.inbox.is_empty()
                    || !self.me.learn_inbox.is_empty();
                if res.is_err() || work || Instant::now() >= until {
                    break;
                }
                // Spin only on a CPU nobody else wants: a runnable thread
                // here (a sandbox's program, the gateway stack) runs first.
                // On two cores a plain spin took a third of a core from
                // them (see `busy_poll`).
                let _ = nix::sched::sched_yield();
            }
            if !self.events.is_empty() || !self.me.inbox.is_empty() {
                // Caught while spinning: the budget stays as it is.
                self.take_events();
                return;
            }
        }
        self.me.sleeping.store(true, Ordering::SeqCst);
        // Re-check after announcing sleep: a peer that pushed just before saw
        // `sleeping == false` and did not wake us.
        let timeout = if self.me.inbox.is_empty() && self.me.learn_inbox.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        let res = poll.poll(&mut self.events, Some(timeout));
        self.me.sleeping.store(false, Ordering::SeqCst);
        if let Some(from) = idle_from {
            self.busy.idle_ended(from.elapsed());
        }
        if let Err(e) = res {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!(worker = self.id, error = %e, "poll failed");
            }
            return;
        }
        self.take_events();
    }

    /// Marks the ports of the last poll's events ready.
    fn take_events(&mut self) {
        for ev in self.events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let id = PortId(ev.token().0 as u32);
            if !self.ready.contains(&id) {
                self.ready.push_back(id);
            }
        }
    }
}
