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

mod message;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use domain::base::iana::Rcode;
use hashbrown::HashMap;
use mio::net::{TcpStream, UdpSocket};
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
        let engine = Engine {
            shared: Arc::clone(&shared),
            poll,
            sink,
            upstreams: Upstreams::new(config.upstreams, is_own),
            attempt_timeout: config.attempt_timeout,
            max_outstanding: config.max_outstanding,
            max_tcp: config.max_tcp,
            tcp_open: 0,
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
    /// The largest UDP answer `query` asks for (see
    /// [`message::ClientQuery::udp_size`]).
    udp_size: u16,
    upstreams: Arc<[SocketAddr]>,
    /// Index in `upstreams` of the next server to try.
    next: usize,
    /// The server of the current attempt.
    server: Option<SocketAddr>,
    link: Option<Link>,
    id: u16,
    /// Serial of the current attempt, to recognise stale timers.
    attempt: u64,
    waiters: Vec<Waiter<R>>,
}

/// How the current attempt of a pending query talks to its upstream.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpExchange),
}

/// One query and its answer over a TCP connection (RFC 1035 4.2.2: each
/// message after a two-byte length).
struct TcpExchange {
    stream: TcpStream,
    /// The length-prefixed query; `sent` bytes of it are written.
    out: Vec<u8>,
    sent: usize,
    /// What was read so far: the answer's length, then the answer.
    input: Vec<u8>,
}

/// What became of a pending query after reading its socket.
enum Outcome {
    Waiting,
    Answered,
    FailOver,
    /// Clients left need the answer the upstream truncated: ask over TCP.
    Tcp,
}

/// Where a TCP exchange stands after its socket was served.
enum Progress {
    Waiting,
    /// The whole answer (length prefix included) is in `input`.
    Done,
    Failed(io::Error),
}

