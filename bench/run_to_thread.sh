#!/usr/bin/env bash
# The thread-pool benchmark and its peers in one run.
#
#   bench/run_to_thread.sh [BUILD_DIR] [--quick]
#
# Runs BUILD_DIR/bench/bench_to_thread (default BUILD_DIR: build), the
# asyncio and uvloop peers (bench/peers/to_thread_peer.py, uvloop only if
# `/usr/bin/python3 -c 'import uvloop'` works) and the Go peer (bench/
# peers/go, built into BUILD_DIR/bench/go_bench as bench/run.sh does;
# skipped if go is missing), all at N=100,000 jobs (--quick: 20,000 for
# the Python peers, whose jobs/s figure does not depend on N at that size).
# Prints every "BENCH <name> <impl> <value> <unit>" line (also saved to
# BUILD_DIR/bench/results_to_thread.txt), then the targets of issue 5:
#
#   to_thread >= 10x asyncio jobs/s   (cawait jobs/s / asyncio jobs/s)
#   to_thread_latency <= 10 us        (cawait's median round trip)
#
# with PASS/FAIL and the measured figure.  Always exits 0 once the
# benchmarks ran: it is a report, not a test.
set -uo pipefail

BUILD=build
QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run_to_thread.sh: unknown option $a" >&2; exit 2 ;;
    *) BUILD=$a ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_dirs run_to_thread.sh "$BUILD" bench_to_thread
RESULTS=$OUT/results_to_thread.txt
: >"$RESULTS"

N=100000
PY_N=$N
[ "$QUICK" = 1 ] && PY_N=20000
TIMEOUT=${CAWAIT_BENCH_TIMEOUT:-300}

note() { echo "# $*"; }

IMPLS=(cawait)
HAVE_GO=0
if build_go_peer "$ROOT" "$OUT"; then
  HAVE_GO=1
fi
PY=/usr/bin/python3
PEER=$ROOT/bench/peers/to_thread_peer.py
if [ -x "$PY" ]; then
  IMPLS+=(asyncio)
  if "$PY" -c 'import uvloop' 2>/dev/null; then
    IMPLS+=(uvloop)
  else
    note "uvloop not importable by $PY: skipping the uvloop peer"
  fi
else
  note "$PY not found: skipping the asyncio and uvloop peers"
fi
[ "$HAVE_GO" = 1 ] && IMPLS+=(go)

note "to_thread: $N trivial jobs through the default pool / executor ($(nproc) CPUs; $(uname -srm))"
note "  cawait to_thread: ca_pool_submit x N then ca_job_wait each; to_thread_tasks: a task"
note "  per job calling ca_to_thread, gathered in batches of 1000; asyncio/uvloop: gather of"
note "  asyncio.to_thread in batches of 1000; go: a goroutine per job (GOMAXPROCS=CPUs)."
note "  Best of 3 rounds each.  to_thread_latency: median of sequential round trips."

for impl in "${IMPLS[@]}"; do
  case "$impl" in
    cawait) cmd=("$OUT/bench_to_thread" "$N") ;;
    asyncio) cmd=("$PY" "$PEER" to_thread "$PY_N") ;;
    uvloop) cmd=("$PY" "$PEER" to_thread "$PY_N" --uvloop) ;;
    go) cmd=("$OUT/go_bench" to_thread "$N") ;;
  esac
  out=$(timeout "$TIMEOUT" "${cmd[@]}")
  rc=$?
  if [ $rc -ne 0 ]; then
    note "$impl failed (exit status $rc)"
  fi
  while read -r tag rest; do
    [ "$tag" = BENCH ] || continue
    echo "BENCH $rest"
    echo "BENCH $rest" >>"$RESULTS"
  done <<<"$out"
done

echo
echo "== targets =="
c=$(val to_thread cawait)
a=$(val to_thread asyncio)
if [ -z "$c" ] || [ -z "$a" ]; then
  printf "%-40s %s\n" "to_thread >= 10x asyncio jobs/s" "FAIL (no result)"
else
  ratio=$(awk -v c="$c" -v a="$a" 'BEGIN { printf "%.1f", c / a }')
  verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 10 ? "PASS" : "FAIL") }')
  printf "%-40s %s (%sx: %s vs %s jobs/s)\n" "to_thread >= 10x asyncio jobs/s" \
    "$verdict" "$ratio" "$c" "$a"
fi
l=$(val to_thread_latency cawait)
if [ -z "$l" ]; then
  printf "%-40s %s\n" "to_thread_latency <= 10 us" "FAIL (no result)"
else
  verdict=$(awk -v l="$l" 'BEGIN { print (l <= 10 ? "PASS" : "FAIL") }')
  printf "%-40s %s (%s us)\n" "to_thread_latency <= 10 us" "$verdict" "$l"
fi
ct=$(val to_thread_tasks cawait)
for impl in "${IMPLS[@]}"; do
  [ "$impl" = cawait ] && continue
  p=$(val to_thread "$impl")
  [ -n "$c" ] && [ -n "$p" ] &&
    note "cawait / $impl jobs/s: $(awk -v c="$c" -v p="$p" 'BEGIN { printf "%.1f", c / p }')x" \
      "(task per job, to_thread_tasks: $(awk -v c="${ct:-0}" -v p="$p" 'BEGIN { printf "%.1f", c / p }')x)"
done
note "results: $RESULTS"
exit 0
