/*
 * DNS: lookups through c-ares against a DNS server this test runs itself on
 * 127.0.0.1 (a UDP task that answers A and AAAA queries from the records
 * table below, NXDOMAIN for other names and missing.*, SERVFAIL for fail.*,
 * and never answers slow.*), and over TCP on the same port for answers
 * too long for UDP (big.*).
 *
 * Not tested here: /etc/hosts lookups of arbitrary names.  ca_dns_opts has
 * no way to point the resolver at another hosts file, and the test must not
 * edit the system's; only "localhost" (answered without asking the server)
 * is checked.
 */
#include "cawait.h"
#include "runner.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dns_fd;
static int queries_seen;
/* Queries for slow.* names (never answered). */
static int slow_seen;
/* Queries for dual.cawait.test, by type. */
static int dual_a_seen, dual_aaaa_seen;
/* Queries for big.cawait.test: [0] over UDP, [1] over TCP. */
static int big_queries_seen[2];
static int dns_tcp_fd;
static ca_task *dns_tcp_task;

#define T_A 1
#define T_AAAA 28

/* What the server knows: a name with at least one record exists (a query
 * for a type it has no record of gets NOERROR with no answer); answers go
 * out in table order. */
static const struct record {
    const char *name;
    int type;
    unsigned char addr[16];
} records[] = {
    {"ok.cawait.test", T_A, {127, 0, 0, 1}},
    {"dual.cawait.test", T_A, {127, 0, 0, 1}},
    {"dual.cawait.test", T_AAAA, {[15] = 1}}, /* ::1 */
    {"v6.cawait.test", T_AAAA, {0x20, 0x01, 0x0d, 0xb8, [15] = 1}},
    /* Happy Eyeballs: a dead address first, then a working one */
    {"he.cawait.test", T_A, {127, 0, 0, 2}},
    {"he.cawait.test", T_A, {127, 0, 0, 1}},
    /* two dead addresses */
    {"dead.cawait.test", T_A, {127, 0, 0, 2}},
    {"dead.cawait.test", T_A, {127, 0, 0, 3}},
};
#define NRECORDS (sizeof(records) / sizeof(records[0]))

/* Decode the question name into dotted form; returns the offset after the
 * question (name + type + class) or -1. */
static int parse_question(const unsigned char *q, int len, char *name,
                          int *qtype)
{
    int off = 12, n = 0;
    while (off < len && q[off]) {
        int l = q[off++];
        if (l > 63 || off + l > len || n + l + 2 > 255)
            return -1;
        if (n)
            name[n++] = '.';
        memcpy(name + n, q + off, (size_t)l);
        n += l;
        off += l;
    }
    name[n] = '\0';
    if (off + 5 > len)
        return -1;
    off++;
    *qtype = (q[off] << 8) | q[off + 1];
    return off + 4;
}

/* big.cawait.test: BIG_N A records 127.0.1.1, 127.0.1.2...: 16 bytes
 * each, more than a 512-byte UDP answer holds. */
#define BIG_N 40

static int add_a(unsigned char *out, int len, int qtype, const unsigned char *addr)
{
    int alen = qtype == T_AAAA ? 16 : 4;
    /* name (pointer to the question), type, class IN, TTL 60, RDLENGTH,
     * RDATA */
    const unsigned char rr[] = {0xc0, 0x0c, 0, (unsigned char)qtype,
                                0,    1,    0, 0,
                                0,    60,   0, (unsigned char)alen};
    memcpy(out + len, rr, sizeof(rr));
    len += (int)sizeof(rr);
    memcpy(out + len, addr, (size_t)alen);
    return len + alen;
}

/* The answer to the query q[0..n) in out (room for 2048 bytes): its
 * length, or -1 for no answer.  Over UDP, an answer longer than 512 bytes
 * is cut to its header and question with the TC bit set, as a real server
 * does, so that the client asks again over TCP. */
static int dns_answer(const unsigned char *q, int n, unsigned char *out,
                      int tcp)
{
    char name[256];
    int qtype;
    int end = parse_question(q, n, name, &qtype);
    if (end < 0)
        return -1;
    if (strncmp(name, "slow.", 5) == 0) {
        slow_seen++;
        return -1; /* never answer */
    }
    if (strcmp(name, "dual.cawait.test") == 0) {
        dual_a_seen += qtype == T_A;
        dual_aaaa_seen += qtype == T_AAAA;
    }
    if (strcmp(name, "big.cawait.test") == 0)
        big_queries_seen[tcp]++;
    int rcode = 3, answers = 0; /* NXDOMAIN unless the name is known */
    memcpy(out, q, (size_t)end);
    int len = end;
    if (strncmp(name, "fail.", 5) == 0) {
        rcode = 2; /* SERVFAIL */
    } else if (strcmp(name, "big.cawait.test") == 0) {
        rcode = 0;
        for (int i = 1; qtype == T_A && i <= BIG_N; i++, answers++)
            len = add_a(out, len, qtype,
                        (const unsigned char[]){127, 0, 1, (unsigned char)i});
    } else {
        for (size_t i = 0; i < NRECORDS; i++) {
            if (strcmp(name, records[i].name) != 0)
                continue;
            rcode = 0;
            if (records[i].type != qtype)
                continue;
            len = add_a(out, len, qtype, records[i].addr);
            answers++;
        }
    }
    int tc = !tcp && len > 512;
    if (tc) {
        len = end;
        answers = 0;
    }
    out[2] = (unsigned char)(0x80 | (tc ? 0x02 : 0) | (q[2] & 0x01)); /* QR, TC, RD */
    out[3] = (unsigned char)(0x80 | rcode); /* RA, RCODE */
    out[6] = 0;
    out[7] = (unsigned char)answers; /* ANCOUNT */
    memset(out + 8, 0, 4);           /* NSCOUNT, ARCOUNT */
    return len;
}

static int dns_server(void *a)
{
    (void)a;
    unsigned char buf[512];
    for (;;) {
        struct sockaddr_storage from;
        socklen_t flen = sizeof(from);
        ssize_t n = ca_recvfrom(dns_fd, buf, sizeof(buf),
                                (struct sockaddr *)&from, &flen);
        if (n < 0)
            return n == -ECANCELED ? 0 : (int)n;
        if (n < 12)
            continue;
        queries_seen++;
        unsigned char out[2048];
        int len = dns_answer(buf, (int)n, out, 0);
        if (len > 0)
            ca_sendto(dns_fd, out, (size_t)len, (struct sockaddr *)&from,
                      flen);
    }
}

