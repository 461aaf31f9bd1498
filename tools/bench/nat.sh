#!/bin/bash
# Outbound NAT and published-port throughput: Switchyard vs pasta vs slirp4netns,
# all measured in the same run, with iperf3 TCP (one stream).
#
# Usage (as root):  tools/bench/nat.sh [--quick] [--time S] [--rounds N] [--mtu LIST]
#                                      [--only pasta,slirp4netns,switchyard] [--workers N]
#                                      [--user NAME] [--bin PATH] [--no-build]
#   --quick      iperf3 -t 2, MTU 65520 only, 1 round (default: -t 5, MTU 1500 and 65520, 3 rounds)
#   --time S     iperf3 seconds per measurement
#   --rounds N   repeat every measurement N times (tools alternating); the table shows the median
#   --mtu LIST   comma-separated MTUs (default 1500,65520)
#   --only LIST  tools to measure (default: all three)
#   --workers N  Switchyard data-plane workers (default 2)
#   --user NAME  the unprivileged user every tool runs as (default sytest)
#   --bin PATH   Switchyard binary (default: cargo build --release, then
#                ${CARGO_TARGET_DIR:-REPO/target}/release/switchyard)
#
# Every tool runs rootless, as --user: pasta and slirp4netns each attach to a
# sandbox of their own (a user + network namespace made by `unshare -Urn` as that
# user, holding `sleep`); Switchyard's daemon runs as that user with its own state
# dir and socket, and its sandboxes come from `switchyard run`. Per MTU all three
# are set up at once and each case runs the tools back to back, so their figures
# share the machine's moment. Cases (iperf3 single stream, data flows client -> server):
#   outbound    server on the host's 127.0.0.1, client in the sandbox connecting to
#               the tool's host-loopback address: pasta's gateway (mapped to the
#               host by default), slirp4netns's 10.0.2.2, Switchyard's gateway on a
#               network created with --host-loopback
#   pub-lo      server in the sandbox on 5201, published on the host's HOSTPORT
#               (all addresses); client on the host: iperf3 -c 127.0.0.1 -p HOSTPORT
#   pub-ns      same server; client in a root-owned namespace synat-c-SUF linked to
#               the host by a veth pair (10.252.N.1/30 host side, .2 namespace side):
#               iperf3 -c 10.252.N.1 -p HOSTPORT
# A tool or case that fails shows "fail: reason" in its cell; the rest still runs.
# Targets: outbound >= 2x the faster of pasta and slirp4netns; pub-lo and pub-ns
# >= 1x pasta; each at the same MTU. Traffic stays on loopback and in the
# namespaces made here; everything (namespaces, veth, processes, temp dir) is
# removed on exit, also on failure or Ctrl-C. Output is also saved to
# tools/bench/nat-last-run.txt.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CMDLINE="$0 $*"
QUICK=0; T=""; ROUNDS=""; MTUS=""; ONLY="pasta,slirp4netns,switchyard"; WORKERS=2
RUSER=sytest; BIN=""; BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --time) T=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --mtu) MTUS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --user) RUSER=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n 2,38p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then T=${T:-2}; MTUS=${MTUS:-65520}; ROUNDS=${ROUNDS:-1}; else T=${T:-5}; MTUS=${MTUS:-1500,65520}; ROUNDS=${ROUNDS:-3}; fi
MTUS=${MTUS//,/ }
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, veth, switching to the unprivileged user)" >&2; exit 1; }
RUID=$(id -u "$RUSER" 2>/dev/null) || { echo "no user $RUSER (tools/test.sh creates sytest)" >&2; exit 1; }
RGID=$(id -g "$RUSER")

SUF=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
TMP=$(mktemp -d /tmp/synat-XXXXXX)
chmod 755 "$TMP"
NS_C=synat-c-$SUF; VETH=synh$SUF
RES=$TMP/results.tsv; : > "$RES"
NOTES=$TMP/notes.txt; : > "$NOTES"
# shellcheck source=tools/bench/lib.sh
. "$HERE/lib.sh"
PIDS=""            # long-lived processes we started (stopped in reverse order on exit)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)

