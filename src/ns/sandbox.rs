//! Sandboxes that `switchyard run` creates: a command in new user, network and
//! mount namespaces (like `unshare -Urnm`), held before it starts until the
//! switch has attached it, then given its own `/etc/resolv.conf` and
//! `/etc/hosts`.
//!
//! The child is `switchyard __sandbox CMD...` rather than a bare `fork`: the
//! daemon is multithreaded, and after `fork` only async-signal-safe calls are
//! allowed, while the sandbox must write id maps, wait for a JSON message,
//! mount and report errors. A fresh single-threaded process may do all of
//! that with ordinary (allocating, safe) code, and `exec` of CMD then keeps
//! the same PID, which is what the attach uses.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::socket::{recv, send, MsgFlags};
use serde::{Deserialize, Serialize};

use super::{set_timeout, spawn_helper, SANDBOX_VERB};
use crate::sys::netns;

/// How long the sandbox may take to create its namespaces or to start CMD.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of the helper when the sandbox could not be set up.
const SETUP_FAILED: i32 = 125;
/// Exit code of the helper when CMD could not be executed.
const EXEC_FAILED: i32 = 127;

/// Files bind-mounted into the sandbox when it is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindFiles {
    /// Mounted over `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Mounted over `/etc/hosts`.
    pub hosts: PathBuf,
}

/// Why a sandbox could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No command was given.
    #[error("no command to run in the sandbox")]
    EmptyCommand,
    /// The helper process could not be started.
    #[error("cannot start the sandbox helper {exe}: {source}; check the switchyard binary path")]
    Spawn {
        /// The helper executable.
        exe: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Talking to the sandbox failed or timed out.
    #[error("cannot talk to the sandbox process: {0}")]
    Channel(#[source] io::Error),
    /// The sandbox could not create its namespaces.
    #[error(
        "cannot create the sandbox's namespaces: {0}; unprivileged user namespaces may be \
         disabled (check sysctl user.max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns)"
    )]
    Namespaces(String),
    /// The sandbox could not mount its files.
    #[error("cannot set up the sandbox's files: {0}")]
    Mounts(String),
    /// CMD could not be executed.
    #[error("cannot run the command in the sandbox: {0}")]
    Exec(String),
    /// The sandbox exited before reporting.
    #[error("the sandbox process exited early ({0})")]
    Died(String),
}

/// What the sandbox helper tells its parent.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Ready,
    NamespacesFailed(String),
    MountsFailed(String),
    ExecFailed(String),
}

/// A command waiting in (or running in) its own namespaces.
pub struct Sandbox {
    child: Child,
    control: Option<OwnedFd>,
    exited: bool,
}

impl Sandbox {
    /// Starts `helper_exe __sandbox CMD...` with extra environment `env`; returns
    /// once the namespaces exist, with CMD not yet started. Stdio is inherited.
    pub fn spawn(
        helper_exe: &Path,
        cmd: &[String],
        env: &[(String, String)],
    ) -> Result<Sandbox, SandboxError> {
        if cmd.is_empty() {
            return Err(SandboxError::EmptyCommand);
        }
        let (child, control) =
            spawn_helper(helper_exe, SANDBOX_VERB, cmd, env, true).map_err(|source| {
                SandboxError::Spawn {
                    exe: helper_exe.to_path_buf(),
                    source,
                }
            })?;
        let mut sb = Sandbox {
            child,
            control: Some(control),
            exited: false,
        };
        match sb.read_report()? {
            Some(Report::Ready) => Ok(sb),
            Some(r) => Err(r.into_error()),
            None => Err(SandboxError::Died(sb.exit_description())),
        }
    }

    /// The PID of the sandbox (the helper now, CMD after [`Sandbox::release`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the sandbox mount `files` and start CMD; returns once CMD runs.
    pub fn release(&mut self, files: &BindFiles) -> Result<(), SandboxError> {
        let msg =
            serde_json::to_vec(files).map_err(|e| SandboxError::Channel(io::Error::other(e)))?;
        let control = self
            .control
            .as_ref()
            .ok_or_else(|| SandboxError::Channel(io::Error::other("sandbox already released")))?;
        send(control.as_raw_fd(), &msg, MsgFlags::empty())
            .map_err(|e| SandboxError::Channel(e.into()))?;
        // Success is silence: the control socket closes on exec.
        let report = self.read_report()?;
        self.control = None;
        match report {
            None => Ok(()),
            Some(r) => Err(r.into_error()),
        }
    }

