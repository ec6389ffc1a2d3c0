/*
 * Thread pools: ca_to_thread, job handles, cancellation (queued, running,
 * detached, cooperative), back pressure, shutdown, the default pool and
 * argument validation.  Real threads throughout.
 */
#include "cawait.h"
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* time.sleep: blocks the calling thread. */
static void blocking_sleep(double s)
{
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Pool threads alive in this process: they are named "cawait-pool" (the
 * sanitizers have threads of their own, so all threads would not do). */
static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f) &&
            strncmp(comm, "cawait-pool", 11) == 0)
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

/* Pool threads left, once the exiting ones are gone from /proc: a joined
 * thread can still be listed for a moment (pthread_join returns when the
 * kernel clears the thread id, before the thread is released), so a
 * count above the expected one is read again for up to 2 s. */
static int threads_down_to(int want)
{
    int n = count_threads();
    for (int i = 0; n > want && i < 200; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        n = count_threads();
    }
    return n;
}

static int threads_left(void)
{
    return threads_down_to(0);
}

/* A gate the test opens; jobs wait for it on their pool thread. */
static atomic_int gate;
static atomic_int gate_entered;

static int gate_job(void *arg)
{
    (void)arg;
    atomic_fetch_add(&gate_entered, 1);
    while (!atomic_load(&gate))
        blocking_sleep(0.001);
    return 7;
}

/* Wait (yielding to the loop) until cond() holds or `secs` pass. */
static int wait_until(int (*cond)(void), double secs)
{
    double end = mono() + secs;
    while (!cond()) {
        if (mono() > end)
            return 0;
        ca_sleep(0.001);
    }
    return 1;
}

static int one_entered(void)
{
    return atomic_load(&gate_entered) >= 1;
}

static int open_gate_later(void *a)
{
    (void)a;
    ca_sleep(0.05);
    atomic_store(&gate, 1);
    return 0;
}

static atomic_int ran;

static int mark_ran(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
    return 0;
}

static int nothing(void *arg)
{
    (void)arg;
    return 0;
}

/* Make the default pool and let each of its threads run once, so that
 * timings do not include starting threads (slow under valgrind). */
static void warm_default_pool(void)
{
    ca_pool *d;
    ASSERT_EQ(ca_pool_default(&d), 0);
    ca_job *j[8];
    for (int i = 0; i < 8; i++)
        ASSERT_EQ(ca_pool_submit(&j[i], nothing, NULL, NULL), 0);
    for (int i = 0; i < 8; i++) {
        ASSERT_EQ(ca_job_wait(j[i]), 0);
        ca_job_release(j[i]);
    }
}

static atomic_int job_entered;

static int job_started(void)
{
    return atomic_load(&job_entered) > 0;
}

/* ---- seed 003: to_thread of two blocking sleeps ----------------------------
 */

struct fetch {
    double secs;
    int param;
    char result[32];
};

static int fetch_data(void *arg)
{
    struct fetch *f = arg;
    blocking_sleep(f->secs);
    snprintf(f->result, sizeof(f->result), "Result of %d", f->param);
    return f->param;
}

static int fetch_task(void *arg)
{
    return ca_to_thread(fetch_data, arg);
}

static int max_not_sum_main(void *a)
{
    (void)a;
    struct fetch f[2] = {{0.15, 1, ""}, {0.3, 2, ""}};
    warm_default_pool();
    double t0 = mono();
    ca_task *t1 = ca_spawn(fetch_task, &f[0]);
    ca_task *t2 = ca_spawn(fetch_task, &f[1]);
    ASSERT(t1 && t2);
    ASSERT_EQ(ca_join(t1), 1);
    ASSERT_EQ(ca_join(t2), 2);
    double dt = mono() - t0;
    ca_task_release(t1);
    ca_task_release(t2);
    ASSERT_STREQ(f[0].result, "Result of 1");
    ASSERT_STREQ(f[1].result, "Result of 2");
    ASSERT_GE(dt, 0.29);
    ASSERT_TIME_LT(dt, 0.42); /* the sum would be 0.45 */
    return 0;
}

static void test_to_thread_max_not_sum(void)
{
    ASSERT_EQ(ca_run(max_not_sum_main, NULL), 0);
}

/* ---- a blocking call stalls the loop; via to_thread it does not -----------
 */

static volatile int ticking;
static double max_gap;
static int ticks;

static int ticker(void *a)
{
    (void)a;
    double last = mono();
    while (ticking) {
        if (ca_sleep(0.01) < 0)
            break;
        double now = mono();
        if (now - last > max_gap)
            max_gap = now - last;
        last = now;
        ticks++;
    }
    return 0;
}

static int sleep_job(void *arg)
{
    blocking_sleep(*(double *)arg);
    return 0;
}

static int stall_main(void *a)
{
    (void)a;
    double secs = 0.25;
    warm_default_pool();
    /* Inside the task: the ticker is stalled for the whole sleep. */
    ticking = 1;
    max_gap = 0;
    ticks = 0;
    ca_task *t = ca_spawn(ticker, NULL);
    ASSERT_EQ(ca_sleep(0.05), 0);
    blocking_sleep(secs);
    ASSERT_EQ(ca_sleep(0.05), 0);
    ticking = 0;
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ASSERT_GE(max_gap, secs - 0.01);

    /* Through to_thread: it keeps ticking. */
    ticking = 1;
    max_gap = 0;
    ticks = 0;
    t = ca_spawn(ticker, NULL);
    ASSERT_EQ(ca_sleep(0.05), 0);
    int before = ticks;
    ASSERT_EQ(ca_to_thread(sleep_job, &secs), 0);
    int during = ticks - before;
    ASSERT_EQ(ca_sleep(0.05), 0);
    ticking = 0;
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ASSERT_TIME_LT(max_gap, 0.1);
    ASSERT_GE(during, 8); /* 25 at best */
    return 0;
}

static void test_blocking_stalls_to_thread_does_not(void)
{
    ASSERT_EQ(ca_run(stall_main, NULL), 0);
}

/* ---- cancellation ----------------------------------------------------------
 */

struct tt_call {
    ca_fn fn;
    void *arg;
    ca_job_opts opts;
    double returned_at;
};

static int to_thread_task(void *arg)
{
    struct tt_call *c = arg;
    int r = ca_to_thread_ex(c->fn, c->arg, &c->opts);
    c->returned_at = mono();
    return r;
}

static int cancel_queued_main(void *a)
{
    (void)a;
    ca_pool *p;
    ca_pool_opts po = {.threads = 1};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    /* The one thread is busy behind the gate... */
    struct tt_call busy = {.fn = gate_job, .opts = {.pool = p}};
    ca_task *tb = ca_spawn(to_thread_task, &busy);
    ASSERT(wait_until(one_entered, 5));
    /* ...so this job queues; cancelling its caller removes it. */
    struct tt_call q = {.fn = mark_ran, .opts = {.pool = p}};
    ca_task *tq = ca_spawn(to_thread_task, &q);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.queued, 1);
    ASSERT_EQ(st.running, 1);
    ASSERT_EQ(ca_cancel(tq), 0);
    ASSERT_EQ(ca_join(tq), -ECANCELED);
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.queued, 0);
    ASSERT_EQ(st.cancelled, 1);
    atomic_store(&gate, 1);
    ASSERT_EQ(ca_join(tb), 7);
    ASSERT_EQ(ca_pool_shutdown(p, 0), 0);
    ASSERT_EQ(atomic_load(&ran), 0); /* never ran */
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.completed, 1);
    ASSERT_EQ(st.threads, 0);
    ca_task_release(tb);
    ca_task_release(tq);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_cancel_queued_never_runs(void)
{
    ASSERT_EQ(ca_run(cancel_queued_main, NULL), 0);
    ASSERT_EQ(atomic_load(&ran), 0);
}

