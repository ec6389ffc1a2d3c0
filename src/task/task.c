/*
 * Tasks: spawn, the switch between tasks, park/wake, join, cancel, sleep,
 * and ca_run.
 */
#include "task/task.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * Task memory: tasks are carved from arenas that double from 64 KiB to
 * 4 MiB and are populated when mapped (see arena_map), so their pages
 * arrive in one system call instead of one page fault each (a million
 * tasks: 41,000 faults).  Freed tasks go on a free list chained through
 * ready.next and are reused; arenas are unmapped with the loop.  Walking
 * the arenas finds every uncollected task (state != CA__T_FREE), so tasks
 * need no list links.
 */
#define ARENA_MIN (64u * 1024u)
#define ARENA_MAX (4u * 1024u * 1024u)

struct task_arena {
    struct task_arena *next;
    size_t bytes;
    size_t cap, used;
    ca_task t[];
};

/* Kept outside ca_loop so loop.h need not know the arena layout. */
struct task_alloc {
    struct task_arena *arenas; /* newest first */
    size_t next_bytes;
    ca__ready *free;
};

#define FOR_EACH_TASK(a, t)                                                    \
    for (struct task_arena *ar_ = (a) ? (a)->arenas : NULL; ar_;              \
         ar_ = ar_->next)                                                      \
        for (ca_task *t = ar_->t; t < ar_->t + ar_->used; t++)                 \
            if (t->state != CA__T_FREE)

static void task_ready_run(ca__ready *r);
static void task_entry(void *arg);
static void task_timer_fire(ca__timer *tm);

/* ------------------------------------------------------------------------ */
/* Wait lists                                                               */
/* ------------------------------------------------------------------------ */

static inline void waiter_wake(ca__waiter *w, int result)
{
    if (w->notify)
        w->notify(w);
    else
        ca__task_wake(w->task, result);
}

int ca__waitlist_wake_one(ca__waitlist *l, int result)
{
    ca__waiter *w = ca__waitlist_pop(l);
    if (!w)
        return 0;
    waiter_wake(w, result);
    return 1;
}

int ca__waitlist_wake_all(ca__waitlist *l, int result)
{
    int n = 0;
    ca__waiter *w;
    while ((w = ca__waitlist_pop(l))) {
        waiter_wake(w, result);
        n++;
    }
    return n;
}


/* ------------------------------------------------------------------------ */
/* Allocation and collection                                                */
/* ------------------------------------------------------------------------ */

static struct task_alloc *talloc(ca_loop *l)
{
    if (!l->task_free)
        l->task_free = calloc(1, sizeof(struct task_alloc));
    return l->task_free;
}

#define ARENA_HUGE (2u * 1024u * 1024u)

/*
 * Arenas of 2 MiB and more are aligned to 2 MiB and asked for transparent
 * huge pages: two page faults fill a 4 MiB arena instead of 1,024 (a
 * million tasks spent a fifth of their spawn time in the page-fault path).
 * Where the kernel gives no huge pages the pages are populated up front, as
 * for the small arenas.
 */
