#!/usr/bin/env bash
# Where the kernel time of a request goes: system calls, context switches and the user/kernel
# split of the CPU (utime/stime from /proc) per request of
# each Shaddock process kind (connectors, chat servers, the generator) under the request
# scenario (200 clients in a closed loop on chat.chatHandler.send), counted with `perf stat`
# tracepoints over a window in the middle of the run.
#
#   benches/scripts/syscalls.sh [--transport tcp|ws] [--duration 15] [--window 5]
#
# Needs root (or perf_event_paranoid ≤ 1) and Debian's linux-perf (`perf`); the tracepoints
# work on this machine although hardware counters do not. The requests of the window are the
# generator's socket writes in it: each client has one request in flight and writes each
# request with one send (its heartbeats, one per client per 3 s, are under 1 % of them), so
# the window needs no clock shared with the generator's own count.
#
# Environment: PORT_OFFSET (default 20000) and CARGO_TARGET_DIR as for compare.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
TRANSPORT=tcp
DURATION=15
WINDOW=5
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) TRANSPORT="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --window) WINDOW="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "syscalls.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v perf >/dev/null || { echo "syscalls.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$(mktemp -d -t syscalls-XXXXXX)"
LOAD_PID=""
cleanup() {
  # Only what this script started: the compare.sh run (its own cluster is stopped by it).
  if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then wait "$LOAD_PID" || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

REQUEST_ARGS="request --clients 200 --duration $DURATION" \
  "$ROOT/benches/scripts/compare.sh" --profile quick --stacks shaddock --scenarios request \
    --transport "$TRANSPORT" --no-floor --no-write >"$OUT/compare.log" 2>&1 &
LOAD_PID=$!

# The cluster's processes are found by their command lines (`--server-id <kind>-server-N`)
# among the children of this run's compare.sh; the generator by its binary.
pids_of() {
  local pat=$1 p out=()
  for p in $(pgrep -f -- "$pat" || true); do
    # Only processes of this run: compare.sh is an ancestor.
    local q=$p
    while [ "$q" -gt 1 ]; do
      [ "$q" = "$LOAD_PID" ] && { out+=("$p"); break; }
      q=$(awk '{print $4}' "/proc/$q/stat" 2>/dev/null || echo 1)
    done
  done
  (IFS=,; echo "${out[*]}")
}
start=$SECONDS
until [ -n "$(pids_of 'release/load .*request')" ]; do
  if [ $((SECONDS - start)) -ge 240 ] || ! kill -0 "$LOAD_PID" 2>/dev/null; then
    echo "syscalls.sh: the load run did not start; its log:" >&2
    cat "$OUT/compare.log" >&2
    exit 1
  fi
  sleep 0.5
done
# Into the steady middle: the generator connects its 200 clients first.
sleep $(( (DURATION - WINDOW) / 2 + 2 ))
EV=syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev
EV=$EV,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait
EV=$EV,context-switches,task-clock
# utime and stime (clock ticks) summed over a kind's processes, for the user/kernel split.
ticks() {
  local p u=0 k=0
  for p in ${1//,/ }; do
    read -r pu pk < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    u=$((u + pu)); k=$((k + pk))
  done
  echo "$u $k"
}
PERF_PIDS=()
declare -A PIDS
for kind in connector chat load; do
  case $kind in
    connector) pids=$(pids_of 'server-id connector-server') ;;
    chat) pids=$(pids_of 'server-id chat-server') ;;
    load) pids=$(pids_of 'release/load') ;;
  esac
  if [ -z "$pids" ]; then echo "syscalls.sh: no $kind process found" >&2; exit 1; fi
  PIDS[$kind]=$pids
  ticks "$pids" >"$OUT/$kind.ticks0"
  perf stat -x, -e "$EV" -p "$pids" -o "$OUT/$kind.csv" -- sleep "$WINDOW" &
  PERF_PIDS+=($!)
done
wait "${PERF_PIDS[@]}" || true
for kind in connector chat load; do ticks "${PIDS[$kind]}" >"$OUT/$kind.ticks1"; done
wait "$LOAD_PID" || { echo "syscalls.sh: the load run failed; its log:" >&2; cat "$OUT/compare.log" >&2; exit 1; }
LOAD_PID=""
RPS=$(grep -m1 '^| requests/s' "$OUT/compare.log" | awk -F'|' '{gsub(/[ ,]/, "", $3); print $3}')

echo "Shaddock request scenario, $TRANSPORT, 200 clients, ${DURATION} s run; counted over ${WINDOW} s in its middle"
echo "(perf stat tracepoints; per request = count ÷ the generator's sends in the window; the run: ${RPS:-?} requests/s);"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
echo
echo "| per request | connectors | chat servers | generator |"
echo "|---|---:|---:|---:|"
python3 - "$OUT" <<'EOF'
import csv, os, sys
out = sys.argv[1]
rows = {}
for kind in ("connector", "chat", "load"):
    counts = {}
    with open(os.path.join(out, kind + ".csv")) as f:
        for r in csv.reader(f):
            if len(r) < 3 or r[0].startswith("#") or not r[0].strip():
                continue
            try:
                counts[r[2]] = float(r[0])
            except ValueError:
                counts[r[2]] = float("nan")
    rows[kind] = counts
requests = rows["load"].get("syscalls:sys_enter_sendto") or float("nan")
names = [
    ("sendto (RPC and WebSocket writes; the generator's: 1, the unit)", "syscalls:sys_enter_sendto"),
    ("writev (the connectors' TCP client writes)", "syscalls:sys_enter_writev"),
    ("recvfrom (every socket read)", "syscalls:sys_enter_recvfrom"),
    ("write (eventfd wake-ups of the runtime)", "syscalls:sys_enter_write"),
    ("read", "syscalls:sys_enter_read"),
    ("epoll_wait", "syscalls:sys_enter_epoll_wait"),
    ("context switches", "context-switches"),
]
for label, key in names:
    cells = [f"{rows[k].get(key, float('nan')) / requests:.2f}" for k in ("connector", "chat", "load")]
    print(f"| {label} | " + " | ".join(cells) + " |")
cells = [f"{rows[k].get('task-clock', float('nan')) * 1000 / requests:.1f}" for k in ("connector", "chat", "load")]
print("| CPU (task-clock, µs) | " + " | ".join(cells) + " |")
split = {}
for k in ("connector", "chat", "load"):
    u0, k0 = map(int, open(os.path.join(out, k + ".ticks0")).read().split())
    u1, k1 = map(int, open(os.path.join(out, k + ".ticks1")).read().split())
    split[k] = (k1 - k0) / max(1, (u1 - u0) + (k1 - k0))
print("| kernel share of the CPU (stime ÷ (utime + stime)) | " + " | ".join(f"{100 * split[k]:.0f} %" for k in ("connector", "chat", "load")) + " |")
EOF
