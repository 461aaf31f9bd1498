//! DNS options shared by `daemon` and `up`.

use clap::Args;

use super::CliError;
use crate::dns::records::{DnsSettings, DEFAULT_DOMAIN};

/// How the gateways answer DNS.
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    /// Search domain under which sandbox names resolve (also written to
    /// sandboxes' resolv.conf).
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_DOMAIN)]
    pub dns_domain: String,
    /// TTL of answers for sandbox names, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub dns_ttl: u32,
}

impl DnsArgs {
    /// The validated settings.
    pub fn settings(&self) -> Result<DnsSettings, CliError> {
        DnsSettings::new(&self.dns_domain, self.dns_ttl).ok_or_else(|| {
            CliError::Invalid(format!(
                "--dns-domain {:?} is not a domain name (labels of letters, digits and '-', separated by dots)",
                self.dns_domain
            ))
        })
    }
}