static void *arena_map(size_t bytes)
{
    const int prot = PROT_READ | PROT_WRITE;
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#if defined(MADV_HUGEPAGE)
    if (bytes >= ARENA_HUGE) {
        size_t span = bytes + ARENA_HUGE;
        char *raw = mmap(NULL, span, prot, flags, -1, 0);
        if (raw == MAP_FAILED)
            return NULL;
        char *p = (char *)(((uintptr_t)raw + ARENA_HUGE - 1) &
                           ~(uintptr_t)(ARENA_HUGE - 1));
        if (p > raw)
            munmap(raw, (size_t)(p - raw));
        if (raw + span > p + bytes)
            munmap(p + bytes, (size_t)(raw + span - (p + bytes)));
        madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
#if defined(MADV_POPULATE_WRITE)
        madvise(p, bytes, MADV_POPULATE_WRITE); /* Linux 5.14+; else lazy */
#endif
        return p;
    }
#endif
    void *p = mmap(NULL, bytes, prot, flags | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static struct task_arena *arena_new(struct task_alloc *a)
{
    size_t bytes = a->next_bytes ? a->next_bytes : ARENA_MIN;
    void *p = arena_map(bytes);
    if (!p)
        return NULL;
    struct task_arena *ar = p;
    ar->bytes = bytes;
    ar->cap = (bytes - sizeof(*ar)) / sizeof(ca_task);
    ar->used = 0;
    ar->next = a->arenas;
    a->arenas = ar;
    a->next_bytes = bytes < ARENA_MAX ? bytes * 2 : ARENA_MAX;
    return ar;
}

static ca_task *task_alloc(ca_loop *l)
{
    struct task_alloc *a = talloc(l);
    if (!a)
        return NULL;
    ca_task *t;
    if (a->free) {
        t = ca__task_of_ready(a->free);
        a->free = t->ready.next;
    } else {
        struct task_arena *ar = a->arenas;
        if (!ar || ar->used == ar->cap) {
            ar = arena_new(a);
            if (!ar)
                return NULL;
        }
        t = &ar->t[ar->used++];
    }
    return t;
}

/*
 * A task's name as the reports print it.  Names are arbitrary strings: one
 * with a newline split a report into two lines (the second looking like
 * output of its own), an escape sequence recoloured the terminal, and a
 * 5,000-byte name buried the line.  Control characters and backslashes are
 * escaped (as asyncio's repr of a name does) and a long name is cut with
 * "...".  No allocation and no stdio: the overflow reporter calls this
 * from the SIGSEGV handler, so a nameless task's "Task-<id>" is made here
 * rather than by ca_task_name.
 */
#define REPORT_NAME_MAX 256

static void put_hex2(char *o, unsigned c)
{
    static const char hex[] = "0123456789abcdef";
    o[0] = '\\';
    o[1] = 'x';
    o[2] = hex[(c >> 4) & 15];
    o[3] = hex[c & 15];
}

static const char *report_name(const ca_task *t, char buf[REPORT_NAME_MAX])
{
    if (!t->name) {
        char digits[24];
        size_t nd = 0;
        uint64_t id = t->id;
        do
            digits[nd++] = (char)('0' + id % 10);
        while ((id /= 10) != 0);
        memcpy(buf, "Task-", 5);
        for (size_t i = 0; i < nd; i++)
            buf[5 + i] = digits[nd - 1 - i];
        buf[5 + nd] = '\0';
        return buf;
    }
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)t->name;
    for (; *p; p++) {
        if (o + 4 + 4 >= REPORT_NAME_MAX) { /* room for an escape and "..." */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        unsigned c = *p;
        if (c == '\n' || c == '\t' || c == '\r' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : '\\';
        } else if (c < 0x20 || c == 0x7f) {
            put_hex2(buf + o, c);
            o += 4;
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

static void report_unretrieved(ca_task *t)
{
    if (t->state != CA__T_DONE || t->status >= 0 || t->retrieved ||
        t->status == -ECANCELED)
        return;
    t->retrieved = 1;
    char nb[REPORT_NAME_MAX];
    fprintf(stderr,
            "cawait: task '%s' (spawned at %s) failed with %s (%s) and was "
            "never joined\n",
            report_name(t, nb), t->where ? t->where : "?",
            ca_err_name(t->status), ca_strerror(t->status));
}

static void slot_free(ca_loop *l, ca_task *t)
{
    struct task_alloc *a = l->task_free;
    t->state = CA__T_FREE;
    t->ready.next = a->free;
    a->free = &t->ready;
}

static void task_collect(ca_loop *l, ca_task *t)
{
    if (__builtin_expect(t->status < 0, 0))
        report_unretrieved(t);
    free(t->name);
    slot_free(l, t);
    l->stats.tasks_live--;
}

static void task_unref(ca_loop *l, ca_task *t)
{
    if (--t->refs == 0)
        task_collect(l, t);
}

static void free_all_tasks(ca_loop *l)
{
    struct task_alloc *a = l->task_free;
    if (!a)
        return;
    FOR_EACH_TASK(a, t)
        task_collect(l, t);
    while (a->arenas) {
        struct task_arena *ar = a->arenas;
        a->arenas = ar->next;
        munmap(ar, ar->bytes);
    }
    free(a);
    l->task_free = NULL;
}

/* ------------------------------------------------------------------------ */
/* Switching                                                                */
/* ------------------------------------------------------------------------ */

static void report_slow(ca_loop *l, ca_task *t, int64_t ns)
{
    l->stats.slow_tasks++;
    char nb[REPORT_NAME_MAX];
    fprintf(stderr,
            "cawait: task '%s' (spawned at %s) held the loop for %.1f ms "
            "without yielding (threshold %.1f ms)\n",
            report_name(t, nb), t->where ? t->where : "?", (double)ns / 1e6,
            (double)l->slow_ns / 1e6);
}

static __attribute__((noinline)) void canary_failed(ca_task *t)
{
    char buf[512], nb[REPORT_NAME_MAX];
    snprintf(buf, sizeof(buf),
             "task '%s' (spawned at %s): stack of %u bytes, red zone "
             "overwritten",
             report_name(t, nb), t->where ? t->where : "?", t->stack_size);
    ca__stack_overflow_abort(buf);
}

/* Work owed by whoever runs right after a switch: release the stack and
 * the running reference of a task that just finished, check the red zone
 * of the task that just left, account its slice in debug mode. */
#define tls_prev (l->prev_task)
#define tls_dead (l->dead_task)

static __attribute__((noinline)) void after_switch_slow(ca_loop *l)
{
    ca_task *prev = tls_prev;
    if (prev && (l->after_work & CA__AFTER_WATCH)) {
#ifndef CAWAIT_CORO_UCONTEXT
        if (l->check_canary && prev->run && prev->run->stack &&
            ca__stack_needs_check(prev->run->stack) &&
            ca__stack_check(prev->run->stack, prev->run->coro.sp) < 0)
            canary_failed(prev);
#endif
        if (l->debug) {
            int64_t now = ca__clock_ns();
            if (now - l->slice_start > l->slow_ns)
                report_slow(l, prev, now - l->slice_start);
        }
    }
    tls_prev = NULL;
    if (l->debug)
        l->slice_start = ca__clock_ns();
    if (l->after_work & CA__AFTER_DEAD) {
        /* The finished task's run state lives on its stack: done with it
         * before the stack goes back to the pool. */
        l->after_work &= ~CA__AFTER_DEAD;
        ca_task *d = tls_dead;
        tls_dead = NULL;
        if (l->check_canary && ca__stack_zone_check(l->dead_stack) < 0)
            canary_failed(d);
#ifdef CAWAIT_CORO_UCONTEXT
        ca__coro_destroy(&d->run->coro);
#endif
        d->run = NULL;
        ca__stack_put(l->stacks, l->dead_stack, l->now);
        l->dead_stack = NULL;
        task_unref(l, d);
    }
}

static inline void after_switch(ca_loop *l)
{
    if (__builtin_expect(l->after_work != 0, 0))
        after_switch_slow(l);
}

static void wake_joiners(ca_task *t)
{
    ca__waitlist_wake_all(&t->joiners, 0);
}

/* Finish a task that never ran (cancelled first, or no stack). */
static void finish_unstarted(ca_loop *l, ca_task *t, int status)
{
    t->status = status;
    t->state = CA__T_DONE;
    l->unfinished--;
    wake_joiners(t);
    task_unref(l, t);
}

/* Give t a stack and a context.  Returns 1 if it can run, 0 if it finished
 * without running. */
static int prepare_new(ca_loop *l, ca_task *t);

static inline int prepare(ca_loop *l, ca_task *t)
{
    if (__builtin_expect(t->state != CA__T_NEW, 1))
        return 1;
    return prepare_new(l, t);
}

static __attribute__((noinline)) int prepare_new(ca_loop *l, ca_task *t)
{
    if (t->cancel_req) {
        finish_unstarted(l, t, -ECANCELED);
        return 0;
    }
    ca__stack *s = ca__stack_get(l->stacks, t->stack_size);
    if (!s) {
        char nb[REPORT_NAME_MAX];
        fprintf(stderr, "cawait: no stack for task '%s' (spawned at %s)\n",
                report_name(t, nb), t->where ? t->where : "?");
        finish_unstarted(l, t, -CA_ESTACK);
        return 0;
    }
    /* The run state takes the top cache lines of the stack; the frames go
     * below it. */
    uintptr_t top = (uintptr_t)s->lo + s->size;
    struct ca__task_run *run =
        (struct ca__task_run *)((top - sizeof(*run)) & ~(uintptr_t)63);
    memset(run, 0, sizeof(*run));
    run->task = t;
    run->stack = s;
    run->timer.slot = CA__TIMER_IDLE;
    run->timer.fire = task_timer_fire;
    t->run = run;
    if (ca__coro_init(&run->coro, s->lo, (size_t)((char *)run - (char *)s->lo),
                      task_entry, t) < 0) {
        t->run = NULL;
        ca__stack_put(l->stacks, s, l->now);
        finish_unstarted(l, t, -ENOMEM);
        return 0;
    }
    return 1;
}

/*
 * Leave `self` (which has already been queued, parked or finished) and run
 * the next ready task directly, or return to the scheduler when the turn
 * is over, a poll is due, or the next node is a callback.  The general
 * path: switch_fast below takes the common case first, except for a
 * finished task (`final`), which comes straight here.
 */
static __attribute__((noinline)) void switch_away_slow(ca_loop *l,
                                                      ca_task *self, int final)
{
    ca__coro *to = &l->sched;
    ca_task *next = NULL;
    for (;;) {
        if (l->slices >= l->turn_end && !ca__loop_turn_nopoll(l))
            break;
        ca__ready *n = l->ready_head;
        if (n->run != task_ready_run)
            break;
        ca__ready_pop(l);
        l->slices++;
        ca_task *t = ca__task_of_ready(n);
        if (t == self) {
            /* Yielded with nothing else to run. */
            self->state = CA__T_RUNNING;
            return;
        }
        if (prepare(l, t)) {
            next = t;
            to = &t->run->coro;
            break;
        }
    }
    l->current = next;
    if (next)
        next->state = CA__T_RUNNING;
    tls_prev = self;
    if (final)
        ca__coro_switch_final(&self->run->coro, to);
    ca__coro_switch(&self->run->coro, to);
    after_switch(l);
}

/*
 * The common case of switch_away: the next node is a task that has run
 * before, and the turn goes on.  Nothing stays live across the switch (the
 * loop is read again from its thread-local), so the callers that use this
 * path save no registers of their own: the context switch saves them.
 * Returns 0, having done nothing, when the general path is needed.
 */
static inline __attribute__((always_inline)) int switch_fast(ca_loop *l,
                                                             ca_task *self)
{
    if (__builtin_expect(l->slices >= l->turn_end, 0) &&
        !ca__loop_turn_nopoll(l))
        return 0;
    ca__ready *n = l->ready_head;
    if (__builtin_expect(n->run != task_ready_run, 0))
        return 0;
    ca_task *next = ca__task_of_ready(n);
    if (__builtin_expect(next->state == CA__T_NEW || next == self, 0))
        return 0;
    ca__ready_pop(l);
    l->slices++;
    l->current = next;
    next->state = CA__T_RUNNING;
    tls_prev = self;
    ca__coro_switch(&self->run->coro, &next->run->coro);
    after_switch(ca__loop());
    return 1;
}

static inline __attribute__((always_inline)) void switch_away(ca_loop *l,
                                                              ca_task *self)
{
    if (!switch_fast(l, self))
        switch_away_slow(l, self, 0);
}

/* Run node of a task popped by the scheduler. */
static void task_ready_run(ca__ready *r)
{
    ca_task *t = ca__task_of_ready(r);
    ca_loop *l = ca__loop();
    if (!prepare(l, t))
        return;
    l->current = t;
    t->state = CA__T_RUNNING;
    if (l->debug)
        l->slice_start = ca__clock_ns();
    ca__coro_switch(&l->sched, &t->run->coro);
    l->current = NULL;
    after_switch(l);
}

static __attribute__((noreturn)) void task_finish(ca_loop *l, ca_task *t,
                                                  int status)
{
    t->status = status;
    t->state = CA__T_DONE;
    l->unfinished--;
    struct ca__task_run *run = t->run;
    if (ca__timer_armed(&run->timer))
        ca__timer_cancel(l, &run->timer);
    free(run->scopes);
    run->scopes = NULL;
    wake_joiners(t);
    l->dead_stack = run->stack;
    run->stack = NULL;
    tls_dead = t;
    l->after_work |= CA__AFTER_DEAD;
    switch_away_slow(l, t, 1);
    __builtin_unreachable();
}

static void task_entry(void *arg)
{
    ca_task *t = arg;
    ca__coro_entered(&t->run->coro);
    ca_loop *l = ca__loop();
    after_switch(l);
    int status = t->fn(t->arg);
    task_finish(l, t, status);
}

/* ------------------------------------------------------------------------ */
/* Park and wake                                                            */
/* ------------------------------------------------------------------------ */

int ca__task_check_slow(ca_task *self)
{
    if (self->cancel_req && !self->run->shield)
        return -ECANCELED;
    int64_t dl = ca__task_deadline(self);
    if (dl != INT64_MAX) {
        int64_t now = ca__clock_ns();
        if (dl <= now) {
            ca__task_deadline_fired(self, now);
            return -ETIMEDOUT;
        }
    }
    return 0;
}

/* Wait until woken; the result is read through the loop, not `self`, so
 * nothing stays live across the switch. */
static inline __attribute__((always_inline)) int park_switch(ca_loop *l,
                                                             ca_task *self)
{
    self->state = CA__T_WAITING;
    switch_away(l, self);
    return ca__loop()->current->run->wake_result;
}

/* ca__task_park with a cancel request, a deadline scope or a timeout. */
static __attribute__((noinline)) int park_slow(ca_loop *l, ca_task *self,
                                               int64_t until)
{
    struct ca__task_run *run = self->run;
    int64_t dl = INT64_MAX;
    if (self->cancel_req | run->nscopes) {
        if (self->cancel_req && !run->shield)
            return -ECANCELED;
        dl = ca__task_deadline(self);
    }
    if (dl != INT64_MAX) {
        int64_t now = ca__clock_ns();
        if (dl <= now) {
            ca__task_deadline_fired(self, now);
            return -ETIMEDOUT;
        }
    }
    int64_t when = until < dl ? until : dl;
    if (when != INT64_MAX) {
        run->timer_is_deadline = dl <= until;
        int r = ca__timer_arm(l, &run->timer, when);
        if (r < 0)
            return r;
    }
    return park_switch(l, self);
}

int ca__task_park(ca_task *self, int64_t until)
{
    ca_loop *l = ca__loop();
    if (__builtin_expect((self->cancel_req | self->run->nscopes) ||
                             until != INT64_MAX,
                         0))
        return park_slow(l, self, until);
    return park_switch(l, self);
}

static void task_timer_fire(ca__timer *tm)
{
    struct ca__task_run *run =
        (struct ca__task_run *)((char *)tm - offsetof(struct ca__task_run, timer));
    ca_task *t = run->task;
    ca__task_withdraw(t);
    if (run->timer_is_deadline) {
        ca__task_deadline_fired(t, tm->when);
        ca__task_wake(t, -ETIMEDOUT);
    } else {
        ca__task_wake(t, CA__WAIT_TIMEOUT);
    }
}

static int debug_env(void)
{
    const char *e = getenv("CAWAIT_DEBUG");
    return e && *e && strcmp(e, "0") != 0;
}

ca_task *ca__task_self_slow(const char *fn)
{
    ca_loop *l = ca__loop();
    if (l && l->current)
        return l->current;
    if ((l && l->debug) || (!l && debug_env()))
        fprintf(stderr,
                "cawait: %s() called outside a task (%s): blocking calls "
                "need a task; returning -EPERM\n",
                fn, l ? "from a callback on the loop" : "no loop running");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Spawn, join, cancel                                                      */
/* ------------------------------------------------------------------------ */

int ca__spawn_ex(ca_task **out, ca_fn fn, void *arg,
                 const ca_spawn_opts *opts, const char *where)
{
    ca_loop *l = ca__loop();
    if (out)
        *out = NULL;
    if (!fn || !out)
        return -EINVAL;
    if (!l)
        return -CA_ENOLOOP;
    size_t ss = opts && opts->stack_size ? opts->stack_size : l->default_stack;
    if (ss < CA_STACK_MIN)
        ss = CA_STACK_MIN;
    if (ss > (1u << 30))
        return -EINVAL;
    char *name = NULL;
    if (opts && opts->name && !(name = strdup(opts->name)))
        return -ENOMEM;
    ca_task *t = task_alloc(l);
    if (!t) {
        free(name);
        return -ENOMEM;
    }
    /* Every field by name: a compound literal made gcc zero the struct
     * with `rep stos` first, nearly half of the time spawn spent in here.
     * The assertion below the function catches a field added to ca_task
     * and not to this list. */
    t->ready.next = NULL;
    t->ready.run = task_ready_run;
    t->run = NULL;
    t->fn = fn;
    t->arg = arg;
    t->status = 0;
    t->state = CA__T_NEW;
    t->cancel_req = 0;
    t->retrieved = 0;
    t->shielded = 0;
    t->refs = 2; /* the handle, and "not finished yet" */
    t->stack_size = (uint32_t)ss;
    t->joiners.head = t->joiners.tail = NULL;
    t->name = name;
    t->where = where;
    t->id = ++l->next_task_id;
    t->userdata = NULL;
    l->stats.tasks_spawned++;
    l->stats.tasks_live++;
    l->unfinished++;
    if (l->stopping)
        t->cancel_req = 1;
    *out = t;

    ca_task *self = l->current;
    if (opts && opts->eager && self && !t->cancel_req) {
        /* Run t now; the spawner resumes as soon as t first blocks. */
        if (!prepare(l, t))
            return 0;
        self->state = CA__T_READY;
        ca__ready_push_front(l, &self->ready);
        l->current = t;
        t->state = CA__T_RUNNING;
        l->slices++; /* the eager slice */
        tls_prev = self;
        ca__coro_switch(&self->run->coro, &t->run->coro);
        after_switch(l);
        return 0;
    }
    ca__ready_push(l, &t->ready);
    return 0;
}

/* ca__spawn_ex sets each of these fields; a new field needs a line there. */
_Static_assert(sizeof(ca_task) ==
                   sizeof(ca__ready) + 3 * sizeof(void *) /* run fn arg */ +
                       4 * sizeof(uint32_t) /* status flags refs stack */ +
                       sizeof(ca__waitlist) + 2 * sizeof(char *) /* names */ +
                       sizeof(uint64_t) + sizeof(void *) /* id userdata */,
               "ca_task changed: update the field list in ca__spawn_ex");

ca_task *ca__spawn(ca_fn fn, void *arg, const ca_spawn_opts *opts,
                   const char *where)
{
    ca_task *t;
    return ca__spawn_ex(&t, fn, arg, opts, where) == 0 ? t : NULL;
}

int ca_join(ca_task *t)
{
    if (!t)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_join");
    if (!self)
        return -EPERM;
    if (t == self)
        return -EDEADLK;
    if (t->state == CA__T_DONE) {
        t->retrieved = 1;
        return t->status;
    }
    /* Hold a reference while waiting: another task may release the last
     * handle to t meanwhile, and t must outlive our look at its status. */
    ca_loop *l = ca__loop();
    t->refs++;
    ca__waiter w = {.task = self};
    ca__waitlist_push(&t->joiners, &w);
    int r = ca__task_park(self, INT64_MAX);
    if (r == 0 && t->state == CA__T_DONE) {
        t->retrieved = 1;
        r = t->status;
    } else {
        ca__waitlist_remove(&t->joiners, &w);
        if (r >= 0)
            r = -EINTR;
    }
    task_unref(l, t);
    return r;
}

int ca_cancel(ca_task *t)
{
    if (!t)
        return -EINVAL;
    if (t->state == CA__T_DONE)
        return 0;
    t->cancel_req = 1;
    if (t->state == CA__T_WAITING && !t->run->shield) {
        ca__task_withdraw(t);
        ca__task_wake(t, -ECANCELED);
    }
    return 0;
}

void ca_task_release(ca_task *t)
{
    ca_loop *l = ca__loop();
    if (!t || !l)
        return;
    task_unref(l, t);
}

void ca_detach(ca_task *t)
{
    ca_task_release(t);
}

ca_task *ca_current(void)
{
    ca_loop *l = ca__loop();
    return l ? l->current : NULL;
}

const char *ca_task_name(const ca_task *t)
{
    if (!t)
        return "(null)";
    if (t->name)
        return t->name;
    /* Made on first use: most tasks are never asked their name. */
    char buf[32];
    snprintf(buf, sizeof(buf), "Task-%" PRIu64, t->id);
    ((ca_task *)t)->name = strdup(buf);
    return t->name ? t->name : "Task-?";
}

int ca_task_set_name(ca_task *t, const char *name)
{
    if (!t || !name)
        return -EINVAL;
    char *n = strdup(name);
    if (!n)
        return -ENOMEM;
    free(t->name);
    t->name = n;
    return 0;
}

const char *ca_task_where(const ca_task *t)
{
    return t && t->where ? t->where : "?";
}

uint64_t ca_task_id(const ca_task *t)
{
    return t ? t->id : 0;
}

int ca_task_done(const ca_task *t)
{
    return t && t->state == CA__T_DONE;
}

int ca_task_cancelled(const ca_task *t)
{
    return t && t->state == CA__T_DONE && t->status == -ECANCELED;
}

int ca_task_cancel_requested(const ca_task *t)
{
    return t && t->cancel_req;
}

int ca_task_status(ca_task *t)
{
    if (!t)
        return -EINVAL;
    if (t->state != CA__T_DONE)
        return -EAGAIN;
    t->retrieved = 1;
    return t->status;
}

void *ca_task_userdata(const ca_task *t)
{
    return t ? t->userdata : NULL;
}

void ca_task_set_userdata(ca_task *t, void *p)
{
    if (t)
        t->userdata = p;
}

/* ------------------------------------------------------------------------ */
/* Sleep and yield                                                          */
/* ------------------------------------------------------------------------ */

/* ca_yield's switching half, out of line so that the path that does not
 * switch saves no registers. */
static __attribute__((noinline)) int yield_switch(ca_loop *l, ca_task *self)
{
    self->state = CA__T_READY;
    ca__ready_push(l, &self->ready);
    switch_away(l, self);
    return 0;
}

/* Nothing else ready, no poll due, no timer due: yielding would put the
 * task at the head of an empty queue and take it out again. */
static inline int yield_needless(ca_loop *l)
{
    return l->nready == 0 &&
           l->slices - l->poll_slice < CA__EVENT_INTERVAL - 1 &&
           !ca__timers_due(l);
}

static __attribute__((noinline)) int yield_slow(ca_loop *l, ca_task *self)
{
    if (!self)
        return ca__task_self("ca_yield") ? 0 : -EPERM;
    int r = ca__task_check(self);
    if (r < 0)
        return r;
    if (yield_needless(l)) {
        l->slices++;
        return 0;
    }
    return yield_switch(l, self);
}

int ca_yield(void)
{
    ca_loop *l = ca__loop();
    ca_task *self = l ? l->current : NULL;
    if (__builtin_expect(!self || (self->cancel_req | self->run->nscopes), 0))
        return yield_slow(l, self);
    if (yield_needless(l)) {
        l->slices++;
        return 0;
    }
    return yield_switch(l, self);
}

int ca_sleep(double seconds)
{
    if (isnan(seconds) || seconds < 0)
        return -EINVAL;
    if (seconds == 0)
        return ca_yield();
    ca_task *self = ca__task_self("ca_sleep");
    if (!self)
        return -EPERM;
    int64_t until;
    if (seconds > 9.0e9)
        until = INT64_MAX - 1;
    else
        until = ca__clock_ns() + (int64_t)(seconds * 1e9);
    int r = ca__task_park(self, until);
    return r == CA__WAIT_TIMEOUT ? 0 : (r > 0 ? 0 : r);
}

/* ------------------------------------------------------------------------ */
/* ca_run                                                                   */
/* ------------------------------------------------------------------------ */

static int overflow_hook(void *addr, void *sp, char *buf, size_t len)
{
    ca_loop *l = ca__loop();
    if (!l || !l->current || !l->current->run || !l->current->run->stack)
        return 0;
    ca_task *t = l->current;
    if (!ca__stack_is_overflow(t->run->stack, addr, sp))
        return 0;
    /* Signal context: report_name allocates nothing. */
    char nb[REPORT_NAME_MAX];
    const char *name = report_name(t, nb);
    snprintf(buf, len,
             "task '%s' (spawned at %s): stack of %u bytes exhausted (fault "
             "at %p, guard %s)",
             name, t->where ? t->where : "?", t->stack_size, addr,
             ca__stack_guard_name((enum ca__guard_mode)t->run->stack->guard));
    return 1;
}

static size_t env_size(const char *name, size_t dflt)
{
    const char *e = getenv(name);
    if (!e || !*e)
        return dflt;
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    if (*end == 'k' || *end == 'K')
        v *= 1024;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024;
    return v ? (size_t)v : dflt;
}

static void cancel_all(ca_loop *l)
{
    FOR_EACH_TASK((struct task_alloc *)l->task_free, t)
        if (t->state != CA__T_DONE)
            ca_cancel(t);
}

/*
 * ca_run's SIGINT and SIGTERM (asyncio.Runner): the first one cancels the
 * main task wherever it is blocked; a second one kills the process with
 * that signal at once.
 *
 * Why here and not behind a hook that src/io/signal.c fills in: with the
 * static library such a hook would only be set in programs that happen to
 * link signal.o, and the watch needs nothing from io/: the signals blocked
 * in this thread, a signalfd, and a non-task fd waiter (like a stream's
 * flush waiter) that reads it in the loop's context.  io/ sits above and
 * calls down: while the program captures one of these signals itself
 * (ca_signal_*), signal.c takes it over with ca__run_signal_claim, as
 * asyncio's add_signal_handler replaces the Runner's SIGINT handler.
 *
 * asyncio.Runner's rules decide which signals are watched: only on the main
 * thread, only a signal at its default disposition that is not blocked, so
 * a program that ignores SIGINT (a background job), handles it, or waits
 * for it with sigwait keeps its behaviour.  When ca_run returns the signals
 * are unblocked again: mask and dispositions are as before.
 */
struct run_sig {
    ca__exit_hook hook; /* finds the watch from the loop, closes it at the end */
    ca__fdwait waiter;
    ca_task *main;      /* NULL once main's handle is released */
    int fd;
    int received;       /* SIGINT/SIGTERM read so far */
    sigset_t watched;   /* what we blocked */
    uint32_t claims[2]; /* SIGINT, SIGTERM: captured by the program */
};

static __attribute__((noreturn)) void run_sig_die(int signo)
{
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    signal(signo, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    raise(signo);
    _exit(128 + signo);
}

static void run_sig_mask(const struct run_sig *rs, sigset_t *set)
{
    *set = rs->watched;
    if (rs->claims[0])
        sigdelset(set, SIGINT);
    if (rs->claims[1])
        sigdelset(set, SIGTERM);
}

static void run_sig_read(struct run_sig *rs)
{
    struct signalfd_siginfo si[4];
    for (;;) {
        ssize_t n = read(rs->fd, si, sizeof(si));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < (ssize_t)sizeof(si[0]))
            return; /* EAGAIN: nothing more */
        for (size_t i = 0; i < (size_t)n / sizeof(si[0]); i++) {
            if (++rs->received > 1)
                run_sig_die((int)si[i].ssi_signo);
            if (rs->main)
                ca_cancel(rs->main);
        }
    }
}

static void run_sig_arm(ca_loop *l, struct run_sig *rs);

static void run_sig_wake(ca__fdwait *w, int result)
{
    struct run_sig *rs =
        (struct run_sig *)((char *)w - offsetof(struct run_sig, waiter));
    if (result < 0)
        return; /* forgotten: the watch is closing */
    run_sig_read(rs);
    run_sig_arm(ca__loop(), rs);
}

static void run_sig_arm(ca_loop *l, struct run_sig *rs)
{
    while (ca__fd_take_ready(l, rs->fd, CA_READ))
        run_sig_read(rs);
    rs->waiter = (ca__fdwait){.fd = rs->fd, .events = CA_READ,
                              .wake = run_sig_wake};
    ca__fd_add_waiter(l, &rs->waiter);
}

static void run_sig_exit(ca_loop *l, ca__exit_hook *h)
{
    struct run_sig *rs = (struct run_sig *)h;
    run_sig_read(rs); /* a signal during teardown still counts */
    ca_close(rs->fd);
    rs->fd = -1;
    pthread_sigmask(SIG_UNBLOCK, &rs->watched, NULL);
}

static int run_sig_wanted(int signo, const sigset_t *mask)
{
    struct sigaction sa;
    if (sigismember(mask, signo) == 1 || sigaction(signo, NULL, &sa) < 0)
        return 0;
    return !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL;
}

static void run_sig_start(ca_loop *l, struct run_sig *rs, ca_task *m,
                          const ca_run_opts *opts)
{
    memset(rs, 0, sizeof(*rs));
    rs->fd = -1;
    sigemptyset(&rs->watched);
    const char *e = getenv("CAWAIT_NO_SIGNAL_HANDLERS");
    if ((opts && opts->no_signal_handlers) || (e && *e && strcmp(e, "0")) ||
        syscall(SYS_gettid) != getpid())
        return;
    sigset_t cur;
    if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0)
        return;
    if (run_sig_wanted(SIGINT, &cur))
        sigaddset(&rs->watched, SIGINT);
    if (run_sig_wanted(SIGTERM, &cur))
        sigaddset(&rs->watched, SIGTERM);
    if (sigisemptyset(&rs->watched))
        return;
    /* Block first, then read: a signal in between waits in the signalfd. */
    pthread_sigmask(SIG_BLOCK, &rs->watched, NULL);
    rs->fd = signalfd(-1, &rs->watched, SFD_NONBLOCK | SFD_CLOEXEC);
    if (rs->fd < 0 || ca__fd_register(l, rs->fd) < 0) {
        /* Out of descriptors: run without the watch rather than fail. */
        if (rs->fd >= 0)
            close(rs->fd);
        rs->fd = -1;
        pthread_sigmask(SIG_UNBLOCK, &rs->watched, NULL);
        sigemptyset(&rs->watched);
        return;
    }
    rs->main = m;
    run_sig_arm(l, rs);
    rs->hook.fn = run_sig_exit;
    ca__loop_at_exit(l, &rs->hook);
}

int ca__run_signal_claim(ca_loop *l, int signo, int claim)
{
    if (!l || (signo != SIGINT && signo != SIGTERM))
        return 0;
    ca__exit_hook *h = l->exit_hooks;
    while (h && h->fn != run_sig_exit)
        h = h->next;
    struct run_sig *rs = (struct run_sig *)h;
    if (!rs || !sigismember(&rs->watched, signo))
        return 0;
    uint32_t *c = &rs->claims[signo == SIGTERM];
    if (claim)
        ++*c;
    else if (*c > 0)
        --*c;
    sigset_t set;
    run_sig_mask(rs, &set);
    if (signalfd(rs->fd, &set, 0) < 0)
        return -errno;
    return 1;
}

int ca_run(ca_fn main, void *arg)
{
    return ca_run_ex(main, arg, NULL);
}

int ca_run_ex(ca_fn main, void *arg, const ca_run_opts *opts)
{
    if (!main)
        return -EINVAL;
    if (ca__loop())
        return -EBUSY;
    ca_loop *l = ca__loop_new();
    if (!l)
        return -ENOMEM;
    int r = ca__coro_init_thread(&l->sched);
    if (r < 0) {
        ca__loop_free(l);
        return r;
    }
    ca__stack_set_overflow_hook(overflow_hook);
    ca__stack_thread_init(&l->altstack);

    l->default_stack = opts && opts->stack_size
                           ? opts->stack_size
                           : env_size("CAWAIT_STACK_SIZE", CA_STACK_DEFAULT);
    if (l->default_stack < CA_STACK_MIN)
        l->default_stack = CA_STACK_MIN;
    l->debug = (opts && opts->debug) || debug_env();
    if (l->debug)
        l->after_work |= CA__AFTER_WATCH;
    double slow = opts && opts->slow_ms > 0 ? opts->slow_ms : 0;
    if (slow <= 0) {
        const char *e = getenv("CAWAIT_SLOW_MS");
        slow = e ? strtod(e, NULL) : 0;
    }
    l->slow_ns = (int64_t)((slow > 0 ? slow : 100.0) * 1e6);
    ca__tls_loop = l;

    ca_spawn_opts so = {.name = opts && opts->main_name ? opts->main_name
                                                        : "main"};
    ca_task *m;
    struct run_sig rs;
    r = ca__spawn_ex(&m, main, arg, &so, "ca_run");
    if (r == 0) {
        run_sig_start(l, &rs, m, opts);
        while (m->state != CA__T_DONE)
            ca__loop_run_once(l);
        r = m->status;
        m->retrieved = 1;
        /* asyncio.run: cancel what is left and wait for it, and for the
         * sockets the loop is still closing (lingering closes end at the
         * peer's end of stream or within their time limit). */
        l->stopping = 1;
        cancel_all(l);
        if (l->linger_stop)
            l->linger_stop(l);
        while (l->unfinished > 0 || l->nlingering > 0)
            ca__loop_run_once(l);
        rs.main = NULL;
        ca_task_release(m);
    }
    /* Upper layers' per-loop resources (the default thread pool). */
    ca__loop_run_exit_hooks(l);
    ca__loop_shutdown(l);
    /* Callbacks still queued or scheduled are dropped with the loop. */
    free_all_tasks(l);
    ca__stack_thread_done(l->altstack);
    ca__coro_destroy(&l->sched);
    ca__tls_loop = NULL;
    ca__loop_free(l);
    return r;
}
