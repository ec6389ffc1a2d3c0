/*
 * Asynchronous DNS: c-ares driven by the loop.
 *
 * A lookup has a c-ares channel to itself while it runs: ares_cancel
 * cancels every query of a channel, so only then does cancelling one
 * lookup cancel it in c-ares without touching the others.  The channel's
 * sockets are watched with non-task fd waiters (sock_state_cb tells which
 * it wants), its timeouts with one loop timer (ares_timeout after every
 * call); both call ares_process_fd in the loop's context, and the
 * completion callback wakes the waiting task.  ARES_FLAG_NOCHECKRESP keeps
 * a SERVFAIL from one server from failing every other query on it (c-ares
 * 1.18).
 *
 * Channels outlive lookups.  ares_init_options reads resolv.conf and
 * nsswitch.conf and fills some 75 KB of tables, and ares_destroy frees
 * them: 100,000 instructions, where the lookup of an /etc/hosts name
 * itself takes 7,000.  So a finished lookup gives its channel back to the
 * loop's pool (IDLE_MAX idle channels at most; c-ares has closed the
 * channel's sockets by then, as it does once no query is left) and the
 * next lookup takes it.  c-ares 1.18 has no ares_reinit and reads
 * resolv.conf only at init (/etc/hosts at every lookup), so a channel
 * serves lookups for CHAN_TTL_NS after its creation and is then destroyed:
 * a change to resolv.conf reaches lookups that much later at most.
 * ca_dns_configure retires every channel at once.  A loop timer destroys
 * idle channels as they expire; the loop's exit hook destroys the rest.
 */
#include "loop/loop.h"
#include "net/addr.h"
#include "task/task.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void retire_channels(ca_loop *l);

int ca_dns_configure(const ca_dns_opts *opts)
{
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    if (opts && (opts->timeout_ms < 0 || opts->tries < 0))
        return -EINVAL;
    char *servers = NULL;
    if (opts && opts->servers && !(servers = strdup(opts->servers)))
        return -ENOMEM;
    free(l->dns_servers);
    l->dns_servers = servers;
    l->dns_timeout_ms = opts ? opts->timeout_ms : 0;
    l->dns_tries = opts ? opts->tries : 0;
    retire_channels(l);
    return 0;
}

void ca_freeaddrinfo(ca_addrinfo *ai)
{
    while (ai) {
        ca_addrinfo *next = ai->next;
        free(ai);
        ai = next;
    }
}

#ifdef CAWAIT_HAVE_CARES

#include <ares.h>

#define MAX_SOCKS 8

struct dns_chan;
struct dns_pool;

struct dns_sock {
    ca__fdwait w;
    struct dns_chan *c;
    int fd;
    int events; /* CA_READ | CA_WRITE wanted, 0: slot free */
    int armed;
};

/* Idle channels a loop keeps for later lookups (some 75 KB each). */
#define IDLE_MAX 8
/* How long a channel serves lookups after ares_init_options read
 * resolv.conf: a change to it is seen by lookups this much later at most. */
#define CHAN_TTL_NS (2 * (int64_t)1000000000)

/* A c-ares channel, its sockets and timer, and the lookup using it. */
struct dns_chan {
    ares_channel ch;
    ca_loop *loop;
    struct dns_pool *pool; /* the loop's, which outlives it */
    struct dns_chan *next; /* in the pool's idle list */
    int64_t born;          /* ca__clock_ns() when it read resolv.conf */
    uint64_t gen;          /* the pool's gen then */
    int keep;              /* may be reused (see fd_free) */
    ca__timer timer;
    /* the lookup */
    ca_task *task;
    int done;
    int status;
    struct ares_addrinfo *res;
    struct dns_sock socks[MAX_SOCKS];
};

static void update_timer(struct dns_chan *c);

static void sock_arm(struct dns_sock *s)
{
    if (s->armed || !s->events)
        return;
    if (ca__fd_register(s->c->loop, s->fd) < 0)
        return;
    s->w = (ca__fdwait){.fd = s->fd, .events = s->events, .wake = s->w.wake};
    s->armed = 1;
    ca__fd_add_waiter(s->c->loop, &s->w);
}

static void sock_disarm(struct dns_sock *s)
{
    if (s->armed)
        ca__fd_remove_waiter(s->c->loop, &s->w);
    s->armed = 0;
}

