//! The daemon's JSON protocol: newline-delimited JSON over a Unix stream, one
//! [`Request`] per line answered by one [`Response`] line, as many per
//! connection as the client likes. Requests are decoded straight into typed
//! values (CIDRs, addresses, publications), so bad input is rejected here.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{Driver, Endpoint, Network, Publication, SandboxTarget};
use super::net::{Ipv4Net, Ipv6Net};
use super::publication_pattern::PublicationPattern;
use crate::ports::PortId;
use crate::stats::StatsSnapshot;

/// Longest request line accepted (newline excluded).
pub const MAX_LINE: usize = 1 << 20;

/// Every op name, as written in the `op` field.
pub const OPS: [&str; 14] = [
    "network_create",
    "network_list",
    "network_inspect",
    "network_remove",
    "connect",
    "disconnect",
    "publish",
    "unpublish",
    "ps",
    "remote_endpoints",
    "stats",
    "ping",
    "trace",
    "capture",
];

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a network.
    NetworkCreate(NetworkCreate),
    /// Lists networks.
    NetworkList,
    /// One network and its endpoints.
    NetworkInspect(ByName),
    /// Removes a network without endpoints.
    NetworkRemove(ByName),
    /// Attaches a sandbox to a network.
    Connect(Connect),
    /// Detaches an endpoint.
    Disconnect(Disconnect),
    /// Adds a publication to an endpoint (stored only for now).
    Publish(PublishSpec),
    /// Removes a publication from an endpoint.
    Unpublish(UnpublishSpec),
    /// Lists endpoints.
    Ps,
    /// Lists endpoints of other hosts (from the cluster store).
    RemoteEndpoints,
    /// Data-plane counters.
    Stats,
    /// Health check.
    Ping,
    /// Explains the pipeline's decision for a described frame.
    Trace(TraceRequest),
    /// Writes an endpoint's frames to a pcap file; answered when it ends.
    Capture(CaptureRequest),
}

impl Request {
    /// False for the ops that take no arguments: serde accepts any extra
    /// field for them, so [`decode_request`] refuses those itself. No
    /// wildcard: a new op must say which it is.
    fn takes_arguments(&self) -> bool {
        match self {
            Request::NetworkList
            | Request::Ps
            | Request::RemoteEndpoints
            | Request::Stats
            | Request::Ping => false,
            Request::NetworkCreate(_)
            | Request::NetworkInspect(_)
            | Request::NetworkRemove(_)
            | Request::Connect(_)
            | Request::Disconnect(_)
            | Request::Publish(_)
            | Request::Unpublish(_)
            | Request::Trace(_)
            | Request::Capture(_) => true,
        }
    }
}

/// Arguments of `capture`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The endpoint (id, `NETWORK/NAME` or a unique name).
    pub endpoint: String,
    /// The pcap file the daemon writes (absolute; created or truncated,
    /// mode 0600).
    pub file: std::path::PathBuf,
    /// Stop after this many frames.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many seconds (at most a day). Without `count` or
    /// `seconds`, the capture runs until the client hangs up.
    #[serde(default)]
    pub seconds: Option<u64>,
}

/// Result of `capture`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureReply {
    /// The endpoint's id.
    pub endpoint: String,
    /// The file written.
    pub file: std::path::PathBuf,
    /// Frames written.
    pub frames: u64,
    /// Frames missed because the writer fell behind.
    pub lost: u64,
}

/// Arguments of `trace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Network of the ingress endpoint.
    pub network: String,
    /// The frame, e.g. `in=a,icmp=10.89.0.1`.
    pub frame: crate::control::trace::FrameSpec,
}

/// Result of `trace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReply {
    /// The frame as built (addresses filled in).
    pub frame: String,
    /// What the pipeline did.
    pub report: crate::pipeline::trace::TraceReport,
}

/// Arguments of `network_create`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    /// Name.
    pub name: String,
    /// Driver (default bridge).
    #[serde(default)]
    pub driver: Driver,
    /// IPv4 subnet (default: from the pool).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// IPv4 gateway (default: first host).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 subnet.
    #[serde(default)]
    pub ipv6_subnet: Option<Ipv6Net>,
    /// No outside access.
    #[serde(default)]
    pub internal: bool,
    /// No traffic between endpoints.
    #[serde(default)]
    pub isolate: bool,
    /// VXLAN id (overlay).
    #[serde(default)]
    pub vni: Option<u32>,
    /// MTU (default 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// MAC table cap.
    #[serde(default)]
    pub mac_cap: Option<usize>,
    /// The gateway address reaches the host's loopback (127.0.0.1).
    #[serde(default)]
    pub host_loopback: bool,
}

/// A network named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByName {
    /// The network's name.
    pub name: String,
}

