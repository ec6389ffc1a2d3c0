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

/* ---- adversarial: same-turn races, close at every state ----------------- */

#include <time.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Hold the loop (no yield): timers due meanwhile fire in the next turn. */
static void hold_loop(double secs)
{
    double until = mono() + secs;
    while (mono() < until) {
    }
}

/* Yields 1, 2, 3... each after a short sleep (a timer). */
static int timed_counter(ca_gen *g, void *arg)
{
    (void)arg;
    for (int i = 1;; i++) {
        int r = ca_sleep(0.005);
        if (r < 0)
            return r;
        r = ca_gen_yield(g, P(i), NULL);
        if (r < 0)
            return r == -ECANCELED ? 0 : r;
    }
}

/*
 * The consumer is cancelled, or its deadline passes, in the same turn as
 * the producer's yield comes due (its timer fires after this slice): no
 * value is lost or delivered twice, across many rounds.
 */
static int timed_consume(void *a)
{
    struct consumer *c = a;
    ASSERT_EQ(ca_deadline_push(0.004), 0);
    c->r = ca_gen_next(c->g, &c->v);
    ca_deadline_pop();
    return c->r;
}

static int same_turn_consumer_main(void *a)
{
    (void)a;
    ca_gen *g;
    ASSERT_EQ(ca_gen_new(&g, timed_counter, NULL), 0);
    int expect = 1;
    for (int round = 0; round < 12; round++) {
        struct consumer c = {g, 0, NULL};
        int dl = round & 1;
        ca_spawn_opts so = {.eager = 1};
        ca_task *t;
        ASSERT_EQ(ca_spawn_ex(&t, dl ? timed_consume : consume_one, &c, &so),
                  0);
        ASSERT(!ca_task_done(t));
        hold_loop(0.01); /* the producer's sleep (and t's deadline) due */
        if (!dl)
            ca_cancel(t);
        int r = ca_join(t);
        ASSERT_EQ(r, dl ? -ETIMEDOUT : -ECANCELED);
        ca_task_release(t);
        /* the value made for it comes next, exactly once */
        void *v;
        ASSERT_EQ(ca_gen_next(g, &v), 1);
        ASSERT_EQ(I(v), expect);
        expect++;
        ASSERT_EQ(ca_gen_next(g, &v), 1);
        ASSERT_EQ(I(v), expect);
        expect++;
    }
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_consumer_fails_same_turn_as_yield(void)
{
    ASSERT_EQ(ca_run(same_turn_consumer_main, NULL), 0);
}

/*
 * The producer's own deadline passes while it waits in ca_gen_yield, in
 * the same turn as the next request (both orders): the producer sees
 * -ETIMEDOUT and fails; the consumer gets that error exactly once, then
 * -EPIPE; nothing it yielded before is lost.
 */
static int deadline_yielder(ca_gen *g, void *arg)
{
    (void)arg;
    ASSERT_EQ(ca_gen_yield(g, P(1), NULL), 0);
    ASSERT_EQ(ca_deadline_push(0.01), 0);
    int r = ca_gen_yield(g, P(2), NULL);
    ca_deadline_pop();
    if (r < 0)
        return r;
    return ca_gen_yield(g, P(3), NULL) < 0 ? -EINTR : 0;
}

static int producer_deadline_main(void *a)
{
    (void)a;
    for (int order = 0; order < 2; order++) {
        ca_gen *g;
        void *v;
        ASSERT_EQ(ca_gen_new(&g, deadline_yielder, NULL), 0);
        ASSERT_EQ(ca_gen_next(g, &v), 1);
        ASSERT_EQ(I(v), 1);
        ASSERT_EQ(ca_gen_next(g, &v), 1);
        ASSERT_EQ(I(v), 2); /* the producer now waits under its deadline */
        if (order == 0) {
            hold_loop(0.02); /* request first, its timer after */
        } else {
            ASSERT_EQ(ca_sleep(0.03), 0); /* timer fired: it already ended */
        }
        ASSERT_EQ(ca_gen_next(g, &v), -ETIMEDOUT);
        ASSERT_EQ(ca_gen_next(g, &v), -EPIPE);
        ASSERT_EQ(ca_gen_send(g, NULL, &v), -EPIPE);
        ASSERT_EQ(ca_gen_close(g), -ETIMEDOUT); /* the producer's status */
    }
    return 0;
}

static void test_producer_deadline_same_turn_as_request(void)
{
    ASSERT_EQ(ca_run(producer_deadline_main, NULL), 0);
}

/*
 * ca_gen_close at every state: never asked; asked but the producer not
 * yet run (NEW); woken by a request, not yet run; parked with a value not
 * taken; ended with an error already reported and not reported; a
 * producer that ignores the cancel and yields again, then returns.
 */
static int resist_count;

static int resisting(ca_gen *g, void *arg)
{
    (void)arg;
    for (int i = 0;; i++) {
        int r = ca_gen_yield(g, P(i), NULL);
        if (r == -ECANCELED) {
            /* ignore it: yield again (fails at once), sleep (fails at
             * once), and return a status of its own */
            resist_count++;
            ASSERT_EQ(ca_gen_yield(g, P(99), NULL), -ECANCELED);
            ASSERT_EQ(ca_sleep(0.001), -ECANCELED);
            return -EIO;
        }
    }
}

static int fail_after_one(ca_gen *g, void *arg)
{
    (void)arg;
    if (ca_gen_yield(g, P(1), NULL) < 0)
        return 0;
    return -ENOENT;
}

static int close_states_main(void *a)
{
    (void)a;
    ca_gen *g;
    void *v;
    started = 0;
    /* never asked */
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(3)), 0);
    ASSERT_EQ(ca_gen_close(g), 0);
    /* asked, the consumer gave up before the producer ever ran */
    ASSERT_EQ(ca_gen_new(&g, count_gen, P(3)), 0);
    struct consumer c = {g, 0, NULL};
    ca_spawn_opts so = {.eager = 1};
    ca_task *t;
    ASSERT_EQ(ca_spawn_ex(&t, consume_one, &c, &so), 0);
    ca_cancel(t); /* in the same turn: the producer is still NEW */
    /* t has not run yet: it still counts as waiting in next */
    ASSERT_EQ(ca_gen_close(g), -EBUSY);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    /* the producer ran for the request t left open: value 1 waits */
    ASSERT_EQ(started, 1);
    ASSERT_EQ(ca_gen_close(g), 0);
    /* woken by a request whose consumer gave up in the same turn */
    ASSERT_EQ(ca_gen_new(&g, fast_counter, NULL), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    c = (struct consumer){g, 0, NULL};
    ASSERT_EQ(ca_spawn_ex(&t, consume_one, &c, &so), 0);
    ca_cancel(t); /* the producer is READY with the request */
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(ca_gen_close(g), 0);
    /* parked with a value nobody took */
    ASSERT_EQ(ca_gen_new(&g, fast_counter, NULL), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    c = (struct consumer){g, 0, NULL};
    ASSERT_EQ(ca_spawn_ex(&t, consume_one, &c, &so), 0);
    ASSERT_EQ(ca_yield(), 0); /* the producer yields 2 and wakes t */
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(ca_gen_close(g), 0);
    /* ended with an error: reported, then closed; not reported, closed */
    for (int reported = 0; reported < 2; reported++) {
        ASSERT_EQ(ca_gen_new(&g, fail_after_one, NULL), 0);
        ASSERT_EQ(ca_gen_next(g, &v), 1);
        if (reported) {
            ASSERT_EQ(ca_gen_next(g, &v), -ENOENT);
            ASSERT_EQ(ca_gen_next(g, &v), -EPIPE);
        } else {
            /* a request its consumer abandons in the same turn: the
             * producer ends meanwhile, nobody is told */
            c = (struct consumer){g, 0, NULL};
            ASSERT_EQ(ca_spawn_ex(&t, consume_one, &c, &so), 0);
            ca_cancel(t);
            ASSERT_EQ(ca_join(t), -ECANCELED);
            ca_task_release(t);
        }
        ASSERT_EQ(ca_gen_close(g), -ENOENT);
    }
    /* a producer that resists the cancel */
    resist_count = 0;
    ASSERT_EQ(ca_gen_new(&g, resisting, NULL), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(ca_gen_close(g), -EIO);
    ASSERT_EQ(resist_count, 1);
    return 0;
}

static void test_close_at_every_state(void)
{
    ASSERT_EQ(ca_run(close_states_main, NULL), 0);
}

/*
 * ca_gen_send after a request was abandoned: the pending request already
 * carried the first sent value, so the answer to it is handed to the next
 * send, whose own value never reaches the producer, and the call still
 * returns 1 as if it had been delivered.
 *
 * BUG (known, or an undocumented rule): sync.h says ca_gen_yield "receives
 * `in` as the value sent"; here a value sent is silently dropped.  Either
 * the second send should fail (-EBUSY: a request is still open) or the
 * header should say that a send following an abandoned request only
 * collects that request's answer.
 */
static int echo_gen(ca_gen *g, void *arg)
{
    void **log = arg;
    void *in = NULL;
    int n = 0;
    if (ca_gen_yield(g, P(0), &in) < 0)
        return 0;
    for (;;) {
        log[n++] = in;
        ca_sleep(0.01); /* slow to answer */
        if (ca_gen_yield(g, in, &in) < 0)
            return 0;
    }
}

struct sender {
    ca_gen *g;
    void *in;
    int r;
};

static int sender_task(void *a)
{
    struct sender *sd = a;
    void *v;
    sd->r = ca_gen_send(sd->g, sd->in, &v);
    return 0;
}

/* A consumer task sends `in`, and is cancelled once the producer has
 * received it (echo_gen takes 10 ms to answer): the request stays
 * pending, abandoned. */
static void abandon_send(ca_gen *g, void *in, void **log)
{
    struct sender sd = {g, in, 0};
    ca_task *c = ca_spawn(sender_task, &sd);
    int seen = 0;
    for (int i = 0; i < 2000 && !seen; i++) {
        ASSERT_EQ(ca_sleep(0.0005), 0);
        for (int k = 0; k < 8; k++)
            seen |= log[k] == in;
    }
    ASSERT(seen);
    ca_cancel(c);
    ASSERT_EQ(ca_join(c), 0);
    ASSERT_EQ(sd.r, -ECANCELED);
    ca_task_release(c);
}

static int send_abandoned_main(void *a)
{
    (void)a;
    void *log[8] = {0};
    ca_gen *g;
    void *v;
    ASSERT_EQ(ca_gen_new(&g, echo_gen, log), 0);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    abandon_send(g, P(11), log);
    /* 22 cannot reach the producer, which already got 11: refused, not
     * dropped; collecting the pending answer works, then 22 can go */
    ASSERT_EQ(ca_gen_send(g, P(22), &v), -EBUSY);
    ASSERT_EQ(ca_gen_next(g, &v), 1);
    ASSERT_EQ(I(v), 11);
    ASSERT_EQ(ca_gen_send(g, P(22), &v), 1);
    ASSERT_EQ(I(v), 22);
    int delivered = 0;
    for (int i = 0; i < 8; i++)
        delivered += log[i] == P(22);
    ASSERT_EQ(delivered, 1);
    /* abandoned again: sending the same value again collects its answer */
    abandon_send(g, P(33), log);
    ASSERT_EQ(ca_gen_send(g, P(33), &v), 1);
    ASSERT_EQ(I(v), 33);
    ASSERT_EQ(ca_gen_close(g), 0);
    return 0;
}

static void test_send_after_abandoned_request(void)
{
    ASSERT_EQ(ca_run(send_abandoned_main, NULL), 0);
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
    {"consumer_fails_same_turn_as_yield",
     test_consumer_fails_same_turn_as_yield, 10, 0},
    {"producer_deadline_same_turn_as_request",
     test_producer_deadline_same_turn_as_request, 10, 0},
    {"close_at_every_state", test_close_at_every_state, 10, 0},
    {"send_after_abandoned_request", test_send_after_abandoned_request, 10, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
