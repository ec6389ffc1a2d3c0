#!/usr/bin/python3
"""asyncio / uvloop peer of bench/bench_to_thread.c.

    /usr/bin/python3 to_thread_peer.py to_thread N [--uvloop]

to_thread: N trivial jobs (each adds its number to a sum) through the
loop's default executor with asyncio.to_thread, submitted concurrently:
asyncio.gather over batches of BATCH coroutines (gathering all N at once
costs asyncio more, not less).  jobs/s = N / wall time from the first
submission to the last result; the sum is checked.  Best of ROUNDS rounds,
like the C program.

to_thread_latency: one coroutine awaits asyncio.to_thread(trivial job)
LAT_N times in a row; the median round trip in microseconds, after LAT_WARM
calls of warm-up.

Prints

    BENCH to_thread <impl> <jobs per second> jobs/s
    BENCH to_thread_latency <impl> <microseconds> us

with impl "asyncio" or "uvloop".  The executor has Python's default size,
min(32, CPUs + 4) threads, the same rule as cawait's default pool.
"""
import asyncio
import statistics
import sys
import threading
import time

ROUNDS = 3
BATCH = 1000
LAT_N = 5000
LAT_WARM = 200


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def report(name, impl, value, decimals, unit):
    print(f"BENCH {name} {impl} {value:.{decimals}f} {unit}", flush=True)


class Summer:
    def __init__(self):
        self.lock = threading.Lock()
        self.total = 0

    def add(self, i):
        with self.lock:
            self.total += i


def trivial():
    return 1


async def one_round(n):
    s = Summer()
    t0 = now_ns()
    for start in range(1, n + 1, BATCH):
        stop = min(start + BATCH, n + 1)
        await asyncio.gather(*(asyncio.to_thread(s.add, i)
                               for i in range(start, stop)))
    t1 = now_ns()
    if s.total != n * (n + 1) // 2:
        raise RuntimeError("jobs lost (sum mismatch)")
    return (t1 - t0) / 1e9


async def bench_to_thread(n, impl):
    await asyncio.to_thread(trivial)  # start the executor outside the clock
    best = min([await one_round(n) for _ in range(ROUNDS)])
    report("to_thread", impl, n / best, 0, "jobs/s")
    for _ in range(LAT_WARM):
        await asyncio.to_thread(trivial)
    times = []
    for _ in range(LAT_N):
        t0 = now_ns()
        await asyncio.to_thread(trivial)
        times.append(now_ns() - t0)
    report("to_thread_latency", impl, statistics.median(times) / 1e3, 2, "us")


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = [a for a in argv[1:] if a.startswith("--")]
    if (len(args) != 2 or args[0] != "to_thread"
            or any(f != "--uvloop" for f in flags)):
        print(f"usage: {argv[0]} to_thread N [--uvloop]", file=sys.stderr)
        return 2
    try:
        n = int(args[1])
        if n <= 0:
            raise ValueError
    except ValueError:
        print(f"{argv[0]}: N must be a positive integer", file=sys.stderr)
        return 2
    impl = "asyncio"
    loop_factory = asyncio.new_event_loop
    if "--uvloop" in flags:
        try:
            import uvloop
        except ImportError:
            print(f"{argv[0]}: uvloop is not installed for {sys.executable}",
                  file=sys.stderr)
            return 3
        impl = "uvloop"
        loop_factory = uvloop.new_event_loop
    loop = loop_factory()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(bench_to_thread(n, impl))
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