static atomic_int slow_done;

static int slow_job(void *arg)
{
    atomic_fetch_add(&job_entered, 1);
    blocking_sleep(*(double *)arg);
    atomic_store(&slow_done, 1);
    return 5;
}

static int cancel_running_main(void *a)
{
    (void)a;
    double secs = 0.3;
    struct tt_call c = {.fn = slow_job, .arg = &secs};
    double t0 = mono();
    ca_task *t = ca_spawn(to_thread_task, &c);
    ASSERT(wait_until(job_started, 5));
    ASSERT_EQ(ca_cancel(t), 0);
    /* The default: the caller waits for the running job. */
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ASSERT_EQ(atomic_load(&slow_done), 1);
    ASSERT_GE(c.returned_at - t0, secs - 0.01);
    ca_task_release(t);
    return 0;
}

static void test_cancel_running_waits(void)
{
    ASSERT_EQ(ca_run(cancel_running_main, NULL), 0);
}

/* A detached job owns its heap argument; free_arg runs when it is done. */
struct detached_arg {
    double secs;
    int *freed;
};

static atomic_int detached_finished;

static int detached_job(void *arg)
{
    struct detached_arg *d = arg;
    atomic_fetch_add(&job_entered, 1);
    blocking_sleep(d->secs);
    atomic_store(&detached_finished, 1);
    return 0;
}

static int freed_count;

static void free_detached(void *arg)
{
    struct detached_arg *d = arg;
    ASSERT_EQ(atomic_load(&detached_finished), 1);
    (*d->freed)++;
    free(d);
}

static int finished_cond(void)
{
    return freed_count == 1;
}

static int cancel_detach_main(void *a)
{
    (void)a;
    struct detached_arg *d = malloc(sizeof(*d));
    ASSERT(d);
    d->secs = 0.2;
    d->freed = &freed_count;
    struct tt_call c = {.fn = detached_job,
                        .arg = d,
                        .opts = {.detach = 1, .free_arg = free_detached}};
    ca_task *t = ca_spawn(to_thread_task, &c);
    ASSERT(wait_until(job_started, 5));
    double t0 = mono();
    ASSERT_EQ(ca_cancel(t), 0);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ASSERT_TIME_LT(c.returned_at - t0, 0.1); /* at once */
    ASSERT_EQ(atomic_load(&detached_finished), 0);
    ASSERT_EQ(freed_count, 0);
    /* Its later completion is handled safely: free_arg, nothing else. */
    ASSERT(wait_until(finished_cond, 5));
    ca_task_release(t);
    return 0;
}

static void test_cancel_running_detach(void)
{
    ASSERT_EQ(ca_run(cancel_detach_main, NULL), 0);
    ASSERT_EQ(freed_count, 1);
}

/* Detached but still queued, or cancelled before it was even submitted:
 * it never runs, and free_arg gets arg at once. */
static int never_runs(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
    return 0;
}

static int self_cancel_to_thread(void *arg)
{
    ca_cancel(ca_current());
    return to_thread_task(arg);
}

static int detach_queued_main(void *a)
{
    (void)a;
    ca_pool *p;
    ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = 1}), 0);
    struct tt_call busy = {.fn = gate_job, .opts = {.pool = p}};
    ca_task *tb = ca_spawn(to_thread_task, &busy);
    ASSERT(wait_until(one_entered, 5));
    struct detached_arg *d = malloc(sizeof(*d));
    ASSERT(d);
    d->freed = &freed_count;
    atomic_store(&detached_finished, 1); /* free_detached checks it */
    struct tt_call c = {
        .fn = never_runs,
        .arg = d,
        .opts = {.pool = p, .detach = 1, .free_arg = free_detached}};
    ca_task *t = ca_spawn(to_thread_task, &c);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(freed_count, 0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ASSERT_EQ(freed_count, 1); /* at once: the job never started */
    ca_task_release(t);

    /* Cancelled before submitting: the same rule. */
    d = malloc(sizeof(*d));
    ASSERT(d);
    d->freed = &freed_count;
    c.arg = d;
    t = ca_spawn(self_cancel_to_thread, &c);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(freed_count, 2);

    atomic_store(&gate, 1);
    ASSERT_EQ(ca_join(tb), 7);
    ca_task_release(tb);
    ASSERT_EQ(ca_pool_free(p), 0);
    ASSERT_EQ(atomic_load(&ran), 0);
    return 0;
}

static void test_detach_queued_frees_arg_at_once(void)
{
    ASSERT_EQ(ca_run(detach_queued_main, NULL), 0);
    ASSERT_EQ(freed_count, 2);
}

/* A detached job still running when main returns: ca_run waits for it. */
static int detach_at_exit_main(void *a)
{
    (void)a;
    struct detached_arg *d = malloc(sizeof(*d));
    ASSERT(d);
    d->secs = 0.2;
    d->freed = &freed_count;
    struct tt_call c = {.fn = detached_job,
                        .arg = d,
                        .opts = {.detach = 1, .free_arg = free_detached}};
    ca_task *t = ca_spawn(to_thread_task, &c);
    ASSERT(wait_until(job_started, 5));
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    return 0;
}

static void test_detached_job_at_exit(void)
{
    ASSERT_EQ(ca_run(detach_at_exit_main, NULL), 0);
    ASSERT_EQ(atomic_load(&detached_finished), 1);
    ASSERT_EQ(freed_count, 1);
    ASSERT_EQ(threads_left(), 0);
}

/* ---- the cooperative cancel flag -------------------------------------------
 */

static atomic_int saw_flag;

static int polling_job(void *arg)
{
    (void)arg;
    atomic_fetch_add(&job_entered, 1);
    double end = mono() + 10;
    while (mono() < end) {
        if (ca_job_cancelled()) {
            atomic_store(&saw_flag, 1);
            return -ECANCELED;
        }
        blocking_sleep(0.002);
    }
    return 0;
}

static int coop_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_job_cancelled(), 0); /* not a job */
    struct tt_call c = {.fn = polling_job};
    ca_task *t = ca_spawn(to_thread_task, &c);
    ASSERT(wait_until(job_started, 5));
    double t0 = mono();
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ASSERT_TIME_LT(mono() - t0, 1.0);
    ASSERT_EQ(atomic_load(&saw_flag), 1);
    ca_task_release(t);

    /* Through a handle: ca_job_cancel on a running job sets the flag. */
    atomic_store(&saw_flag, 0);
    atomic_store(&job_entered, 0);
    ca_job *j;
    ASSERT_EQ(ca_pool_submit(&j, polling_job, NULL, NULL), 0);
    ASSERT(wait_until(job_started, 5));
    ASSERT_EQ(ca_job_cancel(j), 0); /* running: not removed */
    ASSERT_EQ(ca_job_wait(j), -ECANCELED);
    ASSERT_EQ(atomic_load(&saw_flag), 1);
    ca_job_release(j);

    /* Shutdown with CA_POOL_CANCEL_RUNNING. */
    atomic_store(&saw_flag, 0);
    ca_pool *p;
    ASSERT_EQ(ca_pool_new(&p, NULL), 0);
    ca_job_opts o = {.pool = p};
    atomic_store(&job_entered, 0);
    ASSERT_EQ(ca_pool_submit(&j, polling_job, NULL, &o), 0);
    ASSERT(wait_until(job_started, 5));
    t0 = mono();
    ASSERT_EQ(ca_pool_shutdown(p, CA_POOL_CANCEL_RUNNING), 0);
    ASSERT_TIME_LT(mono() - t0, 1.0);
    ASSERT_EQ(ca_job_status(j), -ECANCELED);
    ca_job_release(j);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_cooperative_cancel_flag(void)
{
    ASSERT_EQ(ca_run(coop_main, NULL), 0);
}

