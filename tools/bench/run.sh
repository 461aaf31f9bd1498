#!/bin/bash
# End-to-end benchmark: Switchyard (1 and 2 workers) vs Linux kernel bridge + veth
# vs Open vSwitch userspace datapath (netdev) with TAP ports, and the floor of any
# userspace TAP switch (examples/tap_forward.rs: epoll, read, write; no switching).
#
# Usage (as root):  tools/bench/run.sh [--quick] [--only SETUP[,SETUP...]] [--bin PATH] [--no-build]
#                                       [--busy-poll-us US]
#   setups: sy1 sy2 fwd kbridge ovs; --busy-poll-us is passed to Switchyard's daemon (default 50, its own default),
#   and so is $SY_DAEMON_ARGS (e.g. SY_DAEMON_ARGS=--cpu-affinity)
#   the Switchyard binary: --bin, else $SWITCHYARD_BIN, else cargo build --release
#   into ${CARGO_TARGET_DIR:-REPO/target} (skipped with --no-build); the fwd setup's
#   forwarder: $FWD_BIN, else cargo build --release --example tap_forward likewise
#
# Two namespaces A (10.77.0.2) and B (10.77.0.3) on one switch per setup; every
# switch but Switchyard's daemon and the bare forwarder runs in a third namespace of its own. All
# namespaces are named sybench-<role>-<random suffix>; traffic never leaves them.
# Metrics: iperf3 TCP 1 and 4 streams, 64-byte UDP pps (trafgen), 1200-byte
# UDP datagrams per second from a UDP GSO sender (40 datagrams per send, as
# QUIC stacks send; received on a UDP_GRO socket), ping RTT median/p99,
# switch CPU per Gbit/s during the 1-stream run.
set -u
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CMDLINE="$0 $*"
QUICK=0
ONLY="sy1,sy2,fwd,kbridge,ovs"
BIN=${SWITCHYARD_BIN:-}
BUILD=1
BUSY_POLL_US=50
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    --busy-poll-us) BUSY_POLL_US=$2; shift ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then IPERF_T=3; PPS_T=2; PING_N=200; else IPERF_T=5; PPS_T=5; PING_N=500; fi
USO_T=$PPS_T
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

SUF=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
TMP=$(mktemp -d /tmp/sybench-XXXXXX)
RES=$TMP/results.tsv; : > "$RES"
NOTES=$TMP/notes.txt; : > "$NOTES"
# shellcheck source=tools/bench/lib.sh
. "$HERE/lib.sh"
T_START=$(date +%s)
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RES"; }   # setup metric value

# ---------------------------------------------------------------- state of the current setup
NS_A=""; NS_B=""; NS_SW=""; DEV_A=""; DEV_B=""
SW_PIDS=""        # switch processes (CPU accounting)
KILL_PIDS=""      # every process we started and must stop
AUX_PIDS=""       # helpers (iperf3 servers) started by the measurements
OVS_DIR=""; SY_DIR=""; SY_SOCK=""; SY_PID=""

teardown() {
  local p n
  for p in $AUX_PIDS $KILL_PIDS; do stop_pid "$p"; done
  for n in $NS_A $NS_B $NS_SW; do ip netns del "$n" 2>/dev/null; done
  [ -n "$OVS_DIR" ] && rm -rf "$OVS_DIR"
  [ -n "$SY_DIR" ] && rm -rf "$SY_DIR"
  NS_A=""; NS_B=""; NS_SW=""; DEV_A=""; DEV_B=""; SW_PIDS=""; KILL_PIDS=""
  OVS_DIR=""; SY_DIR=""; SY_SOCK=""; SY_PID=""; AUX_PIDS=""
}

on_exit() {
  teardown
  # anything left with our suffix (e.g. after an interrupted setup)
  local n
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -- "-$SUF\$"); do ip netns del "$n" 2>/dev/null; done
  rm -rf "$TMP"
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- installation

