/*
 * Seed 003, "任务创建与调度", Example 3: create_task, then await in order.
 *
 *     async def main():
 *         task1 = asyncio.create_task(fetch_data(1))
 *         task2 = asyncio.create_task(fetch_data(2))
 *         result1 = await task1
 *         print("Task 1 fully completed")
 *         result2 = await task2
 *         print("Task 2 fully completed")
 *         return [result1, result2]
 *
 *     # total: 2 s (concurrent)
 *
 * ca_spawn is create_task: it schedules the task and returns at once; the
 * task starts at the loop's next turn, once main blocks in ca_join.  Both
 * sleeps then run together, so the total is the longer one.
 *
 * Every sleep is scaled down 10x: max(1, 2) = 2 s becomes 0.2 s.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

struct fetch {
    int param;       /* in */
    char result[32]; /* out: f"Result of {param}" */
};

static int fetch_data(void *arg)
{
    struct fetch *f = arg;
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
    int r = -ENOMEM; /* what a NULL from ca_spawn means inside a task */

    ca_task *task1 = ca_spawn(fetch_data, &f[0]);
    ca_task *task2 = ca_spawn(fetch_data, &f[1]);
    if (!task1 || !task2)
        goto out;

    r = ca_join(task1);
    if (r < 0)
        goto out;
    printf("Task 1 fully completed\n");
    r = ca_join(task2);
    if (r < 0)
        goto out;
    printf("Task 2 fully completed\n");

out:
    /* On failure ca_run cancels and collects whatever is still running. */
    if (task1)
        ca_task_release(task1);
    if (task2)
        ca_task_release(task2);
    return r;
}

int main(void)
{
    struct fetch f[2] = {{.param = 1}, {.param = 2}};

    printf("seed 003, example 3: create_task both, await task1 then task2 "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = ca_run(amain, f);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed003_ex3_create_task: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("results: ['%s', '%s']\n", f[0].result, f[1].result);
    printf("total: %.2f s\n", elapsed);
    printf("expected ~0.20 s (seed: max(1, 2) = 2 s, scaled 1/10)\n");
    return 0;
}
