/*
 * Seed 004, "什么是 IO 密集型和 CPU 密集型" (what I/O-bound and CPU-bound
 * mean), block 1: one short program whose steps are of both kinds.
 *
 *     import httpx
 *
 *     res = httpx.get("http://www.baidu.com")  # I/O-bound (a web request)
 *
 *     items = res.headers.items()
 *
 *     # CPU-bound (processing the response)
 *     headers = [f"{key}: {val}" for key, val in items]
 *
 *     # CPU-bound (joining strings)
 *     formatted_headers = "\n".join(headers)
 *
 *     with open("headers.txt", "w", encoding="utf-8") as f:
 *         f.write(formatted_headers)  # I/O-bound (disk write)
 *
 * The seed prints nothing; this port prints each step, what kind it is and
 * how long it took, then the file it wrote.  "www.baidu.com" is a small HTTP
 * server in this program that answers GET / after 0.1 s (a web server's
 * latency) with a fixed set of headers, so no network is needed.
 *
 *  - The request (ca_http_fetch, httpx.get without a session): the task
 *    waits for the server and the loop is free meanwhile; a ticker task
 *    that wakes every 10 ms shows it, running about ten times.
 *  - The formatting (ca_http_response_header_at, snprintf): computing on
 *    the loop's thread; nothing else runs until it is done.
 *  - The disk write: cawait has no asynchronous file API (epoll cannot wait
 *    for regular files), so the blocking fopen/fwrite/fclose runs on a pool
 *    thread with ca_to_thread, asyncio.to_thread's form of file I/O.
 *    headers.txt goes to a fresh directory under /tmp, which is removed at
 *    the end.
 *
 * The program checks that the request came back 200 with the headers the
 * server sent, that headers.txt holds exactly the formatted text, and that
 * the ticker ran during the request; any failure exits with status 1.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* mkdtemp, clock_gettime */
#endif
#include <cawait.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The server's answer: these headers, in this order, then BODY. */
#define BODY "<html><body>hello</body></html>\n"
static const char *const server_headers[][2] = {
    {"Content-Type", "text/html; charset=utf-8"},
    {"Server", "cawait-seed004"},
    {"Cache-Control", "private, no-cache, no-store"},
    {"Connection", "keep-alive"},
    {"Content-Length", "32"}, /* strlen(BODY) */
};
#define N_HEADERS (sizeof server_headers / sizeof server_headers[0])

/* ---- "www.baidu.com": GET / answers after 0.1 s ---- */

static int web_server(ca_stream *s, void *arg)
{
    (void)arg;
    char line[1024];
    for (;;) {
        if (ca_stream_readline(s, line, sizeof(line)) <= 0)
            return 0;
        do { /* the rest of the request head */
            if (ca_stream_readline(s, line, sizeof(line)) <= 0)
                return 0;
        } while (strcmp(line, "\r\n") != 0);
        ca_sleep(0.1);
        char head[512];
        int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\n");
        for (size_t i = 0; i < N_HEADERS; i++)
            n += snprintf(head + n, sizeof head - (size_t)n, "%s: %s\r\n",
                          server_headers[i][0], server_headers[i][1]);
        n += snprintf(head + n, sizeof head - (size_t)n, "\r\n%s", BODY);
        ca_stream_write(s, head, (size_t)n);
        if (ca_stream_drain(s) < 0)
            return 0;
    }
}

/* ---- helpers ---- */

/* Fine-grained monotonic time in seconds (ca_now is cached per loop turn,
 * so it does not move inside the CPU-bound step). */
static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A fresh private directory /tmp/cawait-<name>.<random> in buf. */
static int make_tmpdir(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "/tmp/cawait-%s.", name);
    if (n < 0 || (size_t)n + 7 > cap)
        return -1;
    memset(buf + n, 'X', 6); /* mkdtemp's template: six of them, last */
    buf[n + 6] = '\0';
    return mkdtemp(buf) ? 0 : -1;
}

static char dir[48];  /* the temporary directory */
static char path[96]; /* dir/headers.txt */
static int failed;    /* 1 once a check failed */

static int fail(const char *what)
{
    printf("FAIL: %s\n", what);
    failed = 1;
    return -1;
}

/* ---- the ticker: another task, to show when the loop is free ---- */

static int ticks;

static int ticker(void *arg)
{
    (void)arg;
    for (;;) {
        int r = ca_sleep(0.01);
        if (r < 0)
            return r == -ECANCELED ? 0 : r;
        ticks++;
    }
}

/* ---- the disk write and the check, on a pool thread ---- */

struct file_job {
    const char *path;
    const char *data; /* write: the text; read: NULL */
    size_t len;       /* write: its length; read: the length read */
    char *read;       /* read: malloc'd contents */
};

/* with open("headers.txt", "w") as f: f.write(formatted_headers) */
static int write_file(void *arg)
{
    struct file_job *j = arg;
    FILE *f = fopen(j->path, "w");
    if (!f)
        return -errno;
    int r = fwrite(j->data, 1, j->len, f) == j->len ? 0 : -EIO;
    if (fclose(f) != 0 && r == 0)
        r = -errno;
    return r;
}

