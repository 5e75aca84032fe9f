# Sourced by the install scripts: `step LABEL CMD...` runs CMD with its output in a log file,
# prints "LABEL ..." at once, a line every 10 s while it runs ("LABEL: still running, 20 s"),
# and "LABEL: done in N s" at the end. On failure it prints the log's last 40 lines and exits
# with CMD's status, so a long, silent download never looks like a hang.
step() {
  local label=$1
  shift
  local log
  log=$(mktemp "${TMPDIR:-/tmp}/shaddock-step.XXXXXX")
  local start=$SECONDS
  echo "$label ..."
  "$@" >"$log" 2>&1 &
  local pid=$!
  local next=10
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $((SECONDS - start)) -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
      echo "$label: still running, $((SECONDS - start)) s"
      next=$((next + 10))
    fi
  done
  local rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "$label: FAILED (exit $rc) after $((SECONDS - start)) s; the last lines of its output:"
    tail -n 40 "$log"
    rm -f "$log"
    exit "$rc"
  fi
  rm -f "$log"
  echo "$label: done in $((SECONDS - start)) s"
}
