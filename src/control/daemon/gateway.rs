//! The daemon's side of the gateway services: the DNS records it publishes
//! (rebuilt from the model after every change to networks, endpoints,
//! aliases or publications, and swapped in whole, so the next query sees the
//! change and no query waits for it), and the counters of the gateway stack
//! and the DNS forwarder.

use std::net::IpAddr;

use super::Daemon;
use crate::control::cluster;
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

fn remote_record(ep: &cluster::EndpointRecord) -> EndpointRecord {
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
    remote: &[cluster::EndpointRecord],
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
                Some(network_records(
                    n,
                    id,
                    &self.state.endpoints,
                    self.remote_of(&n.name),
                ))
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
        for (i, c) in self.stack.counters().enumerate() {
            for (name, v) in c.named() {
                *events.entry(name.to_string()).or_default() += v.load(Relaxed);
            }
            // How the flows spread over the stack threads: flows opened.
            let opened = [&c.nat_tcp_flows, &c.nat_udp_flows, &c.nat_icmp_flows]
                .iter()
                .chain([&c.published_tcp, &c.published_udp].iter())
                .map(|v| v.load(Relaxed))
                .sum();
            events.insert(format!("nat-flows-thread-{i}"), opened);
        }
        events.insert("gateway-threads".into(), self.stack.threads() as u64);
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
            ("dns-upstream-tcp-retries", f.tcp_retries),
            ("dns-upstream-tcp-failed", f.tcp_failed),
            ("dns-upstream-tcp-over-cap", f.tcp_over_cap),
        ] {
            events.insert(name.to_string(), v);
        }
    }
}
