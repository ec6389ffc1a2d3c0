/* Event: a flag; set wakes every waiter, wait returns at once if set. */
#include "sync/sync.h"

#include <errno.h>

int ca_event_set(ca_event *e)
{
    if (!e)
        return -EINVAL;
    struct event_impl *E = (struct event_impl *)e;
    E->set = 1;
    ca__waitlist_wake_all(&E->waiters, 0);
    return 0;
}

int ca_event_clear(ca_event *e)
{
    if (!e)
        return -EINVAL;
    ((struct event_impl *)e)->set = 0;
    return 0;
}

int ca_event_is_set(const ca_event *e)
{
    return e && ((const struct event_impl *)e)->set;
}

int ca_event_wait(ca_event *e)
{
    if (!e)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_event_wait");
    if (!self)
        return -EPERM;
    struct event_impl *E = (struct event_impl *)e;
    if (E->set)
        return 0;
    ca__waiter w = {0};
    return ca__wait_in(&E->waiters, &w);
}
