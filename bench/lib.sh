# Shell functions shared by bench/run*.sh (sourced, not run).

# build_go_peer ROOT OUT: build bench/peers/go into OUT/go_bench, offline.
# Returns 0 if it is there, 1 (with a note on stdout) if Go is missing or
# the build failed.  Without a usable default Go cache (no HOME, a
# read-only HOME) the cache is kept under OUT.
build_go_peer() {
  local root=$1 out=$2 gocache
  if ! command -v go >/dev/null 2>&1; then
    echo "# go not found: skipping the Go peer (apt-get install golang-go)"
    return 1
  fi
  local go_env=(GOPROXY=off GOFLAGS= GOWORK=off GOTOOLCHAIN=local GO111MODULE=on)
  gocache=$(go env GOCACHE 2>/dev/null || true)
  if [ "${gocache#/}" = "$gocache" ] || ! mkdir -p "$gocache" 2>/dev/null || [ ! -w "$gocache" ]; then
    go_env+=(GOCACHE="$out/go/cache" GOPATH="$out/go/path")
  fi
  if ! (cd "$root/bench/peers/go" && env "${go_env[@]}" go build -o "$out/go_bench" .); then
    echo "# go build of bench/peers/go failed: skipping the Go peer"
    return 1
  fi
  return 0
}

# bench_dirs SCRIPT BUILD BINARY...: checks that BUILD is a build directory
# holding bench/BINARY for each BINARY, then sets BUILD (absolute) and OUT
# (BUILD/bench).  Exits the calling script with 1 and a message otherwise.
bench_dirs() {
  local script=$1 build=$2 b
  shift 2
  if [ ! -d "$build" ]; then
    echo "$script: no build directory $build; build first (make build)" >&2
    exit 1
  fi
  for b in "$@"; do
    if [ ! -x "$build/bench/$b" ]; then
      echo "$script: $build/bench/$b is missing; build first:" >&2
      echo "  cmake -S . -B $build && cmake --build $build -j2" >&2
      exit 1
    fi
  done
  BUILD=$(cd "$build" && pwd)
  OUT=$BUILD/bench
}

# stop_pid PID: SIGTERM, then SIGKILL after 5 s; reaps it and takes it out
# of the caller's LIVE array (pids its exit trap kills).
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  unset "LIVE[$pid]"
}

# start_listening OUTFILE ERRFILE COMMAND...: starts a benchmark server
# (stdout to OUTFILE, stderr to ERRFILE, its pid in LIVE) and waits up to
# 10 s for its "listening on PORT" line.  Sets SRV_PID and SRV_PORT;
# returns 1, the server stopped, if the line does not come.
start_listening() {
  local out=$1 err=$2 i
  shift 2
  : >"$out"
  "$@" >>"$out" 2>"$err" &
  SRV_PID=$!
  LIVE[$SRV_PID]=1
  SRV_PORT=
  for ((i = 0; i < 200; i++)); do
    SRV_PORT=$(awk '$1 == "listening" && $2 == "on" { print $3; exit }' "$out")
    [ -n "$SRV_PORT" ] && return 0
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.05
  done
  stop_pid "$SRV_PID"
  return 1
}

# val NAME IMPL: the value of the last "BENCH NAME IMPL VALUE UNIT" line in
# the caller's $RESULTS file (empty if none).
val() { awk -v n="$1" -v i="$2" '$1 == "BENCH" && $2 == n && $3 == i { print $4 }' "$RESULTS" | tail -n 1; }

# verdict LABEL VALUE OP LIMIT [DETAIL]: prints LABEL and PASS or FAIL with
# VALUE (and DETAIL); OP is le or ge.  No VALUE or LIMIT: FAIL (no result).
verdict() {
  local label=$1 v=$2 op=$3 lim=$4 detail=${5:-} res
  if [ -z "$v" ] || [ -z "$lim" ]; then
    res="FAIL (no result)"
  elif awk -v v="$v" -v l="$lim" -v op="$op" 'BEGIN { exit !(op == "le" ? v <= l : v >= l) }'; then
    res="PASS ($v${detail:+; $detail})"
  else
    res="FAIL ($v${detail:+; $detail})"
  fi
  printf "%-44s %s\n" "$label" "$res"
}
