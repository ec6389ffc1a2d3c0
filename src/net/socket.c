/*
 * Sockets: TCP and Unix stream sockets, accept, and the fd read/write loops.
 * Every call is optimistic: try the syscall, park on EAGAIN with
 * ca_wait_fd (which registers the fd with the backend once).
 */
#include "net/io.h"
#include "task/task.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Numeric addresses and "localhost" only (no blocking resolver inside the
 * loop): fills up to `max` addresses, returns how many or a negative errno. */
static int resolve(const char *host, unsigned port, int passive,
                   struct sockaddr_storage *out, socklen_t *lens, int max)
{
    char svc[16];
    if (port > 65535)
        return -EINVAL;
    snprintf(svc, sizeof(svc), "%u", port);
    if (!host || !*host) {
        if (!passive)
            return -EINVAL;
        struct sockaddr_in *a = (struct sockaddr_in *)&out[0];
        memset(a, 0, sizeof(*a));
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        lens[0] = sizeof(*a);
        return 1;
    }
    const char *names[2] = {host, NULL};
    if (strcmp(host, "localhost") == 0) {
        names[0] = "::1";
        names[1] = "127.0.0.1";
    }
    int n = 0;
    for (int i = 0; i < 2 && names[i] && n < max; i++) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
        struct addrinfo *res = NULL;
        int r = getaddrinfo(names[i], svc, &hints, &res);
        if (r == EAI_NONAME)
            return -CA_ENORESOLVER;
        if (r != 0)
            return -EINVAL;
        for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
            memcpy(&out[n], ai->ai_addr, ai->ai_addrlen);
            lens[n++] = ai->ai_addrlen;
        }
        freeaddrinfo(res);
    }
    return n ? n : -CA_ENORESOLVER;
}

/* Connect fd to addr, waiting for the handshake.  0 or a negative errno. */
static int connect_fd(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (connect(fd, addr, len) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EINTR)
        return -errno;
    int r = ca_wait_fd(fd, CA_WRITE);
    if (r < 0)
        return r;
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        return -errno;
    return -err;
}

/*
 * Happy Eyeballs (RFC 8305): connection attempts to the addresses in order
 * (families interleaved, IPv6 first), each started 250 ms after the
 * previous one or as soon as it fails; the first to connect wins and the
 * others are cancelled.
 *
 * Up to HE_MAX addresses are tried, like getaddrinfo(3) users and asyncio
 * that try them all: a name with 50 addresses whose first 8 are down is
 * still reached.  The bound keeps a huge answer (a TCP answer can hold
 * thousands) from starting as many tasks.
 */
#define HE_DELAY 0.25
#define HE_MAX 64

struct attempt {
    struct race *race;
    int i;
};

struct race {
    struct sockaddr_storage *addrs; /* n of them, then n of scratch */
    socklen_t *lens;                /* likewise */
    struct attempt *att;
    ca_task **tasks;
    int n;
    int winner;  /* fd of the first connection, or -1 */
    int failed;  /* attempts that failed */
    int err;     /* the last failure */
    ca_event changed;
};

static int race_init(struct race *rc, int n)
{
    memset(rc, 0, sizeof(*rc));
    rc->addrs = calloc(2 * (size_t)n, sizeof(*rc->addrs));
    rc->lens = calloc(2 * (size_t)n, sizeof(*rc->lens));
    rc->att = calloc((size_t)n, sizeof(*rc->att));
    rc->tasks = calloc((size_t)n, sizeof(*rc->tasks));
    rc->n = n;
    return rc->addrs && rc->lens && rc->att && rc->tasks ? 0 : -ENOMEM;
}

static void race_free(struct race *rc)
{
    free(rc->addrs);
    free(rc->lens);
    free(rc->att);
    free(rc->tasks);
}

static int attempt_main(void *arg)
{
    struct attempt *a = arg;
    struct race *rc = a->race;
    int fd = socket(rc->addrs[a->i].ss_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int r = fd < 0 ? -errno : 0;
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        r = connect_fd(fd, (struct sockaddr *)&rc->addrs[a->i], rc->lens[a->i]);
    }
    if (r == 0 && rc->winner < 0) {
        rc->winner = fd;
    } else {
        if (fd >= 0)
            ca_close(fd); /* failed, or lost the race */
        if (r < 0) {
            rc->failed++;
            rc->err = r;
        }
    }
    ca_event_set(&rc->changed);
    return 0;
}

/* Take the first unused address of family fam (any family if fam is 0)
 * into the scratch half at k: 1, or 0 if there is none. */
