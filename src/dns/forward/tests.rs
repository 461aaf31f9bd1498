//! Forwarder tests against fake upstream servers on loopback.

use super::message::tests::query;
use super::message::HEADER_LEN;
use super::*;
use crossbeam::channel::{self, Receiver, Sender};
use domain::base::iana::Rcode;
use domain::base::{Header, Message, MessageBuilder};
use domain::rdata::A;
use std::io::{Read as _, Write as _};
use std::net::UdpSocket as StdUdpSocket;
use std::net::{Ipv4Addr, SocketAddr};
use std::net::{TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

/// How a fake upstream answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// One A record.
    Answer,
    /// Never answers.
    Silent,
    /// First a reply with a wrong ID, then the right one.
    WrongIdFirst,
    /// SERVFAIL.
    ServFail,
    /// 100 A records (about 1.6 kB).
    Large,
    /// One A record after a pause.
    Delayed(Duration),
}

/// A fake upstream DNS server on 127.0.0.1, stopped on drop.
struct FakeUpstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    fn start(mode: Mode) -> FakeUpstream {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind fake upstream");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local addr");
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (Arc::clone(&queries), Arc::clone(&stop));
        let thread = std::thread::spawn(move || serve(&socket, mode, &q, &s));
        FakeUpstream {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &StdUdpSocket, mode: Mode, queries: &AtomicUsize, stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let Ok(msg) = Message::from_slice(&buf[..len]) else {
            continue;
        };
        let send = |bytes: &[u8]| {
            let _ = socket.send_to(bytes, from);
        };
        match mode {
            Mode::Silent => {}
            Mode::ServFail => send(&answer(msg, Rcode::SERVFAIL, 0)),
            Mode::Answer => send(&answer(msg, Rcode::NOERROR, 1)),
            Mode::Large => send(&answer(msg, Rcode::NOERROR, 100)),
            Mode::Delayed(pause) => {
                std::thread::sleep(pause);
                send(&answer(msg, Rcode::NOERROR, 1));
            }
            Mode::WrongIdFirst => {
                let mut wrong = answer(msg, Rcode::NOERROR, 1);
                wrong[0] ^= 0x55;
                send(&wrong);
                send(&answer(msg, Rcode::NOERROR, 1));
            }
        }
    }
}

/// An answer to `query` with `records` A records for its name.
fn answer(query: &Message<[u8]>, rcode: Rcode, records: u8) -> Vec<u8> {
    let builder = MessageBuilder::new_vec()
        .start_answer(query, rcode)
        .expect("start answer");
    let mut builder = builder.answer();
    let name = query.sole_question().expect("question").into_qname();
    for i in 0..records {
        builder
            .push((&name, 60, A::new(Ipv4Addr::new(192, 0, 2, i))))
            .expect("push record");
    }
    builder.finish()
}

struct ChanSink(Sender<(u32, Vec<u8>)>);

impl AnswerSink<u32> for ChanSink {
    fn deliver(&mut self, to: &u32, message: &[u8]) {
        let _ = self.0.send((*to, message.to_vec()));
    }
}

const TIMEOUT: Duration = Duration::from_millis(200);
/// Slack for a busy two-core test machine.
const MARGIN: Duration = Duration::from_millis(1500);

fn forwarder(upstreams: Vec<SocketAddr>) -> (Forwarder<u32>, Receiver<(u32, Vec<u8>)>) {
    forwarder_with(upstreams, 1024)
}

fn forwarder_with(
    upstreams: Vec<SocketAddr>,
    max_outstanding: usize,
) -> (Forwarder<u32>, Receiver<(u32, Vec<u8>)>) {
    forwarder_config(ForwarderConfig {
        upstreams: UpstreamSource::Static(upstreams),
        attempt_timeout: TIMEOUT,
        max_outstanding,
        queue_depth: 64,
        ..ForwarderConfig::default()
    })
}

fn forwarder_config(config: ForwarderConfig) -> (Forwarder<u32>, Receiver<(u32, Vec<u8>)>) {
    let (tx, rx) = channel::unbounded();
    let fwd = Forwarder::start(config, Arc::new(|_| false), Box::new(ChanSink(tx)))
        .expect("start forwarder");
    (fwd, rx)
}