/* ---- deadlines -------------------------------------------------------------
 */

static int deadline_main(void *a)
{
    (void)a;
    double secs = 0.4;
    warm_default_pool();
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(0.15), 0);
    ASSERT_EQ(ca_to_thread(slow_job, &secs), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    /* The job had started (a warm pool takes it at once)... */
    ASSERT_EQ(atomic_load(&job_entered), 1);
    /* ...so the caller waited for it. */
    ASSERT_GE(mono() - t0, secs - 0.01);
    ASSERT_EQ(atomic_load(&slow_done), 1);
    return 0;
}

static void test_deadline_waits_for_running_job(void)
{
    ASSERT_EQ(ca_run(deadline_main, NULL), 0);
}

/* ---- many jobs -------------------------------------------------------------
 */

static _Atomic uint64_t sum;

static int add_job(void *arg)
{
    atomic_fetch_add_explicit(&sum, (uint64_t)(uintptr_t)arg,
                              memory_order_relaxed);
    return (int)((uintptr_t)arg & 0xffff);
}

struct many {
    ca_pool *pool;
    size_t first, n;
};

static int to_thread_loop(void *arg)
{
    struct many *m = arg;
    ca_job_opts o = {.pool = m->pool};
    for (size_t i = m->first; i < m->first + m->n; i++) {
        int r = ca_to_thread_ex(add_job, (void *)(uintptr_t)i, &o);
        if (r != (int)(i & 0xffff))
            return r < 0 ? r : -EIO;
    }
    return 0;
}

static int many_main(void *a)
{
    (void)a;
    const size_t n = 100000;
    ca_pool *p;
    ca_pool_opts po = {.threads = 4};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    ca_job_opts o = {.pool = p};
    ca_job **jobs = malloc(n * sizeof(*jobs));
    ASSERT(jobs);
    /* Half through handles, submitted at once... */
    size_t half = n / 2;
    for (size_t i = 0; i < half; i++)
        ASSERT_EQ(ca_pool_submit(&jobs[i], add_job, (void *)(uintptr_t)i, &o),
                  0);
    /* ...half by 100 tasks calling ca_to_thread in a loop. */
    enum { NT = 100 };
    struct many m[NT];
    ca_task *t[NT];
    for (int k = 0; k < NT; k++) {
        m[k] = (struct many){p, half + (size_t)k * (half / NT), half / NT};
        t[k] = ca_spawn(to_thread_loop, &m[k]);
        ASSERT(t[k]);
    }
    for (size_t i = 0; i < half; i++) {
        ASSERT_EQ(ca_job_wait(jobs[i]), (int)(i & 0xffff));
        ca_job_release(jobs[i]);
    }
    for (int k = 0; k < NT; k++) {
        ASSERT_EQ(ca_join(t[k]), 0);
        ca_task_release(t[k]);
    }
    free(jobs);
    ASSERT_EQ(atomic_load(&sum), (uint64_t)n * (n - 1) / 2);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.submitted, n);
    ASSERT_EQ(st.queued, 0);
    ASSERT_EQ(st.cancelled, 0);
    ASSERT_EQ(ca_pool_shutdown(p, 0), 0);
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.completed, n);
    ASSERT_EQ(st.running, 0);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_100k_jobs_none_lost(void)
{
    ASSERT_EQ(ca_run(many_main, NULL), 0);
}

static void test_100k_jobs_no_spinning(void)
{
    /* The same with spinning off: every wait parks, every idle thread
     * sleeps on its futex. */
    setenv("CAWAIT_POOL_SPIN_US", "0", 1);
    ASSERT_EQ(ca_run(many_main, NULL), 0);
}

/* ---- back pressure ---------------------------------------------------------
 */

struct submitter {
    ca_pool *pool;
    int result;
    int done;
    ca_job *job;
};

static int submit_task(void *arg)
{
    struct submitter *s = arg;
    ca_job_opts o = {.pool = s->pool};
    s->result = ca_pool_submit(&s->job, mark_ran, NULL, &o);
    s->done = 1;
    return s->result;
}

static int backpressure_main(void *a)
{
    (void)a;
    ca_pool *p;
    ca_pool_opts po = {.threads = 1, .max_queued = 2};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    ca_job_opts o = {.pool = p};
    ca_job *busy, *q1, *q2, *x;
    ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5)); /* running: does not count */
    ASSERT_EQ(ca_pool_submit(&q1, mark_ran, NULL, &o), 0);
    ASSERT_EQ(ca_pool_submit(&q2, mark_ran, NULL, &o), 0);
    /* Full: nowait fails at once. */
    ca_job_opts nw = {.pool = p, .nowait = 1};
    ASSERT_EQ(ca_pool_submit(&x, mark_ran, NULL, &nw), -EAGAIN);
    ASSERT(x == NULL);
    /* Two submitters wait for room; the second is cancelled. */
    struct submitter s1 = {.pool = p}, s2 = {.pool = p};
    ca_task *t1 = ca_spawn(submit_task, &s1);
    ca_task *t2 = ca_spawn(submit_task, &s2);
    ASSERT_EQ(ca_sleep(0.05), 0);
    ASSERT(!s1.done && !s2.done);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.queued, 2);
    ASSERT_EQ(ca_cancel(t2), 0);
    ASSERT_EQ(ca_join(t2), -ECANCELED);
    ASSERT(s2.job == NULL);
    /* Cancelling a queued job makes room: s1 gets in. */
    ASSERT_EQ(ca_job_cancel(q2), 1);
    ASSERT_EQ(ca_job_wait(q2), -ECANCELED);
    ASSERT_EQ(ca_join(t1), 0);
    ASSERT(s1.job != NULL);
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.queued, 2);
    atomic_store(&gate, 1);
    ASSERT_EQ(ca_job_wait(busy), 7);
    ASSERT_EQ(ca_job_wait(q1), 0);
    ASSERT_EQ(ca_job_wait(s1.job), 0);
    ASSERT_EQ(atomic_load(&ran), 2);
    ca_job_release(busy);
    ca_job_release(q1);
    ca_job_release(q2);
    ca_job_release(s1.job);
    ca_task_release(t1);
    ca_task_release(t2);

    /* Many producers through a queue of 2: all get through, in time. */
    enum { NP = 50 };
    struct submitter s[NP];
    ca_task *t[NP];
    atomic_store(&ran, 0);
    for (int i = 0; i < NP; i++) {
        s[i] = (struct submitter){.pool = p};
        t[i] = ca_spawn(submit_task, &s[i]);
    }
    for (int i = 0; i < NP; i++) {
        ASSERT_EQ(ca_join(t[i]), 0);
        ASSERT_EQ(ca_job_wait(s[i].job), 0);
        ca_job_release(s[i].job);
        ca_task_release(t[i]);
    }
    ASSERT_EQ(atomic_load(&ran), NP);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_bounded_queue_back_pressure(void)
{
    ASSERT_EQ(ca_run(backpressure_main, NULL), 0);
}

/* Full queue: a callback gets -EAGAIN; a shutdown wakes the tasks waiting
 * for room with -ESHUTDOWN. */
static int cb_submit_result;

static void full_cb(void *arg)
{
    ca_job *j;
    ca_job_opts o = {.pool = arg};
    cb_submit_result = ca_pool_submit(&j, mark_ran, NULL, &o);
}