CASE_PIDS=""  # the servers of the case being measured (stopped on exit too)

stop_all() {  # stop every tracked process, newest first
  local p rev=""
  for p in $PIDS; do rev="$p $rev"; done
  for p in $rev; do stop_pid "$p"; done
  PIDS=""
}

cleanup() {
  set +e
  for p in $CASE_PIDS; do stop_pid "$p"; done
  stop_all
  ip netns del "$NS_C" 2>/dev/null
  ip link del "$VETH" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# "${AS_USER[@]}" CMD...: run CMD as the unprivileged user with a clean
# environment, in the same process (setpriv and env exec), so that $! of a
# backgrounded one is CMD's own PID.
AS_USER=(setpriv --reuid="$RUID" --regid="$RGID" --init-groups --
         env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME="$TMP" LC_ALL=C)
as_user() { "${AS_USER[@]}" "$@"; }
# in_sb PID CMD...: run CMD as the user inside sandbox PID's user + network namespace
in_sb() { local p=$1; shift; "${AS_USER[@]}" nsenter -t "$p" -U -n --preserve-credentials "$@"; }

# free_port: sets PORT to a TCP port nothing uses (random, 20000-59999)
USED_PORTS=""; PORT=""
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$(( 20000 + $(od -An -tu2 -N2 /dev/urandom | tr -d ' ') % 40000 ))
    case " $USED_PORTS " in *" $p "*) continue ;; esac
    [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] || continue
    USED_PORTS="$USED_PORTS $p"; PORT=$p; return 0
  done
  return 1
}

# wait_listen PORT [PID]: wait up to 10 s for a TCP listener on PORT (in PID's netns, else the host's)
wait_listen() {
  local port=$1 pid=${2:-} i
  for i in $(seq 1 100); do
    if [ -n "$pid" ]; then
      [ -n "$(nsenter -t "$pid" -n ss -Hltn "( sport = :$port )" 2>/dev/null)" ] && return 0
      kill -0 "$pid" 2>/dev/null || return 1
    else
      [ -n "$(ss -Hltn "( sport = :$port )" 2>/dev/null)" ] && return 0
    fi
    sleep 0.1
  done
  return 1
}

# descendant PID NAME: first descendant of PID whose command name is NAME
descendant() {
  local p=$1 name=$2 c d
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
    [ "$(cat /proc/"$c"/comm 2>/dev/null)" = "$name" ] && { echo "$c"; return 0; }
    d=$(descendant "$c" "$name") && { echo "$d"; return 0; }
  done
  return 1
}

# sandbox: start `sleep` in a new user + network namespace owned by the user;
# sets SB to its PID once the namespace is in place.
SB=""
sandbox() {
  local p i self
  "${AS_USER[@]}" unshare -Urn sleep infinity </dev/null >/dev/null 2>&1 &
  p=$!; PIDS="$PIDS $p"
  self=$(readlink /proc/self/ns/net)
  for i in $(seq 1 50); do
    if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = sleep ] && [ "$(readlink /proc/"$p"/ns/net 2>/dev/null)" != "$self" ]; then
      SB=$p; return 0
    fi
    sleep 0.1
  done
  return 1
}

