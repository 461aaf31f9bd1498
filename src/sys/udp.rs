//! Batched UDP for the VXLAN ports: sockets bound with `SO_REUSEPORT`,
//! `recvmmsg` keeping each datagram's source address, `sendmmsg` to one
//! destination. Non-blocking throughout: `WouldBlock` ends a batch.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

/// Most datagrams one call moves (the pipeline's batch size).
pub const MAX_BATCH: usize = 64;

/// A non-blocking UDP socket bound to `addr`; with `reuse_port`, several
/// sockets share the address and the kernel spreads flows between them.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(UdpSocket::from(fd))
}

/// Socket buffer the VXLAN sockets ask for: one 64 KiB TCP segment arrives
/// as ~45 datagrams at once, and the default buffer (~208 KiB, counted in
/// kernel memory per datagram) holds only a few such bursts.
pub const VXLAN_SOCKET_BUFFER: usize = 8 << 20;

/// Raises the socket's receive (`rx`) or send buffer to `bytes`: beyond
/// `net.core.rmem_max`/`wmem_max` where the daemon may (`CAP_NET_ADMIN`,
/// `SO_RCVBUFFORCE`), else as far as those limits allow. Returns the size
/// the kernel granted (it doubles the request for bookkeeping).
pub fn grow_buffer(sock: &UdpSocket, rx: bool, bytes: usize) -> io::Result<usize> {
    let forced = if rx {
        socket::setsockopt(sock, sockopt::RcvBufForce, &bytes)
    } else {
        socket::setsockopt(sock, sockopt::SndBufForce, &bytes)
    };
    if forced.is_err() {
        if rx {
            socket::setsockopt(sock, sockopt::RcvBuf, &bytes)?;
        } else {
            socket::setsockopt(sock, sockopt::SndBuf, &bytes)?;
        }
    }
    Ok(if rx {
        socket::getsockopt(sock, sockopt::RcvBuf)?
    } else {
        socket::getsockopt(sock, sockopt::SndBuf)?
    })
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in; the write stays inside `ss`.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into
            // storage that is large enough and aligned for it.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read(std::ptr::from_ref(ss).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6 (family AF_INET6).
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read(std::ptr::from_ref(ss).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Points one message header at its address and its single iovec.
fn point(
    hdr: &mut libc::mmsghdr,
    addr: &mut libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    iov: &mut libc::iovec,
) {
    hdr.msg_hdr.msg_name = std::ptr::from_mut(addr).cast();
    hdr.msg_hdr.msg_namelen = addr_len;
    hdr.msg_hdr.msg_iov = iov;
    hdr.msg_hdr.msg_iovlen = 1;
}

/// What [`recv_batch`] learned about one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received (at most the buffer's length).
    pub len: usize,
    /// The sender.
    pub src: Option<SocketAddr>,
    /// With [`enable_gro`]: the size of each datagram the kernel coalesced
    /// into this one (only the last may be shorter); 0 for a plain datagram.
    pub segment: usize,
}

/// Asks the kernel to deliver runs of same-flow datagrams as one
/// (`UDP_GRO`, Linux 5.0): a UDP GSO send from a peer then arrives whole, one
/// read instead of dozens, and [`recv_batch`] reports the segment size. False
/// where the kernel does not offer it (datagrams keep arriving one by one).
pub fn enable_gro(sock: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to a c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            std::ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Room for one `UDP_GRO` control message (`CMSG_SPACE(sizeof(int))`),
/// aligned for `cmsghdr`.
type GroCmsgSpace = [u64; 4];

/// The segment size in a received message's `UDP_GRO` control message, or 0.
fn gro_segment(hdr: &libc::msghdr) -> usize {
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen`; the
    // CMSG_* macros stay within it and every header they return is aligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    0
}

/// Receives up to `bufs.len()` (at most [`MAX_BATCH`]) datagrams, one per
/// buffer; `meta[i]` describes datagram `i`. Returns how many arrived
/// (`Ok(0)` when none is waiting). A datagram longer than its buffer is
/// truncated; its length is the buffer's.
pub fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [&mut [u8]],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: these are plain old data; all-zero is valid for each.
    let mut addrs: [libc::sockaddr_storage; MAX_BATCH] =
        unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut cmsgs = [GroCmsgSpace::default(); MAX_BATCH];
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        };
        let namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        point(&mut hdrs[i], &mut addrs[i], namelen, &mut iovs[i]);
        hdrs[i].msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        hdrs[i].msg_hdr.msg_controllen = size_of::<GroCmsgSpace>() as _;
    }
    // SAFETY: `hdrs[..n]` point at `iovs`, `addrs` and `cmsgs` (alive until
    // the call returns) and each iovec at a distinct, writable buffer of the
    // length given; MSG_DONTWAIT keeps the call from blocking.
    let got = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    let got = got as usize;
    for i in 0..got {
        meta[i] = RecvMeta {
            len: (hdrs[i].msg_len as usize).min(bufs[i].len()),
            src: from_storage(&addrs[i]),
            segment: gro_segment(&hdrs[i].msg_hdr),
        };
    }
    Ok(got)
}

/// One datagram in two pieces that leave back to back (headers built
/// apart and a payload left where it lies, or a whole datagram and an empty
/// slice), so a sender need not copy them together.
pub type Pieces<'a> = [&'a [u8]; 2];

/// Most datagrams one [`send_pieces`] call takes.
pub const MAX_SEND: usize = 256;

/// Sends each of `datagrams` (at most [`MAX_BATCH`]) to `dst`. Returns how
/// many the kernel took; `Ok(k < len)` when its queue filled up.
pub fn send_batch(sock: &UdpSocket, dst: SocketAddr, datagrams: &[&[u8]]) -> io::Result<usize> {
    send_whole(sock, dst, datagrams, false)
}

/// [`send_pieces`] for datagrams in one piece each.
fn send_whole(
    sock: &UdpSocket,
    dst: SocketAddr,
    datagrams: &[&[u8]],
    gso: bool,
) -> io::Result<usize> {
    let n = datagrams.len().min(MAX_BATCH);
    let mut pieces: [Pieces<'_>; MAX_BATCH] = [[&[], &[]]; MAX_BATCH];
    for (p, d) in pieces.iter_mut().zip(&datagrams[..n]) {
        p[0] = d;
    }
    send_pieces(sock, dst, &pieces[..n], gso)
}

/// Sends each of `datagrams` (at most [`MAX_SEND`]) to `dst` with
/// `sendmmsg`; with `gso`, each run of equal-size datagrams (see
/// [`gso_runs`]) leaves in one `UDP_SEGMENT` send, which the kernel splits
/// into datagrams as late as it can (in the NIC, or past a veth, or not at
/// all for a receiver with `UDP_GRO`). Returns how many datagrams the kernel
/// took; `Ok(k < len)` when its queue filled up. With `gso`, an error before
/// any was taken (e.g. `EIO` where the route cannot do UDP GSO) is returned
/// for the caller to fall back to plain sends.
pub fn send_pieces(
    sock: &UdpSocket,
    dst: SocketAddr,
    datagrams: &[Pieces<'_>],
    gso: bool,
) -> io::Result<usize> {
    let n = datagrams.len().min(MAX_SEND);
    let (mut addr, addr_len) = to_storage(dst);
    let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); 2 * MAX_SEND];
    let mut hdrs = [MaybeUninit::<libc::mmsghdr>::uninit(); MAX_SEND];
    let mut cmsgs = [MaybeUninit::<SegmentCmsg>::uninit(); MAX_SEND];
    let mut counts = [0usize; MAX_SEND];
    let mut lens = [0usize; MAX_SEND];
    for (i, d) in datagrams[..n].iter().enumerate() {
        for (k, piece) in d.iter().enumerate() {
            iovs[2 * i + k].write(libc::iovec {
                // The kernel only reads through this pointer.
                iov_base: piece.as_ptr().cast_mut().cast(),
                iov_len: piece.len(),
            });
        }
        lens[i] = d[0].len() + d[1].len();
    }
    let mut msgs = 0;
    let mut message = |start: usize, end: usize, size: usize| {
        // SAFETY: plain old data; all-zero is valid.
        let mut hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        let h = &mut hdr.msg_hdr;
        h.msg_name = std::ptr::from_mut(&mut addr).cast();
        h.msg_namelen = addr_len;
        h.msg_iov = iovs[2 * start].as_mut_ptr();
        h.msg_iovlen = 2 * (end - start);
        if end - start > 1 {
            // SAFETY: plain old data; all-zero is valid.
            let mut c: SegmentCmsg = unsafe { MaybeUninit::zeroed().assume_init() };
            c.hdr.cmsg_level = libc::SOL_UDP;
            c.hdr.cmsg_type = libc::UDP_SEGMENT;
            // SAFETY: CMSG_LEN only computes a length.
            c.hdr.cmsg_len = unsafe { libc::CMSG_LEN(size_of::<u16>() as u32) } as _;
            c.size = size as u16;
            h.msg_control = cmsgs[msgs].write(c) as *mut SegmentCmsg as *mut libc::c_void;
            h.msg_controllen = size_of::<SegmentCmsg>() as _;
        }
        hdrs[msgs].write(hdr);
        counts[msgs] = end - start;
        msgs += 1;
    };
    if gso {
        gso_runs(&lens[..n], &mut message);
    } else {
        for (i, len) in lens[..n].iter().enumerate() {
            message(i, i + 1, *len);
        }
    }
    // SAFETY: the first `msgs` headers were written above.
    let hdrs = unsafe { &mut *(std::ptr::from_mut(&mut hdrs[..msgs]) as *mut [libc::mmsghdr]) };
    send_messages(sock, hdrs, &counts[..msgs])
}

/// Sends prepared messages with `sendmmsg` until all are taken or the
/// kernel's queue fills; message `i` carries `datagrams[i]` datagrams.
/// Returns how many datagrams were taken; an error only if none was.
fn send_messages(
    sock: &UdpSocket,
    hdrs: &mut [libc::mmsghdr],
    datagrams: &[usize],
) -> io::Result<usize> {
    let (mut done_msgs, mut done) = (0, 0);
    while done_msgs < hdrs.len() {
        // SAFETY: the caller pointed every header at an address, iovecs and
        // control data that outlive this call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs[done_msgs..].as_mut_ptr(),
                (hdrs.len() - done_msgs) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => Ok(done),
                _ if done > 0 => Ok(done),
                _ => Err(e),
            };
        }
        if sent == 0 {
            break;
        }
        let sent = sent as usize;
        done += datagrams[done_msgs..done_msgs + sent].iter().sum::<usize>();
        done_msgs += sent;
    }
    Ok(done)
}

/// Most datagrams one UDP GSO send carries (the kernel's `UDP_MAX_SEGMENTS`
/// on older kernels; newer ones take more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes of one UDP GSO send (an IPv4 datagram's limit, less
/// headers).
const GSO_MAX_BYTES: usize = 65_507;

/// Groups datagrams into UDP GSO sends: runs of equal length where only the
/// last may be shorter, bounded by `GSO_MAX_SEGMENTS` (64) and
/// `GSO_MAX_BYTES` (65,507). Calls `run(start, end, segment_size)` for each run.
pub fn gso_runs(lens: &[usize], mut run: impl FnMut(usize, usize, usize)) {
    let mut start = 0;
    while start < lens.len() {
        let size = lens[start];
        let mut end = start + 1;
        let mut bytes = size;
        while end < lens.len()
            && end - start < GSO_MAX_SEGMENTS
            && lens[end] <= size
            && bytes + lens[end] <= GSO_MAX_BYTES
            // A shorter datagram ends its run.
            && lens[end - 1] == size
        {
            bytes += lens[end];
            end += 1;
        }
        run(start, end, size);
        start = end;
    }
}

/// The `UDP_SEGMENT` control message of one GSO send, laid out as
/// `CMSG_SPACE(sizeof(u16))`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

/// Like [`send_batch`], but with UDP GSO (see [`send_pieces`]).
pub fn send_batch_gso(sock: &UdpSocket, dst: SocketAddr, datagrams: &[&[u8]]) -> io::Result<usize> {
    send_whole(sock, dst, datagrams, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let dst = a.local_addr().unwrap();
        let sent = send_batch(&b, dst, &[b"one", b"two!"]).unwrap();
        assert_eq!(sent, 2);
        let mut x = [0u8; 16];
        let mut y = [0u8; 16];
        let mut bufs: [&mut [u8]; 2] = [&mut x, &mut y];
        let mut meta = [RecvMeta::default(); 2];
        let mut got = 0;
        for _ in 0..100 {
            got += recv_batch(&a, &mut bufs[got..], &mut meta[got..]).unwrap();
            if got == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 2);
        assert_eq!(meta[0].len, 3);
        assert_eq!(meta[0].src, Some(b.local_addr().unwrap()));
        assert_eq!(meta[0].segment, 0);
        assert_eq!(&x[..3], b"one");
        assert_eq!(&y[..4], b"two!");
    }

    #[test]
    fn gso_runs_group_equal_sizes() {
        let mut runs = Vec::new();
        gso_runs(&[100, 100, 100, 40, 100, 120, 120], |a, b, s| {
            runs.push((a, b, s))
        });
        // The shorter one closes a run; a longer one starts a new one.
        assert_eq!(runs, vec![(0, 4, 100), (4, 5, 100), (5, 7, 120)]);
        let big = [1472usize; 64];
        let mut runs = Vec::new();
        gso_runs(&big, |a, b, s| runs.push((a, b, s)));
        // 44 * 1472 fits in 65507 bytes, 45 would not.
        assert_eq!(runs, vec![(0, 44, 1472), (44, 64, 1472)]);
    }

    /// Sends `a` four 300-byte datagrams (bytes 0..=3) and a 7-byte one
    /// (4s) in one UDP GSO send.
    fn send_five(a: &UdpSocket) {
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; if i == 4 { 7 } else { 300 }])
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let sent = send_batch_gso(&b, a.local_addr().unwrap(), &refs)
            .expect("UDP GSO (Linux 4.18 or later)");
        assert_eq!(sent, 5);
    }

    #[test]
    fn gso_sends_arrive_as_separate_datagrams() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        send_five(&a);
        let mut store = vec![[0u8; 512]; 5];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| &mut b[..]).collect();
        let mut meta = [RecvMeta::default(); 5];
        let mut got = 0;
        for _ in 0..100 {
            got += recv_batch(&a, &mut bufs[got..], &mut meta[got..]).unwrap();
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 5);
        let lens: Vec<usize> = meta.iter().map(|m| m.len).collect();
        assert_eq!(lens, vec![300, 300, 300, 300, 7]);
        assert!(store[3][..300].iter().all(|b| *b == 3));
    }

    #[test]
    fn gro_socket_takes_a_gso_send_whole() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        assert!(enable_gro(&a), "UDP_GRO (Linux 5.0 or later)");
        send_five(&a);
        let mut store = vec![0u8; 4096];
        let mut bufs: [&mut [u8]; 1] = [&mut store];
        let mut meta = [RecvMeta::default(); 1];
        let mut got = 0;
        for _ in 0..100 {
            got = recv_batch(&a, &mut bufs, &mut meta).unwrap();
            if got == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 1);
        // One read: the five datagrams back to back, with their size.
        assert_eq!(meta[0].len, 4 * 300 + 7);
        assert_eq!(meta[0].segment, 300);
        assert!(store[900..1200].iter().all(|b| *b == 3));
        assert!(store[1200..1207].iter().all(|b| *b == 4));
    }
}
