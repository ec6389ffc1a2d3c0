/* Task layer: ordering, join, cancellation, deadlines, shields, ca_run. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An ordered log of events, to compare with the seeds' expected output. */
static char trace[4096];
static void note(const char *s)
{
    strcat(trace, s);
    strcat(trace, " ");
}

/* ---- seed 002 Q12: gather(task1(), task2()) ------------------------------ */

static int q12_task1(void *a)
{
    (void)a;
    note("1-start");
    ASSERT_EQ(ca_sleep(0.2), 0);
    note("1-end");
    return 1;
}

static int q12_task2(void *a)
{
    (void)a;
    note("2-start");
    ASSERT_EQ(ca_sleep(0.1), 0);
    note("2-end");
    return 2;
}

static int q12_main(void *a)
{
    (void)a;
    ca_task *t1 = ca_spawn(q12_task1, NULL);
    ca_task *t2 = ca_spawn(q12_task2, NULL);
    ASSERT(t1 && t2);
    ASSERT_EQ(ca_join(t1), 1);
    ASSERT_EQ(ca_join(t2), 2);
    ca_task_release(t1);
    ca_task_release(t2);
    return 0;
}

static void test_seed002_q12_order(void)
{
    double t0 = mono();
    ASSERT_EQ(ca_run(q12_main, NULL), 0);
    double dt = mono() - t0;
    ASSERT_STREQ(trace, "1-start 2-start 2-end 1-end ");
    ASSERT_GE(dt, 0.2);
    ASSERT_TIME_LT(dt, 0.6);
}

/* ---- seed 003 examples 2-4 (1 is plain blocking C) ----------------------- */

struct fetch {
    int param;
    char result[32];
};

static int fetch_data(void *a)
{
    struct fetch *f = a;
    char buf[64];
    snprintf(buf, sizeof(buf), "do%d", f->param);
    note(buf);
    ASSERT_EQ(ca_sleep(f->param * 0.05), 0);
    snprintf(buf, sizeof(buf), "done%d", f->param);
    note(buf);
    snprintf(f->result, sizeof(f->result), "Result of %d", f->param);
    return 0;
}

static int ex2_main(void *a)
{
    (void)a;
    struct fetch f1 = {1, ""}, f2 = {2, ""};
    fetch_data(&f1); /* "await coroutine" directly: no concurrency */
    note("T1");
    fetch_data(&f2);
    note("T2");
    ASSERT_STREQ(f2.result, "Result of 2");
    return 0;
}

static int ex3_main(void *a)
{
    int reverse = *(int *)a;
    struct fetch f1 = {1, ""}, f2 = {2, ""};
    ca_task *t1 = ca_spawn(fetch_data, &f1);
    ca_task *t2 = ca_spawn(fetch_data, &f2);
    if (!reverse) {
        ASSERT_EQ(ca_join(t1), 0);
        note("T1");
        ASSERT_EQ(ca_join(t2), 0);
        note("T2");
    } else {
        ASSERT_EQ(ca_join(t2), 0);
        note("T2");
        ASSERT_EQ(ca_join(t1), 0);
        note("T1");
    }
    ASSERT_STREQ(f1.result, "Result of 1");
    ca_task_release(t1);
    ca_task_release(t2);
    return 0;
}

static void test_seed003_examples(void)
{
    double t0 = mono();
    ASSERT_EQ(ca_run(ex2_main, NULL), 0);
    double sum = mono() - t0;
    ASSERT_STREQ(trace, "do1 done1 T1 do2 done2 T2 ");
    ASSERT_GE(sum, 0.15);
    ASSERT_TIME_LT(sum, 0.40);

    trace[0] = 0;
    int rev = 0;
    t0 = mono();
    ASSERT_EQ(ca_run(ex3_main, &rev), 0);
    double max = mono() - t0;
    ASSERT_STREQ(trace, "do1 do2 done1 T1 done2 T2 ");
    ASSERT_GE(max, 0.10);
    ASSERT_TIME_LT(max, 0.30);

    trace[0] = 0;
    rev = 1;
    t0 = mono();
    ASSERT_EQ(ca_run(ex3_main, &rev), 0);
    max = mono() - t0;
    ASSERT_STREQ(trace, "do1 do2 done1 done2 T2 T1 ");
    ASSERT_TIME_LT(max, 0.30);
}

