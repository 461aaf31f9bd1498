//! Errors of the cluster store: each says what failed and what the user can do.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::control::model::ModelError;
use crate::control::net::Ipv4Net;

/// Cluster store failures.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `--cluster-store` URL does not parse.
    #[error("invalid cluster store URL {url:?}: {why}; expected etcd://HOST:PORT[,HOST:PORT...], e.g. etcd://127.0.0.1:2379")]
    BadUrl {
        /// The rejected URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A configuration value is out of range.
    #[error("invalid cluster store configuration: {0}")]
    BadConfig(String),
    /// etcd could not be reached when connecting.
    #[error("cannot reach etcd at {endpoints}: {reason}; check that etcd is running and that --cluster-store names its client URL")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        reason: String,
    },
    /// The store lost etcd; the last known state is still served.
    #[error("the cluster store is disconnected from etcd ({0}); the last known state is still used; retry when etcd is back")]
    Disconnected(String),
    /// No answer within the operation timeout.
    #[error("the cluster store did not answer within {0:?}; check etcd's health and retry")]
    Timeout(Duration),
    /// etcd refused or failed a request.
    #[error("etcd request failed: {0}")]
    Etcd(#[source] etcd_client::Error),
    /// A stored value is not valid JSON of the expected record.
    #[error("record {key} in etcd is not valid ({why}); delete or fix it with etcdctl")]
    CorruptRecord {
        /// Its key.
        key: String,
        /// The parse error.
        why: String,
    },
    /// A record given by the caller is not valid.
    #[error(transparent)]
    BadRecord(#[from] ModelError),
    /// A record field is not valid.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A network of that name exists with other options.
    #[error("network {name} already exists in the cluster with a different configuration ({why}); use the same options or remove it first")]
    NetworkConflict {
        /// The network.
        name: String,
        /// The first difference.
        why: String,
    },
    /// The requested VNI belongs to another network.
    #[error("VNI {vni} is already used by network {network}; choose another --vni or omit it")]
    VniTaken {
        /// The VNI.
        vni: u32,
        /// Its owner.
        network: String,
    },
    /// Every VNI from 256 up is claimed.
    #[error("no free VNI is left in the cluster; remove unused overlay networks")]
    NoFreeVni,
    /// The network still has endpoints somewhere in the cluster.
    #[error(
        "network {network} still has {count} endpoint(s) in the cluster; disconnect them first"
    )]
    NetworkInUse {
        /// The network.
        network: String,
        /// How many endpoints.
        count: i64,
    },
    /// A requested address is held by someone else.
    #[error("address {ip} on network {network} is taken by endpoint {endpoint} on host {host}; choose another --ip or omit it")]
    AddressTaken {
        /// The network.
        network: String,
        /// The address.
        ip: Ipv4Addr,
        /// The holder's host.
        host: String,
        /// The holder's endpoint.
        endpoint: String,
    },
    /// A requested address is outside the subnet or reserved.
    #[error("address {ip} cannot be used in subnet {subnet}: it is outside it or is the network, broadcast or gateway address")]
    BadAddress {
        /// The address.
        ip: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// No free address is left.
    #[error("subnet {subnet} of network {network} has no free address left in the cluster")]
    SubnetFull {
        /// The network.
        network: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// A record of that name belongs to another host.
    #[error("{what} belongs to host {owner}, not to this host ({host}); choose another name")]
    NotOwner {
        /// What was touched, e.g. "endpoint web on network front".
        what: String,
        /// The owning host.
        owner: String,
        /// This host.
        host: String,
    },
    /// Too many concurrent writers kept winning the race.
    #[error("gave up on {0} after repeated concurrent changes in etcd; retry")]
    Contention(&'static str),
    /// A running daemon is registered under this host's id.
    #[error("host {host} is already in the cluster store, registered by a daemon that is still running (it keeps renewing lease {lease:x}); give every daemon its own --advertise address, or stop the other one first")]
    HostTaken {
        /// The host id.
        host: String,
        /// The other daemon's lease.
        lease: i64,
    },
    /// The store's thread is gone (the store was closed or crashed).
    #[error("the cluster store has stopped")]
    Stopped,
    /// The store's thread could not be started.
    #[error("cannot start the cluster store thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> ClusterError {
        ClusterError::Etcd(e)
    }
}