static int take_family(struct race *rc, char *used, int fam, int k)
{
    for (int i = 0; i < rc->n; i++)
        if (!used[i] && (!fam || rc->addrs[i].ss_family == fam)) {
            rc->addrs[rc->n + k] = rc->addrs[i];
            rc->lens[rc->n + k] = rc->lens[i];
            used[i] = 1;
            return 1;
        }
    return 0;
}

static int order_families(struct race *rc)
{
    /* Interleave: first address of the first family, then of the other. */
    char *used = calloc((size_t)rc->n, 1);
    if (!used)
        return -ENOMEM;
    int fam = rc->addrs[0].ss_family;
    for (int k = 0; k < rc->n; k++) {
        if (!take_family(rc, used, fam, k))
            take_family(rc, used, 0, k);
        fam = fam == AF_INET6 ? AF_INET : AF_INET6;
    }
    free(used);
    memmove(rc->addrs, rc->addrs + rc->n, sizeof(rc->addrs[0]) * (size_t)rc->n);
    memmove(rc->lens, rc->lens + rc->n, sizeof(rc->lens[0]) * (size_t)rc->n);
    return 0;
}

static int race_connect(struct race *rc)
{
    if (order_families(rc) < 0)
        return -ENOMEM;
    rc->winner = -1;
    rc->err = -ECONNREFUSED;
    struct attempt *att = rc->att;
    ca_task **tasks = rc->tasks;
    int started = 0, r = 0;
    while (rc->winner < 0 && rc->failed < rc->n) {
        if (started < rc->n) {
            att[started] = (struct attempt){rc, started};
            if (ca_spawn_ex(&tasks[started], attempt_main, &att[started],
                            NULL) < 0) {
                r = -ENOMEM;
                break;
            }
            started++;
        }
        /* Wait for a result, or for the stagger delay to start the next. */
        int before = rc->failed;
        while (rc->winner < 0 && rc->failed == before &&
               rc->failed < rc->n) {
            ca_event_clear(&rc->changed);
            if (started < rc->n) {
                ca_deadline_push(HE_DELAY);
                r = ca_event_wait(&rc->changed);
                int fired = ca_deadline_pop();
                if (r == -ETIMEDOUT && fired == -ETIMEDOUT) {
                    r = 0; /* our stagger, not the caller's deadline */
                    break;
                }
            } else {
                r = ca_event_wait(&rc->changed);
            }
            if (r < 0)
                goto out;
        }
    }
out:
    /* Cancel the attempts still running and wait for them. */
    ca_shield_push();
    for (int i = 0; i < started; i++) {
        ca_cancel(tasks[i]);
        ca_join(tasks[i]);
        ca_task_release(tasks[i]);
    }
    ca_shield_pop();
    if (rc->winner >= 0) {
        if (r < 0) {
            ca_close(rc->winner); /* the caller gave up meanwhile */
            return r;
        }
        return rc->winner;
    }
    return r < 0 ? r : rc->err;
}

/* One address: no race needed. */
static int connect_one(const struct sockaddr_storage *addr, socklen_t len)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int r = connect_fd(fd, (const struct sockaddr *)addr, len);
    if (r < 0) {
        ca_close(fd);
        return r;
    }
    return fd;
}

int ca_tcp_connect(const char *host, unsigned port)
{
    if (!host || !*host || port == 0 || port > 65535)
        return -EINVAL;
    if (!ca__task_self("ca_tcp_connect"))
        return -EPERM;
    struct sockaddr_storage lit[2];
    socklen_t litlen[2];
    ca_addrinfo *res = NULL;
    int n = resolve(host, port, 0, lit, litlen, 2);
    if (n == -CA_ENORESOLVER) {
        /* A name: ask the resolver. */
        int r = ca_getaddrinfo(host, port, AF_UNSPEC, SOCK_STREAM, &res);
        if (r < 0)
            return r;
        n = 0;
        for (ca_addrinfo *ai = res; ai && n < HE_MAX; ai = ai->next)
            n++;
    }
    if (n <= 0) {
        ca_freeaddrinfo(res);
        return n < 0 ? n : -CA_ENOTFOUND;
    }
    if (n == 1 && !res)
        return connect_one(&lit[0], litlen[0]);
    if (n == 1) {
        int fd = connect_one(&res->addr, res->addrlen);
        ca_freeaddrinfo(res);
        return fd;
    }
    struct race rc;
    int r = race_init(&rc, n);
    const ca_addrinfo *ai = res;
    for (int i = 0; r == 0 && i < n; i++) {
        rc.addrs[i] = ai ? ai->addr : lit[i];
        rc.lens[i] = ai ? ai->addrlen : litlen[i];
        ai = ai ? ai->next : NULL;
    }
    ca_freeaddrinfo(res);
    if (r == 0)
        r = race_connect(&rc);
    race_free(&rc);
    return r;
}

