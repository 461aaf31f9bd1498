//! The daemon's side of the gateway services: the DNS records it publishes
//! (rebuilt from the model after every change to networks, endpoints,
//! aliases or publications, and swapped in whole, so the next query sees the
//! change and no query waits for it), and the counters of the gateway stack
//! and the DNS forwarder.

use std::net::IpAddr;

use super::{ClusterEndpoint, Daemon};
use crate::control::model::{Endpoint, Network};
use crate::dns::records::{DnsTable, EndpointRecord, NetworkRecords};

fn endpoint_record(ep: &Endpoint) -> EndpointRecord {
    EndpointRecord {
        name: ep.name.clone(),
        aliases: ep.aliases.clone(),
        ipv4: Some(ep.ipv4),
        ipv6: ep.ipv6,
        srv_port: ep
            .publications
            .first()
            .map_or(0, |p| p.container_ports.start),
    }
}

fn remote_record(ep: &ClusterEndpoint) -> EndpointRecord {
    EndpointRecord {
        name: ep.name.clone(),
        aliases: ep.aliases.clone(),
        ipv4: Some(ep.ipv4),
        ipv6: ep.ipv6,
        srv_port: 0,
    }
}

fn network_records(
    net: &Network,
    id: crate::tables::topology::NetworkId,
    endpoints: &[Endpoint],
    remote: &[ClusterEndpoint],
) -> NetworkRecords {
    let mut subnets = vec![(IpAddr::V4(net.subnet4.addr()), net.subnet4.prefix())];
    subnets.extend(net.subnet6.map(|s| (IpAddr::V6(s.addr()), s.prefix())));
    NetworkRecords {
        id,
        name: net.name.clone(),
        forward: !net.internal,
        mtu: net.mtu,
        subnets,
        endpoints: endpoints
            .iter()
            .filter(|e| e.network == net.name)
            .map(endpoint_record)
            .chain(remote.iter().map(remote_record))
            .collect(),
    }
}

impl Daemon {
    /// Rebuilds and publishes the DNS records from the current state.
    pub(super) fn publish_dns(&self) {
        let networks: Vec<NetworkRecords> = self
            .state
            .networks
            .iter()
            .filter_map(|n| {
                let id = *self.net_ids.get(&n.name)?;
                let remote = self.remote.get(&n.name).map_or(&[][..], Vec::as_slice);
                Some(network_records(n, id, &self.state.endpoints, remote))
            })
            .collect();
        let settings = self.dns.table.load().settings.clone();
        self.dns.publish(DnsTable::build(settings, &networks));
    }
}

impl Daemon {
    /// Adds the gateway stack's and the forwarder's counters to `events`.
    pub(super) fn stack_events(&self, events: &mut std::collections::BTreeMap<String, u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.stack.counters();
        for (name, v) in [
            ("dns-tcp-connections", &c.dns_tcp_connections),
            ("dns-tcp-queries", &c.dns_tcp_queries),
            ("dns-tcp-forwarded", &c.dns_tcp_forwarded),
            ("dns-tcp-malformed", &c.dns_tcp_malformed),
            ("punt-unhandled", &c.punt_unhandled),
            ("gateway-stack-unroutable", &c.unroutable),
            ("nat-tcp-flows", &c.nat_tcp_flows),
            ("nat-udp-flows", &c.nat_udp_flows),
            ("nat-refused", &c.nat_refused),
            ("nat-flow-cap", &c.nat_flow_cap),
            ("nat-rejected", &c.nat_rejected),
            ("nat-unsupported", &c.nat_unsupported),
            ("nat-udp-send-errors", &c.nat_udp_send_errors),
            ("nat-active-flows", &c.nat_active),
            ("nat-icmp-flows", &c.nat_icmp_flows),
            ("nat-icmp-denied", &c.nat_icmp_denied),
            ("published-tcp-connections", &c.published_tcp),
            ("published-udp-sessions", &c.published_udp),
            ("published-spliced", &c.published_spliced),
        ] {
            events.insert(name.to_string(), v.load(Relaxed));
        }
        let f = self.forwarder.stats();
        for (name, v) in [
            ("dns-upstream-forwarded", f.forwarded),
            ("dns-upstream-answered", f.answered),
            ("dns-upstream-merged", f.merged),
            ("dns-upstream-queue-full", f.queue_full),
            ("dns-upstream-over-cap", f.over_cap),
            ("dns-upstream-timeouts", f.timeouts),
            ("dns-upstream-servfail", f.servfail),
            ("dns-upstream-mismatched", f.mismatched),
            ("dns-upstream-malformed", f.malformed),
            ("dns-upstream-none", f.no_upstream),
        ] {
            events.insert(name.to_string(), v);
        }
    }
}
