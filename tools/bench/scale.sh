#!/bin/bash
# Scale benchmark: many endpoints on one Switchyard network, a MAC flood, and
# forwarding between known hosts during the flood.
#
# Usage (as root):  tools/bench/scale.sh [--quick] [--endpoints N] [--macs N]
#                                        [--sample K] [--workers N] [--bin PATH] [--no-build]
#   --quick        20 endpoints, 10,000 MACs, iperf3 3 s
#   --endpoints N  namespaces attached (default 100; at most 250)
#   --macs N       frames in the flood, each with its own random source MAC (default 100,000)
#   --sample K     targets pinged from each endpoint (default 20; 0 = all others)
#   --parallel P   pings in flight at once (default 4)
#   --workers N    daemon workers (default 2)
#   --keep-arp-limit  leave the host's ARP table limit as it is (by default
#                  net.ipv4.neigh.default.gc_thresh2/3 are raised for the run
#                  so N endpoints fit, and restored on exit)
#   --flood-locked endpoint 0 keeps port security (its flood is then dropped
#                  as spoofed, nothing learned); by default it is connected
#                  with --no-port-security, as a bridge inside a sandbox
#                  would be, and the network's --mac-cap fits the flood
# Phases: (a) reachability: every endpoint pings K others (ping -c1 -W1, P at
# a time, whole phase bounded to 60 s); (b) flood: endpoint 0 sends N frames
# with random source MACs to the gateway's MAC (trafgen; learned, then dropped
# by the gateway as unhandled, so the flood is not multiplied by flooding to
# every port), stats and daemon RSS before/after;
# (c) iperf3 TCP between endpoints 1 and 2 without flood, then while endpoint 0
# floods N random MACs paced over the iperf3 run. Namespaces sysc-SUFFIX-I, the
# daemon and its state directory are removed on exit, also on failure.
set -u
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CMDLINE="$0 $*"
N=100; MACS=100000; FLOOD_PPS=50000; SAMPLE=20; PAR=4; WORKERS=2; IPERF_T=5; QUICK=0; KEEP_ARP=0
FLOOD_OPEN=1
BIN=${SWITCHYARD_BIN:-}
BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; N=20; MACS=10000; IPERF_T=3 ;;
    --endpoints) N=$2; shift ;;
    --macs) MACS=$2; shift ;;
    --sample) SAMPLE=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --parallel) PAR=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep-arp-limit) KEEP_ARP=1 ;;
    --flood-locked) FLOOD_OPEN=0 ;;
    -h|--help) sed -n 2,28p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ "$N" -ge 3 ] && [ "$N" -le 250 ] || { echo "--endpoints must be 3..250" >&2; exit 2; }
if ! command -v trafgen >/dev/null || ! command -v iperf3 >/dev/null; then
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y netsniff-ng iperf3 >/dev/null || {
    echo "apt-get install netsniff-ng iperf3 failed" >&2; exit 1; }
fi

SUF=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
TMP=$(mktemp -d /tmp/sysc-XXXXXX)
NOTES=$TMP/notes.txt; : > "$NOTES"
# shellcheck source=tools/bench/lib.sh
. "$HERE/lib.sh"
SY_SOCK=$TMP/api.sock; SY_PID=""; AUX_PIDS=""; ARP_RESTORE=""
T_START=$(date +%s); LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
ns() { echo "sysc-$SUF-$1"; }
ip_of() { echo "10.78.0.$(( $1 + 2 ))"; }
sy() { timeout 20 "$BIN" --socket "$SY_SOCK" "$@"; }

on_exit() {
  local p n
  for p in $AUX_PIDS $SY_PID; do stop_pid "$p"; done
  [ -n "$ARP_RESTORE" ] && sysctl -q -w $ARP_RESTORE
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -- "^sysc-$SUF-"); do
    ip netns del "$n" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT TERM
find_bin

rss_kb() { awk '/^VmRSS:/{print $2}' /proc/"$SY_PID"/status 2>/dev/null || echo 0; }
stat_json() { sy stats --json > "$1" 2>/dev/null || echo '{}' > "$1"; }
alive() { kill -0 "$SY_PID" 2>/dev/null || { log "daemon died; log:"; tail -20 "$TMP/daemon.log" >&2; exit 1; }; }
wait_listen() {
  local i; for i in $(seq 1 50); do
    ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0; sleep 0.1; done; return 1
}