/* ---- spawn order, eager, yield ------------------------------------------- */

static int noter(void *a)
{
    note(a);
    return 0;
}

static int order_main(void *a)
{
    (void)a;
    ca_task *x = ca_spawn(noter, "x");
    ca_task *y = ca_spawn(noter, "y");
    note("spawned");
    ca_spawn_opts eo = {.eager = 1, .name = "eager"};
    ca_task *e;
    ASSERT_EQ(ca_spawn_ex(&e, noter, "e", &eo), 0);
    note("after-eager");
    ASSERT_EQ(ca_yield(), 0);
    note("yielded");
    ASSERT(ca_task_done(x) && ca_task_done(y) && ca_task_done(e));
    ASSERT_STREQ(ca_task_name(e), "eager");
    ASSERT(strncmp(ca_task_name(x), "Task-", 5) == 0);
    ASSERT(strstr(ca_task_where(x), "test_task.c:"));
    ca_detach(x);
    ca_detach(y);
    ca_detach(e);
    return 0;
}

static void test_spawn_order_and_eager(void)
{
    ASSERT_EQ(ca_run(order_main, NULL), 0);
    /* New tasks start at the next turn, FIFO; an eager task runs inside
     * the spawn call. */
    ASSERT_STREQ(trace, "spawned e after-eager x y yielded ");
}

static int yielder(void *a)
{
    for (int i = 0; i < 3; i++) {
        note(a);
        ASSERT_EQ(ca_yield(), 0);
    }
    return 0;
}

static int rr_main(void *a)
{
    (void)a;
    ca_task *p = ca_spawn(yielder, "a");
    ca_task *q = ca_spawn(yielder, "b");
    ASSERT_EQ(ca_join(p), 0);
    ASSERT_EQ(ca_join(q), 0);
    ca_task_release(p);
    ca_task_release(q);
    return 0;
}

static void test_yield_round_robin(void)
{
    ASSERT_EQ(ca_run(rr_main, NULL), 0);
    ASSERT_STREQ(trace, "a b a b a b ");
}

/* ---- join ---------------------------------------------------------------- */

static int ret_val(void *a)
{
    ca_sleep(0.01);
    return (int)(long)a;
}

static int joiner(void *a)
{
    return ca_join(a);
}

static int join_main(void *a)
{
    (void)a;
    ca_task *t = ca_spawn(ret_val, (void *)-ENOENT);
    ca_task *j[3];
    for (int i = 0; i < 3; i++)
        j[i] = ca_spawn(joiner, t);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(j[i]), -ENOENT);
        ca_task_release(j[i]);
    }
    ASSERT_EQ(ca_join(t), -ENOENT);
    ASSERT_EQ(ca_task_status(t), -ENOENT);
    ca_task_release(t);
    ASSERT_EQ(ca_join(ca_current()), -EDEADLK);
    ASSERT_EQ(ca_join(NULL), -EINVAL);
    ASSERT_EQ(ca_task_id(ca_current()), 1);
    ASSERT_STREQ(ca_task_name(ca_current()), "main");
    int x = 5;
    ca_task_set_userdata(ca_current(), &x);
    ASSERT(ca_task_userdata(ca_current()) == &x);
    return 0;
}

static void test_join_many(void)
{
    ASSERT_EQ(ca_run(join_main, NULL), 0);
}

/* A joiner keeps the joined task alive even if its last handle is released
 * while it waits. */
static int release_later(void *a)
{
    ca_task *t = a;
    ASSERT_EQ(ca_sleep(0.005), 0);
    ca_task_release(t); /* the spawner's only handle */
    return 0;
}

