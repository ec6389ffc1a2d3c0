/*
 * Seed 001, "超时控制": asyncio.wait_for with a timeout.
 *
 *     async def slow_operation():
 *         await asyncio.sleep(5)
 *         return "完成"
 *
 *     async def main():
 *         try:
 *             result = await asyncio.wait_for(slow_operation(), timeout=2.0)
 *             print(result)
 *         except asyncio.TimeoutError:
 *             print("操作超时！")
 *
 * cawait's timeouts are deadline scopes (asyncio.timeout): ca_deadline_push
 * opens one, and once it passes, the blocking call the task is in (here the
 * ca_sleep inside slow_operation) returns -ETIMEDOUT.  ca_deadline_pop
 * closes the scope and returns -ETIMEDOUT if this scope is what expired, so
 * an inner -ETIMEDOUT from somebody else's deadline is not mistaken for
 * ours.
 *
 * The seed's case runs first (5 s operation, 2 s timeout: times out after
 * 2 s), then the same with a 10 s timeout (completes after 5 s).
 *
 * Every sleep is scaled down 10x: 2 s -> 0.2 s, 5 s -> 0.5 s.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

static int slow_operation(const char **result)
{
    int r = ca_sleep(5 * SCALE);
    if (r < 0)
        return r;
    *result = "done";
    return 0;
}

/* try: result = await asyncio.wait_for(slow_operation(), timeout)
 * Returns 0 (printed the result), 1 (timed out) or a negative error. */
static int wait_for_slow_operation(double timeout)
{
    const char *result = NULL;
    int r = ca_deadline_push(timeout * SCALE);
    if (r < 0)
        return r;
    r = slow_operation(&result);
    int expired = ca_deadline_pop() == -ETIMEDOUT;
    if (expired) {
        printf("operation timed out!\n");
        return 1;
    }
    if (r < 0)
        return r;
    printf("%s\n", result);
    return 0;
}

static int amain(void *arg)
{
    (void)arg;

    printf("-- wait_for(slow_operation(), timeout=2.0) --\n");
    double start = ca_now();
    int r = wait_for_slow_operation(2.0);
    if (r < 0)
        return r;
    printf("timeout total: %.2f s\n", ca_now() - start);
    printf("expected ~0.20 s (seed: timeout 2 s, scaled 1/10)\n");

    printf("-- wait_for(slow_operation(), timeout=10.0) --\n");
    start = ca_now();
    r = wait_for_slow_operation(10.0);
    if (r < 0)
        return r;
    printf("completed total: %.2f s\n", ca_now() - start);
    printf("expected ~0.50 s (seed: operation 5 s, scaled 1/10)\n");
    return 0;
}

int main(void)
{
    printf("seed 001, timeout control: asyncio.wait_for "
           "(sleeps scaled 1/10)\n");
    int r = ca_run(amain, NULL);
    if (r < 0) {
        fprintf(stderr, "seed001_wait_for: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    return 0;
}
