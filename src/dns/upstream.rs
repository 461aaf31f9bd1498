//! Upstream resolvers of the DNS forwarder: where they come from, parsing
//! `resolv.conf`, and re-reading it (at most once per second) when it changes.
//! Never lists an address that is the switch's own DNS.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::DNS_PORT;

/// The system's resolver configuration, the default upstream source.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Most `nameserver` lines used, as glibc's `MAXNS`: more would only lengthen
/// the time before a client learns that every server failed.
pub const MAX_NAMESERVERS: usize = 3;
/// How often, at most, `resolv.conf`'s metadata is looked at.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where upstream servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSource {
    /// `nameserver` lines of a `resolv.conf` file (default
    /// [`RESOLV_CONF`]), port 53, re-read when the file's modification time,
    /// length or inode changes; checked at most once per
    /// [`RECHECK_INTERVAL`].
    ResolvConf(PathBuf),
    /// A fixed list, used as given (except addresses of the switch's own DNS).
    Static(Vec<SocketAddr>),
}

impl Default for UpstreamSource {
    fn default() -> Self {
        UpstreamSource::ResolvConf(PathBuf::from(RESOLV_CONF))
    }
}

/// Why the upstream list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `resolv.conf` could not be read; DNS forwarding answers SERVFAIL until
    /// it can.
    #[error("cannot read resolver configuration {path}: check that it exists and is readable")]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// What the read said.
        #[source]
        source: io::Error,
    },
}

/// Says whether an address is the switch's own DNS (forwarding there would
/// loop).
pub type IsOwn = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Parses `resolv.conf` text into upstream addresses: `nameserver` lines with
/// an IPv4 or IPv6 address (optionally `%scope` for link-local IPv6), port 53,
/// in file order, without duplicates, at most [`MAX_NAMESERVERS`]. Comments
/// (`#`, `;`), other keywords, unparsable lines, unspecified addresses and
/// addresses for which `is_own` is true are skipped.
pub fn parse_resolv_conf(text: &str, is_own: &dyn Fn(IpAddr) -> bool) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(parse_nameserver) else {
            continue;
        };
        if addr.ip().is_unspecified() || is_own(addr.ip()) || out.contains(&addr) {
            continue;
        }
        out.push(addr);
        if out.len() == MAX_NAMESERVERS {
            break;
        }
    }
    out
}

/// One `nameserver` value: `192.0.2.1`, `2001:db8::1`, `fe80::1%eth0` or
/// `fe80::1%2`.
fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, scope) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope_id = match scope.parse::<u32>() {
        Ok(index) => index,
        Err(_) => nix::net::if_::if_nametoindex(scope).ok()?,
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope_id)))
}

/// What identifies one version of a file, cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            device: meta.dev(),
        })
    }
}

/// The current upstream list, kept up to date with its source. Owned by the
/// forwarder thread; time is passed in so tests need not wait.
pub struct Upstreams {
    source: UpstreamSource,
    is_own: IsOwn,
    current: Arc<[SocketAddr]>,
    /// Stamp of the file version `current` was read from (`None`: missing).
    stamp: Option<FileStamp>,
    /// When the file was last looked at (`None`: never).
    checked: Option<Instant>,
}

impl Upstreams {
    /// A list for `source`, read on the first [`Upstreams::current`].
    pub fn new(source: UpstreamSource, is_own: IsOwn) -> Upstreams {
        let current: Arc<[SocketAddr]> = match &source {
            UpstreamSource::Static(list) => {
                let mut kept: Vec<SocketAddr> = Vec::with_capacity(list.len());
                for addr in list {
                    if !is_own(addr.ip()) && !kept.contains(addr) {
                        kept.push(*addr);
                    }
                }
                kept.into()
            }
            UpstreamSource::ResolvConf(_) => Arc::from(Vec::new()),
        };
        Upstreams {
            source,
            is_own,
            current,
            stamp: None,
            checked: None,
        }
    }

    /// The upstream servers to use now, re-reading `resolv.conf` first if at
    /// least [`RECHECK_INTERVAL`] passed since the last look and the file
    /// changed. A file that cannot be read yields an empty list.
    pub fn current(&mut self, now: Instant) -> Arc<[SocketAddr]> {
        if let UpstreamSource::ResolvConf(path) = &self.source {
            let due = self
                .checked
                .is_none_or(|at| now.saturating_duration_since(at) >= RECHECK_INTERVAL);
            if due {
                let first = self.checked.is_none();
                self.checked = Some(now);
                let stamp = FileStamp::of(path);
                if first || stamp != self.stamp {
                    self.stamp = stamp;
                    self.current = match read_resolv_conf(path, &*self.is_own) {
                        Ok(list) => {
                            tracing::info!(path = %path.display(), upstreams = ?list, "DNS upstreams read");
                            list.into()
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "DNS forwarding has no upstream");
                            Arc::from(Vec::new())
                        }
                    };
                }
            }
        }
        Arc::clone(&self.current)
    }
}

