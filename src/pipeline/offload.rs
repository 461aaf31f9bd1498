//! Offload adaptation before tx: a port that cannot take GSO frames or partial
//! checksums gets them segmented and completed in software; a port that can
//! gets them whole. Only here does a 64 KiB frame turn into MTU-sized ones —
//! and, the other way, the segments of a TCP flow in one batch (as they
//! arrive from a VXLAN peer) are coalesced into one GSO frame for a port
//! that takes them, so the receiver's kernel handles one frame instead of
//! ~45; likewise a UDP flow's datagrams into one USO frame. Several flows
//! may interleave in a batch; each keeps its order.

use super::drop::DropReason;
use super::frame::Frame;
use super::pool::BufferPool;
use crate::ports::{PortCaps, CUT_MAX_HEADER, CUT_MAX_SEGMENTS};
use crate::stats::WorkerCounters;
use crate::wire::gso::{complete_checksum, Segmenter};
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::{ethernet, gro, udp_gro, udp_gso};

/// Ethernet header length.
const ETH: usize = ethernet::HEADER_LEN;

/// Room for an Ethernet header with one VLAN tag above the MTU.
const L2_OVERHEAD: usize = ethernet::HEADER_LEN + 4;

/// Rewrites `pending` so every frame fits `caps`, using `scratch` as the
/// output list (left empty). Frames that cannot be made to fit are dropped
/// and counted.
pub fn adapt(
    caps: PortCaps,
    pending: &mut Vec<Frame>,
    scratch: &mut Vec<Frame>,
    pool: &mut BufferPool,
    counters: &WorkerCounters,
) {
    if caps.offload {
        // A TAP without USO (before Linux 6.2) still takes partial checksums.
        if !caps.uso && pending.iter().any(is_uso) {
            scratch.clear();
            for f in pending.drain(..) {
                if is_uso(&f) {
                    cut_uso(&f, pool, counters, |g, _| {
                        scratch.push(g);
                        true
                    });
                    pool.free(f);
                } else {
                    scratch.push(f);
                }
            }
            std::mem::swap(pending, scratch);
        }
        coalesce(pending, pool, counters, caps.uso);
        return;
    }
    // GSO frames always go through the loop below, which decides once per
    // frame whether the port takes it whole.
    let needs_work = pending.iter().any(|f| {
        f.vnet.is_gso() || f.vnet.needs_csum() || f.len() > caps.mtu as usize + L2_OVERHEAD
    });
    if !needs_work {
        for f in pending.iter_mut() {
            f.vnet = VirtioNetHdr::NONE;
        }
        return;
    }
    scratch.clear();
    for f in pending.drain(..) {
        if is_uso(&f) {
            // Its datagrams carry partial checksums: finished as any frame.
            cut_uso(&f, pool, counters, |g, pool| {
                finish_plain(g, caps, scratch, pool, counters)
            });
            pool.free(f);
            continue;
        }
        if f.vnet.is_gso() && keeps_whole(&f, caps) {
            scratch.push(f);
            continue;
        }
        if f.vnet.is_gso() {
            segment_into(&f, caps, scratch, pool, counters);
            pool.free(f);
            continue;
        }
        finish_plain(f, caps, scratch, pool, counters);
    }
    std::mem::swap(pending, scratch);
}

/// Makes frame `f` (not a GSO frame) fit a port without offloads: its
/// partial checksum completed, then pushed onto `out` without a virtio-net
/// request if it fits the port's MTU. True if pushed; else it is freed and
/// counted (`offload-failed`, `too-big`).
fn finish_plain(
    mut f: Frame,
    caps: PortCaps,
    out: &mut Vec<Frame>,
    pool: &mut BufferPool,
    counters: &WorkerCounters,
) -> bool {
    if f.vnet.needs_csum() {
        let vnet = f.vnet;
        if complete_checksum(f.data_mut(), &vnet).is_err() {
            counters.count_drop(DropReason::OffloadFailed);
            pool.free(f);
            return false;
        }
    }
    if f.len() > caps.mtu as usize + L2_OVERHEAD {
        counters.count_drop(DropReason::TooBig);
        pool.free(f);
        return false;
    }
    f.vnet = VirtioNetHdr::NONE;
    out.push(f);
    true
}

