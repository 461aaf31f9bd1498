//! `switchyard connect`: attaches an existing sandbox to a network.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use clap::Args;

use super::{client, print, CliError};
use crate::control::api::{Connect, Request};
use crate::control::model::{Endpoint, Publication, SandboxTarget};

/// Arguments of `connect`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sandbox").required(true).args(["netns", "pid"])))]
pub struct ConnectArgs {
    /// Network name.
    pub network: String,
    /// Network namespace file of the sandbox.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// User namespace file owning --netns (default: the one the kernel
    /// reports as its owner).
    // `requires` alone let `--pid N --userns PATH` through, --userns ignored.
    #[arg(long, value_name = "PATH", requires = "netns", conflicts_with = "pid")]
    pub userns: Option<PathBuf>,
    /// A process in the sandbox.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Endpoint name (default: ep1, ep2, ...).
    #[arg(long)]
    pub name: Option<String>,
    /// Extra DNS name (repeatable).
    #[arg(long = "alias", value_name = "A")]
    pub aliases: Vec<String>,
    /// Static IPv4 address.
    #[arg(long, value_name = "IP")]
    pub ip: Option<Ipv4Addr>,
    /// Static IPv6 address (network with an IPv6 subnet, not an overlay).
    #[arg(long, value_name = "IP6")]
    pub ip6: Option<Ipv6Addr>,
    /// Publish [HOSTIP:]HOSTPORT:PORT[/tcp|/udp] (repeatable); without
    /// HOSTIP on 0.0.0.0 and [::] (0.0.0.0 alone on a host without IPv6).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<Publication>,
    /// Let the sandbox send from any MAC and address (a bridge or VMs
    /// inside it); by default only its own are accepted.
    #[arg(long)]
    pub no_port_security: bool,
    /// Interface name in the sandbox (default: the first free of eth0,
    /// eth1, ...).
    #[arg(long, value_name = "NAME")]
    pub ifname: Option<String>,
}

/// Runs `connect`.
pub fn connect(socket: &Path, a: ConnectArgs) -> Result<(), CliError> {
    let target = match (a.pid, a.netns) {
        (Some(pid), None) => SandboxTarget::Pid(pid),
        (None, Some(path)) => SandboxTarget::Netns {
            path,
            userns: a.userns,
        },
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --netns PATH or --pid PID",
            ))
        }
    };
    let ep: Endpoint = client(socket)?.call(&Request::Connect(Connect {
        network: a.network,
        target,
        name: a.name,
        aliases: a.aliases,
        ip: a.ip,
        ip6: a.ip6,
        publish: a.publish,
        port_security: !a.no_port_security,
        ifname: a.ifname,
        container_id: None,
        cni_network: None,
    }))?;
    print(&format!(
        "connected {} to {} as {} ({}, {}, {})\n",
        ep.sandbox, ep.network, ep.name, ep.ifname, ep.ipv4, ep.mac
    ))
}
