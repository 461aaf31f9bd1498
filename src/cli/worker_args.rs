//! Data-plane worker options shared by `daemon` and `up`: how many workers,
//! how long they busy-poll, which CPUs they are pinned to, how long their
//! MAC tables remember an address, and whether they coalesce UDP.

use clap::Args;

use super::CliError;
use crate::dataplane::DataplaneConfig;
use crate::tables::mac::DEFAULT_AGING_MS;

/// Worker options.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Data-plane worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Option<u16>,
    /// Most microseconds a worker keeps polling after its last work before
    /// it sleeps (0: sleep at once). Saves wake-ups under steady load; the
    /// budget adapts, halving while work comes later than this and doubling
    /// back while it comes sooner, so a trickle of traffic or an idle switch
    /// costs no spinning.
    #[arg(long, value_name = "US", default_value_t = crate::pipeline::worker::DEFAULT_BUSY_POLL.as_micros() as u64)]
    pub busy_poll_us: u64,
    /// Pin worker i to the i-th of these CPUs (a list such as 0-1 or 2,3,
    /// reused round robin when shorter than the workers); without a list,
    /// to the i-th CPU this process may run on.
    #[arg(long, value_name = "CPUS", num_args = 0..=1, default_missing_value = "auto")]
    pub cpu_affinity: Option<String>,
    /// Seconds a learned MAC address is remembered without traffic from it
    /// (as a Linux bridge's ageing_time); then unknown unicast to it floods
    /// again until it is heard.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_AGING_MS / 1000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_AGING_S))]
    pub mac_aging: u64,
    /// Send every UDP datagram to an endpoint as a frame of its own, instead
    /// of coalescing runs of one flow into one USO frame that the endpoint's
    /// kernel splits again (as a NIC with GRO would); a sandbox's UDP GSO
    /// burst is cut too, instead of crossing whole.
    #[arg(long)]
    pub no_udp_gro: bool,
    /// For testing what runs behind the switch: lose, duplicate or reorder
    /// a share of the frames on every port, as a bad link would, from a
    /// seeded generator (e.g. drop=2%,duplicate=0.5%,reorder=1%,seed=7).
    #[arg(long, value_name = "PLAN")]
    pub fault_inject: Option<crate::ports::fault::FaultPlan>,
}

/// Longest MAC aging accepted: a day (entries keep 32-bit millisecond times,
/// exact up to 49 days).
const MAX_AGING_S: u64 = 86_400;

impl WorkerArgs {
    /// Puts these options into `config`; a CPU list that cannot be used is
    /// an error naming the CPUs allowed.
    pub fn apply(&self, config: &mut DataplaneConfig) -> Result<(), CliError> {
        if let Some(n) = self.workers {
            config.workers = usize::from(n);
        }
        config.worker.busy_poll = std::time::Duration::from_micros(self.busy_poll_us);
        config.worker.mac.aging_ms = self.mac_aging * 1000;
        config.worker.udp_gro = !self.no_udp_gro;
        config.fault = self.fault_inject;
        if let Some(spec) = &self.cpu_affinity {
            let allowed = crate::sys::affinity::allowed_cpus()
                .map_err(|e| CliError::Invalid(format!("cannot read this process's CPUs: {e}")))?;
            config.cpu_affinity = Some(cpus_for(spec, &allowed)?);
        }
        Ok(())
    }
}

/// The CPUs `spec` names ("auto": all of `allowed`), each checked to be in
/// `allowed`.
fn cpus_for(spec: &str, allowed: &[usize]) -> Result<Vec<usize>, CliError> {
    if spec == "auto" {
        return Ok(allowed.to_vec());
    }
    let cpus = parse_cpu_list(spec).map_err(|e| {
        CliError::Invalid(format!(
            "bad --cpu-affinity {spec:?}: {e} (expected a list such as 0-3,6)"
        ))
    })?;
    if let Some(cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(CliError::Invalid(format!(
            "--cpu-affinity: CPU {cpu} is not one this process may run on ({})",
            format_cpu_list(allowed)
        )));
    }
    Ok(cpus)
}

/// Parses a Linux CPU list (`0-3,6`, as in `taskset -c` and `cpuset`):
/// ascending, without duplicates.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    /// More CPUs than Linux supports: a range this long is a typo.
    const MAX_CPU: usize = 8192;
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n < MAX_CPU)
                .ok_or_else(|| format!("{t:?} is not a CPU number"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(format!("range {part:?} runs backwards"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// `[0, 1, 2, 5]` as `0-2,5`.
fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpu_list("0-2,5"), Ok(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list(" 3 , 1,1 "), Ok(vec![1, 3]));
        for bad in ["", "a", "3-1", "1-", "-1", "0,,1", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        w: WorkerArgs,
    }

    fn applied(args: &[&str]) -> DataplaneConfig {
        use clap::Parser;
        let parsed =
            Wrap::try_parse_from(std::iter::once("t").chain(args.iter().copied())).expect("parses");
        let mut config = DataplaneConfig::default();
        parsed.w.apply(&mut config).expect("applies");
        config
    }

    #[test]
    fn options_reach_the_worker_config() {
        let d = applied(&[]);
        assert!(d.worker.udp_gro);
        assert_eq!(d.worker.mac.aging_ms, DEFAULT_AGING_MS);
        let c = applied(&["--no-udp-gro", "--mac-aging", "7", "--busy-poll-us", "0"]);
        assert!(!c.worker.udp_gro);
        assert_eq!(c.worker.mac.aging_ms, 7000);
        assert_eq!(c.worker.busy_poll, std::time::Duration::ZERO);
    }

    #[test]
    fn only_allowed_cpus_are_accepted() {
        let allowed = [0, 1];
        assert_eq!(cpus_for("auto", &allowed).unwrap(), [0, 1]);
        assert_eq!(cpus_for("1", &allowed).unwrap(), [1]);
        let err = cpus_for("0-2", &allowed).unwrap_err().to_string();
        assert!(err.contains("CPU 2") && err.contains("0-1"), "{err}");
        let err = cpus_for("x", &allowed).unwrap_err().to_string();
        assert!(err.contains("--cpu-affinity"), "{err}");
    }
}
