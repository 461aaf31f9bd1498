//! DNS forwarder: sends the queries the switch does not answer itself to the
//! host's upstream resolvers, from one control-plane thread, and delivers
//! their answers. Guarantees the RFC 5452 defences (a new connected socket
//! with a kernel-chosen port and a random ID per attempt; a reply counts only
//! if its ID and question match), merges identical queries, bounds the
//! clients waiting, fails over on timeout or error, and never panics on input.
//!
//! Queries go upstream over UDP. When the upstream truncates its answer (TC)
//! and a waiting client takes more than the query asked for (a TCP client,
//! or a merged UDP client with a larger EDNS0 size), the same upstream is
//! asked again over TCP, on a non-blocking connection the same thread
//! drives, under the same timeout and with at most
//! [`ForwarderConfig::max_tcp`] open; otherwise such a client would get TC
//! with no records over TCP, where it cannot retry. Clients whose limit the
//! truncated answer meets get it at once and retry over TCP themselves.
//!
//! Data-plane workers call [`Forwarder::submit`], which only pushes to a
//! lock-free queue and wakes the thread if it sleeps. The thread does a
//! bounded amount of work per wake-up (see [`BATCH`], [`READS_PER_WAKE`]).

mod engine;
mod message;
mod tcp;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use mio::{Poll, Token, Waker};

pub use super::upstream::{IsOwn, UpstreamSource};
use engine::Engine;

/// Most queued queries taken per wake-up.
pub const BATCH: usize = 256;
/// Most datagrams read from one upstream socket per wake-up.
pub const READS_PER_WAKE: usize = 16;
/// Largest DNS message over UDP or TCP.
const MAX_MESSAGE: usize = 65535;
const WAKER: Token = Token(0);

/// Settings of the forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Where upstream servers come from (default: `/etc/resolv.conf`).
    pub upstreams: UpstreamSource,
    /// How long one upstream gets to answer before the next is asked
    /// (default 2 s).
    pub attempt_timeout: Duration,
    /// Most clients waiting for upstream answers at once; beyond it queries
    /// get SERVFAIL (default 1024).
    pub max_outstanding: usize,
    /// Capacity of the queue between workers and the forwarder thread
    /// (default 1024, at least 1).
    pub queue_depth: usize,
    /// Most TCP connections to upstreams at once, for answers truncated over
    /// UDP; beyond it the clients that need the whole answer get SERVFAIL
    /// (default 32).
    pub max_tcp: usize,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            upstreams: UpstreamSource::default(),
            attempt_timeout: Duration::from_secs(2),
            max_outstanding: 1024,
            queue_depth: 1024,
            max_tcp: 32,
        }
    }
}

/// Receives answers. `R` is the caller's opaque reply route.
pub trait AnswerSink<R>: Send + 'static {
    /// Sends `message` (a complete DNS message) to the client behind `to`.
    fn deliver(&mut self, to: &R, message: &[u8]);
}

/// Defines [`ForwarderStats`] and its atomic twin from one field list.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Counters of the forwarder, per client query unless said otherwise.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ForwarderStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        #[derive(Default)]
        struct Counters {
            $($name: AtomicU64,)*
        }

        impl Counters {
            fn snapshot(&self) -> ForwarderStats {
                ForwarderStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Queries accepted into the queue.
    submitted,
    /// Datagrams sent upstream (one per attempt).
    forwarded,
    /// Clients given an upstream answer (whole or truncated).
    answered,
    /// Clients that joined an identical query already in flight.
    merged,
    /// Queries refused because the queue was full.
    queue_full,
    /// Clients answered SERVFAIL because `max_outstanding` were waiting.
    over_cap,
    /// Attempts that got no answer in time (per attempt).
    timeouts,
    /// Clients answered SERVFAIL because every upstream failed.
    servfail,
    /// Upstream datagrams discarded: wrong ID or question, or unparsable.
    mismatched,
    /// Client queries not forwarded as malformed (FORMERR or NOTIMP sent
    /// when the header was readable).
    malformed,
    /// Clients answered SERVFAIL because no upstream was configured.
    no_upstream,
    /// TCP connections opened to an upstream to fetch an answer it
    /// truncated over UDP (per connection).
    tcp_retries,
    /// Clients answered SERVFAIL because that TCP retry failed: no
    /// connection, an error, no answer in time or one that did not match.
    tcp_failed,
    /// Clients answered SERVFAIL because `max_tcp` TCP retries were open.
    tcp_over_cap,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// One query as handed over by a worker.
struct Submission<R> {
    query: Box<[u8]>,
    reply: R,
    max_len: u16,
}

/// What workers and the forwarder thread share.
struct Shared<R> {
    queue: ArrayQueue<Submission<R>>,
    /// True while the thread is (about to be) blocked in `poll`.
    sleeping: AtomicBool,
    stop: AtomicBool,
    waker: Waker,
    counters: Counters,
}

/// Handle on the forwarder thread. Dropping it stops the thread.
pub struct Forwarder<R> {
    shared: Arc<Shared<R>>,
    thread: Option<JoinHandle<()>>,
}

impl<R: Copy + Send + 'static> Forwarder<R> {
    /// Starts the forwarder thread. `is_own(addr)` is true for addresses that
    /// are the switch's own DNS (never forwarded to: that would loop).
    /// Fails if `queue_depth` is 0 or the poller or thread cannot be made.
    pub fn start(
        config: ForwarderConfig,
        is_own: IsOwn,
        sink: Box<dyn AnswerSink<R>>,
    ) -> io::Result<Forwarder<R>> {
        if config.queue_depth == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "DNS forwarder queue_depth must be at least 1",
            ));
        }
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(config.queue_depth),
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            waker,
            counters: Counters::default(),
        });
        let engine = Engine::new(Arc::clone(&shared), poll, sink, config, is_own);
        let thread = std::thread::Builder::new()
            .name("dns-forward".into())
            .spawn(move || engine.run())?;
        Ok(Forwarder {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands one client query (the DNS message as received) to the
    /// forwarder. Never blocks. `max_len` is the largest answer the client
    /// accepts (512, its EDNS0 UDP payload size, or 65535 over TCP). Returns
    /// false, counting `queue_full`, if the queue is full.
    pub fn submit(&self, query: &[u8], reply: R, max_len: u16) -> bool {
        let shared = &*self.shared;
        let submission = Submission {
            query: query.into(),
            reply,
            max_len,
        };
        if shared.queue.push(submission).is_err() {
            bump(&shared.counters.queue_full, 1);
            return false;
        }
        bump(&shared.counters.submitted, 1);
        // Pairs with the fence in `Engine::run`: either the thread sees the
        // pushed query before sleeping, or we see `sleeping` and wake it.
        fence(Ordering::SeqCst);
        if shared.sleeping.swap(false, Ordering::SeqCst) {
            // Only fails if the eventfd is gone, i.e. the thread is stopping.
            let _ = shared.waker.wake();
        }
        true
    }
}

impl<R> Forwarder<R> {
    /// Counters so far.
    pub fn stats(&self) -> ForwarderStats {
        self.shared.counters.snapshot()
    }

    /// Stops the thread and waits for it (also done on drop). Queries still
    /// waiting get no answer; their clients retry.
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.stop.store(true, Ordering::SeqCst);
            let _ = self.shared.waker.wake();
            if thread.join().is_err() {
                tracing::error!("DNS forwarder thread panicked");
            }
        }
    }
}

impl<R> Drop for Forwarder<R> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
