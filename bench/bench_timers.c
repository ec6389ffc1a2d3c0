/*
 * bench_timers N: inside a task, schedule N callbacks with ca_call_later
 * (delay uniform in [1 s, 2 s), xorshift64* seeded with 42, drawn before the
 * clock starts; a no-op callback), then ca_handle_cancel every second handle
 * (indices 1, 3, 5, ...).
 *
 *     BENCH timers cawait <ns per operation> ns
 *
 * operations = N call_later + N/2 cancels, i.e. ns = elapsed / (N + N/2).
 * Afterwards (untimed) the other half is cancelled too, so no timer is left
 * and the program exits at once.
 */
#include <cawait.h>

#include "bench_util.h"

static void noop_cb(void *arg)
{
    (void)arg;
}

static int bench_main(void *arg)
{
    size_t n = *(const size_t *)arg;
    ca_handle *h = calloc(n, sizeof(*h));
    double *delays = malloc(n * sizeof(*delays));
    if (!h || !delays) {
        free(h);
        free(delays);
        return -ENOMEM;
    }
    bench_rng rng = bench_rng_new(42);
    for (size_t i = 0; i < n; i++)
        delays[i] = 1.0 + bench_rng_next(&rng);
    static int cb_arg;

    int64_t t0 = bench_now_ns();
    for (size_t i = 0; i < n; i++) {
        int r = ca_call_later(delays[i], noop_cb, &cb_arg, &h[i]);
        if (r < 0) {
            fprintf(stderr, "bench_timers: ca_call_later failed at %zu: %s\n",
                    i, ca_strerror(r));
            for (size_t j = 0; j < i; j++)
                ca_handle_cancel(h[j]);
            free(h);
            free(delays);
            return r;
        }
    }
    size_t cancelled = 0;
    for (size_t i = 1; i < n; i += 2)
        cancelled += (size_t)ca_handle_cancel(h[i]);
    int64_t t1 = bench_now_ns();

    /* Untimed: cancel the rest so nothing is left pending. */
    for (size_t i = 0; i < n; i += 2)
        cancelled += (size_t)ca_handle_cancel(h[i]);
    free(h);
    free(delays);
    if (cancelled != n) {
        fprintf(stderr, "bench_timers: cancelled %zu of %zu timers\n",
                cancelled, n);
        return -EIO;
    }
    size_t ops = n + n / 2;
    bench_report("timers", "cawait", (double)(t1 - t0) / (double)ops, 2, "ns");
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 1000000);
    int r = ca_run(bench_main, &n);
    if (r < 0) {
        fprintf(stderr, "bench_timers: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
