//! Stage `decap`: the first stage for frames a VXLAN port received. It
//! accepts a datagram only if its header is valid (I flag, reserved bits
//! zero), its VNI belongs to an overlay network and its underlay source is
//! one of that network's VTEPs; it then strips the header and makes the
//! frame arrive on the (network, VTEP) tunnel port. The inner source must not
//! be one of this host's endpoints and, when remotes come from the control
//! plane, must be an endpoint that VTEP hosts (MAC, and IPv4 or ARP sender).
//! Every refusal is a counted drop. No I/O: [`decapsulate`] works on memory.

use std::net::{IpAddr, SocketAddr};

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::ingress::claimed_ipv4_in;
use super::stage::{Stage, StageContext};
use crate::ports::PortId;
use crate::tables::overlay::{OverlayNet, PortRole};
use crate::tables::topology::Topology;
use crate::wire::{ethernet, vxlan};

/// The decapsulation stage.
pub struct Decap;

/// Checks a VXLAN datagram (`frame`, from underlay address `src`) against the
/// overlay tables. On success strips the VXLAN header and returns the tunnel
/// port the inner frame arrives on.
pub fn decapsulate(
    topo: &Topology,
    src: Option<SocketAddr>,
    f: &mut Frame,
) -> Result<PortId, DropReason> {
    let vni = vxlan::Packet::new_checked(f.data())
        .and_then(|p| p.validate())
        .map_err(|_| DropReason::VxlanBadHeader)?;
    let network = topo
        .overlay
        .network_of_vni(vni)
        .ok_or(DropReason::VxlanUnknownVni)?;
    let net = topo
        .overlay
        .net(network)
        .ok_or(DropReason::VxlanUnknownVni)?;
    let vtep = src.ok_or(DropReason::VxlanUnknownVtep)?.ip();
    let port = net.tunnel_from(vtep).ok_or(DropReason::VxlanUnknownVtep)?;
    if !f.pull_front(vxlan::HEADER_LEN) {
        return Err(DropReason::VxlanBadHeader);
    }
    check_inner_source(net, vtep, f.data())?;
    Ok(port)
}

/// The inner frame's source must belong to the sending VTEP: never a local
/// endpoint's MAC, and with control-plane remotes (`learn == false`) a
/// remote endpoint hosted by `vtep`, using its own IPv4 address (or
/// 0.0.0.0 for ARP probes).
pub fn check_inner_source(net: &OverlayNet, vtep: IpAddr, inner: &[u8]) -> Result<(), DropReason> {
    let l2 = ethernet::parse_l2(inner).map_err(|_| DropReason::VxlanBadHeader)?;
    if net.local_macs.contains(&l2.src) {
        return Err(DropReason::VxlanSpoofed);
    }
    if net.learn {
        return Ok(());
    }
    let remote = net.remotes.get(&l2.src).ok_or(DropReason::VxlanSpoofed)?;
    if remote.vtep.to_canonical() != vtep.to_canonical() {
        return Err(DropReason::VxlanSpoofed);
    }
    match claimed_ipv4_in(inner, l2.ethertype, usize::from(l2.l3_offset)) {
        Some(ip) if !ip.is_unspecified() && Some(ip) != remote.ipv4 => {
            Err(DropReason::VxlanSpoofed)
        }
        _ => Ok(()),
    }
}