static int room_shutdown_main(void *a)
{
    (void)a;
    ca_pool *p;
    ca_pool_opts po = {.threads = 1, .max_queued = 1};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    ca_job_opts o = {.pool = p};
    ca_job *busy, *q;
    ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5));
    ASSERT_EQ(ca_pool_submit(&q, mark_ran, NULL, &o), 0);
    ASSERT_EQ(ca_call_soon(full_cb, p, NULL), 0);
    struct submitter s = {.pool = p};
    ca_task *t = ca_spawn(submit_task, &s);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(cb_submit_result, -EAGAIN);
    ASSERT(!s.done);
    ca_task *opener = ca_spawn(open_gate_later, NULL);
    ASSERT_EQ(ca_pool_shutdown(p, CA_POOL_DROP_QUEUED), 0);
    ASSERT_EQ(ca_join(t), -ESHUTDOWN);
    ASSERT(s.job == NULL);
    ASSERT_EQ(ca_job_status(q), -ECANCELED);
    ASSERT_EQ(ca_job_status(busy), 7);
    ca_job_release(q);
    ca_job_release(busy);
    ASSERT_EQ(ca_join(opener), 0);
    ca_task_release(opener);
    ca_task_release(t);
    ASSERT_EQ(ca_pool_free(p), 0);
    ASSERT_EQ(atomic_load(&ran), 0);
    return 0;
}

static void test_shutdown_wakes_room_waiters(void)
{
    ASSERT_EQ(ca_run(room_shutdown_main, NULL), 0);
}

/* ---- shutdown --------------------------------------------------------------
 */

static int shutdown_run(int flags, int *ran_out, int *status_out)
{
    ca_pool *p;
    ca_pool_opts po = {.threads = 1};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    ca_job_opts o = {.pool = p};
    atomic_store(&gate, 0);
    atomic_store(&gate_entered, 0);
    atomic_store(&ran, 0);
    ca_job *busy, *q[3];
    ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5));
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(ca_pool_submit(&q[i], mark_ran, NULL, &o), 0);
    ca_task *opener = ca_spawn(open_gate_later, NULL);
    /* A waiter for room would get -ESHUTDOWN; a new job is refused. */
    ASSERT_EQ(ca_pool_shutdown(p, flags), 0);
    ca_job *late;
    ASSERT_EQ(ca_pool_submit(&late, mark_ran, NULL, &o), -ESHUTDOWN);
    ASSERT_EQ(ca_job_status(busy), 7); /* waited for the running job */
    *status_out = ca_job_status(q[0]);
    for (int i = 0; i < 3; i++) {
        ASSERT(ca_job_done(q[i]));
        ASSERT_EQ(ca_job_status(q[i]), *status_out);
        ca_job_release(q[i]);
    }
    ca_job_release(busy);
    ASSERT_EQ(ca_join(opener), 0);
    ca_task_release(opener);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.threads, 0);
    ASSERT_EQ(st.shut_down, 1);
    ASSERT_EQ(ca_pool_shutdown(p, 0), 0); /* again: nothing to do */
    ASSERT_EQ(ca_pool_free(p), 0);
    *ran_out = atomic_load(&ran);
    return 0;
}

static int shutdown_main(void *a)
{
    (void)a;
    int nran, status;
    int threads_before = count_threads();
    shutdown_run(CA_POOL_DROP_QUEUED, &nran, &status);
    ASSERT_EQ(nran, 0);
    ASSERT_EQ(status, -ECANCELED);
    shutdown_run(0, &nran, &status);
    ASSERT_EQ(nran, 3);
    ASSERT_EQ(status, 0);
    ASSERT_EQ(threads_down_to(threads_before), threads_before); /* joined */
    return 0;
}

static void test_shutdown_drop_vs_run(void)
{
    ASSERT_EQ(ca_run(shutdown_main, NULL), 0);
}

/* Shutdown from a callback blocks; NOWAIT returns and finishes later. */
static void shutdown_cb(void *arg)
{
    ASSERT_EQ(ca_pool_shutdown(arg, 0), 0);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(arg, &st), 0);
    ASSERT_EQ(st.threads, 0);
}

static int shutdown_forms_main(void *a)
{
    (void)a;
    ca_pool *p;
    ASSERT_EQ(ca_pool_new(&p, NULL), 0);
    ASSERT_EQ(ca_call_soon(shutdown_cb, p, NULL), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_pool_free(p), 0);

    ASSERT_EQ(ca_pool_new(&p, NULL), 0);
    ca_job_opts o = {.pool = p};
    double secs = 0.05;
    ca_job *j;
    ASSERT_EQ(ca_pool_submit(&j, sleep_job, &secs, &o), 0);
    ASSERT_EQ(ca_pool_shutdown(p, CA_POOL_NOWAIT), 0);
    ASSERT_EQ(ca_job_wait(j), 0);
    ca_job_release(j);
    ASSERT_EQ(ca_pool_shutdown(p, 0), 0);
    ASSERT_EQ(ca_pool_free(p), 0);

    /* Freed while a job runs: ca_pool_free waits for it. */
    ASSERT_EQ(ca_pool_new(&p, NULL), 0);
    o.pool = p;
    ASSERT_EQ(ca_pool_submit(&j, sleep_job, &secs, &o), 0);
    ASSERT_EQ(ca_pool_free(p), 0);
    ASSERT(ca_job_done(j)); /* the handle outlives the pool */
    ASSERT_EQ(ca_job_status(j), 0);
    ca_job_release(j);
    return 0;
}

static void test_shutdown_forms(void)
{
    ASSERT_EQ(ca_run(shutdown_forms_main, NULL), 0);
}

/* ---- the default pool ------------------------------------------------------
 */

static int default_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_pool_set_default_opts(&(ca_pool_opts){.threads = 3}), 0);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(ca_to_thread(mark_ran, NULL), 0);
    ca_pool *d;
    ASSERT_EQ(ca_pool_default(&d), 0);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(d, &st), 0);
    ASSERT_EQ(st.threads, 3);
    ASSERT_EQ(st.completed, 10);
    ASSERT_EQ(ca_pool_set_default_opts(NULL), -EBUSY);
    ASSERT_EQ(ca_pool_free(d), -EPERM);
    ASSERT_EQ(count_threads(), 3);
    /* A job still queued when main returns runs before ca_run returns. */
    double secs = 0.05;
    ca_job *j;
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_pool_submit(&j, sleep_job, &secs, NULL), 0);
        ca_job_release(j);
    }
    ASSERT_EQ(ca_pool_submit(&j, mark_ran, NULL, NULL), 0);
    ca_job_release(j); /* detached */
    /* A user pool nobody freed is shut down by ca_run too. */
    ca_pool *u;
    ASSERT_EQ(ca_pool_new(&u, NULL), 0);
    *(ca_pool **)a = u;
    return 0;
}

static int default_env_main(void *a)
{
    (void)a;
    ca_pool *d;
    ASSERT_EQ(ca_pool_default(&d), 0);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(d, &st), 0);
    ASSERT_EQ(st.threads, 2);
    return 0;
}

static void test_default_pool_shut_down_by_run(void)
{
    ca_pool *u = NULL;
    ASSERT_EQ(threads_left(), 0);
    ASSERT_EQ(ca_run(default_main, &u), 0);
    ASSERT_EQ(threads_left(), 0); /* every pool thread joined */
    ASSERT_EQ(atomic_load(&ran), 11);
    ASSERT(u);
    ASSERT_EQ(ca_pool_shutdown(u, 0), 0); /* closed already */
    ASSERT_EQ(ca_pool_free(u), 0);

    /* $CAWAIT_POOL_THREADS sets the default size. */
    setenv("CAWAIT_POOL_THREADS", "2", 1);
    ASSERT_EQ(ca_run(default_env_main, NULL), 0);
}

/* ---- job handles -----------------------------------------------------------
 */

