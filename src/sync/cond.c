/*
 * Condition: waiters release the lock, park, and always re-acquire the lock
 * before returning (under a shield, as asyncio does, so even a cancelled
 * wait returns holding it).  A notification delivered to a waiter that was
 * cancelled in the same turn is passed on to the next waiter.
 */
#include "sync/sync.h"

#include <errno.h>

static int owns(struct cond_impl *C)
{
    ca_loop *l = ca__loop();
    ca_task *self = l ? l->current : NULL;
    return C->lock && self &&
           ((struct lock_impl *)C->lock)->owner == self;
}

int ca_cond_init(ca_cond *c, ca_lock *l)
{
    if (!c || !l)
        return -EINVAL;
    struct cond_impl *C = (struct cond_impl *)c;
    C->lock = l;
    C->waiters.head = C->waiters.tail = NULL;
    return 0;
}

int ca_cond_wait(ca_cond *c)
{
    if (!c)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_cond_wait");
    if (!self)
        return -EPERM;
    struct cond_impl *C = (struct cond_impl *)c;
    if (!C->lock)
        return -EINVAL;
    if (!owns(C))
        return -EPERM;
    ca_lock_release(C->lock);
    ca__waiter w = {0};
    int r = ca__wait_in(&C->waiters, &w);
    if (r == 0) {
        int chk = ca__task_check(self);
        if (chk < 0) {
            ca__waitlist_wake_one(&C->waiters, 0); /* pass it on */
            r = chk;
        }
    }
    ca_shield_push();
    int a = ca_lock_acquire(C->lock);
    ca_shield_pop();
    return a < 0 ? a : r;
}

int ca_cond_wait_for(ca_cond *c, int (*pred)(void *arg), void *arg)
{
    if (!c || !pred)
        return -EINVAL;
    while (!pred(arg)) {
        int r = ca_cond_wait(c);
        if (r < 0)
            return r;
    }
    return 0;
}

int ca_cond_notify(ca_cond *c, int n)
{
    if (!c)
        return -EINVAL;
    struct cond_impl *C = (struct cond_impl *)c;
    if (!owns(C))
        return -EPERM;
    int woken = 0;
    while (woken < n && ca__waitlist_wake_one(&C->waiters, 0))
        woken++;
    return woken;
}

int ca_cond_notify_all(ca_cond *c)
{
    if (!c)
        return -EINVAL;
    struct cond_impl *C = (struct cond_impl *)c;
    if (!owns(C))
        return -EPERM;
    return ca__waitlist_wake_all(&C->waiters, 0);
}