fn recv(rx: &Receiver<(u32, Vec<u8>)>, within: Duration) -> (u32, Vec<u8>) {
    rx.recv_timeout(within).expect("an answer in time")
}

fn header(bytes: &[u8]) -> Header {
    *Header::for_message_slice(&bytes[..HEADER_LEN])
}

fn ancount(bytes: &[u8]) -> u16 {
    Message::from_slice(bytes)
        .expect("answer parses")
        .header_counts()
        .ancount()
}

/// A port on 127.0.0.1 where nothing listens (ICMP port unreachable).
fn closed_port() -> SocketAddr {
    let s = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

#[test]
fn answer_is_delivered_with_client_id_restored() {
    let up = FakeUpstream::start(Mode::Answer);
    let (fwd, rx) = forwarder(vec![up.addr]);
    assert!(fwd.submit(&query(0x1234, "Host.Example.", None), 7, 512));
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!(to, 7);
    assert_eq!(header(&ans).id(), 0x1234);
    assert_eq!(header(&ans).rcode(), Rcode::NOERROR);
    assert_eq!(ancount(&ans), 1);
    assert_eq!(
        &ans[HEADER_LEN..HEADER_LEN + 6],
        b"\x04Host\x07",
        "client's case"
    );
    let s = fwd.stats();
    assert_eq!((s.submitted, s.forwarded, s.answered), (1, 1, 1));
}

#[test]
fn wrong_id_reply_is_ignored_then_right_one_accepted() {
    let up = FakeUpstream::start(Mode::WrongIdFirst);
    let (fwd, rx) = forwarder(vec![up.addr]);
    fwd.submit(&query(9, "a.example.", None), 1, 512);
    let (_, ans) = recv(&rx, MARGIN);
    assert_eq!(header(&ans).id(), 9);
    assert_eq!(ancount(&ans), 1);
    assert_eq!(fwd.stats().mismatched, 1);
    assert_eq!(fwd.stats().answered, 1);
}

#[test]
fn fails_over_from_silent_upstream_within_timeout() {
    let silent = FakeUpstream::start(Mode::Silent);
    let good = FakeUpstream::start(Mode::Answer);
    let (fwd, rx) = forwarder(vec![silent.addr, good.addr]);
    let start = Instant::now();
    fwd.submit(&query(5, "b.example.", None), 2, 512);
    let (_, ans) = recv(&rx, TIMEOUT + MARGIN);
    assert!(start.elapsed() >= TIMEOUT);
    assert_eq!(header(&ans).rcode(), Rcode::NOERROR);
    assert_eq!((silent.queries(), good.queries()), (1, 1));
    assert_eq!(fwd.stats().timeouts, 1);
}

#[test]
fn fails_over_at_once_when_upstream_refuses_or_servfails() {
    let refused = closed_port();
    let servfail = FakeUpstream::start(Mode::ServFail);
    let good = FakeUpstream::start(Mode::Answer);
    let (fwd, rx) = forwarder(vec![refused, servfail.addr, good.addr]);
    fwd.submit(&query(5, "c.example.", None), 3, 512);
    // No attempt may time out (checked below); the margin is for slow machines.
    let (_, ans) = recv(&rx, MARGIN);
    assert_eq!(header(&ans).rcode(), Rcode::NOERROR);
    assert_eq!(servfail.queries(), 1);
    let s = fwd.stats();
    assert_eq!((s.forwarded, s.timeouts, s.answered), (3, 0, 1));
}

#[test]
fn all_upstreams_silent_gives_servfail() {
    let a = FakeUpstream::start(Mode::Silent);
    let b = FakeUpstream::start(Mode::Silent);
    let (fwd, rx) = forwarder(vec![a.addr, b.addr]);
    fwd.submit(&query(77, "d.example.", Some(true)), 4, 512);
    let (_, ans) = recv(&rx, 2 * TIMEOUT + MARGIN);
    assert_eq!(header(&ans).id(), 77);
    assert_eq!(header(&ans).rcode(), Rcode::SERVFAIL);
    let msg = Message::from_slice(&ans[..]).expect("parses");
    assert!(msg.opt().expect("OPT echoed").dnssec_ok());
    let s = fwd.stats();
    assert_eq!((s.timeouts, s.servfail), (2, 1));
}

#[test]
fn identical_concurrent_queries_are_merged() {
    let up = FakeUpstream::start(Mode::Delayed(Duration::from_millis(100)));
    let (fwd, rx) = forwarder(vec![up.addr]);
    fwd.submit(&query(1, "same.example.", None), 10, 512);
    fwd.submit(&query(2, "SAME.example.", None), 11, 512);
    let mut got = [recv(&rx, MARGIN), recv(&rx, MARGIN)];
    got.sort_by_key(|(to, _)| *to);
    assert_eq!(header(&got[0].1).id(), 1);
    assert_eq!(header(&got[1].1).id(), 2);
    assert_eq!(&got[1].1[HEADER_LEN..HEADER_LEN + 5], b"\x04SAME");
    assert_eq!(up.queries(), 1);
    let s = fwd.stats();
    assert_eq!((s.forwarded, s.merged, s.answered), (1, 1, 2));
}

#[test]
fn clients_beyond_the_cap_get_servfail() {
    let up = FakeUpstream::start(Mode::Delayed(Duration::from_millis(150)));
    let (fwd, rx) = forwarder_with(vec![up.addr], 1);
    fwd.submit(&query(1, "one.example.", None), 1, 512);
    fwd.submit(&query(2, "two.example.", None), 2, 512);
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!((to, header(&ans).rcode()), (2, Rcode::SERVFAIL));
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!((to, header(&ans).rcode()), (1, Rcode::NOERROR));
    assert_eq!(fwd.stats().over_cap, 1);
}

#[test]
fn large_answer_is_truncated_for_small_clients_only() {
    let up = FakeUpstream::start(Mode::Large);
    let (fwd, rx) = forwarder(vec![up.addr]);
    fwd.submit(&query(3, "big.example.", None), 1, 512);
    let (_, ans) = recv(&rx, MARGIN);
    let h = header(&ans);
    assert!(h.tc() && h.qr());
    assert_eq!(h.id(), 3);
    let counts = Message::from_slice(&ans[..])
        .expect("parses")
        .header_counts();
    assert_eq!(
        (counts.qdcount(), counts.ancount(), counts.arcount()),
        (1, 0, 0)
    );

    fwd.submit(&query(4, "big2.example.", None), 2, 65535);
    let (_, ans) = recv(&rx, MARGIN);
    assert!(!header(&ans).tc());
    assert_eq!(ancount(&ans), 100);
}

#[test]
fn no_upstream_gives_servfail_at_once() {
    let (fwd, rx) = forwarder(Vec::new());
    fwd.submit(&query(8, "e.example.", None), 1, 512);
    let (_, ans) = recv(&rx, MARGIN);
    assert_eq!(header(&ans).rcode(), Rcode::SERVFAIL);
    assert_eq!(fwd.stats().no_upstream, 1);
}

#[test]
fn own_address_is_never_an_upstream() {
    let up = FakeUpstream::start(Mode::Answer);
    let own = up.addr.ip();
    let (tx, rx) = channel::unbounded();
    let config = ForwarderConfig {
        upstreams: UpstreamSource::Static(vec![up.addr]),
        attempt_timeout: TIMEOUT,
        ..ForwarderConfig::default()
    };
    let fwd = Forwarder::start(
        config,
        Arc::new(move |ip| ip == own),
        Box::new(ChanSink(tx)),
    )
    .expect("start");
    fwd.submit(&query(8, "f.example.", None), 1, 512);
    let (_, ans) = recv(&rx, MARGIN);
    assert_eq!(header(&ans).rcode(), Rcode::SERVFAIL);
    assert_eq!(up.queries(), 0);
}

#[test]
fn malformed_queries_get_formerr_notimp_or_nothing() {
    let up = FakeUpstream::start(Mode::Answer);
    let (fwd, rx) = forwarder(vec![up.addr]);
    let mut two_questions = query(0x0a0b, "g.example.", None);
    two_questions[5] = 2;
    fwd.submit(&two_questions, 1, 512);
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!((to, header(&ans).id()), (1, 0x0a0b));
    assert_eq!(header(&ans).rcode(), Rcode::FORMERR);

    let mut notify = query(0x0c0d, "g.example.", None);
    notify[2] |= 4 << 3;
    fwd.submit(&notify, 2, 512);
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!((to, header(&ans).rcode()), (2, Rcode::NOTIMP));

    fwd.submit(&[1, 2, 3], 3, 512);
    fwd.submit(&query(1, "h.example.", None), 4, 512);
    let (to, _) = recv(&rx, MARGIN);
    assert_eq!(to, 4, "the short query got no answer");
    assert_eq!(up.queries(), 1);
    assert_eq!(fwd.stats().malformed, 3);
}

#[test]
fn full_queue_is_refused_and_counted() {
    let (tx, _rx) = channel::unbounded();
    let config = ForwarderConfig {
        upstreams: UpstreamSource::Static(Vec::new()),
        queue_depth: 1,
        ..ForwarderConfig::default()
    };
    let fwd = Forwarder::start(config, Arc::new(|_| false), Box::new(ChanSink(tx))).expect("start");
    let q = query(1, "i.example.", None);
    let accepted = (0..200).filter(|i| fwd.submit(&q, *i, 512)).count() as u64;
    let s = fwd.stats();
    assert_eq!((s.submitted, s.queue_full), (accepted, 200 - accepted));
}

#[test]
fn zero_queue_depth_is_rejected() {
    let (tx, _rx) = channel::unbounded();
    let config = ForwarderConfig {
        queue_depth: 0,
        ..ForwarderConfig::default()
    };
    let started = Forwarder::<u32>::start(config, Arc::new(|_| false), Box::new(ChanSink(tx)));
    assert!(started.is_err());
}

#[test]
fn shutdown_is_prompt_with_queries_in_flight() {
    let up = FakeUpstream::start(Mode::Silent);
    let (mut fwd, _rx) = forwarder(vec![up.addr]);
    fwd.submit(&query(1, "j.example.", None), 1, 512);
    let start = Instant::now();
    fwd.shutdown();
    // 100 ms is the goal; the bound is looser for a loaded test machine.
    assert!(start.elapsed() < Duration::from_millis(500));
}

/// What the TCP side of a [`TruncatingUpstream`] does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TcpMode {
    /// Answers in full.
    Serve,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Accepts and reads the query, never answers.
    Silent,
}

