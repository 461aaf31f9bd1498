//! System calls: TAP devices, batched UDP, rtnetlink, namespaces, fd passing and the
//! allocator's large blocks. The only
//! module allowed `unsafe`, and every block says why it is sound.
#![allow(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod affinity;
pub mod fd;
pub mod mem;
pub mod netlink;
pub mod netns;
pub mod signal;
pub mod tun;
pub mod udp;
