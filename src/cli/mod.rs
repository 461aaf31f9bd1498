//! The `switchyard` command line: argument types (clap derive), one file per
//! verb, and the dispatch from a parsed command to the daemon or the API.

// The argument structs' doc comments are clap's `--help` texts, written for
// the terminal: `[HOSTIP:]PORT` there is a usage pattern, not a doc link.
#![allow(rustdoc::broken_intra_doc_links)]

pub mod capture;
pub mod cni;
pub mod connect;
pub mod daemon;
pub mod disconnect;
pub mod dns_args;
pub mod gateway_args;
pub mod metrics_args;
pub mod network;
pub mod overlay_args;
pub mod ps;
pub mod publish;
pub mod run;
pub mod stats;
pub mod trace;
pub mod unpublish;
pub mod up;
pub mod worker_args;

use std::io;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::control::client::{Client, ClientError};
use crate::control::error::DaemonError;
use crate::control::paths;
use crate::control::server::ServerError;

/// Rootless userspace virtual switch for containers.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, propagate_version = true)]
pub struct Cli {
    /// API socket of the daemon (default: $XDG_RUNTIME_DIR/switchyard/api.sock, /tmp/switchyard-UID/api.sock without XDG_RUNTIME_DIR, or /run/switchyard/api.sock as root).
    #[arg(long, env = paths::SOCKET_ENV, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: data plane plus API server.
    Daemon(daemon::DaemonArgs),
    /// Run the daemon in the foreground with the networks and sandboxes of a TOML file.
    Up(up::UpArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Run a command in a new sandbox attached to networks.
    Run(run::RunArgs),
    /// Attach an existing sandbox (netns path or PID) to a network.
    Connect(connect::ConnectArgs),
    /// Detach an endpoint from a network.
    Disconnect(disconnect::DisconnectArgs),
    /// Publish a port of an endpoint on the host.
    Publish(publish::PublishArgs),
    /// Withdraw a published port.
    Unpublish(unpublish::UnpublishArgs),
    /// List endpoints.
    Ps(ps::PsArgs),
    /// Show per-port and per-drop-reason counters.
    Stats(stats::StatsArgs),
    /// Explain the pipeline's decision for a described frame.
    Trace(trace::TraceArgs),
    /// Write the frames of an endpoint's ports to a pcap file.
    Capture(capture::CaptureArgs),
}

/// CLI failures (printed to stderr; the process exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the daemon failed or it refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon could not start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The API socket could not be set up.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The metrics listener could not be set up.
    #[error(transparent)]
    Metrics(#[from] crate::control::metrics::MetricsError),
    /// An option that is accepted but not implemented yet.
    #[error("{0} not yet supported")]
    Unsupported(String),
    /// A verb whose implementation is not merged yet.
    #[error("`switchyard {0}` is not wired yet in this build")]
    NotWired(&'static str),
    /// Arguments that clap cannot rule out on its own.
    #[error("{0}")]
    Usage(&'static str),
    /// An option value that is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A topology file for `up` is unreadable or invalid.
    #[error("topology: {0}")]
    Topology(String),
    /// Creating, attaching or running a sandbox failed.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// Signal setup failed.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] nix::Error),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

/// Runs a parsed command; returns the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32, CliError> {
    let socket = cli.socket.unwrap_or_else(paths::default_socket);
    match cli.command {
        Command::Daemon(a) => daemon::daemon(&socket, a).map(|()| 0),
        Command::Up(a) => up::up(&socket, a),
        Command::Network(c) => network::network(&socket, c).map(|()| 0),
        Command::Run(a) => run::run(&socket, a),
        Command::Connect(a) => connect::connect(&socket, a).map(|()| 0),
        Command::Disconnect(a) => disconnect::disconnect(&socket, a).map(|()| 0),
        Command::Publish(a) => publish::publish(&socket, a).map(|()| 0),
        Command::Unpublish(a) => unpublish::unpublish(&socket, a).map(|()| 0),
        Command::Ps(a) => ps::ps(&socket, a).map(|()| 0),
        Command::Stats(a) => stats::stats(&socket, a).map(|()| 0),
        Command::Trace(a) => trace::trace(&socket, a).map(|()| 0),
        Command::Capture(a) => capture::capture(&socket, a).map(|()| 0),
    }
}

/// Connects to the daemon.
pub fn client(socket: &Path) -> Result<Client, CliError> {
    Ok(Client::connect(socket)?)
}

/// Renders rows under headers in aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Writes `text` to stdout.
pub fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    io::stdout()
        .write_all(text.as_bytes())
        .map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_contract_examples() {
        let ok = [
            "switchyard --socket /tmp/s daemon --state-dir /tmp/d --workers 2",
            "switchyard network create web --subnet 10.1.0.0/24 --gateway 10.1.0.254 --internal --isolate --mtu 9000",
            "switchyard network create o --driver overlay --vni 42",
            "switchyard network ls",
            "switchyard network inspect web",
            "switchyard network rm web",
            "switchyard connect web --netns /run/netns/a --name a --alias x --alias y --ip 10.1.0.5",
            "switchyard connect web --pid 42",
            "switchyard disconnect web a",
            "switchyard publish a 127.0.0.1:8080:80/tcp",
            "switchyard unpublish a 8080:80",
            "switchyard unpublish a 8080",
            "switchyard unpublish a 127.0.0.1:8080/udp",
            "switchyard ps",
            "switchyard stats --json",
            "switchyard run --network a --network b --name n -p 80:80 -- sh -c true",
            "switchyard up demo.toml",
            "switchyard trace web in=a,icmp=10.1.0.1",
        ];
        for l in ok {
            Cli::try_parse_from(l.split(' ')).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
        let bad = [
            "switchyard network create web --subnet 10.1.0.1/24",
            "switchyard network create web --driver macvlan",
            "switchyard connect web",
            "switchyard connect web --pid 1 --netns /x",
            "switchyard connect web --pid 1 --userns /proc/1/ns/user",
            "switchyard connect web --pid 1 --ip 10.0.0",
            "switchyard publish a 80",
            "switchyard run --network a",
            "switchyard daemon --nat-max-flows 0",
            "switchyard daemon --nat-max-flows-per-sandbox 0",
        ];
        for l in bad {
            assert!(Cli::try_parse_from(l.split(' ')).is_err(), "{l} accepted");
        }
    }

    #[test]
    fn cluster_ttl_without_a_cluster_store_is_refused() {
        let daemon = |line: &str| match Cli::try_parse_from(line.split(' ')) {
            Ok(Cli {
                command: Command::Daemon(a),
                ..
            }) => a,
            other => panic!("{line}: {other:?}"),
        };
        let lone = daemon("switchyard daemon --advertise 10.0.0.1 --cluster-ttl 5");
        let err = lone.overlay.settings().expect_err("accepted");
        assert!(err.to_string().contains("needs --cluster-store"), "{err}");
        let with_store = daemon(
            "switchyard daemon --advertise 10.0.0.1 --cluster-store etcd://127.0.0.1:2379 --cluster-ttl 5",
        );
        assert!(with_store.overlay.settings().is_ok());
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