/* Read exactly n bytes: 0, or -1 at end of stream or on an error. */
static int read_full(int fd, unsigned char *p, size_t n)
{
    while (n) {
        ssize_t r = ca_read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* DNS over TCP (RFC 1035 4.2.2: each message after its 2-byte length), on
 * the UDP server's port: one connection at a time, each query answered in
 * one write, so that the length and the message arrive together. */
static int dns_tcp_conn(int fd)
{
    for (;;) {
        unsigned char len2[2], q[512], out[2 + 2048];
        if (read_full(fd, len2, 2) < 0)
            return 0;
        int n = (len2[0] << 8) | len2[1];
        if (n < 12 || n > (int)sizeof(q) || read_full(fd, q, (size_t)n) < 0)
            return 0;
        int len = dns_answer(q, n, out + 2, 1);
        if (len < 0)
            continue;
        out[0] = (unsigned char)(len >> 8);
        out[1] = (unsigned char)len;
        if (ca_write(fd, out, (size_t)len + 2) < 0)
            return 0;
    }
}

static int dns_tcp_server(void *a)
{
    (void)a;
    for (;;) {
        int fd = ca_accept(dns_tcp_fd, NULL, NULL);
        if (fd < 0)
            return fd == -ECANCELED ? 0 : fd;
        dns_tcp_conn(fd);
        ca_close(fd);
    }
}

static ca_task *start_dns(void)
{
#ifndef CAWAIT_HAVE_CARES
    SKIP("built without c-ares: names are not resolved");
#endif
    /* UDP and TCP on one port: a free TCP port first (the port range is
     * shared with the other tests' connections), then UDP on it. */
    dns_fd = -1;
    for (int i = 0; i < 50 && dns_fd < 0; i++) {
        dns_tcp_fd = ca_tcp_listen("127.0.0.1", 0, NULL);
        ASSERT_GE(dns_tcp_fd, 0);
        dns_fd = ca_udp_bind("127.0.0.1", (unsigned)ca_sock_port(dns_tcp_fd));
        if (dns_fd < 0)
            ca_close(dns_tcp_fd);
    }
    ASSERT_GE(dns_fd, 0);
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", ca_sock_port(dns_fd));
    ca_dns_opts o = {.servers = servers, .timeout_ms = 100, .tries = 2};
    ASSERT_EQ(ca_dns_configure(&o), 0);
    ca_task *t = ca_spawn(dns_server, NULL);
    ASSERT(t);
    dns_tcp_task = ca_spawn(dns_tcp_server, NULL);
    ASSERT(dns_tcp_task);
    return t;
}

static void stop_dns(ca_task *t)
{
    ca_task *ts[2] = {t, dns_tcp_task};
    for (int i = 0; i < 2; i++) {
        ca_cancel(ts[i]);
        ca_join(ts[i]);
        ca_task_release(ts[i]);
    }
    ca_close(dns_fd);
    ca_close(dns_tcp_fd);
}

static int lookups_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    ca_addrinfo *ai;
    ASSERT_EQ(ca_getaddrinfo("ok.cawait.test", 8080, AF_INET, SOCK_STREAM, &ai),
              0);
    ASSERT(ai && ai->family == AF_INET);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ai->addr;
    ASSERT_EQ(ntohs(sin->sin_port), 8080);
    ASSERT_EQ(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    ca_freeaddrinfo(ai);

    ASSERT_EQ(ca_getaddrinfo("missing.cawait.test", 80, AF_UNSPEC, 0, &ai),
              -CA_ENOTFOUND);
    ASSERT(ai == NULL);
    ASSERT_EQ(ca_getaddrinfo("fail.cawait.test", 80, AF_INET, 0, &ai),
              -CA_EDNSFAIL);
    double t0 = mono();
    ASSERT_EQ(ca_getaddrinfo("slow.cawait.test", 80, AF_INET, 0, &ai),
              -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 2.0); /* 2 tries x 100 ms, with back-off */

    /* /etc/hosts: localhost is answered without asking the server */
    int before = queries_seen;
    ASSERT_EQ(ca_getaddrinfo("localhost", 1, AF_INET, 0, &ai), 0);
    ca_freeaddrinfo(ai);
    ASSERT_EQ(queries_seen, before);

    /* IPv4 literals in every form getaddrinfo(3) takes are answered
     * without a query; "1.2.3.4 x" (inet_aton would take it) is a name */
    static const char *const v4[] = {"127.0.0.1", "127.1", "0x7f.1",
                                     "0177.0.0.1", "2130706433"};
    for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++) {
        ASSERT_EQ(ca_getaddrinfo(v4[i], 81, AF_UNSPEC, SOCK_STREAM, &ai), 0);
        ASSERT(ai && !ai->next && ai->family == AF_INET);
        ASSERT_EQ(ai->socktype, SOCK_STREAM);
        sin = (struct sockaddr_in *)&ai->addr;
        ASSERT_EQ(ntohs(sin->sin_port), 81);
        ASSERT_EQ(ntohl(sin->sin_addr.s_addr), 0x7f000001);
        ca_freeaddrinfo(ai);
    }
    /* IPv6 literals too, unless only IPv4 is asked for */
    static const char *const v6[] = {"::1", "0:0:0:0:0:0:0:1",
                                     "::ffff:127.0.0.1"};
    for (size_t i = 0; i < sizeof(v6) / sizeof(v6[0]); i++) {
        for (int fam = AF_UNSPEC; fam <= AF_INET6; fam += AF_INET6) {
            ASSERT_EQ(ca_getaddrinfo(v6[i], 82, fam, SOCK_DGRAM, &ai), 0);
            ASSERT(ai && !ai->next && ai->family == AF_INET6);
            ASSERT_EQ(ai->socktype, SOCK_DGRAM);
            ASSERT_EQ(ai->protocol, IPPROTO_UDP);
            ASSERT_EQ(ai->addrlen, (socklen_t)sizeof(struct sockaddr_in6));
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ai->addr;
            ASSERT_EQ(ntohs(s6->sin6_port), 82);
            struct in6_addr want;
            ASSERT_EQ(inet_pton(AF_INET6, v6[i], &want), 1);
            ASSERT(memcmp(&s6->sin6_addr, &want, sizeof(want)) == 0);
            ca_freeaddrinfo(ai);
        }
    }
    /* a literal of the other family: not found, and not asked for */
    ASSERT_EQ(ca_getaddrinfo("::1", 80, AF_INET, 0, &ai), -CA_ENOTFOUND);
    ASSERT(ai == NULL);
    ASSERT_EQ(ca_getaddrinfo("127.1", 80, AF_INET6, 0, &ai), -CA_ENOTFOUND);
    ASSERT(ai == NULL);
    ASSERT_EQ(queries_seen, before);
    ASSERT_EQ(ca_getaddrinfo("127.0.0.1 x", 80, AF_INET, 0, &ai),
              -CA_ENOTFOUND);
    ASSERT_GT(queries_seen, before);

    /* errors */
    ASSERT_EQ(ca_getaddrinfo(NULL, 80, AF_INET, 0, &ai), -EINVAL);
    ASSERT_EQ(ca_getaddrinfo("x", 80, 12345, 0, &ai), -EINVAL);
    ASSERT_EQ(ca_getaddrinfo("x", 80, AF_INET, 0, NULL), -EINVAL);
    stop_dns(srv);
    return 0;
}

static void test_lookups(void)
{
    ASSERT_EQ(ca_run(lookups_main, NULL), 0);
    ca_addrinfo *ai;
    ASSERT_EQ(ca_getaddrinfo("ok.cawait.test", 1, 0, 0, &ai), -EPERM);
}

/* Many lookups at once; a SERVFAIL does not fail the others (the c-ares
 * 1.18 trap that ARES_FLAG_NOCHECKRESP avoids). */
struct lookup {
    const char *name;
    int result;
};

static int lookup_task(void *a)
{
    struct lookup *l = a;
    ca_addrinfo *ai = NULL;
    l->result = ca_getaddrinfo(l->name, 80, AF_INET, 0, &ai);
    ca_freeaddrinfo(ai);
    return 0;
}

static int concurrent_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    enum { N = 30 };
    struct lookup ls[N];
    ca_task *ts[N];
    for (int i = 0; i < N; i++) {
        ls[i].name = i % 3 == 1 ? "fail.cawait.test" : "ok.cawait.test";
        ts[i] = ca_spawn(lookup_task, &ls[i]);
    }
    ASSERT_EQ(ca_gather(ts, N, CA_GATHER_ALL), 0);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(ls[i].result, i % 3 == 1 ? -CA_EDNSFAIL : 0);
        ca_task_release(ts[i]);
    }
    stop_dns(srv);
    return 0;
}

