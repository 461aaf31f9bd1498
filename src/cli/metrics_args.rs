//! The metrics option shared by `daemon` and `up`: where to serve the
//! counters of `switchyard stats` for Prometheus.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use clap::Args;

use super::CliError;
use crate::control::daemon::Daemon;
use crate::control::metrics::MetricsServer;

/// Metrics option.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve the counters of `switchyard stats` for Prometheus at
    /// http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks a free one).
    /// Off by default; the endpoint has no authentication, so bind it where
    /// only the scraper can reach it.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Binds the listener, if asked for, before the daemon starts.
    pub fn bind(&self) -> Result<Option<MetricsServer>, CliError> {
        self.metrics
            .map(MetricsServer::bind)
            .transpose()
            .map_err(CliError::from)
    }
}

/// Serves scrapes of `daemon`'s stats on `server`, until the daemon is gone.
pub fn serve(server: Option<MetricsServer>, daemon: &Arc<Mutex<Daemon>>) -> Result<(), CliError> {
    let Some(server) = server else {
        return Ok(());
    };
    if let Ok(addr) = server.local_addr() {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let weak = Arc::downgrade(daemon);
    server.spawn(move || {
        let daemon = weak.upgrade()?;
        // As the API does: a panic in another request does not stop scrapes.
        let stats = daemon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats();
        Some(stats)
    })?;
    Ok(())
}
