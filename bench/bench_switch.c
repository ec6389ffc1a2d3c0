/*
 * bench_switch N: two tasks yield to each other with ca_yield() until N
 * switches have happened in total (each task yields N/2 times).
 *
 *     BENCH switch cawait <ns per switch> ns
 *
 * The time runs from before the two tasks are spawned to after both are
 * joined, inside the main task; at N = 10M spawning and joining two tasks
 * is noise.  The best of SWITCH_ROUNDS rounds is reported: on this shared
 * VM the same binary measures 11.6 or 16 ns from one round to the next
 * (vCPU placement, with or without ASLR).  The Go peer does the same.
 */
#include <cawait.h>

#include "bench_util.h"

typedef struct switch_args {
    size_t yields;
} switch_args;

static int yielder(void *arg)
{
    const switch_args *a = arg;
    for (size_t i = 0; i < a->yields; i++) {
        int r = ca_yield();
        if (r < 0)
            return r;
    }
    return 0;
}

#define SWITCH_ROUNDS 3

static int one_round(void *ctx, double *ns_per_switch);

static int bench_main(void *arg)
{
    double best = 0;
    int r = bench_best_of(SWITCH_ROUNDS, one_round, arg, &best);
    if (r < 0)
        return r;
    bench_report("switch", "cawait", best, 2, "ns");
    return 0;
}

static int one_round(void *ctx, double *ns_per_switch)
{
    size_t n = *(const size_t *)ctx;
    switch_args a = {n / 2};
    size_t total = 2 * a.yields;

    int64_t t0 = bench_now_ns();
    ca_task *t1 = ca_spawn(yielder, &a);
    ca_task *t2 = ca_spawn(yielder, &a);
    if (!t1 || !t2) {
        fprintf(stderr, "bench_switch: ca_spawn failed\n");
        return -ENOMEM;
    }
    int r1 = ca_join(t1);
    int r2 = ca_join(t2);
    int64_t t1ns = bench_now_ns();
    ca_task_release(t1);
    ca_task_release(t2);
    if (r1 < 0 || r2 < 0) {
        fprintf(stderr, "bench_switch: task failed: %s\n",
                ca_strerror(r1 < 0 ? r1 : r2));
        return r1 < 0 ? r1 : r2;
    }
    *ns_per_switch = (double)(t1ns - t0) / (double)total;
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 10000000);
    if (n < 2)
        n = 2;
    int r = ca_run(bench_main, &n);
    if (r < 0) {
        fprintf(stderr, "bench_switch: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
