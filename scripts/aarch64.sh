#!/usr/bin/env bash
# Cross-builds cawait for AArch64 (Debian's aarch64-linux-gnu-gcc) and runs
# the coroutine, loop and task tests under qemu-user.  For CI: prints each
# runner's "N passed, N failed, N skipped" line and exits nonzero on any
# failure.
#
#   scripts/aarch64.sh              build into build-aarch64 and test
#   BUILD_DIR=dir scripts/aarch64.sh
#   CAWAIT_QEMU_BINFMT_NS=0         do not try a private binfmt_misc (below)
#
# Needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user
# (scripts/deps.sh --cross installs them).
set -euo pipefail

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
B=${BUILD_DIR:-build-aarch64}
SYSROOT=/usr/aarch64-linux-gnu
QEMU=(qemu-aarch64 -L "$SYSROOT")

# Tests that re-execute their own binary (run_child in tests/runner.c) need
# the kernel to execve an AArch64 ELF: qemu-user passes a guest's execve to
# the host kernel, so that works only where binfmt_misc hands AArch64
# binaries to qemu (package qemu-user-binfmt, docker/setup-qemu-action) or on
# an AArch64 host.  Without either, the test phase re-runs itself in a
# private user + mount namespace with a binfmt_misc instance of its own
# (Linux 6.7+), which the rest of the system does not see.  Where that
# fails too, those tests are skipped (below).
can_exec() { QEMU_LD_PREFIX=$SYSROOT "$B/tests/test_coro" --list >/dev/null 2>&1; }

register_private_binfmt() {
  local qemu; qemu=$(command -v qemu-aarch64)
  local magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null &&
    printf '%s' ":qemu-aarch64:M::$magic:$mask:$qemu:" \
      >/proc/sys/fs/binfmt_misc/register 2>/dev/null
}

if [ "${1:-}" = --tests-in-binfmt-ns ]; then
  register_private_binfmt || echo "aarch64.sh: no private binfmt_misc here" >&2
else
  missing=0
  for tool in aarch64-linux-gnu-gcc qemu-aarch64 cmake; do
    command -v "$tool" >/dev/null || { echo "aarch64.sh: $tool not found" >&2; missing=1; }
  done
  [ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ] ||
    { echo "aarch64.sh: no AArch64 libc in $SYSROOT" >&2; missing=1; }
  if [ "$missing" = 1 ]; then
    echo "aarch64.sh: install the cross tools with: scripts/deps.sh --cross" >&2
    exit 2
  fi

  cmake -S . -B "$B" \
    -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/toolchain-aarch64-linux-gnu.cmake" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCAWAIT_BENCH=OFF -DCAWAIT_EXAMPLES=ON \
    -DCAWAIT_WITH_CARES=OFF -DCAWAIT_WITH_OPENSSL=OFF -DCAWAIT_WITH_CURL=OFF
  cmake --build "$B" -j"$(nproc)"

  if ! can_exec && [ "${CAWAIT_QEMU_BINFMT_NS:-1}" = 1 ] &&
     command -v unshare >/dev/null &&
     unshare --user --map-root-user --mount true 2>/dev/null; then
    exec unshare --user --map-root-user --mount "$SELF" --tests-in-binfmt-ns
  fi
fi

# The loader for the binaries, also for any child that a test re-executes
# through binfmt_misc (which does not see our -L).
export QEMU_LD_PREFIX=$SYSROOT
# Skip the heavy tests (the million live tasks) and give emulation time.
export CAWAIT_TEST_LIGHT=1
export CAWAIT_TEST_TIMEOUT_SCALE=5
# qemu-user (7.2 at least) answers every madvise() with 0 without doing
# anything; the library checks that a guard really faults and falls back to
# mprotect guards, which qemu does emulate (test_coro prints the mode).
# A guest that dies of a signal makes qemu write a qemu_*.core file.
ulimit -c 0

declare -A skip=()
if can_exec; then
  echo "aarch64.sh: AArch64 binaries can be exec'd: running the re-exec tests"
