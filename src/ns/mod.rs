//! Sandboxes and how the switch reaches into them: which namespace a sandbox
//! is ([`SandboxTarget`]), what to create there ([`AttachRequest`]), the helper
//! processes that enter namespaces ([`attach`]) and the sandboxes that
//! `switchyard run` creates ([`sandbox`]).
//!
//! Entering a user namespace with `setns` is impossible from a multithreaded
//! process, so everything that enters one runs in a short-lived helper
//! process: the `switchyard` binary re-executed with a hidden verb
//! (`__attach`, `__sandbox`), talking to its parent over a socket at fd 3.

pub mod attach;
mod attacher;
pub mod neigh;
pub mod sandbox;

pub use attacher::NsAttacher;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::sys::netns;
use crate::wire::MacAddr;

/// Verb of the attach helper (`switchyard __attach`).
pub const ATTACH_VERB: &str = "__attach";
/// Verb of the sandbox helper (`switchyard __sandbox CMD...`).
pub const SANDBOX_VERB: &str = "__sandbox";

/// A sandbox's network namespace, and the user namespace owning it if any
/// (the control plane's type, so one concept has one name).
pub use crate::control::model::SandboxTarget;

impl SandboxTarget {
    /// The network namespace file.
    pub fn netns_path(&self) -> PathBuf {
        crate::control::attach::netns_file(self)
    }

    /// The user namespace file, if one may need entering.
    pub fn userns_path(&self) -> Option<PathBuf> {
        match self {
            SandboxTarget::Pid(pid) => Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
            SandboxTarget::Netns { userns, .. } => userns.clone(),
        }
    }
}

/// An endpoint to create inside a sandbox: a TAP and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Where.
    pub target: SandboxTarget,
    /// Interface name inside the sandbox (e.g. `eth0`).
    pub ifname: String,
    /// The interface's MAC address.
    #[serde(with = "crate::control::model::mac_text")]
    pub mac: MacAddr,
    /// IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Interface MTU.
    pub mtu: u16,
    /// IPv4 gateway (the switch's address on the network).
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 gateway.
    pub gateway6: Option<Ipv6Addr>,
    /// Add default routes via the gateways.
    pub default_route: bool,
    /// TAP queues (one fd each); more than one makes a multi-queue TAP.
    pub queues: usize,
}

/// The (device, inode) of `target`'s network namespace: the same pair means
/// the same namespace, e.g. to recognize a sandbox after a daemon restart.
pub fn namespace_id(target: &SandboxTarget) -> io::Result<(u64, u64)> {
    netns::ns_id(&target.netns_path())
}

/// Starts `exe VERB ARGS...` with one end of a fresh `SOCK_SEQPACKET` pair at
/// fd 3 and returns the child and the other end.
fn spawn_helper(
    exe: &Path,
    verb: &str,
    args: &[String],
    env: &[(String, String)],
    inherit_stdio: bool,
) -> io::Result<(Child, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let mut cmd = Command::new(exe);
    cmd.arg(verb).args(args);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if !inherit_stdio {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
    }
    netns::pass_as_helper_fd(&mut cmd, theirs);
    let child = cmd.spawn()?;
    // `cmd` (and with it our copy of the child's end) is dropped here, so a
    // dead child shows up as end-of-file on `ours`.
    drop(cmd);
    Ok((child, ours))
}

/// Sets how long a read on a helper socket may block.
fn set_timeout(sock: &OwnedFd, timeout: std::time::Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs() as nix::libc::time_t,
        timeout.subsec_micros() as nix::libc::suseconds_t,
    );
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json_with_a_string_mac() {
        let req = AttachRequest {
            target: SandboxTarget::Netns {
                path: "/run/netns/x".into(),
                userns: None,
            },
            ifname: "eth0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ipv4: Some((Ipv4Addr::new(10, 0, 0, 2), 24)),
            ipv6: None,
            mtu: 1500,
            gateway4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            gateway6: None,
            default_route: true,
            queues: 2,
        };
        let json = serde_json::to_string(&req).expect("serialize");
        assert!(json.contains("\"02:00:00:00:00:01\""));
        let back: AttachRequest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, req);
        let bad = json.replace("02:00:00:00:00:01", "nope");
        assert!(serde_json::from_str::<AttachRequest>(&bad).is_err());
    }

    #[test]
    fn own_namespace_has_an_id_and_names_say_what_they_are() {
        let me = SandboxTarget::Pid(std::process::id());
        assert_eq!(
            namespace_id(&me).expect("own netns"),
            netns::ns_id(Path::new("/proc/self/ns/net")).expect("stat")
        );
        assert_eq!(SandboxTarget::Pid(123).to_string(), "pid 123");
    }
}
