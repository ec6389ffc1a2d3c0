/*
 * seed 001: "1000 concurrent requests on one thread".  A TCP server whose
 * handler simulates a 0.05 s database query per request, and 1000 clients
 * connecting at once, all in one thread on one loop.  Sequentially that
 * would take 1000 x 0.05 = 50 s; here it takes about 0.05 s plus the cost
 * of 1000 connections.
 */
#include <cawait.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#define CLIENTS 1000

static int handle_request(ca_stream *s, void *arg)
{
    (void)arg;
    char req[128];
    ssize_t n = ca_stream_readline(s, req, sizeof(req));
    if (n <= 0)
        return (int)n;
    int r = ca_sleep(0.05); /* await db.fetch(...) */
    if (r < 0)
        return r;
    char resp[160];
    int len = snprintf(resp, sizeof(resp), "200 OK %.*s", (int)n, req);
    ca_stream_write(s, resp, (size_t)len);
    return ca_stream_drain(s);
}

static int port;
static int ok_responses;

static int client(void *arg)
{
    long id = (long)arg;
    ca_stream *s;
    int r = ca_open_connection(&s, "127.0.0.1", (unsigned)port, NULL);
    if (r < 0)
        return r;
    char req[64], resp[160];
    int len = snprintf(req, sizeof(req), "GET /balance/%ld\n", id);
    ca_stream_write(s, req, (size_t)len);
    ssize_t n = ca_stream_readline(s, resp, sizeof(resp));
    if (n > 0 && strncmp(resp, "200 OK GET /balance/", 20) == 0)
        ok_responses++;
    ca_stream_close(s);
    return n < 0 ? (int)n : 0;
}

static int amain(void *arg)
{
    (void)arg;
    ca_server *srv;
    ca_server_opts o = {.listen = {.backlog = 2048}};
    int r = ca_serve(&srv, "127.0.0.1", 0, handle_request, NULL, &o);
    if (r < 0)
        return r;
    port = ca_server_port(srv);
    printf("server on 127.0.0.1:%d, %d clients, 0.05 s per request\n", port,
           CLIENTS);
    double t0 = ca_now();
    static ca_task *ts[CLIENTS];
    for (long i = 0; i < CLIENTS; i++)
        if (!(ts[i] = ca_spawn(client, (void *)i)))
            return -1;
    r = ca_gather(ts, CLIENTS, CA_GATHER_ALL);
    double dt = ca_now() - t0;
    for (int i = 0; i < CLIENTS; i++)
        ca_task_release(ts[i]);
    printf("responses: %d/%d OK\n", ok_responses, CLIENTS);
    printf("total: %.2f s\n", dt);
    printf("expected well under 1 s (sequentially: %d x 0.05 s = %.0f s)\n",
           CLIENTS, CLIENTS * 0.05);
    ca_server_close(srv, 1.0);
    return r;
}

int main(void)
{
    /* 1000 connections need 2000 descriptors in this one process. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int r = ca_run(amain, NULL);
    if (r != 0)
        fprintf(stderr, "seed001_1000_requests: %s\n", ca_strerror(r));
    return r != 0;
}
