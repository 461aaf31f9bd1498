//! The daemon's request failures: one enum whose messages tell the user what
//! to do, each mapped to an API [`ErrorKind`].

use super::api::{ApiError, ErrorKind};
use super::attach::{netns_file, AttachFailure};
use super::ipam::IpamError;
use super::model::{ModelError, SandboxTarget};
use super::store::StoreError;
use crate::dataplane::DataplaneError;

/// Why a daemon operation failed; state is unchanged whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Network name taken.
    #[error("network {0:?} already exists; pick another name or remove it with `switchyard network rm {0}`")]
    NetworkExists(String),
    /// Unknown network.
    #[error("network {0:?} does not exist; list networks with `switchyard network ls` or create it with `switchyard network create {0}`")]
    NoSuchNetwork(String),
    /// Network still has endpoints.
    #[error("network {name:?} still has {count} endpoint(s); disconnect them first (`switchyard ps` lists them)")]
    NetworkInUse {
        /// Network.
        name: String,
        /// Endpoints left.
        count: usize,
    },
    /// The built-in network cannot be removed.
    #[error("network \"default\" is built in and cannot be removed")]
    DefaultNetwork,
    /// Unknown endpoint.
    #[error(
        "endpoint {0:?} not found; `switchyard ps` lists endpoints (name, id or NETWORK/NAME)"
    )]
    NoSuchEndpoint(String),
    /// The endpoint a detach meant (by id) is gone; another has its name.
    #[error("endpoint {network}/{name} is not the one meant: that one (id {expected}) is gone, and {name:?} is now endpoint {current}, attached since; nothing was detached (to detach the new one, `switchyard disconnect {network} {current}`)")]
    EndpointReplaced {
        /// Network.
        network: String,
        /// The name asked for.
        name: String,
        /// The id the caller meant.
        expected: String,
        /// The id of the endpoint that has the name now.
        current: String,
    },
    /// Endpoint name matches several networks.
    #[error("endpoint name {name:?} exists on networks {networks}; say which with NETWORK/{name}")]
    AmbiguousEndpoint {
        /// Name.
        name: String,
        /// Networks it is on.
        networks: String,
    },
    /// Endpoint name taken in the network.
    #[error("endpoint {name:?} already exists on network {network:?}; pick another --name or disconnect it with `switchyard disconnect {network} {name}`")]
    EndpointExists {
        /// Network.
        network: String,
        /// Name.
        name: String,
    },
    /// Sandbox already on the network.
    #[error("{target} is already connected to network {network:?} as endpoint {endpoint:?}")]
    AlreadyConnected {
        /// Sandbox.
        target: String,
        /// Network.
        network: String,
        /// Its endpoint.
        endpoint: String,
    },
    /// The sandbox already has an endpoint with that interface name.
    #[error(
        "{target} already has an interface {ifname:?} from switchyard; pick another interface name"
    )]
    IfnameTaken {
        /// Sandbox.
        target: String,
        /// Interface name.
        ifname: String,
    },
    /// Sandbox namespace does not exist.
    #[error("{target} not found: {path} does not exist or cannot be inspected; check the --netns path or --pid")]
    SandboxGone {
        /// Sandbox.
        target: String,
        /// Namespace file.
        path: String,
    },
    /// The sandbox exists but the daemon may not open its namespace.
    #[error(
        "{target} exists, but the daemon may not open its network namespace {path} \
         ({source}); it belongs to another user: run the daemon as that user or as root"
    )]
    SandboxNoAccess {
        /// Sandbox.
        target: String,
        /// Namespace file.
        path: String,
        /// Why (`EACCES` or `EPERM`).
        #[source]
        source: std::io::Error,
    },
    /// Attaching failed.
    #[error("cannot attach {target} to network {network:?}: {source}")]
    Attach {
        /// Sandbox.
        target: String,
        /// Network.
        network: String,
        /// What the attacher said.
        #[source]
        source: AttachFailure,
    },
    /// Not yet supported.
    #[error("{0} not yet supported")]
    Unsupported(String),
    /// A capture of the endpoint is running already.
    #[error("a capture of endpoint {0} is running already; wait for it or stop it first")]
    CaptureRunning(String),
    /// An argument that is well-formed but not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Publication host ports already taken.
    #[error(
        "host port(s) {spec} already published by endpoint {endpoint:?}; pick other host ports"
    )]
    PortTaken {
        /// The spec.
        spec: String,
        /// Who has them.
        endpoint: String,
    },
    /// A host port could not be bound.
    #[error("cannot publish {spec}: {reason}")]
    Bind {
        /// The spec.
        spec: String,
        /// What went wrong, and what to do.
        reason: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// Publication not present.
    #[error("endpoint {endpoint:?} has no publication {spec}; it publishes: {published}")]
    NoSuchPublication {
        /// Endpoint.
        endpoint: String,
        /// The spec.
        spec: String,
        /// What it publishes (or "nothing").
        published: String,
    },
    /// An `unpublish` spec that names several publications.
    #[error("{spec} names several publications of endpoint {endpoint:?}: {matches}; give the host address or the container port too")]
    AmbiguousPublication {
        /// Endpoint.
        endpoint: String,
        /// The spec.
        spec: String,
        /// The publications it names.
        matches: String,
    },
    /// Bad names, MTU, publications.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Address management.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// Persistence.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data plane.
    #[error("the data plane refused the change: {0}")]
    Dataplane(#[from] DataplaneError),
    /// The cluster store refused or could not be reached.
    #[error("cluster store: {0}")]
    Cluster(#[from] crate::control::cluster::ClusterError),
}

impl DaemonError {
    /// Why `target`'s namespace could not be inspected: not ours to open
    /// (`EACCES`, `EPERM`: it belongs to another user), else gone.
    pub fn sandbox_unreachable(target: &SandboxTarget, source: std::io::Error) -> DaemonError {
        let path = netns_file(target).display().to_string();
        let target = target.to_string();
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => DaemonError::SandboxNoAccess {
                target,
                path,
                source,
            },
            _ => DaemonError::SandboxGone { target, path },
        }
    }

    /// The API class of the error.
    pub fn kind(&self) -> ErrorKind {
        use DaemonError as E;
        match self {
            E::NetworkExists(_)
            | E::EndpointExists { .. }
            | E::AlreadyConnected { .. }
            | E::IfnameTaken { .. } => ErrorKind::AlreadyExists,
            E::NoSuchNetwork(_)
            | E::NoSuchEndpoint(_)
            | E::SandboxGone { .. }
            | E::NoSuchPublication { .. } => ErrorKind::NotFound,
            E::EndpointReplaced { .. } => ErrorKind::Stale,
            E::AmbiguousPublication { .. } => ErrorKind::BadRequest,
            E::NetworkInUse { .. } | E::DefaultNetwork => ErrorKind::InUse,
            E::AmbiguousEndpoint { .. } | E::Invalid(_) | E::Model(_) => ErrorKind::BadRequest,
            E::Attach { .. } | E::SandboxNoAccess { .. } => ErrorKind::Attach,
            E::Unsupported(_) => ErrorKind::Unsupported,
            E::PortTaken { .. } | E::CaptureRunning(_) => ErrorKind::Conflict,
            E::Bind { .. } => ErrorKind::Conflict,
            E::Ipam(e) => match e {
                IpamError::PoolExhausted | IpamError::Exhausted { .. } => ErrorKind::Exhausted,
                IpamError::SubnetOverlap { .. } | IpamError::InUse { .. } => ErrorKind::Conflict,
                IpamError::Routes { .. } => ErrorKind::State,
                _ => ErrorKind::BadRequest,
            },
            E::Store(_) => ErrorKind::State,
            E::Dataplane(_) => ErrorKind::Dataplane,
            E::Cluster(e) => {
                use crate::control::cluster::ClusterError as C;
                match e {
                    C::NetworkConflict { .. }
                    | C::VniTaken { .. }
                    | C::AddressTaken { .. }
                    | C::NotOwner { .. } => ErrorKind::Conflict,
                    C::NetworkInUse { .. } => ErrorKind::InUse,
                    C::NoFreeVni | C::SubnetFull { .. } => ErrorKind::Exhausted,
                    C::Invalid { .. } | C::BadAddress { .. } | C::BadRecord(_) => {
                        ErrorKind::BadRequest
                    }
                    _ => ErrorKind::State,
                }
            }
        }
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> ApiError {
        ApiError::new(e.kind(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(errno: i32) -> DaemonError {
        let err = std::io::Error::from_raw_os_error(errno);
        DaemonError::sandbox_unreachable(&SandboxTarget::Pid(1), err)
    }

    #[test]
    fn a_namespace_we_may_not_open_is_not_reported_missing() {
        for errno in [libc::EACCES, libc::EPERM] {
            let e = unreachable(errno);
            assert_eq!(e.kind(), ErrorKind::Attach);
            let text = e.to_string();
            assert!(text.starts_with("pid 1 exists, but"), "{text}");
            assert!(text.contains("/proc/1/ns/net"), "{text}");
            let reason = std::io::Error::from_raw_os_error(errno).to_string();
            assert!(text.contains(&reason), "{text}");
            assert!(!text.contains("not found"), "{text}");
        }
    }

    #[test]
    fn a_namespace_that_is_gone_is_not_found() {
        for errno in [libc::ENOENT, libc::ESRCH] {
            let e = unreachable(errno);
            assert_eq!(e.kind(), ErrorKind::NotFound);
            assert!(e.to_string().starts_with("pid 1 not found"), "{e}");
        }
    }
}
