//! Overlay state the data plane needs for a VXLAN network: its VNI, the
//! remote VTEPs it replicates broadcast to and accepts frames from, and the
//! remote endpoints (MAC, addresses, VTEP) the control plane knows about. The
//! control plane hands a whole [`OverlaySpec`] to
//! [`crate::dataplane::Dataplane::set_overlay`] after every change; the data
//! plane publishes it with the topology snapshot, so readers never lock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};

use crate::ports::PortId;
use crate::tables::topology::NetworkId;
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
    /// MTU inside the overlay: frames to other hosts are segmented to it
    /// before encapsulation (1450 on a 1500-byte underlay).
    pub mtu: u16,
}

impl OverlaySpec {
    /// True if `addr` is the underlay address of one of the network's VTEPs
    /// (source ports vary with the inner flow, so only the address counts).
    pub fn accepts(&self, addr: IpAddr) -> bool {
        self.vteps.iter().any(|v| same_ip(v.ip(), addr))
    }
}

/// A remote endpoint as the data plane looks it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The tunnel port of its VTEP.
    pub port: PortId,
    /// Underlay address of its VTEP.
    pub vtep: IpAddr,
    /// Its IPv4 address, if known.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address, if known.
    pub ipv6: Option<Ipv6Addr>,
}

/// The compiled overlay side of one network, published in the topology.
#[derive(Debug, Clone, Default)]
pub struct OverlayNet {
    /// Its VNI.
    pub vni: u32,
    /// Static-peer mode: remote MACs are learned from accepted VTEPs.
    pub learn: bool,
    /// Remote VTEPs and their tunnel ports.
    pub tunnels: Vec<(SocketAddr, PortId)>,
    /// Remote endpoints from the control plane, by MAC.
    pub remotes: HashMap<MacAddr, RemoteEntry>,
    /// Remote endpoint MACs by IPv4 address (ARP suppression).
    pub by_ipv4: HashMap<Ipv4Addr, MacAddr>,
    /// Remote endpoint MACs by IPv6 address (NDP suppression).
    pub by_ipv6: HashMap<Ipv6Addr, MacAddr>,
    /// MACs of this host's endpoints on the network: a remote VTEP never
    /// sends from them.
    pub local_macs: HashSet<MacAddr>,
}

impl OverlayNet {
    /// The tunnel port for frames arriving from underlay address `addr`, if
    /// it is one of the network's VTEPs.
    pub fn tunnel_from(&self, addr: IpAddr) -> Option<PortId> {
        self.tunnels
            .iter()
            .find(|(v, _)| same_ip(v.ip(), addr))
            .map(|(_, p)| *p)
    }
}

/// IPv4 and IPv4-mapped IPv6 addresses compare equal (a dual-stack socket
/// reports IPv4 peers as mapped addresses).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// What a port is to the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortRole {
    /// An endpoint's port (or any port that is not VXLAN).
    #[default]
    Local,
    /// A worker's VXLAN receive socket: frames from it are decapsulated.
    VxlanRx,
    /// The logical port towards one remote VTEP of an overlay network.
    Tunnel(NetworkId),
}

/// Overlay state of the topology snapshot: VNI to network, each overlay
/// network's [`OverlayNet`], and each port's [`PortRole`].
#[derive(Debug, Clone, Default)]
pub struct OverlayTables {
    by_vni: HashMap<u32, NetworkId>,
    nets: Vec<Option<Arc<OverlayNet>>>,
    roles: Vec<PortRole>,
}

impl OverlayTables {
    /// The network using `vni`.
    #[inline]
    pub fn network_of_vni(&self, vni: u32) -> Option<NetworkId> {
        self.by_vni.get(&vni).copied()
    }

    /// The overlay side of a network, if it is an overlay network.
    #[inline]
    pub fn net(&self, id: NetworkId) -> Option<&OverlayNet> {
        self.nets.get(id.0 as usize).and_then(|n| n.as_deref())
    }

    /// The role of a port.
    #[inline]
    pub fn role(&self, p: PortId) -> PortRole {
        self.roles.get(p.0 as usize).copied().unwrap_or_default()
    }

    /// True for a tunnel port.
    #[inline]
    pub fn is_tunnel(&self, p: PortId) -> bool {
        matches!(self.role(p), PortRole::Tunnel(_))
    }

