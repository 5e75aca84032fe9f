#!/usr/bin/env bash
# Instructions per request of the whole chat request path (benches/src/bin/inproc.rs: client
# -> connector -> RPC -> backend send handler -> push + response -> client, over loopback, one
# process, one thread per role) under valgrind's callgrind: a figure that does not move with
# the other load on a shared machine, so one change can be judged on its own.
#
#   benches/scripts/callgrind.sh [--transport "tcp ws"] [--small N] [--large N] [--clients K]
#                                [--top K] [--keep DIR]
#
# Runs inproc twice per transport (--small and --large measured requests, same warm-up) and
# prints, per role (connector, backend, client) and in total, (Ir_large - Ir_small) /
# (large - small): setup, warm-up and teardown cancel out. Then, from the large run, per
# role: the Ir by component (crate or library, self cost), the top functions (self cost) and
# the top Shaddock functions (inclusive cost), from callgrind_annotate. Callgrind counts user-space instructions only: the kernel's share
# (loopback TCP, epoll; about half of the CPU in the load runs) is not in these figures, so
# the native run's CPU per role (utime + stime per thread) is printed too.
#
# Environment: CARGO_TARGET_DIR (default: target). valgrind is installed with apt-get when
# missing (Debian). Every run is bounded by `timeout` and inproc's own --deadline.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
TRANSPORTS="tcp ws"
SMALL=1000
LARGE=4000
CLIENTS=8
TOP=25
KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) TRANSPORTS="$2"; shift 2 ;;
    --small) SMALL="$2"; shift 2 ;;
    --large) LARGE="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --top) TOP="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "callgrind.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$LARGE" -le "$SMALL" ]; then
  echo "callgrind.sh: --large must be above --small" >&2
  exit 2
fi

