//! Signal state handed to a program this process execs.

use nix::sys::signal::{signal, SigHandler, SigSet, Signal};

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
