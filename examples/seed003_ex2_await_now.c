/*
 * Seed 003, "同步 vs 立即 await", Example 2: async, but awaited at once.
 *
 *     async def fetch_data(param):
 *         print(f"Do something with {param}...")
 *         await asyncio.sleep(param)
 *         print(f"Done with {param}")
 *         return f"Result of {param}"
 *
 *     async def main():
 *         task1 = fetch_data(1)      # a coroutine object, not running
 *         task2 = fetch_data(2)
 *         result1 = await task1      # awaited at once: no concurrency
 *         print("Task 1 fully completed")
 *         result2 = await task2
 *         print("Task 2 fully completed")
 *         return [result1, result2]
 *
 *     # total: still 3 s
 *
 * C has no coroutine objects: "await fetch_data(1)" is simply calling
 * fetch_data inside the task.  The call returns when fetch_data has
 * finished, so nothing else is scheduled meanwhile and the total is still
 * the sum, although the sleep no longer blocks the thread.
 *
 * Every sleep is scaled down 10x: 1 s + 2 s = 3 s become 0.3 s.
 */
#include <cawait.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

struct fetch {
    int param;       /* in */
    char result[32]; /* out: f"Result of {param}" */
};

/* A "coroutine": it may only be called from a task, since ca_sleep
 * suspends the calling task. */
static int fetch_data(struct fetch *f)
{
    printf("Do something with %d...\n", f->param);
    int r = ca_sleep(f->param * SCALE);
    if (r < 0)
        return r;
    printf("Done with %d\n", f->param);
    snprintf(f->result, sizeof f->result, "Result of %d", f->param);
    return 0;
}

static int amain(void *arg)
{
    struct fetch *f = arg;

    int r = fetch_data(&f[0]); /* result1 = await fetch_data(1) */
    if (r < 0)
        return r;
    printf("Task 1 fully completed\n");
    r = fetch_data(&f[1]); /* result2 = await fetch_data(2) */
    if (r < 0)
        return r;
    printf("Task 2 fully completed\n");
    return 0;
}

int main(void)
{
    struct fetch f[2] = {{.param = 1}, {.param = 2}};

    printf("seed 003, example 2: coroutines awaited at once "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = ca_run(amain, f);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed003_ex2_await_now: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("results: ['%s', '%s']\n", f[0].result, f[1].result);
    printf("total: %.2f s\n", elapsed);
    printf("expected ~0.30 s (seed: 1 + 2 = 3 s, scaled 1/10)\n");
    return 0;
}
