#!/usr/bin/env bash
# Runs every cawait benchmark and its peers (Go, asyncio, uvloop) in one go.
#
#   bench/run.sh [BUILD_DIR] [--quick]
#
# BUILD_DIR (default: build) must hold a CMake build with the benchmarks
# (build/bench/bench_*); the Go peer is built into BUILD_DIR/bench/go_bench.
# Prints every "BENCH <name> <impl> <value> <unit>" line (also saved to
# BUILD_DIR/bench/results.txt), a table of peer/cawait ratios ("how many
# times cawait is better", higher is better), a PNG bar chart of the ratios
# (BUILD_DIR/bench/bench.png, with gnuplot) and PASS/FAIL per target.
# Peers that are not installed are skipped with a note.  Always exits 0 once
# the benchmarks ran: it is a report, not a test.
#
# The Python peers always run queue at 1M items and lock at 200k pairs
# instead of 10M and 1M (ns per item / pair stays comparable; at full size
# they would take a minute).  --quick also runs their switch benchmark at 1M
# switches instead of 10M, queue at 200k, lock at 100k, and skips their
# 1M-sleepers run (a wall-clock figure cannot be scaled).  A full run takes
# about 3 minutes.
set -uo pipefail

BUILD=build
QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) BUILD=$a ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -d "$BUILD" ]; then
  echo "run.sh: no build directory $BUILD; build first (make build)" >&2
  exit 1
fi
BUILD=$(cd "$BUILD" && pwd)
OUT=$BUILD/bench
for b in switch spawn sleepers timers gather queue lock; do
  if [ ! -x "$OUT/bench_$b" ]; then
    echo "run.sh: $OUT/bench_$b is missing; build first:" >&2
    echo "  cmake -S . -B $BUILD && cmake --build $BUILD -j2" >&2
    exit 1
  fi
done
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
: >"$RESULTS"

# Workload sizes (the same for every implementation unless noted).
SWITCH_N=10000000
SPAWN_N=1000000
SLEEPERS_NS=(100000 1000000)
TIMERS_N=1000000
GATHER_NS=(10000 100)   # tasks; each sleeps GATHER_S seconds
GATHER_S=0.1
QUEUE_N=10000000
LOCK_N=1000000
PY_SWITCH_N=$SWITCH_N
PY_SLEEPERS_MAX=1000000
PY_QUEUE_N=1000000
PY_LOCK_N=200000
if [ "$QUICK" = 1 ]; then
  PY_SWITCH_N=1000000
  PY_SLEEPERS_MAX=100000
  PY_QUEUE_N=200000
  PY_LOCK_N=100000
fi
# One benchmark process may take at most this long.
TIMEOUT=${CAWAIT_BENCH_TIMEOUT:-300}

note() { echo "# $*"; }
start_s=$(date +%s)

# ---------------------------------------------------------------- peers ---
IMPLS=(cawait)

HAVE_GO=0
if command -v go >/dev/null 2>&1; then
  go_env=(GOPROXY=off GOFLAGS= GOWORK=off GOTOOLCHAIN=local GO111MODULE=on)
  gocache=$(go env GOCACHE 2>/dev/null || true)
  # No usable default cache (no HOME, read-only HOME): keep it under BUILD.
  if [ "${gocache#/}" = "$gocache" ] || ! mkdir -p "$gocache" 2>/dev/null || [ ! -w "$gocache" ]; then
    go_env+=(GOCACHE="$OUT/go/cache" GOPATH="$OUT/go/path")
  fi
  if (cd "$ROOT/bench/peers/go" && env "${go_env[@]}" go build -o "$OUT/go_bench" .); then
    HAVE_GO=1
    IMPLS+=(go)
  else
    note "go build of bench/peers/go failed: skipping the Go peer"
  fi
else
  note "go not found: skipping the Go peer (apt-get install golang-go)"
fi

PY=/usr/bin/python3
PYBENCH=$ROOT/bench/peers/asyncio_bench.py
if [ -x "$PY" ]; then
  IMPLS+=(asyncio)
  if "$PY" -c 'import uvloop' 2>/dev/null; then
    IMPLS+=(uvloop)
  else
    note "uvloop not importable by $PY: skipping the uvloop peer (apt-get install python3-uvloop)"
  fi