static int join_released_main(void *a)
{
    (void)a;
    ca_task *t = ca_spawn(ret_val, (void *)7L); /* finishes after 10 ms */
    ca_task *r = ca_spawn(release_later, t);
    ASSERT_EQ(ca_join(t), 7);
    /* t's memory went away only now; reuse the slot to make a stale read
     * visible to ASan/valgrind if the reference were missing. */
    ca_task *u = ca_spawn(ret_val, (void *)1L);
    ASSERT_EQ(ca_join(u), 1);
    ca_task_release(u);
    ASSERT_EQ(ca_join(r), 0);
    ca_task_release(r);
    return 0;
}

static void test_join_survives_release(void)
{
    ASSERT_EQ(ca_run(join_released_main, NULL), 0);
}

/* ---- cancellation -------------------------------------------------------- */

static int ran_body;

static int mark_ran(void *a)
{
    (void)a;
    ran_body = 1;
    return 0;
}

static int sleeper(void *a)
{
    double s = a ? *(double *)a : 10.0;
    int r = ca_sleep(s);
    /* Level-triggered: every later blocking call fails the same way. */
    if (r == -ECANCELED) {
        ASSERT_EQ(ca_sleep(0.01), -ECANCELED);
        ASSERT_EQ(ca_yield(), -ECANCELED);
        ASSERT(ca_task_cancel_requested(ca_current()));
        /* A shield lets cleanup block normally. */
        ASSERT_EQ(ca_shield_push(), 0);
        ASSERT_EQ(ca_sleep(0.01), 0);
        ASSERT_EQ(ca_shield_pop(), 0);
        ASSERT_EQ(ca_sleep(0), -ECANCELED);
    }
    return r;
}

