/*
 * bench_queue_unbounded N: the steady state of an unbounded FIFO queue of
 * pointers (ca_queue_new(&q, NULL)), which grows and shrinks its ring:
 *
 *     BENCH queue_unbounded_pingpong cawait <ns> ns   one task: put, get
 *     BENCH queue_unbounded_tasks cawait <ns> ns      producer task puts,
 *                                                      yielding every 64;
 *                                                      the main task gets
 *     BENCH queue_unbounded_burst100 cawait <ns> ns   put 100, get 100
 *     BENCH queue_unbounded_burst1000 cawait <ns> ns  put 1000, get 1000
 *
 * ns per item over N items (a put and its get), best of 3 rounds, each on a
 * fresh queue.  Ping-pong keeps the count at 0 or 1 (the fast paths only);
 * bursts of 1,000 cross the shrink floor (512 pointer slots), so every
 * burst grows the ring to 1,024 slots and halves it again (the hysteresis'
 * worst case); bursts of 100 stay under it.  Default N: 10M.
 */
#include <cawait.h>

#include "bench_util.h"

#define ROUNDS 3

enum mode { PINGPONG, TASKS, BURST100, BURST1000 };

struct ctx {
    size_t n;
    enum mode mode;
    ca_queue *q;
};

static int producer(void *arg)
{
    const struct ctx *c = arg;
    for (size_t i = 1; i <= c->n; i++) {
        int r = ca_queue_put(c->q, (const void *)(uintptr_t)i);
        if (r < 0)
            return r;
        if ((i & 63) == 0 && (r = ca_yield()) < 0)
            return r;
    }
    return 0;
}

static int check(void *item, size_t want)
{
    if ((uintptr_t)item == want)
        return 0;
    fprintf(stderr, "bench_queue_unbounded: got item %zu, expected %zu\n",
            (size_t)(uintptr_t)item, want);
    return -EIO;
}

static int one_round(void *arg, double *ns_per_item)
{
    struct ctx *c = arg;
    int r = ca_queue_new(&c->q, NULL);
    if (r < 0)
        return r;
    size_t n = c->n;
    void *item;
    int64_t t0 = bench_now_ns();
    if (c->mode == PINGPONG) {
        for (size_t i = 1; i <= n && r == 0; i++) {
            r = ca_queue_put(c->q, (const void *)(uintptr_t)i);
            if (r == 0)
                r = ca_queue_get(c->q, &item);
            if (r == 0)
                r = check(item, i);
        }
    } else if (c->mode == TASKS) {
        ca_task *p = NULL;
        r = ca_spawn_ex(&p, producer, c, NULL);
        for (size_t i = 1; i <= n && r == 0; i++) {
            r = ca_queue_get(c->q, &item);
            if (r == 0)
                r = check(item, i);
        }
        if (p) {
            if (r < 0)
                ca_cancel(p);
            int rp = ca_join(p);
            if (r == 0)
                r = rp;
            ca_task_release(p);
        }
    } else {
        size_t b = c->mode == BURST100 ? 100 : 1000;
        for (size_t done = 0; done < n && r == 0; done += b) {
            for (size_t i = 1; i <= b && r == 0; i++)
                r = ca_queue_put(c->q, (const void *)(uintptr_t)i);
            for (size_t i = 1; i <= b && r == 0; i++) {
                r = ca_queue_get(c->q, &item);
                if (r == 0)
                    r = check(item, i);
            }
        }
        n = (n + b - 1) / b * b;
    }
    int64_t t1 = bench_now_ns();
    ca_queue_free(c->q);
    if (r < 0)
        return r;
    *ns_per_item = (double)(t1 - t0) / (double)n;
    return 0;
}

static int bench_main(void *arg)
{
    static const char *names[] = {
        "queue_unbounded_pingpong", "queue_unbounded_tasks",
        "queue_unbounded_burst100", "queue_unbounded_burst1000"};
    struct ctx c = {.n = *(const size_t *)arg};
    for (int m = PINGPONG; m <= BURST1000; m++) {
        c.mode = (enum mode)m;
        double best = 0;
        int r = bench_best_of(ROUNDS, one_round, &c, &best);
        if (r < 0) {
            fprintf(stderr, "bench_queue_unbounded: %s: %s\n", names[m],
                    ca_strerror(r));
            return r;
        }
        bench_report(names[m], "cawait", best, 2, "ns");
    }
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 10000000);
    int r = ca_run(bench_main, &n);
    return r < 0 ? 1 : 0;
}
