//! `switchyard disconnect`: detaches an endpoint from a network.

use std::path::Path;

use clap::Args;

use super::{client, print, CliError};
use crate::control::api::{Disconnect, Request};
use crate::control::model::Endpoint;

/// Arguments of `disconnect`.
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Network name.
    pub network: String,
    /// Endpoint name or id.
    pub endpoint: String,
}

/// Runs `disconnect`.
pub fn disconnect(socket: &Path, a: DisconnectArgs) -> Result<(), CliError> {
    let ep: Endpoint = client(socket)?.call(&Request::Disconnect(Disconnect {
        network: a.network,
        endpoint: a.endpoint,
        id: None,
    }))?;
    print(&format!(
        "disconnected {} from {} (released {})\n",
        ep.name, ep.network, ep.ipv4
    ))
}
