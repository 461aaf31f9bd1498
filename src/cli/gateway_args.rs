//! NAT options shared by `daemon` and `up`, and the open-file limit NAT
//! flows need.

use clap::Args;

use crate::gateway::flow::FlowLimits;

/// Limits and threads of the gateway's NAT.
#[derive(Debug, Clone, Args)]
pub struct NatArgs {
    /// Most NAT flows (TCP connections, UDP flows) in all (at least 1).
    #[arg(long, value_name = "N", default_value_t = FlowLimits::default().total,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub nat_max_flows: usize,
    /// Most NAT flows of one sandbox address (at least 1).
    #[arg(long, value_name = "N", default_value_t = FlowLimits::default().per_sandbox,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub nat_max_flows_per_sandbox: usize,
    /// Gateway-stack threads serving NAT flows, published ports and DNS over
    /// TCP; each owns the sandboxes whose port maps to it (default: one per
    /// worker).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub gateway_threads: Option<u16>,
}

impl NatArgs {
    /// The limits.
    pub fn limits(&self) -> FlowLimits {
        FlowLimits {
            total: self.nat_max_flows,
            per_sandbox: self.nat_max_flows_per_sandbox,
        }
    }
}

/// Every NAT flow holds a host socket: lets the daemon open as many files as
/// the hard limit allows (commonly 1024 soft, far more hard).
pub fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit to {hard}: {e}");
            }
        }
    }
}
