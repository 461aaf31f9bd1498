//! `switchyard unpublish`: withdraws a published port.

use std::path::Path;

use clap::Args;

use super::{client, print, CliError};
use crate::control::api::{PublishSpec, Request};
use crate::control::model::{Endpoint, Publication};

/// Arguments of `unpublish`.
#[derive(Debug, Args)]
pub struct UnpublishArgs {
    /// Endpoint id, name, or NETWORK/NAME.
    pub endpoint: String,
    /// [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]
    pub spec: Publication,
}

/// Runs `unpublish`.
pub fn unpublish(socket: &Path, a: UnpublishArgs) -> Result<(), CliError> {
    let ep: Endpoint = client(socket)?.call(&Request::Unpublish(PublishSpec {
        endpoint: a.endpoint,
        spec: a.spec,
    }))?;
    print(&format!(
        "{}/{} no longer publishes {}\n",
        ep.network, ep.name, a.spec
    ))
}
