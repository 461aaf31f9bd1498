//! An [`Attacher`] for tests that need no namespaces: every attach returns an
//! in-memory port, any existing file stands in for a namespace file, and a
//! switch makes attaches fail on demand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::attach::{stat_namespace, AttachFailure, AttachSpec, Attacher};
use super::model::{NamespaceId, SandboxTarget};
use crate::ports::memory::{MemoryPort, MemoryPortHandle};
use crate::ports::{Port, PortCaps};

/// What the fake attacher did, for assertions.
#[derive(Default)]
pub struct FakeLog {
    /// Every successful attach, with the test side of its port.
    pub attached: Vec<(AttachSpec, MemoryPortHandle)>,
    /// Every detach: sandbox and interface name.
    pub detached: Vec<(SandboxTarget, String)>,
}

/// Test attacher returning [`MemoryPort`]s. Clones share the log and switch.
#[derive(Clone, Default)]
pub struct FakeAttacher {
    /// What happened so far (the control plane may lock; tests read it).
    pub log: Arc<Mutex<FakeLog>>,
    /// When set, attaches fail.
    pub fail: Arc<AtomicBool>,
}

impl FakeAttacher {
    /// A fresh fake.
    pub fn new() -> FakeAttacher {
        FakeAttacher::default()
    }
}

impl Attacher for FakeAttacher {
    fn attach(&self, req: &AttachSpec) -> Result<Vec<Box<dyn Port>>, AttachFailure> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(AttachFailure(format!(
                "fake attach of {} into {} failed as asked",
                req.ifname, req.target
            )));
        }
        let caps = PortCaps {
            offload: false,
            mtu: req.mtu,
            segments_gso: false,
            uso: false,
        };
        let (port, handle) = MemoryPort::new(&format!("fake-{}", req.ifname), caps, 256);
        if let Ok(mut log) = self.log.lock() {
            log.attached.push((req.clone(), handle));
        }
        Ok(vec![Box::new(port)])
    }

    fn detach(&self, target: &SandboxTarget, ifname: &str) -> Result<(), AttachFailure> {
        if let Ok(mut log) = self.log.lock() {
            log.detached.push((target.clone(), ifname.to_string()));
        }
        Ok(())
    }

    fn namespace_id(&self, target: &SandboxTarget) -> std::io::Result<NamespaceId> {
        stat_namespace(target)
    }
}
