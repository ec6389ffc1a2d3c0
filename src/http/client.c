/*
 * HTTP client: libcurl's multi-socket interface inside the loop.
 *
 * A session is one curl multi handle.  curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION) and when to call it back (TIMERFUNCTION).  The
 * sockets go into a session-private epoll instance in level-triggered mode,
 * and that epoll fd is watched by the loop (edge-triggered, like every fd
 * there): when it turns readable, the loop drains it with a zero-timeout
 * epoll_wait and hands each event to curl_multi_socket_action.  curl does
 * not always read a socket dry; level triggering inside keeps such a socket
 * reported, and a batch that left a transfer running (or filled the event
 * array) schedules the next drain for the next turn instead of waiting for
 * a new edge.  A socket that curl stops watching while it waits only for
 * input (a connection going back to curl's pool) stays in the set, so that
 * the next request on it costs no epoll_ctl; it leaves the set when it
 * reports an event nobody wants or when curl closes it.  curl's timer is one
 * loop timer, except that "at once" runs from the ready queue (timer_cb).
 * Finished transfers (curl_multi_info_read) wake their tasks.
 *
 * A response owns its easy handle from the request to ca_http_response_free
 * (curl's info about the transfer stays readable).  The task that made the
 * request parks in wait_until while curl works; the callbacks (body, header,
 * upload data, completion, idle timer) wake it only while it is parked on
 * this response (r->task), never a task waiting for something else.
 */
#include "net/addr.h"
#include "net/stream.h"
#include "task/task.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static _Thread_local char last_error[256];

const char *ca_http_last_error(void)
{
    return last_error;
}

#ifdef CAWAIT_HAVE_CURL

#include <arpa/inet.h>
#include <curl/curl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_MAX_BODY (64u * 1024u * 1024u)
#define DEFAULT_REDIRECTS 10
#define ACCEPT_ENCODING "gzip, deflate"
/* Stream mode: the transfer pauses while this much is unread, and goes on
 * once the reader is down to a quarter of it. */
#define STREAM_HIGH (256u * 1024u)
#define STREAM_LOW (STREAM_HIGH / 4)

struct ca_http_session {
    CURLM *multi;
    CURLSH *share;
    ca_loop *loop;
    int epfd;      /* level-triggered set of curl's sockets */
    uint8_t *fdst; /* FD_* state of each fd number in epfd, see sock_cb */
    size_t nfdst;
    ca__fdwait w;
    int armed;
    ca_handle drain_h;
    int drain_queued;
    ca__timer timer;
    ca_handle kick_h; /* curl asked to run at once: kick_cb is queued */
    int kick_queued;
    struct curl_slist *headers; /* the session's, then default_headers' */
    char *base_url, *proxy, *ca_file, *user_agent;
    int verify_none, h2c;
    int ua_opt;  /* User-Agent through CURLOPT_USERAGENT (default_headers) */
    size_t live; /* responses not yet freed */
    long maxconnects; /* CURLMOPT_MAXCONNECTS set, see pool_fit */
    /* Easy handles of freed responses, kept for the next requests
     * (curl_easy_init costs more than curl_easy_reset), each holding the
     * session's options (easy_base) and, if memo_gen is not 0, the URL of
     * the url_memo of that generation; see response_free. */
    struct {
        CURL *easy;
        uint64_t memo_gen;
    } spare[32];
    size_t nspare;
    /* The URL requested over and over (url_memo); the last one requested
     * once, which becomes the memo if it comes again. */
    struct url_memo *memo;
    char *seen;
    uint64_t memo_gens;
    /* Names looked up for requests (pre_resolve), newest first. */
    struct dns_entry *dns;
    size_t ndns;
    int64_t dns_ttl; /* ns; < 0: no cache */
};

struct hdr {
    char *name, *value;
};

/*
 * A URL a session requests again and again (a client polling one endpoint,
 * a benchmark): prepared once (base applied, host checked) and parsed once
 * into a CURLU that curl takes instead of the string (CURLOPT_CURLU).  With
 * a string, curl parses the URL for every transfer and prints it back
 * (curl_url_set, curl_url_get, an aprintf: ~10,400 instructions of 65,000 a
 * request, curl 7.88); with a CURLU it copies the parts, and an easy handle
 * that had this CURLU for its last transfer keeps the URL string curl made
 * from it.  Shared by the session and the responses using it (refs): curl
 * reads it again while a transfer runs (a retry on a dead connection).
 * gen tells one memo from the next (a new one may get the old address).
 */
typedef struct url_memo {
    unsigned refs;
    uint64_t gen;
    char *key;  /* the url argument as given (no query parameters) */
    char *url;  /* with the base applied */
    char *host; /* to look up (as r->host), or NULL */
    unsigned port;
    CURLU *uh;
} url_memo;

static void memo_unref(url_memo *m)
{
    if (m && --m->refs == 0) {
        curl_url_cleanup(m->uh);
        free(m->key);
        free(m->url);
        free(m->host);
        free(m);
    }
}

struct ca_http_response {
    ca_http_session *s;
    int owns_session; /* ca_http_fetch */
    CURL *easy;
    ca_task *task; /* parked on this response, or NULL */
    int attached;  /* in the multi */
    int done;
    CURLcode result;
    int err; /* our own failure: idle timeout, body too large, generator */
    int headers_ready;
    int stream, follow;
    int plain; /* a GET without a body: set no option in setup_body */
    int status;
    /* headers of the final response */
    struct hdr *hdrs;
    size_t nhdr, hdr_cap;
    /* body: [body_off, body_len) unread (stream mode: a FIFO) */
    char *body;
    size_t body_off, body_len, body_cap, max_body;
    int paused;
    /* request */
    struct curl_slist *req_headers, *resolve;
    char *url;
    char *host; /* to resolve with cawait's DNS, or NULL */
    unsigned port;
    url_memo *memo;    /* url and host are the memo's, not ours */
    uint64_t easy_gen; /* the memo whose URL easy holds, 0: none */
    /* upload */
    int body_fd;
    int fd_polled; /* body_fd may block (pipe, socket): poll it first */
    int fd_forget; /* we registered body_fd with the loop: forget it */
    int fd_armed;  /* fdw waits for body_fd to turn readable */
    ca__fdwait fdw;
    /* a generator body (see "Generator bodies"): [up_off, up_len) of
     * up_buf buffered, then what is left of a held chunk */
    ca_gen *gen;
    char *up_buf;
    size_t up_off, up_len;
    const ca_http_chunk *chunk;
    size_t chunk_off;
    int gen_done, up_paused, up_flush;
    ca__timer up_timer; /* sends what is buffered after UPLOAD_WAIT_NS */
    /* A generator body's Content-Length (-1: none, sent chunked), and the
     * bytes the generator has yielded so far. */
    curl_off_t up_size, up_taken;
    /* idle timeout */
    ca__timer idle;
    int64_t idle_ns;
    char errbuf[CURL_ERROR_SIZE];
    /* Our own words for r->err: curl overwrites errbuf when it fails the
     * transfer after our callback refused it ("Failure writing output"),
     * so finish() puts these back. */
    char ownerr[96];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_status;

static void library_init(void)
{
    curl_init_status = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ca_http_global_init(void)
{
    pthread_once(&curl_once, library_init);
    return curl_init_status == CURLE_OK ? 0 : -CA_EHTTP;
}

/* ------------------------------------------------------------------------ */
/* Waking the task                                                          */
/* ------------------------------------------------------------------------ */

static void wake(ca_http_response *r)
{
    ca_task *t = r->task;
    if (t) {
        r->task = NULL;
        ca__task_wake(t, 0);
    }
}

static void idle_arm(ca_http_response *r)
{
    if (r->idle_ns > 0 && !r->done && !r->paused)
        ca__timer_arm(r->s->loop, &r->idle, ca__clock_ns() + r->idle_ns);
}

static void body_fd_unwatch(ca_http_response *r);

static void detach(ca_http_response *r)
{
    if (r->attached) {
        curl_multi_remove_handle(r->s->multi, r->easy);
        r->attached = 0;
    }
    ca__timer_cancel(r->s->loop, &r->idle);
    body_fd_unwatch(r);
    if (r->gen)
        ca__timer_cancel(r->s->loop, &r->up_timer);
}

static void finish(ca_http_response *r, CURLcode result)
{
    if (r->ownerr[0])
        snprintf(r->errbuf, sizeof(r->errbuf), "%s", r->ownerr);
    r->done = 1;
    r->result = result;
    detach(r);
    wake(r);
}

static void idle_fire(ca__timer *t)
{
    ca_http_response *r =
        (ca_http_response *)((char *)t - offsetof(ca_http_response, idle));
    r->err = -ETIMEDOUT;
    snprintf(r->errbuf, sizeof(r->errbuf), "no data for %.3f s (idle timeout)",
             (double)r->idle_ns / 1e9);
    finish(r, CURLE_OPERATION_TIMEDOUT);
}

/* ------------------------------------------------------------------------ */
/* curl <-> loop                                                            */
/* ------------------------------------------------------------------------ */

static void check_done(ca_http_session *s)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        ca_http_response *r;
        if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &r) ==
                CURLE_OK &&
            r)
            finish(r, m->data.result);
    }
}

static void arm_epfd(ca_http_session *s);
static void drain(ca_http_session *s);

/*
 * The state of an fd number in the session's epoll set: the events it is
 * registered for there (FD_IN, FD_OUT) and whether curl watches it now
 * (FD_WANTED).  curl's CURL_POLL_REMOVE of an input-only socket clears
 * only FD_WANTED: the registration stays (it would report nothing but the
 * peer's data or close, which drain() takes as the moment to remove it),
 * and a later CURL_POLL_IN finds it in place.  close_cb forgets an fd that
 * curl closes (the kernel drops it from the set), so a new socket that
 * gets the same number starts from nothing.
 */
