/* Structured concurrency: gather, wait, wait_for, as_completed, groups. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct job {
    double secs;
    int result;      /* returned after the sleep */
    int finished;    /* set when the body completes normally */
    int cancelled;   /* set when its sleep was cancelled */
};

static int job_run(void *a)
{
    struct job *j = a;
    int r = ca_sleep(j->secs);
    if (r == -ECANCELED) {
        j->cancelled = 1;
        return r;
    }
    j->finished = 1;
    return j->result;
}

static ca_task *spawn_job(struct job *j)
{
    ca_task *t = ca_spawn(job_run, j);
    ASSERT(t);
    return t;
}

static void release_all(ca_task **ts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ca_task_release(ts[i]);
}

/* ---- gather -------------------------------------------------------------- */

static int gather100_main(void *a)
{
    (void)a;
    /* seed 001: 100 tasks x sleep(0.1 s) gathered in about 0.1 s */
    enum { N = 100 };
    static struct job jobs[N];
    ca_task *ts[N];
    double t0 = mono();
    for (int i = 0; i < N; i++) {
        jobs[i] = (struct job){.secs = 0.1, .result = i};
        ts[i] = spawn_job(&jobs[i]);
    }
    ASSERT_EQ(ca_gather(ts, N, 0), 0);
    double dt = mono() - t0;
    printf("gather 100 x 0.1 s: %.3f s\n", dt);
    ASSERT_GE(dt, 0.1);
    ASSERT_TIME_LT(dt, 0.4);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(ca_task_status(ts[i]), i);
    release_all(ts, N);
    ASSERT_EQ(ca_gather(NULL, 0, 0), 0);
    ASSERT_EQ(ca_gather(NULL, 1, 0), -EINVAL);
    return 0;
}

static void test_gather_100(void)
{
    ASSERT_EQ(ca_run(gather100_main, NULL), 0);
}

/* seed 003: gather(return_exceptions=True) lets the others finish ... */
static int gather_fail_main(void *a)
{
    (void)a;
    struct job jobs[3] = {{0.05, 1, 0, 0}, {0.02, -EIO, 0, 0}, {0.1, 3, 0, 0}};
    ca_task *ts[3];
    for (int i = 0; i < 3; i++)
        ts[i] = spawn_job(&jobs[i]);
    double t0 = mono();
    ASSERT_EQ(ca_gather(ts, 3, CA_GATHER_ALL), -EIO);
    ASSERT_GE(mono() - t0, 0.1); /* waited for all */
    ASSERT(jobs[0].finished && jobs[2].finished);
    ASSERT_EQ(ca_task_status(ts[0]), 1);
    ASSERT_EQ(ca_task_status(ts[1]), -EIO);
    ASSERT_EQ(ca_task_status(ts[2]), 3);
    release_all(ts, 3);

    /* ... and without it, the first failure returns at once while the
     * others keep running. */
    struct job j2[3] = {{0.05, 1, 0, 0}, {0.02, -EIO, 0, 0}, {0.1, 3, 0, 0}};
    for (int i = 0; i < 3; i++)
        ts[i] = spawn_job(&j2[i]);
    t0 = mono();
    ASSERT_EQ(ca_gather(ts, 3, 0), -EIO);
    ASSERT_TIME_LT(mono() - t0, 0.08);
    ASSERT(!ca_task_done(ts[2]));
    ASSERT_EQ(ca_join(ts[2]), 3);
    ASSERT(j2[0].finished && j2[2].finished);
    release_all(ts, 3);
    return 0;
}

static void test_gather_failure_modes(void)
{
    ASSERT_EQ(ca_run(gather_fail_main, NULL), 0);
}

static struct job gc_jobs[3];
static ca_task *gc_ts[3];

static int gatherer(void *a)
{
    (void)a;
    return ca_gather(gc_ts, 3, CA_GATHER_ALL);
}

static int gather_cancel_main(void *a)
{
    (void)a;
    for (int i = 0; i < 3; i++) {
        gc_jobs[i] = (struct job){.secs = 10, .result = i};
        gc_ts[i] = spawn_job(&gc_jobs[i]);
    }
    ca_task_shield(gc_ts[2]);
    ca_task *g = ca_spawn(gatherer, NULL);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ca_cancel(g); /* cancels the gathered tasks too, except the shielded */
    ASSERT_EQ(ca_join(g), -ECANCELED);
    ASSERT(gc_jobs[0].cancelled && gc_jobs[1].cancelled);
    ASSERT(ca_task_done(gc_ts[0]) && ca_task_done(gc_ts[1]));
    ASSERT(!ca_task_done(gc_ts[2]));
    ca_cancel(gc_ts[2]);
    ASSERT_EQ(ca_join(gc_ts[2]), -ECANCELED);
    ca_task_release(g);
    release_all(gc_ts, 3);
    return 0;
}

static void test_gather_caller_cancelled(void)
{
    ASSERT_EQ(ca_run(gather_cancel_main, NULL), 0);
}

/* ---- wait ---------------------------------------------------------------- */

static int wait_main(void *a)
{
    (void)a;
    struct job jobs[3] = {{0.03, 1, 0, 0}, {0.06, -EIO, 0, 0}, {0.2, 3, 0, 0}};
    ca_task *ts[3];
    for (int i = 0; i < 3; i++)
        ts[i] = spawn_job(&jobs[i]);
    ASSERT_EQ(ca_wait(ts, 3, -1, CA_FIRST_COMPLETED), 1);
    ASSERT(ca_task_done(ts[0]) && !ca_task_done(ts[1]));
    ASSERT_EQ(ca_wait(ts, 3, -1, CA_FIRST_EXCEPTION), 2);
    ASSERT(ca_task_done(ts[1]) && !ca_task_done(ts[2]));
    double t0 = mono();
    ASSERT_EQ(ca_wait(ts, 3, 0.02, CA_ALL_COMPLETED), 2); /* timeout */
    ASSERT_TIME_LT(mono() - t0, 0.15);
    ASSERT(!ca_task_done(ts[2])); /* wait never cancels */
    ASSERT_EQ(ca_wait(ts, 3, 5, CA_ALL_COMPLETED), 3);
    ASSERT_EQ(ca_wait(ts, 3, 0, 99), -EINVAL);
    ASSERT_EQ(ca_task_status(ts[1]), -EIO);
    release_all(ts, 3);
    return 0;
}

static void test_wait_modes(void)
{
    ASSERT_EQ(ca_run(wait_main, NULL), 0);
}

/* ---- wait_for ------------------------------------------------------------ */

static int slow_cleanup_done;

static int slow_operation(void *a)
{
    (void)a;
    int r = ca_sleep(0.5); /* seed 001: a 5 s operation, scaled */
    if (r == -ECANCELED) {
        ca_shield_push();
        ca_sleep(0.01); /* cleanup that must complete */
        ca_shield_pop();
        slow_cleanup_done = 1;
        return r;
    }
    return 42;
}

static int wait_for_main(void *a)
{
    (void)a;
    /* seed 001: wait_for(slow_operation(), timeout=2.0), scaled 1/10 */
    ca_task *t = ca_spawn(slow_operation, NULL);
    double t0 = mono();
    ASSERT_EQ(ca_wait_for(t, 0.2), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.2);
    ASSERT_TIME_LT(dt, 0.45);
    ASSERT(ca_task_done(t));     /* cancelled and really finished */
    ASSERT(slow_cleanup_done);   /* its cleanup ran before we returned */
    ca_task_release(t);

    /* in time */
    t = ca_spawn(slow_operation, NULL);
    ASSERT_EQ(ca_wait_for(t, 5), 42);
    ca_task_release(t);

    /* already done */
    ASSERT_EQ(ca_wait_for(t = ca_spawn(slow_operation, NULL), 0.0), -ETIMEDOUT);
    ca_task_release(t);
    ASSERT_EQ(ca_wait_for(NULL, 1), -EINVAL);
    return 0;
}

