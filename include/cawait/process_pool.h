/*
 * cawait process pool: CPU-bound work and isolation in worker processes
 * (concurrent.futures.ProcessPoolExecutor with loop.run_in_executor).
 * Included by <cawait.h>; do not include directly.  Linux only.
 *
 * A pool forks its worker processes when it is created.  A job is a
 * function plus input bytes; its result is output bytes.  Both travel over
 * a socketpair per worker, framed as a header (length, status) and the
 * bytes.  The calling task waits for the result without blocking the loop:
 * other tasks keep running, any number of tasks may submit at once, and
 * jobs queue (FIFO) for a free worker.
 *
 * Failure is contained: a worker that crashes (abort, SIGSEGV, exit) or is
 * killed from outside fails only the job it was running, with -ECHILD, and
 * is replaced by a new worker.  A job that runs past its timeout or a
 * deadline scope of the caller, or whose calling task is cancelled, gets
 * its worker killed with SIGKILL (a running C function cannot be
 * interrupted any other way); that worker is replaced too.  Worker death is
 * observed with a pidfd (Linux 5.3+), or, without one, by end of file on
 * the worker's socket and waitpid; no SIGCHLD handler is installed.  Every
 * worker is reaped: the pool leaves no zombie behind.
 *
 * The rules of fork (read them before writing a job):
 *  - A worker is a fork of the process at the moment it starts: the
 *    initial workers at ca_process_pool_new, a replacement when it replaces
 *    a dead worker.  The job function pointer is valid in the worker
 *    because it is the same program image; so are global variables, with
 *    the values they had at that moment.  A job must take everything it
 *    needs from its input bytes, not from memory the parent changes later.
 *    Functions of libraries loaded (dlopen) after the worker started do not
 *    exist in it.
 *  - The worker has one thread, which runs jobs on a stack of its own
 *    (worker_stack_size, with a guard page below it), and file descriptors
 *    0, 1 and 2 and its socket to the pool (fd 3, close-on-exec) only:
 *    every other descriptor of the parent is closed in the worker, so a
 *    worker never holds a parent's connection or listening socket open.
 *    Signal handlers are reset to their defaults, the signal mask is
 *    empty, and SIGINT is ignored (Ctrl-C reaches the parent, which shuts
 *    its pool down).  The worker gets
 *    SIGKILL if the thread that created it exits (PR_SET_PDEATHSIG), so
 *    workers do not outlive a parent that is killed.
 *  - A job must not touch the parent's loop, tasks, streams or other cawait
 *    objects: they are copies in the worker, and the parent owns the real
 *    ones.  Blocking cawait calls made by a job return -EPERM (there is no
 *    loop on the job's thread); a job may run a loop of its own with
 *    ca_run.  Output buffered in the parent's stdout/stderr at fork time is
 *    dropped in the worker, not printed twice; the worker flushes stdio
 *    after every job.
 *  - If other threads of the parent hold locks at fork time (inside
 *    libraries other than libc's malloc and stdio, which fork handles),
 *    those locks stay held in the worker forever: a job should not call
 *    into such libraries.
 *
 * A pool belongs to the loop (thread) that created it.  ca_run shuts down,
 * reaps and frees every pool still open when it returns.
 */
#ifndef CAWAIT_PROCESS_POOL_H
#define CAWAIT_PROCESS_POOL_H

/* ------------------------------------------------------------------------ */
/* Pools                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct ca_process_pool ca_process_pool;

/* Most workers a pool may have. */
#define CA_PROCESS_POOL_MAX_WORKERS 1024u
/* Default largest input and output of a job: 64 MiB each. */
#define CA_PROCESS_POOL_MSG_DEFAULT (64u * 1024u * 1024u)
/* Largest accepted max_input / max_output: 1 GiB. */
#define CA_PROCESS_POOL_MSG_MAX (1024u * 1024u * 1024u)
/* Default stack on which jobs run in a worker: 8 MiB. */
#define CA_PROCESS_POOL_STACK_DEFAULT (8u * 1024u * 1024u)

