/*
 * http_client_bench URL N CONCURRENCY: the cawait side of the `client`
 * benchmark (bench/run_http.sh runs it against bench/http_server.c).
 *
 * One ca_http_session; CONCURRENCY worker tasks take request numbers from a
 * shared counter until N GETs of URL are done, so at most CONCURRENCY
 * requests are in flight and the session's connections are kept alive and
 * reused.  Every response must have status 200 (the body is read in full
 * and dropped); any failure makes the program exit 1 without BENCH lines.
 * Prints
 *
 *     BENCH client_wall cawait <seconds> s
 *     BENCH client_cpu cawait <seconds> s
 *     BENCH client_rps cawait <requests per second> req/s
 *
 * wall: from before ca_http_session_new to after ca_http_session_free (so
 * connecting is included, as in every peer), with libcurl's one-time
 * global init (ca_http_global_init, about 1 ms of OpenSSL setup) done just
 * before, as the peers do theirs before their windows (Python's imports of
 * ssl and aiohttp, Go's package init); cpu: user + system time of the
 * whole process from getrusage at the end (startup and libcurl's global
 * init included: the most conservative choice, comparable to the figure
 * taken for a `curl --parallel` process); rps: N / wall.
 *
 * With HTTP_BENCH_STATS=1 in the environment it also prints the loop's
 * statistics to stderr (turns, task slices, callbacks, time waiting in the
 * backend and running): where the wall time goes when profiling.
 */
#include <cawait.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench_util.h"

typedef struct client_bench {
    const char *url;
    size_t n, conc;
    size_t next; /* the next request number to take */
    size_t done; /* requests answered with 200 */
    int failed;  /* first failure, negative */
    ca_http_session *session;
} client_bench;

static int worker(void *arg)
{
    client_bench *b = arg;
    while (!b->failed && b->next < b->n) {
        b->next++;
        ca_http_response *resp;
        int r = ca_http_get(b->session, b->url, &resp);
        if (r < 0) {
            if (!b->failed) {
                fprintf(stderr, "http_client_bench: GET %s: %s (%s)\n", b->url,
                        ca_strerror(r), ca_http_last_error());
                b->failed = r;
            }
            return r;
        }
        int status = ca_http_response_status(resp);
        ca_http_response_free(resp);
        if (status != 200) {
            if (!b->failed) {
                fprintf(stderr, "http_client_bench: GET %s: status %d\n",
                        b->url, status);
                b->failed = -EPROTO;
            }
            return -EPROTO;
        }
        b->done++;
    }
    return 0;
}

static int bench_main(void *arg)
{
    client_bench *b = arg;
    ca_task **tasks = calloc(b->conc, sizeof(*tasks));
    if (!tasks)
        return -ENOMEM;
    int r = ca_http_global_init();
    if (r < 0) {
        fprintf(stderr, "http_client_bench: ca_http_global_init: %s\n",
                ca_strerror(r));
        free(tasks);
        return r;
    }
    int64_t t0 = bench_now_ns();
    r = ca_http_session_new(&b->session, NULL);
    if (r < 0) {
        fprintf(stderr, "http_client_bench: ca_http_session_new: %s\n",
                ca_strerror(r));
        free(tasks);
        return r;
    }
    size_t spawned = 0;
    for (; spawned < b->conc; spawned++) {
        tasks[spawned] = ca_spawn(worker, b);
        if (!tasks[spawned]) {
            fprintf(stderr, "http_client_bench: ca_spawn failed\n");
            b->failed = -ENOMEM;
            break;
        }
    }
    for (size_t i = 0; i < spawned; i++) {
        ca_join(tasks[i]);
        ca_task_release(tasks[i]);
    }
    r = ca_http_session_free(b->session);
    int64_t t1 = bench_now_ns();
    free(tasks);
    const char *stats = getenv("HTTP_BENCH_STATS");
    ca_loop_stats st;
    if (stats && strcmp(stats, "1") == 0 && ca_loop_stats_get(&st) == 0)
        fprintf(stderr,
                "http_client_bench: loop: %llu turns, %llu task slices, "
                "%llu callbacks, %.3f s waiting in %s, %.3f s running\n",
                (unsigned long long)st.turns, (unsigned long long)st.tasks_run,
                (unsigned long long)st.callbacks_run, (double)st.poll_ns / 1e9,
                st.backend, (double)st.run_ns / 1e9);
    if (r < 0) {
        fprintf(stderr, "http_client_bench: ca_http_session_free: %s\n",
                ca_strerror(r));
        return r;
    }
    if (b->failed)
        return b->failed;
    if (b->done != b->n) {
        fprintf(stderr, "http_client_bench: %zu of %zu requests done\n",
                b->done, b->n);
        return -EPROTO;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -errno;
    double wall = (double)(t1 - t0) / 1e9;
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("BENCH client_wall cawait %.4f s\n", wall);
    printf("BENCH client_cpu cawait %.4f s\n", cpu);
    printf("BENCH client_rps cawait %.0f req/s\n", (double)b->n / wall);
    return 0;
}

static size_t parse_count(const char *s, const char *what, const char *prog)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0 || v > INT_MAX) {
        fprintf(stderr, "%s: bad %s '%s'\n", prog, what, s);
        fprintf(stderr, "usage: %s URL N CONCURRENCY\n", prog);
        exit(2);
    }
    return (size_t)v;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr,
                "usage: %s URL N CONCURRENCY   (N GETs of URL, at most "
                "CONCURRENCY in flight)\n",
                argv[0]);
        return 2;
    }
    client_bench b = {.url = argv[1]};
    b.n = parse_count(argv[2], "N", argv[0]);
    b.conc = parse_count(argv[3], "CONCURRENCY", argv[0]);
    if (b.conc > b.n)
        b.conc = b.n;
    int r = ca_run(bench_main, &b);
    if (r < 0) {
        fprintf(stderr, "http_client_bench: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
