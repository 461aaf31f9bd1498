//! Arbitrary frames from two in-memory ports through a whole pipeline with
//! the gateway's services (DNS answered in the worker, NAT hand-off; one
//! dual-stack network with a gateway and one named endpoint): nothing
//! panics, every frame is either sent or counted as a drop.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchyard::clock::FakeClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use switchyard::dns::records::{DnsSettings, DnsTable, EndpointRecord, NetworkRecords};
use switchyard::dns::DnsService;
use switchyard::pipeline::Pipeline;
use switchyard::ports::memory::MemoryPort;
use switchyard::ports::PortCaps;
use switchyard::tables::topology::{GatewayInfo, PortSecurity};
use switchyard::wire::MacAddr;

fuzz_target!(|input: Vec<(bool, bool, Vec<u8>)>| {
    let config = DataplaneConfig {
        workers: 2,
        pool_frames: 512,
        inbox_depth: 256,
        ..DataplaneConfig::default()
    };
    let clock = FakeClock::new();
    let dns = DnsService::new(DnsSettings::default());
    let make = |_| Pipeline::with_gateway_services(dns.clone());
    let Ok((mut dp, mut workers)) = Dataplane::inline_with(config, Arc::new(clock.clone()), make)
    else {
        return;
    };
    let Ok(net) = dp.add_network(NetworkSpec {
        name: "fuzz".into(),
        gateway: Some(GatewayInfo {
            mac: MacAddr([2, 0x5e, 0, 0, 0, 1]),
            ipv4: Some([10, 0, 0, 1].into()),
            // The gateway's NDP and ICMPv6 answers and IPv6 NAT decisions.
            ipv6: Some("fd00::1".parse().expect("literal")),
        }),
        isolate: false,
        internal: false,
        mac_cap: Some(16),
        subnet4: Some(([10, 0, 0, 0].into(), 24)),
        subnet6: Some(("fd00::".parse().expect("literal"), 64)),
        host_loopback: false,
    }) else {
        return;
    };
    let web = EndpointRecord {
        name: "web".into(),
        aliases: vec!["svc".into()],
        ipv4: Some([10, 0, 0, 2].into()),
        ipv6: Some("fd00::2".parse().expect("literal")),
        srv_port: 80,
    };
    let records = NetworkRecords {
        id: net,
        name: "fuzz".into(),
        forward: true,
        mtu: 1500,
        subnets: vec![
            ([10, 0, 0, 0].into(), 24),
            ("fd00::".parse().expect("literal"), 64),
        ],
        endpoints: vec![web],
    };
    dns.table.store(Arc::new(DnsTable::build(
        DnsSettings::default(),
        &[records],
    )));
    let mut handles = Vec::new();
    // With offloads (USO too, so UDP runs are coalesced); without; and
    // without but cutting GSO frames itself (a VXLAN tunnel port's caps).
    for (i, offload, segments_gso) in [(0, true, false), (1, false, false), (1, false, true)] {
        let caps = PortCaps {
            offload,
            mtu: 1500,
            segments_gso,
            uso: offload,
        };
        let (port, handle) = MemoryPort::new("fuzz", caps, 1024);
        let spec = PortSpec {
            network: net,
            security: PortSecurity::default(),
            worker: Some(i),
        };
        if dp.add_port(spec, Box::new(port)).is_err() {
            return;
        }
        handles.push(handle);
    }
    for (second_port, gso, frame) in input.iter().take(256) {
        let h = &handles[usize::from(*second_port)];
        if *gso && frame.len() >= 10 {
            // The first bytes double as an offload header, as a TAP gives.
            if let Ok(v) = switchyard::wire::virtio_net::VirtioNetHdr::parse(frame) {
                h.inject_with(v, &frame[10..]);
            }
        } else {
            h.inject(frame);
        }
        clock.advance(1_000);
    }
    for _ in 0..8 {
        for w in workers.iter_mut() {
            w.run_once(Duration::ZERO);
        }
    }
    let _ = dp.stats();
});
