//! Raw descriptor numbers inherited from a parent process, turned into owned
//! descriptors after checking that they are open.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid
    // argument (an unknown fd yields EBADF).
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Takes ownership of an inherited descriptor, if it is open and above stderr.
pub fn own_raw(fd: RawFd) -> Option<OwnedFd> {
    if fd <= 2 || !is_open(fd) {
        return None;
    }
    // SAFETY: the descriptor is open and was passed to this process to own
    // (its number came from our parent on the command line); nothing else in
    // this process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks a descriptor close-on-exec (errors ignored: the fd may be gone).
pub fn set_cloexec_raw(fd: RawFd) {
    // SAFETY: F_SETFD only changes descriptor flags; an unknown fd yields EBADF.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}