/* Options for ca_process_pool_new.  Zero (or NULL options) means "the
 * default" everywhere. */
typedef struct ca_process_pool_opts {
    /* Worker processes, 1..CA_PROCESS_POOL_MAX_WORKERS; 0: the number of
     * online CPUs (as ProcessPoolExecutor). */
    unsigned workers;
    /* Largest job input and output in bytes, at most
     * CA_PROCESS_POOL_MSG_MAX; 0: CA_PROCESS_POOL_MSG_DEFAULT.  Larger
     * inputs are refused before they are sent, larger outputs in the
     * worker, both with -EMSGSIZE. */
    size_t max_input;
    size_t max_output;
    /* Stack on which jobs run in each worker, in bytes (at least 64 KiB,
     * at most CA_PROCESS_POOL_MSG_MAX); 0: CA_PROCESS_POOL_STACK_DEFAULT. */
    size_t worker_stack_size;
    /* Default run-time limit of a job in seconds (see
     * ca_process_pool_job_opts.timeout); 0: none. */
    double job_timeout;
    /* Observe worker death by end of file on its socket and waitpid, as on
     * kernels without pidfd_open, even where pidfds work (for tests of that
     * path). */
    int no_pidfd;
} ca_process_pool_opts;

/*
 * Create a pool and fork its workers (see the rules of fork above).  The
 * pool belongs to the current loop; call from a task or a callback on the
 * loop's thread.  Stores the pool in *out and returns 0, or -EINVAL (bad
 * options, out NULL), -CA_ENOLOOP, -ENOMEM, -EAGAIN / -EMFILE (fork or
 * socketpair failed; nothing is left behind).  Never blocks on the loop,
 * but each fork takes the time the kernel needs to copy the process's page
 * tables (about a millisecond per GiB of mapped memory).
 */
CA_EXTERN int ca_process_pool_new(ca_process_pool **out,
                                  const ca_process_pool_opts *opts);

/*
 * Shut p down (executor.shutdown): new jobs fail with -ESHUTDOWN at once;
 * jobs running or queued get up to `grace` seconds (0: none, INFINITY: as
 * long as they need) to finish; then the queued ones fail with -ESHUTDOWN,
 * every worker is killed (SIGKILL) and the running jobs fail with
 * -ESHUTDOWN too.  Waits until every caller has left the pool and every
 * worker has been reaped, then frees p.
 *
 * Cancellation or a deadline scope of the caller ends the grace period
 * early; the rest (killing, reaping, freeing) always completes.  Returns 0,
 * or -ECANCELED / -ETIMEDOUT when the grace period was cut short that way
 * (p is freed in these cases too); -EINVAL (p NULL, grace negative or NaN,
 * p belongs to another loop, a shutdown of p already in progress) and
 * -EPERM (outside a task) leave p untouched.  Call it once: p is invalid
 * afterwards.  Blocking.
 */
CA_EXTERN int ca_process_pool_shutdown(ca_process_pool *p, double grace);

/* ------------------------------------------------------------------------ */
/* Jobs                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * A job, run in a worker process: in/in_len is a copy of the input (in is
 * NULL when in_len is 0; the worker frees it after the call).  To return
 * output, store a malloc'd buffer in *out and its length in *out_len (both
 * start as NULL / 0); the worker sends it and frees it.  The return value
 * is the job's status, handed to the caller as result.status: >= 0 success,
 * < 0 a failure of the job's own (the output is carried in both cases).
 */
typedef int (*ca_process_pool_job_fn)(const void *in, size_t in_len, void **out,
                                      size_t *out_len);

/* Per-job options for ca_process_pool_run.  Zero means default. */
typedef struct ca_process_pool_job_opts {
    /* Run-time limit of the job in seconds, counted from when a worker
     * takes it (time spent queued for a free worker does not count; put a
     * deadline scope around the call to bound the whole call).  Past it the
     * worker is killed and the call returns -ETIMEDOUT.  0: the pool's
     * job_timeout; INFINITY: no limit. */
    double timeout;
} ca_process_pool_job_opts;