fn is_uso(f: &Frame) -> bool {
    f.vnet.gso_type == GsoType::UdpL4
}

/// Cuts USO frame `f` (a sandbox's UDP GSO burst that crossed whole) into
/// its datagrams, each with a partial checksum, for a port that cannot take
/// it, and hands each to `emit`, which returns true if it kept it (then it
/// counts as `uso-split`). A frame that cannot be cut is an `offload-failed`
/// drop, an empty pool a `no-buffer` one.
fn cut_uso(
    f: &Frame,
    pool: &mut BufferPool,
    counters: &WorkerCounters,
    mut emit: impl FnMut(Frame, &mut BufferPool) -> bool,
) {
    let Ok(plan) = udp_gso::plan(f.data(), &f.vnet) else {
        counters.count_drop(DropReason::OffloadFailed);
        return;
    };
    let mut cut = 0;
    for i in 0..plan.segments {
        match cut_datagram(f, &plan, i, pool) {
            Ok(Some(g)) => cut += u64::from(emit(g, pool)),
            Ok(None) => {
                counters.count_drop(DropReason::NoBuffer);
                break;
            }
            Err(_) => counters.count_drop(DropReason::OffloadFailed),
        }
    }
    if cut > 0 {
        crate::stats::bump(&counters.uso_split, cut);
    }
}

/// Writes datagram `i` of USO frame `f` (cut as `plan` says, see
/// [`udp_gso::write_segment`]) into a frame from `pool`, with `f`'s
/// metadata and a partial checksum; `Ok(None)` if the pool is empty. Shared
/// by the TAP port (cutting at the read) and [`adapt`] (cutting for a port
/// without USO).
pub fn cut_datagram(
    f: &Frame,
    plan: &udp_gso::Plan,
    i: usize,
    pool: &mut BufferPool,
) -> crate::wire::Result<Option<Frame>> {
    let Some(mut g) = pool.alloc() else {
        return Ok(None);
    };
    match udp_gso::write_segment(f.data(), plan, i, g.receive_space()) {
        Ok((len, vnet)) => {
            g.set_len(len);
            g.vnet = vnet;
            g.meta = f.meta;
            Ok(Some(g))
        }
        Err(e) => {
            pool.free(g);
            Err(e)
        }
    }
}

/// Smallest segment size the switch cuts to, whatever the MTU.
const MIN_SEGMENT: usize = 8;

/// The segmenter that cuts GSO frame `f` for a port of `mtu`: the sender's
/// segment size, lowered so that each segment's IP packet, with the frame's
/// own IP and TCP headers (options and extension headers included; the
/// sender's `hdr_len` is only a hint), fits the MTU.
pub fn segmenter_for(f: &Frame, mtu: u16) -> crate::wire::Result<Segmenter<'_>> {
    let probe = Segmenter::new(f.data(), &f.vnet, None)?;
    let cap = usize::from(mtu)
        .saturating_sub(probe.l3_header_len())
        .max(MIN_SEGMENT);
    match u16::try_from(cap) {
        Ok(cap) if cap < f.vnet.gso_size => Segmenter::new(f.data(), &f.vnet, Some(cap)),
        _ => Ok(probe),
    }
}

/// The segmenter with which a [`PortCaps::segments_gso`] port of `mtu` cuts
/// GSO frame `f` while sending, or `None` if it cannot take `f` whole: `f`
/// must be a TCP frame the segmenter accepts, within [`CUT_MAX_HEADER`] and
/// [`CUT_MAX_SEGMENTS`]. The one rule both the switch (here) and such a
/// port apply.
pub fn cut_whole(f: &Frame, mtu: u16) -> Option<Segmenter<'_>> {
    segmenter_for(f, mtu)
        .ok()
        .filter(|s| s.header_len() <= CUT_MAX_HEADER && s.segment_count() <= CUT_MAX_SEGMENTS)
}

/// True if a port with `caps` takes GSO frame `f` whole and cuts it itself;
/// otherwise the switch segments it and counts what fails.
fn keeps_whole(f: &Frame, caps: PortCaps) -> bool {
    caps.segments_gso && cut_whole(f, caps.mtu).is_some()
}

