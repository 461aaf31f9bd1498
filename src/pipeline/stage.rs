//! The stage interface and the ordered list of stages a worker runs.

use crate::clock::Millis;
use crate::stats::WorkerCounters;
use crate::tables::mac::{LearnMsg, MacTable};
use crate::tables::topology::Topology;

use super::frame::Frame;

/// What a stage may read and update while it handles a batch. Everything here
/// belongs to the worker running the batch; nothing is shared mutably.
pub struct StageContext<'a> {
    /// Time of the batch.
    pub now: Millis,
    /// The topology snapshot for the batch.
    pub topo: &'a Topology,
    /// This worker's MAC table.
    pub mac: &'a mut MacTable,
    /// Learn messages to announce to the other workers after the batch.
    pub learned: &'a mut Vec<LearnMsg>,
    /// This worker's counters.
    pub counters: &'a WorkerCounters,
    /// A trace: stages decide as usual but cause nothing outside the
    /// pipeline (no query is forwarded upstream).
    pub dry_run: bool,
}

/// One step of the pipeline. A stage looks only at frames whose action is
/// still `Continue`, and may decide it.
pub trait Stage: Send {
    /// Short name for traces.
    fn name(&self) -> &'static str;

    /// Handles a batch.
    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]);
}

/// The ordered stages.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// The standard switch: VXLAN decapsulation, parse, ingress checks,
    /// learning, gateway, overlay (remote endpoints), forwarding.
    pub fn standard() -> Pipeline {
        Pipeline {
            stages: vec![
                Box::new(super::decap::Decap),
                Box::new(super::parse::Parse),
                Box::new(super::ingress::Ingress),
                Box::new(super::learn::Learn),
                Box::new(super::gateway::Gateway),
                Box::new(super::overlay::Overlay),
                Box::new(super::forward::Forward),
            ],
        }
    }

    /// The standard switch with the gateway's services: DNS answering from
    /// `dns`, and NAT hand-off to the gateway stack.
    pub fn with_gateway_services(dns: std::sync::Arc<crate::dns::DnsService>) -> Pipeline {
        let mut p = Self::standard();
        p.insert_before("gateway", Box::new(super::dns::Dns::new(dns)));
        p.insert_before("gateway", Box::new(super::nat::Nat));
        p
    }

    /// A pipeline with exactly these stages.
    pub fn from_stages(stages: Vec<Box<dyn Stage>>) -> Pipeline {
        Pipeline { stages }
    }

    /// Inserts `stage` before the stage named `before` (at the end if none).
    pub fn insert_before(&mut self, before: &str, stage: Box<dyn Stage>) {
        let at = self
            .stages
            .iter()
            .position(|s| s.name() == before)
            .unwrap_or(self.stages.len());
        self.stages.insert(at, stage);
    }

    /// Stage names in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Runs every stage over the batch.
    pub fn run(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for stage in &mut self.stages {
            stage.process(cx, frames);
        }
    }

    /// Runs the stages one by one on a batch, calling `observe` after each
    /// with the stage name and the frames (used by `switchyard trace`).
    pub fn run_traced(
        &mut self,
        cx: &mut StageContext<'_>,
        frames: &mut [Frame],
        mut observe: impl FnMut(&'static str, &[Frame]),
    ) {
        for stage in &mut self.stages {
            stage.process(cx, frames);
            observe(stage.name(), frames);
        }
    }
}

/// Runs `stage` once over `frames` with a fresh MAC table and counters at
/// time 0 (for stage tests); returns the counters.
#[cfg(test)]
pub(crate) fn run_alone(
    stage: &mut dyn Stage,
    topo: &Topology,
    frames: &mut [Frame],
) -> WorkerCounters {
    let mut mac = MacTable::new(Default::default(), 16);
    let counters = WorkerCounters::default();
    let mut learned = Vec::new();
    let mut cx = StageContext {
        now: 0,
        topo,
        mac: &mut mac,
        learned: &mut learned,
        counters: &counters,
        dry_run: false,
    };
    stage.process(&mut cx, frames);
    counters
}
