//! Overlay networks in the data plane: the VXLAN endpoint (one socket per
//! worker, each polled like a TAP) and each overlay network's tunnel ports,
//! one per remote VTEP, kept across changes that leave a VTEP in place.

use super::*;

/// The VXLAN endpoint: each worker's sockets and receive port.
pub(super) struct VxlanState {
    bind: std::net::SocketAddr,
    sockets: Vec<Arc<VxlanSockets>>,
}

/// An overlay network's current spec and its tunnel ports, one per remote
/// VTEP, with the VNI and MTU they were built for.
pub(super) struct OverlayState {
    vni: u32,
    mtu: u16,
    tunnels: Vec<(std::net::SocketAddr, PortId)>,
}

/// Largest inner L3 packet on an overlay network: a 1500-byte underlay minus
/// the 50 bytes of outer Ethernet, IPv4, UDP and VXLAN headers.
pub const OVERLAY_MTU: u16 = 1450;

/// A network index no network uses: the VXLAN receive ports belong to none.
const NO_NETWORK: NetworkId = NetworkId(u16::MAX);

impl Dataplane {
    /// Opens the VXLAN endpoint: one socket per worker bound to
    /// `config.bind` (`SO_REUSEPORT`), each polled by its worker like a TAP.
    /// Calling it again with the same address does nothing.
    pub fn start_vxlan(&mut self, config: VxlanConfig) -> Result<(), DataplaneError> {
        if let Some(v) = &self.vxlan {
            if v.bind == config.bind {
                return Ok(());
            }
            return Err(DataplaneError::Vxlan(
                config.bind,
                std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("VXLAN already started on {}", v.bind),
                ),
            ));
        }
        let mut bind = config.bind;
        let mut sockets: Vec<Arc<VxlanSockets>> = Vec::with_capacity(self.workers());
        for _ in 0..self.workers() {
            let s = match sockets.first() {
                None => VxlanSockets::open(bind),
                Some(first) => VxlanSockets::open_sharing(bind, first),
            }
            .map_err(|e| DataplaneError::Vxlan(bind, e))?;
            // Port 0 asks for any port: the other workers share the one given.
            bind = s.local_addr().map_err(|e| DataplaneError::Vxlan(bind, e))?;
            sockets.push(Arc::new(s));
        }
        for (w, s) in sockets.iter().enumerate() {
            let port = VxlanRxPort::new(&format!("vxlan-rx/w{w}"), s.clone());
            self.add_port_with_role(
                PortSpec {
                    network: NO_NETWORK,
                    security: PortSecurity::default(),
                    worker: Some(w),
                },
                vec![Box::new(port)],
                PortRole::VxlanRx,
            )?;
        }
        self.vxlan = Some(VxlanState { bind, sockets });
        Ok(())
    }

    /// The address the VXLAN endpoint listens on (with the port the kernel
    /// chose if it was started on port 0).
    pub fn vxlan_addr(&self) -> Option<std::net::SocketAddr> {
        self.vxlan.as_ref().map(|v| v.bind)
    }

    /// Makes `id` an overlay network, or replaces its overlay state (VNI,
    /// VTEPs, remote endpoints). Takes effect with the next batch. Tunnel
    /// ports of VTEPs that stay are kept (with their counters and learned
    /// MACs); this host's own address in `spec.vteps` is ignored.
    pub fn set_overlay(&mut self, id: NetworkId, spec: OverlaySpec) -> Result<(), DataplaneError> {
        let Some(vx) = self.vxlan.as_ref() else {
            return Err(DataplaneError::VxlanNotStarted);
        };
        let (bind, sockets) = (vx.bind, vx.sockets.clone());
        if spec.vni == 0 || spec.vni > MAX_VNI {
            return Err(DataplaneError::BadVni(spec.vni));
        }
        let topo = self.topo.load_full();
        let net = topo.network(id).ok_or(DataplaneError::UnknownNetwork(id))?;
        if topo
            .overlay
            .network_of_vni(spec.vni)
            .is_some_and(|n| n != id)
        {
            return Err(DataplaneError::VniInUse(spec.vni));
        }
        let mtu = spec.mtu;
        let net_name = net.name.clone();
        let mut wanted: Vec<std::net::SocketAddr> = Vec::new();
        for v in &spec.vteps {
            if *v != bind && !wanted.contains(v) {
                wanted.push(*v);
            }
        }
        let old = self.overlays.remove(&id);
        let mut tunnels = Vec::new();
        let mut stale = Vec::new();
        if let Some(old) = old {
            for (v, p) in old.tunnels {
                if old.vni == spec.vni && old.mtu == mtu && wanted.contains(&v) {
                    tunnels.push((v, p));
                } else {
                    stale.push(p);
                }
            }
        }
        let mut result = Ok(());
        for v in &wanted {
            if tunnels.iter().any(|(t, _)| t == v) {
                continue;
            }
            let queues: Vec<Box<dyn Port>> = sockets
                .iter()
                .map(|s| {
                    Box::new(TunnelPort::new(
                        &format!("vxlan:{net_name}:{v}"),
                        spec.vni,
                        *v,
                        mtu,
                        s.clone(),
                    )) as Box<dyn Port>
                })
                .collect();
            let port = self.add_port_with_role(
                PortSpec {
                    network: id,
                    security: PortSecurity::default(),
                    worker: None,
                },
                queues,
                PortRole::Tunnel(id),
            );
            match port {
                Ok(p) => tunnels.push((*v, p)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let compiled = crate::tables::overlay::compile(&spec, tunnels.clone());
        self.publish(|t| t.overlay.set_net(id, compiled));
        for p in stale {
            self.remove_port(p)?;
        }
        self.overlays.insert(
            id,
            OverlayState {
                vni: spec.vni,
                mtu,
                tunnels,
            },
        );
        result
    }

    /// Makes `id` a plain network again: its tunnel ports are removed and
    /// VXLAN for its VNI is no longer accepted. Does nothing for a network
    /// that is not an overlay network.
    pub fn clear_overlay(&mut self, id: NetworkId) -> Result<(), DataplaneError> {
        let Some(state) = self.overlays.remove(&id) else {
            return Ok(());
        };
        self.publish(|t| t.overlay.clear_net(id));
        for (_, p) in state.tunnels {
            self.remove_port(p)?;
        }
        Ok(())
    }
}