#define FD_IN 1u
#define FD_OUT 2u
#define FD_WANTED 4u

/* The state byte of fd, growing the table; NULL if out of memory. */
static uint8_t *fd_state(ca_http_session *s, curl_socket_t fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= s->nfdst) {
        size_t n = s->nfdst ? s->nfdst : 64;
        while (n <= (size_t)fd)
            n *= 2;
        uint8_t *t = realloc(s->fdst, n);
        if (!t)
            return NULL;
        memset(t + s->nfdst, 0, n - s->nfdst);
        s->fdst = t;
        s->nfdst = n;
    }
    return &s->fdst[fd];
}

static void fd_unregister(ca_http_session *s, int fd)
{
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
    s->fdst[fd] = 0;
}

static void drain_cb(void *arg)
{
    ca_http_session *s = arg;
    s->drain_queued = 0;
    drain(s);
}

/* Drain at the next turn (the epoll fd may stay armed meanwhile). */
static void drain_soon(ca_http_session *s)
{
    if (!s->drain_queued && ca_call_soon(drain_cb, s, &s->drain_h) == 0)
        s->drain_queued = 1;
}

static void drain(ca_http_session *s)
{
    struct epoll_event ev[64];
    int n = epoll_wait(s->epfd, ev, 64, 0);
    int running;
    int again = n == 64; /* more may be ready than fitted */
    for (int i = 0; i < n; i++) {
        int fd = ev[i].data.fd;
        if ((size_t)fd < s->nfdst && !(s->fdst[fd] & FD_WANTED)) {
            /* Kept in the set while idle: its peer spoke or closed, which
             * curl will see when it next looks at the connection. */
            fd_unregister(s, fd);
            continue;
        }
        int mask = 0;
        if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
            mask |= CURL_CSELECT_IN;
        if (ev[i].events & EPOLLOUT)
            mask |= CURL_CSELECT_OUT;
        if (ev[i].events & EPOLLERR)
            mask |= CURL_CSELECT_ERR;
        curl_multi_socket_action(s->multi, fd, mask, &running);
        /* curl still watches it: its transfer goes on, maybe with bytes
         * left unread that no new edge will announce. */
        if ((size_t)fd < s->nfdst && (s->fdst[fd] & FD_WANTED))
            again = 1;
    }
    check_done(s);
    /* Level-triggered inside: whatever curl left unread is reported again
     * by the next drain, one turn later (fair to the other tasks).  A batch
     * whose transfers all ended (every socket went back to curl's pool)
     * needs none: new bytes or a close on any socket make a new edge on the
     * epoll fd (an epoll_wait and a callback a batch less).  A socket
     * reported here stays on the set's ready list until its next
     * epoll_wait, and a change of its events then (EPOLL_CTL_MOD) makes no
     * edge: sock_cb drains after such changes. */
    if (again)
        drain_soon(s);
    arm_epfd(s);
}

static void epfd_wake(ca__fdwait *w, int result)
{
    ca_http_session *s =
        (ca_http_session *)((char *)w - offsetof(ca_http_session, w));
    s->armed = 0;
    (void)result;
    drain(s);
}

static void arm_epfd(ca_http_session *s)
{
    if (s->armed || s->drain_queued)
        return;
    s->w = (ca__fdwait){.fd = s->epfd, .events = CA_READ, .wake = epfd_wake};
    s->armed = 1;
    ca__fd_add_waiter(s->loop, &s->w);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp,
                   void *socketp)
{
    (void)e;
    (void)socketp;
    ca_http_session *s = userp;
    uint8_t *st = fd_state(s, fd);
    if (what == CURL_POLL_REMOVE) {
        if (st && (*st & FD_OUT))
            fd_unregister(s, fd);
        else if (st)
            *st &= (uint8_t)~FD_WANTED;
        else
            epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    if (!st)
        return -1;
    unsigned want = (what & CURL_POLL_IN ? FD_IN : 0u) |
                    (what & CURL_POLL_OUT ? FD_OUT : 0u);
    unsigned reg = *st & (FD_IN | FD_OUT);
    if (reg != want) {
        struct epoll_event ev = {.data.fd = fd};
        if (want & FD_IN)
            ev.events |= EPOLLIN | EPOLLRDHUP;
        if (want & FD_OUT)
            ev.events |= EPOLLOUT;
        int op = reg ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        if (epoll_ctl(s->epfd, op, fd, &ev) < 0) {
            /* Registered by an earlier owner of the number, or dropped. */
            op = errno == EEXIST ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
            if (epoll_ctl(s->epfd, op, fd, &ev) < 0) {
                *st = 0;
                return -1;
            }
        }
        /* A socket already on the set's ready list (reported by the last
         * drain) that becomes ready for the new events makes no edge on
         * the epoll fd: the next drain finds it. */
        if (op == EPOLL_CTL_MOD)
            drain_soon(s);
    }
    *st = (uint8_t)(want | FD_WANTED);
    return 0;
}

/* CURLOPT_CLOSESOCKETFUNCTION: curl closes one of its sockets. */
static int close_cb(void *clientp, curl_socket_t fd)
{
    ca_http_session *s = clientp;
    if (fd >= 0 && (size_t)fd < s->nfdst)
        s->fdst[fd] = 0;
    return close(fd);
}

static void timer_fire(ca__timer *t)
{
    ca_http_session *s =
        (ca_http_session *)((char *)t - offsetof(ca_http_session, timer));
    int running;
    curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(s);
}

static void kick_cb(void *arg)
{
    ca_http_session *s = arg;
    s->kick_queued = 0;
    timer_fire(&s->timer);
}

/*
 * curl's timer.  A timeout of 0 (a transfer just added, or one curl wants
 * to go on with at once) runs from the ready queue at the next turn, after
 * the tasks woken in this one have added their requests: a loop timer would
 * also fire at the next turn, but only after a poll of its own (an
 * epoll_wait with no timeout for each batch of new requests).
 */
static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    ca_http_session *s = userp;
    if (timeout_ms == 0 &&
        (s->kick_queued || ca_call_soon(kick_cb, s, &s->kick_h) == 0)) {
        s->kick_queued = 1;
        ca__timer_cancel(s->loop, &s->timer);
    } else if (timeout_ms < 0) {
        ca__timer_cancel(s->loop, &s->timer);
    } else {
        ca__timer_arm(s->loop, &s->timer,
                      ca__clock_ns() + (int64_t)timeout_ms * 1000000);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sessions                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * Idle connections a session keeps.  Left alone, curl keeps 4 per request
 * in flight: a task calling 5 hosts in turn, one request at a time, found
 * the next host's connection closed to make room every time and connected
 * (with TLS: shook hands) again for every request.  Keep POOL_MIN, as
 * aiohttp's connector keeps up to 100, and curl's 4 per request in flight
 * above that.  curl closes an idle connection past the limit only when
 * another one goes back to the pool, one at a time.
 */
#define POOL_MIN 100

static void pool_fit(ca_http_session *s)
{
    long want = (long)s->live * 4;
    if (want < POOL_MIN)
        want = POOL_MIN;
    if (want != s->maxconnects &&
        curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, want) == CURLM_OK)
        s->maxconnects = want;
}

static int dup_opt(char **dst, const char *src)
{
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -ENOMEM;
}

static int valid_header(const char *h)
{
    const char *colon = strchr(h, ':');
    return colon && colon > h && !strpbrk(h, "\r\n");
}

/* ------------------------------------------------------------------------ */
/* The session's cache of looked-up names                                   */
/* ------------------------------------------------------------------------ */

/*
 * A request's host name is looked up by cawait's DNS and handed to curl as
 * a CURLOPT_RESOLVE line.  The line is kept for dns_ttl (aiohttp's
 * TCPConnector keeps names 10 s), so that requests on a kept-alive
 * connection do not wait for a lookup each.  While a name's lookup runs,
 * other requests for it wait for that lookup instead of sending their own
 * (a lookup object they share, as one request may stop waiting early).
 */
#define DNS_TTL_DEFAULT 10.0
#define DNS_MAX 64 /* names kept; the oldest goes first */

typedef struct dns_lookup {
    unsigned refs;
    int rc;     /* its result, once `done` is set */
    char *line; /* the CURLOPT_RESOLVE line, when rc == 0 */
    ca_event done;
} dns_lookup;

typedef struct dns_entry {
    struct dns_entry *next;
    char *host; /* as in the URL; compared without case */
    unsigned port;
    char *line;          /* NULL until a lookup succeeded */
    int64_t expires;     /* of line, on ca__clock_ns */
    dns_lookup *running; /* the lookup in flight, or NULL */
} dns_entry;

static void dns_lookup_unref(dns_lookup *lk)
{
    if (--lk->refs == 0) {
        free(lk->line);
        free(lk);
    }
}

/* Unlink and free *pp (the lookup in flight, if any, lives on with its
 * owner and waiters). */
static void dns_drop(ca_http_session *s, dns_entry **pp)
{
    dns_entry *e = *pp;
    *pp = e->next;
    s->ndns--;
    free(e->host);
    free(e->line);
    free(e);
}

static dns_entry *dns_find(ca_http_session *s, const char *host, unsigned port)
{
    for (dns_entry *e = s->dns; e; e = e->next)
        if (e->port == port && strcasecmp(e->host, host) == 0)
            return e;
    return NULL;
}

/* A new entry at the head, making room by dropping the oldest idle one. */
static dns_entry *dns_add(ca_http_session *s, const char *host, unsigned port)
{
    if (s->ndns >= DNS_MAX) {
        dns_entry **victim = NULL;
        for (dns_entry **pp = &s->dns; *pp; pp = &(*pp)->next)
            if (!(*pp)->running)
                victim = pp;
        if (victim)
            dns_drop(s, victim);
    }
    dns_entry *e = calloc(1, sizeof(*e));
    if (!e || !(e->host = strdup(host))) {
        free(e);
        return NULL;
    }
    e->port = port;
    e->next = s->dns;
    s->dns = e;
    s->ndns++;
    return e;
}

/* The value of the first header called name (case-insensitive) in list,
 * after the colon and any blanks, or NULL if there is none. */
static const char *header_value(const struct curl_slist *list,
                                const char *name)
{
    size_t nl = strlen(name);
    for (; list; list = list->next)
        if (strncasecmp(list->data, name, nl) == 0 && list->data[nl] == ':')
            return list->data + nl + 1 + strspn(list->data + nl + 1, " \t");
    return NULL;
}

/* 1 if list holds a header called name (case-insensitive). */
static int has_header(const struct curl_slist *list, const char *name)
{
    return header_value(list, name) != NULL;
}

/*
 * User-Agent and Accept-Encoding go at the end of the session's headers,
 * unless the session has its own: a request's own header of the same name
 * replaces them as it replaces any session header.  Given as options
 * (CURLOPT_USERAGENT, CURLOPT_ACCEPT_ENCODING) curl formats each line
 * twice a request, an aprintf and then the request, through its own printf
 * at ~140 instructions a byte; as custom headers, once (4,200
 * instructions a request less, curl 7.88).  CURLOPT_ACCEPT_ENCODING stays
 * set, as it turns decoding on; curl sends no second Accept-Encoding when
 * there is a custom one.  Through a proxy the User-Agent stays an option:
 * curl also sends it in the CONNECT request, custom headers not.
 */
static int default_headers(ca_http_session *s)
{
    const char *ua = s->user_agent ? s->user_agent : "cawait/0.1";
    s->ua_opt = s->proxy != NULL || strpbrk(ua, "\r\n") != NULL;
    if (!s->ua_opt && !has_header(s->headers, "User-Agent")) {
        size_t n = strlen(ua) + sizeof("User-Agent: ");
        char *line = malloc(n);
        if (!line)
            return -ENOMEM;
        snprintf(line, n, "User-Agent: %s", ua);
        struct curl_slist *l = curl_slist_append(s->headers, line);
        free(line);
        if (!l)
            return -ENOMEM;
        s->headers = l;
    }
    if (!has_header(s->headers, "Accept-Encoding")) {
        /* What aiohttp asks for; "" would also offer br and zstd. */
        struct curl_slist *l =
            curl_slist_append(s->headers, "Accept-Encoding: " ACCEPT_ENCODING);
        if (!l)
            return -ENOMEM;
        s->headers = l;
    }
    return 0;
}

int ca_http_session_new(ca_http_session **out, const ca_http_session_opts *o)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (o && (o->max_host_connections < 0 || o->max_total_connections < 0 ||
              !(o->dns_cache_ttl >= -1e9 && o->dns_cache_ttl <= 1e9)))
        return -EINVAL;
    for (const char *const *h = o && o->headers ? o->headers : NULL; h && *h;
         h++)
        if (!valid_header(*h))
            return -EINVAL;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    int gi = ca_http_global_init();
    if (gi < 0)
        return gi;
    ca_http_session *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = l;
    s->epfd = -1;
    s->timer = (ca__timer){.slot = CA__TIMER_IDLE, .fire = timer_fire};
    double ttl = o && o->dns_cache_ttl ? o->dns_cache_ttl : DNS_TTL_DEFAULT;
    s->dns_ttl = ttl < 0 ? -1 : (int64_t)(ttl * 1e9);
    int r = -ENOMEM;
    s->multi = curl_multi_init();
    if (!s->multi)
        goto fail;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0) {
        r = -errno;
        goto fail;
    }
    if ((r = ca__fd_register(l, s->epfd)) < 0)
        goto fail;
    r = -ENOMEM;
    if (o) {
        for (const char *const *h = o->headers; h && *h; h++) {
            struct curl_slist *n = curl_slist_append(s->headers, *h);
            if (!n)
                goto fail;
            s->headers = n;
        }
        if (dup_opt(&s->base_url, o->base_url) < 0 ||
            dup_opt(&s->proxy, o->proxy) < 0 ||
            dup_opt(&s->ca_file, o->ca_file) < 0 ||
            dup_opt(&s->user_agent, o->user_agent) < 0)
            goto fail;
        s->verify_none = o->verify_none;
        s->h2c = o->http2_prior_knowledge;
        if (o->cookies) {
            s->share = curl_share_init();
            if (!s->share)
                goto fail;
            curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE);
        }
        if (o->max_host_connections)
            curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                              o->max_host_connections);
        if (o->max_total_connections)
            curl_multi_setopt(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                              o->max_total_connections);
    }
    if (default_headers(s) < 0)
        goto fail;
    curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
    curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
    curl_multi_setopt(s->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    pool_fit(s);
    arm_epfd(s);
    *out = s;
    return 0;
fail:
    s->live = 0;
    ca_http_session_free(s);
    return r;
}

