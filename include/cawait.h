/*
 * cawait: asyncio for C.
 *
 * One event loop per thread runs stackful tasks.  A task calls blocking-style
 * functions (ca_sleep, ca_wait_fd, ca_join, ...); while it waits, the loop
 * runs the others.  Every blocking call returns 0 (or a non-negative result)
 * on success and a negative errno value on failure; the runtime injects two
 * of them: -ECANCELED (the task was cancelled) and -ETIMEDOUT (a deadline
 * scope expired).  There is no global errno.
 *
 * Thread safety: unless a function says otherwise, it must be called on the
 * thread that runs the loop.  "Blocking" functions may only be called from a
 * task; called from anywhere else they return -EPERM.
 *
 * The headers use POSIX types (ssize_t, sigset_t, struct sockaddr): compile
 * in the compiler's default mode (gnu17) or, with -std=c11, define
 * _POSIX_C_SOURCE=200809L (or _GNU_SOURCE) first, as for any POSIX API.
 *
 * MIT licensed.  See docs/ for the guide and docs/design.md for the design.
 */
#ifndef CAWAIT_H
#define CAWAIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CAWAIT_BUILDING) && defined(__GNUC__)
#define CA_EXTERN __attribute__((visibility("default")))
#else
#define CA_EXTERN
#endif

#define CAWAIT_VERSION_MAJOR 0
#define CAWAIT_VERSION_MINOR 1
#define CAWAIT_VERSION_PATCH 0

#define CA__STR2(x) #x
#define CA__STR(x) CA__STR2(x)
/* Where a task was spawned: a string literal, so it costs nothing. */
#define CA__WHERE __FILE__ ":" CA__STR(__LINE__)

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * cawait's own error codes live above CA_ERR_BASE so they never collide with
 * errno values.  Like errno values they are returned negated.  Codes are only
 * ever appended, never renumbered.
 */
#define CA_ERR_BASE 10000
#define CA_ERRNO_MAP(X)                                                        \
    X(CA_EUNKNOWN, 1, "unknown cawait error")                                  \
    X(CA_ESTACK, 2, "task stack could not be allocated")                       \
    X(CA_ENOLOOP, 3, "no cawait loop is running on this thread")               \
    X(CA_EBROKEN, 4, "barrier is broken")                                      \
    X(CA_ENORESOLVER, 5,                                                       \
      "host names other than numeric and localhost need "                      \
      "the resolver")                                                          \
    X(CA_EINCOMPLETE, 6, "stream ended before the expected data")              \
    X(CA_ENOTFOUND, 7, "host name not found")                                  \
    X(CA_EDNSFAIL, 8, "DNS server failure")                                    \
    X(CA_EDNS, 9, "DNS lookup failed")                                         \
    X(CA_ETLS, 10, "TLS protocol error")                                       \
    X(CA_ECERT, 11, "TLS certificate verification failed")                     \
    X(CA_ECERTUNTRUSTED, 12,                                                   \
      "TLS certificate not trusted (unknown issuer or "                        \
      "self-signed)")                                                          \
    X(CA_ECERTEXPIRED, 13, "TLS certificate expired or not yet valid")         \
    X(CA_ECERTHOST, 14, "TLS certificate does not match the host name")        \
    X(CA_ENOTLS, 15, "built without TLS support")                              \
    X(CA_EHTTP, 16, "HTTP transfer failed")                                    \
    X(CA_EREDIRECTS, 17, "too many HTTP redirects")                            \
    X(CA_EHTTPSTATUS, 18, "HTTP error status (4xx or 5xx)")                    \
    X(CA_ENOHTTP, 19, "built without the HTTP client (libcurl)")

enum {
#define CA__ERR_ENUM(name, n, msg) name = CA_ERR_BASE + (n),
    CA_ERRNO_MAP(CA__ERR_ENUM)
#undef CA__ERR_ENUM
};

/* A static, human-readable message for err (negative or positive errno or
 * cawait code).  Never NULL; unknown codes give "unknown error".
 * Thread-safe. */
