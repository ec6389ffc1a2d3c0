/*
 * Structured concurrency: gather, wait, wait_for, as_completed, task groups
 * and the task shield flag.
 *
 * All of them watch many tasks at once the same way: a `watch` node per task
 * is linked into that task's joiners list with a notify callback.  When the
 * task finishes, wake_joiners calls the callback (in the finishing task's
 * context), which updates the combinator's counters and wakes the waiting
 * task only when its condition holds — so gathering 10,000 tasks costs
 * 10,000 callbacks and one wake-up, not 10,000 rescans.
 */
#include "task/task.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct watch {
    ca__waiter w;
    struct watcher *owner;
    ca_task *t;
    size_t index;
};

struct watcher {
    ca_task *waiter;    /* task parked waiting for the condition, or NULL */
    size_t pending;     /* watched tasks not finished */
    size_t done;        /* finished since watching began */
    int first_fail;     /* status of the first failure seen, 0 if none */
    int mode;           /* what wakes the waiter (WAKE_*) */
    /* as_completed: finished tasks in completion order */
    ca_task **order;
    size_t order_n;
};

enum { WAKE_ALL, WAKE_ANY, WAKE_FAIL_OR_ALL };

static int is_failure(int status)
{
    return status < 0;
}

static void watch_notify(ca__waiter *w)
{
    struct watch *x = (struct watch *)w;
    struct watcher *o = x->owner;
    ca_task *t = x->t;
    o->pending--;
    o->done++;
    if (o->order)
        o->order[o->order_n++] = t;
    int failed = is_failure(t->status);
    if (failed && !o->first_fail)
        o->first_fail = t->status;
    int wake = o->pending == 0 || o->mode == WAKE_ANY ||
               (o->mode == WAKE_FAIL_OR_ALL && failed);
    if (wake && o->waiter)
        ca__task_wake(o->waiter, 0);
}

/* Watch every unfinished task of ts; finished ones are counted at once. */
static void watch_all(struct watcher *o, struct watch *xs, ca_task **ts,
                      size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ca_task *t = ts[i];
        xs[i].t = t;
        xs[i].owner = o;
        xs[i].index = i;
        xs[i].w = (ca__waiter){.notify = watch_notify};
        if (t->state == CA__T_DONE) {
            o->done++;
            if (o->order)
                o->order[o->order_n++] = t;
            if (is_failure(t->status) && !o->first_fail)
                o->first_fail = t->status;
        } else {
            o->pending++;
            ca__waitlist_push(&t->joiners, &xs[i].w);
        }
    }
}

static void unwatch_all(struct watch *xs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ca__waitlist_linked(&xs[i].t->joiners, &xs[i].w))
            ca__waitlist_remove(&xs[i].t->joiners, &xs[i].w);
}

static int check_array(ca_task **ts, size_t n)
{
    if (n && !ts)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!ts[i])
            return -EINVAL;
    return 0;
}

/* Cancel the unfinished, unshielded tasks of ts and wait until they have
 * finished, whatever the caller's own state (under a shield). */
static void cancel_and_reap(ca_task **ts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ts[i]->state != CA__T_DONE && !ts[i]->shielded)
            ca_cancel(ts[i]);
    ca_shield_push();
    for (size_t i = 0; i < n; i++)
        if (!ts[i]->shielded)
            ca_join(ts[i]);
    ca_shield_pop();
}

#define STACK_WATCHES 16

/* ------------------------------------------------------------------------ */
/* gather                                                                   */
/* ------------------------------------------------------------------------ */

int ca_gather(ca_task **ts, size_t n, int flags)
{
    if (check_array(ts, n) < 0 || (flags & ~CA_GATHER_ALL))
        return -EINVAL;
    ca_task *self = ca__task_self("ca_gather");
    if (!self)
        return -EPERM;
    if (n == 0)
        return 0;
    int all = flags & CA_GATHER_ALL;
    struct watch small[STACK_WATCHES];
    struct watch *xs = n <= STACK_WATCHES ? small : malloc(n * sizeof(*xs));
    if (!xs)
        return -ENOMEM;
    struct watcher o = {.waiter = self,
                        .mode = all ? WAKE_ALL : WAKE_FAIL_OR_ALL};
    watch_all(&o, xs, ts, n);
    int r = 0;
    while (o.pending > 0 && (all || !o.first_fail)) {
        r = ca__task_park(self, INT64_MAX);
        if (r < 0)
            break;
        r = 0;
    }
    unwatch_all(xs, n);
    if (xs != small)
        free(xs);
    if (r < 0) {
        /* The caller was cancelled or its deadline passed. */
        cancel_and_reap(ts, n);
        return r;
    }
    int result = 0;
    for (size_t i = 0; i < n; i++) {
        if (ts[i]->state != CA__T_DONE)
            continue;
        if (is_failure(ts[i]->status)) {
            ts[i]->retrieved = 1;
            if (all && !result)
                result = ts[i]->status;
        }
    }
    return all ? result : o.first_fail;
}

