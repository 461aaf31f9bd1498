//! `switchyard run`: arguments only; the implementation is merged separately.

use std::net::Ipv4Addr;
use std::path::Path;

use clap::Args;

use super::CliError;
use crate::control::model::Publication;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Network to join (repeatable; default: "default").
    #[arg(long = "network", value_name = "NET")]
    pub networks: Vec<String>,
    /// Endpoint name.
    #[arg(long)]
    pub name: Option<String>,
    /// Extra DNS name (repeatable).
    #[arg(long = "alias", value_name = "A")]
    pub aliases: Vec<String>,
    /// Static IPv4 address (on the first network).
    #[arg(long, value_name = "IP")]
    pub ip: Option<Ipv4Addr>,
    /// Publish [HOSTIP:]HOSTPORT:PORT[/tcp|/udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<Publication>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs `run`; returns the command's exit status.
pub fn run(socket: &Path, args: RunArgs) -> Result<i32, CliError> {
    let _ = (socket, args);
    Err(CliError::NotWired("run"))
}
