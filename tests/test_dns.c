/*
 * DNS: lookups through c-ares against a DNS server this test runs itself on
 * 127.0.0.1 (a UDP task that answers A queries for ok.cawait.test, NXDOMAIN
 * for missing.*, SERVFAIL for fail.*, and never answers slow.*).
 */
#include "cawait.h"
#include "runner.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <time.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dns_fd;
static int queries_seen;

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
        char name[256];
        int qtype;
        int end = parse_question(buf, (int)n, name, &qtype);
        if (end < 0)
            continue;
        if (strncmp(name, "slow.", 5) == 0)
            continue; /* never answer */
        int rcode = 0, answer = 0;
        if (strncmp(name, "missing.", 8) == 0)
            rcode = 3; /* NXDOMAIN */
        else if (strncmp(name, "fail.", 5) == 0)
            rcode = 2; /* SERVFAIL */
        else if (strcmp(name, "ok.cawait.test") == 0 && qtype == 1)
            answer = 1; /* A 127.0.0.1; AAAA: no data */
        else if (strcmp(name, "ok.cawait.test") != 0)
            rcode = 3;
        unsigned char out[600];
        memcpy(out, buf, (size_t)end);
        out[2] = (unsigned char)(0x80 | (buf[2] & 0x01)); /* QR, RD */
        out[3] = (unsigned char)(0x80 | rcode);           /* RA, RCODE */
        out[6] = 0;
        out[7] = (unsigned char)answer; /* ANCOUNT */
        memset(out + 8, 0, 4);          /* NSCOUNT, ARCOUNT */
        int len = end;
        if (answer) {
            static const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0,    0,
                                               0,    60,   0, 4, 127, 0, 0, 1};
            memcpy(out + len, rr, sizeof(rr));
            len += (int)sizeof(rr);
        }
        ca_sendto(dns_fd, out, (size_t)len, (struct sockaddr *)&from, flen);
    }
}

static ca_task *start_dns(void)
{
#ifndef CAWAIT_HAVE_CARES
    SKIP("built without c-ares: names are not resolved");
#endif
    dns_fd = ca_udp_bind("127.0.0.1", 0);
    ASSERT_GE(dns_fd, 0);
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", ca_sock_port(dns_fd));
    ca_dns_opts o = {.servers = servers, .timeout_ms = 100, .tries = 2};
    ASSERT_EQ(ca_dns_configure(&o), 0);
    ca_task *t = ca_spawn(dns_server, NULL);
    ASSERT(t);
    return t;
}

static void stop_dns(ca_task *t)
{
    ca_cancel(t);
    ca_join(t);
    ca_task_release(t);
    ca_close(dns_fd);
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

static const struct test_case tests[] = {
    {"lookups", test_lookups, 20, 0},
    {"concurrent_and_servfail", test_concurrent_and_servfail, 20, 0},
    {"cancel_and_deadline", test_cancel_and_deadline, 20, 0},
    {"connect_by_name", test_connect_by_name, 20, 0},
    {"happy_eyeballs_fallback", test_happy_eyeballs_fallback, 20, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
