//! The operations behind the blocking API, run on the store's thread against
//! a connected client. Uniqueness (VNIs, addresses, endpoint names) comes
//! from etcd transactions that compare `create_revision == 0`; losers of a
//! race pick the next candidate. Successful writes are applied to the mirror
//! at once, so a caller reads its own writes in `snapshot()`. A withdrawal
//! stops this host owning the record before it talks to etcd, and stays
//! queued until etcd has deleted it (see `Owned`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};

use super::alloc::{lowest_free_ip, lowest_free_vni, usable};
use super::engine::{Engine, IpRequest, SessionError};
use super::error::ClusterError;
use super::keys::Key;
use super::records::{EndpointRecord, IpamLease, NetworkRecord};
use crate::control::model::validate_name;

/// Bound on retries after losing a race (each retry sees a newer state).
const MAX_RACES: usize = 64;

/// Outcome of [`claim`].
enum Claim {
    /// The key now holds our value, at this revision.
    Written(i64),
    /// Someone else's value is there.
    Held(KeyValue),
    /// The key vanished between compare and read; try again.
    Vanished,
}

/// Writes `value` under `lease` if the key is absent or already holds
/// exactly `value` (then it is re-attached to `lease`), in one transaction.
async fn claim(
    client: &mut Client,
    key: &str,
    value: &[u8],
    lease: i64,
) -> Result<Claim, etcd_client::Error> {
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let refresh = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, value)])
        .and_then([put.clone()])
        .or_else([TxnOp::get(key, None)]);
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put])
        .or_else([TxnOp::txn(refresh)]);
    let resp = client.txn(txn).await?;
    let rev = revision(&resp);
    if resp.succeeded() {
        return Ok(Claim::Written(rev));
    }
    let Some(TxnOpResponse::Txn(inner)) = resp.op_responses().into_iter().next() else {
        return Ok(Claim::Vanished);
    };
    if inner.succeeded() {
        return Ok(Claim::Written(rev));
    }
    Ok(first_kv(&inner).map_or(Claim::Vanished, Claim::Held))
}

fn revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// The first key-value of the first get in a transaction's responses.
fn first_kv(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: they always serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Whether a failed withdrawal is worth retrying: etcd did not answer or
/// lost a race; not when the record is another host's or unreadable.
fn retry_later(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::Etcd(_)
            | ClusterError::Timeout(_)
            | ClusterError::Disconnected(_)
            | ClusterError::Contention(_)
    )
}

fn parse<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, ClusterError> {
    serde_json::from_slice(kv.value()).map_err(|e| ClusterError::CorruptRecord {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        why: e.to_string(),
    })
}