else
  note "$PY not found: skipping the asyncio and uvloop peers"
fi
note "this is a noisy shared VM (~40% between rounds of the same binary):"
note "  switch, queue, lock: cawait and go report the best of 3 rounds, the Python"
note "  peers run 1 round; gather: every implementation reports the best of 3 rounds"
note "lock: Go's sync.Mutex is not FIFO: under GOMAXPROCS=1 the holder re-takes it"
note "  while the waiter stays parked (a few hundred hand-offs per 1M locks), while"
note "  cawait and asyncio hand the lock to the waiter on every release"

# -------------------------------------------------------------- running ---

# "1000000" -> "1m", "100000" -> "100k".
size_label() {
  local n=$1
  if [ $((n % 1000000)) -eq 0 ]; then echo "$((n / 1000000))m"
  elif [ $((n % 1000)) -eq 0 ]; then echo "$((n / 1000))k"
  else echo "$n"; fi
}

# Sets CMD to the command that runs benchmark $2 of implementation $1 at
# size $3, with the extra arguments $4... (gather's SECONDS).
bench_cmd() {
  local impl=$1 bench=$2 n=$3
  shift 3
  case "$impl" in
    cawait) CMD=("$OUT/bench_$bench" "$n" "$@") ;;
    go) CMD=(env GOMAXPROCS=1 "$OUT/go_bench" "$bench" "$n" "$@") ;;
    asyncio) CMD=("$PY" "$PYBENCH" "$bench" "$n" "$@") ;;
    uvloop) CMD=("$PY" "$PYBENCH" "$bench" "$n" "$@" --uvloop) ;;
  esac
}

# run_one IMPL BENCH N FULL_N [SUFFIX [ARGS...]]
# Runs one benchmark (with the extra arguments ARGS after N); its BENCH lines
# get "_SUFFIX" appended to their names (none if SUFFIX is empty).
# When N < FULL_N (a peer scaled down), per-operation figures (unit ns) are
# kept, as they stay comparable, and totals (seconds, MiB) are dropped.
run_one() {
  local impl=$1 bench=$2 n=$3 full=$4 suffix=${5:-}
  shift $(($# < 5 ? $# : 5))
  local out rc what="$impl $bench N=$n${*:+ $*}"
  bench_cmd "$impl" "$bench" "$n" "$@"
  out=$(timeout "$TIMEOUT" "${CMD[@]}")
  rc=$?
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 124 ]; then
      note "$what timed out after ${TIMEOUT}s"
    else
      note "$what failed (exit status $rc)"
    fi
  fi
  if [ "$n" != "$full" ]; then
    note "$impl $bench run at N=$n instead of $full: per-operation figures kept, totals dropped"
  fi
  local tag name rest line unit
  while read -r tag name rest; do
    [ "$tag" = BENCH ] || continue
    unit=${rest##* }
    if [ "$n" != "$full" ] && [ "$unit" != ns ]; then
      continue
    fi
    [ -n "$suffix" ] && name=${name}_$suffix
    line="BENCH $name $rest"
    echo "$line"
    echo "$line" >>"$RESULTS"
  done <<<"$out"
}

note "cawait benchmarks; implementations: ${IMPLS[*]}; $(nproc) CPUs; $(uname -srm)"
for impl in "${IMPLS[@]}"; do
  case "$impl" in asyncio|uvloop) n=$PY_SWITCH_N ;; *) n=$SWITCH_N ;; esac
  run_one "$impl" switch "$n" "$SWITCH_N"
done
for impl in "${IMPLS[@]}"; do
  run_one "$impl" spawn "$SPAWN_N" "$SPAWN_N"
done
for sn in "${SLEEPERS_NS[@]}"; do
  label=$(size_label "$sn")
  for impl in "${IMPLS[@]}"; do
    if { [ "$impl" = asyncio ] || [ "$impl" = uvloop ]; } && [ "$sn" -gt "$PY_SLEEPERS_MAX" ]; then
      note "$impl sleepers N=$sn skipped (--quick)"
      continue
    fi
    run_one "$impl" sleepers "$sn" "$sn" "$label"
  done
done
for impl in "${IMPLS[@]}"; do
  run_one "$impl" timers "$TIMERS_N" "$TIMERS_N"
