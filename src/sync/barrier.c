/*
 * Barrier: the parties-th arrival releases everyone; arrival order is the
 * return value.  A waiter that is cancelled or times out breaks the barrier
 * for the others (asyncio.Barrier), who get -CA_EBROKEN.
 */
#include "sync/sync.h"

#include <errno.h>

int ca_barrier_init(ca_barrier *b, unsigned parties)
{
    if (!b || parties == 0)
        return -EINVAL;
    struct barrier_impl *B = (struct barrier_impl *)b;
    B->parties = parties;
    B->count = 0;
    B->broken = 0;
    B->waiters.head = B->waiters.tail = NULL;
    return 0;
}

int ca_barrier_wait(ca_barrier *b)
{
    if (!b)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_barrier_wait");
    if (!self)
        return -EPERM;
    struct barrier_impl *B = (struct barrier_impl *)b;
    if (B->parties == 0)
        return -EINVAL;
    if (B->broken)
        return -CA_EBROKEN;
    int index = (int)B->count++;
    if (B->count == B->parties) {
        B->count = 0;
        ca__waitlist_wake_all(&B->waiters, 0);
        return index;
    }
    ca__waiter w = {0};
    int r = ca__wait_in(&B->waiters, &w);
    if (r == 0)
        return index;
    if (r == -ECANCELED || r == -ETIMEDOUT) {
        B->broken = 1;
        B->count = 0;
        ca__waitlist_wake_all(&B->waiters, -CA_EBROKEN);
    }
    return r;
}

int ca_barrier_reset(ca_barrier *b)
{
    if (!b)
        return -EINVAL;
    struct barrier_impl *B = (struct barrier_impl *)b;
    ca__waitlist_wake_all(&B->waiters, -CA_EBROKEN);
    B->count = 0;
    B->broken = 0;
    return 0;
}

int ca_barrier_abort(ca_barrier *b)
{
    if (!b)
        return -EINVAL;
    struct barrier_impl *B = (struct barrier_impl *)b;
    B->broken = 1;
    B->count = 0;
    ca__waitlist_wake_all(&B->waiters, -CA_EBROKEN);
    return 0;
}

unsigned ca_barrier_n_waiting(const ca_barrier *b)
{
    return b ? ((const struct barrier_impl *)b)->count : 0;
}

int ca_barrier_broken(const ca_barrier *b)
{
    return b && ((const struct barrier_impl *)b)->broken;
}
