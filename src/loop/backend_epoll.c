/*
 * The epoll backend: every fd is added once with EPOLLIN | EPOLLOUT |
 * EPOLLRDHUP | EPOLLET and stays until it is forgotten.  Timeouts have
 * nanosecond resolution through epoll_pwait2 where the kernel has it.
 */
#include "loop/loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

#ifdef CAWAIT_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

static int have_pwait2 = 1;

static int ep_init(ca_loop *l)
{
#ifdef CAWAIT_HAVE_VALGRIND_H
    /* valgrind 3.19 does not know epoll_pwait2 and warns on every call. */
    if (RUNNING_ON_VALGRIND)
        have_pwait2 = 0;
#endif
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    return l->epfd < 0 ? -errno : 0;
}

static void ep_fini(ca_loop *l)
{
    if (l->epfd >= 0)
        close(l->epfd);
    l->epfd = -1;
}

static int ep_add(ca_loop *l, int fd, uint64_t data)
{
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        .data.u64 = data,
    };
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
        return 0;
    if (errno == EEXIST &&
        epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
        return 0;
    return -errno;
}

static int ep_del(ca_loop *l, int fd)
{
    struct epoll_event ev = {0};
    return epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, &ev) == 0 ? 0 : -errno;
}

static int ep_poll(ca_loop *l, int64_t timeout_ns)
{
    struct epoll_event evs[MAX_EVENTS];
    int n;
    if (have_pwait2 && timeout_ns > 0) {
        struct timespec ts = {.tv_sec = timeout_ns / 1000000000,
                              .tv_nsec = timeout_ns % 1000000000};
        n = epoll_pwait2(l->epfd, evs, MAX_EVENTS, &ts, NULL);
        if (n < 0 && errno == ENOSYS) {
            have_pwait2 = 0;
            return ep_poll(l, timeout_ns);
        }
    } else {
        int ms = timeout_ns < 0 ? -1
                 : timeout_ns == 0
                     ? 0
                     : (int)((timeout_ns + 999999) / 1000000 > 0x7fffffff
                                 ? 0x7fffffff
                                 : (timeout_ns + 999999) / 1000000);
        n = epoll_wait(l->epfd, evs, MAX_EVENTS, ms);
    }
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = evs[i].events;
        int m = 0;
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLPRI))
            m |= CA_READ;
        if (e & EPOLLRDHUP)
            m |= CA__FD_PEER_CLOSED;
        if (e & EPOLLOUT)
            m |= CA_WRITE;
        if (e & EPOLLERR)
            m |= CA_ERROR | CA_READ | CA_WRITE;
        if (e & EPOLLHUP)
            m |= CA_HANGUP | CA_READ;
        ca__loop_fd_event(l, evs[i].data.u64, m);
    }
    return 0;
}

const ca__backend_ops ca__backend_epoll = {
    .name = "epoll",
    .init = ep_init,
    .fini = ep_fini,
    .add = ep_add,
    .del = ep_del,
    .poll = ep_poll,
};
