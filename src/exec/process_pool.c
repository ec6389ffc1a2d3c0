/*
 * The process pool: jobs run in forked worker processes, requests and
 * results travel over one socketpair per worker.  The contract is in
 * include/cawait/process_pool.h, the guide in docs/process_pool.md.
 *
 * Parent side.  A worker slot is in one of four states:
 *
 *   EMPTY ──spawn──> IDLE ──taken by a call──> BUSY ──result──> IDLE
 *                      │                         │
 *                      └──── died / killed ──────┴──> DYING ──reaped──> EMPTY
 *
 * and a reaped slot is refilled at once (a replacement) unless the pool or
 * the loop is shutting down.  Death is observed by a non-task fd waiter,
 * the slot's `watch`: on the pidfd for the worker's whole life, or, without
 * a pidfd, on the socket while the worker is idle (the calling task sees
 * end of file itself while it is busy) plus a timer that polls waitpid once
 * the worker has been killed.  Every path that ends a worker goes through
 * worker_kill (SIGKILL; harmless on a worker that already exited, which
 * stays a zombie until we reap it, so its pid cannot be reused) and ends in
 * worker_reaped, which closes the fds and refills the slot.
 *
 * The calling task does its own I/O: it takes a free worker (or waits in
 * the pool's FIFO queue; a worker that becomes free is handed straight to
 * the first waiter), writes the request, reads the response, and gives the
 * worker back.  Whoever ends a worker under a call (the reaper, shutdown)
 * detaches the call first (call->w = NULL) and wakes its task; the task
 * checks call->w after every wait and never touches a detached worker, so a
 * slot can be refilled (and its fd numbers reused) while the task sleeps.
 *
 * Worker side (child_main, after fork): set up the process (parent-death
 * signal, default signal handlers, no inherited fds but 0-2 and the socket
 * moved to 3, no inherited stdio buffers), then switch to a stack of its
 * own (a coroutine switch: the fork may have happened on a small task
 * stack) and serve requests until the socket closes.  Requests and responses
 * are a fixed header plus the bytes; the job function travels as its address,
 * valid in the worker because it is a fork of the same image.
 */
#include "task/task.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef CAWAIT_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#define VALGRIND_STACK_REGISTER(lo, hi) 0
#endif

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* ------------------------------------------------------------------------ */
/* Wire format                                                              */
/* ------------------------------------------------------------------------ */

#define PP_REQ_MAGIC 0x52504143u  /* "CAPR" */
#define PP_RESP_MAGIC 0x53504143u /* "CAPS" */

enum { PP_KIND_RESULT = 0, PP_KIND_ERROR = 1 };

/* Parent to worker: run fn on the `len` input bytes that follow. */
struct pp_req {
    uint32_t magic;
    uint32_t seq;
    uint64_t fn;
    uint64_t len;
};

/* Worker to parent: RESULT carries the job's status and `len` output bytes;
 * ERROR carries a pool error (-EMSGSIZE, -ENOMEM, -EINVAL) and no bytes. */
struct pp_resp {
    uint32_t magic;
    uint32_t seq;
    int32_t status;
    uint32_t kind;
    uint64_t len;
};

_Static_assert(sizeof(ca_process_pool_job_fn) <= sizeof(uint64_t),
               "a function pointer fits the request header");

/* Smallest accepted worker stack. */
#define PP_STACK_MIN (64u * 1024u)

/* ------------------------------------------------------------------------ */
/* Parent-side state                                                        */
/* ------------------------------------------------------------------------ */

enum { W_EMPTY = 0, W_IDLE, W_BUSY, W_DYING };

/* Internal results of the I/O helpers (never returned to users). */
enum {
    PP_LOST = 1,  /* the worker is gone (end of file, EPIPE, reaped) */
    PP_RETRY = 2, /* the job never reached a worker: try another one */
};
/* Wake results: an fd became ready; a worker was handed over.  Neither may
 * be 1 (CA__WAIT_TIMEOUT). */
#define PP_WAKE_FD 0x1000
#define PP_WAKE_HANDOFF 0x1001

struct pp_call;

struct worker {
    ca__fdwait watch; /* first member: the wake callback casts back */
    ca_process_pool *pool;
    struct pp_call *call; /* the call this worker serves, if any */
    pid_t pid;
    int sock;  /* parent's end, non-blocking, close-on-exec */
    int pidfd; /* -1: death observed through the socket and waitpid */
    uint8_t state;
    uint8_t watching; /* watch is linked in the fd table */
    uint8_t killed;   /* the pool killed it (counted as killed) */
    uint32_t seq;
    ca_handle reap_timer; /* waitpid polling (no pidfd) */
    ca_handle deferred;   /* a watch check moved to the next turn */
    int reap_delay_ms;
};

