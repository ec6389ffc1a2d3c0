/*
 * bench_sleepers N: N tasks each sleep a random time, uniform in [0, 1 s)
 * (xorshift64* seeded with 42; the delays are drawn before the clock
 * starts).  The main task spawns them all, then joins (and releases) every
 * one.
 *
 *     BENCH sleepers cawait <wall seconds> s
 *     BENCH sleepers_rss cawait <peak RSS> MiB
 *
 * The wall time runs from before the first spawn to the end of the last
 * join; the ideal is just under 1 s, the rest is overhead.
 */
#include <cawait.h>

#include "bench_util.h"

static int sleeper(void *arg)
{
    return ca_sleep(*(const double *)arg);
}

static int bench_main(void *arg)
{
    size_t n = *(const size_t *)arg;
    ca_task **tasks = malloc(n * sizeof(*tasks));
    double *delays = malloc(n * sizeof(*delays));
    if (!tasks || !delays) {
        free(tasks);
        free(delays);
        return -ENOMEM;
    }
    bench_rng rng = bench_rng_new(42);
    for (size_t i = 0; i < n; i++) {
        delays[i] = bench_rng_next(&rng);
        tasks[i] = NULL;
    }

    int64_t t0 = bench_now_ns();
    for (size_t i = 0; i < n; i++) {
        tasks[i] = ca_spawn(sleeper, &delays[i]);
        if (!tasks[i]) {
            fprintf(stderr, "bench_sleepers: ca_spawn failed at task %zu\n", i);
            return -ENOMEM; /* ca_run cancels and collects the others */
        }
    }
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (ca_join(tasks[i]) < 0)
            failed++;
        ca_task_release(tasks[i]);
    }
    int64_t t1 = bench_now_ns();
    free(tasks);
    free(delays);
    if (failed) {
        fprintf(stderr, "bench_sleepers: %d tasks failed\n", failed);
        return -EIO;
    }
    bench_report("sleepers", "cawait", (double)(t1 - t0) / 1e9, 4, "s");
    bench_report("sleepers_rss", "cawait", bench_peak_rss_mib(), 1, "MiB");
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 100000);
    int r = ca_run(bench_main, &n);
    if (r < 0) {
        fprintf(stderr, "bench_sleepers: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