/// Reads and parses a `resolv.conf` file (see [`parse_resolv_conf`]).
pub fn read_resolv_conf(
    path: &Path,
    is_own: &dyn Fn(IpAddr) -> bool,
) -> Result<Vec<SocketAddr>, UpstreamError> {
    let text = fs::read_to_string(path).map_err(|source| UpstreamError::ReadResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_resolv_conf(&text, is_own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sa(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// A file in the temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "switchyard-resolv-{tag}-{}.conf",
                std::process::id()
            ));
            fs::write(&path, text).expect("write temp resolv.conf");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn parses_nameservers_and_skips_the_rest() {
        let text = "# generated\n\
                    search example.org\n\
                    nameserver 192.0.2.1 # primary\n\
                    nameserver\t2001:db8::53\n\
                    ;nameserver 192.0.2.99\n\
                    nameserver not-an-address\n\
                    nameserver 10.0.0.1.5\n\
                    nameserver 0.0.0.0\n\
                    nameserver 192.0.2.1\n\
                    nameservers 192.0.2.7\n\
                    nameserver fe80::1%3\n\
                    options ndots:2\n\
                    \u{0}\u{7f}garbage \u{fffd}\n";
        let list = parse_resolv_conf(text, &|_| false);
        assert_eq!(
            list,
            vec![
                sa("192.0.2.1:53"),
                sa("[2001:db8::53]:53"),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("ip"), 53, 0, 3)),
            ]
        );
    }

    #[test]
    fn skips_own_addresses_and_keeps_at_most_three() {
        let own = Ipv4Addr::new(10, 89, 0, 1);
        let text = "nameserver 10.89.0.1\nnameserver 192.0.2.1\nnameserver 192.0.2.2\n\
                    nameserver 192.0.2.3\nnameserver 192.0.2.4\n";
        let list = parse_resolv_conf(text, &|ip| ip == IpAddr::V4(own));
        assert_eq!(
            list,
            vec![sa("192.0.2.1:53"), sa("192.0.2.2:53"), sa("192.0.2.3:53")]
        );
    }

    #[test]
    fn static_list_drops_own_addresses() {
        let is_own: IsOwn = Arc::new(|ip| ip == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
        let mut ups = Upstreams::new(
            UpstreamSource::Static(vec![sa("127.0.0.9:53"), sa("127.0.0.2:5353")]),
            is_own,
        );
        assert_eq!(&*ups.current(Instant::now()), &[sa("127.0.0.2:5353")]);
    }

    #[test]
    fn rereads_the_file_when_it_changes_at_most_once_per_second() {
        let file = TempFile::new("reread", "nameserver 192.0.2.1\n");
        let is_own: IsOwn = Arc::new(|_| false);
        let mut ups = Upstreams::new(UpstreamSource::ResolvConf(file.0.clone()), is_own);
        let t0 = Instant::now();
        assert_eq!(&*ups.current(t0), &[sa("192.0.2.1:53")]);

        fs::write(&file.0, "nameserver 192.0.2.2\nnameserver 2001:db8::2\n").expect("rewrite");
        // Within the recheck interval the old list stays.
        assert_eq!(
            &*ups.current(t0 + Duration::from_millis(500)),
            &[sa("192.0.2.1:53")]
        );
        let t1 = t0 + RECHECK_INTERVAL + Duration::from_millis(10);
        assert_eq!(
            &*ups.current(t1),
            &[sa("192.0.2.2:53"), sa("[2001:db8::2]:53")]
        );

        fs::remove_file(&file.0).expect("remove");
        assert!(ups.current(t1 + RECHECK_INTERVAL).is_empty());
    }

    #[test]
    fn missing_file_means_no_upstream() {
        let is_own: IsOwn = Arc::new(|_| false);
        let path = std::env::temp_dir().join("switchyard-resolv-does-not-exist.conf");
        let mut ups = Upstreams::new(UpstreamSource::ResolvConf(path.clone()), is_own);
        assert!(ups.current(Instant::now()).is_empty());
        assert!(matches!(
            read_resolv_conf(&path, &|_| false),
            Err(UpstreamError::ReadResolvConf { .. })
        ));
    }
}
