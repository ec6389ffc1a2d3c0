#!/usr/bin/env bash
# Runs every cawait benchmark and its peers (Go, asyncio, uvloop) in one go.
#
#   bench/run.sh [BUILD_DIR] [--quick] [--net-only]
#
# BUILD_DIR (default: build) must hold a CMake build with the benchmarks
# (build/bench/bench_*, echo_*, idle_client); the Go peer is built into
# BUILD_DIR/bench/go_bench.  Prints every "BENCH <name> <impl> <value>
# <unit>" line (also saved to BUILD_DIR/bench/results.txt), tables of how
# many times cawait is better than each peer (higher is better), PNG bar
# charts of those ratios (BUILD_DIR/bench/bench.png and bench_net.png, with
# gnuplot) and PASS/FAIL per target.  Peers that are not installed are
# skipped with a note.  Always exits 0 once the benchmarks ran: it is a
# report, not a test.
#
# The Python peers always run queue at 1M items and lock at 200k pairs
# instead of 10M and 1M (ns per item / pair stays comparable; at full size
# they would take a minute).  --quick also runs their switch benchmark at 1M
# switches instead of 10M, queue at 200k, lock at 100k, and skips their
# 1M-sleepers run (a wall-clock figure cannot be scaled), and runs one echo
# round instead of 3.  --net-only runs only the network benchmarks (echo,
# idle).  A full run takes about 4.5 minutes, the network part ~80 s.
# Then bench/run_to_thread.sh, run_spawn_process.sh and run_http.sh run
# (thread pool, subprocesses, HTTP client; not with --net-only), each with
# its peers and targets; their BENCH lines join results.txt.
#
# gather, queue and lock run PROC_ROUNDS times (default 3) per
# implementation, each time a fresh process, round-robin over the
# implementations, and report each implementation's best: the rounds
# spread every implementation over the same stretch of this noisy VM's
# time, as the echo rounds do.
#
# After the sleepers of each size, bench/sleepers_floor prints this
# machine's floor for them (BENCH sleepers_floor_100k pages ...): the wall
# time of a runtime that did nothing per task but commit the page its
# stack needs, in spawn order.  The sleepers targets show it beside them.
#
# Network benchmarks: every echo server (cawait's echo_server, the epoll
# reference echo_epoll, asyncio streams and Protocol, uvloop Protocol, Go)
# listens on a free port of 127.0.0.1 and is loaded by the same client,
# echo_client (C, epoll, spinning: ECHO_CLIENT_SPIN=1 unless set otherwise):
# ECHO_CONNS connections doing ECHO_MSG-byte round trips.  echo: round
# trips per second, best of ECHO_ROUNDS rounds of ECHO_SECONDS each (the rounds go round-robin over the servers); higher is
# better, so its ratio is cawait / peer.  echo_cpu: the server's CPU time
# per round trip in the same runs (the lowest of the rounds), less
# sensitive than the rate to how fast this VM wakes a process on the other
# CPU.  idle: idle_client holds IDLE_N connections to a fresh server;
# idle_rss_per_conn = the growth of the server's VmRSS / IDLE_N.  Every
# server is killed on exit, also on failure or Ctrl-C.
set -uo pipefail

BUILD=build
QUICK=0
NET_ONLY=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --net-only) NET_ONLY=1 ;;
    -h|--help) sed -n '2,49p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) BUILD=$a ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_dirs run.sh "$BUILD" bench_switch bench_spawn bench_sleepers sleepers_floor \
  bench_timers bench_gather bench_queue bench_lock echo_server echo_epoll \
  echo_client idle_client
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
# gather, queue and lock: processes per implementation (see rounds below).
PROC_ROUNDS=${PROC_ROUNDS:-3}
PY_SWITCH_N=$SWITCH_N
PY_SLEEPERS_MAX=1000000
PY_QUEUE_N=1000000
PY_LOCK_N=200000
# Network: echo_client's defaults are 10 connections, 10 s, 1024 bytes; the
# run uses 3 rounds of 3 s per server instead of one of 10 s (the rounds
# also spread this VM's noise over all servers alike).
ECHO_CONNS=10
ECHO_MSG=1024
ECHO_SECONDS=3
ECHO_ROUNDS=3
# The client polls without sleeping (echo_client's ECHO_CLIENT_SPIN): a
# client that sleeps between replies pays a wake-up on the other CPU for
# nearly every round trip, saturates first, and every fast server then
# measures about the same.  ECHO_CLIENT_SPIN=0 in the environment restores
# the sleeping client.
export ECHO_CLIENT_SPIN=${ECHO_CLIENT_SPIN:-1}
IDLE_N=10000
if [ "$QUICK" = 1 ]; then
  PY_SWITCH_N=1000000
  PY_SLEEPERS_MAX=100000
  PY_QUEUE_N=200000
  PY_LOCK_N=100000
  ECHO_ROUNDS=1
