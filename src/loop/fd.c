/*
 * The fd table: registration with the backend (once per fd, edge-
 * triggered, for both directions), readiness seen while nobody waited, and
 * the waiters.  Event data carries the fd and its generation, so an event
 * for an fd that was forgotten (and perhaps reused) is never delivered.
 */
#include "loop/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

static int table_reserve(ca_loop *l, int fd)
{
    if (fd < l->nfds)
        return 0;
    int n = l->nfds ? l->nfds : 64;
    while (n <= fd)
        n *= 2;
    ca__fdent *t = realloc(l->fds, (size_t)n * sizeof(*t));
    if (!t)
        return -ENOMEM;
    memset(t + l->nfds, 0, (size_t)(n - l->nfds) * sizeof(*t));
    l->fds = t;
    l->nfds = n;
    return 0;
}

static inline uint64_t ev_data(int fd, uint32_t gen)
{
    return (uint64_t)(uint32_t)fd | ((uint64_t)gen << 32);
}

int ca__fd_register(ca_loop *l, int fd)
{
    if (fd < 0)
        return -EBADF;
    int r = table_reserve(l, fd);
    if (r < 0)
        return r;
    ca__fdent *e = &l->fds[fd];
    if (e->registered)
        return 0;
    r = l->backend->add(l, fd, ev_data(fd, e->gen));
    if (r == -EPERM) {
        /* Regular files and directories do not poll: always ready. */
        if (fcntl(fd, F_GETFD) < 0)
            return -EBADF;
        e->always_ready = 1;
        e->registered = 1;
        return 0;
    }
    if (r < 0)
        return r;
    e->registered = 1;
    e->always_ready = 0;
    return 0;
}

int ca__fd_take_ready(ca_loop *l, int fd, int events)
{
    ca__fdent *e = &l->fds[fd];
    if (e->always_ready)
        return events;
    int got = e->ready & (events | CA_ERROR | CA_HANGUP);
    if (got)
        e->ready &= (uint8_t) ~(events & (CA_READ | CA_WRITE));
    return got;
}

int ca__fd_peer_closed(const ca_loop *l, int fd)
{
    return l && fd >= 0 && fd < l->nfds &&
           (l->fds[fd].ready & CA__FD_PEER_CLOSED);
}

void ca__fd_add_waiter(ca_loop *l, ca__fdwait *w)
{
    ca__fdent *e = &l->fds[w->fd];
    w->prev = NULL;
    w->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = w;
    e->waiters = w;
}

void ca__fd_remove_waiter(ca_loop *l, ca__fdwait *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else if (w->fd < l->nfds && l->fds[w->fd].waiters == w)
        l->fds[w->fd].waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
}

void ca__loop_fd_event(ca_loop *l, uint64_t data, int events)
{
    if (ca__loop_is_wake(data)) {
        ca__loop_wake_event(l);
        return;
    }
    int fd = (int)(uint32_t)data;
    uint32_t gen = (uint32_t)(data >> 32);
    if (fd >= l->nfds)
        return;
    ca__fdent *e = &l->fds[fd];
    if (!e->registered || e->gen != gen)
        return; /* stale: the fd was forgotten */
    e->ready |= (uint8_t)events;
    ca__fdwait *w = e->waiters;
    while (w) {
        ca__fdwait *next = w->next;
        int got = events & (w->events | CA_ERROR | CA_HANGUP);
        if (got) {
            ca__fd_remove_waiter(l, w);
            e->ready &= (uint8_t) ~(w->events & (CA_READ | CA_WRITE));
            w->wake(w, got);
        }
        w = next;
    }
}

int ca__fd_forget(ca_loop *l, int fd)
{
    if (fd < 0)
        return -EBADF;
    if (fd >= l->nfds)
        return 0;
    ca__fdent *e = &l->fds[fd];
    if (e->registered && !e->always_ready)
        l->backend->del(l, fd);
    e->registered = 0;
    e->always_ready = 0;
    e->ready = 0;
    e->gen++;
    while (e->waiters) {
        ca__fdwait *w = e->waiters;
        ca__fd_remove_waiter(l, w);
        w->wake(w, -EBADF);
    }
    return 0;
}

void ca__fd_table_free(ca_loop *l)
{
    free(l->fds);
    l->fds = NULL;
    l->nfds = 0;
}
