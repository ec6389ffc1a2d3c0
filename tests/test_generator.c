/* Generators: iteration, send, failure, close, cancellation, deadlines. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <stdint.h>

#define P(i) ((void *)(intptr_t)(i))
#define I(p) ((int)(intptr_t)(p))

static char trace[4096];
static void note(const char *s)
{
    strcat(trace, s);
    strcat(trace, " ");
}

/* ---- yields 1..N --------------------------------------------------------- */

static int started;

/* async def count(n): for i in 1..n: yield i */
static int count_gen(ca_gen *g, void *arg)
{
    int n = I(arg);
    started++;
    for (int i = 1; i <= n; i++) {
        char buf[16];
        snprintf(buf, sizeof(buf), "y%d", i);
        note(buf);
        int r = ca_gen_yield(g, P(i), NULL);
        if (r < 0)
            return r;
    }
    note("end");
    return 0;
}

static int count_main(void *a)
{
    (void)a;
    ca_gen *g;
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(5)), 0);
    ASSERT_EQ(ca_sleep(0.002), 0);
    ASSERT_EQ(started, 0); /* nothing runs before the first request */
    int sum = 0, expect = 1;
    void *v;
    int r;
    while ((r = ca_gen_next(g, &v)) == 1) {
        char buf[16];
        snprintf(buf, sizeof(buf), "c%d", I(v));
        note(buf);
        ASSERT_EQ(I(v), expect++);
        sum += I(v);
    }
    ASSERT_EQ(r, 0);
    ASSERT_EQ(sum, 15);
    ASSERT_EQ(started, 1);
    /* strict rendezvous: the producer runs only between request and yield */
    ASSERT_STREQ(trace, "y1 c1 y2 c2 y3 c3 y4 c4 y5 c5 end ");
    ASSERT_EQ(ca_gen_next(g, &v), -EPIPE);
    ASSERT_EQ(ca_gen_next(g, &v), -EPIPE);
    ASSERT_EQ(ca_gen_close(g), 0); /* close after the end */
    return 0;
}

static void test_yields_in_order(void)
{
    ASSERT_EQ(ca_run(count_main, NULL), 0);
}

/* ---- send: a running average (seed 002) ---------------------------------- */

/*
 * async def averager():
 *     total = 0.0; count = 0; avg = None
 *     while True:
 *         value = yield avg
 *         total += value; count += 1; avg = total / count
 */
static int averager(ca_gen *g, void *arg)
{
    (void)arg;
    double total = 0, avg = 0;
    int count = 0;
    void *avg_out = NULL;
    for (;;) {
        void *in;
        int r = ca_gen_yield(g, avg_out, &in);
        if (r < 0)
            return r == -ECANCELED ? 0 : r;
        ASSERT(in != NULL);
        total += *(double *)in;
        count++;
        avg = total / count;
        avg_out = &avg;
        ASSERT_EQ(ca_sleep(0.001), 0); /* async work between yields */
    }
}

static int average_main(void *a)
{
    (void)a;
    ca_gen *g;
    ASSERT_EQ(ca_gen_new(&g, averager, NULL), 0);
    void *v = P(1);
    double x = 10;
    /* nothing can receive a value sent before the first yield */
    ASSERT_EQ(ca_gen_send(g, &x, &v), -EINVAL);
    ASSERT_EQ(ca_gen_send(g, NULL, &v), 1); /* prime: yields None */
    ASSERT(v == NULL);
    static const double in[] = {10, 30, 5, 15};
    static const double want[] = {10, 20, 15, 15};
    for (int i = 0; i < 4; i++) {
        x = in[i];
        ASSERT_EQ(ca_gen_send(g, &x, &v), 1);
        ASSERT_NEAR(*(double *)v, want[i], 1e-9);
    }
    /* next sends NULL: the producer asserts it gets a value, so close
     * instead; the producer maps the cancellation to a clean end */
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_send_running_average(void)
{
    ASSERT_EQ(ca_run(average_main, NULL), 0);
}

/* ---- producer failure ---------------------------------------------------- */

static int failing(ca_gen *g, void *arg)
{
    (void)arg;
    ASSERT_EQ(ca_gen_yield(g, P(1), NULL), 0);
    ASSERT_EQ(ca_sleep(0.001), 0);
    return -EIO;
}

static int failure_main(void *a)
{
    (void)a;
    ca_gen *g;
    ASSERT_EQ(ca_gen_new(&g, failing, NULL), 0);
    void *v;
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 1);
    ASSERT_EQ(ca_gen_next(g, &v), -EIO);
    ASSERT_EQ(ca_gen_next(g, &v), -EPIPE);
    ASSERT_EQ(ca_gen_close(g), -EIO);
    return 0;
}

