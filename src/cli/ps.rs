//! `switchyard ps`: lists endpoints.

use std::path::Path;

use clap::Args;

use super::{client, print, table, CliError};
use crate::control::api::Request;
use crate::control::model::Endpoint;

/// Arguments of `ps` (none yet).
#[derive(Debug, Args)]
pub struct PsArgs {}

/// Runs `ps`.
pub fn ps(socket: &Path, _a: PsArgs) -> Result<(), CliError> {
    let eps: Vec<Endpoint> = client(socket)?.call(&Request::Ps)?;
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            let published: Vec<String> = e.publications.iter().map(ToString::to_string).collect();
            vec![
                e.network.clone(),
                e.name.clone(),
                e.ipv4.to_string(),
                e.mac.to_string(),
                e.ifname.clone(),
                if published.is_empty() {
                    "-".into()
                } else {
                    published.join(",")
                },
            ]
        })
        .collect();
    print(&table(
        &["NETWORK", "NAME", "IP", "MAC", "TAP", "PUBLISHED"],
        &rows,
    ))
}
