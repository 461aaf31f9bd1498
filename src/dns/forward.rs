//! DNS forwarder: sends the queries the switch does not answer itself to the
//! host's upstream resolvers, from one control-plane thread, and delivers
//! their answers. Guarantees the RFC 5452 defences (a new connected socket
//! with a kernel-chosen port and a random ID per attempt; a reply counts only
//! if its ID and question match), merges identical queries, bounds the
//! clients waiting, fails over on timeout or error, and never panics on input.
//!
//! Data-plane workers call [`Forwarder::submit`], which only pushes to a
//! lock-free queue and wakes the thread if it sleeps. The thread does a
//! bounded amount of work per wake-up (see [`BATCH`], [`READS_PER_WAKE`]).

mod message;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use domain::base::iana::Rcode;
use hashbrown::HashMap;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::upstream::Upstreams;
pub use super::upstream::{IsOwn, UpstreamSource};
use message::{error_answer, parse_query, QueryKey, Reply, HEADER_LEN};

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
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            upstreams: UpstreamSource::default(),
            attempt_timeout: Duration::from_secs(2),
            max_outstanding: 1024,
            queue_depth: 1024,
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
        let engine = Engine {
            shared: Arc::clone(&shared),
            poll,
            sink,
            upstreams: Upstreams::new(config.upstreams, is_own),
            attempt_timeout: config.attempt_timeout,
            max_outstanding: config.max_outstanding,
            pending: HashMap::new(),
            by_key: HashMap::new(),
            timers: VecDeque::new(),
            backlog: Vec::new(),
            waiting: 0,
            last_token: WAKER.0,
            last_attempt: 0,
            ids: IdSource::default(),
            buf: vec![0; MAX_MESSAGE],
        };
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

/// Transaction IDs from the OS's cryptographic RNG, fetched in blocks.
struct IdSource {
    block: [u8; 64],
    used: usize,
}

impl Default for IdSource {
    fn default() -> Self {
        IdSource {
            block: [0; 64],
            used: 64,
        }
    }
}

impl IdSource {
    fn next(&mut self) -> io::Result<u16> {
        if self.used + 2 > self.block.len() {
            // getrandom's error is not `std::error::Error` without its `std`
            // feature, so keep its text.
            getrandom::fill(&mut self.block).map_err(|e| io::Error::other(e.to_string()))?;
            self.used = 0;
        }
        let id = u16::from_be_bytes([self.block[self.used], self.block[self.used + 1]]);
        self.used += 2;
        Ok(id)
    }
}

/// A client waiting for an answer.
struct Waiter<R> {
    reply: R,
    id: u16,
    /// The client's header, for answers the forwarder makes itself.
    header: [u8; HEADER_LEN],
    /// The client's question section, name case as sent.
    question: Box<[u8]>,
    max_len: u16,
    edns_do: Option<bool>,
}

/// One question in flight upstream, with every client waiting for it.
struct Pending<R> {
    key: QueryKey,
    /// The first client's query; its ID is replaced on every attempt.
    query: Vec<u8>,
    upstreams: Arc<[SocketAddr]>,
    /// Index in `upstreams` of the next server to try.
    next: usize,
    socket: Option<UdpSocket>,
    id: u16,
    /// Serial of the current attempt, to recognise stale timers.
    attempt: u64,
    waiters: Vec<Waiter<R>>,
}

/// What became of a pending query after reading its socket.
enum Outcome {
    Waiting,
    Answered,
    FailOver,
}

/// The forwarder thread's state.
struct Engine<R> {
    shared: Arc<Shared<R>>,
    poll: Poll,
    sink: Box<dyn AnswerSink<R>>,
    upstreams: Upstreams,
    attempt_timeout: Duration,
    max_outstanding: usize,
    /// Queries in flight, by their socket's token.
    pending: HashMap<usize, Pending<R>>,
    by_key: HashMap<QueryKey, usize>,
    /// Attempt deadlines `(when, token, attempt)`; in order because the
    /// timeout is the same for all. Entries of finished attempts are skipped.
    timers: VecDeque<(Instant, usize, u64)>,
    /// Sockets that may hold more datagrams than one wake-up reads.
    backlog: Vec<usize>,
    /// Clients in all `pending` entries.
    waiting: usize,
    last_token: usize,
    last_attempt: u64,
    ids: IdSource,
    buf: Vec<u8>,
}

