//! Sandboxes for `switchyard run` and `up`: CMD runs in new user, network
//! and mount namespaces (as `unshare -Urnm` would: the caller is root inside;
//! real root gets only the network and mount namespaces), held back until the
//! daemon has attached its interfaces, then given its own `/etc/resolv.conf`
//! and `/etc/hosts` by bind mounts.
//!
//! The namespaces are created by a fresh `switchyard __sandbox` process, not
//! after `fork()` in the caller: a process whose CMD must wait for a release
//! signal cannot be started with `std::process::Command` and `pre_exec`
//! (spawn waits for the exec), and a fresh process is single-threaded, as
//! `unshare(CLONE_NEWUSER)` requires. The helper then execs CMD, so the
//! sandbox PID is CMD's PID.
//!
//! CMD dies with its caller, even one killed with SIGKILL that runs no
//! teardown (as `unshare --kill-child`): the kernel sends it SIGKILL when
//! the thread that spawned the sandbox exits. What CMD started is not
//! signalled: the sandbox has no PID namespace of its own.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::unistd::{execvp, getgid, getuid, pipe, Pid};

/// Files bind-mounted into the sandbox. The sandbox removes them once they
/// are mounted, and their directory if that is then empty.
#[derive(Debug, Clone)]
pub struct BindFiles {
    /// Replaces `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Replaces `/etc/hosts`.
    pub hosts: PathBuf,
}

/// Why a sandbox could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Creating the pipes failed.
    #[error("cannot create pipes for the sandbox: {0}")]
    Pipe(#[source] nix::Error),
    /// Starting the helper failed.
    #[error("cannot start the sandbox helper {exe}: {source}")]
    Spawn {
        /// The helper binary.
        exe: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The helper could not create the namespaces.
    #[error(
        "the sandbox could not create its user, network and mount namespaces \
         (see the message above); unprivileged user namespaces must be enabled \
         (sysctl kernel.unprivileged_userns_clone=1, and on Ubuntu \
         kernel.apparmor_restrict_unprivileged_userns=0)"
    )]
    Namespaces,
    /// Releasing the sandbox failed (it already exited).
    #[error("cannot start the command: the sandbox exited early ({0})")]
    Release(#[source] io::Error),
    /// The command is empty.
    #[error("no command given")]
    NoCommand,
}

/// A sandbox process, held until [`Sandbox::release`].
pub struct Sandbox {
    child: Child,
    release: Option<File>,
    files: BindFiles,
    status: Option<i32>,
    /// Its network namespace (`None` if it could not be told from ours).
    netns: Option<(u64, u64)>,
}

