//! Restoring the saved state at start: networks are re-created, endpoints
//! whose sandboxes survived are re-attached, the others released. Endpoints
//! that fail to re-attach are retried until one deadline shared by all of
//! them, or until the daemon is asked to stop: a large state delays the
//! start by [`REATTACH_WINDOW`] (and an attempt per endpoint), not that much
//! per endpoint, and SIGTERM by one attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{network_spec, Daemon};
use crate::control::error::DaemonError;
use crate::control::model::{Endpoint, Network};
use crate::control::store::State;
use crate::ports::PortId;

/// How long endpoints are retried, all of them together. The previous
/// daemon's TAPs disappear when its fds close, but the kernel may still be
/// unregistering them (their names taken) for a moment.
const REATTACH_WINDOW: Duration = Duration::from_secs(3);

/// The pause between two rounds of retries.
const REATTACH_PAUSE: Duration = Duration::from_millis(100);

/// What re-attaching an endpoint came to.
enum Reattach {
    /// Its data-plane ports.
    Attached(Vec<PortId>),
    /// Its last error.
    Failed(DaemonError),
    /// Not tried: the daemon was asked to stop first.
    Untried,
}

impl Daemon {
    /// Re-creates `loaded`'s networks and endpoints and saves what came of
    /// it. Endpoints that were still failing when `stopping` was set are
    /// kept for the next start, not released.
    pub(super) fn restore(
        &mut self,
        loaded: State,
        stopping: &AtomicBool,
    ) -> Result<(), DaemonError> {
        let mut state = loaded.clone();
        for net in &loaded.networks {
            let id = self.dataplane.add_network(network_spec(net))?;
            self.net_ids.insert(net.name.clone(), id);
            self.apply_overlay(net)?;
        }
        state.endpoints.clear();
        let live: Vec<(&Endpoint, &Network)> = loaded
            .endpoints
            .iter()
            .filter_map(|ep| self.surviving(ep, &loaded.networks))
            .collect();
        let (outcomes, stopped) = self.reattach_all(&live, stopping);
        for ((ep, _), outcome) in live.into_iter().zip(outcomes) {
            match outcome {
                Reattach::Attached(ports) => {
                    self.ports.insert(ep.id.clone(), ports);
                    for p in &ep.publications {
                        match self.bind_publication(ep, p) {
                            Ok(bound) => self.serve_publication(&ep.id, *p, bound),
                            Err(e) => tracing::warn!("endpoint {}/{}: {e}", ep.network, ep.name),
                        }
                    }
                    state.endpoints.push(ep.clone());
                }
                Reattach::Failed(e) if !stopped => tracing::warn!(
                    "cannot re-attach endpoint {}/{}: {e}; released {}",
                    ep.network,
                    ep.name,
                    ep.ipv4
                ),
                Reattach::Failed(_) | Reattach::Untried => {
                    tracing::info!(
                        "stopping: endpoint {}/{} is kept for the next start to re-attach",
                        ep.network,
                        ep.name
                    );
                    state.endpoints.push(ep.clone());
                }
            }
        }
        if state != loaded {
            self.store.save(&state)?;
        }
        self.state = state;
        self.publish_dns();
        Ok(())
    }

    /// `ep` with its network if its network is known and its sandbox still
    /// exists; otherwise logs why it is dropped.
    fn surviving<'a>(
        &self,
        ep: &'a Endpoint,
        networks: &'a [Network],
    ) -> Option<(&'a Endpoint, &'a Network)> {
        let Some(net) = networks.iter().find(|n| n.name == ep.network) else {
            tracing::warn!(
                "dropping endpoint {} of unknown network {}",
                ep.name,
                ep.network
            );
            return None;
        };
        if self.attacher.namespace_id(&ep.sandbox).ok() != Some(ep.netns_id) {
            tracing::warn!(
                "sandbox {} of endpoint {}/{} is gone; released {}",
                ep.sandbox,
                ep.network,
                ep.name,
                ep.ipv4
            );
            return None;
        }
        Some((ep, net))
    }

    /// Re-creates the endpoints' interfaces, retrying the failures in rounds
    /// until [`REATTACH_WINDOW`] from now has passed or `stopping` is set
    /// (checked before every attempt). Returns what came of each endpoint,
    /// in order, and whether the retries were cut short by `stopping`.
    fn reattach_all(
        &mut self,
        eps: &[(&Endpoint, &Network)],
        stopping: &AtomicBool,
    ) -> (Vec<Reattach>, bool) {
        let deadline = Instant::now() + REATTACH_WINDOW;
        let mut outcomes: Vec<Reattach> = eps.iter().map(|_| Reattach::Untried).collect();
        loop {
            for ((ep, net), outcome) in eps.iter().zip(outcomes.iter_mut()) {
                if matches!(outcome, Reattach::Attached(_)) {
                    continue;
                }
                if stopping.load(Ordering::SeqCst) {
                    return (outcomes, true);
                }
                *outcome = match self.attach_ports(ep, net) {
                    Ok(ports) => Reattach::Attached(ports),
                    Err(e) => {
                        tracing::debug!("re-attaching {}/{}: {e}; retrying", ep.network, ep.name);
                        Reattach::Failed(e)
                    }
                };
            }
            let failing = outcomes.iter().any(|o| !matches!(o, Reattach::Attached(_)));
            if !failing || Instant::now() >= deadline {
                return (outcomes, false);
            }
            std::thread::sleep(REATTACH_PAUSE);
        }
    }
}
