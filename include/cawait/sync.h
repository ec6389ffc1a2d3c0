/*
 * cawait synchronization primitives, queues and generators (asyncio.Lock,
 * Event, Condition, Semaphore, BoundedSemaphore, Barrier, Queue and async
 * generators).  Included by <cawait.h>; do not include directly.
 *
 * All of them belong to the loop of the thread that uses them and are not
 * thread-safe.  Every blocking call honours cancellation (-ECANCELED) and
 * deadline scopes (-ETIMEDOUT) and returns -EPERM outside a task.  A waiter
 * that is cancelled never steals or loses a wake-up: whatever it was granted
 * in the same turn is passed on to the next waiter.
 *
 * Lock, Event, Condition, Semaphore and Barrier are small values users keep
 * anywhere (on a task's stack, in a struct): fixed-size storage, valid when
 * zeroed or set from the CA_*_INIT initialisers, no destroy call needed as
 * long as no task waits on them.
 */
#ifndef CAWAIT_SYNC_H
#define CAWAIT_SYNC_H

/* ------------------------------------------------------------------------ */
/* Lock                                                                     */
/* ------------------------------------------------------------------------ */

/* A FIFO-fair, non-reentrant mutex for tasks.  Zero is unlocked. */
typedef struct ca_lock {
    uint64_t opaque_[4];
} ca_lock;
#define CA_LOCK_INIT                                                           \
    {                                                                          \
        {                                                                      \
            0                                                                  \
        }                                                                      \
    }

/* Acquire l, waiting in FIFO order.  Returns 0, -EDEADLK if the caller holds
 * it already, -ECANCELED/-ETIMEDOUT (then the lock is not held), -EINVAL,
 * -EPERM outside a task.  Blocking. */
CA_EXTERN int ca_lock_acquire(ca_lock *l);
/* Acquire l if it is free and nobody waits: 0, or -EBUSY; -EINVAL, -EPERM
 * outside a task.  Never blocks. */
CA_EXTERN int ca_lock_try_acquire(ca_lock *l);
/* Release l; ownership passes to the first waiter.  Returns 0, -EPERM if the
 * caller is not the owner, -EINVAL.  Never blocks. */
CA_EXTERN int ca_lock_release(ca_lock *l);
/* 1 if l is held, else 0. */
CA_EXTERN int ca_lock_locked(const ca_lock *l);

/* ------------------------------------------------------------------------ */
/* Event                                                                    */
/* ------------------------------------------------------------------------ */

/* A flag tasks can wait for.  Zero is clear. */
typedef struct ca_event {
    uint64_t opaque_[3];
} ca_event;
#define CA_EVENT_INIT                                                          \
    {                                                                          \
        {                                                                      \
            0                                                                  \
        }                                                                      \
    }

/* Set the flag and wake every waiter.  Returns 0 or -EINVAL. */
CA_EXTERN int ca_event_set(ca_event *e);
/* Clear the flag.  Returns 0 or -EINVAL. */
CA_EXTERN int ca_event_clear(ca_event *e);
/* 1 if set, else 0. */
CA_EXTERN int ca_event_is_set(const ca_event *e);
/* Wait until the flag is set (returns at once if it is).  Returns 0,
 * -ECANCELED, -ETIMEDOUT, -EINVAL, -EPERM.  Blocking. */
CA_EXTERN int ca_event_wait(ca_event *e);

/* ------------------------------------------------------------------------ */
/* Condition                                                                */
/* ------------------------------------------------------------------------ */

/* A condition variable bound to a lock (asyncio.Condition).  The fields are
 * private; they are spelled out only so that CA_COND_INIT can be static. */
typedef struct ca_cond {
    ca_lock *lock_;
    void *private_[2];
} ca_cond;
#define CA_COND_INIT(lockp)                                                    \
    {                                                                          \
        (lockp), { NULL, NULL }                                                \
    }

