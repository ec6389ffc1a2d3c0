#!/usr/bin/env python3
"""aiohttp peer of bench/http_client_bench.c (the `client` benchmark).

    python3 http_client_peer.py URL N CONC [--uvloop]

One aiohttp.ClientSession with TCPConnector(limit=CONC); CONC worker tasks
take request numbers from a shared counter until N GETs of URL are done,
so at most CONC requests are in flight and connections are kept alive and
reused.  Every response must have status 200 (its body is read in full and
dropped); any failure exits 1 without BENCH lines.  Prints

    BENCH client_wall <impl> <seconds> s
    BENCH client_cpu <impl> <seconds> s
    BENCH client_rps <impl> <requests per second> req/s

with impl aiohttp (asyncio's default loop) or aiohttp_uvloop (--uvloop).
wall: from before the session is created to after it is closed, in the
running loop; cpu: user + system time of the process
(resource.getrusage) over the same span, so the interpreter's start and
the imports are not counted; rps: N / wall.

aiohttp comes from the Debian package python3-aiohttp, uvloop from
python3-uvloop (scripts/deps.sh --bench).
"""
import asyncio
import resource
import sys
import time

import aiohttp


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run(url, n, conc):
    state = {"next": 0, "done": 0}

    async def worker(session):
        while state["next"] < n:
            state["next"] += 1
            async with session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {url}: status {resp.status}")
            state["done"] += 1

    c0 = cpu_seconds()
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(conc)))
    t1 = time.perf_counter()
    c1 = cpu_seconds()
    if state["done"] != n:
        raise RuntimeError(f"{state['done']} of {n} requests done")
    return t1 - t0, c1 - c0


def main():
    args = [a for a in sys.argv[1:] if a != "--uvloop"]
    use_uvloop = "--uvloop" in sys.argv[1:]
    if len(args) != 3:
        print(f"usage: {sys.argv[0]} URL N CONC [--uvloop]", file=sys.stderr)
        sys.exit(2)
    url = args[0]
    try:
        n, conc = int(args[1]), int(args[2])
        if n <= 0 or conc <= 0:
            raise ValueError
    except ValueError:
        print(f"usage: {sys.argv[0]} URL N CONC [--uvloop]", file=sys.stderr)
        sys.exit(2)
    conc = min(conc, n)
    impl = "aiohttp"
    if use_uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        impl = "aiohttp_uvloop"
    try:
        wall, cpu = asyncio.run(run(url, n, conc))
    except Exception as e:  # report and fail: no BENCH lines
        print(f"http_client_peer: {e!r}", file=sys.stderr)
        sys.exit(1)
    print(f"BENCH client_wall {impl} {wall:.4f} s")
    print(f"BENCH client_cpu {impl} {cpu:.4f} s")
    print(f"BENCH client_rps {impl} {n / wall:.0f} req/s")


if __name__ == "__main__":
    main()
