//! What a CNI runtime hands the plugin, decoded and checked: the `CNI_*`
//! environment, the `CNI_ARGS` pairs, and the network configuration with
//! its `runtimeConfig` (port mappings, static addresses, aliases).

use super::*;

/// The CNI variables of the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
}

impl CniEnv {
    /// Reads the variables from the process environment.
    pub fn from_process() -> CniEnv {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        CniEnv {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }

    pub(super) fn need(v: &Option<String>, name: &str) -> Result<String, CniError> {
        v.clone()
            .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
    }
}

/// `CNI_ARGS` as this plugin reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAME`: the endpoint's (DNS) name when it is a valid one.
    pub pod_name: Option<String>,
    /// `IP`: static addresses (comma-separated, as host-local reads it).
    pub ips: Vec<IpAddr>,
}

/// Parses `CNI_ARGS` (`K=V;K=V`). Keys other than `IgnoreUnknown`, the
/// `K8S_*` ones and `IP` are refused unless `IgnoreUnknown` is true, as
/// libcni's plugins do.
pub fn parse_args(raw: &str) -> Result<CniArgs, CniError> {
    let bad = |why: String| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {why}"));
    let mut pairs = Vec::new();
    for part in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not KEY=VALUE")))?;
        pairs.push((k, v));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    let mut out = CniArgs::default();
    for (k, v) in pairs {
        match k {
            "IgnoreUnknown" => {}
            "K8S_POD_NAME" => out.pod_name = Some(v.to_string()).filter(|n| !n.is_empty()),
            "IP" => {
                for ip in v.split(',').filter(|s| !s.is_empty()) {
                    out.ips.push(
                        ip.parse()
                            .map_err(|_| bad(format!("IP={ip:?} is not an address")))?,
                    );
                }
            }
            k if k.starts_with("K8S_") || ignore_unknown => {}
            k => {
                return Err(bad(format!(
                    "unknown key {k:?} (set IgnoreUnknown=1 to allow it)"
                )))
            }
        }
    }
    Ok(out)
}

/// One port mapping of `runtimeConfig.portMappings`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Host port.
    pub host_port: u16,
    /// Port in the sandbox.
    pub container_port: u16,
    /// `tcp` or `udp` (default tcp).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Host address to bind (default all).
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

impl PortMapping {
    /// The publication, checked by the same parser as `-p`.
    pub fn publication(&self) -> Result<Publication, CniError> {
        let proto = self
            .protocol
            .as_deref()
            .unwrap_or("tcp")
            .to_ascii_lowercase();
        let spec = match self.host_ip.as_deref().filter(|h| !h.is_empty()) {
            Some(h) if h.contains(':') => {
                format!("[{h}]:{}:{}/{proto}", self.host_port, self.container_port)
            }
            Some(h) => format!("{h}:{}:{}/{proto}", self.host_port, self.container_port),
            None => format!("{}:{}/{proto}", self.host_port, self.container_port),
        };
        spec.parse()
            .map_err(|e: crate::control::model::ModelError| {
                CniError::new(code::INVALID_CONFIG, e.to_string())
            })
    }
}

/// `runtimeConfig`: the capabilities this plugin takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Published ports.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Static addresses (`10.0.0.5/24` or `10.0.0.5`).
    #[serde(default)]
    pub ips: Vec<String>,
    /// Extra DNS names per network name (as podman passes them).
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// A MAC address: not supported (the switch derives MACs).
    #[serde(default)]
    pub mac: Option<String>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// The network configuration on stdin (unknown fields are ignored, as
/// configurations carry other plugins' and runtimes' keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of the request and of the answer.
    #[serde(default)]
    pub cni_version: String,
    /// Network name (the switchyard network unless `network` says another).
    #[serde(default)]
    pub name: String,
    /// The switchyard network.
    #[serde(default)]
    pub network: Option<String>,
    /// The daemon's API socket (default as for the CLI).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Subnet of a network created on first ADD (and checked after).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// IPv6 subnet of a network created on first ADD.
    #[serde(default)]
    pub ipv6_subnet: Option<Ipv6Net>,
    /// MTU of a network created on first ADD.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// A network created on first ADD has no outside access.
    #[serde(default)]
    pub internal: bool,
    /// A network created on first ADD keeps its endpoints apart.
    #[serde(default)]
    pub isolate: bool,
    /// Runtime-provided capabilities.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The ADD's result (CHECK, DEL).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC's list of attachments to keep.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    pub(super) fn network(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }

    pub(super) fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }
}
