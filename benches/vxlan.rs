//! VXLAN encapsulation + decapsulation of 64-byte inner frames in memory
//! (header push, then the decap stage's header, VNI, VTEP and inner-source
//! checks and header pull), one thread, batches of 64.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::pipeline::decap::decapsulate;
use switchyard::pipeline::frame::Frame;
use switchyard::ports::vxlan::encapsulate;
use switchyard::tables::overlay::fixture::{
    ipv4_frame, topology, vtep_b, LOCAL, REMOTE_B, TUNNEL_B, VNI,
};

const BATCH: usize = 64;

fn encap_decap(c: &mut Criterion) {
    let mut g = c.benchmark_group("vxlan");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, learn) in [("control_plane_remotes", false), ("static_learn", true)] {
        let topo = topology(learn);
        let inner = ipv4_frame(LOCAL, REMOTE_B, Ipv4Addr::new(10, 0, 0, 11));
        let mut frames: Vec<Frame> = (0..BATCH)
            .map(|_| {
                let mut f = Frame::alloc();
                f.fill(&inner);
                f
            })
            .collect();
        let src = Some(vtep_b());
        g.bench_function(format!("encap_decap_64B/{name}"), |b| {
            b.iter(|| {
                for f in frames.iter_mut() {
                    let ok = encapsulate(f, VNI);
                    let port = decapsulate(&topo, src, f);
                    debug_assert!(ok && port == Ok(TUNNEL_B));
                    black_box(port.is_ok() && ok);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encap_decap);
criterion_main!(benches);