fi
# One benchmark process may take at most this long.
TIMEOUT=${CAWAIT_BENCH_TIMEOUT:-300}

note() { echo "# $*"; }
start_s=$(date +%s)

# ---------------------------------------------------------------- peers ---
IMPLS=(cawait)

HAVE_GO=0
if build_go_peer "$ROOT" "$OUT"; then
  HAVE_GO=1
  IMPLS+=(go)
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
note "  switch, spawn, queue, lock: cawait and go report the best of 3 rounds in one process,"
note "  the Python peers run 1 round; gather: every implementation reports the best of 3"
note "  rounds in one process; gather, queue and lock then run in $PROC_ROUNDS processes per"
note "  implementation, round-robin over the implementations, and each keeps its best"
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
    if [ -n "$ROUND_FILE" ]; then
      echo "$line" >>"$ROUND_FILE"
    else
      echo "$line"
      echo "$line" >>"$RESULTS"
    fi
  done <<<"$out"
}

# rounds BENCH N_CAWAIT N_PY [SUFFIX [ARGS...]]
# Runs BENCH for every implementation PROC_ROUNDS times, round-robin (all
# implementations once, then again...), each run a fresh process, and
# reports each implementation's lowest figure per BENCH name (every
# benchmark run this way is lower-is-better), with every round's figures
# in a note.  Spreading each implementation's runs over the same stretch
# of time gives every one the same share of this VM's slow phases, as the
# echo rounds do.  N_PY is the size for the Python peers (N_CAWAIT for
# cawait and Go); the full size is N_CAWAIT.
ROUND_FILE=
rounds() {
  local bench=$1 n=$2 npy=$3 suffix=${4:-} impl r
  shift $(($# < 4 ? $# : 4))
  ROUND_FILE=$(mktemp)
  for ((r = 1; r <= PROC_ROUNDS; r++)); do
    for impl in "${IMPLS[@]}"; do
      case "$impl" in
        asyncio|uvloop) run_one "$impl" "$bench" "$npy" "$n" "$suffix" "$@" ;;
        *) run_one "$impl" "$bench" "$n" "$n" "$suffix" "$@" ;;
      esac
    done
  done
  awk '$1 == "BENCH" {
      k = $2 " " $3
      if (!(k in best)) { order[++nk] = k; unit[k] = $5; best[k] = $4; all[k] = $4 }
      else { all[k] = all[k] ", " $4; if ($4 + 0 < best[k] + 0) best[k] = $4 }
    }
    END {
      for (i = 1; i <= nk; i++) {
        k = order[i]
        printf "# %s rounds: %s %s\n", k, all[k], unit[k]
        printf "BENCH %s %s %s\n", k, best[k], unit[k]
      }
    }' "$ROUND_FILE" | while read -r line; do
    echo "$line"
    case "$line" in BENCH*) echo "$line" >>"$RESULTS" ;; esac
  done
  rm -f "$ROUND_FILE"
  ROUND_FILE=
}

note "cawait benchmarks; implementations: ${IMPLS[*]}; $(nproc) CPUs; $(uname -srm)"
if [ "$NET_ONLY" = 0 ]; then
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
    # This machine's floor for the same N (bench/sleepers_floor.c).
    out=$(timeout "$TIMEOUT" "$OUT/sleepers_floor" "$sn") ||
      note "sleepers_floor N=$sn failed"
    while read -r tag name rest; do
      [ "$tag" = BENCH ] || continue
      echo "BENCH ${name}_$label $rest"
      echo "BENCH ${name}_$label $rest" >>"$RESULTS"
    done <<<"$out"
  done
  for impl in "${IMPLS[@]}"; do
    run_one "$impl" timers "$TIMERS_N" "$TIMERS_N"
  done
  for gn in "${GATHER_NS[@]}"; do
    rounds gather "$gn" "$gn" "$(size_label "$gn")" "$GATHER_S"
  done
  rounds queue "$QUEUE_N" "$PY_QUEUE_N"
  rounds lock "$LOCK_N" "$PY_LOCK_N"
