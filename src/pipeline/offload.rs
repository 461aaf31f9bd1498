//! Offload adaptation before tx: a port that cannot take GSO frames or partial
//! checksums gets them segmented and completed in software; a port that can
//! gets them whole. Only here does a 64 KiB frame turn into MTU-sized ones —
//! and, the other way, consecutive segments of one TCP flow (as they arrive
//! from a VXLAN peer) are coalesced into one GSO frame for a port that takes
//! them, so the receiver's kernel handles one frame instead of ~45.

use super::drop::DropReason;
use super::frame::Frame;
use super::pool::BufferPool;
use crate::ports::{PortCaps, CUT_MAX_HEADER, CUT_MAX_SEGMENTS};
use crate::stats::WorkerCounters;
use crate::wire::gso::{complete_checksum, Segmenter};
use crate::wire::virtio_net::VirtioNetHdr;
use crate::wire::{ethernet, gro, udp_gro};

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
    for mut f in pending.drain(..) {
        if f.vnet.is_gso() && keeps_whole(&f, caps) {
            scratch.push(f);
            continue;
        }
        if f.vnet.is_gso() {
            segment_into(&f, caps, scratch, pool, counters);
            pool.free(f);
            continue;
        }
        if f.vnet.needs_csum() {
            let vnet = f.vnet;
            if complete_checksum(f.data_mut(), &vnet).is_err() {
                counters.count_drop(DropReason::OffloadFailed);
                pool.free(f);
                continue;
            }
        }
        if f.len() > caps.mtu as usize + L2_OVERHEAD {
            counters.count_drop(DropReason::TooBig);
            pool.free(f);
            continue;
        }
        f.vnet = VirtioNetHdr::NONE;
        scratch.push(f);
    }
    std::mem::swap(pending, scratch);
}

/// The segment size for GSO frame `f` leaving through a port of `mtu`: the
/// sender's, lowered to fit. `hdr_len` is only the sender's hint of its
/// header length; at least the minimal IPv4 + TCP headers are assumed.
pub fn segment_size(f: &Frame, mtu: u16) -> u16 {
    let l3_headers = (f.vnet.hdr_len as usize)
        .saturating_sub(ethernet::HEADER_LEN)
        .max(40);
    let mss_cap = (mtu as usize).saturating_sub(l3_headers).max(536);
    (f.vnet.gso_size as usize).min(mss_cap) as u16
}

/// The segmenter with which a [`PortCaps::segments_gso`] port of `mtu` cuts
/// GSO frame `f` while sending, or `None` if it cannot take `f` whole: `f`
/// must be a TCP frame the segmenter accepts, within [`CUT_MAX_HEADER`] and
/// [`CUT_MAX_SEGMENTS`]. The one rule both the switch (here) and such a
/// port apply.
pub fn cut_whole(f: &Frame, mtu: u16) -> Option<Segmenter<'_>> {
    Segmenter::new(f.data(), &f.vnet, Some(segment_size(f, mtu)))
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
    let mss = segment_size(f, caps.mtu);
    let mut seg = match Segmenter::new(f.data(), &f.vnet, Some(mss)) {
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

/// Merges runs of consecutive segments of one TCP flow in `pending` into GSO
/// frames (see [`gro`]), and with `udp` runs of datagrams of one UDP flow
/// into USO frames (see [`udp_gro`]), freeing the merged ones. Order is kept.
fn coalesce(pending: &mut Vec<Frame>, pool: &mut BufferPool, counters: &WorkerCounters, udp: bool) {
    // Most batches hold no two neighbouring frames of either kind (small
    // packets of many flows, other protocols): find that out with a byte
    // test per frame before the full comparison.
    let mergeable = pending.windows(2).any(|w| {
        gro::may_continue(w[0].data(), w[1].data(), &w[1].vnet)
            || (udp && udp_gro::may_continue(w[0].data(), w[1].data(), &w[1].vnet))
    });
    if !mergeable {
        return;
    }
    let mut kept = 0;
    for i in 1..pending.len() {
        let (done, rest) = pending.split_at_mut(i);
        let (head, next) = (&mut done[kept], &rest[0]);
        let merged = if let Some((at, mss)) =
            gro::continues(head.data(), &head.vnet, next.data(), &next.vnet)
        {
            let psh = gro::has_psh(next.data());
            head.append(&next.data()[at..]) && {
                head.vnet = gro::finish(head.data_mut(), mss, psh);
                true
            }
        } else if let Some(m) = udp
            .then(|| udp_gro::continues(head.data(), &head.vnet, next.data(), &next.vnet))
            .flatten()
        {
            // Cutting off the head's Ethernet padding changes nothing if
            // the append then fails.
            head.set_len(m.head_len);
            head.append(&next.data()[m.payload.0..m.payload.1]) && {
                head.vnet = udp_gro::finish(head.data_mut(), m.mss);
                true
            }
        } else {
            false
        };
        if !merged {
            kept += 1;
            pending.swap(kept, i);
        }
    }
    let merged = pending.len() - (kept + 1);
    for f in pending.drain(kept + 1..) {
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
        let mut f = pool.alloc().expect("frame");
        let a = udp_frame::UdpFrameAddrs {
            src_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 2]),
            src: "10.0.0.1:53".parse().expect("addr"),
            dst: format!("10.0.0.2:{port}").parse().expect("addr"),
        };
        let n = udp_frame::write(f.receive_space(), &a, &vec![port as u8; len]).expect("fits");
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
                    "a short datagram ends a run, another flow splits one"
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
}