static int cancel_main(void *a)
{
    (void)a;
    /* before start: the body never runs */
    ca_task *t = ca_spawn(mark_ran, NULL);
    ASSERT_EQ(ca_cancel(t), 0);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ASSERT(ca_task_cancelled(t));
    ASSERT_EQ(ran_body, 0);
    ca_task_release(t);

    /* during sleep */
    double t0 = mono();
    t = ca_spawn(sleeper, NULL);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ca_cancel(t);
    ca_cancel(t); /* twice is harmless */
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ASSERT_TIME_LT(mono() - t0, 1.0);
    ca_cancel(t); /* after done: no effect */
    ASSERT_EQ(ca_task_status(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(ca_cancel(NULL), -EINVAL);
    return 0;
}

static void test_cancel_before_and_during_sleep(void)
{
    ASSERT_EQ(ca_run(cancel_main, NULL), 0);
}

static int join_target(void *a)
{
    (void)a;
    ca_sleep(0.1);
    return 9;
}

static int cancel_join_main(void *a)
{
    (void)a;
    ca_task *target = ca_spawn(join_target, NULL);
    ca_task *j = ca_spawn(joiner, target);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_cancel(j);
    ASSERT_EQ(ca_join(j), -ECANCELED);
    /* The joined task was not cancelled with its joiner. */
    ASSERT(!ca_task_done(target));
    ASSERT_EQ(ca_join(target), 9);
    ca_task_release(j);
    ca_task_release(target);
    return 0;
}

static void test_cancel_during_join(void)
{
    ASSERT_EQ(ca_run(cancel_join_main, NULL), 0);
}

static int fd_reader(void *a)
{
    int fd = *(int *)a;
    return ca_wait_fd(fd, CA_READ);
}

static int cancel_fd_main(void *a)
{
    (void)a;
    int p[2];
    ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    ca_task *t = ca_spawn(fd_reader, &p[0]);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    /* The fd still works for the next waiter. */
    t = ca_spawn(fd_reader, &p[0]);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(write(p[1], "x", 1), 1);
    ASSERT_EQ(ca_join(t), CA_READ);
    ca_task_release(t);
    ca_close(p[0]);
    ca_close(p[1]);
    return 0;
}

static void test_cancel_during_fd_wait(void)
{
    ASSERT_EQ(ca_run(cancel_fd_main, NULL), 0);
}

static int self_cancel(void *a)
{
    (void)a;
    ca_cancel(ca_current());
    int r = ca_sleep(1);
    ASSERT_EQ(r, -ECANCELED);
    return r;
}

static int self_cancel_main(void *a)
{
    (void)a;
    ca_task *t = ca_spawn(self_cancel, NULL);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    return 0;
}

static void test_cancel_self(void)
{
    ASSERT_EQ(ca_run(self_cancel_main, NULL), 0);
}

/* A wake-up and a cancel in the same turn: the wake-up is not lost. */
static int wake_then_cancel_main(void *a)
{
    (void)a;
    int p[2];
    ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    ca_task *t = ca_spawn(fd_reader, &p[0]);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(write(p[1], "x", 1), 1);
    /* Let the loop poll and make the reader ready, without running it. */
    ca_loop_stats st;
    ca_loop_stats_get(&st);
    for (;;) {
        ASSERT_EQ(ca_yield(), 0);
        ca_loop_stats st2;
        ca_loop_stats_get(&st2);
        if (st2.turns > st.turns + 2)
            break;
    }
    ca_cancel(t);
    int r = ca_join(t);
    /* Either the reader saw the event first or the cancel: never a hang,
     * and the event is not swallowed when the reader was already woken. */
    ASSERT(r == CA_READ || r == -ECANCELED);
    ca_task_release(t);
    ca_close(p[0]);
    ca_close(p[1]);
    return 0;
}

static void test_wakeup_vs_cancel(void)
{
    ASSERT_EQ(ca_run(wake_then_cancel_main, NULL), 0);
}

/* ---- deadlines ----------------------------------------------------------- */

static int deadline_main(void *a)
{
    (void)a;
    double t0 = mono();
    /* a single scope */
    ASSERT_EQ(ca_deadline_push(0.05), 0);
    ASSERT_EQ(ca_sleep(5), -ETIMEDOUT);
    ASSERT_EQ(ca_sleep(0.01), -ETIMEDOUT); /* level-triggered */
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.05);
    ASSERT_TIME_LT(dt, 0.5);
    ASSERT_EQ(ca_sleep(0.01), 0); /* outside the scope again */

    /* a scope that does not fire */
    ASSERT_EQ(ca_deadline_push(1.0), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_deadline_pop(), 0);

    /* nested: the inner is earlier */
    ASSERT_EQ(ca_deadline_push(1.0), 0);
    ASSERT_EQ(ca_deadline_push(0.03), 0);
    t0 = mono();
    ASSERT_EQ(ca_sleep(5), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 0.5);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_sleep(0.01), 0); /* the outer has not passed */
    ASSERT_EQ(ca_deadline_pop(), 0);

    /* nested: the outer is earlier, so it governs the inner */
    ASSERT_EQ(ca_deadline_push(0.03), 0);
    ASSERT_EQ(ca_deadline_push(10), 0);
    t0 = mono();
    ASSERT_EQ(ca_sleep(5), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 0.5);
    ASSERT_EQ(ca_deadline_pop(), 0);          /* the inner did not fire */
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT); /* the outer did */

    /* a shield ignores outer deadlines but honours its own */
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    ASSERT_EQ(ca_sleep(1), -ETIMEDOUT);
    ASSERT_EQ(ca_shield_push(), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    ASSERT_EQ(ca_sleep(1), -ETIMEDOUT);
    ASSERT_EQ(ca_shield_pop(), -EBUSY); /* inner scope still open */
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_shield_pop(), 0);
    ASSERT_EQ(ca_yield(), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);

    /* absolute deadlines, already passed */
    ASSERT_EQ(ca_deadline_push_at(ca_now() - 1), 0);
    ASSERT_EQ(ca_yield(), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);

    /* errors */
    ASSERT_EQ(ca_deadline_pop(), -EPERM);
    ASSERT_EQ(ca_shield_pop(), -EPERM);
    ASSERT_EQ(ca_deadline_push(0.0 / 0.0), -EINVAL);
    return 0;
}

static void test_deadlines_nested(void)
{
    ASSERT_EQ(ca_run(deadline_main, NULL), 0);
}

