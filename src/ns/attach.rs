//! Attaching endpoints to sandboxes: a helper process enters the sandbox's
//! namespaces, creates and configures the TAP, and hands its queue fds back
//! over `SCM_RIGHTS`; failures come back as typed [`AttachError`]s that say
//! what is missing. Also removes such TAPs ([`detach`]).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{set_timeout, spawn_helper, AttachRequest, SandboxTarget, ATTACH_VERB};
use crate::ports::tap::TapPort;
use crate::sys::netlink::{LinkChange, Netlink, NetlinkError};
use crate::sys::netns::{self, NsKind, MAX_FDS};
use crate::sys::tun::{self, TapError};

/// How long a helper may take before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest helper message.
const MAX_MSG: usize = 64 * 1024;

/// Why an attach or detach failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The request cannot be carried out as written.
    #[error("invalid attach request: {0}")]
    InvalidRequest(String),
    /// The helper process could not be started.
    #[error("cannot start the attach helper {exe}: {source}; check the switchyard binary path")]
    Spawn {
        /// The helper executable.
        exe: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Talking to the helper failed.
    #[error("cannot talk to the attach helper: {0}")]
    Channel(#[source] io::Error),
    /// The helper did not answer in time and was killed.
    #[error("the attach helper did not answer within {0:?} and was killed")]
    Timeout(Duration),
    /// The helper exited without answering.
    #[error("the attach helper exited without answering ({0}); see its messages above")]
    HelperDied(String),
    /// The helper answered something we do not understand.
    #[error("the attach helper answered something unexpected: {0}")]
    Protocol(String),
    /// The namespace does not exist.
    #[error(
        "{target} does not exist ({source}); the process may have exited or the path is wrong"
    )]
    NamespaceGone {
        /// Which namespace.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path is not a namespace file.
    #[error("{target} is not a network namespace ({source}); give a /proc/PID/ns/net or /run/netns/NAME path")]
    NotNamespace {
        /// Which path.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The namespace exists but we may not enter it.
    #[error(
        "no permission to enter {target}: it belongs to another user; run as that user or root \
         ({source})"
    )]
    NoPermission {
        /// Which namespace.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating the TAP in the sandbox failed.
    #[error("cannot create TAP {ifname:?} in {target}: {detail}")]
    CreateTap {
        /// Interface name.
        ifname: String,
        /// Which namespace.
        target: String,
        /// What went wrong, with advice.
        detail: String,
    },
    /// Configuring the TAP (or `lo`) failed.
    #[error("cannot configure {ifname:?} in {target}: {detail}")]
    Configure {
        /// Interface name.
        ifname: String,
        /// Which namespace.
        target: String,
        /// What went wrong, with advice.
        detail: String,
    },
}

/// What went wrong in the helper, as it crosses the process boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Step {
    Request,
    OpenNamespace,
    EnterNamespace,
    CreateTap,
    Configure,
}

#[derive(Debug, Serialize, Deserialize)]
struct Failure {
    step: Step,
    errno: Option<i32>,
    detail: String,
}

impl Failure {
    fn io(step: Step, e: &io::Error, detail: String) -> Failure {
        Failure {
            step,
            errno: e.raw_os_error(),
            detail,
        }
    }

    fn tap(e: TapError) -> Failure {
        Failure {
            step: Step::CreateTap,
            errno: None,
            detail: e.to_string(),
        }
    }