/* One ca_process_pool_run in progress; lives on the caller's stack. */
struct pp_call {
    ca__waiter qw; /* first member: in pool->queue while waiting */
    ca_task *task;
    struct worker *w; /* NULL when detached (reaped, or by shutdown) */
    int error;        /* why it was detached, when not reaped */
    int reaped;       /* the worker died under this call */
    int64_t until;    /* the job's own time limit, INT64_MAX: none */
    ca_process_pool_result *res;
};

struct ca_process_pool {
    ca_loop *loop;
    ca__exit_hook hook;
    struct worker *workers;
    unsigned nworkers;
    unsigned alive; /* slots not EMPTY: children not reaped yet */
    unsigned calls; /* tasks inside ca_process_pool_run */
    int closing;    /* no new calls, no replacements */
    int aborting;   /* grace over: queued calls fail too */
    int no_pidfd;
    size_t max_input, max_output, stack_size;
    double job_timeout;
    ca__waitlist queue;     /* calls waiting for a free worker */
    ca__waitlist shut_wait; /* ca_process_pool_shutdown waiting */
    ca_process_pool_stats stats;
};

static void watch_arm(struct worker *w);
static void worker_release(struct worker *w);

/* ------------------------------------------------------------------------ */
/* Worker process                                                           */
/* ------------------------------------------------------------------------ */

struct child_args {
    int sock;
    pid_t parent;
    size_t max_input, max_output, stack_size;
};

struct worker_ctx {
    int fd;
    size_t max_input, max_output;
};

/* Read exactly n bytes (blocking).  1: done; 0: end of file before the
 * first byte; -1: error or end of file in the middle. */
static int read_full(int fd, void *buf, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t k = read(fd, (char *)buf + off, n - off);
        if (k > 0) {
            off += (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        return k == 0 && off == 0 ? 0 : -1;
    }
    return 1;
}

/* Send a header and a body (blocking), without SIGPIPE.  0 or -1. */
static int send_all(int fd, const void *hdr, size_t hlen, const void *body,
                    size_t blen)
{
    size_t off = 0, total = hlen + blen;
    while (off < total) {
        struct iovec iov[2];
        int n = 0;
        if (off < hlen) {
            iov[n++] = (struct iovec){(char *)hdr + off, hlen - off};
            if (blen)
                iov[n++] = (struct iovec){(void *)body, blen};
        } else {
            iov[n++] = (struct iovec){(char *)body + (off - hlen), total - off};
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (k >= 0) {
            off += (size_t)k;
            continue;
        }
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Read and drop n bytes (an input we have no memory for). */
static int drain(int fd, uint64_t n)
{
    char buf[4096];
    while (n > 0) {
        size_t k = n < sizeof(buf) ? (size_t)n : sizeof(buf);
        if (read_full(fd, buf, k) != 1)
            return -1;
        n -= k;
    }
    return 0;
}

static int send_error(int fd, uint32_t seq, int err)
{
    struct pp_resp rh = {.magic = PP_RESP_MAGIC,
                         .seq = seq,
                         .status = err,
                         .kind = PP_KIND_ERROR};
    return send_all(fd, &rh, sizeof(rh), NULL, 0);
}

/* Serve one request.  0: go on; 1: the parent closed the socket; -1: the
 * stream is broken. */
static int worker_serve_one(struct worker_ctx *x)
{
    struct pp_req h;
    int r = read_full(x->fd, &h, sizeof(h));
    if (r <= 0)
        return r == 0 ? 1 : -1;
    if (h.magic != PP_REQ_MAGIC || h.len > x->max_input || !h.fn)
        return -1;
    void *in = NULL;
    if (h.len) {
        in = malloc((size_t)h.len);
        if (!in)
            return drain(x->fd, h.len) < 0 ||
                           send_error(x->fd, h.seq, -ENOMEM) < 0
                       ? -1
                       : 0;
        if (read_full(x->fd, in, (size_t)h.len) != 1) {
            free(in);
            return -1;
        }
    }
    ca_process_pool_job_fn fn;
    memcpy(&fn, &h.fn, sizeof(fn));
    void *out = NULL;
    size_t out_len = 0;
    int status = fn(in, (size_t)h.len, &out, &out_len);
    free(in);
    /* Only the streams the job may have written to: other FILEs still
     * hold the parent's unflushed data, which must not be written twice. */
    fflush(stdout);
    fflush(stderr);
    if (out_len && !out)
        r = send_error(x->fd, h.seq, -EINVAL);
    else if (out_len > x->max_output)
        r = send_error(x->fd, h.seq, -EMSGSIZE);
    else {
        struct pp_resp rh = {.magic = PP_RESP_MAGIC,
                             .seq = h.seq,
                             .status = status,
                             .kind = PP_KIND_RESULT,
                             .len = out_len};
        r = send_all(x->fd, &rh, sizeof(rh), out, out_len);
    }
    free(out);
    return r;
}

static _Noreturn void worker_serve(struct worker_ctx *x)
{
    int r;
    while ((r = worker_serve_one(x)) == 0)
        ;
    _exit(r > 0 ? 0 : 2);
}

static _Noreturn void worker_entry(void *arg)
{
    ca__coro_entered(NULL);
    worker_serve(arg);
}

/* Default handlers for every caught signal (the parent's handlers make no
 * sense here), SIGINT ignored, nothing blocked. */
static void child_signals(void)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int s = 1; s < NSIG; s++) {
        struct sigaction old;
        if (s == SIGKILL || s == SIGSTOP || sigaction(s, NULL, &old) != 0)
            continue;
        if (!(old.sa_flags & SA_SIGINFO) &&
            (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN))
            continue;
        sigaction(s, &dfl, NULL);
    }
    struct sigaction ign = dfl;
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, NULL);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
}

/* Close every fd from `first` up.  Under valgrind, descriptors at or above
 * the soft limit are left alone: valgrind keeps its own there. */
static void close_from(int first)
{
    struct rlimit rl;
    unsigned long soft = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)INT_MAX)
        soft = (unsigned long)rl.rlim_cur;
    unsigned long end = RUNNING_ON_VALGRIND ? soft : (unsigned long)INT_MAX;
    if (end <= (unsigned long)first)
        return;
    if (syscall(SYS_close_range, (unsigned)first, (unsigned)(end - 1), 0) == 0)
        return;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int dfd = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            long fd = strtol(e->d_name, NULL, 10);
            if (e->d_name[0] != '.' && fd >= first && fd != dfd &&
                (unsigned long)fd < end)
                close((int)fd);
        }
        closedir(d);
        return;
    }
    for (unsigned long fd = (unsigned long)first; fd < soft && fd < end; fd++)
        close((int)fd);
}

