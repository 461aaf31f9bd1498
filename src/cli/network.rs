//! `switchyard network create | ls | inspect | rm`.

use std::net::Ipv4Addr;
use std::path::Path;

use clap::{Args, Subcommand};

use super::{client, print, table, CliError};
use crate::control::api::{ByName, NetworkCreate, NetworkDetail, Request};
use crate::control::model::{Driver, Network};
use crate::control::net::{Ipv4Net, Ipv6Net};

/// Network verbs.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    Ls,
    /// Show a network and its endpoints as JSON.
    Inspect {
        /// Network name.
        name: String,
    },
    /// Remove a network without endpoints.
    Rm {
        /// Network name.
        name: String,
    },
}

/// Arguments of `network create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network name.
    pub name: String,
    /// Driver: bridge (this host) or overlay (VXLAN across hosts; needs the
    /// daemon's --advertise).
    #[arg(long, value_enum, default_value_t = Driver::Bridge)]
    pub driver: Driver,
    /// IPv4 subnet (default: a free /24 from the pool).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<Ipv4Net>,
    /// IPv4 gateway (default: first host of the subnet).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 subnet.
    #[arg(long, value_name = "CIDR")]
    pub ipv6_subnet: Option<Ipv6Net>,
    /// No outside access.
    #[arg(long)]
    pub internal: bool,
    /// Endpoints cannot reach each other, only the gateway.
    #[arg(long)]
    pub isolate: bool,
    /// VXLAN network identifier (overlay only).
    #[arg(long, value_name = "N")]
    pub vni: Option<u32>,
    /// MTU (576-65520; default 1500, 1450 on overlay networks).
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// Let sandboxes reach the host's 127.0.0.1 through the gateway address.
    #[arg(long)]
    pub host_loopback: bool,
    /// Most MAC addresses the network learns (default 8192).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::control::MAX_MAC_CAP as u64))]
    pub mac_cap: Option<u64>,
}

/// Runs a network verb.
pub fn network(socket: &Path, cmd: NetworkCommand) -> Result<(), CliError> {
    let mut c = client(socket)?;
    match cmd {
        NetworkCommand::Create(a) => {
            let n: Network = c.call(&Request::NetworkCreate(NetworkCreate {
                name: a.name,
                driver: a.driver,
                subnet: a.subnet,
                gateway: a.gateway,
                ipv6_subnet: a.ipv6_subnet,
                internal: a.internal,
                isolate: a.isolate,
                vni: a.vni,
                mtu: a.mtu,
                mac_cap: a.mac_cap.map(|n| n as usize),
                host_loopback: a.host_loopback,
            }))?;
            let vni = n.vni.map(|v| format!(", vni {v}")).unwrap_or_default();
            print(&format!(
                "created network {} ({}, gateway {}{vni})\n",
                n.name, n.subnet4, n.gateway4
            ))
        }
        NetworkCommand::Ls => {
            let nets: Vec<Network> = c.call(&Request::NetworkList)?;
            let rows: Vec<Vec<String>> = nets
                .iter()
                .map(|n| {
                    let mut opts = Vec::new();
                    if n.internal {
                        opts.push("internal".to_string());
                    }
                    if n.isolate {
                        opts.push("isolate".to_string());
                    }
                    if n.host_loopback {
                        opts.push("host-loopback".to_string());
                    }
                    if let Some(cap) = n.mac_cap {
                        opts.push(format!("mac-cap={cap}"));
                    }
                    if let Some(vni) = n.vni {
                        opts.push(format!("vni={vni}"));
                    }
                    opts.push(format!("mtu={}", n.mtu));
                    vec![
                        n.name.clone(),
                        n.driver.to_string(),
                        n.subnet4.to_string(),
                        n.gateway4.to_string(),
                        n.subnet6
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        opts.join(","),
                    ]
                })
                .collect();
            print(&table(
                &["NAME", "DRIVER", "SUBNET", "GATEWAY", "IPV6", "OPTIONS"],
                &rows,
            ))
        }
        NetworkCommand::Inspect { name } => {
            let d: NetworkDetail = c.call(&Request::NetworkInspect(ByName { name }))?;
            let text = serde_json::to_string_pretty(&d).unwrap_or_default();
            print(&(text + "\n"))
        }
        NetworkCommand::Rm { name } => {
            let n: Network = c.call(&Request::NetworkRemove(ByName { name }))?;
            print(&format!("removed network {}\n", n.name))
        }
    }
}
