//! The forwarder thread's state: the queries in flight upstream with the
//! clients merged onto each, their timers and failover, and the random IDs
//! they carry.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::base::iana::Rcode;
use hashbrown::HashMap;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::message::{error_answer, parse_query, QueryKey, Reply, HEADER_LEN};
use super::tcp::{Progress, TcpExchange};
use super::*;
use crate::dns::upstream::Upstreams;

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

/// What became of a pending query after reading its socket.
enum Outcome {
    Waiting,
    Answered,
    FailOver,
    /// Clients left need the answer the upstream truncated: ask over TCP.
    Tcp,
}

/// The forwarder thread's state.
pub(super) struct Engine<R> {
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
    /// The thread's state, with nothing in flight yet.
    pub(super) fn new(
        shared: Arc<Shared<R>>,
        poll: Poll,
        sink: Box<dyn AnswerSink<R>>,
        config: ForwarderConfig,
        is_own: IsOwn,
    ) -> Engine<R> {
        Engine {
            shared,
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
        }
    }

    pub(super) fn run(mut self) {
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

    /// Gives `query` a fresh random ID (RFC 5452), one per attempt, and
    /// returns it.
    fn stamp_id(&mut self, query: &mut [u8]) -> io::Result<u16> {
        let id = self.ids.next()?;
        if let Some(field) = query.get_mut(..2) {
            field.copy_from_slice(&id.to_be_bytes());
        }
        Ok(id)
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
        let id = self.stamp_id(query)?;
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
        let id = self.stamp_id(query)?;
        let exchange = TcpExchange::connect(self.poll.registry(), upstream, query, Token(token))?;
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
