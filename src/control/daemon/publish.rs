//! Publications of endpoints (stored only for now): finding the endpoint a
//! user names, adding and removing publications, and refusing host ports that
//! another endpoint already publishes.

use super::Daemon;
use crate::control::api::PublishSpec;
use crate::control::error::DaemonError;
use crate::control::model::{Endpoint, Publication};

impl Daemon {
    /// Index of the endpoint named by id, `NETWORK/NAME`, or a name unique
    /// across networks.
    pub(super) fn find_endpoint(&self, reference: &str) -> Result<usize, DaemonError> {
        let eps = &self.state.endpoints;
        if let Some(i) = eps.iter().position(|e| e.id == reference) {
            return Ok(i);
        }
        if let Some((net, name)) = reference.split_once('/') {
            return eps
                .iter()
                .position(|e| e.network == net && e.name == name)
                .ok_or_else(|| DaemonError::NoSuchEndpoint(reference.into()));
        }
        let hits: Vec<usize> = (0..eps.len())
            .filter(|i| eps[*i].name == reference)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err(DaemonError::NoSuchEndpoint(reference.into())),
            many => Err(DaemonError::AmbiguousEndpoint {
                name: reference.into(),
                networks: many
                    .iter()
                    .map(|i| eps[*i].network.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Rejects a publication whose host ports overlap another's.
    pub(super) fn check_publication(&self, p: &Publication) -> Result<(), DaemonError> {
        for e in &self.state.endpoints {
            for q in &e.publications {
                let same_ip = p.host_ip.is_none() || q.host_ip.is_none() || p.host_ip == q.host_ip;
                let overlap = p.host_ports.start <= q.host_ports.end
                    && q.host_ports.start <= p.host_ports.end;
                if p.proto == q.proto && same_ip && overlap {
                    return Err(DaemonError::PortTaken {
                        spec: p.to_string(),
                        endpoint: format!("{}/{}", e.network, e.name),
                    });
                }
            }
        }
        Ok(())
    }

    /// Adds a publication to an endpoint (stored only for now).
    pub fn publish(&mut self, req: PublishSpec) -> Result<Endpoint, DaemonError> {
        let i = self.find_endpoint(&req.endpoint)?;
        let ep = &self.state.endpoints[i];
        if ep.publications.contains(&req.spec) {
            return Ok(ep.clone());
        }
        self.check_publication(&req.spec)?;
        let mut next = self.state.clone();
        next.endpoints[i].publications.push(req.spec);
        let ep = next.endpoints[i].clone();
        self.commit(next)?;
        Ok(ep)
    }

    /// Removes a publication from an endpoint.
    pub fn unpublish(&mut self, req: PublishSpec) -> Result<Endpoint, DaemonError> {
        let i = self.find_endpoint(&req.endpoint)?;
        let ep = &self.state.endpoints[i];
        if !ep.publications.contains(&req.spec) {
            return Err(DaemonError::NoSuchPublication {
                endpoint: format!("{}/{}", ep.network, ep.name),
                spec: req.spec.to_string(),
            });
        }
        let mut next = self.state.clone();
        next.endpoints[i].publications.retain(|p| *p != req.spec);
        let ep = next.endpoints[i].clone();
        self.commit(next)?;
        Ok(ep)
    }
}