/* 1 if fd has input pending (or a hang-up to read). */
static int readable_now(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

/*
 * c-ares 1.18 reads a TCP answer one recv per ares_process_fd call (its
 * 2-byte length, then the message) and leaves the rest in the socket,
 * expecting to be called again; the loop's epoll is edge-triggered, so no
 * new event comes for bytes already there and every answer that came over
 * TCP (truncated UDP answers, or more than 512 bytes: some 30 A records)
 * timed out.  So call it again while the socket it still watches for input
 * has some; bounded, in case c-ares leaves input unread for good.
 */
#define DRAIN_CALLS 16

static void drain(struct dns_sock *s, ares_socket_t fd)
{
    struct dns_chan *c = s->c;
    for (int i = 0; i < DRAIN_CALLS && !c->done; i++) {
        if (s->fd != fd || !(s->events & CA_READ) || !readable_now(fd))
            return;
        ares_process_fd(c->ch, fd, ARES_SOCKET_BAD);
    }
}

static void sock_wake(ca__fdwait *w, int result)
{
    struct dns_sock *s = (struct dns_sock *)w;
    struct dns_chan *c = s->c;
    s->armed = 0;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    if (result < 0 || (result & (CA_READ | CA_ERROR | CA_HANGUP)))
        rfd = s->fd;
    if (result > 0 && (result & CA_WRITE))
        wfd = s->fd;
    ares_process_fd(c->ch, rfd, wfd);
    if (rfd != ARES_SOCKET_BAD)
        drain(s, rfd);
    /* The callback may have changed what this slot wants (or freed it). */
    sock_arm(s);
    update_timer(c);
}

/* c-ares tells which of its sockets it wants watched, and for what. */
static void sock_state(void *data, ares_socket_t fd, int readable,
                       int writable)
{
    struct dns_chan *c = data;
    struct dns_sock *s = NULL, *free_slot = NULL;
    for (int i = 0; i < MAX_SOCKS; i++) {
        if (c->socks[i].events && c->socks[i].fd == fd)
            s = &c->socks[i];
        else if (!c->socks[i].events && !free_slot)
            free_slot = &c->socks[i];
    }
    int events = (readable ? CA_READ : 0) | (writable ? CA_WRITE : 0);
    if (!s) {
        if (!events || !free_slot)
            return;
        s = free_slot;
        s->fd = fd;
        s->c = c;
        s->w.wake = sock_wake;
    }
    sock_disarm(s);
    s->events = events;
    if (events) {
        sock_arm(s);
    } else {
        /* c-ares is about to close it: drop our registration first. */
        ca__fd_forget(c->loop, fd);
    }
}

static void timer_fire(ca__timer *t)
{
    struct dns_chan *c =
        (struct dns_chan *)((char *)t - offsetof(struct dns_chan, timer));
    ares_process_fd(c->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    update_timer(c);
}

static void update_timer(struct dns_chan *c)
{
    if (c->done) {
        ca__timer_cancel(c->loop, &c->timer);
        return;
    }
    struct timeval tv, *tvp = ares_timeout(c->ch, NULL, &tv);
    if (!tvp) {
        ca__timer_cancel(c->loop, &c->timer);
        return;
    }
    int64_t when = ca__clock_ns() + (int64_t)tvp->tv_sec * 1000000000 +
                   (int64_t)tvp->tv_usec * 1000;
    ca__timer_arm(c->loop, &c->timer, when);
}

static void on_result(void *arg, int status, int timeouts,
                      struct ares_addrinfo *res)
{
    (void)timeouts;
    struct dns_chan *c = arg;
    c->done = 1;
    c->status = status;
    c->res = res;
    if (c->task)
        ca__task_wake(c->task, 0);
}

static int map_status(int st)
{
    switch (st) {
    case ARES_SUCCESS:
        return 0;
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
    case ARES_ENODATA:
        return -CA_ENOTFOUND;
    case ARES_ESERVFAIL:
    case ARES_EREFUSED:
        return -CA_EDNSFAIL;
    case ARES_ETIMEOUT:
        return -ETIMEDOUT;
    case ARES_ECONNREFUSED:
        return -ECONNREFUSED;
    case ARES_ENOMEM:
        return -ENOMEM;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return -ECANCELED;
    case ARES_EBADNAME:
    case ARES_EBADFAMILY:
        return -EINVAL;
    default:
        return -CA_EDNS;
    }
}

/*
 * c-ares 1.18 reports a socket(2) that fails for want of descriptors as
 * ARES_ECONNREFUSED (it skips the server as if it had refused, and ends
 * with that status once none is left), and a hosts or resolv.conf file it
 * cannot open as ARES_EFILE: some 1,000 lookups at once at the usual limit
 * of 1,024 descriptors, one socket each, and the caller of ca_tcp_connect
 * read "connection refused" from a server never contacted.  On those two
 * errors, try for a descriptor: -EMFILE or -ENFILE when there is none,
 * like every other socket call.
 */
static int fd_shortage(int r)
{
    if (r != -ECONNREFUSED && r != -CA_EDNS)
        return r;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        close(fd);
        return r;
    }
    return errno == EMFILE || errno == ENFILE ? -errno : r;
}

static int convert(const struct ares_addrinfo *res, int socktype,
                   ca_addrinfo **out)
{
    ca_addrinfo *head = NULL, **tail = &head;
    for (const struct ares_addrinfo_node *n = res ? res->nodes : NULL; n;
         n = n->ai_next) {
        if (n->ai_addrlen > sizeof(struct sockaddr_storage))
            continue;
        ca_addrinfo *ai = calloc(1, sizeof(*ai));
        if (!ai) {
            ca_freeaddrinfo(head);
            return -ENOMEM;
        }
        ai->family = n->ai_family;
        ai->socktype = n->ai_socktype ? n->ai_socktype : socktype;
        ai->protocol = n->ai_protocol;
        ai->addrlen = n->ai_addrlen;
        memcpy(&ai->addr, n->ai_addr, n->ai_addrlen);
        *tail = ai;
        tail = &ai->next;
    }
    if (!head)
        return -CA_ENOTFOUND;
    *out = head;
    return 0;
}

/* An address literal: IPv4 in any form getaddrinfo(3) accepts ("127.1"
 * and "0x7f.1" too, which c-ares would send to the DNS server as names),
 * or IPv6 without a scope ("fe80::1%lo" goes to c-ares).  Returns 0 if
 * host is not one; 1 with its one address in *out (NULL if out of
 * memory), answered without a channel; -1 if it is a literal of the other
 * family than the one asked for (getaddrinfo's EAI_ADDRFAMILY; c-ares
 * would send it to the DNS server as a name). */
static int numeric_literal(const char *host, unsigned port, int family,
                           int socktype, ca_addrinfo **out)
{
    struct in_addr a4;
    struct in6_addr a6;
    int v4 = ca__ipv4_literal(host, &a4);
    if (!v4 && inet_pton(AF_INET6, host, &a6) != 1)
        return 0;
    if (family == (v4 ? AF_INET6 : AF_INET))
        return -1;
    ca_addrinfo *ai = calloc(1, sizeof(*ai));
    if (ai) {
        if (v4) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&ai->addr;
            sin->sin_family = AF_INET;
            sin->sin_port = htons((uint16_t)port);
            sin->sin_addr = a4;
            ai->family = AF_INET;
            ai->addrlen = sizeof(*sin);
        } else {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ai->addr;
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons((uint16_t)port);
            sin6->sin6_addr = a6;
            ai->family = AF_INET6;
            ai->addrlen = sizeof(*sin6);
        }
        ai->socktype = socktype;
        ai->protocol = socktype == SOCK_STREAM  ? IPPROTO_TCP
                       : socktype == SOCK_DGRAM ? IPPROTO_UDP
                                                : 0;
    }
    *out = ai;
    return 1;
}

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_status;