int ca_http_session_free(ca_http_session *s)
{
    if (!s)
        return 0;
    if (s->live)
        return -EBUSY;
    if (s->armed)
        ca__fd_remove_waiter(s->loop, &s->w);
    if (s->drain_queued)
        ca_handle_cancel(s->drain_h);
    if (s->kick_queued)
        ca_handle_cancel(s->kick_h);
    ca__timer_cancel(s->loop, &s->timer);
    while (s->nspare)
        curl_easy_cleanup(s->spare[--s->nspare].easy);
    if (s->multi)
        curl_multi_cleanup(s->multi); /* closes the pooled connections */
    if (s->share)
        curl_share_cleanup(s->share);
    if (s->epfd >= 0) {
        ca__fd_forget(s->loop, s->epfd);
        close(s->epfd);
    }
    while (s->dns)
        dns_drop(s, &s->dns);
    memo_unref(s->memo);
    free(s->seen);
    curl_slist_free_all(s->headers);
    free(s->fdst);
    free(s->base_url);
    free(s->proxy);
    free(s->ca_file);
    free(s->user_agent);
    free(s);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Callbacks of one transfer                                                */
/* ------------------------------------------------------------------------ */

static void headers_clear(ca_http_response *r)
{
    for (size_t i = 0; i < r->nhdr; i++) {
        free(r->hdrs[i].name);
        free(r->hdrs[i].value);
    }
    r->nhdr = 0;
}

static const char *find_header(const ca_http_response *r, const char *name,
                               size_t nth)
{
    for (size_t i = 0; i < r->nhdr; i++)
        if (strcasecmp(r->hdrs[i].name, name) == 0 && nth-- == 0)
            return r->hdrs[i].value;
    return NULL;
}

/* 1 if curl, following redirects, goes on from this response: curl 7.88
 * follows every 3xx with a non-empty Location (300, 304, 305 too), not
 * only 301/302/303/307/308, and an empty Location not at all. */
static int will_follow(const ca_http_response *r, long code)
{
    if (!r->follow || code < 300 || code > 399)
        return 0;
    const char *loc = find_header(r, "location", 0);
    return loc && *loc;
}

static int add_header(ca_http_response *r, const char *p, size_t len)
{
    while (len && (p[len - 1] == '\n' || p[len - 1] == '\r'))
        len--;
    if ((p[0] == ' ' || p[0] == '\t') && r->nhdr) {
        /* obsolete line folding: continues the previous value */
        struct hdr *h = &r->hdrs[r->nhdr - 1];
        size_t old = strlen(h->value);
        char *v = realloc(h->value, old + len + 1);
        if (!v)
            return -1;
        memcpy(v + old, p, len);
        v[old + len] = '\0';
        h->value = v;
        return 0;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon || colon == p)
        return 0; /* not a header line: ignored */
    if (r->nhdr == r->hdr_cap) {
        size_t cap = r->hdr_cap ? 2 * r->hdr_cap : 16;
        struct hdr *h = realloc(r->hdrs, cap * sizeof(*h));
        if (!h)
            return -1;
        r->hdrs = h;
        r->hdr_cap = cap;
    }
    const char *v = colon + 1;
    const char *end = p + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    struct hdr *h = &r->hdrs[r->nhdr];
    h->name = strndup(p, (size_t)(colon - p));
    h->value = strndup(v, (size_t)(end - v));
    if (!h->name || !h->value) {
        free(h->name);
        free(h->value);
        return -1;
    }
    r->nhdr++;
    return 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    ca_http_response *r = ud;
    size_t len = size * n;
    idle_arm(r);
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        headers_clear(r); /* a new response: after a 1xx or a redirect */
        return len;
    }
    if (len <= 2) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        int more = code < 200 || will_follow(r, code);
        if (!more) {
            r->status = (int)code;
            r->headers_ready = 1;
            if (r->stream)
                wake(r);
        }
        return len;
    }
    return add_header(r, p, len) == 0 ? len : 0;
}

/* The body buffer's first size: a whole body the server announced, up to
 * 1 MiB (a "2 bytes" answer took a 16 KiB block each, which glibc's
 * malloc serves from its large bins, consolidating its fast bins first),
 * else 16 KiB. */