    fn netlink(e: NetlinkError) -> Failure {
        Failure {
            step: Step::Configure,
            errno: None,
            detail: e.to_string(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum HelperRequest {
    Attach(AttachRequest),
    Detach {
        target: SandboxTarget,
        ifname: String,
    },
    Connect {
        target: SandboxTarget,
        addr: std::net::SocketAddr,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum HelperReply {
    Attached {
        ifname: String,
        offload: bool,
        /// Absent from an older helper: no USO.
        #[serde(default)]
        uso: bool,
    },
    Detached,
    Connected,
    Failed(Failure),
}

/// The queues of a TAP created in a sandbox.
#[derive(Debug)]
pub struct Attachment {
    /// One fd per queue.
    pub fds: Vec<OwnedFd>,
    /// The name the kernel gave the interface.
    pub ifname: String,
    /// True when the TAP accepted checksum and TSO offloads.
    pub offload: bool,
    /// True when the TAP also takes UDP segmentation offload frames.
    pub uso: bool,
}

impl Attachment {
    /// Wraps every queue as a [`TapPort`] with MTU `mtu`.
    pub fn into_ports(self, mtu: u16) -> io::Result<Vec<TapPort>> {
        let (name, offload, uso) = (self.ifname, self.offload, self.uso);
        self.fds
            .into_iter()
            .map(|fd| TapPort::from_fd(fd, &name, mtu, offload, uso))
            .collect()
    }
}

/// Creates and configures the TAP `req` describes inside its sandbox, running
/// `helper_exe __attach`, and returns its queue fds.
pub fn attach(helper_exe: &Path, req: &AttachRequest) -> Result<Vec<OwnedFd>, AttachError> {
    attach_detailed(helper_exe, req).map(|a| a.fds)
}

/// Like [`attach`], also returning the interface name and offload support.
pub fn attach_detailed(helper_exe: &Path, req: &AttachRequest) -> Result<Attachment, AttachError> {
    if req.queues == 0 || req.queues > MAX_FDS {
        return Err(AttachError::InvalidRequest(format!(
            "{} queues asked for; use 1 to {MAX_FDS}",
            req.queues
        )));
    }
    let target = req.target.to_string();
    let (reply, fds) = run_helper(helper_exe, &HelperRequest::Attach(req.clone()))?;
    match reply {
        HelperReply::Attached {
            ifname,
            offload,
            uso,
        } if fds.len() == req.queues => Ok(Attachment {
            fds,
            ifname,
            offload,
            uso,
        }),
        HelperReply::Attached { .. } => Err(AttachError::Protocol(format!(
            "{} fds received for {} queues",
            fds.len(),
            req.queues
        ))),
        HelperReply::Failed(f) => Err(to_error(f, &req.ifname, target)),
        HelperReply::Detached | HelperReply::Connected => {
            Err(AttachError::Protocol("wrong reply to attach".into()))
        }
    }
}

/// A TCP socket opened inside `target`'s network namespace and connected to
/// `addr` there (for a loopback client of a published port, spliced at
/// kernel speed).
pub fn connect_in(
    helper_exe: &Path,
    target: &SandboxTarget,
    addr: std::net::SocketAddr,
) -> Result<OwnedFd, AttachError> {
    let req = HelperRequest::Connect {
        target: target.clone(),
        addr,
    };
    match run_helper(helper_exe, &req)? {
        (HelperReply::Connected, mut fds) if fds.len() == 1 => Ok(fds.remove(0)),
        (HelperReply::Failed(f), _) => Err(to_error(f, "-", target.to_string())),
        _ => Err(AttachError::Protocol("wrong reply to connect".into())),
    }
}

/// Deletes interface `ifname` in `target` if it still exists. (Closing every
/// queue fd already removes a TAP; this is for leftovers.)
pub fn detach(helper_exe: &Path, target: &SandboxTarget, ifname: &str) -> Result<(), AttachError> {
    let req = HelperRequest::Detach {
        target: target.clone(),
        ifname: ifname.to_string(),
    };
    match run_helper(helper_exe, &req)?.0 {
        HelperReply::Detached => Ok(()),
        HelperReply::Failed(f) => Err(to_error(f, ifname, target.to_string())),
        HelperReply::Attached { .. } | HelperReply::Connected => {
            Err(AttachError::Protocol("wrong reply to detach".into()))
        }
    }
}

fn to_error(f: Failure, ifname: &str, target: String) -> AttachError {
    let source = || match f.errno {
        Some(e) => io::Error::from_raw_os_error(e),
        None => io::Error::other(f.detail.clone()),
    };
    let ifname = ifname.to_string();
    match f.step {
        Step::Request => AttachError::Protocol(f.detail),
        Step::OpenNamespace if f.errno == Some(libc::ENOENT) || f.errno == Some(libc::ESRCH) => {
            AttachError::NamespaceGone {
                target,
                source: source(),
            }
        }
        Step::EnterNamespace if f.errno == Some(libc::EINVAL) => AttachError::NotNamespace {
            target,
            source: source(),
        },
        Step::OpenNamespace | Step::EnterNamespace => AttachError::NoPermission {
            target,
            source: source(),
        },
        Step::CreateTap => AttachError::CreateTap {
            ifname,
            target,
            detail: f.detail,
        },
        Step::Configure => AttachError::Configure {
            ifname,
            target,
            detail: f.detail,
        },
    }
}

/// Runs one request through a helper process, with a timeout, and reaps it.
fn run_helper(exe: &Path, req: &HelperRequest) -> Result<(HelperReply, Vec<OwnedFd>), AttachError> {
    let msg = serde_json::to_vec(req).map_err(|e| AttachError::Protocol(e.to_string()))?;
    let (mut child, sock) =
        spawn_helper(exe, ATTACH_VERB, &[], &[], false).map_err(|source| AttachError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let answer = exchange(&sock, &msg);
    let status = reap(&mut child, deadline);
    let (n, buf, fds) = match answer {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(AttachError::Timeout(HELPER_TIMEOUT))
        }
        Err(e) => return Err(AttachError::Channel(e)),
    };
    if n == 0 {
        return Err(AttachError::HelperDied(status));
    }
    let reply = serde_json::from_slice(&buf[..n]).map_err(|e| {
        AttachError::Protocol(format!("{e} in {:?}", String::from_utf8_lossy(&buf[..n])))
    })?;
    Ok((reply, fds))
}

fn exchange(sock: &OwnedFd, msg: &[u8]) -> io::Result<(usize, Vec<u8>, Vec<OwnedFd>)> {
    set_timeout(sock, HELPER_TIMEOUT)?;
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(sock),
        msg,
        nix::sys::socket::MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; MAX_MSG];
    let (n, fds) = netns::recv_with_fds(sock.as_fd(), &mut buf)?;
    Ok((n, buf, fds))
}

/// Waits for `child` until `deadline`, then kills it; returns how it ended.
fn reap(child: &mut Child, deadline: Instant) -> String {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                return match child.wait() {
                    Ok(s) => format!("killed after timeout, {s}"),
                    Err(e) => format!("killed after timeout, not reaped: {e}"),
                };
            }
        }
    }
}

/// Entry point of `switchyard __attach`: reads one request from fd 3, carries
/// it out and answers there. Returns the process exit code.
pub fn attach_helper_main() -> i32 {
    let Ok(sock) = netns::take_helper_fd() else {
        eprintln!("switchyard: {ATTACH_VERB} is internal; it needs its control socket at fd 3");
        return 2;
    };
    let reply = match read_request(&sock) {
        Ok(HelperRequest::Attach(req)) => match do_attach(&req) {
            Ok((queues, reply)) => {
                let fds: Vec<_> = queues.iter().map(|q| q.file.as_fd()).collect();
                return send_reply(&sock, &reply, &fds);
            }
            Err(f) => HelperReply::Failed(f),
        },
        Ok(HelperRequest::Detach { target, ifname }) => match do_detach(&target, &ifname) {
            Ok(()) => HelperReply::Detached,
            Err(f) => HelperReply::Failed(f),
        },
        Ok(HelperRequest::Connect { target, addr }) => match do_connect(&target, addr) {
            Ok(stream) => return send_reply(&sock, &HelperReply::Connected, &[stream.as_fd()]),
            Err(f) => HelperReply::Failed(f),
        },
        Err(f) => HelperReply::Failed(f),
    };
    let failed = matches!(reply, HelperReply::Failed(_));
    let rc = send_reply(&sock, &reply, &[]);
    if failed {
        1
    } else {
        rc
    }
}

fn send_reply(sock: &OwnedFd, reply: &HelperReply, fds: &[std::os::fd::BorrowedFd<'_>]) -> i32 {
    let Ok(msg) = serde_json::to_vec(reply) else {
        return 1;
    };
    match netns::send_with_fds(sock.as_fd(), &msg, fds) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("switchyard {ATTACH_VERB}: cannot answer the daemon: {e}");
            1
        }
    }
}

fn read_request(sock: &OwnedFd) -> Result<HelperRequest, Failure> {
    let mut buf = vec![0u8; MAX_MSG];
    let (n, _) = netns::recv_with_fds(sock.as_fd(), &mut buf)
        .map_err(|e| Failure::io(Step::Request, &e, format!("cannot read request: {e}")))?;
    serde_json::from_slice(&buf[..n]).map_err(|e| Failure {
        step: Step::Request,
        errno: None,
        detail: format!("bad request: {e}"),
    })
}

/// Enters `target`'s network namespace, and its user namespace only when
/// needed: a process privileged over the target (root) enters the network
/// namespace directly, because inside a user namespace that does not map it,
/// root would lose access to `/dev/net/tun`.
fn enter_target(target: &SandboxTarget) -> Result<(), Failure> {
    let open = |p: &Path| {
        File::open(p).map_err(|e| {
            Failure::io(
                Step::OpenNamespace,
                &e,
                format!("open {}: {e}", p.display()),
            )
        })
    };
    let net = open(&target.netns_path())?;
    let ours = netns::ns_id(Path::new("/proc/self/ns/user")).ok();
    let user = match target.userns_path() {
        Some(p) => {
            if netns::ns_id(&p).ok() == ours {
                None
            } else {
                Some(open(&p)?)
            }
        }
        // A namespace file given without its user namespace (a runtime's
        // `/run/netns/x`, CNI's CNI_NETNS): the kernel knows the owner.
        None => netns::owner_userns(&net).ok().filter(|u| {
            let id = u.metadata().ok().map(|m| (m.dev(), m.ino()));
            id.is_some() && id != ours
        }),
    };
    let enter_failed = |e: io::Error, what: &str| {
        Failure::io(Step::EnterNamespace, &e, format!("setns {what}: {e}"))
    };
    match netns::enter(&net, NsKind::Net) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && user.is_some() => {}
        Err(e) => return Err(enter_failed(e, "net")),
    }
    if let Some(user) = user {
        netns::enter(&user, NsKind::User).map_err(|e| enter_failed(e, "user"))?;
    }
    netns::enter(&net, NsKind::Net).map_err(|e| enter_failed(e, "net"))
}

