//! Signals around a program this process starts: the signal state it execs
//! with, and the signals passed on to it while it runs. A passed-on signal
//! never reaches a process that merely reuses the program's PID. And the
//! signal that ends a started program with its parent.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::{kill, signal, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{getpgid, getppid, Pid};

/// Gives the calling thread the signal state a shell gives the programs it
/// starts: nothing blocked, SIGPIPE at its default. Both pass through
/// `exec`, and a switchyard helper has neither by default: the Rust runtime
/// ignores SIGPIPE, and `up` and `run` block signals for their signal
/// waiters (a helper inherits the mask). Call in a single-threaded helper
/// just before it execs a user's command.
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

/// The signals `run` passes on to its command, as `docker run` does.
pub const PROXIED: [Signal; 6] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Signals blocked in this process and held until [`HeldSignals::forward_to`]
/// passes them on: one that arrives before then waits instead of ending
/// the process.
pub struct HeldSignals {
    fd: SignalFd,
}

impl HeldSignals {
    /// Blocks `signals` in the calling thread. Call before any other thread
    /// starts: threads inherit the mask, and a thread without it would take
    /// a signal's default action, ending the process.
    pub fn block(signals: &[Signal]) -> nix::Result<HeldSignals> {
        let set: SigSet = signals.iter().copied().collect();
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)?;
        Ok(HeldSignals { fd })
    }

    /// Passes every held signal on to `child`, those that arrived since
    /// [`HeldSignals::block`] first, from a thread of its own, until
    /// [`SignalProxy::until_exit`]. `child` must be a child of this process
    /// that nothing reaps before then.
    pub fn forward_to(self, child: Pid) -> io::Result<SignalProxy> {
        let target = Arc::new(Mutex::new(Some(child)));
        let shared = Arc::clone(&target);
        std::thread::Builder::new()
            .name("sy-sig-proxy".into())
            .spawn(move || forward(&self.fd, &shared))?;
        Ok(SignalProxy { target, child })
    }
}

/// Passes signals on to a child process; see [`HeldSignals::forward_to`].
pub struct SignalProxy {
    /// The child while it may be signalled; `None` once it has exited.
    target: Arc<Mutex<Option<Pid>>>,
    child: Pid,
}

impl SignalProxy {
    /// Waits until the child has exited and stops passing signals on. The
    /// child is left for its owner to reap: until then its PID cannot be
    /// reused, so no signal reaches another process. Signals that arrive
    /// later are swallowed, so the caller's teardown runs to its end.
    pub fn until_exit(self) -> nix::Result<()> {
        loop {
            match waitid(
                Id::Pid(self.child),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ) {
                Err(Errno::EINTR) => continue,
                r => {
                    *self.target.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    return r.map(drop);
                }
            }
        }
    }
}

fn forward(fd: &SignalFd, target: &Mutex<Option<Pid>>) {
    loop {
        let info = match fd.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        // Held while signalling: `until_exit` clears it before the child
        // can be reaped.
        let target = target.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(child) = *target else {
            continue;
        };
        let in_our_group = getpgid(Some(child)).ok() == getpgid(None).ok();
        if passes_on(info.ssi_code, in_our_group) {
            let _ = kill(child, sig);
        }
    }
}

/// Whether a signal with origin `code` (`si_code`) is passed on to a child.
/// The terminal sends Ctrl-C, Ctrl-\ and hangup to its whole foreground
/// process group, and the kernel marks them `SI_KERNEL`: a child in our
/// group has them already, and many programs take a second Ctrl-C as "stop
/// now, skip the clean shutdown". A signal a process sends (`SI_USER`) to
/// us alone must be passed on; one sent to our whole group cannot be told
/// from it, and reaches the child twice.
fn passes_on(code: i32, child_in_our_group: bool) -> bool {
    code != libc::SI_KERNEL || !child_in_our_group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_signals_are_not_sent_twice_to_a_child_in_our_group() {
        assert!(!passes_on(libc::SI_KERNEL, true));
        assert!(passes_on(libc::SI_KERNEL, false));
        assert!(passes_on(libc::SI_USER, true));
        assert!(passes_on(libc::SI_QUEUE, true));
        assert!(passes_on(libc::SI_TKILL, false));
    }
}