fi

# -------------------------------------------------------------- network ---

# Echo servers: the implementations that run, cawait first.
NET_IMPLS=(cawait epoll)
for impl in "${IMPLS[@]}"; do
  case "$impl" in
    asyncio) NET_IMPLS+=(asyncio_streams asyncio_protocol) ;;
    uvloop) NET_IMPLS+=(uvloop_protocol) ;;
    go) NET_IMPLS+=(go) ;;
  esac
done

NETTMP=$(mktemp -d)
declare -A LIVE=()   # pids of the servers and clients still running
cleanup() {
  local pid
  for pid in "${!LIVE[@]}"; do
    kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$NETTMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets CMD to the command of IMPL's echo server on port $2.
server_cmd() {
  case "$1" in
    cawait) CMD=("$OUT/echo_server" "$2") ;;
    epoll) CMD=("$OUT/echo_epoll" "$2") ;;
    asyncio_streams) CMD=("$PY" "$PYBENCH" echo_streams "$2") ;;
    asyncio_protocol) CMD=("$PY" "$PYBENCH" echo_protocol "$2") ;;
    uvloop_protocol) CMD=("$PY" "$PYBENCH" echo_protocol "$2" --uvloop) ;;
    go) CMD=(env GOMAXPROCS=1 "$OUT/go_bench" echo "$2") ;;
  esac
}

# start_server IMPL: starts IMPL's echo server on a free port (the process
# itself, no wrapper: its VmRSS is read).  Sets SRV_PID and SRV_PORT;
# returns 1 (with a note) if it does not come up within 10 s.
start_server() {
  local impl=$1
  server_cmd "$impl" 0
  start_listening "$NETTMP/$impl.out" "$NETTMP/$impl.err" "${CMD[@]}" && return 0
  note "$impl echo server did not start: $(head -c 300 "$NETTMP/$impl.err")"
  return 1
}

emit() {
  echo "$*"
  echo "$*" >>"$RESULTS"
}

# echo: start every server, then ECHO_ROUNDS rounds of echo_client against
# each in turn; report each server's best round.
note "echo: $ECHO_CONNS connections x $ECHO_MSG-byte round trips, best of $ECHO_ROUNDS rounds of ${ECHO_SECONDS} s (+0.5 s warm-up) per server, servers: ${NET_IMPLS[*]}; client spinning: ECHO_CLIENT_SPIN=$ECHO_CLIENT_SPIN"
note "  the pure-Python asyncio servers run 3-4x slower in their first ~2 s (their first round);"
note "  every server gets the same rounds and the best one is kept"
declare -A EPID=() EPORT=() BEST=() BEST_CPU=() ROUNDS=()
for impl in "${NET_IMPLS[@]}"; do
  if start_server "$impl"; then
    EPID[$impl]=$SRV_PID
    EPORT[$impl]=$SRV_PORT
  fi
done
# get KEY: the value of echo_client's "KEY value" line in $out.
get() { awk -v k="$1" '$1 == k { print $2 }' <<<"$out"; }
for ((round = 1; round <= ECHO_ROUNDS; round++)); do
  for impl in "${NET_IMPLS[@]}"; do
    [ -n "${EPID[$impl]:-}" ] || continue
    out=$(timeout $((ECHO_SECONDS + 30)) "$OUT/echo_client" 127.0.0.1 "${EPORT[$impl]}" \
      "$ECHO_CONNS" "$ECHO_SECONDS" "$ECHO_MSG" "${EPID[$impl]}" 2>"$NETTMP/client.err")
    rc=$?
    rt=$(get round_trips_per_s)
    if [ $rc -ne 0 ] || [ -z "$rt" ]; then
      note "echo $impl round $round failed (exit status $rc): $(head -c 300 "$NETTMP/client.err")"
      continue
    fi
    us=$(get server_cpu_us_per_rt)
    ROUNDS[$impl]="${ROUNDS[$impl]:-}${ROUNDS[$impl]:+; }$rt rt/s $us us (CPU: server $(get server_cpu_pct)%, client $(get client_cpu_pct)%)"
    if [ -z "${BEST[$impl]:-}" ] || [ "$rt" -gt "${BEST[$impl]}" ]; then
      BEST[$impl]=$rt
    fi
    if [ -n "$us" ] && { [ -z "${BEST_CPU[$impl]:-}" ] ||
      awk -v a="$us" -v b="${BEST_CPU[$impl]}" 'BEGIN { exit !(a < b) }'; }; then
      BEST_CPU[$impl]=$us
    fi
  done
