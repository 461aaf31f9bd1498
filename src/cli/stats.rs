//! `switchyard stats`: per-port traffic and every drop reason.

use std::path::Path;

use clap::Args;

use super::{client, print, table, CliError};
use crate::control::api::{Request, StatsReply};

/// Arguments of `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the counters and port owners as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `stats`.
pub fn stats(socket: &Path, a: StatsArgs) -> Result<(), CliError> {
    let r: StatsReply = client(socket)?.call(&Request::Stats)?;
    if a.json {
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        return print(&(text + "\n"));
    }
    let owner = |port| {
        r.endpoints.iter().find(|o| o.port == port).map_or_else(
            || "-".to_string(),
            |o| format!("{}/{}", o.network, o.endpoint),
        )
    };
    let ports: Vec<Vec<String>> = r
        .stats
        .ports
        .iter()
        .map(|p| {
            vec![
                p.port.to_string(),
                p.name.clone(),
                owner(p.port),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.rx_errors.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.tx_errors.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PORT", "NAME", "ENDPOINT", "RX_PKTS", "RX_BYTES", "RX_ERR", "TX_PKTS", "TX_BYTES",
            "TX_ERR",
        ],
        &ports,
    );
    let drops: Vec<Vec<String>> = r
        .stats
        .drops
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push('\n');
    out.push_str(&table(&["DROP_REASON", "FRAMES"], &drops));
    let events: Vec<Vec<String>> = r
        .stats
        .events
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push('\n');
    out.push_str(&table(&["EVENT", "COUNT"], &events));
    print(&out)
}
