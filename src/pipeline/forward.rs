//! Stage `forward`: looks the destination MAC up in the frame's network and
//! decides output port or flood; drops hairpins and endpoint-to-endpoint
//! traffic on isolated networks. Frames never leave their network: lookups are
//! keyed by network and floods go to the network's own ports.

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};

/// The forwarding stage.
pub struct Forward;

impl Stage for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            let Some(net) = cx.topo.network(f.meta.network) else {
                f.meta.action = Action::Drop(DropReason::UnknownPort);
                continue;
            };
            let action = if f.meta.dst.is_multicast() {
                Action::Flood
            } else {
                match cx.mac.lookup(f.meta.network, f.meta.dst, cx.now) {
                    Some(p) if p == f.meta.in_port => Action::Drop(DropReason::Hairpin),
                    Some(p) if cx.topo.port(p).is_some() => Action::Output(p),
                    _ => Action::Flood,
                }
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
