/*
 * Thread pools: ca_to_thread, job handles (run_in_executor), the default
 * pool of each loop, shutdown and statistics.
 *
 * Threads and the loop share little, and each shared thing has one rule:
 *
 *  - The queue (a doubly linked list of jobs, so a queued job can be taken
 *    out in O(1) when it is cancelled) and the idle-thread bookkeeping live
 *    under pool->mu.  The loop pushes, threads pop; each takes the lock
 *    once per job.
 *  - A thread that runs out of work spins for a short while (at most
 *    max_spinners threads at a time) watching nq_hint, then sleeps on its
 *    own futex word: waking one thread is one FUTEX_WAKE on that word, with
 *    no herd.  The loop wakes a sleeper only when no thread is `looking`:
 *    spinning, woken and not yet at the queue, or done with a job and on
 *    its way back to the queue (so a task that submits again right after
 *    its result arrived does not pay for a wake-up).  A thread that takes
 *    a job while more wait wakes the next sleeper itself, so a burst of
 *    submissions costs the loop one wake-up.
 *  - Finished jobs go onto a lock-free stack (done_head).  The thread that
 *    pushes onto an empty stack signals the loop: it sets wake_pending and,
 *    if it was clear, writes the pool's eventfd.  The loop clears
 *    wake_pending before it takes the whole stack, so a completion is either
 *    in the batch taken or signalled again: a burst of completions costs one
 *    eventfd write and one wake-up of the loop.
 *  - A task that waits for a job while the loop has nothing else to run
 *    spins first (an adaptive budget, see SPIN_NS_DEFAULT), watching the
 *    job's phase word: QUEUED -> RUNNING -> DONE, plus a WATCHED bit the
 *    spinner sets.  A thread that finishes a WATCHED job leaves it to the
 *    spinner instead of pushing it, so a short job's round trip needs no
 *    system call at all.  A spinner that gives up clears WATCHED with a
 *    compare-and-swap; if that fails the job is DONE and is the spinner's
 *    after all.  Spins pause briefly, then yield the CPU (struct spin).
 *
 * Everything else (job handles, waiters, the list of unfinished jobs,
 * reference counts, the free list) belongs to the loop's thread.  A job is
 * freed only on the loop's thread, once its completion has reached the
 * loop: after that no pool thread touches it.  The pool itself is freed
 * when its owner has let go and no job refers to it, always after its
 * threads have been joined.
 */
#include "task/task.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef CAWAIT_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

/* Job phases (job->phase). */
#define PHASE_WATCHED 1u /* a task spins on it: its thread must not push it */
#define PHASE_QUEUED 0u
#define PHASE_RUNNING 2u
#define PHASE_DONE 4u

/* Wake result handed to a task waiting for room: a slot is reserved. */
#define ROOM_GRANTED 2

/*
 * How long an idle thread, or a task waiting for a short job, may spin
 * before it sleeps ($CAWAIT_POOL_SPIN_US overrides; 0 turns spinning off).
 * On a loaded VM a thread that was woken may wait 50-120 us for a CPU:
 * shorter spins then miss, and every round trip pays two wake-ups instead
 * of none.  The budgets adapt, so that work for which spinning does not pay
 * (jobs longer than a spin, sporadic submissions) soon costs little: a spin
 * that succeeds resets its budget to the maximum, one that times out halves
 * it down to SPIN_NS_MIN, and one wait in SPIN_PROBE at the minimum probes
 * with the maximum (both sides at the minimum would otherwise never see a
 * success again: each waits for the other, asleep).
 */
#define SPIN_NS_DEFAULT 200000
#define SPIN_NS_MIN 2000
#define SPIN_PROBE 8
#define SPIN_PAUSE_NS 1000
/* Finished job structs kept for reuse per pool. */
#define JOB_CACHE_MAX 1024

enum pool_state { POOL_OPEN = 0, POOL_STOPPING, POOL_CLOSED };

/* An adaptive spin budget (see SPIN_NS_DEFAULT).  Threads share one
 * without a lock: its updates race harmlessly. */
struct spin_budget {
    _Atomic int64_t ns;
    atomic_uint probes;
};

struct ca_job {
    /* queue links: under pool->mu */
    ca_job *qnext, *qprev;
    /* completion stack link: written by the finishing thread */
    ca_job *cnext;
    ca_fn fn;
    void *arg;
    ca_pool *pool;
    _Atomic unsigned phase;
    atomic_int cancel;
    int status;     /* written before DONE is published, or by the loop */
    uint8_t queued; /* in the queue (under pool->mu) */
    /* the loop's thread only */
    uint8_t done;          /* its completion reached the loop */
    uint8_t detached;      /* handle released before it was done */
    uint32_t refs;         /* handle + "unfinished" + waiting tasks */
    ca_job *lnext, *lprev; /* pool->unfinished; lnext: the free list */
    void (*free_arg)(void *arg);
    ca__waitlist waiters;
};

struct worker {
    pthread_t thread;
    ca_pool *pool;
    struct worker *next_sleeper;
    _Atomic uint32_t wake; /* futex word: 1 when woken */
};

struct exec_loop;

struct ca_pool {
    /* Shared with the threads, under mu. */
    pthread_mutex_t mu;
    ca_job *qhead, *qtail;
    size_t nq;
    struct worker *sleepers;
    atomic_uint looking; /* threads that will look at the queue soon */
    unsigned spinning;   /* idle threads spinning */
    unsigned live;       /* threads that have not exited */
    int shutdown;        /* threads exit once the queue is empty */
    int space_wanted;    /* a task waits for room: signal when a job leaves */
    uint64_t submitted, cancelled;

