/*
 * Signals received by tasks: waits, receivers and handlers over one
 * signalfd per loop.
 *
 * A signal is *captured* while at least one wait, receiver or handler wants
 * it (a count per signal).  The first capture blocks it in the loop's thread
 * (remembering whether it was blocked already), adds it to the signalfd's
 * mask, and takes it over from ca_run's SIGINT/SIGTERM watch if that has
 * it.  The last release removes it from the mask, discards instances that
 * arrived meanwhile and nobody read (sigtimedwait with a zero timeout:
 * unblocking them would run the default action, usually death), unblocks it
 * only if we blocked it, and gives it back to ca_run.
 *
 * The signalfd is read by a non-task fd waiter in the loop's context.  Each
 * signal read goes to every receiver whose set holds it (queued, waiters
 * woken) and every handler of it: a callback handler through call_soon
 * (several arrivals before it runs merge, like pending signals), a task
 * handler by spawning a task.  No user code runs while the lists are
 * walked, so a handler may add or remove handlers freely.
 *
 * Per-loop state is found through its exit hook (internal.h): nothing is
 * global, and ca_run tears everything down, restoring the thread's mask.
 */
#include "io/internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define NSIG_MAX 65 /* signals 1..64 */

struct ca_signal_receiver {
    struct sig_state *st;
    ca_signal_receiver *next, *prev;
    sigset_t set;
    int on_heap;
    /* At most one entry per signal number: a ring of 64 never overflows. */
    ca_siginfo queue[NSIG_MAX - 1];
    unsigned head, count;
    uint64_t queued; /* bit signo - 1: that signal is in the queue */
    ca__waitlist waiters;
    /* Tasks inside ca_signal_receive, woken or not: a closed receiver is
     * freed by the last of them to leave, not under their feet. */
    unsigned inside;
    int closed;
};

struct ca_signal_handler {
    struct sig_state *st;
    ca_signal_handler *next, *prev;
    int signo;
    int flags;
    ca_signal_fn fn;
    void *arg;
    ca_handle call; /* the pending callback, if queued */
    int queued;
    ca_siginfo info; /* the latest arrival, for the pending callback */
};

struct sig_state {
    ca__exit_hook hook; /* first: the hook is the state */
    ca_loop *loop;
    ca__fdwait waiter;
    int fd; /* signalfd, -1 until the first capture */
    sigset_t mask;
    sigset_t blocked_by_us;
    uint32_t refs[NSIG_MAX];
    ca_signal_receiver *receivers;
    ca_signal_handler *handlers, *handlers_tail;
};

/* A task handler's job: what the task needs, independent of the handler
 * (which may be removed while the task runs). */
struct sig_job {
    ca_signal_fn fn;
    void *arg;
    ca_siginfo info;
};

static void state_exit(ca_loop *l, ca__exit_hook *h);

static struct sig_state *state_get(ca_loop *l, int create)
{
    struct sig_state *st = (struct sig_state *)ca__loop_find_hook(l, state_exit);
    if (st || !create || !l)
        return st;
    st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->loop = l;
    st->fd = -1;
    sigemptyset(&st->mask);
    sigemptyset(&st->blocked_by_us);
    st->hook.fn = state_exit;
    ca__loop_at_exit(l, &st->hook);
    return st;
}

static int signal_ok(int signo)
{
    if (signo <= 0 || signo >= NSIG_MAX)
        return 0;
    switch (signo) {
    case SIGKILL:
    case SIGSTOP:
    case SIGSEGV:
    case SIGBUS:
    case SIGILL:
    case SIGFPE:
        return 0;
    default:
        break;
    }
    /* 32 and 33 are glibc's own (thread cancellation, setxid). */
    return signo < 32 || signo >= SIGRTMIN;
}