/* What a job produced. */
typedef struct ca_process_pool_result {
    /* The job function's return value (when ca_process_pool_run returned
     * 0). */
    int status;
    /* The output bytes, malloc'd and owned by the caller from now on: free
     * them with free() or ca_process_pool_result_free.  NULL when len is 0
     * or the call failed. */
    void *data;
    size_t len;
    /* When the call failed with -ECHILD: the signal that ended the worker
     * (SIGABRT, SIGSEGV, SIGKILL...), or 0 if it exited, with exit_code
     * its exit status.  Both 0 if unknown (the call was cancelled while
     * the pool reaped the worker, or somebody else reaped it). */
    int signo;
    int exit_code;
} ca_process_pool_result;

/*
 * Run fn(in, in_len) in a worker of p and wait for its result (await
 * loop.run_in_executor(pool, fn, ...)).  The input is copied to the worker;
 * in may be reused as soon as the call returns.  The caller waits (other
 * tasks run) first for a free worker, in FIFO order, then for the job.
 *
 * Returns 0 when the job ran to completion: *res holds its status and
 * output (the caller owns res->data).  Otherwise *res is zeroed (except
 * signo / exit_code) and the call returns:
 *   -ECHILD      the worker died while running this job: it crashed
 *                (abort, SIGSEGV...), exited, or was killed by someone
 *                else; res->signo / res->exit_code say how.  The worker is
 *                replaced.  (A worker found dead before the job reached it
 *                is replaced and the job is tried on another worker.)
 *   -ETIMEDOUT   the job ran past its timeout, or a deadline scope of the
 *                caller passed; if the job had reached a worker, that
 *                worker was killed and is replaced.
 *   -ECANCELED   the caller was cancelled; the same applies.
 *   -EMSGSIZE    in_len > max_input (nothing is sent), or the job's output
 *                is larger than max_output (dropped in the worker, which
 *                stays).
 *   -ESHUTDOWN   the pool is shutting down (see ca_process_pool_shutdown).
 *   -ENOMEM      no memory for the output (the worker is replaced).
 *   -EPROTO      the worker broke the framing protocol (it is replaced).
 *   -EAGAIN...   no worker could be started (fork failed) and none is left.
 *   -EINVAL      p, fn or res NULL, in NULL with in_len > 0, a negative or
 *                NaN timeout, or p belongs to another loop.
 *   -EPERM       called outside a task.
 * A job's own negative status is not among these: it comes back as 0 with
 * res->status < 0.  Blocking.
 */
CA_EXTERN int ca_process_pool_run(ca_process_pool *p, ca_process_pool_job_fn fn,
                                  const void *in, size_t in_len,
                                  ca_process_pool_result *res,
                                  const ca_process_pool_job_opts *opts);

/* Free res->data and zero *res.  NULL is ignored.  Never blocks. */
CA_EXTERN void ca_process_pool_result_free(ca_process_pool_result *res);

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

typedef struct ca_process_pool_stats {
    unsigned workers;          /* worker processes alive (idle or busy) */
    unsigned busy;             /* workers running a job now */
    unsigned queued;           /* calls waiting for a free worker */
    uint64_t jobs_done;        /* jobs that ran to completion (any status) */
    uint64_t jobs_failed;      /* calls that failed after being accepted:
                                  crash, timeout, cancel, shutdown... */
    uint64_t workers_started;  /* forks, the initial workers included */
    uint64_t workers_replaced; /* started to replace a dead worker */
    uint64_t workers_crashed;  /* died on their own or killed by others */
    uint64_t workers_killed;   /* killed by the pool (timeout, cancel,
                                  shutdown) */
} ca_process_pool_stats;

/* Fill *out with p's statistics.  Returns 0 or -EINVAL.  Never blocks. */
CA_EXTERN int ca_process_pool_stats_get(const ca_process_pool *p,
                                        ca_process_pool_stats *out);

#endif /* CAWAIT_PROCESS_POOL_H */