static int deadline_join_main(void *a)
{
    (void)a;
    ca_task *t = ca_spawn(join_target, NULL); /* 0.1 s */
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    ASSERT_EQ(ca_join(t), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_join(t), 9);
    ca_task_release(t);

    int p[2];
    ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    ASSERT_EQ(ca_wait_fd(p[0], CA_READ), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ca_close(p[0]);
    ca_close(p[1]);
    return 0;
}

static void test_deadline_join_and_fd(void)
{
    ASSERT_EQ(ca_run(deadline_join_main, NULL), 0);
}

/* ---- ca_run -------------------------------------------------------------- */

static int cleanup_ran;

static int forever(void *a)
{
    (void)a;
    int r = ca_sleep(3600);
    ASSERT_EQ(r, -ECANCELED);
    ca_shield_push();
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_shield_pop();
    cleanup_ran++;
    return r;
}

static int leave_tasks_main(void *a)
{
    (void)a;
    for (int i = 0; i < 10; i++)
        ca_detach(ca_spawn(forever, NULL));
    ca_spawn(forever, NULL); /* handle kept: ca_run collects it */
    ASSERT_EQ(ca_sleep(0.01), 0);
    return 42;
}

static void test_run_reaps_tasks(void)
{
    double t0 = mono();
    ASSERT_EQ(ca_run(leave_tasks_main, NULL), 42);
    ASSERT_EQ(cleanup_ran, 11);
    ASSERT_TIME_LT(mono() - t0, 2.0);
}

static int nested_run_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_run(leave_tasks_main, NULL), -EBUSY);
    ASSERT(ca_loop_current() != NULL);
    return 0;
}

static void test_run_errors(void)
{
    ASSERT_EQ(ca_run(NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_run(nested_run_main, NULL), 0);
    /* Blocking calls outside a task. */
    ASSERT_EQ(ca_sleep(0.1), -EPERM);
    ASSERT_EQ(ca_yield(), -EPERM);
    ASSERT_EQ(ca_wait_fd(0, CA_READ), -EPERM);
    ASSERT_EQ(ca_deadline_push(1), -EPERM);
    ASSERT_EQ(ca_shield_push(), -EPERM);
    ASSERT(ca_spawn(ret_val, NULL) == NULL);
    ca_task *t;
    ASSERT_EQ(ca_spawn_ex(&t, ret_val, NULL, NULL), -CA_ENOLOOP);
    ASSERT(ca_current() == NULL);
    ASSERT(ca_loop_current() == NULL);
    ASSERT_EQ(ca_sleep(-1), -EINVAL);
    ASSERT_STREQ(ca_err_name(-ECANCELED), "ECANCELED");
    ASSERT_STREQ(ca_err_name(-CA_ESTACK), "CA_ESTACK");
    ASSERT(strlen(ca_strerror(-ETIMEDOUT)) > 0);
    ASSERT_STREQ(ca_strerror(-CA_ENOLOOP),
                 "no cawait loop is running on this thread");
}

static void test_debug_eperm_message(void)
{
    char buf[2048];
    int st = run_child("eperm", "CAWAIT_DEBUG=1", buf, sizeof(buf));
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT(strstr(buf, "ca_sleep() called outside a task"));
}

static int child_eperm(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_sleep(0.01) == -EPERM ? 0 : 1;
}

/* ---- unretrieved failures ------------------------------------------------ */

static int fail_enoent(void *a)
{
    (void)a;
    return -ENOENT;
}

static int unretrieved_main(void *a)
{
    (void)a;
    ca_detach(ca_spawn(fail_enoent, NULL)); /* reported when collected */
    ca_task *t = ca_spawn(fail_enoent, NULL);
    ca_task *u = ca_spawn(fail_enoent, NULL);
    ca_task_set_name(u, "joined-one");
    ASSERT_EQ(ca_join(u), -ENOENT); /* retrieved: not reported */
    ca_task_release(u);
    ca_task_set_name(t, "kept-handle");
    return 0; /* t's handle is collected by ca_run: reported */
}

static int child_unretrieved(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(unretrieved_main, NULL);
}

static void test_unretrieved_failure_reported(void)
{
    char buf[4096];
    int st = run_child("unretrieved", NULL, buf, sizeof(buf));
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT(strstr(buf, "failed with ENOENT"));
    ASSERT(strstr(buf, "'kept-handle'"));
    ASSERT(!strstr(buf, "joined-one"));
    /* exactly two reports */
    int n = 0;
    for (char *p = buf; (p = strstr(p, "never joined")); p++)
        n++;
    ASSERT_EQ(n, 2);
}

/* ---- debug mode: a task that blocks the loop ------------------------------ */

static int hog(void *a)
{
    (void)a;
    struct timespec ts = {0, 150 * 1000 * 1000};
    nanosleep(&ts, NULL); /* the seeds' time.sleep inside async def */
    return 0;
}

static int slow_main(void *a)
{
    (void)a;
    ca_spawn_opts o = {.name = "hog"};
    ca_task *t;
    ASSERT_EQ(ca_spawn_ex(&t, hog, NULL, &o), 0);
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ca_loop_stats st;
    ASSERT_EQ(ca_loop_stats_get(&st), 0);
    ASSERT_GE(st.slow_tasks, 1);
    ASSERT_GE(st.run_ns, 100 * 1000 * 1000);
    return 0;
}

static int child_slow(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(slow_main, NULL);
}

static void test_debug_slow_task(void)
{
    char buf[4096];
    int st = run_child("slow", "CAWAIT_DEBUG=1", buf, sizeof(buf));
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT(strstr(buf, "task 'hog' (spawned at"));
    ASSERT(strstr(buf, "test_task.c:"));
    ASSERT(strstr(buf, "held the loop for 1"));
}

/* ca_set_debug turns the report on and off at run time, with its own
 * threshold. */
static int hog_ms(void *a)
{
    long ms = (long)(intptr_t)a;
    struct timespec ts = {0, ms * 1000 * 1000};
    nanosleep(&ts, NULL);
    return 0;
}

static int hog_named(const char *name, long ms)
{
    ca_spawn_opts o = {.name = name};
    ca_task *t;
    ASSERT_EQ(ca_spawn_ex(&t, hog_ms, (void *)(intptr_t)ms, &o), 0);
    int r = ca_join(t);
    ca_task_release(t);
    return r;
}

static int slow_api_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_set_debug(1, 20), 0);
    ASSERT_EQ(hog_named("short", 2), 0);   /* under the threshold */
    ASSERT_EQ(hog_named("medium", 60), 0); /* reported */
    ASSERT_EQ(ca_set_debug(0, 0), 0);
    ASSERT_EQ(hog_named("quiet", 60), 0);  /* debug off: not reported */
    ca_loop_stats st;
    ASSERT_EQ(ca_loop_stats_get(&st), 0);
    ASSERT_EQ(st.slow_tasks, 1);
    return 0;
}

