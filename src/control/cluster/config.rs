//! Cluster store configuration: the `etcd://HOST:PORT[,HOST:PORT]` URL, this
//! host's identity in the cluster and the timing knobs. Everything is
//! validated here, before a thread starts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::ClusterError;

/// Key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "/switchyard";
/// TTL of this host's lease: how long a crashed host's records outlive it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Bound on one blocking call (all its round trips to etcd together).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The IANA VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// etcd's client port, used when the URL names none.
pub const DEFAULT_ETCD_PORT: u16 = 2379;
/// Shortest lease etcd grants (it silently raises shorter ones).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// How to reach the cluster store and who this host is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://HOST:PORT`), from [`parse_store_url`].
    pub endpoints: Vec<String>,
    /// Key prefix of every record; starts with `/`, no trailing `/`.
    pub prefix: String,
    /// Unique id of this host in the cluster (default: the advertise address).
    pub host: String,
    /// Underlay address other hosts send VXLAN to.
    pub advertise: IpAddr,
    /// UDP port of this host's VTEP.
    pub vxlan_port: u16,
    /// TTL of this host's lease (whole seconds, at least 2 s).
    pub lease_ttl: Duration,
    /// Bound on each blocking call and on each request made while connecting.
    pub op_timeout: Duration,
}

impl ClusterConfig {
    /// A configuration with defaults from `--cluster-store URL --advertise IP`.
    pub fn new(url: &str, advertise: IpAddr) -> Result<ClusterConfig, ClusterError> {
        Ok(ClusterConfig {
            endpoints: parse_store_url(url)?,
            prefix: DEFAULT_PREFIX.to_string(),
            host: advertise.to_string(),
            advertise,
            vxlan_port: DEFAULT_VXLAN_PORT,
            lease_ttl: DEFAULT_LEASE_TTL,
            op_timeout: DEFAULT_OP_TIMEOUT,
        })
    }

    /// This host's VTEP: the advertise address and the VXLAN port.
    pub fn vtep(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.vxlan_port)
    }

    /// The lease TTL in whole seconds, as etcd takes it.
    pub fn lease_ttl_secs(&self) -> i64 {
        let secs = self.lease_ttl.as_secs() + u64::from(self.lease_ttl.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// Checks every field; [`super::Cluster::connect`] calls it.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |why: String| Err(ClusterError::BadConfig(why));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoint given".into());
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//")
        {
            return bad(format!(
                "key prefix {:?} must start with '/' and not end with '/', e.g. /switchyard",
                self.prefix
            ));
        }
        let host_ok = !self.host.is_empty()
            && self.host.len() <= 253
            && self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !host_ok {
            return bad(format!(
                "host id {:?} must be 1-253 characters from a-z, A-Z, 0-9, '.', '-', '_', ':'",
                self.host
            ));
        }
        if self.advertise.is_unspecified() {
            return bad("--advertise must be a concrete address other hosts can reach".into());
        }
        if self.vxlan_port == 0 {
            return bad("the VXLAN port must not be 0".into());
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return bad(format!(
                "lease TTL {:?} is below etcd's minimum of 2 s",
                self.lease_ttl
            ));
        }
        if self.op_timeout.is_zero() {
            return bad("the operation timeout must not be zero".into());
        }
        Ok(())
    }
}

/// Parses `etcd://HOST[:PORT][,HOST[:PORT]...]` into etcd client URLs
/// (`http://HOST:PORT`). IPv6 hosts go in brackets; the port defaults to 2379.
pub fn parse_store_url(url: &str) -> Result<Vec<String>, ClusterError> {
    let bad = |why: &str| ClusterError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("the scheme must be etcd://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("no HOST:PORT after etcd://"));
    }
    rest.split(',')
        .map(|part| {
            let (host, port) = split_host_port(part).map_err(|why| bad(&why))?;
            Ok(format!("http://{host}:{port}"))
        })
        .collect()
}

fn split_host_port(part: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = part.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{part:?} has '[' without ']'"))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after ']'"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match part.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (part.to_string(), None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')));
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match port {
        None => DEFAULT_ETCD_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &str) -> Vec<String> {
        parse_store_url(u).expect("valid URL")
    }

    #[test]
    fn parses_one_and_several_endpoints() {
        assert_eq!(urls("etcd://127.0.0.1:2379"), ["http://127.0.0.1:2379"]);
        assert_eq!(
            urls("etcd://10.0.0.1:1,etcd-b.example:23790,[::1]:5"),
            [
                "http://10.0.0.1:1",
                "http://etcd-b.example:23790",
                "http://[::1]:5"
            ]
        );
        assert_eq!(urls("etcd://db/"), ["http://db:2379"]);
        assert_eq!(urls("etcd://[fd00::1]"), ["http://[fd00::1]:2379"]);
    }

    #[test]
    fn rejects_bad_urls_with_the_reason() {
        for (u, why) in [
            ("http://127.0.0.1:2379", "scheme"),
            ("etcd://", "no HOST:PORT"),
            ("etcd://h:0", "not a port"),
            ("etcd://h:99999", "not a port"),
            ("etcd://h:x", "not a port"),
            ("etcd://a,,b", "not a host"),
            ("etcd://h/path", "not a host"),
            ("etcd://[::1", "without ']'"),
            ("etcd://[zz]:1", "not an IPv6"),
            ("etcd://[::1]x", "unexpected"),
        ] {
            let e = parse_store_url(u).expect_err(u).to_string();
            assert!(e.contains(why), "{u}: {e}");
            assert!(e.contains("etcd://HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn defaults_and_validation() {
        let c = ClusterConfig::new("etcd://127.0.0.1:2379", "192.0.2.7".parse().expect("ip"))
            .expect("config");
        assert_eq!(c.host, "192.0.2.7");
        assert_eq!(c.prefix, "/switchyard");
        assert_eq!(c.vtep().to_string(), "192.0.2.7:4789");
        assert_eq!(c.lease_ttl_secs(), 10);
        c.validate().expect("valid");
        let with = |f: &dyn Fn(&mut ClusterConfig)| {
            let mut c = c.clone();
            f(&mut c);
            c.validate()
        };
        assert!(with(&|c| c.prefix = "switchyard".into()).is_err());
        assert!(with(&|c| c.prefix = "/s/".into()).is_err());
        assert!(with(&|c| c.host = "a/b".into()).is_err());
        assert!(with(&|c| c.host = String::new()).is_err());
        assert!(with(&|c| c.advertise = "0.0.0.0".parse().expect("ip")).is_err());
        assert!(with(&|c| c.lease_ttl = Duration::from_secs(1)).is_err());
        assert!(with(&|c| c.op_timeout = Duration::ZERO).is_err());
        let mut c2 = c.clone();
        c2.lease_ttl = Duration::from_millis(2500);
        assert_eq!(c2.lease_ttl_secs(), 3);
    }
}