/* The worker process, right after fork.  Never returns. */
static _Noreturn void child_main(const struct child_args *a)
{
    /* Die with the parent; if it died before this line, go now. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != a->parent)
        _exit(1);
    /* This thread's loop pointer refers to the parent's loop, of which the
     * worker has a copy it must never run: without it, blocking calls made
     * by a job fail with -EPERM and ca_run may start a loop of its own. */
    ca__tls_loop = NULL;
    child_signals();
    /* Output the parent had buffered is the parent's to print. */
    __fpurge(stdout);
    __fpurge(stderr);
    if (a->sock != 3) {
        if (dup3(a->sock, 3, O_CLOEXEC) < 0)
            _exit(1);
        close(a->sock);
    }
    close_from(4);

    struct worker_ctx x = {
        .fd = 3, .max_input = a->max_input, .max_output = a->max_output};
    /* Jobs run on a stack of the size asked for, not on whatever stack
     * the fork happened on (a task's, or the loop thread's).  A coroutine
     * switch gets there without a second thread, whose bookkeeping would
     * be left half-owned whenever a job ends the process. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t size = (a->stack_size + page - 1) / page * page;
    char *m =
        mmap(NULL, size + page, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m != MAP_FAILED && mprotect(m, page, PROT_NONE) == 0) {
        ca__coro here, job;
        memset(&here, 0, sizeof(here));
        memset(&job, 0, sizeof(job));
        (void)VALGRIND_STACK_REGISTER(m + page, m + page + size);
        if (ca__coro_init_thread(&here) == 0 &&
            ca__coro_init(&job, m + page, size, worker_entry, &x) == 0)
            ca__coro_switch_final(&here, &job);
    }
    worker_serve(&x); /* no stack to be had: serve on this one */
}

/* ------------------------------------------------------------------------ */
/* Worker lifecycle (parent side)                                           */
/* ------------------------------------------------------------------------ */

static int pidfd_open_(pid_t pid)
{
    /* valgrind (3.19) does not know the call and says so on every try. */
    if (RUNNING_ON_VALGRIND)
        return -1;
    long fd = syscall(SYS_pidfd_open, (long)pid, 0L);
    return fd < 0 ? -1 : (int)fd;
}

