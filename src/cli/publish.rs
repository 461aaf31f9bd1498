//! `switchyard publish`: adds a published port to an endpoint.

use std::path::Path;

use clap::Args;

use super::{client, print, CliError};
use crate::control::api::{PublishSpec, Request};
use crate::control::model::{Endpoint, Publication};

/// Arguments of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Endpoint id, name, or NETWORK/NAME.
    pub endpoint: String,
    /// [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]; without HOSTIP on 0.0.0.0 and
    /// [::] (0.0.0.0 alone on a host without IPv6).
    pub spec: Publication,
}

/// Runs `publish`.
pub fn publish(socket: &Path, a: PublishArgs) -> Result<(), CliError> {
    let ep: Endpoint = client(socket)?.call(&Request::Publish(PublishSpec {
        endpoint: a.endpoint,
        spec: a.spec,
    }))?;
    print(&format!(
        "{}/{} publishes {}\n",
        ep.network, ep.name, a.spec
    ))
}
