//! `switchyard up FILE.toml`: the daemon in the foreground with the networks
//! and sandboxes a topology file declares. Prints what is up, serves the API
//! (so `switchyard ps`/`stats` work meanwhile), and tears everything down on
//! Ctrl-C or SIGTERM. State is kept in a temporary directory: an `up` run
//! leaves nothing behind.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use serde::Deserialize;

use super::run::{prepare, Launched, SandboxSpec};
use super::{print, table, CliError};
use crate::control::api::{NetworkCreate, Request};
use crate::control::client::Client;
use crate::control::daemon::{Daemon, DaemonConfig};
use crate::control::ipam::ProcRoutes;
use crate::control::model::{Network, Publication};
use crate::control::server::Server;
use crate::dataplane::DataplaneConfig;

/// Arguments of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Topology file (TOML).
    #[arg(value_name = "FILE.toml")]
    pub file: PathBuf,
    /// Worker settings.
    #[command(flatten)]
    pub worker: super::worker_args::WorkerArgs,
    /// DNS settings.
    #[command(flatten)]
    pub dns: super::dns_args::DnsArgs,
    /// NAT limits.
    #[command(flatten)]
    pub nat: super::gateway_args::NatArgs,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: super::metrics_args::MetricsArgs,
}

/// A sandbox in a topology file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxDecl {
    /// Endpoint name.
    pub name: String,
    /// Networks to join (default: "default").
    #[serde(default)]
    pub networks: Vec<String>,
    /// Extra DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Static IPv4 address on the first network.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Static IPv6 address on the first network.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// Published ports.
    #[serde(default)]
    pub publish: Vec<Publication>,
    /// Source checks on its ports (`port_security = false`: any MAC and
    /// address, e.g. a bridge inside).
    #[serde(default = "crate::control::model::enabled")]
    pub port_security: bool,
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// A topology file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Networks to create (besides `default`).
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkCreate>,
    /// Sandboxes to start.
    #[serde(default, rename = "sandbox")]
    pub sandboxes: Vec<SandboxDecl>,
}

impl Topology {
    /// Reads and checks a topology file.
    pub fn load(path: &Path) -> Result<Topology, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Topology(format!("cannot read {}: {e}", path.display())))?;
        let topo: Topology = toml::from_str(&text)
            .map_err(|e| CliError::Topology(format!("{}: {e}", path.display())))?;
        for s in &topo.sandboxes {
            if s.command.is_empty() {
                return Err(CliError::Topology(format!(
                    "{}: sandbox {:?} has an empty command",
                    path.display(),
                    s.name
                )));
            }
        }
        Ok(topo)
    }
}

/// The run's state directory, removed when `up` returns, on every path.
struct TempStateDir(PathBuf);

impl TempStateDir {
    fn new() -> TempStateDir {
        let name = format!("switchyard-up-{}", std::process::id());
        TempStateDir(crate::control::paths::runtime_dir().join(name))
    }
}

impl Drop for TempStateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `up`; returns the exit status.
pub fn up(socket: &Path, args: UpArgs) -> Result<i32, CliError> {
    let topo = Topology::load(&args.file)?;
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(CliError::Signals)?;

    super::gateway_args::raise_file_limit();
    let server = Server::bind(socket)?;
    let metrics = args.metrics.bind()?;
    let mut dataplane = DataplaneConfig::default();
    args.worker.apply(&mut dataplane)?;
    dataplane.gateway_threads = args.nat.gateway_threads.map_or(0, usize::from);
    let queues = dataplane.workers;
    // Before the daemon, so it is removed after the daemon is gone.
    let state_dir = TempStateDir::new();
    let config = DaemonConfig {
        state_dir: state_dir.0.clone(),
        dataplane,
        routes: Box::new(ProcRoutes::default()),
        dns: args.dns.settings()?,
        dns_upstream: args.dns.upstream(),
        nat_limits: args.nat.limits(),
        overlay: None,
        cluster: None,
        // A fresh state directory: there is nothing to restore.
        stopping: Arc::default(),
    };
    let daemon = Daemon::new(
        config,
        Box::new(crate::ns::NsAttacher::from_current_exe().with_queues(queues)),
    )?;
    let stop = server.stop_handle();
    let daemon = Arc::new(Mutex::new(daemon));
    super::daemon::spawn_reaper(&daemon);
    super::metrics_args::serve(metrics, &daemon)?;
    let serving = std::thread::Builder::new()
        .name("sy-api".into())
        .spawn(move || server.serve(daemon))
        .map_err(|e| CliError::Sandbox(format!("cannot start the API thread: {e}")))?;

    let mut client = Client::connect(socket)?;
    let result = bring_up(&mut client, &topo);
    let code = match result {
        Ok(launched) => {
            // A report that cannot be written (stdout closed or full) ends
            // the run, but only after the teardown: the sandboxes already
            // run.
            let reported = report(&mut client, &launched);
            // Idle API connections count against the daemon's client cap.
            drop(client);
            if reported.is_ok() {
                let waiter = wait_for_signal(signals);
                tracing::info!("stopping: {waiter}");
            }
            tear_down(socket, launched);
            reported.map(|()| 0)
        }
        Err(e) => {
            eprintln!("switchyard: {e}");
            Ok(1)
        }
    };
    stop.stop();
    let _ = serving.join();
    code
}

