//! Stage `forward`: looks the destination MAC up in the frame's network and
//! decides output port or flood; drops hairpins and endpoint-to-endpoint
//! traffic on isolated networks. Frames never leave their network: lookups are
//! keyed by network and floods go to the network's own ports.
//!
//! The lookups of a batch run in one tight loop before any decision is made,
//! so the CPU overlaps their cache misses (a large MAC table does not fit in
//! cache; one miss per frame otherwise serialises the batch).

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use super::BATCH_SIZE;
use crate::ports::PortId;

/// The forwarding stage.
pub struct Forward;

/// A lookup that found nothing (no port has this number).
const NOT_FOUND: u32 = u32::MAX;

impl Stage for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        // A batch comes from one port, so its frames share a network.
        let mut net_cache = None;
        for chunk in frames.chunks_mut(BATCH_SIZE) {
            // Port numbers found, NOT_FOUND for a miss or a frame skipped.
            let mut found = [NOT_FOUND; BATCH_SIZE];
            for (slot, f) in found.iter_mut().zip(chunk.iter()) {
                if !f.meta.action.is_final() && !f.meta.dst.is_multicast() {
                    if let Some(p) = cx.mac.lookup(f.meta.network, f.meta.dst, cx.now) {
                        *slot = p.0;
                    }
                }
            }
            for (f, &known) in chunk.iter_mut().zip(found.iter()) {
                if f.meta.action.is_final() {
                    continue;
                }
                let net = match net_cache {
                    Some((id, n)) if id == f.meta.network => n,
                    _ => match cx.topo.network(f.meta.network) {
                        Some(n) => {
                            net_cache = Some((f.meta.network, n));
                            n
                        }
                        None => {
                            f.meta.action = Action::Drop(DropReason::UnknownPort);
                            continue;
                        }
                    },
                };
                let known = PortId(known);
                f.meta.action = if known == f.meta.in_port {
                    Action::Drop(DropReason::Hairpin)
                } else if net.isolate {
                    Action::Drop(DropReason::Isolated)
                } else if known.0 != NOT_FOUND && cx.topo.port_on(known, f.meta.network) {
                    // An entry for a port id since reused on another
                    // network floods instead: frames never cross networks.
                    Action::Output(known)
                } else {
                    Action::Flood
                };
            }
        }
    }
}
