//! The CNI plugin. A runtime that speaks CNI (containerd and nerdctl, CRI-O,
//! Kubernetes, podman's CNI backend) runs the executable a configuration's
//! `type` names, without arguments, with `CNI_COMMAND` and the others in the
//! environment and the configuration on stdin. Run that way, the
//! `switchyard` binary is that plugin, for spec versions 0.3.0 to 1.1.0,
//! and a client of the daemon's API:
//!
//! - `ADD` connects the sandbox at `CNI_NETNS` to the network (created if
//!   missing) with interface `CNI_IFNAME`, and prints the result: interface,
//!   MAC, addresses, gateway routes and the gateway's DNS.
//! - `DEL` disconnects the endpoint that `(CNI_CONTAINERID, CNI_IFNAME)`
//!   added; one already gone is success, as the spec asks.
//! - `CHECK` compares the endpoint with the ADD's `prevResult`.
//! - `GC` disconnects endpoints of runtime containers the runtime no longer
//!   lists as valid; `STATUS` says whether the daemon answers.
//! - `VERSION` lists the versions above.
//!
//! Failures are printed as the spec's error object, with its codes where
//! one fits (11, "try again later", when the daemon cannot be reached).
//! This module owns the translation; the daemon only learns an interface
//! name and a container id on `connect`. What the runtime hands over (the
//! environment, `CNI_ARGS`, the configuration) is decoded by [`input`].

mod input;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::api::{self, ErrorKind, NetworkDetail, Request};
use crate::control::client::{Client, ClientError};
use crate::control::model::{validate_name, Endpoint, Network, Publication, SandboxTarget};
use crate::control::net::{Ipv4Net, Ipv6Net};
use crate::control::paths::default_socket;

pub use input::{parse_args, Attachment, CniArgs, CniEnv, NetConf, PortMapping, RuntimeConfig};

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Largest configuration read from stdin.
const MAX_CONFIG: u64 = 1 << 20;

/// The spec's well-known error codes, and ours (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// The daemon refused the request (its message says why).
    pub const REFUSED: u32 = 100;
    /// The endpoint does not match the ADD's result (CHECK).
    pub const MISMATCH: u32 = 101;
}

/// A failure, printed as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object in spec version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl From<ClientError> for CniError {
    fn from(e: ClientError) -> CniError {
        match e {
            ClientError::Api(a) => {
                let code = match a.kind {
                    ErrorKind::BadRequest => code::INVALID_CONFIG,
                    _ => code::REFUSED,
                };
                CniError::new(code, a.message)
            }
            ClientError::NotRunning { .. } | ClientError::Timeout(_) => {
                CniError::new(code::TRY_AGAIN, e.to_string())
            }
            other => CniError::new(code::IO, other.to_string()),
        }
    }
}

/// Whether spec `version` (`a.b.c`) is at least `min`.
fn at_least(version: &str, min: (u32, u32)) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    v >= min
}

/// Runs the plugin when the process was started as one (no arguments and
/// `CNI_COMMAND` set); returns its exit status, or None to run the CLI.
pub fn entry(args: &[String]) -> Option<i32> {
    if args.len() != 1 || std::env::var_os("CNI_COMMAND").is_none() {
        return None;
    }
    let env = CniEnv::from_process();
    let mut input = Vec::new();
    let read = std::io::stdin().take(MAX_CONFIG).read_to_end(&mut input);
    let (version, outcome) = match read {
        Ok(_) => run(&env, &input),
        Err(e) => (
            "1.1.0".to_string(),
            Err(CniError::new(
                code::IO,
                format!("reading the configuration: {e}"),
            )),
        ),
    };
    let (text, status) = match outcome {
        Ok(Some(v)) => (v.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => (e.to_json(&version).to_string(), 1),
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = if text.is_empty() {
        Ok(())
    } else {
        writeln!(out, "{text}")
    };
    Some(if written.and_then(|()| out.flush()).is_ok() {
        status
    } else {
        1
    })
}

/// Runs one command; returns the version to answer in and what to print.
pub fn run(env: &CniEnv, input: &[u8]) -> (String, Result<Option<Value>, CniError>) {
    let latest = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_string();
    if env.command == "VERSION" {
        // The configuration is optional here; its version, if any, is echoed.
        let asked = serde_json::from_slice::<Value>(input)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or(latest);
        let v = json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS});
        return (asked, Ok(Some(v)));
    }
    let conf: NetConf = match serde_json::from_slice(input) {
        Ok(c) => c,
        Err(e) => {
            let err = CniError::new(
                code::DECODE,
                format!("the network configuration is not valid: {e}"),
            );
            return (latest, Err(err));
        }
    };
    let version = conf.cni_version.clone();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        let err = CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {version:?} is not supported"),
        )
        .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", ")));
        return (latest, Err(err));
    }
    let outcome = match env.command.as_str() {
        "ADD" => add(env, &conf).map(Some),
        "DEL" => del(env, &conf).map(|()| None),
        "CHECK" if at_least(&version, (0, 4)) => check(env, &conf).map(|()| None),
        "GC" if at_least(&version, (1, 1)) => gc(&conf).map(|()| None),
        "STATUS" if at_least(&version, (1, 1)) => status(&conf).map(|()| None),
        "CHECK" | "GC" | "STATUS" => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{} needs a newer CNI version than {version}", env.command),
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    };
    (version, outcome)
}