static size_t first_cap(ca_http_response *r)
{
    curl_off_t cl = -1;
    if (!r->stream &&
        curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) ==
            CURLE_OK &&
        cl >= 0 && cl < 1024 * 1024)
        return (size_t)cl + 1;
    return 16384;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    ca_http_response *r = ud;
    size_t len = size * n;
    idle_arm(r);
    if (!r->headers_ready) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        r->status = (int)code;
        r->headers_ready = 1;
    }
    size_t unread = r->body_len - r->body_off;
    if (r->stream) {
        if (unread >= STREAM_HIGH) {
            r->paused = 1; /* curl keeps these bytes and pauses */
            ca__timer_cancel(r->s->loop, &r->idle);
            wake(r);
            return CURL_WRITEFUNC_PAUSE;
        }
    } else if (r->body_len + len > r->max_body) {
        r->err = -EMSGSIZE;
        snprintf(r->ownerr, sizeof(r->ownerr),
                 "body larger than the limit of %zu bytes", r->max_body);
        return 0; /* CURLE_WRITE_ERROR */
    }
    if (r->body_off > 0 && r->body_off == r->body_len)
        r->body_off = r->body_len = 0;
    if (r->body_cap - r->body_len < len + 1) {
        if (r->body_off > 0) {
            memmove(r->body, r->body + r->body_off, unread);
            r->body_off = 0;
            r->body_len = unread;
        }
        size_t cap = r->body_cap ? r->body_cap : first_cap(r);
        while (cap - r->body_len < len + 1)
            cap *= 2;
        if (cap > r->body_cap) {
            char *b = realloc(r->body, cap);
            if (!b) {
                r->err = -ENOMEM;
                return 0;
            }
            r->body = b;
            r->body_cap = cap;
        }
    }
    memcpy(r->body + r->body_len, p, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    if (r->stream)
        wake(r);
    return len;
}

/*
 * An upload from a pipe or a socket (body_fd) that has nothing to give yet
 * pauses; the loop watches the fd and resumes the upload once it turns
 * readable.  Reading it at once would block the loop's thread: the whole
 * program stops until the writer writes, and forever when the writer is a
 * task of this loop.
 */
static void body_fd_unwatch(ca_http_response *r)
{
    ca_loop *l = r->s->loop;
    if (r->fd_armed) {
        ca__fd_remove_waiter(l, &r->fdw);
        r->fd_armed = 0;
    }
    if (r->fd_forget) {
        /* The caller closes the fd with close(): a registration left in
         * the loop's table would hide the fd number's next owner from
         * epoll. */
        ca__fd_forget(l, r->body_fd);
        r->fd_forget = 0;
    }
}

static void body_fd_wake(ca__fdwait *w, int result)
{
    ca_http_response *r =
        (ca_http_response *)((char *)w - offsetof(ca_http_response, fdw));
    r->fd_armed = 0;
    if (r->done)
        return;
    if (result < 0) {
        r->err = result;
        finish(r, CURLE_ABORTED_BY_CALLBACK);
        return;
    }
    curl_easy_pause(r->easy, CURLPAUSE_CONT); /* curl reads it again */
}

/* Pause the upload until body_fd is readable. */
static size_t body_fd_pause(ca_http_response *r)
{
    ca_loop *l = r->s->loop;
    int fd = r->body_fd;
    if (!r->fd_armed) {
        int known = fd < l->nfds && l->fds[fd].registered;
        int rc = ca__fd_register(l, fd);
        if (rc < 0) {
            r->err = rc;
            return CURL_READFUNC_ABORT;
        }
        r->fd_forget = r->fd_forget || !known;
        /* It was just found empty: wait for the next edge, not for one
         * the loop saw before. */
        ca__fd_take_ready(l, fd, CA_READ);
        r->fdw =
            (ca__fdwait){.fd = fd, .events = CA_READ, .wake = body_fd_wake};
        ca__fd_add_waiter(l, &r->fdw);
        r->fd_armed = 1;
    }
    return CURL_READFUNC_PAUSE;
}

static size_t read_body_fd(ca_http_response *r, char *buf, size_t cap)
{
    if (r->fd_polled) {
        struct pollfd p = {.fd = r->body_fd, .events = POLLIN};
        int n;
        while ((n = poll(&p, 1, 0)) < 0 && errno == EINTR)
            ;
        if (n == 0)
            return body_fd_pause(r);
    }
    /* With a Content-Length, no byte beyond it (curl would send it). */
    if (r->up_size >= 0 && (curl_off_t)cap > r->up_size - r->up_taken)
        cap = (size_t)(r->up_size - r->up_taken);
    for (;;) {
        ssize_t k = cap ? read(r->body_fd, buf, cap) : 0;
        if (k > 0) {
            r->up_taken += k;
            return (size_t)k;
        }
        if (k == 0) {
            if (r->up_size >= 0 && r->up_taken < r->up_size) {
                snprintf(r->ownerr, sizeof(r->ownerr),
                         "body fd ended %lld bytes short of its "
                         "Content-Length of %lld",
                         (long long)(r->up_size - r->up_taken),
                         (long long)r->up_size);
                r->err = -EMSGSIZE;
                return CURL_READFUNC_ABORT;
            }
            return 0;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return body_fd_pause(r); /* another reader was first */
        if (errno != EINTR) {
            r->err = -errno;
            return CURL_READFUNC_ABORT;
        }
    }
}

/*
 * Generator bodies.  The generator can only be asked for chunks by a task
 * (ca_gen_next), so the requesting task runs it, ahead of curl: while the
 * upload buffer has room, the task takes the next chunk and copies it in (a
 * chunk is only valid until the generator is asked for the next one), and
 * curl's read callback takes as many buffered bytes as curl asks for (up to
 * 64 KiB), whatever the chunk sizes.  A chunk larger than the room left is
 * held where the generator keeps it: curl reads it from there, and the
 * generator is not asked for more until what is left of it fits.  Memory
 * stays at UPLOAD_BUF plus the generator's own chunk however fast the
 * generator is.
 *
 * Each chunk costs the task two switches through the ready queue, and curl
 * runs at every loop turn while its socket is writable: handed whatever is
 * buffered at each call, it would send one small chunk per turn.  So the
 * read callback hands curl nothing (it pauses the upload) while less than
 * UPLOAD_MIN is buffered, and the upload resumes once UPLOAD_MIN is, the
 * generator has ended, or UPLOAD_WAIT_NS after the first byte that waits
 * (a slow generator's chunks go out that much later, not once the buffer
 * fills).  One pause per chunk (before) cost a loop turn, a send(2) and two
 * epoll_ctl(2) per chunk.
 */
#define UPLOAD_BUF (64u * 1024u)
#define UPLOAD_MIN (UPLOAD_BUF / 2)
#define UPLOAD_WAIT_NS 200000

static size_t up_buffered(const ca_http_response *r)
{
    return r->up_len - r->up_off;
}

/* Bytes curl could have now: buffered, and what is left of the held chunk. */
static size_t up_ready(const ca_http_response *r)
{
    return up_buffered(r) + (r->chunk ? r->chunk->len - r->chunk_off : 0);
}

/* 1 if the requesting task has work for the upload: copy the held chunk in
 * (it fits now) or ask the generator for the next one (there is room). */
static int feed_wanted(const ca_http_response *r)
{
    if (!r->gen || r->done || r->gen_done)
        return 0;
    size_t room = UPLOAD_BUF - up_buffered(r);
    if (r->chunk)
        return r->chunk->len - r->chunk_off <= room;
    return room > 0;
}

static void up_resume(ca_http_response *r)
{
    r->up_paused = 0;
    ca__timer_cancel(r->s->loop, &r->up_timer);
    /* The receiving side stays as it was (stream mode back pressure). */
    curl_easy_pause(r->easy, r->paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
}

/* Bytes have waited UPLOAD_WAIT_NS while the upload is paused: curl takes
 * them, however few. */
static void up_timer_fire(ca__timer *t)
{
    ca_http_response *r =
        (ca_http_response *)((char *)t - offsetof(ca_http_response, up_timer));
    if (r->up_paused && !r->done) {
        r->up_flush = 1;
        up_resume(r);
    }
}

/* Bytes wait: curl takes them UPLOAD_WAIT_NS from now at the latest.
 * Returns 0, or -ENOMEM if the timer cannot be armed. */
static int up_wait_arm(ca_http_response *r)
{
    if (ca__timer_armed(&r->up_timer))
        return 0;
    return ca__timer_arm(r->s->loop, &r->up_timer,
                         ca__clock_ns() + UPLOAD_WAIT_NS);
}

/* The task added bytes or ended the body: resume a paused upload if there
 * is enough, or by the timer. */
static void up_kick(ca_http_response *r)
{
    if (!r->up_paused || r->done)
        return;
    size_t n = up_ready(r);
    if (n >= UPLOAD_MIN || r->gen_done) {
        up_resume(r);
    } else if (n && up_wait_arm(r) < 0) {
        r->up_flush = 1;
        up_resume(r);
    }
}

/* Copy n bytes, no more than the room left, to the end of the buffer. */
static int up_append(ca_http_response *r, const void *p, size_t n)
{
    if (!r->up_buf) {
        r->up_buf = malloc(UPLOAD_BUF);
        if (!r->up_buf)
            return -ENOMEM;
    }
    if (r->up_off == r->up_len) {
        r->up_off = r->up_len = 0;
    } else if (UPLOAD_BUF - r->up_len < n) {
        memmove(r->up_buf, r->up_buf + r->up_off, up_buffered(r));
        r->up_len -= r->up_off;
        r->up_off = 0;
    }
    memcpy(r->up_buf + r->up_len, p, n);
    r->up_len += n;
    return 0;
}

/* curl asks for up to cap bytes of a generator body: the buffered bytes,
 * then the held chunk's. */
static size_t read_gen(ca_http_response *r, char *buf, size_t cap)
{
    size_t have = up_ready(r);
    if (have == 0 && r->gen_done)
        return 0;
    if (have == 0 || (have < UPLOAD_MIN && !r->gen_done && !r->up_flush &&
                      up_wait_arm(r) == 0)) {
        /* up_kick or the timer resumes the upload */
        r->up_paused = 1;
        if (feed_wanted(r))
            wake(r);
        return CURL_READFUNC_PAUSE;
    }
    r->up_flush = 0;
    size_t n = up_buffered(r);
    if (n > cap)
        n = cap;
    if (n) {
        memcpy(buf, r->up_buf + r->up_off, n);
        r->up_off += n;
    }
    if (r->chunk && n < cap) {
        size_t k = r->chunk->len - r->chunk_off;
        if (k > cap - n)
            k = cap - n;
        memcpy(buf + n, (const char *)r->chunk->data + r->chunk_off, k);
        r->chunk_off += k;
        n += k;
        if (r->chunk_off == r->chunk->len)
            r->chunk = NULL;
    }
    if (feed_wanted(r))
        wake(r); /* room again: the task refills it */
    return n;
}

/* Upload data: bytes from a file, or chunks from a generator. */
static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
    ca_http_response *r = ud;
    size_t cap = size * n;
    if (r->body_fd > 0)
        return read_body_fd(r, buf, cap);
    return read_gen(r, buf, cap);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static int map_curl(ca_http_response *r, CURLcode c)
{
    if (r->err)
        return r->err;
    long os = 0, vr = 0;
    switch (c) {
    case CURLE_OK:
        return 0;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -CA_ENOTFOUND;
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os);
        return os > 0 ? -(int)os : -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_TOO_MANY_REDIRECTS:
        return -CA_EREDIRECTS;
    case CURLE_PEER_FAILED_VERIFICATION:
        /* curl checks names itself, after a good chain: it then reports
         * X509_V_OK or X509_V_ERR_UNSPECIFIED (1) and says so in words. */
        curl_easy_getinfo(r->easy, CURLINFO_SSL_VERIFYRESULT, &vr);
        if (vr <= 1)
            return strstr(r->errbuf, "match") ? -CA_ECERTHOST : -CA_ECERT;
        return ca__tls_verify_errno(vr);
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
        return -CA_ETLS;
    case CURLE_FILESIZE_EXCEEDED:
        return -EMSGSIZE;
    case CURLE_URL_MALFORMAT:
        return -EINVAL;
    case CURLE_OUT_OF_MEMORY: {
        /* curl 7.88 also says "out of memory" when a response header line
         * passes its 100 KiB limit: a hostile or broken peer, not us. */
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code <= 0)
            return -ENOMEM;
        if (!r->errbuf[0])
            snprintf(r->errbuf, sizeof(r->errbuf),
                     "response header larger than curl accepts");
        return -EMSGSIZE;
    }
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os);
        if (os > 0)
            return -(int)os;
        /* Debian's 7.88 also caps a response's header lines at 300 KiB in
         * all (curl 8.3's limit, CVE-2023-38039), and says so only in
         * words: too large, as a single line over 100 KiB is. */
        if (c == CURLE_RECV_ERROR && strstr(r->errbuf, "Too large response"))
            return -EMSGSIZE;
        return -CA_EHTTP;
    default:
        return -CA_EHTTP;
    }
}