/// A fake upstream that behaves like a real one with a large answer: 100 A
/// records (about 1.6 kB) for any name, sent over UDP truncated (TC, no
/// records) when longer than the query's UDP size (512 without EDNS0), and
/// whole over TCP on the same port. Stopped on drop.
struct TruncatingUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TruncatingUpstream {
    fn start(tcp: TcpMode, udp_delay: Duration) -> TruncatingUpstream {
        // The TCP listener needs the UDP socket's port free for TCP too.
        let (udp, listener) = (0..20)
            .find_map(|_| {
                let udp = StdUdpSocket::bind("127.0.0.1:0").ok()?;
                if tcp == TcpMode::Refuse {
                    return Some((udp, None));
                }
                let listener = StdTcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, Some(listener)))
            })
            .expect("a port free for UDP and TCP");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = udp.local_addr().expect("local addr");
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (Arc::clone(&udp_queries), Arc::clone(&stop));
        let mut threads = vec![std::thread::spawn(move || {
            serve_truncated(&udp, udp_delay, &q, &st)
        })];
        if let Some(listener) = listener {
            let (q, st) = (Arc::clone(&tcp_queries), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                serve_tcp(&listener, tcp, &q, &st)
            }));
        }
        TruncatingUpstream {
            addr,
            udp_queries,
            tcp_queries,
            stop,
            threads,
        }
    }

    fn queries(&self) -> (usize, usize) {
        (
            self.udp_queries.load(Ordering::SeqCst),
            self.tcp_queries.load(Ordering::SeqCst),
        )
    }
}