CA_EXTERN const char *ca_strerror(int err);
/* The symbolic name of err ("ECANCELED", "CA_ESTACK"), or "E?" if unknown.
 * Static storage, never NULL.  Thread-safe. */
CA_EXTERN const char *ca_err_name(int err);

/* ------------------------------------------------------------------------ */
/* Tasks and the loop                                                       */
/* ------------------------------------------------------------------------ */

typedef struct ca_task ca_task;
typedef struct ca_loop ca_loop;

/*
 * A task body.  Its return value is the task's status: >= 0 is success (the
 * value is the task's integer result), < 0 is failure (a negative errno or
 * cawait code).  A failed task that nobody joins is reported on stderr when
 * it is collected ("cawait: task '...' ... failed with ... and was never
 * joined", asyncio's "exception was never retrieved").
 */
typedef int (*ca_fn)(void *arg);

/* Options for ca_run_ex.  Zero (or NULL) means "the default" everywhere. */
typedef struct ca_run_opts {
    /* Default stack size of tasks in bytes, rounded up to the page size.
     * 0: CA_STACK_DEFAULT, or $CAWAIT_STACK_SIZE if set. */
    size_t stack_size;
    /* Debug mode: report tasks that hold the loop longer than slow_ms and
     * misuse of blocking calls.  Also enabled by $CAWAIT_DEBUG=1. */
    int debug;
    /* Slow-task threshold in milliseconds for debug mode; 0: 100 ms or
     * $CAWAIT_SLOW_MS. */
    double slow_ms;
    /* Name of the main task; NULL: "main". */
    const char *main_name;
    /* 1: leave SIGINT and SIGTERM alone.  0 (default): on the main thread,
     * while a signal is at its default disposition and not blocked, the
     * first SIGINT or SIGTERM cancels the main task and a second one kills
     * the process with that signal (asyncio.Runner); the mask is restored
     * when ca_run returns.  Also disabled by $CAWAIT_NO_SIGNAL_HANDLERS=1.
     * See docs/processes.md. */
    int no_signal_handlers;
} ca_run_opts;

/* Default task stack size: 128 KiB of address space, committed lazily (a
 * task that uses 3 KiB of stack costs one 4 KiB page). */
#define CA_STACK_DEFAULT (128u * 1024u)
/* Smallest accepted stack size. */
#define CA_STACK_MIN (16u * 1024u)

/*
 * asyncio.run: create a loop on this thread, run main(arg) as a task named
 * "main" until it returns, then cancel every task still alive and wait for
 * them and for the sockets still closing (ca_stream_close lingers; ca_run
 * waits only until each peer has acknowledged all we sent: about a round
 * trip, at most 10 s), collect everything, destroy the
 * loop and return main's status.
 * Returns -EBUSY if a loop already runs on this thread, -EINVAL if main is
 * NULL, or another negative errno if the loop cannot be created.
 * Blocks the calling thread for the whole run.
 */
CA_EXTERN int ca_run(ca_fn main, void *arg);
/* ca_run with options; opts may be NULL. */
CA_EXTERN int ca_run_ex(ca_fn main, void *arg, const ca_run_opts *opts);

/* The loop running on this thread, or NULL.  Use it to hand the loop to
 * another thread for ca_call_soon_threadsafe. */
CA_EXTERN ca_loop *ca_loop_current(void);

/* Options for spawning a task.  Zero means default. */
typedef struct ca_spawn_opts {
    const char *name;  /* copied; NULL: "Task-<id>" */
    size_t stack_size; /* bytes; 0: the loop's default; below CA_STACK_MIN:
                          CA_STACK_MIN; above 1 GiB: EINVAL */
    int eager;         /* run the body at once, inside the spawn call, until
                          it first blocks (asyncio's eager_task_factory) */
} ca_spawn_opts;

