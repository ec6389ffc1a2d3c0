/*
 * cawait structured concurrency: gather, wait, wait_for, as_completed, task
 * groups and task shields.  Included by <cawait.h>; do not include directly.
 *
 * The tasks passed in stay owned by the caller (no handle is released).  All
 * functions here are blocking (task context only, -EPERM elsewhere) unless
 * noted, and honour the caller's cancellation and deadline scopes.
 */
#ifndef CAWAIT_CONCURRENCY_H
#define CAWAIT_CONCURRENCY_H

/* ------------------------------------------------------------------------ */
/* gather                                                                   */
/* ------------------------------------------------------------------------ */

/* ca_gather flags */
#define CA_GATHER_ALL 0x1 /* wait for every task (return_exceptions=True) */

/*
 * asyncio.gather over n tasks.  Default: returns the first failure as soon
 * as it happens (the other tasks keep running), or 0 when every task has
 * succeeded.  CA_GATHER_ALL: waits for every task and returns 0, or the
 * status of the first failed task in array order; each task's own status is
 * readable with ca_task_status.  If the caller is cancelled (or its deadline
 * passes) while gathering, the unfinished tasks are cancelled (except
 * shielded ones, see ca_task_shield) and waited for, and -ECANCELED (or
 * -ETIMEDOUT) is returned.  n == 0 returns 0.  -EINVAL for a NULL array or
 * task or unknown flags, -EPERM outside a task, -ENOMEM (more than 16 tasks
 * need a small allocation).
 */
CA_EXTERN int ca_gather(ca_task **ts, size_t n, int flags);

/* ------------------------------------------------------------------------ */
/* wait                                                                     */
/* ------------------------------------------------------------------------ */

enum ca_wait_when {
    CA_ALL_COMPLETED = 0,
    CA_FIRST_COMPLETED,
    CA_FIRST_EXCEPTION, /* first failure (status < 0), or all completed */
};

/*
 * asyncio.wait: wait until the condition `when` holds or `timeout` seconds
 * pass (timeout < 0: no timeout).  Never cancels anything.  Returns the
 * number of tasks done (ca_task_done tells which), including on timeout, or
 * -ECANCELED/-ETIMEDOUT (the caller's cancellation or deadline scope),
 * -EINVAL, -EPERM, -ENOMEM (more than 16 tasks need a small allocation).
 * Each call watches all n tasks: asyncio's "while pending: wait(pending,
 * FIRST_COMPLETED)" loop is quadratic here as there (10k tasks: 0.56 s,
 * 40k: 10.8 s); to take n tasks as they finish, use ca_as_completed
 * (linear: 100k in 0.56 s).
 */
CA_EXTERN int ca_wait(ca_task **ts, size_t n, double timeout, int when);

/* ------------------------------------------------------------------------ */
/* wait_for                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * asyncio.wait_for: wait for t for up to `timeout` seconds.  Returns t's
 * status if it finishes in time.  On timeout, cancels t, waits until it has
 * really finished and returns -ETIMEDOUT — unless t finished in the same
 * turn, in which case its result wins (asyncio bug #86296).  If the caller
 * is cancelled, t is cancelled and waited for, and -ECANCELED is returned.
 * A shielded t (ca_task_shield) is not cancelled: -ETIMEDOUT is returned
 * and it keeps running.  timeout < 0: no timeout.  A cancellation of the
 * caller that loses to t's result stays requested: the caller's next
 * blocking call returns -ECANCELED.  -EINVAL for NULL or a NaN timeout,
 * -EDEADLK if t is the caller, -EPERM outside a task.
 */
CA_EXTERN int ca_wait_for(ca_task *t, double timeout);

/* ------------------------------------------------------------------------ */
/* as_completed                                                             */
/* ------------------------------------------------------------------------ */

typedef struct ca_as_completed ca_as_completed;

/* An iterator that yields the n tasks in the order they finish, with an
 * overall timeout (< 0: none) counted from creation.  The tasks must stay
 * referenced (not ca_task_release'd) until ca_as_completed_free.  Never
 * blocks.
 * Returns 0 and stores the iterator, or -EINVAL, -ENOMEM, -CA_ENOLOOP. */
CA_EXTERN int ca_as_completed_new(ca_as_completed **out, ca_task **ts,
                                  size_t n, double timeout);
/* The next task to finish: returns 1 and stores it in *t, 0 when every task
 * has been returned, -ETIMEDOUT when the overall timeout has passed,
 * -ECANCELED, -EPERM.  Blocking. */
CA_EXTERN int ca_as_completed_next(ca_as_completed *it, ca_task **t);
/* Free the iterator (the tasks are untouched).  The caller must keep its
 * references to the tasks until then: the iterator looks at them here. */
CA_EXTERN void ca_as_completed_free(ca_as_completed *it);

/* ------------------------------------------------------------------------ */
/* Task groups                                                              */
/* ------------------------------------------------------------------------ */

typedef struct ca_group ca_group;

/*
 * Options of ca_group_new_ex.  The zero value (and NULL) is ca_group_new's
 * group: it keeps every child until ca_group_free.
 */
