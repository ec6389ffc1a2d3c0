/*
 * Seed 004, "基本使用示例" (a basic example), block 5: three URLs that
 * answer after 1, 2 and 3 s, fetched concurrently with gather.
 *
 *     async def fetch_url(url):
 *         async with aiohttp.ClientSession() as session:
 *             async with session.get(url) as response:
 *                 return await response.text()
 *
 *     async def main():
 *         urls = [
 *             'http://httpbin.org/delay/1',
 *             'http://httpbin.org/delay/2',
 *             'http://httpbin.org/delay/3'
 *         ]
 *         tasks = [fetch_url(url) for url in urls]
 *         results = await asyncio.gather(*tasks)
 *         print(f"获取了 {len(results)} 个响应")   # got 3 responses
 *
 *     asyncio.run(main())
 *
 * The three requests overlap, so the whole takes about as long as the
 * slowest (3 s), not the sum (6 s).  This port fetches the URLs one after
 * the other first (the sum), then with ca_gather (the slowest), and prints
 * the seed's line and the time of each round.  Times are scaled by 1/10:
 * httpbin.org/delay/N is a small HTTP server in this program whose /delay/N
 * answers after N * 0.1 s, with a body that names the URL, so no network is
 * needed.  Like the seed's fetch_url, each fetch opens its own session
 * (ca_http_session_new ... ca_http_session_free: `async with
 * ClientSession()`) and returns the body's text; the results come back in
 * the order of urls, whatever order the responses arrive in.
 *
 * The program checks that every request returned 200 and the body of its
 * own URL, in both rounds; any failure exits with status 1.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* <cawait.h> needs sigset_t */
#endif
#include <cawait.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_URLS 3

/* ---- httpbin.org: GET /delay/N answers after N * 0.1 s ---- */

static int httpbin(ca_stream *s, void *arg)
{
    (void)arg;
    char line[1024];
    for (;;) {
        if (ca_stream_readline(s, line, sizeof(line)) <= 0)
            return 0;
        int n = 0;
        sscanf(line, "GET /delay/%d", &n);
        do { /* the rest of the request head */
            if (ca_stream_readline(s, line, sizeof(line)) <= 0)
                return 0;
        } while (strcmp(line, "\r\n") != 0);
        ca_sleep(n * 0.1);
        char body[64], resp[256];
        int blen = snprintf(body, sizeof body, "{\"url\": \"/delay/%d\"}", n);
        int len = snprintf(resp, sizeof resp,
                           "HTTP/1.1 200 OK\r\n"
                           "Content-Type: application/json\r\n"
                           "Content-Length: %d\r\n\r\n%s",
                           blen, body);
        ca_stream_write(s, resp, (size_t)len);
        if (ca_stream_drain(s) < 0)
            return 0;
    }
}

/* ---- the client ---- */

static char base[64]; /* http://127.0.0.1:<port> */

struct fetch {
    const char *path; /* in: the URL, relative to base */
    char *text;       /* out: the body, malloc'd (response.text()) */
};

/* async def fetch_url(url): a task; its result goes to f->text. */
static int fetch_url(void *arg)
{
    struct fetch *f = arg;
    printf("start fetch: %s\n", f->path);
    ca_http_session *session; /* async with aiohttp.ClientSession() */
    ca_http_session_opts so = {.base_url = base};
    int rc = ca_http_session_new(&session, &so);
    if (rc < 0)
        return rc;
    ca_http_response *r; /* async with session.get(url) as response */
    rc = ca_http_get(session, f->path, &r); /* this task waits; others run */
    if (rc < 0) {
        printf("failed: %s: %s (%s)\n", f->path, ca_err_name(rc),
               ca_http_last_error());
    } else {
        rc = ca_http_raise_for_status(r);
        printf("done fetch: %s (%d)\n", f->path, ca_http_response_status(r));
        size_t len;
        const char *body = ca_http_response_body(r, &len);
        f->text = rc == 0 ? malloc(len + 1) : NULL; /* await response.text() */
        if (f->text) {
            memcpy(f->text, body, len + 1);
        } else if (rc == 0) {
            rc = -ENOMEM;
        }
        ca_http_response_free(r);
    }
    ca_http_session_free(session);
    return rc;
}

/* The results in urls' order: each the body of its own URL? */
static int check(struct fetch *f)
{
    for (int i = 0; i < N_URLS; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"url\": \"%s\"}", f[i].path);
        if (!f[i].text || strcmp(f[i].text, want) != 0) {
            printf("FAIL: results[%d] is not the body of %s\n", i, f[i].path);
            return -EPROTO;
        }
    }
    return 0;
}

static void clear(struct fetch *f)
{
    for (int i = 0; i < N_URLS; i++) {
        free(f[i].text);
        f[i].text = NULL;
    }
}

static int main_task(void *arg)
{
    (void)arg;
    ca_server *srv;
    int rc = ca_serve(&srv, "127.0.0.1", 0, httpbin, NULL, NULL);
    if (rc < 0)
        return rc;
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", ca_server_port(srv));
    struct fetch results[N_URLS] = {
        {.path = "/delay/1"}, {.path = "/delay/2"}, {.path = "/delay/3"}};

    /* One after the other: each fetch awaited at once. */
    printf("-- one after the other --\n");
    double t0 = ca_now();
    for (int i = 0; i < N_URLS && rc == 0; i++)
        rc = fetch_url(&results[i]);
    double t1 = ca_now();
    if (rc == 0)
        rc = check(results);
    if (rc == 0)
        printf("got %d responses\n", N_URLS);
    printf("sequential total: %.2f s\n", t1 - t0);
    clear(results);

    /* tasks = [fetch_url(url) for url in urls]
     * results = await asyncio.gather(*tasks) */
    if (rc == 0) {
        printf("-- concurrently, with gather --\n");
        t0 = ca_now();
        ca_task *tasks[N_URLS];
        int n = 0;
        for (; n < N_URLS; n++)
            if (!(tasks[n] = ca_spawn(fetch_url, &results[n]))) {
                rc = -ENOMEM;
                break;
            }
        int gr = ca_gather(tasks, (size_t)n, 0);
        if (rc == 0)
            rc = gr;
        for (int i = 0; i < n; i++) {
            /* A failure returns at once; the others still use results. */
            if (rc < 0)
                ca_cancel(tasks[i]);
            ca_join(tasks[i]);
            ca_task_release(tasks[i]);
        }
        t1 = ca_now();
        if (rc == 0)
            rc = check(results);
        if (rc == 0)
            printf("got %d responses\n", N_URLS); /* len(results) */
        printf("concurrent total: %.2f s\n", t1 - t0);
        clear(results);
    }

    ca_server_close(srv, 1.0);
    return rc;
}

int main(void)
{
    printf("seed 004, block 5: three URLs that answer after 1, 2 and 3 s "
           "(scaled 1/10)\n");
    int rc = ca_run(main_task, NULL);
    if (rc < 0) {
        fprintf(stderr, "seed004_fetch_urls: %s (%s)\n", ca_strerror(rc),
                ca_err_name(rc));
        return 1;
    }
    printf("expected ~0.60 s one after the other, ~0.30 s with gather "
           "(seed: 6 s and 3 s)\n");
    return 0;
}