# link_mtu PID DEV: DEV's MTU in PID's network namespace (not from /sys: that is the host's)
link_mtu() { nsenter -t "$1" -n ip -o link show dev "$2" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'; }

# ---------------------------------------------------------------- client namespace (case pub-ns)
up_client_ns() {
  local n
  for n in $(seq 1 200); do
    C_NET=$(( ($(od -An -tu2 -N2 /dev/urandom | tr -d ' ') % 254) + 1 ))
    ip -4 route show table all 2>/dev/null | grep -q "10\.252\.$C_NET\." || break
  done
  C_HOST=10.252.$C_NET.1; C_PEER=10.252.$C_NET.2
  ip netns add "$NS_C" || return 1
  ip -n "$NS_C" link set lo up || return 1
  ip link add "$VETH" type veth peer name eth0 netns "$NS_C" || return 1
  ip addr add "$C_HOST/30" dev "$VETH" || return 1
  ip link set "$VETH" up || return 1
  ip -n "$NS_C" addr add "$C_PEER/30" dev eth0 || return 1
  ip -n "$NS_C" link set eth0 up || return 1
  for n in $(seq 1 50); do
    ip netns exec "$NS_C" ping -c1 -W1 "$C_HOST" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- per-tool set-up (per MTU)
# Each up_* sets, for its tool: <tool>_SB (sandbox PID, or "" for Switchyard),
# <tool>_GW (host-loopback address seen from the sandbox), <tool>_HP (published
# host port), <tool>_CPU (process whose CPU time is the tool's), <tool>_MTU
# (the MTU actually used), <tool>_ERR (why the tool is unavailable, "" if up).

up_pasta() {
  local mtu=$1 sb gw i
  pasta_ERR=""; pasta_MTU=$mtu
  free_port || { pasta_ERR="no free port"; return 1; }; pasta_HP=$PORT
  sandbox || { pasta_ERR="sandbox did not start"; return 1; }
  sb=$SB; pasta_SB=$sb
  # -f: stay in the foreground (so we hold its PID); -T/-U none: no forwarding
  # from the sandbox's own loopback, so outbound goes through the tap and gateway.
  "${AS_USER[@]}" pasta -f -q --config-net -m "$mtu" -t "$pasta_HP:5201" -u none -T none -U none "$sb" \
    </dev/null >"$TMP/pasta-$mtu.log" 2>&1 &
  pasta_CPU=$!; PIDS="$PIDS $pasta_CPU"
  for i in $(seq 1 50); do
    gw=$(nsenter -t "$sb" -n ip -4 route show default 2>/dev/null | awk '/via/{print $3; exit}')
    [ -n "$gw" ] && break
    kill -0 "$pasta_CPU" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$gw" ] || { pasta_ERR="pasta did not configure the sandbox: $(grep -v syslog "$TMP/pasta-$mtu.log" | tail -2 | tr '\n' ' ')"; return 1; }
  pasta_GW=$gw
  wait_listen "$pasta_HP" || { pasta_ERR="pasta is not listening on $pasta_HP"; return 1; }
  pasta_MTU=$(link_mtu "$sb" "$(nsenter -t "$sb" -n ip -4 route show default | awk '{print $5; exit}')")
}

slirp_api() {  # slirp_api SOCKET JSON: one request to slirp4netns's API socket, prints the reply
  as_user python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode()); s.shutdown(socket.SHUT_WR)
print(s.recv(65536).decode())' "$1" "$2"
}

up_slirp4netns() {
  local mtu=$1 sb i reply
  slirp4netns_ERR=""; slirp4netns_MTU=$mtu; slirp4netns_GW=10.0.2.2
  free_port || { slirp4netns_ERR="no free port"; return 1; }; slirp4netns_HP=$PORT
  sandbox || { slirp4netns_ERR="sandbox did not start"; return 1; }
  sb=$SB; slirp4netns_SB=$sb
  mkdir -p "$TMP/slirp-$mtu"; chown "$RUID:$RGID" "$TMP/slirp-$mtu"
  # host loopback stays reachable at 10.0.2.2 (no --disable-host-loopback)
  "${AS_USER[@]}" slirp4netns --configure --mtu="$mtu" --api-socket "$TMP/slirp-$mtu/api.sock" "$sb" tap0 \
    </dev/null >"$TMP/slirp-$mtu/log" 2>&1 &
  slirp4netns_CPU=$!; PIDS="$PIDS $slirp4netns_CPU"
  for i in $(seq 1 50); do
    [ -S "$TMP/slirp-$mtu/api.sock" ] && nsenter -t "$sb" -n ip -4 -o addr show tap0 2>/dev/null | grep -q inet && break
    kill -0 "$slirp4netns_CPU" 2>/dev/null || break
    sleep 0.1
  done
  [ -S "$TMP/slirp-$mtu/api.sock" ] || { slirp4netns_ERR="slirp4netns did not start: $(tail -2 "$TMP/slirp-$mtu/log" | tr '\n' ' ')"; return 1; }
  reply=$(slirp_api "$TMP/slirp-$mtu/api.sock" \
    "{\"execute\": \"add_hostfwd\", \"arguments\": {\"proto\": \"tcp\", \"host_addr\": \"0.0.0.0\", \"host_port\": $slirp4netns_HP, \"guest_port\": 5201}}" 2>&1) || true
  case $reply in *'"return"'*) ;; *) slirp4netns_ERR="add_hostfwd: $reply"; return 1 ;; esac
  wait_listen "$slirp4netns_HP" || { slirp4netns_ERR="slirp4netns is not listening on $slirp4netns_HP"; return 1; }
  slirp4netns_MTU=$(link_mtu "$sb" tap0)
}

