/* Networking: sockets, streams and servers on loopback. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An echo handler: lines back, upper-cased first letter, until EOF. */
static int echo_handler(ca_stream *s, void *arg)
{
    (void)arg;
    char buf[4096];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof(buf));
        if (n <= 0)
            return (int)n;
        int r = ca_stream_write(s, buf, (size_t)n);
        if (r == 0)
            r = ca_stream_drain(s);
        if (r < 0)
            return r;
    }
}

static int echo_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, NULL), 0);
    int port = ca_server_port(srv);
    ASSERT_GT(port, 0);

    ca_stream *c;
    ASSERT_EQ(ca_open_connection(&c, "127.0.0.1", (unsigned)port, NULL), 0);
    ASSERT_EQ(ca_stream_write(c, "hello\nworld\npartial", 19), 0);
    char line[64];
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 6);
    ASSERT_STREQ(line, "hello\n");
    ASSERT_EQ(ca_stream_readuntil(c, "ld\n", 3, line, sizeof(line)), 6);
    ASSERT(memcmp(line, "world\n", 6) == 0);
    char part[7];
    ASSERT_EQ(ca_stream_readexactly(c, part, 7), 0);
    ASSERT(memcmp(part, "partial", 7) == 0);

    /* a large payload round trip (several reads, back pressure) */
    enum { BIG = 1 << 20 };
    static char out[BIG], in[BIG];
    for (int i = 0; i < BIG; i++)
        out[i] = (char)(i * 7);
    ASSERT_EQ(ca_stream_write(c, out, BIG), 0);
    ASSERT_EQ(ca_stream_drain(c), 0);
    ASSERT_EQ(ca_stream_readexactly(c, in, BIG), 0);
    ASSERT(memcmp(in, out, BIG) == 0);

    /* half close: the server sees EOF and closes; we see EOF */
    ASSERT_EQ(ca_stream_write(c, "tail", 4), 0);
    ASSERT_EQ(ca_stream_write_eof(c), 0);
    ASSERT_EQ(ca_stream_write(c, "x", 1), -EPIPE);
    char rest[16];
    ASSERT_EQ(ca_stream_readexactly(c, rest, 8), -CA_EINCOMPLETE);
    ASSERT_EQ(ca_stream_read(c, rest, sizeof(rest)), 4); /* kept readable */
    ASSERT(memcmp(rest, "tail", 4) == 0);
    ASSERT_EQ(ca_stream_read(c, rest, sizeof(rest)), 0);
    ASSERT(ca_stream_at_eof(c));
    ASSERT_EQ(ca_stream_close(c), 0);

    /* localhost tries ::1 first, then 127.0.0.1 */
    ASSERT_EQ(ca_open_connection(&c, "localhost", (unsigned)port, NULL), 0);
    ASSERT_EQ(ca_stream_write(c, "ping\n", 5), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 5);
    ASSERT_EQ(ca_stream_close(c), 0);
    ASSERT_EQ(ca_server_close(srv, 1.0), 0);

    /* errors */
    ASSERT_EQ(ca_tcp_connect("127.0.0.1", (unsigned)port), -ECONNREFUSED);
    ASSERT_EQ(ca_tcp_connect(NULL, 80), -EINVAL);
    ASSERT_EQ(ca_tcp_connect("127.0.0.1", 70000), -EINVAL);
    ASSERT_EQ(ca_serve(NULL, NULL, 0, echo_handler, NULL, NULL), -EINVAL);
    return 0;
}

static void test_echo_and_stream_reads(void)
{
    ASSERT_EQ(ca_run(echo_main, NULL), 0);
}

/* ---- limits: records larger than the limit fail without losing data ---- */

static int limit_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *s;
    ca_stream_opts o = {.limit = 16};
    ASSERT_EQ(ca_stream_open(&s, sv[0], &o), 0);
    const char *msg = "0123456789abcdefghijXYZ\nshort\n";
    ASSERT_EQ(ca_write(sv[1], msg, strlen(msg)), (ssize_t)strlen(msg));
    char line[64];
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), -EMSGSIZE);
    /* nothing was consumed: the bytes are still there */
    char head[10];
    ASSERT_EQ(ca_stream_readexactly(s, head, 10), 0);
    ASSERT(memcmp(head, "0123456789", 10) == 0);
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), 14);
    ASSERT_STREQ(line, "abcdefghijXYZ\n");
    ASSERT_EQ(ca_stream_readline(s, line, 4), -EMSGSIZE); /* buffer too small */
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), 6);
    ca_close(sv[1]);
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), 0); /* EOF */
    ASSERT_EQ(ca_stream_readuntil(s, "", 0, line, 8), -EINVAL);
    ASSERT_EQ(ca_stream_close(s), 0);
    return 0;
}

static void test_stream_limits(void)
{
    ASSERT_EQ(ca_run(limit_main, NULL), 0);
}

/* ---- a short read, then the FIN that came with it ------------------------- */

/*
 * After a short read of a stream socket the stream waits for the next edge
 * instead of calling read() for an EAGAIN.  When the peer's FIN arrives in
 * the same edge as the data, no edge follows: the stream must still see the
 * end (the loop records EPOLLRDHUP), not wait forever.  Also over TCP, and
 * with more data following a short read in a later turn.
 */
static int fin_sender(void *a)
{
    int fd = *(int *)a;
    /* Both before the loop polls: the reader's one edge carries both. */
    if (write(fd, "hello", 5) != 5)
        return -EIO;
    return shutdown(fd, SHUT_WR) == 0 ? 0 : -errno;
}

static int more_sender(void *a)
{
    int fd = *(int *)a;
    for (int i = 0; i < 3; i++) {
        int r = ca_sleep(0.01);
        if (r < 0)
            return r;
        if (write(fd, "abc", 3) != 3)
            return -EIO;
    }
    return shutdown(fd, SHUT_WR) == 0 ? 0 : -errno;
}

static void short_read_case(int rfd, int wfd, ca_fn sender, const char *want)
{
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, rfd, NULL), 0);
    ca_task *t = ca_spawn(sender, &wfd);
    ASSERT(t);
    char buf[4096], got[64];
    size_t len = 0;
    ASSERT_EQ(ca_deadline_push(5.0), 0);
    ssize_t n;
    while ((n = ca_stream_read(s, buf, sizeof(buf))) > 0) {
        ASSERT(len + (size_t)n < sizeof(got));
        memcpy(got + len, buf, (size_t)n);
        len += (size_t)n;
    }
    ASSERT_EQ(n, 0); /* the end, not -ETIMEDOUT */
    ASSERT_EQ(ca_deadline_pop(), 0);
    got[len] = 0;
    ASSERT_STREQ(got, want);
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ASSERT_EQ(ca_stream_close(s), 0);
    ca_close(wfd);
}

static int short_fin_main(void *a)
{
    (void)a;
    int sv[2];
    for (int round = 0; round < 2; round++) {
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                             0, sv),
                  0);
        short_read_case(sv[0], sv[1], round ? more_sender : fin_sender,
                        round ? "abcabcabc" : "hello");
    }
    /* TCP on loopback: the reader's side first waits on an empty socket. */
    for (int round = 0; round < 2; round++) {
        int lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
        ASSERT_GE(lfd, 0);
        int port = ca_sock_port(lfd);
        ASSERT(port > 0);
        int cfd = ca_tcp_connect("127.0.0.1", (unsigned)port);
        ASSERT_GE(cfd, 0);
        int afd = ca_accept(lfd, NULL, NULL);
        ASSERT_GE(afd, 0);
        ca_close(lfd);
        short_read_case(afd, cfd, round ? more_sender : fin_sender,
                        round ? "abcabcabc" : "hello");
    }
    return 0;
}

static void test_short_read_then_fin(void)
{
    ASSERT_EQ(ca_run(short_fin_main, NULL), 0);
}

/* ---- a blocking fd handed to ca_stream_open -------------------------------- */

/*
 * A plain socketpair() is blocking.  The stream must make it non-blocking:
 * otherwise its reader sits in read() and its writer in send(), and the
 * whole loop with them (here the sender task would never run, and the
 * test would hang until the runner kills it).
 */
static int late_sender(void *a)
{
    int fd = *(int *)a;
    int r = ca_sleep(0.01);
    if (r < 0)
        return r;
    return write(fd, "late\n", 5) == 5 ? 0 : -EIO;
}

static int blocking_fd_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, sv[0], NULL), 0);
    ASSERT(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
    ca_task *t = ca_spawn(late_sender, &sv[1]);
    ASSERT(t);
    char line[16];
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), 5);
    ASSERT_STREQ(line, "late\n");
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    /* The writer side too: a write bigger than the socket buffer queues
     * the rest instead of blocking in send(). */
    static char big[4 << 20];
    ASSERT_EQ(ca_stream_write(s, big, sizeof(big)), 0);
    ASSERT_GT(ca_stream_write_buffered(s), 0);
    ca_stream *bad;
    ASSERT_EQ(ca_stream_open(&bad, -1, NULL), -EINVAL);
    int fd = dup(sv[1]);
    ASSERT_GE(fd, 0);
    close(fd);
    ASSERT_EQ(ca_stream_open(&bad, fd, NULL), -EBADF);
    ca_close(sv[1]);
    ASSERT_EQ(ca_stream_close(s), -EPIPE);
    return 0;
}

