#!/usr/bin/env bash
# Runs every example under examples/ in the order of docs/tutorial.md and
# checks each one against the seed it reproduces:
#   - it exits with status 0;
#   - the lines whose order the seed fixes come out in that order;
#   - each measured "... total: X.XX s" is within [-5%, +50%] of the expected
#     (scaled) time: sleeps never end early, and a loaded machine only adds.
#     An example that is only too slow runs once more (a shared host can
#     stall any process for a moment), and its times are checked again on
#     the second run; too fast, or too slow twice, fails.
# Usage: scripts/demo.sh BUILD_DIR      (`make demo` builds first, then calls
# this with its build directory).  Builds nothing itself.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
bin=$1/examples
if [ ! -d "$bin" ]; then
  echo "demo: $bin not found; build first (make demo)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)

# Seconds before an example counts as hung.
limit=60
# Accepted window around an expected time, as factors.
lo_factor=0.95
hi_factor=1.50

total=0     # examples run
failed=()   # names of the examples that failed a check
covered=()  # names of the examples this script knows about
name=""     # example being checked
out=""      # its stdout and stderr
bad=0       # checks it failed
skip=0      # 1 if it could not run, so its output checks are skipped
rerun=0     # 1 once the current example has been run a second time

# fail MESSAGE: record a failed check of the current example.
fail() {
  echo "  FAIL: $*"
  bad=$((bad + 1))
}

# run NAME HEADER: run one example, show its output, check its exit status.
run() {
  name=$1
  bad=0
  skip=0
  rerun=0
  total=$((total + 1))
  covered+=("$name")
  echo
  echo "==> $name: $2"
  echo "    (examples/$name.c)"
  if [ ! -x "$bin/$name" ]; then
    out=""
    skip=1
    fail "$bin/$name is missing; is examples/$name.c built?"
    return 0
  fi
  execute
  printf '%s\n' "$out" | sed 's/^/    | /'
}

# execute: run the current example into $out; fail if it hangs or exits
# with a status other than 0.
execute() {
  local rc=0
  out=$(timeout "$limit" "$bin/$name" 2>&1) || rc=$?
  if [ "$rc" -eq 124 ]; then
    fail "did not finish within ${limit} s"
  elif [ "$rc" -ne 0 ]; then
    fail "exit status $rc, expected 0"
  fi
}

# expect_order LINE...: the output lines equal to one of LINE, in the order
# they come, must be exactly LINE... (each once, in this order).
expect_order() {
  local want got
  [ "$skip" -eq 0 ] || return 0
  want=$(printf '%s\n' "$@")
  got=$(printf '%s\n' "$out" | grep -Fx -f <(printf '%s\n' "$@") || true)
  if [ "$got" = "$want" ]; then
    echo "  ok: order of $# lines as expected"
  else
    fail "line order differs from the expected one"
    echo "    want: ${want//$'\n'/ | }"
    echo "    got:  ${got//$'\n'/ | }"
  fi
}

# expect_absent LINE: no output line equals LINE.
expect_absent() {
  [ "$skip" -eq 0 ] || return 0
  if printf '%s\n' "$out" | grep -Fxq -- "$1"; then
    fail "unexpected line: $1"
  fi
}

