/*
 * echo_client HOST PORT CONNS SECONDS [MSGSIZE [SERVER_PID]]: the load
 * generator of the echo benchmark, the same for every server (cawait, the
 * epoll reference, asyncio, uvloop, Go).  Plain C with epoll,
 * single-threaded, no cawait, so it loads every server the same way.
 *
 * It opens CONNS TCP connections (TCP_NODELAY) to HOST:PORT; each one does
 * round trips for the whole run: send MSGSIZE bytes, receive MSGSIZE bytes,
 * check they are the bytes sent, send the next message.  The messages
 * differ from one round trip and one connection to the next, so a server
 * that mixes up or drops bytes is caught.  The first WARMUP_S (0.5)
 * seconds are not counted; then it counts the round trips completed in
 * SECONDS seconds and prints
 *
 *     round_trips_per_s <value>
 *     client_cpu_pct <value>
 *
 * on stdout.  client_cpu_pct is the client's own CPU time (user + system)
 * over the measured wall time: near 100 the client, not the server, may be
 * the bottleneck.  Given the server's SERVER_PID, it also reads the
 * server's CPU time (user + system, all threads, /proc/PID/stat, 10 ms
 * ticks) at the start and the end of the measurement and prints
 *
 *     server_cpu_pct <value>
 *     server_cpu_us_per_rt <value>
 *
 * the server's CPU time per round trip being a measure of its efficiency
 * that is less sensitive than the rate to how fast this VM wakes a process
 * on the other CPU.  Exits 1 (with a message on stderr) if the server closes
 * a connection, returns wrong bytes, or an error happens.
 *
 * With ECHO_CLIENT_SPIN=1 in the environment it polls epoll without ever
 * sleeping (bench/run.sh sets it; see the comment at the loop).
 *
 * To keep its own cost low it relies on edge-triggered epoll semantics: a
 * read that returns less than asked means the socket is drained (a new
 * arrival raises a new event), and after a round trip completes nothing
 * more can arrive until the next message is sent.
 * Defaults: CONNS 10, SECONDS 10, MSGSIZE 1024.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WARMUP_S 0.5
#define MAX_CONNS 10000
/* Messages are windows of one pattern at a different offset each time. */
#define PATTERN_SPAN 251

typedef struct conn {
    int fd;
    int id;
    size_t sent, recvd;
    uint64_t round;   /* round trips completed */
    const char *msg;  /* the message of the current round trip */
} conn;

static size_t msgsize;
static char *pattern; /* msgsize + PATTERN_SPAN bytes */
static char *rbuf;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time (user + system) of process pid in seconds, or -1. */
static double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* Fields after the command name, which is in parentheses and may hold
     * spaces: state is field 3, utime and stime fields 14 and 15. */
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                     &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void die(const conn *c, const char *what)
{
    if (c)
        fprintf(stderr, "echo_client: connection %d, round trip %llu: %s\n",
                c->id, (unsigned long long)c->round, what);
    else
        fprintf(stderr, "echo_client: %s\n", what);
    exit(1);
}

static void next_message(conn *c)
{
    c->msg = pattern + (c->round * 7 + (uint64_t)c->id * 13) % PATTERN_SPAN;
    c->sent = c->recvd = 0;
}

/* Send what is left of the message; returns when done or on EAGAIN. */
static void conn_send(conn *c)
{
    while (c->sent < msgsize) {
        ssize_t n = send(c->fd, c->msg + c->sent, msgsize - c->sent,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            die(c, strerror(errno));
        }
        c->sent += (size_t)n;
    }
}

/* Read what is there; returns 1 when a round trip completed. */
static int conn_recv(conn *c)
{
    while (c->recvd < msgsize) {
        size_t want = msgsize - c->recvd;
        ssize_t n = recv(c->fd, rbuf, want, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            die(c, strerror(errno));
        }
        if (n == 0)
            die(c, "the server closed the connection");
        if ((size_t)n > c->sent - c->recvd)
            die(c, "the server sent bytes that were not sent to it");
        if (memcmp(rbuf, c->msg + c->recvd, (size_t)n) != 0)
            die(c, "the echoed bytes differ from the bytes sent");
        c->recvd += (size_t)n;
        if ((size_t)n < want)
            return 0; /* drained: the next arrival raises an event */
    }
    return 1;
}

static int connect_to(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo(host, port, &hints, &res);
    if (r != 0) {
        fprintf(stderr, "echo_client: %s: %s\n", host, gai_strerror(r));
        exit(1);
    }
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    int err = errno;
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "echo_client: connect to %s port %s: %s\n", host,
                port, strerror(err));
        exit(1);
    }
    return fd;
}

