/*
 * cawait thread pools: asyncio.to_thread and loop.run_in_executor for C.
 * Included by <cawait.h>; do not include directly.  See docs/threads.md.
 *
 * A pool is a fixed set of threads that run blocking functions (a blocking
 * library call, a file read, a DNS lookup with getaddrinfo, a CPU-heavy
 * computation) while the loop keeps running the other tasks.  Each loop has
 * a default pool, made on first use; programs may also make pools of their
 * own.  A pool belongs to the loop of the thread that made it: it is used
 * from that loop's thread only (-EXDEV from another loop's thread), and
 * ca_run shuts it down (running its queued jobs, joining its threads) when
 * every task has finished, if the program has not done so first.
 *
 * A job is fn(arg) with fn a ca_fn: it runs on a pool thread and returns an
 * int status, >= 0 for success (its integer result) and a negative errno
 * for failure, exactly like a task body.  Richer results travel through
 * arg, which the caller owns: it must stay valid until the job has finished
 * (ca_to_thread returns, ca_job_done is 1) unless the job is detached, see
 * ca_job_opts.free_arg.  fn runs on another thread: it must not call
 * cawait's blocking functions (they return -EPERM there: no task runs on a
 * pool thread), and whatever it shares with the loop needs the usual
 * thread synchronisation.  It may call ca_job_cancelled and
 * ca_call_soon_threadsafe.
 *
 * Cancellation.  A job that has not started when it is cancelled is removed
 * from the queue and never runs; it finishes with -ECANCELED.  A job that is
 * running cannot be interrupted (a thread cannot be safely stopped in the
 * middle of a library call): its cancel flag is set, which fn may poll with
 * ca_job_cancelled() to return early, and the caller of ca_to_thread either
 * waits until fn returns (the default; the wait ignores further cancels) or
 * detaches from it (ca_job_opts.detach) and returns at once.  Either way the
 * job's memory is freed only once fn has returned, and nothing touches the
 * caller's memory after ca_to_thread has returned except a detached fn.
 *
 * Completions reach the loop through one eventfd per pool: a burst of jobs
 * that finish together costs one wake-up of the loop, and a task whose job
 * takes a few microseconds gets its result without any (see docs/threads.md
 * on spinning).
 */
#ifndef CAWAIT_EXEC_H
#define CAWAIT_EXEC_H

typedef struct ca_pool ca_pool;
typedef struct ca_job ca_job;

/* ------------------------------------------------------------------------ */
/* Running a blocking function                                              */
/* ------------------------------------------------------------------------ */

/* Options of one job.  Zero (or a NULL pointer) is the default everywhere. */
typedef struct ca_job_opts {
    /* The pool to run on; NULL: the loop's default pool (made on first
     * use). */
    ca_pool *pool;
    /* ca_to_thread_ex: if the caller is cancelled (or its deadline passes)
     * while fn runs, return -ECANCELED (-ETIMEDOUT) at once instead of
     * waiting for fn to return; the job finishes on its own.  With detach,
     * a call that returns -ECANCELED or -ETIMEDOUT has handed arg to the
     * pool, whether fn was running, queued (it never runs) or not yet
     * submitted, and whatever the cause (the caller's cancel or deadline,
     * a pool shutdown that dropped or cancelled the job, or fn returning
     * that value itself): free_arg(arg) is called once nothing uses arg
     * any more (at once when fn never ran or has returned).  Any other
     * return leaves arg with the caller. */
    int detach;
    /* If the queue is full (ca_pool_opts.max_queued), fail with -EAGAIN
     * instead of waiting for room. */
    int nowait;
    /* Called as free_arg(arg) on the loop's thread, once, when arg was
     * handed to the pool (see detach; ca_job_release of an unfinished
     * job) and the job is done with it, whether it ran or was dropped; it
     * releases arg, which the caller can no longer do.  NULL: arg is
     * simply forgotten (it must then outlive the job). */
    void (*free_arg)(void *arg);
} ca_job_opts;

/*
 * asyncio.to_thread: run fn(arg) on a thread of the loop's default pool and
 * wait for it; the other tasks keep running meanwhile.  Returns fn's
 * status, or:
 *   -ECANCELED / -ETIMEDOUT  the caller was cancelled or its deadline
 *                            passed: a job that had not started never runs;
 *                            a running one had its cancel flag set and has
 *                            returned by now (fn's status is dropped);
 *   -EINVAL                  fn is NULL;
 *   -EPERM                   not called from a task;
 *   -ESHUTDOWN               the pool is shut down;
 *   -EAGAIN                  the queue is full and opts->nowait is set;
 *   -ENOMEM, or the error that creating the default pool returned
 *                            (see ca_pool_new).
 * arg stays owned by the caller.  Blocking; a cancellation point before the
 * job is queued, while it waits for room in the queue, and while it waits.
 */