/*
 * Create a task that runs fn(arg).  It starts at the loop's next turn, after
 * the tasks already ready (FIFO), unless opts->eager.  May be called from a
 * task or from a callback on the loop's thread.  The caller owns one
 * reference to the returned task: it stays valid (for ca_join, ca_cancel,
 * queries) until ca_task_release or ca_detach, or until ca_run returns, which
 * collects every task.  A task has no stack until it first runs.
 *
 * ca_spawn returns NULL on failure (no loop: CA_ENOLOOP; fn NULL: EINVAL; out
 * of memory: ENOMEM); ca_spawn_ex returns 0 and stores the task in *out,
 * or a negative code.  Never blocks, except an eager task runs until it
 * first blocks.
 */
#define ca_spawn(fn, arg) ca__spawn((fn), (arg), NULL, CA__WHERE)
#define ca_spawn_ex(out, fn, arg, opts)                                        \
    ca__spawn_ex((out), (fn), (arg), (opts), CA__WHERE)
CA_EXTERN ca_task *ca__spawn(ca_fn fn, void *arg, const ca_spawn_opts *opts,
                             const char *where);
CA_EXTERN int ca__spawn_ex(ca_task **out, ca_fn fn, void *arg,
                           const ca_spawn_opts *opts, const char *where);

/*
 * Wait until t has finished and return its status (its return value, or
 * -ECANCELED if it was cancelled before it started).  Any number of tasks may
 * join the same task, and a joiner keeps t alive while it waits even if the
 * last handle is released meanwhile.  Joining marks a failure as retrieved.
 * Blocking; fails with -ECANCELED or -ETIMEDOUT if the caller is cancelled
 * or its deadline passes (t keeps running), -EDEADLK if t is the caller,
 * -EINVAL if t is NULL, -EPERM outside a task.  Joining a task that has
 * already finished does not block and is not a cancellation point.
 */
CA_EXTERN int ca_join(ca_task *t);

/*
 * Request cancellation of t.  Cancellation is level-triggered: the blocking
 * call t is in returns -ECANCELED, and so does every later one until t
 * returns, except inside a shield scope.  A task that has not started never
 * runs its body and finishes with -ECANCELED.  Cancelling a finished task
 * does nothing.  Returns 0, or -EINVAL if t is NULL.  Never blocks.
 */
CA_EXTERN int ca_cancel(ca_task *t);

/* Drop the caller's reference to t.  The task keeps running; its memory is
 * freed when it has finished and no reference is left.  t must not be used
 * afterwards.  A failure it returns and nobody retrieved is reported.
 * NULL is accepted and ignored. */
CA_EXTERN void ca_task_release(ca_task *t);
/* Same as ca_task_release: "fire and forget". */
CA_EXTERN void ca_detach(ca_task *t);

/* The running task, or NULL when called outside a task. */
CA_EXTERN ca_task *ca_current(void);
/* t's name ("main", the spawn name, or "Task-<id>").  Owned by t. */
CA_EXTERN const char *ca_task_name(const ca_task *t);
/* Rename t; name is copied.  Returns 0, -EINVAL, or -ENOMEM. */
CA_EXTERN int ca_task_set_name(ca_task *t, const char *name);
/* Where t was spawned, "file.c:123". */
CA_EXTERN const char *ca_task_where(const ca_task *t);
/* A unique id, counting from 1 for main, per loop. */
CA_EXTERN uint64_t ca_task_id(const ca_task *t);
/* 1 if t has finished, else 0. */
CA_EXTERN int ca_task_done(const ca_task *t);
/* 1 if t has finished and its status is -ECANCELED, else 0. */
CA_EXTERN int ca_task_cancelled(const ca_task *t);
/* 1 if cancellation of t was requested (done or not), else 0. */
CA_EXTERN int ca_task_cancel_requested(const ca_task *t);
/* t's status if done, else -EAGAIN.  Marks a failure as retrieved. */
CA_EXTERN int ca_task_status(ca_task *t);
/* A task-local user pointer (NULL until set). */
CA_EXTERN void *ca_task_userdata(const ca_task *t);
CA_EXTERN void ca_task_set_userdata(ca_task *t, void *p);

/* ------------------------------------------------------------------------ */
/* Time, sleeping, deadlines, shields                                       */
/* ------------------------------------------------------------------------ */

