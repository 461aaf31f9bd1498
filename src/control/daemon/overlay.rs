//! The daemon's overlay side: this host's VTEP (the `--advertise` address and
//! `--vxlan-port`), its static peers, and the VNI and address plan of overlay
//! networks. It turns them into the data plane's [`OverlaySpec`] for every
//! overlay network, after every change.
//!
//! Without a cluster store, hosts share nothing but the peer list given to
//! each: VNIs default to a hash of the network name (every host derives the
//! same one), addresses come from this host's [`Stripe`] of the subnet, and
//! remote MACs are learned from the frames of accepted peers.

use std::net::{IpAddr, SocketAddr};

use super::Daemon;
use crate::control::error::DaemonError;
use crate::control::ipam::Stripe;
use crate::control::model::{fnv1a, Driver, Network};
use crate::tables::overlay::{OverlaySpec, VxlanConfig, MAX_VNI};
use crate::wire::vxlan::DEFAULT_PORT;

pub use crate::dataplane::OVERLAY_MTU;

/// VNIs below this are left for users who pick their own.
const FIRST_DERIVED_VNI: u32 = 4096;

/// How this host takes part in overlay networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySettings {
    /// This host's underlay address: VXLAN is received there and peers send
    /// to it.
    pub advertise: IpAddr,
    /// UDP port of VXLAN (default 4789).
    pub vxlan_port: u16,
    /// Static peers' VTEPs (without a cluster store).
    pub peers: Vec<SocketAddr>,
}

impl OverlaySettings {
    /// Settings with the default port and no peers.
    pub fn new(advertise: IpAddr) -> OverlaySettings {
        OverlaySettings {
            advertise,
            vxlan_port: DEFAULT_PORT,
            peers: Vec::new(),
        }
    }

    /// This host's VTEP.
    pub fn vtep(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.vxlan_port)
    }

    /// This host's share of overlay subnets: its place among the sorted
    /// underlay addresses of all hosts (peers and itself).
    pub fn stripe(&self) -> Stripe {
        let mut hosts: Vec<IpAddr> = self.peers.iter().map(SocketAddr::ip).collect();
        hosts.push(self.advertise);
        hosts.sort();
        hosts.dedup();
        let index = hosts.iter().position(|h| *h == self.advertise).unwrap_or(0);
        Stripe {
            index: index as u32,
            count: hosts.len() as u32,
        }
    }
}

/// Parses a `--peer` value: `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_peer(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| format!("bad peer {text:?}: expected IP, IP:PORT or [IPv6]:PORT"))
}

/// The VNI a network gets when none is given and no cluster store allocates
/// one: derived from its name, so every host picks the same.
pub fn derived_vni(name: &str) -> u32 {
    let span = u64::from(MAX_VNI - FIRST_DERIVED_VNI + 1);
    FIRST_DERIVED_VNI + (fnv1a(&[name.as_bytes()]) % span) as u32
}

impl Daemon {
    /// Opens the VXLAN socket when the daemon has an overlay address.
    pub(super) fn start_overlay(&mut self) -> Result<(), DaemonError> {
        if let Some(o) = &self.overlay {
            self.dataplane.start_vxlan(VxlanConfig { bind: o.vtep() })?;
            tracing::info!("VXLAN endpoint on {}", o.vtep());
        }
        Ok(())
    }

    /// Checks an overlay network request and picks its VNI (`None`: the
    /// cluster store allocates it).
    pub(super) fn overlay_vni(
        &self,
        name: &str,
        vni: Option<u32>,
    ) -> Result<Option<u32>, DaemonError> {
        if self.overlay.is_none() {
            return Err(DaemonError::Invalid(
                "the overlay driver needs this host's underlay address: start the daemon \
                 with --advertise IP (and --peer or --cluster-store)"
                    .into(),
            ));
        }
        let vni = match vni {
            Some(v) => v,
            None if self.has_cluster() => return Ok(None),
            None => derived_vni(name),
        };
        if vni == 0 || vni > MAX_VNI {
            return Err(DaemonError::Invalid(format!(
                "invalid VNI {vni}: use 1..={MAX_VNI}"
            )));
        }
        if let Some(other) = self
            .state
            .networks
            .iter()
            .find(|n| n.driver == Driver::Overlay && n.vni == Some(vni))
        {
            return Err(DaemonError::Invalid(format!(
                "VNI {vni} is already used by network {}",
                other.name
            )));
        }
        Ok(Some(vni))
    }

    /// The stripe of the subnet this host allocates from on `net`.
    pub(super) fn address_stripe(&self, net: &Network) -> Stripe {
        match (&self.overlay, net.driver) {
            (Some(o), Driver::Overlay) => o.stripe(),
            _ => Stripe::WHOLE,
        }
    }

    /// Hands the data plane the current overlay state of `net` (no-op for
    /// bridge networks).
    pub(super) fn apply_overlay(&mut self, net: &Network) -> Result<(), DaemonError> {
        let (Some(o), Driver::Overlay, Some(vni)) = (&self.overlay, net.driver, net.vni) else {
            return Ok(());
        };
        let Some(&id) = self.net_ids.get(&net.name) else {
            return Err(DaemonError::NoSuchNetwork(net.name.clone()));
        };
        let own = o.vtep();
        let remotes = self.remote_endpoints(&net.name);
        // Broadcast goes to the static peers and to every host with an
        // endpoint on the network.
        let mut vteps: Vec<SocketAddr> = o.peers.clone();
        vteps.extend(remotes.iter().map(|r| r.vtep));
        vteps.sort();
        vteps.dedup();
        vteps.retain(|v| *v != own);
        let spec = OverlaySpec {
            vni,
            vteps,
            remotes,
            // With a cluster store, remote endpoints come from it alone.
            learn: !self.has_cluster(),
            mtu: net.mtu,
        };
        self.dataplane.set_overlay(id, spec)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_and_without_port() {
        assert_eq!(
            parse_peer("10.0.0.2", 4789),
            Ok("10.0.0.2:4789".parse().unwrap())
        );
        assert_eq!(
            parse_peer("10.0.0.2:8472", 4789),
            Ok("10.0.0.2:8472".parse().unwrap())
        );
        assert_eq!(
            parse_peer("[fd00::2]:9", 4789),
            Ok("[fd00::2]:9".parse().unwrap())
        );
        assert_eq!(parse_peer("fd00::2", 1), Ok("[fd00::2]:1".parse().unwrap()));
        assert!(parse_peer("host:1", 1).is_err());
    }

    #[test]
    fn stripes_follow_sorted_hosts() {
        let mut a = OverlaySettings::new("10.0.0.2".parse().unwrap());
        a.peers = vec![
            "10.0.0.1:4789".parse().unwrap(),
            "10.0.0.3:4789".parse().unwrap(),
        ];
        assert_eq!(a.stripe(), Stripe { index: 1, count: 3 });
        let alone = OverlaySettings::new("10.0.0.2".parse().unwrap());
        assert_eq!(alone.stripe(), Stripe { index: 0, count: 1 });
    }

    #[test]
    fn derived_vnis_are_valid_and_stable() {
        for name in ["a", "web", "a-much-longer-network-name"] {
            let v = derived_vni(name);
            assert!((FIRST_DERIVED_VNI..=MAX_VNI).contains(&v));
            assert_eq!(v, derived_vni(name));
        }
    }
}