fn client(conf: &NetConf) -> Result<Client, CniError> {
    Ok(Client::connect(&conf.socket())?)
}

/// The network, or None if the daemon does not know it.
fn inspect(c: &mut Client, name: &str) -> Result<Option<NetworkDetail>, CniError> {
    match c.call::<NetworkDetail>(&Request::NetworkInspect(api::ByName { name: name.into() })) {
        Ok(d) => Ok(Some(d)),
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The network, created from the configuration if it does not exist yet.
fn network_for_add(c: &mut Client, conf: &NetConf) -> Result<NetworkDetail, CniError> {
    let name = conf.network();
    if let Some(d) = inspect(c, name)? {
        if let Some(s) = conf.subnet.filter(|s| *s != d.network.subnet4) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network {name:?} exists with subnet {}, the configuration asks for {s}",
                    d.network.subnet4
                ),
            ));
        }
        return Ok(d);
    }
    let create = api::NetworkCreate {
        name: name.to_string(),
        subnet: conf.subnet,
        ipv6_subnet: conf.ipv6_subnet,
        internal: conf.internal,
        isolate: conf.isolate,
        mtu: conf.mtu,
        ..Default::default()
    };
    match c.call::<Network>(&Request::NetworkCreate(create)) {
        Ok(_) => {}
        // Another ADD created it meanwhile.
        Err(ClientError::Api(e)) if e.kind == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    inspect(c, name)?.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN,
            format!("network {name:?} vanished while being created"),
        )
    })
}

/// The endpoint that configuration `conf` added to the network for
/// `(container id, ifname)`: CNI's key is (network name, container id,
/// interface).
fn find<'a>(
    d: &'a NetworkDetail,
    conf: &NetConf,
    container_id: &str,
    ifname: &str,
) -> Option<&'a Endpoint> {
    d.endpoints.iter().find(|e| {
        ours(e, conf) && e.container_id.as_deref() == Some(container_id) && e.ifname == ifname
    })
}