static int absolute(const char *url)
{
    return strstr(url, "://") != NULL;
}

/* The common case, without a CURLU parse: "http://host[:port]..." or
 * "https://host[:port]..." with a plain host name or IPv4 address (no user
 * info, no IPv6 literal, no percent-encoding).  Copies the host into
 * host[cap] and sets *port; returns 0 if the URL needs the full parser. */
static int simple_url(const char *url, char *host, size_t cap, unsigned *port)
{
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
        *port = 80;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
        *port = 443;
    } else {
        return 0;
    }
    size_t n = 0;
    while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z') ||
           (p[n] >= '0' && p[n] <= '9') || p[n] == '-' || p[n] == '.' ||
           p[n] == '_')
        n++;
    if (n == 0 || n >= cap)
        return 0;
    memcpy(host, p, n);
    host[n] = '\0';
    p += n;
    if (*p == ':') {
        unsigned v = 0;
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9' && digits < 6; p++, digits++)
            v = v * 10 + (unsigned)(*p - '0');
        if (digits == 0 || v == 0 || v > 65535)
            return 0;
        *port = v;
    }
    return *p == '\0' || *p == '/' || *p == '?' || *p == '#';
}

/* Remember host and port for pre_resolve, unless curl handles the host
 * itself (numeric, localhost) or a proxy resolves it. */
static int keep_host(ca_http_response *r, const char *host, unsigned port)
{
    struct in_addr a;
    if (host[0] == '[' || ca__ipv4_literal(host, &a) ||
        strcasecmp(host, "localhost") == 0 || r->s->proxy)
        return 0;
    r->host = strdup(host);
    r->port = port;
    return r->host ? 0 : -ENOMEM;
}

/* The url argument of a request without query parameters came before: r
 * takes the memo's URL and host (1), or not (0). */
static int memo_take(ca_http_response *r, const char *url)
{
    url_memo *m = r->s->memo;
    if (!m || strcmp(m->key, url) != 0)
        return 0;
    m->refs++;
    r->memo = m;
    r->url = m->url;
    r->host = m->host;
    r->port = m->port;
    return 1;
}

/* r prepared url (a plain http(s) URL, no query parameters): if the
 * session saw the same url argument last time, make it the memo (r's
 * strings move into it); else remember it.  Out of memory or a URL curl
 * would not parse: no memo, nothing lost. */
static void memo_offer(ca_http_response *r, const char *url)
{
    ca_http_session *s = r->s;
    if (!s->seen || strcmp(s->seen, url) != 0) {
        free(s->seen);
        s->seen = strdup(url);
        return;
    }
    url_memo *m = calloc(1, sizeof(*m));
    if (!m)
        return;
    m->uh = curl_url();
    m->key = s->seen;
    if (!m->uh || curl_url_set(m->uh, CURLUPART_URL, r->url, 0) != CURLUE_OK) {
        curl_url_cleanup(m->uh);
        free(m);
        return;
    }
    s->seen = NULL;
    m->refs = 2; /* the session's and r's */
    m->gen = ++s->memo_gens;
    m->url = r->url;
    m->host = r->host;
    m->port = r->port;
    memo_unref(s->memo);
    s->memo = m;
    r->memo = m;
}

/* r->url: the URL with the base and the query applied (malloc'd, or the
 * memo's), checked to be http(s); r->host and r->port for pre_resolve.
 * Parses the URL at most once (curl parses it again anyway when the
 * transfer starts, unless it is the memo's). */
static int prepare_url(ca_http_response *r, const char *url,
                       const char *const *query)
{
    ca_http_session *s = r->s;
    char *joined = NULL;
    const char *arg = url;
    int plain_url = !query || !*query;
    if (plain_url && memo_take(r, arg))
        return 0;
    if (!absolute(url) && s->base_url) {
        size_t bl = strlen(s->base_url);
        while (bl && s->base_url[bl - 1] == '/')
            bl--;
        while (*url == '/')
            url++;
        joined = malloc(bl + strlen(url) + 2);
        if (!joined)
            return -ENOMEM;
        sprintf(joined, "%.*s/%s", (int)bl, s->base_url, url);
        url = joined;
    }
    char hostbuf[256];
    unsigned port;
    if (plain_url && simple_url(url, hostbuf, sizeof(hostbuf), &port)) {
        /* Anything else wrong with it, curl reports when the transfer
         * starts (CURLE_URL_MALFORMAT: -EINVAL), before any I/O. */
        r->url = joined ? joined : strdup(url);
        int rc = r->url ? keep_host(r, hostbuf, port) : -ENOMEM;
        if (rc == 0)
            memo_offer(r, arg);
        return rc;
    }
    CURLU *u = curl_url();
    int rc = -ENOMEM;
    char *scheme = NULL, *host = NULL, *portstr = NULL, *full = NULL;
    if (!u)
        goto out;
    rc = -EINVAL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
        goto out;
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        goto out; /* this is an HTTP client: no ftp://, file://... */
    for (const char *const *q = query; q && *q; q += 2) {
        if (!q[1])
            goto out; /* a name without a value */
        size_t len = strlen(q[0]) + strlen(q[1]) + 2;
        char *kv = malloc(len);
        if (!kv) {
            rc = -ENOMEM;
            goto out;
        }
        snprintf(kv, len, "%s=%s", q[0], q[1]);
        CURLUcode c = curl_url_set(u, CURLUPART_QUERY, kv,
                                   CURLU_APPENDQUERY | CURLU_URLENCODE);
        free(kv);
        if (c != CURLUE_OK)
            goto out;
    }
    if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &portstr, CURLU_DEFAULT_PORT) !=
            CURLUE_OK)
        goto out;
    r->url = strdup(full);
    rc = r->url ? keep_host(r, host, (unsigned)atoi(portstr)) : -ENOMEM;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(portstr);
    curl_free(full);
    curl_url_cleanup(u);
    free(joined);
    return rc;
}

/* The CURLOPT_RESOLVE line "+host:port:addr[,addr...]" for ai (malloc'd;
 * NULL: out of memory).  The "+" (curl 7.75) makes the entry in curl's
 * own DNS cache expire like a lookup of curl's: without it every host a
 * session ever reached stayed there for the session's life, and a
 * redirect back to one used its old address. */
