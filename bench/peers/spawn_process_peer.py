#!/usr/bin/python3
"""asyncio / uvloop peer of bench/bench_spawn_process.c.

    /usr/bin/python3 spawn_process_peer.py N CONCURRENCY [--uvloop]

Runs N /bin/true children with asyncio.create_subprocess_exec (stdio
inherited, no pipes), CONCURRENCY at a time behind an asyncio.Semaphore,
waits for each, and prints

    BENCH spawn_process <impl> <children_per_s> children/s

with impl "asyncio" or "uvloop".  Timing is inside the main coroutine
(CLOCK_MONOTONIC), one round.
"""
import asyncio
import sys
import time


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


async def bench(n, conc):
    sem = asyncio.Semaphore(conc)
    failed = 0

    async def one():
        nonlocal failed
        async with sem:
            proc = await asyncio.create_subprocess_exec("/bin/true")
            if await proc.wait() != 0:
                failed += 1

    t0 = now_ns()
    await asyncio.gather(*(one() for _ in range(n)))
    dt = (now_ns() - t0) / 1e9
    if failed:
        raise SystemExit(f"spawn_process_peer: {failed} children failed")
    return n / dt


def main():
    args = [a for a in sys.argv[1:] if a != "--uvloop"]
    use_uvloop = "--uvloop" in sys.argv[1:]
    if len(args) != 2 or not args[0].isdigit() or not args[1].isdigit() \
            or int(args[0]) <= 0 or int(args[1]) <= 0:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        raise SystemExit(2)
    n, conc = int(args[0]), int(args[1])
    impl = "asyncio"
    if use_uvloop:
        import uvloop
        uvloop.install()
        impl = "uvloop"
    rate = asyncio.run(bench(n, conc))
    print(f"BENCH spawn_process {impl} {rate:.0f} children/s", flush=True)


if __name__ == "__main__":
    main()
