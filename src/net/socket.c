/*
 * Sockets: TCP and Unix stream sockets, accept, and the fd read/write loops.
 * Every call is optimistic: try the syscall, park on EAGAIN with
 * ca_wait_fd (which registers the fd with the backend once).
 */
#include "task/task.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Numeric addresses and "localhost" only (no blocking resolver inside the
 * loop): fills up to `max` addresses, returns how many or a negative errno. */
static int resolve(const char *host, unsigned port, int passive,
                   struct sockaddr_storage *out, socklen_t *lens, int max)
{
    char svc[16];
    if (port > 65535)
        return -EINVAL;
    snprintf(svc, sizeof(svc), "%u", port);
    if (!host || !*host) {
        if (!passive)
            return -EINVAL;
        struct sockaddr_in *a = (struct sockaddr_in *)&out[0];
        memset(a, 0, sizeof(*a));
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        lens[0] = sizeof(*a);
        return 1;
    }
    const char *names[2] = {host, NULL};
    if (strcmp(host, "localhost") == 0) {
        names[0] = "::1";
        names[1] = "127.0.0.1";
    }
    int n = 0;
    for (int i = 0; i < 2 && names[i] && n < max; i++) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
        struct addrinfo *res = NULL;
        int r = getaddrinfo(names[i], svc, &hints, &res);
        if (r == EAI_NONAME)
            return -CA_ENORESOLVER;
        if (r != 0)
            return -EINVAL;
        for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
            memcpy(&out[n], ai->ai_addr, ai->ai_addrlen);
            lens[n++] = ai->ai_addrlen;
        }
        freeaddrinfo(res);
    }
    return n ? n : -CA_ENORESOLVER;
}

/* Connect fd to addr, waiting for the handshake.  0 or a negative errno. */
static int connect_fd(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (connect(fd, addr, len) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EINTR)
        return -errno;
    int r = ca_wait_fd(fd, CA_WRITE);
    if (r < 0)
        return r;
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        return -errno;
    return -err;
}

int ca_tcp_connect(const char *host, unsigned port)
{
    if (!host || !*host || port == 0 || port > 65535)
        return -EINVAL;
    if (!ca__task_self("ca_tcp_connect"))
        return -EPERM;
    struct sockaddr_storage addrs[4];
    socklen_t lens[4];
    int n = resolve(host, port, 0, addrs, lens, 4);
    if (n < 0)
        return n;
    int err = -ECONNREFUSED;
    for (int i = 0; i < n; i++) {
        int fd = socket(addrs[i].ss_family,
                        SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int r = connect_fd(fd, (struct sockaddr *)&addrs[i], lens[i]);
        if (r == 0)
            return fd;
        ca_close(fd);
        err = r;
        if (r == -ECANCELED || r == -ETIMEDOUT)
            break; /* the caller's cancellation or deadline */
    }
    return err;
}

static int listen_fd(int fd, const ca_listen_opts *opts)
{
    int backlog = opts && opts->backlog > 0 ? opts->backlog : SOMAXCONN;
    return listen(fd, backlog) == 0 ? 0 : -errno;
}

int ca_tcp_listen(const char *host, unsigned port, const ca_listen_opts *opts)
{
    struct sockaddr_storage addrs[2];
    socklen_t lens[2];
    int n = resolve(host, port, 1, addrs, lens, 2);
    if (n < 0)
        return n;
    /* "localhost" resolves to ::1 first; listening prefers IPv4 so that
     * clients using 127.0.0.1 reach it. */
    int pick = 0;
    for (int i = 0; i < n; i++)
        if (addrs[i].ss_family == AF_INET) {
            pick = i;
            break;
        }
    int fd = socket(addrs[pick].ss_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (opts && opts->reuse_port &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (addrs[pick].ss_family == AF_INET6 && opts && opts->v6_only)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&addrs[pick], lens[pick]) < 0)
        goto fail;
    int r = listen_fd(fd, opts);
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
fail:
    r = -errno;
    close(fd);
    return r;
}

static int unix_addr(const char *path, struct sockaddr_un *a, socklen_t *len)
{
    size_t n = path ? strlen(path) : 0;
    if (n == 0 || n >= sizeof(a->sun_path))
        return -EINVAL;
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, n);
    if (path[0] == '@')
        a->sun_path[0] = '\0'; /* abstract name */
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                       (path[0] == '@' ? 0 : 1));
    return 0;
}

int ca_unix_listen(const char *path, const ca_listen_opts *opts)
{
    struct sockaddr_un a;
    socklen_t len;
    int r = unix_addr(path, &a, &len);
    if (r < 0)
        return r;
    /* A stale socket file from an earlier run is replaced; anything else at
     * that path is left alone (bind then fails with EADDRINUSE). */
    struct stat st;
    if (path[0] != '@' && stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&a, len) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    r = listen_fd(fd, opts);
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
}

int ca_unix_connect(const char *path)
{
    struct sockaddr_un a;
    socklen_t len;
    int r = unix_addr(path, &a, &len);
    if (r < 0)
        return r;
    if (!ca__task_self("ca_unix_connect"))
        return -EPERM;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    r = connect_fd(fd, (struct sockaddr *)&a, len);
    if (r < 0) {
        ca_close(fd);
        return r;
    }
    return fd;
}

int ca_accept(int lfd, struct sockaddr *peer, socklen_t *len)
{
    if (lfd < 0)
        return -EBADF;
    if ((peer == NULL) != (len == NULL))
        return -EINVAL;
    if (!ca__task_self("ca_accept"))
        return -EPERM;
    for (;;) {
        int fd = accept4(lfd, peer, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            return fd;
        switch (errno) {
        case EAGAIN:
            break;
        case EINTR:
        case ECONNABORTED: /* the peer gave up before we accepted */
            continue;
        default:
            return -errno;
        }
        int r = ca_wait_fd(lfd, CA_READ);
        if (r < 0)
            return r;
    }
}

int ca_sock_port(int fd)
{
    struct sockaddr_storage a;
    socklen_t len = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return -errno;
    if (a.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&a)->sin_port);
    if (a.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
    return -EAFNOSUPPORT;
}

ssize_t ca_read(int fd, void *buf, size_t n)
{
    if (!buf && n)
        return -EINVAL;
    for (;;) {
        ssize_t r = read(fd, buf, n);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int w = ca_wait_fd(fd, CA_READ);
        if (w < 0)
            return w;
    }
}

ssize_t ca_write(int fd, const void *buf, size_t n)
{
    if (!buf && n)
        return -EINVAL;
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = send(fd, p + done, n - done, MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK)
            r = write(fd, p + done, n - done);
        if (r >= 0) {
            done += (size_t)r;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int w = ca_wait_fd(fd, CA_WRITE);
        if (w < 0)
            return w;
    }
    return (ssize_t)n;
}
