/* Queues: order, blocking, join, shutdown, cancellation, free, errors. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>


static char trace[4096];
static void note(const char *s)
{
    strcat(trace, s);
    strcat(trace, " ");
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define P(i) ((void *)(intptr_t)(i))
#define I(p) ((int)(intptr_t)(p))

static ca_queue *mkq(enum ca_queue_kind kind, size_t maxsize, size_t esz,
                     int (*cmp)(const void *, const void *))
{
    ca_queue_opts o = {.kind = kind, .maxsize = maxsize, .elem_size = esz,
                       .cmp = cmp};
    ca_queue *q = NULL;
    ASSERT_EQ(ca_queue_new(&q, &o), 0);
    ASSERT(q);
    return q;
}

static int cmp_ptr(const void *a, const void *b)
{
    intptr_t x = (intptr_t) * (void *const *)a, y = (intptr_t) * (void *const *)b;
    return (x > y) - (x < y);
}

struct kv {
    int key;
    int seq;
};

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int cmp_kv(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    return (x->key > y->key) - (x->key < y->key);
}

/* ---- order: FIFO, LIFO, PRIORITY over pointers ---------------------------- */

static int order_ptr_main(void *a)
{
    (void)a;
    static const int in[] = {5, 1, 4, 1, 3, 9, 2, 6};
    static const int fifo[] = {5, 1, 4, 1, 3, 9, 2, 6};
    static const int lifo[] = {6, 2, 9, 3, 1, 4, 1, 5};
    static const int prio[] = {1, 1, 2, 3, 4, 5, 6, 9};
    const int *want[] = {fifo, lifo, prio};
    enum ca_queue_kind kinds[] = {CA_QUEUE_FIFO, CA_QUEUE_LIFO,
                                  CA_QUEUE_PRIORITY};
    for (int k = 0; k < 3; k++) {
        ca_queue *q = mkq(kinds[k], 0, 0, cmp_ptr);
        ASSERT(ca_queue_empty(q));
        for (int i = 0; i < 8; i++)
            ASSERT_EQ(ca_queue_put(q, P(in[i])), 0);
        ASSERT_EQ(ca_queue_size(q), 8);
        ASSERT(!ca_queue_empty(q));
        ASSERT(!ca_queue_full(q)); /* unbounded: never full */
        for (int i = 0; i < 8; i++) {
            void *v = NULL;
            ASSERT_EQ(ca_queue_get(q, &v), 0);
            ASSERT_EQ(I(v), want[k][i]);
        }
        ASSERT(ca_queue_empty(q));
        ca_queue_free(q);
    }
    /* opts NULL: an unbounded FIFO of pointers; NULL is a valid item. */
    ca_queue *q = NULL;
    ASSERT_EQ(ca_queue_new(&q, NULL), 0);
    ASSERT_EQ(ca_queue_put(q, NULL), 0);
    ASSERT_EQ(ca_queue_put(q, P(7)), 0);
    void *v = P(1);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT(v == NULL);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 7);
    ca_queue_free(q);
    return 0;
}

static void test_order_pointers(void)
{
    ASSERT_EQ(ca_run(order_ptr_main, NULL), 0);
}

/* ---- order: value items, priority ties in FIFO order --------------------- */

static int order_val_main(void *a)
{
    (void)a;
    /* FIFO and LIFO of 13-byte values (odd size, no alignment). */
    for (int k = 0; k < 2; k++) {
        ca_queue *q = mkq(k ? CA_QUEUE_LIFO : CA_QUEUE_FIFO, 0, 13, NULL);
        for (int i = 0; i < 40; i++) {
            char item[13];
            memset(item, 'a' + i % 26, sizeof(item));
            item[0] = (char)i;
            ASSERT_EQ(ca_queue_put(q, item), 0);
        }
        for (int i = 0; i < 40; i++) {
            char out[14];
            out[13] = 'Z'; /* not written */
            ASSERT_EQ(ca_queue_get(q, out), 0);
            int want = k ? 39 - i : i;
            ASSERT_EQ(out[0], want);
            ASSERT_EQ(out[12], 'a' + want % 26);
            ASSERT_EQ(out[13], 'Z');
        }
        ca_queue_free(q);
    }
    /* PRIORITY of structs: equal keys come out in insertion order. */
    ca_queue *q = mkq(CA_QUEUE_PRIORITY, 0, sizeof(struct kv), cmp_kv);
    static const int keys[] = {3, 1, 3, 2, 1, 3, 0, 2, 1, 3};
    for (int i = 0; i < 10; i++) {
        struct kv e = {keys[i], i};
        ASSERT_EQ(ca_queue_put(q, &e), 0);
    }
    static const int seqs[] = {6, 1, 4, 8, 3, 7, 0, 2, 5, 9};
    for (int i = 0; i < 10; i++) {
        struct kv e;
        ASSERT_EQ(ca_queue_get(q, &e), 0);
        ASSERT_EQ(e.seq, seqs[i]);
        ASSERT_EQ(e.key, keys[seqs[i]]);
    }
    ca_queue_free(q);
    return 0;
}

static void test_order_values_and_ties(void)
{
    ASSERT_EQ(ca_run(order_val_main, NULL), 0);
}

/* ---- many items: growth while wrapped, heap under churn ------------------ */

static uint32_t rng = 12345;
static uint32_t xrand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static int stress_main(void *a)
{
    (void)a;
    /* FIFO: wrap the ring, then grow it while wrapped. */
    ca_queue *q = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
    int next_in = 0, next_out = 0;
    for (int round = 0; round < 200; round++) {
        int n = (int)(xrand() % 50);
        for (int i = 0; i < n; i++)
            ASSERT_EQ(ca_queue_put_nowait(q, P(next_in++)), 0);
        int m = (int)(xrand() % 50);
        for (int i = 0; i < m && !ca_queue_empty(q); i++) {
            void *v;
            ASSERT_EQ(ca_queue_get_nowait(q, &v), 0);
            ASSERT_EQ(I(v), next_out++);
        }
        ASSERT_EQ(ca_queue_size(q), (size_t)(next_in - next_out));
    }
    ca_queue_free(q);

    /* PRIORITY: random keys with many duplicates, interleaved put/get; a
     * reference model checks (key, then FIFO) order. */
    q = mkq(CA_QUEUE_PRIORITY, 0, sizeof(struct kv), cmp_kv);
    enum { N = 4000 };
    static struct kv model[N];
    int nm = 0, seq = 0;
    for (int round = 0; round < 300; round++) {
        int n = (int)(xrand() % 20);
        for (int i = 0; i < n && nm < N; i++) {
            struct kv e = {(int)(xrand() % 8), seq++};
            ASSERT_EQ(ca_queue_put(q, &e), 0);
            model[nm++] = e;
        }
        int m = (int)(xrand() % 20);
        for (int i = 0; i < m && nm > 0; i++) {
            int best = 0;
            for (int j = 1; j < nm; j++)
                if (model[j].key < model[best].key ||
                    (model[j].key == model[best].key &&
                     model[j].seq < model[best].seq))
                    best = j;
            struct kv e;
            ASSERT_EQ(ca_queue_get(q, &e), 0);
            ASSERT_EQ(e.key, model[best].key);
            ASSERT_EQ(e.seq, model[best].seq);
            model[best] = model[--nm];
        }
        ASSERT_EQ(ca_queue_size(q), (size_t)nm);
    }
    ca_queue_free(q);
    return 0;
}

