//! DNS over TCP at one network's gateway (RFC 7766): a few sockets always
//! listen on port 53, each connection reads length-prefixed queries
//! (pipelined queries allowed), answers local names at once and forwards the
//! rest, keeping answers in order of arrival per query. Connections are
//! capped, and idle ones are closed.

use std::collections::HashMap;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpListenEndpoint;

use domain::base::iana::Rcode;

use crate::dns::answer::{header_reply, Outcome, Responder, Transport};
use crate::dns::records::{DnsSettings, Zone};
use crate::dns::{QueryForwarder, ReplyRoute, DNS_PORT};

/// Sockets kept listening, so a burst of connections is accepted at once.
const SPARE_LISTENERS: usize = 4;
/// Most connections (listening included) per network.
pub const MAX_CONNECTIONS: usize = 64;
/// An idle connection is closed after this long (RFC 7766 suggests seconds).
const IDLE: Duration = Duration::from_secs(10);
/// Largest DNS message plus its length prefix.
const MAX_MESSAGE: usize = 2 + u16::MAX as usize;
const RX_BUFFER: usize = 8 * 1024;
const TX_BUFFER: usize = MAX_MESSAGE;

/// What happened while serving, for the stack's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Served {
    /// Connections accepted.
    pub accepted: u64,
    /// Queries read.
    pub queries: u64,
    /// Queries forwarded upstream.
    pub forwarded: u64,
    /// Connections closed because a message could not be parsed.
    pub malformed: u64,
    /// Queries answered here (not forwarded).
    pub answered: u64,
    /// Of those, NXDOMAIN.
    pub nxdomain: u64,
    /// Of those, REFUSED (a name not ours on an internal network).
    pub refused: u64,
}

struct Session {
    conn: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Forwarded queries whose answers have not come back.
    pending: u32,
    last_active: Instant,
    counted: bool,
}

/// Ids of DNS-over-TCP connections: unique across stack threads, and the
/// id modulo the thread count names the thread that holds the connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnIds {
    next: u64,
    step: u64,
}

impl ConnIds {
    /// Ids `first`, `first + step`, ... (thread `first` of `step`).
    pub fn new(first: u64, step: u64) -> ConnIds {
        ConnIds {
            next: first,
            step: step.max(1),
        }
    }

    /// The next id.
    pub fn take(&mut self) -> u64 {
        let id = self.next;
        self.next = self.next.wrapping_add(self.step);
        id
    }
}

/// The DNS-over-TCP sessions of one network.
#[derive(Default)]
pub struct DnsTcp {
    sessions: HashMap<SocketHandle, Session>,
}