static int worker_spawn(ca_process_pool *p, struct worker *w)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    int fl = fcntl(sv[0], F_GETFL);
    if (fl < 0 || fcntl(sv[0], F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = -errno;
        close(sv[0]);
        close(sv[1]);
        return e;
    }
    struct child_args a = {.sock = sv[1],
                           .parent = getpid(),
                           .max_input = p->max_input,
                           .max_output = p->max_output,
                           .stack_size = p->stack_size};
    pid_t pid = fork();
    if (pid == 0)
        child_main(&a);
    if (pid < 0) {
        int e = -errno;
        close(sv[0]);
        close(sv[1]);
        return e;
    }
    close(sv[1]);
    w->pid = pid;
    w->sock = sv[0];
    w->pidfd = p->no_pidfd ? -1 : pidfd_open_(pid);
    w->state = W_IDLE;
    w->watching = 0;
    w->killed = 0;
    w->call = NULL;
    w->seq = 0;
    w->reap_timer = w->deferred = (ca_handle){0};
    w->reap_delay_ms = 0;
    p->alive++;
    p->stats.workers_started++;
    watch_arm(w);
    return 0;
}

/* Reap w if it has exited (or wait for it when `block`).  Returns 1 if it
 * is reaped, with how it ended in *signo / *code, else 0.  A child somebody
 * else reaped (SIGCHLD ignored, a waitpid(-1) elsewhere) counts as reaped,
 * cause unknown. */
static int wait_child(struct worker *w, int block, int *signo, int *code)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    int flags = WEXITED | (block ? 0 : WNOHANG);
    int r = -1;
    errno = EINVAL;
    if (w->pidfd >= 0)
        do
            r = waitid((idtype_t)P_PIDFD, (id_t)w->pidfd, &si, flags);
        while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EINVAL) /* no pidfd, or a kernel before 5.4 */
        do
            r = waitid(P_PID, (id_t)w->pid, &si, flags);
        while (r < 0 && errno == EINTR);
    *signo = *code = 0;
    if (r < 0)
        return 1;
    if (si.si_pid == 0)
        return 0;
    if (si.si_code == CLD_EXITED)
        *code = si.si_status;
    else
        *signo = si.si_status;
    return 1;
}

static void watch_disarm(struct worker *w)
{
    if (w->watching)
        ca__fd_remove_waiter(w->pool->loop, &w->watch);
    w->watching = 0;
}

/* Wake whoever waits for the pool to change: queued calls when no worker
 * is left to serve them (they retry or fail), and a shutdown in progress. */
static void pool_kick(ca_process_pool *p)
{
    if (p->alive == 0)
        ca__waitlist_wake_all(&p->queue, 0);
    if (p->closing)
        ca__waitlist_wake_all(&p->shut_wait, 0);
}

/* w has been reaped: tell its call, close its fds, refill the slot. */
static void worker_reaped(struct worker *w, int signo, int code)
{
    ca_process_pool *p = w->pool;
    watch_disarm(w);
    /* Stale handles are harmless to cancel. */
    ca_handle_cancel(w->reap_timer);
    ca_handle_cancel(w->deferred);
    w->reap_timer = w->deferred = (ca_handle){0};
    struct pp_call *c = w->call;
    if (c) {
        w->call = NULL;
        c->w = NULL;
        c->reaped = 1;
        c->res->signo = signo;
        c->res->exit_code = code;
        ca__task_wake(c->task, -ECHILD);
    }
    if (w->killed)
        p->stats.workers_killed++;
    else
        p->stats.workers_crashed++;
    /* ca_close also wakes a task still parked on the socket (-EBADF). */
    ca_close(w->sock);
    if (w->pidfd >= 0)
        ca_close(w->pidfd);
    w->sock = w->pidfd = -1;
    w->pid = 0;
    w->state = W_EMPTY;
    p->alive--;
    if (!p->closing && !p->loop->stopping && worker_spawn(p, w) == 0) {
        p->stats.workers_replaced++;
        worker_release(w);
    }
    pool_kick(p);
}

static int worker_try_reap(struct worker *w)
{
    int signo, code;
    if (!wait_child(w, 0, &signo, &code))
        return 0;
    worker_reaped(w, signo, code);
    return 1;
}

static void reap_poll(struct worker *w);

static void reap_timer_cb(void *arg)
{
    struct worker *w = arg;
    w->reap_timer = (ca_handle){0};
    if (w->state == W_DYING)
        reap_poll(w);
}

/* Without a pidfd, nothing signals the death of a killed worker: poll
 * waitpid, 1 ms after the kill, backing off to every 50 ms. */