static int set_ok(const sigset_t *set)
{
    int any = 0;
    for (int s = 1; s < NSIG_MAX; s++) {
        if (sigismember(set, s) != 1)
            continue;
        if (!signal_ok(s))
            return 0;
        any = 1;
    }
    return any;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static void info_from(ca_siginfo *info, const struct signalfd_siginfo *si)
{
    info->signo = (int)si->ssi_signo;
    info->code = si->ssi_code;
    info->pid = (pid_t)si->ssi_pid;
    info->uid = (uid_t)si->ssi_uid;
    info->status = si->ssi_signo == SIGCHLD ? si->ssi_status : si->ssi_int;
}

static void receiver_push(ca_signal_receiver *r, const ca_siginfo *info)
{
    uint64_t bit = 1ull << (info->signo - 1);
    if (!(r->queued & bit)) {
        r->queue[(r->head + r->count) % (NSIG_MAX - 1)] = *info;
        r->count++;
        r->queued |= bit;
    }
    /* Wake them all: each takes an entry or waits again, so a waiter
     * cancelled before it runs cannot strand the others. */
    ca__waitlist_wake_all(&r->waiters, 0);
}

static int receiver_pop(ca_signal_receiver *r, ca_siginfo *info)
{
    ca_siginfo e = r->queue[r->head];
    r->head = (r->head + 1) % (NSIG_MAX - 1);
    r->count--;
    r->queued &= ~(1ull << (e.signo - 1));
    if (info)
        *info = e;
    return e.signo;
}

static void handler_call(void *arg)
{
    ca_signal_handler *h = arg;
    h->queued = 0;
    ca_siginfo info = h->info;
    h->fn(&info, h->arg); /* may remove h: not touched afterwards */
}

static int handler_task(void *arg)
{
    struct sig_job job = *(struct sig_job *)arg;
    free(arg);
    return job.fn(&job.info, job.arg);
}

static void handler_fire(ca_signal_handler *h, const ca_siginfo *info)
{
    if (!(h->flags & CA_SIGNAL_TASK)) {
        h->info = *info;
        if (!h->queued && ca_call_soon(handler_call, h, &h->call) == 0)
            h->queued = 1;
        return;
    }
    struct sig_job *job = malloc(sizeof(*job));
    ca_task *t = NULL;
    if (job) {
        *job = (struct sig_job){.fn = h->fn, .arg = h->arg, .info = *info};
        ca_spawn_opts so = {.name = "signal-handler"};
        if (ca_spawn_ex(&t, handler_task, job, &so) < 0)
            free(job);
    }
    if (!t) {
        fprintf(stderr, "cawait: no task for the handler of signal %d: %s\n",
                info->signo, ca_strerror(-ENOMEM));
        return;
    }
    ca_detach(t);
}

static void dispatch(struct sig_state *st, const struct signalfd_siginfo *si)
{
    ca_siginfo info;
    info_from(&info, si);
    if (info.signo <= 0 || info.signo >= NSIG_MAX)
        return;
    if (info.signo == SIGCHLD)
        ca__subprocess_sigchld(st->loop);
    for (ca_signal_receiver *r = st->receivers; r; r = r->next)
        if (sigismember(&r->set, info.signo) == 1)
            receiver_push(r, &info);
    for (ca_signal_handler *h = st->handlers; h; h = h->next)
        if (h->signo == info.signo)
            handler_fire(h, &info);
}

static void read_signals(struct sig_state *st)
{
    struct signalfd_siginfo si[8];
    for (;;) {
        ssize_t n = read(st->fd, si, sizeof(si));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < (ssize_t)sizeof(si[0]))
            return; /* EAGAIN */
        for (size_t i = 0; i < (size_t)n / sizeof(si[0]); i++)
            dispatch(st, &si[i]);
    }
}

static void arm(struct sig_state *st);

static void fd_wake(ca__fdwait *w, int result)
{
    struct sig_state *st =
        (struct sig_state *)((char *)w - offsetof(struct sig_state, waiter));
    if (result < 0)
        return; /* forgotten: closing */
    read_signals(st);
    arm(st);
}

static void arm(struct sig_state *st)
{
    while (ca__fd_take_ready(st->loop, st->fd, CA_READ))
        read_signals(st);
    st->waiter = (ca__fdwait){.fd = st->fd, .events = CA_READ,
                              .wake = fd_wake};
    ca__fd_add_waiter(st->loop, &st->waiter);
}

/* ------------------------------------------------------------------------ */
/* Capture and release                                                      */
/* ------------------------------------------------------------------------ */

