//! DNS responder: any bytes as a query, over UDP and TCP, on a forwarding
//! and an internal zone. Answers are well-formed and within the size limit.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchyard::dns::answer::{Outcome, Responder, Transport};
use switchyard::dns::records::{DnsSettings, DnsTable, EndpointRecord, NetworkRecords};
use switchyard::tables::topology::NetworkId;

fn table() -> &'static DnsTable {
    static T: OnceLock<DnsTable> = OnceLock::new();
    T.get_or_init(|| {
        let net = |id: u16, forward: bool| NetworkRecords {
            id: NetworkId(id),
            name: format!("net{id}"),
            forward,
            mtu: 1500,
            subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, id as u8, 0)), 24)],
            endpoints: (0..40)
                .map(|i| EndpointRecord {
                    name: format!("ep{i}"),
                    aliases: vec!["svc".into(), format!("a{}", i % 3)],
                    ipv4: Some(Ipv4Addr::new(10, 0, id as u8, i + 2)),
                    ipv6: (i % 2 == 0).then(|| format!("fd00::{i:x}").parse().unwrap()),
                    srv_port: 80,
                })
                .collect(),
        };
        DnsTable::build(DnsSettings::default(), &[net(0, true), net(1, false)])
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, query)) = data.split_first() else {
        return;
    };
    let t = table();
    let zone = t.zone(NetworkId(u16::from(sel & 1))).expect("zone");
    let transport = if sel & 2 == 0 {
        Transport::Udp { path_max: 1472 }
    } else {
        Transport::Tcp
    };
    let mut out = Vec::new();
    match Responder::default().respond(&t.settings, zone, query, transport, &mut out) {
        Outcome::Answered { .. } => {
            assert!(out.len() >= 12);
            if let Transport::Udp { path_max } = transport {
                assert!(out.len() <= usize::from(path_max));
            }
            assert_eq!(out[..2], query[..2], "answer keeps the query id");
        }
        Outcome::Forward { max_len } => assert!(max_len >= 512),
        Outcome::Dropped => {}
    }
});