static void test_stress_order(void)
{
    ASSERT_EQ(ca_run(stress_main, NULL), 0);
}

/* ---- bounded: put blocks until a get ------------------------------------- */

static int bounded_producer(void *a)
{
    ca_queue *q = a;
    char buf[16];
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof(buf), "put%d", i);
        note(buf);
        ASSERT_EQ(ca_queue_put(q, P(i)), 0);
    }
    note("pdone");
    return 0;
}

static int bounded_main(void *a)
{
    (void)a;
    ca_queue *q = mkq(CA_QUEUE_FIFO, 2, 0, NULL);
    ca_task *p = ca_spawn(bounded_producer, q);
    ASSERT_EQ(ca_sleep(0.01), 0);
    /* put0 and put1 went in; put2 waits. */
    ASSERT_STREQ(trace, "put0 put1 put2 ");
    ASSERT(ca_queue_full(q));
    ASSERT_EQ(ca_queue_size(q), 2);
    ASSERT_EQ(ca_queue_put_nowait(q, P(99)), -EAGAIN);
    void *v;
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 0);
    note("got0");
    ASSERT_EQ(ca_yield(), 0); /* the producer fills the slot, blocks again */
    ASSERT_STREQ(trace, "put0 put1 put2 got0 put3 ");
    for (int i = 1; i < 4; i++) {
        ASSERT_EQ(ca_queue_get(q, &v), 0);
        ASSERT_EQ(I(v), i);
    }
    ASSERT_EQ(ca_join(p), 0);
    ASSERT_STREQ(trace, "put0 put1 put2 got0 put3 pdone ");
    ca_task_release(p);
    ca_queue_free(q);
    return 0;
}

static void test_bounded_put_blocks(void)
{
    ASSERT_EQ(ca_run(bounded_main, NULL), 0);
}

/* ---- 3 producers x 100 items, 2 consumers, task_done, join --------------- */

enum { NPROD = 3, NITEMS = 100 };

struct pc {
    ca_queue *q;
    int got[NPROD * NITEMS]; /* receive order */
    int ngot;
    int per_consumer[2];
    int done_calls;
};

struct prod_arg {
    struct pc *pc;
    int id;
};

static int pc_producer(void *a)
{
    struct prod_arg *pa = a;
    for (int i = 0; i < NITEMS; i++) {
        ASSERT_EQ(ca_queue_put(pa->pc->q, P(pa->id * 1000 + i)), 0);
        if (i % 7 == pa->id)
            ASSERT_EQ(ca_sleep(0), 0);
    }
    return 0;
}

struct cons_arg {
    struct pc *pc;
    int id;
};

static int pc_consumer(void *a)
{
    struct cons_arg *ca = a;
    struct pc *pc = ca->pc;
    for (;;) {
        void *v;
        int r = ca_queue_get(pc->q, &v);
        if (r < 0)
            return r;
        pc->got[pc->ngot++] = I(v);
        pc->per_consumer[ca->id]++;
        /* "process" the item: the other consumer gets a turn */
        if (pc->ngot % 3 == ca->id)
            ASSERT_EQ(ca_sleep(0.0005), 0);
        ASSERT_EQ(ca_queue_task_done(pc->q), 0);
        pc->done_calls++;
    }
}

static int pc_main(void *a)
{
    (void)a;
    static struct pc pc;
    pc.q = mkq(CA_QUEUE_FIFO, 10, 0, NULL);
    ca_task *cons[2], *prod[NPROD];
    struct cons_arg cargs[2];
    struct prod_arg pargs[NPROD];
    for (int i = 0; i < 2; i++) {
        cargs[i] = (struct cons_arg){&pc, i};
        cons[i] = ca_spawn(pc_consumer, &cargs[i]);
    }
    for (int i = 0; i < NPROD; i++) {
        pargs[i] = (struct prod_arg){&pc, i};
        prod[i] = ca_spawn(pc_producer, &pargs[i]);
    }
    for (int i = 0; i < NPROD; i++) {
        ASSERT_EQ(ca_join(prod[i]), 0);
        ca_task_release(prod[i]);
    }
    ASSERT_EQ(ca_queue_join(pc.q), 0);
    /* join returned only once every item was processed */
    ASSERT_EQ(pc.done_calls, NPROD * NITEMS);
    ASSERT_EQ(pc.ngot, NPROD * NITEMS);
    ASSERT(ca_queue_empty(pc.q));
    for (int i = 0; i < 2; i++) {
        ca_cancel(cons[i]);
        ASSERT_EQ(ca_join(cons[i]), -ECANCELED);
        ca_task_release(cons[i]);
    }
    /* each item exactly once, each producer's items in order */
    int seen[NPROD][NITEMS] = {{0}};
    int last[NPROD] = {-1, -1, -1};
    for (int i = 0; i < pc.ngot; i++) {
        int p = pc.got[i] / 1000, k = pc.got[i] % 1000;
        ASSERT(p >= 0 && p < NPROD && k >= 0 && k < NITEMS);
        ASSERT_EQ(seen[p][k], 0);
        seen[p][k] = 1;
        ASSERT_GT(k, last[p]);
        last[p] = k;
    }
    ASSERT_GT(pc.per_consumer[0], 0);
    ASSERT_GT(pc.per_consumer[1], 0);
    ASSERT_EQ(ca_queue_task_done(pc.q), -EINVAL);
    ca_queue_free(pc.q);
    return 0;
}

static void test_producers_consumers_join(void)
{
    ASSERT_EQ(ca_run(pc_main, NULL), 0);
}

struct op {
    ca_queue *q;
    void *item;
    void *got;
    int r;
};

static int op_get(void *a)
{
    struct op *o = a;
    o->r = ca_queue_get(o->q, &o->got);
    return o->r;
}

static int op_put(void *a)
{
    struct op *o = a;
    o->r = ca_queue_put(o->q, o->item);
    return o->r;
}

static int op_join(void *a)
{
    struct op *o = a;
    o->r = ca_queue_join(o->q);
    return o->r;
}

/* ---- nowait and use from callbacks --------------------------------------- */

struct cb_res {
    ca_queue *q;
    int put, get, join, put_nowait, get_nowait;
    void *v;
};

static void from_callback(void *a)
{
    struct cb_res *r = a;
    /* blocking calls need a task, whether or not they would block */
    r->put = ca_queue_put(r->q, P(1));
    r->get = ca_queue_get(r->q, &r->v);
    r->join = ca_queue_join(r->q);
    /* nowait calls work anywhere on the loop's thread */
    r->put_nowait = ca_queue_put_nowait(r->q, P(42));
    r->get_nowait = ca_queue_get_nowait(r->q, &r->v);
}

