//! Which etcd member the store talks to: one at a time, the one that last
//! answered first and the others in turn when it does not, so any member
//! that answers keeps the host in the cluster. (etcd-client balances over
//! all the members it is given with tonic's balanced channel, which counts
//! a member it cannot connect to as ready and keeps sending it requests:
//! one member down failed every session.) Also turns etcd-client's errors
//! into the words a user can act on.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::engine::{bounded, Engine};

/// HTTP/2 ping interval: finds a dead connection that sent no FIN.
const PING_INTERVAL: Duration = Duration::from_secs(1);

impl Engine {
    /// Connects to the first member, from the one that answered last, that
    /// answers, and gets this host's lease from it. Fails with every
    /// member's reason when none answers.
    pub(super) async fn connect_member(&mut self) -> Result<(Client, i64), String> {
        let members = self.config.endpoints.clone();
        let mut failures = Vec::new();
        for k in 0..members.len() {
            let i = (self.member + k) % members.len();
            match self.try_member(&members[i]).await {
                Ok(found) => {
                    self.member = i;
                    return Ok(found);
                }
                Err(why) if members.len() == 1 => return Err(why),
                Err(why) => failures.push(format!("{}: {why}", members[i])),
            }
        }
        Err(failures.join("; "))
    }

    /// After a session on the current member ended: the next session starts
    /// with the next member (the current one is tried again last).
    pub(super) fn next_member(&mut self) {
        self.member = (self.member + 1) % self.config.endpoints.len().max(1);
    }

    async fn try_member(&mut self, endpoint: &str) -> Result<(Client, i64), String> {
        let t = self.config.op_timeout;
        let options = ConnectOptions::new()
            .with_connect_timeout(t)
            .with_keep_alive(PING_INTERVAL, t)
            .with_keep_alive_while_idle(true);
        let mut client = bounded(t, Client::connect([endpoint], Some(options))).await?;
        // The connection is made lazily: this is the first request.
        let lease = self.ensure_lease(&mut client).await?;
        Ok((client, lease))
    }
}

/// An etcd-client error as a user reads it: the gRPC message and the
/// innermost cause ("tcp connect error: Connection refused (os error 111)"),
/// not tonic's nested debug output.
pub(super) fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut innermost = None;
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        innermost = Some(c);
        cause = c.source();
    }
    let message = match status.message() {
        "" => status.code().description(),
        m => m,
    };
    match innermost {
        Some(c) if c.to_string() != message => format!("{message}: {c}"),
        _ => message.to_string(),
    }
}
