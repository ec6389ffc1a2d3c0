/*
 * echo_server PORT: the cawait TCP echo server of the echo and idle
 * benchmarks (bench/run.sh drives it with echo_client and idle_client).
 *
 * ca_serve on 127.0.0.1:PORT (0: any free port); every connection gets a
 * task running the asyncio-style loop
 *
 *     n = ca_stream_read(s, buf, sizeof buf); if (n <= 0) break;
 *     ca_stream_write(s, buf, n); ca_stream_drain(s);
 *
 * with a 2 KiB buffer on the task's stack.  Prints
 *
 *     listening on <port>
 *
 * on stdout once it listens, and serves until SIGINT or SIGTERM, which
 * a signalfd wait takes (bench_serve, bench/bench_util.h); it then closes the
 * server (ca_server_close with 1 s of grace).  RLIMIT_NOFILE is
 * raised to the hard limit first (the idle benchmark holds 10,000
 * connections).
 */
#include <cawait.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_util.h"

/* 2 KiB: enough for the 1 KiB round trips, and it keeps the handler's
 * frames within the top page of its stack, so an idle connection costs one
 * stack page (4.45 KiB per connection in all; a 16 KiB stack buffer puts
 * the deeper frames on a second page: 8.45 KiB). */
#define ECHO_BUF (2048)

static int echo_conn(ca_stream *s, void *arg)
{
    (void)arg;
    char buf[ECHO_BUF];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof buf);
        if (n <= 0)
            break;
        if (ca_stream_write(s, buf, (size_t)n) < 0)
            break;
        if (ca_stream_drain(s) < 0)
            break;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char *end = NULL;
    unsigned long port = argc == 2 ? strtoul(argv[1], &end, 10) : 0;
    if (argc != 2 || end == argv[1] || *end || port > 65535) {
        fprintf(stderr, "usage: %s PORT   (0: any free port)\n", argv[0]);
        return 2;
    }
    return bench_serve_main("echo_server", (unsigned)port, echo_conn);
}