# The host's ARP table is ONE table for every network namespace, limited by
# gc_thresh3 (1024 by default); each endpoint needs an entry per peer it
# talks to, so N endpoints all-to-all need up to N*N. Past the limit, sends
# in the sandboxes fail with ENOBUFS ("neighbor table overflow" in dmesg) and
# reachability stalls for 10-20 s until the kernel's GC frees entries.
arp_fulls() {  # table_fulls, summed over the per-CPU rows (hexadecimal)
  python3 -c 'import sys; r=[l.split() for l in open("/proc/net/stat/arp_cache")]; c=r[0].index("table_fulls"); print(sum(int(x[c],16) for x in r[1:]))'
}
arp_entries() { python3 -c 'print(int(open("/proc/net/stat/arp_cache").read().split("\n")[1].split()[0],16))'; }
ARP_T3_0=$(sysctl -n net.ipv4.neigh.default.gc_thresh3); ARP_T2_0=$(sysctl -n net.ipv4.neigh.default.gc_thresh2)
ARP_NEED=$(( N * N + $(arp_entries) + 1024 ))
if [ "$KEEP_ARP" = 0 ] && [ "$ARP_T3_0" -lt "$ARP_NEED" ]; then
  ARP_RESTORE="net.ipv4.neigh.default.gc_thresh3=$ARP_T3_0 net.ipv4.neigh.default.gc_thresh2=$ARP_T2_0"
  sysctl -q -w net.ipv4.neigh.default.gc_thresh3="$ARP_NEED" \
    net.ipv4.neigh.default.gc_thresh2="$(( ARP_NEED / 2 > ARP_T2_0 ? ARP_NEED / 2 : ARP_T2_0 ))" \
    || { log "cannot raise the ARP table limit"; exit 1; }
  log "host ARP table limit (gc_thresh3) raised from $ARP_T3_0 to $ARP_NEED for the run"
fi
ARP_T3=$(sysctl -n net.ipv4.neigh.default.gc_thresh3)

# ------------------------------------------------------------ daemon and endpoints
log "daemon: --workers $WORKERS"
mkdir -p "$TMP/state"
"$BIN" --socket "$SY_SOCK" daemon --state-dir "$TMP/state" --workers "$WORKERS" > "$TMP/daemon.log" 2>&1 &
SY_PID=$!
for i in $(seq 1 100); do
  [ -S "$SY_SOCK" ] && sy network ls >/dev/null 2>&1 && break
  alive; sleep 0.1
done
# Room for both floods' MACs (phases b and c, each MACS random ones) and the
# endpoints, so the table's growth is what is measured, not its cap.
MAC_CAP=$(( 2 * MACS + N + 1024 ))
sy network create scale --subnet 10.78.0.0/24 --mac-cap "$MAC_CAP" >/dev/null \
  || { log "network create failed"; exit 1; }
RSS_IDLE=$(rss_kb)
log "attaching $N endpoints"
T0=$(date +%s.%N)
for i in $(seq 0 $(( N - 1 ))); do
  ip netns add "$(ns $i)" && ip -n "$(ns $i)" link set lo up || { log "ip netns add failed"; exit 1; }
  OPEN=""; [ "$i" = 0 ] && [ "$FLOOD_OPEN" = 1 ] && OPEN=--no-port-security
  sy connect scale --netns /run/netns/"$(ns $i)" --name "e$i" --ip "$(ip_of $i)" $OPEN >/dev/null \
    || { log "connect e$i failed"; alive; exit 1; }
done
T1=$(date +%s.%N)
ATTACH_S=$(echo "$T1 - $T0" | bc -l)
RSS_ATTACHED=$(rss_kb)
alive

# ------------------------------------------------------------ (a) reachability
PAIRS=$TMP/pairs.txt
python3 - "$N" "$SAMPLE" > "$PAIRS" <<'EOF'
import random, sys
n, k = int(sys.argv[1]), int(sys.argv[2])
random.seed(7)
for s in range(n):
    others = [d for d in range(n) if d != s]
    for d in (others if k <= 0 or k >= len(others) else random.sample(others, k)):
        print(s, d)
EOF
NPAIRS=$(wc -l < "$PAIRS")
log "(a) $NPAIRS pings (ping -c1 -W1, $PAR in parallel, at most 60 s)"
export SUF
ARP_FULLS0=$(arp_fulls)
T0=$(date +%s.%N)
timeout 60 xargs -P "$PAR" -L 1 sh -c \
  'ip netns exec "sysc-$SUF-$0" ping -n -q -c1 -W1 "10.78.0.$(( $1 + 2 ))" >/dev/null 2>&1 && echo "ok $0 $1" || echo "fail $0 $1"' \
  < "$PAIRS" > "$TMP/ping.txt" 2>/dev/null