static void test_stream_open_blocking_fd(void)
{
    ASSERT_EQ(ca_run(blocking_fd_main, NULL), 0);
}

/* ---- Unix sockets ---------------------------------------------------------- */

static int unix_server(void *a)
{
    int lfd = *(int *)a;
    int fd = ca_accept(lfd, NULL, NULL);
    if (fd < 0)
        return fd;
    char buf[16];
    ssize_t n = ca_read(fd, buf, sizeof(buf));
    if (n > 0)
        ca_write(fd, buf, (size_t)n);
    ca_close(fd);
    return (int)n;
}

static int unix_main(void *a)
{
    (void)a;
    const char *paths[2] = {"/tmp/cawait-test.sock", "@cawait-test-abstract"};
    for (int i = 0; i < 2; i++) {
        int lfd = ca_unix_listen(paths[i], NULL);
        ASSERT_GE(lfd, 0);
        ca_task *t = ca_spawn(unix_server, &lfd);
        int fd = ca_unix_connect(paths[i]);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(ca_write(fd, "unix", 4), 4);
        char buf[8];
        ASSERT_EQ(ca_read(fd, buf, sizeof(buf)), 4);
        ASSERT(memcmp(buf, "unix", 4) == 0);
        ASSERT_EQ(ca_join(t), 4);
        ca_task_release(t);
        ca_close(fd);
        ca_close(lfd);
    }
    unlink(paths[0]);
    ASSERT_EQ(ca_unix_connect("/tmp/cawait-no-such.sock"), -ENOENT);
    ASSERT_EQ(ca_unix_listen("", NULL), -EINVAL);
    return 0;
}

static void test_unix_sockets(void)
{
    ASSERT_EQ(ca_run(unix_main, NULL), 0);
}

/* ---- back pressure: a peer that never reads ------------------------------ */

static size_t max_buffered;

static int flood(void *a)
{
    ca_stream *s = a;
    static char chunk[16384];
    for (;;) {
        int r = ca_stream_write(s, chunk, sizeof(chunk));
        if (r < 0)
            return r;
        size_t b = ca_stream_write_buffered(s);
        if (b > max_buffered)
            max_buffered = b;
        r = ca_stream_drain(s); /* blocks: the peer never reads */
        if (r < 0)
            return r;
    }
}

static int backpressure_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *s;
    ca_stream_opts o = {.high_water = 64 * 1024};
    ASSERT_EQ(ca_stream_open(&s, sv[0], &o), 0);
    ca_task *t = ca_spawn(flood, s);
    ASSERT_EQ(ca_sleep(0.1), 0);
    ASSERT(!ca_task_done(t));                 /* stuck in drain */
    ASSERT_LE(max_buffered, 64 * 1024 + 16384); /* memory stays bounded */
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);        /* cancellation frees it */
    ca_task_release(t);
    /* closing with unsent data inside a deadline does not hang */
    ASSERT_EQ(ca_deadline_push(0.05), 0);
    int r = ca_stream_close(s);
    ASSERT(r == -ETIMEDOUT || r == 0);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ca_close(sv[1]);
    return 0;
}

static void test_backpressure(void)
{
    ASSERT_EQ(ca_run(backpressure_main, NULL), 0);
}

/* ---- the write ceiling: -ENOBUFS, and never a cut byte stream -------------- */

#define BIG (4u * 1024u * 1024u)

/* Reads BIG bytes from fd and checks the pattern; returns 0 if intact. */
static int big_reader(void *arg)
{
    int fd = *(int *)arg;
    static unsigned char buf[65536];
    size_t got = 0;
    while (got < BIG) {
        ssize_t n = ca_read(fd, buf, sizeof(buf));
        if (n <= 0)
            return n < 0 ? (int)n : -EPIPE;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != (unsigned char)((got + (size_t)i) * 7))
                return -EILSEQ;
        got += (size_t)n;
    }
    return 0;
}

static int ceiling_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *s;
    ca_stream_opts o = {.high_water = 64 * 1024};
    ASSERT_EQ(ca_stream_open(&s, sv[0], &o), 0);
    unsigned char *big = malloc(BIG);
    ASSERT(big != NULL);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (unsigned char)(i * 7);
    /* One write far above 16 x high_water into an empty queue is taken
     * whole (the kernel takes a part at once, the rest is queued) ... */
    ASSERT_EQ(ca_stream_write(s, big, BIG), 0);
    size_t queued = ca_stream_write_buffered(s);
    ASSERT_GT(queued, 16u * 64 * 1024);
    /* ... and the next one, with more than the ceiling queued, is refused
     * whole: nothing sent, nothing queued. */
    ASSERT_EQ(ca_stream_write(s, "x", 1), -ENOBUFS);
    ASSERT_EQ(ca_stream_write_buffered(s), queued);
    /* The peer gets every byte of the large write, in order, and nothing
     * of the refused one. */
    ca_task *rd = ca_spawn(big_reader, &sv[1]);
    ASSERT_EQ(ca_stream_drain(s), 0);
    ASSERT_EQ(ca_join(rd), 0);
    ca_task_release(rd);
    /* Once drained, writing works again; the peer sees it next. */
    ASSERT_EQ(ca_stream_write(s, "after", 5), 0);
    char tail[8];
    ASSERT_EQ(ca_read(sv[1], tail, sizeof(tail)), 5);
    ASSERT(memcmp(tail, "after", 5) == 0);
    /* A writer that keeps writing without draining is stopped by the
     * ceiling: memory stays bounded by it plus one write. */
    static char chunk[16384];
    int r = 0, writes = 0;
    while (r == 0 && writes < 10000) {
        r = ca_stream_write(s, chunk, sizeof(chunk));
        writes++;
    }
    ASSERT_EQ(r, -ENOBUFS);
    ASSERT_LE(ca_stream_write_buffered(s), 16u * 64 * 1024 + sizeof(chunk));
    free(big);
    ASSERT_EQ(ca_deadline_push(0.05), 0);
    r = ca_stream_close(s);
    ASSERT(r == -ETIMEDOUT || r == 0);
    ca_deadline_pop();
    ca_close(sv[1]);
    return 0;
}

static void test_write_ceiling(void)
{
    ASSERT_EQ(ca_run(ceiling_main, NULL), 0);
}

/* ---- many small writes are gathered into few sends ------------------------ */

/*
 * A protocol encoder writes a field or a record at a time, each followed
 * by drain (the asyncio idiom, which returns at once below the high-water
 * mark).  On a SOCK_SEQPACKET socket every send() is one record, so the
 * peer counts the sends: 10000 writes in one slice used to be 10000
 * sends (and 10000 TCP segments with TCP_NODELAY); gathered, they are a
 * handful.  The first write of a slice still leaves at once, and what a
 * slice gathered leaves when it ends, without a drain.
 */
#define GATHER_WRITES 10000

static size_t read_records(int fd, unsigned char *out, size_t cap,
                           size_t *records)
{
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, out + len, cap - len, MSG_DONTWAIT);
        if (n <= 0)
            return len;
        len += (size_t)n;
        (*records)++;
    }
}

static int gather_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    int sz = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, sv[0], NULL), 0);
    static unsigned char want[GATHER_WRITES * 16], got[sizeof(want)];
    size_t total = 0;
    for (int i = 0; i < GATHER_WRITES; i++) {
        size_t n = 1 + (size_t)i % 16;
        for (size_t k = 0; k < n; k++)
            want[total + k] = (unsigned char)(i + k);
        ASSERT_EQ(ca_stream_write(s, want + total, n), 0);
        ASSERT_EQ(ca_stream_drain(s), 0);
        total += n;
    }
    ASSERT_EQ(ca_yield(), 0); /* the slice ends: the gathered bytes leave */
    ASSERT_EQ(ca_stream_write_buffered(s), 0);
    size_t records = 0;
    ASSERT_EQ(read_records(sv[1], got, sizeof(got), &records), total);
    ASSERT(memcmp(got, want, total) == 0);
    ASSERT_LE(records, 100); /* 10000 without gathering */
    /* A new slice: its first write is sent at once, without a copy. */
    ASSERT_EQ(ca_stream_write(s, "x", 1), 0);
    ASSERT_EQ(ca_stream_write_buffered(s), 0);
    records = 0;
    ASSERT_EQ(read_records(sv[1], got, sizeof(got), &records), 1);
    /* Gathered bytes still pending when the stream closes go out first. */
    ASSERT_EQ(ca_stream_write(s, "yz", 2), 0);
    ASSERT_EQ(ca_stream_write_buffered(s), 2);
    ASSERT_EQ(ca_stream_close(s), 0);
    ASSERT_EQ(read_records(sv[1], got, sizeof(got), &records), 2);
    ASSERT(memcmp(got, "yz", 2) == 0);
    ca_close(sv[1]);
    return 0;
}

