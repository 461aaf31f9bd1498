//! The API client the CLI uses: one connection, typed calls, timeouts, and a
//! clear message when the daemon is not running.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::api::{encode_request, ApiError, Request, Response};

/// How long a call may take by default (attaching can take a while).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error("cannot reach the switchyard daemon at {path}: start it with `switchyard daemon` (or point --socket / SWITCHYARD_SOCKET at it)")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time.
    #[error("the switchyard daemon at {0} did not answer in time; check its log")]
    Timeout(PathBuf),
    /// The connection broke.
    #[error("lost the connection to the switchyard daemon at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The reply is not a response line.
    #[error("the switchyard daemon at {path} sent an unreadable reply ({reason}); are the CLI and daemon the same version?")]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The daemon refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon at `path` with [`DEFAULT_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// A handle on the connection, for shutting down its write side while
    /// a call waits (the daemon ends a running capture when it sees that).
    pub fn stream_handle(&self) -> std::io::Result<UnixStream> {
        self.writer.try_clone()
    }

    /// Connects with a per-call timeout.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::NotRunning {
            path: path.to_path_buf(),
            source,
        })?;
        let io_err = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one raw line (newline added if missing) and reads the response.
    pub fn call_line(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        let mut buf = line.to_vec();
        if buf.last() != Some(&b'\n') {
            buf.push(b'\n');
        }
        self.writer.write_all(&buf).map_err(|e| self.io(e))?;
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => Err(ClientError::Io {
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "daemon closed the connection",
                ),
            }),
            Ok(_) => serde_json::from_str(&reply).map_err(|e| ClientError::BadReply {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Sends a request and returns the raw response.
    pub fn call_raw(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.call_line(&encode_request(req))
    }

    /// Sends a request and decodes its result as `T`; a refusal is
    /// [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        Ok(self.call_raw(req)?.into_result()?)
    }

    fn io(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.path.clone())
            }
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }
}
