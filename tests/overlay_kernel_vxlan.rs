//! Interoperability with Linux's own VXLAN: a test namespace ("kernel host")
//! holds a kernel `vxlan` device whose FDB points at Switchyard's VTEP,
//! reached over a veth pair whose other end is in the root namespace, where
//! the in-process `Dataplane` binds its VXLAN socket to the veth address. A
//! sandbox namespace with a TAP on the Switchyard side pings the address on
//! the kernel vxlan device, first in static-peer mode (learning), then with
//! the kernel endpoint given as a control-plane remote (ARP suppression).
//! Needs root (skipped otherwise, failed under CI).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use common::{require_root_or_skip, unique_octet, unique_suffix, TestNetns};
use switchyard::clock::SystemClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use switchyard::ns::attach::attach_detailed;
use switchyard::ns::{AttachRequest, SandboxTarget};
use switchyard::pipeline::drop::DropReason;
use switchyard::tables::overlay::{OverlaySpec, RemoteEndpoint, VxlanConfig};
use switchyard::tables::topology::PortSecurity;
use switchyard::wire::MacAddr;

const HELPER: &str = env!("CARGO_BIN_EXE_switchyard");
const VNI: u32 = 7007;
const VX_MAC: MacAddr = MacAddr([0x02, 0x4b, 0x56, 0x58, 0, 0x14]);

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sandbox_pings_through_a_kernel_vxlan_device() {
    if !require_root_or_skip() {
        return;
    }
    let x = unique_octet();
    let kernel = TestNetns::new("kvx");
    let sandbox = TestNetns::new("ksb");
    let (switch_ip, kernel_ip) = (Ipv4Addr::new(172, 31, x, 1), Ipv4Addr::new(172, 31, x, 2));
    let overlay_ip = |h: u8| format!("10.124.{x}.{h}");

    // Underlay: a veth pair created in the kernel host, one end moved to the
    // root namespace (it disappears with the namespace).
    let (k_end, r_end) = (
        format!("syvk{}", unique_suffix()),
        format!("syvr{}", unique_suffix()),
    );
    ok(
        kernel.exec(&[
            "ip", "link", "add", &k_end, "type", "veth", "peer", "name", &r_end, "netns", "1",
        ]),
        "veth",
    );
    ok(
        common::run(
            "ip",
            &["addr", "add", &format!("{switch_ip}/24"), "dev", &r_end],
        ),
        "addr",
    );
    ok(common::run("ip", &["link", "set", &r_end, "up"]), "up");
    for cmd in [
        vec![
            "ip",
            "addr",
            "add",
            &format!("{kernel_ip}/24"),
            "dev",
            &k_end,
        ],
        vec!["ip", "link", "set", &k_end, "up"],
        vec!["ip", "link", "set", "lo", "up"],
    ] {
        ok(kernel.exec(&cmd), "kernel host underlay");
    }
    // The kernel VTEP: BUM traffic and unknown MACs go to Switchyard.
    let vni = VNI.to_string();
    let kip = kernel_ip.to_string();
    let sip = switch_ip.to_string();
    for cmd in [
        vec![
            "ip",
            "link",
            "add",
            "vx0",
            "address",
            "02:4b:56:58:00:14",
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &kip,
            "dstport",
            "4789",
        ],
        vec![
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            &sip,
        ],
        vec![
            "ip",
            "addr",
            "add",
            &format!("{}/24", overlay_ip(20)),
            "dev",
            "vx0",
        ],
        vec!["ip", "link", "set", "vx0", "up"],
    ] {
        ok(kernel.exec(&cmd), "kernel vxlan");
    }

    // The Switchyard side: a sandbox TAP on an overlay network.
    let att = attach_detailed(
        Path::new(HELPER),
        &AttachRequest {
            target: SandboxTarget::Netns {
                path: sandbox.path(),
                userns: None,
            },
            ifname: "eth0".into(),
            mac: MacAddr([0x02, 0x5a, 0x0e, x, 0, 2]),
            ipv4: Some((Ipv4Addr::new(10, 124, x, 2), 24)),
            ipv6: None,
            mtu: 1450,
            gateway4: None,
            gateway6: None,
            default_route: false,
            queues: 1,
        },
    )
    .expect("attach sandbox TAP");
    let config = DataplaneConfig {
        workers: 2,
        ..DataplaneConfig::default()
    };
    let mut dp = Dataplane::start(config, Arc::new(SystemClock::new())).expect("data plane");
    let net = dp
        .add_network(NetworkSpec {
            name: "ovl".into(),
            gateway: None,
            isolate: false,
            internal: false,
            mac_cap: None,
            subnet4: Some((Ipv4Addr::new(10, 124, x, 0), 24)),
            subnet6: None,
            host_loopback: false,
        })
        .expect("network");
    for p in att.into_ports(1450).expect("wrap fds") {
        let spec = PortSpec {
            network: net,
            security: PortSecurity::default(),
            worker: None,
        };
        dp.add_port(spec, Box::new(p)).expect("add TAP");
    }
    dp.start_vxlan(VxlanConfig {
        bind: SocketAddr::new(switch_ip.into(), 4789),
    })
    .expect("VXLAN on the veth address");
    let kernel_vtep = SocketAddr::new(kernel_ip.into(), 4789);
    dp.set_overlay(
        net,
        OverlaySpec {
            vni: VNI,
            vteps: vec![kernel_vtep],
            remotes: vec![],
            learn: true,
            mtu: switchyard::dataplane::OVERLAY_MTU,
        },
    )
    .expect("static overlay");

    ok(
        sandbox.exec(&["ping", "-c", "3", "-W", "2", &overlay_ip(20)]),
        "ping across kernel vxlan (static peers)",
    );
    // A full-size packet: 1450-byte inner IP (1422 + 28) still fits.
    ok(
        sandbox.exec(&[
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1422",
            &overlay_ip(20),
        ]),
        "full-MTU ping across kernel vxlan",
    );

    // Control-plane mode: the kernel endpoint is a known remote; the
    // sandbox's ARP for it is answered by the switch.
    dp.set_overlay(
        net,
        OverlaySpec {
            vni: VNI,
            vteps: vec![kernel_vtep],
            remotes: vec![RemoteEndpoint {
                mac: VX_MAC,
                ipv4: Some(Ipv4Addr::new(10, 124, x, 20)),
                ipv6: None,
                vtep: kernel_vtep,
            }],
            learn: false,
            mtu: switchyard::dataplane::OVERLAY_MTU,
        },
    )
    .expect("control-plane overlay");
    ok(
        sandbox.exec(&["ip", "neigh", "flush", "dev", "eth0"]),
        "flush",
    );
    ok(
        sandbox.exec(&["ping", "-c", "3", "-W", "2", &overlay_ip(20)]),
        "ping across kernel vxlan (control-plane remotes)",
    );
    let neigh = ok(
        sandbox.exec(&["ip", "neigh", "show", "dev", "eth0"]),
        "neigh",
    );
    assert!(neigh.contains("02:4b:56:58:00:14"), "{neigh}");
    let stats = dp.stats();
    dp.shutdown();
    let tunnel = stats
        .ports
        .iter()
        .find(|p| p.name.contains(&kernel_vtep.to_string()))
        .expect("tunnel port in stats");
    assert!(tunnel.tx_packets >= 8, "{stats:?}");
    assert_eq!(stats.drops_for(DropReason::VxlanSpoofed), 0, "{stats:?}");
    assert_eq!(
        stats.drops_for(DropReason::VxlanUnknownVtep),
        0,
        "{stats:?}"
    );
}