impl Sandbox {
    /// Starts `command` in new namespaces using this program as the helper;
    /// returns once the namespaces exist. `files` must exist when
    /// [`Sandbox::release`] is called. CMD is killed when the calling
    /// *thread* exits, not only the process: call it from a thread that
    /// outlives the sandbox (`run` and `up` use their main thread, which
    /// waits for or tears down every sandbox before it returns).
    pub fn spawn(command: &[String], files: &BindFiles) -> Result<Sandbox, SandboxError> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        Self::spawn_with(&exe, command, files)
    }

    /// Like [`Sandbox::spawn`] with an explicit helper binary.
    pub fn spawn_with(
        helper_exe: &Path,
        command: &[String],
        files: &BindFiles,
    ) -> Result<Sandbox, SandboxError> {
        if command.is_empty() {
            return Err(SandboxError::NoCommand);
        }
        // Without O_CLOEXEC so the helper inherits them; it closes every fd
        // but 0-2 before exec'ing CMD.
        let (ready_r, ready_w) = pipe().map_err(SandboxError::Pipe)?;
        let (release_r, release_w) = pipe().map_err(SandboxError::Pipe)?;
        set_cloexec(&ready_r);
        set_cloexec(&release_w);
        let child = Command::new(helper_exe)
            .arg("__sandbox")
            .arg(std::process::id().to_string())
            .arg(ready_w.as_raw_fd().to_string())
            .arg(release_r.as_raw_fd().to_string())
            .arg(&files.resolv_conf)
            .arg(&files.hosts)
            .arg("--")
            .args(command)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                exe: helper_exe.to_path_buf(),
                source,
            })?;
        drop(ready_w);
        drop(release_r);
        let mut sandbox = Sandbox {
            child,
            release: Some(File::from(release_w)),
            files: files.clone(),
            status: None,
            netns: None,
        };
        let mut byte = [0u8; 1];
        match File::from(ready_r).read(&mut byte) {
            Ok(1) => {
                // Recorded now, while the PID is surely the sandbox's.
                let ns = |p: &str| crate::sys::netns::ns_id(Path::new(p)).ok();
                let own = ns("/proc/self/ns/net");
                sandbox.netns =
                    ns(&format!("/proc/{}/ns/net", sandbox.pid())).filter(|n| Some(*n) != own);
                Ok(sandbox)
            }
            _ => {
                sandbox.kill();
                let _ = sandbox.wait();
                Err(SandboxError::Namespaces)
            }
        }
    }

    /// The sandbox's PID (CMD's PID once released).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The files the sandbox will bind-mount.
    pub fn files(&self) -> &BindFiles {
        &self.files
    }

    /// Lets the sandbox mount its files and exec CMD.
    pub fn release(&mut self) -> Result<(), SandboxError> {
        let mut f = self
            .release
            .take()
            .ok_or_else(|| SandboxError::Release(io::Error::other("already released")))?;
        f.write_all(b"1").map_err(SandboxError::Release)
    }

    /// Kills the sandbox (SIGKILL); harmless if it already exited.
    pub fn kill(&mut self) {
        self.release = None;
        let _ = self.child.kill();
    }

    /// Sends `signal` to every process in the sandbox's network namespace:
    /// CMD and whatever it started (which outlives CMD, and a signal to CMD
    /// alone, unless CMD passes it on). Returns how many were signalled;
    /// `None` only counts them.
    pub fn signal_all(&self, signal: Option<Signal>) -> usize {
        let Some(netns) = self.netns else {
            return 0;
        };
        let pids = crate::sys::netns::processes_in(netns);
        for pid in &pids {
            let _ = nix::sys::signal::kill(*pid, signal);
        }
        pids.len()
    }

    /// Kills (SIGKILL) every process in the sandbox's network namespace,
    /// again while new ones show up (forked before they died), at most a
    /// few rounds.
    pub fn kill_all(&mut self) {
        self.kill();
        for _ in 0..10 {
            if self.signal_all(Some(Signal::SIGKILL)) == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// True once the sandbox has exited (its status is kept for `wait`).
    pub fn try_wait(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(exit_code(st));
                true
            }
            _ => false,
        }
    }

    /// Waits for the sandbox; returns CMD's exit code, or 128 + signal.
    pub fn wait(&mut self) -> io::Result<i32> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let st = self.child.wait()?;
        let code = exit_code(st);
        self.status = Some(code);
        Ok(code)
    }
}

impl Drop for Sandbox {
    /// An unreleased sandbox never runs CMD: it is killed and reaped.
    fn drop(&mut self) {
        if self.release.is_some() && self.status.is_none() {
            self.kill();
            let _ = self.wait();
        }
    }
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

fn set_cloexec(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// Closes every inherited descriptor above stderr except `keep`.
fn close_inherited(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        crate::sys::fd::set_cloexec_raw(fd);
    }
}

fn fail(msg: &str) -> i32 {
    eprintln!("switchyard sandbox: {msg}");
    125
}

/// Maps the caller to root inside its new user namespace. A process may
/// only map its own ids into a namespace it created (more needs CAP_SETUID
/// in the parent namespace, which it no longer has after `unshare`).
fn map_ids(uid: u32, gid: u32) -> io::Result<()> {
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    std::fs::write("/proc/self/setgroups", "deny\n")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    Ok(())
}

fn bind(src: &Path, target: &str) {
    if let Err(e) = mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        eprintln!(
            "switchyard sandbox: warning: cannot bind {} over {target}: {e}",
            src.display()
        );
    }
}

