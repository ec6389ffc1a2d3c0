#!/usr/bin/python3
"""asyncio / uvloop peers of the cawait benchmarks.

    /usr/bin/python3 asyncio_bench.py <bench> <N> [SECONDS] [--uvloop]

bench is one of switch, spawn, sleepers, timers, gather, queue, lock (only
gather takes SECONDS, default 0.1); each measures what the C program
bench/bench_<bench>.c measures, the same way (CLOCK_MONOTONIC, timing
inside the main coroutine, peak RSS from getrusage), and prints

    BENCH <name> <impl> <value> <unit>

with impl "asyncio" or "uvloop".  Random delays come from random.seed(42)
and are drawn before the clock starts, like the C benchmarks.

Echo servers for the echo and idle benchmarks (bench/run.sh drives them
with bench/echo_client.c and bench/idle_client.c):

    /usr/bin/python3 asyncio_bench.py echo_streams PORT [--uvloop]
    /usr/bin/python3 asyncio_bench.py echo_protocol PORT [--uvloop]

listen on 127.0.0.1:PORT (0: any free port), print "listening on <port>"
and echo every byte back until SIGINT or SIGTERM: echo_streams with
asyncio.start_server and a read / write / drain loop per connection (what
bench/echo_server.c does with cawait's streams), echo_protocol with an
asyncio.Protocol whose data_received writes the data back.  Both raise
RLIMIT_NOFILE to the hard limit.
"""
import asyncio
import random
import resource
import signal
import sys
import time


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report(name, impl, value, decimals, unit):
    print(f"BENCH {name} {impl} {value:.{decimals}f} {unit}", flush=True)


async def bench_switch(n, impl):
    """Two tasks each await asyncio.sleep(0) n/2 times: n switches."""
    half = n // 2

    async def yielder():
        for _ in range(half):
            await asyncio.sleep(0)

    t0 = now_ns()
    t1 = asyncio.create_task(yielder())
    t2 = asyncio.create_task(yielder())
    await t1
    await t2
    elapsed = now_ns() - t0
    report("switch", impl, elapsed / (2 * half), 2, "ns")


async def noop():
    pass


async def bench_spawn(n, impl):
    """create_task n no-op coroutines, then await each one."""
    t0 = now_ns()
    tasks = [asyncio.create_task(noop()) for _ in range(n)]
    for t in tasks:
        await t
    elapsed = now_ns() - t0
    del tasks
    report("spawn", impl, elapsed / 1e9, 4, "s")
    report("spawn_rss", impl, peak_rss_mib(), 1, "MiB")


async def bench_sleepers(n, impl):
    """n tasks each asyncio.sleep(uniform [0, 1)), then await each one."""
    random.seed(42)
    delays = [random.random() for _ in range(n)]
    t0 = now_ns()
    tasks = [asyncio.create_task(asyncio.sleep(d)) for d in delays]
    for t in tasks:
        await t
    elapsed = now_ns() - t0
    del tasks
    report("sleepers", impl, elapsed / 1e9, 4, "s")
    report("sleepers_rss", impl, peak_rss_mib(), 1, "MiB")


def noop_cb(arg):
    pass


