//! The seam between the control plane and sandboxes: the [`Attacher`] trait
//! creates an endpoint's interface inside a sandbox and hands back the ports
//! to switch. The real implementation enters namespaces; this module holds the
//! trait, the namespace identity lookup it shares, and a placeholder for
//! builds without namespace support.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::model::{NamespaceId, SandboxTarget};
use crate::ports::Port;
use crate::wire::MacAddr;

/// What to create inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    /// The sandbox.
    pub target: SandboxTarget,
    /// Interface name inside it (eth0, eth1, ...).
    pub ifname: String,
    /// Interface MAC.
    pub mac: MacAddr,
    /// IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Interface MTU.
    pub mtu: u16,
    /// IPv4 gateway (the switch).
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 gateway (the switch).
    pub gateway6: Option<Ipv6Addr>,
    /// Install the default route(s) through this interface.
    pub default_route: bool,
}

/// Why attaching or detaching failed, worded for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AttachFailure(pub String);

/// Creates and removes endpoint interfaces inside sandboxes.
pub trait Attacher: Send + Sync {
    /// Creates the endpoint's interface inside the sandbox and returns the
    /// port(s) to switch.
    fn attach(&self, req: &AttachSpec) -> Result<Vec<Box<dyn Port>>, AttachFailure>;
    /// Removes the interface (best effort; closing the ports usually suffices).
    fn detach(&self, target: &SandboxTarget, ifname: &str) -> Result<(), AttachFailure>;
    /// Identity (dev, inode) of the sandbox's network namespace, or why it
    /// cannot be had: gone (`ENOENT`, `ESRCH`) or not ours to inspect
    /// (`EACCES`, `EPERM`).
    fn namespace_id(&self, target: &SandboxTarget) -> std::io::Result<NamespaceId>;
    /// Whether [`Attacher::connect_in`] is available.
    fn can_connect_in(&self) -> bool {
        false
    }
    /// A TCP connection to `addr` opened inside the sandbox's network
    /// namespace (for published ports' loopback clients), if this attacher
    /// can make one.
    fn connect_in(
        &self,
        _target: &SandboxTarget,
        _addr: std::net::SocketAddr,
    ) -> Option<std::io::Result<std::net::TcpStream>> {
        None
    }
}

/// The file that names a sandbox's network namespace.
pub fn netns_file(target: &SandboxTarget) -> PathBuf {
    match target {
        SandboxTarget::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        SandboxTarget::Netns { path, .. } => path.clone(),
    }
}

/// Identity of the sandbox's network namespace file, or why it cannot be
/// inspected (a process's namespaces are open to its own user and root only).
pub fn stat_namespace(target: &SandboxTarget) -> std::io::Result<NamespaceId> {
    let (dev, inode) = crate::sys::netns::ns_id(&netns_file(target))?;
    Ok(NamespaceId { dev, inode })
}

/// The attacher of builds without namespace support: every attach fails with
/// a clear message; namespace identities are real.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnavailableAttacher;

impl Attacher for UnavailableAttacher {
    fn attach(&self, _req: &AttachSpec) -> Result<Vec<Box<dyn Port>>, AttachFailure> {
        Err(AttachFailure(
            "namespace attach not available in this build".into(),
        ))
    }

    fn detach(&self, _target: &SandboxTarget, _ifname: &str) -> Result<(), AttachFailure> {
        Ok(())
    }

    fn namespace_id(&self, target: &SandboxTarget) -> std::io::Result<NamespaceId> {
        stat_namespace(target)
    }
}
