//! What a container runtime hands the CNI plugin: `CNI_ARGS` (first line of
//! the input) and the network configuration on stdin (the rest). Any input
//! is decoded, checked and answered with a result or a CNI error object,
//! without a panic; nothing here reaches a daemon (ADD without its
//! variables stops before connecting).
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use switchyard::cli::cni::{compare, parse_args, run, CniEnv, NetConf};
use switchyard::control::model::Endpoint;

fn endpoint() -> Option<Endpoint> {
    serde_json::from_value(json!({
        "id": "0123456789ab", "name": "web", "network": "n", "aliases": [],
        "sandbox": {"netns": {"path": "/run/netns/x"}},
        "netns_id": {"dev": 1, "inode": 2}, "ifname": "eth0",
        "mac": "02:00:00:00:00:09", "ipv4": "10.9.0.2", "ipv6": "fd00:9::2",
        "default_route": true, "publications": [], "container_id": "c1",
    }))
    .ok()
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (args, conf) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    if let Ok(a) = std::str::from_utf8(args) {
        let _ = parse_args(a);
    }
    if let Ok(c) = serde_json::from_slice::<NetConf>(conf) {
        for m in &c.runtime_config.port_mappings {
            let _ = m.publication();
        }
        if let (Some(prev), Some(ep)) = (&c.prev_result, endpoint()) {
            let _ = compare(prev, &ep);
        }
    }
    for command in ["VERSION", "ADD", "FROB"] {
        let env = CniEnv {
            command: command.into(),
            ..Default::default()
        };
        let (version, out) = run(&env, conf);
        if let Err(e) = out {
            assert!(e.code > 0);
            let _ = e.to_json(&version).to_string();
        }
    }
});
