//! Signal state handed to a program this process execs, and the signal
//! that ends it with its parent.

use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
use nix::unistd::{getppid, Pid};

/// Gives the calling thread the signal state a shell gives the programs it
/// starts: nothing blocked, SIGPIPE at its default. Both pass through
/// `exec`, and a switchyard helper has neither by default: the Rust runtime
/// ignores SIGPIPE, and `up` blocks SIGINT and SIGTERM for its signal waiter
/// (a helper inherits the mask). Call in a single-threaded helper just
/// before it execs a user's command.
pub fn reset_for_exec() -> nix::Result<()> {
    SigSet::empty().thread_set_mask()?;
    // SAFETY: installs the default disposition, no handler runs; the helper
    // is single-threaded and about to exec, so nothing else depends on
    // SIGPIPE being ignored.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }?;
    Ok(())
}

/// Has the kernel SIGKILL the calling process when its parent dies
/// (`PR_SET_PDEATHSIG`; precisely, when the parent's thread that started
/// it exits), and returns false if `parent` is no longer its parent: a
/// parent that died before this call sends nothing, and the process was
/// reparented. Kept across `exec`, except of a set-user-ID,
/// set-group-ID or file-capability binary; cleared when the process
/// changes its effective or filesystem ids.
pub fn die_with_parent(parent: Pid) -> nix::Result<bool> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    Ok(getppid() == parent)
}