static void test_concurrent_and_servfail(void)
{
    ASSERT_EQ(ca_run(concurrent_main, NULL), 0);
}

/* Cancellation and deadlines reach c-ares: nothing lingers, no leak. */
static int cancel_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    ca_dns_opts o = {.servers = NULL, .timeout_ms = 5000, .tries = 4};
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", ca_sock_port(dns_fd));
    o.servers = servers;
    ASSERT_EQ(ca_dns_configure(&o), 0);
    struct lookup l = {"slow.cawait.test", 1};
    ca_task *t = ca_spawn(lookup_task, &l);
    ASSERT_EQ(ca_sleep(0.05), 0);
    double t0 = mono();
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), 0);
    ASSERT_EQ(l.result, -ECANCELED);
    ASSERT_TIME_LT(mono() - t0, 0.5);
    ca_task_release(t);

    ASSERT_EQ(ca_deadline_push(0.05), 0);
    ca_addrinfo *ai;
    ASSERT_EQ(ca_getaddrinfo("slow.cawait.test", 80, AF_INET, 0, &ai),
              -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    stop_dns(srv);
    return 0;
}

static void test_cancel_and_deadline(void)
{
    ASSERT_EQ(ca_run(cancel_main, NULL), 0);
}

/* Connect by name: resolved through our server, then connected. */
static int accept_one(void *a)
{
    int lfd = *(int *)a;
    int fd = ca_accept(lfd, NULL, NULL);
    if (fd >= 0)
        ca_close(fd);
    return fd < 0 ? fd : 0;
}

static int connect_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    int lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
    ASSERT_GE(lfd, 0);
    ca_task *acc = ca_spawn(accept_one, &lfd);
    int fd = ca_tcp_connect("ok.cawait.test", (unsigned)ca_sock_port(lfd));
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ca_join(acc), 0);
    ca_close(fd);
    ASSERT_EQ(ca_tcp_connect("missing.cawait.test", 80), -CA_ENOTFOUND);
    ca_task_release(acc);
    ca_close(lfd);
    stop_dns(srv);
    return 0;
}

static void test_connect_by_name(void)
{
    ASSERT_EQ(ca_run(connect_main, NULL), 0);
}

/* Happy Eyeballs: localhost gives ::1 and 127.0.0.1; the listener is IPv4
 * only, so ::1 is refused and 127.0.0.1 wins without waiting 250 ms. */
static int eyeballs_main(void *a)
{
    (void)a;
    int lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
    ASSERT_GE(lfd, 0);
    ca_task *acc = ca_spawn(accept_one, &lfd);
    double t0 = mono();
    int fd = ca_tcp_connect("localhost", (unsigned)ca_sock_port(lfd));
    ASSERT_GE(fd, 0);
    ASSERT_TIME_LT(mono() - t0, 0.2);
    ASSERT_EQ(ca_join(acc), 0);
    ca_close(fd);
    ca_task_release(acc);
    ca_close(lfd);
    return 0;
}

static void test_happy_eyeballs_fallback(void)
{
    ASSERT_EQ(ca_run(eyeballs_main, NULL), 0);
}

/* ---- AAAA records: AF_INET6 and AF_UNSPEC ------------------------------- */

static int count_family(const ca_addrinfo *ai, int family)
{
    int n = 0;
    for (; ai; ai = ai->next)
        n += ai->family == family;
    return n;
}

static int is_v6(const ca_addrinfo *ai, const unsigned char want[16],
                 unsigned port)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ai->addr;
    return ai->family == AF_INET6 && s6->sin6_family == AF_INET6 &&
           ai->addrlen == sizeof(*s6) && ntohs(s6->sin6_port) == port &&
           memcmp(&s6->sin6_addr, want, 16) == 0;
}

/* AF_INET6 asks only for AAAA and returns the IPv6 address (port filled
 * in); AF_UNSPEC asks for both and returns both families; a name with no
 * record of the family asked for is -CA_ENOTFOUND. */
