#!/usr/bin/env bash
# The spawn_process benchmark and its peers in one run.
#
#   bench/run_spawn_process.sh [BUILD_DIR] [--quick]
#
# Runs N=1000 /bin/true children, CONCURRENCY=50 at a time, with:
#   cawait   BUILD_DIR/bench/bench_spawn_process N 50   (best of 3 rounds)
#   asyncio  bench/peers/spawn_process_peer.py N 50     (create_subprocess_exec
#   uvloop   ... --uvloop                                behind a Semaphore)
#   go       BUILD_DIR/bench/go_bench spawn_process N   (os/exec, 50 at a time)
# prints their "BENCH spawn_process <impl> <children/s> children/s" lines and
# the target "spawn_process >= 2x asyncio children/s" as PASS or FAIL with the
# ratio.  --quick runs N=300.  Peers that are not installed are skipped with
# a note.  BUILD_DIR defaults to build.  Exits 0 once the benchmark ran: it
# is a report, not a test.
set -uo pipefail

BUILD=build
N=1000
CONC=50
for a in "$@"; do
  case "$a" in
    --quick) N=300 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run_spawn_process.sh: unknown option $a" >&2; exit 2 ;;
    *) BUILD=$a ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_dirs run_spawn_process.sh "$BUILD" bench_spawn_process
TIMEOUT=${CAWAIT_BENCH_TIMEOUT:-300}
note() { echo "# $*"; }

# One benchmark process: keep its BENCH lines (its stderr passes through).
results=()
run() {
  local line out
  out=$(timeout "$TIMEOUT" "$@") || {
    note "failed: $*"
    return 0
  }
  while IFS= read -r line; do
    case "$line" in
      "BENCH "*) echo "$line"; results+=("$line") ;;
    esac
  done <<<"$out"
}

note "spawn_process: $N /bin/true children, $CONC at a time"
run "$OUT/bench_spawn_process" "$N" "$CONC"

PY=/usr/bin/python3
PEER=$ROOT/bench/peers/spawn_process_peer.py
if [ -x "$PY" ]; then
  run "$PY" "$PEER" "$N" "$CONC"
  if "$PY" -c 'import uvloop' 2>/dev/null; then
    run "$PY" "$PEER" "$N" "$CONC" --uvloop
  else
    note "uvloop not importable by $PY: skipping the uvloop peer (apt-get install python3-uvloop)"
  fi
else
  note "$PY not found: skipping the asyncio and uvloop peers"
fi

# The Go peer, built the way bench/run.sh builds it.
if build_go_peer "$ROOT" "$OUT"; then
  run env GOMAXPROCS=1 "$OUT/go_bench" spawn_process "$N"
fi

# value: the children/s of $IMPL, or empty.
value() {
  local line
  for line in "${results[@]}"; do
    set -- $line
    if [ "$3" = "$IMPL" ]; then echo "$4"; return; fi
  done
}

echo
IMPL=cawait; ours=$(value)
for IMPL in asyncio uvloop go; do
  theirs=$(value)
  [ -n "$ours" ] && [ -n "$theirs" ] || continue
  awk -v a="$ours" -v b="$theirs" -v p="$IMPL" \
    'BEGIN { printf "spawn_process: cawait / %s = %.2fx\n", p, a / b }'
done
IMPL=asyncio; theirs=$(value)
if [ -z "$ours" ]; then
  echo "FAIL spawn_process >= 2x asyncio children/s (cawait did not run)"
elif [ -z "$theirs" ]; then
  echo "SKIP spawn_process >= 2x asyncio children/s (no asyncio figure)"
else
  awk -v a="$ours" -v b="$theirs" 'BEGIN {
    r = a / b
    printf "%s spawn_process >= 2x asyncio children/s (%.2fx: %d vs %d)\n",
      (r >= 2 ? "PASS" : "FAIL"), r, a, b }'
fi
exit 0
