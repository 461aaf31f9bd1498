//! The records stored in etcd (serde JSON values) and the in-memory mirror
//! of everything under the prefix, which keeps serving while etcd is away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::error::ClusterError;
use super::keys::{Key, Keys};
use crate::control::model::{mac_text, validate_mtu, validate_name};
use crate::control::net::{Ipv4Net, Ipv6Net};
use crate::wire::MacAddr;

/// An overlay network, shared by every host. Persistent (no lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Network name.
    pub name: String,
    /// IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Gateway address (owned by the switch on every host).
    pub gateway: Ipv4Addr,
    /// IPv6 subnet, if any.
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    /// VXLAN network identifier; `None` in a request asks for the lowest free
    /// one from 256 up; always set in a stored record.
    #[serde(default)]
    pub vni: Option<u32>,
    /// MTU inside the overlay.
    pub mtu: u16,
    /// No outside access.
    #[serde(default)]
    pub internal: bool,
    /// No traffic between endpoints.
    #[serde(default)]
    pub isolate: bool,
    /// Most MAC addresses each host learns on the network (`--mac-cap`);
    /// `None`: the daemon's default. Left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_cap: Option<u64>,
    /// TCP and UDP to the gateway reach the host's loopback
    /// (`--host-loopback`). Left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_loopback: bool,
}

pub use crate::tables::overlay::MAX_VNI;

impl NetworkRecord {
    /// Checks name, MTU, VNI range and that the gateway is a host address of
    /// the subnet.
    pub fn validate(&self) -> Result<(), ClusterError> {
        validate_name("network", &self.name)?;
        validate_mtu(u32::from(self.mtu))?;
        if let Some(vni) = self.vni {
            if !(1..=MAX_VNI).contains(&vni) {
                return Err(ClusterError::Invalid {
                    what: "VNI",
                    why: format!("{vni} is outside 1-{MAX_VNI}"),
                });
            }
        }
        if !super::alloc::usable(self.subnet, None, self.gateway) {
            return Err(ClusterError::Invalid {
                what: "gateway",
                why: format!("{} is not a host address of {}", self.gateway, self.subnet),
            });
        }
        Ok(())
    }

    /// `Ok` when `stored` is what this request describes (a request without
    /// a VNI matches any VNI), else the first difference.
    pub fn matches(&self, stored: &NetworkRecord) -> Result<(), String> {
        let diff = |field: &str, want: String, have: String| {
            Err(format!("{field} {want} requested, {have} stored"))
        };
        if self.subnet != stored.subnet {
            return diff("subnet", self.subnet.to_string(), stored.subnet.to_string());
        }
        if self.gateway != stored.gateway {
            return diff(
                "gateway",
                self.gateway.to_string(),
                stored.gateway.to_string(),
            );
        }
        if self.subnet6 != stored.subnet6 {
            return diff(
                "IPv6 subnet",
                format!("{:?}", self.subnet6),
                format!("{:?}", stored.subnet6),
            );
        }
        if self.vni.is_some() && self.vni != stored.vni {
            return diff(
                "VNI",
                format!("{:?}", self.vni),
                format!("{:?}", stored.vni),
            );
        }
        if self.mtu != stored.mtu {
            return diff("MTU", self.mtu.to_string(), stored.mtu.to_string());
        }
        if (self.internal, self.isolate) != (stored.internal, stored.isolate) {
            return diff(
                "internal/isolate",
                format!("{}/{}", self.internal, self.isolate),
                format!("{}/{}", stored.internal, stored.isolate),
            );
        }
        if self.mac_cap != stored.mac_cap {
            let text =
                |c: Option<u64>| c.map_or("no MAC cap".to_string(), |n| format!("MAC cap {n}"));
            return Err(format!(
                "{} requested, {} stored",
                text(self.mac_cap),
                text(stored.mac_cap)
            ));
        }
        if self.host_loopback != stored.host_loopback {
            return diff(
                "host-loopback",
                self.host_loopback.to_string(),
                stored.host_loopback.to_string(),
            );
        }
        Ok(())
    }
}