done
for impl in "${NET_IMPLS[@]}"; do
  [ -n "${EPID[$impl]:-}" ] && stop_pid "${EPID[$impl]}"
  [ -n "${BEST[$impl]:-}" ] || continue
  note "echo $impl rounds: ${ROUNDS[$impl]}"
  emit "BENCH echo $impl ${BEST[$impl]} rt/s"
done
for impl in "${NET_IMPLS[@]}"; do
  [ -z "${BEST_CPU[$impl]:-}" ] || emit "BENCH echo_cpu $impl ${BEST_CPU[$impl]} us"
done

# idle: a fresh server per implementation, IDLE_N idle connections.
vmrss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null; }
note "idle: $IDLE_N connections (each made one 8-byte round trip, then idle) held by idle_client; server VmRSS growth / $IDLE_N"
for impl in "${NET_IMPLS[@]}"; do
  start_server "$impl" || continue
  sleep 0.2
  before=$(vmrss "$SRV_PID")
  : >"$NETTMP/idle.out"
  "$OUT/idle_client" 127.0.0.1 "$SRV_PORT" "$IDLE_N" >>"$NETTMP/idle.out" 2>"$NETTMP/idle.err" &
  cpid=$!
  LIVE[$cpid]=1
  ok=0
  for ((i = 0; i < 1200; i++)); do   # up to 60 s
    if grep -q '^connected' "$NETTMP/idle.out"; then ok=1; break; fi
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.05
  done
  if [ $ok = 1 ]; then
    sleep 0.3
    after=$(vmrss "$SRV_PID")
  fi
  stop_pid "$cpid"
  stop_pid "$SRV_PID"
  if [ $ok = 1 ] && [ -n "$before" ] && [ -n "$after" ]; then
    emit "BENCH idle_rss_per_conn $impl $(awk -v a="$after" -v b="$before" -v n="$IDLE_N" \
      'BEGIN { printf "%.2f", (a - b) / n }') KiB"
  else
    note "idle $impl failed: $(head -c 300 "$NETTMP/idle.err")"
  fi
done

# ---------------------------------------------------------------- table ---

# Benchmarks where a higher value is better (rates): their ratio is
# cawait / peer instead of peer / cawait, so that in every table and chart
# a ratio above 1 means cawait is better.
HIGHER="echo"

# table TITLE ORDER PEERS DAT: prints the table of ratios (rows: the
# benchmarks of ORDER, columns: the implementations of PEERS) and writes
# them to DAT for the chart.
table() {
  local title=$1 order=$2 peers=$3 dat=$4
  echo
  echo "== $title =="
  awk -v order="$order" -v peers="$peers" -v dat="$dat" -v higher="$HIGHER" '
    $1 == "BENCH" { v[$2 SUBSEP $3] = $4; u[$2] = $5 }
    END {
      nb = split(order, B, " "); np = split(peers, P, " ")
      nh = split(higher, H, " ")
      for (i = 1; i <= nh; i++) hi[H[i]] = 1
      printf "%-20s %-5s %12s", "benchmark", "unit", "cawait"
      for (j = 1; j <= np; j++) {
        w[j] = length(P[j]) + 1
        if (w[j] < 11) w[j] = 11
        printf " %*s", w[j] - 1, P[j]
      }
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
        printf "%-20s %-5s %12s", b, unit, cs
        row = b
        for (j = 1; j <= np; j++) {
          k = b SUBSEP P[j]
          if (c > 0 && (k in v) && v[k] > 0) {
            r = (b in hi) ? c / v[k] : v[k] / c
            printf " %*.2fx", w[j] - 2, r
            row = row " " sprintf("%.4f", r)
          } else {
            printf " %*s", w[j] - 1, "n/a"
            row = row " NaN"
          }
        }
        printf "\n"
        print row > dat
      }
    }' "$RESULTS"
}