static void test_wait_for(void)
{
    ASSERT_EQ(ca_run(wait_for_main, NULL), 0);
}

/* The task finishes in the same turn as the timeout: its result wins. */
static int finish_at(void *a)
{
    double when = *(double *)a;
    ca_deadline_push_at(when); /* sleep exactly until `when` */
    ca_sleep(10);
    ca_deadline_pop();
    return 7;
}

static int same_turn_main(void *a)
{
    (void)a;
    int wins = 0;
    for (int i = 0; i < 20; i++) {
        double when = ca_now() + 0.01;
        ca_task *t = ca_spawn(finish_at, &when);
        int r = ca_wait_for(t, when - ca_now());
        /* Either it finished first (7) or the timeout fired first and the
         * task then finished before the cancel landed (7 as well), or the
         * cancel landed (-ETIMEDOUT); never a lost result with status 7. */
        ASSERT(r == 7 || r == -ETIMEDOUT);
        if (r == -ETIMEDOUT)
            ASSERT_EQ(ca_task_status(t), -ECANCELED);
        wins += r == 7;
        ca_task_release(t);
    }
    printf("result won %d of 20 same-turn races\n", wins);
    return 0;
}

static void test_wait_for_same_turn(void)
{
    ASSERT_EQ(ca_run(same_turn_main, NULL), 0);
}

static int wait_for_caller(void *a)
{
    return ca_wait_for(a, 10);
}

static int wait_for_cancel_main(void *a)
{
    (void)a;
    slow_cleanup_done = 0;
    ca_task *t = ca_spawn(slow_operation, NULL);
    ca_task *w = ca_spawn(wait_for_caller, t);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ca_cancel(w);
    ASSERT_EQ(ca_join(w), -ECANCELED);
    ASSERT(ca_task_done(t) && slow_cleanup_done);
    ca_task_release(w);
    ca_task_release(t);
    return 0;
}

static void test_wait_for_caller_cancelled(void)
{
    ASSERT_EQ(ca_run(wait_for_cancel_main, NULL), 0);
}

/* ---- as_completed -------------------------------------------------------- */

static int as_completed_main(void *a)
{
    (void)a;
    struct job jobs[4] = {
        {0.08, 0, 0, 0}, {0.02, 1, 0, 0}, {0.05, 2, 0, 0}, {0.5, 3, 0, 0}};
    ca_task *ts[4];
    for (int i = 0; i < 4; i++)
        ts[i] = spawn_job(&jobs[i]);
    ca_as_completed *it;
    ASSERT_EQ(ca_as_completed_new(&it, ts, 4, 0.2), 0);
    int order[4], k = 0, r;
    ca_task *t;
    while ((r = ca_as_completed_next(it, &t)) == 1)
        order[k++] = ca_task_status(t);
    ASSERT_EQ(r, -ETIMEDOUT); /* the 0.5 s one is past the 0.2 s timeout */
    ASSERT_EQ(k, 3);
    ASSERT_EQ(order[0], 1);
    ASSERT_EQ(order[1], 2);
    ASSERT_EQ(order[2], 0);
    ca_as_completed_free(it);
    ca_cancel(ts[3]);
    ASSERT_EQ(ca_join(ts[3]), -ECANCELED);

    /* all done already: returned in array order, then 0 */
    ASSERT_EQ(ca_as_completed_new(&it, ts, 4, -1), 0);
    for (int i = 0; i < 4; i++) {
        ASSERT_EQ(ca_as_completed_next(it, &t), 1);
        ASSERT(t == ts[i]);
    }
    ASSERT_EQ(ca_as_completed_next(it, &t), 0);
    ca_as_completed_free(it);
    release_all(ts, 4);
    ASSERT_EQ(ca_as_completed_new(NULL, ts, 4, 1), -EINVAL);
    return 0;
}

static void test_as_completed(void)
{
    ASSERT_EQ(ca_run(as_completed_main, NULL), 0);
}

/* ---- task groups --------------------------------------------------------- */

/* seed 003: the TaskGroup cancels the others when one fails */
static int group_fail_main(void *a)
{
    (void)a;
    struct job jobs[3] = {{0.2, 1, 0, 0}, {0.02, -EIO, 0, 0}, {0.2, 3, 0, 0}};
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &jobs[i]), 0);
    double t0 = mono();
    ASSERT_EQ(ca_group_wait(g), -EIO);
    ASSERT_TIME_LT(mono() - t0, 0.15); /* did not wait 0.2 s */
    ASSERT(jobs[0].cancelled && jobs[2].cancelled);
    ASSERT(!jobs[0].finished && !jobs[2].finished);
    ASSERT_EQ(ca_group_size(g), 3);
    ASSERT_EQ(ca_task_status(ca_group_task(g, 0)), -ECANCELED);
    ASSERT_EQ(ca_task_status(ca_group_task(g, 1)), -EIO);
    ASSERT(ca_group_task(g, 3) == NULL);
    /* closed now */
    ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &jobs[0]), -ESHUTDOWN);
    ca_group_free(g);
    return 0;
}

static void test_group_failure_cancels_siblings(void)
{
    ASSERT_EQ(ca_run(group_fail_main, NULL), 0);
}

static int group_ok_main(void *a)
{
    (void)a;
    struct job jobs[5];
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    for (int i = 0; i < 5; i++) {
        jobs[i] = (struct job){.secs = 0.01 * i, .result = i};
        ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &jobs[i]), 0);
    }
    ASSERT_EQ(ca_group_wait(g), 0);
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(ca_task_status(ca_group_task(g, i)), i);
    ca_group_free(g);
    ASSERT_EQ(ca_group_new(NULL), -EINVAL);
    return 0;
}

static void test_group_all_succeed(void)
{
    ASSERT_EQ(ca_run(group_ok_main, NULL), 0);
}

/* Nested groups: an inner failure propagates as the inner group's status;
 * cancelling the outer owner cancels everything. */
static int inner_group(void *a)
{
    struct job *jobs = a;
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    ca_group_spawn(g, NULL, job_run, &jobs[0]);
    ca_group_spawn(g, NULL, job_run, &jobs[1]);
    int r = ca_group_wait(g);
    ca_group_free(g);
    return r;
}

static int group_owner(void *a)
{
    struct job *jobs = a;
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    ca_group_spawn(g, NULL, inner_group, &jobs[0]);
    ca_group_spawn(g, NULL, job_run, &jobs[2]);
    int r = ca_group_wait(g);
    ca_group_free(g);
    return r;
}

static int nested_main(void *a)
{
    (void)a;
    struct job jobs[3] = {{10, 0, 0, 0}, {10, 0, 0, 0}, {10, 0, 0, 0}};
    ca_task *owner = ca_spawn(group_owner, jobs);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ca_cancel(owner);
    ASSERT_EQ(ca_join(owner), -ECANCELED);
    for (int i = 0; i < 3; i++)
        ASSERT(jobs[i].cancelled);
    ca_task_release(owner);

    struct job j2[3] = {{10, 0, 0, 0}, {0.01, -ENOENT, 0, 0}, {10, 0, 0, 0}};
    owner = ca_spawn(group_owner, j2);
    ASSERT_EQ(ca_join(owner), -ENOENT);
    ASSERT(j2[0].cancelled && j2[2].cancelled);
    ca_task_release(owner);
    return 0;
}

static void test_group_nested_and_owner_cancelled(void)
{
    ASSERT_EQ(ca_run(nested_main, NULL), 0);
}