static int update_fd(struct sig_state *st)
{
    if (st->fd >= 0)
        return signalfd(st->fd, &st->mask, 0) < 0 ? -errno : 0;
    int fd = signalfd(-1, &st->mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = ca__fd_register(st->loop, fd);
    if (r < 0) {
        close(fd);
        return r;
    }
    st->fd = fd;
    arm(st);
    return 0;
}

/* Throw away instances of signo pending for this thread or the process. */
static void discard_pending(int signo)
{
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    struct timespec zero = {0, 0};
    for (;;) {
        if (sigtimedwait(&one, NULL, &zero) == signo)
            continue; /* real-time signals queue: take them all */
        if (errno != EINTR)
            return;
    }
}

static void release(struct sig_state *st, int signo)
{
    if (st->refs[signo] == 0 || --st->refs[signo] > 0)
        return;
    sigdelset(&st->mask, signo);
    if (st->fd >= 0 && update_fd(st) < 0) {
        /* Cannot happen with a valid fd and mask; if it did, what the fd
         * still reads for signo is dropped by dispatch. */
    }
    if (sigismember(&st->blocked_by_us, signo) == 1) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        discard_pending(signo);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        sigdelset(&st->blocked_by_us, signo);
    }
    ca__run_signal_claim(st->loop, signo, 0);
    /* A SIGCHLD nobody took may have been the only news of a child's exit
     * for the subprocess module (SIGCHLD mode): let it look (a WNOHANG
     * scan of its children). */
    if (signo == SIGCHLD)
        ca__subprocess_sigchld(st->loop);
}

static int capture(struct sig_state *st, int signo)
{
    if (st->refs[signo]++ > 0)
        return 0;
    ca__run_signal_claim(st->loop, signo, 1);
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, signo);
    int r = -pthread_sigmask(SIG_BLOCK, &one, &old);
    if (r == 0) {
        if (sigismember(&old, signo) != 1)
            sigaddset(&st->blocked_by_us, signo);
        sigaddset(&st->mask, signo);
        r = update_fd(st);
    }
    if (r < 0) {
        st->refs[signo] = 1;
        release(st, signo);
    }
    return r;
}

static void release_set(struct sig_state *st, const sigset_t *set)
{
    for (int s = 1; s < NSIG_MAX; s++)
        if (sigismember(set, s) == 1)
            release(st, s);
}