impl Drop for TruncatingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_truncated(
    socket: &StdUdpSocket,
    delay: Duration,
    queries: &AtomicUsize,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let Ok(msg) = Message::from_slice(&buf[..len]) else {
            continue;
        };
        let limit = msg
            .opt()
            .map_or(512, |o| usize::from(o.udp_payload_size()).max(512));
        let full = answer(msg, Rcode::NOERROR, 100);
        let reply = if full.len() > limit {
            let mut b = MessageBuilder::new_vec()
                .start_answer(msg, Rcode::NOERROR)
                .expect("start answer");
            b.header_mut().set_tc(true);
            b.finish()
        } else {
            full
        };
        std::thread::sleep(delay);
        let _ = socket.send_to(&reply, from);
    }
}

fn serve_tcp(listener: &StdTcpListener, mode: TcpMode, queries: &AtomicUsize, stop: &AtomicBool) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Silent connections stay open until the end.
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok((mut conn, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let Some(query) = read_tcp_message(&mut conn) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let Ok(msg) = Message::from_slice(&query[..]) else {
            continue;
        };
        match mode {
            TcpMode::Serve => {
                let full = answer(msg, Rcode::NOERROR, 100);
                let mut out = (full.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&full);
                // In two writes, so the forwarder sees a partial answer.
                let _ = conn.write_all(&out[..3]);
                let _ = conn.flush();
                std::thread::sleep(Duration::from_millis(10));
                let _ = conn.write_all(&out[3..]);
            }
            TcpMode::Silent => held.push(conn),
            TcpMode::Refuse => {}
        }
    }
}