static void reap_poll(struct worker *w)
{
    if (worker_try_reap(w))
        return;
    w->reap_delay_ms = w->reap_delay_ms ? w->reap_delay_ms * 2 : 1;
    if (w->reap_delay_ms > 50)
        w->reap_delay_ms = 50;
    /* Out of memory here leaves the worker to ca_run's exit hook. */
    ca_call_later(w->reap_delay_ms / 1000.0, reap_timer_cb, w, &w->reap_timer);
}

/* End w: SIGKILL, then reap it when it is gone.  by_pool: the pool decided
 * (timeout, cancel, shutdown, broken protocol), else it died on its own. */
static void worker_kill(struct worker *w, int by_pool)
{
    if (w->state == W_EMPTY || w->state == W_DYING)
        return;
    if (w->pidfd < 0)
        watch_disarm(w);
    w->killed = (uint8_t)by_pool;
    w->state = W_DYING;
    /* Through the pidfd when there is one: no pid can be mistaken (ESRCH:
     * it has exited already). */
    if (w->pidfd < 0 ||
        (syscall(SYS_pidfd_send_signal, w->pidfd, SIGKILL, NULL, 0) < 0 &&
         errno == ENOSYS))
        kill(w->pid, SIGKILL);
    if (w->pidfd < 0)
        reap_poll(w);
}

/* The watch saw the pidfd (or an idle socket) become readable. */
static void watch_check(struct worker *w)
{
    if (w->pidfd >= 0) {
        if (w->state != W_EMPTY && !worker_try_reap(w))
            watch_arm(w); /* spurious: not dead yet */
        return;
    }
    if (w->state != W_IDLE)
        return;
    /* An idle worker never writes: readable means end of file, or a worker
     * that broke the protocol.  EAGAIN is readiness left over from the
     * last response. */
    char b;
    ssize_t n = recv(w->sock, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        watch_arm(w);
        return;
    }
    worker_kill(w, n > 0);
}

static void watch_wake(ca__fdwait *fw, int result)
{
    struct worker *w = (struct worker *)fw;
    w->watching = 0;
    if (result > 0)
        watch_check(w);
}

static void watch_deferred(void *arg)
{
    struct worker *w = arg;
    w->deferred = (ca_handle){0};
    watch_check(w);
}

/* Watch w's pidfd (always) or its socket (idle workers without a pidfd).
 * Readiness already seen is handled from the next turn, never inside the
 * caller. */
static void watch_arm(struct worker *w)
{
    ca_loop *l = w->pool->loop;
    if (w->watching || w->deferred.p)
        return;
    int fd = w->pidfd >= 0 ? w->pidfd : w->sock;
    if (w->pidfd < 0 && w->state != W_IDLE)
        return;
    if (ca__fd_register(l, fd) < 0) {
        if (w->pidfd < 0)
            return; /* the calling task still sees end of file */
        ca_close(w->pidfd);
        w->pidfd = -1;
        watch_arm(w);
        return;
    }
    if (ca__fd_take_ready(l, fd, CA_READ)) {
        ca_call_soon(watch_deferred, w, &w->deferred);
        return;
    }
    w->watch = (ca__fdwait){.fd = fd, .events = CA_READ, .wake = watch_wake};
    w->watching = 1;
    ca__fd_add_waiter(l, &w->watch);
}

/* ------------------------------------------------------------------------ */
/* Handing workers to calls                                                 */
/* ------------------------------------------------------------------------ */

static void worker_take(struct worker *w, struct pp_call *c)
{
    if (w->pidfd < 0)
        watch_disarm(w);
    w->state = W_BUSY;
    w->call = c;
    c->w = w;
}

/* w is free: hand it to the first queued call, else make it idle. */
static void worker_release(struct worker *w)
{
    ca_process_pool *p = w->pool;
    w->call = NULL;
    ca__waiter *q = ca__waitlist_pop(&p->queue);
    if (q) {
        struct pp_call *c = (struct pp_call *)q;
        worker_take(w, c);
        ca__task_wake(c->task, PP_WAKE_HANDOFF);
        return;
    }
    w->state = W_IDLE;
    watch_arm(w);
}

static struct worker *find_state(ca_process_pool *p, int state)
{
    for (unsigned i = 0; i < p->nworkers; i++)
        if (p->workers[i].state == state)
            return &p->workers[i];
    return NULL;
}

/* Get a worker for c: an idle one, a new one in an empty slot, or the
 * first one freed while c waits in the queue. */
