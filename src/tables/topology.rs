//! The topology snapshot: which ports exist, which network each belongs to,
//! who owns them, and each network's gateway and options. The control plane is
//! the single writer; it builds a new snapshot and publishes it with arc-swap,
//! and workers read the current one once per batch without locking.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::ports::{PortCaps, PortId};
use crate::tables::overlay::{OverlayTables, PortRole};
use crate::wire::MacAddr;

/// Dense index of a network in the data plane (not the user's name).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct NetworkId(pub u16);

/// Index of a worker thread.
pub type WorkerId = usize;

/// The switch's own presence on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    /// MAC the gateway answers ARP with.
    pub mac: MacAddr,
    /// IPv4 gateway address, if the network has IPv4.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 gateway address, if the network has IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

/// A network as the data plane sees it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    /// Its index.
    pub id: NetworkId,
    /// The user's name for it (for stats and traces).
    pub name: String,
    /// Every port attached: the flood list.
    pub ports: Vec<PortId>,
    /// The gateway, if the network has one.
    pub gateway: Option<GatewayInfo>,
    /// Endpoints may not talk to each other, only to the gateway.
    pub isolate: bool,
    /// No traffic leaves the network through the gateway.
    pub internal: bool,
    /// Most MAC addresses learned on this network.
    pub mac_cap: usize,
    /// IPv4 subnet (address, prefix length).
    pub subnet4: Option<(Ipv4Addr, u8)>,
    /// IPv6 subnet (address, prefix length).
    pub subnet6: Option<(Ipv6Addr, u8)>,
    /// The gateway address reaches the host's loopback.
    pub host_loopback: bool,
}

impl NetworkInfo {
    /// True if `ip` is on the network's own IPv6 subnet.
    pub fn on_subnet6(&self, ip: Ipv6Addr) -> bool {
        self.subnet6.is_some_and(|(net, len)| {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        })
    }

    /// True if `ip` is on the network's own IPv4 subnet.
    pub fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        self.subnet4.is_some_and(|(net, len)| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        })
    }
}

/// What a port may send (port security). Empty means anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSecurity {
    /// The only source MAC the port may use.
    pub mac: Option<MacAddr>,
    /// The only IPv4 source addresses the port may use.
    pub ipv4: Vec<Ipv4Addr>,
    /// The only IPv6 addresses the port may use besides `::` and link-local
    /// ones (empty: any).
    pub ipv6: Vec<Ipv6Addr>,
}

impl PortSecurity {
    /// True when nothing is checked: any MAC and address may be used.
    pub fn is_open(&self) -> bool {
        self.mac.is_none() && self.ipv4.is_empty() && self.ipv6.is_empty()
    }
}

/// A port as the data plane sees it.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// Its id.
    pub id: PortId,
    /// Name (TAP name or test name).
    pub name: String,
    /// The network it is attached to.
    pub network: NetworkId,
    /// The worker that polls its first queue (and runs traces for it).
    pub owner: WorkerId,
    /// Bit `w` set: worker `w` has a queue of this port and writes to it
    /// itself; other workers hand frames for it to `owner`.
    pub queue_workers: u64,
    /// What it can take.
    pub caps: PortCaps,
    /// What it may send.
    pub security: PortSecurity,
}

/// One immutable snapshot of ports and networks.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    ports: Vec<Option<PortInfo>>,
    networks: Vec<Option<NetworkInfo>>,
    /// VXLAN overlay state (VNIs, VTEPs, remote endpoints, port roles).
    pub overlay: OverlayTables,
}

impl Topology {
    /// The port with this id, if attached.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortInfo> {
        self.ports.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Whether port `id` is attached to `network`. A port id is reused once
    /// freed, maybe on another network: anything that remembered a port
    /// (a MAC entry, a learn message, a queued frame) checks this before
    /// sending there, so frames never cross networks.
    #[inline]
    pub fn port_on(&self, id: PortId, network: NetworkId) -> bool {
        self.port(id).is_some_and(|p| p.network == network)
    }

