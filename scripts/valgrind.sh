#!/usr/bin/env bash
# Runs the core test programs under valgrind memcheck: any error or leak
# fails.  Heavy tests are skipped (CAWAIT_TEST_LIGHT=1) and timeouts scaled.
set -euo pipefail
build=${1:-build}
export CAWAIT_TEST_LIGHT=1 CAWAIT_TEST_TIMEOUT_SCALE=10
status=0
for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  echo "== valgrind $(basename "$t")"
  if ! valgrind -q --error-exitcode=99 --leak-check=full \
        --show-leak-kinds=definite,indirect,possible \
        --errors-for-leak-kinds=definite,indirect,possible \
        --track-fds=no "$t"; then
    status=1
  fi
done
exit $status
