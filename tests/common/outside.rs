//! Servers outside the switch for NAT and publishing tests: "the internet"
//! (a namespace joined to the host by a veth pair), a TCP server holding
//! every connection and answering lines and HTTP GETs, a UDP echo, and
//! listeners with a deep accept queue. Everything stops or is removed on
//! drop.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};

use super::sysenv::ok;

/// What every test server answers.
pub const BODY: &str = "hello through the gateway";

/// "The internet": a namespace `synat-inet-PID-K` joined to the host by a
/// veth pair, host side 10.254.N.1/30, namespace side 10.254.N.2/30. Removed
/// on drop.
pub struct Inet {
    ns: String,
    host_if: String,
    n: u8,
}

impl Inet {
    /// Creates the namespace and the link; `k` (0..4) tells apart the
    /// namespaces of tests running in one process.
    pub fn create(k: u8) -> Inet {
        let pid = std::process::id();
        let inet = Inet {
            ns: format!("synat-inet-{pid}-{k}"),
            host_if: format!("synat-h{pid:x}{k}"),
            n: ((pid % 83) * 3 + u32::from(k) + 1) as u8,
        };
        // Leftovers of a killed run with the same pid.
        inet.remove();
        let peer = format!("synat-n{pid:x}{k}");
        let host_addr = format!("{}/30", inet.host_ip());
        let ns_addr = format!("{}/30", inet.addr());
        let host_addr6 = format!("{}/64", inet.host_ip6());
        let ns_addr6 = format!("{}/64", inet.addr6());
        let ns = inet.ns.as_str();
        let hi = inet.host_if.as_str();
        for args in [
            vec!["netns", "add", ns],
            vec![
                "link", "add", hi, "type", "veth", "peer", "name", &peer, "netns", ns,
            ],
            vec!["addr", "add", &host_addr, "dev", hi],
            vec!["addr", "add", &host_addr6, "dev", hi, "nodad"],
            vec!["link", "set", hi, "up"],
            vec!["-n", ns, "addr", "add", &ns_addr, "dev", &peer],
            vec!["-n", ns, "addr", "add", &ns_addr6, "dev", &peer, "nodad"],
            vec!["-n", ns, "link", "set", &peer, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ] {
            ok(&Command::new("ip").args(&args).output().expect("ip"), "ip");
        }
        inet
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 254, self.n, 1)
    }

    /// The far end's address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 254, self.n, 2)
    }

    /// The host's IPv6 address on the link.
    pub fn host_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0xfe, u16::from(self.n), 0, 0, 0, 0, 1)
    }

    /// The far end's IPv6 address.
    pub fn addr6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0xfe, u16::from(self.n), 0, 0, 0, 0, 2)
    }

    /// A listener on the far end's IPv6 address, inside the namespace.
    pub fn listen6(&self) -> TcpListener {
        let addr = self.addr6();
        self.enter(move || TcpListener::bind((addr, 0)).expect("bind far [v6]"))
    }

    /// A listener on the far end's address, inside the namespace: bound by a
    /// thread that enters the namespace (a socket stays in the namespace it
    /// was made in).
    pub fn listen(&self) -> TcpListener {
        let addr = self.addr();
        self.enter(move || listen(addr))
    }

    /// Runs `f` on a thread inside the namespace (sockets it makes stay
    /// there) and returns what it returns.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::netns::enter_netns(format!("/run/netns/{}", self.ns), f)
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

impl Drop for Inet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A TCP server thread holding every connection it accepts: a request
/// starting with `GET ` gets `BODY` as an HTTP response and is closed; any
/// other line gets `BODY` and a newline back.
pub struct LineServer {
    addr: SocketAddr,
    /// Connections it holds now.
    pub open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LineServer {
    pub fn start(listener: TcpListener) -> LineServer {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, st) = (open.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(MioListener::from_std(listener), &o, &st));
        LineServer {
            addr,
            open,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const LISTENER: Token = Token(usize::MAX);

fn serve(mut listener: MioListener, open: &AtomicUsize, stop: &AtomicBool) {
    let mut poll = Poll::new().expect("poll");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register");
    let mut conns: HashMap<usize, (MioStream, Vec<u8>)> = HashMap::new();
    let mut next = 0;
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        if poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .is_err()
        {
            continue;
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut s, _)) = listener.accept() {
                    next += 1;
                    if poll
                        .registry()
                        .register(&mut s, Token(next), Interest::READABLE)
                        .is_ok()
                    {
                        conns.insert(next, (s, Vec::new()));
                        open.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            let id = ev.token().0;
            let Some((s, buf)) = conns.get_mut(&id) else {
                continue;
            };
            if !answer(s, buf) {
                conns.remove(&id);
                open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Reads what the client sent and answers it; false when the connection is
/// finished.
fn answer(s: &mut MioStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    if buf.starts_with(b"GET ") {
        if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        let reply = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = s.write_all(reply.as_bytes());
        return false;
    }
    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
        buf.drain(..=end);
        if s.write_all(format!("{BODY}\n").as_bytes()).is_err() {
            return false;
        }
    }
    true
}

/// A UDP server thread on 127.0.0.1 sending every datagram back.
pub struct UdpEcho {
    /// Its port (on 127.0.0.1 unless bound elsewhere).
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start() -> UdpEcho {
        UdpEcho::start_on("127.0.0.1:0")
    }

    /// An echo bound to `addr` (e.g. `[::1]:0`).
    pub fn start_on(addr: &str) -> UdpEcho {
        let sock = UdpSocket::bind(addr).expect("bind udp echo");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP listener on `addr` with a deep accept queue. The standard
/// library's 128 is too short for hundreds of connects at once: with the
/// queue full, a SYN-cookie handshake completes on the client while the
/// server drops the final ACK and keeps nothing, so an idle client holds a
/// connection the server never sees.
pub fn listen(addr: Ipv4Addr) -> TcpListener {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(addr, 0)),
    )
    .expect("bind");
    listen(&fd, Backlog::new(4096).expect("backlog")).expect("listen");
    TcpListener::from(fd)
}

/// A port on 127.0.0.1 nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