static int group_deadline_main(void *a)
{
    (void)a;
    struct job jobs[2] = {{10, 0, 0, 0}, {10, 0, 0, 0}};
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    ca_group_spawn(g, NULL, job_run, &jobs[0]);
    ca_group_spawn(g, NULL, job_run, &jobs[1]);
    ASSERT_EQ(ca_deadline_push(0.03), 0);
    ASSERT_EQ(ca_group_wait(g), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT(jobs[0].cancelled && jobs[1].cancelled);
    ca_group_free(g);

    /* freeing a group with running children cancels and reaps them */
    struct job j3 = {10, 0, 0, 0};
    ASSERT_EQ(ca_group_new(&g), 0);
    ca_group_spawn(g, NULL, job_run, &j3);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_group_free(g);
    ASSERT(j3.cancelled);
    return 0;
}

static void test_group_deadline_and_free(void)
{
    ASSERT_EQ(ca_run(group_deadline_main, NULL), 0);
}

/* Cancellation at the remaining blocking points: ca_wait never cancels
 * what it waits for; as_completed_next likewise. */
static struct job cw_jobs[2];
static ca_task *cw_ts[2];

static int waiter_wait(void *a)
{
    (void)a;
    return ca_wait(cw_ts, 2, -1, CA_ALL_COMPLETED);
}

static int waiter_as_completed(void *a)
{
    (void)a;
    ca_as_completed *it;
    ASSERT_EQ(ca_as_completed_new(&it, cw_ts, 2, -1), 0);
    ca_task *t;
    int r = ca_as_completed_next(it, &t);
    ca_as_completed_free(it);
    return r;
}

static int cancel_points_main(void *a)
{
    (void)a;
    for (int i = 0; i < 2; i++) {
        cw_jobs[i] = (struct job){.secs = 0.2, .result = i};
        cw_ts[i] = spawn_job(&cw_jobs[i]);
    }
    ca_task *w1 = ca_spawn(waiter_wait, NULL);
    ca_task *w2 = ca_spawn(waiter_as_completed, NULL);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_cancel(w1);
    ca_cancel(w2);
    ASSERT_EQ(ca_join(w1), -ECANCELED);
    ASSERT_EQ(ca_join(w2), -ECANCELED);
    ASSERT(!ca_task_done(cw_ts[0]) && !ca_task_done(cw_ts[1]));
    ASSERT_EQ(ca_gather(cw_ts, 2, 0), 0); /* they were not cancelled */
    ASSERT(cw_jobs[0].finished && cw_jobs[1].finished);
    ca_task_release(w1);
    ca_task_release(w2);
    release_all(cw_ts, 2);
    return 0;
}

static void test_cancel_wait_and_as_completed(void)
{
    ASSERT_EQ(ca_run(cancel_points_main, NULL), 0);
}

/* ---- helpers for the tests below ----------------------------------------- */

/* A task that waits on an event (no timer involved), so whether it is still
 * running does not depend on how fast this host is. */
struct gate {
    ca_event ev;
    int result;    /* returned once the event is set */
    int finished;  /* set when the body completes normally */
    int cancelled; /* set when its wait was cancelled */
};

static int gate_run(void *a)
{
    struct gate *g = a;
    int r = ca_event_wait(&g->ev);
    if (r < 0) {
        g->cancelled = r == -ECANCELED;
        return r;
    }
    g->finished = 1;
    return g->result;
}

static uint64_t loop_turn(void)
{
    ca_loop_stats st;
    ASSERT_EQ(ca_loop_stats_get(&st), 0);
    return st.turns;
}

/* Holds the loop, without yielding, for `secs` of wall time, so every timer
 * armed before it runs is due when it returns and they all fire at the start
 * of the next turn. */
struct spin {
    double secs;
    uint64_t turn; /* the turn it ran in */
    double end;    /* when it stopped spinning */
};

static int spin_run(void *a)
{
    struct spin *s = a;
    s->turn = loop_turn();
    double end = mono() + s->secs;
    while (mono() < end)
        ;
    s->end = mono();
    return 0;
}

/* Sleeps, then returns 7; records when it slept and the turn it ended in. */
struct turn_job {
    double secs;
    double armed;  /* when it called ca_sleep */
    uint64_t turn; /* the turn its sleep ended in */
};

static int turn_job_run(void *a)
{
    struct turn_job *j = a;
    j->armed = mono();
    int r = ca_sleep(j->secs);
    j->turn = loop_turn();
    return r == 0 ? 7 : r;
}

/* Calls ca_wait_for(t, timeout), then one more blocking call (a yield). */
struct wf_call {
    ca_task *t;
    double timeout;
    double armed; /* when it called ca_wait_for */
    int result;   /* what ca_wait_for returned */
    int after;    /* what the yield after it returned */
};

static int wf_call_run(void *a)
{
    struct wf_call *c = a;
    c->armed = mono();
    c->result = ca_wait_for(c->t, c->timeout);
    c->after = ca_yield();
    return c->result;
}

/* ---- combinators inside the caller's deadline scope ---------------------- */

/* gather under a deadline scope: -ETIMEDOUT; the unfinished tasks are
 * cancelled and waited for (a cancelled task's shielded cleanup has run when
 * gather returns), a task that already finished keeps its result, and a
 * shielded task is not cancelled and runs on to completion.  Both modes. */
static int gather_deadline_main(void *a)
{
    (void)a;
    for (int all = 0; all <= 1; all++) {
        struct job quick = {0.01, 1, 0, 0};
        struct job slow = {1.0, 2, 0, 0};
        struct gate shielded = {.result = 3};
        ca_task *ts[4];
        ts[0] = spawn_job(&quick);
        ts[1] = spawn_job(&slow);
        ts[2] = ca_spawn(gate_run, &shielded);
        ASSERT(ts[2]);
        ASSERT_EQ(ca_task_shield(ts[2]), 0);
        slow_cleanup_done = 0;
        ts[3] = ca_spawn(slow_operation, NULL);
        ASSERT(ts[3]);
        double t0 = mono();
        ASSERT_EQ(ca_deadline_push(0.03), 0);
        ASSERT_EQ(ca_gather(ts, 4, all ? CA_GATHER_ALL : 0), -ETIMEDOUT);
        ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
        double dt = mono() - t0;
        ASSERT_GE(dt, 0.03);
        ASSERT_TIME_LT(dt, 0.5); /* did not wait for the 1 s task */
        ASSERT(quick.finished);
        ASSERT_EQ(ca_task_status(ts[0]), 1);
        ASSERT(ca_task_done(ts[1]) && slow.cancelled && !slow.finished);
        ASSERT_EQ(ca_task_status(ts[1]), -ECANCELED);
        ASSERT(ca_task_done(ts[3]) && slow_cleanup_done); /* waited for */
        ASSERT_EQ(ca_task_status(ts[3]), -ECANCELED);
        ASSERT(!ca_task_done(ts[2]) && !ca_task_cancel_requested(ts[2]));
        ca_event_set(&shielded.ev);
        ASSERT_EQ(ca_join(ts[2]), 3);
        ASSERT(shielded.finished && !shielded.cancelled);
        release_all(ts, 4);
    }
    return 0;
}

static void test_gather_deadline(void)
{
    ASSERT_EQ(ca_run(gather_deadline_main, NULL), 0);
}

/* wait under a deadline scope: -ETIMEDOUT (not a count), whether wait has
 * no timeout or a longer one, and nothing is cancelled: the tasks finish
 * normally afterwards.  wait's own timeout, shorter than the scope's, is not
 * an error: it returns the count and the scope is not marked expired. */
static int wait_deadline_main(void *a)
{
    (void)a;
    struct job quick = {0.01, 1, 0, 0};
    struct gate g = {.result = 2};
    ca_task *ts[2];
    ts[0] = spawn_job(&quick);
    ts[1] = ca_spawn(gate_run, &g);
    ASSERT(ts[1]);
    const double timeouts[2] = {-1, 5};
    for (int i = 0; i < 2; i++) {
        double t0 = mono();
        /* 0.2 s: far enough beyond the quick job's 0.01 s that a stalled
         * machine (valgrind under load) does not fire both in one turn */
        ASSERT_EQ(ca_deadline_push(0.2), 0);
        ASSERT_EQ(ca_wait(ts, 2, timeouts[i], CA_ALL_COMPLETED), -ETIMEDOUT);
        ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
        double dt = mono() - t0;
        ASSERT_GE(dt, 0.2);
        ASSERT_TIME_LT(dt, 0.5);
        ASSERT(ca_task_done(ts[0]));
        ASSERT(!ca_task_done(ts[1]) && !ca_task_cancel_requested(ts[1]));
    }
    ASSERT_EQ(ca_deadline_push(5), 0);
    ASSERT_EQ(ca_wait(ts, 2, 0.01, CA_ALL_COMPLETED), 1);
    ASSERT_EQ(ca_deadline_pop(), 0);
    ca_event_set(&g.ev);
    ASSERT_EQ(ca_wait(ts, 2, -1, CA_ALL_COMPLETED), 2);
    ASSERT(quick.finished && g.finished && !g.cancelled);
    ASSERT_EQ(ca_task_status(ts[0]), 1);
    ASSERT_EQ(ca_task_status(ts[1]), 2);
    release_all(ts, 2);
    return 0;
}

static void test_wait_deadline(void)
{
    ASSERT_EQ(ca_run(wait_deadline_main, NULL), 0);
}

/* wait_for under a deadline scope earlier than its own timeout: -ETIMEDOUT,
 * and the task was cancelled and has really finished (its shielded cleanup
 * ran) before wait_for returned. */
static int wait_for_deadline_main(void *a)
{
    (void)a;
    slow_cleanup_done = 0;
    ca_task *t = ca_spawn(slow_operation, NULL);
    ASSERT(t);
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(0.03), 0);
    ASSERT_EQ(ca_wait_for(t, 5), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.03);
    ASSERT_TIME_LT(dt, 0.3); /* slow_operation sleeps 0.5 s */
    ASSERT(ca_task_done(t) && slow_cleanup_done);
    ASSERT(ca_task_cancelled(t));
    ca_task_release(t);
    return 0;
}

