# Helpers shared by the benchmark scripts; source it after setting REPO,
# NOTES (notes file), BIN (Switchyard binary or "") and BUILD (1: cargo
# build --release when BIN is "").

log() { echo "[$(date +%T)] $*" >&2; }
note() { echo "$*" >> "$NOTES"; log "NOTE: $*"; }
die() { log "FAILED: $*"; exit 1; }

stop_pid() {  # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL
  local p=$1 i
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }; sleep 0.1; done
  log "pid $p ignored SIGTERM for 5 s, SIGKILL"
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# install_deps COMMAND:PACKAGE...: apt-get install the packages of missing commands
install_deps() {
  local need="" c
  for c in "$@"; do
    command -v "${c%%:*}" >/dev/null 2>&1 || need="$need ${c##*:}"
  done
  [ -z "$need" ] && return 0
  log "installing:$need"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y $need >/dev/null 2>&1 || {
    timeout 300 apt-get update >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y $need >/dev/null; } || die "apt-get install$need"
}

find_bin() {
  if [ -n "$BIN" ]; then [ -x "$BIN" ] || die "no Switchyard binary at $BIN"; return 0; fi
  local target=${CARGO_TARGET_DIR:-$REPO/target}
  if [ "$BUILD" = 1 ] && command -v cargo >/dev/null 2>&1; then
    log "cargo build --release (target dir $target)"
    (cd "$REPO" && CARGO_TARGET_DIR=$target timeout 1800 cargo build --release --quiet) || die "cargo build --release"
  fi
  BIN=$target/release/switchyard
  [ -x "$BIN" ] || die "no Switchyard binary at $BIN (build it, or pass --bin)"
}

find_fwd_bin() {  # the floor's forwarder (examples/tap_forward.rs): $FWD_BIN, else built
  local target=${CARGO_TARGET_DIR:-$REPO/target}
  if [ -z "${FWD_BIN:-}" ]; then
    FWD_BIN=$target/release/examples/tap_forward
    if [ "$BUILD" = 1 ] && command -v cargo >/dev/null 2>&1; then
      (cd "$REPO" && CARGO_TARGET_DIR=$target timeout 1800 cargo build --release --quiet --example tap_forward) \
        || die "cargo build --release --example tap_forward"
    fi
  fi
  [ -x "$FWD_BIN" ] || note "no tap_forward at $FWD_BIN (cargo build --release --example tap_forward, or set FWD_BIN)"
}

cpu_ticks() {  # utime+stime of all threads of the given PIDs (0 if gone or none)
  local p t=0 s
  for p in "$@"; do
    s=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    s=${s##*) }   # drop "pid (comm) "
    set -- $s     # fields now start at 3 (state)
    t=$(( t + ${12} + ${13} ))
  done
  echo $t
}

# iperf3_result JSONFILE: prints "OK GBPS RETRANSMITS" or "ERR reason"
iperf3_result() {
  python3 - "$1" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    t = open(sys.argv[1], errors="replace").read().strip().splitlines()
    print("ERR " + (t[-1][:80] if t else "no output from iperf3")); sys.exit(0)
if d.get("error"):
    print("ERR " + d["error"][:80]); sys.exit(0)
try:
    print("OK %.3f %s" % (d["end"]["sum_received"]["bits_per_second"] / 1e9,
                          d["end"].get("sum_sent", {}).get("retransmits", "-")))
except Exception:
    print("ERR no result in iperf3's output")
EOF
}