impl DnsTcp {
    /// Adds listening sockets on port 53 until enough are spare. They take
    /// connections to any of the interface's addresses: the network's IPv4
    /// and IPv6 gateway (only segments to those reach this socket set).
    pub fn listen(&mut self, sockets: &mut SocketSet<'static>, conns: &mut ConnIds, now: Instant) {
        let listening = self
            .sessions
            .keys()
            .filter(|h| sockets.get::<tcp::Socket>(**h).is_listening())
            .count();
        for _ in listening..SPARE_LISTENERS {
            if self.sessions.len() >= MAX_CONNECTIONS {
                break;
            }
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            );
            let ep = IpListenEndpoint {
                addr: None,
                port: DNS_PORT,
            };
            if s.listen(ep).is_err() {
                break;
            }
            s.set_timeout(Some(IDLE));
            let handle = sockets.add(s);
            self.sessions.insert(
                handle,
                Session {
                    conn: conns.take(),
                    input: Vec::new(),
                    output: Vec::new(),
                    pending: 0,
                    last_active: now,
                    counted: false,
                },
            );
        }
    }

    /// The socket of connection `conn`, if it is one of ours.
    pub fn socket_of(&self, conn: u64) -> Option<SocketHandle> {
        self.sessions
            .iter()
            .find(|(_, s)| s.conn == conn)
            .map(|(h, _)| *h)
    }

    /// Connection ids of this network, with their sockets.
    pub fn connections(&self) -> impl Iterator<Item = (u64, SocketHandle)> + '_ {
        self.sessions.iter().map(|(h, s)| (s.conn, *h))
    }

    /// Reads queries, answers or forwards them, writes answers, closes
    /// finished and idle connections and removes closed sockets.
    #[allow(clippy::too_many_arguments)]
    pub fn serve(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        settings: &DnsSettings,
        zone: Option<&Zone>,
        responder: &mut Responder,
        forwarder: Option<&dyn QueryForwarder>,
        scratch: &mut Vec<u8>,
    ) -> Served {
        let mut served = Served::default();
        let mut closed = Vec::new();
        for (&handle, session) in self.sessions.iter_mut() {
            let sock = sockets.get_mut::<tcp::Socket>(handle);
            if sock.is_listening() {
                continue;
            }
            if !session.counted && sock.is_active() {
                // Idle time counts from the accept: a spare socket may have
                // listened for longer than IDLE, and its first connection
                // used to be closed as idle at once, its query unanswered.
                session.counted = true;
                session.last_active = now;
                served.accepted += 1;
            }
            // Reading stops while answers pile up unread: memory per
            // connection stays bounded.
            while sock.can_recv()
                && session.input.len() < MAX_MESSAGE
                && session.output.len() < MAX_MESSAGE
            {
                let room = MAX_MESSAGE - session.input.len();
                let got = sock.recv(|buf| {
                    let n = buf.len().min(room);
                    session.input.extend_from_slice(&buf[..n]);
                    (n, n)
                });
                match got {
                    Ok(0) | Err(_) => break,
                    Ok(_) => session.last_active = now,
                }
            }
            let mut used = 0;
            while session.output.len() < MAX_MESSAGE {
                let Some(len) = session.input.get(used..used + 2) else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let Some(query) = session.input.get(used + 2..used + 2 + len) else {
                    break;
                };
                used += 2 + len;
                served.queries += 1;
                let outcome = match zone {
                    Some(z) => responder.respond(settings, z, query, Transport::Tcp, scratch),
                    None => Outcome::Dropped,
                };
                match outcome {
                    Outcome::Answered { rcode, .. } => {
                        served.answered += 1;
                        served.nxdomain += u64::from(rcode == Rcode::NXDOMAIN);
                        served.refused += u64::from(rcode == Rcode::REFUSED);
                        push_message(scratch, &mut session.output);
                    }
                    Outcome::Forward { max_len } => {
                        let route = ReplyRoute::Tcp { conn: session.conn };
                        if forwarder.is_some_and(|f| f.submit(query, route, max_len)) {
                            session.pending += 1;
                            served.forwarded += 1;
                        } else {
                            let recursion = zone.is_some_and(|z| z.forward);
                            header_reply(query, Rcode::SERVFAIL, recursion, scratch);
                            push_message(scratch, &mut session.output);
                        }
                    }
                    Outcome::Dropped => {
                        served.malformed += 1;
                        sock.abort();
                        used = session.input.len();
                        break;
                    }
                }
            }
            session.input.drain(..used);
            flush(sock, &mut session.output);
            // The client closed its side and has every answer.
            let finished = sock.state() == tcp::State::CloseWait
                && session.pending == 0
                && session.output.is_empty();
            let idle = now - session.last_active > IDLE && session.pending == 0;
            if (finished || idle) && sock.is_open() {
                sock.close();
            }
            if sock.state() == tcp::State::Closed {
                closed.push(handle);
            }
        }
        for h in closed {
            self.sessions.remove(&h);
            sockets.remove(h);
        }
        served
    }

    /// Writes a forwarded answer for connection `conn` (false if it is gone).
    pub fn deliver(
        &mut self,
        sockets: &mut SocketSet<'static>,
        handle: SocketHandle,
        answer: &[u8],
    ) -> bool {
        let Some(session) = self.sessions.get_mut(&handle) else {
            return false;
        };
        session.pending = session.pending.saturating_sub(1);
        push_message(answer, &mut session.output);
        flush(sockets.get_mut::<tcp::Socket>(handle), &mut session.output);
        true
    }
}

/// Sends as much of `output` as the socket takes.
fn flush(sock: &mut tcp::Socket<'_>, output: &mut Vec<u8>) {
    if output.is_empty() || !sock.may_send() {
        return;
    }
    if let Ok(n) = sock.send_slice(output) {
        output.drain(..n);
    }
}

/// Appends `message` with its two-byte length prefix (RFC 1035 4.2.2).
fn push_message(message: &[u8], output: &mut Vec<u8>) {
    let n = message.len().min(u16::MAX as usize);
    output.extend_from_slice(&(n as u16).to_be_bytes());
    output.extend_from_slice(&message[..n]);
}
