#!/bin/bash
# Overlay throughput across two hosts: Switchyard's VXLAN overlay vs two Linux
# bridges joined by kernel vxlan devices, in the same namespace topology,
# measured in the same run with iperf3 TCP.
#
# Usage (as root):  tools/bench/overlay.sh [--quick] [--time S] [--rounds N] [--streams LIST]
#                                          [--only kernel,static,etcd] [--workers N]
#                                          [--bin PATH] [--no-build]
#   --quick        iperf3 -t 2, 1 round, 1 stream (default: -t 5, 3 rounds, 1 and 4 streams)
#   --time S       iperf3 seconds per measurement
#   --rounds N     repeat every measurement N times (setups alternating); the table shows the median
#   --streams LIST comma-separated iperf3 -P values (default 1,4)
#   --only LIST    setups to measure (default: all three)
#   --workers N    Switchyard data-plane workers per daemon (default 2)
#   --busy-poll-us US  passed to each Switchyard daemon (default 50, the daemon's own default)
#   --bin PATH     Switchyard binary (default: cargo build --release, then
#                  ${CARGO_TARGET_DIR:-REPO/target}/release/switchyard)
#
# Topology, built once per setup in namespaces of its own (syob-SUF-SETUP-*):
#   underlay   namespace "ul" with a Linux bridge, 10.200.0.254/24; hosts "h0"
#              and "h1" on it by veth (ul0: 10.200.0.1/24 and .2/24, MTU 1500)
#   sandboxes  namespaces "s0" on h0 and "s1" on h1, 10.77.0.0/24, MTU 1450 inside
#   kernel     in each host: bridge br0, vxlan vx0 (VNI 4242, dstport 4789,
#              nolearning, MTU 1450, all-zeros FDB entry to the other host),
#              a veth pair to the sandbox (10.77.0.10 and .11)
#   static     in each host a Switchyard daemon (root, --advertise its ul0
#              address, --peer the other), network `ovl` (--driver overlay
#              --vni 4242 --subnet 10.77.0.0/24) created on both, each sandbox
#              attached with `switchyard connect --netns`
#   etcd       like static, but the daemons share an etcd 3.4 server in the
#              underlay namespace (--cluster-store etcd://10.200.0.254:2379)
#              instead of --peer, and `ovl` is created on h0 only
# Measurement: iperf3 server in s1, client in s0 (data flows h0 -> h1), for each
# stream count; the setups run back to back in each round so their figures
# share the machine's moment. Target: Switchyard >= 0.5x the kernel. A setup
# that cannot be built or measured shows "fail: reason"; the rest still runs.
# Traffic stays in the namespaces made here; everything (namespaces,
# processes, temp dir) is removed on exit, also on failure or Ctrl-C. Output
# is also saved to tools/bench/overlay-last-run.txt.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CMDLINE="$0 $*"
QUICK=0; T=""; ROUNDS=""; STREAMS=""; ONLY="kernel,static,etcd"; WORKERS=2; BUSY_POLL_US=50; BIN=""; BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --time) T=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --busy-poll-us) BUSY_POLL_US=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n 2,38p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then T=${T:-2}; ROUNDS=${ROUNDS:-1}; STREAMS=${STREAMS:-1}; else T=${T:-5}; ROUNDS=${ROUNDS:-3}; STREAMS=${STREAMS:-1,4}; fi
STREAMS=${STREAMS//,/ }
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, veth, bridges, vxlan)" >&2; exit 1; }

SUF=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
PFX=syob-$SUF
TMP=$(mktemp -d /tmp/syob-XXXXXX)
RES=$TMP/results.tsv; : > "$RES"
NOTES=$TMP/notes.txt; : > "$NOTES"
PIDS=""            # long-lived processes we started (stopped in reverse order on exit)
NSS=""             # namespaces we made
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
VNI=4242; MTU=1450; UL_IP=10.200.0.254; ETCD_PORT=2379
# shellcheck source=tools/bench/lib.sh
. "$HERE/lib.sh"