impl<R: Copy + Send + 'static> Engine<R> {
    fn run(mut self) {
        let mut events = Events::with_capacity(BATCH);
        while !self.shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            self.take_queries(now);
            for token in std::mem::take(&mut self.backlog) {
                self.read_replies(token);
            }
            self.expire(now);

            let mut timeout = self
                .timers
                .front()
                .map(|(when, ..)| when.saturating_duration_since(now));
            self.shared.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.shared.queue.is_empty()
                || !self.backlog.is_empty()
                || self.shared.stop.load(Ordering::SeqCst)
            {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "DNS forwarder cannot poll; stopping");
                    return;
                }
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.read_replies(event.token().0);
                }
            }
        }
    }

    fn take_queries(&mut self, now: Instant) {
        if self.shared.queue.is_empty() {
            return;
        }
        let upstreams = self.upstreams.current(now);
        for _ in 0..BATCH {
            let Some(submission) = self.shared.queue.pop() else {
                break;
            };
            self.accept(submission, &upstreams, now);
        }
    }

    fn accept(&mut self, submission: Submission<R>, upstreams: &Arc<[SocketAddr]>, now: Instant) {
        let counters = Arc::clone(&self.shared);
        let counters = &counters.counters;
        let query = match parse_query(&submission.query) {
            Ok(query) => query,
            Err(e) => {
                bump(&counters.malformed, 1);
                let answer = e
                    .rcode()
                    .and_then(|rcode| error_answer(&submission.query, rcode, &[], None));
                if let Some(answer) = answer {
                    self.sink.deliver(&submission.reply, &answer);
                }
                return;
            }
        };
        let mut header = [0; HEADER_LEN];
        if let Some(bytes) = submission.query.get(..HEADER_LEN) {
            header.copy_from_slice(bytes);
        }
        let waiter = Waiter {
            reply: submission.reply,
            id: query.id,
            header,
            question: query.question,
            max_len: submission.max_len,
            edns_do: query.edns_do,
        };
        if upstreams.is_empty() {
            bump(&counters.no_upstream, 1);
            self.servfail(&waiter);
            return;
        }
        if self.waiting >= self.max_outstanding {
            bump(&counters.over_cap, 1);
            self.servfail(&waiter);
            return;
        }
        self.waiting += 1;
        if let Some(pending) = self
            .by_key
            .get(&query.key)
            .and_then(|token| self.pending.get_mut(token))
        {
            pending.waiters.push(waiter);
            bump(&counters.merged, 1);
            return;
        }
        self.last_token = self.last_token.wrapping_add(1).max(WAKER.0 + 1);
        let token = self.last_token;
        self.by_key.insert(query.key.clone(), token);
        self.pending.insert(
            token,
            Pending {
                key: query.key,
                query: submission.query.into_vec(),
                upstreams: Arc::clone(upstreams),
                next: 0,
                socket: None,
                id: 0,
                attempt: 0,
                waiters: vec![waiter],
            },
        );
        self.attempt(token, now);
    }

    /// Sends the pending query `token` to its next upstream that can be
    /// reached; answers SERVFAIL if none is left.
    fn attempt(&mut self, token: usize, now: Instant) {
        let Some(mut pending) = self.pending.remove(&token) else {
            return;
        };
        if let Some(mut old) = pending.socket.take() {
            let _ = self.poll.registry().deregister(&mut old);
        }
        while let Some(&upstream) = pending.upstreams.get(pending.next) {
            pending.next += 1;
            match self.send_attempt(&mut pending.query, upstream, token) {
                Ok((socket, id)) => {
                    self.last_attempt += 1;
                    pending.socket = Some(socket);
                    pending.id = id;
                    pending.attempt = self.last_attempt;
                    self.timers
                        .push_back((now + self.attempt_timeout, token, self.last_attempt));
                    bump(&self.shared.counters.forwarded, 1);
                    self.pending.insert(token, pending);
                    return;
                }
                Err(e) => tracing::debug!(%upstream, error = %e, "DNS upstream unreachable"),
            }
        }
        self.fail(pending);
    }

    /// New socket with a kernel-chosen port, connected to `upstream` so only
    /// its datagrams arrive; the query goes out with a fresh random ID.
    fn send_attempt(
        &mut self,
        query: &mut [u8],
        upstream: SocketAddr,
        token: usize,
    ) -> io::Result<(UdpSocket, u16)> {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut socket = UdpSocket::bind(local)?;
        socket.connect(upstream)?;
        let id = self.ids.next()?;
        if let Some(field) = query.get_mut(..2) {
            field.copy_from_slice(&id.to_be_bytes());
        }
        self.poll
            .registry()
            .register(&mut socket, Token(token), Interest::READABLE)?;
        socket.send(query)?;
        Ok((socket, id))
    }

    fn read_replies(&mut self, token: usize) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let counters = &self.shared.counters;
        let mut outcome = Outcome::Waiting;
        let mut drained = false;
        for _ in 0..READS_PER_WAKE {
            let Some(socket) = &pending.socket else {
                drained = true;
                break;
            };
            let len = match socket.recv(&mut self.buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS upstream failed");
                    outcome = Outcome::FailOver;
                    break;
                }
            };
            let bytes = self.buf.get(..len).unwrap_or_default();
            match Reply::check(bytes, pending.id, &pending.key) {
                None => bump(&counters.mismatched, 1),
                Some(reply) if reply.should_fail_over() => {
                    outcome = Outcome::FailOver;
                    break;
                }
                Some(reply) => {
                    // Counted first, so the counters never lag what a client saw.
                    bump(&counters.answered, pending.waiters.len() as u64);
                    for w in &pending.waiters {
                        let answer = reply.answer_for(w.id, &w.question, w.max_len);
                        self.sink.deliver(&w.reply, &answer);
                    }
                    outcome = Outcome::Answered;
                    break;
                }
            }
        }
        match outcome {
            Outcome::Waiting => {
                if !drained {
                    self.backlog.push(token);
                }
                self.pending.insert(token, pending);
            }
            Outcome::Answered => self.finish(pending),
            Outcome::FailOver => {
                self.pending.insert(token, pending);
                self.attempt(token, Instant::now());
            }
        }
    }

    /// Fails over every attempt whose deadline passed.
    fn expire(&mut self, now: Instant) {
        while let Some(&(when, token, attempt)) = self.timers.front() {
            if when > now {
                break;
            }
            self.timers.pop_front();
            if self
                .pending
                .get(&token)
                .is_some_and(|p| p.attempt == attempt)
            {
                bump(&self.shared.counters.timeouts, 1);
                self.attempt(token, now);
            }
        }
    }

    /// Every upstream failed: SERVFAIL to all waiting clients.
    fn fail(&mut self, pending: Pending<R>) {
        bump(&self.shared.counters.servfail, pending.waiters.len() as u64);
        for w in &pending.waiters {
            self.servfail(w);
        }
        self.finish(pending);
    }

    fn finish(&mut self, mut pending: Pending<R>) {
        if let Some(mut socket) = pending.socket.take() {
            let _ = self.poll.registry().deregister(&mut socket);
        }
        self.by_key.remove(&pending.key);
        self.waiting = self.waiting.saturating_sub(pending.waiters.len());
    }

    fn servfail(&mut self, w: &Waiter<R>) {
        if let Some(answer) = error_answer(&w.header, Rcode::SERVFAIL, &w.question, w.edns_do) {
            self.sink.deliver(&w.reply, &answer);
        }
    }
}