static long parse(const char *s, const char *what, long lo, long hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "echo_client: bad %s '%s' (%ld..%ld)\n", what, s, lo,
                hi);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 7) {
        fprintf(stderr,
                "usage: %s HOST PORT CONNS SECONDS [MSGSIZE [SERVER_PID]]\n"
                "  (e.g. 127.0.0.1 PORT 10 10 1024)\n",
                argv[0]);
        return 2;
    }
    const char *host = argv[1], *port = argv[2];
    parse(port, "PORT", 1, 65535);
    int nconns = (int)parse(argv[3], "CONNS", 1, MAX_CONNS);
    char *end = NULL;
    double seconds = strtod(argv[4], &end);
    if (end == argv[4] || *end || !(seconds > 0) || seconds > 1e6) {
        fprintf(stderr, "echo_client: bad SECONDS '%s'\n", argv[4]);
        return 2;
    }
    msgsize = argc >= 6 ? (size_t)parse(argv[5], "MSGSIZE", 1, 64 << 20)
                        : 1024;
    long server_pid = argc == 7 ? parse(argv[6], "SERVER_PID", 1, 1L << 30)
                                : 0;
    if (server_pid && proc_cpu_s(server_pid) < 0) {
        fprintf(stderr, "echo_client: cannot read /proc/%ld/stat\n",
                server_pid);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl; /* CONNS may be large */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    pattern = malloc(msgsize + PATTERN_SPAN);
    rbuf = malloc(msgsize);
    conn *conns = calloc((size_t)nconns, sizeof *conns);
    struct epoll_event *evs = calloc((size_t)nconns, sizeof *evs);
    if (!pattern || !rbuf || !conns || !evs)
        die(NULL, "out of memory");
    /* Not periodic within any window, so a shifted echo is caught too. */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < msgsize + PATTERN_SPAN; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        pattern[i] = (char)((x * 0x2545F4914F6CDD1DULL) >> 56);
    }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die(NULL, strerror(errno));
    for (int i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        c->id = i;
        c->fd = connect_to(host, port);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int fl = fcntl(c->fd, F_GETFL);
        if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
            die(c, strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP |
                                           EPOLLET,
                                 .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die(c, strerror(errno));
    }

    double t0 = now_s();
    double start = t0 + WARMUP_S, stop = start + seconds;
    double cpu0 = 0, scpu0 = 0;
    uint64_t counted = 0;
    int measuring = 0;
    for (int i = 0; i < nconns; i++) {
        next_message(&conns[i]);
        conn_send(&conns[i]);
    }
    /* ECHO_CLIENT_SPIN=1: poll without ever sleeping (epoll_wait with a
     * zero timeout).  A client that sleeps pays a wake-up on the other CPU
     * for nearly every reply, so it saturates first and every fast server
     * measures the same; a spinning client leaves the server the
     * bottleneck. */
    const char *spin_env = getenv("ECHO_CLIENT_SPIN");
    int spin = spin_env && strcmp(spin_env, "1") == 0;
    double last_event = now_s();
    for (;;) {
        int n = epoll_wait(ep, evs, nconns, spin ? 0 : 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(NULL, strerror(errno));
        }
        double t = now_s();
        if (spin) {
            if (n > 0)
                last_event = t;
            else if (t - last_event < 1.0 && !(measuring && t >= stop))
                continue;
        }
        if (!measuring && t >= start) {
            measuring = 1;
            start = t;
            stop = start + seconds;
            cpu0 = cpu_s();
            if (server_pid)
                scpu0 = proc_cpu_s(server_pid);
            counted = 0;
        } else if (measuring && t >= stop) {
            double wall = t - start;
            printf("round_trips_per_s %.0f\n", (double)counted / wall);
            printf("client_cpu_pct %.0f\n", 100.0 * (cpu_s() - cpu0) / wall);
            if (server_pid) {
                double scpu = proc_cpu_s(server_pid) - scpu0;
                printf("server_cpu_pct %.0f\n", 100.0 * scpu / wall);
                if (counted)
                    printf("server_cpu_us_per_rt %.2f\n",
                           scpu * 1e6 / (double)counted);
            }
            fflush(stdout);
            return 0;
        }
        if (n == 0)
            die(NULL, "no reply from the server for 1 s");
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->sent < msgsize)
                conn_send(c);
            if (conn_recv(c)) {
                c->round++;
                counted++;
                next_message(c);
                conn_send(c);
            }
        }
    }
}
