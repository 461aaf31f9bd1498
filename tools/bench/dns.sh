#!/bin/bash
# DNS query-rate benchmark: Switchyard's gateway DNS vs aardvark-dns (Podman's
# DNS server), both measured in the same run with the same dnsperf settings and
# the same query file.
#
# Usage (as root):  tools/bench/dns.sh [--quick] [--rounds N] [--workers N] [--bin PATH]
#                                      [--no-build] [-c CLIENTS] [-T THREADS] [-q OUTSTANDING] [-Q MAXQPS]
#   --quick      4 s per dnsperf run, 1 round (default: 10 s, 2 rounds)
#   --rounds N   alternate aardvark, Switchyard N times; totals are summed over the rounds
#   --workers N  Switchyard data-plane workers (default 1)
#   --bin PATH   Switchyard binary (default: cargo build --release, then
#                ${CARGO_TARGET_DIR:-REPO/target}/release/switchyard)
#   -c/-T/-q/-Q  dnsperf clients (4), threads (1), outstanding queries (100), qps cap (1000000)
#
# aardvark-dns: a namespace sybd-host-SUF holds a kernel bridge with the gateway
# address 10.89.77.1/24; aardvark-dns runs there on port 53 with a config dir laid
# out as Podman writes it. The client namespace sybd-ac-SUF (10.89.77.2) reaches
# the bridge through a veth pair, as a Podman container does.
# Switchyard: a daemon with its own state dir and socket, network 10.89.78.0/24;
# namespaces sybd-web-SUF (web, alias www) and sybd-db-SUF (db) attached with
# `switchyard connect`, and the client namespace sybd-sc-SUF (10.89.78.2).
# Both servers know the same names (client, web+www, db); dnsperf runs in the
# client namespace and asks for the bare names web, www and db (A records).
# Nothing touches the host's own network namespace; everything is removed on
# exit, also on failure or Ctrl-C. Output is also saved to tools/bench/dns-last-run.txt.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CMDLINE="$0 $*"
QUICK=0; ROUNDS=""; WORKERS=1; BIN=""; BUILD=1
CLIENTS=4; THREADS=1; OUTSTANDING=100; MAXQPS=1000000
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    -c) CLIENTS=$2; shift ;;
    -T) THREADS=$2; shift ;;
    -q) OUTSTANDING=$2; shift ;;
    -Q) MAXQPS=$2; shift ;;
    -h|--help) sed -n 2,27p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then LEN=4; ROUNDS=${ROUNDS:-1}; else LEN=10; ROUNDS=${ROUNDS:-2}; fi
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, bridge, port 53)" >&2; exit 1; }

SUF=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
TMP=$(mktemp -d /tmp/sybd-XXXXXX)
AA_NET=10.89.77; SY_NET=10.89.78
NS_HOST=sybd-host-$SUF; NS_AC=sybd-ac-$SUF
NS_WEB=sybd-web-$SUF; NS_DB=sybd-db-$SUF; NS_SC=sybd-sc-$SUF
BR=sybr$SUF
AA_DIR=$TMP/aardvark; AA_PID=""
SY_DIR=$TMP/sy; SY_SOCK=$TMP/sy/api.sock; SY_PID=""
NOTES=$TMP/notes.txt; : > "$NOTES"
# shellcheck source=tools/bench/lib.sh
. "$HERE/lib.sh"
RES=$TMP/results.tsv; : > "$RES"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)

cleanup() {
  set +e
  # aardvark-dns forks into the background: its pid is in the pid file it
  # writes into the config dir; fall back to our unique config path.
  [ -z "$AA_PID" ] && [ -f "$AA_DIR/aardvark.pid" ] && AA_PID=$(cat "$AA_DIR/aardvark.pid")
  [ -z "$AA_PID" ] && AA_PID=$(pgrep -f -- "--config $AA_DIR " | head -1)
  stop_pid "$AA_PID"
  stop_pid "$SY_PID"
  local n
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -- "^sybd-.*-$SUF\$"); do
    ip netns del "$n" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# DNS probe: prints "RCODE ADDR[,ADDR]" for an A query, or "timeout".
cat > "$TMP/probe.py" <<'EOF'
import random, socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
qid = random.randrange(65536)
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(4):
    s.sendto(q, (server, 53))
    try:
        r, _ = s.recvfrom(4096)
    except socket.timeout:
        continue
    if struct.unpack(">H", r[:2])[0] == qid:
        break
else:
    print("timeout"); sys.exit(0)
flags, qd, an = struct.unpack(">HHH", r[2:8])
def skip(p):
    while True:
        l = r[p]
        if l == 0: return p + 1
        if l & 0xC0 == 0xC0: return p + 2
        p += 1 + l
