#!/usr/bin/env bash
# Runs each load scenario against the Shaddock chat and against the pinus chat, back to back,
# on every transport, each on a freshly started cluster; measures the one-hop floor
# (redis-server under redis-benchmark, no pipelining); prints the tables (led by CPU per unit
# of work per process kind, from /proc/<pid>/stat of every process of the cluster and of the
# generator) with Shaddock's advantage, and rewrites the generated block of the
# "## Load: Shaddock vs pinus" section of BENCHMARKS.md.
#
#   benches/scripts/compare.sh [--profile quick|full] [--stacks "shaddock pinus"]
#                              [--scenarios "connect request broadcast idle"]
#                              [--transport tcp|ws] (default: both) [--no-floor] [--no-write]
#
# Setup it does itself when something is missing (Debian): `apt-get install redis-server
# redis-tools` (for the floor) and `scripts/install-js-deps` (npm ci in benches/pinus-chat).
#
# Environment:
#   CARGO_TARGET_DIR   where to build the load generator and shaddock-chat (default: target)
#   PORT_OFFSET        added to the classic ports of both stacks (gate 3014, connectors 3050-3052,
#                      connector RPC 4050-4052, chat 6050-6052, master 3005); default 20000
#   SHADDOCK_CHAT_CMD  how to start the Shaddock chat cluster in the foreground; it may use
#                      $CONFIG_DIR (a pomelo-shaped config dir with servers.json and master.json,
#                      environment "bench", written by this script). Default:
#                      "$CARGO_TARGET_DIR/release/shaddock-chat --config $CONFIG_DIR start -e bench"
#   BROADCAST_PUSH_FLUSH_MS  push scheduler of both stacks' connectors in the broadcast runs:
#                      0 = direct (write each push at once), N > 0 = buffer, flushing each
#                      session's pushes every N ms (pomelo/pinus pushSchedulers.buffer with
#                      flushInterval N; Shaddock's "push-flush-interval": N). Default 0: both
#                      stacks' default scheduler. The other scenarios always run direct.
#   SHADDOCK_CONNECTOR_KEYS  more keys for the Shaddock connectors' servers.json entries, as
#                      JSON members, e.g. '"push-linger": 5' (for experiments; default none)
#   FLOOR_REQUESTS     requests of the redis floor run (default: quick 200000, full 1000000)
#   RESULTS            file the JSON result lines are appended to (default: a new
#                      $CARGO_TARGET_DIR/load-results-<time>.jsonl per invocation, so the
#                      table never mixes runs of different invocations)
#
# Every stack is started in its own process group and stopped (SIGTERM, then SIGKILL after
# 15 s) after its run; every load run is bounded by the generator's --deadline. Only
# 127.0.0.0/8 is used. While the Shaddock chat does not start (or does not open its ports
# within 60 s) its runs are skipped with a message and the table shows "–".
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PROFILE=quick
STACKS="shaddock pinus"
SCENARIOS="connect request broadcast idle"
WRITE=1
TRANSPORTS="tcp ws"
FLOOR=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --stacks) STACKS="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --no-write) WRITE=0; shift ;;
    --transport) TRANSPORTS="$2"; shift 2 ;;
    --no-floor) FLOOR=0; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OFFSET="${PORT_OFFSET:-20000}"
RESULTS="${RESULTS:-$CARGO_TARGET_DIR/load-results-$(date -u +%Y%m%dT%H%M%S).jsonl}"
LOAD="$CARGO_TARGET_DIR/release/load"
GATE_PORT=$((3014 + OFFSET))
CONNECTOR_PORTS="$((3050 + OFFSET)),$((3051 + OFFSET)),$((3052 + OFFSET))"
GATE="127.0.0.1:$GATE_PORT"

# Scenario arguments per profile ("full" is what the issue's targets are stated for);
# CONNECT_ARGS, REQUEST_ARGS, BROADCAST_ARGS, IDLE_ARGS and DEADLINE in the environment win.
case "$PROFILE" in
  quick)
    CONNECT_ARGS="${CONNECT_ARGS:-connect --clients 200}"
    REQUEST_ARGS="${REQUEST_ARGS:-request --clients 200 --duration 5}"
    BROADCAST_ARGS="${BROADCAST_ARGS:-broadcast --rooms 1 --room-size 1000 --senders 5 --rate 10 --duration 4 --workers 2}"
    IDLE_ARGS="${IDLE_ARGS:-idle --clients 300 --hold 5}"
    DEADLINE="${DEADLINE:-120}"
    FLOOR_REQUESTS="${FLOOR_REQUESTS:-200000}"
    ;;
  full)
    CONNECT_ARGS="${CONNECT_ARGS:-connect --clients 10000}"
    REQUEST_ARGS="${REQUEST_ARGS:-request --clients 200 --duration 20}"
    BROADCAST_ARGS="${BROADCAST_ARGS:-broadcast --rooms 1 --room-size 1000 --senders 15 --rate 100 --duration 10 --workers 2}"
    IDLE_ARGS="${IDLE_ARGS:-idle --clients 50000 --hold 30 --connect-rate 800}"
    DEADLINE="${DEADLINE:-900}"
    FLOOR_REQUESTS="${FLOOR_REQUESTS:-1000000}"
    ;;
  *) echo "compare.sh: --profile is quick or full" >&2; exit 2 ;;
