//! Where answers from the DNS forwarder go: to a UDP client as a frame from
//! the gateway, injected into the worker that owns the client's port; to a
//! TCP client through the gateway stack's connection.

use std::sync::Arc;

use super::stack::TcpAnswers;
use crate::dns::forward::{AnswerSink, Forwarder};
use crate::dns::{QueryForwarder, ReplyRoute};
use crate::pipeline::inject::Injector;

/// The forwarder's sink.
pub struct GatewaySink {
    /// Frames into the data plane (owned by the forwarder thread).
    pub injector: Injector,
    /// Answers for TCP clients.
    pub tcp: Arc<TcpAnswers>,
}

impl AnswerSink<ReplyRoute> for GatewaySink {
    fn deliver(&mut self, to: &ReplyRoute, message: &[u8]) {
        match *to {
            ReplyRoute::Udp { port, addrs } => {
                self.injector.send_udp(port, &addrs, message);
            }
            ReplyRoute::Tcp { conn } => {
                self.tcp.push(conn, message);
            }
        }
    }
}

impl QueryForwarder for Forwarder<ReplyRoute> {
    fn submit(&self, query: &[u8], reply: ReplyRoute, max_len: u16) -> bool {
        Forwarder::submit(self, query, reply, max_len)
    }
}