static int waiter_task(void *arg)
{
    return ca_job_wait(arg);
}

static int handles_main(void *a)
{
    (void)a;
    double secs = 0.05;
    ca_job *j;
    ASSERT_EQ(ca_pool_submit(&j, slow_job, &secs, NULL), 0);
    ASSERT_EQ(ca_job_done(j), 0);
    ASSERT_EQ(ca_job_status(j), -EAGAIN);
    /* Several waiters; one releases nothing, all see the status. */
    ca_task *w[3];
    for (int i = 0; i < 3; i++)
        w[i] = ca_spawn(waiter_task, j);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(w[i]), 5);
        ca_task_release(w[i]);
    }
    ASSERT_EQ(ca_job_done(j), 1);
    ASSERT_EQ(ca_job_status(j), 5);
    ASSERT_EQ(ca_job_wait(j), 5);
    ASSERT_EQ(ca_job_cancel(j), 0); /* done: nothing to cancel */
    ca_job_release(j);

    /* A waiter cancelled while waiting leaves the job alone. */
    ASSERT_EQ(ca_pool_submit(&j, slow_job, &secs, NULL), 0);
    ca_task *t = ca_spawn(waiter_task, j);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT_EQ(ca_job_wait(j), 5);
    ca_job_release(j);

    /* The handle released while a task still waits on it. */
    ASSERT_EQ(ca_pool_submit(&j, slow_job, &secs, NULL), 0);
    t = ca_spawn(waiter_task, j);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_job_release(j);
    ASSERT_EQ(ca_join(t), 5);
    ca_task_release(t);

    /* Released unfinished with free_arg: called once it is done. */
    struct detached_arg *d = malloc(sizeof(*d));
    ASSERT(d);
    d->secs = 0.05;
    d->freed = &freed_count;
    ca_job_opts o = {.free_arg = free_detached};
    ASSERT_EQ(ca_pool_submit(&j, detached_job, d, &o), 0);
    ca_job_release(j);
    ASSERT(wait_until(finished_cond, 5));
    return 0;
}

static void test_job_handles(void)
{
    ASSERT_EQ(ca_run(handles_main, NULL), 0);
}

static ca_job *cb_job;
static int cb_result = 1;

static void submit_cb(void *arg)
{
    (void)arg;
    cb_result = ca_pool_submit(&cb_job, mark_ran, NULL, NULL);
    /* Blocking calls need a task. */
    ASSERT_EQ(ca_to_thread(mark_ran, NULL), -EPERM);
    ASSERT_EQ(ca_job_wait(cb_job), -EPERM);
}

static int callback_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_call_soon(submit_cb, NULL, NULL), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(cb_result, 0);
    ASSERT_EQ(ca_job_wait(cb_job), 0);
    ca_job_release(cb_job);
    return 0;
}

static void test_submit_from_callback(void)
{
    ASSERT_EQ(ca_run(callback_main, NULL), 0);
    ASSERT_EQ(atomic_load(&ran), 1);
}

/* ---- cancel racing completion ----------------------------------------------
 */

static int tiny_job(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
    return 1;
}

static int racer(void *arg)
{
    int detach = (int)(uintptr_t)arg;
    ca_job_opts o = {.detach = detach};
    int ok = 0;
    for (int i = 0; i < 200; i++) {
        int r = ca_to_thread_ex(tiny_job, NULL, &o);
        if (r == 1)
            ok++;
        else if (r != -ECANCELED)
            return -EIO;
        else
            return ok;
    }
    return ok;
}

static int race_main(void *a)
{
    (void)a;
    enum { NT = 40 };
    ca_task *t[NT];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < NT; i++)
            t[i] = ca_spawn(racer, (void *)(uintptr_t)(i & 1));
        for (int k = 0; k < round % 4; k++)
            ca_yield();
        for (int i = 0; i < NT; i += 2)
            ca_cancel(t[i]);
        for (int i = 0; i < NT; i++) {
            int r = ca_join(t[i]);
            ASSERT(r >= 0 || r == -ECANCELED);
            ca_task_release(t[i]);
        }
    }
    return 0;
}

static void test_cancel_races_completion(void)
{
    ASSERT_EQ(ca_run(race_main, NULL), 0);
}

/* ---- same-turn races, ownership of arg, room waiters ---------------------- */

/* Hold the loop (no yield) for `secs`: timers and fd events that come due
 * meanwhile are all handled in the same later turn. */
/* Sleep the thread (not the loop) a little: the pool's threads get the
 * CPU, which valgrind gives one thread at a time. */
static void thread_pause(void)
{
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, NULL);
}

static void hold_loop(double secs)
{
    double until = mono() + secs;
    while (mono() < until)
        thread_pause();
}

static int arg_frees;

static void count_free(void *arg)
{
    (void)arg;
    arg_frees++;
}

/* A job that polls its cancel flag and returns -ECANCELED when set. */
static int gate_polling_job(void *arg)
{
    (void)arg;
    atomic_fetch_add(&gate_entered, 1);
    while (!atomic_load(&gate)) {
        if (ca_job_cancelled())
            return -ECANCELED;
        blocking_sleep(0.001);
    }
    return 9;
}

/*
 * BUG (known): with opts.detach, exec.h promises that a call returning
 * -ECANCELED/-ETIMEDOUT has handed arg to the pool and free_arg(arg) is
 * called ("any other return leaves arg with the caller").  A job dropped
 * by ca_pool_shutdown(CA_POOL_DROP_QUEUED), or one whose fn returns
 * -ECANCELED after CA_POOL_CANCEL_RUNNING set its flag, makes
 * ca_to_thread_ex return -ECANCELED through the "job done" path, which
 * never calls free_arg: arg leaks, or the caller must guess.
 */
static int detach_dropped_main(void *a)
{
    (void)a;
    for (int mode = 0; mode < 2; mode++) {
        ca_pool *p;
        ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = 1}), 0);
        atomic_store(&gate, 0);
        atomic_store(&gate_entered, 0);
        arg_frees = 0;
        int dummy = 0;
        struct tt_call c = {
            .fn = mode == 0 ? mark_ran : gate_polling_job,
            .arg = &dummy,
            .opts = {.pool = p, .detach = 1, .free_arg = count_free}};
        ca_task *tb = NULL;
        struct tt_call busy = {.fn = gate_job, .opts = {.pool = p}};
        if (mode == 0) {
            /* the one thread is busy: c's job stays queued */
            tb = ca_spawn(to_thread_task, &busy);
            ASSERT(wait_until(one_entered, 5));
        }
        ca_task *t = ca_spawn(to_thread_task, &c);
        if (mode == 0) {
            ASSERT_EQ(ca_sleep(0.02), 0);
        } else {
            ASSERT(wait_until(one_entered, 5)); /* polling_job runs */
        }
        ca_task *opener = ca_spawn(open_gate_later, NULL);
        ASSERT_EQ(ca_pool_shutdown(p, mode == 0 ? CA_POOL_DROP_QUEUED
                                                : CA_POOL_CANCEL_RUNNING),
                  0);
        ASSERT_EQ(ca_join(t), -ECANCELED);
        ca_task_release(t);
        if (tb) {
            ASSERT_EQ(ca_join(tb), 7);
            ca_task_release(tb);
        }
        ASSERT_EQ(ca_join(opener), 0);
        ca_task_release(opener);
        ASSERT_EQ(ca_pool_free(p), 0);
        /* -ECANCELED under detach: arg was the pool's, free_arg once */
        if (arg_frees != 1)
            FAILF("mode %d (%s): free_arg called %d times, want 1", mode,
                  mode ? "CANCEL_RUNNING" : "DROP_QUEUED", arg_frees);
    }
    ASSERT_EQ(atomic_load(&ran), 0);
    return 0;
}

