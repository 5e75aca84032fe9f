#!/usr/bin/env bash
# Broadcast capacity search (issue 16): raises the offered push rate into one room of 1,000
# until a stack loses pushes or falls behind, for each stack and transport, and prints each
# stack's highest clean rate with its CPU per delivered push.
#
#   benches/scripts/capacity.sh [--stacks "shaddock pinus"] [--transport "tcp ws"]
#                               [--rates "50 100 200 400 800 1600 3200"] [--senders 15]
#                               [--duration 4]
#
# --rates are the room's messages per second (each is delivered to the 1,000 members, so
# 100 = 100,000 pushes/s offered), split over --senders senders. Every rate is one run of
# `compare.sh --scenarios broadcast` (a fresh cluster, the generator's bounded deadline) with
# the push scheduler of BROADCAST_PUSH_FLUSH_MS (default 0: direct, both stacks' default).
# A stack's ladder stops at its first unclean rate; then one rate halfway (geometric) between
# its last clean and first unclean rate is tried.
#
# A run is clean when: no push was lost (`lost` = 0: every acknowledged message reached
# every member within the drain), no request failed (`errors` = 0), no client was dropped,
# the senders sent what was asked (no skipped tick: a tick is skipped only while a sender
# has all its requests unanswered, so a skipped tick means the stack fell behind), the
# pushes were delivered at ≥ 90 % of the offered rate (received / the span from the first
# send to the last delivery) and the delivery latency p99 is ≤ 1 s.
#
# Environment: PORT_OFFSET (default 20000), CARGO_TARGET_DIR, BROADCAST_PUSH_FLUSH_MS and
# RESULTS (JSON lines of every run; default a new file under $CARGO_TARGET_DIR) as for
# compare.sh. Needs python3 (to read the result lines).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
STACKS="shaddock pinus"
TRANSPORTS="tcp ws"
RATES="50 100 200 400 800 1600 3200"
SENDERS=15
DURATION=4
while [ $# -gt 0 ]; do
  case "$1" in
    --stacks) STACKS="$2"; shift 2 ;;
    --transport) TRANSPORTS="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --senders) SENDERS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "capacity.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RESULTS="${RESULTS:-$CARGO_TARGET_DIR/capacity-results-$(date -u +%Y%m%dT%H%M%S).jsonl}"
export RESULTS
SUMMARY="$(mktemp -t capacity-summary-XXXXXX)"
trap 'rm -f "$SUMMARY"' EXIT

log() { echo "== capacity: $*" >&2; }

# Judges the newest result line of RESULTS for (stack, transport): prints
# "clean|unclean <reason> <delivered pushes/s> <servers' µs per push> <p99 µs>".
judge() {
  python3 - "$RESULTS" "$1" "$2" "$3" <<'EOF'
import json, sys
path, stack, transport, offered = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
line = None
for l in open(path):
    try:
        v = json.loads(l)
    except ValueError:
        continue
    if v.get("scenario") == "broadcast" and v.get("stack") == stack and v.get("transport", "tcp") == transport:
        line = v
if line is None:
    print("unclean no-result 0 - -")
    sys.exit(0)
why = []
if line.get("lost", 1) != 0: why.append(f"lost={line.get('lost')}")
if line.get("errors", 1) != 0: why.append(f"errors={line.get('errors')}")
if line.get("client_dropped", 0) != 0: why.append(f"dropped={line.get('client_dropped')}")
if line.get("skipped_ticks", 0) != 0: why.append(f"skipped_ticks={line.get('skipped_ticks')}")
if line.get("sent", 0) < 0.99 * line.get("intended", 0): why.append(f"sent={line.get('sent')}/{line.get('intended')}")
rate = line.get("pushes_per_s") or 0.0
if rate < 0.9 * offered: why.append(f"delivered={rate:.0f}/s")
p99 = (line.get("latency_us") or {}).get("p99")
if p99 is None or p99 > 1_000_000: why.append(f"p99={p99}us")
cpu = (line.get("cpu") or {}).get("server_us_per_unit")
cpu_s = f"{cpu:.2f}" if isinstance(cpu, (int, float)) else "-"
print(("clean -" if not why else "unclean " + ",".join(why).replace(" ", "_")), f"{rate:.0f}", cpu_s, p99)
EOF
}

# One run at `rate` messages/s for (stack, transport); appends a summary row.
run_rate() {
  local stack=$1 transport=$2 rate=$3 per offered verdict
  per=$(python3 -c "print(${rate} / ${SENDERS})")
  offered=$((rate * 1000))
  log "$stack/$transport: $rate messages/s ($offered pushes/s offered)"
  BROADCAST_ARGS="broadcast --rooms 1 --room-size 1000 --senders $SENDERS --rate $per --duration $DURATION --workers 2" \
    "$ROOT/benches/scripts/compare.sh" --profile quick --stacks "$stack" --scenarios broadcast \
      --transport "$transport" --no-floor --no-write >/dev/null 2>>"$CARGO_TARGET_DIR/capacity.log" || true
  verdict=$(judge "$stack" "$transport" "$offered")
  log "$stack/$transport @ $offered/s: $verdict"
  echo "$stack $transport $rate $offered $verdict" >>"$SUMMARY"
  [[ $verdict == clean* ]]
}

for transport in $TRANSPORTS; do
  for stack in $STACKS; do
    last_clean=0
    first_bad=0
    for rate in $RATES; do
      if run_rate "$stack" "$transport" "$rate"; then
        last_clean=$rate
      else
        first_bad=$rate
        break
      fi
    done
    if [ "$first_bad" -gt 0 ] && [ "$last_clean" -gt 0 ]; then
      mid=$(python3 -c "import math; print(int(round(math.sqrt(${last_clean} * ${first_bad}))))")
      if [ "$mid" -gt "$last_clean" ] && [ "$mid" -lt "$first_bad" ]; then
        run_rate "$stack" "$transport" "$mid" || true
      fi
    fi
  done
done

echo
echo "Broadcast capacity, one room of 1,000, $SENDERS senders, ${DURATION} s per run, push scheduler: $( [ "${BROADCAST_PUSH_FLUSH_MS:-0}" -gt 0 ] && echo "buffer ${BROADCAST_PUSH_FLUSH_MS} ms" || echo direct)"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); results in $RESULTS)"
echo
echo "| stack | transport | offered pushes/s | verdict | delivered pushes/s | servers' µs per push | delivery p99 (µs) |"
echo "|---|---|---:|---|---:|---:|---:|"
while read -r stack transport _rate offered verdict why delivered cpu p99; do
  if [ "$why" = - ]; then v=$verdict; else v="$verdict: $why"; fi
  echo "| $stack | $transport | $offered | $v | $delivered | $cpu | $p99 |"
done <"$SUMMARY"
echo
echo "Highest clean offered rate per stack and transport:"
echo
echo "| transport | stack | highest clean pushes/s |"
echo "|---|---|---:|"
for transport in $TRANSPORTS; do
  for stack in $STACKS; do
    best=$(awk -v s="$stack" -v t="$transport" '$1==s && $2==t && $5=="clean" && $4>b {b=$4} END {print b+0}' "$SUMMARY")
    echo "| $transport | $stack | $( [ "$best" -gt 0 ] && echo "$best" || echo "none of the rates tried") |"
  done
done
