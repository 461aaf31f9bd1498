//! A stack thread's state driven by hand, for the gateway's tests: network
//! 0 (10.0.0.0/24, fd00::/64, gateway .1 / ::1) with sandbox ports 1 to
//! 1000, whose frames land in one worker's inbox.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use mio::Events;

use super::*;
use crate::dns::records::DnsSettings;
use crate::pipeline::pool::BufferPool;
use crate::pipeline::worker::WorkerShared;
use crate::ports::{PortCaps, PortId};
use crate::stats::WorkerCounters;
use crate::tables::topology::{GatewayInfo, NetworkInfo, PortInfo, Topology};
use crate::wire::MacAddr;

pub const NET: NetworkId = NetworkId(0);
pub const GW_MAC: MacAddr = MacAddr([2, 0x5e, 0, 0, 0, 1]);
pub const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// Sandbox ports.
pub const PORTS: u32 = 1000;

/// Sandbox `i`'s MAC.
pub fn mac(i: u16) -> MacAddr {
    let [a, b] = i.to_be_bytes();
    MacAddr([2, 0, 0, 0, a, b])
}

/// The topology, with network 0's `--host-loopback` as asked.
pub fn topology(host_loopback: bool) -> Topology {
    let mut t = Topology::default();
    t.set_network(NetworkInfo {
        id: NET,
        name: "n0".into(),
        ports: vec![],
        gateway: Some(GatewayInfo {
            mac: GW_MAC,
            ipv4: Some(GW4),
            ipv6: Some(GW6),
        }),
        isolate: false,
        internal: false,
        mac_cap: 4096,
        subnet4: Some((Ipv4Addr::new(10, 0, 0, 0), 24)),
        subnet6: Some((Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 64)),
        host_loopback,
    });
    for i in 1..=PORTS {
        t.add_port(PortInfo {
            id: PortId(i),
            name: format!("p{i}"),
            network: NET,
            owner: 0,
            queue_workers: 1,
            caps: PortCaps {
                offload: false,
                mtu: 1500,
                segments_gso: false,
                uso: false,
            },
            security: Default::default(),
        });
    }
    t
}

/// A runner and the worker its frames go to.
pub struct Harness {
    pub runner: Runner,
    pub worker: Arc<WorkerShared>,
}

impl Harness {
    pub fn new(host_loopback: bool) -> Harness {
        let topo: SharedTopology =
            Arc::new(arc_swap::ArcSwap::from_pointee(topology(host_loopback)));
        let worker = Arc::new(WorkerShared {
            inbox: ArrayQueue::new(4096),
            learn_inbox: ArrayQueue::new(16),
            sleeping: AtomicBool::new(false),
            waker: None,
            counters: Arc::new(WorkerCounters::default()),
        });
        let punt = Arc::new(PuntQueue::new(64, 1));
        let injector = Injector::new(
            BufferPool::standalone(4096),
            vec![worker.clone()],
            topo.clone(),
            Arc::new(WorkerCounters::default()),
        );
        let runner = Runner::new(RunnerSetup {
            punt: punt.clone(),
            shard: 0,
            answers: Arc::new(TcpAnswers {
                queues: vec![ArrayQueue::new(4)].into(),
                punt,
            }),
            injector,
            dns: DnsService::new(DnsSettings::default()),
            topo,
            conns: ConnIds::new(0, 1),
            flows: FlowTable::new(FlowLimits::default()),
            commands: crossbeam::channel::unbounded().1,
        })
        .expect("poll");
        Harness { runner, worker }
    }

    /// One round of the thread's loop, waiting up to `wait_ms` for host
    /// sockets.
    pub fn round(&mut self, wait_ms: u64) {
        let r = &mut self.runner;
        r.serve_listeners();
        r.service();
        r.drive_flows();
        r.heal_neighbours();
        let mut events = Events::with_capacity(64);
        let wait = std::time::Duration::from_millis(wait_ms);
        let _ = r.poll.poll(&mut events, Some(wait));
        r.host_events(&events);
    }

    /// Frames sent to sandboxes since the last call.
    pub fn sent(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.worker.inbox.pop() {
            out.push(f.data().to_vec());
            self.runner.injector.free(f);
        }
        out
    }
}
