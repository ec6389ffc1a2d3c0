/*
 * Seed 003, "线程和进程池" (thread and process pools): CPU-bound work goes
 * to a process pool.
 *
 *     def cpu_intensive_task(n):
 *         """CPU-bound: count the primes below n"""
 *         count = 0
 *         for i in range(2, n):
 *             for j in range(2, int(i**0.5) + 1):
 *                 if i % j == 0:
 *                     break
 *             else:
 *                 count += 1
 *         return count
 *
 *     async def main():
 *         loop = asyncio.get_running_loop()
 *         with ProcessPoolExecutor() as executor:
 *             task1 = loop.run_in_executor(executor, cpu_intensive_task, 10000)
 *             task2 = loop.run_in_executor(executor, cpu_intensive_task, 15000)
 *
 *             result1 = await task1
 *             print(f"Process 1 completed: {result1} primes")
 *             result2 = await task2
 *             print(f"Process 2 completed: {result2} primes")
 *
 * run_in_executor becomes a task that calls ca_process_pool_run: the job
 * (cpu_intensive_task) runs in a worker process, its input and result
 * travel as bytes, and the task waits without blocking the loop.  The `with`
 * block is ca_process_pool_new ... ca_process_pool_shutdown (which waits for
 * the jobs, as executor.shutdown(wait=True) does).  Like the seed's executor,
 * the pool has one worker per CPU, so the two counts run side by side.
 */
#include <cawait.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The seed's cpu_intensive_task, as a job: n in, the count out, both as
 * uint64_t bytes.  It runs in a worker process. */
static int cpu_intensive_task(const void *in, size_t in_len, void **out,
                              size_t *out_len)
{
    uint64_t n, count = 0;
    if (in_len != sizeof(n))
        return -EINVAL;
    memcpy(&n, in, sizeof(n));
    for (uint64_t i = 2; i < n; i++) {
        int prime = 1; /* Python's for ... else: no divisor found */
        for (uint64_t j = 2; j * j <= i; j++) /* j <= int(i**0.5) */
            if (i % j == 0) {
                prime = 0;
                break;
            }
        count += (uint64_t)prime;
    }
    uint64_t *res = malloc(sizeof(*res));
    if (!res)
        return -ENOMEM;
    *res = count;
    *out = res;
    *out_len = sizeof(*res);
    return 0;
}

/* loop.run_in_executor(executor, cpu_intensive_task, n) */
struct executor_job {
    ca_process_pool *pool;
    uint64_t n;     /* in */
    uint64_t count; /* out */
};

static int run_in_executor(void *arg)
{
    struct executor_job *j = arg;
    ca_process_pool_result res;
    int r = ca_process_pool_run(j->pool, cpu_intensive_task, &j->n,
                                sizeof(j->n), &res, NULL);
    if (r < 0)
        return r;
    if (res.status == 0 && res.len == sizeof(j->count))
        memcpy(&j->count, res.data, sizeof(j->count));
    else if (res.status == 0)
        res.status = -EPROTO; /* not the bytes we expect */
    r = res.status;
    ca_process_pool_result_free(&res);
    return r;
}

static int amain(void *arg)
{
    (void)arg;
    ca_process_pool *executor;
    int r = ca_process_pool_new(&executor, NULL); /* ProcessPoolExecutor() */
    if (r < 0)
        return r;
    struct executor_job j1 = {.pool = executor, .n = 10000};
    struct executor_job j2 = {.pool = executor, .n = 15000};
    ca_task *task1 = ca_spawn(run_in_executor, &j1);
    ca_task *task2 = ca_spawn(run_in_executor, &j2);
    if (!task1 || !task2) {
        r = -ENOMEM;
        goto out;
    }

    r = ca_join(task1);
    if (r < 0)
        goto out;
    printf("Process 1 completed: %llu primes\n", (unsigned long long)j1.count);
    r = ca_join(task2);
    if (r < 0)
        goto out;
    printf("Process 2 completed: %llu primes\n", (unsigned long long)j2.count);

    ca_process_pool_stats st;
    if (ca_process_pool_stats_get(executor, &st) == 0)
        printf("pool: %u worker processes, %llu jobs done\n", st.workers,
               (unsigned long long)st.jobs_done);
out:
    if (task1)
        ca_join(task1); /* on an early exit: let it finish, then release */
    if (task2)
        ca_join(task2);
    ca_task_release(task1);
    ca_task_release(task2);
    /* Leaving the `with` block: wait for the jobs, reap the workers. */
    int sr = ca_process_pool_shutdown(executor, INFINITY);
    return r < 0 ? r : sr;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("seed 003: CPU-bound primes in a process pool "
           "(ProcessPoolExecutor)\n");
    double start = ca_now();
    int r = ca_run(amain, NULL);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed003_primes: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("total: %.2f s\n", elapsed);
    return 0;
}
