/*
 * idle_client HOST PORT N: the client of the idle benchmark.  Opens N TCP
 * connections to an echo server at HOST:PORT and holds them, idle, until it
 * is killed (SIGTERM, SIGINT).
 *
 * Every connection makes one small round trip first (8 bytes out, the same
 * 8 bytes back, checked): once it is answered, the server has accepted the
 * connection and its handler has run and is waiting for the next read,
 * which is the state the benchmark measures.  At most WINDOW connections
 * are being set up at a time, so the listen backlog never overflows (a
 * dropped SYN would cost a 1 s retransmission).  When all N are ready it
 * prints
 *
 *     connected N
 *
 * on stdout (bench/run.sh then reads the server's VmRSS) and sleeps.  The
 * connections are closed with a reset (SO_LINGER 0) when the process dies,
 * so they leave no TIME_WAIT behind: run.sh opens 10,000 of them per server
 * and the ephemeral port range holds only ~28,000.
 *
 * RLIMIT_NOFILE is raised to the hard limit; N must fit under it.  Exits 1
 * with a message if a connection fails or makes no progress for 10 s.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define WINDOW 256
#define PING_LEN 8

static const char ping[PING_LEN + 1] = "idle-rtt";

typedef struct conn {
    int fd;
    int state; /* 0: connecting, 1: waiting for the echo, 2: ready */
    size_t got;
} conn;

static void fail(const char *what, int err)
{
    fprintf(stderr, "idle_client: %s: %s\n", what, strerror(err));
    exit(1);
}

/* Start a non-blocking connect; returns the fd. */
static int start_connect(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    if (fd < 0)
        fail("socket", errno);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS)
        fail("connect", errno);
    return fd;
}

/* Advance c as far as it goes without blocking; returns 1 once ready. */
static int advance(conn *c)
{
    if (c->state == 0) {
        int err = 0;
        socklen_t elen = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err == EINPROGRESS || err == EALREADY)
            return 0;
        if (err)
            fail("connect", err);
        /* Connected (or still in progress: send says so with EAGAIN,
         * ENOTCONN). */
        ssize_t n = send(c->fd, ping, PING_LEN, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == ENOTCONN)
                return 0;
            fail("send", errno);
        }
        if (n != PING_LEN)
            fail("send", EIO);
        c->state = 1;
    }
    if (c->state == 1) {
        char buf[PING_LEN];
        for (;;) {
            ssize_t n = recv(c->fd, buf, PING_LEN - c->got, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    return 0;
                fail("recv", errno);
            }
            if (n == 0)
                fail("recv", ECONNRESET);
            if (memcmp(buf, ping + c->got, (size_t)n) != 0) {
                fprintf(stderr, "idle_client: wrong echo\n");
                exit(1);
            }
            c->got += (size_t)n;
            if (c->got == PING_LEN)
                break;
        }
        c->state = 2;
    }
    return 1;
}

int main(int argc, char **argv)
{
    char *end = NULL;
    long n = argc == 4 ? strtol(argv[3], &end, 10) : 0;
    if (argc != 4 || end == argv[3] || *end || n < 1 || n > 1000000) {
        fprintf(stderr, "usage: %s HOST PORT N\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)n + 16 > rl.rlim_cur) {
        fprintf(stderr,
                "idle_client: %ld connections need %ld descriptors, the "
                "limit is %llu (ulimit -Hn)\n",
                n, n + 16, (unsigned long long)rl.rlim_cur);
        return 1;
    }

    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo(argv[1], argv[2], &hints, &res);
    if (r != 0) {
        fprintf(stderr, "idle_client: %s: %s\n", argv[1], gai_strerror(r));
        return 1;
    }

    conn *conns = calloc((size_t)n, sizeof *conns);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || ep < 0)
        fail("setup", errno ? errno : ENOMEM);
    struct epoll_event evs[WINDOW];
    long started = 0, ready = 0, pending = 0;
    while (ready < n) {
        while (pending < WINDOW && started < n) {
            conn *c = &conns[started++];
            c->fd = start_connect(res->ai_addr, res->ai_addrlen);
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET,
                                     .data.ptr = c};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                fail("epoll_ctl", errno);
            pending++;
        }
        int k = epoll_wait(ep, evs, WINDOW, 10000);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait", errno);
        }
        if (k == 0) {
            fprintf(stderr,
                    "idle_client: no progress for 10 s (%ld of %ld "
                    "connections ready)\n",
                    ready, n);
            return 1;
        }
        for (int i = 0; i < k; i++) {
            conn *c = evs[i].data.ptr;
            if (c->state != 2 && advance(c)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                pending--;
                ready++;
            }
        }
    }
    freeaddrinfo(res);
    printf("connected %ld\n", n);
    fflush(stdout);
    for (;;)
        pause(); /* until a signal kills us; the kernel resets the sockets */
}