cleanup() {
  set +e
  local p rev="" n
  for p in $PIDS; do rev="$p $rev"; done
  for p in $rev; do stop_pid "$p"; done
  for n in $NSS; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# wait_listen NS PORT: wait up to 10 s for a TCP listener on PORT in namespace NS
wait_listen() {
  local i
  for i in $(seq 1 100); do
    [ -n "$(ip netns exec "$1" ss -Hltn "( sport = :$2 )" 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  return 1
}

# wait_ping NS IP: wait up to 10 s for IP to answer a ping from namespace NS
wait_ping() {
  local i
  for i in $(seq 1 10); do
    ip netns exec "$1" ping -c1 -W1 "$2" >/dev/null 2>&1 && return 0
  done
  return 1
}

# ---------------------------------------------------------------- topology
# underlay SETUP: namespaces PFX-SETUP-{ul,h0,h1,s0,s1}, the bridge and the veth underlay
underlay() {
  local s=$PFX-$1 i
  for n in ul h0 h1 s0 s1; do
    ip netns add "$s-$n" || return 1
    NSS="$NSS $s-$n"
    ip -n "$s-$n" link set lo up || return 1
  done
  ip -n "$s-ul" link add br0 type bridge || return 1
  ip -n "$s-ul" addr add "$UL_IP/24" dev br0 || return 1
  ip -n "$s-ul" link set br0 up || return 1
  for i in 0 1; do
    ip -n "$s-ul" link add "p$i" type veth peer name ul0 netns "$s-h$i" || return 1
    ip -n "$s-ul" link set "p$i" master br0 up || return 1
    ip -n "$s-h$i" addr add "10.200.0.$((i + 1))/24" dev ul0 || return 1
    ip -n "$s-h$i" link set ul0 up || return 1
  done
  wait_ping "$s-h0" 10.200.0.2 || return 1
}

up_kernel() {
  local s=$PFX-kernel i
  underlay kernel || { kernel_ERR="underlay"; return 1; }
  for i in 0 1; do
    local h=$s-h$i other=10.200.0.$((2 - i))
    ip -n "$h" link add vx0 type vxlan id "$VNI" local "10.200.0.$((i + 1))" dstport 4789 nolearning || { kernel_ERR="vxlan device"; return 1; }
    ip -n "$h" link set vx0 mtu "$MTU" || return 1
    bridge -n "$h" fdb append 00:00:00:00:00:00 dev vx0 dst "$other" || { kernel_ERR="fdb"; return 1; }
    ip -n "$h" link add br0 type bridge || return 1
    ip -n "$h" link set vx0 master br0 up || return 1
    ip -n "$h" link add sb0 mtu "$MTU" type veth peer name eth0 netns "$s-s$i" || return 1
    ip -n "$h" link set sb0 master br0 up || return 1
    ip -n "$h" link set br0 up || return 1
    ip -n "$s-s$i" addr add "10.77.0.$((10 + i))/24" dev eth0 || return 1
    ip -n "$s-s$i" link set eth0 up || return 1
  done
  kernel_SERVER=10.77.0.11; kernel_CPU=""
  wait_ping "$s-s0" "$kernel_SERVER" || { kernel_ERR="no ping across the kernel overlay"; return 1; }
}

# sy_daemon SETUP I ARGS...: Switchyard daemon in host I of SETUP; sets DPID
sy_daemon() {
  local setup=$1 i=$2; shift 2
  local s=$PFX-$setup sock=$TMP/$setup-h$i.sock k
  ip netns exec "$s-h$i" "$BIN" --socket "$sock" daemon --state-dir "$TMP/$setup-h$i-state" \
    --workers "$WORKERS" --busy-poll-us "$BUSY_POLL_US" --advertise "10.200.0.$((i + 1))" "$@" </dev/null >"$TMP/$setup-h$i.log" 2>&1 &
  DPID=$!; PIDS="$PIDS $DPID"
  for k in $(seq 1 100); do
    [ -S "$sock" ] && "$BIN" --socket "$sock" network ls >/dev/null 2>&1 && return 0
    kill -0 "$DPID" 2>/dev/null || { ERR="daemon on h$i exited: $(tail -1 "$TMP/$setup-h$i.log")"; return 1; }
    sleep 0.1
  done
  ERR="daemon on h$i did not answer in 10 s"; return 1
}

sy() { local setup=$1 i=$2; shift 2; timeout 30 "$BIN" --socket "$TMP/$setup-h$i.sock" "$@"; }

# sy_attach SETUP: connect s0 to h0 and s1 to h1; sets <setup>_SERVER (s1's address)
sy_attach() {
  local setup=$1 s=$PFX-$1 i out ip1=""
  for i in 0 1; do
    out=$(sy "$setup" "$i" connect ovl --netns "/run/netns/$s-s$i" --name "s$i" 2>&1) || { ERR="connect s$i: $(echo "$out" | tail -1)"; return 1; }
    [ "$i" = 1 ] && ip1=$(echo "$out" | sed -n 's/^connected .* (\([^,]*\), \([0-9.]*\), .*/\2/p')
  done
  [ -n "$ip1" ] || { ERR="no address in: $out"; return 1; }
  eval "${setup}_SERVER=$ip1"
  wait_ping "$s-s0" "$ip1" || { ERR="no ping across the Switchyard overlay"; return 1; }
}

up_static() {
  local d0 d1
  ERR=""
  underlay static || { static_ERR="underlay"; return 1; }
  sy_daemon static 0 --peer 10.200.0.2 || { static_ERR=$ERR; return 1; }; d0=$DPID
  sy_daemon static 1 --peer 10.200.0.1 || { static_ERR=$ERR; return 1; }; d1=$DPID
  static_CPU="$d0 $d1"
  for i in 0 1; do
    ERR=$(sy static "$i" network create ovl --driver overlay --vni "$VNI" --subnet 10.77.0.0/24 2>&1) \
      || { static_ERR="network create on h$i: $(echo "$ERR" | tail -1)"; return 1; }
  done
  sy_attach static || { static_ERR=$ERR; return 1; }
}

up_etcd() {
  local s=$PFX-etcd d0 d1 k url=etcd://$UL_IP:$ETCD_PORT
  ERR=""
  underlay etcd || { etcd_ERR="underlay"; return 1; }
  ip netns exec "$s-ul" etcd --name sy-bench --data-dir "$TMP/etcd-data" \
    --listen-client-urls "http://$UL_IP:$ETCD_PORT" --advertise-client-urls "http://$UL_IP:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster sy-bench=http://127.0.0.1:2380 </dev/null >"$TMP/etcd.log" 2>&1 &
  PIDS="$PIDS $!"
  for k in $(seq 1 100); do
    ip netns exec "$s-h0" curl -sf -m 1 "http://$UL_IP:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' && break
    [ "$k" = 100 ] && { etcd_ERR="etcd not healthy in 10 s: $(tail -1 "$TMP/etcd.log")"; return 1; }
    sleep 0.1
  done
  sy_daemon etcd 0 --cluster-store "$url" || { etcd_ERR=$ERR; return 1; }; d0=$DPID
  sy_daemon etcd 1 --cluster-store "$url" || { etcd_ERR=$ERR; return 1; }; d1=$DPID
  etcd_CPU="$d0 $d1"
  ERR=$(sy etcd 0 network create ovl --driver overlay --subnet 10.77.0.0/24 2>&1) \
    || { etcd_ERR="network create: $(echo "$ERR" | tail -1)"; return 1; }
  for k in $(seq 1 50); do
    sy etcd 1 network ls 2>/dev/null | grep -q '^ovl ' && break
    [ "$k" = 50 ] && { etcd_ERR="network ovl not on h1 after 5 s"; return 1; }
    sleep 0.1
  done
  sy_attach etcd || { etcd_ERR=$ERR; return 1; }
}

# ---------------------------------------------------------------- measurement
put() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES"; }  # setup streams round status value cpu_ticks retransmits

ticks_of() { local p t=0; for p in $1; do t=$(( t + $(cpu_ticks "$p") )); done; echo $t; }

# measure SETUP STREAMS ROUND
measure() {
  local setup=$1 p=$2 round=$3 s=$PFX-$1 err server cpu srv out r c0 c1 g
  eval "err=\${${setup}_ERR:-}; server=\${${setup}_SERVER:-}; cpu=\${${setup}_CPU:-}"
  if [ -n "$err" ]; then put "$setup" "$p" "$round" fail "$err" 0 -; return 0; fi
  out=$TMP/iperf-$setup-$p-$round.json
  ip netns exec "$s-s1" iperf3 -s -1 -B "$server" </dev/null >"$TMP/srv.log" 2>&1 &
  srv=$!
  wait_listen "$s-s1" 5201 || { stop_pid "$srv"; put "$setup" "$p" "$round" fail "iperf3 server did not start" 0 -; return 0; }
  c0=$(ticks_of "$cpu")
  timeout $((T + 30)) ip netns exec "$s-s0" iperf3 -c "$server" -t "$T" -P "$p" -J --connect-timeout 3000 \
    </dev/null >"$out" 2>"$out.err" || true
  c1=$(ticks_of "$cpu")
  stop_pid "$srv"
  [ -s "$out" ] || cp "$out.err" "$out"
  r=$(iperf3_result "$out")
  case $r in
    OK*) r=${r#OK }; g=${r%% *}
         put "$setup" "$p" "$round" ok "$g" $((c1 - c0)) "${r#* }"
         log "$setup -P $p round $round: $g Gbit/s (${r#* } retransmits)" ;;
    *) put "$setup" "$p" "$round" fail "${r#ERR }" 0 -; log "$setup -P $p round $round: fail: ${r#ERR }" ;;
  esac
}

# ---------------------------------------------------------------- main
DEPS="iperf3:iperf3 ip:iproute2 bridge:iproute2 ss:iproute2 python3:python3 curl:curl"
want etcd && DEPS="$DEPS etcd:etcd-server"
install_deps $DEPS
SETUPS=""
for t in kernel static etcd; do want "$t" && SETUPS="$SETUPS $t"; done
[ -n "$SETUPS" ] || die "--only names none of kernel, static, etcd"
if want static || want etcd; then find_bin; fi
for t in $SETUPS; do
  log "setting up $t"
  eval "${t}_ERR=''"
  "up_$t" || { eval "[ -n \"\${${t}_ERR}\" ] || ${t}_ERR='set-up failed'"; log "$t: $(eval echo "\${${t}_ERR}")"; }
done
for r in $(seq 1 "$ROUNDS"); do
  for p in $STREAMS; do
    for t in $SETUPS; do measure "$t" "$p" "$r"; done
  done
done
T_END=$(date +%s)

SY_VER=-; GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$BIN" ] && SY_VER=$("$BIN" --version 2>/dev/null || echo unknown)
IPERF_VER=$(iperf3 --version 2>/dev/null | head -1 | awk '{print $2}')
ETCD_VER=$(etcd --version 2>/dev/null | head -1 | awk '{print $3}')

python3 - "$RES" "$NOTES" "$(getconf CLK_TCK)" "$SETUPS" <<EOF | tee "$HERE/overlay-last-run.txt"
import statistics, sys
res, notes, hz, setups = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
print("Overlay across two hosts: Switchyard VXLAN vs kernel bridges + kernel vxlan (iperf3 TCP, Gbit/s)")
print("command:   $CMDLINE")
print("date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $(uname -sr), load before $LOAD0, took $(( T_END - T_START )) s")
print("tools:     Switchyard $SY_VER (git $GIT, $WORKERS workers per daemon, busy poll $BUSY_POLL_US us); etcd ${ETCD_VER:-?}; iperf3 $IPERF_VER -t $T, $ROUNDS round(s)")
print("topology:  2 host namespaces on a bridged veth underlay (MTU 1500), VNI $VNI, MTU $MTU inside; data h0 -> h1")
print()
R = {}
for line in open(res):
    setup, p, rnd, st, val, ticks, retr = line.rstrip("\n").split("\t")
    R.setdefault((setup, int(p)), []).append((st, val, int(ticks), retr))
def gbps(k):
    ok = [float(v) for st, v, _, _ in R.get(k, []) if st == "ok"]
    return statistics.median(ok) if ok else None
def cell(k):
    rs = R.get(k)
    if rs is None: return "-"
    ok = [float(v) for st, v, _, _ in rs if st == "ok"]
    fails = [v for st, v, _, _ in rs if st != "ok"]
    if not ok: return "fail: " + fails[0]
    s = f"{statistics.median(ok):.2f}"
    if len(ok) > 1: s += f" ({min(ok):.2f}-{max(ok):.2f})"
    if fails: s += f" [{len(fails)} failed]"
    return s
label = {"kernel": "kernel bridge + vxlan", "static": "Switchyard, static peers", "etcd": "Switchyard, etcd"}
hdr = ["setup", "streams", "Gbit/s", "ratio vs kernel", "target >= 0.5x"]
rows, verdicts = [], []
for p in sorted({k[1] for k in R}):
    base = gbps(("kernel", p))
    for s in setups:
        row = [label[s], str(p), cell((s, p))]
        g = gbps((s, p))
        if s == "kernel":
            row += ["1.00x" if g else "n/a", ""]
        elif g is not None and base:
            ratio = g / base
            row += [f"{ratio:.2f}x", "met" if ratio >= 0.5 else "NOT met"]
            verdicts.append((f"{label[s]}, {p} stream(s)", ratio))
        else:
            row += ["n/a", "not measured"]
        rows.append(row)
if rows:
    w = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("-+-".join("-" * x for x in w))
    for r in rows: print(" | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
print()
for name, ratio in verdicts:
    print(f"target met? {name}: {'yes' if ratio >= 0.5 else 'NO'} ({ratio:.2f}x the kernel, target 0.5x)")
if not verdicts:
    print("target met? not measurable in this run (no Switchyard figures or no kernel figures)")
extra = []
for (s, p), rs in sorted(R.items()):
    ok = [(float(v), tk, rt) for st, v, tk, rt in rs if st == "ok"]
    if not ok: continue
    line = f"{label[s]}, {p} stream(s): TCP retransmits {'/'.join(rt for _, _, rt in ok)}"
    if s != "kernel" and all(tk for _, tk, _ in ok):
        cpu = sum(tk for _, tk, _ in ok) / hz / (sum(v for v, _, _ in ok) * $T)
        line += f", both daemons {cpu:.3f} CPU-s per Gbit"
    extra.append(line)
if extra:
    print("per setup: the iperf3 sender's TCP retransmits per round, and the Switchyard daemons' CPU time per Gbit moved:")
    for e in extra: print("  " + e)
for n in open(notes):
    print("NOTE: " + n.rstrip())
EOF
