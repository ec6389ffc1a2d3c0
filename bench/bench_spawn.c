/*
 * bench_spawn N: spawn N empty tasks (handles kept in an array), then join
 * every one (ca_join, then ca_task_release).
 *
 *     BENCH spawn cawait <seconds> s
 *     BENCH spawn_rss cawait <peak RSS> MiB
 *
 * The time covers the spawns, the joins and the releases; the handle array
 * is allocated (and touched) before the clock starts.  The best of
 * SPAWN_ROUNDS rounds is reported, each round a loop of its own (ca_run),
 * so every round maps its task memory afresh: on this VM the kernel
 * sometimes takes 0.2-0.3 s longer to hand over the same 100 MB.  The Go
 * peer does the same.
 */
#include <cawait.h>
#include <string.h>

#include "bench_util.h"

static int empty_task(void *arg)
{
    (void)arg;
    return 0;
}

#define SPAWN_ROUNDS 3

typedef struct spawn_round {
    size_t n;
    double seconds;
} spawn_round;

static int bench_main(void *arg)
{
    spawn_round *sr = arg;
    size_t n = sr->n;
    ca_task **tasks = malloc(n * sizeof(*tasks));
    if (!tasks)
        return -ENOMEM;
    memset(tasks, 0, n * sizeof(*tasks));

    int64_t t0 = bench_now_ns();
    for (size_t i = 0; i < n; i++) {
        tasks[i] = ca_spawn(empty_task, NULL);
        if (!tasks[i]) {
            fprintf(stderr, "bench_spawn: ca_spawn failed at task %zu\n", i);
            return -ENOMEM; /* ca_run collects the others */
        }
    }
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (ca_join(tasks[i]) < 0)
            failed++;
        ca_task_release(tasks[i]);
    }
    int64_t t1 = bench_now_ns();
    free(tasks);
    if (failed) {
        fprintf(stderr, "bench_spawn: %d tasks failed\n", failed);
        return -EIO;
    }
    sr->seconds = (double)(t1 - t0) / 1e9;
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 1000000);
    double best = 0;
    for (int i = 0; i < SPAWN_ROUNDS; i++) {
        spawn_round sr = {n, 0};
        int r = ca_run(bench_main, &sr);
        if (r < 0) {
            fprintf(stderr, "bench_spawn: %s\n", ca_strerror(r));
            return 1;
        }
        if (i == 0 || sr.seconds < best)
            best = sr.seconds;
    }
    bench_report("spawn", "cawait", best, 4, "s");
    bench_report("spawn_rss", "cawait", bench_peak_rss_mib(), 1, "MiB");
    return 0;
}