SY_PID=""; SY_DIR=$TMP/sy; SY_SOCK=$TMP/sy/api.sock; SY_NAT=""
sy() { timeout 20 "$BIN" --socket "$SY_SOCK" "$@"; }
sy_user() { as_user timeout 20 "$BIN" --socket "$SY_SOCK" "$@"; }

start_switchyard() {  # the daemon, once for the whole run
  mkdir -p "$SY_DIR/state"; chown -R "$RUID:$RGID" "$SY_DIR"
  "${AS_USER[@]}" "$BIN" --socket "$SY_SOCK" daemon --state-dir "$SY_DIR/state" --workers "$WORKERS" \
    </dev/null >"$SY_DIR/daemon.log" 2>&1 &
  SY_PID=$!; PIDS="$PIDS $SY_PID"
  local i
  for i in $(seq 1 100); do
    [ -S "$SY_SOCK" ] && sy_user network ls >/dev/null 2>&1 && return 0
    kill -0 "$SY_PID" 2>/dev/null || { SY_ERR="daemon exited: $(tail -2 "$SY_DIR/daemon.log" | tr '\n' ' ')"; return 1; }
    sleep 0.1
  done
  SY_ERR="daemon API not up after 10 s"; return 1
}

up_switchyard() {
  local mtu=$1 m err=""
  switchyard_ERR=""; switchyard_SB=""; switchyard_CPU=$SY_PID; switchyard_MTU=""
  [ -n "$SY_ERR" ] && { switchyard_ERR=$SY_ERR; return 1; }
  [ -n "$SY_NAT" ] || { switchyard_ERR="this build has no NAT: 'network create' has no --host-loopback"; return 1; }
  free_port || { switchyard_ERR="no free port"; return 1; }; switchyard_HP=$PORT
  # the highest MTU the daemon accepts, from the one asked for down
  for m in $mtu 65520 65000 65280 16384 9000 1500; do
    [ "$m" -le "$mtu" ] || continue
    if err=$(sy_user network create "synat$mtu" --mtu "$m" $SY_NAT 2>&1); then
      [ "$m" = "$mtu" ] || note "switchyard: MTU $mtu refused ($(echo "$err" | tail -1)); measured at MTU $m"
      switchyard_MTU=$m; break
    fi
    switchyard_ERR="network create --mtu $m: $(echo "$err" | tail -1)"
  done
  [ -n "${switchyard_MTU:-}" ] && [ "$switchyard_MTU" -le "$mtu" ] || return 1
  switchyard_ERR=""
  switchyard_GW=$(sy_user network inspect "synat$mtu" | python3 -c 'import json,sys; print(json.load(sys.stdin)["network"]["gateway4"])') \
    || { switchyard_ERR="network inspect failed"; return 1; }
  switchyard_NET=synat$mtu
}

down_tools() {  # stop this MTU's sandboxes and tools, remove its Switchyard network
  local p keep=""
  for p in $PIDS; do [ "$p" = "$SY_PID" ] && keep=$p || stop_pid "$p"; done
  PIDS=$keep
  [ -n "${switchyard_NET:-}" ] && { sy_user network rm "$switchyard_NET" >/dev/null 2>&1 || true; }
  switchyard_NET=""; switchyard_MTU=""
}

put() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "${RETR:--}" >> "$RES"; }  # mtu case tool round status value cpu_ticks retransmits

