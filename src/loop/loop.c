/*
 * The loop: creation, one turn of scheduling, callbacks (call_soon,
 * call_later, call_at, call_soon_threadsafe), time and statistics.
 */
#include "loop/loop.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define WAKE_DATA UINT64_MAX
#define CBH_SLAB 256

enum { CBH_FREE = 0, CBH_READY, CBH_TIMER, CBH_CANCELLED };

_Thread_local ca_loop *ca__tls_loop __attribute__((tls_model("initial-exec")));

int64_t ca__clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Callback handles: allocated from slabs, recycled, freed with the loop, so */
/* a stale handle always points at valid memory and is recognised by gen.   */
/* ------------------------------------------------------------------------ */

struct cbh_slab {
    struct cbh_slab *next;
    ca__cbh h[CBH_SLAB];
};

static ca__cbh *cbh_alloc(ca_loop *l)
{
    if (!l->cbh_free) {
        struct cbh_slab *s = calloc(1, sizeof(*s));
        if (!s)
            return NULL;
        s->next = l->cbh_slabs;
        l->cbh_slabs = s;
        for (int i = CBH_SLAB - 1; i >= 0; i--) {
            s->h[i].next_free = l->cbh_free;
            s->h[i].timer.slot = CA__TIMER_IDLE;
            l->cbh_free = &s->h[i];
        }
        l->cbh_nfree += CBH_SLAB;
    }
    ca__cbh *h = l->cbh_free;
    l->cbh_free = h->next_free;
    l->cbh_nfree--;
    h->gen = ++l->cbh_gen;
    return h;
}

static void cbh_release(ca_loop *l, ca__cbh *h)
{
    h->state = CBH_FREE;
    h->gen = 0;
    h->next_free = l->cbh_free;
    l->cbh_free = h;
    l->cbh_nfree++;
}

/* ------------------------------------------------------------------------ */
/* Debug mode: callbacks that hold the loop                                 */
/* ------------------------------------------------------------------------ */

/*
 * A callback that blocks stops every task as surely as a task does, and
 * asyncio's debug mode names it ("Executing <Handle cb()> took 0.2
 * seconds").  Only task slices were timed here: a ca_call_soon callback
 * sleeping 200 ms went unreported.  The callback has no name or spawn
 * site, so it is named by its symbol when the dynamic linker knows one
 * (exported functions) and by its address otherwise (addr2line -f -e prog
 * ADDR, minus the load base, names a static one).
 */
static void report_slow_cb(ca_loop *l, ca_cb cb, void *arg, int64_t ns)
{
    l->stats.slow_tasks++;
    void *fp;
    memcpy(&fp, &cb, sizeof(fp));
    char where[320];
    snprintf(where, sizeof(where), "%p", fp);
#if defined(__GLIBC__) /* nested: __GLIBC_PREREQ exists only there */
#if __GLIBC_PREREQ(2, 34)
    /* dladdr is in libc itself from glibc 2.34: no -ldl for users.  A
     * static function has no symbol: its file and offset are what
     * addr2line -f -e FILE OFFSET takes. */
    Dl_info di;
    if (!dladdr(fp, &di))
        ; /* not in any loaded object: the address it is */
    else if (di.dli_sname && di.dli_saddr == fp)
        snprintf(where, sizeof(where), "%s", di.dli_sname);
    else if (di.dli_fname && di.dli_fbase)
        snprintf(where, sizeof(where), "%s+0x%zx", di.dli_fname,
                 (size_t)((char *)fp - (char *)di.dli_fbase));
#endif
#endif
    fprintf(stderr,
            "cawait: callback %s (arg %p) held the loop for %.1f ms without "
            "returning (threshold %.1f ms)\n",
            where, arg, (double)ns / 1e6, (double)l->slow_ns / 1e6);
}

/* Run one callback; in debug mode, time it against the threshold. */
static void cb_call(ca_loop *l, ca_cb cb, void *arg)
{
    l->stats.callbacks_run++;
    if (__builtin_expect(!l->debug, 1)) {
        cb(arg);
        return;
    }
    int64_t t0 = ca__clock_ns();
    cb(arg);
    int64_t ns = ca__clock_ns() - t0;
    if (ns > l->slow_ns)
        report_slow_cb(l, cb, arg, ns);
}

static void cbh_run(ca__ready *r)
{
    ca__cbh *h = (ca__cbh *)((char *)r - offsetof(ca__cbh, ready));
    ca_loop *l = ca__loop();
    l->cb_slices++;
    if (h->state == CBH_READY) {
        ca_cb cb = h->cb;
        void *arg = h->arg;
        cbh_release(l, h);
        cb_call(l, cb, arg);
    } else {
        cbh_release(l, h); /* cancelled while queued */
    }
}