    /* Read by the threads without the lock. */
    _Alignas(64) atomic_size_t nq_hint;
    atomic_int stop_hint;
    atomic_int idle_cpu;      /* CPU of the spinning idle thread, or -1 */
    atomic_int watch_cpu;     /* CPU of the task spinning on a job, or -1 */
    struct spin_budget wspin; /* idle threads' */
    atomic_size_t running;
    _Atomic uint64_t completed;

    /* Thread -> loop: finished jobs and the wake-up flag. */
    _Alignas(64) _Atomic(ca_job *) done_head;
    atomic_int wake_pending;

    /* Configuration, fixed at creation. */
    _Alignas(64) unsigned nthreads;
    unsigned max_spinners;
    size_t max_queued;
    int64_t spin_max, spin_min; /* bounds of the spin budgets, ns */
    int efd;
    struct worker *workers;

    /* The loop's thread only. */
    ca_loop *loop; /* NULL once detached from its loop */
    struct exec_loop *exec;
    ca_pool *next, *prev; /* the loop's pools */
    int state;
    int is_default;
    int owner_gone;           /* ca_pool_free was called */
    uint32_t refs;            /* owner + jobs allocated + queued drain node */
    size_t reserved;          /* room promised to woken submitters */
    struct spin_budget lspin; /* waiting tasks' */
    ca__fdwait efd_wait;
    int efd_armed;
    ca__ready drain_node;
    int drain_queued;
    ca_job *unfinished; /* jobs not done, linked through lnext */
    ca_job *cache;      /* free job structs */
    size_t ncache;
    ca__waitlist room_waiters;
    ca__waitlist stop_waiters;
};

/* Per loop (loop->exec_default): the default pool, its options, and every
 * pool bound to the loop, which the exit hook shuts down. */
struct exec_loop {
    ca__exit_hook hook; /* first: the hook is the struct */
    ca_pool *dflt;
    ca_pool_opts dflt_opts;
    ca_pool *pools;
};

static _Thread_local ca_job *tls_job;

static void pool_unref(ca_pool *p);
static void pool_close(ca_pool *p);

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/*
 * A spin that ends at `until`: pause for the first SPIN_PAUSE_NS, then
 * yield the CPU at every step.  On an oversubscribed machine the thread we
 * wait for (just woken, on this CPU's run queue) may be waiting for us to
 * stop; pure spinning would hold it off for the whole budget.
 */
struct spin {
    int64_t until, yield_at;
    unsigned steps;
    int yielding;
};

static inline void spin_start(struct spin *s, int64_t now, int64_t until)
{
    *s = (struct spin){.until = until, .yield_at = now + SPIN_PAUSE_NS};
}

