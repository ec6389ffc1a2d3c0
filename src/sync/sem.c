/*
 * Semaphore and BoundedSemaphore.  Release hands the permit directly to the
 * first waiter (FIFO, no barging); a waiter cancelled after being granted
 * in the same turn hands it on.
 */
#include "sync/sync.h"

#include <errno.h>
#include <limits.h>

int ca_sem_init(ca_sem *s, unsigned value, int bounded)
{
    if (!s)
        return -EINVAL;
    struct sem_impl *S = (struct sem_impl *)s;
    S->value = value;
    S->initial = value;
    S->bounded = bounded ? 1 : 0;
    S->waiters.head = S->waiters.tail = NULL;
    return 0;
}

static void give(struct sem_impl *S)
{
    if (!ca__waitlist_wake_one(&S->waiters, 0))
        S->value++;
}

int ca_sem_acquire(ca_sem *s)
{
    if (!s)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_sem_acquire");
    if (!self)
        return -EPERM;
    struct sem_impl *S = (struct sem_impl *)s;
    if (S->value > 0 && !S->waiters.head) {
        S->value--;
        return 0;
    }
    ca__waiter w = {0};
    int r = ca__wait_in(&S->waiters, &w);
    if (r < 0)
        return r;
    int c = ca__task_check(self);
    if (c < 0) {
        give(S); /* granted in the same turn as the cancel: pass it on */
        return c;
    }
    return 0;
}

int ca_sem_try_acquire(ca_sem *s)
{
    if (!s)
        return -EINVAL;
    struct sem_impl *S = (struct sem_impl *)s;
    if (S->value == 0 || S->waiters.head)
        return -EAGAIN;
    S->value--;
    return 0;
}

int ca_sem_release(ca_sem *s)
{
    if (!s)
        return -EINVAL;
    struct sem_impl *S = (struct sem_impl *)s;
    if (S->bounded && S->value >= S->initial)
        return -EOVERFLOW;
    if (S->value == UINT_MAX)
        return -EOVERFLOW;
    give(S);
    return 0;
}

unsigned ca_sem_value(const ca_sem *s)
{
    return s ? ((const struct sem_impl *)s)->value : 0;
}
