//! `switchyard trace NET FRAME-SPEC`: explains, stage by stage, what the
//! pipeline does with a described frame from an endpoint (nothing is sent).

use std::path::Path;

use clap::Args;

use super::{client, print, table, CliError};
use crate::control::api::{Request, TraceReply, TraceRequest};
use crate::control::trace::FrameSpec;

/// Arguments of `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Network of the ingress endpoint.
    pub network: String,
    /// The frame: in=ENDPOINT,(arp=IP|icmp=IP|udp=IP:PORT|tcp=IP:PORT|ethertype=0xNNNN)[,src=MAC][,dst=MAC]
    /// (IPv6 too: icmp=fd00::1, udp=[fd00::1]:53)
    #[arg(value_name = "FRAME-SPEC")]
    pub frame: FrameSpec,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `trace`.
pub fn trace(socket: &Path, a: TraceArgs) -> Result<(), CliError> {
    let r: TraceReply = client(socket)?.call(&Request::Trace(TraceRequest {
        network: a.network,
        frame: a.frame,
    }))?;
    if a.json {
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        return print(&(text + "\n"));
    }
    let rows: Vec<Vec<String>> = r
        .report
        .steps
        .iter()
        .map(|s| vec![s.stage.clone(), s.action.clone()])
        .collect();
    let mut out = format!("frame: {}\ningress: {}\n\n", r.frame, r.report.in_port);
    out.push_str(&table(&["STAGE", "DECISION"], &rows));
    out.push_str(&format!("\nresult: {}\n", r.report.result));
    print(&out)
}