static void test_write_gathering(void)
{
    ASSERT_EQ(ca_run(gather_main, NULL), 0);
}

/* ---- a peer that resets the connection ------------------------------------ */

static int reset_seen;

static int reader_handler(ca_stream *s, void *arg)
{
    (void)arg;
    char buf[256];
    ssize_t n;
    while ((n = ca_stream_read(s, buf, sizeof(buf))) > 0)
        ;
    if (n == -ECONNRESET)
        reset_seen = 1;
    return (int)n;
}

static int reset_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, reader_handler, NULL, NULL), 0);
    int fd = ca_tcp_connect("127.0.0.1", (unsigned)ca_server_port(srv));
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ca_write(fd, "some bytes", 10), 10);
    ASSERT_EQ(ca_sleep(0.02), 0);
    struct linger lg = {1, 0}; /* close with RST */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    ca_close(fd);
    for (int i = 0; i < 100 && ca_server_connections(srv) > 0; i++)
        ca_sleep(0.01);
    ASSERT_EQ(ca_server_connections(srv), 0);
    ASSERT(reset_seen);
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static void test_peer_reset(void)
{
    ASSERT_EQ(ca_run(reset_main, NULL), 0);
}

/* ---- a peer that resets while the server writes a large amount ------------ */

#define FLOOD_CHUNK (64 * 1024)
#define FLOOD_MAX (256u * 1024u * 1024u) /* never reached: the peer resets */

static int flood_result = 1; /* 1: the handler has not returned */
static int flood_failed_in;  /* 1: ca_stream_write, 2: ca_stream_drain */
static size_t flood_sent;

static int flood_handler(ca_stream *s, void *arg)
{
    (void)arg;
    static char chunk[FLOOD_CHUNK];
    memset(chunk, 'z', sizeof(chunk));
    int r = 0;
    flood_sent = 0;
    while (r == 0 && flood_sent < FLOOD_MAX) {
        r = ca_stream_write(s, chunk, sizeof(chunk));
        if (r < 0) {
            flood_failed_in = 1;
            break;
        }
        r = ca_stream_drain(s);
        if (r < 0)
            flood_failed_in = 2;
        else
            flood_sent += sizeof(chunk);
    }
    flood_result = r;
    return r;
}

/*
 * The server writes as fast as it can (write + drain, the back-pressure
 * loop) while the client resets the connection: after reading some of it,
 * and without reading anything.  Either way the peer has stopped reading, so
 * the writer is blocked in ca_stream_drain when the reset arrives, and that
 * drain returns -ECONNRESET or -EPIPE (not 0: the buffered bytes were lost,
 * not sent), promptly; nothing crashes or hangs, and the connection is gone
 * from the server's count.
 */
static int write_reset_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, flood_handler, NULL, NULL), 0);
    int port = ca_server_port(srv);
    for (int round = 0; round < 2; round++) {
        flood_result = 1;
        flood_failed_in = 0;
        int fd = ca_tcp_connect("127.0.0.1", (unsigned)port);
        ASSERT_GE(fd, 0);
        if (round == 0) {
            /* read 256 KiB of it first */
            static char buf[65536];
            size_t got = 0;
            while (got < 256 * 1024) {
                ssize_t n = ca_read(fd, buf, sizeof(buf));
                ASSERT_GT(n, 0);
                got += (size_t)n;
            }
        }
        ASSERT_EQ(ca_sleep(0.1), 0);
        ASSERT_EQ(ca_server_connections(srv), 1);
        ASSERT_EQ(flood_result, 1); /* still writing (blocked in drain) */
        ASSERT_GT(flood_sent, 0);
        struct linger lg = {1, 0}; /* close with RST */
        ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
        double t0 = mono();
        ca_close(fd);
        for (int i = 0; i < 300 && ca_server_connections(srv) > 0; i++)
            ca_sleep(0.01);
        ASSERT_EQ(ca_server_connections(srv), 0);
        ASSERT_TIME_LT(mono() - t0, 1.0);
        if ((flood_result != -ECONNRESET && flood_result != -EPIPE) ||
            flood_failed_in != 2)
            FAILF("round %d: the writer got %d from %s; want -ECONNRESET "
                  "or -EPIPE from the drain it was blocked in",
                  round, flood_result,
                  flood_failed_in == 1   ? "write"
                  : flood_failed_in == 2 ? "drain"
                                         : "neither");
    }
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static void test_peer_reset_while_writing(void)
{
    ASSERT_EQ(ca_run(write_reset_main, NULL), 0);
}

/* ---- a half-open connection: the client shuts down its write side --------- */

#define HALF_REPLY (1u << 20)

static unsigned char half_byte(size_t i)
{
    return (unsigned char)(i * 13 + 5);
}

static struct {
    char req[64];
    size_t req_len;
    ssize_t last_read; /* the read that ended the request: 0 */
    int at_eof;
    int write_result, eof_result;
} half;

static int half_handler(ca_stream *s, void *arg)
{
    (void)arg;
    ssize_t n;
    half.req_len = 0;
    while ((n = ca_stream_read(s, half.req + half.req_len,
                               sizeof(half.req) - 1 - half.req_len)) > 0)
        half.req_len += (size_t)n;
    half.req[half.req_len] = '\0';
    half.last_read = n;
    half.at_eof = ca_stream_at_eof(s);
    if (n < 0)
        return (int)n;
    /* The request has ended; the reply still goes out, all of it. */
    unsigned char *reply = malloc(HALF_REPLY);
    if (!reply)
        return -ENOMEM;
    for (size_t i = 0; i < HALF_REPLY; i++)
        reply[i] = half_byte(i);
    half.write_result = ca_stream_write(s, reply, HALF_REPLY);
    free(reply);
    half.eof_result = ca_stream_write_eof(s); /* flushes, then FIN */
    return half.write_result ? half.write_result : half.eof_result;
}

/*
 * The client sends its request and shuts down its sending side
 * (shutdown(SHUT_WR)) but keeps reading.  The server's handler sees the end
 * of the stream (read returns 0, ca_stream_at_eof) after the whole request,
 * and can still write a 1 MiB reply, which the client receives completely
 * and intact, followed by the end of stream.
 */
