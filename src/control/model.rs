//! The control plane's data model (CNM): networks, endpoints, sandboxes and
//! publications, with the validation and parsing that makes them trustworthy
//! once constructed, and the deterministic MAC derivation that keeps addresses
//! stable across daemon restarts.

use core::fmt;
use core::str::FromStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::net::{Ipv4Net, Ipv6Net};
use crate::wire::MacAddr;

/// Default MTU of a network.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU accepted (the IPv4 minimum datagram every host must take).
pub const MIN_MTU: u16 = 576;
/// Largest MTU accepted (what TAP devices and pasta/slirp4netns top out at).
pub const MAX_MTU: u16 = 65520;
/// Longest network, endpoint or alias name: each is a DNS label (`NAME`,
/// `NAME.NETWORK`, the PTR target `NAME.DOMAIN`), and labels stop at 63
/// bytes (RFC 1035).
pub const MAX_NAME_LEN: usize = 63;

/// Errors in user-supplied model values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A network or endpoint name with characters we do not allow.
    #[error("invalid {what} name {name:?}: use 1-63 characters from a-z, A-Z, 0-9, '_', '.', '-', starting with a letter or digit")]
    BadName {
        /// "network", "endpoint" or "alias".
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// MTU out of range.
    #[error("invalid MTU {0}: choose a value from 576 to 65520")]
    BadMtu(u32),
    /// An interface name Linux would refuse.
    #[error("invalid interface name {0:?}: use 1-15 characters, not \".\" or \"..\", without '/', ':' or whitespace")]
    BadIfname(String),
    /// A container id (as CNI defines it) with characters we do not allow.
    #[error("invalid container id {0:?}: use 1-256 characters from a-z, A-Z, 0-9, '_', '.', '-', starting with a letter or digit")]
    BadContainerId(String),
    /// A publication spec that does not parse.
    #[error("invalid port publication {spec:?}: {why}; expected [HOSTIP:]HOSTPORT[-END]:PORT[-END][/tcp|/udp], e.g. 8080:80, 127.0.0.1:5353:53/udp or 8000-8009:9000-9009")]
    BadPublication {
        /// The rejected spec.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
}

/// 1 to `max` characters from a-z, A-Z, 0-9, '_', '.', '-', starting with
/// a letter or digit: names, and CNI's container ids.
fn is_token(s: &str, max: usize) -> bool {
    s.len() <= max
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a network, endpoint or alias name.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), ModelError> {
    if is_token(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(ModelError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// Checks an interface name as Linux does (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadIfname(name.to_string()))
    }
}

/// Checks a container id: CNI's rule (a letter or digit, then letters,
/// digits, '_', '.', '-'), at most 256 characters.
pub fn validate_container_id(id: &str) -> Result<(), ModelError> {
    if is_token(id, 256) {
        Ok(())
    } else {
        Err(ModelError::BadContainerId(id.to_string()))
    }
}

/// Checks an MTU.
pub fn validate_mtu(mtu: u32) -> Result<u16, ModelError> {
    u16::try_from(mtu)
        .ok()
        .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
        .ok_or(ModelError::BadMtu(mtu))
}

/// How a network reaches its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// One host: the switch forwards between local endpoints.
    #[default]
    Bridge,
    /// Several hosts joined by VXLAN.
    Overlay,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Bridge => "bridge",
            Driver::Overlay => "overlay",
        })
    }
}