/// One length-prefixed DNS message from a TCP connection.
fn read_tcp_message(conn: &mut StdTcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).ok()?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg).ok()?;
    Some(msg)
}

#[test]
fn tcp_client_gets_the_whole_answer_the_upstream_truncated_over_udp() {
    let up = TruncatingUpstream::start(TcpMode::Serve, Duration::ZERO);
    let (fwd, rx) = forwarder(vec![up.addr]);
    // A TCP client (max_len 65535), e.g. the retry after TC over UDP.
    fwd.submit(&query(4, "Big.Example.", None), 2, 65535);
    let (to, ans) = recv(&rx, MARGIN);
    let h = header(&ans);
    assert_eq!((to, h.id()), (2, 4));
    assert!(!h.tc(), "a TCP client must never get TC");
    assert_eq!(ancount(&ans), 100);
    assert_eq!(
        &ans[HEADER_LEN..HEADER_LEN + 4],
        b"\x03Big",
        "client's case"
    );
    assert_eq!(up.queries(), (1, 1), "UDP first, then once over TCP");
    let s = fwd.stats();
    assert_eq!((s.forwarded, s.tcp_retries, s.answered), (1, 1, 1));
    assert_eq!((s.tcp_failed, s.tcp_over_cap), (0, 0));
}

#[test]
fn udp_client_gets_tc_and_no_tcp_retry_is_made_for_it() {
    let up = TruncatingUpstream::start(TcpMode::Serve, Duration::ZERO);
    let (fwd, rx) = forwarder(vec![up.addr]);
    fwd.submit(&query(5, "big.example.", None), 1, 512);
    let (_, ans) = recv(&rx, MARGIN);
    assert!(header(&ans).tc(), "the client retries over TCP itself");
    assert_eq!(ancount(&ans), 0);
    assert_eq!(up.queries(), (1, 0));
    assert_eq!(fwd.stats().tcp_retries, 0);
}