p = 12
for _ in range(qd): p = skip(p) + 4
addrs = []
for _ in range(an):
    p = skip(p)
    t, c, ttl, rdlen = struct.unpack(">HHIH", r[p:p + 10]); p += 10
    if t == 1 and rdlen == 4: addrs.append(socket.inet_ntoa(r[p:p + 4]))
    p += rdlen
rc = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}.get(flags & 15, str(flags & 15))
print(rc, ",".join(addrs) or "-")
EOF

# check_answers NS SERVER NET: every benchmarked name must resolve to its address
# (waits up to 10 s for the server to come up).
check_answers() {
  local ns=$1 srv=$2 net=$3 name want got i
  for name in web:$net.10 www:$net.10 db:$net.11; do
    want="NOERROR ${name#*:}"; name=${name%%:*}
    for i in $(seq 1 20); do
      got=$(timeout 10 ip netns exec "$ns" python3 "$TMP/probe.py" "$srv" "$name" 2>&1 || true)
      [ "$got" = "$want" ] && break
      sleep 0.5
    done
    [ "$got" = "$want" ] || { log "$srv: '$name' gave '$got', want '$want'"; return 1; }
  done
}

mkns() { ip netns add "$1" && ip -n "$1" link set lo up; }

# ---------------------------------------------------------------- aardvark-dns (as under Podman)
up_aardvark() {
  mkns "$NS_HOST" && mkns "$NS_AC" || return 1
  ip -n "$NS_HOST" link add "$BR" type bridge || return 1
  ip -n "$NS_HOST" addr add $AA_NET.1/24 dev "$BR" || return 1
  ip -n "$NS_HOST" link set "$BR" up || return 1
  ip -n "$NS_HOST" link add veth0 type veth peer name eth0 netns "$NS_AC" || return 1
  ip -n "$NS_HOST" link set veth0 master "$BR" up || return 1
  ip -n "$NS_AC" addr add $AA_NET.2/24 dev eth0 || return 1
  ip -n "$NS_AC" link set eth0 up || return 1
  ip -n "$NS_AC" route add default via $AA_NET.1 || return 1
  # Podman's layout: one file per network; first line the listen (gateway)
  # address(es), then "CONTAINER_ID IPV4 IPV6 NAMES" (IPv6 empty here).
  mkdir -p "$AA_DIR"
  printf '%s\n' "$AA_NET.1" \
    "c11e47000000 $AA_NET.2  client" \
    "0eb000000000 $AA_NET.10  web,www" \
    "0db000000000 $AA_NET.11  db" > "$AA_DIR/sybdnet"
  ip netns exec "$NS_HOST" timeout 20 /usr/lib/podman/aardvark-dns --config "$AA_DIR" -p 53 run \
    > "$TMP/aardvark.log" 2>&1 || { cat "$TMP/aardvark.log" >&2; return 1; }
  local i
  for i in $(seq 1 50); do [ -s "$AA_DIR/aardvark.pid" ] && break; sleep 0.1; done
  AA_PID=$(cat "$AA_DIR/aardvark.pid" 2>/dev/null || true)
  [ -n "$AA_PID" ] && kill -0 "$AA_PID" 2>/dev/null || { log "aardvark-dns did not stay up"; return 1; }
  check_answers "$NS_AC" $AA_NET.1 $AA_NET
}

# ---------------------------------------------------------------- Switchyard
sy() { timeout 20 "$BIN" --socket "$SY_SOCK" "$@"; }

up_switchyard() {
  mkdir -p "$SY_DIR/state"
  "$BIN" --socket "$SY_SOCK" daemon --state-dir "$SY_DIR/state" --workers "$WORKERS" ${SY_DAEMON_ARGS:-} > "$SY_DIR/daemon.log" 2>&1 &
  SY_PID=$!
  local i ok=0
  for i in $(seq 1 100); do
    if [ -S "$SY_SOCK" ] && sy network ls >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$SY_PID" 2>/dev/null || { log "daemon died: $(tail -5 "$SY_DIR/daemon.log")"; return 1; }
    sleep 0.1
  done
  [ $ok = 1 ] || { log "daemon API not up after 10 s"; return 1; }
  sy network create sybdnet --subnet $SY_NET.0/24 >/dev/null || return 1
  mkns "$NS_SC" && mkns "$NS_WEB" && mkns "$NS_DB" || return 1
  sy connect sybdnet --netns /run/netns/"$NS_SC" --name client --ip $SY_NET.2 >/dev/null || return 1
  sy connect sybdnet --netns /run/netns/"$NS_WEB" --name web --alias www --ip $SY_NET.10 >/dev/null || return 1
  sy connect sybdnet --netns /run/netns/"$NS_DB" --name db --ip $SY_NET.11 >/dev/null || return 1
  SY_GW=$(sy network inspect sybdnet | python3 -c 'import json,sys; print(json.load(sys.stdin)["network"]["gateway4"])') \
    || return 1
  [ -n "$SY_GW" ] || return 1
  check_answers "$NS_SC" "$SY_GW" $SY_NET
}

