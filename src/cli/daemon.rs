//! `switchyard daemon`: starts the data plane and serves the API until
//! SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::CliError;
use crate::control::daemon::{Daemon, DaemonConfig};
use crate::control::ipam::ProcRoutes;
use crate::control::paths;
use crate::control::server::Server;
use crate::dataplane::DataplaneConfig;

/// Arguments of `switchyard daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// State directory (default: $XDG_STATE_HOME/switchyard, or /var/lib/switchyard as root).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// API socket (overrides the global --socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Worker settings.
    #[command(flatten)]
    pub worker: super::worker_args::WorkerArgs,
    /// Overlay settings.
    #[command(flatten)]
    pub overlay: super::overlay_args::OverlayArgs,
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

/// How often endpoints of vanished sandboxes are looked for.
const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts the thread that releases endpoints whose sandbox is gone; it ends
/// with the daemon (when only it still holds the daemon).
pub fn spawn_reaper(daemon: &Arc<Mutex<Daemon>>) {
    let weak = Arc::downgrade(daemon);
    let spawned = std::thread::Builder::new()
        .name("sy-reaper".into())
        .spawn(move || loop {
            std::thread::sleep(REAP_INTERVAL);
            let Some(daemon) = weak.upgrade() else { return };
            // A panic elsewhere under the lock must not stop reaping (the
            // API recovers the same way).
            let mut d = daemon
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            d.reap_vanished();
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the endpoint reaper: {e}");
    }
}

/// Runs the daemon in the foreground.
pub fn daemon(global_socket: &Path, args: DaemonArgs) -> Result<(), CliError> {
    let overlay = args.overlay.settings()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let socket = args.socket.unwrap_or_else(|| global_socket.to_path_buf());
    // Blocked before any thread starts so every thread inherits the mask and
    // only the waiter below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(CliError::Signals)?;
    super::gateway_args::raise_file_limit();
    let server = Server::bind(&socket)?;
    let metrics = args.metrics.bind()?;
    let mut dataplane = DataplaneConfig::default();
    args.worker.apply(&mut dataplane)?;
    dataplane.gateway_threads = args.nat.gateway_threads.map_or(0, usize::from);
    let config = DaemonConfig {
        state_dir: args.state_dir.unwrap_or_else(paths::default_state_dir),
        dataplane,
        routes: Box::new(ProcRoutes::default()),
        dns: args.dns.settings()?,
        dns_upstream: args.dns.upstream(),
        nat_limits: args.nat.limits(),
        cluster: args.overlay.cluster(overlay.as_ref())?,
        overlay,
        stopping: Arc::default(),
    };
    let queues = config.dataplane.workers;
    // Waiting from before the start: restoring a large state may take a
    // while, and a stop request cuts it short.
    let stopping = config.stopping.clone();
    let stop = server.stop_handle();
    std::thread::Builder::new()
        .name("sy-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!("received {sig}, stopping");
            }
            stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            stop.stop();
        })
        .map_err(|e| CliError::Signals(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    let attacher = crate::ns::NsAttacher::from_current_exe().with_queues(queues);
    let daemon = Daemon::new(config, Box::new(attacher))?;
    tracing::info!("switchyard daemon listening on {}", socket.display());
    let daemon = Arc::new(Mutex::new(daemon));
    spawn_reaper(&daemon);
    super::metrics_args::serve(metrics, &daemon)?;
    crate::control::daemon::spawn_cluster_sync(&daemon);
    server.serve(Arc::clone(&daemon));
    daemon
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .leave_cluster();
    Ok(())
}