static int half_open_main(void *a)
{
    (void)a;
    memset(&half, 0, sizeof(half));
    half.last_read = 1;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, half_handler, NULL, NULL), 0);
    double t0 = mono();
    int fd = ca_tcp_connect("127.0.0.1", (unsigned)ca_server_port(srv));
    ASSERT_GE(fd, 0);
    const char *req = "GET everything\nplease\n";
    ASSERT_EQ(ca_write(fd, req, strlen(req)), (ssize_t)strlen(req));
    ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
    static unsigned char buf[65536];
    size_t got = 0;
    ssize_t n;
    int intact = 1;
    while ((n = ca_read(fd, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != half_byte(got + (size_t)i))
                intact = 0;
        got += (size_t)n;
    }
    ASSERT_EQ(n, 0); /* the server's FIN, not an error */
    ASSERT_EQ(got, HALF_REPLY);
    ASSERT(intact);
    ASSERT_TIME_LT(mono() - t0, 2.0);
    ASSERT_STREQ(half.req, req);
    ASSERT_EQ(half.last_read, 0);
    ASSERT_EQ(half.at_eof, 1);
    ASSERT_EQ(half.write_result, 0);
    ASSERT_EQ(half.eof_result, 0);
    ca_close(fd);
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static void test_half_open_client(void)
{
    ASSERT_EQ(ca_run(half_open_main, NULL), 0);
}

/* ---- a very slow client: one byte every 100 ms ---------------------------- */

/* "ECHO" with readexactly, then the rest of the line with readline; the
 * reply is both, as the handler assembled them. */
static int assemble_handler(ca_stream *s, void *arg)
{
    (void)arg;
    char head[4], line[64], out[72];
    int r = ca_stream_readexactly(s, head, sizeof(head));
    if (r < 0)
        return r;
    if (memcmp(head, "ECHO", 4) != 0)
        return -EPROTO;
    ssize_t n = ca_stream_readline(s, line, sizeof(line));
    if (n <= 0)
        return n < 0 ? (int)n : -EPROTO;
    memcpy(out, head, 4);
    memcpy(out + 4, line, (size_t)n);
    r = ca_stream_write(s, out, 4 + (size_t)n);
    return r ? r : ca_stream_drain(s);
}

struct trickle {
    int port;
    char reply[16];
    double elapsed;
    int result;
};

/* The slow client: 10 bytes, one every 100 ms, then the echo. */
static int trickle_client(void *a)
{
    struct trickle *t = a;
    const char *msg = "ECHOslow!\n";
    double t0 = mono();
    int fd = ca_tcp_connect("127.0.0.1", (unsigned)t->port);
    if (fd < 0)
        return t->result = fd;
    for (size_t i = 0; i < 10; i++) {
        if (i > 0 && (t->result = ca_sleep(0.1)) < 0)
            break;
        ssize_t w = ca_write(fd, msg + i, 1);
        if (w != 1) {
            t->result = w < 0 ? (int)w : -EIO;
            break;
        }
    }
    size_t got = 0;
    while (t->result == 0 && got < 10) {
        ssize_t n = ca_read(fd, t->reply + got, 10 - got);
        if (n <= 0)
            t->result = n < 0 ? (int)n : -EPIPE;
        else
            got += (size_t)n;
    }
    t->elapsed = mono() - t0;
    ca_close(fd);
    return t->result;
}

/*
 * The slow client: 10 bytes at one byte per 100 ms.  The server's
 * readexactly and readline assemble them into the right message, and while
 * that connection trickles, other clients are served at once (three fast
 * echoes during the slow one, each well under a second).
 */
static int trickle_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, assemble_handler, NULL, NULL),
              0);
    struct trickle tr = {.port = ca_server_port(srv)};
    ca_task *slow = ca_spawn(trickle_client, &tr);
    ASSERT(slow);
    double start = mono();
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_sleep(0.2), 0);
        double t0 = mono();
        ca_stream *c;
        ASSERT_EQ(ca_open_connection(&c, "127.0.0.1",
                                     (unsigned)ca_server_port(srv), NULL),
                  0);
        ASSERT_EQ(ca_stream_write(c, "ECHOfast\n", 9), 0);
        char reply[16];
        ASSERT_EQ(ca_stream_readexactly(c, reply, 9), 0);
        ASSERT(memcmp(reply, "ECHOfast\n", 9) == 0);
        ASSERT_EQ(ca_stream_close(c), 0);
        ASSERT_TIME_LT(mono() - t0, 0.5);
        ASSERT(!ca_task_done(slow)); /* the slow one is still trickling */
    }
    ASSERT_EQ(ca_join(slow), 0);
    ca_task_release(slow);
    ASSERT(memcmp(tr.reply, "ECHOslow!\n", 10) == 0);
    ASSERT_GE(tr.elapsed, 0.9); /* it really took 9 pauses of 100 ms */
    ASSERT_TIME_LT(mono() - start, 2.0);
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static void test_slow_client_100ms(void)
{
    ASSERT_EQ(ca_run(trickle_main, NULL), 0);
}

/* ---- graceful shutdown and connection limits ------------------------------- */

static int finished_handlers, cancelled_handlers;

static int slow_handler(ca_stream *s, void *arg)
{
    double secs = *(double *)arg;
    (void)s;
    int r = ca_sleep(secs);
    if (r == -ECANCELED)
        cancelled_handlers++;
    else
        finished_handlers++;
    return r;
}

/* Wait (up to 3 s, a loaded valgrind run is slow to accept) until the
 * server has n connections; returns 1 if it got there. */
static int wait_conns(ca_server *srv, size_t n)
{
    for (int i = 0; i < 300 && ca_server_connections(srv) != n; i++)
        ca_sleep(0.01);
    return ca_server_connections(srv) == n;
}

static int graceful_main(void *a)
{
    (void)a;
    /* handlers that finish within the grace period are let finish */
    double quick = 0.3;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, slow_handler, &quick, NULL), 0);
    int port = ca_server_port(srv);
    int fds[3];
    for (int i = 0; i < 3; i++)
        ASSERT_GE(fds[i] = ca_tcp_connect("127.0.0.1", (unsigned)port), 0);
    ASSERT(wait_conns(srv, 3));
    double t0 = mono();
    ASSERT_EQ(ca_server_close(srv, 1.0), 0);
    ASSERT_TIME_LT(mono() - t0, 0.6); /* the handlers' 0.3 s, not the 1 s */
    ASSERT_EQ(finished_handlers, 3);
    ASSERT_EQ(ca_tcp_connect("127.0.0.1", (unsigned)port), -ECONNREFUSED);
    for (int i = 0; i < 3; i++)
        ca_close(fds[i]);

    /* stragglers are cancelled after the grace period */
    double slow = 10;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, slow_handler, &slow, NULL), 0);
    port = ca_server_port(srv);
    for (int i = 0; i < 3; i++)
        ASSERT_GE(fds[i] = ca_tcp_connect("127.0.0.1", (unsigned)port), 0);
    ASSERT(wait_conns(srv, 3));
    t0 = mono();
    ASSERT_EQ(ca_server_close(srv, 0.05), 0);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.05);
    ASSERT_TIME_LT(dt, 1.0);
    ASSERT_EQ(cancelled_handlers, 3);
    for (int i = 0; i < 3; i++)
        ca_close(fds[i]);

    /* max_connections: the third client waits in the backlog */
    ca_server_opts o = {.max_connections = 2};
    double mid = 0.3;
    finished_handlers = 0;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, slow_handler, &mid, &o), 0);
    port = ca_server_port(srv);
    for (int i = 0; i < 3; i++)
        ASSERT_GE(fds[i] = ca_tcp_connect("127.0.0.1", (unsigned)port), 0);
    ASSERT(wait_conns(srv, 2));
    ASSERT_EQ(ca_sleep(0.05), 0);
    ASSERT_EQ(ca_server_connections(srv), 2); /* never 3 */
    ASSERT_EQ(finished_handlers, 0);
    /* once the first two finish, the third gets its turn */
    for (int i = 0; i < 300 && finished_handlers < 2; i++)
        ca_sleep(0.01);
    ASSERT_EQ(finished_handlers, 2);
    ASSERT(wait_conns(srv, 1));
    ASSERT_EQ(ca_server_close(srv, 1.0), 0);
    ASSERT_EQ(finished_handlers, 3);
    for (int i = 0; i < 3; i++)
        ca_close(fds[i]);
    return 0;
}

static void test_graceful_shutdown_and_limits(void)
{
    ASSERT_EQ(ca_run(graceful_main, NULL), 0);
}

/* ---- a slow client: one byte every 10 ms ---------------------------------- */

static char slow_line[64];

static int line_handler(ca_stream *s, void *arg)
{
    (void)arg;
    return (int)ca_stream_readline(s, slow_line, sizeof(slow_line));
}

static int slow_client_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, line_handler, NULL, NULL), 0);
    int fd = ca_tcp_connect("127.0.0.1", (unsigned)ca_server_port(srv));
    ASSERT_GE(fd, 0);
    const char *msg = "slow line\n";
    for (size_t i = 0; i < strlen(msg); i++) {
        ASSERT_EQ(ca_write(fd, msg + i, 1), 1);
        ASSERT_EQ(ca_sleep(0.01), 0);
    }
    for (int i = 0; i < 100 && !slow_line[0]; i++)
        ca_sleep(0.01);
    ASSERT_STREQ(slow_line, "slow line\n");
    ca_close(fd);
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static int peer_ok;

static int peer_handler(ca_stream *s, void *arg)
{
    (void)arg;
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    if (ca_stream_peer(s, (struct sockaddr *)&a, &len) == 0 &&
        a.sin_family == AF_INET && ntohl(a.sin_addr.s_addr) == 0x7f000001)
        peer_ok++;
    char c;
    return (int)ca_stream_read(s, &c, 1); /* until cancelled or EOF */
}

static int clients_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, peer_handler, NULL, NULL), 0);
    int port = ca_server_port(srv);
    int fds[4];
    for (int i = 0; i < 4; i++)
        ASSERT_GE(fds[i] = ca_tcp_connect("127.0.0.1", (unsigned)port), 0);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(peer_ok, 4);
    ASSERT_EQ(ca_server_connections(srv), 4);
    /* close_clients: handlers cancelled, connections closed (EOF) */
    ASSERT_EQ(ca_server_close_clients(srv), 0);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(ca_server_connections(srv), 0);
    char c;
    ASSERT_EQ(ca_read(fds[0], &c, 1), 0);
    for (int i = 0; i < 4; i++)
        ca_close(fds[i]);
    /* abort_clients: the peers see a reset */
    for (int i = 0; i < 2; i++)
        ASSERT_GE(fds[i] = ca_tcp_connect("127.0.0.1", (unsigned)port), 0);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(ca_server_abort_clients(srv), 0);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ssize_t r = ca_read(fds[0], &c, 1);
    ASSERT(r == -ECONNRESET || r == 0);
    for (int i = 0; i < 2; i++)
        ca_close(fds[i]);
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static void test_peer_and_close_abort_clients(void)
{
    ASSERT_EQ(ca_run(clients_main, NULL), 0);
}

static void test_slow_client(void)
{
    ASSERT_EQ(ca_run(slow_client_main, NULL), 0);
}

/* ---- a server's memory over many connections --------------------------- */

