//! System tests of the CNI plugin: the `switchyard` binary run as a
//! container runtime runs a CNI plugin (no arguments, `CNI_*` in the
//! environment, the network configuration on stdin, the result or error
//! object on stdout), against a real daemon and real namespaces.
//!
//! As root: ADD attaches two sandboxes with the interface names asked for;
//! the result's MAC and addresses are the interface's; they ping each other,
//! the gateway's DNS answers the pod name, and a port mapping from
//! `runtimeConfig` is served; CHECK passes against the ADD's result and
//! fails against a changed one; GC removes what the runtime no longer
//! lists; DEL removes the interface, frees the host port and may be
//! repeated; with the daemon gone, STATUS says "not available" and DEL "try
//! again later". Rootless: a daemon and plugin run as the unprivileged user
//! attach a sandbox given as `/proc/PID/ns/net` (a namespace owned by the
//! user's own user namespace, found by the daemon, not named).
//!
//! Needs root to set up; with CI=true a machine that cannot run it fails it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::netns::{enter_netns, unique_octet, TestNetns};
use common::sysenv::{ok, spawn_retry, Env, USER};
use serde_json::{json, Value};

/// Runs the plugin as a runtime would; returns whether it succeeded and
/// what it printed (parsed; Null when nothing).
fn cni(env: &Env, command: &str, conf: &Value, vars: &[(&str, &str)]) -> (bool, Value) {
    let out = cni_raw(env, command, conf.to_string().as_bytes(), vars);
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command} printed {text:?}: {e}"))
    };
    (out.status.success(), parsed)
}

/// Runs the plugin expecting it to fail with error `code`.
fn refused(env: &Env, command: &str, conf: &Value, vars: &[(&str, &str)], code: u64) {
    let (okay, out) = cni(env, command, conf, vars);
    assert!(!okay, "{command} succeeded: {out}");
    assert_eq!(out["code"], code, "{out}");
}

fn cni_raw(env: &Env, command: &str, stdin: &[u8], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(&env.bin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", env.dir.display().to_string())
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = env.ids {
        c.uid(uid).gid(gid);
    }
    let mut child = spawn_retry(&mut c).expect("run the plugin");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write the configuration");
    drop(input);
    // Bounded: the plugin's API calls time out after 60 s.
    child.wait_with_output().expect("plugin output")
}

fn vars<'a>(id: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
    ]
}

