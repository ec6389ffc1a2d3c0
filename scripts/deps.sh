#!/usr/bin/env bash
# Installs the Debian packages cawait needs, only when they are missing.
#   scripts/deps.sh           build + test tools
#   scripts/deps.sh --bench   also the benchmark peers (Go, Python uvloop, gnuplot)
#   scripts/deps.sh --cross   also the AArch64 cross compiler and qemu-user
# As root it runs apt-get; otherwise it prints the command to run.
set -euo pipefail

pkgs=(build-essential cmake pkg-config valgrind clang libc-ares-dev libssl-dev openssl libcurl4-openssl-dev nghttp2-server)
for a in "$@"; do
  case "$a" in
    --bench) pkgs+=(golang-go python3 python3-uvloop python3-aiohttp gnuplot-nox curl) ;;
    --cross) pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) ;;
    *) echo "deps.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "deps.sh: not a Debian system; install: ${missing[*]}" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing packages; run:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || true
apt-get install -y -q "${missing[@]}" >/dev/null