static int acquire(ca_process_pool *p, struct pp_call *c)
{
    for (;;) {
        struct worker *w = find_state(p, W_IDLE);
        if (w) {
            worker_take(w, c);
            return 0;
        }
        if (p->aborting || (p->closing && p->alive == 0))
            return -ESHUTDOWN;
        w = p->closing ? NULL : find_state(p, W_EMPTY);
        if (w) {
            int r = worker_spawn(p, w);
            if (r == 0) {
                p->stats.workers_replaced++;
                worker_take(w, c);
                return 0;
            }
            if (p->alive == 0)
                return r;
        }
        int r = ca__wait_in(&p->queue, &c->qw);
        if (c->w) {
            if (r >= 0)
                return 0;
            /* Cancelled in the turn it was handed a worker: pass it on. */
            struct worker *got = c->w;
            c->w = NULL;
            worker_release(got);
            return r;
        }
        if (r < 0)
            return r;
        /* Woken without a worker: the pool changed, look again. */
    }
}

/* ------------------------------------------------------------------------ */
/* The calling task's I/O                                                   */
/* ------------------------------------------------------------------------ */

struct pp_fdwait {
    ca__fdwait w;
    ca_task *task;
};

static void pp_fd_wake(ca__fdwait *fw, int result)
{
    struct pp_fdwait *f = (struct pp_fdwait *)fw;
    ca__task_wake(f->task, result > 0 ? PP_WAKE_FD : result);
}

/* Wait until c's worker socket is ready for `events`.  0: try again;
 * PP_LOST: the worker died; < 0: stop (timeout, cancel, shutdown). */
static int job_wait(struct pp_call *c, int events)
{
    ca_loop *l = ca__loop();
    int fd = c->w->sock;
    int r = ca__fd_register(l, fd);
    if (r < 0)
        return r;
    if (ca__fd_take_ready(l, fd, events))
        return 0;
    struct pp_fdwait f = {.w = {.fd = fd, .events = events, .wake = pp_fd_wake},
                          .task = c->task};
    ca__fd_add_waiter(l, &f.w);
    r = ca__task_park(c->task, c->until);
    /* Harmless if the event, or ca_close of the socket, unlinked it. */
    ca__fd_remove_waiter(l, &f.w);
    if (!c->w)
        return c->reaped ? PP_LOST : c->error;
    if (r == CA__WAIT_TIMEOUT)
        return -ETIMEDOUT;
    return r < 0 ? r : 0;
}

static int send_request(struct pp_call *c, const struct pp_req *h,
                        const void *in, size_t len)
{
    size_t off = 0, hlen = sizeof(*h), total = hlen + len;
    while (off < total) {
        struct iovec iov[2];
        int n = 0;
        if (off < hlen) {
            iov[n++] = (struct iovec){(char *)h + off, hlen - off};
            if (len)
                iov[n++] = (struct iovec){(void *)in, len};
        } else {
            iov[n++] = (struct iovec){(char *)in + (off - hlen), total - off};
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(c->w->sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k >= 0) {
            off += (size_t)k;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EPIPE || errno == ECONNRESET)
            return PP_LOST;
        if (errno != EAGAIN)
            return -errno;
        int r = job_wait(c, CA_WRITE);
        if (r != 0)
            return r;
    }
    return 0;
}

static int recv_full(struct pp_call *c, void *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t k =
            recv(c->w->sock, (char *)buf + off, len - off, MSG_DONTWAIT);
        if (k > 0) {
            off += (size_t)k;
            continue;
        }
        if (k == 0 || errno == ECONNRESET)
            return PP_LOST;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int r = job_wait(c, CA_READ);
        if (r != 0)
            return r;
    }
    return 0;
}

/* The job cannot go on with its worker (timeout, cancel, a broken stream):
 * detach and kill it.  Returns err. */
static int call_abort(struct pp_call *c, int err)
{
    struct worker *w = c->w;
    if (w) {
        w->call = NULL;
        c->w = NULL;
        worker_kill(w, 1);
    }
    return err;
}

/* c's worker is gone or going (end of file): make sure it is dead and wait
 * until the pool has reaped it, so the caller learns how it ended.  A
 * cancel or deadline stops the wait, not the reaping. */
static void await_reap(struct pp_call *c)
{
    if (c->w)
        worker_kill(c->w, 0);
    while (c->w) {
        int r = ca__task_park(c->task, INT64_MAX);
        if (c->w && r < 0) {
            c->w->call = NULL;
            c->w = NULL;
        }
    }
}