static uint64_t tasks_live(void)
{
    ca_loop_stats st;
    ASSERT_EQ(ca_loop_stats_get(&st), 0);
    return st.tasks_live;
}

static size_t served;

static int count_handler(ca_stream *s, void *arg)
{
    (void)s;
    (void)arg;
    served++;
    return 0;
}

/* A connection's task is freed when its handler returns: after thousands
 * of connections the server holds no finished task (tasks_live is where it
 * was) and no connection. */
static int conn_lifetime_main(void *a)
{
    size_t n = *(const size_t *)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, count_handler, NULL, NULL), 0);
    unsigned port = (unsigned)ca_server_port(srv);
    uint64_t live0 = tasks_live();
    served = 0;
    for (size_t i = 0; i < n; i++) {
        int fd = ca_tcp_connect("127.0.0.1", port);
        ASSERT_GE(fd, 0);
        char c;
        ASSERT_EQ(ca_read(fd, &c, 1), 0); /* the server closed it */
        ca_close(fd);
    }
    ASSERT(wait_conns(srv, 0));
    uint64_t live1 = tasks_live();
    printf("%zu connections served: tasks live %llu -> %llu\n", served,
           (unsigned long long)live0, (unsigned long long)live1);
    ASSERT_EQ(served, n);
    ASSERT_EQ(live1, live0);
    ASSERT_EQ(ca_server_close(srv, 1), 0);
    return 0;
}

static void test_server_releases_connections(void)
{
    size_t n = test_is_instrumented() ? 500 : 5000;
    ASSERT_EQ(ca_run(conn_lifetime_main, &n), 0);
}

/* A connection task cancelled before it ever ran (ca_server_close_clients
 * in the turn the acceptor spawned it) never runs its body: its socket is
 * still closed, the connection still counted out, its task still freed,
 * and ca_server_close does not wait for it forever. */
static int never_ran;

static int mark_handler(ca_stream *s, void *arg)
{
    (void)s;
    (void)arg;
    never_ran = 0;
    return 0;
}

struct client {
    unsigned port;
    int fd;
};

static int client_connect(void *a)
{
    struct client *c = a;
    c->fd = ca_tcp_connect("127.0.0.1", c->port);
    return c->fd < 0 ? c->fd : 0;
}

static int cancel_unstarted_main(void *a)
{
    (void)a;
    for (int how = 0; how < 2; how++) {
        ca_server *srv;
        ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, mark_handler, NULL, NULL), 0);
        uint64_t live0 = tasks_live();
        never_ran = 1;
        /* We stay in the ready queue (yielding) while another task
         * connects: the acceptor then spawns the connection task behind
         * us, and we see the connection before its task has run. */
        struct client cl = {.port = (unsigned)ca_server_port(srv), .fd = -1};
        ca_task *ct = NULL;
        ASSERT_EQ(ca_spawn_ex(&ct, client_connect, &cl, NULL), 0);
        for (int i = 0; i < 1000000 && ca_server_connections(srv) == 0; i++)
            ASSERT_EQ(ca_yield(), 0);
        ASSERT_EQ(ca_server_connections(srv), 1);
        ASSERT_EQ(never_ran, 1);
        if (how == 0)
            ASSERT_EQ(ca_server_close_clients(srv), 0);
        else
            ASSERT_EQ(ca_server_abort_clients(srv), 0);
        ASSERT(wait_conns(srv, 0));
        ASSERT_EQ(never_ran, 1); /* its handler never ran */
        ASSERT_EQ(ca_join(ct), 0);
        ca_task_release(ct);
        char c;
        ssize_t r = ca_read(cl.fd, &c, 1); /* closed by the server */
        ASSERT(r == 0 || r == -ECONNRESET);
        ca_close(cl.fd);
        ASSERT_EQ(tasks_live(), live0);
        ASSERT_EQ(ca_server_close(srv, 1), 0);
    }
    return 0;
}

static void test_server_cancel_unstarted(void)
{
    ASSERT_EQ(ca_run(cancel_unstarted_main, NULL), 0);
}

/* ---- an accept storm beyond the descriptor limit --------------------------- */

static int storm_main(void *a)
{
    (void)a;
    struct rlimit rl = {96, 96};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        SKIP("cannot lower RLIMIT_NOFILE here (valgrind reserves its own)");
    double forever = 10;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, slow_handler, &forever, NULL), 0);
    int port = ca_server_port(srv);
    /* open connections until we (and the server) run out of fds */
    int fds[200], n = 0;
    for (; n < 200; n++) {
        fds[n] = ca_tcp_connect("127.0.0.1", (unsigned)port);
        if (fds[n] < 0)
            break;
    }
    ASSERT_GT(n, 10);
    ASSERT_EQ(ca_sleep(0.2), 0); /* the server backs off, not spins */
    ca_loop_stats st;
    ca_loop_stats_get(&st);
    ASSERT_LT(st.turns, 20000);
    /* recover: close our side; the server accepts the waiting ones */
    for (int i = 0; i < n; i++)
        ca_close(fds[i]);
    ASSERT_EQ(ca_sleep(0.3), 0);
    int fd = ca_tcp_connect("127.0.0.1", (unsigned)port);
    ASSERT_GE(fd, 0);
    ca_close(fd);
    ASSERT_EQ(ca_server_close(srv, 0), 0);
    return 0;
}

static void test_accept_storm(void)
{
    ASSERT_EQ(ca_run(storm_main, NULL), 0);
}

/* ---- UDP, Unix datagrams, fd passing, sendfile --------------------------- */

static int udp_echo(void *a)
{
    int fd = *(int *)a;
    char buf[64];
    struct sockaddr_storage from;
    socklen_t len = sizeof(from);
    ssize_t n = ca_recvfrom(fd, buf, sizeof(buf), (struct sockaddr *)&from,
                            &len);
    if (n < 0)
        return (int)n;
    return (int)ca_sendto(fd, buf, (size_t)n, (struct sockaddr *)&from, len);
}

static int dgram_main(void *a)
{
    (void)a;
    int srv = ca_udp_bind("127.0.0.1", 0);
    ASSERT_GE(srv, 0);
    int port = ca_sock_port(srv);
    ca_task *t = ca_spawn(udp_echo, &srv);
    int cli = ca_udp_connect("127.0.0.1", (unsigned)port);
    ASSERT_GE(cli, 0);
    ASSERT_EQ(ca_sendto(cli, "datagram", 8, NULL, 0), 8);
    char buf[64];
    ASSERT_EQ(ca_recvfrom(cli, buf, sizeof(buf), NULL, NULL), 8);
    ASSERT(memcmp(buf, "datagram", 8) == 0);
    ASSERT_EQ(ca_join(t), 8);
    ca_task_release(t);
    /* a receive that never completes honours deadlines */
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    ASSERT_EQ(ca_recvfrom(cli, buf, sizeof(buf), NULL, NULL), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    /* A datagram longer than the buffer is reported, not silently cut to
     * a plausible length; empty and maximal datagrams are datagrams. */
    ASSERT_EQ(ca_sendto(cli, "0123456789", 10, NULL, 0), 10);
    ASSERT_EQ(ca_recvfrom(srv, buf, 4, NULL, NULL), -EMSGSIZE);
    ASSERT(memcmp(buf, "0123", 4) == 0);
    ASSERT_EQ(ca_sendto(cli, "", 0, NULL, 0), 0);
    ASSERT_EQ(ca_sendto(cli, "abcd", 4, NULL, 0), 4);
    ASSERT_EQ(ca_recvfrom(srv, buf, sizeof(buf), NULL, NULL), 0);
    ASSERT_EQ(ca_recvfrom(srv, buf, 4, NULL, NULL), 4); /* exactly fits */
    static char big[65508];
    ASSERT_EQ(ca_sendto(cli, big, 65507, NULL, 0), 65507);
    ASSERT_EQ(ca_recvfrom(srv, big, sizeof(big), NULL, NULL), 65507);
    ASSERT_EQ(ca_sendto(cli, big, 65508, NULL, 0), -EMSGSIZE);
    /* ICMP port unreachable surfaces on a later call of a connected
     * socket (asyncio: error_received), not as a hang. */
    ca_close(srv);
    ASSERT_EQ(ca_sendto(cli, "x", 1, NULL, 0), 1);
    ASSERT_EQ(ca_deadline_push(5), 0);
    ASSERT_EQ(ca_recvfrom(cli, buf, sizeof(buf), NULL, NULL), -ECONNREFUSED);
    ASSERT_EQ(ca_deadline_pop(), 0);
    ca_close(cli);

    /* Unix datagrams */
    int u1 = ca_unix_dgram("@cawait-dgram-test");
    int u2 = ca_unix_dgram(NULL);
    ASSERT_GE(u1, 0);
    ASSERT_GE(u2, 0);
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    memcpy(to.sun_path + 1, "cawait-dgram-test", 17);
    socklen_t tolen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 18);
    ASSERT_EQ(ca_sendto(u2, "unix-dg", 7, (struct sockaddr *)&to, tolen), 7);
    ASSERT_EQ(ca_recvfrom(u1, buf, sizeof(buf), NULL, NULL), 7);
    ca_close(u1);
    ca_close(u2);

    /* fd passing: send one end of a pipe across a socketpair */
    int sv[2], p[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ASSERT_EQ(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    ASSERT_EQ(ca_send_fd(sv[0], p[1]), 0);
    int got = ca_recv_fd(sv[1]);
    ASSERT_GE(got, 0);
    ASSERT_EQ(ca_write(got, "via fd", 6), 6);
    ASSERT_EQ(ca_read(p[0], buf, sizeof(buf)), 6);
    ASSERT_EQ(ca_write(sv[0], "x", 1), 1);
    ASSERT_EQ(ca_recv_fd(sv[1]), -EBADMSG); /* data without a descriptor */
    ca_close(got);
    ca_close(p[0]);
    ca_close(p[1]);

    /* sendfile into a stream, after buffered data */
    /* An anonymous in-memory file: nothing left on disk. */
    int f = memfd_create("cawait-sendfile", MFD_CLOEXEC);
    ASSERT_GE(f, 0);
    static char data[100000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)(i % 251);
    ASSERT_EQ(write(f, data, sizeof(data)), (ssize_t)sizeof(data));
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, sv[0], NULL), 0);
    ASSERT_EQ(ca_stream_write(s, "HDR", 3), 0);
    ca_stream *r;
    ASSERT_EQ(ca_stream_open(&r, sv[1], NULL), 0);
    ASSERT_EQ(ca_stream_sendfile(s, f, 0, 0), (ssize_t)sizeof(data));
    char hdr[3];
    ASSERT_EQ(ca_stream_readexactly(r, hdr, 3), 0);
    ASSERT(memcmp(hdr, "HDR", 3) == 0);
    static char back[100000];
    ASSERT_EQ(ca_stream_readexactly(r, back, sizeof(back)), 0);
    ASSERT(memcmp(back, data, sizeof(data)) == 0);
    ASSERT_EQ(ca_stream_sendfile(s, f, 99990, 100), 10); /* short file */
    close(f);
    ASSERT_EQ(ca_stream_close(s), 0);
    ASSERT_EQ(ca_stream_close(r), 0);
    return 0;
}