static int families_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    static const unsigned char loop6[16] = {[15] = 1};
    static const unsigned char doc6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
    ca_addrinfo *ai;

    int a0 = dual_a_seen, aaaa0 = dual_aaaa_seen;
    ASSERT_EQ(ca_getaddrinfo("dual.cawait.test", 443, AF_INET6, SOCK_STREAM,
                             &ai),
              0);
    ASSERT(ai && !ai->next);
    ASSERT(is_v6(ai, loop6, 443));
    ASSERT_EQ(ai->socktype, SOCK_STREAM);
    ca_freeaddrinfo(ai);
    ASSERT_EQ(dual_a_seen, a0); /* no A query for AF_INET6 */
    ASSERT_EQ(dual_aaaa_seen, aaaa0 + 1);

    a0 = dual_a_seen;
    aaaa0 = dual_aaaa_seen;
    ASSERT_EQ(ca_getaddrinfo("dual.cawait.test", 443, AF_UNSPEC, SOCK_STREAM,
                             &ai),
              0);
    ASSERT_EQ(count_family(ai, AF_INET6), 1);
    ASSERT_EQ(count_family(ai, AF_INET), 1);
    ASSERT(ai->next && !ai->next->next);
    for (ca_addrinfo *p = ai; p; p = p->next) {
        if (p->family == AF_INET6) {
            ASSERT(is_v6(p, loop6, 443));
        } else {
            struct sockaddr_in *sin = (struct sockaddr_in *)&p->addr;
            ASSERT_EQ(p->addrlen, sizeof(*sin));
            ASSERT_EQ(ntohs(sin->sin_port), 443);
            ASSERT_EQ(ntohl(sin->sin_addr.s_addr), 0x7f000001);
        }
    }
    ca_freeaddrinfo(ai);
    ASSERT_EQ(dual_a_seen, a0 + 1);
    ASSERT_EQ(dual_aaaa_seen, aaaa0 + 1);

    /* AF_INET on the same name: the IPv4 address only */
    ASSERT_EQ(ca_getaddrinfo("dual.cawait.test", 80, AF_INET, 0, &ai), 0);
    ASSERT(ai && !ai->next && ai->family == AF_INET);
    ca_freeaddrinfo(ai);

    /* an IPv6-only name */
    ASSERT_EQ(ca_getaddrinfo("v6.cawait.test", 53, AF_INET6, SOCK_DGRAM, &ai),
              0);
    ASSERT(ai && !ai->next);
    ASSERT(is_v6(ai, doc6, 53));
    ASSERT_EQ(ai->socktype, SOCK_DGRAM);
    ca_freeaddrinfo(ai);
    ASSERT_EQ(ca_getaddrinfo("v6.cawait.test", 53, AF_UNSPEC, SOCK_STREAM, &ai),
              0);
    ASSERT(ai && !ai->next);
    ASSERT(is_v6(ai, doc6, 53));
    ca_freeaddrinfo(ai);

    /* no address of the family asked for */
    ASSERT_EQ(ca_getaddrinfo("v6.cawait.test", 53, AF_INET, 0, &ai),
              -CA_ENOTFOUND);
    ASSERT(ai == NULL);
    ASSERT_EQ(ca_getaddrinfo("ok.cawait.test", 53, AF_INET6, 0, &ai),
              -CA_ENOTFOUND);
    ASSERT(ai == NULL);
    stop_dns(srv);
    return 0;
}

static void test_ipv6_and_unspec(void)
{
    ASSERT_EQ(ca_run(families_main, NULL), 0);
}

/* ---- a cancelled lookup stops sending queries ----------------------------- */

/*
 * With 100 ms per try and 4 tries, c-ares sends a query that is never
 * answered at 0, 0.1, 0.3 and 0.7 s (the timeout doubles each round).  Left
 * alone, a lookup of slow.* therefore keeps reaching the server during the
 * observation window; once it is cancelled (or its deadline passes), not
 * one more query may arrive.  Queries sent before the cancel are counted
 * before the window starts.
 */
#define QUIET_WINDOW 0.8

static int cancel_queries_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", ca_sock_port(dns_fd));
    ca_dns_opts o = {.servers = servers, .timeout_ms = 100, .tries = 4};
    ASSERT_EQ(ca_dns_configure(&o), 0);

    /* control: a lookup left alone keeps retrying in the window */
    struct lookup ctl = {"slow.cawait.test", 1};
    int q0 = queries_seen;
    ca_task *t = ca_spawn(lookup_task, &ctl);
    ASSERT_EQ(ca_sleep(0.05), 0);
    int q1 = queries_seen;
    ASSERT_GT(q1, q0);
    ASSERT_EQ(ca_sleep(QUIET_WINDOW), 0);
    ASSERT_GE(queries_seen - q1, 2);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ASSERT_EQ(ctl.result, -ECANCELED);

    /* cancelled after its first retry */
    ASSERT_EQ(ca_sleep(0.05), 0);
    struct lookup l = {"slow.cawait.test", 1};
    q0 = queries_seen;
    t = ca_spawn(lookup_task, &l);
    ASSERT_EQ(ca_sleep(0.15), 0);
    ASSERT_GT(queries_seen, q0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ASSERT_EQ(l.result, -ECANCELED);
    ASSERT_EQ(ca_sleep(0.05), 0); /* what was sent before has arrived */
    q1 = queries_seen;
    ASSERT_EQ(ca_sleep(QUIET_WINDOW), 0);
    ASSERT_EQ(queries_seen, q1);

    /* ended by a deadline scope before its first retry */
    q0 = queries_seen;
    ca_addrinfo *ai;
    ASSERT_EQ(ca_deadline_push(0.05), 0);
    ASSERT_EQ(ca_getaddrinfo("slow.cawait.test", 80, AF_UNSPEC, 0, &ai),
              -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_sleep(0.05), 0);
    q1 = queries_seen;
    ASSERT_GT(q1, q0);
    ASSERT_EQ(ca_sleep(QUIET_WINDOW), 0);
    ASSERT_EQ(queries_seen, q1);
    stop_dns(srv);
    return 0;
}

static void test_cancel_stops_queries(void)
{
    ASSERT_EQ(ca_run(cancel_queries_main, NULL), 0);
}

/* ---- Happy Eyeballs with an address that never answers -------------------- */

/* A listener on addr:port whose accept queue is full, so that the kernel
 * drops every further SYN: a connect to it neither succeeds nor fails (for
 * the minutes of SYN retries), like a host that is down. */
struct blackhole {
    int lfd;
    int fill[8];
};

static void blackhole_open(struct blackhole *b, const char *addr, int port)
{
    ca_listen_opts lo = {.backlog = 1};
    b->lfd = ca_tcp_listen(addr, (unsigned)port, &lo);
    ASSERT_GE(b->lfd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    ASSERT_EQ(inet_pton(AF_INET, addr, &sa.sin_addr), 1);
    for (int i = 0; i < 8; i++) {
        b->fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            0);
        ASSERT_GE(b->fill[i], 0);
        connect(b->fill[i], (struct sockaddr *)&sa, sizeof(sa));
    }
}