static void test_producer_failure(void)
{
    /* The failure reached the consumer: nothing is reported on stderr as
     * never retrieved (checked by the absence of a crash only). */
    ASSERT_EQ(ca_run(failure_main, NULL), 0);
}

/* ---- close: early, before start, mid-production, a producer that resists --- */

static int cleaned, after_cancel_yield;

static int infinite(ca_gen *g, void *arg)
{
    (void)arg;
    for (int i = 0;; i++) {
        int r = ca_gen_yield(g, P(i), NULL);
        if (r == -ECANCELED) {
            /* cleanup may block: the closer waits for it */
            ca_shield_push();
            ASSERT_EQ(ca_sleep(0.002), 0);
            ca_shield_pop();
            cleaned = 1;
            /* yielding again after close fails at once */
            after_cancel_yield = ca_gen_yield(g, P(-1), NULL);
            return 0;
        }
        ASSERT_EQ(r, 0);
    }
}

/* A producer that yields inside a shield scope: the cancel alone would not
 * wake it; close still does. */
static int shielded_yielder(ca_gen *g, void *arg)
{
    (void)arg;
    ASSERT_EQ(ca_shield_push(), 0);
    int r;
    for (int i = 0; (r = ca_gen_yield(g, P(i), NULL)) == 0; i++) {
    }
    ASSERT_EQ(ca_shield_pop(), 0);
    cleaned = r == -ECANCELED;
    return 0;
}

static int slow_started;

static int slow_producer(ca_gen *g, void *arg)
{
    (void)arg;
    slow_started = 1;
    int r = ca_sleep(10); /* mid-production when closed */
    note(r == -ECANCELED ? "sleep-cancelled" : "sleep-done");
    if (r < 0)
        return r;
    return ca_gen_yield(g, P(1), NULL);
}

static int close_main(void *a)
{
    (void)a;
    ca_gen *g;
    void *v;
    /* early close after three values */
    ASSERT_EQ(ca_gen_new(&g, infinite, NULL), 0);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_gen_next(g, &v), 1);
        ASSERT_EQ(I(v), i);
    }
    ASSERT_EQ(cleaned, 0);
    ASSERT_EQ(ca_gen_close(g), 0);
    ASSERT_EQ(cleaned, 1);
    ASSERT_EQ(after_cancel_yield, -ECANCELED);

    cleaned = 0;
    ASSERT_EQ(ca_gen_new(&g, shielded_yielder, NULL), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 1);
    ASSERT_EQ(ca_gen_close(g), 0);
    ASSERT_EQ(cleaned, 1);

    /* close before start: the body never runs */
    started = 0;
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(3)), 0);
    ASSERT_EQ(ca_gen_close(g), 0);
    ASSERT_EQ(ca_sleep(0.002), 0);
    ASSERT_EQ(started, 0);

    /* close while the producer works on a request the consumer gave up */
    ASSERT_EQ(ca_gen_new(&g, slow_producer, NULL), 0);
    /* A request whose deadline has passed by the time it is made starts
     * nothing (a stalled machine, qemu under load, can take 5 ms between
     * two lines): retry with longer deadlines until the producer started.
     * A request that was made stays open, and the retry waits for it. */
    int r = -ETIMEDOUT;
    for (double d = 0.005; r == -ETIMEDOUT && !slow_started && d < 20; d *= 4) {
        ASSERT_EQ(ca_deadline_push(d), 0);
        r = ca_gen_next(g, &v);
        ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    }
    ASSERT_EQ(r, -ETIMEDOUT);
    /* the request stays open: the producer starts (however slow the
     * machine) and is mid-production when we close */
    for (int i = 0; i < 2000 && !slow_started; i++)
        ASSERT_EQ(ca_sleep(0.001), 0);
    ASSERT(slow_started);
    ASSERT_EQ(ca_gen_close(g), 0); /* -ECANCELED from the producer: 0 */
    ASSERT_STREQ(trace, "sleep-cancelled ");

    /* close is not a cancellation point: a cancelled caller still waits
     * for the producer's cleanup */
    cleaned = 0;
    ASSERT_EQ(ca_gen_new(&g, infinite, NULL), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ca_cancel(ca_current());
    ASSERT_EQ(ca_gen_close(g), 0);
    ASSERT_EQ(cleaned, 1);
    return 0;
}

