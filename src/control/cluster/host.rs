//! This host's record in the store, and the one-daemon-per-host-id rule.
//! Two daemons under one host id would each take the other's endpoints and
//! address leases for stale records of their own and withdraw them, without
//! end; so the record is put only when no running daemon holds it. A
//! record left by a crashed daemon (this host's previous run) is taken
//! over as soon as its lease shows that nobody renews it.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};

use super::engine::{bounded, Engine, SessionError};
use super::error::ClusterError;
use super::keys::Key;
use super::ops::to_json;
use super::records::HostRecord;

/// How often the holder's lease is read while deciding whether it is alive.
const POLL: Duration = Duration::from_millis(250);
/// What is allowed beyond the holder's TTL for etcd to expire a dead lease.
const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

/// What one reading of the holder's lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    /// Gone, or not renewed for longer than a live holder ever lets it go:
    /// the record may be taken over.
    Dead,
    /// Renewed since the last reading: a daemon is running under this id.
    Alive,
    /// Cannot tell yet.
    Unknown,
}

/// Judges the holder's lease from its remaining TTL now and at the last
/// reading (whole seconds, as etcd reports it). A live holder renews every
/// third of its TTL, so its remaining TTL never falls below two thirds of
/// it (less a second for rounding and delay); a dead one's only falls.
pub(super) fn judge(granted: i64, last: Option<i64>, now: i64) -> Holder {
    if now <= 0 || now < granted * 2 / 3 - 1 {
        Holder::Dead
    } else if last.is_some_and(|l| now > l) {
        Holder::Alive
    } else {
        Holder::Unknown
    }
}

impl Engine {
    /// Puts this host's record under `lease`, after making sure that no
    /// running daemon holds it under another lease
    /// ([`ClusterError::HostTaken`] if one does).
    pub(super) async fn register_host(
        &mut self,
        client: &mut Client,
        lease: i64,
    ) -> Result<(), SessionError> {
        let host = HostRecord {
            host: self.config.host.clone(),
            advertise: self.config.advertise,
            vtep: self.config.vtep(),
        };
        let key = self.keys.key(&Key::Host(host.host.clone()));
        let t = self.config.op_timeout;
        let held = bounded(t, client.get(key.as_str(), None)).await?;
        let holder = held.kvs().first().map_or(0, |kv| kv.lease());
        if holder != 0 && holder != lease {
            self.outlive(client, holder).await?;
        }
        let put = client.put(
            key,
            to_json(&host),
            Some(PutOptions::new().with_lease(lease)),
        );
        bounded(t, put).await?;
        Ok(())
    }

    /// Watches `holder`, the lease of another registration of this host id,
    /// until it shows whether a daemon still renews it: returns once it is
    /// dead, fails with [`ClusterError::HostTaken`] when it is renewed or
    /// outlives its own TTL.
    async fn outlive(&mut self, client: &mut Client, holder: i64) -> Result<(), SessionError> {
        let t = self.config.op_timeout;
        let first = bounded(t, client.lease_time_to_live(holder, None)).await?;
        let granted = first.granted_ttl();
        let mut last = None;
        let mut now = first.ttl();
        let deadline = Instant::now()
            + Duration::from_secs(u64::try_from(granted).unwrap_or(0))
            + EXPIRY_SLACK;
        loop {
            match judge(granted, last, now) {
                Holder::Dead => return Ok(()),
                Holder::Alive => break,
                Holder::Unknown if Instant::now() >= deadline => break,
                Holder::Unknown => {}
            }
            if last.is_none() {
                tracing::info!(
                    "host {} is registered in the cluster store under lease {holder:x}; \
                     waiting up to {granted} s to see whether that daemon is still running",
                    self.config.host
                );
            }
            tokio::time::sleep(POLL).await;
            last = Some(now);
            now = bounded(t, client.lease_time_to_live(holder, None))
                .await?
                .ttl();
        }
        Err(SessionError::Refused(ClusterError::HostTaken {
            host: self.config.host.clone(),
            lease: holder,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_lease_is_alive_and_a_lapsed_one_dead() {
        // TTL 10: renewed every 3.3 s, so it reads 6 to 10 while alive.
        assert_eq!(judge(10, None, 9), Holder::Unknown);
        assert_eq!(judge(10, Some(7), 9), Holder::Alive);
        assert_eq!(judge(10, Some(7), 6), Holder::Unknown);
        assert_eq!(judge(10, Some(6), 4), Holder::Dead);
        assert_eq!(judge(10, None, 0), Holder::Dead);
        assert_eq!(judge(10, None, -1), Holder::Dead);
        // TTL 2 reads 1 all along while alive: only expiry tells.
        assert_eq!(judge(2, Some(1), 1), Holder::Unknown);
        assert_eq!(judge(2, Some(1), 0), Holder::Dead);
    }
}
