//! `capture` requests: the API server runs one on the client's own
//! connection, holding the daemon only to start and to stop it, and writes
//! the endpoint's frames into the pcap file the client named until the
//! count or the time is reached, the endpoint goes away, or the client
//! hangs up (Ctrl-C on `switchyard capture`).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam::channel::RecvTimeoutError;
use nix::sys::socket::{recv, MsgFlags};

use super::api::{ApiError, CaptureReply, CaptureRequest, ErrorKind, Response};
use super::daemon::Daemon;
use crate::pipeline::capture::Captured;
use crate::wire::pcap;

/// Longest capture asked for by time.
const MAX_SECONDS: u64 = 86_400;
/// How often a capture looks whether its client is still there, and puts
/// what it buffered into the file.
const CHECK_CLIENT: Duration = Duration::from_millis(200);

/// Runs a capture and answers with what was written, or why not.
pub fn serve(daemon: &Mutex<Daemon>, req: CaptureRequest, client: &UnixStream) -> Response {
    match run(daemon, &req, client) {
        Ok(reply) => Response::success(&reply),
        Err(e) => Response::failure(e),
    }
}

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, message)
}

/// True once the client closed its end (or the connection broke).
fn hung_up(client: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    match recv(
        client.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => n == 0,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

fn write_record(out: &mut impl Write, c: &Captured) -> io::Result<()> {
    let len = u32::try_from(c.data.len()).unwrap_or(u32::MAX);
    let header = pcap::record_header(c.nanos, len, len);
    out.write_all(&header)?;
    out.write_all(&c.data[..c.data.len().min(pcap::SNAPLEN as usize)])
}

fn run(
    daemon: &Mutex<Daemon>,
    req: &CaptureRequest,
    client: &UnixStream,
) -> Result<CaptureReply, ApiError> {
    let path = &req.file;
    if !path.is_absolute() {
        return Err(bad(format!(
            "capture file {} must be an absolute path",
            path.display()
        )));
    }
    if req.count == Some(0) {
        return Err(bad("capture count must be at least 1".into()));
    }
    if req.seconds.is_some_and(|s| s == 0 || s > MAX_SECONDS) {
        return Err(bad(format!(
            "capture seconds must be between 1 and {MAX_SECONDS}"
        )));
    }
    let lock = || daemon.lock().unwrap_or_else(PoisonError::into_inner);
    // The endpoint first: a request naming none leaves the file untouched.
    let session = lock()
        .start_capture(&req.endpoint)
        .map_err(ApiError::from)?;
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map(BufWriter::new)
        .and_then(|mut out| out.write_all(&pcap::file_header()).map(|()| out));
    let mut out = match opened {
        Ok(out) => out,
        Err(e) => {
            lock().stop_capture(&session);
            return Err(bad(format!("cannot write {}: {e}", path.display())));
        }
    };
    let deadline = req.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut frames = 0u64;
    let mut failed = None;
    let mut checked = Instant::now();
    while req.count.is_none_or(|c| frames < c) {
        let now = Instant::now();
        let wait = match deadline {
            Some(d) if now >= d => break,
            Some(d) => (d - now).min(CHECK_CLIENT),
            None => CHECK_CLIENT,
        };
        if now.duration_since(checked) >= CHECK_CLIENT {
            checked = now;
            if hung_up(client) {
                break;
            }
            // What is in the file stays there if the daemon stops mid-way.
            if let Err(e) = out.flush() {
                failed = Some(e);
                break;
            }
        }
        match session.source.recv_timeout(wait) {
            Ok(c) => {
                if let Err(e) = write_record(&mut out, &c) {
                    failed = Some(e);
                    break;
                }
                frames += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The endpoint's ports are gone.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    lock().stop_capture(&session);
    if let Some(e) = failed.or_else(|| out.flush().err()) {
        return Err(bad(format!(
            "writing {} failed after {frames} frames: {e}",
            path.display()
        )));
    }
    Ok(CaptureReply {
        endpoint: session.endpoint.clone(),
        file: path.clone(),
        frames,
        lost: session.source.lost(),
    })
}