mkns() { ip netns add "$1" && ip -n "$1" link set lo up; }

new_names() {
  NS_A=sybench-a-$SUF; NS_B=sybench-b-$SUF; NS_SW=sybench-sw-$SUF
}

# ---------------------------------------------------------------- setups
up_kbridge() {
  new_names
  mkns "$NS_SW" && mkns "$NS_A" && mkns "$NS_B" || return 1
  ip -n "$NS_SW" link add br0 type bridge || return 1
  ip -n "$NS_SW" link set br0 up
  local n x ip
  for x in a b; do
    [ $x = a ] && n=$NS_A && ip=10.77.0.2 || { n=$NS_B; ip=10.77.0.3; }
    ip -n "$NS_SW" link add v$x type veth peer name eth0 netns "$n" || return 1
    ip -n "$NS_SW" link set v$x master br0 up
    ip -n "$n" addr add $ip/24 dev eth0
    ip -n "$n" link set eth0 up
  done
  DEV_A=eth0; DEV_B=eth0; SW_PIDS=""
}

up_ovs() {
  new_names
  mkns "$NS_SW" && mkns "$NS_A" && mkns "$NS_B" || return 1
  OVS_DIR=$TMP/ovs; mkdir -p "$OVS_DIR"
  export OVS_RUNDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR OVS_SYSCONFDIR=$OVS_DIR OVS_PKGDATADIR=/usr/share/openvswitch
  ovsdb-tool create "$OVS_DIR/conf.db" /usr/share/openvswitch/vswitch.ovsschema || return 1
  ip netns exec "$NS_SW" timeout 20 ovsdb-server "$OVS_DIR/conf.db" --remote=punix:"$OVS_DIR/db.sock" \
     --pidfile="$OVS_DIR/ovsdb.pid" --detach -vconsole:off --log-file="$OVS_DIR/ovsdb.log" || return 1
  KILL_PIDS="$(cat "$OVS_DIR/ovsdb.pid")"
  local V="timeout 20 ovs-vsctl --db=unix:$OVS_DIR/db.sock"
  $V --no-wait init || return 1
  ip netns exec "$NS_SW" timeout 30 ovs-vswitchd unix:"$OVS_DIR/db.sock" --pidfile="$OVS_DIR/vswitchd.pid" \
     --detach -vconsole:off --log-file="$OVS_DIR/vswitchd.log" || return 1
  KILL_PIDS="$(cat "$OVS_DIR/vswitchd.pid") $KILL_PIDS"   # vswitchd first
  SW_PIDS=$(cat "$OVS_DIR/vswitchd.pid")
  $V add-br sybr0 -- set bridge sybr0 datapath_type=netdev || return 1
  $V add-port sybr0 tapa -- set Interface tapa type=tap || return 1
  $V add-port sybr0 tapb -- set Interface tapb type=tap || return 1
  local i
  for i in $(seq 1 50); do ip -n "$NS_SW" link show tapb >/dev/null 2>&1 && break; sleep 0.1; done
  ip -n "$NS_SW" link set tapa netns "$NS_A" || return 1
  ip -n "$NS_SW" link set tapb netns "$NS_B" || return 1
  ip -n "$NS_A" addr add 10.77.0.2/24 dev tapa; ip -n "$NS_A" link set tapa up
  ip -n "$NS_B" addr add 10.77.0.3/24 dev tapb; ip -n "$NS_B" link set tapb up
  DEV_A=tapa; DEV_B=tapb
  sleep 1
}