static void blackhole_close(struct blackhole *b)
{
    for (int i = 0; i < 8; i++)
        close(b->fill[i]);
    ca_close(b->lfd);
}

static unsigned ipv4_of(const ca_addrinfo *ai)
{
    return ntohl(((const struct sockaddr_in *)&ai->addr)->sin_addr.s_addr);
}

/*
 * he.cawait.test answers 127.0.0.2 (a black hole) and then 127.0.0.1 (a
 * working listener on the same port).  The first attempt hangs; the second
 * starts 250 ms later and wins: the connect takes at least the stagger
 * delay and far less than the first attempt's own timeout (minutes), ends
 * connected to 127.0.0.1, and the losing attempt's socket is closed.
 */
static int stagger_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    int lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
    ASSERT_GE(lfd, 0);
    int port = ca_sock_port(lfd);
    struct blackhole bh;
    blackhole_open(&bh, "127.0.0.2", port);
    ASSERT_EQ(ca_sleep(0.1), 0); /* the fillers' handshakes complete */

    /* The resolver keeps the server's order (the precondition of the
     * timing below). */
    ca_addrinfo *ai;
    ASSERT_EQ(ca_getaddrinfo("he.cawait.test", (unsigned)port, AF_UNSPEC,
                             SOCK_STREAM, &ai),
              0);
    ASSERT(ai && ai->next && !ai->next->next);
    ASSERT_EQ(ipv4_of(ai), 0x7f000002);
    ASSERT_EQ(ipv4_of(ai->next), 0x7f000001);
    ca_freeaddrinfo(ai);

    /* The black hole really is one: alone, the connect just waits. */
    ASSERT_EQ(ca_deadline_push(0.5), 0);
    ASSERT_EQ(ca_tcp_connect("127.0.0.2", (unsigned)port), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);

    int fds0 = test_count_fds();
    ca_task *acc = ca_spawn(accept_one, &lfd);
    double t0 = mono();
    int fd = ca_tcp_connect("he.cawait.test", (unsigned)port);
    double dt = mono() - t0;
    ASSERT_GE(fd, 0);
    ASSERT_GE(dt, 0.25);     /* the second attempt waited for the stagger */
    ASSERT_TIME_LT(dt, 1.5); /* and did not wait for the first to fail */
    struct sockaddr_in peer;
    socklen_t plen = sizeof(peer);
    ASSERT_EQ(getpeername(fd, (struct sockaddr *)&peer, &plen), 0);
    ASSERT_EQ(ntohl(peer.sin_addr.s_addr), 0x7f000001);
    ASSERT_EQ(ntohs(peer.sin_port), port);
    ASSERT_EQ(ca_join(acc), 0);
    ca_task_release(acc);
    ca_close(fd);
    ASSERT_EQ(test_count_fds(), fds0); /* the losing attempt's socket is closed */

    blackhole_close(&bh);
    ca_close(lfd);
    stop_dns(srv);
    return 0;
}

static void test_happy_eyeballs_stagger(void)
{
    ASSERT_EQ(ca_run(stagger_main, NULL), 0);
}

struct connect_try {
    const char *host;
    unsigned port;
    int result;
};

static int connect_task(void *a)
{
    struct connect_try *c = a;
    c->result = ca_tcp_connect(c->host, c->port);
    if (c->result >= 0)
        ca_close(c->result);
    return 0;
}

/* Cancel a task blocked in ca_tcp_connect after `after` seconds: it returns
 * -ECANCELED at once and leaves no socket behind. */
static void cancel_connect(const char *host, unsigned port, double after)
{
    int fds0 = test_count_fds();
    struct connect_try c = {host, port, 1};
    ca_task *t = ca_spawn(connect_task, &c);
    ASSERT(t);
    ASSERT_EQ(ca_sleep(after), 0);
    ASSERT(!ca_task_done(t)); /* still connecting */
    double t0 = mono();
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), 0);
    ASSERT_TIME_LT(mono() - t0, 0.5);
    ca_task_release(t);
    ASSERT_EQ(c.result, -ECANCELED);
    ASSERT_EQ(test_count_fds(), fds0);
}

/* A deadline scope of `secs` around ca_tcp_connect: -ETIMEDOUT when it
 * passes, not later, and no socket left behind. */
static void deadline_connect(const char *host, unsigned port, double secs)
{
    int fds0 = test_count_fds();
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(secs), 0);
    ASSERT_EQ(ca_tcp_connect(host, port), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, secs);
    ASSERT_TIME_LT(dt, secs + 0.5);
    ASSERT_EQ(test_count_fds(), fds0);
}

/*
 * Connecting to addresses that never answer: a deadline scope ends
 * ca_tcp_connect with -ETIMEDOUT when it passes, and cancelling a task
 * blocked in it gives -ECANCELED, for one numeric address and for a name
 * whose two addresses are raced (before the stagger starts the second
 * attempt, and after, with both running); no descriptor is leaked.
 */
static int connect_abort_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    int lfd = ca_tcp_listen("127.0.0.2", 0, NULL); /* picks the port */
    ASSERT_GE(lfd, 0);
    int port = ca_sock_port(lfd);
    ca_close(lfd);
    struct blackhole b2, b3;
    blackhole_open(&b2, "127.0.0.2", port);
    blackhole_open(&b3, "127.0.0.3", port);
    ASSERT_EQ(ca_sleep(0.1), 0);

    deadline_connect("127.0.0.2", (unsigned)port, 0.2);
    deadline_connect("dead.cawait.test", (unsigned)port, 0.1);
    deadline_connect("dead.cawait.test", (unsigned)port, 0.4);
    cancel_connect("127.0.0.2", (unsigned)port, 0.1);
    cancel_connect("dead.cawait.test", (unsigned)port, 0.1);
    cancel_connect("dead.cawait.test", (unsigned)port, 0.4);

    blackhole_close(&b2);
    blackhole_close(&b3);
    stop_dns(srv);
    return 0;
}

static void test_connect_deadline_and_cancel(void)
{
    ASSERT_EQ(ca_run(connect_abort_main, NULL), 0);
}

/* ---- answers too long for UDP come over TCP -------------------------------- */

/*
 * big.cawait.test has 40 A records (700 bytes): the server answers over UDP
 * with the TC bit and no records, c-ares asks again over TCP, and the
 * lookup returns all 40 in the server's order, within one try's timeout,
 * not -ETIMEDOUT after all tries (c-ares reads the TCP answer in two steps;
 * the loop's edge-triggered epoll reports the bytes once).
 */
