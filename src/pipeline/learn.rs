//! Stage `learn`: records each frame's source MAC at its ingress port in the
//! worker's MAC table, and queues an announcement for the other workers when
//! the table changed (see `tables::mac` for the scheme).

use super::frame::Frame;
use super::stage::{Stage, StageContext};
use crate::stats::bump;
use crate::tables::mac::{LearnMsg, Learned};

/// The learning stage.
pub struct Learn;

impl Stage for Learn {
    fn name(&self) -> &'static str {
        "learn"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        // A batch usually carries one flow: a source just learned at the same
        // time needs no second lookup.
        let mut last = None;
        for f in frames.iter() {
            if f.meta.action.is_final() {
                continue;
            }
            let m = &f.meta;
            let key = (m.network, m.src, m.in_port);
            if last == Some(key) {
                continue;
            }
            last = Some(key);
            let topo = cx.topo;
            let default_cap = cx.mac.config().default_cap;
            let cap = || topo.network(m.network).map_or(default_cap, |n| n.mac_cap);
            let learned = cx.mac.learn(m.network, m.src, m.in_port, cx.now, cap);
            match learned {
                Learned::Refreshed { .. } => {}
                Learned::New => bump(&cx.counters.mac_learned, 1),
                Learned::NewEvicted => {
                    bump(&cx.counters.mac_learned, 1);
                    bump(&cx.counters.mac_evicted, 1);
                }
                Learned::Moved => bump(&cx.counters.mac_moved, 1),
                // Not learned, but the frame is still forwarded.
                Learned::CapHit => cx.counters.count_drop(super::drop::DropReason::MacCap),
            }
            if learned.announce() {
                cx.learned.push(LearnMsg {
                    network: m.network,
                    mac: m.src,
                    port: m.in_port,
                    seen: cx.now,
                });
            }
        }
    }
}
