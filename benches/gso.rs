//! Software segmentation of a 64 KiB TCP frame (IPv4 and IPv6) into MSS-sized
//! frames, as done when a GSO frame leaves through a port without offloads;
//! the Internet checksum; and the other direction for UDP: coalescing a
//! run of datagrams into one USO frame, as done for a TAP that takes USO,
//! and a whole tx batch of interleaved flows going through the switch's
//! coalescing step.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use switchyard::wire::gso::Segmenter;
use switchyard::wire::virtio_net::{GsoType, VirtioNetHdr};

const PAYLOAD: usize = 65_000;
const MSS: u16 = 1448;

fn gso_frame(v6: bool) -> (Vec<u8>, VirtioNetHdr) {
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let (builder, l3_len) = if v6 {
        (eth.ipv6([0xfd; 16], [0xfe; 16], 64), 40)
    } else {
        (eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64), 20)
    };
    let builder = builder.tcp(40000, 5201, 1, 65535).ack(7);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("building the benchmark frame");
    let hdr = VirtioNetHdr {
        flags: 0,
        gso_type: if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
        gso_ecn: false,
        hdr_len: (14 + l3_len + 20) as u16,
        gso_size: MSS,
        csum_start: (14 + l3_len) as u16,
        csum_offset: 16,
    };
    (frame, hdr)
}

fn segmentation(c: &mut Criterion) {
    let mut g = c.benchmark_group("gso_segment_64KiB");
    let segments = PAYLOAD.div_ceil(MSS as usize);
    g.throughput(Throughput::Elements(segments as u64));
    let mut out = vec![0u8; 2048];
    for v6 in [false, true] {
        let (frame, hdr) = gso_frame(v6);
        let name = if v6 { "tcp_v6" } else { "tcp_v4" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut seg = Segmenter::new(&frame, &hdr, None).expect("segmenter");
                let mut n = 0;
                while let Some(r) = seg.next_into(&mut out) {
                    n += r.expect("segment");
                }
                n
            })
        });
    }
    g.finish();
}

/// The Internet checksum over a segment's worth and over 64 KiB (what
/// segmentation and checksum completion spend most of their time in).
fn checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
    for len in [1448usize, 65536] {
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("{len}B"), |b| {
            b.iter(|| switchyard::wire::checksum::sum(std::hint::black_box(&data[..len])))
        });
    }
    g.finish();
}

/// 64 datagrams of one flow merged into one USO frame: the decisions
/// (headers compared, checksums verified) and the payload copies. Small
/// ones without a UDP checksum, as trafgen sends them, and 1000-byte ones
/// with one, as a QUIC sender would.
fn udp_coalescing(c: &mut Criterion) {
    use switchyard::wire::udp_gro;
    let mut g = c.benchmark_group("udp_gro_64_datagrams");
    g.throughput(Throughput::Elements(64));
    for (name, len, csum) in [("18B_no_checksum", 18usize, false), ("1000B", 1000, true)] {
        let frames: Vec<Vec<u8>> = (0..64)
            .map(|i| {
                let payload = vec![i as u8; len];
                let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    .udp(5000, 5001);
                let mut f = Vec::with_capacity(b.size(len));
                b.write(&mut f, &payload).expect("building a datagram");
                if !csum {
                    f[40..42].fill(0);
                }
                f
            })
            .collect();
        let mut head = Vec::with_capacity(70_000);
        g.bench_function(name, |b| {
            b.iter(|| {
                head.clear();
                head.extend_from_slice(&frames[0]);
                let mut vnet = VirtioNetHdr::NONE;
                for next in &frames[1..] {
                    let m = udp_gro::continues(&head, &vnet, next, &VirtioNetHdr::NONE)
                        .expect("continues");
                    head.truncate(m.head_len);
                    head.extend_from_slice(&next[m.payload.0..m.payload.1]);
                    vnet = udp_gro::finish(&mut head, m.mss);
                }
                vnet.gso_size
            })
        });
    }
    g.finish();
}

/// A tx batch of 64 DNS replies to 4 resolver sockets taking turns (the
/// names' lengths end a run every third reply per socket), through the
/// switch's whole coalescing step for a port with USO: 4 x 6 frames leave.
/// Each iteration also takes the 64 frames from the pool and fills them.
fn batch_coalescing(c: &mut Criterion) {
    use switchyard::pipeline::offload;
    use switchyard::pipeline::pool::BufferPool;
    use switchyard::ports::PortCaps;
    use switchyard::stats::WorkerCounters;
    let replies: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            let len = if (i / 4) % 3 == 2 { 36 } else { 37 };
            let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(53, 40000 + (i % 4) as u16);
            let mut f = Vec::with_capacity(b.size(len));
            b.write(&mut f, &vec![i as u8; len])
                .expect("building a reply");
            f[20] = 0x40; // DF, as the gateway sends them
            f
        })
        .collect();
    let caps = PortCaps {
        offload: true,
        mtu: 1500,
        segments_gso: false,
        uso: true,
    };
    let mut pool = BufferPool::standalone(128);
    let counters = WorkerCounters::default();
    let (mut pending, mut scratch) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let mut run = move || {
        for r in &replies {
            let mut f = pool.alloc().expect("pool sized for the batch");
            f.receive_space()[..r.len()].copy_from_slice(r);
            f.set_len(r.len());
            pending.push(f);
        }
        offload::adapt(caps, &mut pending, &mut scratch, &mut pool, &counters);
        let left = pending.len();
        for f in pending.drain(..) {
            pool.free(f);
        }
        left
    };
    assert_eq!(run(), 24, "each socket's replies merge in runs of three");
    let mut g = c.benchmark_group("coalesce_batch");
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_dns_replies_4_flows", |b| b.iter(&mut run));
    g.finish();
}

criterion_group!(
    benches,
    segmentation,
    checksum,
    udp_coalescing,
    batch_coalescing
);
criterion_main!(benches);