static void test_datagrams_fd_passing_sendfile(void)
{
    ASSERT_EQ(ca_run(dgram_main, NULL), 0);
}

/* A Unix datagram sent by address to a receiver whose queue is full: the
 * sender polls writable (it cannot know the destination) and each failed
 * attempt is a fresh EPOLLOUT edge.  Before: ~15,000 wake-ups a second of
 * 36% CPU; the wait must sleep, not spin. */
static int dgram_full_main(void *a)
{
    (void)a;
    int rx = ca_unix_dgram("@cawait-dgram-full-test");
    int tx = ca_unix_dgram(NULL);
    ASSERT_GE(rx, 0);
    ASSERT_GE(tx, 0);
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    memcpy(to.sun_path + 1, "cawait-dgram-full-test", 22);
    socklen_t tolen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 23);
    ASSERT_EQ(ca_deadline_push(0.5), 0);
    int sent = 0;
    ssize_t r;
    while ((r = ca_sendto(tx, "x", 1, (struct sockaddr *)&to, tolen)) == 1) {
        if (++sent == 1000)
            break; /* never filled: nothing to test */
    }
    ASSERT_EQ(r, -ETIMEDOUT);
    ca_loop_stats before, after;
    ASSERT_EQ(ca_loop_stats_get(&before), 0);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_push(0.5), 0);
    ASSERT_EQ(ca_sendto(tx, "x", 1, (struct sockaddr *)&to, tolen), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_loop_stats_get(&after), 0);
    /* ~90 sleeps in 0.5 s at the 6.4 ms cap. */
    ASSERT_LT(after.tasks_run - before.tasks_run, 300);
    /* The receiver reads: the sender gets through. */
    char buf[8];
    ASSERT_EQ(ca_recvfrom(rx, buf, sizeof(buf), NULL, NULL), 1);
    ASSERT_EQ(ca_sendto(tx, "y", 1, (struct sockaddr *)&to, tolen), 1);
    ca_close(rx);
    ca_close(tx);
    return 0;
}

static void test_dgram_full_receiver(void)
{
    ASSERT_EQ(ca_run(dgram_full_main, NULL), 0);
}

/* ---- 10,000 concurrent connections on loopback ----------------------------- */

/* The server (this process) holds every connection until the client closes
 * it; the client is a forked child with its own descriptor table, since
 * both ends of 10,000 connections exceed the 20,000 hard limit of one
 * process here. */
static int hold_handler(ca_stream *s, void *arg)
{
    (void)arg;
    char c;
    if (ca_stream_read(s, &c, 1) == 1) {
        ca_stream_write(s, &c, 1);
        while (ca_stream_read(s, &c, 1) > 0) /* until the client closes */
            ;
    }
    return 0;
}

static void raise_nofile(rlim_t want)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* The child: plain blocking sockets, no loop. */
static int client_proc(int port, long n)
{
    raise_nofile((rlim_t)n + 64);
    int *fds = malloc((size_t)n * sizeof(int));
    if (!fds)
        return 2;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (long i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0)
            return 3;
    }
    for (long i = 0; i < n; i++)
        if (write(fds[i], "k", 1) != 1)
            return 4;
    char c;
    for (long i = 0; i < n; i++)
        if (read(fds[i], &c, 1) != 1 || c != 'k')
            return 5;
    usleep(300 * 1000); /* hold them all open */
    for (long i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    return 0;
}

static long many_n;

static int many_main(void *a)
{
    (void)a;
    ca_server *srv;
    ca_server_opts o = {.listen = {.backlog = 4096}};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, hold_handler, NULL, &o), 0);
    int port = ca_server_port(srv);
    fflush(stdout);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0)
        _exit(client_proc(port, many_n));
    size_t most = 0;
    int status = 0;
    double t0 = mono();
    for (;;) {
        size_t c = ca_server_connections(srv);
        if (c > most)
            most = c;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        ASSERT_TIME_LT(mono() - t0, 60);
        ca_sleep(0.01);
    }
    ASSERT(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    printf("most concurrent connections: %zu\n", most);
    ASSERT_EQ(most, (size_t)many_n);
    ASSERT_EQ(ca_server_close(srv, 5), 0);
    return 0;
}

static void test_10k_connections(void)
{
    many_n = test_is_instrumented() ? 1000 : 10000;
    raise_nofile((rlim_t)many_n + 64);
    double t0 = mono();
    ASSERT_EQ(ca_run(many_main, NULL), 0);
    printf("%ld connections set up, used and closed in %.2f s\n", many_n,
           mono() - t0);
}

/* readexactly of 200 KB reads past the stream's buffer, straight into the
 * caller's: a deadline in the middle and an end of stream in the middle
 * both keep every byte read so far buffered and readable, in order, with
 * what was buffered before it first. */
static int exact_direct_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ca_stream *r;
    ASSERT_EQ(ca_stream_open(&r, sv[0], NULL), 0);
    enum { N = 200000 };
    static char out[N], in[N];
    for (int i = 0; i < N; i++)
        out[i] = (char)(i * 13 + 5);
    /* 10 bytes buffered first (a small readexactly leaves them there) */
    ASSERT_EQ(ca_write(sv[1], out, 60000), 60000);
    char head[5];
    ASSERT_EQ(ca_stream_readexactly(r, head, 5), 0);
    ASSERT(memcmp(head, out, 5) == 0);
    /* the rest arrives late: the deadline hits in the middle */
    ASSERT_EQ(ca_deadline_push(0.1), 0);
    ASSERT_EQ(ca_stream_readexactly(r, in, N - 5), -ETIMEDOUT);
    ca_deadline_pop();
    ASSERT_EQ(ca_write(sv[1], out + 60000, N - 60000), N - 60000);
    ASSERT_EQ(ca_stream_readexactly(r, in, N - 5), 0);
    ASSERT(memcmp(in, out + 5, N - 5) == 0);
    /* the stream ends in the middle: -CA_EINCOMPLETE, the bytes stay */
    ASSERT_EQ(ca_write(sv[1], out, 70000), 70000);
    ASSERT_EQ(shutdown(sv[1], SHUT_WR), 0);
    ASSERT_EQ(ca_stream_readexactly(r, in, N), -CA_EINCOMPLETE);
    size_t got = 0;
    ssize_t k;
    while ((k = ca_stream_read(r, in + got, N - got)) > 0)
        got += (size_t)k;
    ASSERT_EQ(k, 0);
    ASSERT_EQ(got, 70000);
    ASSERT(memcmp(in, out, 70000) == 0);
    ca_stream_close(r);
    close(sv[1]);
    return 0;
}

