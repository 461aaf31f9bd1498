//! `switchyard capture ENDPOINT -w FILE`: the frames an endpoint's ports
//! receive and send, written by the daemon into a pcap file (for tcpdump,
//! tshark, Wireshark) until a count, a time, or Ctrl-C.

use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::{print, CliError};
use crate::control::api::{CaptureReply, CaptureRequest, Request};
use crate::control::client::Client;

/// Arguments of `capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The endpoint: id, NETWORK/NAME, or a name unique across networks.
    pub endpoint: String,
    /// The pcap file to write (the daemon writes it, mode 0600).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub file: PathBuf,
    /// Stop after this many frames.
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this many seconds (at most 86400). Without --count or
    /// --seconds, the capture runs until Ctrl-C.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: Option<u64>,
}

/// Runs `capture`.
pub fn capture(socket: &Path, a: CaptureArgs) -> Result<(), CliError> {
    let file = if a.file.is_absolute() {
        a.file
    } else {
        std::env::current_dir()
            .map_err(|e| CliError::Invalid(format!("cannot resolve {}: {e}", a.file.display())))?
            .join(a.file)
    };
    // Ctrl-C ends the capture, not this process: the daemon sees the
    // connection's write side shut, stops, and still answers.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(CliError::Signals)?;
    let wait = Duration::from_secs(a.seconds.unwrap_or(86_400) + 60);
    let mut client = Client::connect_with_timeout(socket, wait)?;
    if let Ok(stream) = client.stream_handle() {
        let _ = std::thread::Builder::new()
            .name("sy-capture-signals".into())
            .spawn(move || {
                if signals.wait().is_ok() {
                    let _ = stream.shutdown(Shutdown::Write);
                }
            });
    }
    let r: CaptureReply = client.call(&Request::Capture(CaptureRequest {
        endpoint: a.endpoint,
        file,
        count: a.count,
        seconds: a.seconds,
    }))?;
    let lost = if r.lost > 0 {
        format!(" ({} lost: the writer fell behind)", r.lost)
    } else {
        String::new()
    };
    print(&format!(
        "{} frames of endpoint {} written to {}{lost}\n",
        r.frames,
        r.endpoint,
        r.file.display()
    ))
}
