//! Loopback clients of published ports at kernel speed: a client on the
//! host's own loopback has no address worth keeping, so instead of carrying
//! it through the userspace stack, the daemon gets a socket connected to the
//! service from inside the sandbox's namespace and moves bytes between the
//! two sockets with `splice(2)` through a pipe, never copying them to user
//! space (as pasta and rootlesskit's builtin driver do). One thread per
//! direction, a bounded number of connections.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::fcntl::{splice, SpliceFFlags};

/// Opens the connection to the service inside the sandbox.
pub type Connector = Arc<dyn Fn() -> io::Result<TcpStream> + Send + Sync>;

/// Most spliced connections at once; beyond, clients take the stack path.
pub const MAX_SPLICED: usize = 256;
/// Bytes moved per splice call.
const CHUNK: usize = 1 << 20;

/// Spliced connections now.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Takes a slot for a spliced connection, if one is free.
pub fn try_reserve() -> bool {
    ACTIVE
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_SPLICED).then_some(n + 1)
        })
        .is_ok()
}

/// Connects to the service and splices `client` to it on new threads, in a
/// slot taken with [`try_reserve`]. Failures close the client.
pub fn spawn(client: TcpStream, connect: Connector) {
    let spawned = std::thread::Builder::new()
        .name("sy-splice".into())
        .spawn(move || {
            if let Ok(service) = connect() {
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
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
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
