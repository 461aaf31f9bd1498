//! L2 forwarding of 64-byte frames through the whole pipeline with in-memory
//! ports, one worker driven on the bench thread: 1k and 100k learned MACs, and
//! a two-worker run where every frame crosses the inter-worker queue.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::clock::SystemClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use switchyard::pipeline::frame::Frame;

use switchyard::pipeline::pool::BufferPool;
use switchyard::pipeline::worker::{Worker, WorkerConfig};
use switchyard::ports::{Port, PortCaps, TxResult};
use switchyard::tables::mac::MacConfig;
use switchyard::tables::topology::PortSecurity;
use switchyard::wire::MacAddr;

const CAPS: PortCaps = PortCaps {
    offload: true,
    mtu: 1500,
    segments_gso: false,
    uso: false,
};
const BUDGET: usize = 8;

/// Generates 64-byte frames like a NIC would DMA them: a template with the
/// source and destination taken from lists, round-robin; discards what it is
/// sent. The list positions wrap by comparison, not `%`: two divisions per
/// frame cost the generator more than some pipeline stages.
struct GenPort {
    template: [u8; 64],
    srcs: Vec<MacAddr>,
    dsts: Vec<MacAddr>,
    i: usize,
    src_at: usize,
    dst_at: usize,
    limit: Option<usize>,
}

impl Port for GenPort {
    fn name(&self) -> &str {
        "gen"
    }
    fn caps(&self) -> PortCaps {
        CAPS
    }
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
    fn recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < max && self.limit.is_none_or(|l| self.i < l) {
            let Some(mut f) = pool.alloc() else { break };
            let space = f.receive_space();
            space[..64].copy_from_slice(&self.template);
            space[0..6].copy_from_slice(&self.dsts[self.dst_at].0);
            space[6..12].copy_from_slice(&self.srcs[self.src_at].0);
            f.set_len(64);
            out.push(f);
            self.i += 1;
            self.dst_at += 1;
            if self.dst_at == self.dsts.len() {
                self.dst_at = 0;
            }
            self.src_at += 1;
            if self.src_at == self.srcs.len() {
                self.src_at = 0;
            }
            n += 1;
        }
        Ok(n)
    }
    fn send(&mut self, frames: &mut Vec<Frame>, pool: &mut BufferPool) -> TxResult {
        let mut r = TxResult::default();
        for f in frames.drain(..) {
            r.sent += 1;
            r.bytes += f.len() as u64;
            pool.free(f);
        }
        r
    }
}

fn macs(n: usize, prefix: u8) -> Vec<MacAddr> {
    // A fixed shuffle (multiplicative stride) so lookups do not walk the
    // table in insertion order.
    let stride = 7919;
    (0..n)
        .map(|i| MacAddr::local_from_u32(prefix, ((i * stride) % n) as u32 + 1))
        .collect()
}

/// A switch with `learned` MACs behind port B and a generator on port A
/// sending to all of them; returns the workers to drive.
fn setup(learned: usize, workers: usize) -> (Dataplane, Vec<Worker>) {
    let config = DataplaneConfig {
        workers,
        pool_frames: 8192,
        inbox_depth: 4096,
        worker: WorkerConfig {
            port_budget: BUDGET,
            mac: MacConfig::default(),
            mac_capacity: learned * 2,
            idle_timeout: Duration::ZERO,
            busy_poll: Duration::ZERO,
            udp_gro: true,
        },
        gateway_threads: 0,
        cpu_affinity: None,
        fault: None,
    };
    let (mut dp, mut ws) = Dataplane::inline(config, Arc::new(SystemClock::new())).unwrap();
    let net = dp
        .add_network(NetworkSpec {
            name: "bench".into(),
            gateway: None,
            isolate: false,
            internal: false,
            mac_cap: Some(learned * 2),
            subnet4: None,
            subnet6: None,
            host_loopback: false,
        })
        .unwrap();
    let a_mac = MacAddr::local_from_u32(0xaa, 1);
    let hosts = macs(learned, 0xbb);
    let mut template = [0u8; 64];
    template[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let b = GenPort {
        template,
        srcs: hosts.clone(),
        dsts: vec![a_mac],
        i: 0,
        src_at: 0,
        dst_at: 0,
        limit: Some(learned),
    };
    dp.add_port(
        PortSpec {
            network: net,
            security: PortSecurity::default(),
            worker: Some(workers - 1),
        },
        Box::new(b),
    )
    .unwrap();
    while ws.iter().map(|w| w.mac_table().len()).min().unwrap_or(0) < learned {
        for w in ws.iter_mut() {
            w.run_once(Duration::ZERO);
        }
    }
    let a = GenPort {
        template,
        srcs: vec![a_mac],
        dsts: hosts,
        i: 0,
        src_at: 0,
        dst_at: 0,
        limit: None,
    };
    dp.add_port(
        PortSpec {
            network: net,
            security: PortSecurity::default(),
            worker: Some(0),
        },
        Box::new(a),
    )
    .unwrap();
    for w in ws.iter_mut() {
        w.run_once(Duration::ZERO);
    }
    (dp, ws)
}

fn l2_forwarding(c: &mut Criterion) {
    let mut g = c.benchmark_group("l2_forward_64B");
    g.throughput(Throughput::Elements((BUDGET * 64) as u64));
    for learned in [1_000usize, 100_000] {
        let (dp, mut ws) = setup(learned, 1);
        let before = dp.stats().total_drops();
        g.bench_function(format!("1worker_{learned}macs"), |b| {
            b.iter(|| ws[0].run_once(Duration::ZERO))
        });
        let s = dp.stats();
        assert_eq!(s.total_drops(), before, "drops in bench: {:?}", s.drops);
    }
    let (dp, mut ws) = setup(1_000, 2);
    let before = dp.stats().total_drops();
    g.bench_function("2workers_cross_queue_1000macs", |b| {
        b.iter(|| {
            ws[0].run_once(Duration::ZERO);
            ws[1].run_once(Duration::ZERO);
        })
    });
    let s = dp.stats();
    assert_eq!(s.total_drops(), before, "drops in bench: {:?}", s.drops);
    g.finish();
}

criterion_group!(benches, l2_forwarding);
criterion_main!(benches);