static void cbh_fire(ca__timer *t)
{
    ca__cbh *h = (ca__cbh *)((char *)t - offsetof(ca__cbh, timer));
    h->state = CBH_READY;
    ca__ready_push(ca__loop(), &h->ready);
}

static int schedule(ca_loop *l, int64_t when, int soon, ca_cb cb, void *arg,
                    ca_handle *out)
{
    ca__cbh *h = cbh_alloc(l);
    if (!h)
        return -ENOMEM;
    h->cb = cb;
    h->arg = arg;
    h->ready.run = cbh_run;
    if (soon) {
        h->state = CBH_READY;
        ca__ready_push(l, &h->ready);
    } else {
        h->state = CBH_TIMER;
        h->timer.fire = cbh_fire;
        int r = ca__timer_arm(l, &h->timer, when);
        if (r < 0) {
            cbh_release(l, h);
            return r;
        }
    }
    if (out) {
        out->p = h;
        out->gen = h->gen;
    }
    return 0;
}

static int seconds_to_ns(double s, int64_t *out)
{
    if (isnan(s))
        return -EINVAL;
    if (s > 9.0e9)
        s = 9.0e9; /* ~285 years: effectively never */
    if (s < -9.0e9)
        s = -9.0e9;
    *out = (int64_t)(s * 1e9);
    return 0;
}

int ca_call_soon(ca_cb cb, void *arg, ca_handle *h)
{
    ca_loop *l = ca__loop();
    if (!cb)
        return -EINVAL;
    if (!l)
        return -CA_ENOLOOP;
    return schedule(l, 0, 1, cb, arg, h);
}

int ca_call_later(double delay, ca_cb cb, void *arg, ca_handle *h)
{
    ca_loop *l = ca__loop();
    int64_t d;
    if (!cb || seconds_to_ns(delay, &d) < 0)
        return -EINVAL;
    if (!l)
        return -CA_ENOLOOP;
    if (d < 0)
        d = 0;
    return schedule(l, l->now + d, 0, cb, arg, h);
}

int ca_call_at(double when, ca_cb cb, void *arg, ca_handle *h)
{
    ca_loop *l = ca__loop();
    int64_t w;
    if (!cb || seconds_to_ns(when, &w) < 0)
        return -EINVAL;
    if (!l)
        return -CA_ENOLOOP;
    return schedule(l, w, 0, cb, arg, h);
}

