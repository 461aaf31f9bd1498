#!/usr/bin/env python3
"""Helpers for tools/bench/run.sh (stdlib only).

  report.py ping FILE                      -> rtt_med_ms / rtt_p99_ms / ping_loss_pct lines
  report.py iperf FILE.json                -> Gbit/s received (or "err")
  report.py iperf-error FILE.json          -> iperf3's error text
  report.py cpu T0 T1 HZ W0 W1 GBPS        -> cpu_pct / cpu_s_per_gbit lines
  report.py pps R0 R1 T0 T1 D0 D1 W0 W1 [F0 F1] -> pps_rx / pps_tx / tx_drop_pct lines
                                           (R: datagrams B's UDP took, F: frames on B's device)
  report.py trafgen-cfg DMAC SMAC SIP DIP  -> trafgen packet config (64-byte UDP frame)
  report.py sy-drops SETUP S0 S1 S2        -> notes on Switchyard drop counters
  report.py table RESULTS NOTES --setups ... -> the final table
"""
import argparse
import json
import math
import re
import sys

LABELS = {
    "sy1": "Switchyard 1 worker",
    "sy2": "Switchyard 2 workers",
    "fwd": "bare TAP forwarder",
    "kbridge": "kernel bridge+veth",
    "ovs": "OVS netdev+TAP",
}
# metric key, header, unit/format, higher-is-better
METRICS = [
    ("tcp1_gbps", "TCP 1 stream Gbit/s", True),
    ("tcp4_gbps", "TCP 4 streams Gbit/s", True),
    ("pps_rx", "64B UDP rx pps", True),
    ("pps_tx", "64B UDP tx pps", True),
    ("uso_dps", "UDP GSO 1200B rx datagrams/s", True),
    ("rtt_med_ms", "RTT median ms", False),
    ("rtt_p99_ms", "RTT p99 ms", False),
    ("cpu_pct", "switch CPU % (1 stream)", False),
    ("cpu_s_per_gbit", "switch CPU s per Gbit", False),
]


def num(v):
    try:
        f = float(v)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return None


def pct(values, p):
    s = sorted(values)
    if not s:
        return None
    # nearest-rank percentile
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def median(values):
    s = sorted(values)
    n = len(s)
    if n == 0:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def cmd_ping(path):
    text = open(path, errors="replace").read()
    times = [float(x) for x in re.findall(r"time=([0-9.]+) ms", text)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if times:
        print("rtt_med_ms %.3f" % median(times))
        print("rtt_p99_ms %.3f" % pct(times, 99))
        print("rtt_max_ms %.3f" % max(times))
        print("rtt_over_1ms %d" % sum(1 for t in times if t > 1.0))
    else:
        print("rtt_med_ms err")
        print("rtt_p99_ms err")
    if m:
        tx, rx = int(m.group(1)), int(m.group(2))
        print("ping_loss_pct %.1f" % (100.0 * (tx - rx) / tx if tx else 100.0))
        print("ping_replies %d" % len(times))


def load_json(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def cmd_iperf(path):
    j = load_json(path)
    try:
        bps = j["end"]["sum_received"]["bits_per_second"]
        print("%.2f" % (bps / 1e9))
    except (TypeError, KeyError):
        print("err")


def cmd_iperf_error(path):
    j = load_json(path)
    if isinstance(j, dict) and "error" in j:
        print(j["error"])
    else:
        try:
            print(open(path, errors="replace").read()[-300:].replace("\n", " "))
        except OSError:
            print("no output")


def cmd_cpu(t0, t1, hz, w0, w1, gbps):
    cpu_s = (int(t1) - int(t0)) / float(hz)
    wall = float(w1) - float(w0)
    g = num(gbps)
    print("cpu_pct %.0f" % (100.0 * cpu_s / wall) if wall > 0 else "cpu_pct err")
    if g and g > 0 and wall > 0:
        # CPU seconds the switch spent per gigabit moved
        print("cpu_s_per_gbit %.3f" % (cpu_s / (g * wall)))
    else:
        print("cpu_s_per_gbit err")


def cmd_pps(r0, r1, t0, t1, d0, d1, w0, w1, f0=None, f1=None):
    wall = float(w1) - float(w0)
    if f0 is not None and f1 is not None:
        print("pps_rx_dev_frames %d" % (int(f1) - int(f0)))
    rx = int(r1) - int(r0)
    tx = int(t1) - int(t0)
    dr = int(d1) - int(d0)
    print("pps_rx %.0f" % (rx / wall))
    print("pps_tx %.0f" % (tx / wall))
    print("pps_tx_dropped %.0f" % (dr / wall))
    print("pps_secs %.2f" % wall)
    print("pps_rx_frames %d" % rx)
    print("pps_tx_frames %d" % tx)


def cmd_trafgen_cfg(dmac, smac, sip, dip):
    m = lambda x: ", ".join("0x" + b for b in x.split(":"))
    ip = lambda x: ", ".join(str(int(b)) for b in x.split("."))
    # Ethernet(14) + IPv4(20) + UDP(8) + 18 payload = 60 bytes (+4 FCS = 64 on a wire)
    print("{ %s, %s, 0x08, 0x00,\n"
          "  0x45, 0x00, 0x00, 0x2e, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, csumip(14, 33), %s, %s,\n"
          "  0x13, 0x88, 0x13, 0x89, 0x00, 0x1a, 0x00, 0x00,\n"
          "  fill(0x41, 18) }" % (m(dmac), m(smac), ip(sip), ip(dip)))


def cmd_sy_drops(setup, *paths):
    snaps = [load_json(p) for p in paths]
    names = ["start", "after TCP", "after trafgen"]
    prev = None
    for name, s in zip(names, snaps):
        if not s:
            print("%s: no stats snapshot at %s" % (setup, name))
            continue
        st = s.get("stats", s)
        drops = {k: v for k, v in st.get("drops", {}).items() if v}
        if prev is not None:
            delta = {k: v - prev.get(k, 0) for k, v in drops.items() if v - prev.get(k, 0)}
            if delta:
                print("%s: Switchyard drops (stats) during phase ending %s: %s" % (
                    setup, name, ", ".join("%s=%d" % kv for kv in sorted(delta.items()))))
        if name == "after trafgen":
            ports = st.get("ports", [])
            pt = "; ".join("port %s %s rx=%s tx=%s tx_err=%s" % (
                p.get("port"), p.get("name"), p.get("rx_packets"), p.get("tx_packets"),
                p.get("tx_errors")) for p in ports)
            ev = st.get("events", {})
            evs = ", ".join("%s=%s" % kv for kv in sorted(ev.items()) if kv[1])
            print("%s: Switchyard final counters: %s; events: %s" % (setup, pt, evs or "none"))
            if drops:
                print("%s: Switchyard drop counters at the end (cumulative, non-zero): %s" % (
                    setup, ", ".join("%s=%d" % kv for kv in sorted(drops.items()))))
            else:
                print("%s: Switchyard drop counters all zero" % setup)
        prev = drops


def fmt(v):
    f = num(v)
    if f is None:
        return v if v else "-"
    if abs(f) >= 1000:
        return "{:,.0f}".format(f)
    if abs(f) >= 100:
        return "%.0f" % f
    if abs(f) >= 10:
        return "%.1f" % f
    return "%.2f" % f if abs(f) >= 0.1 else "%.3f" % f


def render(rows):
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i])
                                      for i, c in enumerate(r)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (x + 2) if i == 0 else "-" * (x + 1) + ":"
                                      for i, x in enumerate(w)) + "|")
    return "\n".join(out)


