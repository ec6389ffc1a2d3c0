/* Datagram sockets (UDP, Unix) and descriptor passing over Unix sockets. */
#include "net/io.h"
#include "task/task.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static int udp_addr(const char *host, unsigned port, int passive,
                    struct sockaddr_storage *a, socklen_t *len)
{
    char svc[16];
    if (port > 65535)
        return -EINVAL;
    snprintf(svc, sizeof(svc), "%u", port);
    if (!host || !*host) {
        if (!passive)
            return -EINVAL;
        host = "0.0.0.0";
    }
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int r = getaddrinfo(host, svc, &hints, &res);
    if (r == EAI_NONAME)
        return -CA_ENORESOLVER;
    if (r != 0 || !res)
        return -EINVAL;
    memcpy(a, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int udp_socket(const char *host, unsigned port, int do_bind)
{
    struct sockaddr_storage a;
    socklen_t len;
    int r = udp_addr(host, port, do_bind, &a, &len);
    if (r < 0)
        return r;
    int fd = socket(a.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    r = do_bind ? bind(fd, (struct sockaddr *)&a, len)
                : connect(fd, (struct sockaddr *)&a, len);
    if (r < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

int ca_udp_bind(const char *host, unsigned port)
{
    return udp_socket(host, port, 1);
}

int ca_udp_connect(const char *host, unsigned port)
{
    if (!host || !*host || port == 0)
        return -EINVAL;
    return udp_socket(host, port, 0);
}

int ca_unix_dgram(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (!path)
        return fd;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(a.sun_path)) {
        close(fd);
        return -EINVAL;
    }
    memcpy(a.sun_path, path, n);
    if (path[0] == '@')
        a.sun_path[0] = '\0';
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                                (path[0] == '@' ? 0 : 1));
    if (path[0] != '@')
        unlink(path);
    if (bind(fd, (struct sockaddr *)&a, len) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

/* The socket said writable and the send still failed with EAGAIN: a Unix
 * datagram sent with an address to a receiver whose queue is full.  The
 * sender's poll cannot know the destination, and each failed attempt frees
 * the buffer it had taken, a fresh EPOLLOUT edge: waiting for writability
 * again spun (tens of thousands of attempts a second, as asyncio's
 * transport does).  Sleep instead, 50 us doubling to 6.4 ms: nothing would
 * tell us when the receiver reads. */
static int send_backoff(unsigned missed)
{
    unsigned shift = missed - 1 < 7 ? missed - 1 : 7;
    int r = ca_sleep(50e-6 * (double)(1u << shift));
    return r < 0 ? r : 1;
}

ssize_t ca_sendto(int fd, const void *buf, size_t n, const struct sockaddr *to,
                  socklen_t tolen)
{
    if (fd < 0)
        return -EBADF;
    if ((!buf && n) || (!to && tolen))
        return -EINVAL;
    for (unsigned missed = 0;; missed++) {
        ssize_t r = sendto(fd, buf, n, MSG_NOSIGNAL, to, tolen);
        if (r >= 0)
            return r;
        int a = errno == EAGAIN && missed ? send_backoff(missed)
                                          : ca__io_again(fd, CA_WRITE);
        if (a < 0)
            return a;
    }
}

/* One recvmsg: the length, -EMSGSIZE if the datagram did not fit in n
 * bytes (recvfrom's plain return would be n, a silent truncation the caller
 * could not tell from a datagram of exactly n bytes), or -1 with errno. */
static ssize_t recv_one(int fd, void *buf, size_t n, struct sockaddr *from,
                        socklen_t *fromlen)
{
    struct iovec iov = {.iov_base = buf, .iov_len = n};
    struct msghdr msg = {.msg_name = from,
                         .msg_namelen = fromlen ? *fromlen : 0,
                         .msg_iov = &iov, .msg_iovlen = 1};
    ssize_t r = recvmsg(fd, &msg, 0);
    if (r < 0)
        return -1;
    if (fromlen)
        *fromlen = msg.msg_namelen;
    return (msg.msg_flags & MSG_TRUNC) ? -EMSGSIZE : r;
}

ssize_t ca_recvfrom(int fd, void *buf, size_t n, struct sockaddr *from,
                    socklen_t *fromlen)
{
    if (fd < 0)
        return -EBADF;
    if ((!buf && n) || ((from == NULL) != (fromlen == NULL)))
        return -EINVAL;
    for (;;) {
        ssize_t r = recv_one(fd, buf, n, from, fromlen);
        if (r >= 0 || r == -EMSGSIZE)
            return r;
        int a = ca__io_again(fd, CA_READ);
        if (a < 0)
            return a;
    }
}

int ca_send_fd(int sock, int fd)
{
    if (sock < 0 || fd < 0)
        return -EBADF;
    char byte = 'F';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = u.buf,
                         .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    for (;;) {
        ssize_t r = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (r == 1)
            return 0;
        if (r >= 0)
            return -EIO; /* a one-byte message cannot be partly sent */
        int a = ca__io_again(sock, CA_WRITE);
        if (a < 0)
            return a;
    }
}

int ca_recv_fd(int sock)
{
    if (sock < 0)
        return -EBADF;
    for (;;) {
        char byte;
        struct iovec iov = {.iov_base = &byte, .iov_len = 1};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = u.buf,
                             .msg_controllen = sizeof(u.buf)};
        ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (r == 0)
            return -EPIPE;
        if (r > 0) {
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            if (!c || c->cmsg_level != SOL_SOCKET ||
                c->cmsg_type != SCM_RIGHTS ||
                c->cmsg_len != CMSG_LEN(sizeof(int)))
                return -EBADMSG;
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof(int));
            return fd;
        }
        int a = ca__io_again(sock, CA_READ);
        if (a < 0)
            return a;
    }
}
