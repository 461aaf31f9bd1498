//! Loopback clients of published ports at kernel speed: a client on the
//! host's own loopback has no address worth keeping, so instead of carrying
//! it through the userspace stack, the daemon gets a socket connected to the
//! service from inside the sandbox's namespace and moves bytes between the
//! two sockets with `splice(2)` through a pipe, never copying them to user
//! space (as pasta and rootlesskit's builtin driver do). One thread per
//! direction, a bounded number of connections. Each gateway thread keeps
//! its spliced connections in a [`Spliced`] set, so that a sandbox leaving
//! its network ends them as it ends its flows through the stack.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::fcntl::{splice, SpliceFFlags};

use super::claim::Claim;
use crate::tables::topology::NetworkId;

/// Opens the connection to the service inside the sandbox.
pub type Connector = Arc<dyn Fn() -> io::Result<TcpStream> + Send + Sync>;

/// Most spliced connections at once; beyond, clients take the stack path.
pub const MAX_SPLICED: usize = 256;
/// Bytes moved per splice call.
const CHUNK: usize = 1 << 20;

/// Spliced connections now.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A slot for a spliced connection, if one is free; given back when the
/// connection ends.
pub fn try_reserve() -> Option<Claim> {
    Claim::take(&ACTIVE, MAX_SPLICED)
}

/// The sandbox a spliced connection leads into: its network and addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The sandbox's network.
    pub network: NetworkId,
    /// Its IPv4 address there.
    pub ip4: Ipv4Addr,
    /// Its IPv6 address there, if it has one.
    pub ip6: Option<Ipv6Addr>,
}

impl Owner {
    fn is(&self, network: NetworkId, ip: IpAddr) -> bool {
        network == self.network
            && match ip {
                IpAddr::V4(a) => a == self.ip4,
                IpAddr::V6(a) => Some(a) == self.ip6,
            }
    }
}

/// One gateway thread's spliced connections: its own control path (a
/// connection starting or ending, a sandbox leaving) takes the lock, never
/// the bytes moving.
#[derive(Default)]
pub struct Spliced {
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicU64,
}

struct Conn {
    owner: Owner,
    /// Handles on the client's socket and, once connected, the service's.
    sockets: Vec<TcpStream>,
}

impl Spliced {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a connection of `owner`'s with its client's socket.
    fn add(&self, owner: Owner, client: &TcpStream) -> io::Result<u64> {
        let handle = client.try_clone()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns().insert(
            id,
            Conn {
                owner,
                sockets: vec![handle],
            },
        );
        Ok(id)
    }

    /// Adds the service's socket to connection `id`; false if the
    /// connection was ended meanwhile (the caller drops the socket).
    fn connected(&self, id: u64, service: &TcpStream) -> bool {
        let Ok(handle) = service.try_clone() else {
            return false;
        };
        match self.conns().get_mut(&id) {
            Some(c) => {
                c.sockets.push(handle);
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        self.conns().remove(&id);
    }

    /// Connections now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns().len()
    }

    /// Ends the connections into the sandbox at `ip` on `network` (it
    /// left): both sockets are reset, so client and service see the
    /// connection end, as for a flow through the stack. Returns how many
    /// sockets (two per connection, one while the service is being dialled).
    pub fn end(&self, network: NetworkId, ip: IpAddr) -> usize {
        let mut ended = Vec::new();
        self.conns().retain(|_, c| {
            let theirs = c.owner.is(network, ip);
            if theirs {
                ended.append(&mut c.sockets);
            }
            !theirs
        });
        let n = ended.len();
        for s in &ended {
            // With a zero linger, the last close sends a reset; the
            // shutdown wakes the threads blocked in `splice` at once.
            let reset = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &reset);
            let _ = s.shutdown(Shutdown::Both);
        }
        n
    }
}

/// Connects to the service and splices `client` to it on new threads, in
/// `slot` (from [`try_reserve`]), recorded in `spliced` for `owner`.
/// Failures close the client.
pub fn spawn(
    client: TcpStream,
    connect: Connector,
    slot: Claim,
    spliced: &Arc<Spliced>,
    owner: Owner,
) {
    let Ok(id) = spliced.add(owner, &client) else {
        return;
    };
    let set = spliced.clone();
    let spawned = std::thread::Builder::new()
        .name("sy-splice".into())
        .spawn(move || {
            let _slot = slot;
            if let Ok(service) = connect() {
                if set.connected(id, &service) {
                    let _ = client.set_nonblocking(false);
                    let _ = (client.set_nodelay(true), service.set_nodelay(true));
                    if let (Ok(c2), Ok(s2)) = (client.try_clone(), service.try_clone()) {
                        let up = std::thread::Builder::new()
                            .name("sy-splice".into())
                            .spawn(move || pump(&c2, &s2));
                        pump(&service, &client);
                        if let Ok(t) = up {
                            let _ = t.join();
                        }
                    }
                }
            }
            set.remove(id);
        });
    // A thread that did not start dropped its closure, and the slot with it.
    if spawned.is_err() {
        spliced.remove(id);
    }
}