static void test_detach_dropped_by_shutdown_frees_arg(void)
{
    ASSERT_EQ(ca_run(detach_dropped_main, NULL), 0);
}

/* Two tasks wait for room in a full queue (A first); A is cancelled in the
 * same turn as room appears, in both orders and with the room coming from
 * the loop (ca_job_cancel) or from a pool thread (a drain).  No room is
 * lost: every submission that did not fail got in, B never waits forever,
 * and the bound is kept. */
static int room_same_turn_main(void *a)
{
    (void)a;
    for (int variant = 0; variant < 3; variant++) {
        ca_pool *p;
        ca_pool_opts po = {.threads = 1, .max_queued = 1};
        ASSERT_EQ(ca_pool_new(&p, &po), 0);
        ca_job_opts o = {.pool = p};
        atomic_store(&gate, 0);
        atomic_store(&gate_entered, 0);
        atomic_store(&ran, 0);
        ca_job *busy, *q1;
        ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
        ASSERT(wait_until(one_entered, 5));
        ASSERT_EQ(ca_pool_submit(&q1, mark_ran, NULL, &o), 0);
        struct submitter sa = {.pool = p}, sb = {.pool = p};
        ca_task *ta = ca_spawn(submit_task, &sa);
        ca_task *tb = ca_spawn(submit_task, &sb);
        ASSERT_EQ(ca_sleep(0.01), 0);
        ASSERT(!sa.done && !sb.done);
        int a_granted_first = 0;
        if (variant == 0) {
            /* cancelled (still linked, gone), then the room appears */
            ca_cancel(ta);
            ASSERT_EQ(ca_job_cancel(q1), 1);
        } else if (variant == 1) {
            /* the room is granted to A, then A is cancelled before it
             * runs */
            ASSERT_EQ(ca_job_cancel(q1), 1);
            ca_cancel(ta);
            a_granted_first = 1;
        } else {
            /* the room comes from the pool thread taking q1: hold the loop
             * until the thread has taken it, cancel A, then let the drain
             * run */
            atomic_store(&gate, 1);
            double end = mono() + 5;
            for (;;) {
                ca_pool_stats st;
                ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
                if (st.queued == 0)
                    break;
                ASSERT(mono() < end);
                thread_pause();
            }
            hold_loop(0.005);
            ca_cancel(ta);
        }
        int ra = ca_join(ta);
        ASSERT_EQ(ca_sleep(0.01), 0);
        if (a_granted_first && ra == 0) {
            /* A used its grant: B waits for the next room */
            ASSERT(sa.job != NULL);
            ASSERT(!sb.done);
        } else {
            /* A failed: the room it was offered went to B */
            ASSERT_EQ(ra, -ECANCELED);
            ASSERT(sa.job == NULL);
            ASSERT(sb.done);
        }
        atomic_store(&gate, 1);
        ASSERT_EQ(ca_join(tb), 0);
        ASSERT(sb.job != NULL);
        ASSERT_EQ(ca_job_wait(busy), 7);
        if (variant != 2)
            ASSERT_EQ(ca_job_wait(q1), -ECANCELED);
        else
            ASSERT_EQ(ca_job_wait(q1), 0);
        ASSERT_EQ(ca_job_wait(sb.job), 0);
        if (sa.job) {
            ASSERT_EQ(ca_job_wait(sa.job), 0);
            ca_job_release(sa.job);
        }
        ca_job_release(sb.job);
        ca_job_release(busy);
        ca_job_release(q1);
        ca_task_release(ta);
        ca_task_release(tb);
        ca_pool_stats st;
        ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
        ASSERT_EQ(st.queued, 0);
        ASSERT_EQ(ca_pool_free(p), 0);
        int want = (variant == 2) + 1 + (sa.job != NULL);
        ASSERT_EQ(atomic_load(&ran), want);
    }
    return 0;
}

/* The only waiter for room is cancelled, then room appears in the same
 * turn: nobody takes it, and it must stay free (not reserved for the
 * cancelled waiter): a nowait submit fits afterwards. */
static int room_lone_cancel_main(void *a)
{
    (void)a;
    ca_pool *p;
    ca_pool_opts po = {.threads = 1, .max_queued = 1};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    ca_job_opts o = {.pool = p};
    atomic_store(&gate, 0);
    atomic_store(&gate_entered, 0);
    atomic_store(&ran, 0);
    ca_job *busy, *q1, *x;
    ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5));
    ASSERT_EQ(ca_pool_submit(&q1, mark_ran, NULL, &o), 0);
    struct submitter sa = {.pool = p};
    ca_task *ta = ca_spawn(submit_task, &sa);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT(!sa.done);
    ca_cancel(ta);
    ASSERT_EQ(ca_job_cancel(q1), 1);
    ASSERT_EQ(ca_join(ta), -ECANCELED);
    ca_job_opts nw = {.pool = p, .nowait = 1};
    ASSERT_EQ(ca_pool_submit(&x, mark_ran, NULL, &nw), 0);
    atomic_store(&gate, 1);
    ASSERT_EQ(ca_job_wait(busy), 7);
    ASSERT_EQ(ca_job_wait(x), 0);
    ca_job_release(busy);
    ca_job_release(q1);
    ca_job_release(x);
    ca_task_release(ta);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_room_waiter_cancel_same_turn(void)
{
    ASSERT_EQ(ca_run(room_same_turn_main, NULL), 0);
    ASSERT_EQ(ca_run(room_lone_cancel_main, NULL), 0);
}

/* Room granted to a waiter whose deadline passes in the same turn. */
static int timed_submit_task(void *arg)
{
    struct submitter *s = arg;
    ca_job_opts o = {.pool = s->pool};
    ASSERT_EQ(ca_deadline_push(0.02), 0);
    s->result = ca_pool_submit(&s->job, mark_ran, NULL, &o);
    ca_deadline_pop();
    s->done = 1;
    return s->result;
}

static int room_deadline_main(void *a)
{
    (void)a;
    ca_pool *p;
    ca_pool_opts po = {.threads = 1, .max_queued = 1};
    ASSERT_EQ(ca_pool_new(&p, &po), 0);
    ca_job_opts o = {.pool = p};
    atomic_store(&gate, 0);
    atomic_store(&gate_entered, 0);
    atomic_store(&ran, 0);
    ca_job *busy, *q1;
    ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5));
    ASSERT_EQ(ca_pool_submit(&q1, mark_ran, NULL, &o), 0);
    struct submitter sa = {.pool = p}, sb = {.pool = p};
    ca_task *ta = ca_spawn(timed_submit_task, &sa);
    ca_task *tb = ca_spawn(submit_task, &sb);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT(!sa.done && !sb.done);
    /* past A's deadline without yielding, then make room: the timer fires
     * in the next turn, after the grant */
    hold_loop(0.03);
    ASSERT_EQ(ca_job_cancel(q1), 1);
    int ra = ca_join(ta);
    ASSERT_EQ(ca_sleep(0.01), 0);
    if (ra == 0) {
        ASSERT(sa.job != NULL);
        ASSERT(!sb.done);
    } else {
        /* A failed: the room it was offered went to B */
        ASSERT_EQ(ra, -ETIMEDOUT);
        ASSERT(sa.job == NULL);
        ASSERT(sb.done);
    }
    atomic_store(&gate, 1);
    ASSERT_EQ(ca_join(tb), 0);
    ASSERT(sb.job != NULL);
    ASSERT_EQ(ca_job_wait(busy), 7);
    ASSERT_EQ(ca_job_wait(sb.job), 0);
    if (sa.job) {
        ASSERT_EQ(ca_job_wait(sa.job), 0);
        ca_job_release(sa.job);
    }
    ca_job_release(sb.job);
    ca_job_release(busy);
    ca_job_release(q1);
    ca_task_release(ta);
    ca_task_release(tb);
    ASSERT_EQ(ca_pool_free(p), 0);
    ASSERT_EQ(atomic_load(&ran), 1 + (sa.job != NULL));
    return 0;
}

