//! One UDP flow through the gateway: datagrams from the sandbox leave through
//! a connected host socket (so the kernel filters what comes back); replies
//! are built into frames from the far address to the sandbox. Idle flows
//! expire: 30 s, or 120 s once both sides have spoken (a stream), like Linux
//! conntrack.

use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;

use crate::ports::PortId;
use crate::wire::udp_frame::UdpFrameAddrs;
use crate::wire::MacAddr;

/// Idle timeout of a flow that only the sandbox has used.
pub const IDLE_MS: i64 = 30_000;
/// Idle timeout once replies came back.
pub const STREAM_IDLE_MS: i64 = 120_000;

/// A UDP flow.
pub struct UdpFlow {
    /// The host socket, connected to the far side.
    pub host: UdpSocket,
    /// How replies are addressed (far side to sandbox).
    pub reply: UdpFrameAddrs,
    /// The sandbox's port.
    pub port: PortId,
    /// Replies have come back.
    pub stream: bool,
    /// Last datagram either way (ms).
    pub last_active: i64,
}

impl UdpFlow {
    /// Opens the host socket towards `to` for a sandbox flow from `local`
    /// (at `local_mac` on `port`) to `remote`, answered from `gateway_mac`.
    pub fn open(
        to: SocketAddr,
        local: (MacAddr, SocketAddr, PortId),
        remote: SocketAddr,
        gateway_mac: MacAddr,
        now: i64,
    ) -> io::Result<UdpFlow> {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let host = UdpSocket::bind(bind)?;
        host.connect(to)?;
        Ok(UdpFlow {
            host,
            reply: UdpFrameAddrs {
                src_mac: gateway_mac,
                dst_mac: local.0,
                src: remote,
                dst: local.1,
            },
            port: local.2,
            stream: false,
            last_active: now,
        })
    }

    /// When the flow expires if nothing happens.
    pub fn expires(&self) -> i64 {
        self.last_active + if self.stream { STREAM_IDLE_MS } else { IDLE_MS }
    }
}
