/*
 * bench_spawn_process [N [CONCURRENCY]]: run N /bin/true children,
 * CONCURRENCY at a time (defaults 1000 and 50), each started with
 * ca_subprocess_exec (stdio inherited, as asyncio.create_subprocess_exec
 * with no pipes), waited for and freed.
 *
 *     BENCH spawn_process cawait <children_per_s> children/s
 *
 * The best of 3 rounds (this VM is noisy; the peers run once, see
 * bench/run_spawn_process.sh).
 */
#include <cawait.h>
#include <string.h>
#include <sys/wait.h>

#include "bench_util.h"

struct ctx {
    size_t n, conc;
    size_t next;
    int failed;
};

static int worker(void *arg)
{
    struct ctx *c = arg;
    const char *argv[] = {"/bin/true", NULL};
    while (c->next < c->n) {
        c->next++;
        ca_process *p;
        int r = ca_subprocess_exec(&p, argv, NULL);
        if (r < 0) {
            fprintf(stderr, "bench_spawn_process: spawn: %s\n",
                    ca_strerror(r));
            c->failed++;
            return r;
        }
        int ws;
        r = ca_subprocess_wait(p, &ws);
        ca_subprocess_free(p);
        if (r < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
            c->failed++;
            return r < 0 ? r : -EIO;
        }
    }
    return 0;
}

static int round_main(void *arg)
{
    struct ctx *c = arg;
    ca_task **ts = calloc(c->conc, sizeof(*ts));
    if (!ts)
        return -ENOMEM;
    for (size_t i = 0; i < c->conc; i++) {
        ts[i] = ca_spawn(worker, c);
        if (!ts[i]) {
            c->failed++;
            break;
        }
    }
    int r = 0;
    for (size_t i = 0; i < c->conc && ts[i]; i++) {
        int s = ca_join(ts[i]);
        if (s < 0 && r == 0)
            r = s;
        ca_task_release(ts[i]);
    }
    free(ts);
    return r;
}

/* One round: its figure is seconds per child (smaller is better). */
static int one_round(void *arg, double *value)
{
    struct ctx *c = arg;
    c->next = 0;
    c->failed = 0;
    int64_t t0 = bench_now_ns();
    int r = ca_run(round_main, c);
    int64_t t1 = bench_now_ns();
    if (r < 0 || c->failed)
        return r < 0 ? r : -EIO;
    *value = (double)(t1 - t0) / 1e9 / (double)c->n;
    return 0;
}

static size_t parse(const char *s, const char *prog)
{
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || v == 0 || v > 10000000) {
        fprintf(stderr, "usage: %s [N [CONCURRENCY]]\n", prog);
        exit(2);
    }
    return (size_t)v;
}

int main(int argc, char **argv)
{
    if (argc > 3) {
        fprintf(stderr, "usage: %s [N [CONCURRENCY]]\n", argv[0]);
        return 2;
    }
    struct ctx c = {.n = argc > 1 ? parse(argv[1], argv[0]) : 1000,
                    .conc = argc > 2 ? parse(argv[2], argv[0]) : 50};
    if (c.conc > c.n)
        c.conc = c.n;
    double best = 0;
    int r = bench_best_of(3, one_round, &c, &best);
    if (r < 0) {
        fprintf(stderr, "bench_spawn_process: %s\n", ca_strerror(r));
        return 1;
    }
    bench_report("spawn_process", "cawait", 1.0 / best, 0, "children/s");
    return 0;
}