/* Bind c to lock l (or use CA_COND_INIT(&l)).  Returns 0 or -EINVAL. */
CA_EXTERN int ca_cond_init(ca_cond *c, ca_lock *l);
/* Release the lock, wait for a notify, re-acquire the lock, return 0.  The
 * caller must hold the lock (-EPERM otherwise).  On -ECANCELED/-ETIMEDOUT
 * the lock is re-acquired too before returning, as in asyncio.  Blocking. */
CA_EXTERN int ca_cond_wait(ca_cond *c);
/* Wait until pred(arg) is true, re-checking after each notify; returns 0
 * with the lock held, or an error as ca_cond_wait.  Blocking. */
CA_EXTERN int ca_cond_wait_for(ca_cond *c, int (*pred)(void *arg), void *arg);
/* Wake up to n waiters (n <= 0: none).  The caller must hold the lock.
 * Returns the number woken, or -EPERM/-EINVAL. */
CA_EXTERN int ca_cond_notify(ca_cond *c, int n);
/* Wake every waiter.  Returns the number woken, or -EPERM/-EINVAL. */
CA_EXTERN int ca_cond_notify_all(ca_cond *c);

/* ------------------------------------------------------------------------ */
/* Semaphore and BoundedSemaphore                                           */
/* ------------------------------------------------------------------------ */

/* Private fields, spelled out only so that the initialisers can be static:
 * `static ca_sem s = CA_SEM_INIT(4);` is asyncio.Semaphore(4). */
typedef struct ca_sem {
    unsigned value_;
    unsigned initial_;
    int bounded_;
    void *private_[2];
} ca_sem;
#define CA_SEM_INIT(n)                                                         \
    {                                                                          \
        (n), (n), 0, { NULL, NULL }                                            \
    }
#define CA_BOUNDED_SEM_INIT(n)                                                 \
    {                                                                          \
        (n), (n), 1, { NULL, NULL }                                            \
    }

/* Initialise s with `value` permits (or use the initialisers above);
 * bounded: releasing above the initial value is an error
 * (asyncio.BoundedSemaphore).  Returns 0 or -EINVAL. */
CA_EXTERN int ca_sem_init(ca_sem *s, unsigned value, int bounded);
/* Take a permit, waiting in FIFO order.  Returns 0, -ECANCELED, -ETIMEDOUT
 * (no permit taken), -EINVAL, -EPERM.  Blocking. */
CA_EXTERN int ca_sem_acquire(ca_sem *s);
/* Take a permit if one is free and nobody waits: 0 or -EAGAIN. */
CA_EXTERN int ca_sem_try_acquire(ca_sem *s);
/* Return a permit (to the first waiter, if any).  Returns 0, -EOVERFLOW for
 * a bounded semaphore released above its initial value, -EINVAL. */
CA_EXTERN int ca_sem_release(ca_sem *s);
/* Permits free now. */
CA_EXTERN unsigned ca_sem_value(const ca_sem *s);

/* ------------------------------------------------------------------------ */
/* Barrier                                                                  */
/* ------------------------------------------------------------------------ */

/* Private fields, spelled out only so that CA_BARRIER_INIT can be static. */
typedef struct ca_barrier {
    unsigned parties_;
    unsigned count_;
    int broken_;
    void *private_[2];
} ca_barrier;
#define CA_BARRIER_INIT(parties)                                               \
    {                                                                          \
        (parties), 0, 0, { NULL, NULL }                                        \
    }

/* Initialise b for `parties` tasks (>= 1), or use CA_BARRIER_INIT.  Returns
 * 0 or -EINVAL. */
CA_EXTERN int ca_barrier_init(ca_barrier *b, unsigned parties);
/* Wait until `parties` tasks are waiting, then release them all.  Returns
 * this task's arrival index (0 .. parties-1), -CA_EBROKEN if the barrier is
 * broken (aborted, reset while waiting, or a waiter was cancelled),
 * -ECANCELED/-ETIMEDOUT (which break the barrier for the others, unless
 * the round ended before the cancelled task ran: then the round stands and
 * the barrier stays usable), -EPERM.  Blocking. */