impl Engine {
    /// Deletes the records withdrawn while etcd did not answer, then puts
    /// this host's record and everything it owns back under `lease` (after a
    /// reconnect, or a new lease when the old one expired).
    pub(super) async fn restore(
        &mut self,
        client: &mut Client,
        lease: i64,
    ) -> Result<(), SessionError> {
        self.register_host(client, lease).await?;
        let t = self.config.op_timeout;
        let withdrawn: Vec<String> = self.owned.withdrawn.iter().cloned().collect();
        for key in withdrawn {
            let deleted = tokio::time::timeout(t, self.delete_withdrawn(client, &key)).await;
            match deleted.unwrap_or(Err(ClusterError::Timeout(t))) {
                Ok(()) => {}
                Err(e) if retry_later(&e) => return Err(e.to_string().into()),
                Err(e) => self.note_error(format!("cannot withdraw {key}: {e}")),
            }
        }
        let endpoints: Vec<EndpointRecord> = self.owned.endpoints.values().cloned().collect();
        for ep in endpoints {
            let put = tokio::time::timeout(t, self.put_endpoint(client, lease, ep.clone())).await;
            match put.unwrap_or(Err(ClusterError::Timeout(t))) {
                Ok(()) => {}
                Err(ClusterError::Etcd(e)) => return Err(e.to_string().into()),
                Err(e @ ClusterError::Timeout(_)) => return Err(e.to_string().into()),
                Err(e) => {
                    self.owned
                        .endpoints
                        .remove(&self.keys.key(&Key::Endpoint(ep.network, ep.name)));
                    self.note_error(format!("lost an endpoint record while etcd was away: {e}"));
                }
            }
        }
        let ips: Vec<(String, IpamLease)> = self
            .owned
            .ips
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, held) in ips {
            let value = to_json(&held);
            let claimed = tokio::time::timeout(t, claim(client, &key, &value, lease))
                .await
                .map_err(|_| ClusterError::Timeout(t).to_string())?;
            match claimed.map_err(|e| e.to_string())? {
                Claim::Written(_) => {}
                Claim::Held(_) | Claim::Vanished => {
                    self.owned.ips.remove(&key);
                    self.note_error(format!(
                        "address lease {key} was taken by another host while etcd was away"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Tries the queued withdrawals again (while connected); stops at the
    /// first that etcd does not answer, for the next round.
    pub(super) async fn retry_withdrawals(&mut self, client: &mut Client) {
        let t = self.config.op_timeout;
        let withdrawn: Vec<String> = self.owned.withdrawn.iter().cloned().collect();
        for key in withdrawn {
            let deleted = tokio::time::timeout(t, self.delete_withdrawn(client, &key)).await;
            match deleted.unwrap_or(Err(ClusterError::Timeout(t))) {
                Ok(()) => {}
                Err(e) if retry_later(&e) => {
                    self.note_error(format!("cannot withdraw {key} yet ({e}); retrying"));
                    break;
                }
                Err(e) => self.note_error(format!("cannot withdraw {key}: {e}")),
            }
        }
        self.publish();
    }

    /// Deletes a queued withdrawal's record if it is still this host's; the
    /// key leaves the queue unless the failure is worth retrying.
    async fn delete_withdrawn(
        &mut self,
        client: &mut Client,
        key: &str,
    ) -> Result<(), ClusterError> {
        let what = format!("record {key}");
        let done = match self.keys.parse(key.as_bytes()) {
            Some(Key::Endpoint(..)) => {
                self.delete_own::<EndpointRecord>(client, key, what, |e| e.host.clone())
                    .await
            }
            Some(Key::Ipam(..)) => {
                self.delete_own::<IpamLease>(client, key, what, |l| l.host.clone())
                    .await
            }
            // Only endpoints and leases are ever queued.
            _ => Ok(()),
        };
        self.settle_withdrawal(key, &done);
        done
    }

    /// Takes `key` out of the withdrawal queue unless `done` failed in a way
    /// worth retrying.
    fn settle_withdrawal(&mut self, key: &str, done: &Result<(), ClusterError>) {
        if !done.as_ref().is_err_and(retry_later) {
            self.owned.withdrawn.remove(key);
        }
    }

    pub(super) async fn create_network(
        &mut self,
        client: &mut Client,
        want: NetworkRecord,
    ) -> Result<(NetworkRecord, bool), ClusterError> {
        want.validate()?;
        let net_key = self.keys.key(&Key::Network(want.name.clone()));
        let mut stale_claim = false;
        for _ in 0..MAX_RACES {
            let existing = client.get(net_key.as_str(), None).await?;
            if let Some(kv) = existing.kvs().first() {
                let stored: NetworkRecord = parse(kv)?;
                return match want.matches(&stored) {
                    Ok(()) => Ok((stored, false)),
                    Err(why) => Err(ClusterError::NetworkConflict {
                        name: want.name,
                        why,
                    }),
                };
            }
            let vni = match want.vni {
                Some(v) => v,
                None => {
                    let opts = GetOptions::new().with_prefix().with_keys_only();
                    let claims = client.get(self.keys.vnis(), Some(opts)).await?;
                    let taken: BTreeSet<u32> = claims
                        .kvs()
                        .iter()
                        .filter_map(|kv| match self.keys.parse(kv.key()) {
                            Some(Key::Vni(v)) => Some(v),
                            _ => None,
                        })
                        .collect();
                    lowest_free_vni(&taken).ok_or(ClusterError::NoFreeVni)?
                }
            };
            let record = NetworkRecord {
                vni: Some(vni),
                ..want.clone()
            };
            let vni_key = self.keys.key(&Key::Vni(vni));
            let (net_value, vni_value) = (to_json(&record), to_json(&record.name));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(net_key.as_str(), CompareOp::Equal, 0),
                    if stale_claim {
                        Compare::value(vni_key.as_str(), CompareOp::Equal, vni_value.clone())
                    } else {
                        Compare::create_revision(vni_key.as_str(), CompareOp::Equal, 0)
                    },
                ])
                .and_then([
                    TxnOp::put(net_key.as_str(), net_value.clone(), None),
                    TxnOp::put(vni_key.as_str(), vni_value.clone(), None),
                ])
                .or_else([TxnOp::get(vni_key.as_str(), None)]);
            let resp = client.txn(txn).await?;
            if resp.succeeded() {
                let rev = revision(&resp);
                let _ = self
                    .mirror
                    .put(&self.keys, net_key.as_bytes(), &net_value, rev);
                let _ = self
                    .mirror
                    .put(&self.keys, vni_key.as_bytes(), &vni_value, rev);
                return Ok((record, true));
            }
            // Either the network appeared (the next round compares it) or
            // the VNI is taken.
            if let (Some(v), Some(kv)) = (want.vni, first_kv(&resp)) {
                let owner: String = parse(&kv)?;
                if owner != want.name {
                    return Err(ClusterError::VniTaken {
                        vni: v,
                        network: owner,
                    });
                }
                // A claim left without its network (edited by hand):
                // take it over in the next round.
                stale_claim = true;
            }
        }
        Err(ClusterError::Contention("creating a network"))
    }

    pub(super) async fn remove_network(
        &mut self,
        client: &mut Client,
        name: &str,
    ) -> Result<(), ClusterError> {
        validate_name("network", name)?;
        let net_key = self.keys.key(&Key::Network(name.to_string()));
        for _ in 0..MAX_RACES {
            let existing = client.get(net_key.as_str(), None).await?;
            let Some(kv) = existing.kvs().first() else {
                return Ok(());
            };
            let stored: NetworkRecord = parse(kv)?;
            let count = client
                .get(
                    self.keys.endpoints_of(name),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?
                .count();
            if count > 0 {
                return Err(ClusterError::NetworkInUse {
                    network: name.to_string(),
                    count,
                });
            }
            let mut ops = vec![
                TxnOp::delete(net_key.as_str(), None),
                TxnOp::delete(
                    self.keys.ipam_of(name),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
            ];
            let vni_key = stored.vni.map(|v| self.keys.key(&Key::Vni(v)));
            if let Some(k) = &vni_key {
                ops.push(TxnOp::delete(k.as_str(), None));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    net_key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then(ops);
            let resp = client.txn(txn).await?;
            if resp.succeeded() {
                let rev = revision(&resp);
                self.mirror.delete(&self.keys, net_key.as_bytes(), rev);
                if let Some(k) = vni_key {
                    self.mirror.delete(&self.keys, k.as_bytes(), rev);
                }
                return Ok(());
            }
        }
        Err(ClusterError::Contention("removing a network"))
    }

    pub(super) async fn allocate_ip(
        &mut self,
        client: &mut Client,
        lease: i64,
        req: &IpRequest,
    ) -> Result<Ipv4Addr, ClusterError> {
        let IpRequest {
            network,
            subnet,
            gateway,
            requested,
            endpoint,
        } = req;
        let (network, subnet, gateway) = (network.as_str(), *subnet, *gateway);
        validate_name("network", network)?;
        validate_name("endpoint", endpoint)?;
        let mine = IpamLease {
            host: self.config.host.clone(),
            endpoint: endpoint.clone(),
        };
        let value = to_json(&mine);
        if let Some(ip) = *requested {
            if !usable(subnet, Some(gateway), ip) {
                return Err(ClusterError::BadAddress { ip, subnet });
            }
            let key = self.keys.key(&Key::Ipam(network.to_string(), ip));
            // Asked for again: no longer to be deleted, whatever etcd says.
            self.owned.withdrawn.remove(&key);
            for _ in 0..MAX_RACES {
                match claim(client, &key, &value, lease).await? {
                    Claim::Written(rev) => {
                        self.took_ip(key, mine, &value, rev);
                        return Ok(ip);
                    }
                    Claim::Held(kv) => {
                        let holder: IpamLease = parse(&kv)?;
                        return Err(ClusterError::AddressTaken {
                            network: network.to_string(),
                            ip,
                            host: holder.host,
                            endpoint: holder.endpoint,
                        });
                    }
                    Claim::Vanished => {}
                }
            }
            return Err(ClusterError::Contention("claiming an address"));
        }
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let leases = client.get(self.keys.ipam_of(network), Some(opts)).await?;
        let mut taken: BTreeSet<Ipv4Addr> = leases
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key()) {
                Some(Key::Ipam(_, ip)) => Some(ip),
                _ => None,
            })
            .collect();
        for _ in 0..MAX_RACES {
            let ip = lowest_free_ip(subnet, gateway, &taken).ok_or_else(|| {
                ClusterError::SubnetFull {
                    network: network.to_string(),
                    subnet,
                }
            })?;
            let key = self.keys.key(&Key::Ipam(network.to_string(), ip));
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let resp = client.txn(txn).await?;
            if resp.succeeded() {
                self.took_ip(key, mine, &value, revision(&resp));
                return Ok(ip);
            }
            taken.insert(ip);
        }
        Err(ClusterError::Contention("allocating an address"))
    }

    fn took_ip(&mut self, key: String, lease: IpamLease, value: &[u8], rev: i64) {
        let _ = self.mirror.put(&self.keys, key.as_bytes(), value, rev);
        self.owned.withdrawn.remove(&key);
        self.owned.ips.insert(key, lease);
    }

    pub(super) async fn release_ip(
        &mut self,
        client: &mut Client,
        network: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ClusterError> {
        validate_name("network", network)?;
        let key = self.keys.key(&Key::Ipam(network.to_string(), ip));
        // Before any await: a timeout may cancel the rest.
        self.owned.withdraw(&key);
        let what = format!("address {ip} on network {network}");
        let done = self
            .delete_own::<IpamLease>(client, &key, what, |l| l.host.clone())
            .await;
        self.settle_withdrawal(&key, &done);
        done
    }

    pub(super) async fn put_endpoint(
        &mut self,
        client: &mut Client,
        lease: i64,
        ep: EndpointRecord,
    ) -> Result<(), ClusterError> {
        ep.validate()?;
        let host = self.config.host.clone();
        if ep.host != host {
            return Err(ClusterError::Invalid {
                what: "endpoint host",
                why: format!("{} is not this host ({host})", ep.host),
            });
        }
        let key = self
            .keys
            .key(&Key::Endpoint(ep.network.clone(), ep.name.clone()));
        // Written again: no longer to be deleted, whatever etcd says.
        self.owned.withdrawn.remove(&key);
        let value = to_json(&ep);
        for _ in 0..MAX_RACES {
            let rev = match claim(client, &key, &value, lease).await? {
                Claim::Written(rev) => rev,
                Claim::Vanished => continue,
                Claim::Held(kv) => {
                    let other: EndpointRecord = parse(&kv)?;
                    if other.host != host {
                        return Err(ClusterError::NotOwner {
                            what: format!("endpoint {} on network {}", ep.name, ep.network),
                            owner: other.host,
                            host,
                        });
                    }
                    // Ours with other contents: update unless it changed.
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::put(
                            key.as_str(),
                            value.clone(),
                            Some(PutOptions::new().with_lease(lease)),
                        )]);
                    let resp = client.txn(txn).await?;
                    if !resp.succeeded() {
                        continue;
                    }
                    revision(&resp)
                }
            };
            let _ = self.mirror.put(&self.keys, key.as_bytes(), &value, rev);
            self.owned.endpoints.insert(key, ep);
            return Ok(());
        }
        Err(ClusterError::Contention("writing an endpoint"))
    }

    pub(super) async fn remove_endpoint(
        &mut self,
        client: &mut Client,
        network: &str,
        name: &str,
    ) -> Result<(), ClusterError> {
        validate_name("network", network)?;
        validate_name("endpoint", name)?;
        let key = self
            .keys
            .key(&Key::Endpoint(network.to_string(), name.to_string()));
        // Before any await: a timeout may cancel the rest.
        self.owned.withdraw(&key);
        let what = format!("endpoint {name} on network {network}");
        let done = self
            .delete_own::<EndpointRecord>(client, &key, what, |e| e.host.clone())
            .await;
        self.settle_withdrawal(&key, &done);
        done
    }

    /// Deletes `key` if it is absent (no-op) or held by this host.
    async fn delete_own<T: serde::de::DeserializeOwned>(
        &mut self,
        client: &mut Client,
        key: &str,
        what: String,
        owner: impl Fn(&T) -> String,
    ) -> Result<(), ClusterError> {
        for _ in 0..MAX_RACES {
            let existing = client.get(key, None).await?;
            let Some(kv) = existing.kvs().first() else {
                return Ok(());
            };
            let holder = owner(&parse::<T>(kv)?);
            if holder != self.config.host {
                return Err(ClusterError::NotOwner {
                    what,
                    owner: holder,
                    host: self.config.host.clone(),
                });
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key, None)]);
            let resp = client.txn(txn).await?;
            if resp.succeeded() {
                self.mirror
                    .delete(&self.keys, key.as_bytes(), revision(&resp));
                return Ok(());
            }
        }
        Err(ClusterError::Contention("deleting a record"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_etcd_are_retried() {
        let t = std::time::Duration::from_secs(1);
        assert!(retry_later(&ClusterError::Timeout(t)));
        assert!(retry_later(&ClusterError::Disconnected("gone".into())));
        assert!(retry_later(&ClusterError::Contention("deleting a record")));
        assert!(!retry_later(&ClusterError::NotOwner {
            what: "endpoint db on network front".into(),
            owner: "b".into(),
            host: "a".into(),
        }));
        assert!(!retry_later(&ClusterError::CorruptRecord {
            key: "/sy/endpoints/front/db".into(),
            why: "not JSON".into(),
        }));
    }
}
