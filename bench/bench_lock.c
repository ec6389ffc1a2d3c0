/*
 * bench_lock N: two tasks contend for one ca_lock; each does N/2 times
 *
 *     ca_lock_acquire(&l); ca_yield(); ca_lock_release(&l);
 *
 * The ca_yield while holding the lock forces real contention: the other
 * task runs, finds the lock held and waits for it; the release hands the
 * lock over to it (FIFO).
 *
 *     BENCH lock cawait <ns per acquire/release pair> ns
 *
 * ns = wall / N, the wall time running from before the two tasks are
 * spawned to after both are joined.  Each task checks that the lock really
 * excludes the other, and the hand-offs (an acquire by the task that did
 * not hold the lock last) are counted: fewer than N/4 means the benchmark
 * did not measure contention, which is reported on stderr.  The best of
 * LOCK_ROUNDS rounds is reported (a noisy shared VM); the Go peer does the
 * same.  Default N: 1M.
 */
#include <cawait.h>

#include "bench_util.h"

#define LOCK_ROUNDS 3

typedef struct lock_state {
    ca_lock lock;
    size_t pairs; /* per task */
    int holder;   /* task inside the lock, 0: none */
    int last;     /* task that took the lock last */
    size_t handoffs;
} lock_state;

typedef struct worker_args {
    lock_state *s;
    int me;
} worker_args;

static int worker(void *arg)
{
    const worker_args *w = arg;
    lock_state *s = w->s;
    for (size_t i = 0; i < s->pairs; i++) {
        int r = ca_lock_acquire(&s->lock);
        if (r < 0)
            return r;
        if (s->holder != 0)
            return -EIO; /* two tasks inside the lock */
        s->holder = w->me;
        if (s->last != w->me)
            s->handoffs++;
        s->last = w->me;
        r = ca_yield();
        s->holder = 0;
        int rr = ca_lock_release(&s->lock);
        if (r < 0)
            return r;
        if (rr < 0)
            return rr;
    }
    return 0;
}

static int one_round(void *ctx, double *ns_per_pair)
{
    size_t n = *(const size_t *)ctx;
    lock_state s = {CA_LOCK_INIT, n / 2, 0, 0, 0};
    worker_args w1 = {&s, 1}, w2 = {&s, 2};
    size_t total = 2 * s.pairs;

    int64_t t0 = bench_now_ns();
    ca_task *t1 = ca_spawn(worker, &w1);
    ca_task *t2 = ca_spawn(worker, &w2);
    if (!t1 || !t2) {
        fprintf(stderr, "bench_lock: ca_spawn failed\n");
        return -ENOMEM; /* ca_run collects the other one */
    }
    int r1 = ca_join(t1);
    int r2 = ca_join(t2);
    int64_t t1ns = bench_now_ns();
    ca_task_release(t1);
    ca_task_release(t2);
    if (r1 < 0 || r2 < 0) {
        int r = r1 < 0 ? r1 : r2;
        fprintf(stderr, "bench_lock: task failed: %s\n",
                r == -EIO ? "two tasks inside the lock" : ca_strerror(r));
        return r;
    }
    if (s.handoffs < total / 4)
        fprintf(stderr,
                "bench_lock: only %zu hand-offs in %zu acquisitions: the lock "
                "was hardly contended\n",
                s.handoffs, total);
    *ns_per_pair = (double)(t1ns - t0) / (double)total;
    return 0;
}

static int bench_main(void *arg)
{
    double best = 0;
    int r = bench_best_of(LOCK_ROUNDS, one_round, arg, &best);
    if (r < 0)
        return r;
    bench_report("lock", "cawait", best, 2, "ns");
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 1000000);
    if (n < 2)
        n = 2;
    int r = ca_run(bench_main, &n);
    if (r < 0) {
        fprintf(stderr, "bench_lock: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