up_fwd() {  # the floor: a bare userspace forwarder between the two TAPs
  [ -x "$FWD_BIN" ] || { echo "no tap_forward binary at $FWD_BIN" >&2; return 1; }
  new_names; NS_SW=""
  mkns "$NS_A" && mkns "$NS_B" || return 1
  "$FWD_BIN" /run/netns/"$NS_A" /run/netns/"$NS_B" > "$TMP/fwd.log" 2>&1 &
  local pid=$! i n
  KILL_PIDS=$pid; SW_PIDS=$pid
  for i in $(seq 1 50); do grep -q '^forwarding' "$TMP/fwd.log" && break; sleep 0.1; done
  grep -q '^forwarding' "$TMP/fwd.log" || { cat "$TMP/fwd.log" >&2; return 1; }
  for n in "$NS_A:10.77.0.2" "$NS_B:10.77.0.3"; do
    ip -n "${n%%:*}" addr add "${n#*:}"/24 dev eth0 && ip -n "${n%%:*}" link set eth0 up || return 1
  done
  DEV_A=eth0; DEV_B=eth0
}

sy() { timeout 20 "$BIN" --socket "$SY_SOCK" "$@"; }

up_sy() {  # up_sy WORKERS
  local w=$1 i
  [ -x "$BIN" ] || { echo "no switchyard binary at $BIN" >&2; return 1; }
  NS_A=sybench-a-$SUF; NS_B=sybench-b-$SUF; NS_SW=""
  mkns "$NS_A" && mkns "$NS_B" || return 1
  SY_DIR=$TMP/sy; mkdir -p "$SY_DIR/state"; SY_SOCK=$SY_DIR/api.sock
  "$BIN" --socket "$SY_SOCK" daemon --state-dir "$SY_DIR/state" --workers "$w" \
    --busy-poll-us "$BUSY_POLL_US" ${SY_DAEMON_ARGS:-} > "$SY_DIR/daemon.log" 2>&1 &
  SY_PID=$!; KILL_PIDS=$SY_PID; SW_PIDS=$SY_PID
  for i in $(seq 1 100); do
    [ -S "$SY_SOCK" ] && sy network ls >/dev/null 2>&1 && break
    kill -0 "$SY_PID" 2>/dev/null || { echo "daemon died:"; cat "$SY_DIR/daemon.log"; return 1; } >&2
    sleep 0.1
  done
  sy network create bench --subnet 10.77.0.0/24 >/dev/null || return 1
  sy connect bench --netns /run/netns/"$NS_A" --name a --ip 10.77.0.2 >/dev/null || return 1
  sy connect bench --netns /run/netns/"$NS_B" --name b --ip 10.77.0.3 >/dev/null || return 1
  DEV_A=eth0; DEV_B=eth0
  sy stats --json > "$SY_DIR/stats0.json" 2>/dev/null
}

sy_alive_check() {  # sy_alive_check SETUP PHASE
  [ -n "$SY_PID" ] || return 0
  if ! kill -0 "$SY_PID" 2>/dev/null; then
    wait "$SY_PID" 2>/dev/null; local rc=$?
    note "$1: switchyard daemon (pid $SY_PID) DIED during/after $2 (exit status $rc); log tail: $(tail -5 "$SY_DIR/daemon.log" | tr '\n' ' ')"
    SY_PID=""; return 1
  fi
}

sy_stats_save() {  # sy_stats_save SETUP TAG
  [ -n "$SY_PID" ] && [ -n "$SY_SOCK" ] || return 0
  sy stats --json > "$TMP/stats-$1-$2.json" 2>/dev/null || note "$1: 'stats --json' failed after $2"
}

# ---------------------------------------------------------------- measurements