/* ------------------------------------------------------------------------ */
/* wait                                                                     */
/* ------------------------------------------------------------------------ */

static int64_t deadline_after(double timeout)
{
    if (timeout < 0)
        return INT64_MAX;
    if (timeout > 9.0e9)
        return INT64_MAX - 1;
    return ca__clock_ns() + (int64_t)(timeout * 1e9);
}

int ca_wait(ca_task **ts, size_t n, double timeout, int when)
{
    if (check_array(ts, n) < 0 || isnan(timeout) ||
        (when != CA_ALL_COMPLETED && when != CA_FIRST_COMPLETED &&
         when != CA_FIRST_EXCEPTION))
        return -EINVAL;
    ca_task *self = ca__task_self("ca_wait");
    if (!self)
        return -EPERM;
    int mode = when == CA_FIRST_COMPLETED   ? WAKE_ANY
               : when == CA_FIRST_EXCEPTION ? WAKE_FAIL_OR_ALL
                                            : WAKE_ALL;
    struct watch small[STACK_WATCHES];
    struct watch *xs =
        n <= STACK_WATCHES ? small : malloc(n * sizeof(*xs));
    if (!xs)
        return -ENOMEM;
    struct watcher o = {.waiter = self, .mode = mode};
    watch_all(&o, xs, ts, n);
    int64_t until = deadline_after(timeout);
    int r = 0;
    for (;;) {
        int satisfied = o.pending == 0 || (mode == WAKE_ANY && o.done > 0) ||
                        (mode == WAKE_FAIL_OR_ALL && o.first_fail);
        if (satisfied)
            break;
        r = ca__task_park(self, until);
        if (r == CA__WAIT_TIMEOUT) {
            r = 0;
            break;
        }
        if (r < 0)
            break;
    }
    unwatch_all(xs, n);
    if (xs != small)
        free(xs);
    return r < 0 ? r : (int)(o.done > INT32_MAX ? INT32_MAX : o.done);
}

/* ------------------------------------------------------------------------ */
/* wait_for                                                                 */
/* ------------------------------------------------------------------------ */

int ca_wait_for(ca_task *t, double timeout)
{
    if (!t || isnan(timeout))
        return -EINVAL;
    ca_task *self = ca__task_self("ca_wait_for");
    if (!self)
        return -EPERM;
    if (t == self)
        return -EDEADLK;
    if (t->state == CA__T_DONE) {
        t->retrieved = 1;
        return t->status;
    }
    t->refs++; /* t must outlive our look at it */
    ca__waiter w = {.task = self};
    ca__waitlist_push(&t->joiners, &w);
    int r = ca__task_park(self, deadline_after(timeout));
    if (ca__waitlist_linked(&t->joiners, &w))
        ca__waitlist_remove(&t->joiners, &w);
    if (t->state == CA__T_DONE) {
        /* Finished in time, or in the same turn as the timeout or the
         * caller's cancellation: its result wins (asyncio bug #86296).
         * The caller's cancellation is not swallowed: it is level-
         * triggered, so its next blocking call fails with -ECANCELED. */
        t->retrieved = 1;
        int st = t->status;
        ca_task_release(t);
        return st;
    }
    int result = r == CA__WAIT_TIMEOUT ? -ETIMEDOUT : r;
    if (!t->shielded) {
        ca_cancel(t);
        ca_shield_push();
        ca_join(t);
        ca_shield_pop();
        if (r == CA__WAIT_TIMEOUT && t->status != -ECANCELED) {
            /* It completed instead of being cancelled: keep its result. */
            t->retrieved = 1;
            result = t->status;
        }
    }
    ca_task_release(t);
    return result;
}

/* ------------------------------------------------------------------------ */
/* as_completed                                                             */
/* ------------------------------------------------------------------------ */

struct ca_as_completed {
    struct watcher o;
    struct watch *xs;
    ca_task **tasks;
    size_t n;
    size_t next; /* index into o.order of the next task to hand out */
    int64_t until;
};