fn do_connect(
    target: &SandboxTarget,
    addr: std::net::SocketAddr,
) -> Result<std::net::TcpStream, Failure> {
    enter_target(target)?;
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|e| Failure::io(Step::Request, &e, format!("connect {addr}: {e}")))
}

fn do_attach(req: &AttachRequest) -> Result<(Vec<tun::TapQueue>, HelperReply), Failure> {
    enter_target(&req.target)?;
    let queues = tun::open_tap(&req.ifname, req.queues).map_err(Failure::tap)?;
    let name = queues
        .first()
        .map(|q| q.name.clone())
        .unwrap_or_else(|| req.ifname.clone());
    let offload = queues.iter().all(|q| q.offload);
    let uso = queues.iter().all(|q| q.uso);
    configure(req, &name).map_err(Failure::netlink)?;
    Ok((
        queues,
        HelperReply::Attached {
            ifname: name,
            offload,
            uso,
        },
    ))
}

fn configure(req: &AttachRequest, name: &str) -> Result<(), NetlinkError> {
    let mut nl = Netlink::open()?;
    nl.set_link(
        name,
        &LinkChange {
            up: None,
            mtu: Some(u32::from(req.mtu)),
            mac: Some(req.mac),
        },
    )?;
    if let Some((addr, prefix)) = req.ipv4 {
        nl.add_address(name, IpAddr::V4(addr), prefix)?;
    }
    if let Some((addr, prefix)) = req.ipv6 {
        nl.add_address(name, IpAddr::V6(addr), prefix)?;
    }
    nl.set_up(name)?;
    nl.set_up("lo")?;
    if req.default_route {
        if let Some(gw) = req.gateway4 {
            nl.add_default_route(name, IpAddr::V4(gw))?;
        }
        if let Some(gw) = req.gateway6 {
            nl.add_default_route(name, IpAddr::V6(gw))?;
        }
    }
    Ok(())
}

