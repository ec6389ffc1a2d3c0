/*
 * bench_queue N: one producer task puts the N pointers 1, 2, ..., N into a
 * bounded FIFO queue of pointers (ca_queue_new with maxsize 64, elem_size
 * 0); the main task is the consumer and gets them (checking the order).
 *
 *     BENCH queue cawait <ns per item> ns
 *
 * ns per item = wall / N, the wall time running from before the producer is
 * spawned to after it is joined (the consumer has then got every item).
 * The best of QUEUE_ROUNDS rounds is reported (a noisy shared VM); the Go
 * peer does the same.  Default N: 10M.
 */
#include <cawait.h>

#include "bench_util.h"

#define QUEUE_ROUNDS 3

typedef struct queue_args {
    ca_queue *q;
    size_t n;
} queue_args;

static int producer(void *arg)
{
    const queue_args *a = arg;
    for (size_t i = 1; i <= a->n; i++) {
        int r = ca_queue_put(a->q, (const void *)(uintptr_t)i);
        if (r < 0)
            return r;
    }
    return 0;
}

static int one_round(void *ctx, double *ns_per_item)
{
    size_t n = *(const size_t *)ctx;
    ca_queue_opts opts = {.kind = CA_QUEUE_FIFO, .maxsize = 64, .elem_size = 0};
    queue_args a = {NULL, n};
    int r = ca_queue_new(&a.q, &opts);
    if (r < 0) {
        fprintf(stderr, "bench_queue: ca_queue_new: %s\n", ca_strerror(r));
        return r;
    }

    int64_t t0 = bench_now_ns();
    ca_task *p = ca_spawn(producer, &a);
    if (!p) {
        fprintf(stderr, "bench_queue: ca_spawn failed\n");
        ca_queue_free(a.q);
        return -ENOMEM;
    }
    for (size_t i = 1; i <= n; i++) {
        void *item;
        r = ca_queue_get(a.q, &item);
        if (r < 0) {
            fprintf(stderr, "bench_queue: ca_queue_get: %s\n", ca_strerror(r));
            break;
        }
        if ((uintptr_t)item != i) {
            fprintf(stderr, "bench_queue: got item %zu, expected %zu\n",
                    (size_t)(uintptr_t)item, i);
            r = -EIO;
            break;
        }
    }
    if (r < 0)
        ca_cancel(p);
    int rp = ca_join(p);
    int64_t t1 = bench_now_ns();
    ca_task_release(p);
    ca_queue_free(a.q);
    if (r < 0)
        return r;
    if (rp < 0) {
        fprintf(stderr, "bench_queue: producer failed: %s\n", ca_strerror(rp));
        return rp;
    }
    *ns_per_item = (double)(t1 - t0) / (double)n;
    return 0;
}

static int bench_main(void *arg)
{
    double best = 0;
    int r = bench_best_of(QUEUE_ROUNDS, one_round, arg, &best);
    if (r < 0)
        return r;
    bench_report("queue", "cawait", best, 2, "ns");
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 10000000);
    int r = ca_run(bench_main, &n);
    if (r < 0) {
        fprintf(stderr, "bench_queue: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