static void library_init(void)
{
    ares_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

/*
 * c-ares 1.18 reads resolv.conf with fopen at init, and when no descriptor
 * is free it goes on with its defaults (one server, 127.0.0.1) and reports
 * success.  Without a pool that cost one lookup, whose own socket failed
 * the same way; a pooled channel would send the lookups of the next
 * seconds to the wrong server.  So a channel is kept only if a descriptor
 * was free just before its init: 1 if one is.
 */
static int fd_free(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno != EMFILE && errno != ENFILE;
    close(fd);
    return 1;
}

/* A new channel with the loop's configuration: 0 and *out, or a negative
 * errno. */
static int chan_new(ca_loop *l, struct dns_chan **out)
{
    struct dns_chan *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->loop = l;
    c->keep = fd_free();
    c->timer.slot = CA__TIMER_IDLE;
    c->timer.fire = timer_fire;
    struct ares_options o = {.flags = ARES_FLAG_NOCHECKRESP,
                             .sock_state_cb = sock_state,
                             .sock_state_cb_data = c};
    int mask = ARES_OPT_FLAGS | ARES_OPT_SOCK_STATE_CB;
    if (l->dns_timeout_ms > 0) {
        o.timeout = l->dns_timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
    if (l->dns_tries > 0) {
        o.tries = l->dns_tries;
        mask |= ARES_OPT_TRIES;
    }
    int st = ares_init_options(&c->ch, &o, mask);
    if (st != ARES_SUCCESS) {
        free(c);
        return fd_shortage(map_status(st));
    }
    if (l->dns_servers &&
        ares_set_servers_ports_csv(c->ch, l->dns_servers) != ARES_SUCCESS) {
        ares_destroy(c->ch);
        free(c);
        return -EINVAL;
    }
    *out = c;
    return 0;
}

static void chan_destroy(struct dns_chan *c)
{
    ca__timer_cancel(c->loop, &c->timer);
    for (int i = 0; i < MAX_SOCKS; i++)
        sock_disarm(&c->socks[i]);
    ares_destroy(c->ch);
    free(c);
}

/*
 * A loop's idle channels, newest first.  The pool hangs on the loop by its
 * exit hook (which finds it, and frees it with the loop); channels in use
 * belong to their lookups, which are all over by then.
 */
struct dns_pool {
    ca__exit_hook hook; /* first: the hook is the pool */
    ca_loop *loop;
    struct dns_chan *idle;
    int nidle;
    uint64_t gen;   /* channels of an older gen are not reused */
    ca__timer reap; /* when the oldest idle channel expires */
};

static void pool_exit(ca_loop *l, ca__exit_hook *h);

static struct dns_pool *pool_find(ca_loop *l)
{
    return (struct dns_pool *)ca__loop_find_hook(l, pool_exit);
}

/* Destroy idle channels born at or before `before`, then arm the reaper
 * for the oldest one left. */
static void pool_reap(struct dns_pool *p, int64_t before)
{
    int64_t oldest = INT64_MAX;
    for (struct dns_chan **pp = &p->idle; *pp;) {
        struct dns_chan *c = *pp;
        if (c->born <= before) {
            *pp = c->next;
            p->nidle--;
            chan_destroy(c);
            continue;
        }
        if (c->born < oldest)
            oldest = c->born;
        pp = &c->next;
    }
    if (oldest == INT64_MAX)
        ca__timer_cancel(p->loop, &p->reap);
    else if (ca__timer_arm(p->loop, &p->reap, oldest + CHAN_TTL_NS) < 0)
        pool_reap(p, INT64_MAX); /* no timer: keep nothing idle */
}

static void reap_fire(ca__timer *t)
{
    struct dns_pool *p =
        (struct dns_pool *)((char *)t - offsetof(struct dns_pool, reap));
    pool_reap(p, ca__clock_ns() - CHAN_TTL_NS);
}

static void pool_exit(ca_loop *l, ca__exit_hook *h)
{
    (void)l;
    struct dns_pool *p = (struct dns_pool *)h;
    pool_reap(p, INT64_MAX);
    free(p);
}

static void retire_channels(ca_loop *l)
{
    struct dns_pool *p = pool_find(l);
    if (p) {
        p->gen++;
        pool_reap(p, INT64_MAX);
    }
}

/* A channel for a lookup: an idle one of the loop's pool if one is young
 * enough, else a new one.  0 and *out, or a negative errno. */
static int chan_take(ca_loop *l, struct dns_chan **out)
{
    struct dns_pool *p = pool_find(l);
    if (!p) {
        if (!(p = calloc(1, sizeof(*p))))
            return -ENOMEM;
        p->loop = l;
        p->reap.slot = CA__TIMER_IDLE;
        p->reap.fire = reap_fire;
        p->hook.fn = pool_exit;
        ca__loop_at_exit(l, &p->hook);
    }
    int64_t now = ca__clock_ns();
    struct dns_chan *c;
    while ((c = p->idle) != NULL) {
        p->idle = c->next;
        p->nidle--;
        if (now - c->born < CHAN_TTL_NS) {
            c->done = 0;
            c->status = 0;
            c->res = NULL;
            *out = c;
            return 0;
        }
        chan_destroy(c);
    }
    int r = chan_new(l, &c);
    if (r < 0)
        return r;
    c->pool = p;
    c->born = now;
    c->gen = p->gen;
    *out = c;
    return 0;
}

/* A lookup is over: keep its channel for the next one, unless it is too
 * old, of an earlier configuration, made short of descriptors, still has
 * a socket (c-ares closes them all once no query is left), or the pool is
 * full. */
static void chan_release(struct dns_chan *c)
{
    struct dns_pool *p = c->pool;
    ca__timer_cancel(c->loop, &c->timer);
    int busy = 0;
    for (int i = 0; i < MAX_SOCKS; i++)
        busy |= c->socks[i].events;
    if (!c->keep || busy || c->gen != p->gen || p->nidle >= IDLE_MAX ||
        ca__clock_ns() - c->born >= CHAN_TTL_NS) {
        chan_destroy(c);
        return;
    }
    c->next = p->idle;
    p->idle = c;
    p->nidle++;
    int64_t expires = c->born + CHAN_TTL_NS;
    if ((!ca__timer_armed(&p->reap) || expires < p->reap.when) &&
        ca__timer_arm(p->loop, &p->reap, expires) < 0)
        pool_reap(p, INT64_MAX);
}

int ca_getaddrinfo(const char *host, unsigned port, int family, int socktype,
                   ca_addrinfo **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!host || !*host || port > 65535 ||
        (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) ||
        (socktype != 0 && socktype != SOCK_STREAM && socktype != SOCK_DGRAM))
        return -EINVAL;
    ca_task *self = ca__task_self("ca_getaddrinfo");
    if (!self)
        return -EPERM;
    int lit = numeric_literal(host, port, family, socktype, out);
    if (lit)
        return lit < 0 ? -CA_ENOTFOUND : *out ? 0 : -ENOMEM;
    pthread_once(&ares_once, library_init);
    if (ares_init_status != ARES_SUCCESS)
        return -CA_EDNS;
    struct dns_chan *c = NULL;
    int r = chan_take(ca__loop(), &c);
    if (r < 0)
        return r;
    char svc[16];
    snprintf(svc, sizeof(svc), "%u", port);
    struct ares_addrinfo_hints hints = {.ai_family = family,
                                        .ai_socktype = socktype,
                                        .ai_flags = ARES_AI_NUMERICSERV};
    /* "localhost" is answered without asking anyone (RFC 6761). */
    c->task = self;
    ares_getaddrinfo(c->ch, host, svc, &hints, on_result, c);
    update_timer(c);
    while (!c->done) {
        r = ca__task_park(self, INT64_MAX);
        if (r < 0 && !c->done) {
            ares_cancel(c->ch); /* runs on_result with ARES_ECANCELLED */
            break;
        }
    }
    c->task = NULL;
    if (r >= 0 || c->status != ARES_ECANCELLED)
        r = fd_shortage(map_status(c->status));
    if (r == 0)
        r = convert(c->res, socktype, out);
    if (c->res)
        ares_freeaddrinfo(c->res);
    c->res = NULL;
    chan_release(c);
    return r;
}

#else /* !CAWAIT_HAVE_CARES */

static void retire_channels(ca_loop *l)
{
    (void)l;
}

/* Without c-ares: numeric addresses and "localhost" only. */
int ca_getaddrinfo(const char *host, unsigned port, int family, int socktype,
                   ca_addrinfo **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!host || !*host || port > 65535)
        return -EINVAL;
    const char *names[2] = {host, NULL};
    if (strcmp(host, "localhost") == 0) {
        names[0] = "::1";
        names[1] = "127.0.0.1";
    }
    char svc[16];
    snprintf(svc, sizeof(svc), "%u", port);
    ca_addrinfo *head = NULL, **tail = &head;
    for (int i = 0; i < 2 && names[i]; i++) {
        struct addrinfo hints = {.ai_family = family, .ai_socktype = socktype,
                                 .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
        struct addrinfo *res;
        int g = getaddrinfo(names[i], svc, &hints, &res);
        if (g == EAI_NONAME) {
            ca_freeaddrinfo(head);
            return -CA_ENORESOLVER;
        }
        if (g != 0)
            continue;
        for (struct addrinfo *a = res; a; a = a->ai_next) {
            ca_addrinfo *ai = calloc(1, sizeof(*ai));
            if (!ai) {
                freeaddrinfo(res);
                ca_freeaddrinfo(head);
                return -ENOMEM;
            }
            ai->family = a->ai_family;
            ai->socktype = a->ai_socktype;
            ai->protocol = a->ai_protocol;
            ai->addrlen = a->ai_addrlen;
            memcpy(&ai->addr, a->ai_addr, a->ai_addrlen);
            *tail = ai;
            tail = &ai->next;
        }
        freeaddrinfo(res);
    }
    if (!head)
        return -CA_ENOTFOUND;
    *out = head;
    return 0;
}

#endif