esac

log() { echo "== compare: $*" >&2; }
BROADCAST_PUSH_FLUSH_MS="${BROADCAST_PUSH_FLUSH_MS:-0}"
# The push flush interval (ms, 0 = direct) of the stack being started; set per scenario.
PUSH_FLUSH_MS=0

# The open-files limit is per process; the generator's workers inherit this one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for t in $TRANSPORTS; do
  case "$t" in
    tcp|ws) ;;
    *) echo "compare.sh: --transport is tcp or ws" >&2; exit 2 ;;
  esac
done

need_root() {
  if [ "$(id -u)" -ne 0 ]; then echo "sudo -n"; fi
}
if [ "$FLOOR" = 1 ] && ! { command -v redis-server && command -v redis-benchmark; } >/dev/null 2>&1; then
  log "installing redis-server and redis-tools (apt) for the one-hop floor"
  $(need_root) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null \
    || { $(need_root) apt-get update -qq && $(need_root) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; } \
    || { log "cannot install redis; the floor is skipped"; FLOOR=0; }
fi
if echo " $STACKS " | grep -q " pinus "; then
  scripts/install-js-deps || log "scripts/install-js-deps failed; the pinus runs may fail"
fi

log "building the load generator (release)"
cargo build --release -q -p shaddock-benches --bin load
if echo " $STACKS " | grep -q " shaddock "; then
  log "building shaddock-chat (release)"
  cargo build --release -q -p shaddock-chat || log "shaddock-chat does not build; its runs will be skipped"
fi
mkdir -p "$(dirname "$RESULTS")"

