//! `switchyard ps`: lists endpoints, this host's and (with a cluster store)
//! other hosts'.

use std::path::Path;

use clap::Args;

use super::{client, print, table, CliError};
use crate::control::api::{EndpointStatus, Request};
use crate::control::daemon::EndpointRecord;

/// Arguments of `ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print `{"local": [endpoints as the API gives them], "remote":
    /// [other hosts' records]}` as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn ipv6(ip: Option<std::net::Ipv6Addr>) -> String {
    ip.map_or_else(|| "-".into(), |ip| ip.to_string())
}

/// Runs `ps`.
pub fn ps(socket: &Path, a: PsArgs) -> Result<(), CliError> {
    let mut c = client(socket)?;
    let eps: Vec<EndpointStatus> = c.call(&Request::Ps)?;
    let remote: Vec<EndpointRecord> = c.call(&Request::RemoteEndpoints)?;
    if a.json {
        let all = serde_json::json!({"local": eps, "remote": remote});
        return print(&format!("{all:#}\n"));
    }
    let mut rows: Vec<Vec<String>> = eps
        .iter()
        .map(|s| {
            let e = &s.endpoint;
            let published = &s.listening;
            vec![
                e.network.clone(),
                e.name.clone(),
                e.ipv4.to_string(),
                ipv6(e.ipv6),
                e.mac.to_string(),
                e.ifname.clone(),
                if published.is_empty() {
                    "-".into()
                } else {
                    published.join(",")
                },
                "local".into(),
            ]
        })
        .collect();
    rows.extend(remote.iter().map(|e| {
        vec![
            e.network.clone(),
            e.name.clone(),
            e.ipv4.to_string(),
            ipv6(e.ipv6),
            e.mac.to_string(),
            "-".into(),
            "-".into(),
            e.host.clone(),
        ]
    }));
    print(&table(
        &[
            "NETWORK",
            "NAME",
            "IP",
            "IPV6",
            "MAC",
            "TAP",
            "PUBLISHED",
            "HOST",
        ],
        &rows,
    ))
}
