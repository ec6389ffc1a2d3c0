/*
 * The event loop (internal).
 *
 * One loop per thread.  It owns:
 *  - the ready queue: a FIFO of ca__ready nodes (tasks and callbacks), each
 *    run by its own function;
 *  - the timers: a 4-ary min-heap keyed by (deadline, sequence), and beside
 *    it a FIFO "lane" that takes, in O(1), every timer armed no earlier than
 *    the lane's last; each armed timer owns a slot in a dense table that
 *    records its position, for O(log n) cancel without touching the timers
 *    themselves on every move;
 *  - the fd table: per fd, its registration with the backend, cached
 *    readiness (edge-triggered) and the list of waiters;
 *  - the backend (epoll today) behind ca__backend_ops;
 *  - the thread-safe call queue and its eventfd;
 *  - the scheduler state the task layer uses (current task, the thread's own
 *    context, the stack pool).  The loop itself never looks inside a task.
 *
 * A turn: poll the backend (timeout 0 when work is ready), refresh the
 * cached clock, move expired timers to the ready queue, then run the nodes
 * that were ready at that point.  Tasks switch directly to the next ready
 * task instead of returning to the scheduler; when a turn's nodes are done
 * and fewer than CA__EVENT_INTERVAL slices ran since the last poll, the next
 * turn starts without polling; after CA__EVENT_INTERVAL slices it reads the
 * clock, and polls only if CA__POLL_GAP_NS have passed since the last poll,
 * so a busy loop pays for a syscall at most every 50 us (the order of the
 * ready queue is the same).  While slices are long, it reads the clock
 * after fewer of them, so that I/O still waits about 50 us, not 128 long
 * slices.
 */
#ifndef CA_LOOP_H
#define CA_LOOP_H

#include "cawait.h"
#include "coro/coro.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define CA__EVENT_INTERVAL 128
/* A busy loop polls at most this often (ns): at every CA__EVENT_INTERVAL
 * slices it reads the clock, refreshes its time and fires due timers, but
 * skips the epoll_wait until this much time has passed since the last. */
#define CA__POLL_GAP_NS 50000

#define CA__AFTER_WATCH 1u
#define CA__AFTER_DEAD 2u

typedef struct ca__ready ca__ready;
struct ca__ready {
    ca__ready *next;
    void (*run)(ca__ready *self);
};

typedef struct ca__timer ca__timer;
/* A heap entry: everything a comparison needs, inline.  seq is the arming
 * order (compared with wrap-around), so equal deadlines fire FIFO. */
struct ca__heap_ent {
    int64_t when;
    uint32_t slot;
    uint32_t seq;
};
/* The slot table maps an armed timer to its heap position (or, with
 * CA__TIMER_LANE set, its place in the lane).  Timers live in
 * task stacks and callback handles, scattered over memory; keeping their
 * heap positions here means a sift writes to two dense arrays only. */
struct ca__timer_slot {
    ca__timer *t;
    uint32_t index;     /* position in the heap */
    uint32_t next_free; /* free-list link when unused */
};
struct ca__timer {
    int64_t when; /* loop time, ns */
    uint32_t slot; /* slot in the table, CA__TIMER_IDLE when unarmed */
    void (*fire)(ca__timer *self);
};
#define CA__TIMER_IDLE UINT32_MAX
#define CA__TIMER_LANE 0x80000000u

/* A task (or anything else) waiting for readiness of an fd. */
typedef struct ca__fdwait ca__fdwait;
struct ca__fdwait {
    ca__fdwait *next, *prev;
    int fd;
    int events;
    /* Called with a positive ready mask or a negative error (-EBADF). */
    void (*wake)(ca__fdwait *self, int result);
};

typedef struct ca__fdent {
    uint32_t gen;   /* bumped by forget: stale events are dropped */
    uint8_t registered;
    uint8_t always_ready; /* regular files: epoll refuses them */
    uint8_t ready;  /* CA_READ|CA_WRITE|CA_ERROR|CA_HANGUP seen, unconsumed */
    ca__fdwait *waiters;
} ca__fdent;

