//! The real [`Attacher`]: creates endpoint TAPs inside sandboxes through the
//! `__attach` helper process and wraps their queues as ports.

use std::path::PathBuf;

use super::attach::{attach_detailed, detach};
use super::{AttachRequest, SandboxTarget};
use crate::control::attach::{stat_namespace, AttachFailure, AttachSpec, Attacher};
use crate::control::model::NamespaceId;
use crate::ports::Port;

/// Attaches by re-executing `helper_exe` (normally this very binary).
#[derive(Debug, Clone)]
pub struct NsAttacher {
    helper_exe: PathBuf,
    queues: usize,
}

impl NsAttacher {
    /// Uses the running binary as the helper.
    pub fn from_current_exe() -> NsAttacher {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        NsAttacher::new(exe)
    }

    /// Creates TAPs with `queues` queues (one per data-plane worker).
    pub fn with_queues(mut self, queues: usize) -> NsAttacher {
        self.queues = queues.clamp(1, 16);
        self
    }

    /// Uses `helper_exe` as the helper.
    pub fn new(helper_exe: PathBuf) -> NsAttacher {
        NsAttacher {
            helper_exe,
            queues: 1,
        }
    }
}

impl Attacher for NsAttacher {
    fn can_connect_in(&self) -> bool {
        true
    }

    fn connect_in(
        &self,
        target: &SandboxTarget,
        addr: std::net::SocketAddr,
    ) -> Option<std::io::Result<std::net::TcpStream>> {
        Some(
            super::attach::connect_in(&self.helper_exe, target, addr)
                .map(std::net::TcpStream::from)
                .map_err(std::io::Error::other),
        )
    }

    fn attach(&self, spec: &AttachSpec) -> Result<Vec<Box<dyn Port>>, AttachFailure> {
        let req = AttachRequest {
            target: spec.target.clone(),
            ifname: spec.ifname.clone(),
            mac: spec.mac,
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            mtu: spec.mtu,
            gateway4: spec.gateway4,
            gateway6: spec.gateway6,
            default_route: spec.default_route,
            queues: self.queues,
        };
        let attachment =
            attach_detailed(&self.helper_exe, &req).map_err(|e| AttachFailure(e.to_string()))?;
        let ports = attachment.into_ports(spec.mtu).map_err(|e| {
            AttachFailure(format!("cannot use the TAP queues of {}: {e}", spec.ifname))
        })?;
        Ok(ports
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Port>)
            .collect())
    }

    fn detach(&self, target: &SandboxTarget, ifname: &str) -> Result<(), AttachFailure> {
        // A sandbox that is gone took its interfaces with it.
        if stat_namespace(target).is_err() {
            return Ok(());
        }
        detach(&self.helper_exe, target, ifname).map_err(|e| AttachFailure(e.to_string()))
    }

    fn namespace_id(&self, target: &SandboxTarget) -> std::io::Result<NamespaceId> {
        stat_namespace(target)
    }
}
