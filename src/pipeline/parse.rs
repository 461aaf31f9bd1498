//! Stage `parse`: reads the Ethernet header (and VLAN tags) of each frame into
//! its metadata; frames too short to parse are dropped as malformed.

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::wire::ethernet::{self, EtherType};
use crate::wire::MacAddr;

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
            // Untagged frames, nearly all of them: fields go straight from
            // the frame to the metadata. Building parse_l2's result on the
            // stack and copying it field by field made the CPU reload
            // bytes it had just stored in different widths, which stalls.
            if let Some(h) = f.data().first_chunk::<{ ethernet::HEADER_LEN }>() {
                let et = u16::from_be_bytes([h[12], h[13]]);
                if !ethernet::is_tag(et) {
                    let (dst, src) = (MacAddr::from_bytes(&h[..6]), MacAddr::from_bytes(&h[6..]));
                    let m = &mut f.meta;
                    m.dst = dst;
                    m.src = src;
                    m.ethertype = EtherType::from(et);
                    m.l3_offset = ethernet::HEADER_LEN as u16;
                    continue;
                }
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