# run_dnsperf KEY NS SERVER PID ROUND: one dnsperf run, one line in $RES
run_dnsperf() {
  local key=$1 ns=$2 srv=$3 pid=$4 round=$5 out c0 c1 rc=0
  out=$TMP/dnsperf-$key-$round.txt
  c0=$(cpu_ticks "$pid")
  # The wrapper reports the CPU seconds dnsperf used (its own and the
  # kernel's work in its system calls): on 2 cores the client's share
  # bounds what any server can show.
  python3 -c '
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.3f\n" % (u.ru_utime + u.ru_stime))
sys.exit(rc)' "$out.cpu" timeout $(( LEN + 30 )) ip netns exec "$ns" dnsperf -s "$srv" -p 53 -d "$TMP/queries.txt" \
    -l "$LEN" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" -Q "$MAXQPS" -t 2 > "$out" 2>&1 || rc=$?
  c1=$(cpu_ticks "$pid")
  [ $rc = 0 ] || note "$key round $round: dnsperf exited $rc: $(tail -3 "$out" | tr '\n' ' ')"
  kill -0 "$pid" 2>/dev/null || note "$key round $round: server process $pid is gone"
  local sent done lost runtime codes
  sent=$(awk '/Queries sent:/{print $3}' "$out"); done=$(awk '/Queries completed:/{print $3}' "$out")
  lost=$(awk '/Queries lost:/{print $3}' "$out"); runtime=$(awk '/Run time \(s\):/{print $4}' "$out")
  codes=$(sed -n 's/^ *Response codes: *//p' "$out" | tr -s ' \t' ' ')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$round" "${sent:-0}" "${done:-0}" "${lost:-0}" \
    "${runtime:-0}" "$(( c1 - c0 ))" "${codes:--}" "$(cat "$out.cpu" 2>/dev/null || echo 0)" >> "$RES"
  log "$key round $round: completed ${done:-?} lost ${lost:-?} in ${runtime:-?} s ($codes)"
}

# ---------------------------------------------------------------- main
install_deps dnsperf:dnsperf ip:iproute2 python3:python3 /usr/lib/podman/aardvark-dns:aardvark-dns
find_bin
modprobe bridge 2>/dev/null || true
modprobe tun 2>/dev/null || true
printf 'web A\nwww A\ndb A\n' > "$TMP/queries.txt"

log "aardvark-dns: setting up (namespaces $NS_HOST, $NS_AC)"
up_aardvark || die "aardvark-dns set-up"
log "Switchyard: setting up (daemon, $WORKERS worker(s), namespaces $NS_SC, $NS_WEB, $NS_DB)"
up_switchyard || die "Switchyard set-up (daemon log: $(tail -5 "$SY_DIR/daemon.log" 2>/dev/null | tr '\n' ' '))"
sy stats --json > "$TMP/stats0.json" 2>/dev/null || true

for r in $(seq 1 "$ROUNDS"); do
  log "round $r/$ROUNDS: aardvark-dns"; run_dnsperf aardvark "$NS_AC" $AA_NET.1 "$AA_PID" "$r"
  log "round $r/$ROUNDS: Switchyard"; run_dnsperf switchyard "$NS_SC" "$SY_GW" "$SY_PID" "$r"
done
sy stats --json > "$TMP/stats1.json" 2>/dev/null || note "switchyard: 'stats --json' failed after the runs"
T_END=$(date +%s)

SY_VER=$("$BIN" --version 2>/dev/null || echo unknown)
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
AA_VER=$(/usr/lib/podman/aardvark-dns --version 2>/dev/null | head -1 || echo unknown)
DP_VER=$(dnsperf -h 2>&1 | sed -n 's/^Version //p' | head -1)