static void test_close(void)
{
    ASSERT_EQ(ca_run(close_main, NULL), 0);
}

/* A producer that returns right after the end: close of a finished
 * generator returns its status; close of one that never started is free. */
static int one_value(ca_gen *g, void *arg)
{
    (void)arg;
    return ca_gen_yield(g, P(42), NULL) < 0 ? -EINTR : 3; /* > 0: end */
}

static int close_after_end_main(void *a)
{
    (void)a;
    ca_gen *g;
    void *v;
    ASSERT_EQ(ca_gen_new(&g, one_value, NULL), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 42);
    ASSERT_EQ(ca_gen_next(g, NULL), 0); /* positive return: normal end */
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_close_after_end(void)
{
    ASSERT_EQ(ca_run(close_after_end_main, NULL), 0);
}

/* ---- the consumer's deadline / cancellation: the value is not lost ------- */

static int slow_counter(ca_gen *g, void *arg)
{
    double delay = *(double *)arg;
    for (int i = 1;; i++) {
        ASSERT_EQ(ca_sleep(delay), 0);
        int r = ca_gen_yield(g, P(i), NULL);
        if (r < 0)
            return 0;
    }
}

static int deadline_main(void *a)
{
    (void)a;
    double delay = 0.03;
    ca_gen *g;
    void *v;
    ASSERT_EQ(ca_gen_new(&g, slow_counter, &delay), 0);
    ASSERT_EQ(ca_deadline_push(0.005), 0);
    ASSERT_EQ(ca_gen_next(g, &v), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    /* the producer keeps producing value 1 for the pending request */
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 1);
    /* again, and this time the value is already there when we come back */
    ASSERT_EQ(ca_deadline_push(0.005), 0);
    ASSERT_EQ(ca_gen_next(g, &v), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_sleep(0.06), 0); /* the producer yields 2 and parks */
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 2);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 3);
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_deadline_then_value(void)
{
    ASSERT_EQ(ca_run(deadline_main, NULL), 0);
}

struct consumer {
    ca_gen *g;
    int r;
    void *v;
};

static int consume_one(void *a)
{
    struct consumer *c = a;
    c->r = ca_gen_next(c->g, &c->v);
    return c->r;
}

static int consume_cancelled(void *a)
{
    struct consumer *c = a;
    ca_cancel(ca_current());
    c->r = ca_gen_next(c->g, &c->v);
    return c->r;
}

static int fast_counter(ca_gen *g, void *arg)
{
    (void)arg;
    for (int i = 1;; i++)
        if (ca_gen_yield(g, P(i), NULL) < 0)
            return 0;
}