/* One attempt at running the job on c's worker. */
static int run_job(ca_process_pool *p, struct pp_call *c,
                   ca_process_pool_job_fn fn, const void *in, size_t in_len)
{
    struct worker *w = c->w;
    struct pp_req h = {.magic = PP_REQ_MAGIC, .seq = ++w->seq, .len = in_len};
    memcpy(&h.fn, &fn, sizeof(fn));
    int r = send_request(c, &h, in, in_len);
    if (r == PP_LOST) {
        /* The job did not reach the worker: it cannot have killed it. */
        await_reap(c);
        return PP_RETRY;
    }
    if (r < 0)
        return call_abort(c, r);

    struct pp_resp rh;
    r = recv_full(c, &rh, sizeof(rh));
    if (r == 0 &&
        (rh.magic != PP_RESP_MAGIC || rh.seq != h.seq ||
         rh.kind > PP_KIND_ERROR ||
         (rh.kind == PP_KIND_ERROR && (rh.status >= 0 || rh.len != 0)) ||
         rh.len > p->max_output))
        r = -EPROTO;
    void *buf = NULL;
    if (r == 0 && rh.len && !(buf = malloc((size_t)rh.len)))
        r = -ENOMEM;
    if (r == 0)
        r = recv_full(c, buf, (size_t)rh.len);
    if (r != 0) {
        free(buf);
        if (r == PP_LOST) {
            await_reap(c);
            return -ECHILD;
        }
        return call_abort(c, r);
    }
    w = c->w;
    c->w = NULL;
    worker_release(w);
    if (rh.kind == PP_KIND_ERROR)
        return rh.status;
    c->res->status = rh.status;
    c->res->data = buf;
    c->res->len = (size_t)rh.len;
    p->stats.jobs_done++;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

static int64_t until_from(double timeout)
{
    if (timeout <= 0 || timeout > 9.0e9)
        return INT64_MAX;
    return ca__clock_ns() + (int64_t)(timeout * 1e9);
}

int ca_process_pool_run(ca_process_pool *p, ca_process_pool_job_fn fn,
                        const void *in, size_t in_len,
                        ca_process_pool_result *res,
                        const ca_process_pool_job_opts *opts)
{
    if (res)
        memset(res, 0, sizeof(*res));
    if (!p || !fn || !res || (!in && in_len))
        return -EINVAL;
    double timeout = opts ? opts->timeout : 0;
    if (isnan(timeout) || timeout < 0)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_process_pool_run");
    if (!self)
        return -EPERM;
    if (p->loop != ca__loop())
        return -EINVAL;
    if (p->closing)
        return -ESHUTDOWN;
    if (in_len > p->max_input)
        return -EMSGSIZE;
    if (timeout == 0)
        timeout = p->job_timeout;
    int r = ca__task_check(self);
    if (r < 0)
        return r;

    struct pp_call c;
    memset(&c, 0, sizeof(c));
    c.task = self;
    c.res = res;
    p->calls++;
    for (int attempt = 1;; attempt++) {
        r = acquire(p, &c);
        if (r == 0 && (r = ca__task_check(self)) < 0) {
            struct worker *w = c.w;
            c.w = NULL;
            worker_release(w);
        }
        if (r < 0)
            break;
        c.until = until_from(timeout);
        r = run_job(p, &c, fn, in, in_len);
        if (r != PP_RETRY)
            break;
        if (attempt == 3) {
            r = -ECHILD;
            break;
        }
        c.reaped = 0;
        res->signo = res->exit_code = 0;
    }
    if (r < 0)
        p->stats.jobs_failed++;
    p->calls--;
    pool_kick(p);
    return r;
}

void ca_process_pool_result_free(ca_process_pool_result *res)
{
    if (!res)
        return;
    free(res->data);
    memset(res, 0, sizeof(*res));
}

/* Kill every worker and reap it, blocking the thread (the workers are
 * SIGKILLed, so this is quick), then free p.  For ca_run's exit hook and
 * for a pool whose creation failed: no task is inside the pool. */
static void pool_destroy_now(ca_process_pool *p)
{
    p->closing = p->aborting = 1;
    for (unsigned i = 0; i < p->nworkers; i++)
        worker_kill(&p->workers[i], 1);
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        int signo, code;
        if (w->state != W_EMPTY && wait_child(w, 1, &signo, &code))
            worker_reaped(w, signo, code);
    }
    free(p->workers);
    free(p);
}

static void pool_exit_hook(ca_loop *l, ca__exit_hook *h)
{
    (void)l;
    pool_destroy_now(
        (ca_process_pool *)((char *)h - offsetof(ca_process_pool, hook)));
}