static char *resolve_line(const char *host, unsigned port,
                          const ca_addrinfo *ai)
{
    char entry[1024];
    int len = snprintf(entry, sizeof(entry), "+%s:%u:", host, port);
    int first = 1;
    for (const ca_addrinfo *p = ai; p && len < (int)sizeof(entry) - 64;
         p = p->next) {
        char ip[INET6_ADDRSTRLEN];
        const void *src =
            p->family == AF_INET6
                ? (const void *)&((struct sockaddr_in6 *)&p->addr)->sin6_addr
                : (const void *)&((struct sockaddr_in *)&p->addr)->sin_addr;
        if (!inet_ntop(p->family, src, ip, sizeof(ip)))
            continue;
        len += snprintf(entry + len, sizeof(entry) - (size_t)len,
                        p->family == AF_INET6 ? "%s[%s]" : "%s%s",
                        first ? "" : ",", ip);
        first = 0;
    }
    return strdup(entry);
}

/* Look host up with cawait's DNS: its RESOLVE line in *line (malloc'd). */
static int dns_lookup_now(const char *host, unsigned port, char **line)
{
    ca_addrinfo *ai;
    int rc = ca_getaddrinfo(host, port, AF_UNSPEC, SOCK_STREAM, &ai);
    if (rc < 0)
        return rc;
    *line = resolve_line(host, port, ai);
    ca_freeaddrinfo(ai);
    return *line ? 0 : -ENOMEM;
}

/* Wait for the lookup another request runs.  Returns 1 to look again (its
 * owner gave up: cancelled or out of time, which says nothing of the
 * name), else its result (0 with a copy of its line in *line). */
static int dns_wait(dns_lookup *lk, char **line)
{
    lk->refs++;
    int rc = ca_event_wait(&lk->done);
    if (rc == 0) {
        rc = lk->rc;
        if (rc == -ECANCELED || rc == -ETIMEDOUT)
            rc = 1;
        else if (rc == 0 && !(*line = strdup(lk->line)))
            rc = -ENOMEM;
    }
    dns_lookup_unref(lk);
    return rc;
}

/* Run the lookup of e's name, with the waiters that come meanwhile. */
static int dns_own(ca_http_session *s, dns_entry *e, char **line)
{
    dns_lookup *lk = calloc(1, sizeof(*lk));
    if (!lk)
        return -ENOMEM;
    lk->refs = 1;
    e->running = lk; /* e stays in the list while running */
    int rc = dns_lookup_now(e->host, e->port, line);
    e->running = NULL;
    char *keep = rc == 0 ? strdup(*line) : NULL;
    if (keep) {
        free(e->line);
        e->line = keep;
        e->expires = ca__clock_ns() + s->dns_ttl;
        lk->line = strdup(keep); /* NULL: the waiters look again */
    }
    lk->rc = rc == 0 && !lk->line ? -ECANCELED : rc;
    ca_event_set(&lk->done);
    dns_lookup_unref(lk);
    if (!e->line)
        for (dns_entry **pp = &s->dns; *pp; pp = &(*pp)->next)
            if (*pp == e) {
                dns_drop(s, pp);
                break;
            }
    return rc;
}

/* host:port's RESOLVE line (malloc'd) in *line: from the session's cache,
 * from the lookup in flight for it, or from a new lookup, kept. */
static int dns_resolve(ca_http_session *s, const char *host, unsigned port,
                       char **line)
{
    if (s->dns_ttl < 0)
        return dns_lookup_now(host, port, line);
    for (;;) {
        dns_entry *e = dns_find(s, host, port);
        if (e && e->running) {
            int rc = dns_wait(e->running, line);
            if (rc <= 0)
                return rc;
            continue;
        }
        if (e && e->line && ca__clock_ns() < e->expires) {
            *line = strdup(e->line);
            return *line ? 0 : -ENOMEM;
        }
        if (!e && !(e = dns_add(s, host, port)))
            return -ENOMEM;
        return dns_own(s, e, line);
    }
}

/* Resolve r->host with cawait's DNS (c-ares in the loop; the session's
 * cache first) and pin it with CURLOPT_RESOLVE, so curl's resolver (a
 * thread) stays unused.  Nothing to do for hosts curl handles itself
 * (r->host NULL) and in builds without c-ares. */
static int pre_resolve(ca_http_response *r, const ca_http_request_opts *o)
{
    if (!r->host)
        return 0;
    /* The request's timeouts cover the lookup too (curl's own start with
     * the transfer): it runs in a deadline scope of the shorter one, and
     * curl gets what is left. */
    double limit = o->timeout;
    if (o->connect_timeout > 0 && (limit <= 0 || o->connect_timeout < limit))
        limit = o->connect_timeout;
    int64_t t0 = ca__clock_ns();
    int scoped = limit > 0 && ca_deadline_push(limit) == 0;
    char *line = NULL;
    int rc = dns_resolve(r->s, r->host, r->port, &line);
    if (scoped && ca_deadline_pop() == -ETIMEDOUT && rc >= 0)
        rc = -ETIMEDOUT; /* answered, but with no time left */
    if (rc < 0) {
        free(line);
        if (rc == -CA_ENORESOLVER)
            return 0;
        if (rc == -ETIMEDOUT)
            snprintf(r->errbuf, sizeof(r->errbuf), "resolving %s timed out",
                     r->host);
        return rc;
    }
    double spent = (double)(ca__clock_ns() - t0) / 1e9;
    if (o->timeout > 0)
        curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS,
                         (long)((o->timeout - spent) * 1000) + 1);
    if (o->connect_timeout > 0)
        curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)((o->connect_timeout - spent) * 1000) + 1);
    struct curl_slist *n = curl_slist_append(NULL, line);
    free(line);
    if (!n)
        return -ENOMEM;
    r->resolve = n;
    curl_easy_setopt(r->easy, CURLOPT_RESOLVE, r->resolve);
    return 0;
}

/* The value of a "Content-Length: n" header in list: 1 with *out = n, 0 if
 * there is none (or it is "Content-Length:", which tells curl to send none),
 * -EINVAL if n is not a decimal number. */
static int declared_length(const struct curl_slist *list, curl_off_t *out)
{
    const char *p = header_value(list, "Content-Length");
    if (!p || !*p)
        return 0;
    const char *digits = p;
    curl_off_t n = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        n = n * 10 + (*p - '0');
    /* 18 digits: anything longer is not a body we can send */
    if (p == digits || p - digits > 18 || p[strspn(p, " \t")])
        return -EINVAL;
    *out = n;
    return 1;
}

/* The request body, and the method exactly as asked: curl's body options
 * imply POST (bytes, or a stream with CURLOPT_POST) or PUT (a stream with
 * CURLOPT_UPLOAD), so any other method with a body goes out through
 * CURLOPT_CUSTOMREQUEST (a GET with a body stays a GET, as in aiohttp). */
static int setup_body(ca_http_response *r, const char *method,
                      const ca_http_request_opts *o)
{
    CURL *e = r->easy;
    int post = strcmp(method, "POST") == 0;
    int head = strcmp(method, "HEAD") == 0;
    int has_body = o->body || o->body_fd > 0 || o->body_gen;
    if (head && has_body)
        return -EINVAL; /* curl cannot send a HEAD with a body */
    const char *implied = o->body || post ? "POST" : has_body ? "PUT" : "GET";
    if (o->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)o->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, o->body);
    } else if (o->body_fd > 0 || o->body_gen) {
        curl_off_t size = -1; /* chunked */
        /* With a Content-Length header of the caller's, curl would send it
         * and chunk the body as well (an unknown size means chunked to
         * curl), or send a file's own size beside it: give curl the
         * declared size instead, and send exactly that many bytes. */
        int d = declared_length(r->req_headers, &size);
        if (d < 0)
            return d;
        r->up_size = size;
        if (o->body_fd > 0) {
            struct stat st;
            off_t pos = lseek(o->body_fd, 0, SEEK_CUR);
            if (fstat(o->body_fd, &st) < 0)
                return -errno;
            if (!d && S_ISREG(st.st_mode) && pos >= 0)
                size = (curl_off_t)(st.st_size - pos);
            r->body_fd = o->body_fd;
            /* Files and block devices never make a read wait. */
            r->fd_polled = !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
        } else {
            r->gen = o->body_gen;
            r->up_timer =
                (ca__timer){.slot = CA__TIMER_IDLE, .fire = up_timer_fire};
        }
        curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, r);
        if (post) {
            curl_easy_setopt(e, CURLOPT_POST, 1L);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, size);
        } else {
            curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, size);
        }
    } else if (post) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    }
    if (head)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, implied) != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    return 0;
}


/* The options every request of session s sets alike, set once per easy
 * handle: on a new handle, and again after curl_easy_reset. */
static void easy_base(ca_http_session *s, CURL *e)
{
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_cb);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    /* Decoding of what aiohttp asks for; "" would also offer br and zstd,
     * at ~4% more instructions per request (curl 7.88, callgrind).  The
     * header itself is one of the session's (default_headers). */
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, ACCEPT_ENCODING);
    if (s->ua_opt)
        curl_easy_setopt(e, CURLOPT_USERAGENT,
                         s->user_agent ? s->user_agent : "cawait/0.1");
    curl_easy_setopt(e, CURLOPT_PROXY, s->proxy ? s->proxy : "");
    /* Nor no_proxy from the environment (curl would getenv it twice per
     * request). */
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    if (s->share) {
        /* The cookie engine.  Handles of a cookie session are not reused:
         * curl 7.88's curl_easy_reset leaks the COOKIEFILE list. */
        curl_easy_setopt(e, CURLOPT_SHARE, s->share);
        curl_easy_setopt(e, CURLOPT_COOKIEFILE, "");
    }
    if (s->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, s->ca_file);
    if (s->verify_none) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     s->h2c ? (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                            : (long)CURL_HTTP_VERSION_2TLS);
}

