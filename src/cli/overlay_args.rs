//! Overlay options of `daemon`: this host's VTEP, static peers and the
//! cluster store.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::control::cluster::{Cluster, ClusterConfig, DEFAULT_LEASE_TTL};
use crate::control::daemon::{parse_peer, ClusterStore, OverlaySettings};
use crate::control::error::DaemonError;
use crate::wire::vxlan::DEFAULT_PORT;

/// How the daemon joins overlay networks.
#[derive(Debug, Clone, Args)]
pub struct OverlayArgs {
    /// Cluster store: etcd://HOST[:PORT][,HOST[:PORT]...], the client URLs
    /// of etcd members (tried in turn; port 2379 by default).
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
    /// Seconds this host's records outlive it in the cluster store after a
    /// crash (its lease TTL; 2 to 3600, default 10); needs --cluster-store.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub cluster_ttl: Option<u64>,
}

impl OverlayArgs {
    /// The validated settings, or `None` when the host takes no part in
    /// overlay networks.
    pub fn settings(&self) -> Result<Option<OverlaySettings>, CliError> {
        if self.cluster_ttl.is_some() && self.cluster_store.is_none() {
            return Err(CliError::Invalid(
                "--cluster-ttl sets the lease of this host's records in the cluster \
                 store: it needs --cluster-store"
                    .into(),
            ));
        }
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

    /// Connects to the cluster store, if one is given (after
    /// [`OverlayArgs::settings`] checked the rest).
    pub fn cluster(
        &self,
        overlay: Option<&OverlaySettings>,
    ) -> Result<Option<Box<dyn ClusterStore>>, CliError> {
        let (Some(url), Some(o)) = (&self.cluster_store, overlay) else {
            return Ok(None);
        };
        let mut config = ClusterConfig::new(url, o.advertise).map_err(DaemonError::from)?;
        config.vxlan_port = o.vxlan_port;
        config.lease_ttl = self
            .cluster_ttl
            .map_or(DEFAULT_LEASE_TTL, Duration::from_secs);
        let cluster = Cluster::connect(config).map_err(DaemonError::from)?;
        tracing::info!("cluster store {url} connected as host {}", o.advertise);
        Ok(Some(Box::new(cluster)))
    }
}
