//! What `unpublish` names: a publication given as much as the user cares to
//! write (`8080`, `8080/udp`, `8080:80`, `127.0.0.1:8080`, the spec as
//! published, or `ps`'s `0.0.0.0:8080->80/tcp`), and the one publication of
//! an endpoint it selects, or why it selects none or several.

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::model::{
    bracketed_ipv6, fmt_host_ip, host_ipv4, proto_suffix, same_length, PortRange, Proto,
    Publication,
};

/// Errors in an `unpublish` spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid publication {spec:?}: {why}; expected [HOSTIP:]HOSTPORT[-END][:PORT[-END]][/tcp|/udp], e.g. 8080, 8080/udp, 8080:80 or 127.0.0.1:8080:80/tcp")]
pub struct BadPattern {
    /// The rejected spec.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

/// A publication as `unpublish` names it: host ports (the range exactly as
/// published) and protocol (default tcp), and optionally the host address
/// and container ports. Written and read as
/// `[HOSTIP:]HOSTPORT[-END][:PORT[-END]][/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicationPattern {
    /// Host address; unset matches any.
    pub host_ip: Option<IpAddr>,
    /// Host ports.
    pub host_ports: PortRange,
    /// Container ports; unset matches any.
    pub container_ports: Option<PortRange>,
    /// Protocol.
    pub proto: Proto,
}

/// Why a pattern selects no single publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Nothing published matches.
    None,
    /// These publications match.
    Several(Vec<Publication>),
}

impl PublicationPattern {
    /// Whether `p` is a publication this pattern names. A host address of
    /// `0.0.0.0` or `::` also names a publication without one (which
    /// listens there).
    pub fn matches(&self, p: &Publication) -> bool {
        let ip = match (self.host_ip, p.host_ip) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => want.is_unspecified(),
        };
        ip && self.proto == p.proto
            && self.host_ports == p.host_ports
            && self.container_ports.is_none_or(|c| c == p.container_ports)
    }

    /// The one publication of `published` this pattern names.
    pub fn select(&self, published: &[Publication]) -> Result<Publication, Selection> {
        let hits: Vec<Publication> = published
            .iter()
            .filter(|p| self.matches(p))
            .copied()
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(Selection::None),
            _ => Err(Selection::Several(hits)),
        }
    }
}

impl From<Publication> for PublicationPattern {
    fn from(p: Publication) -> Self {
        PublicationPattern {
            host_ip: p.host_ip,
            host_ports: p.host_ports,
            container_ports: Some(p.container_ports),
            proto: p.proto,
        }
    }
}

impl FromStr for PublicationPattern {
    type Err = BadPattern;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| BadPattern {
            spec: spec.to_string(),
            why,
        };
        // `ps` writes HOSTPORT->PORT, as Docker does.
        let written = spec.replacen("->", ":", 1);
        let (rest, proto) = proto_suffix(&written).map_err(bad)?;
        let (host_ip, ports) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, ports) = bracketed_ipv6(v6).map_err(bad)?;
            (Some(IpAddr::V6(ip)), ports)
        } else {
            match rest.split_once(':') {
                // Ports have no dots, IPv4 addresses do.
                Some((ip, ports)) if ip.contains('.') => {
                    (Some(IpAddr::V4(host_ipv4(ip).map_err(bad)?)), ports)
                }
                _ => (None, rest),
            }
        };
        let (host_ports, container_ports) = match ports.split_once(':') {
            Some((h, c)) => (h, Some(c)),
            None => (ports, None),
        };
        let host_ports = PortRange::parse(host_ports).map_err(bad)?;
        let container_ports = container_ports
            .map(PortRange::parse)
            .transpose()
            .map_err(bad)?;
        if let Some(c) = container_ports {
            same_length(host_ports, c).map_err(bad)?;
        }
        Ok(PublicationPattern {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }
}

impl fmt::Display for PublicationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_host_ip(f, self.host_ip)?;
        write!(f, "{}", self.host_ports)?;
        if let Some(c) = self.container_ports {
            write!(f, ":{c}")?;
        }
        write!(f, "/{}", self.proto)
    }
}

impl Serialize for PublicationPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicationPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> PublicationPattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn publ(s: &str) -> Publication {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn forms() {
        for (spec, shown) in [
            ("8080", "8080/tcp"),
            ("8080/udp", "8080/udp"),
            ("8080:80", "8080:80/tcp"),
            ("8000-8009", "8000-8009/tcp"),
            ("127.0.0.1:8080", "127.0.0.1:8080/tcp"),
            ("127.0.0.1:8080:80/udp", "127.0.0.1:8080:80/udp"),
            ("[::1]:8080", "[::1]:8080/tcp"),
            ("[::]:8080:80", "[::]:8080:80/tcp"),
            ("0.0.0.0:8080->80/tcp", "0.0.0.0:8080:80/tcp"),
            ("[::]:8080->80/tcp", "[::]:8080:80/tcp"),
        ] {
            let p = pat(spec);
            assert_eq!(p.to_string(), shown, "{spec}");
            assert_eq!(pat(shown), p, "{spec}");
        }
        // Every publication's own spec names it.
        for spec in ["8080:80/tcp", "127.0.0.1:5353:53/udp", "[::1]:1-2:3-4/tcp"] {
            let p = publ(spec);
            assert_eq!(pat(spec), PublicationPattern::from(p));
            assert!(pat(spec).matches(&p), "{spec}");
        }
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "0",
            "8080:0",
            "8080/sctp",
            "a",
            "1.2.3:80",
            "::1:80",
            "[::1:80",
            "8010-8000",
            "8000-8010:80",
            "8080:80:90",
            "80/",
        ] {
            let e = bad.parse::<PublicationPattern>().unwrap_err();
            assert!(e.to_string().contains("expected [HOSTIP:]"), "{bad}: {e}");
        }
    }

    /// `unpublish` used to want the spec exactly as published.
    #[test]
    fn shorter_specs_select_the_publication() {
        let all = [
            publ("8080:80"),
            publ("127.0.0.1:9090:90/udp"),
            publ("127.0.0.1:7070:70"),
            publ("127.0.0.2:7070:71"),
            publ("[::1]:6060:60"),
            publ("8000-8009:9000-9009"),
        ];
        let one = |s: &str| pat(s).select(&all);
        for s in [
            "8080",
            "8080/tcp",
            "8080:80",
            "8080:80/tcp",
            "0.0.0.0:8080:80/tcp",
            "[::]:8080",
            "0.0.0.0:8080->80/tcp",
        ] {
            assert_eq!(one(s), Ok(all[0]), "{s}");
        }
        assert_eq!(one("9090/udp"), Ok(all[1]));
        assert_eq!(one("127.0.0.1:9090/udp"), Ok(all[1]));
        assert_eq!(one("127.0.0.1:7070"), Ok(all[2]));
        assert_eq!(one("7070:71"), Ok(all[3]));
        assert_eq!(one("6060"), Ok(all[4]));
        assert_eq!(one("8000-8009"), Ok(all[5]));
        assert_eq!(one("7070"), Err(Selection::Several(vec![all[2], all[3]])));
        for none in [
            "9090",
            "8080/udp",
            "8080:81",
            "127.0.0.1:8080",
            "0.0.0.0:6060",
            "8000",
            "8000-8010",
            "1234",
        ] {
            assert_eq!(one(none), Err(Selection::None), "{none}");
        }
    }
}
