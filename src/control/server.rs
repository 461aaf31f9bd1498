//! The API server: binds the Unix socket safely (private directory, mode 0600,
//! stale sockets replaced only when nobody answers), serves each connection on
//! its own thread, and answers every line, bad ones included, without ever
//! letting a client stop the daemon.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::api::{decode_request, ApiError, ErrorKind, Request, Response, MAX_LINE};
use super::daemon::Daemon;

/// Socket setup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory cannot be created.
    #[error("cannot create socket directory {dir}: {source}; choose another path with --socket")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A daemon answers on the socket already.
    #[error("another switchyard daemon is running on {0}; stop it first or use another --socket")]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; remove it or use another --socket")]
    NotASocket(PathBuf),
    /// The stale socket could not be removed.
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// bind(2) failed.
    #[error("cannot listen on {path}: {source}; choose another path with --socket")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A bound API socket.
pub struct Server {
    listener: Arc<UnixListener>,
    path: PathBuf,
    /// The socket file's inode when bound: on exit the file is removed only
    /// if it is still ours, not another daemon's that took the path since.
    inode: Option<u64>,
    stop: Arc<AtomicBool>,
    clients: Arc<AtomicUsize>,
}

/// Stops a serving [`Server`] from another thread.
#[derive(Clone)]
pub struct StopHandle {
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
}

impl StopHandle {
    /// Asks the server to stop; it returns from [`Server::serve`] promptly.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept (it fails with EINVAL) through the socket
        // itself, not its path: the file may be gone (a cleaned runtime
        // directory) or be another daemon's, and connecting to it then left
        // this daemon running after SIGTERM.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

impl Server {
    /// Binds `path`: creates its directory (0700) if missing, replaces a stale
    /// socket nobody answers on, and makes the socket 0600.
    pub fn bind(path: &Path) -> Result<Server, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| ServerError::CreateDir {
                        dir: dir.to_path_buf(),
                        source,
                    })?;
            }
        }
        if let Ok(meta) = fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::AlreadyRunning(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        let inode = fs::symlink_metadata(path).ok().map(|m| m.ino());
        Ok(Server {
            listener: Arc::new(listener),
            path: path.to_path_buf(),
            inode,
            stop: Arc::new(AtomicBool::new(false)),
            clients: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that stops [`Server::serve`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            listener: self.listener.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Serves until stopped, one thread per connection; the socket file is
    /// removed when the server is dropped (also when startup fails after
    /// binding).
    pub fn serve(self, daemon: Arc<Mutex<Daemon>>) {
        for conn in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", self.path.display());
                    continue;
                }
            };
            if self.clients.load(Ordering::SeqCst) >= MAX_CLIENTS {
                refuse_busy(stream);
                continue;
            }
            // An idle client is dropped after a while, so clients that never
            // hang up cannot pin threads forever.
            let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
            // A client that sends requests without reading the replies is
            // dropped too, instead of holding its slot forever.
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let daemon = daemon.clone();
            let slot = ClientSlot::take(self.clients.clone());
            let spawned = std::thread::Builder::new()
                .name("sy-api".into())
                .spawn(move || {
                    let _slot = slot;
                    if let Err(e) = serve_connection(stream, &daemon) {
                        tracing::debug!("API connection ended: {e}");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for an API client: {e}");
            }
        }
    }
}

/// Most API clients served at once.
pub const MAX_CLIENTS: usize = 64;
/// A client silent for this long is disconnected.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a reply may wait for the client to read it.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Counts a client while its thread runs.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(count: Arc<AtomicUsize>) -> ClientSlot {
        count.fetch_add(1, Ordering::SeqCst);
        ClientSlot(count)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse_busy(mut stream: UnixStream) {
    let reply = Response::failure(ApiError::new(
        ErrorKind::Exhausted,
        format!("the daemon already serves {MAX_CLIENTS} clients; try again later"),
    ));
    let _ = stream.write_all(&reply.to_line());
}

impl Drop for Server {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path).map(|m| Some(m.ino()) == self.inode);
        if ours.unwrap_or(false) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Answers request lines on one connection until the client hangs up.
pub fn serve_connection(stream: UnixStream, daemon: &Mutex<Daemon>) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        } else if line.len() > MAX_LINE {
            skip_line(&mut reader)?;
            let e = ApiError::new(
                ErrorKind::TooLarge,
                format!("request line longer than {MAX_LINE} bytes; send smaller requests"),
            );
            writer.write_all(&Response::failure(e).to_line())?;
            continue;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = match decode_request(&line) {
            Ok(Request::Capture(req)) => super::capture::serve(daemon, req, reader.get_ref()),
            Ok(req) => daemon
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .handle(req),
            Err(e) => Response::failure(e),
        };
        writer.write_all(&response.to_line())?;
    }
}

/// Discards input up to and including the next newline.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}
