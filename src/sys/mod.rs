//! System calls: TAP devices, batched UDP, rtnetlink, namespaces, fd passing and the
//! allocator's large blocks. The only
//! module allowed `unsafe`, and every block says why it is sound.
#![allow(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod affinity;
pub mod fd;
pub mod mem;
pub mod netlink;
pub mod netns;
pub mod tun;
pub mod udp;

/// Before `exec`: unblocks every signal and puts SIGPIPE back to its
/// default. Both survive `exec`, so without this a program started from here
/// inherits a caller's blocked SIGINT and SIGTERM (which `up` blocks for its
/// own signal wait) and the SIGPIPE that Rust's runtime ignores. Other
/// ignored signals came from the caller on purpose (`nohup`) and stay.
pub fn reset_signals_for_exec() -> nix::Result<()> {
    use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
    SigSet::empty().thread_set_mask()?;
    // SAFETY: SIG_DFL installs no handler, so no code runs on a signal.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }?;
    Ok(())
}