# measure MTU CASE TOOL ROUND
measure() {
  local mtu=$1 case=$2 tool=$3 round=$4 sb gw hp cpu err srv="" run="" port out r c0 c1 try g
  RETR=-
  eval "err=\${${tool}_ERR:-}; sb=\${${tool}_SB:-}; gw=\${${tool}_GW:-}; hp=\${${tool}_HP:-}; cpu=\${${tool}_CPU:-}"
  if [ -n "$err" ]; then put "$mtu" "$case" "$tool" "$round" fail "$err" 0; return 0; fi
  out=$TMP/iperf-$mtu-$case-$tool-$round.json
  # the server
  if [ "$case" = outbound ]; then
    free_port || { put "$mtu" "$case" "$tool" "$round" fail "no free port" 0; return 0; }
    port=$PORT
    "${AS_USER[@]}" iperf3 -s -B 127.0.0.1 -p "$port" </dev/null >"$TMP/srv.log" 2>&1 &
    srv=$!; CASE_PIDS=$srv
    wait_listen "$port" || { stop_pid "$srv"; put "$mtu" "$case" "$tool" "$round" fail "host iperf3 server did not start" 0; return 0; }
  elif [ "$tool" = switchyard ]; then
    "${AS_USER[@]}" "$BIN" --socket "$SY_SOCK" run --network "$switchyard_NET" -p "$hp:5201" -- iperf3 -s \
      </dev/null >"$TMP/sy-run.log" 2>&1 &
    run=$!; CASE_PIDS=$run
    local i=0
    until srv=$(descendant "$run" iperf3); do
      i=$((i + 1))
      if [ $i -gt 100 ] || ! kill -0 "$run" 2>/dev/null; then
        stop_pid "$run"
        put "$mtu" "$case" "$tool" "$round" fail "switchyard run: $(tail -1 "$TMP/sy-run.log" 2>/dev/null)" 0; return 0
      fi
      sleep 0.1
    done
    CASE_PIDS="$srv $run"
    wait_listen 5201 "$srv" || { stop_pid "$srv"; stop_pid "$run"; put "$mtu" "$case" "$tool" "$round" fail "iperf3 server in the sandbox did not start" 0; return 0; }
    wait_listen "$hp" || { stop_pid "$srv"; stop_pid "$run"; put "$mtu" "$case" "$tool" "$round" fail "nothing listens on published port $hp" 0; return 0; }
  else
    "${AS_USER[@]}" nsenter -t "$sb" -U -n --preserve-credentials iperf3 -s -p 5201 </dev/null >"$TMP/srv.log" 2>&1 &
    srv=$!; CASE_PIDS=$srv
    wait_listen 5201 "$sb" || { stop_pid "$srv"; put "$mtu" "$case" "$tool" "$round" fail "iperf3 server in the sandbox did not start" 0; return 0; }
  fi
  # the client (a second try if the first could not connect at all)
  for try in 1 2; do
    c0=$(cpu_ticks "$cpu")
    case $case in
      outbound)
        if [ "$tool" = switchyard ]; then
          as_user timeout $((T + 30)) "$BIN" --socket "$SY_SOCK" run --network "$switchyard_NET" -- \
            iperf3 -c "$gw" -p "$port" -t "$T" -J --connect-timeout 3000 </dev/null >"$out" 2>"$out.err" || true
        else
          in_sb "$sb" timeout $((T + 30)) iperf3 -c "$gw" -p "$port" -t "$T" -J --connect-timeout 3000 </dev/null >"$out" 2>"$out.err" || true
        fi ;;
      pub-lo)
        timeout $((T + 30)) iperf3 -c 127.0.0.1 -p "$hp" -t "$T" -J --connect-timeout 3000 </dev/null >"$out" 2>"$out.err" || true ;;
      pub-ns)
        timeout $((T + 30)) ip netns exec "$NS_C" iperf3 -c "$C_HOST" -p "$hp" -t "$T" -J --connect-timeout 3000 </dev/null >"$out" 2>"$out.err" || true ;;
    esac
    c1=$(cpu_ticks "$cpu")
    [ -s "$out" ] || cp "$out.err" "$out"
    r=$(iperf3_result "$out")
    case $r in ERR*connect*|ERR*refused*|ERR*reset*) [ $try = 1 ] && { log "$tool $case MTU $mtu: ${r#ERR } (retrying)"; sleep 1; continue; } ;; esac
    break
  done
  [ -n "$srv" ] && stop_pid "$srv"
  [ -n "$run" ] && stop_pid "$run"
  CASE_PIDS=""
  case $r in
    OK*) r=${r#OK }; g=${r%% *}; RETR=${r#* }
         put "$mtu" "$case" "$tool" "$round" ok "$g" $((c1 - c0))
         log "$tool $case MTU $mtu round $round: $g Gbit/s ($RETR retransmits)" ;;
    *) put "$mtu" "$case" "$tool" "$round" fail "${r#ERR }" 0; log "$tool $case MTU $mtu round $round: fail: ${r#ERR }" ;;
  esac
}