typedef struct ca__backend_ops {
    const char *name;
    int (*init)(ca_loop *loop);
    void (*fini)(ca_loop *loop);
    /* Register fd for in+out, edge-triggered, with opaque data. */
    int (*add)(ca_loop *loop, int fd, uint64_t data);
    int (*del)(ca_loop *loop, int fd);
    /* Wait up to timeout_ns (< 0: forever) and report each event with
     * ca__loop_fd_event.  Returns 0 or a negative errno. */
    int (*poll)(ca_loop *loop, int64_t timeout_ns);
} ca__backend_ops;

extern const ca__backend_ops ca__backend_epoll;

/* Run by ca_run after every task has finished, before the loop closes
 * (newest first): upper layers release per-loop resources here (the default
 * thread pool joins its threads).  The hook may not block on the loop. */
typedef struct ca__exit_hook ca__exit_hook;
struct ca__exit_hook {
    ca__exit_hook *next;
    void (*fn)(ca_loop *loop, ca__exit_hook *self);
};

struct tscall {
    ca_cb cb;
    void *arg;
};

/* A scheduled callback: call_soon / call_later / call_at. */
typedef struct ca__cbh {
    ca__ready ready;
    ca__timer timer;
    ca_cb cb;
    void *arg;
    uint64_t gen;
    uint8_t state; /* CBH_FREE, CBH_READY, CBH_TIMER */
    struct ca__cbh *next_free;
} ca__cbh;

struct ca_loop {
    /* ready queue */
    ca__ready *ready_head, *ready_tail;
    size_t nready;
    /* One counter drives turns and polls: every node run (a task slice or a
     * callback) increments `slices`; the current turn ends when it reaches
     * turn_end, and a poll may be due CA__EVENT_INTERVAL slices after
     * poll_slice.  Task slices = slices - cb_slices.  `slices` must not sit
     * next to `nready`: GCC merges their updates into one 128-bit add right
     * after scalar stores, a store-forwarding stall on every switch. */
    uint64_t turn_end;
    uint64_t poll_slice;
    uint64_t slices;
    uint64_t cb_slices;      /* slices that ran callbacks, not tasks */
    int check_canary;        /* some stacks rely on the red-zone check */
    /* Work owed right after a switch: CA__AFTER_WATCH (debug timing or
     * red-zone checks are on) and CA__AFTER_DEAD (a task just finished).
     * One test of this word is the whole fast path. */
    unsigned after_work;
    ca_task *current;        /* running task or NULL */

    /* time */
    int64_t now;

    /* timers: a 4-ary heap of {deadline, slot, seq}; keys are inline so a
     * level costs one cache line, not a pointer chase per child */
    struct ca__heap_ent *heap;
    size_t nheap, heap_cap;
    /* The lane: timers armed in deadline order (the same delay again and
     * again: a gather of equal sleeps, a per-request timeout) queue here in
     * O(1) instead of sifting through the heap.  A ring indexed by
     * free-running counters; cancelled entries in the middle are marked
     * dead (slot CA__TIMER_IDLE), both ends are always live. */
    struct ca__heap_ent *lane;
    uint32_t lane_head, lane_tail, lane_cap, lane_dead;
    /* When the next timer is due (the lesser of the heap's top and the
     * lane's head), INT64_MAX when none is armed: one compare tells a
     * switch whether timers are due. */
    int64_t timer_next;
    struct ca__timer_slot *tslots;
    uint32_t ntslots, tslot_cap, tslot_free;
    uint32_t timer_seq;

    /* fds */
    ca__fdent *fds;
    int nfds;
    const ca__backend_ops *backend;
    int epfd;