static int nowait_main(void *a)
{
    (void)a;
    ca_queue *q = mkq(CA_QUEUE_FIFO, 2, 0, NULL);
    void *v;
    ASSERT_EQ(ca_queue_get_nowait(q, &v), -EAGAIN);
    ASSERT_EQ(ca_queue_put_nowait(q, P(1)), 0);
    ASSERT_EQ(ca_queue_put_nowait(q, P(2)), 0);
    ASSERT_EQ(ca_queue_put_nowait(q, P(3)), -EAGAIN);
    ASSERT_EQ(ca_queue_size(q), 2);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), 0);
    ASSERT_EQ(I(v), 1);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), 0);
    ASSERT_EQ(I(v), 2);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), -EAGAIN);
    /* only successful puts count for task_done */
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_queue_task_done(q), -EINVAL);

    struct cb_res r = {.q = q};
    ASSERT_EQ(ca_call_soon(from_callback, &r, NULL), 0);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT_EQ(r.put, -EPERM);
    ASSERT_EQ(r.get, -EPERM);
    ASSERT_EQ(r.join, -EPERM);
    ASSERT_EQ(r.put_nowait, 0);
    ASSERT_EQ(r.get_nowait, 0);
    ASSERT_EQ(I(r.v), 42);
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_queue_join(q), 0); /* nothing unfinished: no wait */

    /* put_nowait wakes a waiting getter */
    struct op g = {.q = q};
    ca_task *t = ca_spawn(op_get, &g);
    ASSERT_EQ(ca_sleep(0.002), 0);
    ASSERT(!ca_task_done(t));
    ASSERT_EQ(ca_queue_put_nowait(q, P(5)), 0);
    ASSERT_EQ(ca_join(t), 0);
    ASSERT_EQ(I(g.got), 5);
    ca_task_release(t);
    ca_queue_free(q);
    return 0;
}

static void test_nowait_and_callbacks(void)
{
    ASSERT_EQ(ca_run(nowait_main, NULL), 0);
}

/* ---- shutdown ------------------------------------------------------------ */

static int shutdown_main(void *a)
{
    (void)a;
    /* getters waiting on an empty queue fail */
    ca_queue *q0 = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
    struct op g0 = {.q = q0}, g1 = {.q = q0};
    ca_task *tg0 = ca_spawn(op_get, &g0), *tg1 = ca_spawn(op_get, &g1);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT_EQ(ca_queue_shutdown(q0, 0), 0);
    ASSERT_EQ(ca_join(tg0), -ESHUTDOWN);
    ASSERT_EQ(ca_join(tg1), -ESHUTDOWN);
    ca_task_release(tg0);
    ca_task_release(tg1);
    ca_queue_free(q0);

    /* full queue: the putter fails at once, getters drain, then fail */
    ca_queue *q = mkq(CA_QUEUE_FIFO, 3, 0, NULL);
    for (int i = 1; i <= 3; i++)
        ASSERT_EQ(ca_queue_put(q, P(i)), 0);
    struct op p = {.q = q, .item = P(4)};
    struct op j = {.q = q};
    ca_task *tp = ca_spawn(op_put, &p);
    ca_task *tj = ca_spawn(op_join, &j);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT(!ca_task_done(tp));
    ASSERT_EQ(ca_queue_shutdown(q, 0), 0);
    ASSERT_EQ(ca_join(tp), -ESHUTDOWN);
    ca_task_release(tp);
    ASSERT_EQ(ca_queue_put(q, P(5)), -ESHUTDOWN);
    ASSERT_EQ(ca_queue_put_nowait(q, P(5)), -ESHUTDOWN);
    ASSERT_EQ(ca_queue_size(q), 3);
    void *v;
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 1);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), 0);
    ASSERT_EQ(I(v), 2);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 3);
    ASSERT_EQ(ca_queue_get(q, &v), -ESHUTDOWN);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), -ESHUTDOWN);
    /* join still waits for the three items to be processed */
    ASSERT(!ca_task_done(tj));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_queue_task_done(q), 0);
        ASSERT_EQ(ca_sleep(0), 0);
        ASSERT_EQ(ca_task_done(tj), i == 2);
    }
    ASSERT_EQ(ca_join(tj), 0);
    ca_task_release(tj);
    ASSERT_EQ(ca_queue_shutdown(q, 0), 0); /* twice is harmless */
    ca_queue_free(q);
    return 0;
}

static void test_shutdown_drain(void)
{
    ASSERT_EQ(ca_run(shutdown_main, NULL), 0);
}

static int shutdown_imm_main(void *a)
{
    (void)a;
    ca_queue *q = mkq(CA_QUEUE_PRIORITY, 0, 0, cmp_ptr);
    for (int i = 1; i <= 5; i++)
        ASSERT_EQ(ca_queue_put(q, P(i)), 0);
    void *v;
    ASSERT_EQ(ca_queue_get(q, &v), 0); /* taken, not yet done */
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(ca_queue_task_done(q), 0);
    struct op j = {.q = q};
    ca_task *tj = ca_spawn(op_join, &j);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT(!ca_task_done(tj));
    /* drops 3 items and counts them done; 1 taken item is still open */
    ASSERT_EQ(ca_queue_shutdown(q, 1), 0);
    ASSERT(ca_queue_empty(q));
    ASSERT_EQ(ca_queue_get(q, &v), -ESHUTDOWN);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), -ESHUTDOWN);
    ASSERT_EQ(ca_queue_put(q, P(9)), -ESHUTDOWN);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT(!ca_task_done(tj));
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_join(tj), 0);
    ASSERT_EQ(ca_queue_task_done(q), -EINVAL);
    ca_task_release(tj);
    ca_queue_free(q);

    /* immediate with nothing taken releases join at once; waiting getters
     * and putters fail */
    q = mkq(CA_QUEUE_FIFO, 2, 0, NULL);
    ASSERT_EQ(ca_queue_put(q, P(1)), 0);
    ASSERT_EQ(ca_queue_put(q, P(2)), 0);
    struct op p = {.q = q, .item = P(3)};
    ca_task *tp = ca_spawn(op_put, &p);
    j = (struct op){.q = q};
    tj = ca_spawn(op_join, &j);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT_EQ(ca_queue_shutdown(q, 1), 0);
    ASSERT_EQ(ca_join(tp), -ESHUTDOWN);
    ASSERT_EQ(ca_join(tj), 0);
    ASSERT_EQ(ca_queue_size(q), 0);
    ca_task_release(tp);
    ca_task_release(tj);
    ca_queue_free(q);

    q = mkq(CA_QUEUE_LIFO, 0, 0, NULL);
    struct op g = {.q = q};
    ca_task *tg = ca_spawn(op_get, &g);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT_EQ(ca_queue_shutdown(q, 1), 0);
    ASSERT_EQ(ca_join(tg), -ESHUTDOWN);
    ca_task_release(tg);
    ca_queue_free(q);
    return 0;
}

static void test_shutdown_immediate(void)
{
    ASSERT_EQ(ca_run(shutdown_imm_main, NULL), 0);
}

/* ---- cancellation at every blocking point -------------------------------- */

static int cancel_points_main(void *a)
{
    (void)a;
    void *v;
    /* get on empty: cancelled, no item lost afterwards */
    ca_queue *q = mkq(CA_QUEUE_FIFO, 1, 0, NULL);
    struct op g = {.q = q};
    ca_task *t = ca_spawn(op_get, &g);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT(g.got == NULL);
    ASSERT_EQ(ca_queue_put(q, P(7)), 0); /* must not touch the old waiter */
    ASSERT_EQ(ca_queue_size(q), 1);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 7);

    /* put on full: cancelled, nothing inserted */
    ASSERT_EQ(ca_queue_put(q, P(8)), 0);
    struct op p = {.q = q, .item = P(9)};
    t = ca_spawn(op_put, &p);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(ca_queue_size(q), 1);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 8);
    ASSERT_EQ(ca_queue_get_nowait(q, &v), -EAGAIN);
    ASSERT_EQ(ca_queue_task_done(q), 0); /* item 7 */
    ASSERT_EQ(ca_queue_task_done(q), 0); /* item 8 */
    ASSERT_EQ(ca_queue_task_done(q), -EINVAL); /* 9 never counted */

    /* join: cancelled, the count is intact */
    ASSERT_EQ(ca_queue_put(q, P(1)), 0);
    struct op j = {.q = q};
    t = ca_spawn(op_join, &j);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_queue_join(q), 0);

    /* an already-cancelled task: get/put that do not block still work
     * (not cancellation points), those that would block fail at once */
    ca_cancel(ca_current());
    ASSERT_EQ(ca_queue_put(q, P(3)), 0);
    ASSERT_EQ(ca_queue_put(q, P(4)), -ECANCELED);
    ASSERT_EQ(ca_queue_join(q), -ECANCELED);
    ASSERT_EQ(ca_queue_get(q, &v), 0);
    ASSERT_EQ(I(v), 3);
    ASSERT_EQ(ca_queue_get(q, &v), -ECANCELED);
    ASSERT_EQ(ca_queue_size(q), 0);
    ca_queue_free(q);
    return 0;
}