static int child_slow_api(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(slow_api_main, NULL);
}

static void test_debug_slow_task_api(void)
{
    ASSERT_EQ(ca_set_debug(1, 10), -CA_ENOLOOP);
    char buf[4096];
    int st = run_child("slow_api", NULL, buf, sizeof(buf));
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT(strstr(buf, "task 'medium' (spawned at"));
    ASSERT(strstr(buf, "(threshold 20.0 ms)"));
    ASSERT(!strstr(buf, "'short'"));
    ASSERT(!strstr(buf, "'quiet'"));
}

/* Names in reports are escaped and bounded: a name with a newline used to
 * split the report in two lines ("cawait: task 'evil" / "fake' ..."), an
 * escape sequence reached the terminal, a 5,000-byte name was printed
 * whole. */
static int odd_names_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_set_debug(1, 20), 0);
    ASSERT_EQ(hog_named("two\nlines\x1b[31m", 60), 0);
    char big[5000];
    memset(big, 'n', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ASSERT_EQ(hog_named(big, 60), 0);
    ca_task *t = ca_spawn(fail_enoent, NULL);
    ASSERT_EQ(ca_task_set_name(t, "tab\there"), 0);
    ca_task_release(t); /* never joined: reported */
    ASSERT_EQ(ca_sleep(0.01), 0);
    return 0;
}

static int child_odd_names(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(odd_names_main, NULL);
}