fn do_detach(target: &SandboxTarget, ifname: &str) -> Result<(), Failure> {
    enter_target(target)?;
    let mut nl = Netlink::open().map_err(Failure::netlink)?;
    match nl.delete_link(ifname) {
        Ok(()) | Err(NetlinkError::NoSuchLink { .. }) => Ok(()),
        Err(e) => Err(Failure::netlink(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_failures_become_errors_that_say_what_is_missing() {
        let f = Failure {
            step: Step::EnterNamespace,
            errno: Some(libc::EPERM),
            detail: "setns user".into(),
        };
        let e = to_error(f, "eth0", SandboxTarget::Pid(123).to_string());
        assert_eq!(
            e.to_string(),
            "no permission to enter pid 123: it belongs to another \
             user; run as that user or root (Operation not permitted (os error 1))"
        );
        let f = Failure {
            step: Step::OpenNamespace,
            errno: Some(libc::ENOENT),
            detail: String::new(),
        };
        assert!(matches!(
            to_error(f, "eth0", "x".into()),
            AttachError::NamespaceGone { .. }
        ));
    }

    #[test]
    fn bad_queue_counts_are_rejected_before_spawning() {
        let req = AttachRequest {
            target: SandboxTarget::Pid(1),
            ifname: "eth0".into(),
            mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            ipv4: None,
            ipv6: None,
            mtu: 1500,
            gateway4: None,
            gateway6: None,
            default_route: false,
            queues: 0,
        };
        let e = attach(Path::new("/nonexistent"), &req).expect_err("zero queues");
        assert!(matches!(e, AttachError::InvalidRequest(_)));
        let req = AttachRequest { queues: 1, ..req };
        let e = attach(Path::new("/nonexistent/switchyard"), &req).expect_err("no helper");
        assert!(matches!(e, AttachError::Spawn { .. }));
    }
}