static void test_readexactly_direct(void)
{
    ASSERT_EQ(ca_run(exact_direct_main, NULL), 0);
}

/* ---- closing while the peer still sends ---------------------------------- */

/*
 * A peer that reads slowly and answers every read with a line: it is still
 * talking when the other side closes.  Linux answers data that arrives at
 * a closed socket (or sits unread in it at close) with RST, and a reset
 * drops what the closing side's send queue still holds: the sink got 4.3
 * to 4.6 MB of the 8 MiB, then what looked like a clean end of stream (its
 * own write had taken the ECONNRESET).
 */
struct chatty {
    size_t got;
    int status; /* the last read: 0 at a clean end */
    int done;
};

static int chatty_sink(ca_stream *s, void *arg)
{
    struct chatty *c = arg;
    char buf[16384];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof(buf));
        if (n <= 0) {
            c->status = (int)n;
            c->done = 1;
            return 0;
        }
        c->got += (size_t)n;
        (void)ca_stream_write(s, "tick\n", 5); /* still talking */
        ca_sleep(0.001);                       /* and slow to read */
    }
}

enum { CHATTY_CHUNK = 65536, CHATTY_TOTAL = 8 << 20 };

/* Write CHATTY_TOTAL bytes to c and close it at once. */
static void write_all_close(ca_stream *c)
{
    char *buf = calloc(1, CHATTY_CHUNK);
    ASSERT(buf != NULL);
    for (size_t sent = 0; sent < CHATTY_TOTAL; sent += CHATTY_CHUNK) {
        ASSERT_EQ(ca_stream_write(c, buf, CHATTY_CHUNK), 0);
        ASSERT_EQ(ca_stream_drain(c), 0);
    }
    free(buf);
    ASSERT_EQ(ca_stream_close(c), 0);
}

static int close_chatty_main(void *a)
{
    (void)a;
    struct chatty st = {.status = 1};
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, chatty_sink, &st, NULL), 0);
    ca_stream *c;
    ASSERT_EQ(ca_open_connection(&c, "127.0.0.1", (unsigned)ca_server_port(srv),
                                 NULL),
              0);
    write_all_close(c);
    for (int i = 0; i < 2000 && !st.done; i++)
        ca_sleep(0.01);
    ASSERT_EQ(st.got, (size_t)CHATTY_TOTAL);
    ASSERT_EQ(st.status, 0);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_close_while_peer_sends(void)
{
    ASSERT_EQ(ca_run(close_chatty_main, NULL), 0);
}

/*
 * The server's side of it: a handler answers early (a "413" before the
 * whole upload) and returns while the client is still sending.  Closing
 * with the upload unread reset the connection: the client's writes failed
 * with ECONNRESET (Linux still let it read the answer that had arrived).
 */
static int early_reply_handler(ca_stream *s, void *arg)
{
    (void)arg;
    char head[16];
    int r = ca_stream_readexactly(s, head, sizeof(head));
    if (r < 0)
        return r;
    r = ca_stream_write(s, "413 too large\n", 14);
    return r ? r : ca_stream_drain(s);
}

static int early_reply_main(void *a)
{
    (void)a;
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, early_reply_handler, NULL, NULL),
              0);
    ca_stream *c;
    ASSERT_EQ(ca_open_connection(&c, "127.0.0.1", (unsigned)ca_server_port(srv),
                                 NULL),
              0);
    char *buf = calloc(1, CHATTY_CHUNK);
    ASSERT(buf != NULL);
    int wr = ca_stream_write(c, buf, 16);
    for (size_t sent = 0; wr == 0 && sent < CHATTY_TOTAL;
         sent += CHATTY_CHUNK) {
        wr = ca_stream_write(c, buf, CHATTY_CHUNK);
        if (wr == 0)
            wr = ca_stream_drain(c);
    }
    free(buf);
    int eof = wr == 0 ? ca_stream_write_eof(c) : wr;
    char line[64], rest[64];
    ssize_t got = ca_stream_readline(c, line, sizeof(line));
    ssize_t end = got > 0 ? ca_stream_read(c, rest, sizeof(rest)) : got;
    ca_stream_close(c);
    ASSERT_EQ(wr, 0);
    ASSERT_EQ(eof, 0);
    ASSERT_EQ(got, 14);
    ASSERT_STREQ(line, "413 too large\n");
    ASSERT_EQ(end, 0);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_server_closes_while_client_sends(void)
{
    ASSERT_EQ(ca_run(early_reply_main, NULL), 0);
}

/*
 * A peer that floods us after our close: the loop drops 32 MiB for the
 * closed stream (in bounded bites, letting other work run), the peer's
 * writes all succeed and it still gets our data and end of stream.
 */
struct late_flood {
    int write_result;
    size_t got;
    int status;
    int done;
};

static int late_flood_handler(ca_stream *s, void *arg)
{
    struct late_flood *f = arg;
    char *buf = calloc(1, CHATTY_CHUNK);
    ASSERT(buf != NULL);
    for (size_t sent = 0; sent < (32u << 20) && f->write_result == 0;
         sent += CHATTY_CHUNK) {
        f->write_result = ca_stream_write(s, buf, CHATTY_CHUNK);
        if (f->write_result == 0)
            f->write_result = ca_stream_drain(s);
    }
    ssize_t n;
    while ((n = ca_stream_read(s, buf, CHATTY_CHUNK)) > 0)
        f->got += (size_t)n;
    f->status = (int)n;
    f->done = 1;
    free(buf);
    return 0;
}

static int late_flood_main(void *a)
{
    (void)a;
    struct late_flood f = {0};
    ca_server *srv;
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, late_flood_handler, &f, NULL), 0);
    ca_stream *c;
    ASSERT_EQ(ca_open_connection(&c, "127.0.0.1", (unsigned)ca_server_port(srv),
                                 NULL),
              0);
    static char msg[100000];
    ASSERT_EQ(ca_stream_write(c, msg, sizeof(msg)), 0);
    ASSERT_EQ(ca_stream_close(c), 0);
    for (int i = 0; i < 2000 && !f.done; i++)
        ca_sleep(0.01);
    ASSERT_EQ(f.write_result, 0);
    ASSERT_EQ(f.got, sizeof(msg));
    ASSERT_EQ(f.status, 0);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_close_then_peer_floods(void)
{
    ASSERT_EQ(ca_run(late_flood_main, NULL), 0);
}

/*
 * Unix stream sockets: closing with unread input made the peer read
 * ECONNRESET after our data instead of the end of the stream.
 */
static int unix_unread_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv),
        0);
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, sv[0], NULL), 0);
    ASSERT_EQ(ca_write(sv[1], "unread", 6), 6);
    enum { N = 50000 };
    static char big[N];
    ASSERT_EQ(ca_stream_write(s, big, N), 0);
    ASSERT_EQ(ca_stream_close(s), 0);
    size_t got = 0;
    ssize_t n;
    while ((n = ca_read(sv[1], big, N)) > 0)
        got += (size_t)n;
    ASSERT_EQ(got, (size_t)N);
    ASSERT_EQ(n, 0);
    ca_close(sv[1]);
    return 0;
}

static void test_unix_close_unread(void)
{
    ASSERT_EQ(ca_run(unix_unread_main, NULL), 0);
}

/*
 * The lingering is the loop's, never the caller's, and it is bounded: a
 * peer that neither reads nor closes gets our data and our end at once, and
 * ca_stream_close returns at once.  While the program runs, the loop keeps
 * the socket for the idle limit (2 s) and then closes it; once ca_run is
 * reaping, a socket whose data the peer's kernel has taken closes at once
 * (our end and our bytes are safe there: no wait for the peer's end).  A
 * Unix peer's unread bytes are as safe: no reason to wait for it either
 * (it was kept the full 10 s).
 */
static double linger_close_s;
static int linger_peer = -1, linger_unix_peer = -1, linger_idle_peer = -1;

/* A connected TCP pair on loopback: *a (accepted) and *c (connected). */
static void tcp_pair(int *a, int *c)
{
    int lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
    ASSERT_GE(lfd, 0);
    *c = ca_tcp_connect("127.0.0.1", (unsigned)ca_sock_port(lfd));
    ASSERT_GE(*c, 0);
    *a = ca_accept(lfd, NULL, NULL);
    ASSERT_GE(*a, 0);
    ca_close(lfd);
}