STACK_PGID=""
STACK_LOG=""
REDIS_PID=""
stop_redis() {
  if [ -n "$REDIS_PID" ]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
  fi
}
cleanup() {
  if [ -n "$STACK_PGID" ]; then
    stop_stack
  fi
  stop_redis
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

# Waits until the gate and connector ports listen, for at most $1 seconds, while the stack's
# process is alive. Returns 1 if it died or timed out.
wait_ports() {
  local limit=$1 start=$SECONDS p ok
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    if ! kill -0 "$STACK_PGID" 2>/dev/null; then
      return 1
    fi
    ok=1
    for p in $GATE_PORT ${CONNECTOR_PORTS//,/ }; do
      port_open "$p" || ok=0
    done
    if [ $ok = 1 ]; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

write_shaddock_config() {
  local dir=$1 o=$OFFSET f=$PUSH_FLUSH_MS x=${SHADDOCK_CONNECTOR_KEYS:+, $SHADDOCK_CONNECTOR_KEYS}
  cat > "$dir/servers.json" <<EOF
{
  "bench": {
    "gate": [
      {"id": "gate-server-1", "host": "127.0.0.1", "clientPort": $((3014 + o)), "frontend": true}
    ],
    "connector": [
      {"id": "connector-server-1", "host": "127.0.0.1", "port": $((4050 + o)), "clientPort": $((3050 + o)), "frontend": true, "heartbeat": 3, "max-connections": 20000, "push-flush-interval": $f$x},
      {"id": "connector-server-2", "host": "127.0.0.1", "port": $((4051 + o)), "clientPort": $((3051 + o)), "frontend": true, "heartbeat": 3, "max-connections": 20000, "push-flush-interval": $f$x},
      {"id": "connector-server-3", "host": "127.0.0.1", "port": $((4052 + o)), "clientPort": $((3052 + o)), "frontend": true, "heartbeat": 3, "max-connections": 20000, "push-flush-interval": $f$x}
    ],
    "chat": [
      {"id": "chat-server-1", "host": "127.0.0.1", "port": $((6050 + o))},
      {"id": "chat-server-2", "host": "127.0.0.1", "port": $((6051 + o))},
      {"id": "chat-server-3", "host": "127.0.0.1", "port": $((6052 + o))}
    ]
  }
}
EOF
  cat > "$dir/master.json" <<EOF
{ "bench": {"id": "master-server-1", "host": "127.0.0.1", "port": $((3005 + o))} }
EOF
}

# start_stack NAME: starts the stack in the background in its own process group; returns 1
# (with a message) when it cannot be started.
start_stack() {
  local name=$1
  STACK_LOG="$(mktemp -t "load-$name-XXXXXX.log")"
  for p in $GATE_PORT ${CONNECTOR_PORTS//,/ }; do
    if port_open "$p"; then
      log "port $p is already in use; set PORT_OFFSET to free ports"
      return 1
    fi
  done
  case "$name" in
    pinus)
      PINUS_CHAT_PORT_OFFSET=$OFFSET PINUS_CHAT_PUSH_FLUSH_MS=$PUSH_FLUSH_MS setsid node benches/pinus-chat/start.js >"$STACK_LOG" 2>&1 &
      ;;
    shaddock)
      CONFIG_DIR="$(mktemp -d -t load-shaddock-config-XXXXXX)"
      export CONFIG_DIR
      write_shaddock_config "$CONFIG_DIR"
      local cmd="${SHADDOCK_CHAT_CMD:-$CARGO_TARGET_DIR/release/shaddock-chat --config \$CONFIG_DIR start -e bench}"
      if [ -z "${SHADDOCK_CHAT_CMD:-}" ] && [ ! -x "$CARGO_TARGET_DIR/release/shaddock-chat" ]; then
        log "shaddock: $CARGO_TARGET_DIR/release/shaddock-chat is missing; skipping"
        return 1
      fi
      setsid bash -c "exec $cmd" >"$STACK_LOG" 2>&1 &
      ;;
  esac
  STACK_PGID=$!
  if ! wait_ports 60; then
    log "$name did not open gate $GATE_PORT and connectors $CONNECTOR_PORTS within 60 s; skipping it. Its output:"
    tail -n 5 "$STACK_LOG" | sed 's/^/    /' >&2
    stop_stack
    return 1
  fi
  # pinus: wait for its ready line too (every server registered with the master).
  if [ "$name" = pinus ]; then
    local start=$SECONDS
    until grep -q '^pinus-chat ready' "$STACK_LOG"; do
      if [ $((SECONDS - start)) -ge 60 ] || ! kill -0 "$STACK_PGID" 2>/dev/null; then
        log "pinus did not print its ready line; skipping it"
        stop_stack
        return 1
      fi
      sleep 0.5
    done
  fi
  return 0
}

stop_stack() {
  local pg=$STACK_PGID i
  STACK_PGID=""
  [ -n "$pg" ] || return 0
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 1 30); do
    kill -0 -- "-$pg" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 -- "-$pg" 2>/dev/null; then
    log "process group $pg did not stop within 15 s; killing it"
    kill -KILL -- "-$pg" 2>/dev/null || true
  fi
  if [ -n "${CONFIG_DIR:-}" ]; then
    rm -rf "$CONFIG_DIR"
    unset CONFIG_DIR
  fi
}

COMMANDS=()
for scenario in $SCENARIOS; do
  case "$scenario" in
    connect) args=$CONNECT_ARGS ;;
    request) args=$REQUEST_ARGS ;;
    broadcast) args=$BROADCAST_ARGS ;;
    idle) args=$IDLE_ARGS ;;
    *) echo "compare.sh: unknown scenario $scenario" >&2; exit 2 ;;
  esac
  PUSH_FLUSH_MS=0
  if [ "$scenario" = broadcast ]; then
    PUSH_FLUSH_MS=$BROADCAST_PUSH_FLUSH_MS
  fi
  COMMANDS+=("load --gate $GATE --connector-ports $CONNECTOR_PORTS --deadline $DEADLINE --stack STACK --stack-pid PID --transport T $args")
  for transport in $TRANSPORTS; do
    for stack in $STACKS; do
      log "$scenario/$transport on $stack: starting the cluster"
      if ! start_stack "$stack"; then
        continue
      fi
      log "$scenario/$transport on $stack: load $args"
      # shellcheck disable=SC2086
      if "$LOAD" --gate "$GATE" --connector-ports "$CONNECTOR_PORTS" --deadline "$DEADLINE" \
          --stack "$stack" --stack-pid "$STACK_PGID" --transport "$transport" $args >>"$RESULTS"; then
        tail -n 1 "$RESULTS" | cut -c1-400 >&2
      else
        log "$scenario/$transport on $stack: the run failed (see above)"
      fi
      stop_stack
    done
  done
done