static int setup(ca_http_response *r, const char *method, const char *url,
                 const ca_http_request_opts *o)
{
    ca_http_session *s = r->s;
    CURL *e = r->easy;
    int rc = prepare_url(r, url, o->query);
    if (rc < 0)
        return rc;
    /* Every option a request may set is set here, to its value or to
     * curl's default: a handle kept from a plain request (see
     * response_free) still holds the last request's. */
    if (!r->memo) {
        if (r->easy_gen)
            curl_easy_setopt(e, CURLOPT_CURLU, (CURLU *)NULL);
        curl_easy_setopt(e, CURLOPT_URL, r->url);
        r->easy_gen = 0;
    } else if (r->easy_gen != r->memo->gen) {
        /* No URL string: curl makes one from the CURLU at the start. */
        curl_easy_setopt(e, CURLOPT_URL, (char *)NULL);
        curl_easy_setopt(e, CURLOPT_CURLU, r->memo->uh);
        r->easy_gen = r->memo->gen;
    }
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    /* Where HTTP/2 is possible, a request started while the session's
     * first connection to the host is still being set up waits for it and
     * shares it, instead of opening one of its own. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                     (long)(s->h2c || strncasecmp(r->url, "https://", 8) == 0));
    r->follow = !o->no_redirects;
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long)r->follow);
    curl_easy_setopt(
        e, CURLOPT_MAXREDIRS,
        (long)(o->max_redirects > 0 ? o->max_redirects : DEFAULT_REDIRECTS));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                     o->timeout > 0 ? (long)(o->timeout * 1000) : 0L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     o->connect_timeout > 0 ? (long)(o->connect_timeout * 1000)
                                            : 0L);
    curl_easy_setopt(e, CURLOPT_RESOLVE, (struct curl_slist *)NULL);
    r->idle_ns = (int64_t)(o->idle_timeout * 1e9);
    r->stream = o->stream != 0;
    r->max_body = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                     r->stream ? (curl_off_t)0 : (curl_off_t)r->max_body);
    /* Headers: the session's, except those the request sets itself, then
     * the request's.  A request with none of its own and no body sends the
     * session's list as it is. */
    int has_body = o->body || o->body_fd > 0 || o->body_gen;
    if (!has_body && (!o->headers || !*o->headers)) {
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->headers);
        r->plain = strcmp(method, "GET") == 0;
        return setup_body(r, method, o);
    }
    for (struct curl_slist *h = s->headers; h; h = h->next) {
        size_t nl = (size_t)(strchr(h->data, ':') - h->data);
        int overridden = 0;
        for (const char *const *q = o->headers; q && *q; q++)
            if (strncasecmp(*q, h->data, nl) == 0 && (*q)[nl] == ':')
                overridden = 1;
        if (!overridden) {
            struct curl_slist *n = curl_slist_append(r->req_headers, h->data);
            if (!n)
                return -ENOMEM;
            r->req_headers = n;
        }
    }
    for (const char *const *q = o->headers; q && *q; q++) {
        if (!valid_header(*q))
            return -EINVAL;
        struct curl_slist *n = curl_slist_append(r->req_headers, *q);
        if (!n)
            return -ENOMEM;
        r->req_headers = n;
    }
    if (has_body && !has_header(r->req_headers, "Expect")) {
        /* curl sends "Expect: 100-continue" with a streamed or large body
         * and then waits a second for a 100 that most servers never send;
         * aiohttp and httpx do not ask.  An empty Expect turns it off (a
         * caller who wants it passes the header). */
        struct curl_slist *n = curl_slist_append(r->req_headers, "Expect:");
        if (!n)
            return -ENOMEM;
        r->req_headers = n;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->req_headers);
    /* A GET without a body sets no option in setup_body. */
    r->plain = strcmp(method, "GET") == 0 && !has_body;
    return setup_body(r, method, o);
}

/* A generator that yields more or fewer bytes than its Content-Length:
 * curl would send the surplus as the start of the next request on the
 * connection, or leave the server waiting for the rest. */
static int size_mismatch(ca_http_response *r, const char *what)
{
    r->chunk = NULL;
    snprintf(r->ownerr, sizeof(r->ownerr),
             "body generator yielded %s bytes than its Content-Length of %lld",
             what, (long long)r->up_size);
    return -EMSGSIZE;
}

/* One step of a generator upload (feed_wanted says there is one): copy
 * the held chunk in, or ask the generator for the next chunk and copy it in
 * if it fits.  Runs in the requesting task, blocked while the generator
 * works; curl may meanwhile take what is buffered.  Returns 0, or the error
 * that fails the request: the generator's, -EMSGSIZE (not its
 * Content-Length), -EINVAL (a chunk of len bytes at NULL), -ENOMEM, or
 * -ECANCELED/-ETIMEDOUT for the task itself. */
static int feed(ca_http_response *r)
{
    if (!r->chunk) {
        void *v = NULL;
        int g = ca_gen_next(r->gen, &v);
        if (g < 0)
            return g;
        if (g == 0) {
            if (r->up_size >= 0 && r->up_taken < r->up_size)
                return size_mismatch(r, "fewer");
            r->gen_done = 1; /* the generator returned: end of body */
        } else if (v && ((const ca_http_chunk *)v)->len) {
            const ca_http_chunk *c = v;
            if (!c->data) {
                snprintf(r->ownerr, sizeof(r->ownerr),
                         "body generator yielded %zu bytes at NULL", c->len);
                return -EINVAL;
            }
            if (r->up_size >= 0 &&
                c->len > (uint64_t)(r->up_size - r->up_taken))
                return size_mismatch(r, "more");
            r->up_taken += (curl_off_t)c->len;
            r->chunk = c;
            r->chunk_off = 0;
        }
        if (r->done)
            return 0; /* the transfer ended while the generator ran */
    }
    if (r->chunk &&
        r->chunk->len - r->chunk_off <= UPLOAD_BUF - up_buffered(r)) {
        int rc = up_append(r, (const char *)r->chunk->data + r->chunk_off,
                           r->chunk->len - r->chunk_off);
        if (rc < 0)
            return rc;
        r->chunk = NULL;
    }
    up_kick(r);
    return 0;
}

enum wait_for { W_DONE, W_HEADERS, W_DATA };

static int ready(const ca_http_response *r, enum wait_for what)
{
    switch (what) {
    case W_DONE:
        return r->done;
    case W_HEADERS:
        return r->done || r->headers_ready;
    default:
        return r->done || r->body_len > r->body_off;
    }
}

/* Park the calling task until `what`, running the upload generator ahead
 * of curl meanwhile (feed).  Returns 0 or -ECANCELED/-ETIMEDOUT
 * (deadline). */
static int wait_until(ca_http_response *r, enum wait_for what)
{
    ca_task *self = ca__task_self("ca_http_request");
    if (!self)
        return -EPERM;
    for (;;) {
        if (ready(r, what))
            return 0;
        if (feed_wanted(r)) {
            int g = feed(r);
            if (g < 0) {
                if (!r->err)
                    r->err = g;
                if (!r->done)
                    finish(r, CURLE_ABORTED_BY_CALLBACK);
            }
            continue;
        }
        r->task = self;
        int w = ca__task_park(self, INT64_MAX);
        r->task = NULL;
        if (w < 0)
            return w;
    }
}

static void response_free(ca_http_response *r)
{
    detach(r);
    ca_http_session *s = r->s;
    if (r->easy && !r->owns_session && !s->share &&
        s->nspare < sizeof(s->spare) / sizeof(s->spare[0])) {
        /* A plain GET that ran to its end left only options that the next
         * request's setup sets again: the handle is kept as it is (reset
         * and easy_base cost ~4,500 instructions a request).  Any other
         * goes back to curl's defaults and the session's options. */
        if (r->plain && !r->stream && r->done && r->result == CURLE_OK &&
            !r->err) {
            curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, (char *)NULL);
        } else {
            curl_easy_reset(r->easy);
            easy_base(s, r->easy);
            r->easy_gen = 0;
        }
        s->spare[s->nspare].easy = r->easy;
        s->spare[s->nspare++].memo_gen = r->easy_gen;
    } else if (r->easy) {
        curl_easy_cleanup(r->easy);
    }
    headers_clear(r);
    free(r->hdrs);
    free(r->body);
    free(r->up_buf);
    if (r->memo) {
        memo_unref(r->memo);
    } else {
        free(r->url);
        free(r->host);
    }
    curl_slist_free_all(r->req_headers);
    curl_slist_free_all(r->resolve);
    s->live--;
    pool_fit(s);
    int own = r->owns_session;
    free(r);
    if (own)
        ca_http_session_free(s);
}

static void set_last_error(ca_http_response *r, int rc)
{
    snprintf(last_error, sizeof(last_error), "%s",
             r->errbuf[0] ? r->errbuf
             : r->done    ? curl_easy_strerror(r->result)
                          : ca_strerror(rc));
}

