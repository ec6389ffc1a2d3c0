/*
 * Seed 001, challenge 2: call three APIs concurrently, with a timeout and
 * retries (exponential backoff) for each, merge the results, cache them,
 * and survive a partial failure.  The three "third-party APIs" are served
 * by this program on 127.0.0.1:
 *   /api/rates    answers in 50 ms;
 *   /api/news     hangs on the first call (past the 0.3 s timeout), then
 *                 answers in 50 ms;
 *   /api/weather  is down: 503 after 20 ms, every time.
 */
#include <cawait.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ATTEMPTS 3
#define TIMEOUT 0.3
#define BACKOFF 0.1

/* ---- the APIs ---- */

static int news_calls;

static int api(ca_stream *s, void *arg)
{
    (void)arg;
    char line[1024], path[256];
    for (;;) {
        if (ca_stream_readline(s, line, sizeof(line)) <= 0 ||
            sscanf(line, "GET %255s", path) != 1)
            return 0;
        do {
            if (ca_stream_readline(s, line, sizeof(line)) <= 0)
                return 0;
        } while (strcmp(line, "\r\n") != 0);
        int status = 200;
        const char *body = "";
        if (strcmp(path, "/api/rates") == 0) {
            ca_sleep(0.05);
            body = "USD/CNY 7.10";
        } else if (strcmp(path, "/api/news") == 0) {
            ca_sleep(++news_calls == 1 ? 5.0 : 0.05);
            body = "3 headlines";
        } else if (strcmp(path, "/api/weather") == 0) {
            ca_sleep(0.02);
            status = 503;
            body = "down for maintenance";
        } else {
            status = 404;
        }
        char resp[256];
        int n = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n\r\n%s",
                         status, strlen(body), body);
        ca_stream_write(s, resp, (size_t)n);
        if (ca_stream_drain(s) < 0)
            return 0;
    }
}

/* ---- the client ---- */

static ca_http_session *session;

struct call {
    const char *name;
    char result[64]; /* filled on success */
    int ok;
};

/* A tiny cache: results of earlier successful calls, by name. */
static struct call *cache[8];
static int ncache;

static const struct call *cached(const char *name)
{
    for (int i = 0; i < ncache; i++)
        if (strcmp(cache[i]->name, name) == 0)
            return cache[i];
    return NULL;
}

static int call_api(void *arg)
{
    struct call *c = arg;
    char path[64];
    snprintf(path, sizeof(path), "/api/%s", c->name);
    double backoff = BACKOFF;
    for (int attempt = 1; attempt <= ATTEMPTS; attempt++) {
        ca_http_request_opts o = {.timeout = TIMEOUT};
        ca_http_response *r;
        int rc = ca_http_request(session, "GET", path, &o, &r);
        if (rc == 0 && ca_http_raise_for_status(r) == 0) {
            snprintf(c->result, sizeof(c->result), "%s",
                     ca_http_response_body(r, NULL));
            ca_http_response_free(r);
            c->ok = 1;
            printf("%s: attempt %d ok\n", c->name, attempt);
            return 0;
        }
        char why[32];
        if (rc == 0) {
            snprintf(why, sizeof(why), "HTTP %d", ca_http_response_status(r));
            ca_http_response_free(r);
        } else {
            snprintf(why, sizeof(why), "%s", ca_err_name(rc));
        }
        if (rc == -ECANCELED)
            return rc; /* our caller gave up: do not retry */
        if (attempt == ATTEMPTS) {
            printf("%s: attempt %d failed (%s), giving up after %d attempts\n",
                   c->name, attempt, why, ATTEMPTS);
            break;
        }
        printf("%s: attempt %d failed (%s), retrying in %.2f s\n", c->name,
               attempt, why, backoff);
        if (ca_sleep(backoff) < 0)
            return -ECANCELED;
        backoff *= 2;
    }
    return -EIO;
}

static int main_task(void *arg)
{
    (void)arg;
    ca_server *srv;
    int rc = ca_serve(&srv, "127.0.0.1", 0, api, NULL, NULL);
    if (rc < 0)
        return rc;
    char base[64];
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", ca_server_port(srv));
    ca_http_session_opts so = {.base_url = base};
    rc = ca_http_session_new(&session, &so);
    if (rc < 0) {
        printf("no HTTP client: %s\n", ca_strerror(rc));
        ca_server_close(srv, 0);
        return rc;
    }

    static struct call calls[3] = {{.name = "rates"}, {.name = "news"},
                                   {.name = "weather"}};
    double t0 = ca_now();
    ca_task *t[3];
    for (int i = 0; i < 3; i++)
        t[i] = ca_spawn(call_api, &calls[i]);
    /* gather(..., return_exceptions=True): wait for all, keep going if some
     * failed */
    ca_gather(t, 3, CA_GATHER_ALL);
    for (int i = 0; i < 3; i++)
        ca_task_release(t[i]);
    printf("merged: rates=%s, news=%s, weather=%s\n",
           calls[0].ok ? calls[0].result : "unavailable",
           calls[1].ok ? calls[1].result : "unavailable",
           calls[2].ok ? calls[2].result : "unavailable");
    printf("total: %.2f s\n", ca_now() - t0);

    for (int i = 0; i < 3; i++)
        if (calls[i].ok)
            cache[ncache++] = &calls[i];
    const struct call *hit = cached("rates");
    printf("cache: rates=%s (no request)\n", hit ? hit->result : "miss");

    ca_http_session_free(session);
    ca_server_close(srv, 0.1); /* the hung /api/news handler is cancelled */
    return 0;
}

int main(void)
{
    return ca_run(main_task, NULL) == 0 ? 0 : 1;
}