static void test_wait_for_deadline(void)
{
    ASSERT_EQ(ca_run(wait_for_deadline_main, NULL), 0);
}

/* as_completed_next (no timeout of its own) under a deadline scope: hands
 * out the task that finished in time, then -ETIMEDOUT with *t NULL; the
 * task still running is untouched and finishes normally. */
static int as_completed_deadline_main(void *a)
{
    (void)a;
    struct job quick = {0.01, 1, 0, 0};
    struct gate g = {.result = 2};
    ca_task *ts[2];
    ts[0] = spawn_job(&quick);
    ts[1] = ca_spawn(gate_run, &g);
    ASSERT(ts[1]);
    ca_as_completed *it;
    ASSERT_EQ(ca_as_completed_new(&it, ts, 2, -1), 0);
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(0.03), 0);
    ca_task *t;
    ASSERT_EQ(ca_as_completed_next(it, &t), 1);
    ASSERT(t == ts[0]);
    ASSERT_EQ(ca_as_completed_next(it, &t), -ETIMEDOUT);
    ASSERT(t == NULL);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.03);
    ASSERT_TIME_LT(dt, 0.5);
    ca_as_completed_free(it);
    ASSERT(!ca_task_done(ts[1]) && !ca_task_cancel_requested(ts[1]));
    ca_event_set(&g.ev);
    ASSERT_EQ(ca_join(ts[1]), 2);
    ASSERT(g.finished);
    release_all(ts, 2);
    return 0;
}

static void test_as_completed_deadline(void)
{
    ASSERT_EQ(ca_run(as_completed_deadline_main, NULL), 0);
}

/* ---- wait_for: the task finishes in the same turn ------------------------ */

/* The task's sleep and wait_for's timeout are armed in one turn, then a
 * spinner holds the loop past both, so both timers fire at the start of the
 * next turn (in deadline order).  Whichever fires first, the task's result
 * wins: wait_for returns 7 and the task's status is 7. */
static void same_turn_timeout_case(double task_secs, double timeout)
{
    struct turn_job j = {.secs = task_secs};
    ca_task *t = ca_spawn(turn_job_run, &j);
    ASSERT(t);
    struct wf_call c = {.t = t, .timeout = timeout};
    ca_task *w = ca_spawn(wf_call_run, &c);
    ASSERT(w);
    struct spin s = {.secs =
                         (task_secs > timeout ? task_secs : timeout) + 0.03};
    ca_task *sp = ca_spawn(spin_run, &s);
    ASSERT(sp);
    /* t, w and the spinner run in this order in the next turn. */
    ASSERT_EQ(ca_join(w), 7);
    ASSERT_EQ(ca_join(sp), 0);
    ASSERT_EQ(c.result, 7);
    ASSERT_EQ(c.after, 0); /* nothing left pending in the caller */
    ASSERT_EQ(ca_task_status(t), 7);
    /* The premise: both deadlines had passed when the spinner stopped, and
     * the task's sleep ended in the turn right after the spinner's, the
     * one in which both timers fired. */
    ASSERT_GE(s.end, j.armed + task_secs);
    ASSERT_GE(s.end, c.armed + timeout);
    ASSERT_EQ(j.turn, s.turn + 1);
    ca_task_release(sp);
    ca_task_release(w);
    ca_task_release(t);
}

static int same_turn_timeout_main(void *a)
{
    (void)a;
    same_turn_timeout_case(0.02, 0.04); /* the task's timer fires first */
    same_turn_timeout_case(0.04, 0.02); /* the timeout fires first */
    return 0;
}

static void test_wait_for_same_turn_timeout(void)
{
    ASSERT_EQ(ca_run(same_turn_timeout_main, NULL), 0);
}

/* Cancels a task after a sleep, recording the turn it did so in. */
struct canceller {
    double secs;
    ca_task *target;
    uint64_t turn;
};

static int canceller_run(void *a)
{
    struct canceller *k = a;
    int r = ca_sleep(k->secs);
    k->turn = loop_turn();
    ca_cancel(k->target);
    return r;
}

/* The caller of wait_for is cancelled in the same turn as the task finishes
 * (same set-up as above, with a canceller instead of the timeout), in both
 * orders.  The task's result wins (wait_for returns 7), and the caller's
 * cancellation is not swallowed: it stays requested and the caller's next
 * blocking call returns -ECANCELED. */
static void same_turn_cancel_case(double task_secs, double cancel_secs)
{
    struct turn_job j = {.secs = task_secs};
    ca_task *t = ca_spawn(turn_job_run, &j);
    ASSERT(t);
    struct wf_call c = {.t = t, .timeout = 10};
    ca_task *w = ca_spawn(wf_call_run, &c);
    ASSERT(w);
    struct canceller k = {.secs = cancel_secs, .target = w};
    ca_task *kt = ca_spawn(canceller_run, &k);
    ASSERT(kt);
    struct spin s = {
        .secs = (task_secs > cancel_secs ? task_secs : cancel_secs) + 0.03};
    ca_task *sp = ca_spawn(spin_run, &s);
    ASSERT(sp);
    ASSERT_EQ(ca_join(w), 7);
    ASSERT_EQ(ca_join(kt), 0);
    ASSERT_EQ(ca_join(sp), 0);
    ASSERT_EQ(c.result, 7);
    ASSERT(ca_task_cancel_requested(w));
    ASSERT_EQ(c.after, -ECANCELED);
    ASSERT_EQ(ca_task_status(t), 7);
    ASSERT(!ca_task_cancel_requested(t));
    /* The premise: the task finished and the caller was cancelled in the
     * same turn, the one after the spinner's. */
    ASSERT_EQ(j.turn, s.turn + 1);
    ASSERT_EQ(k.turn, s.turn + 1);
    ca_task_release(sp);
    ca_task_release(kt);
    ca_task_release(w);
    ca_task_release(t);
}