# The one-hop floor: redis-server on a free loopback port under redis-benchmark (200 clients,
# SET, no pipelining, FLOOR_REQUESTS requests), CPU of redis-server per request from /proc.
if [ "$FLOOR" = 1 ]; then
  REDIS_PORT=$((6379 + OFFSET))
  while port_open "$REDIS_PORT"; do REDIS_PORT=$((REDIS_PORT + 1)); done
  log "floor: redis-server on 127.0.0.1:$REDIS_PORT, redis-benchmark -c 200 -t set -n $FLOOR_REQUESTS"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --loglevel warning --maxclients 1000 >/dev/null 2>&1 &
  REDIS_PID=$!
  start=$SECONDS
  until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
    if [ $((SECONDS - start)) -ge 20 ] || ! kill -0 "$REDIS_PID" 2>/dev/null; then
      log "floor: redis-server did not answer within 20 s; skipping"
      stop_redis
      break
    fi
    sleep 0.2
  done
  if [ -n "$REDIS_PID" ]; then
    if ! timeout 300 "$LOAD" --stack redis floor --server-pid "$REDIS_PID" \
        --requests "$FLOOR_REQUESTS" --clients 200 -- \
        redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 200 -t set -n "$FLOOR_REQUESTS" -q >>"$RESULTS"; then
      log "floor: the run failed"
    else
      tail -n 1 "$RESULTS" | cut -c1-400 >&2
    fi
    stop_redis
  fi
  COMMANDS+=("redis-server --port FREE --save '' --appendonly no; load --stack redis floor --server-pid PID --requests $FLOOR_REQUESTS --clients 200 -- redis-benchmark -c 200 -t set -n $FLOOR_REQUESTS -q")
fi

if [ "$BROADCAST_PUSH_FLUSH_MS" -gt 0 ]; then
  SCHED_NOTE="buffer, flushing every $BROADCAST_PUSH_FLUSH_MS ms on both stacks (pinus"
  SCHED_NOTE="$SCHED_NOTE \`pushSchedulers.buffer\`, Shaddock \`\"push-flush-interval\": $BROADCAST_PUSH_FLUSH_MS\`)"
else
  SCHED_NOTE="direct"
fi
HEADER="$(mktemp -t load-header-XXXXXX.md)"
{
  echo "Generated by \`benches/scripts/compare.sh --profile $PROFILE\` on $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "at commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`."
  echo
  echo "- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),"
  echo "  $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "  The generator, the cluster under test and anything else running share these CPUs."
  echo "- Versions: $(rustc --version), node $(node --version),"
  echo "  pinus $(node -p "require('./benches/pinus-chat/node_modules/pinus/package.json').version" 2>/dev/null || echo '?')."
  echo "- Both stacks: gate $GATE_PORT, connectors ${CONNECTOR_PORTS//,/\/} (raw TCP and WebSocket clients on the same ports), chat servers"
  echo "  $((6050 + OFFSET))-$((6052 + OFFSET)), on 127.0.0.1; heartbeat 3 s on the connectors (pinus-chat's"
  echo "  default; Shaddock's config sets \"heartbeat\": 3 and \"max-connections\": 20000); a fresh"
  echo "  cluster per run. Push scheduler: direct (both stacks' default) in every scenario but"
  echo "  broadcast, where it is: $SCHED_NOTE."
  echo "- Commands (\`load\` = \`$CARGO_TARGET_DIR/release/load\`, STACK = shaddock | pinus):"
  echo
  echo '```'
  for c in "${COMMANDS[@]}"; do echo "$c"; done
  echo '```'
  echo
  echo "\"Shaddock advantage\" is how many times better Shaddock's figure is (higher-is-better"
  echo "figures: Shaddock ÷ pinus; lower-is-better: pinus ÷ Shaddock). RSS per connection is the"
  echo "connectors' summed VmRSS growth over the run divided by the connections."
  echo
  echo "CPU is \`utime + stime\` of \`/proc/<pid>/stat\` (10 ms ticks) of every process of the"
  echo "cluster's process tree (\`--stack-pid\`) and of the generator's processes, sampled when the"
  echo "measured phase starts and ends (for connect: the setup), divided by the phase's units of"
  echo "work: requests answered, pushes delivered, connections made, connection-seconds held."
  echo "\"servers\" is every cluster process together (gate, connectors, chat servers, master,"
  echo "launcher); \"other\" is the master and launcher. The generator shares the same 2 CPUs."
  echo "The floor is redis-server's CPU per SET under redis-benchmark on the same machine"
  echo "(generator = redis-benchmark's own CPU)."
} >"$HEADER"

if [ "$WRITE" = 1 ]; then
  "$LOAD" report --results "$RESULTS" --header "$HEADER" --write "$ROOT/BENCHMARKS.md"
  log "rewrote the load section of BENCHMARKS.md; results in $RESULTS"
else
  "$LOAD" report --results "$RESULTS" --header "$HEADER"
fi
rm -f "$HEADER"
