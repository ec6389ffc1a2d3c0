/*
 * Barrier: the parties-th arrival releases everyone; arrival order is the
 * return value.  A waiter that is cancelled or times out breaks the barrier
 * for the others (asyncio.Barrier), who get -CA_EBROKEN, unless its round
 * already ended before it ran (released, reset or aborted in the same
 * turn): every waiter of a round that ends is marked (w->data), and a
 * marked waiter leaves the barrier as it is.
 */
#include "sync/sync.h"

#include <errno.h>

/* End the current round: mark its waiters (also those cancelled but not run
 * yet, which the wake skips) and wake the others with result. */
static void end_round(struct barrier_impl *B, int result)
{
    for (ca__waiter *w = B->waiters.head; w; w = w->next)
        w->data = B;
    ca__waitlist_wake_all(&B->waiters, result);
}

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
        end_round(B, 0);
        return index;
    }
    ca__waiter w = {0};
    int r = ca__wait_in(&B->waiters, &w);
    if (r == 0)
        return index;
    if ((r == -ECANCELED || r == -ETIMEDOUT) && !w.data) {
        B->broken = 1;
        B->count = 0;
        end_round(B, -CA_EBROKEN);
    }
    return r;
}

int ca_barrier_reset(ca_barrier *b)
{
    if (!b)
        return -EINVAL;
    struct barrier_impl *B = (struct barrier_impl *)b;
    end_round(B, -CA_EBROKEN);
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
    end_round(B, -CA_EBROKEN);
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
