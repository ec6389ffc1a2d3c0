/*
 * bench_gather N SECONDS: spawn N tasks that each ca_sleep(SECONDS), then
 * ca_gather(tasks, N, 0) them from the main task.
 *
 *     BENCH gather_overhead cawait <ms> ms
 *
 * overhead = (wall time from before the first spawn to after ca_gather
 * returns) - SECONDS, in milliseconds: what spawning, starting, waking and
 * gathering N sleepers costs on top of the sleep itself.  The handles are
 * released after the clock stops.  The best of GATHER_ROUNDS rounds is
 * reported (this is a noisy shared VM); the Go and Python peers do the same.
 * Defaults: N = 10000, SECONDS = 0.1.
 */
#include <cawait.h>
#include <math.h>
#include <string.h>

#include "bench_util.h"

#define GATHER_ROUNDS 3

typedef struct gather_args {
    size_t n;
    double seconds;
} gather_args;

static int sleeper(void *arg)
{
    return ca_sleep(*(const double *)arg);
}

typedef struct gather_round {
    const gather_args *a;
    ca_task **tasks;
} gather_round;

static int one_round(void *ctx, double *ms)
{
    const gather_args *a = ((gather_round *)ctx)->a;
    ca_task **tasks = ((gather_round *)ctx)->tasks;
    size_t spawned = 0;
    int r = 0;
    int64_t t0 = bench_now_ns();
    for (; spawned < a->n; spawned++) {
        tasks[spawned] = ca_spawn(sleeper, (void *)&a->seconds);
        if (!tasks[spawned]) {
            fprintf(stderr, "bench_gather: ca_spawn failed at task %zu\n",
                    spawned);
            r = -ENOMEM;
            break;
        }
    }
    if (r == 0)
        r = ca_gather(tasks, a->n, 0);
    int64_t t1 = bench_now_ns();
    for (size_t i = 0; i < spawned; i++) {
        if (r < 0)
            ca_cancel(tasks[i]); /* ca_run would collect them anyway */
        ca_task_release(tasks[i]);
    }
    if (r < 0)
        return r;
    *ms = (double)(t1 - t0) / 1e6 - a->seconds * 1e3;
    return 0;
}

static int bench_main(void *arg)
{
    const gather_args *a = arg;
    ca_task **tasks = malloc(a->n * sizeof(*tasks));
    if (!tasks)
        return -ENOMEM;
    memset(tasks, 0, a->n * sizeof(*tasks));

    double best = 0;
    gather_round ctx = {a, tasks};
    int r = bench_best_of(GATHER_ROUNDS, one_round, &ctx, &best);
    free(tasks);
    if (r < 0) {
        fprintf(stderr, "bench_gather: ca_gather failed: %s\n", ca_strerror(r));
        return r;
    }
    bench_report("gather_overhead", "cawait", best, 3, "ms");
    return 0;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [N [SECONDS]]   (N: a positive integer, default 10000;"
            " SECONDS >= 0, default 0.1)\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    gather_args a = {10000, 0.1};
    if (argc > 3)
        usage(argv[0]);
    if (argc > 1) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(argv[1], &end, 10);
        if (errno || end == argv[1] || *end || v == 0 ||
            v > (unsigned long long)SIZE_MAX / 64 || argv[1][0] == '-')
            usage(argv[0]);
        a.n = (size_t)v;
    }
    if (argc > 2) {
        char *end = NULL;
        errno = 0;
        a.seconds = strtod(argv[2], &end);
        if (errno || end == argv[2] || *end || !(a.seconds >= 0) ||
            !isfinite(a.seconds))
            usage(argv[0]);
    }
    int r = ca_run(bench_main, &a);
    if (r < 0) {
        fprintf(stderr, "bench_gather: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
