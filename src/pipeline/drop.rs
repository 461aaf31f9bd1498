//! Why the data plane dropped a frame. Small `Copy` values, counted per worker,
//! never logged per packet.

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// The reason a frame was dropped (or, for `MacCap`, not learned).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Number of reasons (length of a counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable kebab-case name used by `switchyard stats` and the API.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// The frame could not be parsed (too short, bad header).
    Malformed => "malformed",
    /// Source MAC is multicast or zero.
    InvalidSource => "invalid-source",
    /// Source MAC or IP does not belong to the ingress endpoint (port security).
    Spoofed => "spoofed",
    /// Ingress port is not (or no longer) attached to a network.
    UnknownPort => "unknown-port",
    /// The destination is known but on the ingress port itself.
    Hairpin => "hairpin",
    /// No output for the frame (e.g. unknown unicast where flooding is off).
    NoRoute => "no-route",
    /// The network isolates its endpoints from each other.
    Isolated => "isolated",
    /// The queue to another worker was full.
    QueueFull => "queue-full",
    /// The buffer pool was empty.
    NoBuffer => "no-buffer",
    /// The output port refused the write (kernel queue full or error).
    TxError => "tx-error",
    /// Too large for the output port and could not be segmented.
    TooBig => "too-big",
    /// Software segmentation or checksum completion failed.
    OffloadFailed => "offload-failed",
    /// The MAC table of the network was full and no entry could be evicted.
    MacCap => "mac-cap",
    /// A gateway-addressed packet the gateway does not serve.
    GatewayUnhandled => "gateway-unhandled",
    /// A DNS packet to the gateway that gets no answer (shorter than a DNS
    /// header, a response, or an IP fragment).
    DnsMalformed => "dns-malformed",
    /// The DNS forwarder's queue was full.
    DnsForwardFull => "dns-forward-full",
    /// A packet for outside an `--internal` network.
    InternalNetwork => "internal-network",
    /// The queue to the gateway stack was full.
    PuntFull => "punt-full",
    /// A VXLAN datagram without the I flag, with reserved bits set, or too
    /// short for the header and an inner Ethernet header.
    VxlanBadHeader => "vxlan-bad-header",
    /// A VXLAN datagram for a VNI no overlay network uses.
    VxlanUnknownVni => "vxlan-unknown-vni",
    /// A VXLAN datagram from an address that is not a VTEP of the network.
    VxlanUnknownVtep => "vxlan-unknown-vtep",
    /// An inner source (MAC, IPv4, ARP sender) that does not belong to the
    /// sending VTEP's endpoints, or that is one of this host's endpoints.
    VxlanSpoofed => "vxlan-spoofed",
    /// Unicast to an unknown MAC on an overlay network: flooded to local
    /// ports only, never to remote VTEPs (counted once per frame).
    OverlayUnknownUnicast => "overlay-unknown-unicast",
    /// A frame from a remote VTEP whose destination is behind another remote
    /// VTEP (split horizon: VTEPs never relay for each other).
    OverlaySplitHorizon => "overlay-split-horizon",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_count_matches() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        assert_eq!(
            DropReason::ALL[DropReason::QueueFull as usize],
            DropReason::QueueFull
        );
    }
}
