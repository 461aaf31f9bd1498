//! One TCP flow through the gateway: the sandbox's side terminated by a
//! smoltcp socket (alone in its own socket set, so polling it costs O(1)),
//! the far side an ordinary non-blocking host socket. The sandbox's SYN is
//! held until the host connect succeeds, so the SYN-ACK means the far end
//! answered; a refused or failed connect becomes a RST. Data, half-close,
//! RST and timeouts propagate both ways. A connection a published port
//! accepted is opened towards the sandbox with a SYN of our own; until the
//! sandbox answers it nothing is read from the client, so the flow watches
//! the client's socket for a close and gives up after [`HANDSHAKE_MS`],
//! rather than holding a descriptor and a flow for the idle timeout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicUsize;

use mio::net::TcpStream;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::claim::Claim;
use crate::pipeline::frame::Frame;

/// Socket buffers per direction of the first [`LARGE_FLOWS`] flows at
/// once: 4 MiB, as large as Linux lets a TCP socket's send buffer grow
/// (`tcp_wmem`), so neither the window advertised to the sandbox nor the
/// data in flight to it limit a stream while the sandbox's ACKs wait for a
/// CPU. On the 2-core VM (2026-11-29, alternating runs) a published port's
/// stream from another namespace moved 9.2-10.6 Gbit/s with 512 KiB,
/// 10.7-11.4 with 1 MiB, 11.6-13.7 with 2 MiB and 13.5-15.1 with 4 MiB.
/// Each buffer is a mapping of its own
/// ([`crate::sys::mem::map_large_allocations`]): a flow makes resident only
/// what it has used, and returns it when it ends.
pub const BUFFER: usize = 4 * 1024 * 1024;
/// Socket buffers per direction of the flows beyond [`LARGE_FLOWS`].
pub const SMALL_BUFFER: usize = 512 * 1024;
/// Flows at once with [`BUFFER`]-sized buffers. What sandboxes can make the
/// daemon hold stays near what it was with small buffers only: at most
/// `LARGE_FLOWS` x 2 x 3.5 MiB (448 MiB) more.
pub const LARGE_FLOWS: usize = 64;

/// Frames held per flow while its host connect is pending (SYN retransmits).
const HELD_MAX: usize = 4;
/// How long a sandbox has to answer the SYN of a connection a published
/// port accepted (as long as outbound flows wait for their host connect).
pub const HANDSHAKE_MS: i64 = 30_000;

/// Flows holding large buffers now.
static LARGE: AtomicUsize = AtomicUsize::new(0);

/// A sandbox-side socket with the flow buffers (large ones while any are
/// free), Nagle off.
fn new_socket() -> (tcp::Socket<'static>, Option<Claim>) {
    let claim = Claim::take(&LARGE, LARGE_FLOWS);
    let len = if claim.is_some() {
        BUFFER
    } else {
        SMALL_BUFFER
    };
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; len]),
        tcp::SocketBuffer::new(vec![0; len]),
    );
    sock.set_nagle_enabled(false);
    (sock, claim)
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The host connect is under way; the sandbox's SYN waits.
    Connecting,
    /// Both sides are connected.
    Open,
    /// Finished: the flow can be removed.
    Done,
}

/// What the drive loop did that the stack must act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The host connect failed: feed `held` to the reject path (RST).
    pub refused: bool,
}

/// A TCP flow.
pub struct TcpFlow {
    /// Its socket set (one socket).
    pub sockets: SocketSet<'static>,
    handle: SocketHandle,
    /// The host side.
    pub host: TcpStream,
    /// Lifecycle.
    pub phase: Phase,
    /// Frames waiting for the connect, then for the next poll.
    pub rx: VecDeque<Frame>,
    host_readable: bool,
    host_writable: bool,
    host_eof: bool,
    host_shut: bool,
    /// Last activity (ms).
    pub last_active: i64,
    /// The sandbox's port takes offloads: segments towards it may be large,
    /// and its SYNs get their MSS raised so smoltcp sends them so.
    pub large: bool,
    /// Held while the socket's buffers are large ones.
    _buffers: Option<Claim>,
    /// For a connection a published port accepted: when to give up if the
    /// sandbox has not answered its SYN (`None` once it has, and for
    /// outbound flows).
    pub handshake_until: Option<i64>,
}