done
for gn in "${GATHER_NS[@]}"; do
  label=$(size_label "$gn")
  for impl in "${IMPLS[@]}"; do
    run_one "$impl" gather "$gn" "$gn" "$label" "$GATHER_S"
  done
done
for impl in "${IMPLS[@]}"; do
  case "$impl" in asyncio|uvloop) n=$PY_QUEUE_N ;; *) n=$QUEUE_N ;; esac
  run_one "$impl" queue "$n" "$QUEUE_N"
done
for impl in "${IMPLS[@]}"; do
  case "$impl" in asyncio|uvloop) n=$PY_LOCK_N ;; *) n=$LOCK_N ;; esac
  run_one "$impl" lock "$n" "$LOCK_N"
done

# ---------------------------------------------------------------- table ---

PEERS=()
for impl in "${IMPLS[@]}"; do [ "$impl" = cawait ] || PEERS+=("$impl"); done
ORDER="switch spawn spawn_rss"
for sn in "${SLEEPERS_NS[@]}"; do
  l=$(size_label "$sn")
  ORDER="$ORDER sleepers_$l sleepers_rss_$l"
done
ORDER="$ORDER timers"
for gn in "${GATHER_NS[@]}"; do
  ORDER="$ORDER gather_overhead_$(size_label "$gn")"
done
ORDER="$ORDER queue lock"

RATIOS=$OUT/ratios.dat
echo
echo "== peer / cawait: how many times cawait is better (higher is better) =="
awk -v order="$ORDER" -v peers="${PEERS[*]}" -v dat="$RATIOS" '
  $1 == "BENCH" { v[$2 SUBSEP $3] = $4; u[$2] = $5 }
  END {
    nb = split(order, B, " "); np = split(peers, P, " ")
    printf "%-20s %-4s %12s", "benchmark", "unit", "cawait"
    for (j = 1; j <= np; j++) printf " %10s", P[j]
    printf "\n"
    hdr = "# benchmark"
    for (j = 1; j <= np; j++) hdr = hdr " " P[j]
    print hdr > dat
    for (i = 1; i <= nb; i++) {
      b = B[i]
      k = b SUBSEP "cawait"
      c = -1; cs = "n/a"; unit = "?"
      if (k in v) { c = v[k] + 0; cs = v[k] }
      if (b in u) unit = u[b]
      printf "%-20s %-4s %12s", b, unit, cs
      row = b
      for (j = 1; j <= np; j++) {
        k = b SUBSEP P[j]
        if (c > 0 && (k in v)) {
          r = v[k] / c
          printf " %9.2fx", r
          row = row " " sprintf("%.4f", r)
        } else {
          printf " %10s", "n/a"
          row = row " NaN"
        }
      }
      printf "\n"
      print row > dat
    }
  }' "$RESULTS"

# ---------------------------------------------------------------- chart ---

