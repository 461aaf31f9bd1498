#!/usr/bin/env bash
# Gateway-stack threads: aggregate outbound NAT throughput of several
# sandboxes at once, with the daemon's --gateway-threads at 1 and at N (each
# thread owns the flows of the sandboxes whose port maps to it).
#
#   sudo tools/bench/nat-threads.sh [--sandboxes K] [--threads N] [--time S]
#        [--rounds R] [--mtu M] [--workers W] [--ipv6] [--bin PATH] [--no-build]
#
# Defaults: 2 sandboxes, threads 1 vs 2, 2 workers, MTU 1500, 5 s, 3 rounds.
# Per round and setting: one daemon (as root; the NAT path is the same as
# rootless), one --host-loopback network, K iperf3 servers on the host's
# 127.0.0.1 (--ipv6: [::1], the clients dialling the gateway's IPv6
# address), K `switchyard run -- iperf3 -c GATEWAY` clients started
# together; the round's figure is the sum of their receiver Gbit/s. Settings
# alternate within a round so drift hits both. Prints the median, the range
# and the daemon's CPU seconds per Gbit. Everything (daemons, sandboxes,
# servers, temp dir) is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
K=2; N=2; T=5; ROUNDS=3; MTU=1500; WORKERS=2; BIN=""; BUILD=1; FAMILY=4
while [ $# -gt 0 ]; do
  case $1 in
    --sandboxes) K=$2; shift ;;
    --threads) N=$2; shift ;;
    --time) T=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --mtu) MTU=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --ipv6) FAMILY=6 ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
TMP=$(mktemp -d /tmp/synatthr-XXXXXX)
NOTES=$TMP/notes.txt; : > "$NOTES"
# shellcheck source=tools/bench/lib.sh
. "$HERE/lib.sh"
PIDS=""
cleanup() {
  set +e
  local p rev=""
  for p in $PIDS; do rev="$p $rev"; done
  for p in $rev; do stop_pid "$p"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
install_deps iperf3:iperf3 python3:python3
find_bin
HZ=$(getconf CLK_TCK)

# one_round THREADS ROUND: prints "GBPS CPU_TICKS"
one_round() {
  local threads=$1 round=$2 dir sock pid i gw c0 c1 clients="" servers="" port
  dir=$(mktemp -d "$TMP/d$1-$2-XXXX"); mkdir -p "$dir/state"; sock=$dir/api.sock
  "$BIN" --socket "$sock" daemon --state-dir "$dir/state" --workers "$WORKERS" \
    --gateway-threads "$threads" </dev/null >"$dir/daemon.log" 2>&1 &
  pid=$!; PIDS="$PIDS $pid"
  for i in $(seq 1 100); do
    [ -S "$sock" ] && "$BIN" --socket "$sock" network ls >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$BIN" --socket "$sock" network create nt --subnet 10.249.0.0/24 --ipv6-subnet fd00:249::/64 \
    --mtu "$MTU" --host-loopback >/dev/null \
    || die "network create (daemon log: $(tail -2 "$dir/daemon.log"))"
  local bind=127.0.0.1; gw=10.249.0.1
  [ "$FAMILY" = 6 ] && { bind=::1; gw=fd00:249::1; }
  for i in $(seq 1 "$K"); do
    port=$((40100 + i))
    iperf3 -s -B "$bind" -p "$port" </dev/null >"$dir/srv$i.log" 2>&1 &
    servers="$servers $!"; PIDS="$PIDS $!"
  done
  sleep 0.5
  c0=$(cpu_ticks "$pid")
  for i in $(seq 1 "$K"); do
    timeout $((T + 30)) "$BIN" --socket "$sock" run --network nt -- \
      iperf3 -c "$gw" -p $((40100 + i)) -t "$T" -J --connect-timeout 3000 \
      </dev/null >"$dir/c$i.json" 2>"$dir/c$i.err" &
    clients="$clients $!"
  done
  for i in $clients; do wait "$i" || true; done
  c1=$(cpu_ticks "$pid")
  for i in $servers; do stop_pid "$i"; done
  stop_pid "$pid"
  python3 - "$dir" "$K" $((c1 - c0)) <<'PY'
import json, sys, os
d, k, ticks = sys.argv[1], int(sys.argv[2]), sys.argv[3]
total = 0.0
for i in range(1, k + 1):
    try:
        total += json.load(open(os.path.join(d, f"c{i}.json")))["end"]["sum_received"]["bits_per_second"] / 1e9
    except Exception as e:
        print(f"ERR client {i}: {e}"); sys.exit(0)
print(f"{total:.2f} {ticks}")
PY
}

log "Switchyard $BIN, $K sandboxes, IPv$FAMILY, MTU $MTU, $WORKERS workers, threads 1 vs $N, ${T}s x $ROUNDS"
RES=$TMP/res.txt; : > "$RES"
for r in $(seq 1 "$ROUNDS"); do
  for th in 1 "$N"; do
    out=$(one_round "$th" "$r")
    log "round $r, $th thread(s): $out"
    echo "$th $out" >> "$RES"
  done
done
python3 - "$RES" "$HZ" "$K" "$MTU" "$WORKERS" "$T" "$ROUNDS" "$FAMILY" <<'PY'
import sys, statistics
res, hz, k, mtu, workers, t, rounds, family = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
rows = {}
for line in open(res):
    p = line.split()
    if p[1] == "ERR":
        rows.setdefault(p[0], []).append(None); continue
    rows.setdefault(p[0], []).append((float(p[1]), int(p[2]) / hz))
lo = "127.0.0.1" if family == "4" else "[::1]"
print(f"outbound NAT over IPv{family}, {k} sandboxes at once -> host {lo}, MTU {mtu}, {workers} workers, iperf3 -t {t}, {rounds} rounds")
print("| gateway threads | Gbit/s, sum (median, min-max) | daemon CPU-s per Gbit |")
print("|--:|--:|--:|")
med = {}
for th, v in rows.items():
    ok = [x for x in v if x]
    if not ok:
        print(f"| {th} | fail | - |"); continue
    g = [x[0] for x in ok]
    cpu = statistics.median(x[1] / (x[0] * float(t)) for x in ok if x[0] > 0)
    med[th] = statistics.median(g)
    print(f"| {th} | {med[th]:.2f} ({min(g):.2f}-{max(g):.2f}) | {cpu:.3f} |")
ths = sorted(med, key=int)
if len(ths) == 2:
    print(f"ratio {ths[1]} threads / 1 thread: {med[ths[1]] / med[ths[0]]:.2f}x")
PY