int ca_process_pool_new(ca_process_pool **out, const ca_process_pool_opts *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    ca_process_pool_opts o;
    if (opts)
        o = *opts;
    else
        memset(&o, 0, sizeof(o));
    if (o.workers > CA_PROCESS_POOL_MAX_WORKERS ||
        o.max_input > CA_PROCESS_POOL_MSG_MAX ||
        o.max_output > CA_PROCESS_POOL_MSG_MAX ||
        (o.worker_stack_size && o.worker_stack_size < PP_STACK_MIN) ||
        o.worker_stack_size > CA_PROCESS_POOL_MSG_MAX || isnan(o.job_timeout) ||
        o.job_timeout < 0)
        return -EINVAL;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    if (!o.workers) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.workers = n < 1 ? 1u
                    : n > (long)CA_PROCESS_POOL_MAX_WORKERS
                        ? CA_PROCESS_POOL_MAX_WORKERS
                        : (unsigned)n;
    }
    ca_process_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->workers = calloc(o.workers, sizeof(*p->workers));
    if (!p->workers) {
        free(p);
        return -ENOMEM;
    }
    p->loop = l;
    p->nworkers = o.workers;
    p->no_pidfd = o.no_pidfd != 0;
    p->max_input = o.max_input ? o.max_input : CA_PROCESS_POOL_MSG_DEFAULT;
    p->max_output = o.max_output ? o.max_output : CA_PROCESS_POOL_MSG_DEFAULT;
    p->stack_size = o.worker_stack_size ? o.worker_stack_size
                                        : CA_PROCESS_POOL_STACK_DEFAULT;
    p->job_timeout = o.job_timeout;
    for (unsigned i = 0; i < p->nworkers; i++) {
        p->workers[i].pool = p;
        p->workers[i].sock = p->workers[i].pidfd = -1;
    }
    for (unsigned i = 0; i < p->nworkers; i++) {
        int r = worker_spawn(p, &p->workers[i]);
        if (r < 0) {
            pool_destroy_now(p);
            return r;
        }
    }
    p->hook.fn = pool_exit_hook;
    ca__loop_at_exit(l, &p->hook);
    *out = p;
    return 0;
}

/* Grace is over: queued calls fail, running jobs fail and every worker is
 * killed. */
static void pool_abort(ca_process_pool *p)
{
    p->aborting = 1;
    ca__waitlist_wake_all(&p->queue, -ESHUTDOWN);
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        struct pp_call *c = w->state == W_BUSY ? w->call : NULL;
        if (c) {
            w->call = NULL;
            c->w = NULL;
            c->error = -ESHUTDOWN;
            ca__task_wake(c->task, -ESHUTDOWN);
        }
        worker_kill(w, 1);
    }
}

int ca_process_pool_shutdown(ca_process_pool *p, double grace)
{
    if (!p || isnan(grace) || grace < 0)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_process_pool_shutdown");
    if (!self)
        return -EPERM;
    if (p->loop != ca__loop() || p->closing)
        return -EINVAL;
    p->closing = 1;
    int ret = 0;
    if (grace > 0 && p->calls > 0) {
        /* Without a scope for a finite grace (no memory), no grace. */
        int scoped = !isinf(grace) && ca_deadline_push(grace) == 0;
        while ((scoped || isinf(grace)) && p->calls > 0) {
            ca__waiter w;
            int r = ca__wait_in(&p->shut_wait, &w);
            if (r < 0) {
                ret = r;
                break;
            }
        }
        /* Our own scope expiring is the normal end of the grace period. */
        if (scoped && ca_deadline_pop() == -ETIMEDOUT && ret == -ETIMEDOUT)
            ret = 0;
    }
    pool_abort(p);
    /* Killed workers die at once; their calls were woken.  Nothing may
     * interrupt this wait, or children would be left unreaped. */
    ca_shield_push();
    while (p->calls > 0 || p->alive > 0) {
        ca__waiter w;
        ca__wait_in(&p->shut_wait, &w);
    }
    ca_shield_pop();
    ca__loop_exit_hook_remove(p->loop, &p->hook);
    free(p->workers);
    free(p);
    return ret;
}

int ca_process_pool_stats_get(const ca_process_pool *p,
                              ca_process_pool_stats *out)
{
    if (!p || !out)
        return -EINVAL;
    *out = p->stats;
    out->workers = out->busy = out->queued = 0;
    for (unsigned i = 0; i < p->nworkers; i++) {
        int s = p->workers[i].state;
        out->workers += s == W_IDLE || s == W_BUSY;
        out->busy += s == W_BUSY;
    }
    for (const ca__waiter *w = p->queue.head; w; w = w->next)
        out->queued++;
    return 0;
}
