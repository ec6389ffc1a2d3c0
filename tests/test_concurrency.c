/* Structured concurrency: gather, wait, wait_for, as_completed, groups. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <time.h>

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

/* ---- task groups ---------------------------------------------------------- */

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
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