/// A network (broadcast domain) as the user defined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Unique name.
    pub name: String,
    /// Driver.
    pub driver: Driver,
    /// IPv4 subnet.
    pub subnet4: Ipv4Net,
    /// IPv4 address of the switch's gateway on this network.
    pub gateway4: Ipv4Addr,
    /// IPv6 subnet, if any.
    pub subnet6: Option<Ipv6Net>,
    /// IPv6 gateway address, if the network has IPv6.
    pub gateway6: Option<Ipv6Addr>,
    /// No traffic leaves the network through the gateway.
    pub internal: bool,
    /// Endpoints may only talk to the gateway.
    pub isolate: bool,
    /// MTU given to endpoints.
    pub mtu: u16,
    /// Most MAC addresses learned on the network (data-plane default if unset).
    pub mac_cap: Option<usize>,
    /// VXLAN network identifier (overlay only).
    pub vni: Option<u32>,
    /// Connections to the gateway address (other than DNS) go to the host's
    /// 127.0.0.1.
    #[serde(default)]
    pub host_loopback: bool,
}

impl Network {
    /// The gateway's MAC: stable for a given network name.
    pub fn gateway_mac(&self) -> MacAddr {
        gateway_mac(&self.name)
    }
}

/// The network namespace an endpoint lives in, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxTarget {
    /// The network namespace of a process.
    Pid(u32),
    /// A network namespace file (e.g. `/run/netns/x`), optionally with the
    /// user namespace that owns it.
    Netns {
        /// Path of the network namespace file.
        path: PathBuf,
        /// Path of the owning user namespace file, if any.
        #[serde(default)]
        userns: Option<PathBuf>,
    },
}

impl fmt::Display for SandboxTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxTarget::Pid(p) => write!(f, "pid {p}"),
            SandboxTarget::Netns { path, .. } => write!(f, "netns {}", path.display()),
        }
    }
}

/// Identity of a namespace: device and inode of its nsfs file. Two targets
/// name the same sandbox iff their identities are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamespaceId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
}

/// Transport protocol of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// An inclusive, non-empty range of ports, none of them 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (>= start).
    pub end: u16,
}

impl PortRange {
    /// Number of ports.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never true (ranges are non-empty); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses `PORT` or `START-END`; the error says why not.
    pub(crate) fn parse(s: &str) -> Result<PortRange, String> {
        let port = |p: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{p:?} is not a port from 1 to 65535"))
        };
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if end < start {
            return Err(format!("port range {s:?} ends before it starts"));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A published port (range): host address and ports forwarded to the
/// endpoint's ports. Written and read as `[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]`.
/// Without a host address it listens on all of the host's addresses, IPv4
/// and IPv6 (IPv4 only on a host without IPv6), as Docker's `-p` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Publication {
    /// Host address to listen on (all addresses if unset).
    pub host_ip: Option<IpAddr>,
    /// Host ports.
    pub host_ports: PortRange,
    /// Container ports (same length as `host_ports`).
    pub container_ports: PortRange,
    /// Protocol.
    pub proto: Proto,
}

impl FromStr for Publication {
    type Err = ModelError;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ModelError::BadPublication {
            spec: spec.to_string(),
            why,
        };
        let (rest, proto) = proto_suffix(spec).map_err(bad)?;
        let (host_ip, ports) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, ports) = bracketed_ipv6(v6).map_err(bad)?;
            (Some(IpAddr::V6(ip)), ports)
        } else {
            match rest.matches(':').count() {
                1 => (None, rest),
                2 => {
                    let (ip, ports) = rest.split_once(':').unwrap_or_default();
                    (Some(IpAddr::V4(host_ipv4(ip).map_err(bad)?)), ports)
                }
                _ => return Err(bad("expected HOSTPORT:PORT".into())),
            }
        };
        let (h, c) = ports
            .split_once(':')
            .ok_or_else(|| bad("expected HOSTPORT:PORT".into()))?;
        let host_ports = PortRange::parse(h).map_err(bad)?;
        let container_ports = PortRange::parse(c).map_err(bad)?;
        same_length(host_ports, container_ports).map_err(bad)?;
        Ok(Publication {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }
}