/* The loop's monotonic time in seconds: CLOCK_MONOTONIC, cached each time
 * the loop polls for events and at least every 128 task slices (a busy loop
 * reads the clock then, and polls only if 50 us have passed since its last
 * poll), so it may lag inside a long slice.  Outside a loop: the current
 * monotonic time. */
CA_EXTERN double ca_now(void);
/* The same in nanoseconds. */
CA_EXTERN int64_t ca_now_ns(void);

/*
 * Suspend the calling task for `seconds` (measured from the call).
 * ca_sleep(0) yields: the task goes to the back of the ready queue.
 * Returns 0, -ECANCELED, -ETIMEDOUT, -EINVAL (negative or NaN seconds), or
 * -EPERM outside a task.
 */
CA_EXTERN int ca_sleep(double seconds);
/* Yield to the other ready tasks; same as ca_sleep(0). */
CA_EXTERN int ca_yield(void);

/*
 * Deadline scopes (asyncio.timeout).  Push a deadline `seconds` from now
 * (ca_deadline_push) or at an absolute ca_now() time (ca_deadline_push_at).
 * Scopes nest; the earliest deadline of all open scopes applies.  Once it
 * passes, every blocking call in the task fails with -ETIMEDOUT until the
 * scope is popped.  ca_deadline_pop closes the innermost scope and returns
 * -ETIMEDOUT if this scope's deadline interrupted a blocking call (or has
 * passed), else 0.  push returns 0, -EINVAL, -ENOMEM (out of memory, or
 * 4,096 scopes already open in this task), or -EPERM outside a task; pop
 * returns -EPERM if no scope is open, or if a shield scope opened inside this
 * one is still open (pop that first).  Never block.
 */
CA_EXTERN int ca_deadline_push(double seconds);
CA_EXTERN int ca_deadline_push_at(double when);
CA_EXTERN int ca_deadline_pop(void);

/*
 * Shield scopes: between ca_shield_push and ca_shield_pop, blocking calls
 * of the current task ignore its cancellation and the deadlines of scopes
 * opened outside the shield (deadline scopes opened inside still apply).
 * Use them for cleanup that must complete.  Cancellation requested during
 * the shield takes effect after the pop.  Return 0, or -EPERM outside a
 * task / without an open shield; push: -EOVERFLOW beyond 65,535 nested
 * shields; pop: -EBUSY while a deadline scope opened inside the shield is
 * still open (pop that first).
 */
CA_EXTERN int ca_shield_push(void);
CA_EXTERN int ca_shield_pop(void);

/* ------------------------------------------------------------------------ */
/* Callbacks                                                                */
/* ------------------------------------------------------------------------ */

typedef void (*ca_cb)(void *arg);

/*
 * A handle to a scheduled callback.  A plain value: copy it freely.  A handle
 * whose callback already ran or was cancelled is stale, and cancelling a
 * stale handle is harmless.  The zero value is a valid "no handle".
 */
typedef struct ca_handle {
    void *p;
    uint64_t gen;
} ca_handle;

/*
 * Schedule cb(arg) on the current loop: at the next turn after what is
 * already ready (call_soon), `delay` seconds after ca_now() (call_later), or
 * at the absolute loop time `when` (call_at).  Callbacks run on the loop's
 * thread outside any task: they must not block (blocking calls return
 * -EPERM there) but may spawn tasks.  Callbacks never run inside the
 * call that schedules them.  On success *h (if h is not NULL) receives a
 * handle and 0 is returned; otherwise -EINVAL (cb NULL, bad time),
 * CA_ENOLOOP, or -ENOMEM.  Never block.
 */
CA_EXTERN int ca_call_soon(ca_cb cb, void *arg, ca_handle *h);
CA_EXTERN int ca_call_later(double delay, ca_cb cb, void *arg, ca_handle *h);
CA_EXTERN int ca_call_at(double when, ca_cb cb, void *arg, ca_handle *h);
/* Cancel a scheduled callback.  Returns 1 if it was pending and will not
 * run, 0 if the handle was stale. */
CA_EXTERN int ca_handle_cancel(ca_handle h);