/// Whether configuration `conf` attached `e`.
fn ours(e: &Endpoint, conf: &NetConf) -> bool {
    e.container_id.is_some() && e.cni_network.as_deref() == Some(conf.name.as_str())
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let container_id = CniEnv::need(&env.container_id, "CNI_CONTAINERID")?;
    let ifname = CniEnv::need(&env.ifname, "CNI_IFNAME")?;
    let netns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let args = parse_args(env.args.as_deref().unwrap_or(""))?;
    let rc = &conf.runtime_config;
    if rc.mac.as_deref().is_some_and(|m| !m.is_empty()) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "runtimeConfig.mac: switchyard derives each endpoint's MAC itself",
        ));
    }
    let mut ips: Vec<IpAddr> = args.ips.clone();
    for text in &rc.ips {
        let addr = text.split_once('/').map_or(text.as_str(), |(a, _)| a);
        ips.push(addr.parse().map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("runtimeConfig.ips: {text:?} is not an address"),
            )
        })?);
    }
    let ip = ips.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    });
    let ip6 = ips.iter().find_map(|a| match a {
        IpAddr::V6(v) => Some(*v),
        IpAddr::V4(_) => None,
    });
    let publish = rc
        .port_mappings
        .iter()
        .map(PortMapping::publication)
        .collect::<Result<Vec<_>, _>>()?;
    let mut aliases = rc.aliases.get(&conf.name).cloned().unwrap_or_default();
    let mut c = client(conf)?;
    let detail = network_for_add(&mut c, conf)?;
    // A retried ADD (the runtime timed out on one that went through) gets
    // the same answer again.
    if let Some(ep) = find(&detail, conf, &container_id, &ifname) {
        if matches!(&ep.sandbox, SandboxTarget::Netns { path, .. } if *path == netns) {
            return Ok(add_result(&conf.cni_version, ep, &detail, &netns));
        }
    }
    let name = endpoint_name(&detail, args.pod_name, &container_id, &mut aliases);
    let ep: Endpoint = c.call(&Request::Connect(api::Connect {
        network: detail.network.name.clone(),
        target: SandboxTarget::Netns {
            path: netns.clone(),
            userns: None,
        },
        name: Some(name),
        aliases,
        ip,
        ip6,
        publish,
        port_security: true,
        ifname: Some(ifname),
        container_id: Some(container_id),
        cni_network: Some(conf.name.clone()),
    }))?;
    Ok(add_result(&conf.cni_version, &ep, &detail, &netns))
}

/// The endpoint's name: the pod's name when it is a valid one and free on
/// the network; else the container id's first 12 characters, with a taken
/// pod name as an alias (so the name answers round robin over its pods, as
/// the same pod name in two Kubernetes namespaces would want).
fn endpoint_name(
    d: &NetworkDetail,
    pod: Option<String>,
    container_id: &str,
    aliases: &mut Vec<String>,
) -> String {
    let short: String = container_id.chars().take(12).collect();
    match pod.filter(|n| validate_name("endpoint", n).is_ok()) {
        Some(p) if d.endpoints.iter().any(|e| e.name == p) => {
            if !aliases.contains(&p) {
                aliases.push(p);
            }
            short
        }
        Some(p) => p,
        None => short,
    }
}

/// ADD's result in spec version `version`.
pub fn add_result(version: &str, ep: &Endpoint, d: &NetworkDetail, netns: &Path) -> Value {
    let net = &d.network;
    let old = !at_least(version, (1, 0));
    let mut iface = json!({
        "name": ep.ifname,
        "mac": ep.mac.to_string(),
        "sandbox": netns.display().to_string(),
    });
    if at_least(version, (1, 1)) {
        iface["mtu"] = json!(net.mtu);
    }
    let mut ips = vec![];
    let mut routes = vec![];
    let mut nameservers = vec![];
    let mut v4 = json!({
        "address": format!("{}/{}", ep.ipv4, net.subnet4.prefix()),
        "gateway": net.gateway4.to_string(),
        "interface": 0,
    });
    if old {
        v4["version"] = json!("4");
    }
    ips.push(v4);
    nameservers.push(net.gateway4.to_string());
    if ep.default_route {
        routes.push(json!({"dst": "0.0.0.0/0", "gw": net.gateway4.to_string()}));
    }
    if let (Some(a6), Some(s6), Some(g6)) = (ep.ipv6, net.subnet6, net.gateway6) {
        let mut v6 = json!({
            "address": format!("{a6}/{}", s6.prefix()),
            "gateway": g6.to_string(),
            "interface": 0,
        });
        if old {
            v6["version"] = json!("6");
        }
        ips.push(v6);
        nameservers.push(g6.to_string());
        if ep.default_route {
            routes.push(json!({"dst": "::/0", "gw": g6.to_string()}));
        }
    }
    let mut dns = json!({"nameservers": nameservers});
    if !d.dns_domain.is_empty() {
        dns["domain"] = json!(d.dns_domain);
        dns["search"] = json!([d.dns_domain]);
    }
    json!({
        "cniVersion": version,
        "interfaces": [iface],
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let container_id = CniEnv::need(&env.container_id, "CNI_CONTAINERID")?;
    let ifname = CniEnv::need(&env.ifname, "CNI_IFNAME")?;
    let mut c = client(conf)?;
    let Some(d) = inspect(&mut c, conf.network())? else {
        return Ok(());
    };
    let Some(ep) = find(&d, conf, &container_id, &ifname) else {
        return Ok(());
    };
    disconnect(&mut c, &d.network.name, &ep.id)
}

/// Disconnects an endpoint; one already gone is fine.
fn disconnect(c: &mut Client, network: &str, id: &str) -> Result<(), CniError> {
    let req = Request::Disconnect(api::Disconnect {
        network: network.to_string(),
        endpoint: id.to_string(),
        // That endpoint only, should another be named like its id.
        id: Some(id.to_string()),
    });
    match c.call::<Endpoint>(&req) {
        Ok(_) => Ok(()),
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let container_id = CniEnv::need(&env.container_id, "CNI_CONTAINERID")?;
    let ifname = CniEnv::need(&env.ifname, "CNI_IFNAME")?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs the ADD's result in prevResult",
        )
    })?;
    let mut c = client(conf)?;
    let network = conf.network();
    let d = inspect(&mut c, network)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network {network:?} does not exist"),
        )
    })?;
    let ep = find(&d, conf, &container_id, &ifname).ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("container {container_id} has no interface {ifname} on network {network:?}"),
        )
    })?;
    if let (Some(netns), SandboxTarget::Netns { path, .. }) = (&env.netns, &ep.sandbox) {
        if path != netns {
            return Err(CniError::new(
                code::MISMATCH,
                format!(
                    "{ifname} of {container_id} was attached to {}, not {}",
                    ep.sandbox,
                    netns.display()
                ),
            ));
        }
    }
    compare(prev, ep)
}

