/*
 * echo_epoll PORT: the reference TCP echo server for the echo benchmark: a
 * minimal hand-written single-threaded epoll server (non-blocking sockets,
 * edge-triggered, no library), the "near the limit" that cawait's
 * echo_server is compared with.  bench/run.sh drives it with echo_client.
 *
 * It listens on 127.0.0.1:PORT (0: any free port), prints
 *
 *     listening on <port>
 *
 * on stdout, and echoes every byte back until SIGINT or SIGTERM.  Like the
 * other servers it sets TCP_NODELAY on every connection (asyncio, uvloop and
 * Go do by default) and raises RLIMIT_NOFILE to the hard limit.
 *
 * Per readiness event it does the textbook edge-triggered loop: read until
 * EAGAIN, writing back each chunk at once.  Reads go to one shared buffer; a
 * connection gets a buffer of its own only when the kernel does not take a
 * whole chunk (a peer that does not read): it then stops reading until
 * EPOLLOUT has flushed it (back pressure).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536
#define MAX_EVENTS 256

typedef struct conn {
    int fd;
    char *pending; /* bytes the kernel did not take yet, or NULL */
    size_t off, len;
} conn;

static volatile sig_atomic_t stop_flag;
static char rbuf[READ_SIZE];

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void conn_close(int ep, conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Send what is pending.  Returns 1 if all of it went out, 0 if the kernel
 * buffer is full (wait for EPOLLOUT), -1 on error. */
static int conn_flush(conn *c)
{
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->pending + c->off, c->len - c->off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->off += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    return 1;
}

/* Echo chunk [p, p + n): send it, keep what the kernel does not take. */
static int conn_echo(conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -1;
            c->pending = malloc(n);
            if (!c->pending)
                return -1;
            memcpy(c->pending, p, n);
            c->off = 0;
            c->len = n;
            return 0;
        }
        p += w;
        n -= (size_t)w;
    }
    return 1;
}

/* Read until EAGAIN (or until the kernel stops taking the echo).  Returns
 * -1 when the connection is finished (EOF or error). */
static int conn_read(conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        if (n == 0)
            return -1;
        int r = conn_echo(c, rbuf, (size_t)n);
        if (r <= 0)
            return r; /* 0: back pressure, resume on EPOLLOUT */
    }
}

static int listen_on(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((unsigned short)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(fd, SOMAXCONN) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void accept_all(int ep, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                perror("echo_epoll: accept4");
            return; /* EMFILE...: a benchmark does not need more */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP |
                                           EPOLLET,
                                 .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        /* Data may have arrived with the handshake: the ET registration
         * reports it, nothing to do here. */
    }
}

int main(int argc, char **argv)
{
    char *end = NULL;
    unsigned long port = argc == 2 ? strtoul(argv[1], &end, 10) : 0;
    if (argc != 2 || end == argv[1] || *end || port > 65535) {
        fprintf(stderr, "usage: %s PORT   (0: any free port)\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = listen_on((unsigned)port);
    if (lfd < 0) {
        perror("echo_epoll: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
        perror("echo_epoll: epoll");
        return 1;
    }
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &alen);
    printf("listening on %u\n", (unsigned)ntohs(a.sin_port));
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        /* The timeout only bounds the wait for a signal that lands between
         * the flag test and epoll_wait. */
        int n = epoll_wait(ep, evs, MAX_EVENTS, 500);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("echo_epoll: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                accept_all(ep, lfd);
                continue;
            }
            int r = 0;
            if (c->pending) {
                /* Back pressure: flush first, then read what waited. */
                r = conn_flush(c);
                if (r > 0)
                    r = conn_read(c);
            } else if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP |
                                        EPOLLERR)) {
                r = conn_read(c);
            }
            if (r < 0)
                conn_close(ep, c);
        }
    }
    /* Connections are left to the kernel: the process exits. */
    close(lfd);
    close(ep);
    return 0;
}
