#!/usr/bin/env bash
# Installs cawait into a scratch prefix and builds the README example against
# it twice: with pkg-config and with CMake's find_package(cawait).
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake -S . -B "$tmp/build" -DCMAKE_INSTALL_PREFIX="$tmp/prefix" \
  -DCAWAIT_TESTS=OFF -DCAWAIT_BENCH=OFF -DCAWAIT_EXAMPLES=OFF >/dev/null
cmake --build "$tmp/build" -j "$(nproc)" >/dev/null
cmake --install "$tmp/build" >/dev/null
awk '/^```c$/{f=1;next}/^```$/{f=0}f' README.md > "$tmp/hello.c"

export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Werror "$tmp/hello.c" $(pkg-config --cflags --libs cawait) \
  -Wl,-rpath,"$tmp/prefix/lib" -o "$tmp/hello-pc"
"$tmp/hello-pc" >/dev/null

mkdir -p "$tmp/consumer"
cp "$tmp/hello.c" "$tmp/consumer/"
cat > "$tmp/consumer/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.16)
project(consumer C)
find_package(cawait REQUIRED)
add_executable(consumer hello.c)
target_link_libraries(consumer PRIVATE cawait::cawait)
CM
cmake -S "$tmp/consumer" -B "$tmp/consumer/b" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer/b" >/dev/null
"$tmp/consumer/b/consumer" >/dev/null

# Only the public API is exported from the shared library.
bad=$(nm -D --defined-only "$tmp/prefix/lib/libcawait.so" | awk '{print $3}' | grep -v '^ca_\|^ca__spawn' || true)
if [ -n "$bad" ]; then
  echo "check_install: unexpected exported symbols: $bad" >&2
  exit 1
fi
echo "install check: pkg-config and find_package(cawait) consumers OK"
