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