int ca_as_completed_new(ca_as_completed **out, ca_task **ts, size_t n,
                        double timeout)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (check_array(ts, n) < 0 || isnan(timeout))
        return -EINVAL;
    if (!ca__loop())
        return -CA_ENOLOOP;
    ca_as_completed *it = calloc(1, sizeof(*it));
    if (!it)
        return -ENOMEM;
    size_t m = n ? n : 1;
    it->xs = malloc(m * sizeof(*it->xs));
    it->o.order = malloc(m * sizeof(*it->o.order));
    it->tasks = malloc(m * sizeof(*it->tasks));
    if (!it->xs || !it->o.order || !it->tasks) {
        free(it->xs);
        free(it->o.order);
        free(it->tasks);
        free(it);
        return -ENOMEM;
    }
    memcpy(it->tasks, ts, n * sizeof(*ts));
    it->n = n;
    it->o.mode = WAKE_ANY;
    it->until = deadline_after(timeout);
    watch_all(&it->o, it->xs, it->tasks, n);
    *out = it;
    return 0;
}

int ca_as_completed_next(ca_as_completed *it, ca_task **t)
{
    if (!it || !t)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_as_completed_next");
    if (!self)
        return -EPERM;
    *t = NULL;
    while (it->next == it->o.order_n) {
        if (it->next == it->n)
            return 0;
        it->o.waiter = self;
        int r = ca__task_park(self, it->until);
        it->o.waiter = NULL;
        if (r == CA__WAIT_TIMEOUT)
            return -ETIMEDOUT;
        if (r < 0)
            return r;
    }
    *t = it->o.order[it->next++];
    return 1;
}

void ca_as_completed_free(ca_as_completed *it)
{
    if (!it)
        return;
    unwatch_all(it->xs, it->n);
    free(it->xs);
    free(it->o.order);
    free(it->tasks);
    free(it);
}

/* ------------------------------------------------------------------------ */
/* Task groups                                                              */
/* ------------------------------------------------------------------------ */

/*
 * A group watches each child through a group_child node in the child's
 * joiners list; group_child_done runs when the child finishes.
 *
 * A keeping group (the default) stores every node in `kids`, in spawn
 * order, and releases the tasks in ca_group_free.  A release_finished group
 * links the nodes of its unfinished children in `live` instead; when a
 * child finishes, its node is freed and the group's reference to it
 * released at once, so the group's size follows the children running, not
 * the children ever spawned.  It keeps one finished child: the first that
 * failed (`failed`), whose status ca_group_wait returns and whose report
 * (if nobody waited) ca_group_free leaves to the runtime, as a keeping
 * group does.
 */
struct group_child {
    ca__waiter w;
    ca_group *g;
    ca_task *t;
    struct group_child *prev, *next; /* release_finished: the live list */
};

struct ca_group {
    struct group_child **kids; /* keeping group: every child */
    size_t n, cap;
    struct group_child *live; /* release_finished: unfinished children */
    ca_task *failed;          /* release_finished: the first failed child */
    size_t unfinished;
    int first_fail;
    int closing;
    int release; /* ca_group_opts.release_finished */
    ca_task *waiter;
};

static void group_cancel_one(ca_task *t, ca_task *except)
{
    if (t != except && t->state != CA__T_DONE && !t->shielded)
        ca_cancel(t);
}

/* ca_cancel never finishes a task on the spot (it is woken, or marked to
 * finish when it would start), so no node leaves `live` during the walk. */
static void group_cancel_kids(ca_group *g, ca_task *except)
{
    if (g->release) {
        for (struct group_child *k = g->live; k; k = k->next)
            group_cancel_one(k->t, except);
        return;
    }
    for (size_t i = 0; i < g->n; i++)
        group_cancel_one(g->kids[i]->t, except);
}

static void live_unlink(ca_group *g, struct group_child *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        g->live = k->next;
    if (k->next)
        k->next->prev = k->prev;
}

static void group_child_done(ca__waiter *w)
{
    struct group_child *k = (struct group_child *)w;
    ca_group *g = k->g;
    ca_task *t = k->t;
    g->unfinished--;
    if (g->release)
        live_unlink(g, k);
    /* A child that was cancelled is not a failure (asyncio.TaskGroup). */
    if (t->status < 0 && t->status != -ECANCELED && !g->first_fail) {
        g->first_fail = t->status;
        g->closing = 1;
        group_cancel_kids(g, t);
        if (g->release) {
            g->failed = t; /* the group's reference moves here */
            t = NULL;
        }
    }
    if (g->release) {
        free(k);
        if (t)
            ca_task_release(t);
    }
    if (g->unfinished == 0 && g->waiter)
        ca__task_wake(g->waiter, 0);
}