static int same_turn_cancel_main(void *a)
{
    (void)a;
    same_turn_cancel_case(0.02, 0.04); /* the task finishes, then the cancel */
    same_turn_cancel_case(0.04, 0.02); /* the cancel, then the task finishes */
    return 0;
}

static void test_wait_for_same_turn_cancel(void)
{
    ASSERT_EQ(ca_run(same_turn_cancel_main, NULL), 0);
}

/* ---- ca_group_cancel --------------------------------------------------- */

/* A group child: sleeps; if cancelled, tries to spawn a sibling into its
 * (closing) group and returns on_cancel. */
struct gkid {
    ca_group *g;
    double secs;
    int result;    /* returned after the sleep */
    int on_cancel; /* returned when cancelled */
    int ran;       /* the body started */
    int cancelled;
    int spawn_r; /* ca_group_spawn from inside, once cancelled */
};

static int gkid_run(void *a)
{
    struct gkid *k = a;
    k->ran = 1;
    int r = ca_sleep(k->secs);
    if (r == -ECANCELED) {
        k->cancelled = 1;
        ca_task *out = (ca_task *)&out; /* must be reset to NULL */
        k->spawn_r = ca_group_spawn(k->g, &out, job_run, NULL);
        ASSERT(out == NULL);
        return k->on_cancel;
    }
    return k->result;
}

/* ca_group_cancel cancels every running child (and one not started yet,
 * which never runs its body) without blocking, and closes the group:
 * spawning fails with -ESHUTDOWN before ca_group_wait and while it waits
 * (from a child).  The cancelled children are not failures: ca_group_wait
 * returns 0, again on a second call; each child's status is -ECANCELED. */
static int group_cancel_main(void *a)
{
    (void)a;
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    struct gkid kids[4];
    for (int i = 0; i < 4; i++)
        kids[i] = (struct gkid){
            .g = g, .secs = 1.0, .result = i, .on_cancel = -ECANCELED};
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(ca_group_spawn(g, NULL, gkid_run, &kids[i]), 0);
    ASSERT_EQ(ca_sleep(0.01), 0); /* they are sleeping now */
    ASSERT_EQ(ca_group_spawn(g, NULL, gkid_run, &kids[3]), 0); /* not started */
    double t0 = mono();
    ASSERT_EQ(ca_group_cancel(g), 0);
    for (size_t i = 0; i < 4; i++)
        ASSERT(ca_task_cancel_requested(ca_group_task(g, i)));
    for (size_t i = 0; i < 3; i++) /* not finished yet: cancel never blocks */
        ASSERT(!ca_task_done(ca_group_task(g, i)));
    ca_task *out = (ca_task *)&out;
    struct job j = {0, 0, 0, 0};
    ASSERT_EQ(ca_group_spawn(g, &out, job_run, &j), -ESHUTDOWN);
    ASSERT(out == NULL);
    ASSERT_EQ(ca_group_wait(g), 0);
    ASSERT_TIME_LT(mono() - t0, 0.5); /* did not wait for the 1 s sleeps */
    ASSERT_EQ(ca_group_size(g), 4);
    for (size_t i = 0; i < 4; i++) {
        ASSERT(ca_task_done(ca_group_task(g, i)));
        ASSERT_EQ(ca_task_status(ca_group_task(g, i)), -ECANCELED);
    }
    for (int i = 0; i < 3; i++) {
        ASSERT(kids[i].ran && kids[i].cancelled);
        ASSERT_EQ(kids[i].spawn_r, -ESHUTDOWN);
    }
    ASSERT(!kids[3].ran);
    ASSERT_EQ(ca_group_wait(g), 0);
    ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &j), -ESHUTDOWN);
    ASSERT_EQ(ca_group_size(g), 4);
    ASSERT_EQ(ca_group_cancel(g), 0); /* again: nothing left to cancel */
    ca_group_free(g);
    ASSERT_EQ(ca_group_cancel(NULL), -EINVAL);
    return 0;
}

static void test_group_cancel(void)
{
    ASSERT_EQ(ca_run(group_cancel_main, NULL), 0);
}

/* A child that fails for real while being cancelled (its cleanup returns
 * -EIO) is a failure: after ca_group_cancel, ca_group_wait returns it. */
static int group_cancel_fail_main(void *a)
{
    (void)a;
    ca_group *g;
    ASSERT_EQ(ca_group_new(&g), 0);
    struct gkid kids[2] = {
        {.secs = 1.0, .on_cancel = -ECANCELED},
        {.secs = 1.0, .on_cancel = -EIO},
    };
    for (int i = 0; i < 2; i++) {
        kids[i].g = g;
        ASSERT_EQ(ca_group_spawn(g, NULL, gkid_run, &kids[i]), 0);
    }
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_group_cancel(g), 0);
    ASSERT_EQ(ca_group_wait(g), -EIO);
    ASSERT_EQ(ca_task_status(ca_group_task(g, 0)), -ECANCELED);
    ASSERT_EQ(ca_task_status(ca_group_task(g, 1)), -EIO);
    ASSERT(kids[0].cancelled && kids[1].cancelled);
    ca_group_free(g);
    return 0;
}

static void test_group_cancel_child_fails(void)
{
    ASSERT_EQ(ca_run(group_cancel_fail_main, NULL), 0);
}

/* ---- ca_task_shield ------------------------------------------------------ */

/* wait_for on a shielded task: on timeout (its own or the caller's deadline
 * scope) and when its caller is cancelled, the task is not cancelled and
 * keeps running; joined afterwards it returns its result. */
static int wait_for_shield_main(void *a)
{
    (void)a;
    for (int how = 0; how < 3; how++) {
        struct gate g = {.result = 5};
        ca_task *t = ca_spawn(gate_run, &g);
        ASSERT(t);
        ASSERT_EQ(ca_task_shield(t), 0);
        double t0 = mono();
        if (how == 0) { /* wait_for's own timeout */
            ASSERT_EQ(ca_wait_for(t, 0.02), -ETIMEDOUT);
        } else if (how == 1) { /* the caller's deadline scope */
            ASSERT_EQ(ca_deadline_push(0.02), 0);
            ASSERT_EQ(ca_wait_for(t, 5), -ETIMEDOUT);
            ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
        } else { /* the caller is cancelled */
            struct wf_call c = {.t = t, .timeout = 5};
            ca_task *w = ca_spawn(wf_call_run, &c);
            ASSERT(w);
            ASSERT_EQ(ca_sleep(0.02), 0);
            ca_cancel(w);
            ASSERT_EQ(ca_join(w), -ECANCELED);
            ASSERT_EQ(c.result, -ECANCELED);
            ca_task_release(w);
        }
        double dt = mono() - t0;
        ASSERT_GE(dt, 0.02);
        ASSERT_TIME_LT(dt, 0.5);
        ASSERT(!ca_task_done(t) && !ca_task_cancel_requested(t));
        ca_event_set(&g.ev);
        ASSERT_EQ(ca_join(t), 5);
        ASSERT(g.finished && !g.cancelled);
        ca_task_release(t);
    }
    return 0;
}

static void test_wait_for_shielded(void)
{
    ASSERT_EQ(ca_run(wait_for_shield_main, NULL), 0);
}