impl TcpFlow {
    /// Starts the host connect to `to` for a sandbox connection addressed to
    /// `remote`.
    pub fn connect(to: SocketAddr, remote: SocketAddr, now: i64) -> io::Result<TcpFlow> {
        let host = TcpStream::connect(to)?;
        let _ = host.set_nodelay(true);
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let (mut sock, buffers) = new_socket();
        // Listening on exactly the address the sandbox dialled: with the
        // interface accepting any address, this socket answers the held SYN.
        let _ = sock.listen(IpListenEndpoint {
            addr: Some(remote.ip().into()),
            port: remote.port(),
        });
        let handle = sockets.add(sock);
        Ok(TcpFlow {
            sockets,
            handle,
            host,
            phase: Phase::Connecting,
            rx: VecDeque::new(),
            host_readable: false,
            host_writable: false,
            host_eof: false,
            host_shut: false,
            last_active: now,
            large: false,
            _buffers: buffers,
            handshake_until: None,
        })
    }

    /// A flow for a connection a published port accepted: `host` is the
    /// accepted socket; the sandbox's side opens from `remote` (the client as
    /// the sandbox will see it) to `service`.
    pub fn accepted(
        host: TcpStream,
        cx: &mut smoltcp::iface::Context,
        remote: SocketAddr,
        service: SocketAddr,
        now: i64,
    ) -> Option<TcpFlow> {
        let _ = host.set_nodelay(true);
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let (mut sock, buffers) = new_socket();
        sock.connect(
            cx,
            (service.ip(), service.port()),
            (remote.ip(), remote.port()),
        )
        .ok()?;
        let handle = sockets.add(sock);
        Some(TcpFlow {
            sockets,
            handle,
            host,
            phase: Phase::Open,
            rx: VecDeque::new(),
            host_readable: true,
            host_writable: true,
            host_eof: false,
            host_shut: false,
            last_active: now,
            large: false,
            _buffers: buffers,
            handshake_until: Some(now + HANDSHAKE_MS),
        })
    }

    /// Queues a frame from the sandbox.
    pub fn push_frame(&mut self, mut f: Frame, free: &mut Vec<Frame>) {
        if self.large {
            raise_mss(&mut f);
        }
        if self.phase == Phase::Connecting && self.rx.len() >= HELD_MAX {
            if let Some(old) = self.rx.pop_front() {
                free.push(old);
            }
        }
        self.rx.push_back(f);
    }

    /// Notes host socket readiness.
    pub fn host_event(&mut self, readable: bool, writable: bool) {
        self.host_readable |= readable;
        self.host_writable |= writable;
    }

    /// While connecting: whether the connect finished, and how.
    pub fn check_connect(&mut self) -> Option<Result<(), io::Error>> {
        if self.phase != Phase::Connecting || !self.host_writable {
            return None;
        }
        match self.host.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Err(e)),
            Ok(None) => {}
        }
        match self.host.peer_addr() {
            Ok(_) => {
                self.phase = Phase::Open;
                Some(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                self.host_writable = false;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// True if a failed connect means the destination cannot be reached (an
    /// ICMP unreachable for the sandbox) rather than refused (a RST).
    pub fn unreachable(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ETIMEDOUT)
        )
    }

    /// Moves data between the two sides after a poll of the socket set.
    /// Returns true if anything moved.
    pub fn pump(&mut self, now: i64) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        let mut moved = false;
        let sock = self.sockets.get_mut::<tcp::Socket>(self.handle);
        if self.handshake_until.is_some() {
            if !matches!(sock.state(), tcp::State::SynSent | tcp::State::SynReceived) {
                self.handshake_until = None;
            } else if self.host_readable && client_gone(&self.host, &mut self.host_readable) {
                // The client left before the sandbox answered.
                sock.abort();
                reset_on_close(&self.host);
                self.phase = Phase::Done;
                return false;
            }
        }
        // Sandbox to host.
        while self.host_writable && sock.can_recv() {
            let host = &mut self.host;
            let r = sock.recv(|buf| match host.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(n)) if n > 0 => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.host_writable = false,
                Ok(Err(_)) => {
                    sock.abort();
                    self.host_eof = true;
                    self.host_shut = true;
                    break;
                }
                _ => break,
            }
        }
        // Host to sandbox.
        while self.host_readable && !self.host_eof && sock.can_send() {
            let host = &mut self.host;
            let r = sock.send(|buf| match host.read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => {
                    self.host_eof = true;
                    sock.close();
                }
                Ok(Ok(_)) => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Ok(Err(_)) | Err(_) => {
                    // Reset by the far side: reset the sandbox's side too.
                    sock.abort();
                    self.host_eof = true;
                    self.host_shut = true;
                    break;
                }
            }
        }
        // The sandbox finished sending: pass the FIN on.
        let fin_in = matches!(
            sock.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if !self.host_shut && fin_in && sock.recv_queue() == 0 {
            let _ = self.host.shutdown(Shutdown::Write);
            self.host_shut = true;
        }
        match sock.state() {
            tcp::State::Closed | tcp::State::TimeWait => {
                if !self.host_shut || !self.host_eof {
                    // The sandbox reset the connection: reset the host side.
                    reset_on_close(&self.host);
                }
                self.phase = Phase::Done;
            }
            _ => {}
        }
        if moved {
            self.last_active = now;
        }
        moved
    }

    /// Gives up: RST to the sandbox, RST to the host.
    pub fn abort(&mut self) {
        self.sockets.get_mut::<tcp::Socket>(self.handle).abort();
        reset_on_close(&self.host);
    }
}

