//! DNS options shared by `daemon` and `up`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::dns::forward::UpstreamSource;
use crate::dns::records::{DnsSettings, DEFAULT_DOMAIN, MAX_DOMAIN_LEN};
use crate::dns::upstream::RESOLV_CONF;
use crate::dns::DNS_PORT;

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
    /// Upstream resolver IP[:PORT] for names that are not sandboxes'
    /// (repeatable; replaces the nameservers of --resolv-conf).
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Resolver file whose nameservers are the upstreams (re-read when it
    /// changes).
    #[arg(long, value_name = "PATH", default_value = RESOLV_CONF)]
    pub resolv_conf: PathBuf,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT (IPv6 with a port: [ADDR]:PORT)"))
}

impl DnsArgs {
    /// Where upstream resolvers come from.
    pub fn upstream(&self) -> UpstreamSource {
        if self.dns_upstream.is_empty() {
            UpstreamSource::ResolvConf(self.resolv_conf.clone())
        } else {
            UpstreamSource::Static(self.dns_upstream.clone())
        }
    }

    /// The validated settings.
    pub fn settings(&self) -> Result<DnsSettings, CliError> {
        DnsSettings::new(&self.dns_domain, self.dns_ttl).ok_or_else(|| {
            CliError::Invalid(format!(
                "--dns-domain {:?} is not a domain name of at most {MAX_DOMAIN_LEN} characters (labels of letters, digits and '-', separated by dots)",
                self.dns_domain
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_with_and_without_port() {
        assert_eq!(
            parse_upstream("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("fd00::1").unwrap(),
            "[fd00::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[fd00::1]:54").unwrap(),
            "[fd00::1]:54".parse().unwrap()
        );
        assert!(parse_upstream("resolver.example").is_err());
    }
}