/* A shielded group child is cancelled neither by the owner's deadline nor
 * by ca_group_cancel; ca_group_wait still waits for it (all children are
 * waited for) and its result is readable.  The unshielded sibling is
 * cancelled. */
static int group_shield_main(void *a)
{
    (void)a;
    for (int how = 0; how < 2; how++) {
        ca_group *g;
        ASSERT_EQ(ca_group_new(&g), 0);
        struct job shielded = {0.08, 5, 0, 0};
        struct job other = {1.0, 6, 0, 0};
        ca_task *ts = NULL;
        ASSERT_EQ(ca_group_spawn(g, &ts, job_run, &shielded), 0);
        ASSERT(ts);
        ASSERT_EQ(ca_task_shield(ts), 0);
        ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &other), 0);
        double t0 = mono();
        if (how == 0) {
            ASSERT_EQ(ca_deadline_push(0.02), 0);
            ASSERT_EQ(ca_group_wait(g), -ETIMEDOUT);
            ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
        } else {
            ASSERT_EQ(ca_sleep(0.02), 0);
            ASSERT_EQ(ca_group_cancel(g), 0);
            ASSERT(!ca_task_cancel_requested(ts));
            ASSERT_EQ(ca_group_wait(g), 0);
        }
        double dt = mono() - t0;
        ASSERT_GE(dt, 0.08); /* waited for the shielded child */
        ASSERT_TIME_LT(dt, 0.5);
        ASSERT(shielded.finished && !shielded.cancelled);
        ASSERT(!ca_task_cancel_requested(ts));
        ASSERT_EQ(ca_task_status(ts), 5);
        ASSERT(other.cancelled && !other.finished);
        ASSERT_EQ(ca_task_status(ca_group_task(g, 1)), -ECANCELED);
        ca_group_free(g);
    }
    return 0;
}

static void test_group_shielded_child(void)
{
    ASSERT_EQ(ca_run(group_shield_main, NULL), 0);
}

/*
 * Scaling guard for the combinators: gather, as_completed, a gather
 * cancelled from outside and a task group whose one failing child cancels
 * all the others, each over n tasks.  Every one is a callback per task and
 * O(1) wake-ups (100,000 tasks: ~0.6 s each, CPython 3.11's TaskGroup with
 * one failure among 100,000 children ~55 s), so the set finishes well
 * inside the runner's timeout; a rescan per completion would not.
 */
static ca_event combo_ev = CA_EVENT_INIT;

static int combo_yield(void *a)
{
    (void)a;
    return ca_yield();
}

static int combo_block(void *a)
{
    (void)a;
    return ca_event_wait(&combo_ev);
}

static int combo_fail(void *a)
{
    (void)a;
    ca_yield();
    return -EIO;
}

struct combo_gather {
    ca_task **ts;
    long n;
};

static int combo_gatherer(void *a)
{
    struct combo_gather *g = a;
    return ca_gather(g->ts, (size_t)g->n, 0);
}

static void combo_spawn(ca_task **ts, long n, ca_fn fn)
{
    for (long i = 0; i < n; i++)
        ASSERT((ts[i] = ca_spawn(fn, NULL)) != NULL);
}

static void combo_join_all(ca_task **ts, long n, int want)
{
    for (long i = 0; i < n; i++) {
        ASSERT_EQ(ca_join(ts[i]), want);
        ca_task_release(ts[i]);
    }
}

static int combo_main(void *arg)
{
    long n = *(long *)arg;
    ca_task **ts = malloc((size_t)n * sizeof(*ts));
    ASSERT(ts != NULL);

    combo_spawn(ts, n, combo_yield);
    ASSERT_EQ(ca_gather(ts, (size_t)n, 0), 0);
    combo_join_all(ts, n, 0);

    combo_spawn(ts, n, combo_yield);
    ca_as_completed *it;
    ASSERT_EQ(ca_as_completed_new(&it, ts, (size_t)n, -1), 0);
    ca_task *t;
    long got = 0;
    while (ca_as_completed_next(it, &t) == 1)
        got++;
    ASSERT_EQ(got, n);
    ca_as_completed_free(it);
    combo_join_all(ts, n, 0);

    combo_spawn(ts, n, combo_block);
    struct combo_gather cg = {ts, n};
    ca_task *g = ca_spawn(combo_gatherer, &cg);
    ASSERT_EQ(ca_yield(), 0);
    ca_cancel(g);
    ASSERT_EQ(ca_join(g), -ECANCELED);
    ca_task_release(g);
    combo_join_all(ts, n, -ECANCELED);

    ca_group *grp;
    ASSERT_EQ(ca_group_new(&grp), 0);
    for (long i = 0; i < n; i++)
        ASSERT_EQ(ca_group_spawn(grp, NULL, combo_block, NULL), 0);
    ASSERT_EQ(ca_group_spawn(grp, NULL, combo_fail, NULL), 0);
    ASSERT_EQ(ca_group_wait(grp), -EIO);
    ca_group_free(grp);

    free(ts);
    return 0;
}

static void test_combinators_scale(void)
{
    long n = test_is_instrumented() ? 20000 : 100000;
    ASSERT_EQ(ca_run(combo_main, &n), 0);
}

/* ---- groups that release finished children ---------------------------- */

static uint64_t tasks_live(void)
{
    ca_loop_stats st;
    ASSERT_EQ(ca_loop_stats_get(&st), 0);
    return st.tasks_live;
}

static const ca_group_opts release_opts = {.release_finished = 1};

static size_t short_count;

/* A short child: every 8th blocks once (a yield), so that children finish
 * out of spawn order and some are unfinished when the spawner resumes. */
static int short_child(void *a)
{
    size_t i = (size_t)(uintptr_t)a;
    if (i % 8 == 0 && ca_yield() < 0)
        return -ECANCELED;
    short_count++;
    return 0;
}

/* Spawn n short children into g in batches, yielding between batches so
 * that they run, then wait until all have finished (without closing g). */
static void spawn_short(ca_group *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(ca_group_spawn(g, NULL, short_child, (void *)(uintptr_t)i),
                  0);
        if (i % 1000 == 999)
            ASSERT_EQ(ca_yield(), 0);
    }
    while (ca_group_size(g) > 0)
        ASSERT_EQ(ca_yield(), 0);
}

/* A server-like group: a million short children (100k instrumented) pass
 * through one group.  The group's size returns to 0, no task is left
 * uncollected, and the heap and RSS end where they started (a keeping group
 * grows by ~185 bytes a child: 185 MB here). */
static int release_million_main(void *a)
{
    size_t n = *(const size_t *)a;
    ca_group *g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    short_count = 0;
    spawn_short(g, 20000); /* warm up: task arenas, stack pool, malloc */
    uint64_t live0 = tasks_live();
    double heap0 = test_heap_in_use(), rss0 = test_rss_bytes();
    double t0 = mono();
    spawn_short(g, n);
    double dt = mono() - t0;
    uint64_t live1 = tasks_live();
    double heap1 = test_heap_in_use(), rss1 = test_rss_bytes();
    printf("release_finished: %zu children in %.3f s (%.0f ns each); "
           "tasks live %llu -> %llu; heap %.0f -> %.0f bytes (%+.0f); "
           "RSS %.1f -> %.1f MiB\n",
           n, dt, dt * 1e9 / (double)n, (unsigned long long)live0,
           (unsigned long long)live1, heap0, heap1, heap1 - heap0,
           rss0 / 1048576.0, rss1 / 1048576.0);
    ASSERT_EQ(short_count, n + 20000);
    ASSERT_EQ(ca_group_size(g), 0);
    ASSERT(ca_group_task(g, 0) == NULL);
    ASSERT_LE(live1, live0);
    ASSERT_LT(heap1 - heap0, 256.0 * 1024); /* keeping: 185 MB */
    /* ASan's quarantine and valgrind hold freed blocks: RSS means little */
    if (rss0 > 0 && rss1 > 0 && !test_is_instrumented())
        ASSERT_LT(rss1 - rss0, 16.0 * 1048576);
    ASSERT_EQ(ca_group_wait(g), 0);
    ca_group_free(g);
    return 0;
}