static int linger_idle_main(void *a)
{
    (void)a;
    /* while the program runs: kept for the idle limit after the last
     * input, then closed (the lingering socket is one of our fds) */
    int afd, cfd;
    tcp_pair(&afd, &cfd);
    int open_fds = test_count_fds();
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, afd, NULL), 0);
    ASSERT_EQ(ca_write(cfd, "unread", 6), 6);
    ASSERT_EQ(ca_stream_close(s), 0);
    char buf[16];
    ASSERT_EQ(ca_read(cfd, buf, sizeof(buf)), 0); /* our FIN, at once */
    double t0 = mono();
    ASSERT_EQ(ca_sleep(1.0), 0);
    ASSERT_EQ(test_count_fds(), open_fds); /* still lingering */
    ASSERT_EQ(send(cfd, "x", 1, MSG_NOSIGNAL), 1);
    /* the input restarts the idle clock: closed about 2 s after it */
    while (test_count_fds() == open_fds && mono() - t0 < 6.0)
        ASSERT_EQ(ca_sleep(0.05), 0);
    ASSERT_EQ(test_count_fds(), open_fds - 1);
    ASSERT_GE(mono() - t0, 2.5);
    ASSERT_TIME_LT(mono() - t0, 5.0);
    close(cfd);

    /* then one left lingering for ca_run */
    tcp_pair(&afd, &cfd);
    ASSERT_EQ(ca_stream_open(&s, afd, NULL), 0);
    ASSERT_EQ(ca_write(cfd, "unread", 6), 6);
    ASSERT_EQ(ca_stream_write(s, "hello", 5), 0);
    t0 = mono();
    ASSERT_EQ(ca_stream_close(s), 0);
    linger_close_s = mono() - t0;
    ASSERT_EQ(ca_read(cfd, buf, sizeof(buf)), 5);
    ASSERT(memcmp(buf, "hello", 5) == 0);
    ASSERT_EQ(ca_read(cfd, buf, sizeof(buf)), 0); /* our FIN, at once */
    linger_peer = cfd; /* stays open after main returns */

    /* and one whose peer has not read our bytes yet */
    tcp_pair(&afd, &cfd);
    ASSERT_EQ(ca_stream_open(&s, afd, NULL), 0);
    ASSERT_EQ(ca_write(cfd, "unread", 6), 6);
    ASSERT_EQ(ca_stream_write(s, "later", 5), 0);
    ASSERT_EQ(ca_stream_close(s), 0);
    linger_idle_peer = cfd;

    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    ASSERT_EQ(ca_stream_open(&s, sv[0], NULL), 0);
    ASSERT_EQ(write(sv[1], "unread", 6), 6);
    static char big[100000];
    ASSERT_EQ(ca_stream_write(s, big, sizeof(big)), 0);
    ASSERT_EQ(ca_stream_close(s), 0);
    linger_unix_peer = sv[1];
    return 0;
}

static void test_linger_bounded(void)
{
    int fds = test_count_fds();
    ASSERT_EQ(ca_run(linger_idle_main, NULL), 0);
    ASSERT_LT(linger_close_s, 0.1);
    ASSERT_EQ(test_count_fds(), fds + 3); /* only the peers' ends are left */
    /* the peer that had not read: our bytes are there, then our end (or
     * the reset that followed it) */
    char buf[16];
    ASSERT_EQ(recv(linger_idle_peer, buf, sizeof(buf), 0), 5);
    ASSERT(memcmp(buf, "later", 5) == 0);
    ssize_t n = recv(linger_idle_peer, buf, sizeof(buf), 0);
    ASSERT(n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)));
    size_t got = 0;
    static char big[100000];
    while ((n = read(linger_unix_peer, big, sizeof(big))) > 0)
        got += (size_t)n;
    ASSERT_EQ(got, sizeof(big));
    close(linger_peer);
    close(linger_idle_peer);
    close(linger_unix_peer);
}

/* ca_run does not wait for a peer's end: with three sockets lingering on
 * peers that neither read nor close, it returns at once. */
static int linger_exit_main(void *a)
{
    int *peers = a;
    for (int i = 0; i < 3; i++) {
        int afd;
        tcp_pair(&afd, &peers[i]);
        ca_stream *s;
        ASSERT_EQ(ca_stream_open(&s, afd, NULL), 0);
        ASSERT_EQ(ca_write(peers[i], "unread", 6), 6);
        ASSERT_EQ(ca_stream_write(s, "bye", 3), 0);
        ASSERT_EQ(ca_stream_close(s), 0);
    }
    return 0;
}

static void test_linger_exit(void)
{
    int peers[3];
    double t0 = mono();
    ASSERT_EQ(ca_run(linger_exit_main, peers), 0);
    ASSERT_TIME_LT(mono() - t0, 1.0);
    for (int i = 0; i < 3; i++) {
        char buf[8];
        ASSERT_EQ(recv(peers[i], buf, sizeof(buf), 0), 3);
        ASSERT(memcmp(buf, "bye", 3) == 0);
        close(peers[i]);
    }
}

/*
 * A peer that never stops sending (a thread writing 1 KiB every 10 ms and
 * never reading): the lingering ends at the total limit, 10 s after the
 * close, then the peer's writes fail.
 */
struct trickler {
    int fd;
    _Atomic int err; /* errno of the write that failed */
};

static void *trickle_forever(void *arg)
{
    struct trickler *t = arg;
    char buf[1024] = {0};
    for (int i = 0; i < 3000; i++) { /* 30 s at most */
        if (send(t->fd, buf, sizeof(buf), MSG_NOSIGNAL) < 0) {
            t->err = errno;
            break;
        }
        usleep(10000);
    }
    return NULL;
}

struct linger_limit {
    struct trickler t;
    pthread_t th;
    double gone_s; /* from the close until the peer's write failed */
};

static int linger_limit_main(void *a)
{
    struct linger_limit *ll = a;
    int lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
    ASSERT_GE(lfd, 0);
    ll->t.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(ll->t.fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)ca_sock_port(lfd)),
                             .sin_addr.s_addr = htonl(0x7f000001)};
    ASSERT_EQ(connect(ll->t.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    int afd = ca_accept(lfd, NULL, NULL);
    ASSERT_GE(afd, 0);
    ca_close(lfd);
    ASSERT_EQ(pthread_create(&ll->th, NULL, trickle_forever, &ll->t), 0);
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, afd, NULL), 0);
    ASSERT_EQ(ca_stream_write(s, "bye", 3), 0);
    double t0 = mono();
    ASSERT_EQ(ca_stream_close(s), 0);
    while (!ll->t.err && mono() - t0 < 15.0)
        ASSERT_EQ(ca_sleep(0.05), 0);
    ll->gone_s = mono() - t0;
    return 0;
}

static void test_linger_limit(void)
{
    struct linger_limit ll = {.t.fd = -1};
    int fds = test_count_fds();
    ASSERT_EQ(ca_run(linger_limit_main, &ll), 0);
    ASSERT_EQ(pthread_join(ll.th, NULL), 0);
    close(ll.t.fd);
    ASSERT_GE(ll.gone_s, 9.5);       /* the loop dropped input for 10 s */
    ASSERT_TIME_LT(ll.gone_s, 12.0); /* and no more */
    ASSERT(ll.t.err == ECONNRESET || ll.t.err == EPIPE);
    ASSERT_EQ(test_count_fds(), fds);
}

static const struct test_case tests[] = {
    {"readexactly_direct", test_readexactly_direct, 20, 0},
    {"echo_and_stream_reads", test_echo_and_stream_reads, 20, 0},
    {"stream_limits", test_stream_limits, 10, 0},
    {"short_read_then_fin", test_short_read_then_fin, 20, 0},
    {"stream_open_blocking_fd", test_stream_open_blocking_fd, 10, 0},
    {"unix_sockets", test_unix_sockets, 10, 0},
    {"backpressure", test_backpressure, 10, 0},
    {"write_ceiling", test_write_ceiling, 20, 0},
    {"write_gathering", test_write_gathering, 20, 0},
    {"peer_reset", test_peer_reset, 10, 0},
    {"peer_reset_while_writing", test_peer_reset_while_writing, 10, 0},
    {"half_open_client", test_half_open_client, 10, 0},
    {"graceful_shutdown_and_limits", test_graceful_shutdown_and_limits, 20, 0},
    {"slow_client", test_slow_client, 10, 0},
    {"slow_client_100ms", test_slow_client_100ms, 10, 0},
    {"peer_and_close_abort_clients", test_peer_and_close_abort_clients, 10, 0},
    {"accept_storm", test_accept_storm, 20, 0},
    {"server_releases_connections", test_server_releases_connections, 30, 0},
    {"server_cancel_unstarted", test_server_cancel_unstarted, 10, 0},
    {"dgram_full_receiver", test_dgram_full_receiver, 10, 0},
    {"datagrams_fd_passing_sendfile", test_datagrams_fd_passing_sendfile, 10,
     0},
    {"close_while_peer_sends", test_close_while_peer_sends, 30, 0},
    {"server_closes_while_client_sends", test_server_closes_while_client_sends,
     30, 0},
    {"close_then_peer_floods", test_close_then_peer_floods, 20, 0},
    {"unix_close_unread", test_unix_close_unread, 10, 0},
    {"linger_bounded", test_linger_bounded, 20, 0},
    {"linger_exit", test_linger_exit, 20, 0},
    {"linger_limit", test_linger_limit, 40, 0},
    {"10k_connections", test_10k_connections, 120, 1},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
