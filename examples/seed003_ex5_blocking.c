/*
 * Seed 003, "常见陷阱：阻塞操作", Example 5: a blocking call inside a task.
 *
 *     async def fetch_data(param):
 *         print(f"Do something with {param}...")
 *         time.sleep(param)  # wrong: blocks the whole event loop
 *         print(f"Done with {param}")
 *         return f"Result of {param}"
 *
 *     # even with create_task, it still blocks
 *
 * main is Example 3's (create_task both, await task1 then task2), but
 * fetch_data sleeps with nanosleep instead of ca_sleep.  nanosleep blocks
 * the thread, and with it the loop: task2 cannot start until task1 has
 * finished, so the total is the sum again, as in Example 1.
 *
 * The run uses debug mode (ca_run_opts.debug, or CAWAIT_DEBUG=1), which
 * names on stderr every task that held the loop longer than slow_ms: that
 * is how to find such a call in a real program.
 *
 * Every sleep is scaled down 10x: 1 s + 2 s = 3 s become 0.3 s.
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

/* time.sleep: blocks the thread, so the loop cannot run anything else. */
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

static int fetch_data(void *arg)
{
    struct fetch *f = arg;
    printf("Do something with %d...\n", f->param);
    int r = blocking_sleep(f->param * SCALE); /* the mistake */
    if (r < 0)
        return r;
    printf("Done with %d\n", f->param);
    snprintf(f->result, sizeof f->result, "Result of %d", f->param);
    return 0;
}

static int amain(void *arg)
{
    struct fetch *f = arg;
    ca_task *task1 = NULL, *task2 = NULL;
    ca_spawn_opts o1 = {.name = "fetch_data(1)"};
    ca_spawn_opts o2 = {.name = "fetch_data(2)"};

    int r = ca_spawn_ex(&task1, fetch_data, &f[0], &o1);
    if (r < 0)
        goto out;
    r = ca_spawn_ex(&task2, fetch_data, &f[1], &o2);
    if (r < 0)
        goto out;

    r = ca_join(task1);
    if (r < 0)
        goto out;
    printf("Task 1 fully completed\n");
    r = ca_join(task2);
    if (r < 0)
        goto out;
    printf("Task 2 fully completed\n");

    ca_loop_stats st;
    r = ca_loop_stats_get(&st);
    if (r < 0)
        goto out;
    printf("debug mode: %llu task slice(s) held the loop longer than 50 ms "
           "(see stderr)\n",
           (unsigned long long)st.slow_tasks);

out:
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

    /* Line-buffered, so the loop's reports on stderr land between the
     * lines they are about even when both go to one pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    printf("seed 003, example 5: blocking sleep inside tasks "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = ca_run_ex(amain, f, &opts);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed003_ex5_blocking: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("results: ['%s', '%s']\n", f[0].result, f[1].result);
    printf("total: %.2f s\n", elapsed);
    printf("expected ~0.30 s (seed: 1 + 2 = 3 s, no concurrency; "
           "scaled 1/10)\n");
    return 0;
}
