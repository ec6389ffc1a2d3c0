#!/usr/bin/env bash
# Compiles and runs the C example in README.md, so the front page never lies.
set -euo pipefail
build=${1:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/^```c$/{f=1;next}/^```$/{f=0}f' README.md > "$tmp/readme.c"
${CC:-cc} -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Iinclude "$tmp/readme.c" \
  "$build/libcawait.a" -lpthread -o "$tmp/readme"
"$tmp/readme"
echo "README example: OK"