static int cancel_consumer_main(void *a)
{
    (void)a;
    double delay = 0.1;
    ca_gen *g;
    ASSERT_EQ(ca_gen_new(&g, slow_counter, &delay), 0);
    /* a consumer cancelled while waiting: the producer is left alone */
    struct consumer c1 = {g, 0, NULL};
    ca_task *t1 = ca_spawn(consume_one, &c1);
    ASSERT_EQ(ca_sleep(0.005), 0);
    /* a second consumer while the first waits: busy */
    void *v;
    ASSERT_EQ(ca_gen_next(g, &v), -EBUSY);
    ASSERT_EQ(ca_gen_close(g), -EBUSY);
    ca_cancel(t1);
    ASSERT_EQ(ca_join(t1), -ECANCELED);
    ca_task_release(t1);
    /* another task picks up the value made for the cancelled one */
    struct consumer c2 = {g, 0, NULL};
    ca_task *t2 = ca_spawn(consume_one, &c2);
    ASSERT_EQ(ca_join(t2), 1);
    ASSERT_EQ(I(c2.v), 1);
    ca_task_release(t2);
    /* and the main task continues the same iteration */
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 2);
    ASSERT_EQ(ca_gen_close(g), 0);

    /* woken with a value and cancelled in the same turn: the call fails
     * and the value waits for the next request */
    ASSERT_EQ(ca_gen_new(&g, fast_counter, NULL), 0);
    struct consumer c3 = {g, 0, NULL};
    ca_task *t3 = ca_spawn(consume_one, &c3);
    ASSERT_EQ(ca_yield(), 0); /* t3 spawns the producer and waits */
    ASSERT(!ca_task_done(t3));
    ASSERT_EQ(ca_yield(), 0); /* the producer yields 1, t3 is woken */
    ca_cancel(t3);
    ASSERT_EQ(ca_join(t3), -ECANCELED);
    ca_task_release(t3);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 1);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 2);
    ASSERT_EQ(ca_gen_close(g), 0);

    /* a consumer cancelled before it asks starts nothing */
    started = 0;
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(2)), 0);
    struct consumer c4 = {g, 0, NULL};
    ca_task *t4 = ca_spawn(consume_cancelled, &c4);
    ASSERT_EQ(ca_join(t4), -ECANCELED);
    ASSERT_EQ(ca_sleep(0.002), 0);
    ca_task_release(t4);
    ASSERT_EQ(started, 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 1);
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_consumer_cancel_keeps_value(void)
{
    ASSERT_EQ(ca_run(cancel_consumer_main, NULL), 0);
}

/* ---- several consumers in turn ------------------------------------------- */

static int take_two(void *a)
{
    struct consumer *c = a;
    void *v;
    int sum = 0;
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(ca_gen_next(c->g, &v), 1);
        sum += I(v);
    }
    return sum;
}

static int consumers_in_turn_main(void *a)
{
    (void)a;
    ca_gen *g;
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(6)), 0);
    struct consumer c = {g, 0, NULL};
    int sums[3];
    for (int i = 0; i < 3; i++) {
        ca_task *t = ca_spawn(take_two, &c);
        sums[i] = ca_join(t);
        ca_task_release(t);
    }
    ASSERT_EQ(sums[0], 1 + 2);
    ASSERT_EQ(sums[1], 3 + 4);
    ASSERT_EQ(sums[2], 5 + 6);
    ASSERT_EQ(ca_gen_next(g, NULL), 0);
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_consumers_in_turn(void)
{
    ASSERT_EQ(ca_run(consumers_in_turn_main, NULL), 0);
}

/* ---- a generator feeding on a generator ---------------------------------- */

/* async def squares(src): async for x in src: yield x * x */
static int squares(ca_gen *g, void *arg)
{
    ca_gen *src = arg;
    void *v;
    int r;
    while ((r = ca_gen_next(src, &v)) == 1)
        if (ca_gen_yield(g, P(I(v) * I(v)), NULL) < 0)
            break;
    int c = ca_gen_close(src);
    return r < 0 ? r : c;
}