/// The mounts hold the files from now on: removes them, and their
/// directory once it is empty, so that nothing is left behind when the
/// caller dies with CMD and never runs its teardown (SIGKILL to `run`'s
/// process group).
fn remove_bind_files(resolv: &Path, hosts: &Path) {
    for f in [resolv, hosts] {
        let _ = std::fs::remove_file(f);
    }
    if let Some(dir) = resolv.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Entry point of `switchyard __sandbox CALLER_PID READY_FD RELEASE_FD RESOLV HOSTS -- CMD...`.
pub fn sandbox_helper_main(args: &[String]) -> i32 {
    let [caller, ready, release, resolv, hosts, sep, cmd @ ..] = args else {
        return fail("usage: __sandbox CALLER_PID READY_FD RELEASE_FD RESOLV HOSTS -- CMD...");
    };
    let Ok(caller) = caller.parse::<i32>().map(Pid::from_raw) else {
        return fail("bad caller PID");
    };
    let (Ok(ready), Ok(release)) = (ready.parse::<RawFd>(), release.parse::<RawFd>()) else {
        return fail("bad descriptor arguments");
    };
    if sep != "--" || cmd.is_empty() {
        return fail("no command");
    }
    let (Some(ready), Some(release)) = (
        crate::sys::fd::own_raw(ready),
        crate::sys::fd::own_raw(release),
    ) else {
        return fail("descriptors not inherited");
    };
    close_inherited(&[ready.as_raw_fd(), release.as_raw_fd()]);
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    // Real root needs no user namespace, and keeps every uid visible inside.
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if uid != 0 {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    if let Err(e) = unshare(flags) {
        return fail(&format!("unshare(user, net, mount) failed: {e}"));
    }
    if uid != 0 {
        if let Err(e) = map_ids(uid, gid) {
            return fail(&format!("cannot write the uid/gid maps: {e}"));
        }
    }
    if File::from(ready).write_all(b"1").is_err() {
        return fail("the caller went away");
    }
    let mut byte = [0u8; 1];
    match File::from(release).read(&mut byte) {
        Ok(1) => {}
        // The caller aborted (or died): never run CMD unattached.
        _ => return 1,
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        eprintln!("switchyard sandbox: warning: cannot make mounts private: {e}");
    } else {
        bind(Path::new(resolv), "/etc/resolv.conf");
        bind(Path::new(hosts), "/etc/hosts");
    }
    remove_bind_files(Path::new(resolv), Path::new(hosts));
    let Ok(argv) = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return fail("command contains a NUL byte");
    };
    // Otherwise CMD would start with SIGPIPE ignored and blocked what `up`
    // and `run` block (the signals they wait for or pass on), and `up`
    // could stop it only with SIGKILL.
    if let Err(e) = crate::sys::signal::reset_for_exec() {
        eprintln!("switchyard sandbox: warning: cannot reset signal handling: {e}");
    }
    // Last before exec, as a change of ids would clear it. A set-user-ID
    // CMD (or one that changes its ids, as `su` does) is not killed with
    // its caller: exec clears the parent-death signal then.
    match crate::sys::signal::die_with_parent(caller) {
        Ok(true) => {}
        // The caller died since the release: never run CMD unattended.
        Ok(false) => return 1,
        Err(e) => return fail(&format!("cannot tie the command to its caller: {e}")),
    }
    match execvp(&argv[0], &argv) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("switchyard run: cannot execute {:?}: {e}", cmd[0]);
            127
        }
    }
}