static int tcp_answer_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    int udp0 = big_queries_seen[0], tcp0 = big_queries_seen[1];
    ca_addrinfo *ai = NULL;
    double t0 = mono();
    ASSERT_EQ(ca_getaddrinfo("big.cawait.test", 80, AF_INET, SOCK_STREAM, &ai),
              0);
    ASSERT_TIME_LT(mono() - t0, 1.0);
    int n = 0;
    for (ca_addrinfo *p = ai; p; p = p->next, n++)
        if (n < BIG_N)
            ASSERT_EQ(ipv4_of(p), 0x7f000101u + (unsigned)n);
    ASSERT_EQ(n, BIG_N);
    ca_freeaddrinfo(ai);
    ASSERT_GT(big_queries_seen[0], udp0); /* truncated over UDP */
    ASSERT_GT(big_queries_seen[1], tcp0); /* then asked over TCP */

    /* AF_UNSPEC: the A answer over TCP, the (empty) AAAA one over UDP */
    ASSERT_EQ(ca_getaddrinfo("big.cawait.test", 80, AF_UNSPEC, 0, &ai), 0);
    n = 0;
    for (ca_addrinfo *p = ai; p; p = p->next)
        n++;
    ASSERT_EQ(n, BIG_N);
    ca_freeaddrinfo(ai);
    stop_dns(srv);
    return 0;
}

static void test_tcp_answer(void)
{
    ASSERT_EQ(ca_run(tcp_answer_main, NULL), 0);
}

/* ---- connecting by name tries every address ------------------------------- */

/*
 * Of big.cawait.test's 40 addresses only the 20th, 127.0.1.20, listens:
 * ca_tcp_connect goes through the 19 refusals (each starts the next
 * attempt at once) and connects to it, as asyncio and getaddrinfo(3) loops
 * do; it used to give up with -ECONNREFUSED after the first 8.  When none
 * listens, the error is the last refusal and no socket is left behind.
 */
static int many_addrs_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    int lfd = ca_tcp_listen("127.0.1.20", 0, NULL);
    ASSERT_GE(lfd, 0);
    unsigned port = (unsigned)ca_sock_port(lfd);
    int fds0 = test_count_fds();
    ca_task *acc = ca_spawn(accept_one, &lfd);
    double t0 = mono();
    int fd = ca_tcp_connect("big.cawait.test", port);
    ASSERT_GE(fd, 0);
    ASSERT_TIME_LT(mono() - t0, 2.0);
    struct sockaddr_in peer;
    socklen_t plen = sizeof(peer);
    ASSERT_EQ(getpeername(fd, (struct sockaddr *)&peer, &plen), 0);
    ASSERT_EQ(ntohl(peer.sin_addr.s_addr), 0x7f000114u);
    ASSERT_EQ(ca_join(acc), 0);
    ca_task_release(acc);
    ca_close(fd);
    ca_close(lfd);
    ASSERT_EQ(ca_tcp_connect("big.cawait.test", port), -ECONNREFUSED);
    ASSERT_EQ(test_count_fds(), fds0 - 1); /* lfd closed, nothing leaked */
    stop_dns(srv);
    return 0;
}

static void test_connect_many_addresses(void)
{
    ASSERT_EQ(ca_run(many_addrs_main, NULL), 0);
}

/* ---- out of descriptors --------------------------------------------------- */

/*
 * With every descriptor in use, a lookup fails with -EMFILE, as a socket
 * call does, not -ECONNREFUSED (c-ares' word for "no server could be
 * asked"), and ca_tcp_connect by name passes it on; once descriptors are
 * free again, lookups work.
 */
static int no_fds_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    struct rlimit old;
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct rlimit low = {(rlim_t)test_count_fds() + 64, old.rlim_max};
    if (low.rlim_cur > old.rlim_cur || setrlimit(RLIMIT_NOFILE, &low) < 0)
        SKIP("cannot lower RLIMIT_NOFILE");
    int fill[128], n = 0;
    while (n < 128 && (fill[n] = dup(dns_fd)) >= 0)
        n++;
    ASSERT(n < 128); /* the limit was reached */
    ca_addrinfo *ai = NULL;
    int r1 = ca_getaddrinfo("ok.cawait.test", 80, AF_INET, 0, &ai);
    int r2 = ca_tcp_connect("ok.cawait.test", 80);
    while (n > 0)
        close(fill[--n]);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    ASSERT_EQ(r1, -EMFILE);
    ASSERT(ai == NULL);
    ASSERT_EQ(r2, -EMFILE);
    ASSERT_EQ(ca_getaddrinfo("ok.cawait.test", 80, AF_INET, 0, &ai), 0);
    ca_freeaddrinfo(ai);
    stop_dns(srv);
    return 0;
}

static void test_out_of_fds(void)
{
    ASSERT_EQ(ca_run(no_fds_main, NULL), 0);
}

/* ---- channels kept between lookups --------------------------------------- */

/* The servers of start_dns, with another timeout and number of tries. */
static void configure(int timeout_ms, int tries)
{
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", ca_sock_port(dns_fd));
    ca_dns_opts o = {
        .servers = servers, .timeout_ms = timeout_ms, .tries = tries};
    ASSERT_EQ(ca_dns_configure(&o), 0);
}

/* An inotify watch for opens of /etc/resolv.conf (by any process). */
static int resolv_watch = -1;

/* 1 if /etc/resolv.conf was opened since the last call.  inotify merges
 * an event with the unread one before it, so this tells whether, not how
 * often. */
static int resolv_opened(void)
{
    char buf[4096];
    int any = 0;
    while (read(resolv_watch, buf, sizeof(buf)) > 0)
        any = 1;
    return any;
}

static const struct mixed_name {
    const char *name;
    int family;
    int result;
    int addrs;
} mixed[] = {
    {"ok.cawait.test", AF_INET, 0, 1},
    {"localhost", AF_INET, 0, 1}, /* /etc/hosts or RFC 6761 */
    {"missing.cawait.test", AF_UNSPEC, -CA_ENOTFOUND, 0},
    {"fail.cawait.test", AF_INET, -CA_EDNSFAIL, 0},
    {"dual.cawait.test", AF_UNSPEC, 0, 2},
    {"v6.cawait.test", AF_INET6, 0, 1},
    {"big.cawait.test", AF_INET, 0, BIG_N}, /* over TCP */
};
#define NMIXED (sizeof(mixed) / sizeof(mixed[0]))