    /// The network with this id, if it exists.
    #[inline]
    pub fn network(&self, id: NetworkId) -> Option<&NetworkInfo> {
        self.networks.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Every attached port.
    pub fn ports(&self) -> impl Iterator<Item = &PortInfo> {
        self.ports.iter().flatten()
    }

    /// Every network.
    pub fn networks(&self) -> impl Iterator<Item = &NetworkInfo> {
        self.networks.iter().flatten()
    }

    /// The lowest free network index.
    pub fn free_network_id(&self) -> Option<NetworkId> {
        let i = self
            .networks
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.networks.len());
        u16::try_from(i).ok().map(NetworkId)
    }

    /// The lowest free port id.
    pub fn free_port_id(&self) -> PortId {
        let i = self
            .ports
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.ports.len());
        PortId(i as u32)
    }

    /// Adds or replaces a network.
    pub fn set_network(&mut self, net: NetworkInfo) {
        let i = net.id.0 as usize;
        if self.networks.len() <= i {
            self.networks.resize(i + 1, None);
        }
        self.networks[i] = Some(net);
    }

    /// Removes a network (its ports must be removed first).
    pub fn remove_network(&mut self, id: NetworkId) -> Option<NetworkInfo> {
        self.networks.get_mut(id.0 as usize).and_then(Option::take)
    }

    /// Adds a port and puts it on its network's flood list.
    pub fn add_port(&mut self, port: PortInfo) {
        let i = port.id.0 as usize;
        if let Some(Some(net)) = self.networks.get_mut(port.network.0 as usize) {
            if !net.ports.contains(&port.id) {
                net.ports.push(port.id);
            }
        }
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        self.ports[i] = Some(port);
    }

    /// Recomputes each overlay network's local MACs (the MACs its local
    /// ports are restricted to), after ports came or went.
    pub fn refresh_overlay_locals(&mut self) {
        let mut updates = Vec::new();
        for net in self.networks() {
            if self.overlay.net(net.id).is_none() {
                continue;
            }
            let macs = net
                .ports
                .iter()
                .filter(|p| self.overlay.role(**p) == PortRole::Local)
                .filter_map(|p| self.port(*p).and_then(|i| i.security.mac))
                .collect();
            updates.push((net.id, macs));
        }
        for (id, macs) in updates {
            self.overlay.set_local_macs(id, macs);
        }
    }

    /// Removes a port and takes it off its network's flood list.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortInfo> {
        self.overlay.set_role(id, PortRole::Local);
        let port = self.ports.get_mut(id.0 as usize).and_then(Option::take)?;
        if let Some(Some(net)) = self.networks.get_mut(port.network.0 as usize) {
            net.ports.retain(|p| *p != id);
        }
        Some(port)
    }
}

/// The published topology: one writer (the control plane), many lock-free readers.
pub type SharedTopology = Arc<ArcSwap<Topology>>;

/// A new, empty published topology.
pub fn shared_topology() -> SharedTopology {
    Arc::new(ArcSwap::from_pointee(Topology::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: u16) -> NetworkInfo {
        NetworkInfo {
            id: NetworkId(id),
            name: format!("n{id}"),
            ports: vec![],
            gateway: None,
            isolate: false,
            internal: false,
            mac_cap: 8192,
            subnet4: None,
            subnet6: None,
            host_loopback: false,
        }
    }

    fn port(id: u32, net: u16) -> PortInfo {
        PortInfo {
            id: PortId(id),
            name: format!("p{id}"),
            network: NetworkId(net),
            owner: 0,
            queue_workers: 1,
            caps: PortCaps {
                offload: true,
                mtu: 1500,
                segments_gso: false,
                uso: false,
            },
            security: PortSecurity::default(),
        }
    }

    #[test]
    fn ports_join_and_leave_flood_lists() {
        let mut t = Topology::default();
        t.set_network(net(0));
        t.set_network(net(2));
        assert_eq!(t.free_network_id(), Some(NetworkId(1)));
        t.add_port(port(0, 0));
        t.add_port(port(3, 0));
        t.add_port(port(1, 2));
        assert_eq!(
            t.network(NetworkId(0)).unwrap().ports,
            vec![PortId(0), PortId(3)]
        );
        assert_eq!(t.free_port_id(), PortId(2));
        t.remove_port(PortId(0));
        assert_eq!(t.network(NetworkId(0)).unwrap().ports, vec![PortId(3)]);
        assert!(t.port(PortId(0)).is_none());
        assert!(t.port(PortId(99)).is_none());
    }
}