# ---------------------------------------------------------------- main
install_deps pasta:passt slirp4netns:slirp4netns iperf3:iperf3 ip:iproute2 ss:iproute2 \
  nsenter:util-linux setpriv:util-linux python3:python3
modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || die "/dev/net/tun is missing"
chmod 0666 /dev/net/tun   # the rootless tools open it as $RUSER
TOOLS=""
for t in pasta slirp4netns switchyard; do want "$t" && TOOLS="$TOOLS $t"; done
[ -n "$TOOLS" ] || die "--only names none of pasta, slirp4netns, switchyard"
SY_ERR=""
if want switchyard; then
  find_bin
  if "$BIN" network create --help 2>/dev/null | grep -q -- '--host-loopback'; then SY_NAT=--host-loopback; fi
  start_switchyard || log "Switchyard: $SY_ERR"
fi
log "client namespace $NS_C"
up_client_ns || die "client namespace (veth $VETH)"
log "client namespace: host side $C_HOST, namespace side $C_PEER"

for mtu in $MTUS; do
  for t in $TOOLS; do
    log "MTU $mtu: setting up $t"
    "up_$t" "$mtu" || log "$t at MTU $mtu: $(eval echo "\${${t}_ERR}")"
    eval "m=\${${t}_MTU:-}"
    printf '%s\t%s\t%s\n' "$mtu" "$t" "$m" >> "$TMP/mtus.tsv"
  done
  for r in $(seq 1 "$ROUNDS"); do
    for c in outbound pub-lo pub-ns; do
      for t in $TOOLS; do measure "$mtu" "$c" "$t" "$r"; done
    done
  done
  down_tools
done
T_END=$(date +%s)

SY_VER=unknown; GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
want switchyard && SY_VER=$("$BIN" --version 2>/dev/null || echo unknown)
PASTA_VER=$(dpkg-query -W -f '${Version}' passt 2>/dev/null || echo unknown)
SLIRP_VER=$(slirp4netns --version 2>/dev/null | head -1 | awk '{print $3}')
IPERF_VER=$(iperf3 --version 2>/dev/null | head -1 | awk '{print $2}')
touch "$TMP/mtus.tsv"

python3 - "$RES" "$NOTES" "$TMP/mtus.tsv" "$(getconf CLK_TCK)" "$TOOLS" <<EOF | tee "$HERE/nat-last-run.txt"
import statistics, sys
res, notes, mtus_f, hz, tools = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split()
print("Outbound NAT and published ports: Switchyard vs pasta vs slirp4netns (iperf3 TCP, 1 stream, Gbit/s)")
print("command:   $CMDLINE")
print("date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $(uname -sr), load before $LOAD0, took $(( T_END - T_START )) s")
print("tools:     Switchyard $SY_VER (git $GIT, $WORKERS workers); pasta (passt $PASTA_VER); slirp4netns $SLIRP_VER;")
print("           iperf3 $IPERF_VER -t $T, $ROUNDS round(s), tools back to back per case; all tools run as $RUSER")
print("cases:     outbound = sandbox -> host 127.0.0.1 via the tool's host-loopback address;")
print("           pub-lo = host 127.0.0.1 -> published port -> sandbox; pub-ns = client namespace over veth -> published port -> sandbox")
print()
R, RETR = {}, {}
for line in open(res):
    mtu, case, tool, rnd, st, val, ticks, retr = line.rstrip("\n").split("\t")
    R.setdefault((int(mtu), case, tool), []).append((st, val, int(ticks)))
    if st == "ok": RETR.setdefault((int(mtu), case, tool), []).append(retr)
