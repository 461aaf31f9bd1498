//! Starting and stopping captures of an endpoint's ports: one capture per
//! endpoint at a time; the copies come from the workers serving its ports.

use super::Daemon;
use crate::control::error::DaemonError;
use crate::pipeline::capture::{capture_queue, CaptureSource, DEFAULT_QUEUE_BYTES};
use crate::ports::PortId;

/// A running capture.
pub struct CaptureSession {
    /// The endpoint's id.
    pub endpoint: String,
    /// Its ports when the capture started.
    ports: Vec<PortId>,
    /// The frames.
    pub source: CaptureSource,
}

impl Daemon {
    /// Starts copying the frames of `endpoint`'s ports.
    pub fn start_capture(&mut self, endpoint: &str) -> Result<CaptureSession, DaemonError> {
        let id = self.state.endpoints[self.find_endpoint(endpoint)?]
            .id
            .clone();
        if self.capturing.contains(&id) {
            return Err(DaemonError::CaptureRunning(endpoint.into()));
        }
        let ports = self.endpoint_ports(&id).to_vec();
        let (sink, source) = capture_queue(DEFAULT_QUEUE_BYTES);
        for (i, port) in ports.iter().enumerate() {
            if let Err(e) = self.dataplane.capture(*port, Some(sink.clone())) {
                for started in &ports[..i] {
                    let _ = self.dataplane.capture(*started, None);
                }
                return Err(e.into());
            }
        }
        self.capturing.insert(id.clone());
        Ok(CaptureSession {
            endpoint: id,
            ports,
            source,
        })
    }

    /// Stops a capture; frames already queued stay readable from its source.
    pub fn stop_capture(&mut self, session: &CaptureSession) {
        // Only ports the endpoint still owns: one removed meanwhile took its
        // copy of the sink with it, and its id may now serve another
        // endpoint, maybe under a capture of its own.
        let owned = self.endpoint_ports(&session.endpoint).to_vec();
        for port in session.ports.iter().filter(|p| owned.contains(p)) {
            let _ = self.dataplane.capture(*port, None);
        }
        self.capturing.remove(&session.endpoint);
    }
}