/// The MSS option smoltcp sees in the sandbox's SYN for a port that takes
/// offloads: the largest IPv4 segment.
const LARGE_MSS: u16 = u16::MAX - 40;

/// Raises the MSS option of a SYN from the sandbox to [`LARGE_MSS`]. The
/// checksum is left stale: the stack does not verify received checksums.
fn raise_mss(f: &mut Frame) {
    let l3 = f.meta.l3_offset as usize;
    let b = f.data_mut();
    // The TCP header: after the IPv4 header, or right after IPv6's fixed
    // header (the only IPv6 layout the stack takes).
    let l4 = match b.get(l3).map(|v| v >> 4) {
        Some(4) if b.get(l3 + 9) == Some(&6) => l3 + usize::from(b[l3] & 0x0f) * 4,
        Some(6) if b.get(l3 + 6) == Some(&6) => l3 + 40,
        _ => return,
    };
    let Some(&[doff, flags]) = b
        .get(l4 + 12..l4 + 14)
        .and_then(|s| <&[u8; 2]>::try_from(s).ok())
    else {
        return;
    };
    if flags & 0x02 == 0 {
        return;
    }
    let end = (l4 + usize::from(doff >> 4) * 4).min(b.len());
    let mut i = l4 + 20;
    while i < end {
        match b[i] {
            0 => return,
            1 => i += 1,
            2 if i + 4 <= end && b[i + 1] == 4 => {
                b[i + 2..i + 4].copy_from_slice(&LARGE_MSS.to_be_bytes());
                return;
            }
            _ => {
                let len = b.get(i + 1).map_or(0, |l| usize::from(*l));
                if len < 2 {
                    return;
                }
                i += len;
            }
        }
    }
}

/// Whether the peer of a socket not read from yet has closed it or reset
/// it, seen without taking any data; clears `readable` when there is
/// nothing to see.
fn client_gone(s: &TcpStream, readable: &mut bool) -> bool {
    let mut probe = [0u8; 1];
    match s.peek(&mut probe) {
        Ok(0) => true,
        // Data waits for the sandbox's answer.
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            *readable = false;
            false
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
        Err(_) => true,
    }
}