/* Look mixed[i] up: 1 if the result is the expected one. */
static int lookup_mixed(size_t i)
{
    const struct mixed_name *m = &mixed[i % NMIXED];
    ca_addrinfo *ai = NULL;
    int r = ca_getaddrinfo(m->name, 80, m->family, SOCK_STREAM, &ai);
    int n = 0;
    for (ca_addrinfo *p = ai; p; p = p->next)
        n++;
    ca_freeaddrinfo(ai);
    if (r != m->result || n != m->addrs) {
        fprintf(stderr, "%s: %d (%d addresses), want %d (%d)\n", m->name, r, n,
                m->result, m->addrs);
        return 0;
    }
    return 1;
}

/* Look mixed[i] up, which must succeed as expected: 1 if
 * /etc/resolv.conf was opened meanwhile (a channel was made). */
static int lookup_reads(size_t i)
{
    resolv_opened();
    ASSERT(lookup_mixed(i));
    return resolv_opened();
}

/*
 * c-ares reads /etc/resolv.conf when a channel is made, and a loop keeps
 * its channels between lookups: of many lookups in a row only the first
 * reads the file (it used to be every one, 100,000 instructions each).  A
 * new ca_dns_configure, a channel that has served for 2 s, and one made
 * while no descriptor was free (c-ares then falls back to its defaults:
 * one server, 127.0.0.1) are not reused: the next lookup reads the file
 * again.  Other processes may open the file too, which can add reads but
 * never hide one: hence the margin where few reads are expected.
 */
static int reuse_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    resolv_watch = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ASSERT_GE(resolv_watch, 0);
    if (inotify_add_watch(resolv_watch, "/etc/resolv.conf", IN_OPEN) < 0) {
        close(resolv_watch);
        stop_dns(srv);
        SKIP("cannot watch /etc/resolv.conf");
    }
    ASSERT(lookup_reads(0)); /* the loop's first channel */
    enum { N = 40 };
    int reads = 0;
    for (size_t i = 0; i < N; i++)
        reads += lookup_reads(i);
    ASSERT_LE(reads, N / 4);

    /* a new configuration: a new channel, then that one is reused */
    configure(100, 2);
    ASSERT(lookup_reads(0));
    reads = 0;
    for (size_t i = 0; i < N; i++)
        reads += lookup_reads(i);
    ASSERT_LE(reads, N / 4);

    /* after 2 s a channel is replaced (resolv.conf may have changed) */
    ASSERT_EQ(ca_sleep(2.2), 0);
    ASSERT(lookup_reads(1));

    /* made short of descriptors: not kept */
    configure(100, 2); /* no idle channel left: the next lookup makes one */
    struct rlimit old;
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct rlimit low = {(rlim_t)test_count_fds() + 64, old.rlim_max};
    if (low.rlim_cur <= old.rlim_cur && setrlimit(RLIMIT_NOFILE, &low) == 0) {
        int fill[128], n = 0;
        while (n < 128 && (fill[n] = dup(dns_fd)) >= 0)
            n++;
        ca_addrinfo *ai = NULL;
        int r = ca_getaddrinfo("ok.cawait.test", 80, AF_INET, 0, &ai);
        while (n > 0)
            close(fill[--n]);
        ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
        ASSERT_EQ(r, -EMFILE);
        ASSERT(ai == NULL);
        ASSERT(lookup_reads(0));
    }
    close(resolv_watch);
    stop_dns(srv);
    return 0;
}

static void test_reuse_channels(void)
{
    ASSERT_EQ(ca_run(reuse_main, NULL), 0);
}

/* Rounds of many lookups at once (answers, errors, /etc/hosts, both
 * families, an answer over TCP), on the channels the rounds before kept:
 * every lookup gets its own result, and kept channels hold no socket. */
struct mixed_run {
    size_t first;
    int bad;
};

static int mixed_task(void *a)
{
    struct mixed_run *m = a;
    for (size_t j = 0; j < 5; j++)
        m->bad += !lookup_mixed(m->first + j);
    return 0;
}

/* The open descriptors once back to `want`, or after 2 s: the TCP server
 * task closes its end of a connection some turns after c-ares closed its
 * own (while an idle channel's socket would stay open). */
static int fds_settle(int want)
{
    int n = test_count_fds();
    for (int i = 0; i < 200 && n != want; i++) {
        ASSERT_EQ(ca_sleep(0.01), 0);
        n = test_count_fds();
    }
    return n;
}

static int rounds_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    configure(1000, 2); /* the TCP server answers one connection at a time */
    int fds0 = test_count_fds();
    enum { N = 24 };
    for (int round = 0; round < 3; round++) {
        struct mixed_run runs[N];
        ca_task *ts[N];
        for (int i = 0; i < N; i++) {
            runs[i] = (struct mixed_run){(size_t)(i + round), 0};
            ts[i] = ca_spawn(mixed_task, &runs[i]);
            ASSERT(ts[i]);
        }
        ASSERT_EQ(ca_gather(ts, N, CA_GATHER_ALL), 0);
        for (int i = 0; i < N; i++) {
            ASSERT_EQ(runs[i].bad, 0);
            ca_task_release(ts[i]);
        }
        ASSERT_EQ(fds_settle(fds0), fds0);
    }
    /* one at a time, on the channels kept */
    for (size_t i = 0; i < 2 * NMIXED; i++)
        ASSERT(lookup_mixed(i));
    ASSERT_EQ(fds_settle(fds0), fds0);
    stop_dns(srv);
    return 0;
}

static void test_lookup_rounds(void)
{
    ASSERT_EQ(ca_run(rounds_main, NULL), 0);
}

/* ---- a cancelled lookup beside live ones --------------------------------- */

struct looper {
    int stop;
    int ok;
    int bad;
};

static int looper_task(void *a)
{
    struct looper *lp = a;
    for (size_t i = 0; !lp->stop; i++) {
        /* ok, localhost, missing, fail */
        if (lookup_mixed(i % 4))
            lp->ok++;
        else
            lp->bad++;
    }
    return 0;
}

static int deadline_lookup_task(void *a)
{
    struct lookup *l = a;
    ASSERT_EQ(ca_deadline_push(1.0), 0);
    ca_addrinfo *ai = NULL;
    l->result = ca_getaddrinfo(l->name, 80, AF_INET, 0, &ai);
    ca_freeaddrinfo(ai);
    ca_deadline_pop();
    return 0;
}