    /// True if any network is an overlay network (lets stages skip work).
    #[inline]
    pub fn any(&self) -> bool {
        !self.by_vni.is_empty()
    }

    /// Sets a port's role.
    pub fn set_role(&mut self, p: PortId, role: PortRole) {
        let i = p.0 as usize;
        if self.roles.len() <= i {
            self.roles.resize(i + 1, PortRole::Local);
        }
        self.roles[i] = role;
    }

    /// Installs or replaces the overlay side of a network.
    pub fn set_net(&mut self, id: NetworkId, net: OverlayNet) {
        self.by_vni.retain(|_, n| *n != id);
        self.by_vni.insert(net.vni, id);
        let i = id.0 as usize;
        if self.nets.len() <= i {
            self.nets.resize(i + 1, None);
        }
        self.nets[i] = Some(Arc::new(net));
    }

    /// Makes a network a plain one again.
    pub fn clear_net(&mut self, id: NetworkId) {
        self.by_vni.retain(|_, n| *n != id);
        if let Some(slot) = self.nets.get_mut(id.0 as usize) {
            *slot = None;
        }
    }

    /// Replaces the local MACs of an overlay network (no-op if unchanged or
    /// not an overlay network).
    pub fn set_local_macs(&mut self, id: NetworkId, macs: HashSet<MacAddr>) {
        if let Some(Some(net)) = self.nets.get_mut(id.0 as usize) {
            if net.local_macs != macs {
                Arc::make_mut(net).local_macs = macs;
            }
        }
    }
}

/// Builds the compiled form of `spec` for tunnel ports `tunnels` (one per
/// VTEP of the spec, in any order). Remotes whose VTEP has no tunnel port
/// are left out.
pub fn compile(spec: &OverlaySpec, tunnels: Vec<(SocketAddr, PortId)>) -> OverlayNet {
    let mut net = OverlayNet {
        vni: spec.vni,
        learn: spec.learn,
        ..OverlayNet::default()
    };
    for r in &spec.remotes {
        let Some(&(_, port)) = tunnels.iter().find(|(v, _)| *v == r.vtep) else {
            continue;
        };
        net.remotes.insert(
            r.mac,
            RemoteEntry {
                port,
                vtep: r.vtep.ip(),
                ipv4: r.ipv4,
                ipv6: r.ipv6,
            },
        );
        if let Some(ip) = r.ipv4 {
            net.by_ipv4.insert(ip, r.mac);
        }
        if let Some(ip) = r.ipv6 {
            net.by_ipv6.insert(ip, r.mac);
        }
    }
    net.tunnels = tunnels;
    net
}

/// A small overlay topology for tests, benches and fuzz targets of the
/// overlay stages: network 0
/// (VNI 42) with local port p0 (MAC ..:01, IPv4 10.0.0.1), a tunnel port p1
/// to VTEP 192.0.2.1:4789 hosting remote ..:0b (10.0.0.11, fd00::b), a
/// tunnel port p3 to VTEP 192.0.2.2:4789 hosting ..:0c (10.0.0.12, fd00::c),
/// and the VXLAN receive port p2.
pub mod fixture {
    use super::*;
    use crate::ports::PortCaps;
    use crate::tables::topology::{NetworkInfo, PortInfo, PortSecurity, Topology};

