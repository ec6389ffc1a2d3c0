/*
 * Seed 003, "同步 vs 立即 await", Example 1: the synchronous version.
 *
 *     def fetch_data(param):
 *         print(f"Do something with {param}...")
 *         time.sleep(param)  # blocks
 *         print(f"Done with {param}")
 *         return f"Result of {param}"
 *
 *     def main():
 *         result1 = fetch_data(1)
 *         print("Fetch 1 fully completed")
 *         result2 = fetch_data(2)
 *         print("Fetch 2 fully completed")
 *         return [result1, result2]
 *
 *     # total: 3 s (1 + 2)
 *
 * No event loop at all: fetch_data blocks the whole thread with nanosleep,
 * exactly as time.sleep does, so the total is the sum of the waits.  ca_now()
 * works without a loop too (it then reads the monotonic clock).
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

/* time.sleep: block the calling thread, resuming after signals. */
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

static int fetch_data(struct fetch *f)
{
    printf("Do something with %d...\n", f->param);
    int r = blocking_sleep(f->param * SCALE);
    if (r < 0)
        return r;
    printf("Done with %d\n", f->param);
    snprintf(f->result, sizeof f->result, "Result of %d", f->param);
    return 0;
}

int main(void)
{
    struct fetch f1 = {.param = 1}, f2 = {.param = 2};

    printf("seed 003, example 1: synchronous fetch_data, blocking sleeps "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = fetch_data(&f1);
    if (r < 0)
        goto fail;
    printf("Fetch 1 fully completed\n");
    r = fetch_data(&f2);
    if (r < 0)
        goto fail;
    printf("Fetch 2 fully completed\n");
    double elapsed = ca_now() - start;

    printf("results: ['%s', '%s']\n", f1.result, f2.result);
    printf("total: %.2f s\n", elapsed);
    printf("expected ~0.30 s (seed: 1 + 2 = 3 s, scaled 1/10)\n");
    return 0;

fail:
    fprintf(stderr, "seed003_ex1_sync: nanosleep: %s\n", ca_strerror(r));
    return 1;
}
