//! Software segmentation of a 64 KiB TCP frame (IPv4 and IPv6) into MSS-sized
//! frames, as done when a GSO frame leaves through a port without offloads;
//! the Internet checksum; and the other direction for UDP: coalescing a
//! run of datagrams into one USO frame, as done for a TAP that takes USO.

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

criterion_group!(benches, segmentation, checksum, udp_coalescing);
criterion_main!(benches);
