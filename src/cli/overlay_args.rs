//! Overlay options of `daemon`: this host's VTEP, static peers and the
//! cluster store.

use std::net::IpAddr;

use clap::Args;

use super::CliError;
use crate::control::daemon::{parse_peer, OverlaySettings};
use crate::wire::vxlan::DEFAULT_PORT;

/// How the daemon joins overlay networks.
#[derive(Debug, Clone, Args)]
pub struct OverlayArgs {
    /// Cluster store URL, e.g. etcd://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub cluster_store: Option<String>,
    /// This host's underlay address: its VTEP, where peers send VXLAN.
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// A static overlay peer's VTEP, IP[:PORT] (repeatable).
    #[arg(long, value_name = "IP[:PORT]")]
    pub peer: Vec<String>,
    /// VXLAN UDP port (default 4789).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan_port: Option<u16>,
}

impl OverlayArgs {
    /// The validated settings, or `None` when the host takes no part in
    /// overlay networks.
    pub fn settings(&self) -> Result<Option<OverlaySettings>, CliError> {
        let Some(advertise) = self.advertise else {
            if !self.peer.is_empty() || self.vxlan_port.is_some() || self.cluster_store.is_some() {
                return Err(CliError::Invalid(
                    "--peer, --vxlan-port and --cluster-store need --advertise IP \
                     (this host's underlay address)"
                        .into(),
                ));
            }
            return Ok(None);
        };
        if advertise.is_unspecified() || advertise.is_multicast() {
            return Err(CliError::Invalid(format!(
                "--advertise {advertise}: give this host's own unicast underlay address"
            )));
        }
        if self.cluster_store.is_some() {
            return Err(CliError::Unsupported("--cluster-store is".into()));
        }
        let vxlan_port = self.vxlan_port.unwrap_or(DEFAULT_PORT);
        let peers = self
            .peer
            .iter()
            .map(|p| parse_peer(p, vxlan_port))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::Invalid)?;
        Ok(Some(OverlaySettings {
            advertise,
            vxlan_port,
            peers,
        }))
    }
}