static void test_debug_names_escaped(void)
{
    char buf[16384];
    int st = run_child("odd_names", NULL, buf, sizeof(buf));
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT(strstr(buf, "task 'two\\nlines\\x1b[31m' (spawned at"));
    ASSERT(!strchr(buf, '\x1b'));
    ASSERT(strstr(buf, "task 'tab\\there' (spawned at"));
    ASSERT(strstr(buf, "nnn...' (spawned at"));
    ASSERT(strlen(buf) < 2000);
    /* one line per report: three reports, three newlines */
    int n = 0;
    for (char *p = buf; (p = strchr(p, '\n')); p++)
        n++;
    ASSERT_EQ(n, 3);
}

/* ---- stacks -------------------------------------------------------------- */

static int depth_reached;

/* Real stack frames at any optimisation level: the volatile array is
 * filled (nonzero) and read after the recursive call, which keeps
 * compilers from turning the recursion into a loop. */
static __attribute__((noinline)) int recurse(int n)
{
    volatile char pad[1024];
    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] = (char)(n | 0x80);
    depth_reached = n;
    if (n <= 0)
        return pad[7] & 1;
    int r = recurse(n - 1);
    return r + (pad[n % 1024] & 1);
}

static int deep_task(void *a)
{
    return recurse((int)(long)a) >= 0 ? 0 : 1;
}

static int overflow_main(void *a)
{
    (void)a;
    ca_spawn_opts o = {.name = "deep", .stack_size = 64 * 1024};
    ca_task *t;
    ASSERT_EQ(ca_spawn_ex(&t, deep_task, (void *)100000L, &o), 0);
    ca_join(t);
    return 0;
}

static int child_overflow(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(overflow_main, NULL);
}

static void check_overflow(const char *env, int sig)
{
    char buf[8192];
    int st = run_child("overflow", env, buf, sizeof(buf));
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == sig && strstr(buf, "stack overflow in task 'deep'"))) {
        fprintf(stderr, "child (%s) status %#x, stderr:\n%s\n", env ? env : "",
                st, buf);
        ASSERT(0);
    }
}

static void test_stack_overflow_reported(void)
{
    if (test_is_instrumented())
        SKIP("sanitizers and valgrind report stack overflows themselves");
    check_overflow(NULL, SIGSEGV);
    check_overflow("CAWAIT_STACK_GUARD=mprotect", SIGSEGV);
}

static void test_stack_overflow_canary(void)
{
    if (test_is_instrumented())
        SKIP("sanitizers and valgrind report stack overflows themselves");
    /* Without guard pages: a deep overflow is caught by the SIGSEGV
     * handler's stack-pointer check, a shallow one (into the red zone, then
     * back) by the red-zone check when the task switches or finishes. */
    check_overflow("CAWAIT_STACK_GUARD=canary", SIGSEGV);
    char buf[8192];
    int st = run_child("overflow_shallow", "CAWAIT_STACK_GUARD=canary", buf,
                       sizeof(buf));
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT &&
          strstr(buf, "stack overflow in task 'shallow'") &&
          strstr(buf, "red zone"))) {
        fprintf(stderr, "status %#x, stderr:\n%s\n", st, buf);
        ASSERT(0);
    }
}

static int shallow_main(void *a)
{
    (void)a;
    /* 64 KiB stack, ~80 KiB of frames: 16 KiB into the 64 KiB red zone. */
    ca_spawn_opts o = {.name = "shallow", .stack_size = 64 * 1024};
    ca_task *t;
    ASSERT_EQ(ca_spawn_ex(&t, deep_task, (void *)80L, &o), 0);
    ca_join(t);
    return 0;
}

static int child_overflow_shallow(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ca_run(shallow_main, NULL);
}

static int within_limit(void *a)
{
    (void)a;
    return recurse(100) >= 0 ? 0 : 1; /* ~110 KiB of a 128 KiB stack */
}

static int stack_ok_main(void *a)
{
    (void)a;
    ca_task *t = ca_spawn(within_limit, NULL);
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    return 0;
}

static void test_deep_stack_within_limit(void)
{
    ASSERT_EQ(ca_run(stack_ok_main, NULL), 0);
}

/* ---- a million live tasks ------------------------------------------------- */

static int live_count;