# expect_time LABEL SECONDS: the line "LABELtotal: X.XX s..." exists and X is
# within [SECONDS * lo_factor, SECONDS * hi_factor].
expect_time() {
  local label=$1 want=$2 line got
  [ "$skip" -eq 0 ] || return 0
  line=$(printf '%s\n' "$out" | grep -E "^${label}total: [0-9]+\.[0-9]+ s" |
    head -n 1 || true)
  if [ -z "$line" ]; then
    fail "no line \"${label}total: X.XX s\""
    return 0
  fi
  got=${line#"${label}total: "}
  got=${got%% s*}
  if awk -v g="$got" -v w="$want" -v lo="$lo_factor" -v hi="$hi_factor" \
    'BEGIN { exit !(g >= w * lo && g <= w * hi) }'; then
    echo "  ok: ${label}total ${got} s, expected ${want} s (-5%/+50%)"
  elif [ "$rerun" -eq 0 ] && awk -v g="$got" -v w="$want" -v hi="$hi_factor" \
    'BEGIN { exit !(g > w * hi) }'; then
    rerun_example "${label}total ${got} s is above ${want} s +50%"
    expect_time "$label" "$want"
  else
    fail "${label}total ${got} s is outside ${want} s -5%/+50%"
  fi
}

# rerun_example WHY: run the current example once more; later checks read
# the new output.
rerun_example() {
  rerun=1
  echo "  slow: $1; running $name once more"
  execute
  printf '%s\n' "$out" | grep -E 'total: [0-9]+\.[0-9]+ s' | sed 's/^/    | /'
}

# done_example: count the example as failed if any of its checks failed.
done_example() {
  if [ "$bad" -ne 0 ]; then
    failed+=("$name")
  fi
}

echo "cawait demo: the seed tutorials' examples in C, sleeps scaled 1/10"
echo "(1 s of seed time is 0.1 s here)"

run hello "README example: two tasks sleeping at the same time"
expect_order "after 0.1 s: hello" "after 0.2 s: hello"
expect_time "" 0.20
done_example

run seed000_ex1_download "seed 000, section 5, exercise 1: a coroutine (download_file)"
expect_order "start download: video.mp4 (100MB)" "download done: video.mp4" \
  "result: video.mp4"
expect_time "" 1.00
done_example

run seed000_ex2_gather "seed 000, section 5, exercise 2: sequential vs gather"
expect_order \
  "start download: file1.txt (10MB)" "download done: file1.txt" \
  "start download: file2.mp4 (50MB)" "download done: file2.mp4" \
  "start download: file3.zip (30MB)" "download done: file3.zip" \
  "all files downloaded: ['file1.txt', 'file2.mp4', 'file3.zip']" \
  "start download: file1.txt (10MB)" "start download: file2.mp4 (50MB)" \
  "start download: file3.zip (30MB)" "download done: file1.txt" \
  "download done: file3.zip" "download done: file2.mp4" \
  "all files downloaded: ['file1.txt', 'file2.mp4', 'file3.zip']"
expect_time "sequential " 0.90
expect_time "concurrent " 0.50
done_example

run seed003_ex1_sync "seed 003, example 1: synchronous, blocking time.sleep"
expect_order "Do something with 1..." "Done with 1" "Fetch 1 fully completed" \
  "Do something with 2..." "Done with 2" "Fetch 2 fully completed" \
  "results: ['Result of 1', 'Result of 2']"
expect_time "" 0.30
done_example

run seed003_ex2_await_now "seed 003, example 2: coroutines awaited at once"
expect_order "Do something with 1..." "Done with 1" "Task 1 fully completed" \
  "Do something with 2..." "Done with 2" "Task 2 fully completed" \
  "results: ['Result of 1', 'Result of 2']"
expect_time "" 0.30
done_example

run seed003_ex3_create_task "seed 003, example 3: create_task, await in order"
expect_order "Do something with 1..." "Do something with 2..." "Done with 1" \
  "Task 1 fully completed" "Done with 2" "Task 2 fully completed" \
  "results: ['Result of 1', 'Result of 2']"
expect_time "" 0.20
done_example

run seed003_ex4_await_order "seed 003, example 4: await task2 before task1"
expect_order "Do something with 1..." "Do something with 2..." "Done with 1" \
  "Done with 2" "Task 2 fully completed" "Task 1 fully completed" \
  "results: ['Result of 1', 'Result of 2']"
expect_time "" 0.20
done_example

run seed002_q12_order "seed 002, Q12: gather(task1(), task2()) output order"
expect_order "1-start" "2-start" "2-end" "1-end"
expect_time "" 0.20
done_example

run seed003_ex5_blocking "seed 003, example 5: the blocking-call pitfall"
expect_order "Do something with 1..." "Done with 1" "Do something with 2..." \
  "Done with 2" "Task 1 fully completed" "Task 2 fully completed" \
  "debug mode: 2 task slice(s) held the loop longer than 50 ms (see stderr)"
expect_time "" 0.30
done_example

run seed003_to_thread "seed 003, asyncio.to_thread: a blocking function in two threads"
expect_order "Do something with 1..." "Done with 1" "Thread 1 fully completed" \
  "Done with 2" "Thread 2 fully completed" \
  "debug mode: 0 task slice(s) held the loop longer than 50 ms" \
  "results: ['Result of 1', 'Result of 2']"
expect_order "Do something with 2..." "Done with 1"
expect_time "" 0.20
done_example

run seed003_primes "seed 003, process pool: CPU-bound primes in worker processes"
expect_order "Process 1 completed: 1229 primes" "Process 2 completed: 1754 primes"
done_example

run seed004_io_vs_cpu "seed 004, block 1: an I/O-bound request, CPU-bound formatting, a disk write"
expect_order "formatted 5 headers into 146 bytes" "wrote headers.txt (146 bytes)" \
  "--- headers.txt ---" "Content-Type: text/html; charset=utf-8" \
  "Server: cawait-seed004" "Cache-Control: private, no-cache, no-store" \
  "Connection: keep-alive" "Content-Length: 32" "-------------------"
expect_time "request " 0.10
done_example

run seed004_threads_processes "seed 004, blocks 2-4: the process, a second thread, a child process"
expect_order "this process runs 1 thread(s)" \
  "the thread running now is the main thread (task 'main')" \
  "this process runs 2 thread(s)" \
  "the thread running now is the main thread (task 'main')" \
  "the child exited with status 0"
expect_order "Hello cawait-pool thread"
done_example

run seed001_wait_for "seed 001, timeout control: asyncio.wait_for"
expect_order "operation timed out!" "done"
expect_time "timeout " 0.20
expect_time "completed " 0.50
done_example

run cancel_download "cancellation: task.cancel() on seed 000's download"
expect_order "start download: video.mp4 (100MB)" \
  "download interrupted: video.mp4 (ECANCELED)" \
  "removing partial file video.mp4..." "partial file removed" \
  "main: ca_join returned -ECANCELED: download cancelled" \
  "main: task cancelled = 1"
expect_absent "download done: video.mp4"
expect_time "" 0.35
done_example

run seed003_gather_taskgroup "seed 003, advanced concurrency control: gather vs TaskGroup"
expect_order "Task Results: ['Result of 1', 'Result of 2']" \
  "Task Group Results: ['Result of 1', 'Result of 2']" \
  "gather results: [EIO, 'Result of 2', 'Result of 3']" \
  "fetch_data(2) cancelled" "fetch_data(3) cancelled" \
  "task group results: [EIO, ECANCELED, ECANCELED]"
done_example

run seed002_generators "seed 002, Q5 and Q6: generators, send(), and async for"
expect_order "received: hello" "received: world" "A" "1" "B 10" "2" \
  "tick 0" "tick 1" "tick 2" "tick 3" "tick 4"
expect_absent "C 10"
expect_time "" 0.25
done_example

run queue_workers "asyncio.Queue: producers, workers, join and shutdown"
expect_order "all 15 jobs processed"
expect_time "" 0.16
done_example

run seed001_1000_requests "seed 001: 1000 concurrent requests on one thread (real TCP)"
expect_order "responses: 1000/1000 OK"
done_example

run seed003_semaphore "seed 003, image pipeline: Semaphore(4) caps concurrent downloads"
expect_order "max concurrent downloads: 4"
expect_time "" 0.30
done_example

run seed000_http_fetch "seed 000, section 2: three HTTP requests, sequential vs concurrent"
expect_order "start fetch: /delay/2" "done fetch: /delay/2 (200 ok)" \
  "start fetch: /delay/2" "done fetch: /delay/2 (200 ok)" \
  "start fetch: /delay/2" "done fetch: /delay/2 (200 ok)" \
  "start fetch: /delay/2" "start fetch: /delay/2" "start fetch: /delay/2" \
  "done fetch: /delay/2 (200 ok)" "done fetch: /delay/2 (200 ok)" \
  "done fetch: /delay/2 (200 ok)"
expect_time "sequential " 0.60
expect_time "concurrent " 0.20
done_example

run seed004_fetch_urls "seed 004, block 5: three URLs answering after 1, 2 and 3 s, sequential vs gather"
expect_order "start fetch: /delay/1" "done fetch: /delay/1 (200)" \
  "start fetch: /delay/2" "done fetch: /delay/2 (200)" \
  "start fetch: /delay/3" "done fetch: /delay/3 (200)" "got 3 responses" \
  "start fetch: /delay/1" "start fetch: /delay/2" "start fetch: /delay/3" \
  "done fetch: /delay/1 (200)" "done fetch: /delay/2 (200)" \
  "done fetch: /delay/3 (200)" "got 3 responses"
expect_time "sequential " 0.60
expect_time "concurrent " 0.30
done_example

run seed001_api_challenge "seed 001, challenge 2: three APIs, timeouts, retries with backoff, partial failure"
expect_order "rates: attempt 1 ok" \
  "news: attempt 1 failed (ETIMEDOUT), retrying in 0.10 s" \
  "weather: attempt 3 failed (HTTP 503), giving up after 3 attempts" \
  "news: attempt 2 ok" \
  "merged: rates=USD/CNY 7.10, news=3 headlines, weather=unavailable" \
  "cache: rates=USD/CNY 7.10 (no request)"
expect_time "" 0.45
done_example

run subprocess_echo "subprocesses: talk to cat through pipes, then communicate()"
expect_order "cat said: hello, cat" "cat said: one more line" "cat said: bye" \
  "cat exited with status 0" \
  "tr said: COMMUNICATE FEEDS STDIN AND READS STDOUT AT ONCE"
done_example

run sigint_cancel "signals: the first SIGINT cancels main (asyncio.run), clean shutdown"
expect_order "serving; press Ctrl-C to stop" "(the demo presses Ctrl-C: raise(SIGINT))" \
  "main: cancelled by SIGINT (ECANCELED)" "main: cleanup done" \
  "clean shutdown after SIGINT"
done_example

run seed003_image_pipeline "seed 003, image pipeline: 8 streamed downloads, Semaphore(4), processing on the thread pool"
expect_order "max concurrent downloads: 4"
expect_time "download " 0.20
done_example

run tls_echo "TLS: a server and a verifying client; an untrusted certificate refused"
expect_order "echo: hello over TLS" "system store: CA_ECERTUNTRUSTED"
done_example

# An example added to examples/ but not to this script is worth a warning.
for src in "$here"/examples/*.c; do
  n=$(basename "$src" .c)
  case " ${covered[*]} " in
    *" $n "*) ;;
    *) echo "demo: warning: examples/$n.c is not checked by scripts/demo.sh" ;;
  esac
done

echo
if [ ${#failed[@]} -ne 0 ]; then
  echo "demo: ${#failed[@]} of $total examples FAILED: ${failed[*]}"
  exit 1
fi
echo "demo: $total examples OK"
