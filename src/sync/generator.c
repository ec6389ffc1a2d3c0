/*
 * Generators: a producer task ("gen") and its consumers meet at a strict
 * rendezvous, one value at a time.
 *
 * A request (ca_gen_next/ca_gen_send) sets `pending` and starts or wakes
 * the producer; the producer runs until ca_gen_yield, which stores the
 * value (`has_value`), clears `pending`, wakes the consumer and parks until
 * the next request.  So the producer only runs between a request and its
 * answer.
 *
 * A consumer that gives up (cancelled, deadline) leaves the request
 * pending: the producer finishes producing and the value waits in the
 * generator for the next request, which takes it without waking the
 * producer.  A consumer woken with a value in the same turn as its cancel
 * fails too and leaves the value there: nothing is lost either way.
 *
 * The producer's end is observed through a notify waiter in its joiners
 * list, so it is seen whether the body returned or the task was cancelled
 * before it ever ran.
 */
#include "task/task.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

struct ca_gen {
    ca_gen_fn fn;
    void *arg;
    ca_task *task;     /* producer, NULL until the first request */
    ca_task *consumer; /* the task waiting in next/send, or NULL */
    void *value;       /* yielded, not yet taken */
    void *sent;        /* what the pending request sends */
    int status;        /* the producer's return, once done */
    uint8_t pending;   /* a request waits for its answer */
    uint8_t has_value;
    uint8_t done;      /* the producer has finished */
    uint8_t reported;  /* its end was returned to a consumer */
    uint8_t closing;
    ca__waitlist cwait; /* the consumer, while it waits */
    ca__waitlist pwait; /* the producer, parked in ca_gen_yield */
    ca__waiter endw;    /* in the producer's joiners */
};

static int gen_body(void *arg)
{
    ca_gen *g = arg;
    return g->fn(g, g->arg);
}

/* The producer finished (in its own last slice, or unstarted). */
static void gen_ended(ca__waiter *w)
{
    ca_gen *g = (ca_gen *)(void *)((char *)w - offsetof(ca_gen, endw));
    g->done = 1;
    g->pending = 0;
    g->status = g->task->status > 0 ? 0 : g->task->status;
    ca__waitlist_wake_one(&g->cwait, 0);
}

int ca_gen_new(ca_gen **out, ca_gen_fn fn, void *arg)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!fn)
        return -EINVAL;
    if (!ca__loop())
        return -CA_ENOLOOP;
    ca_gen *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->fn = fn;
    g->arg = arg;
    *out = g;
    return 0;
}

static int gen_request(ca_gen *g, int send, void *in, void **value)
{
    if (!g)
        return -EINVAL;
    ca_task *self = ca__task_self(send ? "ca_gen_send" : "ca_gen_next");
    if (!self)
        return -EPERM;
    if (self == g->task)
        return -EDEADLK;
    if (g->consumer)
        return -EBUSY;
    /* A request abandoned by its consumer (cancelled, past its deadline)
     * is answered to the next request; a send of another value would be
     * silently lost, so it is refused: collect that answer first. */
    if (send && (g->pending || g->has_value) && in != g->sent)
        return -EBUSY;
    if (!g->has_value && !g->done) {
        if (!g->pending) {
            /* Start no work that this call would abandon at once. */
            int r = ca__task_check(self);
            if (r < 0)
                return r;
            if (!g->task) {
                /* Nothing can receive a value sent to a just-started
                 * generator (Python: TypeError). */
                if (in)
                    return -EINVAL;
                ca_spawn_opts so = {.name = "gen"};
                ca_task *t;
                r = ca_spawn_ex(&t, gen_body, g, &so);
                if (r < 0)
                    return r;
                g->task = t;
                g->endw = (ca__waiter){.notify = gen_ended};
                ca__waitlist_push(&t->joiners, &g->endw);
            } else {
                g->sent = in;
                ca__waitlist_wake_one(&g->pwait, 0);
            }
            g->pending = 1;
        }
        g->consumer = self;
        while (!g->has_value && !g->done) {
            ca__waiter w = {0};
            int r = ca__wait_in(&g->cwait, &w);
            if (r == 0)
                r = ca__task_check(self);
            if (r < 0) {
                /* The request stays pending; its answer waits here. */
                g->consumer = NULL;
                return r;
            }
        }
        g->consumer = NULL;
    }
    if (g->has_value) {
        g->has_value = 0;
        if (value)
            *value = g->value;
        return 1;
    }
    if (g->reported)
        return -EPIPE;
    g->reported = 1;
    g->task->retrieved = 1; /* the consumer has seen the status */
    return g->status;
}

int ca_gen_next(ca_gen *g, void **value)
{
    return gen_request(g, 0, NULL, value);
}

int ca_gen_send(ca_gen *g, void *in, void **value)
{
    return gen_request(g, 1, in, value);
}

int ca_gen_yield(ca_gen *g, void *value, void **sent)
{
    if (!g)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_gen_yield");
    if (!self)
        return -EPERM;
    if (self != g->task)
        return -EPERM;
    if (g->closing)
        return -ECANCELED;
    g->value = value;
    g->has_value = 1;
    g->pending = 0;
    ca__waitlist_wake_one(&g->cwait, 0);
    while (!g->pending) {
        ca__waiter w = {0};
        int r = ca__wait_in(&g->pwait, &w);
        if (g->closing)
            return -ECANCELED;
        if (r == 0)
            r = ca__task_check(self);
        if (r < 0)
            return r;
    }
    if (sent)
        *sent = g->sent;
    return 0;
}

int ca_gen_close(ca_gen *g)
{
    if (!g)
        return -EINVAL;
    ca_task *t = g->task;
    if (t && ca_current() == t)
        return -EDEADLK; /* the producer cannot wait for itself */
    if (g->consumer)
        return -EBUSY;
    int st = 0;
    if (t) {
        if (t->state != CA__T_DONE) {
            if (!ca__task_self("ca_gen_close"))
                return -EPERM;
            g->closing = 1;
            ca_cancel(t);
            /* Parked in ca_gen_yield: wake it even inside a shield scope,
             * where the cancel alone would not. */
            ca__waitlist_wake_one(&g->pwait, -ECANCELED);
            /* Not a cancellation point: wait for the producer's cleanup
             * whatever our own cancellation or deadlines. */
            ca_shield_push();
            st = ca_join(t);
            ca_shield_pop();
            if (st == -ECANCELED)
                st = 0;
        } else {
            st = ca_task_status(t);
        }
        if (st > 0)
            st = 0;
        ca_task_release(t);
    }
    free(g);
    return st;
}