log() { echo "== callgrind: $*" >&2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
INPROC="$CARGO_TARGET_DIR/release/inproc"

if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
  log "installing valgrind (apt)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
log "building inproc (release)"
cargo build --release -q -p shaddock-benches --bin inproc

WORK="$(mktemp -d -t callgrind-inproc-XXXXXX)"
cleanup() {
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && log "kept the callgrind files in $KEEP"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ROLES=(main connector backend client)   # valgrind thread numbers 1..4, see inproc.rs

# The `summary:` (total Ir) of the callgrind file of thread $2 of run directory $1.
thread_ir() {
  local f
  f=$(ls "$1"/cg.*-0"$2" 2>/dev/null | head -1)
  [ -n "$f" ] || { echo 0; return; }
  awk '/^summary:/ {print $2; exit}' "$f"
}

run_cg() {
  local transport=$1 n=$2 dir=$3
  mkdir -p "$dir"
  timeout 900 valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$dir/cg.%p" "$INPROC" --transport "$transport" \
    --requests "$n" --warmup 200 --clients "$CLIENTS" --deadline 800 \
    >"$dir/out.json" 2>"$dir/valgrind.log" || {
      log "inproc under callgrind failed ($transport, $n requests); last lines:"
      tail -n 5 "$dir/valgrind.log" >&2
      return 1
    }
}

# Self Ir by component of one callgrind file, from the source file each instruction comes
# from (so inlined code counts for the crate that wrote it): a crates.io crate by its name,
# this workspace's crates by their directory, Rust's library by its part (core, alloc, std),
# and C code by library (libc's malloc family and mem*/str* separately).
components() {
  { callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null || true; } | awk -v root="$ROOT/" '
    /^ *[0-9,]+ +\( *[0-9.]+%\) / && !/PROGRAM TOTALS|events annotated/ {
      ir = $1; gsub(",", "", ir);
      line = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", line);
      file = line; sub(/:.*/, "", file);
      if (file ~ /malloc\.c|arena\.c/) c = "libc malloc/free";
      else if (file ~ /memmove|memcpy|memset|memcmp|strlen|memchr/) c = "libc mem*/str*";
      else if (line ~ /\[[^]]*libc\.so[^]]*\]$/) c = "libc other";
      else if (match(file, /\.cargo\/registry\/src\/[^\/]+\/[^\/]+/)) {
        c = substr(file, RSTART, RLENGTH); sub(/.*\//, "", c); sub(/-[0-9][0-9.]*[^\/]*$/, "", c);
      } else if (match(file, /library\/[a-z_]+/)) c = "rust " substr(file, RSTART + 8, RLENGTH - 8);
      else if (index(file, root) == 1) { c = substr(file, length(root) + 1); sub(/\/.*/, "", c); c = "shaddock " c; }
      else if (file ~ /^[a-z-]+\/src\//) { c = file; sub(/\/.*/, "", c); c = "shaddock " c; }
      else c = "other (" file ")";
      sum[c] += ir; total += ir;
    }
    END {
      for (c in sum) printf "%14.0f  %5.1f%%  %s\n", sum[c], 100 * sum[c] / total, c;
    }' | sort -rn | head -n 16 || true
}

for transport in $TRANSPORTS; do
  log "$transport: native run (CPU per role)"
  timeout 300 "$INPROC" --transport "$transport" --requests 20000 --clients "$CLIENTS" \
    >"$WORK/native-$transport.json"
  log "$transport: callgrind, $SMALL and $LARGE requests"
  run_cg "$transport" "$SMALL" "$WORK/$transport-small"
  run_cg "$transport" "$LARGE" "$WORK/$transport-large"

  echo
  echo "### inproc, $transport, $CLIENTS clients: instructions (Ir) per request"
  echo
  echo "| role | Ir per request | native CPU per request (µs) |"
  echo "|---|---:|---:|"
  total=0
  for i in 2 3 4; do
    role=${ROLES[$((i - 1))]}
    a=$(thread_ir "$WORK/$transport-small" "$i")
    b=$(thread_ir "$WORK/$transport-large" "$i")
    per=$(( (b - a) / (LARGE - SMALL) ))
    total=$((total + per))
    cpu=$(sed -n "s/.*\"$role\":{\"cpu_us\":[0-9]*,\"us_per_request\":\([0-9.]*\)}.*/\1/p" "$WORK/native-$transport.json")
    printf "| %s | %d | %s |\n" "$role" "$per" "${cpu:-?}"
  done
  native=$(sed -n 's/.*"cpu_us_per_request":\([0-9.]*\).*/\1/p' "$WORK/native-$transport.json")
  printf "| **all** | **%d** | **%s** |\n" "$total" "${native:-?}"
  for i in 2 3 4; do
    role=${ROLES[$((i - 1))]}
    f=$(ls "$WORK/$transport-large"/cg.*-0"$i" | head -1)
    echo
    echo "#### $transport / $role: self Ir by component ($LARGE-request run, setup included)"
    echo
    echo '```'
    components "$f"
    echo '```'
    echo
    echo "#### $transport / $role: top $TOP functions (self Ir)"
    echo
    echo '```'
    { callgrind_annotate --auto=no --threshold=100 "$f" 2>/dev/null || true; } \
      | awk '/^ *[0-9,]+ +\( *[0-9.]+%\) / && !/PROGRAM TOTALS|events annotated/' \
      | sed -E 's#/root/\.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##; s#'"$ROOT"'/##; s# \[[^]]*\]$##' \
      | head -n "$TOP" || true
    echo '```'
    echo
    echo "#### $transport / $role: top $TOP Shaddock functions (inclusive Ir: with what they call)"
    echo
    echo '```'
    { callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$f" 2>/dev/null || true; } \
      | awk '/^ *[0-9,]+ +\( *[0-9.]+%\) / && /shaddock_/ && !/PROGRAM TOTALS/' \
      | sed -E 's#/root/\.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##; s#'"$ROOT"'/##; s# \[[^]]*\]$##' \
      | head -n "$TOP" || true
    echo '```'
  done
done