CA_EXTERN int ca_to_thread(ca_fn fn, void *arg);

/* ca_to_thread with options (opts may be NULL): another pool (-EXDEV if
 * it belongs to another loop), detaching from a running job on cancel,
 * failing instead of waiting for room.  With opts->detach, a cancelled call
 * returns while fn may still be running: arg must then stay valid until fn
 * returns, or be allocated and released by opts->free_arg. */
CA_EXTERN int ca_to_thread_ex(ca_fn fn, void *arg, const ca_job_opts *opts);

/*
 * 1 if cancellation of the job running on this thread was requested (its
 * caller was cancelled, ca_job_cancel, or a shutdown with
 * CA_POOL_CANCEL_RUNNING), else 0; also 0 when not called from a job.
 * Long blocking functions call it between steps and return (for example
 * -ECANCELED) when it is 1.  Thread-safe, never blocks, costs a load.
 */
CA_EXTERN int ca_job_cancelled(void);

/* ------------------------------------------------------------------------ */
/* Job handles: run_in_executor                                             */
/* ------------------------------------------------------------------------ */

/*
 * loop.run_in_executor: queue fn(arg) on opts->pool (NULL: the default
 * pool) and return at once with a handle in *out, which the caller owns
 * until ca_job_release.  If the queue is full, waits for room (a task; a
 * cancellation point) or fails with -EAGAIN (opts->nowait, or not called
 * from a task).  Returns 0, or -EINVAL (out or fn NULL), CA_ENOLOOP,
 * -EXDEV (the pool belongs to another loop), -ESHUTDOWN, -EAGAIN,
 * -ECANCELED/-ETIMEDOUT (while waiting for room), -ENOMEM; *out is NULL on
 * failure and fn will not run.  Blocking only while waiting for room.
 */
CA_EXTERN int ca_pool_submit(ca_job **out, ca_fn fn, void *arg,
                             const ca_job_opts *opts);

/*
 * Wait until job has finished and return its status: fn's return value, or
 * -ECANCELED if it was cancelled before it ran (or dropped by a shutdown).
 * If the caller is cancelled or its deadline passes, returns -ECANCELED or
 * -ETIMEDOUT and the job is left alone (cancel it with ca_job_cancel).
 * Several tasks may wait for one job.  Returns -EINVAL (NULL), -EPERM
 * (outside a task), -EXDEV (another loop's job).  A finished job returns at
 * once.  Blocking.
 */
CA_EXTERN int ca_job_wait(ca_job *job);

/*
 * Cancel job.  Not started yet: it is removed from the queue, never runs,
 * is done at once with status -ECANCELED (its waiters wake), and 1 is
 * returned.  Running: its cancel flag is set (see ca_job_cancelled) and 0
 * is returned; it finishes when fn returns.  Already finished: 0.  Returns
 * -EINVAL (NULL) or -EXDEV (another loop's job).  Never blocks.
 */
CA_EXTERN int ca_job_cancel(ca_job *job);

/* 1 if job has finished and its completion reached the loop, else 0. */
CA_EXTERN int ca_job_done(const ca_job *job);

/* job's status once done (as ca_job_wait returns it), -EAGAIN before,
 * -EINVAL for NULL.  Never blocks. */
CA_EXTERN int ca_job_status(const ca_job *job);

/*
 * Drop the handle.  A finished job is freed; arg stays the caller's.  An
 * unfinished job is detached: it still runs (or stays queued) and is freed
 * when it finishes, and arg passes to the pool, which calls
 * opts->free_arg(arg) then, if set.  job must not be used afterwards.
 * Call it on the loop's thread (or after ca_run returned).  NULL is
 * ignored.  Never blocks.
 */
CA_EXTERN void ca_job_release(ca_job *job);

/* ------------------------------------------------------------------------ */
/* Pools                                                                    */
/* ------------------------------------------------------------------------ */

/* Threads of the default pool unless configured: the number of online
 * CPUs + 4, at most CA_POOL_DEFAULT_MAX (Python's ThreadPoolExecutor
 * rule: jobs are mostly blocked, not computing).  $CAWAIT_POOL_THREADS
 * overrides it. */
#define CA_POOL_DEFAULT_MAX 32
/* Most threads one pool may have. */
#define CA_POOL_MAX_THREADS 1024