wait_listen() {  # wait_listen NS PORT
  local i
  for i in $(seq 1 50); do
    ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

m_ping() {  # m_ping SETUP
  local out=$TMP/ping-$1.txt
  timeout $(( PING_N / 50 + 30 )) ip netns exec "$NS_A" ping -n -i 0.01 -W 1 -c "$PING_N" 10.77.0.3 > "$out" 2>&1
  python3 "$HERE/report.py" ping "$out" | while read -r k v; do put "$1" "$k" "$v"; done
}

m_iperf() {  # m_iperf SETUP STREAMS -> gbps (and CPU for 1 stream)
  local s=$1 P=$2 port=5201 json=$TMP/iperf-$1-$2.json
  ip netns exec "$NS_B" timeout $(( IPERF_T + 30 )) iperf3 -s -1 -p $port > "$TMP/iperf-srv-$s-$P.log" 2>&1 &
  local srv=$!; AUX_PIDS="$AUX_PIDS $srv"
  if ! wait_listen "$NS_B" $port; then note "$s: iperf3 server did not start"; stop_pid $srv; return 1; fi
  local c0 c1 w0 w1
  c0=$(cpu_ticks $SW_PIDS); w0=$(date +%s.%N)
  timeout $(( IPERF_T + 20 )) ip netns exec "$NS_A" iperf3 -c 10.77.0.3 -p $port -t "$IPERF_T" -P "$P" -J > "$json" 2>&1
  local rc=$?
  c1=$(cpu_ticks $SW_PIDS); w1=$(date +%s.%N)
  stop_pid $srv; wait $srv 2>/dev/null
  [ $rc = 0 ] || note "$s: iperf3 -P $P exited $rc: $(python3 "$HERE/report.py" iperf-error "$json")"
  local g; g=$(python3 "$HERE/report.py" iperf "$json")
  put "$s" "tcp${P}_gbps" "$g"
  if [ "$P" = 1 ]; then
    if [ -z "$SW_PIDS" ]; then put "$s" cpu_pct n/a; put "$s" cpu_s_per_gbit n/a
    else
      local hz; hz=$(getconf CLK_TCK)
      python3 "$HERE/report.py" cpu "$c0" "$c1" "$hz" "$w0" "$w1" "$g" | while read -r k v; do put "$s" "$k" "$v"; done
    fi
  fi
}

udp_rcvbuf_errors() {  # udp_rcvbuf_errors NS: the namespace's Udp RcvbufErrors counter
  ip netns exec "$1" awk '/^Udp:/ { n++; if (n == 1) for (i = 2; i <= NF; i++) col[$i] = i;
                                    else print $col["RcvbufErrors"] }' /proc/net/snmp
}

