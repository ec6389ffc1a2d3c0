/*
 * Tasks (internal).
 *
 * Lifecycle (one setter, task_set_state, would log transitions in debug):
 *
 *   NEW ──run──> RUNNING <──> READY / WAITING ──return──> DONE
 *    │                                                     ^
 *    └────────── cancelled before it ever ran ─────────────┘
 *
 * NEW tasks sit in the ready queue without a stack; the stack is taken from
 * the pool when the task first runs and returned the moment it finishes, so
 * a finished task costs only its struct.  The struct lives while references
 * remain: one for the spawner's handle, one while the task has not finished.
 *
 * Every blocking call goes through ca__task_park: it checks cancellation and
 * the deadline scopes, arms the task's single timer for the earlier of its
 * own timeout and the effective deadline, and switches away.  Whoever wakes
 * the task (an fd event, a finishing task, a timer, a cancel) passes the
 * result through ca__task_wake; the first wake wins, later ones are ignored,
 * so a wake-up is never lost and never delivered twice.
 */
#ifndef CA_TASK_H
#define CA_TASK_H

#include "loop/loop.h"

enum ca__task_state {
    CA__T_NEW = 0,
    CA__T_READY,
    CA__T_RUNNING,
    CA__T_WAITING,
    CA__T_DONE,
};

/* ca__task_park's result when the wait's own timeout expired. */
#define CA__WAIT_TIMEOUT 1

/*
 * A task waiting in a list: joiners of a task, waiters of a lock, an event,
 * a queue.  The node lives on the waiting task's stack.  Whoever wakes it
 * unlinks it first.  `notify`, when set, is called instead of waking
 * `task` (combinators that wait on many tasks count completions with it);
 * `data` is free for the list's owner (a queue's item slot, a lock grant).
 * `gone`: the task of a ca__wait_in node was woken by something else (a
 * cancel, a deadline) and has not run yet; it stays linked until it runs,
 * but ca__waitlist_pop skips it, so a grant made in that same turn (a lock
 * handed over, a permit, a notify) goes to the next waiter instead of
 * being lost on a task that will return -ECANCELED.
 */
typedef struct ca__waiter ca__waiter;
struct ca__waiter {
    ca__waiter *next, *prev;
    ca_task *task;
    void (*notify)(ca__waiter *w);
    void *data;
    int gone;
};

typedef struct ca__waitlist {
    ca__waiter *head, *tail;
} ca__waitlist;

struct ca__scope {
    int64_t deadline;
    int64_t eff;       /* earliest deadline at this shield level */
    uint16_t level;    /* shield depth when pushed */
    uint8_t fired;
};

/*
 * What a task needs only while it has a stack: its context, its timer, its
 * deadline and shield scopes, the result of its current wait.  It lives at
 * the top of the task's own stack, so a task that has not started yet, or
 * has finished, costs only struct ca_task (104 bytes): a million spawned
 * tasks are 100 MB, not 170.
 */
struct ca__task_run {
    ca__coro coro;
    ca_task *task;
    ca__stack *stack;
    ca__timer timer;
    struct ca__scope *scopes;
    ca__waiter *wait_node; /* its node while parked in ca__wait_in */
    int wake_result;
    uint16_t shield;
    uint16_t nscopes, capscopes;
    uint8_t timer_is_deadline;
};

struct ca_task {
    ca__ready ready;
    struct ca__task_run *run; /* NULL unless the task has a stack */
    ca_fn fn;
    void *arg;
    int status;
    uint8_t state;
    uint8_t cancel_req;
    uint8_t retrieved;
    uint8_t shielded; /* ca_task_shield: combinators do not cancel it */
    uint32_t refs;
    uint32_t stack_size;
    ca__waitlist joiners;
    char *name; /* NULL: "Task-<id>", made on first ca_task_name */
    const char *where;
    uint64_t id;
    void *userdata;
};

/* state of a slot on the loop's free list (never a live task) */
#define CA__T_FREE 0xff

static inline ca_task *ca__task_of_ready(ca__ready *r)
{
    return (ca_task *)((char *)r - offsetof(ca_task, ready));
}

/* Block the running task until woken or until `until` (absolute ns,
 * INT64_MAX: no own timeout).  Returns the waker's result,
 * CA__WAIT_TIMEOUT, -ECANCELED or -ETIMEDOUT.  The caller unregisters its
 * waiter when the result did not come from that waiter. */