T1=$(date +%s.%N)
PING_OK=$(grep -c '^ok' "$TMP/ping.txt"); PING_FAIL=$(grep -c '^fail' "$TMP/ping.txt")
PING_S=$(echo "$T1 - $T0" | bc -l)
ARP_FULLS_A=$(( $(arp_fulls) - ARP_FULLS0 ))
# retry the failures once (first ARP of a pair may be slow under load)
grep '^fail' "$TMP/ping.txt" | cut -d' ' -f2,3 > "$TMP/retry.txt"
PING_RETRY_OK=0
if [ -s "$TMP/retry.txt" ]; then
  timeout 30 xargs -P "$PAR" -L 1 sh -c \
    'ip netns exec "sysc-$SUF-$0" ping -n -q -c1 -W1 "10.78.0.$(( $1 + 2 ))" >/dev/null 2>&1 && echo ok' \
    < "$TMP/retry.txt" > "$TMP/retry-out.txt" 2>/dev/null
  PING_RETRY_OK=$(grep -c '^ok' "$TMP/retry-out.txt")
fi
log "(a) ok $PING_OK, failed $PING_FAIL (of which $PING_RETRY_OK ok on retry), not run $(( NPAIRS - PING_OK - PING_FAIL ))"
alive

# ------------------------------------------------------------ (c1) iperf3 before the flood
iperf_run() {  # iperf_run TAG -> Gbit/s on stdout
  local tag=$1 srv
  ip netns exec "$(ns 2)" timeout $(( IPERF_T + 30 )) iperf3 -s -1 -p 5201 > "$TMP/srv-$tag.log" 2>&1 &
  srv=$!; AUX_PIDS="$AUX_PIDS $srv"
  wait_listen "$(ns 2)" 5201 || { log "iperf3 server did not start"; echo err; return; }
  timeout $(( IPERF_T + 20 )) ip netns exec "$(ns 1)" iperf3 -c "$(ip_of 2)" -p 5201 -t "$IPERF_T" -J \
    > "$TMP/iperf-$tag.json" 2>&1
  stop_pid "$srv"; wait "$srv" 2>/dev/null
  python3 "$HERE/report.py" iperf "$TMP/iperf-$tag.json"
}
log "(c) iperf3 e1 -> e2, no flood"
G_BEFORE=$(iperf_run before)
alive

# ------------------------------------------------------------ (b) flood
FLOOD_CFG=$TMP/flood.cfg
# 64-byte frame to the gateway's MAC, source MAC 02:xx:xx:xx:xx:xx (unicast,
# locally administered, 5 random bytes per frame), ethertype 0x88b5 (local
# experimental): learned, then dropped by the gateway (gateway-unhandled).
ip netns exec "$(ns 0)" ping -n -c1 -W1 10.78.0.1 >/dev/null 2>&1
GW_MAC=$(ip -n "$(ns 0)" neigh show 10.78.0.1 dev eth0 | awk '/lladdr/{print $3; exit}')
[ -n "$GW_MAC" ] || { log "cannot learn the gateway's MAC"; exit 1; }
GW_BYTES=$(echo "$GW_MAC" | sed 's/\([0-9a-f][0-9a-f]\)/0x\1/g; s/:/, /g')
cat > "$FLOOD_CFG" <<EOF
{
  $GW_BYTES,
  0x02, drnd(5),
  0x88, 0xb5,
  fill(0x00, 50)
}
EOF
stat_json "$TMP/s0.json"; RSS_BEFORE=$(rss_kb)
FLOOD_NS=$(ns 0)
TXS=/sys/class/net/eth0/statistics
tx0=$(ip netns exec "$FLOOD_NS" cat $TXS/tx_packets); txd0=$(ip netns exec "$FLOOD_NS" cat $TXS/tx_dropped)
# Paced (sendto slow mode) so that the frames reach the switch instead of
# overflowing e0's TAP queue; trafgen's slow mode tops out well below this rate
# on this machine anyway.
log "(b) flood: $MACS frames with random source MACs from e0 (trafgen -b ${FLOOD_PPS}pps)"
T0=$(date +%s.%N)
timeout -s INT 60 ip netns exec "$FLOOD_NS" trafgen -q -i "$FLOOD_CFG" -o eth0 -n "$MACS" -b "${FLOOD_PPS}pps" -P 1 > "$TMP/trafgen-b.log" 2>&1
TG_RC=$?
T1=$(date +%s.%N)
sleep 1   # let the workers drain
tx1=$(ip netns exec "$FLOOD_NS" cat $TXS/tx_packets); txd1=$(ip netns exec "$FLOOD_NS" cat $TXS/tx_dropped)
stat_json "$TMP/s1.json"; RSS_AFTER=$(rss_kb)
FLOOD_S=$(echo "$T1 - $T0" | bc -l)
[ "$TG_RC" = 0 ] || log "trafgen exited $TG_RC: $(tail -3 "$TMP/trafgen-b.log" | tr '\n' ' ')"
alive

# ------------------------------------------------------------ (c2) iperf3 during a paced flood
C_PPS=$(( MACS / IPERF_T ))
log "(c) iperf3 e1 -> e2 while e0 floods $MACS random MACs at ${C_PPS} pps"
ip netns exec "$FLOOD_NS" timeout -s INT $(( IPERF_T + 10 )) trafgen -q -i "$FLOOD_CFG" -o eth0 \
  -n "$MACS" -b "${C_PPS}pps" -P 1 > "$TMP/trafgen-c.log" 2>&1 &