    /// The network's VNI.
    pub const VNI: u32 = 42;
    /// The local endpoint's MAC.
    pub const LOCAL: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    /// The endpoint behind VTEP B.
    pub const REMOTE_B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0b]);
    /// The endpoint behind VTEP C.
    pub const REMOTE_C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0c]);
    /// The local endpoint's port.
    pub const LOCAL_PORT: PortId = PortId(0);
    /// The tunnel port to VTEP B.
    pub const TUNNEL_B: PortId = PortId(1);
    /// The VXLAN receive port.
    pub const RX: PortId = PortId(2);
    /// The tunnel port to VTEP C.
    pub const TUNNEL_C: PortId = PortId(3);

    /// VTEP B's underlay address.
    pub fn vtep_b() -> SocketAddr {
        "192.0.2.1:4789".parse().expect("literal")
    }

    /// VTEP C's underlay address.
    pub fn vtep_c() -> SocketAddr {
        "192.0.2.2:4789".parse().expect("literal")
    }

    fn port(id: PortId, network: NetworkId, mac: Option<MacAddr>) -> PortInfo {
        PortInfo {
            id,
            name: format!("{id}"),
            network,
            owner: 0,
            queue_workers: 1,
            caps: PortCaps {
                offload: false,
                mtu: 1450,
                segments_gso: false,
                uso: false,
            },
            security: PortSecurity {
                mac,
                ipv4: vec![],
                ipv6: vec![],
            },
        }
    }

    /// The topology; `learn` selects static-peer mode.
    pub fn topology(learn: bool) -> Topology {
        let net = NetworkId(0);
        let mut t = Topology::default();
        t.set_network(NetworkInfo {
            id: net,
            name: "ovl".into(),
            ports: vec![],
            gateway: None,
            isolate: false,
            internal: false,
            mac_cap: 8192,
            subnet4: Some((Ipv4Addr::new(10, 0, 0, 0), 24)),
            subnet6: None,
            host_loopback: false,
        });
        t.add_port(port(LOCAL_PORT, net, Some(LOCAL)));
        t.overlay.set_role(TUNNEL_B, PortRole::Tunnel(net));
        t.add_port(port(TUNNEL_B, net, None));
        t.overlay.set_role(TUNNEL_C, PortRole::Tunnel(net));
        t.add_port(port(TUNNEL_C, net, None));
        t.overlay.set_role(RX, PortRole::VxlanRx);
        t.add_port(port(RX, NetworkId(u16::MAX), None));
        let remote = |mac, last, vtep| RemoteEndpoint {
            mac,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, last)),
            ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last))),
            vtep,
        };
        let spec = OverlaySpec {
            vni: VNI,
            vteps: vec![vtep_b(), vtep_c()],
            remotes: if learn {
                vec![]
            } else {
                vec![
                    remote(REMOTE_B, 11, vtep_b()),
                    remote(REMOTE_C, 12, vtep_c()),
                ]
            },
            learn,
            mtu: crate::dataplane::OVERLAY_MTU,
        };
        t.overlay.set_net(
            net,
            compile(&spec, vec![(vtep_b(), TUNNEL_B), (vtep_c(), TUNNEL_C)]),
        );
        t.refresh_overlay_locals();
        t
    }

    /// An Ethernet + IPv4 (UDP) frame from `src` (IPv4 `sip`) to `dst`.
    pub fn ipv4_frame(dst: MacAddr, src: MacAddr, sip: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&sip.octets());
        f.extend_from_slice(&[10, 0, 0, 99]);
        f.resize(60, 0);
        f
    }

    /// A broadcast ARP request from `src` (`sip`) for `target`.
    pub fn arp_request(src: MacAddr, sip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        f.extend_from_slice(&MacAddr::BROADCAST.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&sip.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f.resize(60, 0);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn compile_indexes_remotes_and_locals() {
        let t = topology(false);
        let net = t.overlay.net(NetworkId(0)).expect("overlay");
        assert_eq!(t.overlay.network_of_vni(VNI), Some(NetworkId(0)));
        assert_eq!(net.remotes[&REMOTE_B].port, TUNNEL_B);
        assert_eq!(net.by_ipv4[&Ipv4Addr::new(10, 0, 0, 12)], REMOTE_C);
        assert!(net.local_macs.contains(&LOCAL));
        assert_eq!(net.local_macs.len(), 1, "tunnel ports are not local");
        assert_eq!(
            net.tunnel_from("192.0.2.2".parse().expect("ip")),
            Some(TUNNEL_C)
        );
        assert_eq!(
            net.tunnel_from("::ffff:192.0.2.1".parse().expect("ip")),
            Some(TUNNEL_B)
        );
        assert_eq!(net.tunnel_from("192.0.2.9".parse().expect("ip")), None);
        assert!(t.overlay.is_tunnel(TUNNEL_B) && !t.overlay.is_tunnel(LOCAL_PORT));
    }

    #[test]
    fn clear_net_forgets_the_vni() {
        let mut t = topology(true);
        t.overlay.clear_net(NetworkId(0));
        assert!(!t.overlay.any());
        assert!(t.overlay.net(NetworkId(0)).is_none());
    }
}
