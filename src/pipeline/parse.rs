//! Stage `parse`: reads the Ethernet header (and VLAN tags) of each frame into
//! its metadata; frames too short to parse are dropped as malformed.

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::wire::ethernet;

/// The parse stage.
pub struct Parse;

impl Stage for Parse {
    fn name(&self) -> &'static str {
        "parse"
    }

    fn process(&mut self, _cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            match ethernet::parse_l2(f.data()) {
                Ok(h) => {
                    f.meta.dst = h.dst;
                    f.meta.src = h.src;
                    f.meta.ethertype = h.ethertype;
                    f.meta.l3_offset = h.l3_offset;
                }
                Err(_) => f.meta.action = Action::Drop(DropReason::Malformed),
            }
        }
    }
}