    /* thread-safe calls */
    int wakefd;
    pthread_mutex_t ts_lock;
    struct tscall *ts_items, *ts_spare;
    size_t ts_n, ts_cap, ts_spare_cap;
    atomic_int ts_pending;
    atomic_int ts_closed;

    /* callback handles */
    ca__cbh *cbh_free;
    uint64_t cbh_gen;
    size_t cbh_nfree;
    void *cbh_slabs;
    ca__ready ts_node;       /* runs the thread-safe calls */
    int ts_queued;
    /* Slices between clock checks: CA__EVENT_INTERVAL, or fewer while
     * slices are long (ca__loop_poll_due_slow).  Applied by starting
     * poll_slice that much earlier, so the switch path's test stays a
     * compare with a constant.  (In ts_queued's padding: the fields after
     * keep their offsets.) */
    uint32_t poll_interval;
    int64_t last_poll_end;

    /* scheduler state, managed by the task layer */
    ca__coro sched;          /* the thread's own context */
    ca__stack_pool *stacks;
    ca__stack *dead_stack;   /* stack of a finished task, to release */
    ca_task *prev_task;      /* the task that just switched out */
    ca_task *dead_task;      /* a finished task whose run ref to drop */
    size_t unfinished;       /* tasks not DONE */
    uint64_t next_task_id;
    size_t default_stack;
    int stopping;            /* ca_run is reaping */
    void *altstack;
    void *task_free;         /* task struct free list (task layer) */
    size_t task_nfree;

    /* upper layers' per-loop state */
    ca__exit_hook *exit_hooks; /* see ca__loop_at_exit */
    void *exec_default;      /* default thread pool (src/exec/) */
    /* Sockets that ca_stream_close handed to the loop: it reads and drops
     * their input until the peer's end or a time limit, then closes them
     * (lingering close, src/net/stream.c).  ca_run waits for them. */
    void *lingering;
    size_t nlingering;
    /* Set with `lingering`: ca_run calls it when it starts reaping, so that
     * sockets whose data the peer has taken close without waiting. */
    void (*linger_stop)(ca_loop *l);

    /* DNS configuration (src/net/dns.c) */
    char *dns_servers;       /* "ip[:port],...", NULL: /etc/resolv.conf */
    int dns_timeout_ms;      /* per try; 0: c-ares' default */
    int dns_tries;           /* 0: c-ares' default */

    /* debug and statistics */
    int debug;
    int64_t slow_ns;
    int64_t slice_start;
    ca_loop_stats stats;
};

extern _Thread_local ca_loop *ca__tls_loop
    __attribute__((tls_model("initial-exec")));

static inline ca_loop *ca__loop(void)
{
    return ca__tls_loop;
}

int64_t ca__clock_ns(void);

ca_loop *ca__loop_new(void);
void ca__loop_free(ca_loop *loop);
/* One scheduler iteration on the thread's own context: poll if due, fire
 * timers, run the ready nodes of this turn. */
void ca__loop_run_once(ca_loop *loop);
/* Start a turn without polling (task context): fires expired timers and
 * resets the budget.  Returns 0 if the caller should go back to the
 * scheduler instead (a poll is due or nothing is ready). */
void ca__timers_fire(ca_loop *l);
/* Nonzero if a timer is due at the cached time. */
static inline int ca__timers_due(const ca_loop *l)
{
    return l->timer_next <= l->now;
}
/* Every CA__EVENT_INTERVAL slices: nonzero if the loop must poll now,
 * else the clock is refreshed and a new interval starts. */
