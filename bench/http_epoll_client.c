/*
 * http_epoll_client URL N CONCURRENCY: the floor of the HTTP `client`
 * benchmark, as bench/echo_epoll.c is the floor of `echo`.  A minimal
 * hand-written single-threaded epoll HTTP/1.1 client, no library: it opens
 * CONCURRENCY keep-alive connections at once (non-blocking connects) and
 * each sends GET after GET until N requests have been answered.  It parses
 * just enough HTTP to be correct: a status line, headers, a Content-Length
 * body (a response without one, or with a status other than 200, is an
 * error).  It does nothing else a real client does (no URL handling beyond
 * http://IPv4:PORT/PATH, no pooling logic, no timeouts, no redirects), so
 * what it measures is the server, the kernel and this machine: no client
 * can be much faster.  bench/run_http.sh runs it beside cawait and the
 * peers as `epoll`.
 *
 * Prints, like http_client_bench:
 *
 *     BENCH client_wall epoll <seconds> s
 *     BENCH client_cpu epoll <seconds> s
 *     BENCH client_rps epoll <requests per second> req/s
 *
 * wall: from before the first connect to the last answer; cpu: user +
 * system time of the whole process (getrusage at the end).  Exits 1 with a
 * message and no BENCH lines on any failure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256
#define MAX_CONC 10000

typedef struct conn {
    int fd;
    int connected;
    int busy;   /* a request is out, its answer not read in full */
    size_t len; /* bytes of the answer in buf */
    char buf[BUF_SIZE];
} conn;

static char request[512];
static size_t request_len;
static size_t total, sent, answered;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "http_epoll_client: %s\n", what);
    exit(1);
}

/* http://A.B.C.D:PORT/PATH (PORT and PATH optional). */
static void parse_url(const char *url, struct sockaddr_in *sa, char *host,
                      size_t hcap, const char **path)
{
    if (strncmp(url, "http://", 7) != 0)
        die("URL must be http://IPV4[:PORT][/PATH]");
    const char *h = url + 7;
    size_t hl = strcspn(h, "/");
    if (hl == 0 || hl >= hcap)
        die("bad host in URL");
    memcpy(host, h, hl);
    host[hl] = '\0';
    *path = h[hl] ? h + hl : "/";
    char ip[64];
    unsigned long port = 80;
    char *colon = strchr(host, ':');
    size_t il = colon ? (size_t)(colon - host) : hl;
    if (il >= sizeof ip)
        die("bad host in URL");
    memcpy(ip, host, il);
    ip[il] = '\0';
    if (colon) {
        char *end;
        port = strtoul(colon + 1, &end, 10);
        if (end == colon + 1 || *end || port == 0 || port > 65535)
            die("bad port in URL");
    }
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1)
        die("the host must be a numeric IPv4 address");
}

static void send_request(conn *c)
{
    ssize_t w = send(c->fd, request, request_len, MSG_NOSIGNAL);
    if (w != (ssize_t)request_len)
        die("send failed or short");
    c->busy = 1;
    c->len = 0;
    sent++;
}

/* Length of a complete answer at the start of c->buf, 0 if incomplete. */
static size_t complete_answer(conn *c)
{
    c->buf[c->len] = '\0';
    const char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end)
        return 0;
    if (strncmp(c->buf, "HTTP/1.1 200 ", 13) != 0)
        die("an answer other than HTTP/1.1 200");
    size_t head = (size_t)(end - c->buf) + 4;
    const char *p = c->buf;
    long long clen = -1;
    while ((p = strstr(p, "\r\n")) != NULL && p < end) {
        p += 2;
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            clen = strtoll(p + 15, NULL, 10);
    }
    if (clen < 0 || (size_t)clen > BUF_SIZE - 1 - head)
        die("an answer without a usable Content-Length");
    return c->len >= head + (size_t)clen ? head + (size_t)clen : 0;
}

/* Read what there is; on a whole answer, send the next request. */
static void on_readable(conn *c)
{
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->len, BUF_SIZE - 1 - c->len, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (r <= 0)
            die("the server closed a connection or recv failed");
        c->len += (size_t)r;
        size_t n = complete_answer(c);
        if (n == 0) {
            if (c->len == BUF_SIZE - 1)
                die("answer too large");
            continue;
        }
        if (n != c->len)
            die("bytes after an answer that was not asked for");
        c->busy = 0;
        answered++;
        if (sent < total)
            send_request(c);
        return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s URL N CONCURRENCY\n", argv[0]);
        return 2;
    }
    char *e1, *e2;
    unsigned long long n = strtoull(argv[2], &e1, 10);
    unsigned long conc = strtoul(argv[3], &e2, 10);
    if (*e1 || e1 == argv[2] || n == 0 || argv[2][0] == '-' || *e2 ||
        e2 == argv[3] || conc == 0 || conc > MAX_CONC) {
        fprintf(stderr, "usage: %s URL N CONCURRENCY (N >= 1, 1 <= "
                        "CONCURRENCY <= %d)\n",
                argv[0], MAX_CONC);
        return 2;
    }
    total = (size_t)n;
    if (conc > total)
        conc = (unsigned long)total;
    struct sockaddr_in sa;
    char host[256];
    const char *path;
    parse_url(argv[1], &sa, host, sizeof host, &path);
    int rl = snprintf(request, sizeof request,
                      "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\n\r\n",
                      path, host);
    if (rl < 0 || (size_t)rl >= sizeof request)
        die("URL too long");
    request_len = (size_t)rl;

    conn *conns = calloc(conc, sizeof(*conns));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || ep < 0)
        die("out of memory or no epoll");
    double t0 = now_s();
    for (unsigned long i = 0; i < conc; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            die("socket failed");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 &&
            errno != EINPROGRESS)
            die("connect failed");
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET,
                                 .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl failed");
    }
    while (answered < total) {
        struct epoll_event evs[MAX_EVENTS];
        int k = epoll_wait(ep, evs, MAX_EVENTS, 10000);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            die("no progress for 10 s");
        for (int i = 0; i < k; i++) {
            conn *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLERR)
                die("connection failed");
            if (!c->connected && (evs[i].events & EPOLLOUT)) {
                c->connected = 1;
                if (sent < total)
                    send_request(c);
            }
            if (c->busy && (evs[i].events & (EPOLLIN | EPOLLHUP)))
                on_readable(c);
        }
    }
    double wall = now_s() - t0;
    for (unsigned long i = 0; i < conc; i++)
        close(conns[i].fd);
    close(ep);
    free(conns);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("BENCH client_wall epoll %.4f s\n", wall);
    printf("BENCH client_cpu epoll %.4f s\n", cpu);
    printf("BENCH client_rps epoll %.0f req/s\n", (double)total / wall);
    return 0;
}
