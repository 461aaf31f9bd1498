//! The smoltcp device of one network's gateway: received frames are the ones
//! the workers punted (moved in as frame handles, returned to the pool after
//! smoltcp read them); transmitted frames are written straight into pool
//! buffers and injected to the worker that owns the client's port.

use std::collections::{HashMap, VecDeque};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::pipeline::frame::Frame;
use crate::pipeline::inject::Injector;
use crate::ports::PortId;
use crate::wire::MacAddr;

/// Ethernet header length (smoltcp's MTU for Ethernet includes it).
const ETHERNET_HEADER: usize = 14;

/// Where frames from the stack go: which port each client MAC sits on.
pub struct TxSide<'a> {
    /// Frames into the data plane.
    pub injector: &'a mut Injector,
    /// Client MAC to port, learned from punted frames.
    pub clients: &'a HashMap<MacAddr, PortId>,
    /// Frames that found no port (unknown or broadcast destination).
    pub unroutable: &'a mut u64,
}

/// One network's device for one `Interface::poll`.
pub struct PuntDevice<'a> {
    /// Punted frames not yet read by smoltcp.
    pub rx: &'a mut VecDeque<Frame>,
    /// Frames smoltcp has read, to go back to the pool.
    pub done: &'a mut Vec<Frame>,
    /// Output.
    pub tx: TxSide<'a>,
    /// The network's MTU (IP).
    pub mtu: usize,
}

/// Capabilities of every gateway device: Ethernet; received TCP/UDP
/// checksums are not verified because a TAP with checksum offload hands over
/// partial ones (the kernel that sent them vouches for the data).
pub fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = mtu + ETHERNET_HEADER;
    let mut sums = ChecksumCapabilities::default();
    sums.ipv4 = Checksum::Both;
    sums.tcp = Checksum::Tx;
    sums.udp = Checksum::Tx;
    sums.icmpv4 = Checksum::Tx;
    caps.checksum = sums;
    caps
}

/// A frame for smoltcp to read.
pub struct RxToken<'a> {
    frame: Frame,
    done: &'a mut Vec<Frame>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame.data());
        self.done.push(self.frame);
        r
    }
}

/// Room for one frame from smoltcp.
pub struct TxToken<'a> {
    tx: TxSide<'a>,
}

impl TxSide<'_> {
    fn reborrow(&mut self) -> TxSide<'_> {
        TxSide {
            injector: &mut *self.injector,
            clients: self.clients,
            unroutable: &mut *self.unroutable,
        }
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Some(mut frame) = self.tx.injector.alloc() else {
            // No buffer: let smoltcp write into scratch; TCP retransmits.
            let mut scratch = vec![0u8; len];
            *self.tx.unroutable += 1;
            return f(&mut scratch);
        };
        let space = frame.receive_space();
        let len = len.min(space.len());
        let r = f(&mut space[..len]);
        frame.set_len(len);
        let dst = MacAddr::from_bytes(&frame.data()[..6.min(len)]);
        // ARP is the pipeline's gateway stage's job; smoltcp only answers
        // the requests the stack feeds it.
        let arp = frame.data().get(12..14) == Some(&[0x08, 0x06][..]);
        match self.tx.clients.get(&dst).filter(|_| !arp) {
            Some(&port) => {
                self.tx.injector.send_frame(port, frame);
            }
            None => {
                // ARP, or a client that vanished.
                *self.tx.unroutable += u64::from(!arp);
                self.tx.injector.free(frame);
            }
        }
        r
    }
}

impl phy::Device for PuntDevice<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((
            RxToken {
                frame,
                done: self.done,
            },
            TxToken {
                tx: self.tx.reborrow(),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            tx: self.tx.reborrow(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.mtu)
    }
}