int ca__loop_poll_due_slow(ca_loop *l);
static inline int ca__loop_poll_due(ca_loop *l)
{
    if (__builtin_expect(l->slices - l->poll_slice < CA__EVENT_INTERVAL, 1))
        return 0;
    return ca__loop_poll_due_slow(l);
}
static inline int ca__loop_turn_nopoll(ca_loop *l)
{
    if (ca__loop_poll_due(l))
        return 0;
    if (ca__timers_due(l))
        ca__timers_fire(l);
    if (l->nready == 0)
        return 0;
    l->turn_end = l->slices + l->nready;
    l->stats.turns++;
    return 1;
}
/* Register a hook that ca_run runs once every task has finished. */
static inline void ca__loop_at_exit(ca_loop *l, ca__exit_hook *h)
{
    h->next = l->exit_hooks;
    l->exit_hooks = h;
}
/* Find upper-layer per-loop state through its exit hook: the loop keeps
 * the hooks in a short list, and a hook's function identifies its owner. */
static inline ca__exit_hook *ca__loop_find_hook(ca_loop *l,
                                                void (*fn)(ca_loop *,
                                                           ca__exit_hook *))
{
    ca__exit_hook *h = l ? l->exit_hooks : NULL;
    while (h && h->fn != fn)
        h = h->next;
    return h;
}
/* Unlink a hook registered with ca__loop_at_exit (no-op if absent). */
static inline void ca__loop_exit_hook_remove(ca_loop *l, ca__exit_hook *h)
{
    for (ca__exit_hook **pp = &l->exit_hooks; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            return;
        }
}
/* Run and unlink every exit hook (newest first, including hooks that a
 * hook registers). */
void ca__loop_run_exit_hooks(ca_loop *l);
/* Close the thread-safe queue and drop scheduled callbacks and timers. */
void ca__loop_shutdown(ca_loop *loop);

static inline void ca__ready_push(ca_loop *l, ca__ready *n)
{
    n->next = NULL;
    if (l->ready_tail)
        l->ready_tail->next = n;
    else
        l->ready_head = n;
    l->ready_tail = n;
    l->nready++;
}

static inline void ca__ready_push_front(ca_loop *l, ca__ready *n)
{
    n->next = l->ready_head;
    l->ready_head = n;
    if (!l->ready_tail)
        l->ready_tail = n;
    l->nready++;
    l->turn_end++;
}

static inline ca__ready *ca__ready_pop(ca_loop *l)
{
    ca__ready *n = l->ready_head;
    if (n) {
        l->ready_head = n->next;
        if (!l->ready_head)
            l->ready_tail = NULL;
        l->nready--;
    }
    return n;
}

/* Timers. */
int ca__timer_arm(ca_loop *l, ca__timer *t, int64_t when);
void ca__timer_cancel(ca_loop *l, ca__timer *t);
static inline int ca__timer_armed(const ca__timer *t)
{
    return t->slot != CA__TIMER_IDLE;
}
void ca__timers_fire(ca_loop *l);
/* Earliest deadline, or INT64_MAX. */
int64_t ca__timers_next(const ca_loop *l);

/* Fds. */
/* Make sure fd is registered; returns 0 or a negative errno. */
int ca__fd_register(ca_loop *l, int fd);
/* Consume cached readiness for events; returns the mask consumed (0 if the
 * caller must wait). */
int ca__fd_take_ready(ca_loop *l, int fd, int events);
/* Internal event bit: the peer shut down its side (EPOLLRDHUP).  Sticky in
 * the fd's readiness until the fd is forgotten; never passed to waiters. */
#define CA__FD_PEER_CLOSED 0x40
/* Nonzero if fd has reported that its peer shut down its side: its queue
 * may still hold data, then the end of the stream, with no edge to come. */
int ca__fd_peer_closed(const ca_loop *l, int fd);
void ca__fd_add_waiter(ca_loop *l, ca__fdwait *w);
void ca__fd_remove_waiter(ca_loop *l, ca__fdwait *w);
int ca__fd_forget(ca_loop *l, int fd);
void ca__loop_fd_event(ca_loop *l, uint64_t data, int events);
void ca__fd_table_free(ca_loop *l);
int ca__loop_is_wake(uint64_t data);
void ca__loop_wake_event(ca_loop *l);

#endif
