/* Readiness waits on any fd, for tasks. */
#include "task/task.h"

#include <errno.h>
#include <unistd.h>

struct fd_waiter {
    ca__fdwait w;
    ca_task *task;
};

static void fd_waiter_wake(ca__fdwait *w, int result)
{
    struct fd_waiter *f = (struct fd_waiter *)w;
    ca__task_wake(f->task, result);
}

int ca_wait_fd(int fd, int events)
{
    if (events & ~(CA_READ | CA_WRITE) || !(events & (CA_READ | CA_WRITE)))
        return -EINVAL;
    if (fd < 0)
        return -EBADF;
    ca_task *self = ca__task_self("ca_wait_fd");
    if (!self)
        return -EPERM;
    ca_loop *l = ca__loop();
    int r = ca__task_check(self);
    if (r < 0)
        return r;
    r = ca__fd_register(l, fd);
    if (r < 0)
        return r;
    int got = ca__fd_take_ready(l, fd, events);
    if (got)
        return got;
    struct fd_waiter f = {.w = {.fd = fd, .events = events,
                                .wake = fd_waiter_wake},
                          .task = self};
    ca__fd_add_waiter(l, &f.w);
    r = ca__task_park(self, INT64_MAX);
    if (r <= 0 || r == CA__WAIT_TIMEOUT)
        ca__fd_remove_waiter(l, &f.w);
    return r;
}

int ca_fd_forget(int fd)
{
    ca_loop *l = ca__loop();
    if (fd < 0)
        return -EBADF;
    if (!l)
        return -CA_ENOLOOP;
    return ca__fd_forget(l, fd);
}

int ca_close(int fd)
{
    if (fd < 0)
        return -EBADF;
    ca_loop *l = ca__loop();
    if (l)
        ca__fd_forget(l, fd);
    return close(fd) == 0 ? 0 : -errno;
}