#[test]
fn merged_tcp_client_is_not_handed_the_truncated_udp_answer() {
    // The delay keeps the first query in flight while the second merges.
    let up = TruncatingUpstream::start(TcpMode::Serve, Duration::from_millis(100));
    let (fwd, rx) = forwarder(vec![up.addr]);
    fwd.submit(&query(1, "big.example.", None), 10, 512);
    fwd.submit(&query(2, "big.example.", None), 11, 65535);
    // And a UDP client with a larger EDNS0 size than the first query asked
    // for: the TCP answer serves it too, truncated to its size.
    fwd.submit(&query(3, "big.example.", None), 12, 4096);
    let mut got = [recv(&rx, MARGIN), recv(&rx, MARGIN), recv(&rx, MARGIN)];
    got.sort_by_key(|(to, _)| *to);
    let udp = &got[0].1;
    assert!(header(udp).tc() && header(udp).id() == 1);
    assert_eq!(ancount(udp), 0);
    let tcp = &got[1].1;
    assert!(!header(tcp).tc() && header(tcp).id() == 2);
    assert_eq!(ancount(tcp), 100);
    let big_udp = &got[2].1;
    assert!(!header(big_udp).tc() && header(big_udp).id() == 3);
    assert_eq!(ancount(big_udp), 100);
    assert_eq!(up.queries(), (1, 1));
    let s = fwd.stats();
    assert_eq!((s.merged, s.tcp_retries, s.answered), (2, 1, 3));
}

#[test]
fn failed_tcp_retry_gives_servfail_and_is_counted() {
    let refused = TruncatingUpstream::start(TcpMode::Refuse, Duration::ZERO);
    let (fwd, rx) = forwarder(vec![refused.addr]);
    fwd.submit(&query(6, "big.example.", Some(false)), 1, 65535);
    let (_, ans) = recv(&rx, MARGIN);
    assert_eq!(header(&ans).rcode(), Rcode::SERVFAIL);
    assert!(!header(&ans).tc());
    let s = fwd.stats();
    assert_eq!((s.tcp_retries, s.tcp_failed, s.servfail), (1, 1, 0));

    let silent = TruncatingUpstream::start(TcpMode::Silent, Duration::ZERO);
    let (fwd, rx) = forwarder(vec![silent.addr]);
    let start = Instant::now();
    fwd.submit(&query(7, "big.example.", None), 1, 65535);
    let (_, ans) = recv(&rx, TIMEOUT + MARGIN);
    assert!(start.elapsed() >= TIMEOUT, "bounded by the attempt timeout");
    assert_eq!(header(&ans).rcode(), Rcode::SERVFAIL);
    assert_eq!(silent.queries(), (1, 1));
    let s = fwd.stats();
    assert_eq!((s.timeouts, s.tcp_failed), (1, 1));
}

#[test]
fn tcp_retries_beyond_the_cap_get_servfail() {
    let up = TruncatingUpstream::start(TcpMode::Silent, Duration::ZERO);
    let (fwd, rx) = forwarder_config(ForwarderConfig {
        upstreams: UpstreamSource::Static(vec![up.addr]),
        attempt_timeout: Duration::from_millis(500),
        max_tcp: 1,
        ..ForwarderConfig::default()
    });
    fwd.submit(&query(1, "one.example.", None), 1, 65535);
    // The first retry holds the only TCP slot until it times out.
    let deadline = Instant::now() + MARGIN;
    while fwd.stats().tcp_retries == 0 {
        assert!(Instant::now() < deadline, "no TCP retry");
        assert!(rx.try_recv().is_err(), "no answer before the retry");
        std::thread::sleep(Duration::from_millis(5));
    }
    fwd.submit(&query(2, "two.example.", None), 2, 65535);
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!((to, header(&ans).rcode()), (2, Rcode::SERVFAIL));
    assert_eq!(fwd.stats().tcp_over_cap, 1);
    let (to, ans) = recv(&rx, MARGIN);
    assert_eq!((to, header(&ans).rcode()), (1, Rcode::SERVFAIL));
    let s = fwd.stats();
    assert_eq!((s.tcp_retries, s.tcp_failed), (1, 1));
    // The slot is free again.
    fwd.submit(&query(3, "three.example.", None), 3, 65535);
    let (to, _) = recv(&rx, MARGIN + Duration::from_millis(500));
    assert_eq!(to, 3);
    assert_eq!(fwd.stats().tcp_retries, 2);
}