CA_EXTERN int ca_barrier_wait(ca_barrier *b);
/* Break the barrier for current waiters (-CA_EBROKEN) and make it usable
 * again.  Returns 0 or -EINVAL. */
CA_EXTERN int ca_barrier_reset(ca_barrier *b);
/* Break the barrier: current and future waiters get -CA_EBROKEN until
 * reset.  Returns 0 or -EINVAL. */
CA_EXTERN int ca_barrier_abort(ca_barrier *b);
/* Tasks waiting now. */
CA_EXTERN unsigned ca_barrier_n_waiting(const ca_barrier *b);
/* 1 if broken. */
CA_EXTERN int ca_barrier_broken(const ca_barrier *b);

/* ------------------------------------------------------------------------ */
/* Queues                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct ca_queue ca_queue;

enum ca_queue_kind {
    CA_QUEUE_FIFO = 0, /* asyncio.Queue */
    CA_QUEUE_LIFO,     /* asyncio.LifoQueue */
    CA_QUEUE_PRIORITY, /* asyncio.PriorityQueue: smallest first by cmp */
};

typedef struct ca_queue_opts {
    enum ca_queue_kind kind;
    /* Maximum number of items; 0: unbounded. */
    size_t maxsize;
    /* 0: items are `void *` values, passed and returned as pointers.
     * > 0: items are values of this many bytes, copied in and out. */
    size_t elem_size;
    /* CA_QUEUE_PRIORITY: order of two items (pointers to the stored items:
     * for elem_size 0, pointers to the `void *` values).  Negative if a
     * comes first.  Items that compare equal come out in FIFO order. */
    int (*cmp)(const void *a, const void *b);
} ca_queue_opts;

/* Create a queue (opts NULL: unbounded FIFO of pointers).  Returns 0 and
 * stores it in *out, or -EINVAL (PRIORITY without cmp), -ENOMEM, or
 * -CA_ENOLOOP.  Free it with ca_queue_free.  Never blocks.  Memory: a
 * bounded queue of up to 1024 items allocates its whole buffer here; other
 * queues start small, double the buffer when full, and halve it again when
 * a get leaves it less than a quarter full (not below its first size, nor
 * below 4 KiB), so after a burst is drained the memory goes back. */
CA_EXTERN int ca_queue_new(ca_queue **out, const ca_queue_opts *opts);
/* Free q.  Tasks still waiting on it are woken with -ESHUTDOWN first;
 * items still queued are dropped (pointer items are not freed). */
CA_EXTERN void ca_queue_free(ca_queue *q);

/* Put an item: for elem_size 0, `item` is the pointer to enqueue; else it
 * points to elem_size bytes to copy.  Waits while the queue is full.
 * Returns 0, -ESHUTDOWN (queue shut down), -ECANCELED/-ETIMEDOUT (nothing
 * was put; a slot granted in the same turn is passed to the next putter),
 * -ENOMEM (an unbounded queue could not grow), -EINVAL, -EPERM (outside a
 * task, even when it would not block).  Blocking. */
CA_EXTERN int ca_queue_put(ca_queue *q, const void *item);
/* Put without waiting: 0, -EAGAIN if full, -ESHUTDOWN, -ENOMEM, -EINVAL. */
CA_EXTERN int ca_queue_put_nowait(ca_queue *q, const void *item);
/* Take the next item into *out (for elem_size 0, `out` is a `void **`; else
 * it receives elem_size bytes).  Waits while the queue is empty.  Returns 0,
 * -ESHUTDOWN once the queue is shut down and empty, -ECANCELED/-ETIMEDOUT
 * (no item was taken), -EINVAL, -EPERM.  Blocking. */
CA_EXTERN int ca_queue_get(ca_queue *q, void *out);
/* Take without waiting: 0, -EAGAIN if empty, -ESHUTDOWN, -EINVAL. */
CA_EXTERN int ca_queue_get_nowait(ca_queue *q, void *out);
/* Mark one item taken with get as processed (for ca_queue_join).  Returns 0
 * or -EINVAL if called more times than items were put. */
