/*
 * Lock: FIFO-fair and not reentrant.  Release hands ownership directly to
 * the first waiter, so a task that arrives later cannot barge in.  An
 * acquire that was granted but whose task was cancelled before it ran
 * hands the lock on to the next waiter and fails with -ECANCELED.
 */
#include "sync/sync.h"

#include <errno.h>

static void release_to_next(struct lock_impl *L)
{
    ca__waiter *w = ca__waitlist_pop(&L->waiters);
    L->owner = w ? w->task : NULL;
    if (w)
        ca__task_wake(w->task, 0);
}

/* Wait for the lock behind its owner and the waiters before us. */
static __attribute__((noinline)) int acquire_wait(struct lock_impl *L,
                                                  ca_task *self)
{
    if (L->owner == self)
        return -EDEADLK;
    ca__waiter w;
    w.data = NULL;
    int r = ca__wait_in(&L->waiters, &w);
    if (r < 0)
        return r; /* not granted */
    int c = ca__task_check(self);
    if (c < 0) {
        /* Granted in the same turn as the cancel: pass it on. */
        release_to_next(L);
        return c;
    }
    return 0;
}

int ca_lock_acquire(ca_lock *l)
{
    if (!l)
        return -EINVAL;
    ca_loop *loop = ca__loop();
    ca_task *self = loop ? loop->current : NULL;
    if (!self) {
        /* Reported here, on the way out, so that the fast path below keeps
         * no register across the report's call. */
        ca__task_self_slow("ca_lock_acquire");
        return -EPERM;
    }
    struct lock_impl *L = (struct lock_impl *)l;
    if (!L->owner && !L->waiters.head) {
        L->owner = self;
        return 0;
    }
    return acquire_wait(L, self);
}

int ca_lock_try_acquire(ca_lock *l)
{
    if (!l)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_lock_try_acquire");
    if (!self)
        return -EPERM;
    struct lock_impl *L = (struct lock_impl *)l;
    if (L->owner || L->waiters.head)
        return -EBUSY;
    L->owner = self;
    return 0;
}

int ca_lock_release(ca_lock *l)
{
    if (!l)
        return -EINVAL;
    struct lock_impl *L = (struct lock_impl *)l;
    ca_loop *loop = ca__loop();
    ca_task *self = loop ? loop->current : NULL;
    if (!L->owner || L->owner != self)
        return -EPERM;
    release_to_next(L);
    return 0;
}

int ca_lock_locked(const ca_lock *l)
{
    return l && ((const struct lock_impl *)l)->owner != NULL;
}