/// Moves bytes from `src` to `dst` until `src` ends, then passes the end on.
fn pump(src: &TcpStream, dst: &TcpStream) {
    let Ok((pipe_r, pipe_w)) = nix::unistd::pipe() else {
        let _ = (src.shutdown(Shutdown::Both), dst.shutdown(Shutdown::Both));
        return;
    };
    // A larger pipe moves more per system call (64 KiB by default; 1 MiB is
    // what an unprivileged process may ask for by default).
    let _ = nix::fcntl::fcntl(&pipe_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    // No SPLICE_F_MORE: it marks the write MSG_MORE, and TCP then holds a
    // short segment back for more data that a request/response protocol
    // never sends, up to its 200 ms cork timer per message and direction.
    let flags = SpliceFFlags::SPLICE_F_MOVE;
    loop {
        let n = match splice(src.as_fd(), None, pipe_w.as_fd(), None, CHUNK, flags) {
            Ok(0) => break,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                let _ = dst.shutdown(Shutdown::Both);
                return;
            }
        };
        let mut left = n;
        while left > 0 {
            match splice(pipe_r.as_fd(), None, dst.as_fd(), None, left, flags) {
                Ok(0) => return,
                Ok(m) => left -= m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    let _ = src.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
    let _ = dst.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// A client spliced through a front listener to `service`, for `owner`.
    fn splice_client(
        front: &TcpListener,
        connect: &Connector,
        set: &Arc<Spliced>,
        owner: Owner,
    ) -> TcpStream {
        let client = TcpStream::connect(front.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = front.accept().expect("accept");
        let slot = try_reserve().expect("a free slot");
        spawn(accepted, connect.clone(), slot, set, owner);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client
    }

    fn echoes(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 2];
        c.write_all(b"hi").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"hi"
    }

    fn ended(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 8];
        match c.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    #[test]
    fn a_sandbox_leaving_ends_only_its_own_connections() {
        let service = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = service.local_addr().expect("addr");
        std::thread::spawn(move || {
            for c in service.incoming().take(3).flatten() {
                std::thread::spawn(move || {
                    let (mut r, mut w) = (&c, &c);
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        let connect: Connector = Arc::new(move || TcpStream::connect(addr));
        let front = TcpListener::bind("127.0.0.1:0").expect("bind");
        let set = Arc::new(Spliced::default());
        let a = Owner {
            network: NetworkId(1),
            ip4: Ipv4Addr::new(10, 0, 0, 2),
            ip6: Some("fd00::2".parse().expect("v6")),
        };
        let b = Owner {
            ip4: Ipv4Addr::new(10, 0, 0, 3),
            ip6: None,
            ..a
        };
        let other_net = Owner {
            network: NetworkId(2),
            ..a
        };
        let mut ca = splice_client(&front, &connect, &set, a);
        let mut cb = splice_client(&front, &connect, &set, b);
        let mut cn = splice_client(&front, &connect, &set, other_net);
        for c in [&mut ca, &mut cb, &mut cn] {
            assert!(echoes(c), "spliced to the echo service");
        }
        assert_eq!(set.len(), 3);

        // Another address, and the same address on another network, end nothing.
        assert_eq!(set.end(NetworkId(1), "10.0.0.9".parse().expect("ip")), 0);
        assert_eq!(set.end(NetworkId(3), IpAddr::V4(a.ip4)), 0);
        // `a` leaves, by its IPv6 address: both its sockets are reset.
        assert_eq!(set.end(NetworkId(1), "fd00::2".parse().expect("ip")), 2);
        assert!(ended(&mut ca), "a's connection ended");
        for c in [&mut cb, &mut cn] {
            assert!(echoes(c), "the others go on");
        }
        // A connection that ends by itself leaves the set.
        drop(cb);
        let deadline = Instant::now() + Duration::from_secs(5);
        while set.len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(set.len(), 1);
        assert_eq!(set.end(NetworkId(2), IpAddr::V4(a.ip4)), 2);
        assert!(ended(&mut cn));
    }
}