/// The forwarder thread's state.
struct Engine<R> {
    shared: Arc<Shared<R>>,
    poll: Poll,
    sink: Box<dyn AnswerSink<R>>,
    upstreams: Upstreams,
    attempt_timeout: Duration,
    max_outstanding: usize,
    max_tcp: usize,
    /// TCP exchanges open (at most `max_tcp`).
    tcp_open: usize,
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
                udp_size: query.udp_size,
                upstreams: Arc::clone(upstreams),
                next: 0,
                server: None,
                link: None,
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
        self.close(&mut pending);
        while let Some(&upstream) = pending.upstreams.get(pending.next) {
            pending.next += 1;
            match self.send_attempt(&mut pending.query, upstream, token) {
                Ok((socket, id)) => {
                    self.last_attempt += 1;
                    pending.server = Some(upstream);
                    pending.link = Some(Link::Udp(socket));
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
        let Some(mut pending) = self.pending.remove(&token) else {
            return;
        };
        if matches!(pending.link, Some(Link::Tcp(_))) {
            self.serve_tcp(token, pending);
            return;
        }
        let counters = &self.shared.counters;
        let mut outcome = Outcome::Waiting;
        let mut drained = false;
        for _ in 0..READS_PER_WAKE {
            let Some(Link::Udp(socket)) = &pending.link else {
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
                    // A client that takes no more than the query asked for
                    // gets the truncated answer and retries over TCP itself;
                    // the others wait for the answer over TCP.
                    let udp_size = pending.udp_size;
                    let needs_tcp = |w: &Waiter<R>| reply.truncated() && w.max_len > udp_size;
                    let done = pending.waiters.iter().filter(|w| !needs_tcp(w)).count();
                    // Counted first, so the counters never lag what a client saw.
                    bump(&counters.answered, done as u64);
                    let sink = &mut self.sink;
                    pending.waiters.retain(|w| {
                        if needs_tcp(w) {
                            return true;
                        }
                        let answer = reply.answer_for(w.id, &w.question, w.max_len);
                        sink.deliver(&w.reply, &answer);
                        false
                    });
                    self.waiting = self.waiting.saturating_sub(done);
                    outcome = if pending.waiters.is_empty() {
                        Outcome::Answered
                    } else {
                        Outcome::Tcp
                    };
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
            Outcome::Tcp => self.retry_over_tcp(token, pending, Instant::now()),
        }
    }

    /// Asks the upstream that truncated its answer again over TCP, for the
    /// clients still waiting; SERVFAIL to them if that cannot start.
    fn retry_over_tcp(&mut self, token: usize, mut pending: Pending<R>, now: Instant) {
        self.close(&mut pending);
        let counters = Arc::clone(&self.shared);
        let counters = &counters.counters;
        let Some(server) = pending.server else {
            bump(&counters.tcp_failed, pending.waiters.len() as u64);
            self.servfail_all(pending);
            return;
        };
        if self.tcp_open >= self.max_tcp {
            bump(&counters.tcp_over_cap, pending.waiters.len() as u64);
            self.servfail_all(pending);
            return;
        }
        match self.connect_tcp(&mut pending.query, server, token) {
            Ok((exchange, id)) => {
                self.tcp_open += 1;
                self.last_attempt += 1;
                pending.link = Some(Link::Tcp(exchange));
                pending.id = id;
                pending.attempt = self.last_attempt;
                self.timers
                    .push_back((now + self.attempt_timeout, token, self.last_attempt));
                bump(&counters.tcp_retries, 1);
                self.pending.insert(token, pending);
            }
            Err(e) => {
                tracing::debug!(%server, error = %e, "DNS upstream unreachable over TCP");
                bump(&counters.tcp_failed, pending.waiters.len() as u64);
                self.servfail_all(pending);
            }
        }
    }

    /// Starts a non-blocking connection to `upstream` with the query (a
    /// fresh random ID) queued behind its length; the poll reports progress
    /// under `token`.
    fn connect_tcp(
        &mut self,
        query: &mut [u8],
        upstream: SocketAddr,
        token: usize,
    ) -> io::Result<(TcpExchange, u16)> {
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long for TCP"))?;
        let id = self.ids.next()?;
        if let Some(field) = query.get_mut(..2) {
            field.copy_from_slice(&id.to_be_bytes());
        }
        let mut out = Vec::with_capacity(2 + query.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        let mut stream = TcpStream::connect(upstream)?;
        self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let exchange = TcpExchange {
            stream,
            out,
            sent: 0,
            input: Vec::new(),
        };
        Ok((exchange, id))
    }

    /// Writes the query and reads the answer of a TCP exchange as far as the
    /// socket allows; delivers the answer once whole.
    fn serve_tcp(&mut self, token: usize, mut pending: Pending<R>) {
        let Some(Link::Tcp(exchange)) = &mut pending.link else {
            self.pending.insert(token, pending);
            return;
        };
        match exchange.progress(&mut self.buf) {
            Progress::Waiting => {
                self.pending.insert(token, pending);
            }
            Progress::Failed(e) => {
                tracing::debug!(server = ?pending.server, error = %e, "DNS upstream failed over TCP");
                bump(
                    &self.shared.counters.tcp_failed,
                    pending.waiters.len() as u64,
                );
                self.servfail_all(pending);
            }
            Progress::Done => {
                let counters = Arc::clone(&self.shared);
                let counters = &counters.counters;
                let bytes = exchange.input.get(2..).unwrap_or_default();
                match Reply::check(bytes, pending.id, &pending.key) {
                    Some(reply) => {
                        bump(&counters.answered, pending.waiters.len() as u64);
                        for w in &pending.waiters {
                            let answer = reply.answer_for(w.id, &w.question, w.max_len);
                            self.sink.deliver(&w.reply, &answer);
                        }
                        self.finish(pending);
                    }
                    None => {
                        bump(&counters.mismatched, 1);
                        bump(&counters.tcp_failed, pending.waiters.len() as u64);
                        self.servfail_all(pending);
                    }
                }
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
            let Some(pending) = self.pending.get(&token) else {
                continue;
            };
            if pending.attempt != attempt {
                continue;
            }
            bump(&self.shared.counters.timeouts, 1);
            if matches!(pending.link, Some(Link::Tcp(_))) {
                // The upstream answered over UDP; no other is asked over TCP.
                if let Some(pending) = self.pending.remove(&token) {
                    let waiters = pending.waiters.len() as u64;
                    bump(&self.shared.counters.tcp_failed, waiters);
                    self.servfail_all(pending);
                }
            } else {
                self.attempt(token, now);
            }
        }
    }

    /// Every upstream failed: SERVFAIL to all waiting clients.
    fn fail(&mut self, pending: Pending<R>) {
        bump(&self.shared.counters.servfail, pending.waiters.len() as u64);
        self.servfail_all(pending);
    }

    /// SERVFAIL to all waiting clients, counted by the caller.
    fn servfail_all(&mut self, pending: Pending<R>) {
        for w in &pending.waiters {
            self.servfail(w);
        }
        self.finish(pending);
    }

    fn finish(&mut self, mut pending: Pending<R>) {
        self.close(&mut pending);
        self.by_key.remove(&pending.key);
        self.waiting = self.waiting.saturating_sub(pending.waiters.len());
    }

    /// Closes the socket of the current attempt, if any.
    fn close(&mut self, pending: &mut Pending<R>) {
        match pending.link.take() {
            Some(Link::Udp(mut socket)) => {
                let _ = self.poll.registry().deregister(&mut socket);
            }
            Some(Link::Tcp(mut exchange)) => {
                let _ = self.poll.registry().deregister(&mut exchange.stream);
                self.tcp_open = self.tcp_open.saturating_sub(1);
            }
            None => {}
        }
    }

    fn servfail(&mut self, w: &Waiter<R>) {
        if let Some(answer) = error_answer(&w.header, Rcode::SERVFAIL, &w.question, w.edns_do) {
            self.sink.deliver(&w.reply, &answer);
        }
    }
}

impl TcpExchange {
    /// Writes what is left of the query, then reads until the answer is
    /// whole or the socket has nothing more. `buf` is scratch space of
    /// [`MAX_MESSAGE`] bytes.
    fn progress(&mut self, buf: &mut [u8]) -> Progress {
        match self.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Progress::Failed(e),
        }
        while self.sent < self.out.len() {
            let rest = self.out.get(self.sent..).unwrap_or_default();
            match self.stream.write(rest) {
                Ok(0) => return Progress::Failed(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                // Still connecting, or the send buffer is full: the poll
                // reports when it is writable.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    return Progress::Waiting
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(e),
            }
        }
        loop {
            let need = match self.input.get(..2) {
                Some(&[hi, lo]) => 2 + usize::from(u16::from_be_bytes([hi, lo])),
                _ => 2,
            };
            if self.input.len() >= need {
                return Progress::Done;
            }
            let want = (need - self.input.len()).min(buf.len());
            let Some(into) = buf.get_mut(..want) else {
                return Progress::Failed(io::ErrorKind::InvalidInput.into());
            };
            match self.stream.read(into) {
                Ok(0) => return Progress::Failed(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self
                    .input
                    .extend_from_slice(into.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(e),
            }
        }
    }
}