/* Read the file back whole, to check what reached the disk. */
static int read_file(void *arg)
{
    struct file_job *j = arg;
    FILE *f = fopen(j->path, "r");
    if (!f)
        return -errno;
    size_t cap = 4096;
    j->read = malloc(cap + 1);
    j->len = j->read ? fread(j->read, 1, cap, f) : 0;
    int r = !j->read ? -ENOMEM : ferror(f) ? -EIO : 0;
    if (j->read)
        j->read[j->len] = '\0';
    fclose(f);
    return r;
}

/* ---- the three steps ---- */

static int main_task(void *arg)
{
    (void)arg;
    ca_server *srv;
    int rc = ca_serve(&srv, "127.0.0.1", 0, web_server, NULL, NULL);
    if (rc < 0)
        return rc;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", ca_server_port(srv));
    ca_task *tick = ca_spawn(ticker, NULL);
    ca_http_response *res = NULL;
    char *formatted = NULL;

    /* 1. res = httpx.get(url): I/O-bound */
    int ticks0 = ticks;
    double m0 = mono();
    rc = ca_http_fetch("GET", url, NULL, &res);
    double m1 = mono(), request = m1 - m0;
    int request_ticks = ticks - ticks0;
    if (rc < 0) {
        printf("GET %s failed: %s (%s)\n", url, ca_err_name(rc),
               ca_http_last_error());
        goto out;
    }
    size_t nh = ca_http_response_header_count(res);
    printf("GET %s -> %d, %zu headers\n", url, ca_http_response_status(res),
           nh);
    printf("  I/O-bound (network): the task waited %.3f s for the server;\n"
           "  the loop ran the 10 ms ticker %d times meanwhile\n",
           request, request_ticks);

    /* 2. headers = [f"{key}: {val}" ...]; "\n".join(headers): CPU-bound */
    m0 = mono();
    size_t len = 0;
    for (size_t i = 0; i < nh; i++) {
        const char *val, *key = ca_http_response_header_at(res, i, &val);
        len += strlen(key) + 2 + strlen(val) + (i > 0);
    }
    formatted = malloc(len + 1);
    if (!formatted) {
        rc = -ENOMEM;
        goto out;
    }
    size_t off = 0;
    for (size_t i = 0; i < nh; i++) {
        const char *val, *key = ca_http_response_header_at(res, i, &val);
        off += (size_t)snprintf(formatted + off, len + 1 - off, "%s%s: %s",
                                i > 0 ? "\n" : "", key, val);
    }
    m1 = mono();
    printf("formatted %zu headers into %zu bytes\n", nh, len);
    printf("  CPU-bound (string work): %.3f ms computing on the loop's "
           "thread\n",
           (m1 - m0) * 1e3);

    /* 3. f.write(formatted_headers): disk I/O, on a pool thread */
    struct file_job w = {.path = path, .data = formatted, .len = len};
    m0 = mono();
    rc = ca_to_thread(write_file, &w);
    m1 = mono();
    if (rc < 0) {
        printf("writing %s failed: %s\n", path, ca_strerror(rc));
        goto out;
    }
    printf("wrote headers.txt (%zu bytes)\n", len);
    printf("  I/O-bound (disk): %.3f ms, written on a pool thread "
           "(ca_to_thread)\n",
           (m1 - m0) * 1e3);

    /* What reached the disk. */
    struct file_job r = {.path = path};
    rc = ca_to_thread(read_file, &r);
    if (rc == 0) {
        printf("--- headers.txt ---\n%s\n-------------------\n", r.read);
        printf("request total: %.2f s\n", request);
    }

    /* The checks. */
    if (rc < 0)
        printf("reading %s back failed: %s\n", path, ca_strerror(rc));
    else if (ca_http_response_status(res) != 200)
        rc = fail("the status is not 200");
    else if (nh != N_HEADERS)
        rc = fail("not the headers the server sent");
    else if (r.len != len || memcmp(r.read, formatted, len) != 0)
        rc = fail("headers.txt is not the formatted headers");
    else if (request_ticks < 1)
        rc = fail("the ticker did not run while the request waited");
    for (size_t i = 0; rc == 0 && i < N_HEADERS; i++) {
        const char *val, *key = ca_http_response_header_at(res, i, &val);
        if (strcmp(key, server_headers[i][0]) != 0 ||
            strcmp(val, server_headers[i][1]) != 0)
            rc = fail("not the headers the server sent");
    }
    free(r.read);

out:
    free(formatted);
    ca_http_response_free(res);
    if (tick) {
        ca_cancel(tick);
        int tr = ca_join(tick);
        if (rc == 0 && tr < 0)
            rc = tr;
        ca_task_release(tick);
    }
    ca_server_close(srv, 1.0);
    return rc;
}

int main(void)
{
    if (make_tmpdir(dir, sizeof dir, "seed004") < 0) {
        perror("seed004_io_vs_cpu: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/headers.txt", dir);
    printf("seed 004, block 1: an I/O-bound request, CPU-bound formatting, "
           "a disk write\n");
    int rc = ca_run(main_task, NULL);
    unlink(path); /* may not exist if a step failed */
    if (rmdir(dir) != 0) {
        int e = errno;
        perror("seed004_io_vs_cpu: rmdir");
        rc = rc < 0 ? rc : -e;
    }
    if (failed) {
        fprintf(stderr, "seed004_io_vs_cpu: a check failed\n");
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "seed004_io_vs_cpu: %s (%s)\n", ca_strerror(rc),
                ca_err_name(rc));
        return 1;
    }
    return 0;
}