/// A spec without its `/tcp` or `/udp` suffix, and the protocol (tcp when
/// there is none).
pub(crate) fn proto_suffix(spec: &str) -> Result<(&str, Proto), String> {
    match spec.rsplit_once('/') {
        Some((r, "tcp")) => Ok((r, Proto::Tcp)),
        Some((r, "udp")) => Ok((r, Proto::Udp)),
        Some((_, p)) => Err(format!("unknown protocol {p:?} (use tcp or udp)")),
        None => Ok((spec, Proto::Tcp)),
    }
}

/// A spec's IPv4 host address.
pub(crate) fn host_ipv4(ip: &str) -> Result<Ipv4Addr, String> {
    ip.parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address (write IPv6 as [ADDR])"))
}

/// Checks that a spec's host and container ranges have the same length.
pub(crate) fn same_length(host: PortRange, container: PortRange) -> Result<(), String> {
    if host.len() == container.len() {
        return Ok(());
    }
    Err(format!(
        "host range {host} and container range {container} differ in length"
    ))
}

/// The `[IPV6]:` host address of a spec (given without its `[`) and the
/// rest after it.
pub(crate) fn bracketed_ipv6(v6: &str) -> Result<(Ipv6Addr, &str), String> {
    let (ip, rest) = v6
        .split_once("]:")
        .ok_or_else(|| "unterminated [IPv6] host address".to_string())?;
    let ip: Ipv6Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
    Ok((ip, rest))
}

/// Writes a spec's `HOSTIP:` (`[IPV6]:`), if it has one.
pub(crate) fn fmt_host_ip(f: &mut fmt::Formatter<'_>, ip: Option<IpAddr>) -> fmt::Result {
    match ip {
        Some(IpAddr::V4(ip)) => write!(f, "{ip}:"),
        Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:"),
        None => Ok(()),
    }
}

impl fmt::Display for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_host_ip(f, self.host_ip)?;
        write!(
            f,
            "{}:{}/{}",
            self.host_ports, self.container_ports, self.proto
        )
    }
}

impl Serialize for Publication {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Publication {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An endpoint: one interface of one sandbox on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Unique id (12 hex digits).
    pub id: String,
    /// Name, unique within its network (DNS name).
    pub name: String,
    /// Network name.
    pub network: String,
    /// Extra DNS names.
    pub aliases: Vec<String>,
    /// The sandbox, as the user named it.
    pub sandbox: SandboxTarget,
    /// The sandbox's namespace identity when attached, to recognise it after a
    /// daemon restart.
    pub netns_id: NamespaceId,
    /// Interface name inside the sandbox (eth0, eth1, ...).
    pub ifname: String,
    /// MAC of the interface.
    #[serde(with = "mac_text")]
    pub mac: MacAddr,
    /// IPv4 address (the endpoint's lease).
    pub ipv4: Ipv4Addr,
    /// IPv6 address, if the network has IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// Whether this interface carries the sandbox's default route.
    pub default_route: bool,
    /// Published ports.
    pub publications: Vec<Publication>,
    /// Whether the port may only use the endpoint's own MAC and addresses
    /// as sources (on unless connected with `--no-port-security`).
    #[serde(default = "enabled")]
    pub port_security: bool,
    /// The container id a runtime attached this endpoint for (CNI's
    /// `CNI_CONTAINERID`); with the interface name, the key a runtime's
    /// DEL, CHECK and GC find it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The CNI network configuration (its `name`) that attached it, which
    /// may differ from the switchyard network: a configuration's DEL and GC
    /// touch only their own endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_network: Option<String>,
}

/// Serde default of switches that are on unless turned off.
pub fn enabled() -> bool {
    true
}

/// Serde for [`MacAddr`] as its `aa:bb:..` text.
pub mod mac_text {
    use super::*;

