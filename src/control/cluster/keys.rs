//! Key layout of the cluster store. Every record lives under one prefix
//! (default `/switchyard`):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `P/networks/NET` | [`NetworkRecord`](super::NetworkRecord) | persistent |
//! | `P/vni/N` | network name (JSON string) | persistent, created with its network |
//! | `P/ipam/NET/IPV4` | [`IpamLease`](super::IpamLease) | owner host's lease |
//! | `P/endpoints/NET/NAME` | [`EndpointRecord`](super::EndpointRecord) | owner host's lease |
//! | `P/hosts/HOST` | [`HostRecord`](super::HostRecord) | the host's lease |
//!
//! Names are validated network/endpoint names and host ids, so none
//! contains `/` and every key parses back to exactly one [`Key`].

use std::net::Ipv4Addr;

/// A parsed key below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `networks/NET`
    Network(String),
    /// `vni/N`
    Vni(u32),
    /// `ipam/NET/IP`
    Ipam(String, Ipv4Addr),
    /// `endpoints/NET/NAME`
    Endpoint(String, String),
    /// `hosts/HOST`
    Host(String),
}

/// Builds and parses keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `prefix` (validated: starts with `/`, no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{prefix}/"),
        }
    }

    /// `P/`: everything the store watches.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The key of a parsed [`Key`].
    pub fn key(&self, key: &Key) -> String {
        let root = &self.root;
        match key {
            Key::Network(n) => format!("{root}networks/{n}"),
            Key::Vni(v) => format!("{root}vni/{v}"),
            Key::Ipam(n, ip) => format!("{root}ipam/{n}/{ip}"),
            Key::Endpoint(n, e) => format!("{root}endpoints/{n}/{e}"),
            Key::Host(h) => format!("{root}hosts/{h}"),
        }
    }

    /// `P/vni/`: every VNI claim.
    pub fn vnis(&self) -> String {
        format!("{}vni/", self.root)
    }

    /// `P/ipam/NET/`: every address lease of one network.
    pub fn ipam_of(&self, network: &str) -> String {
        format!("{}ipam/{network}/", self.root)
    }

    /// `P/endpoints/NET/`: every endpoint of one network.
    pub fn endpoints_of(&self, network: &str) -> String {
        format!("{}endpoints/{network}/", self.root)
    }

    /// Parses a full key; `None` for keys outside the layout (ignored).
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.root)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        match parts.as_slice() {
            ["networks", n] => Some(Key::Network(n.to_string())),
            ["vni", v] if !v.starts_with('+') => v.parse().ok().map(Key::Vni),
            ["ipam", n, ip] => ip.parse().ok().map(|ip| Key::Ipam(n.to_string(), ip)),
            ["endpoints", n, e] => Some(Key::Endpoint(n.to_string(), e.to_string())),
            ["hosts", h] => Some(Key::Host(h.to_string())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let k = Keys::new("/switchyard");
        let ip: Ipv4Addr = "10.1.0.5".parse().expect("ip");
        for (key, text) in [
            (Key::Network("front".into()), "/switchyard/networks/front"),
            (Key::Vni(256), "/switchyard/vni/256"),
            (
                Key::Ipam("front".into(), ip),
                "/switchyard/ipam/front/10.1.0.5",
            ),
            (
                Key::Endpoint("front".into(), "web".into()),
                "/switchyard/endpoints/front/web",
            ),
            (Key::Host("192.0.2.1".into()), "/switchyard/hosts/192.0.2.1"),
        ] {
            assert_eq!(k.key(&key), text);
            assert_eq!(k.parse(text.as_bytes()), Some(key));
        }
        assert_eq!(k.root(), "/switchyard/");
        assert_eq!(k.vnis(), "/switchyard/vni/");
        assert_eq!(k.ipam_of("front"), "/switchyard/ipam/front/");
        assert_eq!(k.endpoints_of("front"), "/switchyard/endpoints/front/");
    }

    #[test]
    fn foreign_keys_are_ignored() {
        let k = Keys::new("/sy");
        for bad in [
            "/other/networks/a",
            "/sy/networks/",
            "/sy/networks/a/b",
            "/sy/vni/x",
            "/sy/vni/+5",
            "/sy/vni/99999999999",
            "/sy/ipam/a/not-an-ip",
            "/sy/endpoints/a",
            "/sy/unknown/a",
            "/syx/networks/a",
        ] {
            assert_eq!(k.parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(k.parse(&[0xff, 0xfe]), None);
    }
}