static int capture_set(struct sig_state *st, const sigset_t *set)
{
    for (int s = 1; s < NSIG_MAX; s++) {
        if (sigismember(set, s) != 1)
            continue;
        int r = capture(st, s);
        if (r < 0) {
            for (int u = 1; u < s; u++)
                if (sigismember(set, u) == 1)
                    release(st, u);
            return r;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Receivers and waits                                                      */
/* ------------------------------------------------------------------------ */

static int receiver_init(ca_signal_receiver *r, const sigset_t *set)
{
    if (!set || !set_ok(set))
        return -EINVAL;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    struct sig_state *st = state_get(l, 1);
    if (!st)
        return -ENOMEM;
    r->st = st;
    r->set = *set;
    r->on_heap = 0;
    r->head = r->count = 0;
    r->queued = 0;
    r->waiters = (ca__waitlist){NULL, NULL};
    r->inside = 0;
    r->closed = 0;
    int rc = capture_set(st, set);
    if (rc < 0)
        return rc;
    r->prev = NULL;
    r->next = st->receivers;
    if (st->receivers)
        st->receivers->prev = r;
    st->receivers = r;
    return 0;
}

static void receiver_fini(ca_signal_receiver *r)
{
    struct sig_state *st = r->st;
    if (r->prev)
        r->prev->next = r->next;
    else
        st->receivers = r->next;
    if (r->next)
        r->next->prev = r->prev;
    /* Waiters learn of the close from r->closed (r stays allocated while
     * any of them is inside receive). */
    r->closed = 1;
    ca__waitlist_wake_all(&r->waiters, -EBADF);
    release_set(st, &r->set);
}

static int64_t deadline_of(double timeout)
{
    if (timeout < 0 || timeout > 1e9)
        return INT64_MAX;
    return ca__clock_ns() + (int64_t)(timeout * 1e9);
}

static int receive(ca_signal_receiver *r, double timeout, ca_siginfo *info,
                   const char *fn)
{
    if (r->count)
        return receiver_pop(r, info);
    ca_task *self = ca__task_self(fn);
    if (!self)
        return -EPERM;
    int64_t until = deadline_of(timeout);
    int rc;
    r->inside++;
    for (;;) {
        ca__waiter w = {.task = self};
        ca__waitlist_push(&r->waiters, &w);
        int res = ca__task_park(self, until);
        if (ca__waitlist_linked(&r->waiters, &w))
            ca__waitlist_remove(&r->waiters, &w);
        if (r->closed) {
            rc = -EBADF;
            break;
        }
        if (r->count) {
            rc = receiver_pop(r, info);
            break;
        }
        if (res == CA__WAIT_TIMEOUT || res < 0) {
            rc = res == CA__WAIT_TIMEOUT ? -ETIMEDOUT : res;
            break;
        }
    }
    if (--r->inside == 0 && r->closed && r->on_heap)
        free(r); /* closed while we were inside: ours to free */
    return rc;
}

int ca_signal_open(ca_signal_receiver **out, const sigset_t *set)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    ca_signal_receiver *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    int rc = receiver_init(r, set);
    if (rc < 0) {
        free(r);
        return rc;
    }
    r->on_heap = 1;
    *out = r;
    return 0;
}

int ca_signal_receive(ca_signal_receiver *r, double timeout, ca_siginfo *info)
{
    if (!r || isnan(timeout))
        return -EINVAL;
    return receive(r, timeout, info, "ca_signal_receive");
}

void ca_signal_close(ca_signal_receiver *r)
{
    if (!r)
        return;
    receiver_fini(r);
    if (r->on_heap && r->inside == 0)
        free(r); /* else the last task to leave receive frees it */
}

int ca_signal_wait_set(const sigset_t *set, double timeout, ca_siginfo *info)
{
    if (!set || isnan(timeout))
        return -EINVAL;
    if (!ca__task_self("ca_signal_wait"))
        return -EPERM;
    /* A one-shot receiver on this task's stack: the signal is captured only
     * while we wait. */
    ca_signal_receiver r;
    int rc = receiver_init(&r, set);
    if (rc < 0)
        return rc;
    rc = receive(&r, timeout, info, "ca_signal_wait");
    if (rc != -EBADF)
        receiver_fini(&r);
    return rc;
}

int ca_signal_wait(int signo, double timeout)
{
    if (!signal_ok(signo))
        return -EINVAL;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return ca_signal_wait_set(&set, timeout, NULL);
}

/* ------------------------------------------------------------------------ */
/* Handlers                                                                 */
/* ------------------------------------------------------------------------ */

int ca_signal_add(ca_signal_handler **out, int signo, ca_signal_fn fn,
                  void *arg, int flags)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!fn || !signal_ok(signo) || (flags & ~CA_SIGNAL_TASK))
        return -EINVAL;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    struct sig_state *st = state_get(l, 1);
    if (!st)
        return -ENOMEM;
    ca_signal_handler *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    *h = (ca_signal_handler){.st = st, .signo = signo, .flags = flags,
                             .fn = fn, .arg = arg};
    int r = capture(st, signo);
    if (r < 0) {
        free(h);
        return r;
    }
    h->prev = st->handlers_tail;
    if (st->handlers_tail)
        st->handlers_tail->next = h;
    else
        st->handlers = h;
    st->handlers_tail = h;
    *out = h;
    return 0;
}

int ca_signal_remove(ca_signal_handler *h)
{
    if (!h)
        return -EINVAL;
    struct sig_state *st = h->st;
    if (h->queued)
        ca_handle_cancel(h->call);
    if (h->prev)
        h->prev->next = h->next;
    else
        st->handlers = h->next;
    if (h->next)
        h->next->prev = h->prev;
    else
        st->handlers_tail = h->prev;
    int signo = h->signo;
    free(h);
    release(st, signo);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Teardown                                                                 */
/* ------------------------------------------------------------------------ */

/* Every task has finished: nobody waits on a receiver any more. */
static void state_exit(ca_loop *l, ca__exit_hook *hook)
{
    struct sig_state *st = (struct sig_state *)hook;
    while (st->handlers)
        ca_signal_remove(st->handlers);
    while (st->receivers)
        ca_signal_close(st->receivers);
    for (int s = 1; s < NSIG_MAX; s++)
        while (st->refs[s])
            release(st, s);
    if (st->fd >= 0)
        ca_close(st->fd);
    free(st);
}