int ca_http_request(ca_http_session *s, const char *method, const char *url,
                    const ca_http_request_opts *opts, ca_http_response **out)
{
    static const ca_http_request_opts dflt;
    if (!out)
        return -EINVAL;
    *out = NULL;
    const ca_http_request_opts *o = opts ? opts : &dflt;
    if (!s || !url || !*url || o->timeout < 0 || o->connect_timeout < 0 ||
        o->idle_timeout < 0 || o->max_redirects < 0 || o->body_fd < 0 ||
        (!!o->body + (o->body_fd > 0) + !!o->body_gen) > 1 ||
        (!o->body && o->body_len))
        return -EINVAL;
    if (!method)
        method = "GET";
    if (!*method || strpbrk(method, " \r\n"))
        return -EINVAL;
    if (ca__loop() != s->loop)
        return -EINVAL; /* a session belongs to its loop's thread */
    if (!ca__task_self("ca_http_request"))
        return -EPERM;
    last_error[0] = '\0';
    ca_http_response *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->s = s;
    s->live++;
    pool_fit(s);
    r->idle = (ca__timer){.slot = CA__TIMER_IDLE, .fire = idle_fire};
    if (s->nspare) {
        s->nspare--;
        r->easy = s->spare[s->nspare].easy;
        r->easy_gen = s->spare[s->nspare].memo_gen;
    } else if ((r->easy = curl_easy_init()) != NULL) {
        easy_base(s, r->easy);
    }
    int rc = r->easy ? setup(r, method, url, o) : -ENOMEM;
    if (rc == 0)
        rc = pre_resolve(r, o);
    if (rc == 0) {
        if (curl_multi_add_handle(s->multi, r->easy) != CURLM_OK)
            rc = -ENOMEM;
        else
            r->attached = 1;
    }
    if (rc == 0) {
        idle_arm(r);
        rc = wait_until(r, r->stream ? W_HEADERS : W_DONE);
    }
    if (rc == 0 && r->done)
        rc = map_curl(r, r->result);
    if (rc == 0 && !r->headers_ready) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        r->status = (int)code;
    }
    if (rc < 0) {
        set_last_error(r, rc);
        response_free(r);
        return rc;
    }
    if (!r->body) {
        r->body = calloc(1, 1);
        if (!r->body) {
            response_free(r);
            return -ENOMEM;
        }
        r->body_cap = 1;
    }
    *out = r;
    return 0;
}

int ca_http_fetch(const char *method, const char *url,
                  const ca_http_request_opts *opts, ca_http_response **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    ca_http_session *s;
    int r = ca_http_session_new(&s, NULL);
    if (r < 0)
        return r;
    r = ca_http_request(s, method, url, opts, out);
    if (r < 0) {
        ca_http_session_free(s);
        return r;
    }
    (*out)->owns_session = 1;
    return 0;
}

ssize_t ca_http_response_read(ca_http_response *r, void *buf, size_t n)
{
    if (!r || (!buf && n))
        return -EINVAL;
    if (n == 0)
        return 0;
    if (r->body_len == r->body_off && !r->done) {
        int w = wait_until(r, W_DATA);
        if (w < 0)
            return w;
    }
    size_t have = r->body_len - r->body_off;
    if (have == 0) {
        int e = r->done ? map_curl(r, r->result) : 0;
        return e;
    }
    if (n > have)
        n = have;
    memcpy(buf, r->body + r->body_off, n);
    r->body_off += n;
    if (r->paused && r->body_len - r->body_off <= STREAM_LOW && !r->done) {
        r->paused = 0;
        idle_arm(r);
        /* May call on_body at once with the bytes curl held back. */
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
    }
    return (ssize_t)n;
}

/* ------------------------------------------------------------------------ */
/* Response accessors                                                       */
/* ------------------------------------------------------------------------ */

int ca_http_response_status(const ca_http_response *r)
{
    return r ? r->status : -EINVAL;
}

const char *ca_http_response_header(const ca_http_response *r, const char *name)
{
    return ca_http_response_header_n(r, name, 0);
}

const char *ca_http_response_header_n(const ca_http_response *r,
                                      const char *name, size_t nth)
{
    return r && name ? find_header(r, name, nth) : NULL;
}

size_t ca_http_response_header_count(const ca_http_response *r)
{
    return r ? r->nhdr : 0;
}

const char *ca_http_response_header_at(const ca_http_response *r, size_t i,
                                       const char **value)
{
    if (!r || i >= r->nhdr) {
        if (value)
            *value = NULL;
        return NULL;
    }
    if (value)
        *value = r->hdrs[i].value;
    return r->hdrs[i].name;
}

const char *ca_http_response_body(const ca_http_response *r, size_t *len)
{
    if (!r) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = r->body_len - r->body_off;
    return r->body + r->body_off;
}

const char *ca_http_response_url(const ca_http_response *r)
{
    char *u = NULL;
    if (!r)
        return NULL;
    if (curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &u) != CURLE_OK)
        return r->url;
    return u ? u : r->url;
}

int ca_http_response_version(const ca_http_response *r)
{
    long v = 0;
    if (!r || curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &v) != CURLE_OK)
        return 0;
    switch (v) {
    case CURL_HTTP_VERSION_1_0:
    case CURL_HTTP_VERSION_1_1:
        return 1;
    case CURL_HTTP_VERSION_2_0:
        return 2;
    case CURL_HTTP_VERSION_3:
        return 3;
    default:
        return 0;
    }
}

double ca_http_response_time(const ca_http_response *r, const char *what)
{
    if (!r || !what)
        return -1;
    CURLINFO info;
    if (strcmp(what, "dns") == 0)
        info = CURLINFO_NAMELOOKUP_TIME_T;
    else if (strcmp(what, "connect") == 0)
        info = CURLINFO_CONNECT_TIME_T;
    else if (strcmp(what, "tls") == 0)
        info = CURLINFO_APPCONNECT_TIME_T;
    else if (strcmp(what, "first_byte") == 0)
        info = CURLINFO_STARTTRANSFER_TIME_T;
    else if (strcmp(what, "total") == 0)
        info = CURLINFO_TOTAL_TIME_T;
    else
        return -1;
    curl_off_t us = 0;
    if (curl_easy_getinfo(r->easy, info, &us) != CURLE_OK || us <= 0)
        return -1;
    return (double)us / 1e6;
}

const char *ca_http_response_error(const ca_http_response *r)
{
    return r ? r->errbuf : "";
}

void ca_http_response_free(ca_http_response *r)
{
    if (r)
        response_free(r);
}

int ca_http_raise_for_status(const ca_http_response *r)
{
    if (!r)
        return -EINVAL;
    return r->status >= 400 || r->status < 100 ? -CA_EHTTPSTATUS : 0;
}

#else /* !CAWAIT_HAVE_CURL */

int ca_http_global_init(void)
{
    return -CA_ENOHTTP;
}

int ca_http_session_new(ca_http_session **out, const ca_http_session_opts *o)
{
    (void)o;
    if (!out)
        return -EINVAL;
    *out = NULL;
    return -CA_ENOHTTP;
}

int ca_http_session_free(ca_http_session *s)
{
    (void)s;
    return 0;
}

int ca_http_request(ca_http_session *s, const char *method, const char *url,
                    const ca_http_request_opts *opts, ca_http_response **out)
{
    (void)s, (void)method, (void)url, (void)opts;
    if (out)
        *out = NULL;
    return out ? -CA_ENOHTTP : -EINVAL;
}

int ca_http_fetch(const char *method, const char *url,
                  const ca_http_request_opts *opts, ca_http_response **out)
{
    return ca_http_request(NULL, method, url, opts, out);
}

ssize_t ca_http_response_read(ca_http_response *r, void *buf, size_t n)
{
    (void)r, (void)buf, (void)n;
    return -EINVAL;
}

int ca_http_response_status(const ca_http_response *r)
{
    (void)r;
    return -EINVAL;
}

const char *ca_http_response_header(const ca_http_response *r, const char *name)
{
    (void)r, (void)name;
    return NULL;
}

const char *ca_http_response_header_n(const ca_http_response *r,
                                      const char *name, size_t nth)
{
    (void)r, (void)name, (void)nth;
    return NULL;
}

size_t ca_http_response_header_count(const ca_http_response *r)
{
    (void)r;
    return 0;
}

const char *ca_http_response_header_at(const ca_http_response *r, size_t i,
                                       const char **value)
{
    (void)r, (void)i;
    if (value)
        *value = NULL;
    return NULL;
}

const char *ca_http_response_body(const ca_http_response *r, size_t *len)
{
    (void)r;
    if (len)
        *len = 0;
    return NULL;
}

const char *ca_http_response_url(const ca_http_response *r)
{
    (void)r;
    return NULL;
}

int ca_http_response_version(const ca_http_response *r)
{
    (void)r;
    return 0;
}

double ca_http_response_time(const ca_http_response *r, const char *what)
{
    (void)r, (void)what;
    return -1;
}

const char *ca_http_response_error(const ca_http_response *r)
{
    (void)r;
    return "";
}

void ca_http_response_free(ca_http_response *r)
{
    (void)r;
}

int ca_http_raise_for_status(const ca_http_response *r)
{
    (void)r;
    return -EINVAL;
}

#endif /* CAWAIT_HAVE_CURL */

int ca_http_get(ca_http_session *s, const char *url, ca_http_response **out)
{
    return ca_http_request(s, "GET", url, NULL, out);
}

int ca_http_post(ca_http_session *s, const char *url, const void *body,
                 size_t len, const char *content_type, ca_http_response **out)
{
    char ct[256];
    const char *hdrs[2] = {NULL, NULL};
    if (out)
        *out = NULL;
    if (!body && len)
        return -EINVAL;
    if (content_type) {
        if ((size_t)snprintf(ct, sizeof(ct), "Content-Type: %s",
                             content_type) >= sizeof(ct))
            return -EINVAL;
        hdrs[0] = ct;
    }
    ca_http_request_opts o = {
        .headers = hdrs, .body = body ? body : "", .body_len = len};
    return ca_http_request(s, "POST", url, &o, out);
}