/// Makes closing the host socket send a RST rather than a FIN.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Linger, &linger);
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::Duration;

    use super::super::nat::Flow;
    use super::super::stack::harness::*;
    use super::*;
    use crate::ports::PortId;

    #[test]
    fn a_sockets_buffers_are_large_only_with_a_claim() {
        let (sock, claim) = new_socket();
        let want = if claim.is_some() {
            BUFFER
        } else {
            SMALL_BUFFER
        };
        assert_eq!(sock.send_capacity(), want);
        assert_eq!(sock.recv_capacity(), want);
    }

    /// A connection as a published port accepts it: the client's socket
    /// and the flow towards sandbox 10.0.0.2:80 (which never answers),
    /// started `age` ms ago.
    fn accepted(h: &mut Harness, age: i64) -> (StdStream, usize) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = StdStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (host, peer) = l.accept().expect("accept");
        host.set_nonblocking(true).expect("nonblocking");
        let service: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        let now = h.runner.now().total_millis();
        h.runner
            .announce_neighbour(NET, mac(1), service.ip(), PortId(1), now);
        let net = h.runner.net(NET).expect("net");
        let remote = SocketAddr::from((GW4, peer.port()));
        let flow = TcpFlow::accepted(
            TcpStream::from_std(host),
            net.iface.context(),
            remote,
            service,
            now - age,
        )
        .expect("flow");
        assert_eq!(flow.handshake_until, Some(now - age + HANDSHAKE_MS));
        let key = super::super::flow::FlowKey {
            network: NET,
            proto: super::super::flow::PROTO_TCP,
            local: service,
            remote,
        };
        let slot = h.runner.flows.insert(key, Flow::Tcp(flow)).expect("slot");
        if let Some((_, Flow::Tcp(t))) = h.runner.flows.get_mut(slot) {
            let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
            h.runner
                .poll
                .registry()
                .register(&mut t.host, mio::Token(slot + 1), interest)
                .expect("register");
        }
        h.runner.dirty.push(slot);
        (client, slot)
    }

    /// The flow of a connection whose sandbox never answers used to hold
    /// the client's socket and a flow slot for the 2 h idle timeout.
    #[test]
    fn an_accepted_connection_the_sandbox_never_answers_is_given_up() {
        let mut h = Harness::new(false);
        let (mut client, _) = accepted(&mut h, 0);
        h.round(10);
        assert_eq!(h.runner.flows.len(), 1, "waits for the sandbox");
        let (mut late, _) = accepted(&mut h, HANDSHAKE_MS + 1);
        h.round(10);
        assert_eq!(h.runner.flows.len(), 1, "the overdue one is gone");
        late.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut b = [0u8; 8];
        assert!(
            matches!(late.read(&mut b), Ok(0) | Err(_)),
            "its client is closed"
        );
        client.set_nonblocking(true).expect("nonblocking");
        assert!(client.read(&mut b).is_err(), "the other still open");
    }

    /// The client's close used to go unseen until the sandbox answered.
    #[test]
    fn a_client_that_leaves_before_the_sandbox_answers_ends_its_flow() {
        let mut h = Harness::new(false);
        let (client, _) = accepted(&mut h, 0);
        h.round(10);
        assert_eq!(h.runner.flows.len(), 1);
        drop(client);
        for _ in 0..20 {
            h.round(10);
            if h.runner.flows.is_empty() {
                break;
            }
        }
        assert!(h.runner.flows.is_empty(), "flow ended with its client");
    }

    #[test]
    fn syn_mss_is_raised_and_other_segments_untouched() {
        let mut syn = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 2], [192, 0, 2, 1], 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .options(&[
                etherparse::TcpOptionElement::MaximumSegmentSize(1460),
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::WindowScale(7),
            ])
            .unwrap()
            .write(&mut syn, &[])
            .unwrap();
        let mut f = Frame::alloc();
        f.fill(&syn);
        f.meta.l3_offset = 14;
        raise_mss(&mut f);
        let raised = f.data().to_vec();
        let p = etherparse::SlicedPacket::from_ethernet(&raised).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
            panic!("tcp")
        };
        let mss: Vec<_> = t
            .options_iterator()
            .filter_map(|o| match o {
                Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(mss, [LARGE_MSS]);

        let mut ack = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 2], [192, 0, 2, 1], 64)
            .tcp(40000, 80, 1, 64240)
            .ack(5)
            .write(&mut ack, &[9; 4])
            .unwrap();
        f.fill(&ack);
        raise_mss(&mut f);
        assert_eq!(f.data(), &ack[..]);
        // Truncated frames are left alone without panicking.
        f.fill(&syn[..40]);
        raise_mss(&mut f);
    }

    #[test]
    fn ipv6_syn_mss_is_raised_and_its_addresses_untouched() {
        // A source address that, read with IPv4 offsets, looks like a SYN
        // with a 60-byte header and an MSS option in the address's last
        // bytes: only the real TCP header may change.
        let src = [
            0, 0, 0, 0, 0xf0, 0x02, 0, 0, 0, 0, 0, 0, 0x02, 0x04, 0x05, 0xb4,
        ];
        let mut syn = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6(src, [0x20; 16], 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1440)])
            .unwrap()
            .write(&mut syn, &[])
            .unwrap();
        let mut f = Frame::alloc();
        f.fill(&syn);
        f.meta.l3_offset = 14;
        raise_mss(&mut f);
        let out = f.data();
        assert_eq!(out[..74], syn[..74], "Ethernet, IPv6, fixed TCP header");
        assert_eq!(out[76..78], LARGE_MSS.to_be_bytes());
    }
}
