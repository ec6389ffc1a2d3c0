/*
 * bench_to_thread N: the default thread pool with trivial jobs.
 *
 *     BENCH to_thread cawait <jobs per second> jobs/s
 *     BENCH to_thread_tasks cawait <jobs per second> jobs/s
 *     BENCH to_thread_latency cawait <microseconds> us
 *
 * to_thread: the main task submits N trivial jobs (each adds its number to
 * an atomic sum) to the loop's default pool with ca_pool_submit, all at
 * once, then waits for each with ca_job_wait (the C form of gathering N
 * run_in_executor futures); jobs/s = N / wall time, the wall time running
 * from the first submission to the last job's completion.  The sum is
 * checked.  Best of TO_THREAD_ROUNDS rounds (a noisy shared VM).
 *
 * to_thread_tasks: the same N jobs in asyncio's exact shape: one task per
 * job, each calling ca_to_thread once, spawned and gathered in batches of
 * TASK_BATCH (the Python peer's gather of asyncio.to_thread coroutines).
 *
 * to_thread_latency: one task calls ca_to_thread(trivial job) LAT_N times
 * in a row; the figure is the median round trip (submit, run on a pool
 * thread, result back in the task), after LAT_WARM calls of warm-up.
 *
 * Default N: 100,000.  The pool has its default size (CPUs + 4, or
 * $CAWAIT_POOL_THREADS).
 */
#include <cawait.h>

#include <stdatomic.h>
#include <string.h>

#include "bench_util.h"

#define TO_THREAD_ROUNDS 3
#define LAT_N 20000
#define LAT_WARM 1000

static _Atomic uint64_t sum;

static int add_job(void *arg)
{
    atomic_fetch_add_explicit(&sum, (uint64_t)(uintptr_t)arg,
                              memory_order_relaxed);
    return 0;
}

static int trivial_job(void *arg)
{
    (void)arg;
    return 1;
}

static int one_round(void *ctx, double *secs)
{
    size_t n = *(const size_t *)ctx;
    ca_job **jobs = malloc(n * sizeof(*jobs));
    if (!jobs)
        return -ENOMEM;
    atomic_store(&sum, 0);
    int r = 0;
    size_t submitted = 0;
    int64_t t0 = bench_now_ns();
    for (; submitted < n; submitted++) {
        r = ca_pool_submit(&jobs[submitted], add_job,
                           (void *)(uintptr_t)(submitted + 1), NULL);
        if (r < 0) {
            fprintf(stderr, "bench_to_thread: ca_pool_submit: %s\n",
                    ca_strerror(r));
            break;
        }
    }
    for (size_t i = 0; i < submitted; i++) {
        int s = ca_job_wait(jobs[i]);
        if (s < 0 && r == 0) {
            fprintf(stderr, "bench_to_thread: job: %s\n", ca_strerror(s));
            r = s;
        }
        ca_job_release(jobs[i]);
    }
    int64_t t1 = bench_now_ns();
    free(jobs);
    if (r < 0)
        return r;
    if (atomic_load(&sum) != (uint64_t)n * (n + 1) / 2) {
        fprintf(stderr, "bench_to_thread: jobs lost (sum mismatch)\n");
        return -EIO;
    }
    *secs = (double)(t1 - t0) / 1e9;
    return 0;
}

/* to_thread_tasks: asyncio's shape exactly, a task per job, each calling
 * ca_to_thread once, gathered in batches of TASK_BATCH. */
#define TASK_BATCH 1000

static int to_thread_task(void *arg)
{
    return ca_to_thread(add_job, arg);
}

static int tasks_round(void *ctx, double *secs)
{
    size_t n = *(const size_t *)ctx;
    ca_task *t[TASK_BATCH];
    atomic_store(&sum, 0);
    int r = 0;
    int64_t t0 = bench_now_ns();
    for (size_t first = 1; first <= n && r == 0; first += TASK_BATCH) {
        size_t k = n - first + 1 < TASK_BATCH ? n - first + 1 : TASK_BATCH;
        size_t spawned = 0;
        for (; spawned < k; spawned++) {
            r = ca_spawn_ex(&t[spawned], to_thread_task,
                            (void *)(uintptr_t)(first + spawned), NULL);
            if (r < 0)
                break;
        }
        if (r == 0)
            r = ca_gather(t, spawned, 0);
        for (size_t i = 0; i < spawned; i++) {
            if (r < 0)
                ca_cancel(t[i]);
            ca_join(t[i]);
            ca_task_release(t[i]);
        }
    }
    int64_t t1 = bench_now_ns();
    if (r < 0) {
        fprintf(stderr, "bench_to_thread: tasks: %s\n", ca_strerror(r));
        return r;
    }
    if (atomic_load(&sum) != (uint64_t)n * (n + 1) / 2) {
        fprintf(stderr, "bench_to_thread: jobs lost (sum mismatch)\n");
        return -EIO;
    }
    *secs = (double)(t1 - t0) / 1e9;
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int latency(double *us)
{
    int64_t *t = malloc(LAT_N * sizeof(*t));
    if (!t)
        return -ENOMEM;
    for (int i = 0; i < LAT_WARM; i++) {
        int r = ca_to_thread(trivial_job, NULL);
        if (r != 1) {
            free(t);
            return r < 0 ? r : -EIO;
        }
    }
    for (int i = 0; i < LAT_N; i++) {
        int64_t t0 = bench_now_ns();
        int r = ca_to_thread(trivial_job, NULL);
        t[i] = bench_now_ns() - t0;
        if (r != 1) {
            free(t);
            return r < 0 ? r : -EIO;
        }
    }
    qsort(t, LAT_N, sizeof(*t), cmp_i64);
    *us = (double)t[LAT_N / 2] / 1e3;
    free(t);
    return 0;
}

static int bench_main(void *arg)
{
    size_t n = *(const size_t *)arg;
    /* Start the default pool outside the measurement. */
    int r = ca_to_thread(trivial_job, NULL);
    if (r != 1)
        return r < 0 ? r : -EIO;
    double best = 0;
    r = bench_best_of(TO_THREAD_ROUNDS, one_round, arg, &best);
    if (r < 0)
        return r;
    bench_report("to_thread", "cawait", (double)n / best, 0, "jobs/s");
    r = bench_best_of(TO_THREAD_ROUNDS, tasks_round, arg, &best);
    if (r < 0)
        return r;
    bench_report("to_thread_tasks", "cawait", (double)n / best, 0, "jobs/s");
    double us;
    if ((r = latency(&us)) < 0)
        return r;
    bench_report("to_thread_latency", "cawait", us, 2, "us");
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 100000);
    int r = ca_run(bench_main, &n);
    if (r < 0) {
        fprintf(stderr, "bench_to_thread: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