/* Options of a pool.  Zero means the default. */
typedef struct ca_pool_opts {
    /* Threads, started when the pool is made and kept until it shuts down.
     * 0: the default size above (CPUs + 4, or $CAWAIT_POOL_THREADS). */
    unsigned threads;
    /* Most jobs waiting for a thread; submitting more waits for room (back
     * pressure) or fails with -EAGAIN (ca_job_opts.nowait).  Running jobs
     * do not count.  0: unbounded. */
    size_t max_queued;
    /* Stack size of each thread in bytes; 0: the system default. */
    size_t stack_size;
} ca_pool_opts;

/*
 * Make a pool on the calling thread's loop and start its threads.  The
 * threads block every signal (signals are the loop's business).  *out owns
 * the pool until ca_pool_free.  Returns 0, or -EINVAL (out NULL, threads >
 * CA_POOL_MAX_THREADS, stack_size below PTHREAD_STACK_MIN), CA_ENOLOOP,
 * -ENOMEM, -EAGAIN (no more threads), or the error of eventfd(2); *out is
 * NULL on failure.  Never blocks (starting the threads takes microseconds).
 */
CA_EXTERN int ca_pool_new(ca_pool **out, const ca_pool_opts *opts);

/* Options of the loop's default pool, before it exists (it is made by the
 * first ca_to_thread or ca_pool_default).  opts is copied; NULL restores
 * the defaults.  Returns 0, -EINVAL (bad opts), CA_ENOLOOP, -ENOMEM, or
 * -EBUSY once the default pool exists.  Never blocks. */
CA_EXTERN int ca_pool_set_default_opts(const ca_pool_opts *opts);

/* The loop's default pool, made now if needed; owned by the loop (do not
 * ca_pool_free it).  Returns 0, CA_ENOLOOP, -EINVAL, or ca_pool_new's
 * errors; -ESHUTDOWN once the default pool was shut down. */
CA_EXTERN int ca_pool_default(ca_pool **out);

/* ca_pool_shutdown flags */
#define CA_POOL_DROP_QUEUED 0x1    /* queued jobs never run: -ECANCELED */
#define CA_POOL_CANCEL_RUNNING 0x2 /* set the cancel flag of every job */
#define CA_POOL_NOWAIT 0x4         /* start the shutdown, do not wait */

/*
 * Shut pool down: refuse new jobs (-ESHUTDOWN), run the queued ones (or
 * drop them with CA_POOL_DROP_QUEUED: they finish with -ECANCELED), wait
 * for every running job to return, join the threads and close the pool's
 * eventfd.  Tasks waiting for room in the queue get -ESHUTDOWN.  From a
 * task, the wait parks the task and the loop keeps running; elsewhere (a
 * callback, no task) it blocks the thread.  Calling it again waits for the
 * same shutdown.  With CA_POOL_NOWAIT it returns after starting the
 * shutdown; ca_pool_free or ca_run's end finishes it.  Returns 0, -EINVAL,
 * -EXDEV (another loop's pool), -ECANCELED/-ETIMEDOUT (the caller's; the
 * shutdown goes on).  Works on the default pool too (later ca_to_thread
 * calls then fail with -ESHUTDOWN).
 */
CA_EXTERN int ca_pool_shutdown(ca_pool *pool, int flags);

/*
 * Shut pool down if needed (as ca_pool_shutdown(pool, 0), blocking the
 * thread: from a task, call ca_pool_shutdown first so that the loop keeps
 * running) and free it.  Job handles still held stay valid until released.
 * Call it on the pool's loop thread, or after that loop's ca_run returned.
 * Returns 0, -EINVAL (NULL), -EPERM (the default pool belongs to the
 * loop), -EXDEV (another loop's thread).
 */
CA_EXTERN int ca_pool_free(ca_pool *pool);

typedef struct ca_pool_stats {
    unsigned threads;   /* threads alive (0 once a shutdown joined them) */
    size_t max_queued;  /* the queue's bound, 0: unbounded */
    size_t queued;      /* jobs waiting for a thread */
    size_t running;     /* jobs whose fn is running now */
    uint64_t submitted; /* jobs accepted */
    uint64_t completed; /* jobs whose fn returned */
    uint64_t cancelled; /* jobs removed from the queue before they ran */
    int shut_down;      /* 1 once ca_pool_shutdown started */
} ca_pool_stats;

/* Fill *out with pool's statistics (a snapshot: the counters move while
 * threads run).  Returns 0 or -EINVAL.  Thread-safe; never blocks for
 * long. */
CA_EXTERN int ca_pool_stats_get(ca_pool *pool, ca_pool_stats *out);

#endif /* CAWAIT_EXEC_H */