PNG=$OUT/bench.png
if [ ${#PEERS[@]} -eq 0 ]; then
  note "no peer ran: no chart"
elif ! command -v gnuplot >/dev/null 2>&1; then
  note "gnuplot not found: no chart (apt-get install gnuplot-nox)"
else
  np=${#PEERS[@]}
  nb=$(grep -vc '^#' "$RATIOS")
  # One cluster of np boxes per benchmark, centred on x = row number.
  w=$(awk -v n="$np" 'BEGIN { printf "%.4f", 0.8 / n }')
  # Log scale from a power of ten at or below the smallest ratio (<= 0.1)...
  ymin=$(awk '!/^#/ { for (i = 2; i <= NF; i++) if ($i != "NaN" && $i > 0 && (m == "" || $i < m)) m = $i }
    END { y = 0.1; while (m != "" && y > m && y > 1e-6) y /= 10; print y }' "$RATIOS")
  # ... up to a power of ten with room for the labels above the bars.
  ymax=$(awk '!/^#/ { for (i = 2; i <= NF; i++) if ($i != "NaN" && $i > m) m = $i }
    END { y = 10; while (y < 1.6 * m && y < 1e9) y *= 10; print y }' "$RATIOS")
  plot="plot '$RATIOS' using 0:(NaN):xtic(1) notitle"
  for ((k = 0; k < np; k++)); do
    case "${PEERS[k]}" in
      go) color='#7b3fbf' ;; asyncio) color='#1f9e77' ;; uvloop) color='#4fa8e0' ;; *) color='#e6a117' ;;
    esac
    off=$(awk -v k="$k" -v n="$np" -v w="$w" 'BEGIN { printf "%.4f", (k - (n - 1) / 2.0) * w }')
    col=$((k + 2))
    plot+=", '' using (\$0 + $off):$col with boxes linecolor rgb '$color' title '${PEERS[k]}'"
    plot+=", '' using (\$0 + $off):$col:(sprintf(\$$col < 9.95 ? '%.2f' : '%.1f', \$$col)) with labels font ',8' offset 0,0.7 notitle"
  done
  plot+=", 1 with lines dashtype 2 linecolor rgb '#444444' linewidth 1.5 title 'parity (1x)'"
  if gnuplot 2>"$OUT/gnuplot.log" <<EOF
set terminal pngcairo size 1400,650 font 'sans,10' noenhanced
set output '$PNG'
set title "cawait vs peers: peer value / cawait value = how many times cawait is better (higher is better, log scale)"
set datafile missing 'NaN'
set style fill solid 0.85 border -1
set boxwidth $w absolute
set logscale y
set yrange [$ymin:$ymax]
set xrange [-0.6:$nb - 0.4]
set ylabel 'peer / cawait'
set xtics rotate by -25 scale 0
set grid ytics
set key outside top center horizontal
$plot
EOF
  then
    note "chart: $PNG"
  else
    note "gnuplot failed (see $OUT/gnuplot.log): no chart"
  fi
fi

# -------------------------------------------------------------- targets ---

echo
echo "== targets =="
val() { awk -v n="$1" -v i="$2" '$1 == "BENCH" && $2 == n && $3 == i { print $4 }' "$RESULTS" | tail -n 1; }
# target LABEL VALUE OP LIMIT  (OP: le or ge)
target() {
  local label=$1 v=$2 op=$3 lim=$4 verdict
  if [ -z "$v" ]; then
    verdict="FAIL (no result)"
  elif awk -v v="$v" -v l="$lim" -v op="$op" 'BEGIN { exit !(op == "le" ? v <= l : v >= l) }'; then
    verdict="PASS ($v)"
  else
    verdict="FAIL ($v)"
  fi
  printf "%-44s %s\n" "$label" "$verdict"
}
# ratio_target LABEL BENCH PEER LIMIT: PASS if PEER's value / cawait's value
# (how many times cawait is better) >= LIMIT; SKIP if PEER did not run.
ratio_target() {
  local label=$1 b=$2 peer=$3 lim=$4 c p r=""
  if [[ " ${IMPLS[*]} " != *" $peer "* ]]; then
    printf "%-44s %s\n" "$label" "SKIP (no $peer)"
    return
  fi
  c=$(val "$b" cawait) p=$(val "$b" "$peer")
  [ -n "$c" ] && [ -n "$p" ] && r=$(awk -v p="$p" -v c="$c" 'BEGIN { if (c > 0) printf "%.2f", p / c }')
  target "$label" "$r" ge "$lim"
}
target "switch <= 10 ns" "$(val switch cawait)" le 10
ratio_target "switch >= 4.5x faster than go" switch go 4.5
target "spawn <= 0.10 s" "$(val spawn cawait)" le 0.10
target "spawn_rss <= 300 MiB" "$(val spawn_rss cawait)" le 300
target "sleepers_100k <= 1.10 s" "$(val sleepers_100k cawait)" le 1.10
target "sleepers_1m <= 2.0 s" "$(val sleepers_1m cawait)" le 2.0
target "sleepers_rss_1m <= 4608 MiB" "$(val sleepers_rss_1m cawait)" le 4608
target "timers <= 150 ns" "$(val timers cawait)" le 150
target "gather_overhead_10k <= 5 ms" "$(val gather_overhead_10k cawait)" le 5
ratio_target "gather_overhead_10k >= 5x lower than uvloop" gather_overhead_10k uvloop 5
ratio_target "queue >= 2x faster than go" queue go 2
ratio_target "queue >= 20x faster than asyncio" queue asyncio 20
target "lock <= 30 ns" "$(val lock cawait)" le 30

echo
note "results: $RESULTS; run took $(($(date +%s) - start_s)) s"
exit 0