PEERS=()
for impl in "${IMPLS[@]}"; do [ "$impl" = cawait ] || PEERS+=("$impl"); done
NET_PEERS=()
for impl in "${NET_IMPLS[@]}"; do [ "$impl" = cawait ] || NET_PEERS+=("$impl"); done
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
NET_ORDER="echo echo_cpu idle_rss_per_conn"

RATIOS=$OUT/ratios.dat
NET_RATIOS=$OUT/ratios_net.dat
if [ "$NET_ONLY" = 0 ]; then
  table "peer / cawait: how many times cawait is better (higher is better)" \
    "$ORDER" "${PEERS[*]}" "$RATIOS"
fi
table "network: how many times cawait is better (echo: cawait / peer; echo_cpu, idle: peer / cawait; higher is better)" \
  "$NET_ORDER" "${NET_PEERS[*]}" "$NET_RATIOS"

# ---------------------------------------------------------------- chart ---

# chart DAT PNG TITLE PEER...: a bar chart of the ratios in DAT (written by
# table), one cluster of bars per benchmark, one bar per peer.
chart() {
  local dat=$1 png=$2 title=$3
  shift 3
  local peers=("$@")
  local np=${#peers[@]} nb w ymin ymax plot k color off col
  nb=$(grep -vc '^#' "$dat")
  # One cluster of np boxes per benchmark, centred on x = row number.
  w=$(awk -v n="$np" 'BEGIN { printf "%.4f", 0.8 / n }')
  # Log scale from a power of ten at or below the smallest ratio (<= 0.1)...
  ymin=$(awk '!/^#/ { for (i = 2; i <= NF; i++) if ($i != "NaN" && $i > 0 && (m == "" || $i < m)) m = $i }
    END { y = 0.1; while (m != "" && y > m && y > 1e-6) y /= 10; print y }' "$dat")
  # ... up to a power of ten with room for the labels above the bars.
  ymax=$(awk '!/^#/ { for (i = 2; i <= NF; i++) if ($i != "NaN" && $i > m) m = $i }
    END { y = 10; while (y < 1.6 * m && y < 1e9) y *= 10; print y }' "$dat")
  plot="plot '$dat' using 0:(NaN):xtic(1) notitle"
  for ((k = 0; k < np; k++)); do
    case "${peers[k]}" in
      go) color='#7b3fbf' ;;
      asyncio|asyncio_streams) color='#1f9e77' ;;
      asyncio_protocol) color='#8fd1b9' ;;
      uvloop|uvloop_protocol) color='#4fa8e0' ;;
      epoll) color='#777777' ;;
      *) color='#e6a117' ;;
    esac
    off=$(awk -v k="$k" -v n="$np" -v w="$w" 'BEGIN { printf "%.4f", (k - (n - 1) / 2.0) * w }')
    col=$((k + 2))
    plot+=", '' using (\$0 + $off):$col with boxes linecolor rgb '$color' title '${peers[k]}'"
    plot+=", '' using (\$0 + $off):$col:(sprintf(\$$col < 0.095 ? '%.3f' : \$$col < 9.95 ? '%.2f' : '%.1f', \$$col)) with labels font ',8' offset 0,0.7 notitle"
  done
  plot+=", 1 with lines dashtype 2 linecolor rgb '#444444' linewidth 1.5 title 'parity (1x)'"
  if gnuplot 2>"$OUT/gnuplot.log" <<EOF
set terminal pngcairo size 1400,650 font 'sans,10' noenhanced
set output '$png'
set title "$title"
set datafile missing 'NaN'
set style fill solid 0.85 border -1
set boxwidth $w absolute
set logscale y
set yrange [$ymin:$ymax]
set xrange [-0.6:$nb - 0.4]
set ylabel 'times cawait is better'
set xtics rotate by -25 scale 0
set grid ytics
set key outside top center horizontal
$plot
EOF
  then
    note "chart: $png"
  else
    note "gnuplot failed (see $OUT/gnuplot.log): no chart $png"
  fi
}

if ! command -v gnuplot >/dev/null 2>&1; then
  note "gnuplot not found: no charts (apt-get install gnuplot-nox)"