m_pps() {  # m_pps SETUP
  local s=$1 cfg=$TMP/trafgen-$1.cfg mac smac
  ip netns exec "$NS_A" ping -n -c 1 -W 1 10.77.0.3 >/dev/null 2>&1
  mac=$(ip -n "$NS_A" neigh show 10.77.0.3 dev "$DEV_A" | awk '/lladdr/{print $3; exit}')
  smac=$(ip netns exec "$NS_A" cat /sys/class/net/"$DEV_A"/address)
  if [ -z "$mac" ]; then note "$s: could not learn B's MAC"; put "$s" pps_rx err; put "$s" pps_tx err; return 1; fi
  python3 "$HERE/report.py" trafgen-cfg "$mac" "$smac" 10.77.0.2 10.77.0.3 > "$cfg"
  local rx="/sys/class/net/$DEV_B/statistics/rx_packets" tx="/sys/class/net/$DEV_A/statistics/tx_packets"
  local txd="/sys/class/net/$DEV_A/statistics/tx_dropped"
  local r0 t0 d0 r1 t1 d1 w0 w1 f0 f1 q
  # What B receives is counted where its UDP layer takes each datagram, not
  # on B's device: a switch that coalesces a run of datagrams into one USO
  # frame (Switchyard does, as a NIC with GRO would) delivers them in fewer
  # device frames, which B's kernel cuts back into the same datagrams.
  # The sink binds the destination port and does not read while trafgen
  # runs: B's stack drops the datagrams at the full socket (counted in
  # RcvbufErrors) instead of answering each one with an ICMP port
  # unreachable (rate-limited, but its route lookups ran for every frame and
  # cost the thread that delivers to B -- our worker, OVS's PMD, or the
  # sender's softirq for the bridge -- about a fifth of its time). At the
  # end it drains what its buffer holds and prints that count.
  # Received = RcvbufErrors (delta) + drained.
  ip netns exec "$NS_B" timeout $(( PPS_T + 10 )) python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.0.3", 5001))
print("bound", flush=True)
time.sleep(float(sys.argv[1]))
s.setblocking(False)
n = 0
while True:
    try:
        s.recv(2048)
        n += 1
    except BlockingIOError:
        break
print("drained", n, flush=True)' $(( PPS_T + 2 )) > "$TMP/sink-$s.log" 2>&1 &
  local sink=$! i
  AUX_PIDS="$AUX_PIDS $sink"
  for i in $(seq 1 50); do grep -q bound "$TMP/sink-$s.log" 2>/dev/null && break; sleep 0.1; done
  grep -q bound "$TMP/sink-$s.log" || note "$s: UDP sink in B did not start: $(cat "$TMP/sink-$s.log")"
  r0=$(udp_rcvbuf_errors "$NS_B"); f0=$(ip netns exec "$NS_B" cat $rx)
  t0=$(ip netns exec "$NS_A" cat $tx); d0=$(ip netns exec "$NS_A" cat $txd)
  w0=$(date +%s.%N)
  ip netns exec "$NS_A" timeout -s INT "$PPS_T" trafgen -q -i "$cfg" -o "$DEV_A" -P 1 > "$TMP/trafgen-$s.log" 2>&1
  local rc=$?
  w1=$(date +%s.%N)
  t1=$(ip netns exec "$NS_A" cat $tx); d1=$(ip netns exec "$NS_A" cat $txd)
  wait $sink 2>/dev/null   # wakes 2 s after trafgen stops: the switch has drained its queues
  r1=$(udp_rcvbuf_errors "$NS_B"); f1=$(ip netns exec "$NS_B" cat $rx)
  q=$(awk '/^drained/{print $2}' "$TMP/sink-$s.log")
  [ -n "$q" ] || { note "$s: UDP sink in B did not report: $(tail -2 "$TMP/sink-$s.log" | tr '\n' ' ')"; q=0; }
  r1=$(( r1 + q ))
  [ $rc = 0 ] || [ $rc = 124 ] || note "$s: trafgen exited $rc: $(tail -3 "$TMP/trafgen-$s.log" | tr '\n' ' ')"
  python3 "$HERE/report.py" pps "$r0" "$r1" "$t0" "$t1" "$d0" "$d1" "$w0" "$w1" "$f0" "$f1" | while read -r k v; do put "$s" "$k" "$v"; done
}