static void test_room_waiter_deadline_same_turn(void)
{
    ASSERT_EQ(ca_run(room_deadline_main, NULL), 0);
}

/* The job's completion and its caller's cancel in the same turn, in both
 * orders: the documented outcome exactly.  Cancel first: -ECANCELED, fn's
 * status dropped, and with detach free_arg(arg) once.  Completion first:
 * fn's status, arg stays the caller's (free_arg not called). */
static atomic_int fn_returned;

static int gate_job_flag(void *arg)
{
    (void)arg;
    atomic_fetch_add(&gate_entered, 1);
    while (!atomic_load(&gate))
        blocking_sleep(0.001);
    atomic_store(&fn_returned, 1);
    return 7;
}

static int completion_same_turn_main(void *a)
{
    (void)a;
    for (int detach = 0; detach < 2; detach++) {
        for (int order = 0; order < 2; order++) {
            ca_pool *p;
            ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = 1}), 0);
            atomic_store(&gate, 0);
            atomic_store(&gate_entered, 0);
            atomic_store(&fn_returned, 0);
            arg_frees = 0;
            int dummy;
            struct tt_call c = {.fn = gate_job_flag,
                                .arg = &dummy,
                                .opts = {.pool = p,
                                         .detach = detach,
                                         .free_arg = count_free}};
            ca_task *t = ca_spawn(to_thread_task, &c);
            ASSERT(wait_until(one_entered, 5));
            ASSERT_EQ(ca_sleep(0.01), 0); /* t parked (past its spin) */
            atomic_store(&gate, 1);
            double end = mono() + 5;
            while (!atomic_load(&fn_returned)) {
                ASSERT(mono() < end);
                thread_pause();
            }
            hold_loop(0.01); /* the thread pushed it and wrote the eventfd */
            if (order == 0) {
                /* cancel before the completion is taken */
                ca_cancel(t);
            } else {
                /* let the drain run and wake t, cancel before t runs: a
                 * timer due now fires after the poll queued the drain */
                ASSERT_EQ(ca_sleep(0.000001), 0);
                ca_cancel(t);
            }
            int r = ca_join(t);
            ca_task_release(t);
            if (order == 0) {
                ASSERT_EQ(r, -ECANCELED);
                /* fn has returned; free_arg may wait for the completion */
                ASSERT_LE(arg_frees, detach);
            } else {
                ASSERT_EQ(r, 7);
                ASSERT_EQ(arg_frees, 0);
            }
            ASSERT_EQ(ca_pool_free(p), 0);
            /* once, or never when the status was returned */
            ASSERT_EQ(arg_frees, order == 0 ? detach : 0);
        }
    }
    return 0;
}

static void test_completion_and_cancel_same_turn(void)
{
    ASSERT_EQ(ca_run(completion_same_turn_main, NULL), 0);
}

/* Several tasks wait for one job; one is cancelled in the turn the job
 * completes: the others all get the status, the cancelled one -ECANCELED,
 * and the job is untouched (ca_job_wait leaves it alone). */
struct jwaiter {
    ca_job *job;
    int r;
};

static int job_wait_task(void *arg)
{
    struct jwaiter *w = arg;
    w->r = ca_job_wait(w->job);
    return w->r;
}

static int many_waiters_main(void *a)
{
    (void)a;
    ca_pool *p;
    ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = 1}), 0);
    atomic_store(&gate, 0);
    atomic_store(&gate_entered, 0);
    atomic_store(&fn_returned, 0);
    ca_job *j;
    ca_job_opts o = {.pool = p};
    ASSERT_EQ(ca_pool_submit(&j, gate_job_flag, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5));
    struct jwaiter w[3] = {{j, 1}, {j, 1}, {j, 1}};
    ca_task *t[3];
    for (int i = 0; i < 3; i++)
        t[i] = ca_spawn(job_wait_task, &w[i]);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_job_release(j); /* the waiters keep it alive */
    atomic_store(&gate, 1);
    double end = mono() + 5;
    while (!atomic_load(&fn_returned)) {
        ASSERT(mono() < end);
        thread_pause();
    }
    hold_loop(0.01);
    ca_cancel(t[0]); /* first in line, cancelled before the drain */
    ASSERT_EQ(ca_sleep(0.000001), 0);
    ca_cancel(t[2]); /* woken by the drain, cancelled before it runs */
    ASSERT_EQ(ca_join(t[0]), -ECANCELED);
    ASSERT_EQ(ca_join(t[1]), 7);
    ASSERT_EQ(ca_join(t[2]), 7);
    for (int i = 0; i < 3; i++)
        ca_task_release(t[i]);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_job_waiters_cancel_same_turn(void)
{
    ASSERT_EQ(ca_run(many_waiters_main, NULL), 0);
}

/* Shutdown with queued jobs of every kind of caller: ca_to_thread callers
 * (plain, detached, one cancelled in the same turn), handles, room
 * waiters.  Without DROP_QUEUED every queued job runs exactly once. */
static int shutdown_queued_main(void *a)
{
    (void)a;
    ca_pool *p;
    ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = 1, .max_queued = 3}),
              0);
    ca_job_opts o = {.pool = p};
    atomic_store(&gate, 0);
    atomic_store(&gate_entered, 0);
    atomic_store(&ran, 0);
    ca_job *busy, *h;
    ASSERT_EQ(ca_pool_submit(&busy, gate_job, NULL, &o), 0);
    ASSERT(wait_until(one_entered, 5));
    struct tt_call c1 = {.fn = mark_ran, .opts = {.pool = p}};
    struct tt_call c2 = {.fn = mark_ran, .opts = {.pool = p}};
    ca_task *t1 = ca_spawn(to_thread_task, &c1);
    ca_task *t2 = ca_spawn(to_thread_task, &c2);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_pool_submit(&h, mark_ran, NULL, &o), 0);
    struct submitter sr = {.pool = p};
    ca_task *tr = ca_spawn(submit_task, &sr); /* waits for room */
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT(!sr.done);
    ca_cancel(t2); /* its queued job is removed when t2 runs */
    ca_task *opener = ca_spawn(open_gate_later, NULL);
    ASSERT_EQ(ca_pool_shutdown(p, 0), 0);
    ASSERT_EQ(ca_join(t1), 0);
    ASSERT_EQ(ca_join(t2), -ECANCELED);
    int rr = ca_join(tr);
    /* t2's cancel freed a slot before the shutdown: the room waiter either
     * got it (and its job ran) or saw the shutdown */
    ASSERT(rr == 0 || rr == -ESHUTDOWN);
    ASSERT_EQ(ca_job_status(h), 0);
    ASSERT_EQ(ca_job_status(busy), 7);
    ASSERT_EQ(atomic_load(&ran), 2 + (rr == 0));
    if (sr.job) {
        ASSERT_EQ(ca_job_status(sr.job), 0);
        ca_job_release(sr.job);
    }
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.queued, 0);
    ASSERT_EQ(st.threads, 0);
    ASSERT_EQ(st.completed, st.submitted - st.cancelled);
    ca_job_release(h);
    ca_job_release(busy);
    ASSERT_EQ(ca_join(opener), 0);
    ca_task_release(opener);
    ca_task_release(t1);
    ca_task_release(t2);
    ca_task_release(tr);
    ASSERT_EQ(ca_pool_free(p), 0);
    return 0;
}