typedef struct ca_group_opts {
    /*
     * 0: keep every child, finished or not, until ca_group_free, so that
     * ca_group_task can return the i-th child after ca_group_wait.  The
     * group then grows by about 185 bytes per child spawned, for its whole
     * life: fine for a batch, not for a server's lifetime.
     *
     * 1: release each child the moment it finishes (asyncio.TaskGroup drops
     * finished tasks from its set; a Trio nursery keeps none), so a
     * long-lived group costs only its unfinished children.  The first
     * failure is still recorded and returned by ca_group_wait (the group
     * keeps that one child until ca_group_free), a failure still cancels
     * the siblings, and ca_group_cancel, ca_group_wait and ca_group_free
     * still cancel and wait for every unfinished child.  Differences:
     * ca_group_size counts the unfinished children only, ca_group_task
     * always returns NULL, and ca_group_spawn's `out` receives a reference
     * of the caller's own (see ca_group_spawn).  A child's failure other
     * than the first is returned by nothing: unless read through such a
     * reference (ca_task_status), it is reported on stderr when the task is
     * freed, like any failed task that nobody joined.
     */
    int release_finished;
} ca_group_opts;

/* Create a group (asyncio.TaskGroup, a Trio nursery) that keeps every child
 * (ca_group_opts' zero value).  Returns 0 and stores it, or -EINVAL (out
 * NULL), -ENOMEM, -CA_ENOLOOP.  Never blocks.  Free it with
 * ca_group_free. */
CA_EXTERN int ca_group_new(ca_group **out);
/* ca_group_new with options (NULL: as ca_group_new).  Returns 0 and stores
 * the group, or -EINVAL (out NULL, release_finished not 0 or 1), -ENOMEM,
 * -CA_ENOLOOP.  Never blocks. */
CA_EXTERN int ca_group_new_ex(ca_group **out, const ca_group_opts *opts);
/*
 * Spawn fn(arg) into g.  Never blocks (except that an eager child, see
 * ca_spawn_opts, runs until it first blocks).  If out is not NULL the task
 * is stored in *out (NULL on failure):
 *  - in a group that keeps its children, the group owns it: do not release
 *    it; it stays valid until ca_group_free;
 *  - in a group with release_finished, the caller gets a reference of its
 *    own and must give it back with ca_task_release (the task is freed
 *    once the child has finished and that reference is released, whichever
 *    comes last).  With out NULL the group holds the only handle, and
 *    nothing may look at the task after it finishes.
 * Returns 0, -ESHUTDOWN if the group is closing (a child failed, it was
 * cancelled, or ca_group_wait returned), -EINVAL, -ENOMEM.
 */
#define ca_group_spawn(g, out, fn, arg)                                        \
    ca__group_spawn((g), (out), (fn), (arg), NULL, CA__WHERE)
#define ca_group_spawn_ex(g, out, fn, arg, opts)                               \
    ca__group_spawn((g), (out), (fn), (arg), (opts), CA__WHERE)
CA_EXTERN int ca__group_spawn(ca_group *g, ca_task **out, ca_fn fn, void *arg,
                              const ca_spawn_opts *opts, const char *where);
/*
 * Wait until every child has finished.  The first child to fail cancels all
 * its siblings (at the moment it fails, whether or not anyone is waiting);
 * the group then closes.  Returns 0 if every child succeeded, else the first
 * failure; a child that ends -ECANCELED because the group cancelled it
 * (ca_group_cancel, a sibling's failure) is not a failure, as in asyncio's
 * TaskGroup, but its own status stays readable.  If the caller is cancelled
 * (or its deadline passes) while waiting, every child is cancelled, all are
 * waited for, and -ECANCELED (or -ETIMEDOUT) is returned.  The group may be
 * waited on again; it stays closed.  -EINVAL, -EPERM.  Blocking.
 */
CA_EXTERN int ca_group_wait(ca_group *g);
/* Cancel every unfinished child and close the group.  Never blocks.  Returns
 * 0 or -EINVAL. */
CA_EXTERN int ca_group_cancel(ca_group *g);
/* Keeping group: the children spawned so far, and the i-th of them in spawn
 * order (NULL if out of range), to read each child's status after
 * ca_group_wait.  release_finished group: ca_group_size is the number of
 * children not finished yet (0 after ca_group_wait) and ca_group_task
 * returns NULL (a finished child is gone; keep the reference from
 * ca_group_spawn's out to look at one).  0 / NULL for g NULL.  Never
 * block. */
CA_EXTERN size_t ca_group_size(const ca_group *g);
CA_EXTERN ca_task *ca_group_task(const ca_group *g, size_t i);
/* Free g and release the group's references to its tasks (references the
 * caller got from ca_group_spawn stay valid).  Children still running are
 * cancelled and waited for first (blocking, not a cancellation point; from
 * outside a task they are cancelled and left to finish on their own).  NULL
 * is ignored. */
CA_EXTERN void ca_group_free(ca_group *g);

/* ------------------------------------------------------------------------ */
/* Shielding a task                                                         */
/* ------------------------------------------------------------------------ */

/* asyncio.shield: the combinators above (gather, wait_for, groups) no longer
 * cancel t when their caller is cancelled or times out; only an explicit
 * ca_cancel(t) does.  (ca_join never cancels the task it joins.)  Returns 0
 * or -EINVAL.  Never blocks. */
CA_EXTERN int ca_task_shield(ca_task *t);

#endif /* CAWAIT_CONCURRENCY_H */
