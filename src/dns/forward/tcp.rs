//! DNS over TCP to an upstream (RFC 1035 4.2.2: each message after a
//! two-byte length), for answers the upstream truncated over UDP: one query
//! and its answer per connection, driven without blocking by the forwarder
//! thread's poll.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// One query and its answer over a TCP connection (RFC 1035 4.2.2: each
/// message after a two-byte length).
pub(super) struct TcpExchange {
    pub(super) stream: TcpStream,
    /// The length-prefixed query; `sent` bytes of it are written.
    out: Vec<u8>,
    sent: usize,
    /// What was read so far: the answer's length, then the answer.
    pub(super) input: Vec<u8>,
}

/// Where a TCP exchange stands after its socket was served.
pub(super) enum Progress {
    Waiting,
    /// The whole answer (length prefix included) is in `input`.
    Done,
    Failed(io::Error),
}

impl TcpExchange {
    /// Starts a non-blocking connection to `upstream` with `query` queued
    /// behind its length; the poll reports progress under `token`.
    pub(super) fn connect(
        registry: &Registry,
        upstream: SocketAddr,
        query: &[u8],
        token: Token,
    ) -> io::Result<TcpExchange> {
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long for TCP"))?;
        let mut out = Vec::with_capacity(2 + query.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        let mut stream = TcpStream::connect(upstream)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(TcpExchange {
            stream,
            out,
            sent: 0,
            input: Vec::new(),
        })
    }

    /// Writes what is left of the query, then reads until the answer is
    /// whole or the socket has nothing more. `buf` is scratch space as large as the
    /// largest DNS message.
    pub(super) fn progress(&mut self, buf: &mut [u8]) -> Progress {
        match self.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Progress::Failed(e),
        }
        while self.sent < self.out.len() {
            let rest = self.out.get(self.sent..).unwrap_or_default();
            match self.stream.write(rest) {
                Ok(0) => return Progress::Failed(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                // Still connecting, or the send buffer is full: the poll
                // reports when it is writable.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    return Progress::Waiting
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(e),
            }
        }
        loop {
            let need = match self.input.get(..2) {
                Some(&[hi, lo]) => 2 + usize::from(u16::from_be_bytes([hi, lo])),
                _ => 2,
            };
            if self.input.len() >= need {
                return Progress::Done;
            }
            let want = (need - self.input.len()).min(buf.len());
            let Some(into) = buf.get_mut(..want) else {
                return Progress::Failed(io::ErrorKind::InvalidInput.into());
            };
            match self.stream.read(into) {
                Ok(0) => return Progress::Failed(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self
                    .input
                    .extend_from_slice(into.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(e),
            }
        }
    }
}