static void test_shutdown_with_queued_callers(void)
{
    ASSERT_EQ(ca_run(shutdown_queued_main, NULL), 0);
}

/* The thread limit: exactly CA_POOL_MAX_THREADS is accepted (and runs),
 * one more is -EINVAL; $CAWAIT_POOL_THREADS out of range is ignored. */
static int max_threads_main(void *a)
{
    (void)a;
    ca_pool *p = NULL;
    ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = CA_POOL_MAX_THREADS,
                                               .stack_size = 64 * 1024}),
              0);
    ca_pool_stats st;
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_EQ(st.threads, CA_POOL_MAX_THREADS);
    ca_job_opts o = {.pool = p};
    ASSERT_EQ(ca_to_thread_ex(tiny_job, NULL, &o), 1);
    ASSERT_EQ(ca_pool_free(p), 0);
    /* the default pool ignores a bad $CAWAIT_POOL_THREADS */
    ASSERT_EQ(ca_pool_default(&p), 0);
    ASSERT_EQ(ca_pool_stats_get(p, &st), 0);
    ASSERT_GE(st.threads, 5);
    ASSERT_LE(st.threads, CA_POOL_DEFAULT_MAX);
    return 0;
}

static void test_max_threads_limit(void)
{
    setenv("CAWAIT_POOL_THREADS", "1025", 1);
    ASSERT_EQ(ca_run(max_threads_main, NULL), 0);
    ASSERT_EQ(threads_left(), 0);
}

/* ---- argument validation ---------------------------------------------------
 */

static int validation_main(void *a)
{
    (void)a;
    ca_job *j = (ca_job *)1;
    ca_pool *p = (ca_pool *)1;
    ASSERT_EQ(ca_to_thread(NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_to_thread_ex(NULL, NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_pool_submit(NULL, mark_ran, NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_pool_submit(&j, NULL, NULL, NULL), -EINVAL);
    ASSERT(j == NULL);
    ASSERT_EQ(ca_job_wait(NULL), -EINVAL);
    ASSERT_EQ(ca_job_cancel(NULL), -EINVAL);
    ASSERT_EQ(ca_job_status(NULL), -EINVAL);
    ASSERT_EQ(ca_job_done(NULL), 0);
    ca_job_release(NULL);
    ASSERT_EQ(ca_pool_new(NULL, NULL), -EINVAL);
    ASSERT_EQ(
        ca_pool_new(&p, &(ca_pool_opts){.threads = CA_POOL_MAX_THREADS + 1}),
        -EINVAL);
    ASSERT(p == NULL);
    ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.stack_size = 100}), -EINVAL);
    ASSERT_EQ(ca_pool_set_default_opts(&(ca_pool_opts){.threads = 100000}),
              -EINVAL);
    ASSERT_EQ(ca_pool_default(NULL), -EINVAL);
    ASSERT_EQ(ca_pool_shutdown(NULL, 0), -EINVAL);
    ASSERT_EQ(ca_pool_free(NULL), -EINVAL);
    ASSERT_EQ(ca_pool_stats_get(NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_pool_new(&p, &(ca_pool_opts){.threads = 1}), 0);
    ASSERT_EQ(ca_pool_shutdown(p, 0x100), -EINVAL);
    ASSERT_EQ(ca_pool_stats_get(p, NULL), -EINVAL);
    ASSERT_EQ(ca_pool_shutdown(p, 0), 0);
    ca_job_opts o = {.pool = p};
    ASSERT_EQ(ca_to_thread_ex(mark_ran, NULL, &o), -ESHUTDOWN);
    ASSERT_EQ(ca_pool_submit(&j, mark_ran, NULL, &o), -ESHUTDOWN);
    ASSERT_EQ(ca_pool_free(p), 0);
    /* The default pool, shut down, refuses work. */
    ca_pool *d;
    ASSERT_EQ(ca_pool_default(&d), 0);
    ASSERT_EQ(ca_pool_shutdown(d, 0), 0);
    ASSERT_EQ(ca_to_thread(mark_ran, NULL), -ESHUTDOWN);
    ASSERT_EQ(ca_pool_default(&d), -ESHUTDOWN);
    /* A cancelled task does not even queue. */
    ca_cancel(ca_current());
    ASSERT_EQ(ca_to_thread(mark_ran, NULL), -ECANCELED);
    ASSERT_EQ(atomic_load(&ran), 0);
    return 0;
}

static void test_argument_validation(void)
{
    ca_pool *p = (ca_pool *)1;
    ca_job *j = (ca_job *)1;
    ASSERT_EQ(ca_to_thread(mark_ran, NULL), -EPERM);
    ASSERT_EQ(ca_pool_new(&p, NULL), -CA_ENOLOOP);
    ASSERT(p == NULL);
    ASSERT_EQ(ca_pool_submit(&j, mark_ran, NULL, NULL), -CA_ENOLOOP);
    ASSERT_EQ(ca_pool_default(&p), -CA_ENOLOOP);
    ASSERT_EQ(ca_pool_set_default_opts(NULL), -CA_ENOLOOP);
    ASSERT_EQ(ca_job_cancelled(), 0);
    ASSERT_EQ(ca_run(validation_main, NULL), 0);
}

static const struct test_case tests[] = {
    {"to_thread_max_not_sum", test_to_thread_max_not_sum, 0, 0},
    {"blocking_stalls_to_thread_does_not",
     test_blocking_stalls_to_thread_does_not, 0, 0},
    {"cancel_queued_never_runs", test_cancel_queued_never_runs, 0, 0},
    {"cancel_running_waits", test_cancel_running_waits, 0, 0},
    {"cancel_running_detach", test_cancel_running_detach, 0, 0},
    {"detached_job_at_exit", test_detached_job_at_exit, 0, 0},
    {"detach_queued_frees_arg_at_once", test_detach_queued_frees_arg_at_once, 0,
     0},
    {"cooperative_cancel_flag", test_cooperative_cancel_flag, 0, 0},
    {"deadline_waits_for_running_job", test_deadline_waits_for_running_job, 0,
     0},
    {"100k_jobs_none_lost", test_100k_jobs_none_lost, 120, 0},
    {"100k_jobs_no_spinning", test_100k_jobs_no_spinning, 120, 0},
    {"bounded_queue_back_pressure", test_bounded_queue_back_pressure, 0, 0},
    {"shutdown_drop_vs_run", test_shutdown_drop_vs_run, 0, 0},
    {"shutdown_wakes_room_waiters", test_shutdown_wakes_room_waiters, 0, 0},
    {"shutdown_forms", test_shutdown_forms, 0, 0},
    {"default_pool_shut_down_by_run", test_default_pool_shut_down_by_run, 0, 0},
    {"job_handles", test_job_handles, 0, 0},
    {"submit_from_callback", test_submit_from_callback, 0, 0},
    {"cancel_races_completion", test_cancel_races_completion, 60, 0},
    {"detach_dropped_by_shutdown_frees_arg",
     test_detach_dropped_by_shutdown_frees_arg, 0, 0},
    {"room_waiter_cancel_same_turn", test_room_waiter_cancel_same_turn, 0, 0},
    {"room_waiter_deadline_same_turn", test_room_waiter_deadline_same_turn, 0,
     0},
    {"completion_and_cancel_same_turn", test_completion_and_cancel_same_turn,
     0, 0},
    {"job_waiters_cancel_same_turn", test_job_waiters_cancel_same_turn, 0, 0},
    {"shutdown_with_queued_callers", test_shutdown_with_queued_callers, 0, 0},
    {"max_threads_limit", test_max_threads_limit, 60, 1},
    {"argument_validation", test_argument_validation, 0, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
