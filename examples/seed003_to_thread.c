/*
 * Seed 003, "何时使用多线程处理 I/O 任务": a blocking function run in
 * threads with asyncio.to_thread.
 *
 *     def fetch_data(param):  # an ordinary blocking function (requests...)
 *         print(f"Do something with {param}...", flush=True)
 *         time.sleep(param)   # blocking I/O wait
 *         print(f"Done with {param}", flush=True)
 *         return f"Result of {param}"
 *
 *     async def main():
 *         task1 = asyncio.create_task(asyncio.to_thread(fetch_data, 1))
 *         task2 = asyncio.create_task(asyncio.to_thread(fetch_data, 2))
 *         result1 = await task1
 *         print("Thread 1 fully completed")
 *         result2 = await task2
 *         print("Thread 2 fully completed")
 *
 *     # total: 2 s (the two sleeps overlap, each in its own thread)
 *
 * fetch_data is Example 5's blocking function (nanosleep blocks its
 * thread), but here each call runs on a thread of the loop's default pool
 * through ca_to_thread, so the loop stays free: both sleeps overlap and the
 * total is the longer one, as with create_task and ca_sleep in Example 3.
 * The run uses debug mode with a 50 ms threshold, as Example 5 does: this
 * time no task holds the loop.
 *
 * Every sleep is scaled down 10x: max(1, 2) = 2 s becomes 0.2 s.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c11 */
#endif
#include <cawait.h>
#include <errno.h>
#include <stdio.h>
#include <time.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

struct fetch {
    int param;       /* in */
    char result[32]; /* out: f"Result of {param}" */
};

/* time.sleep: blocks the calling thread (here a pool thread). */
static int blocking_sleep(double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

/* The blocking function: runs on a pool thread, calls no cawait function. */
static int fetch_data(void *arg)
{
    struct fetch *f = arg;
    printf("Do something with %d...\n", f->param);
    int r = blocking_sleep(f->param * SCALE);
    if (r < 0)
        return r;
    printf("Done with %d\n", f->param);
    snprintf(f->result, sizeof f->result, "Result of %d", f->param);
    return 0;
}

/* asyncio.to_thread(fetch_data, param) as a task. */
static int fetch_in_thread(void *arg)
{
    return ca_to_thread(fetch_data, arg);
}

static int amain(void *arg)
{
    struct fetch *f = arg;
    ca_task *task1 = NULL, *task2 = NULL;
    ca_spawn_opts o1 = {.name = "to_thread(fetch_data, 1)"};
    ca_spawn_opts o2 = {.name = "to_thread(fetch_data, 2)"};

    int r = ca_spawn_ex(&task1, fetch_in_thread, &f[0], &o1);
    if (r < 0)
        goto out;
    r = ca_spawn_ex(&task2, fetch_in_thread, &f[1], &o2);
    if (r < 0)
        goto out;

    r = ca_join(task1);
    if (r < 0)
        goto out;
    printf("Thread 1 fully completed\n");
    r = ca_join(task2);
    if (r < 0)
        goto out;
    printf("Thread 2 fully completed\n");

    ca_loop_stats st;
    r = ca_loop_stats_get(&st);
    if (r < 0)
        goto out;
    printf("debug mode: %llu task slice(s) held the loop longer than 50 ms\n",
           (unsigned long long)st.slow_tasks);

out:
    /* On failure ca_run cancels and collects whatever is still running;
     * a task cancelled inside ca_to_thread waits for its thread. */
    if (task1)
        ca_task_release(task1);
    if (task2)
        ca_task_release(task2);
    return r;
}

int main(void)
{
    struct fetch f[2] = {{.param = 1}, {.param = 2}};
    ca_run_opts opts = {.debug = 1, .slow_ms = 50};

    /* Line-buffered: the pool threads and the loop print whole lines. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    printf("seed 003: asyncio.to_thread, a blocking sleep in two threads "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = ca_run_ex(amain, f, &opts);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed003_to_thread: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("results: ['%s', '%s']\n", f[0].result, f[1].result);
    printf("total: %.2f s\n", elapsed);
    printf("expected ~0.20 s (seed: max(1, 2) = 2 s in two threads, "
           "scaled 1/10)\n");
    return 0;
}