/// One endpoint of an overlay network on some host. Lives under its host's
/// lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Network name.
    pub network: String,
    /// Endpoint (DNS) name, unique in the network cluster-wide.
    pub name: String,
    /// Extra DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Endpoint MAC.
    #[serde(with = "mac_text")]
    pub mac: MacAddr,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address, if any.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Host id of the owner; must be this host's in `put_endpoint`.
    pub host: String,
    /// VTEP the endpoint is reached through.
    pub vtep: SocketAddr,
}

impl EndpointRecord {
    /// Checks the names.
    pub fn validate(&self) -> Result<(), ClusterError> {
        validate_name("network", &self.network)?;
        validate_name("endpoint", &self.name)?;
        for a in &self.aliases {
            validate_name("alias", a)?;
        }
        Ok(())
    }
}

/// A live host. Lives under its own lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host id.
    pub host: String,
    /// Underlay address.
    pub advertise: IpAddr,
    /// VTEP (advertise address and VXLAN port).
    pub vtep: SocketAddr,
}

/// Who holds an address. Lives under the holder host's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamLease {
    /// Holder host id.
    pub host: String,
    /// Holder endpoint name.
    pub endpoint: String,
}

/// Everything known about the cluster, as of `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// etcd revision the state reflects (0 before the first load).
    pub revision: i64,
    /// Networks by name.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// VNI claims: VNI to network name.
    pub vnis: BTreeMap<u32, String>,
    /// Endpoints by network, then name.
    pub endpoints: BTreeMap<String, BTreeMap<String, EndpointRecord>>,
    /// Address leases by network, then address.
    pub ipam: BTreeMap<String, BTreeMap<Ipv4Addr, IpamLease>>,
    /// Live hosts by id.
    pub hosts: BTreeMap<String, HostRecord>,
}

impl ClusterState {
    /// Every endpoint, network by network.
    pub fn all_endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.values().flat_map(|m| m.values())
    }

    /// Endpoints of `network` that live on other hosts than `host`: what the
    /// data plane needs as remote endpoints.
    pub fn remote_endpoints<'a>(
        &'a self,
        network: &str,
        host: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> {
        self.endpoints
            .get(network)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(move |e| e.host != host)
    }
}

impl ClusterState {
    /// VTEPs of the other hosts with an endpoint on `network`: where a
    /// broadcast is replicated to.
    pub fn remote_vteps(&self, network: &str, host: &str) -> BTreeSet<SocketAddr> {
        self.remote_endpoints(network, host)
            .map(|e| e.vtep)
            .collect()
    }
}

/// The state plus the revision each key was last changed at, so a write
/// applied early (read-your-writes) is never undone by an older watch event.
#[derive(Debug, Default)]
pub struct Mirror {
    /// The state.
    pub state: ClusterState,
    revisions: HashMap<Vec<u8>, i64>,
}

