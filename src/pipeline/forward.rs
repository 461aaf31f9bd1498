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

impl Stage for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for chunk in frames.chunks_mut(BATCH_SIZE) {
            let mut found: [Option<PortId>; BATCH_SIZE] = [None; BATCH_SIZE];
            for (f, slot) in chunk.iter().zip(found.iter_mut()) {
                if !f.meta.action.is_final() && !f.meta.dst.is_multicast() {
                    *slot = cx.mac.lookup(f.meta.network, f.meta.dst, cx.now);
                }
            }
            // A batch comes from one port, so its frames share a network.
            let mut net_cache = None;
            for (f, known) in chunk.iter_mut().zip(found) {
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
                let action = match known {
                    Some(p) if p == f.meta.in_port => Action::Drop(DropReason::Hairpin),
                    Some(p) if cx.topo.port(p).is_some() => Action::Output(p),
                    _ => Action::Flood,
                };
                f.meta.action = match action {
                    Action::Output(_) | Action::Flood if net.isolate => {
                        Action::Drop(DropReason::Isolated)
                    }
                    a => a,
                };
            }
        }
    }
}
