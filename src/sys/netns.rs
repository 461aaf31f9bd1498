//! Namespaces and fd passing: entering user and network namespaces, creating
//! the sandbox's namespaces and mounts, and moving fds between processes with
//! `SCM_RIGHTS`. Received fds are owned (`OwnedFd`) from the moment they
//! arrive.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most fds one message carries (TAP queues per attach).
pub const MAX_FDS: usize = 16;

/// Which namespace an fd refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    /// A user namespace.
    User,
    /// A network namespace.
    Net,
}

/// The (device, inode) pair that identifies the namespace at `path` (e.g.
/// `/proc/PID/ns/net` or a bind mount under `/run/netns`).
pub fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// The processes whose network namespace is `id` (as [`ns_id`] gives it),
/// other than the caller; processes it may not inspect are left out.
pub fn processes_in(id: (u64, u64)) -> Vec<nix::unistd::Pid> {
    let me = std::process::id();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))).ok() == Some(id))
        .filter_map(|pid| i32::try_from(pid).ok().map(nix::unistd::Pid::from_raw))
        .collect()
}

/// Moves the calling thread into the namespace `ns` refers to. Entering a user
/// namespace only works in a single-threaded process.
pub fn enter(ns: &File, kind: NsKind) -> io::Result<()> {
    let flag = match kind {
        NsKind::User => CloneFlags::CLONE_NEWUSER,
        NsKind::Net => CloneFlags::CLONE_NEWNET,
    };
    setns(ns.as_fd(), flag).map_err(io::Error::from)
}

/// The user namespace that owns namespace `ns` (`NS_GET_USERNS`).
pub fn owner_userns(ns: &File) -> io::Result<File> {
    /// `_IO(0xb7, 0x1)` from linux/nsfs.h.
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: the ioctl takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Creates new user, network and mount namespaces for this process and maps
/// `uid`/`gid` (the ids outside) to root inside, like `unshare -Urnm`.
pub fn unshare_sandbox(uid: u32, gid: u32) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    // An unprivileged process may only write gid_map after denying setgroups.
    std::fs::write("/proc/self/setgroups", "deny\n")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    Ok(())
}

/// Stops mount events from propagating to or from the parent namespace
/// (`mount --make-rprivate /`).
pub fn make_mounts_private() -> io::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Bind-mounts file `src` over `dst`.
pub fn bind_file(src: &Path, dst: &Path) -> io::Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)
}

/// Sends `msg` with `fds` attached as `SCM_RIGHTS` over a Unix socket.
pub fn send_with_fds(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(msg)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one message into `buf` and the fds that came with it (at most
/// [`MAX_FDS`], close-on-exec). Returns the message length.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this
                // message; nothing else knows it, so we are its sole owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if truncated {
        return Err(io::Error::other(
            "more fds were sent than one message may carry",
        ));
    }
    Ok((n, fds))
}

/// The fd number a helper process finds its control socket at.
pub const HELPER_FD: RawFd = 3;

/// Makes `cmd`'s child find `fd` at [`HELPER_FD`] (and nowhere else). The
/// parent's copy is closed when `cmd` is dropped.
pub fn pass_as_helper_fd(cmd: &mut Command, fd: OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl) on fd numbers; it neither
    // allocates nor takes locks. `fd` is captured so the number stays open in
    // the parent until the child has been forked.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            // dup2 onto itself would keep FD_CLOEXEC, so clear it instead.
            let rc = if raw == HELPER_FD {
                libc::fcntl(HELPER_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, HELPER_FD)
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// In a helper process, takes ownership of the control socket its parent put
/// at [`HELPER_FD`] and marks it close-on-exec. Call once.
pub fn take_helper_fd() -> io::Result<OwnedFd> {
    // F_GETFD fails with EBADF when nothing is open at that number, so we never
    // wrap a closed fd.
    nix::fcntl::fcntl(
        // SAFETY: the borrow only lives for this call and the fd number is
        // checked to be open by F_GETFD itself.
        unsafe { BorrowedFd::borrow_raw(HELPER_FD) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the fd is open (checked above); the parent placed it there for
    // this process alone and this function is called once, so nothing else in
    // this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    #[test]
    fn fds_cross_a_socket_and_arrive_owned() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let f = File::open("/proc/self/ns/net").expect("open own netns");
        send_with_fds(a.as_fd(), b"hi", &[f.as_fd()]).expect("send");
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 1);
        let got = File::from(fds.into_iter().next().expect("one fd"));
        let (m1, m2) = (f.metadata().expect("stat"), got.metadata().expect("stat"));
        assert_eq!((m1.dev(), m1.ino()), (m2.dev(), m2.ino()));
    }

    #[test]
    fn namespace_ids_are_stable() {
        let a = ns_id(Path::new("/proc/self/ns/net")).expect("own netns");
        let b = ns_id(Path::new("/proc/thread-self/ns/net")).expect("own netns");
        assert_eq!(a, b);
    }
}
