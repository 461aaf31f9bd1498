//! Overlay state the data plane needs for a VXLAN network: its VNI, the
//! remote VTEPs it replicates broadcast to and accepts frames from, and the
//! remote endpoints (MAC, addresses, VTEP) the control plane knows about. The
//! control plane hands a whole [`OverlaySpec`] to
//! [`crate::dataplane::Dataplane::set_overlay`] after every change; the data
//! plane publishes it with the topology snapshot, so readers never lock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::MacAddr;

/// Largest valid VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Where this host's VXLAN endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Local underlay address and UDP port (default port 4789) to receive on.
    pub bind: SocketAddr,
}

/// An endpoint on another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// The VTEP (underlay address and UDP port) that hosts it.
    pub vtep: SocketAddr,
}

/// The overlay side of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    /// VXLAN network identifier (1..=2^24-1).
    pub vni: u32,
    /// Every remote VTEP of the network: broadcast is head-end replicated to
    /// each, and frames are accepted only from their underlay addresses.
    pub vteps: Vec<SocketAddr>,
    /// Remote endpoints known from the control plane.
    pub remotes: Vec<RemoteEndpoint>,
    /// Static-peer mode: learn remote MACs from frames of accepted VTEPs
    /// (with a cluster store, remotes come only from the control plane).
    pub learn: bool,
}

impl OverlaySpec {
    /// True if `addr` is the underlay address of one of the network's VTEPs
    /// (source ports vary with the inner flow, so only the address counts).
    pub fn accepts(&self, addr: IpAddr) -> bool {
        self.vteps.iter().any(|v| v.ip() == addr)
    }
}