/* One step; returns 0 once the spin is over. */
static inline int spin_step(struct spin *s)
{
    if (s->yielding) {
        sched_yield();
        return ca__clock_ns() < s->until;
    }
    cpu_relax();
    if (++s->steps & 31)
        return 1;
    int64_t now = ca__clock_ns();
    if (now >= s->until)
        return 0;
    s->yielding = now >= s->yield_at;
    return 1;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t val)
{
    syscall(SYS_futex, (void *)word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (void *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static long env_long(const char *name, long lo, long hi, long dflt)
{
    const char *e = getenv(name);
    if (!e || !*e)
        return dflt;
    char *end;
    errno = 0;
    long v = strtol(e, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return dflt;
    return v;
}

static unsigned default_threads(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long n = (cpus > 0 ? cpus : 1) + 4;
    if (n > CA_POOL_DEFAULT_MAX)
        n = CA_POOL_DEFAULT_MAX;
    return (unsigned)env_long("CAWAIT_POOL_THREADS", 1, CA_POOL_MAX_THREADS, n);
}

static int64_t spin_ns_setting(void)
{
#ifdef CAWAIT_HAVE_VALGRIND_H
    /* valgrind runs one thread at a time: a spinner only delays the
     * thread it waits for. */
    if (RUNNING_ON_VALGRIND)
        return 0;
#endif
    return (int64_t)env_long("CAWAIT_POOL_SPIN_US", 0, 1000000,
                             SPIN_NS_DEFAULT / 1000) *
           1000;
}

/* Tell the loop to look at the pool (completions, room, exits). */
static void signal_loop(ca_pool *p)
{
    if (atomic_exchange(&p->wake_pending, 1) == 0) {
        uint64_t one = 1;
        ssize_t n = write(p->efd, &one, sizeof(one));
        (void)n; /* EAGAIN: the counter is non-zero, a wake-up is due */
    }
}

/* ------------------------------------------------------------------------ */
/* The queue (under mu)                                                     */
/* ------------------------------------------------------------------------ */

/* Take an idle thread to wake; it counts as looking until it has looked. */
static struct worker *sleeper_take_locked(ca_pool *p)
{
    struct worker *w = p->sleepers;
    if (w) {
        p->sleepers = w->next_sleeper;
        atomic_fetch_add_explicit(&p->looking, 1, memory_order_relaxed);
    }
    return w;
}

static inline unsigned looking(ca_pool *p)
{
    return atomic_load_explicit(&p->looking, memory_order_relaxed);
}

static void worker_wake(struct worker *w)
{
    atomic_store_explicit(&w->wake, 1, memory_order_release);
    futex_wake(&w->wake);
}

/* Append job; returns a thread to wake (after unlocking) or NULL. */
static struct worker *queue_push_locked(ca_pool *p, ca_job *job)
{
    job->qnext = NULL;
    job->qprev = p->qtail;
    if (p->qtail)
        p->qtail->qnext = job;
    else
        p->qhead = job;
    p->qtail = job;
    job->queued = 1;
    p->nq++;
    p->submitted++;
    atomic_store_explicit(&p->nq_hint, p->nq, memory_order_relaxed);
    return looking(p) == 0 ? sleeper_take_locked(p) : NULL;
}

static void queue_unlink_locked(ca_pool *p, ca_job *job)
{
    if (job->qprev)
        job->qprev->qnext = job->qnext;
    else
        p->qhead = job->qnext;
    if (job->qnext)
        job->qnext->qprev = job->qprev;
    else
        p->qtail = job->qprev;
    job->qnext = job->qprev = NULL;
    job->queued = 0;
    p->nq--;
    atomic_store_explicit(&p->nq_hint, p->nq, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* Pool threads                                                             */
/* ------------------------------------------------------------------------ */

static void run_job(ca_pool *p, ca_job *job)
{
    tls_job = job;
    int status = job->fn(job->arg);
    tls_job = NULL;
    job->status = status;
    atomic_fetch_add_explicit(&p->completed, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->running, 1, memory_order_relaxed);
    /* Back to the queue soon: a job submitted from now on needs no
     * wake-up (worker_main stops looking under the lock). */
    atomic_fetch_add_explicit(&p->looking, 1, memory_order_relaxed);
    unsigned prev =
        atomic_exchange_explicit(&job->phase, PHASE_DONE, memory_order_acq_rel);
    if (prev & PHASE_WATCHED) {
        /* The spinning task takes it (job may be gone already).  If it
         * spins on this CPU, it cannot see the job until we let it run. */
        if (atomic_load_explicit(&p->watch_cpu, memory_order_relaxed) ==
            sched_getcpu())
            sched_yield();
        return;
    }
    ca_job *head = atomic_load_explicit(&p->done_head, memory_order_relaxed);
    do {
        job->cnext = head;
    } while (!atomic_compare_exchange_weak(&p->done_head, &head, job));
    /* job belongs to the loop now. */
    if (!head)
        signal_loop(p);
}

/* The budget for the next spin, in ns. */
static int64_t budget_take(struct spin_budget *b, const ca_pool *p)
{
    int64_t ns = atomic_load_explicit(&b->ns, memory_order_relaxed);
    if (ns <= p->spin_min &&
        atomic_fetch_add_explicit(&b->probes, 1, memory_order_relaxed) %
                SPIN_PROBE ==
            SPIN_PROBE - 1)
        return p->spin_max;
    return ns;
}

static void budget_hit(struct spin_budget *b, const ca_pool *p)
{
    atomic_store_explicit(&b->ns, p->spin_max, memory_order_relaxed);
}

static void budget_miss(struct spin_budget *b, const ca_pool *p)
{
    int64_t ns = atomic_load_explicit(&b->ns, memory_order_relaxed) / 2;
    atomic_store_explicit(&b->ns, ns < p->spin_min ? p->spin_min : ns,
                          memory_order_relaxed);
}

/* Spin until work may be queued or the pool stops, or the budget is
 * spent. */
static void spin_idle(ca_pool *p)
{
    int64_t now = ca__clock_ns();
    struct spin sp;
    spin_start(&sp, now, now + budget_take(&p->wspin, p));
    int cpu = sched_getcpu();
    atomic_store_explicit(&p->idle_cpu, cpu, memory_order_relaxed);
    /* The task we wait for spins on this CPU: pausing would only delay
     * it, yield from the start. */
    sp.yielding =
        atomic_load_explicit(&p->watch_cpu, memory_order_relaxed) == cpu;
    for (;;) {
        if (atomic_load_explicit(&p->nq_hint, memory_order_relaxed) ||
            atomic_load_explicit(&p->stop_hint, memory_order_relaxed)) {
            budget_hit(&p->wspin, p);
            break;
        }
        if (!spin_step(&sp)) {
            budget_miss(&p->wspin, p);
            break;
        }
    }
    atomic_store_explicit(&p->idle_cpu, -1, memory_order_relaxed);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    ca_pool *p = w->pool;
    int may_spin = 1;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        ca_job *job = p->qhead;
        if (job) {
            queue_unlink_locked(p, job);
            atomic_fetch_add_explicit(&p->running, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&job->phase, PHASE_RUNNING,
                                      memory_order_relaxed);
            /* More work waits and nobody looks for it: wake a peer, so
             * that the loop's thread does not have to. */
            struct worker *peer =
                p->nq && looking(p) == 0 ? sleeper_take_locked(p) : NULL;
            int room = p->space_wanted;
            p->space_wanted = 0;
            pthread_mutex_unlock(&p->mu);
            if (peer)
                worker_wake(peer);
            if (room)
                signal_loop(p);
            run_job(p, job); /* counts this thread as looking again */
            may_spin = 1;
            pthread_mutex_lock(&p->mu);
            atomic_fetch_sub_explicit(&p->looking, 1, memory_order_relaxed);
            continue;
        }
        if (p->shutdown)
            break;
        if (may_spin && p->spin_max > 0 && p->spinning < p->max_spinners) {
            p->spinning++;
            atomic_fetch_add_explicit(&p->looking, 1, memory_order_relaxed);
            pthread_mutex_unlock(&p->mu);
            spin_idle(p);
            pthread_mutex_lock(&p->mu);
            atomic_fetch_sub_explicit(&p->looking, 1, memory_order_relaxed);
            p->spinning--;
            may_spin = 0;
            continue;
        }
        atomic_store_explicit(&w->wake, 0, memory_order_relaxed);
        w->next_sleeper = p->sleepers;
        p->sleepers = w;
        pthread_mutex_unlock(&p->mu);
        while (atomic_load_explicit(&w->wake, memory_order_acquire) == 0)
            futex_wait(&w->wake, 0);
        pthread_mutex_lock(&p->mu);
        /* counted as looking by whoever woke us */
        atomic_fetch_sub_explicit(&p->looking, 1, memory_order_relaxed);
        may_spin = 1;
    }
    int last = --p->live == 0;
    pthread_mutex_unlock(&p->mu);
    if (last)
        signal_loop(p);
    return NULL;
}

/* Refuse new jobs and wake every idle thread, so that the threads exit
 * once the queue is empty.  If drop, the queued jobs are taken out and
 * returned (a list linked through qnext) for the caller to finish. */
static ca_job *threads_stop(ca_pool *p, int drop)
{
    ca_job *dropped = NULL;
    pthread_mutex_lock(&p->mu);
    p->shutdown = 1;
    atomic_store(&p->stop_hint, 1);
    if (drop && p->qhead) {
        dropped = p->qhead;
        for (ca_job *j = dropped; j; j = j->qnext)
            j->queued = 0;
        p->cancelled += p->nq;
        p->qhead = p->qtail = NULL;
        p->nq = 0;
        atomic_store_explicit(&p->nq_hint, 0, memory_order_relaxed);
    }
    struct worker *w, *wake = NULL;
    while ((w = sleeper_take_locked(p))) {
        w->next_sleeper = wake;
        wake = w;
    }
    pthread_mutex_unlock(&p->mu);
    while (wake) {
        w = wake;
        wake = w->next_sleeper;
        worker_wake(w);
    }
    return dropped;
}

static void threads_join(ca_pool *p, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        pthread_join(p->workers[i].thread, NULL);
}

/* Start the pool's threads with every signal blocked. */
static int threads_start(ca_pool *p, size_t stack_size)
{
    pthread_attr_t attr;
    int r = pthread_attr_init(&attr);
    if (r)
        return -r;
    if (stack_size && (r = pthread_attr_setstacksize(&attr, stack_size))) {
        pthread_attr_destroy(&attr);
        return -r;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    unsigned i;
    for (i = 0; i < p->nthreads; i++) {
        struct worker *w = &p->workers[i];
        w->pool = p;
        r = pthread_create(&w->thread, &attr, worker_main, w);
        if (r)
            break;
        pthread_setname_np(w->thread, "cawait-pool");
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (i == p->nthreads)
        return 0;
    /* Undo: the threads started so far exit at once (the queue is empty). */
    pthread_mutex_lock(&p->mu);
    p->live -= p->nthreads - i;
    pthread_mutex_unlock(&p->mu);
    threads_stop(p, 0);
    threads_join(p, i);
    return -r;
}

/* ------------------------------------------------------------------------ */
/* Jobs (the loop's thread)                                                 */
/* ------------------------------------------------------------------------ */

static ca_job *job_alloc(ca_pool *p)
{
    ca_job *job = p->cache;
    if (job) {
        p->cache = job->lnext;
        p->ncache--;
    } else if (!(job = malloc(sizeof(*job)))) {
        return NULL;
    }
    p->refs++;
    return job;
}

static void job_free(ca_job *job)
{
    ca_pool *p = job->pool;
    if (!p->owner_gone && p->ncache < JOB_CACHE_MAX) {
        job->lnext = p->cache;
        p->cache = job;
        p->ncache++;
    } else {
        free(job);
    }
    pool_unref(p);
}

static inline void job_unref(ca_job *job)
{
    if (--job->refs == 0)
        job_free(job);
}

/* The job's completion reached the loop (status is set): wake its waiters,
 * hand arg to free_arg if the caller is gone, drop the unfinished ref. */
static void job_finish(ca_job *job)
{
    ca_pool *p = job->pool;
    job->done = 1;
    if (job->lprev)
        job->lprev->lnext = job->lnext;
    else
        p->unfinished = job->lnext;
    if (job->lnext)
        job->lnext->lprev = job->lprev;
    ca__waitlist_wake_all(&job->waiters, 0);
    if (job->detached && job->free_arg)
        job->free_arg(job->arg);
    job_unref(job);
}

/* Take the finished jobs the threads pushed and finish them in the order
 * they finished. */
static void take_completions(ca_pool *p)
{
    ca_job *list = atomic_exchange(&p->done_head, NULL);
    ca_job *fifo = NULL;
    while (list) {
        ca_job *next = list->cnext;
        list->cnext = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        ca_job *next = fifo->cnext;
        job_finish(fifo);
        fifo = next;
    }
}

/* Hand free queue slots to the tasks waiting for room, first come first
 * served: each woken task owns a reserved slot. */
static void room_grant(ca_pool *p)
{
    if (!p->room_waiters.head)
        return;
    pthread_mutex_lock(&p->mu);
    size_t used = p->nq + p->reserved;
    while (p->room_waiters.head && used < p->max_queued) {
        if (!ca__waitlist_wake_one(&p->room_waiters, ROOM_GRANTED))
            break; /* only waiters already cancelled were left */
        p->reserved++;
        used++;
    }
    p->space_wanted = p->room_waiters.head != NULL;
    pthread_mutex_unlock(&p->mu);
}

/* Take job out of the queue if it has not started.  Returns 1 if it was
 * removed (it is then finished with -ECANCELED), else 0. */
static int job_dequeue(ca_job *job)
{
    ca_pool *p = job->pool;
    pthread_mutex_lock(&p->mu);
    int queued = job->queued;
    if (queued) {
        queue_unlink_locked(p, job);
        p->cancelled++;
    }
    pthread_mutex_unlock(&p->mu);
    if (!queued)
        return 0;
    job->status = -ECANCELED;
    job_finish(job);
    room_grant(p);
    return 1;
}

/*
 * Spin on job while the loop has nothing else to do, for at most the
 * budget (lspin) and never past the next timer or the caller's deadline.
 * Returns 1 if the job finished while watched: the caller then owns its
 * completion.
 */
static int job_spin(ca_loop *l, ca_task *self, ca_job *job)
{
    ca_pool *p = job->pool;
    if (p->spin_max <= 0 || l->nready || self->cancel_req)
        return 0;
    int64_t now = ca__clock_ns();
    int64_t until = now + budget_take(&p->lspin, p);
    int capped = 0; /* by a timer or deadline, not by the budget */
    int64_t next = ca__timers_next(l);
    if (next < until) {
        until = next;
        capped = 1;
    }
    if (self->run->nscopes) {
        int64_t dl = ca__task_deadline(self);
        if (dl < until) {
            until = dl;
            capped = 1;
        }
    }
    if (until <= now)
        return 0;
    unsigned ph = atomic_fetch_or(&job->phase, PHASE_WATCHED);
    if ((ph & ~PHASE_WATCHED) == PHASE_DONE)
        return 0; /* finished unwatched: its completion is on the way */
    struct spin sp;
    spin_start(&sp, now, until);
    int cpu = sched_getcpu();
    atomic_store_explicit(&p->watch_cpu, cpu, memory_order_relaxed);
    /* An idle pool thread spins on this CPU: it cannot see the job until
     * we let it run. */
    sp.yielding =
        atomic_load_explicit(&p->idle_cpu, memory_order_relaxed) == cpu;
    int hit = 0;
    for (;;) {
        if (atomic_load_explicit(&job->phase, memory_order_acquire) ==
            PHASE_DONE) {
            hit = 1;
            break;
        }
        if (!spin_step(&sp))
            break;
    }
    atomic_store_explicit(&p->watch_cpu, -1, memory_order_relaxed);
    if (hit) {
        budget_hit(&p->lspin, p);
        return 1;
    }
    if (!capped)
        budget_miss(&p->lspin, p);
    ph = atomic_load(&job->phase);
    for (;;) {
        if (ph == PHASE_DONE)
            return 1; /* it finished while still watched */
        if (atomic_compare_exchange_weak(&job->phase, &ph, ph & ~PHASE_WATCHED))
            return 0;
    }
}

/* Wait until job is done.  Returns 0, or -ECANCELED/-ETIMEDOUT. */
static int job_wait_done(ca_loop *l, ca_task *self, ca_job *job)
{
    if (job->done)
        return 0;
    /* Completions that wait for the eventfd may include this one: take
     * them now.  The drain that is due finds less to do, and none is
     * lost (wake_pending stays set until that drain). */
    if (atomic_load_explicit(&job->pool->done_head, memory_order_relaxed)) {
        take_completions(job->pool);
        if (job->done)
            return 0;
    }
    if (job_spin(l, self, job)) {
        job_finish(job);
        return 0;
    }
    while (!job->done) {
        ca__waiter w;
        int r = ca__wait_in(&job->waiters, &w);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The loop side of a pool                                                  */
/* ------------------------------------------------------------------------ */

/* Everything the threads signalled: completions, room, exits. */
static void pool_drain(ca_pool *p)
{
    uint64_t v;
    ssize_t n = read(p->efd, &v, sizeof(v));
    (void)n; /* EAGAIN: a previous drain already read it */
    /* Clear before taking the stack: see the comment at the top. */
    atomic_store(&p->wake_pending, 0);
    take_completions(p);
    room_grant(p);
    if (p->state == POOL_STOPPING) {
        pthread_mutex_lock(&p->mu);
        unsigned live = p->live;
        pthread_mutex_unlock(&p->mu);
        if (live == 0)
            pool_close(p);
    }
}

static void drain_run(ca__ready *r)
{
    ca_pool *p = (ca_pool *)((char *)r - offsetof(ca_pool, drain_node));
    ca__loop()->cb_slices++;
    p->drain_queued = 0;
    if (p->state != POOL_CLOSED)
        pool_drain(p);
    pool_unref(p);
}

/* The eventfd is readable: drain from the ready queue, not from inside the
 * backend's poll (free_arg is user code). */
static void efd_wake(ca__fdwait *w, int result)
{
    ca_pool *p = (ca_pool *)((char *)w - offsetof(ca_pool, efd_wait));
    if (result < 0 || p->state == POOL_CLOSED) {
        p->efd_armed = 0;
        return;
    }
    ca__fd_add_waiter(p->loop, w);
    if (!p->drain_queued) {
        p->drain_queued = 1;
        p->refs++;
        ca__ready_push(p->loop, &p->drain_node);
    }
}

/* Begin a shutdown: no new jobs, threads leave when the queue is empty. */
static void pool_stop(ca_pool *p, int flags)
{
    if (p->state == POOL_OPEN)
        p->state = POOL_STOPPING;
    if (p->state == POOL_CLOSED)
        return;
    ca_job *dropped = threads_stop(p, flags & CA_POOL_DROP_QUEUED);
    while (dropped) {
        ca_job *next = dropped->qnext;
        dropped->qnext = dropped->qprev = NULL;
        dropped->status = -ECANCELED;
        job_finish(dropped);
        dropped = next;
    }
    if (flags & CA_POOL_CANCEL_RUNNING)
        for (ca_job *j = p->unfinished; j; j = j->lnext)
            atomic_store_explicit(&j->cancel, 1, memory_order_relaxed);
    ca__waitlist_wake_all(&p->room_waiters, -ESHUTDOWN);
}

/* Finish a shutdown: join the threads (blocking until their jobs return),
 * finish what they completed, close the eventfd, wake the waiters. */
static void pool_close(ca_pool *p)
{
    if (p->state == POOL_CLOSED)
        return;
    if (p->state == POOL_OPEN)
        pool_stop(p, 0);
    threads_join(p, p->nthreads);
    take_completions(p);
    if (p->efd_armed) {
        ca__fd_remove_waiter(p->loop, &p->efd_wait);
        p->efd_armed = 0;
    }
    ca__fd_forget(p->loop, p->efd);
    close(p->efd);
    p->efd = -1;
    p->state = POOL_CLOSED;
    ca__waitlist_wake_all(&p->stop_waiters, 0);
}

static void pool_destroy(ca_pool *p)
{
    while (p->cache) {
        ca_job *j = p->cache;
        p->cache = j->lnext;
        free(j);
    }
    free(p->workers);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static void pool_unref(ca_pool *p)
{
    if (--p->refs == 0)
        pool_destroy(p);
}

/* Detach p from its loop's list (the loop is ending, or p is freed). */
static void pool_unbind(ca_pool *p)
{
    struct exec_loop *x = p->exec;
    if (!x)
        return;
    if (p->prev)
        p->prev->next = p->next;
    else
        x->pools = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
    p->exec = NULL;
    p->loop = NULL;
}

/* ca_run's exit hook: every task has finished; shut every pool of the loop
 * down (running queued jobs, like asyncio's default executor) and join its
 * threads.  The ready queue never runs again, so a queued drain node is
 * dropped here. */
static void exec_exit_hook(ca_loop *l, ca__exit_hook *h)
{
    struct exec_loop *x = (struct exec_loop *)h;
    while (x->pools) {
        ca_pool *p = x->pools;
        pool_close(p);
        pool_unbind(p);
        if (p->drain_queued) {
            p->drain_queued = 0;
            pool_unref(p);
        }
    }
    if (x->dflt)
        pool_unref(x->dflt);
    l->exec_default = NULL;
    free(x);
}

static struct exec_loop *exec_get(ca_loop *l)
{
    struct exec_loop *x = l->exec_default;
    if (x)
        return x;
    x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->hook.fn = exec_exit_hook;
    ca__loop_at_exit(l, &x->hook);
    l->exec_default = x;
    return x;
}

static int opts_check(const ca_pool_opts *o)
{
    if (!o)
        return 0;
    if (o->threads > CA_POOL_MAX_THREADS)
        return -EINVAL;
    if (o->stack_size && o->stack_size < (size_t)PTHREAD_STACK_MIN)
        return -EINVAL;
    return 0;
}

static int pool_create(ca_loop *l, const ca_pool_opts *o, ca_pool **out)
{
    int r = opts_check(o);
    if (r < 0)
        return r;
    struct exec_loop *x = exec_get(l);
    if (!x)
        return -ENOMEM;
    size_t size = (sizeof(ca_pool) + 63) & ~(size_t)63;
    ca_pool *p = aligned_alloc(64, size);
    if (!p)
        return -ENOMEM;
    memset(p, 0, size);
    p->nthreads = o && o->threads ? o->threads : default_threads();
    p->max_queued = o ? o->max_queued : 0;
    p->spin_max = spin_ns_setting();
    p->spin_min = p->spin_max < SPIN_NS_MIN ? p->spin_max : SPIN_NS_MIN;
    atomic_init(&p->lspin.ns, p->spin_max);
    atomic_init(&p->idle_cpu, -1);
    atomic_init(&p->watch_cpu, -1);
    atomic_init(&p->wspin.ns, p->spin_max);
    p->max_spinners = 1;
    p->live = p->nthreads;
    p->loop = l;
    p->refs = 1;
    p->efd = -1;
    p->drain_node.run = drain_run;
    atomic_init(&p->done_head, NULL);
    if ((r = pthread_mutex_init(&p->mu, NULL)) != 0) {
        free(p);
        return -r;
    }
    p->workers = calloc(p->nthreads, sizeof(*p->workers));
    if (!p->workers) {
        r = -ENOMEM;
        goto fail;
    }
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->efd < 0) {
        r = -errno;
        goto fail;
    }
    if ((r = ca__fd_register(l, p->efd)) < 0)
        goto fail;
    p->efd_wait =
        (ca__fdwait){.fd = p->efd, .events = CA_READ, .wake = efd_wake};
    ca__fd_add_waiter(l, &p->efd_wait);
    p->efd_armed = 1;
    if ((r = threads_start(p, o ? o->stack_size : 0)) < 0)
        goto fail;
    p->exec = x;
    p->next = x->pools;
    if (x->pools)
        x->pools->prev = p;
    x->pools = p;
    *out = p;
    return 0;
fail:
    if (p->efd >= 0) {
        if (p->efd_armed)
            ca__fd_remove_waiter(l, &p->efd_wait);
        ca__fd_forget(l, p->efd);
        close(p->efd);
    }
    free(p->workers);
    pthread_mutex_destroy(&p->mu);
    free(p);
    return r;
}

/* The default pool of l, made on first use. */
static int default_pool(ca_loop *l, ca_pool **out)
{
    struct exec_loop *x = exec_get(l);
    if (!x)
        return -ENOMEM;
    if (!x->dflt) {
        int r = pool_create(l, &x->dflt_opts, &x->dflt);
        if (r < 0)
            return r;
        x->dflt->is_default = 1;
    }
    if (x->dflt->state != POOL_OPEN)
        return -ESHUTDOWN;
    *out = x->dflt;
    return 0;
}

static int pool_for(ca_loop *l, const ca_job_opts *opts, ca_pool **out)
{
    if (!opts || !opts->pool)
        return default_pool(l, out);
    ca_pool *p = opts->pool;
    if (p->loop != l)
        return p->loop ? -EXDEV : -ESHUTDOWN;
    if (p->state != POOL_OPEN)
        return -ESHUTDOWN;
    *out = p;
    return 0;
}

/*
 * Queue fn(arg) on p.  Waits for room in a bounded queue when self is a
 * task and nowait is 0.  On success *out holds the job with two refs: the
 * caller's handle and "unfinished".
 */
static int submit(ca_pool *p, ca_task *self, ca_fn fn, void *arg,
                  const ca_job_opts *opts, ca_job **out)
{
    ca_job *job = job_alloc(p);
    if (!job)
        return -ENOMEM;
    *job = (ca_job){
        .fn = fn,
        .arg = arg,
        .pool = p,
        .phase = PHASE_QUEUED,
        .refs = 2,
        .free_arg = opts ? opts->free_arg : NULL,
    };
    int nowait = !self || (opts && opts->nowait);
    int granted = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        if (p->shutdown) {
            if (granted)
                p->reserved--;
            pthread_mutex_unlock(&p->mu);
            job_free(job);
            return -ESHUTDOWN;
        }
        if (granted || p->max_queued == 0 ||
            (!p->room_waiters.head && p->nq + p->reserved < p->max_queued)) {
            if (granted)
                p->reserved--;
            struct worker *w = queue_push_locked(p, job);
            pthread_mutex_unlock(&p->mu);
            if (w)
                worker_wake(w);
            break;
        }
        if (nowait) {
            pthread_mutex_unlock(&p->mu);
            job_free(job);
            return -EAGAIN;
        }
        p->space_wanted = 1;
        pthread_mutex_unlock(&p->mu);
        ca__waiter wt;
        int r = ca__wait_in(&p->room_waiters, &wt);
        if (r != ROOM_GRANTED) {
            /* Room freed meanwhile may be another waiter's now.  (Before
             * job_free: it may drop the last reference to p.) */
            room_grant(p);
            job_free(job);
            return r < 0 ? r : -EINTR;
        }
        granted = 1;
    }
    job->lprev = NULL;
    job->lnext = p->unfinished;
    if (p->unfinished)
        p->unfinished->lprev = job;
    p->unfinished = job;
    *out = job;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

int ca_job_cancelled(void)
{
    ca_job *job = tls_job;
    return job ? atomic_load_explicit(&job->cancel, memory_order_relaxed) : 0;
}

int ca_to_thread(ca_fn fn, void *arg)
{
    return ca_to_thread_ex(fn, arg, NULL);
}

static inline int is_interrupt(int r)
{
    return r == -ECANCELED || r == -ETIMEDOUT;
}

int ca_to_thread_ex(ca_fn fn, void *arg, const ca_job_opts *opts)
{
    if (!fn)
        return -EINVAL;
    ca_task *self = ca__task_self("ca_to_thread");
    if (!self)
        return -EPERM;
    ca_loop *l = ca__loop();
    int detach = opts && opts->detach;
    int r = ca__task_check(self);
    if (r < 0)
        goto interrupted;
    ca_pool *p;
    if ((r = pool_for(l, opts, &p)) < 0)
        return r;
    ca_job *job;
    if ((r = submit(p, self, fn, arg, opts, &job)) < 0)
        goto interrupted;
    r = job_wait_done(l, self, job);
    if (r == 0) {
        int status = job->status;
        /* -ECANCELED / -ETIMEDOUT from the job itself (dropped or
         * cancelled by a pool shutdown, or fn's own result): with detach,
         * such a return hands arg over too, and nothing uses it now. */
        if (detach && is_interrupt(status) && job->free_arg)
            job->free_arg(job->arg);
        job_unref(job);
        return status;
    }
    /* Cancelled or past the deadline. */
    if (job_dequeue(job)) {
        job_unref(job);
        goto interrupted;
    }
    atomic_store_explicit(&job->cancel, 1, memory_order_relaxed);
    if (detach && is_interrupt(r)) {
        /* arg is the pool's now.  If the job finished in the meantime its
         * completion has already passed: hand arg over here. */
        if (!job->done)
            job->detached = 1;
        else if (job->free_arg)
            job->free_arg(job->arg);
        job_unref(job);
        return r;
    }
    /* The default: fn still uses arg, so wait for it, deaf to cancels. */
    ca_shield_push();
    while (job_wait_done(l, self, job) < 0)
        ;
    ca_shield_pop();
    job_unref(job);
    return r;
interrupted:
    /* fn never ran.  With detach, an interrupted call hands arg over all
     * the same, so that the caller has one rule to follow. */
    if (detach && is_interrupt(r) && opts->free_arg)
        opts->free_arg(arg);
    return r;
}

int ca_pool_submit(ca_job **out, ca_fn fn, void *arg, const ca_job_opts *opts)
{
    if (out)
        *out = NULL;
    if (!out || !fn)
        return -EINVAL;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    /* Like a put on a queue with room, a submission that need not wait
     * is not a cancellation point. */
    ca_pool *p;
    int r = pool_for(l, opts, &p);
    if (r < 0)
        return r;
    return submit(p, l->current, fn, arg, opts, out);
}

/* 0 if job may be used from this thread, else -EXDEV. */
static int job_here(const ca_job *job)
{
    ca_loop *pl = job->pool->loop;
    return !pl || pl == ca__loop() ? 0 : -EXDEV;
}

int ca_job_wait(ca_job *job)
{
    if (!job)
        return -EINVAL;
    int r = job_here(job);
    if (r < 0)
        return r;
    if (job->done)
        return job->status;
    ca_task *self = ca__task_self("ca_job_wait");
    if (!self)
        return -EPERM;
    /* Another task may release the handle while this one waits. */
    job->refs++;
    r = job_wait_done(ca__loop(), self, job);
    if (r == 0)
        r = job->status;
    job_unref(job);
    return r;
}

int ca_job_cancel(ca_job *job)
{
    if (!job)
        return -EINVAL;
    int r = job_here(job);
    if (r < 0)
        return r;
    if (job->done)
        return 0;
    if (job_dequeue(job))
        return 1;
    atomic_store_explicit(&job->cancel, 1, memory_order_relaxed);
    return 0;
}

int ca_job_done(const ca_job *job)
{
    return job && job->done;
}

int ca_job_status(const ca_job *job)
{
    if (!job)
        return -EINVAL;
    return job->done ? job->status : -EAGAIN;
}

void ca_job_release(ca_job *job)
{
    if (!job)
        return;
    if (!job->done)
        job->detached = 1;
    job_unref(job);
}

int ca_pool_new(ca_pool **out, const ca_pool_opts *opts)
{
    if (out)
        *out = NULL;
    if (!out)
        return -EINVAL;
    int r = opts_check(opts);
    if (r < 0)
        return r;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    return pool_create(l, opts, out);
}

int ca_pool_set_default_opts(const ca_pool_opts *opts)
{
    int r = opts_check(opts);
    if (r < 0)
        return r;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    struct exec_loop *x = exec_get(l);
    if (!x)
        return -ENOMEM;
    if (x->dflt)
        return -EBUSY;
    x->dflt_opts = opts ? *opts : (ca_pool_opts){0};
    return 0;
}

int ca_pool_default(ca_pool **out)
{
    if (out)
        *out = NULL;
    if (!out)
        return -EINVAL;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    return default_pool(l, out);
}

int ca_pool_shutdown(ca_pool *pool, int flags)
{
    if (!pool || (flags & ~(CA_POOL_DROP_QUEUED | CA_POOL_CANCEL_RUNNING |
                            CA_POOL_NOWAIT)))
        return -EINVAL;
    ca_loop *l = ca__loop();
    if (pool->loop != l)
        return pool->loop ? -EXDEV : 0; /* detached: already closed */
    pool_stop(pool, flags);
    if (pool->state == POOL_CLOSED || (flags & CA_POOL_NOWAIT))
        return 0;
    ca_task *self = l->current;
    if (!self) {
        pool_close(pool); /* a callback: block the thread */
        return 0;
    }
    pool->refs++; /* the pool may be freed by another task meanwhile */
    int r = 0;
    pthread_mutex_lock(&pool->mu);
    unsigned live = pool->live;
    pthread_mutex_unlock(&pool->mu);
    if (live == 0)
        pool_close(pool);
    while (pool->state != POOL_CLOSED) {
        ca__waiter w;
        r = ca__wait_in(&pool->stop_waiters, &w);
        if (r < 0)
            break;
        r = 0;
    }
    pool_unref(pool);
    return r;
}

int ca_pool_free(ca_pool *pool)
{
    if (!pool)
        return -EINVAL;
    if (pool->is_default)
        return -EPERM;
    if (pool->loop && pool->loop != ca__loop())
        return -EXDEV;
    if (pool->loop) {
        pool_close(pool);
        pool_unbind(pool);
    }
    pool->owner_gone = 1;
    while (pool->cache) {
        ca_job *j = pool->cache;
        pool->cache = j->lnext;
        free(j);
    }
    pool->ncache = 0;
    pool_unref(pool);
    return 0;
}

int ca_pool_stats_get(ca_pool *pool, ca_pool_stats *out)
{
    if (!pool || !out)
        return -EINVAL;
    pthread_mutex_lock(&pool->mu);
    out->threads = pool->live;
    out->queued = pool->nq;
    out->submitted = pool->submitted;
    out->cancelled = pool->cancelled;
    out->shut_down = pool->shutdown;
    pthread_mutex_unlock(&pool->mu);
    out->max_queued = pool->max_queued;
    out->running = atomic_load_explicit(&pool->running, memory_order_relaxed);
    out->completed =
        atomic_load_explicit(&pool->completed, memory_order_relaxed);
    return 0;
}
