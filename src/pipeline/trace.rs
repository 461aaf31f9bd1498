//! `switchyard trace`: runs one described frame through a worker's real
//! pipeline and reports each stage's decision, without side effects (the MAC
//! table is a copy, counters are scratch, nothing is sent).

use serde::{Deserialize, Serialize};

use super::frame::{Action, Frame};
use crate::ports::PortId;
use crate::tables::topology::Topology;

/// One stage's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// Stage name.
    pub stage: String,
    /// The frame's action after the stage.
    pub action: String,
}

/// The whole explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// Ingress port.
    pub in_port: PortId,
    /// Per stage, in order.
    pub steps: Vec<TraceStep>,
    /// What the worker would do with the frame.
    pub result: String,
}

fn port_name(topo: &Topology, p: PortId) -> String {
    topo.port(p)
        .map_or_else(|| format!("{p} (gone)"), |i| format!("{p} ({})", i.name))
}

/// Describes an action after a stage.
pub fn describe(action: Action, topo: &Topology) -> String {
    match action {
        Action::Continue => "continue".into(),
        Action::Drop(r) => format!("drop: {}", r.name()),
        Action::Output(p) => format!("output to {}", port_name(topo, p)),
        Action::Flood => "flood".into(),
        Action::Consumed => "consumed by the gateway".into(),
        Action::Punt => "to the gateway stack".into(),
    }
}

/// What dispatch would do with the frame once every stage ran.
pub fn outcome(f: &Frame, topo: &Topology) -> String {
    match f.meta.action {
        Action::Flood => {
            let targets: Vec<String> = topo
                .network(f.meta.network)
                .map(|n| {
                    n.ports
                        .iter()
                        .filter(|p| **p != f.meta.in_port)
                        .map(|p| port_name(topo, *p))
                        .collect()
                })
                .unwrap_or_default();
            if targets.is_empty() {
                "drop: no-route (nothing to flood to)".into()
            } else {
                format!("flood to {}", targets.join(", "))
            }
        }
        Action::Continue => "drop: no-route (no stage decided)".into(),
        a => describe(a, topo),
    }
}