impl Stage for Decap {
    fn name(&self) -> &'static str {
        "decap"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() || cx.topo.overlay.role(f.meta.in_port) != PortRole::VxlanRx
            {
                continue;
            }
            let src = f.meta.underlay_src.take();
            match decapsulate(cx.topo, src, f) {
                Ok(port) => f.meta.in_port = port,
                Err(reason) => f.meta.action = Action::Drop(reason),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ports::vxlan::encapsulate;
    use crate::tables::overlay::fixture::*;
    use crate::wire::MacAddr;

    fn datagram(vni: u32, inner: &[u8]) -> Frame {
        let mut f = Frame::alloc();
        f.fill(inner);
        assert!(encapsulate(&mut f, vni));
        f
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn run(learn: bool, src: SocketAddr, f: &mut Frame) -> Result<PortId, DropReason> {
        decapsulate(&topology(learn), Some(src), f)
    }

    #[test]
    fn encap_decap_round_trip() {
        let inner = ipv4_frame(LOCAL, REMOTE_B, ip(11));
        let mut f = datagram(VNI, &inner);
        assert_eq!(run(false, vtep_b(), &mut f), Ok(TUNNEL_B));
        assert_eq!(f.data(), &inner[..]);
        // The source port of the VTEP does not matter (flow entropy).
        let mut f = datagram(VNI, &inner);
        let other_port = SocketAddr::new(vtep_b().ip(), 50_123);
        assert_eq!(run(false, other_port, &mut f), Ok(TUNNEL_B));
    }

    #[test]
    fn bad_headers_are_counted() {
        let inner = ipv4_frame(LOCAL, REMOTE_B, ip(11));
        for byte in [0usize, 1, 3, 7] {
            let mut f = datagram(VNI, &inner);
            f.data_mut()[byte] ^= if byte == 0 { 0x08 } else { 1 };
            assert_eq!(
                run(false, vtep_b(), &mut f),
                Err(DropReason::VxlanBadHeader)
            );
        }
        let mut short = Frame::alloc();
        short.fill(&[0x08, 0, 0, 0, 0, 0]);
        assert_eq!(
            run(false, vtep_b(), &mut short),
            Err(DropReason::VxlanBadHeader)
        );
        let mut no_inner = datagram(VNI, &inner[..10]);
        assert_eq!(
            run(false, vtep_b(), &mut no_inner),
            Err(DropReason::VxlanBadHeader)
        );
    }

    #[test]
    fn unknown_vni_and_vtep_are_counted() {
        let inner = ipv4_frame(LOCAL, REMOTE_B, ip(11));
        let mut f = datagram(VNI + 1, &inner);
        assert_eq!(
            run(false, vtep_b(), &mut f),
            Err(DropReason::VxlanUnknownVni)
        );
        let mut f = datagram(VNI, &inner);
        let stranger = "198.51.100.7:4789".parse().expect("addr");
        assert_eq!(
            run(true, stranger, &mut f),
            Err(DropReason::VxlanUnknownVtep)
        );
        let mut f = datagram(VNI, &inner);
        assert_eq!(
            decapsulate(&topology(true), None, &mut f),
            Err(DropReason::VxlanUnknownVtep)
        );
    }

    #[test]
    fn inner_sources_must_belong_to_the_vtep() {
        let cases = [
            // A local endpoint's MAC from a remote VTEP (learn mode too).
            (true, ipv4_frame(REMOTE_B, LOCAL, ip(1))),
            (false, ipv4_frame(LOCAL, LOCAL, ip(1))),
            // A MAC the control plane does not know.
            (
                false,
                ipv4_frame(LOCAL, MacAddr([2, 9, 9, 9, 9, 9]), ip(11)),
            ),
            // C's endpoint sent by B.
            (false, ipv4_frame(LOCAL, REMOTE_C, ip(12))),
            // B's endpoint with C's address, in IPv4 and in ARP.
            (false, ipv4_frame(LOCAL, REMOTE_B, ip(12))),
            (false, arp_request(REMOTE_B, ip(12), ip(1))),
        ];
        for (learn, inner) in cases {
            let mut f = datagram(VNI, &inner);
            assert_eq!(
                run(learn, vtep_b(), &mut f),
                Err(DropReason::VxlanSpoofed),
                "learn={learn} {inner:02x?}"
            );
        }
        // Valid: ARP probe from 0.0.0.0, and the right sender.
        for inner in [
            arp_request(REMOTE_B, Ipv4Addr::UNSPECIFIED, ip(1)),
            arp_request(REMOTE_B, ip(11), ip(1)),
        ] {
            let mut f = datagram(VNI, &inner);
            assert_eq!(run(false, vtep_b(), &mut f), Ok(TUNNEL_B));
        }
    }

    #[test]
    fn learn_mode_accepts_any_remote_mac_from_an_accepted_vtep() {
        let inner = ipv4_frame(LOCAL, MacAddr([2, 7, 7, 7, 7, 7]), ip(77));
        let mut f = datagram(VNI, &inner);
        assert_eq!(run(true, vtep_c(), &mut f), Ok(TUNNEL_C));
    }

    #[test]
    fn stage_only_touches_frames_of_the_vxlan_port() {
        let topo = topology(false);
        let inner = ipv4_frame(LOCAL, REMOTE_B, ip(11));
        let mut from_vxlan = datagram(VNI, &inner);
        from_vxlan.meta.in_port = RX;
        from_vxlan.meta.underlay_src = Some(vtep_b());
        let mut from_tap = Frame::alloc();
        from_tap.fill(&inner);
        from_tap.meta.in_port = LOCAL_PORT;
        let mut frames = [from_vxlan, from_tap];
        crate::pipeline::stage::run_alone(&mut Decap, &topo, &mut frames);
        assert_eq!(frames[0].meta.in_port, TUNNEL_B);
        assert_eq!(frames[0].data(), &inner[..]);
        assert_eq!(frames[1].meta.in_port, LOCAL_PORT);
        assert!(!frames[1].meta.action.is_final());
    }
}