static void test_group_release_million(void)
{
    size_t n = test_is_instrumented() ? 100000 : 1000000;
    ASSERT_EQ(ca_run(release_million_main, &n), 0);
}

/* The first failure is recorded and returned although its task finished
 * long before; it cancels the siblings; finished children are gone (size,
 * ca_group_task); a reference from spawn's out stays valid after the child
 * finished and the group let go, and shows a later failure (a sibling that
 * fails while being cancelled).  The group keeps only the failed child. */
static int release_failure_main(void *a)
{
    (void)a;
    uint64_t live0 = tasks_live();
    ca_group *g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    struct job quick[10];
    for (int i = 0; i < 10; i++) {
        quick[i] = (struct job){0, 0, 0, 0}; /* one yield */
        ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &quick[i]), 0);
    }
    struct job slow = {10.0, 0, 0, 0};
    struct job bad = {0.2, -EIO, 0, 0};
    struct gkid late = {.g = g, .secs = 10.0, .on_cancel = -EPIPE};
    ca_task *tslow = NULL, *tlate = NULL;
    ASSERT_EQ(ca_group_spawn(g, &tslow, job_run, &slow), 0);
    ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &bad), 0);
    ASSERT_EQ(ca_group_spawn(g, &tlate, gkid_run, &late), 0);
    ASSERT(tslow && tlate);
    ASSERT_EQ(ca_group_size(g), 13);
    ASSERT(ca_group_task(g, 0) == NULL);
    /* the ten quick ones finish (in a few turns) and are released */
    for (int i = 0; i < 1000 && ca_group_size(g) > 3; i++)
        ASSERT_EQ(ca_sleep(0.001), 0);
    ASSERT_EQ(ca_group_size(g), 3);
    for (int i = 0; i < 10; i++)
        ASSERT(quick[i].finished);
    ASSERT_EQ(tasks_live(), live0 + 3);
    double t0 = mono();
    ASSERT_EQ(ca_group_wait(g), -EIO);
    ASSERT_TIME_LT(mono() - t0, 2.0); /* the 10 s sleeps were cancelled */
    ASSERT(slow.cancelled && late.cancelled);
    ASSERT_EQ(ca_group_size(g), 0);
    ASSERT_EQ(ca_group_wait(g), -EIO); /* again: still recorded */
    ASSERT_EQ(ca_group_spawn(g, NULL, job_run, &quick[0]), -ESHUTDOWN);
    /* our two references, and the group's hold on the first failure */
    ASSERT_EQ(tasks_live(), live0 + 3);
    ASSERT(ca_task_done(tslow) && ca_task_done(tlate));
    ASSERT_EQ(ca_task_status(tslow), -ECANCELED);
    ASSERT_EQ(ca_join(tlate), -EPIPE);
    ca_task_release(tslow);
    ca_task_release(tlate);
    ASSERT_EQ(tasks_live(), live0 + 1);
    ca_group_free(g);
    ASSERT_EQ(tasks_live(), live0);
    return 0;
}

static void test_group_release_failure(void)
{
    ASSERT_EQ(ca_run(release_failure_main, NULL), 0);
}

static int return_7(void *a)
{
    (void)a;
    return 7;
}

/* Cancellation with live children: ca_group_cancel cancels 100 sleeping
 * children and one not started yet (which never runs, and is released
 * too) without blocking; the owner's deadline cancels them as well; a
 * group freed with running children cancels and reaps them.  Eager
 * children that finish inside the spawn are released at once (the caller's
 * reference from out stays valid). */
static int release_cancel_main(void *a)
{
    (void)a;
    uint64_t live0 = tasks_live();
    enum { N = 100 };
    struct gkid kids[N + 1];
    for (int how = 0; how < 3; how++) {
        ca_group *g;
        ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
        for (int i = 0; i < N; i++) {
            kids[i] = (struct gkid){
                .g = g, .secs = 10.0, .result = i, .on_cancel = -ECANCELED};
            ASSERT_EQ(ca_group_spawn(g, NULL, gkid_run, &kids[i]), 0);
        }
        ASSERT_EQ(ca_sleep(0.01), 0);
        kids[N] = (struct gkid){.g = g, .secs = 10.0, .on_cancel = -EIO};
        ASSERT_EQ(ca_group_spawn(g, NULL, gkid_run, &kids[N]), 0);
        ASSERT_EQ(ca_group_size(g), N + 1);
        double t0 = mono();
        if (how == 0) {
            ASSERT_EQ(ca_group_cancel(g), 0);
            ASSERT_EQ(ca_group_size(g), N + 1); /* cancel never blocks */
            ASSERT_EQ(ca_group_wait(g), 0);
        } else if (how == 1) {
            ASSERT_EQ(ca_deadline_push(0.02), 0);
            ASSERT_EQ(ca_group_wait(g), -ETIMEDOUT);
            ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
        } else {
            ca_group_free(g);
            g = NULL;
        }
        ASSERT_TIME_LT(mono() - t0, 1.0);
        for (int i = 0; i < N; i++)
            ASSERT(kids[i].ran && kids[i].cancelled);
        if (how == 1) {
            /* it started while the owner waited, and failed (-EIO) when
             * cancelled: the group keeps it, as its first failure */
            ASSERT(kids[N].ran && kids[N].cancelled);
        } else {
            ASSERT(!kids[N].ran); /* cancelled before it started */
        }
        ASSERT_EQ(ca_group_size(g), 0);
        ASSERT_EQ(tasks_live(), live0 + (how == 1));
        ca_group_free(g);
        ASSERT_EQ(tasks_live(), live0);
    }

    /* eager children finishing inside the spawn */
    ca_group *g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    ca_spawn_opts eager = {.eager = 1};
    ca_task *t = NULL;
    ASSERT_EQ(ca_group_spawn_ex(g, NULL, return_7, NULL, &eager), 0);
    ASSERT_EQ(ca_group_size(g), 0);
    ASSERT_EQ(tasks_live(), live0);
    ASSERT_EQ(ca_group_spawn_ex(g, &t, return_7, NULL, &eager), 0);
    ASSERT(t && ca_task_done(t));
    ASSERT_EQ(ca_task_status(t), 7);
    ASSERT_EQ(tasks_live(), live0 + 1);
    ca_task_release(t);
    ASSERT_EQ(tasks_live(), live0);
    ASSERT_EQ(ca_group_wait(g), 0);
    ca_group_free(g);
    return 0;
}

static void test_group_release_cancel(void)
{
    ASSERT_EQ(ca_run(release_cancel_main, NULL), 0);
}

/* Nested groups that release their children: an inner group's failure is
 * the inner owner's status, a failure of the outer group, which cancels
 * the other inner groups and their children; cancelling the outer owner
 * cancels everything.  Nothing is left uncollected. */
struct nest {
    int fail_at; /* which inner group has a failing child; -1: none */
    int idx;
    int started;
    int kids_cancelled;
};

static struct nest nest_inner[4];

static int nest_kid(void *a)
{
    struct nest *in = a;
    int fails = in->idx == in->fail_at && in->started++ == 0;
    int r = ca_sleep(fails ? 0.02 : 10.0);
    if (r == -ECANCELED) {
        in->kids_cancelled++;
        return r;
    }
    return fails ? -ENOENT : 0;
}