/*
 * Lookups share the loop's channels one after another, never at once:
 * cancelling a lookup cancels its queries in c-ares (ares_cancel cancels a
 * whole channel), and must not end the lookups running beside it, one
 * that waits for a server that never answers (ended by its deadline scope
 * later, -ETIMEDOUT, not -ECANCELED) and others that keep getting answers.
 * Neither of the two unanswered lookups sends a query once it has ended,
 * and the channels they used serve later lookups.
 */
static int cancel_beside_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    configure(2000, 3); /* unanswered queries are sent again at 2 s, 6 s */
    double t0 = mono();
    int s0 = slow_seen;
    struct lookup cancelled = {"slow.cawait.test", 1};
    struct lookup timed = {"slow.cawait.test", 1};
    struct looper lp[2] = {{0, 0, 0}, {0, 0, 0}};
    ca_task *tc = ca_spawn(lookup_task, &cancelled);
    ca_task *tt = ca_spawn(deadline_lookup_task, &timed);
    ca_task *tl[2] = {ca_spawn(looper_task, &lp[0]),
                      ca_spawn(looper_task, &lp[1])};
    ASSERT(tc && tt && tl[0] && tl[1]);
    /* both slow lookups have asked, both loopers have had answers */
    for (int i = 0; i < 50 && (slow_seen - s0 < 2 || !lp[0].ok || !lp[1].ok);
         i++)
        ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_GE(slow_seen - s0, 2);
    int ok0 = lp[0].ok + lp[1].ok;
    ASSERT(lp[0].ok && lp[1].ok);

    double t1 = mono();
    ca_cancel(tc);
    ASSERT_EQ(ca_join(tc), 0);
    ASSERT_EQ(cancelled.result, -ECANCELED);
    ASSERT_TIME_LT(mono() - t1, 0.2);
    ASSERT(!ca_task_done(tt)); /* still waiting for its answer */

    ASSERT_EQ(ca_join(tt), 0);
    ASSERT_EQ(timed.result, -ETIMEDOUT);
    ASSERT_GE(mono() - t0, 1.0);
    ASSERT_GT(lp[0].ok + lp[1].ok, ok0); /* answers kept coming */

    /* past the first retry (2 s): not one more query for slow.* */
    ASSERT_EQ(ca_sleep(0.05), 0);
    int s1 = slow_seen;
    ASSERT_EQ(ca_sleep(2.3 - (mono() - t0)), 0);
    ASSERT_EQ(slow_seen, s1);

    for (int i = 0; i < 2; i++) {
        lp[i].stop = 1;
        ASSERT_EQ(ca_join(tl[i]), 0);
        ASSERT_EQ(lp[i].bad, 0);
        ca_task_release(tl[i]);
    }
    ca_task_release(tc);
    ca_task_release(tt);
    for (size_t i = 0; i < 2 * NMIXED; i++)
        ASSERT(lookup_mixed(i));
    stop_dns(srv);
    return 0;
}

static void test_cancel_beside_live(void)
{
    ASSERT_EQ(ca_run(cancel_beside_main, NULL), 0);
}

/* ---- several loops, one per thread --------------------------------------- */

struct loop_thread {
    pthread_t th;
    int port;
    int bad;
    int rc;
};

static int thread_loop_main(void *a)
{
    struct loop_thread *t = a;
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", t->port);
    ca_dns_opts o = {.servers = servers, .timeout_ms = 1000, .tries = 2};
    ASSERT_EQ(ca_dns_configure(&o), 0);
    for (size_t i = 0; i < 60; i++) {
        if (i % 20 == 10) {
            /* a cancelled lookup among them */
            struct lookup l = {"slow.cawait.test", 1};
            ca_task *lt = ca_spawn(lookup_task, &l);
            ASSERT(lt);
            ASSERT_EQ(ca_sleep(0.01), 0);
            ca_cancel(lt);
            ASSERT_EQ(ca_join(lt), 0);
            ca_task_release(lt);
            t->bad += l.result != -ECANCELED;
        }
        t->bad += !lookup_mixed(i % 4); /* ok, localhost, missing, fail */
    }
    return 0;
}

static void *loop_thread_fn(void *a)
{
    struct loop_thread *t = a;
    t->rc = ca_run(thread_loop_main, t);
    return NULL;
}

static int join_threads(void *a)
{
    struct loop_thread *ts = a;
    for (int i = 0; i < 4; i++)
        pthread_join(ts[i].th, NULL);
    return 0;
}

/* Lookups in four loops at once, each in its own thread with its own
 * channels, against the server of this thread's loop. */
static int threads_main(void *a)
{
    (void)a;
    ca_task *srv = start_dns();
    struct loop_thread ts[4];
    for (int i = 0; i < 4; i++) {
        ts[i] = (struct loop_thread){.port = ca_sock_port(dns_fd), .rc = 1};
        ASSERT_EQ(pthread_create(&ts[i].th, NULL, loop_thread_fn, &ts[i]), 0);
    }
    ASSERT_EQ(ca_to_thread(join_threads, ts), 0);
    for (int i = 0; i < 4; i++) {
        ASSERT_EQ(ts[i].rc, 0);
        ASSERT_EQ(ts[i].bad, 0);
    }
    stop_dns(srv);
    return 0;
}

static void test_loops_in_threads(void)
{
    ASSERT_EQ(ca_run(threads_main, NULL), 0);
}

static const struct test_case tests[] = {
    {"lookups", test_lookups, 20, 0},
    {"concurrent_and_servfail", test_concurrent_and_servfail, 20, 0},
    {"cancel_and_deadline", test_cancel_and_deadline, 20, 0},
    {"connect_by_name", test_connect_by_name, 20, 0},
    {"happy_eyeballs_fallback", test_happy_eyeballs_fallback, 20, 0},
    {"ipv6_and_unspec", test_ipv6_and_unspec, 20, 0},
    {"cancel_stops_queries", test_cancel_stops_queries, 20, 0},
    {"happy_eyeballs_stagger", test_happy_eyeballs_stagger, 20, 0},
    {"connect_deadline_and_cancel", test_connect_deadline_and_cancel, 20, 0},
    {"tcp_answer", test_tcp_answer, 20, 0},
    {"out_of_fds", test_out_of_fds, 20, 0},
    {"connect_many_addresses", test_connect_many_addresses, 20, 0},
    {"reuse_channels", test_reuse_channels, 20, 0},
    {"lookup_rounds", test_lookup_rounds, 20, 0},
    {"cancel_beside_live", test_cancel_beside_live, 20, 0},
    {"loops_in_threads", test_loops_in_threads, 20, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