fn segment_into(
    f: &Frame,
    caps: PortCaps,
    out: &mut Vec<Frame>,
    pool: &mut BufferPool,
    counters: &WorkerCounters,
) {
    let mut seg = match segmenter_for(f, caps.mtu) {
        Ok(s) => s,
        Err(_) => {
            counters.count_drop(DropReason::OffloadFailed);
            return;
        }
    };
    loop {
        let Some(mut out_frame) = pool.alloc() else {
            counters.count_drop(DropReason::NoBuffer);
            return;
        };
        match seg.next_into(out_frame.receive_space()) {
            Some(Ok(len)) => {
                out_frame.set_len(len);
                out_frame.meta = f.meta;
                out.push(out_frame);
            }
            Some(Err(_)) => {
                counters.count_drop(DropReason::OffloadFailed);
                pool.free(out_frame);
                return;
            }
            None => {
                pool.free(out_frame);
                return;
            }
        }
    }
}

/// How many flows coalescing follows at once within one batch (Linux's GRO
/// likewise holds several flows per poll): enough for the interleaved
/// replies to a resolver's sockets, or a few TCP streams from a VXLAN peer.
const OPEN_FLOWS: usize = 8;

/// A flow's identity for coalescing: addresses, protocol and ports of an
/// unfragmented TCP segment over IPv4 or, with `udp`, of a UDP datagram over
/// IPv4 or extension-less IPv6; `None` for any other frame. Two flows may
/// share a key (the merge tests compare the headers in full, so that only
/// ends a run early); a flow's frames always share one.
#[inline]
fn flow_key(f: &[u8], udp: bool) -> Option<u64> {
    let word = |at: usize| -> Option<u64> {
        let b = f.get(at..at + 4)?;
        Some(u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    };
    let (addrs, proto, ports) = match f.get(12..14)? {
        [0x08, 0x00] => {
            let proto = *f.get(ETH + 9)?;
            if !(proto == 6 || (udp && proto == 17)) || word(ETH + 4)? & 0x3fff != 0 {
                return None;
            }
            let l4 = ETH + usize::from(f[ETH] & 0x0f) * 4;
            (word(ETH + 12)? << 32 | word(ETH + 16)?, proto, word(l4)?)
        }
        [0x86, 0xdd] if udp && f.get(ETH + 6) == Some(&17) => {
            let mut a = 0u64;
            for at in (ETH + 8..ETH + 40).step_by(4) {
                a = a.rotate_left(13) ^ word(at)?;
            }
            (a, 17, word(ETH + 40)?)
        }
        _ => return None,
    };
    Some(addrs ^ (ports << 8 | u64::from(proto)).rotate_left(23))
}

/// The runs still open in a batch being coalesced: per flow (by
/// [`flow_key`]) the position of its newest kept frame, the only one its
/// next frame may extend, so each flow's order is kept. When all slots are
/// taken the oldest-opened one makes room.
struct OpenRuns {
    keys: [u64; OPEN_FLOWS],
    heads: [usize; OPEN_FLOWS],
    len: usize,
    evict: usize,
}

impl OpenRuns {
    fn new() -> OpenRuns {
        OpenRuns {
            keys: [0; OPEN_FLOWS],
            heads: [0; OPEN_FLOWS],
            len: 0,
            evict: 0,
        }
    }

    /// The slot of flow `key`, if it has an open run.
    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        self.keys[..self.len].iter().position(|&k| k == key)
    }

    /// Makes the frame kept at `head` flow `key`'s open run.
    fn open(&mut self, slot: Option<usize>, key: u64, head: usize) {
        let slot = slot.unwrap_or_else(|| {
            if self.len < OPEN_FLOWS {
                self.len += 1;
                self.len - 1
            } else {
                let oldest = self.evict;
                self.evict = (oldest + 1) % OPEN_FLOWS;
                oldest
            }
        });
        self.keys[slot] = key;
        self.heads[slot] = head;
    }
}

/// Appends `next` to `head` if it continues `head`'s run: TCP segments into
/// GSO frames (see [`gro`]), with `udp` datagrams into USO frames (see
/// [`udp_gro`]). False if it does not, or if `head` has no room.
fn merge(head: &mut Frame, next: &Frame, udp: bool) -> bool {
    if let Some((at, mss)) = gro::continues(head.data(), &head.vnet, next.data(), &next.vnet) {
        let psh = gro::has_psh(next.data());
        return head.append(&next.data()[at..]) && {
            head.vnet = gro::finish(head.data_mut(), mss, psh);
            true
        };
    }
    if !udp {
        return false;
    }
    let Some(m) = udp_gro::continues(head.data(), &head.vnet, next.data(), &next.vnet) else {
        return false;
    };
    // Cutting off the head's Ethernet padding changes nothing if the
    // append then fails.
    head.set_len(m.head_len);
    head.append(&next.data()[m.payload.0..m.payload.1]) && {
        head.vnet = udp_gro::finish(head.data_mut(), m.mss);
        true
    }
}