else
  # Each asserts on a re-executed child: under plain qemu-user the child's
  # execve fails with ENOEXEC and exits 127.  The overflow children are run
  # directly under qemu below instead.
  why="re-executes itself: execve of an AArch64 binary needs binfmt_misc"
  skip[test_coro:guard_faults]=$why
  skip[test_task:debug_eperm_message]=$why
  skip[test_task:unretrieved_failure_reported]=$why
  skip[test_task:debug_slow_task]=$why
  skip[test_task:stack_overflow_reported]=$why
fi
# Canary mode catches a deep overflow only if the stack runs into unmapped
# memory within a few guard sizes of its end.  qemu-user lays guest mmaps
# out bottom-up and back to back, so the overflow runs through the
# neighbouring stack chunk (64 MiB) and the signal stack before it faults,
# far from the task's stack: not reported there, unlike on a real kernel.
skip[test_task:stack_overflow_canary]="canary deep overflow depends on the host mmap layout; qemu's differs"

fail=0

run_suite() {
  local name=$1 bin=$B/tests/$1
  [ -x "$bin" ] || { echo "== $name: not built, nothing to run"; return 0; }
  echo "== $name (qemu-aarch64)"
  local list
  list=$("${QEMU[@]}" "$bin" --list) || { echo "$name --list failed"; fail=1; return 0; }
  local run=() t
  for t in $list; do
    if [ -n "${skip[$name:$t]:-}" ]; then
      echo "skip (qemu) - $t: ${skip[$name:$t]}"
    else
      run+=("$t")
    fi
  done
  [ ${#run[@]} -gt 0 ] || return 0
  "${QEMU[@]}" "$bin" "${run[@]}" || fail=1
}

# expect_child SUITE HELPER ENV SIGNAL PATTERN...: run a test's child helper
# directly under qemu; it must die of SIGNAL with every PATTERN on stderr.
child_pass=0 child_fail=0
expect_child() {
  local bin=$B/tests/$1 helper=$2 env=$3 sig=$4 st=0 p ok=1 err
  shift 4
  err=$(env "$env" timeout 120 "${QEMU[@]}" "$bin" --child "$helper" 2>&1 >/dev/null) || st=$?
  [ "$st" -eq $((128 + $(kill -l "$sig"))) ] || ok=0
  for p in "$@"; do
    grep -qF -- "$p" <<<"$err" || ok=0
  done
  if [ "$ok" = 1 ]; then
    echo "ok - $helper ($env): SIG$sig"
    child_pass=$((child_pass + 1))
  else
    echo "not ok - $helper ($env): exit $st, stderr:"
    sed 's/^/    /' <<<"$err"
    child_fail=$((child_fail + 1))
    fail=1
  fi
}

run_suite test_coro
run_suite test_loop
run_suite test_task
run_suite test_concurrency
run_suite test_sync
run_suite test_queue
run_suite test_generator
run_suite test_net
run_suite test_dns

# What the re-executing overflow tests check (SIGSEGV handled on the
# alternate signal stack, the sp read from the AArch64 ucontext, the
# red-zone check), run as plain qemu processes so that it is covered without
# binfmt_misc, and under CAWAIT_TEST_LIGHT=1, which makes the stack_overflow
# tests skip themselves.
echo "== overflow children (qemu-aarch64)"
expect_child test_coro guard_write CAWAIT_STACK_GUARD=mprotect SEGV "mode=mprotect"
expect_child test_task overflow CAWAIT_STACK_GUARD=mprotect SEGV \
  "stack overflow in task 'deep'" "guard mprotect"
expect_child test_task overflow_shallow CAWAIT_STACK_GUARD=canary ABRT \
  "stack overflow in task 'shallow'" "red zone"
echo "$child_pass passed, $child_fail failed, 0 skipped"

if [ -x "$B/examples/hello" ]; then
  echo "== hello (qemu-aarch64)"
  "${QEMU[@]}" "$B/examples/hello" || fail=1
fi

if [ "$fail" != 0 ]; then
  echo "aarch64.sh: FAILED" >&2
  exit 1
fi
echo "aarch64.sh: all AArch64 tests passed under qemu-user"