    /// Writes the MAC as text.
    pub fn serialize<S: Serializer>(mac: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    /// Reads the MAC from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`, so
/// derived MACs and ids survive an upgrade.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The gateway MAC of network `name`: `02:5e:` + 32 hash bits.
pub fn gateway_mac(name: &str) -> MacAddr {
    MacAddr::local_from_u32(0x5e, fnv1a(&[b"gw", name.as_bytes()]) as u32)
}

/// The MAC of endpoint `endpoint` on `network`, salted to step past a
/// collision: `0a:` + 40 hash bits, so it never equals a gateway MAC.
pub fn endpoint_mac(network: &str, endpoint: &str, salt: u32) -> MacAddr {
    let h = fnv1a(&[network.as_bytes(), endpoint.as_bytes(), &salt.to_be_bytes()]).to_be_bytes();
    MacAddr([0x0a, h[0], h[1], h[2], h[3], h[4]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Publication, ModelError> {
        s.parse()
    }

    #[test]
    fn publication_forms() {
        let a = p("8080:80").unwrap();
        assert_eq!(a.host_ip, None);
        assert_eq!((a.host_ports.start, a.container_ports.start), (8080, 80));
        assert_eq!(a.proto, Proto::Tcp);
        assert_eq!(a.to_string(), "8080:80/tcp");
        let b = p("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(b.host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(b.proto, Proto::Udp);
        let c = p("8000-8010:80-90").unwrap();
        assert_eq!(c.host_ports.len(), 11);
        assert_eq!(c.to_string(), "8000-8010:80-90/tcp");
        let d = p("[::1]:8080:80/tcp").unwrap();
        assert_eq!(d.to_string(), "[::1]:8080:80/tcp");
        assert_eq!(p(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn publication_errors() {
        for bad in [
            "",
            "80",
            "0:80",
            "80:0",
            "65536:80",
            "8080:80/sctp",
            "a:80",
            "1.2.3:80:80",
            "::1:80:80",
            "[::1:80:80",
            "8010-8000:80-90",
            "8000-8010:80",
            "1:2:3:4",
            "+80:80",
            "80:80/",
            "[zz]:80:80",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.to_string().contains("expected [HOSTIP:]"), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("network", "default").is_ok());
        assert!(validate_name("network", "a.b-c_9").is_ok());
        assert!(validate_name("endpoint", &"x".repeat(63)).is_ok());
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(64), "é"] {
            assert!(validate_name("network", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names_and_container_ids() {
        for good in ["eth0", "net1", "a", "x.y-z_0@1", &"i".repeat(15)] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "tab\t",
            &"i".repeat(16),
            "é",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(validate_container_id(&"f".repeat(64)).is_ok());
        assert!(validate_container_id("pod_1.x-2").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"f".repeat(257)] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mtu_range() {
        assert_eq!(validate_mtu(1500), Ok(1500));
        assert!(validate_mtu(575).is_err());
        assert!(validate_mtu(65521).is_err());
        assert_eq!(validate_mtu(65520), Ok(65520));
        assert!(validate_mtu(100_000).is_err());
    }

    #[test]
    fn macs_are_stable_local_unicast_and_distinct() {
        let m = endpoint_mac("default", "web", 0);
        assert_eq!(m, endpoint_mac("default", "web", 0));
        assert_ne!(m, endpoint_mac("default", "web", 1));
        assert_ne!(m, endpoint_mac("other", "web", 0));
        assert!(!m.is_multicast() && m.0[0] & 2 == 2);
        let g = gateway_mac("default");
        assert!(!g.is_multicast() && g.0[0] & 2 == 2);
        assert_ne!(g.0[0], m.0[0]);
    }

    #[test]
    fn sandbox_json_shape() {
        let t: SandboxTarget = serde_json::from_str(r#"{"pid":42}"#).unwrap();
        assert_eq!(t, SandboxTarget::Pid(42));
        let t: SandboxTarget =
            serde_json::from_str(r#"{"netns":{"path":"/run/netns/a"}}"#).unwrap();
        assert_eq!(
            t,
            SandboxTarget::Netns {
                path: "/run/netns/a".into(),
                userns: None
            }
        );
    }
}