static void test_cancel_blocking_points(void)
{
    ASSERT_EQ(ca_run(cancel_points_main, NULL), 0);
}

static int deadline_op(void *a)
{
    struct op *o = a;
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    if (o->item)
        o->r = ca_queue_put(o->q, o->item);
    else
        o->r = ca_queue_get(o->q, &o->got);
    int pr = ca_deadline_pop();
    ASSERT_EQ(pr, -ETIMEDOUT);
    return o->r;
}

static int deadline_main(void *a)
{
    (void)a;
    ca_queue *q = mkq(CA_QUEUE_LIFO, 1, sizeof(int), NULL);
    struct op g = {.q = q};
    ca_task *t = ca_spawn(deadline_op, &g);
    ASSERT_EQ(ca_join(t), -ETIMEDOUT);
    ca_task_release(t);
    int x = 5, y = 6, out = 0;
    ASSERT_EQ(ca_queue_put(q, &x), 0);
    struct op p = {.q = q, .item = &y};
    t = ca_spawn(deadline_op, &p);
    ASSERT_EQ(ca_join(t), -ETIMEDOUT);
    ca_task_release(t);
    ASSERT_EQ(ca_queue_size(q), 1);
    ASSERT_EQ(ca_queue_get(q, &out), 0);
    ASSERT_EQ(out, 5);
    /* join under a deadline */
    ASSERT_EQ(ca_deadline_push(0.01), 0);
    ASSERT_EQ(ca_queue_join(q), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ca_queue_free(q);
    return 0;
}

static void test_deadlines(void)
{
    ASSERT_EQ(ca_run(deadline_main, NULL), 0);
}

/* ---- no wake-up lost when a woken waiter is cancelled -------------------- */

static int wakeup_getters_main(void *a)
{
    (void)a;
    for (int order = 0; order < 2; order++) {
        ca_queue *q = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
        struct op g1 = {.q = q}, g2 = {.q = q};
        ca_task *t1 = ca_spawn(op_get, &g1);
        ca_task *t2 = ca_spawn(op_get, &g2);
        ASSERT_EQ(ca_sleep(0.005), 0); /* both wait, t1 first */
        if (order == 0) {
            /* woken, then cancelled before it runs */
            ASSERT_EQ(ca_queue_put(q, P(11)), 0);
            ca_cancel(t1);
        } else {
            /* cancelled (still linked), then its wake-up arrives */
            ca_cancel(t1);
            ASSERT_EQ(ca_queue_put(q, P(11)), 0);
        }
        ASSERT_EQ(ca_join(t1), -ECANCELED);
        ASSERT(g1.got == NULL);
        ASSERT_EQ(ca_join(t2), 0);
        ASSERT_EQ(I(g2.got), 11);
        ASSERT(ca_queue_empty(q));
        ca_task_release(t1);
        ca_task_release(t2);
        ca_queue_free(q);
    }
    return 0;
}

static void test_wakeup_not_lost_getters(void)
{
    ASSERT_EQ(ca_run(wakeup_getters_main, NULL), 0);
}

static int wakeup_putters_main(void *a)
{
    (void)a;
    for (int order = 0; order < 2; order++) {
        ca_queue *q = mkq(CA_QUEUE_FIFO, 1, 0, NULL);
        ASSERT_EQ(ca_queue_put(q, P(1)), 0);
        struct op p1 = {.q = q, .item = P(2)}, p2 = {.q = q, .item = P(3)};
        ca_task *t1 = ca_spawn(op_put, &p1);
        ca_task *t2 = ca_spawn(op_put, &p2);
        ASSERT_EQ(ca_sleep(0.005), 0);
        void *v;
        if (order == 0) {
            ASSERT_EQ(ca_queue_get(q, &v), 0);
            ca_cancel(t1);
        } else {
            ca_cancel(t1);
            ASSERT_EQ(ca_queue_get(q, &v), 0);
        }
        ASSERT_EQ(I(v), 1);
        ASSERT_EQ(ca_join(t1), -ECANCELED);
        ASSERT_EQ(ca_join(t2), 0);
        ASSERT_EQ(ca_queue_size(q), 1);
        ASSERT_EQ(ca_queue_get(q, &v), 0);
        ASSERT_EQ(I(v), 3); /* p2's item; p1's was never inserted */
        ca_task_release(t1);
        ca_task_release(t2);
        ca_queue_free(q);
    }
    return 0;
}

static void test_wakeup_not_lost_putters(void)
{
    ASSERT_EQ(ca_run(wakeup_putters_main, NULL), 0);
}

/* A deadline fires on a waiter that the put already chose: the item goes
 * to the next getter. */
static int timed_get(void *a)
{
    struct op *o = a;
    ASSERT_EQ(ca_deadline_push(0.01), 0);
    o->r = ca_queue_get(o->q, &o->got);
    ca_deadline_pop();
    return o->r;
}

static int wakeup_deadline_main(void *a)
{
    (void)a;
    ca_queue *q = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
    struct op g1 = {.q = q}, g2 = {.q = q};
    ca_task *t1 = ca_spawn(timed_get, &g1);
    ca_task *t2 = ca_spawn(op_get, &g2);
    ASSERT_EQ(ca_sleep(0.005), 0);
    /* Busy-wait past g1's deadline without yielding, then put: the timer
     * and the put land in the same turn. */
    double until = mono() + 0.02;
    while (mono() < until) {
    }
    ASSERT_EQ(ca_queue_put(q, P(5)), 0);
    ASSERT_EQ(ca_join(t1), -ETIMEDOUT);
    ASSERT_EQ(ca_join(t2), 0);
    ASSERT_EQ(I(g2.got), 5);
    ca_task_release(t1);
    ca_task_release(t2);
    ca_queue_free(q);
    return 0;
}

static void test_wakeup_not_lost_deadline(void)
{
    ASSERT_EQ(ca_run(wakeup_deadline_main, NULL), 0);
}

/* ---- free with waiters --------------------------------------------------- */

static int free_main(void *a)
{
    (void)a;
    ca_queue *qe = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
    ca_queue *qf = mkq(CA_QUEUE_PRIORITY, 1, sizeof(int), cmp_int);
    int one = 1, two = 2;
    ASSERT_EQ(ca_queue_put(qf, &one), 0);
    struct op g1 = {.q = qe}, g2 = {.q = qe}, g3 = {.q = qe};
    struct op p = {.q = qf, .item = &two}, j = {.q = qf};
    ca_task *t[5] = {ca_spawn(op_get, &g1), ca_spawn(op_get, &g2),
                     ca_spawn(op_get, &g3), ca_spawn(op_put, &p),
                     ca_spawn(op_join, &j)};
    ASSERT_EQ(ca_sleep(0.005), 0);
    for (int i = 0; i < 5; i++)
        ASSERT(!ca_task_done(t[i]));
    ca_cancel(t[2]); /* cancelled but not yet run when the queue goes */
    ca_queue_free(qe);
    ca_queue_free(qf);
    ASSERT_EQ(ca_join(t[0]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(t[1]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(t[2]), -ECANCELED);
    ASSERT_EQ(ca_join(t[3]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(t[4]), -ESHUTDOWN);
    for (int i = 0; i < 5; i++)
        ca_task_release(t[i]);
    /* free of a queue holding items, and of NULL */
    ca_queue *q = mkq(CA_QUEUE_FIFO, 4, 8, NULL);
    ASSERT_EQ(ca_queue_put(q, "abcdefgh"), 0);
    ca_queue_free(q);
    ca_queue_free(NULL);
    return 0;
}

static void test_free_with_waiters(void)
{
    ASSERT_EQ(ca_run(free_main, NULL), 0);
}

/* ---- adversarial: cancel / deadline / grant in one turn, every kind ------ */

/* Hold the loop (no yield) for `secs`: timers due meanwhile fire together
 * at the start of the next turn, after whatever this slice does. */
static void hold_loop(double secs)
{
    double until = mono() + secs;
    while (mono() < until) {
    }
}

/* Start fn(arg) now, inside the call, until it first blocks. */
static ca_task *spawn_eager(ca_fn fn, void *arg)
{
    ca_spawn_opts so = {.eager = 1};
    ca_task *t = NULL;
    ASSERT_EQ(ca_spawn_ex(&t, fn, arg, &so), 0);
    ASSERT(t);
    return t;
}

static int timed_op(void *a)
{
    struct op *o = a;
    ASSERT_EQ(ca_deadline_push(0.01), 0);
    if (o->item)
        o->r = ca_queue_put(o->q, o->item);
    else
        o->r = ca_queue_get(o->q, &o->got);
    ca_deadline_pop();
    return o->r;
}

/*
 * Three getters wait (g1 first); g1 fails in the same turn as two items
 * arrive: cancelled before the puts, cancelled after them (woken, not run),
 * or past its deadline (timer due in the same turn as the puts).  g2 and
 * g3 get the two items, each once, in the queue's order; nothing is left;
 * task_done/join count exactly the two puts.
 */
static int getters_matrix_main(void *a)
{
    (void)a;
    enum ca_queue_kind kinds[] = {CA_QUEUE_FIFO, CA_QUEUE_LIFO,
                                  CA_QUEUE_PRIORITY};
    /* items put: 20 then 10; first taken per kind */
    static const int first[] = {20, 10, 10}, second[] = {10, 20, 20};
    for (int k = 0; k < 3; k++) {
        for (int how = 0; how < 4; how++) {
            ca_queue *q = mkq(kinds[k], 0, 0, cmp_ptr);
            struct op g1 = {.q = q}, g2 = {.q = q}, g3 = {.q = q};
            ca_task *t1 = spawn_eager(how == 2 ? timed_op : op_get, &g1);
            ca_task *t2 = spawn_eager(op_get, &g2);
            ca_task *t3 = spawn_eager(op_get, &g3);
            ASSERT(!ca_task_done(t1) && !ca_task_done(t2) &&
                   !ca_task_done(t3));
            int want1 = -ECANCELED;
            if (how == 0) {
                ca_cancel(t1);
                ASSERT_EQ(ca_queue_put(q, P(20)), 0);
                ASSERT_EQ(ca_queue_put(q, P(10)), 0);
            } else if (how == 1) {
                ASSERT_EQ(ca_queue_put(q, P(20)), 0);
                ASSERT_EQ(ca_queue_put_nowait(q, P(10)), 0);
                ca_cancel(t1);
            } else if (how == 2) {
                hold_loop(0.02);
                ASSERT_EQ(ca_queue_put_nowait(q, P(20)), 0);
                ASSERT_EQ(ca_queue_put(q, P(10)), 0);
                want1 = -ETIMEDOUT;
            } else {
                /* woken by the first put, cancelled, then the second */
                ASSERT_EQ(ca_queue_put(q, P(20)), 0);
                ca_cancel(t1);
                ASSERT_EQ(ca_queue_put(q, P(10)), 0);
            }
            ASSERT_EQ(ca_join(t1), want1);
            ASSERT_EQ(ca_join(t2), 0);
            ASSERT_EQ(ca_join(t3), 0);
            ASSERT(g1.got == NULL);
            if (I(g2.got) != first[k] || I(g3.got) != second[k])
                FAILF("kind %d how %d: got %d, %d; want %d, %d", k, how,
                      I(g2.got), I(g3.got), first[k], second[k]);
            ASSERT(ca_queue_empty(q));
            void *v;
            ASSERT_EQ(ca_queue_get_nowait(q, &v), -EAGAIN);
            /* join counts the two puts exactly */
            ASSERT_EQ(ca_queue_task_done(q), 0);
            ASSERT_EQ(ca_queue_task_done(q), 0);
            ASSERT_EQ(ca_queue_join(q), 0);
            ASSERT_EQ(ca_queue_task_done(q), -EINVAL);
            ca_task_release(t1);
            ca_task_release(t2);
            ca_task_release(t3);
            ca_queue_free(q);
        }
    }
    return 0;
}

static void test_getters_same_turn_matrix(void)
{
    ASSERT_EQ(ca_run(getters_matrix_main, NULL), 0);
}

/*
 * A full queue of maxsize 1; three putters wait (p1 first); p1 fails in the
 * same turn as a slot frees (get, get_nowait), in every order.  p2's item
 * goes in, p3 still waits (maxsize kept), p1's never goes in; then the
 * rest drains in order and join counts exactly the items put.
 */
static int putters_matrix_main(void *a)
{
    (void)a;
    enum ca_queue_kind kinds[] = {CA_QUEUE_FIFO, CA_QUEUE_LIFO,
                                  CA_QUEUE_PRIORITY};
    for (int k = 0; k < 3; k++) {
        for (int how = 0; how < 3; how++) {
            ca_queue *q = mkq(kinds[k], 1, 0, cmp_ptr);
            ASSERT_EQ(ca_queue_put(q, P(1)), 0);
            struct op p1 = {.q = q, .item = P(2)}, p2 = {.q = q, .item = P(3)},
                      p3 = {.q = q, .item = P(4)};
            ca_task *t1 = spawn_eager(how == 2 ? timed_op : op_put, &p1);
            ca_task *t2 = spawn_eager(op_put, &p2);
            ca_task *t3 = spawn_eager(op_put, &p3);
            void *v = NULL;
            int want1 = -ECANCELED;
            if (how == 0) {
                ca_cancel(t1);
                ASSERT_EQ(ca_queue_get(q, &v), 0);
            } else if (how == 1) {
                ASSERT_EQ(ca_queue_get_nowait(q, &v), 0);
                ca_cancel(t1);
            } else {
                hold_loop(0.02);
                ASSERT_EQ(ca_queue_get(q, &v), 0);
                want1 = -ETIMEDOUT;
            }
            ASSERT_EQ(I(v), 1);
            ASSERT_EQ(ca_join(t1), want1);
            ASSERT_EQ(ca_join(t2), 0);
            ASSERT_EQ(ca_sleep(0.002), 0);
            ASSERT(!ca_task_done(t3)); /* full again */
            ASSERT_EQ(ca_queue_size(q), 1);
            ASSERT(ca_queue_full(q));
            ASSERT_EQ(ca_queue_put_nowait(q, P(9)), -EAGAIN);
            ASSERT_EQ(ca_queue_get(q, &v), 0);
            ASSERT_EQ(I(v), 3);
            ASSERT_EQ(ca_join(t3), 0);
            ASSERT_EQ(ca_queue_get(q, &v), 0);
            ASSERT_EQ(I(v), 4);
            ASSERT(ca_queue_empty(q));
            /* three items were put (1, 3, 4): p1's never counted */
            for (int i = 0; i < 3; i++)
                ASSERT_EQ(ca_queue_task_done(q), 0);
            ASSERT_EQ(ca_queue_task_done(q), -EINVAL);
            ASSERT_EQ(ca_queue_join(q), 0);
            ca_task_release(t1);
            ca_task_release(t2);
            ca_task_release(t3);
            ca_queue_free(q);
        }
    }
    return 0;
}

static void test_putters_same_turn_matrix(void)
{
    ASSERT_EQ(ca_run(putters_matrix_main, NULL), 0);
}

/* Joiners: the count reaches zero in the same turn as one joiner is
 * cancelled (before or after the wake-up) or its deadline passes; the
 * others return 0, the failed one its error, and the count stays exact. */
static int timed_join(void *a)
{
    struct op *o = a;
    ASSERT_EQ(ca_deadline_push(0.01), 0);
    o->r = ca_queue_join(o->q);
    ca_deadline_pop();
    return o->r;
}

static int joiners_main(void *a)
{
    (void)a;
    for (int how = 0; how < 3; how++) {
        ca_queue *q = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
        ASSERT_EQ(ca_queue_put(q, P(1)), 0);
        void *v;
        ASSERT_EQ(ca_queue_get(q, &v), 0);
        struct op j1 = {.q = q}, j2 = {.q = q}, j3 = {.q = q};
        ca_task *t1 = spawn_eager(how == 2 ? timed_join : op_join, &j1);
        ca_task *t2 = spawn_eager(op_join, &j2);
        ca_task *t3 = spawn_eager(op_join, &j3);
        int want1 = -ECANCELED;
        if (how == 0) {
            ca_cancel(t1);
            ASSERT_EQ(ca_queue_task_done(q), 0);
        } else if (how == 1) {
            ASSERT_EQ(ca_queue_task_done(q), 0);
            ca_cancel(t1);
        } else {
            hold_loop(0.02);
            ASSERT_EQ(ca_queue_task_done(q), 0);
            want1 = -ETIMEDOUT;
        }
        ASSERT_EQ(ca_join(t1), want1);
        ASSERT_EQ(ca_join(t2), 0);
        ASSERT_EQ(ca_join(t3), 0);
        ASSERT_EQ(ca_queue_task_done(q), -EINVAL);
        ASSERT_EQ(ca_queue_join(q), 0);
        ca_task_release(t1);
        ca_task_release(t2);
        ca_task_release(t3);
        ca_queue_free(q);
    }
    return 0;
}

static void test_joiners_same_turn(void)
{
    ASSERT_EQ(ca_run(joiners_main, NULL), 0);
}

/*
 * Shutdown in the same turn as an item arrives and a getter is cancelled:
 * a graceful shutdown still delivers the item (once) to the live getter,
 * an immediate one drops it and counts it done; every other waiter gets
 * -ESHUTDOWN; putters woken for a slot in that turn fail too.
 */
static int shutdown_same_turn_main(void *a)
{
    (void)a;
    for (int immediate = 0; immediate < 2; immediate++) {
        for (int order = 0; order < 2; order++) {
            ca_queue *q = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
            struct op g1 = {.q = q}, g2 = {.q = q}, g3 = {.q = q};
            ca_task *t1 = spawn_eager(op_get, &g1);
            ca_task *t2 = spawn_eager(op_get, &g2);
            ca_task *t3 = spawn_eager(op_get, &g3);
            if (order == 0) {
                ca_cancel(t1);
                ASSERT_EQ(ca_queue_put(q, P(5)), 0);
            } else {
                ASSERT_EQ(ca_queue_put(q, P(5)), 0);
                ca_cancel(t1);
            }
            ASSERT_EQ(ca_queue_shutdown(q, immediate), 0);
            ASSERT_EQ(ca_join(t1), -ECANCELED);
            int r2 = ca_join(t2), r3 = ca_join(t3);
            if (immediate) {
                ASSERT_EQ(r2, -ESHUTDOWN);
                ASSERT_EQ(r3, -ESHUTDOWN);
                ASSERT_EQ(ca_queue_join(q), 0); /* dropped: counted done */
                ASSERT_EQ(ca_queue_task_done(q), -EINVAL);
            } else {
                /* exactly one live getter got the item */
                ASSERT_EQ((r2 == 0) + (r3 == 0), 1);
                ASSERT_EQ(r2 == 0 ? r3 : r2, -ESHUTDOWN);
                ASSERT_EQ(I(r2 == 0 ? g2.got : g3.got), 5);
                ASSERT_EQ(ca_queue_task_done(q), 0);
                ASSERT_EQ(ca_queue_join(q), 0);
            }
            void *v;
            ASSERT_EQ(ca_queue_get(q, &v), -ESHUTDOWN);
            ASSERT_EQ(ca_queue_get_nowait(q, &v), -ESHUTDOWN);
            ASSERT_EQ(ca_queue_put(q, P(6)), -ESHUTDOWN);
            ASSERT_EQ(ca_queue_put_nowait(q, P(6)), -ESHUTDOWN);
            ca_task_release(t1);
            ca_task_release(t2);
            ca_task_release(t3);
            ca_queue_free(q);
        }
    }
    /* putters: a slot freed and the queue shut down in one turn */
    ca_queue *q = mkq(CA_QUEUE_LIFO, 1, sizeof(int), NULL);
    int x = 1, y = 2, z = 3, out = 0;
    ASSERT_EQ(ca_queue_put(q, &x), 0);
    struct op p1 = {.q = q, .item = &y}, p2 = {.q = q, .item = &z};
    ca_task *t1 = spawn_eager(op_put, &p1);
    ca_task *t2 = spawn_eager(op_put, &p2);
    ASSERT_EQ(ca_queue_get(q, &out), 0); /* p1 woken for the slot */
    ASSERT_EQ(out, 1);
    ASSERT_EQ(ca_queue_shutdown(q, 0), 0);
    ASSERT_EQ(ca_join(t1), -ESHUTDOWN);
    ASSERT_EQ(ca_join(t2), -ESHUTDOWN);
    ASSERT(ca_queue_empty(q));
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_queue_join(q), 0);
    ca_task_release(t1);
    ca_task_release(t2);
    ca_queue_free(q);
    return 0;
}

static void test_shutdown_same_turn(void)
{
    ASSERT_EQ(ca_run(shutdown_same_turn_main, NULL), 0);
}

/* Free with waiters of each kind in each state: parked, woken with a grant
 * and not yet run, cancelled and not yet run.  Nobody touches the freed
 * queue (ASan/valgrind), everyone returns. */
static int free_states_main(void *a)
{
    (void)a;
    ca_queue *qg = mkq(CA_QUEUE_FIFO, 0, 0, NULL);
    ca_queue *qp = mkq(CA_QUEUE_PRIORITY, 1, 0, cmp_ptr);
    ASSERT_EQ(ca_queue_put(qp, P(1)), 0);
    struct op g[3] = {{.q = qg}, {.q = qg}, {.q = qg}};
    struct op p[3] = {{.q = qp, .item = P(2)},
                      {.q = qp, .item = P(3)},
                      {.q = qp, .item = P(4)}};
    struct op j = {.q = qp};
    ca_task *tg[3], *tp[3];
    for (int i = 0; i < 3; i++) {
        tg[i] = spawn_eager(op_get, &g[i]);
        tp[i] = spawn_eager(op_put, &p[i]);
    }
    ca_task *tj = spawn_eager(op_join, &j);
    ca_cancel(tg[0]);
    ASSERT_EQ(ca_queue_put(qg, P(7)), 0); /* g[1] woken with the item */
    ca_cancel(tp[0]);
    void *v;
    ASSERT_EQ(ca_queue_get(qp, &v), 0); /* p[1] woken with the slot */
    ASSERT_EQ(I(v), 1);
    ca_queue_free(qg);
    ca_queue_free(qp);
    ASSERT_EQ(ca_join(tg[0]), -ECANCELED);
    ASSERT_EQ(ca_join(tg[1]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(tg[2]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(tp[0]), -ECANCELED);
    ASSERT_EQ(ca_join(tp[1]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(tp[2]), -ESHUTDOWN);
    ASSERT_EQ(ca_join(tj), -ESHUTDOWN);
    for (int i = 0; i < 3; i++) {
        ca_task_release(tg[i]);
        ca_task_release(tp[i]);
    }
    ca_task_release(tj);
    return 0;
}

static void test_free_waiters_in_every_state(void)
{
    ASSERT_EQ(ca_run(free_states_main, NULL), 0);
}

/* ---- argument errors ----------------------------------------------------- */

static int errors_main(void *a)
{
    (void)a;
    ca_queue *q = P(1);
    ASSERT_EQ(ca_queue_new(NULL, NULL), -EINVAL);
    ca_queue_opts o = {.kind = CA_QUEUE_PRIORITY};
    ASSERT_EQ(ca_queue_new(&q, &o), -EINVAL);
    ASSERT(q == NULL);
    o = (ca_queue_opts){.kind = (enum ca_queue_kind)7};
    ASSERT_EQ(ca_queue_new(&q, &o), -EINVAL);

    void *v;
    int x = 1;
    ASSERT_EQ(ca_queue_put(NULL, P(1)), -EINVAL);
    ASSERT_EQ(ca_queue_put_nowait(NULL, P(1)), -EINVAL);
    ASSERT_EQ(ca_queue_get(NULL, &v), -EINVAL);
    ASSERT_EQ(ca_queue_get_nowait(NULL, &v), -EINVAL);
    ASSERT_EQ(ca_queue_task_done(NULL), -EINVAL);
    ASSERT_EQ(ca_queue_join(NULL), -EINVAL);
    ASSERT_EQ(ca_queue_shutdown(NULL, 0), -EINVAL);
    ASSERT_EQ(ca_queue_size(NULL), 0);
    ASSERT_EQ(ca_queue_empty(NULL), 1);
    ASSERT_EQ(ca_queue_full(NULL), 0);

    q = mkq(CA_QUEUE_FIFO, 1, sizeof(int), NULL);
    ASSERT_EQ(ca_queue_put(q, NULL), -EINVAL); /* value items need data */
    ASSERT_EQ(ca_queue_put_nowait(q, NULL), -EINVAL);
    ASSERT_EQ(ca_queue_put(q, &x), 0);
    ASSERT_EQ(ca_queue_get(q, NULL), -EINVAL);
    ASSERT_EQ(ca_queue_get_nowait(q, NULL), -EINVAL);
    ASSERT_EQ(ca_queue_size(q), 1); /* nothing was taken */
    ASSERT_EQ(ca_queue_task_done(q), 0);
    ASSERT_EQ(ca_queue_task_done(q), -EINVAL);
    ca_queue_free(q);
    return 0;
}

static void test_argument_errors(void)
{
    ca_queue *q = P(1);
    ASSERT_EQ(ca_queue_new(&q, NULL), -CA_ENOLOOP);
    ASSERT(q == NULL);
    ASSERT_EQ(ca_run(errors_main, NULL), 0);
}

/* ---- a pipeline through a small bounded queue ---------------------------- */

struct pipe_arg {
    ca_queue *q;
    long n;
    long sum;
};

static int pipe_producer(void *a)
{
    struct pipe_arg *pa = a;
    for (long i = 1; i <= pa->n; i++)
        ASSERT_EQ(ca_queue_put(pa->q, &i), 0);
    long end = 0;
    ASSERT_EQ(ca_queue_put(pa->q, &end), 0);
    return 0;
}

static int pipe_consumer(void *a)
{
    struct pipe_arg *pa = a;
    for (;;) {
        long v;
        ASSERT_EQ(ca_queue_get(pa->q, &v), 0);
        if (v == 0)
            return 0;
        pa->sum += v;
    }
}

static int pipeline_main(void *a)
{
    (void)a;
    struct pipe_arg pa = {.q = mkq(CA_QUEUE_FIFO, 64, sizeof(long), NULL),
                          .n = test_is_instrumented() ? 20000 : 200000};
    ca_task *c = ca_spawn(pipe_consumer, &pa);
    ca_task *p = ca_spawn(pipe_producer, &pa);
    ASSERT_EQ(ca_join(p), 0);
    ASSERT_EQ(ca_join(c), 0);
    ASSERT_EQ(pa.sum, pa.n * (pa.n + 1) / 2);
    ca_task_release(p);
    ca_task_release(c);
    ca_queue_free(pa.q);
    return 0;
}

static void test_pipeline_bounded(void)
{
    ASSERT_EQ(ca_run(pipeline_main, NULL), 0);
}

/* ---- a grown ring shrinks again --------------------------------------- */

struct burst_case {
    const char *name;
    enum ca_queue_kind kind;
    size_t maxsize;
    size_t esz; /* 0: pointers; else a struct kv */
};

/* A burst of a million items, drained: the ring's megabytes go back (the
 * heap ends within 16 KiB of where it started; before, 8 MiB for
 * pointers and 16 MiB for 8-byte values stayed).  For every kind, pointer
 * and value items, unbounded and large bounded; a second burst through the
 * same queue ends in the same place; immediate shutdown gives a grown ring
 * back at once. */
static int burst_main(void *a)
{
    int n = *(const int *)a;
    static const struct burst_case cases[] = {
        {"fifo ptr", CA_QUEUE_FIFO, 0, 0},
        {"fifo value", CA_QUEUE_FIFO, 0, sizeof(struct kv)},
        {"fifo ptr bounded 2M", CA_QUEUE_FIFO, 2000000, 0},
        {"lifo ptr", CA_QUEUE_LIFO, 0, 0},
        {"lifo value", CA_QUEUE_LIFO, 0, sizeof(struct kv)},
        {"priority ptr", CA_QUEUE_PRIORITY, 0, 0},
        {"priority value", CA_QUEUE_PRIORITY, 0, sizeof(struct kv)},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const struct burst_case *c = &cases[k];
        double h0 = test_heap_in_use(), r0 = test_rss_bytes() / 1048576.0;
        ca_queue *q =
            mkq(c->kind, c->maxsize, c->esz, c->esz ? cmp_kv : cmp_ptr);
        double h1 = test_heap_in_use();
        double peak = 0;
        for (int round = 0; round < 2; round++) {
            for (int i = 0; i < n; i++) {
                struct kv v = {.key = n - 1 - i, .seq = i};
                ASSERT_EQ(c->esz ? ca_queue_put(q, &v)
                                 : ca_queue_put(q, P(v.key)),
                          0);
            }
            double hp = test_heap_in_use();
            peak = hp > peak ? hp : peak;
            for (int i = 0; i < n; i++) {
                struct kv v;
                void *p;
                ASSERT_EQ(ca_queue_get(q, c->esz ? (void *)&v : (void *)&p), 0);
                int key = c->esz ? v.key : I(p);
                ASSERT_EQ(key, c->kind == CA_QUEUE_FIFO ? n - 1 - i : i);
                if (c->esz && c->kind != CA_QUEUE_LIFO)
                    ASSERT_EQ(v.seq, c->kind == CA_QUEUE_FIFO ? i : n - 1 - i);
            }
            ASSERT(ca_queue_empty(q));
        }
        double h2 = test_heap_in_use(), r2 = test_rss_bytes() / 1048576.0;
        printf("%-20s %d items: heap %+.0f bytes after new, peak %+.1f MiB, "
               "drained %+.0f bytes; RSS %.1f -> %.1f MiB\n",
               c->name, n, h1 - h0, (peak - h0) / 1048576.0, h2 - h0, r0, r2);
        if (h0 > 0) { /* not valgrind */
            ASSERT_GT(peak - h0, (double)n * 4);
            ASSERT_LT(h2 - h0, 16.0 * 1024);
        }
        /* immediate shutdown of a full ring */
        for (int i = 0; i < n / 4; i++) {
            struct kv v = {.key = i, .seq = i};
            ASSERT_EQ(c->esz ? ca_queue_put(q, &v) : ca_queue_put(q, P(i)), 0);
        }
        ASSERT_EQ(ca_queue_shutdown(q, 1), 0);
        double h3 = test_heap_in_use();
        if (h0 > 0)
            ASSERT_LT(h3 - h0, 16.0 * 1024);
        ca_queue_free(q);
    }
    return 0;
}

static void test_burst_then_drain_shrinks(void)
{
    int n = test_is_instrumented() ? 100000 : 1000000;
    ASSERT_EQ(ca_run(burst_main, &n), 0);
}

/* Items keep their order across many grow and shrink steps, with the FIFO
 * ring wrapped or not when it resizes: random bursts up and down (count
 * swinging between 0 and ~6,000) through every kind, pointer and value
 * items, every put/get entry point, checked against a model. */
static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

enum { KEYS = 64, MODEL_MAX = 1 << 14 };

static int resize_order_main(void *a)
{
    (void)a;
    static int stack[MODEL_MAX]; /* LIFO model */
    static int hist[KEYS];       /* PRIORITY model: items per key */
    static int last_seq[KEYS];   /* PRIORITY: ties come out in put order */
    for (int kind = 0; kind < 3; kind++) {
        for (int value = 0; value < 2; value++) {
            ca_queue *q =
                mkq((enum ca_queue_kind)kind, 0, value ? sizeof(struct kv) : 0,
                    value ? cmp_kv : cmp_ptr);
            int next_put = 0, next_get = 0, count = 0, top = 0, seq = 0;
            memset(hist, 0, sizeof(hist));
            for (int k = 0; k < KEYS; k++)
                last_seq[k] = -1;
            for (int round = 0; round < 60; round++) {
                /* alternately up to a random height and down to a random
                 * low, in runs of random length */
                int target =
                    round % 2 == 0 ? (int)(rnd() % 6000) : (int)(rnd() % 40);
                while (count != target) {
                    int up = count < target;
                    int run = 1 + (int)(rnd() % 300);
                    for (int j = 0; j < run && count != target; j++) {
                        int op = up ? (rnd() % 4 != 0) : (rnd() % 4 == 0);
                        if (op) { /* put */
                            struct kv v;
                            if (kind == CA_QUEUE_PRIORITY)
                                v = (struct kv){(int)(rnd() % KEYS), seq++};
                            else
                                v = (struct kv){next_put, next_put};
                            int r = rnd() % 2
                                        ? ca_queue_put_nowait(
                                              q, value ? (void *)&v : P(v.key))
                                        : ca_queue_put(q, value ? (void *)&v
                                                                : P(v.key));
                            ASSERT_EQ(r, 0);
                            if (kind == CA_QUEUE_LIFO)
                                stack[top++] = v.key;
                            if (kind == CA_QUEUE_PRIORITY)
                                hist[v.key]++;
                            next_put++;
                            count++;
                        } else if (count > 0) { /* get */
                            struct kv v = {0, 0};
                            void *p = NULL;
                            void *out = value ? (void *)&v : (void *)&p;
                            int r = rnd() % 2 ? ca_queue_get_nowait(q, out)
                                              : ca_queue_get(q, out);
                            ASSERT_EQ(r, 0);
                            int key = value ? v.key : I(p);
                            if (kind == CA_QUEUE_FIFO) {
                                ASSERT_EQ(key, next_get);
                            } else if (kind == CA_QUEUE_LIFO) {
                                ASSERT_EQ(key, stack[--top]);
                            } else {
                                int m = 0;
                                while (hist[m] == 0)
                                    m++;
                                ASSERT_EQ(key, m);
                                hist[m]--;
                                if (value) {
                                    ASSERT_GT(v.seq, last_seq[m]);
                                    last_seq[m] = v.seq;
                                }
                            }
                            next_get++;
                            count--;
                        }
                        ASSERT_EQ(ca_queue_size(q), (size_t)count);
                    }
                }
            }
            ca_queue_free(q);
        }
    }
    return 0;
}

static void test_resize_keeps_order(void)
{
    ASSERT_EQ(ca_run(resize_order_main, NULL), 0);
}

static const struct test_case tests[] = {
    {"order_pointers", test_order_pointers, 10, 0},
    {"order_values_and_ties", test_order_values_and_ties, 10, 0},
    {"stress_order", test_stress_order, 20, 0},
    {"bounded_put_blocks", test_bounded_put_blocks, 10, 0},
    {"producers_consumers_join", test_producers_consumers_join, 20, 0},
    {"nowait_and_callbacks", test_nowait_and_callbacks, 10, 0},
    {"shutdown_drain", test_shutdown_drain, 10, 0},
    {"shutdown_immediate", test_shutdown_immediate, 10, 0},
    {"cancel_blocking_points", test_cancel_blocking_points, 10, 0},
    {"deadlines", test_deadlines, 10, 0},
    {"wakeup_not_lost_getters", test_wakeup_not_lost_getters, 10, 0},
    {"wakeup_not_lost_putters", test_wakeup_not_lost_putters, 10, 0},
    {"wakeup_not_lost_deadline", test_wakeup_not_lost_deadline, 10, 0},
    {"free_with_waiters", test_free_with_waiters, 10, 0},
    {"argument_errors", test_argument_errors, 10, 0},
    {"pipeline_bounded", test_pipeline_bounded, 20, 0},
    {"burst_then_drain_shrinks", test_burst_then_drain_shrinks, 60, 0},
    {"resize_keeps_order", test_resize_keeps_order, 30, 0},
    {"getters_same_turn_matrix", test_getters_same_turn_matrix, 10, 0},
    {"putters_same_turn_matrix", test_putters_same_turn_matrix, 10, 0},
    {"joiners_same_turn", test_joiners_same_turn, 10, 0},
    {"shutdown_same_turn", test_shutdown_same_turn, 10, 0},
    {"free_waiters_in_every_state", test_free_waiters_in_every_state, 10, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