static int listen_fd(int fd, const ca_listen_opts *opts)
{
    int backlog = opts && opts->backlog > 0 ? opts->backlog : SOMAXCONN;
    return listen(fd, backlog) == 0 ? 0 : -errno;
}

int ca_tcp_listen(const char *host, unsigned port, const ca_listen_opts *opts)
{
    struct sockaddr_storage addrs[2];
    socklen_t lens[2];
    int n = resolve(host, port, 1, addrs, lens, 2);
    if (n < 0)
        return n;
    /* "localhost" resolves to ::1 first; listening prefers IPv4 so that
     * clients using 127.0.0.1 reach it. */
    int pick = 0;
    for (int i = 0; i < n; i++)
        if (addrs[i].ss_family == AF_INET) {
            pick = i;
            break;
        }
    int fd = socket(addrs[pick].ss_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (opts && opts->reuse_port &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (addrs[pick].ss_family == AF_INET6 && opts && opts->v6_only)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&addrs[pick], lens[pick]) < 0)
        goto fail;
    int r = listen_fd(fd, opts);
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
fail:
    r = -errno;
    close(fd);
    return r;
}

static int unix_addr(const char *path, struct sockaddr_un *a, socklen_t *len)
{
    size_t n = path ? strlen(path) : 0;
    if (n == 0 || n >= sizeof(a->sun_path))
        return -EINVAL;
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, n);
    if (path[0] == '@')
        a->sun_path[0] = '\0'; /* abstract name */
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                       (path[0] == '@' ? 0 : 1));
    return 0;
}

int ca_unix_listen(const char *path, const ca_listen_opts *opts)
{
    struct sockaddr_un a;
    socklen_t len;
    int r = unix_addr(path, &a, &len);
    if (r < 0)
        return r;
    /* A stale socket file from an earlier run is replaced; anything else at
     * that path is left alone (bind then fails with EADDRINUSE). */
    struct stat st;
    if (path[0] != '@' && stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&a, len) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    r = listen_fd(fd, opts);
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
}

int ca_unix_connect(const char *path)
{
    struct sockaddr_un a;
    socklen_t len;
    int r = unix_addr(path, &a, &len);
    if (r < 0)
        return r;
    if (!ca__task_self("ca_unix_connect"))
        return -EPERM;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    r = connect_fd(fd, (struct sockaddr *)&a, len);
    if (r < 0) {
        ca_close(fd);
        return r;
    }
    return fd;
}

int ca_accept(int lfd, struct sockaddr *peer, socklen_t *len)
{
    if (lfd < 0)
        return -EBADF;
    if ((peer == NULL) != (len == NULL))
        return -EINVAL;
    if (!ca__task_self("ca_accept"))
        return -EPERM;
    for (;;) {
        int fd = accept4(lfd, peer, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            /* Like asyncio, uvloop and Go: no Nagle delay on accepted TCP
             * connections (a Unix socket just refuses the option). */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            return fd;
        }
        switch (errno) {
        case EAGAIN:
            break;
        case EINTR:
        case ECONNABORTED: /* the peer gave up before we accepted */
            continue;
        default:
            return -errno;
        }
        int r = ca_wait_fd(lfd, CA_READ);
        if (r < 0)
            return r;
    }
}

int ca_sock_port(int fd)
{
    struct sockaddr_storage a;
    socklen_t len = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return -errno;
    if (a.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&a)->sin_port);
    if (a.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
    return -EAFNOSUPPORT;
}

ssize_t ca_read(int fd, void *buf, size_t n)
{
    if (!buf && n)
        return -EINVAL;
    for (;;) {
        ssize_t r = read(fd, buf, n);
        if (r >= 0)
            return r;
        int a = ca__io_again(fd, CA_READ);
        if (a < 0)
            return a;
    }
}

ssize_t ca_write(int fd, const void *buf, size_t n)
{
    if (!buf && n)
        return -EINVAL;
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = send(fd, p + done, n - done, MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK)
            r = write(fd, p + done, n - done);
        if (r >= 0) {
            done += (size_t)r;
            continue;
        }
        int a = ca__io_again(fd, CA_WRITE);
        if (a < 0)
            return a;
    }
    return (ssize_t)n;
}
