//! `switchyard unpublish`: withdraws a published port.

use std::path::Path;

use clap::Args;

use super::{client, print, CliError};
use crate::control::api::{Request, UnpublishSpec};
use crate::control::model::Endpoint;
use crate::control::publication_pattern::PublicationPattern;

/// Arguments of `unpublish`.
#[derive(Debug, Args)]
pub struct UnpublishArgs {
    /// Endpoint id, name, or NETWORK/NAME.
    pub endpoint: String,
    /// [HOSTIP:]HOSTPORT[:PORT][/tcp|/udp]: enough of a publication to
    /// name one, e.g. 8080 (tcp), 5353/udp, 8080:80 or 127.0.0.1:8080.
    pub spec: PublicationPattern,
}

/// Runs `unpublish`.
pub fn unpublish(socket: &Path, a: UnpublishArgs) -> Result<(), CliError> {
    let ep: Endpoint = client(socket)?.call(&Request::Unpublish(UnpublishSpec {
        endpoint: a.endpoint,
        spec: a.spec,
    }))?;
    print(&format!(
        "{}/{} no longer publishes {}\n",
        ep.network, ep.name, a.spec
    ))
}