m_uso() {  # m_uso SETUP: datagrams/s B receives from a UDP GSO sender in A
  local s=$1 out=$TMP/uso-$1.txt
  # The receiver asks for UDP_GRO (as QUIC servers do) and counts bytes
  # until the sender has been quiet for 2 s; datagrams = bytes / 1200.
  ip netns exec "$NS_B" timeout $(( USO_T + 15 )) python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setsockopt(17, 104, 1)  # UDP_GRO
s.bind(("10.77.0.3", 5002))
s.settimeout(2)
print("bound", flush=True)
total, first, last = 0, None, None
try:
    while True:
        total += len(s.recv(65536))
        last = time.monotonic()
        first = first or last
except socket.timeout:
    pass
dur = last - first if first and last > first else 0
print("uso_dps %.0f" % (total / 1200 / dur if dur else 0))
print("uso_rx_datagrams %d" % (total // 1200))' > "$out" 2>&1 &
  local rcv=$! i
  AUX_PIDS="$AUX_PIDS $rcv"
  for i in $(seq 1 50); do grep -q bound "$out" 2>/dev/null && break; sleep 0.1; done
  ip netns exec "$NS_A" timeout $(( USO_T + 10 )) python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1200)  # UDP_SEGMENT
burst = bytes(1200 * 40)
end, n = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    try:
        s.sendto(burst, ("10.77.0.3", 5002))
        n += 40
    except OSError:
        pass
print(n)' "$USO_T" > "$TMP/uso-send-$s.txt" 2>&1 || note "$s: UDP GSO sender failed: $(tail -1 "$TMP/uso-send-$s.txt")"
  wait $rcv 2>/dev/null
  if grep -q '^uso_dps' "$out"; then
    grep '^uso_' "$out" | while read -r k v; do put "$s" "$k" "$v"; done
    put "$s" uso_tx_datagrams "$(tail -1 "$TMP/uso-send-$s.txt")"
  else
    note "$s: UDP GSO receiver in B did not report: $(tail -2 "$out" | tr '\n' ' ')"; put "$s" uso_dps err
  fi
}

run_setup() {  # run_setup KEY LABEL UPCMD...
  local s=$1; shift
  log "=== $s: setting up"
  if ! "$@"; then note "$s: setup failed"; teardown; return 1; fi
  if ! timeout 5 ip netns exec "$NS_A" ping -n -c 3 -i 0.2 -W 1 10.77.0.3 >/dev/null 2>&1; then
    note "$s: A cannot ping B after setup"
  fi
  log "$s: ping"; m_ping "$s"; sy_alive_check "$s" ping
  log "$s: iperf3 1 stream"; m_iperf "$s" 1; sy_alive_check "$s" "iperf3 -P 1"
  log "$s: iperf3 4 streams"; m_iperf "$s" 4; sy_alive_check "$s" "iperf3 -P 4"
  sy_stats_save "$s" tcp
  log "$s: trafgen 64-byte UDP"; m_pps "$s"; sy_alive_check "$s" trafgen
  log "$s: UDP GSO sender"; m_uso "$s"; sy_alive_check "$s" "UDP GSO"
  sy_stats_save "$s" end
  if [ -n "$SY_PID" ]; then
    python3 "$HERE/report.py" sy-drops "$s" "$SY_DIR/stats0.json" "$TMP/stats-$s-tcp.json" "$TMP/stats-$s-end.json" >> "$NOTES"
  fi
  log "$s: teardown"; teardown
}

# ---------------------------------------------------------------- main
install_deps iperf3:iperf3 ping:iputils-ping trafgen:netsniff-ng ovs-vswitchd:openvswitch-switch python3:python3
[ -f /usr/share/openvswitch/vswitch.ovsschema ] || note "Open vSwitch's schema /usr/share/openvswitch/vswitch.ovsschema is missing: reinstall openvswitch-switch"
case ",$ONLY," in *,sy1,*|*,sy2,*) find_bin ;; esac
case ",$ONLY," in *,fwd,*) find_fwd_bin ;; esac
modprobe tun 2>/dev/null; modprobe bridge 2>/dev/null; modprobe openvswitch 2>/dev/null
SETUPS=""
for s in ${ONLY//,/ }; do
  case $s in
    sy1) run_setup sy1 up_sy 1 ;;
    sy2) run_setup sy2 up_sy 2 ;;
    fwd) run_setup fwd up_fwd ;;
    kbridge) run_setup kbridge up_kbridge ;;
    ovs) run_setup ovs up_ovs ;;
    *) echo "unknown setup $s" >&2; continue ;;
  esac
  SETUPS="$SETUPS $s"
done
T_END=$(date +%s)

VER=$("$BIN" --version 2>/dev/null || echo unknown)
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 "$HERE/report.py" table "$RES" "$NOTES" \
  --setups "${SETUPS# }" --cmd "$CMDLINE" --nproc "$(nproc)" --kernel "$(uname -sr)" \
  --date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" --elapsed $(( T_END - T_START )) \
  --params "iperf3 -t $IPERF_T; trafgen ${PPS_T} s; ping -i 0.01 -c $PING_N; Switchyard --busy-poll-us $BUSY_POLL_US ${SY_DAEMON_ARGS:-}" \
  --load "$LOAD0" --version "$VER (git $GIT)" --ovs "$(ovs-vswitchd --version 2>/dev/null | head -1)" \
  | tee "$HERE/last-run.txt"