int ca_handle_cancel(ca_handle hd)
{
    ca__cbh *h = hd.p;
    ca_loop *l = ca__loop();
    if (!h || !l || hd.gen == 0 || h->gen != hd.gen)
        return 0;
    if (h->state == CBH_TIMER) {
        ca__timer_cancel(l, &h->timer);
        cbh_release(l, h);
        return 1;
    }
    if (h->state == CBH_READY) {
        /* Still linked in the ready queue: mark it; cbh_run recycles it. */
        h->state = CBH_CANCELLED;
        h->gen = 0;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Thread-safe calls                                                        */
/* ------------------------------------------------------------------------ */

static void ts_run(ca__ready *r)
{
    ca_loop *l = (ca_loop *)((char *)r - offsetof(ca_loop, ts_node));
    l->cb_slices++;
    pthread_mutex_lock(&l->ts_lock);
    struct tscall *items = l->ts_items;
    size_t n = l->ts_n, cap = l->ts_cap;
    l->ts_items = l->ts_spare;
    l->ts_cap = l->ts_spare_cap;
    l->ts_n = 0;
    l->ts_spare = NULL;
    l->ts_spare_cap = 0;
    l->ts_queued = 0;
    pthread_mutex_unlock(&l->ts_lock);
    for (size_t i = 0; i < n; i++)
        cb_call(l, items[i].cb, items[i].arg);
    pthread_mutex_lock(&l->ts_lock);
    if (!l->ts_spare) {
        l->ts_spare = items;
        l->ts_spare_cap = cap;
        items = NULL;
    }
    pthread_mutex_unlock(&l->ts_lock);
    free(items);
}

/* The eventfd fired: drain it and queue the batch runner (once). */
static void ts_wakeup(ca_loop *l)
{
    uint64_t v;
    while (read(l->wakefd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;
    /* Reset before looking at the queue: a producer that pushes after this
     * point sees 0 and writes the eventfd again. */
    atomic_store(&l->ts_pending, 0);
    pthread_mutex_lock(&l->ts_lock);
    int queue = l->ts_n > 0 && !l->ts_queued;
    if (queue)
        l->ts_queued = 1;
    pthread_mutex_unlock(&l->ts_lock);
    if (queue)
        ca__ready_push(l, &l->ts_node);
}

int ca_call_soon_threadsafe(ca_loop *l, ca_cb cb, void *arg)
{
    if (!l || !cb)
        return -EINVAL;
    pthread_mutex_lock(&l->ts_lock);
    if (atomic_load(&l->ts_closed)) {
        pthread_mutex_unlock(&l->ts_lock);
        return -ESHUTDOWN;
    }
    if (l->ts_n == l->ts_cap) {
        size_t cap = l->ts_cap ? l->ts_cap * 2 : 64;
        struct tscall *t = realloc(l->ts_items, cap * sizeof(*t));
        if (!t) {
            pthread_mutex_unlock(&l->ts_lock);
            return -ENOMEM;
        }
        l->ts_items = t;
        l->ts_cap = cap;
    }
    l->ts_items[l->ts_n++] = (struct tscall){cb, arg};
    pthread_mutex_unlock(&l->ts_lock);
    if (atomic_exchange(&l->ts_pending, 1) == 0) {
        uint64_t one = 1;
        ssize_t w = write(l->wakefd, &one, sizeof(one));
        (void)w; /* EAGAIN means the counter is already non-zero */
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Loop lifecycle and turns                                                 */
/* ------------------------------------------------------------------------ */

ca_loop *ca__loop_new(void)
{
    ca_loop *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->epfd = -1;
    l->wakefd = -1;
    l->tslot_free = CA__TIMER_IDLE;
    l->timer_next = INT64_MAX;
    l->backend = &ca__backend_epoll;
    pthread_mutex_init(&l->ts_lock, NULL);
    l->ts_node.run = ts_run;
    if (l->backend->init(l) < 0)
        goto fail;
    l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wakefd < 0 || l->backend->add(l, l->wakefd, WAKE_DATA) < 0)
        goto fail;
    l->stacks = ca__stack_pool_new();
    if (!l->stacks)
        goto fail;
    l->check_canary = ca__stack_guard_mode() != CA__GUARD_MADVISE;
    if (l->check_canary)
        l->after_work |= CA__AFTER_WATCH;
    l->now = ca__clock_ns();
    l->last_poll_end = l->now;
    l->poll_interval = CA__EVENT_INTERVAL;
    l->stats.backend = l->backend->name;
    return l;
fail:
    ca__loop_free(l);
    return NULL;
}

void ca__loop_run_exit_hooks(ca_loop *l)
{
    ca__exit_hook *h;
    while ((h = l->exit_hooks) != NULL) {
        l->exit_hooks = h->next;
        h->fn(l, h);
    }
}

void ca__loop_shutdown(ca_loop *l)
{
    pthread_mutex_lock(&l->ts_lock);
    atomic_store(&l->ts_closed, 1);
    pthread_mutex_unlock(&l->ts_lock);
}

void ca__loop_free(ca_loop *l)
{
    if (!l)
        return;
    if (l->wakefd >= 0)
        close(l->wakefd);
    l->backend->fini(l);
    ca__fd_table_free(l);
    free(l->heap);
    free(l->lane);
    free(l->tslots);
    while (l->cbh_slabs) {
        struct cbh_slab *s = l->cbh_slabs;
        l->cbh_slabs = s->next;
        free(s);
    }
    free(l->ts_items);
    free(l->ts_spare);
    free(l->dns_servers);
    pthread_mutex_destroy(&l->ts_lock);
    ca__stack_pool_free(l->stacks);
    free(l);
}

/*
 * Slices of 250 us (a task that sends 64 datagrams between yields) made
 * 128 of them 32 ms without a poll, where asyncio polls after every round
 * of its ready callbacks: a receiver saw one chance per 4,096 datagrams.
 * So after an interval that took longer than four poll gaps (200 us),
 * the next one has as many slices as fit in two (at least one); after one
 * shorter than two gaps it doubles back towards CA__EVENT_INTERVAL (a
 * single long slice, a page fault or the host taking the CPU, shrinks it
 * for a check or two).  Slices short enough for 128 of them to take less
 * than 100 us (switching, a queue or a lock handed back and forth) keep
 * the full interval: their clock reads and polls are what they were.
 */
static void adapt_interval(ca_loop *l, int64_t now)
{
    int64_t took = now - l->now; /* since the last poll or check */
    uint64_t ran = l->poll_interval +
                   (l->slices - l->poll_slice - CA__EVENT_INTERVAL);
    if (took > 4 * CA__POLL_GAP_NS) {
        uint64_t fit = ran * (uint64_t)(2 * CA__POLL_GAP_NS) / (uint64_t)took;
        l->poll_interval = fit == 0 ? 1
                           : fit > CA__EVENT_INTERVAL ? CA__EVENT_INTERVAL
                                                      : (uint32_t)fit;
    } else if (took < 2 * CA__POLL_GAP_NS &&
               l->poll_interval < CA__EVENT_INTERVAL) {
        l->poll_interval *= 2;
        if (l->poll_interval > CA__EVENT_INTERVAL)
            l->poll_interval = CA__EVENT_INTERVAL;
    }
}

/* The next check comes poll_interval slices from now. */
static void interval_start(ca_loop *l)
{
    l->poll_slice = l->slices - (CA__EVENT_INTERVAL - l->poll_interval);
}

static void poll_once(ca_loop *l)
{
    if (l->nready > 0) {
        /* Work is ready: just collect events.  The zero-timeout poll is
         * counted as run time, which saves a clock read. */
        l->backend->poll(l, 0);
        l->now = ca__clock_ns();
        l->stats.run_ns += l->now - l->last_poll_end;
    } else {
        int64_t t0 = ca__clock_ns();
        int64_t next = ca__timers_next(l);
        int64_t timeout = next == INT64_MAX ? -1 : (next > t0 ? next - t0 : 0);
        /* Idle for a while: give surplus stack memory back first. */
        if (timeout != 0 && ca__stack_pool_trim(l->stacks, 8, t0) > 0) {
            t0 = ca__clock_ns();
            timeout = next == INT64_MAX ? -1 : (next > t0 ? next - t0 : 0);
        }
        l->stats.run_ns += t0 - l->last_poll_end;
        /* Linux lets a poll's timer fire up to 0.1% of the timeout late
         * (select_estimate_accuracy: 100 us on a 100 ms sleep, or the
         * thread's timer slack if larger): ask for that much less, so a long
         * sleep ends at its deadline instead of after it.  Woken early, the
         * loop finds no timer due and polls again for the rest. */
        if (timeout > 0)
            timeout -= timeout / 1000;
        l->backend->poll(l, timeout);
        l->now = ca__clock_ns();
        l->stats.poll_ns += l->now - t0;
    }
    l->last_poll_end = l->now;
    interval_start(l);
}

/*
 * A busy loop's poll: after CA__EVENT_INTERVAL slices, poll only if
 * CA__POLL_GAP_NS have passed since the last poll ended.  Otherwise the
 * clock read here stands in for the poll's (timers due by now fire at the
 * start of the next turn) and another interval starts: tasks that switch
 * every few nanoseconds paid an epoll_wait per 128 switches, 15% of their
 * time.  I/O waits at most 50 us or poll_interval slices, whichever is
 * later; adapt_interval keeps poll_interval slices near 50 us.
 */
int ca__loop_poll_due_slow(ca_loop *l)
{
    int64_t now = ca__clock_ns();
    adapt_interval(l, now);
    if (now - l->last_poll_end >= CA__POLL_GAP_NS)
        return 1;
    l->now = now;
    interval_start(l);
    return 0;
}

void ca__loop_run_once(ca_loop *l)
{
    if (l->nready == 0 || ca__loop_poll_due(l))
        poll_once(l);
    ca__timers_fire(l);
    l->turn_end = l->slices + l->nready;
    l->stats.turns++;
    while (l->slices < l->turn_end) {
        ca__ready *n = ca__ready_pop(l);
        l->slices++;
        n->run(n);
    }
}

/* Called by the fd layer for the wake-up eventfd's data. */
int ca__loop_is_wake(uint64_t data)
{
    return data == WAKE_DATA;
}

void ca__loop_wake_event(ca_loop *l)
{
    ts_wakeup(l);
}

/* ------------------------------------------------------------------------ */
/* Public queries                                                           */
/* ------------------------------------------------------------------------ */

ca_loop *ca_loop_current(void)
{
    return ca__loop();
}

int64_t ca_now_ns(void)
{
    ca_loop *l = ca__loop();
    return l ? l->now : ca__clock_ns();
}

double ca_now(void)
{
    return (double)ca_now_ns() / 1e9;
}

int ca_loop_stats_get(ca_loop_stats *out)
{
    ca_loop *l = ca__loop();
    if (!out)
        return -EINVAL;
    if (!l)
        return -CA_ENOLOOP;
    *out = l->stats;
    out->tasks_run = l->slices - l->cb_slices;
    /* Include the time run since the last poll. */
    out->run_ns += ca__clock_ns() - l->last_poll_end;
    return 0;
}

int ca_set_debug(int on, double slow_ms)
{
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    l->debug = on ? 1 : 0;
    l->after_work &= ~CA__AFTER_WATCH;
    if (l->debug || l->check_canary)
        l->after_work |= CA__AFTER_WATCH;
    if (l->debug)
        l->slice_start = ca__clock_ns();
    if (slow_ms > 0)
        l->slow_ns = (int64_t)(slow_ms * 1e6);
    return 0;
}