async def bench_timers(n, impl):
    """loop.call_later n times (delay in [1, 2) s), then cancel every second
    handle.  ns per operation, operations = n call_later + n/2 cancels."""
    loop = asyncio.get_running_loop()
    random.seed(42)
    delays = [1.0 + random.random() for _ in range(n)]
    arg = object()
    call_later = loop.call_later
    t0 = now_ns()
    handles = [call_later(d, noop_cb, arg) for d in delays]
    for h in handles[1::2]:
        h.cancel()
    elapsed = now_ns() - t0
    # Untimed: cancel the rest so nothing is left pending.
    for h in handles[0::2]:
        h.cancel()
    report("timers", impl, elapsed / (n + n // 2), 2, "ns")


GATHER_ROUNDS = 3


async def bench_gather(n, impl, seconds=0.1):
    """create_task n asyncio.sleep(seconds), then asyncio.gather them all.
    Overhead = wall time (first create_task to gather's return) - seconds,
    in ms; the best of GATHER_ROUNDS rounds, as bench_gather.c does."""
    best = None
    for _ in range(GATHER_ROUNDS):
        t0 = now_ns()
        tasks = [asyncio.create_task(asyncio.sleep(seconds)) for _ in range(n)]
        await asyncio.gather(*tasks)
        elapsed = now_ns() - t0
        del tasks
        ms = elapsed / 1e6 - seconds * 1e3
        if best is None or ms < best:
            best = ms
    report("gather_overhead", impl, best, 3, "ms")


async def bench_queue(n, impl):
    """A producer task puts 0..n-1 into asyncio.Queue(maxsize=64); the main
    coroutine gets them (checking the order).  ns per item."""
    q = asyncio.Queue(maxsize=64)

    async def producer():
        put = q.put
        for i in range(n):
            await put(i)

    get = q.get
    t0 = now_ns()
    p = asyncio.create_task(producer())
    for i in range(n):
        if await get() != i:
            raise RuntimeError(f"queue: item {i} out of order")
    await p
    elapsed = now_ns() - t0
    report("queue", impl, elapsed / n, 2, "ns")


async def bench_lock(n, impl):
    """Two tasks each take one asyncio.Lock n/2 times and await
    asyncio.sleep(0) while holding it, so the other task finds it held and
    waits.  ns per acquire/release pair."""
    half = n // 2
    lock = asyncio.Lock()
    holder = [None]

    async def worker(me):
        for _ in range(half):
            async with lock:
                holder[0] = me
                await asyncio.sleep(0)
                if holder[0] is not me:
                    raise RuntimeError("lock: two tasks inside the lock")

    t0 = now_ns()
    t1 = asyncio.create_task(worker(1))
    t2 = asyncio.create_task(worker(2))
    await t1
    await t2
    elapsed = now_ns() - t0
    report("lock", impl, elapsed / (2 * half), 2, "ns")


BENCHES = {
    "switch": bench_switch,
    "spawn": bench_spawn,
    "sleepers": bench_sleepers,
    "timers": bench_timers,
    "gather": bench_gather,
    "queue": bench_queue,
    "lock": bench_lock,
}


# ------------------------------------------------------------ echo servers

# Read size of the streams server: the size bench/echo_server.c reads with.
ECHO_READ_SIZE = 16384


async def echo_streams_handler(reader, writer):
    try:
        while True:
            data = await reader.read(ECHO_READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the idle benchmark's client resets its connections
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_server(kind, port):
    """Serve until SIGINT / SIGTERM."""
    loop = asyncio.get_running_loop()
    if kind == "echo_streams":
        server = await asyncio.start_server(echo_streams_handler, "127.0.0.1", port)
    else:
        server = await loop.create_server(EchoProtocol, "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = [a for a in argv[1:] if a.startswith("--")]
    if args[:1] in (["echo_streams"], ["echo_protocol"]):
        return main_echo(argv, args, flags)
    nargs = 3 if args[:1] == ["gather"] else 2
    if (len(args) not in (2, nargs) or args[0] not in BENCHES
            or any(f != "--uvloop" for f in flags)):
        print(f"usage: {argv[0]} {{{','.join(BENCHES)}}} N [--uvloop]\n"
              f"       {argv[0]} gather N [SECONDS] [--uvloop]\n"
              f"       {argv[0]} {{echo_streams,echo_protocol}} PORT [--uvloop]",
              file=sys.stderr)
        return 2
    try:
        n = int(args[1])
        if n <= 0:
            raise ValueError
    except ValueError:
        print(f"{argv[0]}: N must be a positive integer", file=sys.stderr)
        return 2
    extra = []
    if len(args) == 3:
        try:
            seconds = float(args[2])
            if not seconds >= 0 or seconds == float("inf"):
                raise ValueError
        except ValueError:
            print(f"{argv[0]}: SECONDS must be a number >= 0", file=sys.stderr)
            return 2
        extra.append(seconds)
    return run_loop(argv, flags, lambda impl: BENCHES[args[0]](n, impl, *extra))


def run_loop(argv, flags, make_coro):
    """Run make_coro(impl) on a new asyncio or (--uvloop) uvloop loop."""
    impl = "asyncio"
    loop_factory = asyncio.new_event_loop
    if "--uvloop" in flags:
        try:
            import uvloop
        except ImportError:
            print(f"{argv[0]}: uvloop is not installed for {sys.executable}", file=sys.stderr)
            return 3
        impl = "uvloop"
        loop_factory = uvloop.new_event_loop
    loop = loop_factory()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(make_coro(impl))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0


def main_echo(argv, args, flags):
    port = -1
    if len(args) == 2 and args[1].isdigit():
        port = int(args[1])
    if not 0 <= port <= 65535 or any(f != "--uvloop" for f in flags):
        print(f"usage: {argv[0]} {{echo_streams,echo_protocol}} PORT [--uvloop]", file=sys.stderr)
        return 2
    raise_nofile()
    return run_loop(argv, flags, lambda impl: echo_server(args[0], port))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
