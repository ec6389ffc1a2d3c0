/*
 * Servers: one accept task, one task per connection.
 *
 * The acceptor parks on the listening fd.  Out of descriptors (EMFILE,
 * ENFILE) it sleeps 100 ms and tries again: no spinning, and the listener
 * is kept.  With max_connections reached it waits for a slot before it
 * accepts, leaving further clients in the kernel's backlog.  Every
 * connection task is linked in the server's list so that close can cancel
 * the stragglers after the grace period.
 *
 * A connection's bookkeeping ends in conn_done, a notify node in its task's
 * joiners list, which runs when the task finishes whether or not it ever
 * ran: a connection cancelled before its task started (close_clients or
 * abort_clients in the turn it was accepted) never runs conn_main, and its
 * socket, its slot, its entry and its task would otherwise be kept for
 * ever (and ca_server_close would wait for it for ever).  The server holds
 * the task's only handle and releases it there, so a finished connection
 * costs nothing: a server's memory follows its open connections.
 */
#include "net/stream.h"
#include "task/task.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    ca__waiter done; /* in task's joiners: conn_done */
    struct conn *prev, *next;
    ca_server *srv;
    ca_task *task;
    int fd;
    int opened; /* conn_main ran: the stream owns fd */
};

struct ca_server {
    int lfd;
    int port;
    int closing;
    ca_conn_fn fn;
    void *arg;
    ca_server_opts opts;
    ca_task *acceptor;
    struct conn *conns;
    size_t nconn;
    ca_event idle;     /* set whenever nconn == 0 */
    ca_event slot;     /* set whenever a connection slot is free */
};

static void conn_unlink(ca_server *srv, struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconn--;
    if (srv->nconn == 0)
        ca_event_set(&srv->idle);
    ca_event_set(&srv->slot);
}

static int conn_main(void *arg)
{
    struct conn *c = arg;
    ca_server *srv = c->srv;
    ca_stream *s;
    c->opened = 1; /* the stream owns fd from here, also on failure */
    int r = ca_stream_open(&s, c->fd, &srv->opts.stream);
    if (r == 0 && srv->opts.tls)
        r = ca_stream_start_tls(s, srv->opts.tls, NULL);
    if (r == 0)
        r = srv->fn(s, srv->arg);
    if (s) {
        /* Flush what the handler wrote, but never let a peer that does not
         * read hold the connection past a short deadline. */
        ca_shield_push();
        ca_deadline_push(1.0);
        ca_stream_close(s);
        ca_deadline_pop();
        ca_shield_pop();
    }
    /* A connection's failure is the handler's business (it has the
     * stream): the server does not report it as an unjoined failure. */
    (void)r;
    return 0;
}

/* The connection's task finished (its joiners are being woken): run or
 * cancelled before it started. */
static void conn_done(ca__waiter *w)
{
    struct conn *c = (struct conn *)w;
    if (!c->opened)
        ca_close(c->fd);
    conn_unlink(c->srv, c);
    ca_task_release(c->task);
    free(c);
}

static int accept_loop(void *arg)
{
    ca_server *srv = arg;
    while (!srv->closing) {
        if (srv->opts.max_connections &&
            srv->nconn >= srv->opts.max_connections) {
            ca_event_clear(&srv->slot);
            int r = ca_event_wait(&srv->slot);
            if (r < 0)
                return r;
            continue;
        }
        int fd = ca_accept(srv->lfd, NULL, NULL);
        if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS ||
            fd == -ENOMEM) {
            /* Out of resources: back off, keep the listener. */
            if (ca_sleep(0.1) < 0)
                return 0;
            continue;
        }
        if (fd < 0) {
            if (fd == -ECANCELED || fd == -ETIMEDOUT)
                return 0;
            if (ca_sleep(0.01) < 0) /* unexpected: do not spin */
                return 0;
            continue;
        }
        struct conn *c = calloc(1, sizeof(*c));
        ca_task *t = NULL;
        if (!c || ca_spawn_ex(&t, conn_main, c, NULL) < 0) {
            free(c);
            close(fd);
            continue;
        }
        c->srv = srv;
        c->task = t;
        c->fd = fd;
        c->done = (ca__waiter){.notify = conn_done};
        ca__waitlist_push(&t->joiners, &c->done);
        c->next = srv->conns;
        if (srv->conns)
            srv->conns->prev = c;
        srv->conns = c;
        srv->nconn++;
        ca_event_clear(&srv->idle);
    }
    return 0;
}

int ca_serve(ca_server **out, const char *host, unsigned port, ca_conn_fn fn,
             void *arg, const ca_server_opts *opts)
{
    if (!out || !fn)
        return -EINVAL;
    *out = NULL;
    if (opts && opts->tls && !ca__tls_ctx_is_server(opts->tls))
        return -EINVAL;
    if (!ca__loop())
        return -CA_ENOLOOP;
    ca_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    if (opts)
        srv->opts = *opts;
    srv->fn = fn;
    srv->arg = arg;
    srv->lfd = ca_tcp_listen(host, port, &srv->opts.listen);
    if (srv->lfd < 0) {
        int r = srv->lfd;
        free(srv);
        return r;
    }
    ca__tls_ctx_ref(srv->opts.tls);
    srv->port = ca_sock_port(srv->lfd);
    ca_event_set(&srv->idle);
    ca_spawn_opts so = {.name = "ca_server.accept"};
    int r = ca_spawn_ex(&srv->acceptor, accept_loop, srv, &so);
    if (r < 0) {
        ca_close(srv->lfd);
        ca_tls_ctx_free(srv->opts.tls);
        free(srv);
        return r;
    }
    *out = srv;
    return 0;
}

int ca_server_port(const ca_server *srv)
{
    return srv ? srv->port : -EINVAL;
}

size_t ca_server_connections(const ca_server *srv)
{
    return srv ? srv->nconn : 0;
}

int ca_server_close_clients(ca_server *srv)
{
    if (!srv)
        return -EINVAL;
    for (struct conn *c = srv->conns; c; c = c->next)
        ca_cancel(c->task);
    return 0;
}

int ca_server_abort_clients(ca_server *srv)
{
    if (!srv)
        return -EINVAL;
    struct linger lg = {1, 0}; /* close() then sends RST, drops our data */
    for (struct conn *c = srv->conns; c; c = c->next) {
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        shutdown(c->fd, SHUT_RDWR);
        ca_cancel(c->task);
    }
    return 0;
}

int ca_server_close(ca_server *srv, double grace)
{
    if (!srv || grace != grace)
        return -EINVAL;
    if (!ca__task_self("ca_server_close"))
        return -EPERM;
    ca_shield_push();
    /* 1. stop accepting */
    srv->closing = 1;
    ca_cancel(srv->acceptor);
    ca_join(srv->acceptor);
    ca_task_release(srv->acceptor);
    ca_close(srv->lfd);
    /* 2. let the handlers finish, for up to `grace` seconds */
    if (srv->nconn > 0 && grace > 0) {
        ca_deadline_push(grace);
        ca_event_wait(&srv->idle);
        ca_deadline_pop();
    }
    /* 3. cancel the rest and wait for them */
    for (struct conn *c = srv->conns; c; c = c->next)
        ca_cancel(c->task);
    while (srv->nconn > 0)
        ca_event_wait(&srv->idle);
    ca_shield_pop();
    ca_tls_ctx_free(srv->opts.tls);
    free(srv);
    return 0;
}
