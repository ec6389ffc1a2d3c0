/*
 * Seed 000, section 2: fetch three pages that each take 2 s, one after the
 * other (about 6 s) and then concurrently (about 2 s).  Times are scaled by
 * 1/10, and the "remote" endpoint is a small HTTP server in this program
 * (httpbin.org/delay/2 without the network): /delay/N answers after N/10 s.
 */
#include <cawait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the endpoint: GET /delay/N answers "ok" after N * 0.1 s ---- */

static int endpoint(ca_stream *s, void *arg)
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
        const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        ca_stream_write(s, resp, strlen(resp));
        if (ca_stream_drain(s) < 0)
            return 0;
    }
}

/* ---- the client ---- */

static ca_http_session *session;

static int fetch_data(void *arg)
{
    const char *path = arg;
    printf("start fetch: %s\n", path);
    ca_http_response *r;
    int rc = ca_http_get(session, path, &r); /* this task waits; others run */
    if (rc < 0) {
        printf("failed: %s (%s)\n", ca_err_name(rc), ca_http_last_error());
        return rc;
    }
    printf("done fetch: %s (%d %s)\n", path, ca_http_response_status(r),
           ca_http_response_body(r, NULL));
    ca_http_response_free(r);
    return 0;
}

static int main_task(void *arg)
{
    (void)arg;
    ca_server *srv;
    int rc = ca_serve(&srv, "127.0.0.1", 0, endpoint, NULL, NULL);
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

    /* sequential: like requests.get, one after the other */
    double t0 = ca_now();
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = fetch_data("/delay/2");
    printf("sequential total: %.2f s\n", ca_now() - t0);

    /* concurrent: asyncio.gather(*tasks) */
    t0 = ca_now();
    ca_task *t[3];
    for (int i = 0; i < 3; i++)
        t[i] = ca_spawn(fetch_data, "/delay/2");
    if (rc == 0)
        rc = ca_gather(t, 3, 0);
    for (int i = 0; i < 3; i++)
        ca_task_release(t[i]);
    printf("concurrent total: %.2f s\n", ca_now() - t0);

    ca_http_session_free(session);
    ca_server_close(srv, 1.0);
    return rc;
}

int main(void)
{
    return ca_run(main_task, NULL) == 0 ? 0 : 1;
}