static int nest_inner_run(void *a)
{
    struct nest *in = a;
    ca_group *g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(ca_group_spawn(g, NULL, nest_kid, in), 0);
    int r = ca_group_wait(g);
    ca_group_free(g);
    return r;
}

static int nest_outer_run(void *a)
{
    int fail_at = *(const int *)a;
    ca_group *g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    for (int i = 0; i < 4; i++) {
        nest_inner[i] = (struct nest){.fail_at = fail_at, .idx = i};
        ASSERT_EQ(ca_group_spawn(g, NULL, nest_inner_run, &nest_inner[i]), 0);
    }
    int r = ca_group_wait(g);
    ca_group_free(g);
    return r;
}

static int release_nested_main(void *a)
{
    (void)a;
    uint64_t live0 = tasks_live();
    int fail_at = 2;
    ca_task *owner = NULL;
    ASSERT_EQ(ca_spawn_ex(&owner, nest_outer_run, &fail_at, NULL), 0);
    ASSERT_EQ(ca_join(owner), -ENOENT);
    ca_task_release(owner);
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(nest_inner[i].kids_cancelled, i == fail_at ? 4 : 5);
    ASSERT_EQ(tasks_live(), live0);

    fail_at = -1;
    ASSERT_EQ(ca_spawn_ex(&owner, nest_outer_run, &fail_at, NULL), 0);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(ca_cancel(owner), 0);
    ASSERT_EQ(ca_join(owner), -ECANCELED);
    ca_task_release(owner);
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(nest_inner[i].kids_cancelled, 5);
    ASSERT_EQ(tasks_live(), live0);
    return 0;
}

static void test_group_release_nested(void)
{
    ASSERT_EQ(ca_run(release_nested_main, NULL), 0);
}

static int ret_einval(void *a)
{
    (void)a;
    return -EINVAL;
}

static int release_args_main(void *a)
{
    (void)a;
    ca_group *g = (ca_group *)&g;
    ASSERT_EQ(ca_group_new_ex(NULL, &release_opts), -EINVAL);
    ca_group_opts bad = {.release_finished = 2};
    ASSERT_EQ(ca_group_new_ex(&g, &bad), -EINVAL);
    ASSERT(g == NULL);
    /* NULL options: a keeping group */
    ASSERT_EQ(ca_group_new_ex(&g, NULL), 0);
    ASSERT_EQ(ca_group_spawn(g, NULL, return_7, NULL), 0);
    ASSERT_EQ(ca_group_wait(g), 0);
    ASSERT_EQ(ca_group_size(g), 1);
    ASSERT_EQ(ca_task_status(ca_group_task(g, 0)), 7);
    ca_group_free(g);
    ASSERT_EQ(ca_group_size(NULL), 0);
    ASSERT(ca_group_task(NULL, 0) == NULL);
    return 0;
}

static void test_group_release_args(void)
{
    ca_group *g = (ca_group *)&g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), -CA_ENOLOOP);
    ASSERT(g == NULL);
    ASSERT_EQ(ca_run(release_args_main, NULL), 0);
}

/* Failure reports of a releasing group, as for a keeping one: a first
 * failure that ca_group_wait returned is not reported; one nobody waited
 * for is reported when the group is freed; a later failure nobody could
 * read is reported when its task is freed. */
static int release_reports_main(void *a)
{
    (void)a;
    ca_spawn_opts o1 = {.name = "waited-first"};
    ca_spawn_opts o2 = {.name = "unwaited-first"};
    ca_group *g;
    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    ASSERT_EQ(ca_group_spawn_ex(g, NULL, ret_einval, NULL, &o1), 0);
    ASSERT_EQ(ca_group_wait(g), -EINVAL);
    ca_group_free(g);

    ASSERT_EQ(ca_group_new_ex(&g, &release_opts), 0);
    struct job bad = {0.01, -EINVAL, 0, 0};
    ASSERT_EQ(ca_group_spawn_ex(g, NULL, job_run, &bad, &o2), 0);
    struct gkid late = {.g = g, .secs = 10.0, .on_cancel = -EPIPE};
    ca_spawn_opts o3 = {.name = "later-failure"};
    ASSERT_EQ(ca_group_spawn_ex(g, NULL, gkid_run, &late, &o3), 0);
    while (ca_group_size(g) > 0)
        ASSERT_EQ(ca_sleep(0.001), 0);
    fprintf(stderr, "-- freeing --\n");
    ca_group_free(g);
    return 0;
}

static int child_release_reports(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(release_reports_main, NULL);
}

static void test_group_release_reports(void)
{
    char buf[4096];
    int st = run_child("release_reports", NULL, buf, sizeof(buf));
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT(!strstr(buf, "'waited-first'"));
    const char *freeing = strstr(buf, "-- freeing --");
    const char *unwaited = strstr(buf, "'unwaited-first'");
    const char *later = strstr(buf, "'later-failure'");
    ASSERT(freeing && unwaited && later);
    ASSERT(later < freeing);    /* when it finished and was released */
    ASSERT(unwaited > freeing); /* when the group let go of it */
    ASSERT(strstr(later, "failed with EPIPE"));
    ASSERT(strstr(unwaited, "failed with EINVAL"));
}

static const struct test_child children[] = {
    {"release_reports", child_release_reports},
    {NULL, NULL},
};

static const struct test_case tests[] = {
    {"gather_100", test_gather_100, 10, 0},
    {"gather_failure_modes", test_gather_failure_modes, 10, 0},
    {"gather_caller_cancelled", test_gather_caller_cancelled, 10, 0},
    {"wait_modes", test_wait_modes, 10, 0},
    {"wait_for", test_wait_for, 10, 0},
    {"wait_for_same_turn", test_wait_for_same_turn, 10, 0},
    {"wait_for_caller_cancelled", test_wait_for_caller_cancelled, 10, 0},
    {"as_completed", test_as_completed, 10, 0},
    {"group_failure_cancels_siblings", test_group_failure_cancels_siblings, 10, 0},
    {"group_all_succeed", test_group_all_succeed, 10, 0},
    {"group_nested_and_owner_cancelled", test_group_nested_and_owner_cancelled, 10, 0},
    {"group_deadline_and_free", test_group_deadline_and_free, 10, 0},
    {"cancel_wait_and_as_completed", test_cancel_wait_and_as_completed, 10, 0},
    {"gather_deadline", test_gather_deadline, 10, 0},
    {"wait_deadline", test_wait_deadline, 10, 0},
    {"wait_for_deadline", test_wait_for_deadline, 10, 0},
    {"as_completed_deadline", test_as_completed_deadline, 10, 0},
    {"wait_for_same_turn_timeout", test_wait_for_same_turn_timeout, 10, 0},
    {"wait_for_same_turn_cancel", test_wait_for_same_turn_cancel, 10, 0},
    {"group_cancel", test_group_cancel, 10, 0},
    {"group_cancel_child_fails", test_group_cancel_child_fails, 10, 0},
    {"wait_for_shielded", test_wait_for_shielded, 10, 0},
    {"group_shielded_child", test_group_shielded_child, 10, 0},
    {"group_release_failure", test_group_release_failure, 10, 0},
    {"group_release_cancel", test_group_release_cancel, 10, 0},
    {"group_release_nested", test_group_release_nested, 10, 0},
    {"group_release_args", test_group_release_args, 10, 0},
    {"group_release_reports", test_group_release_reports, 10, 0},
    /* heavy: a million tasks crashed ThreadSanitizer (signal 11), as the
     * scaling tests below do */
    {"group_release_million", test_group_release_million, 60, 1},
    /* heavy: 20k+ coroutine stacks crash ThreadSanitizer, which does not
     * know them (the TSan and valgrind runs set CAWAIT_TEST_LIGHT) */
    {"combinators_scale", test_combinators_scale, 30, 1},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, children);
}