/// Whether the endpoint still has the interface and addresses `prev` lists.
pub fn compare(prev: &Value, ep: &Endpoint) -> Result<(), CniError> {
    let mismatch = |what: String| CniError::new(code::MISMATCH, what);
    let ifaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    if let Some(i) = ifaces.iter().find(|i| i["name"] == ep.ifname.as_str()) {
        let mac = i["mac"].as_str().unwrap_or("");
        if !mac.eq_ignore_ascii_case(&ep.mac.to_string()) {
            return Err(mismatch(format!(
                "{} has MAC {}, the ADD gave {mac}",
                ep.ifname, ep.mac
            )));
        }
    } else {
        return Err(mismatch(format!(
            "the ADD's result lists no interface {}",
            ep.ifname
        )));
    }
    let listed: Vec<IpAddr> = prev["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .filter_map(|a| a.split_once('/').map_or(a, |(a, _)| a).parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut have = vec![IpAddr::V4(ep.ipv4)];
    have.extend(ep.ipv6.map(IpAddr::V6));
    for a in &listed {
        if !have.contains(a) {
            return Err(mismatch(format!("{} no longer has address {a}", ep.ifname)));
        }
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let mut c = client(conf)?;
    let Some(d) = inspect(&mut c, conf.network())? else {
        return Ok(());
    };
    let stale: Vec<&Endpoint> = d
        .endpoints
        .iter()
        .filter(|e| ours(e, conf))
        .filter(|e| {
            !valid.iter().any(|a| {
                e.container_id.as_deref() == Some(a.container_id.as_str()) && a.ifname == e.ifname
            })
        })
        .collect();
    let mut failed = Vec::new();
    for ep in stale {
        if let Err(e) = disconnect(&mut c, &d.network.name, &ep.id) {
            failed.push(format!("{}: {}", ep.name, e.msg));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::REFUSED, "some stale endpoints could not be removed")
                .with_details(failed.join("; ")),
        )
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: ClientError| CniError::new(code::NOT_AVAILABLE, e.to_string());
    let mut c = Client::connect(&conf.socket()).map_err(unavailable)?;
    c.call::<api::Pong>(&Request::Ping).map_err(unavailable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::{Driver, Proto};
    use crate::wire::MacAddr;

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            ..Default::default()
        }
    }

    fn code_of(out: (String, Result<Option<Value>, CniError>)) -> u32 {
        out.1.expect_err("an error").code
    }

    #[test]
    fn args_take_pod_name_and_ips_and_refuse_unknown_keys() {
        let a = parse_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;IP=10.0.0.5,fd00::5;X=1",
        )
        .expect("parse");
        assert_eq!(a.pod_name.as_deref(), Some("web"));
        assert_eq!(
            a.ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
        assert_eq!(parse_args("").expect("empty"), CniArgs::default());
        assert_eq!(
            parse_args("COLOR=blue").expect_err("unknown").code,
            code::INVALID_ENV
        );
        assert_eq!(
            parse_args("IgnoreUnknown=0;COLOR=blue")
                .expect_err("unknown")
                .code,
            code::INVALID_ENV
        );
        assert_eq!(
            parse_args("novalue").expect_err("pair").code,
            code::INVALID_ENV
        );
        assert_eq!(
            parse_args("IP=10.0.0.300").expect_err("ip").code,
            code::INVALID_ENV
        );
        assert!(parse_args("IgnoreUnknown=true;COLOR=blue").is_ok());
    }

    #[test]
    fn port_mappings_become_publications() {
        let m = |json: Value| -> PortMapping { serde_json::from_value(json).expect("mapping") };
        let p = m(json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}))
            .publication()
            .expect("tcp");
        assert_eq!(p.to_string(), "8080:80/tcp");
        let p = m(json!({"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"}))
            .publication()
            .expect("udp");
        assert_eq!(
            (p.proto, p.host_ip),
            (Proto::Udp, Some("127.0.0.1".parse().expect("ip")))
        );
        let p = m(json!({"hostPort": 80, "containerPort": 80, "hostIP": "::1"}))
            .publication()
            .expect("v6");
        assert_eq!(p.host_ip, Some("::1".parse().expect("ip")));
        let bad = m(json!({"hostPort": 80, "containerPort": 80, "protocol": "sctp"}));
        assert_eq!(
            bad.publication().expect_err("sctp").code,
            code::INVALID_CONFIG
        );
        let zero = m(json!({"hostPort": 0, "containerPort": 80}));
        assert!(zero.publication().is_err());
    }

    fn detail(ipv6: bool) -> (Endpoint, NetworkDetail) {
        let network = Network {
            name: "n".into(),
            driver: Driver::Bridge,
            subnet4: "10.9.0.0/24".parse().expect("subnet"),
            gateway4: "10.9.0.1".parse().expect("gw"),
            subnet6: ipv6.then(|| "fd00:9::/64".parse().expect("subnet6")),
            gateway6: ipv6.then(|| "fd00:9::1".parse().expect("gw6")),
            internal: false,
            isolate: false,
            mtu: 1500,
            mac_cap: None,
            vni: None,
            host_loopback: false,
        };
        let ep = Endpoint {
            id: "0123456789ab".into(),
            name: "web".into(),
            network: "n".into(),
            aliases: vec![],
            sandbox: SandboxTarget::Netns {
                path: "/run/netns/x".into(),
                userns: None,
            },
            netns_id: crate::control::model::NamespaceId { dev: 1, inode: 2 },
            ifname: "eth0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
            ipv4: "10.9.0.2".parse().expect("ip"),
            ipv6: ipv6.then(|| "fd00:9::2".parse().expect("ip6")),
            default_route: true,
            publications: vec![],
            port_security: true,
            container_id: Some("c1".into()),
            cni_network: Some("n".into()),
        };
        let d = NetworkDetail {
            network,
            endpoints: vec![ep.clone()],
            dns_domain: "switchyard.internal".into(),
        };
        (ep, d)
    }

    #[test]
    fn results_follow_the_requested_version() {
        let (ep, d) = detail(true);
        let r = add_result("0.4.0", &ep, &d, Path::new("/run/netns/x"));
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["ips"][1]["version"], "6");
        assert_eq!(r["ips"][1]["address"], "fd00:9::2/64");
        assert!(r["interfaces"][0].get("mtu").is_none());
        assert_eq!(r["routes"][1], json!({"dst": "::/0", "gw": "fd00:9::1"}));
        assert_eq!(r["dns"]["nameservers"], json!(["10.9.0.1", "fd00:9::1"]));
        let r = add_result("1.0.0", &ep, &d, Path::new("/run/netns/x"));
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["interfaces"][0]["mac"], "02:00:00:00:00:09");
        assert_eq!(r["interfaces"][0]["sandbox"], "/run/netns/x");
        let r = add_result("1.1.0", &ep, &d, Path::new("/run/netns/x"));
        assert_eq!(r["interfaces"][0]["mtu"], 1500);
        let mut second = ep.clone();
        second.default_route = false;
        let r = add_result("1.0.0", &second, &d, Path::new("/run/netns/x"));
        assert_eq!(
            r["routes"],
            json!([]),
            "only the default-route interface routes"
        );
    }

    #[test]
    fn a_taken_pod_name_becomes_an_alias_of_the_container_id() {
        let (_, d) = detail(false);
        let mut aliases = vec![];
        let id = "0123456789abcdef";
        assert_eq!(
            endpoint_name(&d, Some("api".into()), id, &mut aliases),
            "api"
        );
        assert!(aliases.is_empty());
        assert_eq!(
            endpoint_name(&d, Some("web".into()), id, &mut aliases),
            "0123456789ab"
        );
        assert_eq!(aliases, vec!["web".to_string()]);
        let mut aliases = vec![];
        assert_eq!(
            endpoint_name(&d, Some("-bad".into()), id, &mut aliases),
            "0123456789ab"
        );
        assert_eq!(endpoint_name(&d, None, id, &mut aliases), "0123456789ab");
        assert!(aliases.is_empty());
    }

    #[test]
    fn check_compares_with_the_add_result() {
        let (ep, d) = detail(false);
        let prev = add_result("1.0.0", &ep, &d, Path::new("/run/netns/x"));
        assert_eq!(compare(&prev, &ep), Ok(()));
        let mut moved = ep.clone();
        moved.ipv4 = "10.9.0.3".parse().expect("ip");
        assert_eq!(
            compare(&prev, &moved).expect_err("address").code,
            code::MISMATCH
        );
        let mut renamed = ep.clone();
        renamed.ifname = "eth1".into();
        assert_eq!(
            compare(&prev, &renamed).expect_err("ifname").code,
            code::MISMATCH
        );
        let mut remac = ep;
        remac.mac = MacAddr([2, 0, 0, 0, 0, 10]);
        assert_eq!(
            compare(&prev, &remac).expect_err("mac").code,
            code::MISMATCH
        );
        assert_eq!(
            compare(&json!({}), &remac).expect_err("empty").code,
            code::MISMATCH
        );
    }

    #[test]
    fn versions_and_decoding_are_checked_before_the_daemon_is_asked() {
        let (v, out) = run(&env("VERSION"), b"");
        assert_eq!(v, "1.1.0");
        assert_eq!(
            out.expect("version").expect("printed")["supportedVersions"],
            json!(SUPPORTED_VERSIONS)
        );
        let (v, _) = run(&env("VERSION"), br#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(v, "0.3.1");
        // ADD without its variables never reaches the daemon.
        let refused: [(&str, &[u8], u32); 7] = [
            ("ADD", b"[1,2", code::DECODE),
            (
                "ADD",
                br#"{"cniVersion":"2.0.0","name":"n"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            ("ADD", br#"{"name":"n"}"#, code::INCOMPATIBLE_VERSION),
            (
                "CHECK",
                br#"{"cniVersion":"0.3.1","name":"n"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                "GC",
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                "FROB",
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                code::INVALID_ENV,
            ),
            (
                "ADD",
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                code::INVALID_ENV,
            ),
        ];
        for (command, conf, code) in refused {
            assert_eq!(
                code_of(run(&env(command), conf)),
                code,
                "{command} {conf:?}"
            );
        }
        let mut mac = env("ADD");
        (mac.container_id, mac.ifname, mac.netns) =
            (Some("c".into()), Some("eth0".into()), Some("/x".into()));
        let conf =
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"mac":"02:00:00:00:00:01"}}"#;
        assert_eq!(code_of(run(&mac, conf)), code::UNSUPPORTED_FIELD);
        let conf =
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.0.0.300/24"]}}"#;
        assert_eq!(code_of(run(&mac, conf)), code::INVALID_CONFIG);
    }

    #[test]
    fn errors_print_as_the_spec_object() {
        let e = CniError::new(code::TRY_AGAIN, "later").with_details("the daemon is restarting");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "later", "details": "the daemon is restarting"})
        );
        assert!(CniError::new(1, "x")
            .to_json("1.0.0")
            .get("details")
            .is_none());
    }

    #[test]
    fn the_cli_runs_unless_started_as_a_plugin() {
        assert_eq!(entry(&["switchyard".into(), "ps".into()]), None);
    }
}