fn link_mac(ns: &TestNetns, ifname: &str) -> Option<String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn cni_add_check_gc_del_against_a_real_daemon() {
    let Some(mut env) = Env::with_tools("cni", None, &["ping", "dig"]) else {
        return;
    };
    env.start_daemon();
    let k = unique_octet();
    let net = format!("cni{k}");
    let port = free_port();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": net,
        "type": "switchyard",
        "socket": env.socket,
        "subnet": format!("10.205.{k}.0/24"),
        "capabilities": {"portMappings": true, "aliases": true},
        "runtimeConfig": {
            "portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp", "hostIP": "127.0.0.1"}],
            "aliases": {net.clone(): ["www"]},
        },
    });
    let (a, b) = (TestNetns::new("cnia"), TestNetns::new("cnib"));
    let (pa, pb) = (
        a.path().display().to_string(),
        b.path().display().to_string(),
    );
    let mut va = vars("0123456789abcdef0123", &pa, "eth0");
    va.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=t;K8S_POD_NAME=web",
    ));

    // ADD: the network is created on first use; the result is the
    // interface's truth.
    let (okay, res_a) = cni(&env, "ADD", &conf, &va);
    assert!(okay, "ADD a: {res_a}");
    assert_eq!(res_a["cniVersion"], "1.0.0");
    assert_eq!(res_a["interfaces"][0]["name"], "eth0");
    assert_eq!(res_a["interfaces"][0]["sandbox"], pa.as_str());
    assert_eq!(
        res_a["interfaces"][0]["mac"].as_str(),
        link_mac(&a, "eth0").as_deref()
    );
    let addr_a = res_a["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    let ip_a = addr_a.split('/').next().expect("ip").to_string();
    assert!(addr_a.ends_with("/24"), "{addr_a}");
    assert!(
        res_a["ips"][0].get("version").is_none(),
        "1.0.0 has no version"
    );
    let gw = format!("10.205.{k}.1");
    assert_eq!(res_a["ips"][0]["gateway"], gw.as_str());
    assert_eq!(res_a["routes"][0], json!({"dst": "0.0.0.0/0", "gw": gw}));
    assert_eq!(res_a["dns"]["nameservers"][0], gw.as_str());
    let ps = env.sy(&["ps", "--json"]);
    ok(&ps, "ps --json");
    let ps: Value = serde_json::from_slice(&ps.stdout).expect("ps json");
    let web = ps["local"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == "web"))
        .expect("web in ps --json");
    assert_eq!(web["container_id"], "0123456789abcdef0123");
    assert_eq!(web["ifname"], "eth0");
    assert_eq!(
        web["publications"][0],
        format!("127.0.0.1:{port}:8080/tcp").as_str()
    );
    // A retried ADD answers the same, attaching nothing more.
    let (okay, again) = cni(&env, "ADD", &conf, &va);
    assert!(okay, "ADD again: {again}");
    assert_eq!(again, res_a);
    let shown = a.exec(&["ip", "-br", "addr", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&addr_a));

    // A second sandbox, another interface name, an older spec version.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.4.0");
    old["runtimeConfig"] = json!({});
    let vb = vars("fedcba9876543210", &pb, "net1");
    let (okay, res_b) = cni(&env, "ADD", &old, &vb);
    assert!(okay, "ADD b: {res_b}");
    assert_eq!(res_b["ips"][0]["version"], "4");
    assert_eq!(res_b["interfaces"][0]["name"], "net1");
    assert!(link_mac(&b, "net1").is_some());

    // Traffic: ping, the pod name and its alias from the gateway's DNS, and
    // the port mapping from the host's loopback.
    ok(
        &b.exec(&["ping", "-c", "2", "-W", "2", &ip_a]),
        "ping a from b",
    );
    for name in ["web", "www"] {
        let dig = b.exec(&[
            "dig",
            "+short",
            "+time=2",
            "+tries=3",
            &format!("@{gw}"),
            name,
        ]);
        ok(&dig, "dig");
        assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), ip_a, "{name}");
    }
    let server = std::thread::spawn({
        let pa = pa.clone();
        move || {
            let listener = enter_netns(pa, || TcpListener::bind("0.0.0.0:8080").expect("bind"));
            let (mut c, _) = listener.accept().expect("accept");
            c.write_all(b"hello from the sandbox\n").expect("write");
        }
    });
    let mut reply = String::new();
    for attempt in 0.. {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let _ = s.read_to_string(&mut reply);
                if !reply.is_empty() || attempt > 50 {
                    break;
                }
            }
            Err(e) => assert!(attempt < 50, "connect to the published port: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(reply, "hello from the sandbox\n");
    server.join().expect("server");

    // The same pod name again (as in another Kubernetes namespace): the
    // endpoint is named by its container id, and the pod name answers for
    // both sandboxes.
    let c_ns = TestNetns::new("cnic");
    let pc = c_ns.path().display().to_string();
    let mut vc = vars("77777777777777777777", &pc, "eth0");
    vc.push(("CNI_ARGS", "K8S_POD_NAMESPACE=u;K8S_POD_NAME=web"));
    let (okay, res_c) = cni(&env, "ADD", &old, &vc);
    assert!(okay, "ADD c: {res_c}");
    let ip_c = res_c["ips"][0]["address"].as_str().expect("address");
    let ip_c = ip_c.split('/').next().expect("ip").to_string();
    assert!(env.ps().contains("777777777777"), "{}", env.ps());
    let dig = b.exec(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=3",
        &format!("@{gw}"),
        "web",
    ]);
    let mut answers: Vec<String> = String::from_utf8_lossy(&dig.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    answers.sort();
    let mut both = vec![ip_a.clone(), ip_c];
    both.sort();
    assert_eq!(answers, both);
    let (okay, out) = cni(&env, "DEL", &old, &vc);
    assert!(okay, "DEL c: {out}");

    // CHECK against the ADD's result, then against a changed one.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = res_a.clone();
    let (okay, out) = cni(&env, "CHECK", &with_prev, &va);
    assert!(okay, "CHECK: {out}");
    assert_eq!(out, Value::Null, "CHECK prints nothing");
    with_prev["prevResult"]["interfaces"][0]["mac"] = json!("02:00:00:00:00:01");
    refused(&env, "CHECK", &with_prev, &va, 101);
    refused(
        &env,
        "CHECK",
        &with_prev,
        &vars("nosuchcontainer", &pa, "eth0"),
        3,
    );

    // Bad input: an interface name Linux refuses, a version we do not speak,
    // a missing variable, unknown CNI_ARGS, a MAC request.
    refused(&env, "ADD", &conf, &vars("badif", &pb, "bad/name"), 7);
    let mut future = conf.clone();
    future["cniVersion"] = json!("9.9.9");
    refused(&env, "ADD", &future, &va, 1);
    refused(
        &env,
        "ADD",
        &conf,
        &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth9")],
        4,
    );
    let mut args = vars("argsc", &pb, "eth7");
    args.push(("CNI_ARGS", "COLOR=blue"));
    refused(&env, "ADD", &old, &args, 4);
    let mut mac = old.clone();
    mac["runtimeConfig"] = json!({"mac": "02:00:00:00:00:02"});
    refused(&env, "ADD", &mac, &vars("macc", &pb, "eth8"), 2);
    let garbage = cni_raw(&env, "ADD", b"{not json", &va);
    assert!(!garbage.status.success());
    let err: Value = serde_json::from_slice(&garbage.stdout).expect("error object");
    assert_eq!(err["code"], 6, "{err}");

    // VERSION, STATUS.
    let (okay, out) = cni(&env, "VERSION", &json!({"cniVersion": "0.4.0"}), &[]);
    assert!(okay);
    assert_eq!(out["cniVersion"], "0.4.0");
    assert!(out["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.contains(&json!("1.1.0"))));
    let mut v11 = conf.clone();
    v11["cniVersion"] = json!("1.1.0");
    let (okay, out) = cni(&env, "STATUS", &v11, &[]);
    assert!(okay, "STATUS: {out}");

    // Another configuration naming the same switchyard network attaches c:
    // its attachments are its own.
    let other = json!({
        "cniVersion": "1.1.0", "name": "othercfg", "type": "switchyard",
        "network": net, "socket": env.socket,
    });
    let vc = vars("88888888888888888888", &pc, "eth0");
    let (okay, out) = cni(&env, "ADD", &other, &vc);
    assert!(okay, "ADD c by another configuration: {out}");
    let (okay, out) = cni(&env, "DEL", &conf, &vc);
    assert!(okay, "DEL by the wrong configuration: {out}");
    assert!(
        link_mac(&c_ns, "eth0").is_some(),
        "not this configuration's to delete"
    );

    // GC: b is no longer valid, a is; c belongs to the other configuration.
    v11["cni.dev/valid-attachments"] =
        json!([{"containerID": "0123456789abcdef0123", "ifname": "eth0"}]);
    let (okay, out) = cni(&env, "GC", &v11, &[]);
    assert!(okay, "GC: {out}");
    assert!(link_mac(&b, "net1").is_none(), "GC removes b's interface");
    assert!(link_mac(&a, "eth0").is_some(), "GC keeps a's interface");
    assert!(
        link_mac(&c_ns, "eth0").is_some(),
        "GC keeps the other configuration's"
    );
    let (okay, out) = cni(&env, "DEL", &other, &vc);
    assert!(okay, "DEL c: {out}");
    assert!(link_mac(&c_ns, "eth0").is_none());

    // DEL: interface gone, host port free at once; again: still success.
    let (okay, out) = cni(&env, "DEL", &conf, &va);
    assert!(okay, "DEL: {out}");
    assert!(link_mac(&a, "eth0").is_none());
    TcpListener::bind(("127.0.0.1", port)).expect("the host port is free after DEL");
    let (okay, out) = cni(&env, "DEL", &conf, &va);
    assert!(okay, "second DEL: {out}");
    assert!(!env.ps().contains("web"), "{}", env.ps());

    // Daemon gone: STATUS "not available", DEL "try again later".
    env.stop_daemon();
    refused(&env, "STATUS", &v11, &[], 50);
    refused(&env, "DEL", &conf, &va, 11);
}

#[test]
fn cni_rootless_plugin_attaches_a_user_namespace_sandbox_by_proc_path() {
    let Some(mut env) = Env::with_tools("cnir", Some(USER), &["ping", "nsenter", "unshare"]) else {
        return;
    };
    env.start_daemon();
    let (uid, gid) = env.ids.expect("user");
    let mut sandbox = Command::new("unshare");
    sandbox
        .args(["--user", "--map-root-user", "--net", "sleep", "120"])
        .uid(uid)
        .gid(gid)
        .process_group(0)
        .stdout(Stdio::null());
    let child = spawn_retry(&mut sandbox).expect("sandbox");
    let pid = child.id();
    env.children.push(child);
    // Wait until the sandbox has its own network namespace.
    let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    for _ in 0..100 {
        if std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n != ours) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let k = unique_octet();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": format!("cnir{k}"),
        "type": "switchyard",
        "socket": env.socket,
        "subnet": format!("10.206.{k}.0/24"),
    });
    let netns = format!("/proc/{pid}/ns/net");
    let v = vars("rootless0001", &netns, "eth0");
    let (okay, res) = cni(&env, "ADD", &conf, &v);
    assert!(okay, "rootless ADD: {res}");
    assert_eq!(res["interfaces"][0]["mtu"], 1500, "1.1.0 reports the MTU");
    let gw = format!("10.206.{k}.1");
    let inside = |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.args(["--preserve-credentials", "-U", "-n", "-t", &pid.to_string()])
            .args(args)
            .uid(uid)
            .gid(gid);
        c.output().expect("nsenter")
    };
    ok(
        &inside(&["ping", "-c", "2", "-W", "2", &gw]),
        "ping the gateway",
    );
    let (okay, out) = cni(&env, "DEL", &conf, &v);
    assert!(okay, "rootless DEL: {out}");
    let links = inside(&["ip", "-br", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("eth0"),
        "{}",
        String::from_utf8_lossy(&links.stdout)
    );
}