    /// Waits for CMD; returns its exit code, or 128 + signal number.
    pub fn wait(&mut self) -> io::Result<i32> {
        let status = self.child.wait()?;
        self.exited = true;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(SETUP_FAILED))
    }

    fn read_report(&mut self) -> Result<Option<Report>, SandboxError> {
        let control = self
            .control
            .as_ref()
            .ok_or_else(|| SandboxError::Channel(io::Error::other("sandbox already released")))?;
        set_timeout(control, SETUP_TIMEOUT).map_err(SandboxError::Channel)?;
        let mut buf = vec![0u8; 4096];
        let n = recv(control.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(|e| SandboxError::Channel(e.into()))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|e| SandboxError::Channel(io::Error::other(e)))
    }

    fn exit_description(&mut self) -> String {
        match self.child.wait() {
            Ok(s) => {
                self.exited = true;
                s.to_string()
            }
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Sandbox {
    /// A sandbox never released is killed and reaped; a running CMD is left
    /// alone.
    fn drop(&mut self) {
        if self.control.is_some() && !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Report {
    fn into_error(self) -> SandboxError {
        match self {
            Report::Ready => SandboxError::Channel(io::Error::other("unexpected ready report")),
            Report::NamespacesFailed(s) => SandboxError::Namespaces(s),
            Report::MountsFailed(s) => SandboxError::Mounts(s),
            Report::ExecFailed(s) => SandboxError::Exec(s),
        }
    }
}

fn report(control: &OwnedFd, r: &Report) {
    if let Ok(msg) = serde_json::to_vec(r) {
        let _ = send(control.as_fd().as_raw_fd(), &msg, MsgFlags::empty());
    }
}

/// Entry point of `switchyard __sandbox CMD...`: creates the namespaces,
/// reports ready, waits to be released (exits if the parent goes away), mounts
/// the files and execs CMD. Returns an exit code only on failure.
pub fn sandbox_helper_main(cmd: &[String]) -> i32 {
    let Ok(control) = netns::take_helper_fd() else {
        eprintln!("switchyard: {SANDBOX_VERB} is internal; it needs its control socket at fd 3");
        return 2;
    };
    let Some((program, args)) = cmd.split_first() else {
        report(&control, &Report::ExecFailed("no command".into()));
        return EXEC_FAILED;
    };
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    if let Err(e) = netns::unshare_sandbox(uid, gid) {
        report(&control, &Report::NamespacesFailed(e.to_string()));
        return SETUP_FAILED;
    }
    report(&control, &Report::Ready);
    let mut buf = vec![0u8; 4096];
    let files: BindFiles = match recv(control.as_raw_fd(), &mut buf, MsgFlags::empty()) {
        Ok(n) if n > 0 => match serde_json::from_slice(&buf[..n]) {
            Ok(f) => f,
            Err(e) => {
                report(
                    &control,
                    &Report::MountsFailed(format!("bad release message: {e}")),
                );
                return SETUP_FAILED;
            }
        },
        // The parent went away without releasing us: never run CMD.
        _ => return SETUP_FAILED,
    };
    let mounted = netns::make_mounts_private()
        .map_err(|e| format!("making mounts private: {e}"))
        .and_then(|()| {
            netns::bind_file(&files.resolv_conf, Path::new("/etc/resolv.conf")).map_err(|e| {
                format!(
                    "bind-mounting {} over /etc/resolv.conf: {e}",
                    files.resolv_conf.display()
                )
            })
        })
        .and_then(|()| {
            netns::bind_file(&files.hosts, Path::new("/etc/hosts")).map_err(|e| {
                format!(
                    "bind-mounting {} over /etc/hosts: {e}",
                    files.hosts.display()
                )
            })
        });
    if let Err(e) = mounted {
        report(&control, &Report::MountsFailed(e));
        return SETUP_FAILED;
    }
    // `exec` only returns on failure; the control socket is close-on-exec.
    let e = Command::new(program).args(args).exec();
    report(&control, &Report::ExecFailed(format!("{program}: {e}")));
    EXEC_FAILED
}