impl Mirror {
    /// Replaces everything with a full load at `revision`; returns the keys
    /// whose values did not parse.
    pub fn reset<'a>(
        &mut self,
        keys: &Keys,
        kvs: impl Iterator<Item = (&'a [u8], &'a [u8], i64)>,
        revision: i64,
    ) -> Vec<String> {
        self.state = ClusterState::default();
        self.revisions.clear();
        let bad = kvs
            .filter_map(|(k, v, rev)| self.put(keys, k, v, rev).err())
            .collect();
        self.state.revision = revision;
        bad
    }

    /// Applies a put at `revision`; `Err(key)` when the value does not
    /// parse (the key is then left out of the state).
    pub fn put(
        &mut self,
        keys: &Keys,
        key: &[u8],
        value: &[u8],
        revision: i64,
    ) -> Result<(), String> {
        if !self.newer(key, revision) {
            return Ok(());
        }
        let Some(parsed) = keys.parse(key) else {
            return Ok(());
        };
        let s = &mut self.state;
        let ok = match parsed.clone() {
            Key::Network(n) => serde_json::from_slice(value)
                .ok()
                .filter(|r: &NetworkRecord| r.name == n)
                .map(|r| {
                    s.networks.insert(n, r);
                }),
            Key::Vni(v) => serde_json::from_slice(value).ok().map(|n| {
                s.vnis.insert(v, n);
            }),
            Key::Ipam(n, ip) => serde_json::from_slice(value).ok().map(|l| {
                s.ipam.entry(n).or_default().insert(ip, l);
            }),
            Key::Endpoint(n, e) => serde_json::from_slice(value)
                .ok()
                .filter(|r: &EndpointRecord| r.network == n && r.name == e)
                .map(|r| {
                    s.endpoints.entry(n).or_default().insert(e, r);
                }),
            Key::Host(h) => serde_json::from_slice(value)
                .ok()
                .filter(|r: &HostRecord| r.host == h)
                .map(|r| {
                    s.hosts.insert(h, r);
                }),
        }
        .is_some();
        if ok {
            Ok(())
        } else {
            self.remove(&parsed);
            Err(String::from_utf8_lossy(key).into_owned())
        }
    }

    /// Applies a delete at `revision`.
    pub fn delete(&mut self, keys: &Keys, key: &[u8], revision: i64) {
        if self.newer(key, revision) {
            if let Some(parsed) = keys.parse(key) {
                self.remove(&parsed);
            }
        }
    }

    /// Records `revision` as the latest for `key`; false if it is older.
    fn newer(&mut self, key: &[u8], revision: i64) -> bool {
        self.state.revision = self.state.revision.max(revision);
        match self.revisions.get_mut(key) {
            Some(r) if *r >= revision => false,
            Some(r) => {
                *r = revision;
                true
            }
            None => {
                self.revisions.insert(key.to_vec(), revision);
                true
            }
        }
    }

    fn remove(&mut self, key: &Key) {
        let s = &mut self.state;
        match key {
            Key::Network(n) => {
                s.networks.remove(n);
            }
            Key::Vni(v) => {
                s.vnis.remove(v);
            }
            Key::Ipam(n, ip) => {
                if let Some(m) = s.ipam.get_mut(n) {
                    m.remove(ip);
                    if m.is_empty() {
                        s.ipam.remove(n);
                    }
                }
            }
            Key::Endpoint(n, e) => {
                if let Some(m) = s.endpoints.get_mut(n) {
                    m.remove(e);
                    if m.is_empty() {
                        s.endpoints.remove(n);
                    }
                }
            }
            Key::Host(h) => {
                s.hosts.remove(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> NetworkRecord {
        NetworkRecord {
            name: "front".into(),
            subnet: "10.1.0.0/24".parse().expect("cidr"),
            gateway: "10.1.0.1".parse().expect("ip"),
            subnet6: None,
            vni: Some(256),
            mtu: 1450,
            internal: false,
            isolate: true,
            mac_cap: None,
            host_loopback: false,
        }
    }

    fn endpoint() -> EndpointRecord {
        EndpointRecord {
            network: "front".into(),
            name: "web".into(),
            aliases: vec!["www".into()],
            mac: "02:42:0a:01:00:05".parse().expect("mac"),
            ipv4: "10.1.0.5".parse().expect("ip"),
            ipv6: None,
            host: "a".into(),
            vtep: "192.0.2.1:4789".parse().expect("sa"),
        }
    }

    #[test]
    fn records_serialize_as_documented_json() {
        let j = serde_json::to_value(network()).expect("json");
        assert_eq!(
            j,
            serde_json::json!({"name":"front","subnet":"10.1.0.0/24","gateway":"10.1.0.1",
                "subnet6":null,"vni":256,"mtu":1450,"internal":false,"isolate":true})
        );
        let j = serde_json::to_value(endpoint()).expect("json");
        assert_eq!(j["mac"], "02:42:0a:01:00:05");
        assert_eq!(j["vtep"], "192.0.2.1:4789");
        let back: EndpointRecord = serde_json::from_value(j).expect("parse");
        assert_eq!(back, endpoint());
        let lease = IpamLease {
            host: "a".into(),
            endpoint: "web".into(),
        };
        assert_eq!(
            serde_json::to_string(&lease).expect("json"),
            r#"{"host":"a","endpoint":"web"}"#
        );
        // Optional fields may be missing (older or hand-written records).
        let n: NetworkRecord = serde_json::from_str(
            r#"{"name":"n","subnet":"10.2.0.0/16","gateway":"10.2.0.1","mtu":1450}"#,
        )
        .expect("parse");
        assert_eq!((n.vni, n.internal, n.subnet6), (None, false, None));
        assert_eq!((n.mac_cap, n.host_loopback), (None, false));
        // A network without a MAC cap or host loopback is stored as before
        // these fields existed; one with them keeps them.
        let json = serde_json::to_string(&network()).expect("json");
        assert!(
            !json.contains("mac_cap") && !json.contains("host_loopback"),
            "{json}"
        );
        let mut capped = network();
        capped.mac_cap = Some(64);
        capped.host_loopback = true;
        let json = serde_json::to_string(&capped).expect("json");
        let back: NetworkRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, capped);
    }

    #[test]
    fn validation_and_matching() {
        network().validate().expect("valid");
        let mut n = network();
        n.vni = Some(MAX_VNI + 1);
        assert!(n.validate().is_err());
        n = network();
        n.gateway = "10.1.0.255".parse().expect("ip");
        assert!(n.validate().is_err());
        n = network();
        n.name = "a/b".into();
        assert!(n.validate().is_err());
        let mut req = network();
        req.vni = None;
        assert_eq!(req.matches(&network()), Ok(()));
        req.mtu = 1400;
        let why = req.matches(&network()).expect_err("differs");
        assert!(why.contains("MTU 1400"), "{why}");
        let mut req = network();
        req.mac_cap = Some(64);
        let why = req.matches(&network()).expect_err("differs");
        assert!(
            why.contains("MAC cap 64 requested, no MAC cap stored"),
            "{why}"
        );
        let mut req = network();
        req.host_loopback = true;
        let why = req.matches(&network()).expect_err("differs");
        assert!(why.contains("host-loopback true requested"), "{why}");
        let mut e = endpoint();
        e.aliases.push("bad alias".into());
        assert!(e.validate().is_err());
    }

    #[test]
    fn mirror_applies_in_revision_order_and_skips_garbage() {
        let keys = Keys::new("/sy");
        let mut m = Mirror::default();
        let ek = keys.key(&Key::Endpoint("front".into(), "web".into()));
        let ev = serde_json::to_vec(&endpoint()).expect("json");
        let nk = keys.key(&Key::Network("front".into()));
        let nv = serde_json::to_vec(&network()).expect("json");
        let bad = m.reset(
            &keys,
            [
                (ek.as_bytes(), ev.as_slice(), 5),
                (nk.as_bytes(), nv.as_slice(), 3),
                (b"/sy/hosts/x".as_slice(), b"{not json".as_slice(), 4),
                (b"/elsewhere".as_slice(), b"x".as_slice(), 4),
            ]
            .into_iter(),
            7,
        );
        assert_eq!(bad, ["/sy/hosts/x"]);
        assert_eq!(m.state.revision, 7);
        assert_eq!(m.state.networks["front"], network());
        assert_eq!(m.state.all_endpoints().count(), 1);
        assert_eq!(m.state.remote_endpoints("front", "b").count(), 1);
        assert_eq!(m.state.remote_endpoints("front", "a").count(), 0);
        assert_eq!(m.state.remote_vteps("front", "b").len(), 1);
        // An older event does not undo a newer write.
        m.delete(&keys, ek.as_bytes(), 4);
        assert_eq!(m.state.all_endpoints().count(), 1);
        m.delete(&keys, ek.as_bytes(), 9);
        assert_eq!(m.state.all_endpoints().count(), 0);
        assert!(m.state.endpoints.is_empty());
        assert_eq!(m.state.revision, 9);
        // A record whose body names another key is refused.
        let mut other = network();
        other.name = "back".into();
        let ov = serde_json::to_vec(&other).expect("json");
        assert!(m.put(&keys, nk.as_bytes(), &ov, 10).is_err());
        assert!(m.state.networks.is_empty());
    }
}
