/* Optimistic I/O helper for the net layer (internal). */
#ifndef CA_NET_IO_H
#define CA_NET_IO_H

#include "cawait.h"

#include <errno.h>

/* After a syscall on fd failed (errno set): 1 if the caller should try it
 * again (EINTR, or EAGAIN and fd has become ready for `events`), else the
 * negative errno (or the wait's -ECANCELED / -ETIMEDOUT) to return. */
static inline int ca__io_again(int fd, int events)
{
    if (errno == EINTR)
        return 1;
    if (errno != EAGAIN)
        return -errno;
    int w = ca_wait_fd(fd, events);
    return w < 0 ? w : 1;
}

#endif