int ca_group_new_ex(ca_group **out, const ca_group_opts *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (opts && (opts->release_finished & ~1))
        return -EINVAL;
    if (!ca__loop())
        return -CA_ENOLOOP;
    ca_group *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->release = opts && opts->release_finished;
    *out = g;
    return 0;
}

int ca_group_new(ca_group **out)
{
    return ca_group_new_ex(out, NULL);
}

int ca__group_spawn(ca_group *g, ca_task **out, ca_fn fn, void *arg,
                    const ca_spawn_opts *opts, const char *where)
{
    if (out)
        *out = NULL;
    if (!g || !fn)
        return -EINVAL;
    if (g->closing)
        return -ESHUTDOWN;
    if (!g->release && g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        struct group_child **k = realloc(g->kids, cap * sizeof(*k));
        if (!k)
            return -ENOMEM;
        g->kids = k;
        g->cap = cap;
    }
    struct group_child *k = malloc(sizeof(*k));
    if (!k)
        return -ENOMEM;
    ca_task *t;
    int r = ca__spawn_ex(&t, fn, arg, opts, where);
    if (r < 0) {
        free(k);
        return r;
    }
    k->g = g;
    k->t = t;
    k->w = (ca__waiter){.notify = group_child_done};
    if (g->release) {
        /* The caller's own reference, taken before the child can finish
         * and the group drop its own. */
        if (out)
            t->refs++;
        k->prev = NULL;
        k->next = g->live;
        if (g->live)
            g->live->prev = k;
        g->live = k;
    } else {
        g->kids[g->n++] = k;
    }
    g->unfinished++;
    if (t->state == CA__T_DONE)
        group_child_done(&k->w); /* an eager child finished in the spawn */
    else
        ca__waitlist_push(&t->joiners, &k->w);
    if (out)
        *out = t;
    return 0;
}

int ca_group_wait(ca_group *g)
{
    if (!g)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_group_wait");
    if (!self)
        return -EPERM;
    int r = 0;
    while (g->unfinished > 0) {
        g->waiter = self;
        r = ca__task_park(self, INT64_MAX);
        g->waiter = NULL;
        if (r < 0)
            break;
        r = 0;
    }
    g->closing = 1;
    if (r < 0) {
        /* The owner was cancelled (or its deadline passed): cancel every
         * child and wait for all of them before returning. */
        group_cancel_kids(g, NULL);
        ca_shield_push();
        while (g->unfinished > 0) {
            g->waiter = self;
            ca__task_park(self, INT64_MAX);
            g->waiter = NULL;
        }
        ca_shield_pop();
    }
    /* The group reports its children. */
    for (size_t i = 0; i < g->n; i++)
        g->kids[i]->t->retrieved = 1;
    if (g->failed)
        g->failed->retrieved = 1;
    return r < 0 ? r : g->first_fail;
}

int ca_group_cancel(ca_group *g)
{
    if (!g)
        return -EINVAL;
    g->closing = 1;
    group_cancel_kids(g, NULL);
    return 0;
}

size_t ca_group_size(const ca_group *g)
{
    if (!g)
        return 0;
    return g->release ? g->unfinished : g->n;
}

ca_task *ca_group_task(const ca_group *g, size_t i)
{
    return g && !g->release && i < g->n ? g->kids[i]->t : NULL;
}

static void group_forget(struct group_child *k)
{
    if (ca__waitlist_linked(&k->t->joiners, &k->w))
        ca__waitlist_remove(&k->t->joiners, &k->w);
    ca_task_release(k->t);
    free(k);
}

void ca_group_free(ca_group *g)
{
    if (!g)
        return;
    ca_loop *l = ca__loop();
    if (g->unfinished > 0) {
        ca_group_cancel(g);
        if (l && l->current) {
            ca_shield_push();
            while (g->unfinished > 0) {
                g->waiter = l->current;
                ca__task_park(l->current, INT64_MAX);
                g->waiter = NULL;
            }
            ca_shield_pop();
        }
    }
    /* Outside a task, children may still be running: unhook them. */
    while (g->live) {
        struct group_child *k = g->live;
        g->live = k->next;
        group_forget(k);
    }
    for (size_t i = 0; i < g->n; i++)
        group_forget(g->kids[i]);
    ca_task_release(g->failed);
    free(g->kids);
    free(g);
}

/* ------------------------------------------------------------------------ */
/* Shield                                                                   */
/* ------------------------------------------------------------------------ */

int ca_task_shield(ca_task *t)
{
    if (!t)
        return -EINVAL;
    t->shielded = 1;
    return 0;
}
