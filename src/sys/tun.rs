//! TAP devices: opens `/dev/net/tun` queues with a virtio-net header and
//! offloads, and reports what the kernel granted. Owns the TUN ioctls.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::wire::virtio_net::HEADER_LEN;

const TUN_PATH: &str = "/dev/net/tun";

/// Offloads we ask for: partial checksums and TCP segmentation (v4, v6, ECN).
const OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

// TUNSETIFF is numbered as a write, but the kernel copies the ifreq back
// with the assigned name, so the binding takes a mutable pointer.
nix::ioctl_readwrite_bad!(
    /// `TUNSETIFF`: attach the fd to a (new) TAP device.
    tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_ptr_bad!(
    /// `TUNSETVNETHDRSZ`: size of the virtio-net header before each frame.
    tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, c_int);
nix::ioctl_write_int_bad!(
    /// `TUNSETOFFLOAD`: offloads the reader of this fd can take.
    tun_set_offload, libc::TUNSETOFFLOAD);

/// Why a TAP device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or contains a NUL byte.
    #[error("invalid TAP name {0:?}: use 1 to 15 bytes without NUL")]
    InvalidName(String),
    /// Zero queues were asked for.
    #[error("a TAP needs at least one queue")]
    NoQueues,
    /// `open("/dev/net/tun")` failed.
    #[error("/dev/net/tun is not accessible: make it mode 0666 or run as root ({0})")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed.
    #[error(
        "cannot create TAP {name:?} (TUNSETIFF): {source}; creating a TAP needs CAP_NET_ADMIN \
         in the network namespace's user namespace, and the name must not be in use by \
         another kind of device"
    )]
    SetIff {
        /// The requested name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("cannot set the virtio-net header size of TAP {name:?} (TUNSETVNETHDRSZ): {source}")]
    SetVnetHdrSz {
        /// The TAP's name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// One open queue of a TAP device.
#[derive(Debug)]
pub struct TapQueue {
    /// The queue's fd (non-blocking, close-on-exec).
    pub file: File,
    /// The device name the kernel assigned.
    pub name: String,
    /// True when the kernel accepted checksum and TSO offloads.
    pub offload: bool,
    /// True when the kernel took UDP segmentation offload (Linux 6.2+): the
    /// TAP takes `UDP_L4` GSO frames written to it and hands such frames
    /// to reads. Only ever true with `offload`.
    pub uso: bool,
}

/// Checks a requested interface name; `""` lets the kernel pick one.
fn ifreq_for(name: &str, flags: c_int) -> Result<libc::ifreq, TapError> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::InvalidName(name.to_string()));
    }
    // SAFETY: `ifreq` is plain old data (bytes and a union of integers and
    // pointers that the kernel only reads as the flags we set); all zeros is a
    // valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // Flags fit in the union's `short`: every IFF_* we use is below 0x8000.
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

fn name_from(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Opens one queue: `open`, `TUNSETIFF`, `TUNSETVNETHDRSZ`, `TUNSETOFFLOAD`.
fn open_queue(name: &str, multi_queue: bool) -> Result<TapQueue, TapError> {
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let mut req = ifreq_for(name, flags)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(TapError::OpenTun)?;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open /dev/net/tun fd owned by `file`; `req` is a
    // valid, NUL-terminated ifreq that outlives the call, and TUNSETIFF writes
    // back at most `sizeof(struct ifreq)` bytes into it.
    unsafe { tun_set_iff(fd, &mut req) }.map_err(|e| TapError::SetIff {
        name: name.to_string(),
        source: e.into(),
    })?;
    let name = name_from(&req);
    let hdr_len = HEADER_LEN as c_int;
    // SAFETY: `fd` is a TAP fd owned by `file`; the kernel reads one c_int
    // from the pointer, which points to a live local.
    unsafe { tun_set_vnet_hdr_sz(fd, &hdr_len) }.map_err(|e| TapError::SetVnetHdrSz {
        name: name.clone(),
        source: e.into(),
    })?;
    // SAFETY: `fd` is a TAP fd owned by `file`; TUNSETOFFLOAD takes its
    // argument by value, no memory is shared.
    let offload = unsafe { tun_set_offload(fd, OFFLOADS as c_int) }.is_ok();
    let uso = offload && probe_uso(fd);
    Ok(TapQueue {
        file,
        name,
        offload,
        uso,
    })
}

/// Asks for UDP segmentation offload on top of [`OFFLOADS`]: the kernel
/// refuses offload bits it does not know (so that callers can probe, says
/// tun.c), so this is true on Linux 6.2 and later. Then USO frames pass both
/// ways: the switch writes coalesced datagrams as one frame, and reads a
/// sandbox's `UDP_SEGMENT` bursts whole (the TAP port cuts them). A kernel
/// that refuses it changes nothing, so [`OFFLOADS`] stay.
fn probe_uso(fd: std::os::fd::RawFd) -> bool {
    let with_uso = OFFLOADS | libc::TUN_F_USO4 | libc::TUN_F_USO6;
    // SAFETY: as for the TUNSETOFFLOAD in `open_queue`: `fd` is a live TAP
    // fd, the argument is passed by value.
    unsafe { tun_set_offload(fd, with_uso as c_int) }.is_ok()
}

/// Creates TAP `name` (`""` or a pattern like `"tap%d"` lets the kernel pick)
/// with `queues` queues in the current network namespace. With more than one
/// queue the device is `IFF_MULTI_QUEUE` and every queue has the same name.
/// Offloads are asked for; if the kernel refuses them, every queue reports
/// `offload: false` and frames must be plain.
pub fn open_tap(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    if queues == 0 {
        return Err(TapError::NoQueues);
    }
    let multi = queues > 1;
    let first = open_queue(name, multi)?;
    let name = first.name.clone();
    let mut out = Vec::with_capacity(queues);
    out.push(first);
    for _ in 1..queues {
        out.push(open_queue(&name, multi)?);
    }
    // Offloads are per device; report the weakest answer for all queues.
    let offload = out.iter().all(|q| q.offload);
    let uso = out.iter().all(|q| q.uso);
    for q in out.iter_mut() {
        q.offload = offload;
        q.uso = uso;
    }
    Ok(out)
}

/// Wraps an fd received from elsewhere (e.g. an attach helper) as a TAP queue
/// file, making it non-blocking.
pub fn tap_file_from_fd(fd: OwnedFd) -> io::Result<File> {
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        assert!(matches!(
            ifreq_for("0123456789abcdef", 0),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(
            ifreq_for("a\0b", 0),
            Err(TapError::InvalidName(_))
        ));
        let req = ifreq_for("tap0", libc::IFF_TAP).expect("valid name");
        assert_eq!(name_from(&req), "tap0");
        assert!(matches!(open_tap("x", 0), Err(TapError::NoQueues)));
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        let e = TapError::OpenTun(io::Error::from_raw_os_error(libc::EACCES));
        assert!(e.to_string().contains("mode 0666 or run as root"));
        let e = TapError::SetIff {
            name: "t".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
    }
}