CA_EXTERN int ca_queue_task_done(ca_queue *q);
/* Wait until every item put has been marked done.  Returns 0, -ECANCELED,
 * -ETIMEDOUT, -ESHUTDOWN (the queue was freed while waiting), -EPERM.
 * Blocking. */
CA_EXTERN int ca_queue_join(ca_queue *q);
/* asyncio 3.13 Queue.shutdown: putters fail at once with -ESHUTDOWN; getters
 * drain the remaining items and then fail with -ESHUTDOWN.  immediate: the
 * remaining items are dropped (and count as done for join) and getters fail
 * at once.  Returns 0 or -EINVAL. */
CA_EXTERN int ca_queue_shutdown(ca_queue *q, int immediate);
/* Items queued now. */
CA_EXTERN size_t ca_queue_size(const ca_queue *q);
/* 1 if empty / full (never full when unbounded). */
CA_EXTERN int ca_queue_empty(const ca_queue *q);
CA_EXTERN int ca_queue_full(const ca_queue *q);

/* ------------------------------------------------------------------------ */
/* Generators: the C form of `async for` over an async generator           */
/* ------------------------------------------------------------------------ */

typedef struct ca_gen ca_gen;

/* A generator body: runs as its own task; produces values with
 * ca_gen_yield.  Its return value ends the iteration: 0 is a normal end,
 * a negative value is an error the consumer receives. */
typedef int (*ca_gen_fn)(ca_gen *g, void *arg);

/* Create a generator over fn(g, arg).  The producer task starts when the
 * consumer first asks for a value.  Returns 0 and stores it in *out, or
 * -EINVAL, -ENOMEM, -CA_ENOLOOP.  Close it with ca_gen_close. */
CA_EXTERN int ca_gen_new(ca_gen **out, ca_gen_fn fn, void *arg);
/* Ask for the next value: resumes the producer until it yields (returns 1,
 * *value set) or returns (0 after a normal end; its negative status after a
 * failure; -EPIPE once the end was already reported).  -ECANCELED and
 * -ETIMEDOUT come from the consumer's own cancellation or deadline; the
 * producer is then left where it was.  Blocking. */
CA_EXTERN int ca_gen_next(ca_gen *g, void **value);
/* Like ca_gen_next, but ca_gen_yield in the producer receives `in` as the
 * value sent (generator.asend).  Sending a non-NULL value to a generator
 * that has not started yet is -EINVAL (nothing could receive it), as in
 * Python.  Both return -EBUSY if another task is already waiting in
 * next/send on g, -EDEADLK if called by the producer itself.  A request
 * abandoned with -ECANCELED/-ETIMEDOUT stays pending, and the next request
 * collects its answer; ca_gen_send of a different value meanwhile is
 * -EBUSY (the value would never reach the producer): collect the pending
 * answer with ca_gen_next, or by sending the same value again. */
CA_EXTERN int ca_gen_send(ca_gen *g, void *in, void **value);
/* In the producer: hand `value` to the consumer and wait for the next
 * request; *sent (if not NULL) receives the value sent with it (NULL for
 * ca_gen_next).  Returns 0, or -ECANCELED when the consumer closes the
 * generator (the producer should clean up and return), -EPERM when called
 * from any task but the producer.  Blocking. */
CA_EXTERN int ca_gen_yield(ca_gen *g, void *value, void **sent);
/* Close the generator: cancel the producer if it is still running, wait
 * until it has returned, free g.  Returns the producer's status (0 for a
 * normal end or cancellation at a yield), -EINVAL, -EBUSY while a consumer
 * waits in next (g is not freed), -EDEADLK from the producer itself, -EPERM
 * outside a task while the producer still runs (g is not freed).  Blocking
 * (but not a cancellation point: it always completes). */
CA_EXTERN int ca_gen_close(ca_gen *g);

#endif /* CAWAIT_SYNC_H */