TGC=$!; AUX_PIDS="$AUX_PIDS $TGC"
sleep 0.3
tc0=$(ip netns exec "$FLOOD_NS" cat /sys/class/net/eth0/statistics/tx_packets)
G_DURING=$(iperf_run during)
tc1=$(ip netns exec "$FLOOD_NS" cat /sys/class/net/eth0/statistics/tx_packets)
kill -0 $TGC 2>/dev/null && FLOOD_RUNNING_AT_END=yes || FLOOD_RUNNING_AT_END=no
stop_pid $TGC; wait $TGC 2>/dev/null
stat_json "$TMP/s2.json"; RSS_END=$(rss_kb)
alive
T_END=$(date +%s)

# ------------------------------------------------------------ report
VER=$("$BIN" --version 2>/dev/null || echo unknown)
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$TMP" <<EOF | tee "$HERE/scale-last-run.txt"
import json, sys
t = sys.argv[1]
def load(n):
    try: return json.load(open(f"{t}/{n}.json"))
    except Exception: return {}
s0, s1, s2 = load("s0"), load("s1"), load("s2")
s0, s1, s2 = (x.get("stats", x) for x in (s0, s1, s2))
def ev(s, k): return s.get("events", {}).get(k, 0)
def dr(s, k): return s.get("drops", {}).get(k, 0)
def d(a, b, k, f): return f(b, k) - f(a, k)
mb = lambda kb: f"{int(kb)/1024:.1f}"
rows = [
  ("endpoints attached", f"$N in {float('$ATTACH_S'):.1f} s ($WORKERS workers)"),
  ("(a) pings ok / sent", f"$PING_OK / $NPAIRS in {float('$PING_S'):.1f} s, $PAR in flight (no reply in 1 s: $PING_FAIL, $PING_RETRY_OK of them ok on retry; not run before the 60 s bound: {$NPAIRS - $PING_OK - $PING_FAIL})"),
  ("(a) host ARP table limit / overflows during (a)", f"$ARP_T3 (was $ARP_T3_0) / $ARP_FULLS_A"),
  ("(b) network --mac-cap / e0's port security", f"{$MAC_CAP:,} / {'off (connected with --no-port-security)' if $FLOOD_OPEN else 'on (--flood-locked)'}"),
  ("(b) flood frames sent by e0", f"{$tx1 - $tx0:,} into the switch, {$txd1 - $txd0:,} dropped by e0's TAP, in {float('$FLOOD_S'):.2f} s (trafgen -n $MACS -b ${FLOOD_PPS}pps)"),
  ("(b) mac-learned / mac-evicted", f"+{d(s0,s1,'mac-learned',ev):,} / +{d(s0,s1,'mac-evicted',ev):,}"),
  ("(b) drops mac-cap / spoofed / invalid-source", f"+{d(s0,s1,'mac-cap',dr):,} / +{d(s0,s1,'spoofed',dr):,} / +{d(s0,s1,'invalid-source',dr):,}"),
  ("(b) daemon VmRSS MiB idle / $N attached / before / after flood", f"{mb($RSS_IDLE)} / {mb($RSS_ATTACHED)} / {mb($RSS_BEFORE)} / {mb($RSS_AFTER)}"),
  ("(c) iperf3 TCP e1->e2 Gbit/s, no flood", "$G_BEFORE"),
  ("(c) iperf3 TCP e1->e2 Gbit/s, during flood", f"$G_DURING (flood frames during the run: {$tc1 - $tc0:,}, asked {$C_PPS} pps; trafgen still running at end: $FLOOD_RUNNING_AT_END)"),
  ("(c) during: mac-learned / mac-cap / spoofed", f"+{d(s1,s2,'mac-learned',ev):,} / +{d(s1,s2,'mac-cap',dr):,} / +{d(s1,s2,'spoofed',dr):,}; VmRSS after {mb($RSS_END)} MiB"),
]
w = max(len(r[0]) for r in rows)
print("Switchyard scale benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -sr), load at start $LOAD0")
print("command: $CMDLINE; $VER (git $GIT); elapsed $(( T_END - T_START )) s")
print()
print(f"| {'measure'.ljust(w)} | value |")
print(f"|{'-'*(w+2)}|-------|")
for k, v in rows:
    print(f"| {k.ljust(w)} | {v} |")
tot = {k: v for k, v in s2.get("drops", {}).items() if v}
print()
print("all non-zero drop counters at end:", ", ".join(f"{k} {v:,}" for k, v in sorted(tot.items())) or "none")
print("events at end:", ", ".join(f"{k} {v:,}" for k, v in sorted(s2.get("events", {}).items()) if v))
EOF