/// Merges the segments of each TCP flow in `pending` into GSO frames, and
/// with `udp` the datagrams of each UDP flow into USO frames, freeing the
/// merged ones. Flows may interleave (up to [`OPEN_FLOWS`] at a time); each
/// flow's frames keep their order, and a frame of a flow that cannot extend
/// its run starts the flow's next one.
fn coalesce(pending: &mut Vec<Frame>, pool: &mut BufferPool, counters: &WorkerCounters, udp: bool) {
    let mut open = OpenRuns::new();
    // `pending[..kept]` holds the frames that stay, in order.
    let mut kept = 0;
    for i in 0..pending.len() {
        let Some(key) = flow_key(pending[i].data(), udp) else {
            if kept != i {
                pending.swap(kept, i);
            }
            kept += 1;
            continue;
        };
        let slot = open.find(key);
        if let Some(s) = slot {
            let (done, rest) = pending.split_at_mut(i);
            if merge(&mut done[open.heads[s]], &rest[0], udp) {
                continue;
            }
        }
        if kept != i {
            pending.swap(kept, i);
        }
        open.open(slot, key, kept);
        kept += 1;
    }
    let merged = pending.len() - kept;
    for f in pending.drain(kept..) {
        pool.free(f);
    }
    if merged > 0 {
        crate::stats::bump(&counters.gro_merged, merged as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::udp_frame;

    fn caps(uso: bool) -> PortCaps {
        PortCaps {
            offload: true,
            mtu: 1500,
            segments_gso: false,
            uso,
        }
    }

    /// A UDP datagram of flow `port` as the gateway builds one (DF, valid
    /// checksums).
    fn udp(pool: &mut BufferPool, port: u16, len: usize) -> Frame {
        udp_filled(pool, port, len, port as u8)
    }

    /// Like [`udp`], the payload filled with `fill`.
    fn udp_filled(pool: &mut BufferPool, port: u16, len: usize, fill: u8) -> Frame {
        let mut f = pool.alloc().expect("frame");
        let a = udp_frame::UdpFrameAddrs {
            src_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 2]),
            src: "10.0.0.1:53".parse().expect("addr"),
            dst: format!("10.0.0.2:{port}").parse().expect("addr"),
        };
        let n = udp_frame::write(f.receive_space(), &a, &vec![fill; len]).expect("fits");
        f.set_len(n);
        f
    }

    #[test]
    fn udp_runs_merge_for_uso_ports_only_and_order_is_kept() {
        for uso in [true, false] {
            let mut pool = BufferPool::standalone(16);
            let counters = WorkerCounters::default();
            let mut pending = vec![
                udp(&mut pool, 1000, 100),
                udp(&mut pool, 1000, 100),
                udp(&mut pool, 1000, 40),
                udp(&mut pool, 2000, 100),
                udp(&mut pool, 1000, 100),
                udp(&mut pool, 1000, 100),
            ];
            let mut scratch = Vec::new();
            adapt(caps(uso), &mut pending, &mut scratch, &mut pool, &counters);
            let shape: Vec<_> = pending.iter().map(|f| (f.len(), f.vnet.gso_size)).collect();
            if uso {
                assert_eq!(
                    shape,
                    [(42 + 240, 100), (42 + 100, 0), (42 + 200, 100)],
                    "a short datagram ends its flow's run, the next one starts another"
                );
                assert_eq!(
                    counters
                        .gro_merged
                        .load(std::sync::atomic::Ordering::Relaxed),
                    3
                );
                assert!(pending[0].vnet.gso_type == crate::wire::virtio_net::GsoType::UdpL4);
            } else {
                assert_eq!(pending.len(), 6);
                assert!(pending.iter().all(|f| !f.vnet.is_gso()));
            }
            for f in pending.drain(..) {
                pool.free(f);
            }
        }
    }

    fn adapt_for_uso(pending: &mut Vec<Frame>, pool: &mut BufferPool, c: &WorkerCounters) {
        adapt(caps(true), pending, &mut Vec::new(), pool, c);
    }

    /// Each flow's datagrams (by destination port), in order, the output
    /// frames cut at their segment size the way the receiving kernel cuts a
    /// USO frame.
    fn flows(frames: &[Frame]) -> std::collections::BTreeMap<u16, Vec<Vec<u8>>> {
        let mut out = std::collections::BTreeMap::<u16, Vec<Vec<u8>>>::new();
        for f in frames {
            let d = f.data();
            let payload = &d[42..];
            let mss = match f.vnet.gso_size {
                0 => payload.len().max(1),
                m => usize::from(m),
            };
            out.entry(u16::from_be_bytes([d[36], d[37]]))
                .or_default()
                .extend(payload.chunks(mss).map(<[u8]>::to_vec));
        }
        out
    }

    #[test]
    fn interleaved_flows_merge_each_in_its_own_order() {
        let mut pool = BufferPool::standalone(32);
        let counters = WorkerCounters::default();
        // Two flows taking turns, as replies to two resolver sockets do.
        let shape = [
            (1, 100),
            (2, 100),
            (1, 100),
            (2, 100),
            (1, 40),
            (2, 100),
            (1, 100),
        ];
        let mut pending: Vec<Frame> = shape
            .iter()
            .enumerate()
            .map(|(i, &(port, len))| udp_filled(&mut pool, port, len, i as u8))
            .collect();
        let sent = flows(&pending);
        adapt_for_uso(&mut pending, &mut pool, &counters);
        let out: Vec<_> = pending.iter().map(|f| (f.len(), f.vnet.gso_size)).collect();
        assert_eq!(out, [(42 + 240, 100), (42 + 300, 100), (42 + 100, 0)]);
        assert_eq!(flows(&pending), sent);
        for f in pending.drain(..) {
            pool.free(f);
        }
    }

    #[test]
    fn many_interleaved_flows_keep_every_datagram_in_flow_order() {
        // More flows than open runs, sizes that end runs at random: every
        // datagram must come out once, in its flow's order.
        let mut pool = BufferPool::standalone(256);
        let mut total_merged = 0;
        let mut seed = 0x2545_f491_u32;
        let mut rand = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % n
        };
        for round in 0..50 {
            let counters = WorkerCounters::default();
            let n_flows = 1 + rand(12) as u16;
            let mut pending: Vec<Frame> = (0..64)
                .map(|i| {
                    let port = 1 + rand(u32::from(n_flows)) as u16;
                    let len = [20, 20, 20, 19, 30][rand(5) as usize];
                    udp_filled(&mut pool, port, len, i as u8)
                })
                .collect();
            let sent = flows(&pending);
            adapt_for_uso(&mut pending, &mut pool, &counters);
            assert_eq!(flows(&pending), sent, "round {round}");
            let merged = counters
                .gro_merged
                .load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(merged as usize, 64 - pending.len(), "round {round}");
            total_merged += merged;
            for f in pending.drain(..) {
                pool.free(f);
            }
        }
        assert!(total_merged > 500, "runs were merged: {total_merged}");
    }

    /// A USO frame of flow `port`: three 100-byte datagrams merged.
    fn uso_frame(pool: &mut BufferPool) -> Frame {
        let mut pending: Vec<Frame> = (0..3).map(|i| udp_filled(pool, 1000, 100, i)).collect();
        adapt_for_uso(&mut pending, pool, &WorkerCounters::default());
        assert_eq!(pending.len(), 1);
        pending.pop().expect("one frame")
    }

    #[test]
    fn uso_frames_cross_whole_or_are_cut_for_ports_that_cannot_take_them() {
        let mut pool = BufferPool::standalone(32);
        let plain = PortCaps {
            offload: false,
            mtu: 1500,
            segments_gso: false,
            uso: false,
        };
        let small = PortCaps { mtu: 100, ..plain };
        for (caps, want) in [
            (caps(true), "whole"),
            (caps(false), "partial"),
            (plain, "complete"),
            (small, "too big"),
        ] {
            let counters = WorkerCounters::default();
            let mut pending = vec![uso_frame(&mut pool)];
            adapt(caps, &mut pending, &mut Vec::new(), &mut pool, &counters);
            let split = counters
                .uso_split
                .load(std::sync::atomic::Ordering::Relaxed);
            match want {
                "whole" => {
                    assert_eq!(pending.len(), 1);
                    assert_eq!(pending[0].vnet.gso_type, GsoType::UdpL4);
                    assert_eq!(split, 0);
                }
                "partial" | "complete" => {
                    assert_eq!(pending.len(), 3, "{want}");
                    assert_eq!(split, 3);
                    for (i, f) in pending.iter().enumerate() {
                        assert_eq!(f.len(), 42 + 100);
                        assert_eq!(f.data()[42..], [i as u8; 100]);
                        assert_eq!(f.vnet.needs_csum(), want == "partial");
                        if want == "complete" {
                            let p =
                                etherparse::SlicedPacket::from_ethernet(f.data()).expect("parses");
                            let (
                                Some(etherparse::NetSlice::Ipv4(ip)),
                                Some(etherparse::TransportSlice::Udp(u)),
                            ) = (p.net, p.transport)
                            else {
                                panic!("udp over ipv4")
                            };
                            let h = ip.header().to_header();
                            let sum = u
                                .to_header()
                                .calc_checksum_ipv4(&h, u.payload())
                                .expect("sum");
                            assert_eq!(u.checksum(), sum);
                        }
                    }
                }
                _ => {
                    assert!(pending.is_empty());
                    assert_eq!(
                        counters.drops[DropReason::TooBig as usize]
                            .load(std::sync::atomic::Ordering::Relaxed),
                        3
                    );
                }
            }
            for f in pending.drain(..) {
                pool.free(f);
            }
        }
        // A USO frame that cannot be cut is dropped and counted.
        let counters = WorkerCounters::default();
        let mut bad = uso_frame(&mut pool);
        bad.data_mut()[23] = 6; // TCP
        let mut pending = vec![bad];
        adapt(plain, &mut pending, &mut Vec::new(), &mut pool, &counters);
        assert!(pending.is_empty());
        assert_eq!(
            counters.drops[DropReason::OffloadFailed as usize]
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}

#[cfg(test)]
mod segment_tests {
    use super::*;
    use crate::wire::virtio_net::{GsoType, F_NEEDS_CSUM};

    /// A TCP GSO frame with 12 bytes of TCP options (timestamps) whose
    /// sender understated its headers in `hdr_len`.
    fn gso_with_options(pool: &mut BufferPool, payload: usize, gso_size: u16) -> Frame {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 5201, 1, 65535)
            .ack(1)
            .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
            .expect("options")
            .write(&mut b, &vec![7u8; payload])
            .expect("frame");
        let mut f = pool.alloc().expect("frame");
        f.fill(&b);
        f.vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            gso_ecn: false,
            hdr_len: 0,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
        };
        f
    }

    #[test]
    fn segments_fit_the_mtu_whatever_hdr_len_says() {
        let mut pool = BufferPool::standalone(64);
        let f = gso_with_options(&mut pool, 20_000, 1460);
        let seg = segmenter_for(&f, 1500).expect("segmenter");
        assert_eq!(seg.l3_header_len(), 20 + 32);
        // 1500 - 52 bytes of IP and TCP headers: 1448, below the sender's 1460.
        let mut out = Vec::new();
        let counters = WorkerCounters::default();
        segment_into(
            &f,
            PortCaps {
                offload: false,
                mtu: 1500,
                segments_gso: false,
                uso: false,
            },
            &mut out,
            &mut pool,
            &counters,
        );
        assert_eq!(out.len(), 20_000usize.div_ceil(1448));
        assert!(
            out.iter().all(|s| s.len() - 14 <= 1500),
            "every IP packet fits"
        );
        assert_eq!(out[0].len() - 14, 1500);
        // A sender's smaller segment size is kept.
        let small = gso_with_options(&mut pool, 5_000, 1000);
        assert_eq!(
            segmenter_for(&small, 1500)
                .expect("segmenter")
                .segment_count(),
            5
        );
        // No segment size at all: refused.
        let zero = gso_with_options(&mut pool, 5_000, 0);
        assert!(segmenter_for(&zero, 1500).is_err());
    }
}
