/*
 * Seed 002, Q12: what order does this print in?
 *
 *     async def task1():
 *         print("1-start")
 *         await asyncio.sleep(2)
 *         print("1-end")
 *
 *     async def task2():
 *         print("2-start")
 *         await asyncio.sleep(1)
 *         print("2-end")
 *
 *     async def main():
 *         await asyncio.gather(task1(), task2())
 *
 * Answer: 1-start -> 2-start -> 2-end -> 1-end.  gather wraps its arguments
 * in tasks in argument order; they start in that order (FIFO) and task2,
 * with the shorter sleep, ends first.  In cawait, gather is: spawn every
 * task, then join every task.
 *
 * Every sleep is scaled down 10x: max(2, 1) = 2 s becomes 0.2 s.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

static int task1(void *arg)
{
    (void)arg;
    printf("1-start\n");
    int r = ca_sleep(2 * SCALE);
    if (r < 0)
        return r;
    printf("1-end\n");
    return 0;
}

static int task2(void *arg)
{
    (void)arg;
    printf("2-start\n");
    int r = ca_sleep(1 * SCALE);
    if (r < 0)
        return r;
    printf("2-end\n");
    return 0;
}

/* await asyncio.gather(task1(), task2()) */
static int amain(void *arg)
{
    ca_fn fns[2] = {task1, task2};
    ca_task *tasks[2] = {NULL, NULL};
    int status = 0;
    (void)arg;

    for (int i = 0; i < 2; i++) {
        tasks[i] = ca_spawn(fns[i], NULL);
        if (!tasks[i]) {
            status = -ENOMEM; /* the only ca_spawn failure inside a task */
            break;
        }
    }
    for (int i = 0; i < 2 && tasks[i]; i++) {
        int r = ca_join(tasks[i]);
        if (r < 0 && status == 0)
            status = r;
        ca_task_release(tasks[i]);
    }
    return status;
}

int main(void)
{
    printf("seed 002, Q12: gather(task1(), task2()) output order "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = ca_run(amain, NULL);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed002_q12_order: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("total: %.2f s\n", elapsed);
    printf("expected ~0.20 s (seed: max(2, 1) = 2 s, scaled 1/10)\n");
    return 0;
}