else
  if [ "$NET_ONLY" = 1 ]; then
    :
  elif [ ${#PEERS[@]} -eq 0 ]; then
    note "no peer ran: no chart"
  else
    chart "$RATIOS" "$OUT/bench.png" \
      "cawait vs peers: peer value / cawait value = how many times cawait is better (higher is better, log scale)" \
      "${PEERS[@]}"
  fi
  chart "$NET_RATIOS" "$OUT/bench_net.png" \
    "cawait vs peers, network: how many times cawait is better (echo: cawait rt/s / peer rt/s; echo_cpu, idle: peer / cawait; log scale)" \
    "${NET_PEERS[@]}"
fi

# -------------------------------------------------------------- targets ---

echo
echo "== targets =="
# ratio_target LABEL BENCH PEER LIMIT: PASS if how many times cawait is
# better than PEER (PEER's value / cawait's value; cawait's / PEER's for the
# HIGHER benchmarks) >= LIMIT; SKIP if PEER did not run.
ratio_target() {
  local label=$1 b=$2 peer=$3 lim=$4 c p r="" impls=" ${IMPLS[*]} "
  if [[ " $NET_ORDER " == *" $b "* ]]; then
    impls=" ${NET_IMPLS[*]} "
  fi
  if [[ "$impls" != *" $peer "* ]]; then
    printf "%-44s %s\n" "$label" "SKIP (no $peer)"
    return
  fi
  c=$(val "$b" cawait) p=$(val "$b" "$peer")
  if [ -n "$c" ] && [ -n "$p" ]; then
    if [[ " $HIGHER " == *" $b "* ]]; then
      r=$(awk -v p="$p" -v c="$c" 'BEGIN { if (p > 0) printf "%.2f", c / p }')
    else
      r=$(awk -v p="$p" -v c="$c" 'BEGIN { if (c > 0) printf "%.2f", p / c }')
    fi
  fi
  verdict "$label" "$r" ge "$lim"
}
if [ "$NET_ONLY" = 0 ]; then
  verdict "switch <= 10 ns" "$(val switch cawait)" le 10
  ratio_target "switch >= 4.5x faster than go" switch go 4.5
  verdict "spawn <= 0.10 s" "$(val spawn cawait)" le 0.10
  verdict "spawn_rss <= 300 MiB" "$(val spawn_rss cawait)" le 300
  verdict "sleepers_100k <= 1.10 s" "$(val sleepers_100k cawait)" le 1.10 \
    "floor with a page per task: $(val sleepers_floor_100k pages)"
  verdict "sleepers_1m <= 2.0 s" "$(val sleepers_1m cawait)" le 2.0 \
    "floor with a page per task: $(val sleepers_floor_1m pages)"
  verdict "sleepers_rss_1m <= 4608 MiB" "$(val sleepers_rss_1m cawait)" le 4608
  verdict "timers <= 150 ns" "$(val timers cawait)" le 150
  verdict "gather_overhead_10k <= 5 ms" "$(val gather_overhead_10k cawait)" le 5
  ratio_target "gather_overhead_10k >= 5x lower than uvloop" gather_overhead_10k uvloop 5
  ratio_target "queue >= 2x faster than go" queue go 2
  ratio_target "queue >= 20x faster than asyncio" queue asyncio 20
  verdict "lock <= 30 ns" "$(val lock cawait)" le 30
fi
ratio_target "echo >= 0.95x the epoll reference" echo epoll 0.95
ratio_target "echo >= 1.2x uvloop_protocol" echo uvloop_protocol 1.2
ratio_target "echo >= 1.2x go" echo go 1.2
verdict "idle_rss_per_conn <= 8 KiB" "$(val idle_rss_per_conn cawait)" le 8

# ------------------------------------------------------- other parts ---

# Executors, subprocesses and the HTTP client have their own scripts (each
# runs its peers in the same run and prints its targets); their BENCH lines
# join results.txt.
if [ "$NET_ONLY" = 0 ]; then
  for part in to_thread spawn_process http; do
    script=$ROOT/bench/run_$part.sh
    [ -x "$script" ] || continue
    echo
    echo "== $part =="
    args=("$BUILD")
    [ "$QUICK" = 1 ] && args+=(--quick)
    "$script" "${args[@]}" | tee "$OUT/results_$part.txt"
    grep '^BENCH ' "$OUT/results_$part.txt" >>"$RESULTS"
  done
fi

echo
note "results: $RESULTS; run took $(($(date +%s) - start_s)) s"
exit 0