used = {}
for line in open(mtus_f):
    p = line.rstrip("\n").split("\t")
    if len(p) == 3 and p[2]: used[(int(p[0]), p[1])] = int(p[2])
def gbps(k):
    ok = [float(v) for st, v, _ in R.get(k, []) if st == "ok"]
    return statistics.median(ok) if ok else None
def cell(k):
    rs = R.get(k)
    if rs is None: return "-"
    ok = [float(v) for st, v, _ in rs if st == "ok"]
    fails = [v for st, v, _ in rs if st != "ok"]
    if not ok: return "fail: " + fails[0]
    s = f"{statistics.median(ok):.2f}"
    if len(ok) > 1: s += f" ({min(ok):.2f}-{max(ok):.2f})"
    if fails: s += f" [{len(fails)} failed]"
    return s
label = {"outbound": "outbound (sandbox -> host loopback)", "pub-lo": "published, loopback client",
         "pub-ns": "published, client in another netns"}
names = {"pasta": "pasta", "slirp4netns": "slirp4netns", "switchyard": "Switchyard"}
hdr = ["case", "MTU"] + [names[t] for t in tools] + ["ratio", "target"]
rows, verdicts = [], []
mtus = sorted({k[0] for k in R})
for mtu in mtus:
    for case in ("outbound", "pub-lo", "pub-ns"):
        if not any((mtu, case, t) in R for t in tools): continue
        row = [label[case], str(mtu)]
        for t in tools:
            c = cell((mtu, case, t))
            u = used.get((mtu, t))
            if u is not None and u != mtu and not c.startswith("fail"): c += f" (MTU {u})"
            row.append(c)
        sy, pa, sl = gbps((mtu, case, "switchyard")), gbps((mtu, case, "pasta")), gbps((mtu, case, "slirp4netns"))
        if case == "outbound":
            peers = [x for x in (pa, sl) if x is not None]
            base, need, what = (max(peers) if peers else None), 2.0, "the faster peer"
        else:
            base, need, what = pa, 1.0, "pasta"
        if sy is not None and base:
            ratio = sy / base
            row += [f"{ratio:.2f}x vs {what}", f">= {need:g}x: {'met' if ratio >= need else 'NOT met'}"]
            verdicts.append((f"{label[case]}, MTU {mtu}", ratio, need, what))
        else:
            row += ["n/a", f">= {need:g}x vs {what}: not measured"]
        rows.append(row)
if rows:
    w = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("-+-".join("-" * x for x in w))
    for r in rows: print(" | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
print()
for name, ratio, need, what in verdicts:
    print(f"target met? {name}: {'yes' if ratio >= need else 'NO'} ({ratio:.2f}x {what}, target {need:g}x)")
if not verdicts:
    print("target met? not measurable in this run (no Switchyard figures or no peer figures)")
cpu = []
for (mtu, case, tool), rs in sorted(R.items()):
    ok = [(float(v), tk) for st, v, tk in rs if st == "ok" and tk]
    if ok:
        g = sum(v for v, _ in ok) * $T; s = sum(tk for _, tk in ok) / hz
        cpu.append(f"{names[tool]} {case} MTU {mtu}: {s / g:.3f} CPU-s per Gbit, "
                   f"TCP retransmits {'/'.join(RETR.get((mtu, case, tool), []))}")
if cpu:
    print("per tool and case: CPU time of the tool (pasta / slirp4netns process, Switchyard daemon) per Gbit moved,")
    print("and the iperf3 sender's TCP retransmits:")
    for c in cpu: print("  " + c)
for n in open(notes):
    print("NOTE: " + n.rstrip())
EOF