/// Arguments of `connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    /// Network name.
    pub network: String,
    /// The sandbox.
    pub target: SandboxTarget,
    /// Endpoint name (default generated).
    #[serde(default)]
    pub name: Option<String>,
    /// Extra DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Static IPv4 address.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Static IPv6 address (networks with an IPv6 subnet; not on overlays,
    /// where it follows the IPv4 address).
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// Publications, as `[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]` strings.
    #[serde(default)]
    pub publish: Vec<Publication>,
    /// Source checks on the endpoint's port (default on; off lets the
    /// sandbox send from any MAC and address, e.g. a bridge or VMs inside).
    #[serde(default = "crate::control::model::enabled")]
    pub port_security: bool,
    /// Interface name in the sandbox (default: the first free of eth0,
    /// eth1, ...).
    #[serde(default)]
    pub ifname: Option<String>,
    /// The container id of a runtime (CNI), kept on the endpoint.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The CNI network configuration's name, kept on the endpoint.
    #[serde(default)]
    pub cni_network: Option<String>,
}

/// Arguments of `disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    /// Network name.
    pub network: String,
    /// Endpoint name or id.
    pub endpoint: String,
    /// The id `connect` returned for the endpoint meant. When given, only
    /// that endpoint is detached: if `endpoint` now names another one (it
    /// was removed and created again, or the daemon restarted with a fresh
    /// state), nothing is detached and the reply is [`ErrorKind::Stale`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Arguments of `publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// Endpoint id, name (if unique) or `NETWORK/NAME`.
    pub endpoint: String,
    /// The publication, as `[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]`.
    pub spec: Publication,
}

/// Arguments of `unpublish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpublishSpec {
    /// Endpoint id, name (if unique) or `NETWORK/NAME`.
    pub endpoint: String,
    /// The publication, as `[HOSTIP:]HOSTPORT[-END][:PORT[-END]][/tcp|/udp]`:
    /// enough of it to name one of the endpoint's publications.
    pub spec: PublicationPattern,
}

/// An endpoint as `ps` shows it: with where its publications listen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The host sockets its publications are served on, as
    /// `ADDR:HOSTPORT[-END]->PORT[-END]/PROTO` (Docker's notation): a
    /// publication without a host address is on `0.0.0.0` and `[::]` (one
    /// dual-stack socket), or `0.0.0.0` alone on a host without IPv6. A
    /// publication that could not be bound again after a restart shows as
    /// `SPEC (not listening)`.
    #[serde(default)]
    pub listening: Vec<String>,
}

/// Result of `network_inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDetail {
    /// The network.
    pub network: Network,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Search domain its gateway's DNS answers sandbox names under.
    #[serde(default)]
    pub dns_domain: String,
}

/// Which endpoint a data-plane port belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortOwner {
    /// Data-plane port.
    pub port: PortId,
    /// Network name.
    pub network: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint id.
    pub endpoint_id: String,
}

/// Result of `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The counters.
    pub stats: StatsSnapshot,
    /// Owners of the ports in `stats`.
    pub endpoints: Vec<PortOwner>,
}

/// Result of `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Daemon version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
}

/// Class of a failed request, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not JSON.
    MalformedJson,
    /// The `op` is missing or unknown.
    UnknownOp,
    /// The op's arguments are wrong.
    BadRequest,
    /// The line is longer than [`MAX_LINE`].
    TooLarge,
    /// A named network or endpoint does not exist.
    NotFound,
    /// The name is taken.
    AlreadyExists,
    /// Addresses or subnets conflict.
    Conflict,
    /// The endpoint named is not the one the request's `id` identified:
    /// that one is gone, and another has its name now.
    Stale,
    /// Still in use (network with endpoints).
    InUse,
    /// Out of addresses.
    Exhausted,
    /// Not yet supported.
    Unsupported,
    /// The sandbox could not be attached.
    Attach,
    /// Saving state failed.
    State,
    /// The data plane refused.
    Dataplane,
}

/// A failure as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Class.
    pub kind: ErrorKind,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// True if the request succeeded.
    pub ok: bool,
    /// The op's result (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The failure (when not ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    /// A success carrying `result`.
    pub fn success<T: Serialize>(result: &T) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::failure(ApiError::new(
                ErrorKind::BadRequest,
                format!("cannot encode the result: {e}"),
            )),
        }
    }

    /// A failure.
    pub fn failure(error: ApiError) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(error),
        }
    }

    /// The typed result, or the error.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        if let Some(e) = self.error.filter(|_| !self.ok) {
            return Err(e);
        }
        serde_json::from_value(self.result.unwrap_or(Value::Null)).map_err(|e| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("the daemon's reply has an unexpected shape ({e}); are the CLI and daemon the same version?"),
            )
        })
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"ok":false,"error":{"kind":"bad_request","message":"unencodable response"}}"#
                .to_vec()
        });
        v.push(b'\n');
        v
    }
}