/*
 * Schedule cb(arg) on `loop` from any thread, including the loop's own and
 * while the loop sleeps in the kernel (it is woken through an eventfd).
 * Callbacks from one thread run in the order they were submitted.  Returns
 * 0, -EINVAL, -ENOMEM, or -ESHUTDOWN once the loop is shutting down.  The
 * loop pointer must stay valid: stop calling before ca_run returns.
 * Thread-safe; never blocks for long.
 */
CA_EXTERN int ca_call_soon_threadsafe(ca_loop *loop, ca_cb cb, void *arg);

/* ------------------------------------------------------------------------ */
/* File descriptors                                                         */
/* ------------------------------------------------------------------------ */

#define CA_READ 0x1    /* readable (or EOF / peer hang-up) */
#define CA_WRITE 0x4   /* writable */
#define CA_ERROR 0x8   /* error condition on the fd */
#define CA_HANGUP 0x10 /* hang-up */

/*
 * Wait until fd is ready for `events` (CA_READ and/or CA_WRITE).  fd should
 * be non-blocking; the pattern is: try the syscall, and on EAGAIN wait and
 * retry.  The fd is registered with the loop's backend once (edge-
 * triggered) and stays registered until ca_close or ca_fd_forget.  Returns a
 * positive mask of the ready events (CA_ERROR/CA_HANGUP included when they
 * occur), -ECANCELED, -ETIMEDOUT, -EBADF if the fd was closed with ca_close
 * while waiting (or is invalid), -EINVAL for bad events, -EPERM outside a
 * task.  Blocking.
 */
CA_EXTERN int ca_wait_fd(int fd, int events);

/* Forget fd: remove it from the backend and wake every task waiting on it
 * with -EBADF.  Call before closing an fd that was waited on by other means
 * than ca_close.  Returns 0, -EBADF (negative fd), -CA_ENOLOOP (no loop on
 * this thread).  A plain close() does not wake the waiters: they wait on
 * until their deadline or cancellation. */
CA_EXTERN int ca_fd_forget(int fd);
/* ca_fd_forget(fd) then close(fd).  Returns 0 or a negative errno.  Safe to
 * use on any fd, inside or outside a loop. */
CA_EXTERN int ca_close(int fd);

/* ------------------------------------------------------------------------ */
/* Statistics and debugging                                                 */
/* ------------------------------------------------------------------------ */

typedef struct ca_loop_stats {
    uint64_t turns;     /* loop turns (see docs/design.md) */
    uint64_t tasks_run; /* task slices: times a task was resumed */
    uint64_t callbacks_run;
    uint64_t tasks_spawned;
    uint64_t tasks_live; /* tasks not yet collected */
    uint64_t
        slow_tasks;  /* slices (tasks, callbacks) over the debug threshold */
    int64_t poll_ns; /* time spent waiting in the backend */
    int64_t run_ns;  /* time spent running tasks and callbacks */
    const char *backend; /* "epoll" */
} ca_loop_stats;

/* Fill *out with the current loop's statistics.  Returns 0, -EINVAL, or
 * CA_ENOLOOP. */
CA_EXTERN int ca_loop_stats_get(ca_loop_stats *out);

/* Turn debug mode on (1) or off (0) for the current loop, with a slow-task
 * threshold in milliseconds (<= 0 keeps the current one).  In debug mode a
 * task slice longer than the threshold is reported on stderr with the
 * task's name, where it was spawned and how long it held the loop; so is a
 * callback that runs longer, by symbol or file+offset.  Returns
 * 0 or -CA_ENOLOOP (no loop on this thread).  Never blocks. */
CA_EXTERN int ca_set_debug(int on, double slow_ms);

/* Structured concurrency; synchronization, queues and generators. */
/* The order matters (clang-format would sort it). */
/* clang-format off */
#include "cawait/concurrency.h"
#include "cawait/exec.h"
#include "cawait/net.h"
#include "cawait/http.h"
#include "cawait/process_pool.h"
#include "cawait/io.h" /* after net.h: uses streams */
#include "cawait/sync.h"
/* clang-format on */

#ifdef __cplusplus
}
#endif
#endif /* CAWAIT_H */