int ca__task_park(ca_task *self, int64_t until);
/* Wake t if it is waiting; ignored otherwise. */
static inline void ca__task_wake(ca_task *t, int result)
{
    if (t->state != CA__T_WAITING)
        return;
    ca_loop *l = ca__loop();
    struct ca__task_run *run = t->run;
    if (ca__timer_armed(&run->timer))
        ca__timer_cancel(l, &run->timer);
    run->wake_result = result;
    t->state = CA__T_READY;
    ca__ready_push(l, &t->ready);
}
/* Before a wake that is not a grant (a cancel, the task's timer): if t is
 * parked in ca__wait_in, mark its node gone so that no grant of this turn
 * is spent on it (a grant pops the node before waking, so it never needs
 * this). */
static inline void ca__task_withdraw(ca_task *t)
{
    ca__waiter *w = t->run->wait_node;
    if (w) {
        w->gone = 1;
        t->run->wait_node = NULL;
    }
}
/* -ECANCELED / -ETIMEDOUT if a blocking call of self must fail now, else 0. */
int ca__task_check_slow(ca_task *self);
static inline int ca__task_check(ca_task *self)
{
    if (__builtin_expect(!(self->cancel_req | self->run->nscopes), 1))
        return 0;
    return ca__task_check_slow(self);
}
/* The running task; if none, returns NULL and reports misuse of `fn` in
 * debug mode. */
ca_task *ca__task_self_slow(const char *fn);
static inline ca_task *ca__task_self(const char *fn)
{
    ca_loop *l = ca__loop();
    if (__builtin_expect(l && l->current, 1))
        return l->current;
    return ca__task_self_slow(fn);
}

static inline void ca__waitlist_push(ca__waitlist *l, ca__waiter *w)
{
    w->gone = 0;
    w->next = NULL;
    w->prev = l->tail;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
}

static inline void ca__waitlist_remove(ca__waitlist *l, ca__waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else if (l->head == w)
        l->head = w->next;
    else
        return; /* not linked */
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    w->next = w->prev = NULL;
}

/* Unlink and return the first waiter that is not gone (gone ones met on
 * the way are unlinked too), or NULL. */
static inline ca__waiter *ca__waitlist_pop(ca__waitlist *l)
{
    ca__waiter *w;
    while ((w = l->head) != NULL) {
        l->head = w->next;
        if (l->head)
            l->head->prev = NULL;
        else
            l->tail = NULL;
        w->next = w->prev = NULL;
        if (__builtin_expect(!w->gone, 1))
            break;
    }
    return w;
}
/* 1 if w is linked in l. */
static inline int ca__waitlist_linked(const ca__waitlist *l,
                                      const ca__waiter *w)
{
    return w->prev != NULL || l->head == w;
}
/* Pop the first waiter and wake its task with result (or notify it).
 * Returns 1 if there was one. */
int ca__waitlist_wake_one(ca__waitlist *l, int result);
/* Wake every waiter; returns how many. */
int ca__waitlist_wake_all(ca__waitlist *l, int result);

/* Park the running task in list l until woken (result from the waker),
 * cancelled or past its deadline; unlinks itself if it was not woken.
 * Returns the wake result, -ECANCELED, -ETIMEDOUT; `w` may carry data. */
static inline int ca__wait_in(ca__waitlist *l, ca__waiter *w)
{
    ca_task *self = ca__loop()->current;
    struct ca__task_run *run = self->run;
    w->task = self;
    w->notify = NULL;
    ca__waitlist_push(l, w);
    run->wait_node = w;
    int r = ca__task_park(self, INT64_MAX);
    run->wait_node = NULL;
    if (__builtin_expect(ca__waitlist_linked(l, w), 0))
        ca__waitlist_remove(l, w);
    return r;
}

/* Deadline helpers (deadline.c). */
int64_t ca__task_deadline(const ca_task *t);
void ca__task_deadline_fired(ca_task *t, int64_t now);

/* ca_run's SIGINT/SIGTERM watch (task.c): claim = 1 takes signo out of
 * ca_run's default handling while the program captures it (src/io/signal.c),
 * claim = 0 gives it back.  Returns 1 if ca_run handles signo (it is then
 * blocked by ca_run already), 0 if not, or a negative errno. */
int ca__run_signal_claim(ca_loop *l, int signo, int claim);

#endif