def cmd_table(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("notes")
    for k in ("setups", "cmd", "nproc", "kernel", "date", "elapsed", "params", "version", "ovs", "load"):
        ap.add_argument("--" + k, default="")
    a = ap.parse_args(argv)
    res = {}
    for line in open(a.results):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3:
            res.setdefault(parts[0], {})[parts[1]] = parts[2]
    setups = a.setups.split() or list(res)
    rows = [["setup"] + [h for _, h, _ in METRICS]]
    for s in setups:
        rows.append([LABELS.get(s, s)] + [fmt(res.get(s, {}).get(k, "-")) for k, _, _ in METRICS])
    out = [render(rows), ""]

    # ratios
    rrows = [["ratio"] + [h for _, h, _ in METRICS]]
    for sy in [s for s in setups if s.startswith("sy") or s == "fwd"]:
        for ref in ("ovs", "kbridge"):
            if ref not in setups:
                continue
            r = [LABELS.get(sy, sy) + " / " + LABELS[ref]]
            for k, _, _ in METRICS:
                x, y = num(res.get(sy, {}).get(k)), num(res.get(ref, {}).get(k))
                r.append("%.2fx" % (x / y) if x is not None and y else "n/a")
            rrows.append(r)
    if len(rrows) > 1:
        out.append("Ratios (Switchyard / peer; for RTT and CPU lower is better, so <1x favours Switchyard):")
        out.append("")
        out.append(render(rrows))
        out.append("")

    # secondary figures
    extra = []
    for s in setups:
        d = res.get(s, {})
        bits = []
        if "pps_tx_dropped" in d:
            off = (num(d.get("pps_tx")) or 0) + (num(d["pps_tx_dropped"]) or 0)
            bits.append("sender's device tx_dropped %s/s (trafgen offered ~%s pps)" % (
                fmt(d["pps_tx_dropped"]), fmt(off)))
        if "pps_rx_frames" in d:
            bits.append("trafgen %s datagrams sent, %s received in %s s (in %s frames on B's device)" % (
                d.get("pps_tx_frames"), d.get("pps_rx_frames"), d.get("pps_secs"),
                d.get("pps_rx_dev_frames", "?")))
        if "uso_rx_datagrams" in d:
            bits.append("UDP GSO sender %s datagrams sent, %s received" % (
                d.get("uso_tx_datagrams", "?"), d["uso_rx_datagrams"]))
        if "ping_loss_pct" in d:
            bits.append("ping loss %s%%, max RTT %s ms, %s of %s replies over 1 ms" % (
                d["ping_loss_pct"], d.get("rtt_max_ms", "?"), d.get("rtt_over_1ms", "?"),
                d.get("ping_replies", "?")))
        if bits:
            extra.append("- %s: %s" % (LABELS.get(s, s), "; ".join(bits)))
    if extra:
        out.append("Details:")
        out.extend(extra)
        out.append("")
    notes = [l.rstrip() for l in open(a.notes) if l.strip()]
    if notes:
        out.append("Notes:")
        out.extend("- " + n for n in notes)
        out.append("")
    out.append("Machine: nproc=%s, kernel %s, %s; loadavg at start: %s" % (
        a.nproc, a.kernel, a.date, a.load))
    out.append("Switchyard: %s; %s" % (a.version, a.ovs))
    out.append("Parameters: %s; run took %s s" % (a.params, a.elapsed))
    out.append("Command: %s" % a.cmd)
    print("\n".join(out))


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    c, args = sys.argv[1], sys.argv[2:]
    fns = {
        "ping": cmd_ping, "iperf": cmd_iperf, "iperf-error": cmd_iperf_error,
        "cpu": cmd_cpu, "pps": cmd_pps, "trafgen-cfg": cmd_trafgen_cfg,
        "sy-drops": cmd_sy_drops,
    }
    if c == "table":
        cmd_table(args)
    elif c in fns:
        fns[c](*args)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