/// Decodes one request line (without its newline), telling malformed JSON,
/// unknown ops and bad arguments apart.
pub fn decode_request(line: &[u8]) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        ApiError::new(
            ErrorKind::MalformedJson,
            format!("request is not valid JSON ({e}); send one JSON object per line"),
        )
    })?;
    let op = match value.get("op") {
        Some(Value::String(op)) => op.clone(),
        _ => {
            return Err(ApiError::new(
                ErrorKind::UnknownOp,
                format!(
                    "request has no \"op\" string; use one of: {}",
                    OPS.join(", ")
                ),
            ))
        }
    };
    if !OPS.contains(&op.as_str()) {
        return Err(ApiError::new(
            ErrorKind::UnknownOp,
            format!("unknown op {op:?}; use one of: {}", OPS.join(", ")),
        ));
    }
    // Ops with arguments reject unknown fields through their structs;
    // serde lets any field through for an op without arguments.
    let extra = value
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "op").cloned());
    let req: Request = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("bad arguments for {op:?}: {e}"),
        )
    })?;
    match extra {
        Some(field) if !req.takes_arguments() => Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("bad arguments for {op:?}: unknown field `{field}`; it takes none"),
        )),
        _ => Ok(req),
    }
}

/// Encodes a request as one line, newline included.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut v = serde_json::to_vec(req).unwrap_or_default();
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &str) -> ErrorKind {
        decode_request(line.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn decodes_every_op() {
        let lines = [
            r#"{"op":"network_create","name":"a","subnet":"10.1.0.0/24","isolate":true}"#,
            r#"{"op":"network_list"}"#,
            r#"{"op":"network_inspect","name":"a"}"#,
            r#"{"op":"network_remove","name":"a"}"#,
            r#"{"op":"connect","network":"a","target":{"pid":1},"publish":["8080:80"]}"#,
            r#"{"op":"disconnect","network":"a","endpoint":"web"}"#,
            r#"{"op":"disconnect","network":"a","endpoint":"web","id":"0123456789ab"}"#,
            r#"{"op":"publish","endpoint":"web","spec":"8080:80/udp"}"#,
            r#"{"op":"unpublish","endpoint":"web","spec":"8080:80/udp"}"#,
            r#"{"op":"ps"}"#,
            r#"{"op":"stats"}"#,
            r#"{"op":"ping"}"#,
        ];
        for l in lines {
            let r = decode_request(l.as_bytes()).unwrap_or_else(|e| panic!("{l}: {e}"));
            let again = decode_request(&encode_request(&r)[..]).unwrap();
            assert_eq!(r, again);
        }
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(kind("{"), ErrorKind::MalformedJson);
        assert_eq!(kind("not json"), ErrorKind::MalformedJson);
        assert_eq!(kind(""), ErrorKind::MalformedJson);
        assert_eq!(kind("[1]"), ErrorKind::UnknownOp);
        assert_eq!(kind(r#"{"op":"launch"}"#), ErrorKind::UnknownOp);
        assert_eq!(kind(r#"{"op":7}"#), ErrorKind::UnknownOp);
        assert_eq!(kind(r#"{"op":"network_inspect"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"op":"ps","json":true}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"op":"ping","x":1}"#), ErrorKind::BadRequest);
        assert_eq!(
            kind(r#"{"op":"network_create","name":"a","subnet":"10.1.0.0/33"}"#),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(r#"{"op":"network_create","name":"a","subnett":"10.1.0.0/24"}"#),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(r#"{"op":"network_create","name":"a","driver":"macvlan"}"#),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(r#"{"op":"publish","endpoint":"w","spec":"80"}"#),
            ErrorKind::BadRequest
        );
        let e = decode_request(br#"{"op":"network_create","name":"a","subnet":"10.1.0.1/24"}"#)
            .unwrap_err();
        assert!(
            e.message.contains("did you mean 10.1.0.0/24"),
            "{}",
            e.message
        );
    }

    #[test]
    fn disconnect_id_is_optional_and_left_out_when_absent() {
        let old = decode_request(br#"{"op":"disconnect","network":"a","endpoint":"web"}"#);
        assert!(matches!(
            old,
            Ok(Request::Disconnect(Disconnect { id: None, .. }))
        ));
        let plain = Request::Disconnect(Disconnect {
            network: "a".into(),
            endpoint: "web".into(),
            id: None,
        });
        // A daemon from before `id` refuses unknown fields: a client that
        // does not check leaves it out.
        let line = String::from_utf8(encode_request(&plain)).unwrap();
        assert!(!line.contains("\"id\""), "{line}");
        let stale = Response::failure(ApiError::new(ErrorKind::Stale, "replaced"));
        let line = String::from_utf8(stale.to_line()).unwrap();
        assert!(line.contains("\"kind\":\"stale\""), "{line}");
    }

    #[test]
    fn response_shapes() {
        let ok = Response::success(&Pong {
            version: "x".into(),
            pid: 1,
        });
        let line = String::from_utf8(ok.to_line()).unwrap();
        assert_eq!(
            line,
            "{\"ok\":true,\"result\":{\"pid\":1,\"version\":\"x\"}}\n"
        );
        let bad = Response::failure(ApiError::new(ErrorKind::NotFound, "no"));
        let line = String::from_utf8(bad.clone().to_line()).unwrap();
        assert_eq!(
            line,
            "{\"ok\":false,\"error\":{\"kind\":\"not_found\",\"message\":\"no\"}}\n"
        );
        assert_eq!(
            bad.into_result::<Pong>().unwrap_err().kind,
            ErrorKind::NotFound
        );
    }
}