fn bring_up(client: &mut Client, topo: &Topology) -> Result<Vec<Launched>, CliError> {
    for n in &topo.networks {
        let _: Network = client.call(&Request::NetworkCreate(n.clone()))?;
    }
    let mut launched: Vec<Launched> = Vec::new();
    // Attach everyone first so each sandbox's /etc/hosts lists all the others.
    for s in &topo.sandboxes {
        let spec = SandboxSpec {
            name: Some(s.name.clone()),
            networks: s.networks.clone(),
            aliases: s.aliases.clone(),
            ip: s.ip,
            ip6: s.ip6,
            publish: s.publish.clone(),
            port_security: s.port_security,
            command: s.command.clone(),
        };
        match prepare(client, &spec) {
            Ok(l) => launched.push(l),
            Err(e) => {
                for mut l in launched {
                    l.abort(client);
                }
                return Err(e);
            }
        }
    }
    for i in 0..launched.len() {
        if let Err(e) = launched[i].start(client) {
            for mut l in launched {
                l.abort(client);
            }
            return Err(e);
        }
    }
    Ok(launched)
}

fn report(client: &mut Client, launched: &[Launched]) -> Result<(), CliError> {
    let networks: Vec<Network> = client.call(&Request::NetworkList)?;
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.subnet4.to_string(),
                n.gateway4.to_string(),
                [
                    n.internal.then_some("internal"),
                    n.isolate.then_some("isolate"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(","),
            ]
        })
        .collect();
    print(&table(&["NETWORK", "SUBNET", "GATEWAY", "OPTIONS"], &rows))?;
    print("\n")?;
    let rows: Vec<Vec<String>> = launched
        .iter()
        .flat_map(|l| {
            l.endpoints.iter().map(move |e| {
                vec![
                    e.name.clone(),
                    l.sandbox.pid().to_string(),
                    e.network.clone(),
                    e.ifname.clone(),
                    e.ipv4.to_string(),
                    e.mac.to_string(),
                ]
            })
        })
        .collect();
    print(&table(
        &["SANDBOX", "PID", "NETWORK", "IF", "IP", "MAC"],
        &rows,
    ))?;
    print("\nswitchyard is up; press Ctrl-C to tear everything down.\n")
}

fn wait_for_signal(signals: SigSet) -> String {
    match signals.wait() {
        Ok(sig) => format!("received {sig}"),
        Err(e) => format!("signal wait failed: {e}"),
    }
}

/// Stops every sandbox, the processes its command started included: SIGTERM,
/// up to 3 s to exit, then SIGKILL; then detaches its endpoints.
fn tear_down(socket: &Path, launched: Vec<Launched>) {
    for l in &launched {
        l.sandbox.signal_all(Some(Signal::SIGTERM));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut client = match Client::connect(socket) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("switchyard: {e}");
            None
        }
    };
    for mut l in launched {
        while (!l.sandbox.try_wait() || l.sandbox.signal_all(None) > 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        l.sandbox.kill_all();
        let _ = l.sandbox.wait();
        if let Some(c) = client.as_mut() {
            for e in l.teardown(c) {
                eprintln!("switchyard: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_keep_port_security_unless_the_file_turns_it_off() {
        let topo: Topology = toml::from_str(
            r#"
            [[sandbox]]
            name = "a"
            command = ["true"]
            [[sandbox]]
            name = "b"
            port_security = false
            command = ["true"]
            "#,
        )
        .unwrap();
        let open: Vec<bool> = topo.sandboxes.iter().map(|s| s.port_security).collect();
        assert_eq!(open, [true, false]);
        assert!(toml::from_str::<Topology>(
            "[[sandbox]]\nname = \"c\"\nport_secure = 1\ncommand = [\"x\"]"
        )
        .is_err());
    }

    #[test]
    fn sandboxes_take_static_addresses_of_both_families() {
        let topo: Topology = toml::from_str(
            r#"
            [[sandbox]]
            name = "a"
            ip = "10.89.100.5"
            ip6 = "fd00:89::5"
            command = ["true"]
            "#,
        )
        .unwrap();
        let s = &topo.sandboxes[0];
        assert_eq!(s.ip, Some("10.89.100.5".parse().unwrap()));
        assert_eq!(s.ip6, Some("fd00:89::5".parse().unwrap()));
        let bad = "[[sandbox]]\nname = \"b\"\nip6 = \"10.0.0.1\"\ncommand = [\"x\"]";
        assert!(toml::from_str::<Topology>(bad).is_err());
    }
}