python3 - "$RES" "$NOTES" "$TMP/stats0.json" "$TMP/stats1.json" "$(getconf CLK_TCK)" <<EOF | tee "$HERE/dns-last-run.txt"
import json, sys
res, notes, s0, s1, hz = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
print("DNS query rate: Switchyard vs aardvark-dns")
print("command:   $CMDLINE")
print("date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $(uname -sr), load before $LOAD0, took $(( T_END - T_START )) s")
print("servers:   Switchyard $SY_VER (git $GIT), $WORKERS worker(s); $AA_VER")
print("dnsperf:   $DP_VER: -l $LEN -c $CLIENTS -T $THREADS -q $OUTSTANDING -Q $MAXQPS -t 2, $ROUNDS round(s) each, alternating;")
print("           queries: web A, www A, db A (bare names, same file for both)")
print()
rows = {}
for line in open(res):
    k, r, sent, done, lost, rt, ticks, codes, ccpu = line.rstrip("\n").split("\t")
    t = rows.setdefault(k, dict(sent=0, done=0, lost=0, rt=0.0, ticks=0, runs=[], codes=set(), ccpu=0.0))
    t["sent"] += int(sent); t["done"] += int(done); t["lost"] += int(lost); t["rt"] += float(rt)
    t["ccpu"] += float(ccpu)
    t["ticks"] += int(ticks); t["codes"].add(codes)
    t["runs"].append(int(done) / float(rt) if float(rt) > 0 else 0.0)
def qps(t): return t["done"] / t["rt"] if t["rt"] > 0 else 0.0
label = {"aardvark": "aardvark-dns (kernel bridge + veth)", "switchyard": "Switchyard gateway ($WORKERS worker(s))"}
base = qps(rows["aardvark"]) if "aardvark" in rows else 0.0
hdr = ["server", "qps", "per round", "completed", "lost", "server CPU %", "queries per server CPU-s", "dnsperf CPU %", "ratio vs aardvark"]
out = []
for k in ("aardvark", "switchyard"):
    if k not in rows: continue
    t = rows[k]; q = qps(t)
    cpu = 100.0 * t["ticks"] / hz / t["rt"] if t["rt"] > 0 else 0.0
    out.append([label[k], f"{q:,.0f}", " / ".join(f"{x:,.0f}" for x in t["runs"]), f"{t['done']:,}",
                f"{t['lost']:,}", f"{cpu:.0f}", f"{t['done'] / (t['ticks'] / hz):,.0f}" if t["ticks"] else "n/a",
                f"{100.0 * t['ccpu'] / t['rt']:.0f}" if t["rt"] > 0 else "n/a",
                f"{q / base:.2f}x" if base else "n/a"])
w = [max(len(r[i]) for r in out + [hdr]) for i in range(len(hdr))]
print(" | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
print("-+-".join("-" * x for x in w))
for r in out: print(" | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
print()
for k in ("aardvark", "switchyard"):
    if k in rows: print(f"{k} response codes: {'; '.join(sorted(rows[k]['codes']))}")
ok = "aardvark" in rows and "switchyard" in rows and base > 0
if ok:
    ratio = qps(rows["switchyard"]) / base
    lost = rows["switchyard"]["lost"]
    # every answer must be NOERROR (codes look like "NOERROR 1234 (100.00%), NXDOMAIN 5 (0.01%)")
    names = {c.strip().split(" ")[0] for cs in rows["switchyard"]["codes"] | rows["aardvark"]["codes"] for c in cs.split(",")}
    if names != {"NOERROR"}: print(f"WARNING: response codes other than NOERROR: {sorted(names)}")
    met = ratio >= 5 and lost == 0 and names == {"NOERROR"}
    print(f"target (>= 5x aardvark-dns, no lost queries): {'MET' if met else 'NOT MET'} ({ratio:.2f}x, {lost} lost)")
    # What the client alone would need at the target rate on this machine.
    sy = rows["switchyard"]
    if sy["done"] and sy["ccpu"]:
        us = 1e6 * sy["ccpu"] / sy["done"]
        need = 5 * base * us / 1e6
        print(f"dnsperf's own cost: {us:.1f} us of CPU per query; at 5x aardvark-dns ({5 * base:,.0f} qps) "
              f"dnsperf alone would need {need:.2f} of the machine's $(nproc) cores")
try:
    a, b = json.load(open(s0)), json.load(open(s1))
    a = a.get("result", a); b = b.get("result", b)
    def flat(d, p=""):
        o = {}
        for k, v in d.items():
            if isinstance(v, dict): o.update(flat(v, p + k + "."))
            elif isinstance(v, (int, float)) and not isinstance(v, bool): o[p + k] = v
        return o
    fa, fb = flat(a), flat(b)
    d = {k: fb[k] - fa.get(k, 0) for k in fb if ("dns" in k or "drops." in k) and fb[k] - fa.get(k, 0)}
    if d: print("switchyard counters during the runs: " + ", ".join(f"{k}={v:,}" for k, v in sorted(d.items())))
except Exception as e:
    print(f"(switchyard stats unavailable: {e})")
for n in open(notes):
    print("NOTE: " + n.rstrip())
EOF