static int nested_main(void *a)
{
    (void)a;
    ca_gen *src, *sq;
    ASSERT_EQ(ca_gen_new(&src, count_gen, P(4)), 0);
    ASSERT_EQ(ca_gen_new(&sq, squares, src), 0);
    void *v;
    int sum = 0, r;
    while ((r = ca_gen_next(sq, &v)) == 1)
        sum += I(v);
    ASSERT_EQ(r, 0);
    ASSERT_EQ(sum, 1 + 4 + 9 + 16);
    ASSERT_EQ(ca_gen_close(sq), 0);
    return 0;
}

static void test_nested_generators(void)
{
    ASSERT_EQ(ca_run(nested_main, NULL), 0);
}

/* ---- errors -------------------------------------------------------------- */

struct misuse {
    ca_gen *g;
    int next_in_cb, yield_in_cb, close_in_cb;
};

static void misuse_cb(void *a)
{
    struct misuse *m = a;
    void *v;
    m->next_in_cb = ca_gen_next(m->g, &v);
    m->yield_in_cb = ca_gen_yield(m->g, NULL, NULL);
    m->close_in_cb = ca_gen_close(m->g); /* running producer: needs a task */
}

static int self_next(ca_gen *g, void *arg)
{
    void *v;
    int *out = arg;
    out[0] = ca_gen_next(g, &v);
    out[1] = ca_gen_close(g);
    return ca_gen_yield(g, P(1), NULL) < 0 ? 0 : 0;
}

static int errors_main(void *a)
{
    (void)a;
    ca_gen *g = P(1);
    void *v;
    ASSERT_EQ(ca_gen_new(NULL, count_gen, NULL), -EINVAL);
    ASSERT_EQ(ca_gen_new(&g, NULL, NULL), -EINVAL);
    ASSERT(g == NULL);
    ASSERT_EQ(ca_gen_next(NULL, &v), -EINVAL);
    ASSERT_EQ(ca_gen_send(NULL, NULL, &v), -EINVAL);
    ASSERT_EQ(ca_gen_yield(NULL, NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_gen_close(NULL), -EINVAL);

    /* yield from a task that is not the producer */
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(2)), 0);
    ASSERT_EQ(ca_gen_yield(g, NULL, NULL), -EPERM);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(ca_gen_yield(g, NULL, NULL), -EPERM);
    struct misuse m = {g, 0, 0, 0};
    ASSERT_EQ(ca_call_soon(misuse_cb, &m, NULL), 0);
    ASSERT_EQ(ca_sleep(0.002), 0);
    ASSERT_EQ(m.next_in_cb, -EPERM);
    ASSERT_EQ(m.yield_in_cb, -EPERM);
    ASSERT_EQ(m.close_in_cb, -EPERM);
    ASSERT_EQ(ca_gen_next(g, &v), 1); /* still usable */
    ASSERT_EQ(I(v), 2);
    ASSERT_EQ(ca_gen_close(g), 0);

    /* the producer asking its own generator */
    int out[2] = {0, 0};
    ASSERT_EQ(ca_gen_new(&g, self_next, out), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(out[0], -EDEADLK);
    ASSERT_EQ(out[1], -EDEADLK);
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_argument_errors(void)
{
    ca_gen *g = P(1);
    ASSERT_EQ(ca_gen_new(&g, count_gen, NULL), -CA_ENOLOOP);
    ASSERT(g == NULL);
    ASSERT_EQ(ca_run(errors_main, NULL), 0);
}

static const struct test_case tests[] = {
    {"yields_in_order", test_yields_in_order, 10, 0},
    {"send_running_average", test_send_running_average, 10, 0},
    {"producer_failure", test_producer_failure, 10, 0},
    {"close", test_close, 10, 0},
    {"close_after_end", test_close_after_end, 10, 0},
    {"deadline_then_value", test_deadline_then_value, 10, 0},
    {"consumer_cancel_keeps_value", test_consumer_cancel_keeps_value, 10, 0},
    {"consumers_in_turn", test_consumers_in_turn, 10, 0},
    {"nested_generators", test_nested_generators, 10, 0},
    {"argument_errors", test_argument_errors, 10, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