static int live_task(void *a)
{
    live_count++;
    int r = ca_sleep(*(double *)a);
    live_count--;
    return r;
}

static int million_main(void *a)
{
    long n = *(long *)a;
    ca_task **ts = malloc((size_t)n * sizeof(*ts));
    ASSERT(ts);
    double s = 0.5;
    for (long i = 0; i < n; i++) {
        ts[i] = ca_spawn(live_task, &s);
        ASSERT(ts[i]);
    }
    ASSERT_EQ(ca_sleep(0.2), 0);
    ASSERT_EQ(live_count, n); /* all alive at once */
    for (long i = 0; i < n; i++) {
        ASSERT_EQ(ca_join(ts[i]), 0);
        ca_task_release(ts[i]);
    }
    ASSERT_EQ(live_count, 0);
    free(ts);
    return 0;
}

static void test_million_live_tasks(void)
{
    long n = test_is_instrumented() ? 20000 : 1000000;
    double t0 = mono();
    ASSERT_EQ(ca_run(million_main, &n), 0);
    printf("%ld live tasks in %.2f s\n", n, mono() - t0);
}

/* The same with the fallback guards: mprotect guards until a quarter of
 * vm.max_map_count, then red zones.  Run in a child so the guard mode can
 * be forced. */
static int child_million(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    long n = 1000000;
    return ca_run(million_main, &n);
}

static void test_million_live_tasks_fallback_guards(void)
{
    if (test_is_instrumented())
        SKIP("too heavy under sanitizers and valgrind");
    char buf[4096];
    int st = run_child("million", "CAWAIT_STACK_GUARD=mprotect", buf,
                       sizeof(buf));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child status %#x, stderr:\n%s\n", st, buf);
        ASSERT(0);
    }
}

static const struct test_case tests[] = {
    {"seed002_q12_order", test_seed002_q12_order, 10, 0},
    {"seed003_examples", test_seed003_examples, 10, 0},
    {"spawn_order_and_eager", test_spawn_order_and_eager, 10, 0},
    {"yield_round_robin", test_yield_round_robin, 10, 0},
    {"join_many", test_join_many, 10, 0},
    {"join_survives_release", test_join_survives_release, 10, 0},
    {"cancel_before_and_during_sleep", test_cancel_before_and_during_sleep, 10, 0},
    {"cancel_during_join", test_cancel_during_join, 10, 0},
    {"cancel_during_fd_wait", test_cancel_during_fd_wait, 10, 0},
    {"cancel_self", test_cancel_self, 10, 0},
    {"wakeup_vs_cancel", test_wakeup_vs_cancel, 10, 0},
    {"deadlines_nested", test_deadlines_nested, 10, 0},
    {"deadline_join_and_fd", test_deadline_join_and_fd, 10, 0},
    {"run_reaps_tasks", test_run_reaps_tasks, 10, 0},
    {"run_errors", test_run_errors, 10, 0},
    {"debug_eperm_message", test_debug_eperm_message, 10, 0},
    {"unretrieved_failure_reported", test_unretrieved_failure_reported, 10, 0},
    {"debug_slow_task", test_debug_slow_task, 10, 0},
    {"debug_slow_task_api", test_debug_slow_task_api, 10, 0},
    {"debug_names_escaped", test_debug_names_escaped, 10, 0},
    {"stack_overflow_reported", test_stack_overflow_reported, 20, 0},
    {"stack_overflow_canary", test_stack_overflow_canary, 20, 0},
    {"deep_stack_within_limit", test_deep_stack_within_limit, 10, 0},
    {"million_live_tasks", test_million_live_tasks, 120, 1},
    {"million_live_tasks_fallback_guards",
     test_million_live_tasks_fallback_guards, 120, 1},
    {NULL, NULL, 0, 0},
};

static const struct test_child children[] = {
    {"eperm", child_eperm},
    {"unretrieved", child_unretrieved},
    {"slow", child_slow},
    {"odd_names", child_odd_names},
    {"slow_api", child_slow_api},
    {"overflow", child_overflow},
    {"overflow_shallow", child_overflow_shallow},
    {"million", child_million},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, children);
}
