/* Synchronization primitives: lock, event, condition, semaphore, barrier. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

static char trace[4096];
static void note(const char *s)
{
    strcat(trace, s);
    strcat(trace, " ");
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Spawn an eager task: it runs at once, inside this call, until it first
 * blocks, so waiters queue in spawn order without a loop turn in between
 * (and no timer of theirs can fire before the caller goes on). */
static ca_task *spawn_eager(ca_fn fn, void *arg)
{
    ca_spawn_opts o = {0};
    o.eager = 1;
    ca_task *t = NULL;
    ASSERT_EQ(ca_spawn_ex(&t, fn, arg, &o), 0);
    return t;
}

/* Hold the loop (no yield) for `secs`: a timer of another task cannot fire
 * meanwhile, so its deadline passes while it is still parked. */
static void spin(double secs)
{
    double end = mono() + secs;
    while (mono() < end)
        ;
}

/* ---- lock ---------------------------------------------------------------- */

static ca_lock lock = CA_LOCK_INIT;

static int locker(void *a)
{
    int r = ca_lock_acquire(&lock);
    if (r < 0)
        return r;
    note(a);
    ca_sleep(0.005);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    return 0;
}

static int lock_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ASSERT(ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_acquire(&lock), -EDEADLK); /* not reentrant */
    ca_task *t[3] = {ca_spawn(locker, "a"), ca_spawn(locker, "b"),
                     ca_spawn(locker, "c")};
    ASSERT_EQ(ca_sleep(0.01), 0); /* all three queue up, FIFO */
    ASSERT_EQ(ca_lock_try_acquire(&lock), -EBUSY);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    /* a late arrival does not barge in ahead of the waiters */
    ca_task *late = ca_spawn(locker, "late");
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(t[i]), 0);
        ca_task_release(t[i]);
    }
    ASSERT_EQ(ca_join(late), 0);
    ca_task_release(late);
    ASSERT_STREQ(trace, "a b c late ");
    ASSERT(!ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_release(&lock), -EPERM); /* not the owner */
    ASSERT_EQ(ca_lock_try_acquire(&lock), 0);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ASSERT_EQ(ca_lock_acquire(NULL), -EINVAL);
    return 0;
}

static void test_lock_fifo(void)
{
    ASSERT_EQ(ca_run(lock_main, NULL), 0);
    ASSERT_EQ(ca_lock_acquire(&lock), -EPERM); /* outside a task */
}

static int lock_cancel_main(void *a)
{
    (void)a;
    trace[0] = 0;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *x = ca_spawn(locker, "x");
    ca_task *y = ca_spawn(locker, "y");
    ASSERT_EQ(ca_sleep(0.01), 0);
    /* cancel a waiter: it leaves the queue, the lock is not lost */
    ca_cancel(x);
    ASSERT_EQ(ca_join(x), -ECANCELED);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ASSERT_EQ(ca_join(y), 0);
    ASSERT_STREQ(trace, "y ");

    /* granted and cancelled in the same turn: hands the lock on */
    trace[0] = 0;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *p = ca_spawn(locker, "p");
    ca_task *q = ca_spawn(locker, "q");
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_lock_release(&lock), 0); /* grants p (not run yet) */
    ca_cancel(p);
    ASSERT_EQ(ca_join(p), -ECANCELED);
    ASSERT_EQ(ca_join(q), 0);
    ASSERT_STREQ(trace, "q ");
    ASSERT(!ca_lock_locked(&lock));
    /* a deadline while waiting: see lock_deadline */
    ca_task_release(x);
    ca_task_release(y);
    ca_task_release(p);
    ca_task_release(q);
    return 0;
}

static void test_lock_cancellation(void)
{
    ASSERT_EQ(ca_run(lock_cancel_main, NULL), 0);
}

/* Wait for `lock` inside a deadline scope of *(double *)a seconds: the wait
 * ends in -ETIMEDOUT, not before the deadline, and without the lock (its
 * release is refused; someone else still holds it). */
static int lock_deadline_waiter(void *a)
{
    double secs = *(double *)a;
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(secs), 0);
    int r = ca_lock_acquire(&lock);
    double dt = mono() - t0;
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(r, -ETIMEDOUT);
    ASSERT_GE(dt, secs);
    ASSERT_EQ(ca_lock_release(&lock), -EPERM); /* not the owner */
    ASSERT(ca_lock_locked(&lock));
    note("timeout");
    return r;
}

static int lock_deadline_main(void *a)
{
    (void)a;
    /* x, d, y queue behind main in that order; d's deadline (50 ms) passes
     * while main still holds the lock */
    double secs = 0.05;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *x = spawn_eager(locker, "x");
    ca_task *d = spawn_eager(lock_deadline_waiter, &secs);
    ca_task *y = spawn_eager(locker, "y");
    double t0 = mono();
    ASSERT_EQ(ca_join(d), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 2.0);
    ASSERT_STREQ(trace, "timeout ");
    /* main still owns it: -EDEADLK, and its release succeeds */
    ASSERT(ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_acquire(&lock), -EDEADLK);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    /* d left the middle of the queue: x then y, FIFO */
    ASSERT_EQ(ca_join(x), 0);
    ASSERT_EQ(ca_join(y), 0);
    ASSERT_STREQ(trace, "timeout x y ");
    ASSERT(!ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_acquire(&lock), 0); /* the lock still works */
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ca_task_release(x);
    ca_task_release(d);
    ca_task_release(y);

    /* granted after its deadline passed but before its timer fired (the
     * loop was held): d2 fails with -ETIMEDOUT and hands the lock to y2 */
    trace[0] = 0;
    secs = 0.02;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *d2 = spawn_eager(lock_deadline_waiter, &secs);
    ca_task *y2 = spawn_eager(locker, "y2");
    spin(secs + 0.01);
    ASSERT_EQ(ca_lock_release(&lock), 0); /* grants d2 */
    ASSERT_EQ(ca_join(d2), -ETIMEDOUT);
    ASSERT_EQ(ca_join(y2), 0);
    ASSERT_STREQ(trace, "timeout y2 ");
    ASSERT(!ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_try_acquire(&lock), 0);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ca_task_release(d2);
    ca_task_release(y2);
    return 0;
}

static void test_lock_deadline(void)
{
    ASSERT_EQ(ca_run(lock_deadline_main, NULL), 0);
}

/* A task that does not own `lock` tries to release it while it is held. */
static int bad_releaser(void *a)
{
    (void)a;
    ASSERT(ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_release(&lock), -EPERM);
    ASSERT(ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_try_acquire(&lock), -EBUSY);
    note("bad");
    return 0;
}

static void release_from_callback(void *a)
{
    *(int *)a = ca_lock_release(&lock); /* outside any task */
}

static int lock_owner_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *w = spawn_eager(locker, "w"); /* waits behind main */
    ca_task *b = ca_spawn(bad_releaser, NULL);
    ASSERT_EQ(ca_join(b), 0);
    int cb_r = 1;
    ASSERT_EQ(ca_call_soon(release_from_callback, &cb_r, NULL), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(cb_r, -EPERM);
    /* neither refused release handed the lock on: w still waits, main
     * still owns it (-EDEADLK, and its own release succeeds) */
    ASSERT_STREQ(trace, "bad ");
    ASSERT(!ca_task_done(w));
    ASSERT_EQ(ca_lock_acquire(&lock), -EDEADLK);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ASSERT_EQ(ca_join(w), 0);
    ASSERT_STREQ(trace, "bad w ");
    ASSERT(!ca_lock_locked(&lock));
    ca_task_release(w);
    ca_task_release(b);
    return 0;
}

static void test_lock_release_not_owner(void)
{
    ASSERT_EQ(ca_run(lock_owner_main, NULL), 0);
}

/* ---- event --------------------------------------------------------------- */

static ca_event ev = CA_EVENT_INIT;

static int event_waiter(void *a)
{
    int r = ca_event_wait(&ev);
    if (r == 0)
        note(a);
    return r;
}

static int event_main(void *a)
{
    (void)a;
    trace[0] = 0;
    ca_task *t[3] = {ca_spawn(event_waiter, "1"), ca_spawn(event_waiter, "2"),
                     ca_spawn(event_waiter, "3")};
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_STREQ(trace, "");
    ca_cancel(t[1]);
    ASSERT_EQ(ca_join(t[1]), -ECANCELED);
    ASSERT_EQ(ca_event_set(&ev), 0);
    ASSERT(ca_event_is_set(&ev));
    ASSERT_EQ(ca_join(t[0]), 0);
    ASSERT_EQ(ca_join(t[2]), 0);
    ASSERT_STREQ(trace, "1 3 ");
    ASSERT_EQ(ca_event_wait(&ev), 0); /* set: no wait */
    ASSERT_EQ(ca_event_clear(&ev), 0);
    ASSERT_EQ(ca_deadline_push(0.01), 0);
    ASSERT_EQ(ca_event_wait(&ev), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    for (int i = 0; i < 3; i++)
        ca_task_release(t[i]);
    ASSERT_EQ(ca_event_set(NULL), -EINVAL);
    return 0;
}

static void test_event(void)
{
    ASSERT_EQ(ca_run(event_main, NULL), 0);
}

/* ---- condition ----------------------------------------------------------- */

static ca_lock cl;
static ca_cond cv = CA_COND_INIT(&cl);
static int items;
static int consumed;

static int has_item(void *a)
{
    (void)a;
    return items > 0;
}

static int cond_consumer(void *a)
{
    (void)a;
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    int r = ca_cond_wait_for(&cv, has_item, NULL);
    ASSERT(ca_lock_locked(&cl)); /* held again, whatever r is */
    if (r == 0) {
        items--;
        consumed++;
    }
    ASSERT_EQ(ca_lock_release(&cl), 0);
    return r;
}

static int cond_main(void *a)
{
    (void)a;
    ca_task *c[4]; /* cv is statically initialised */
    for (int i = 0; i < 4; i++)
        c[i] = ca_spawn(cond_consumer, NULL);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_cond_notify(&cv, 1), -EPERM); /* lock not held */
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    items = 1;
    ASSERT_EQ(ca_cond_notify(&cv, 1), 1);
    ASSERT_EQ(ca_lock_release(&cl), 0);
    ASSERT_EQ(ca_join(c[0]), 0);
    ASSERT_EQ(consumed, 1);

    /* a notified waiter cancelled in the same turn passes it on */
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    items = 1;
    ASSERT_EQ(ca_cond_notify(&cv, 1), 1); /* wakes c[1] */
    ca_cancel(c[1]);
    ASSERT_EQ(ca_lock_release(&cl), 0);
    ASSERT_EQ(ca_join(c[1]), -ECANCELED);
    ASSERT_EQ(ca_join(c[2]), 0); /* got the notification instead */
    ASSERT_EQ(consumed, 2);

    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    items = 5;
    ASSERT_EQ(ca_cond_notify_all(&cv), 1);
    ASSERT_EQ(ca_lock_release(&cl), 0);
    ASSERT_EQ(ca_join(c[3]), 0);
    ASSERT_EQ(consumed, 3);
    for (int i = 0; i < 4; i++)
        ca_task_release(c[i]);
    ASSERT_EQ(ca_cond_wait(&cv), -EPERM); /* lock not held */
    ASSERT_EQ(ca_cond_init(NULL, &cl), -EINVAL);
    return 0;
}

static void test_condition(void)
{
    ASSERT_EQ(ca_run(cond_main, NULL), 0);
}

/* Plain ca_cond_wait (no predicate): whatever it returns, the waiter holds
 * the lock again (only the owner's release succeeds). */
static int cond_plain_waiter(void *a)
{
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    int r = ca_cond_wait(&cv);
    ASSERT(ca_lock_locked(&cl));
    ASSERT_EQ(ca_lock_release(&cl), 0);
    if (r == 0)
        note(a);
    return r;
}

/* ca_cond_wait inside a deadline scope of *(double *)a seconds. */
static int cond_deadline_waiter(void *a)
{
    double secs = *(double *)a;
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(secs), 0);
    int r = ca_cond_wait(&cv);
    double dt = mono() - t0;
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(r, -ETIMEDOUT);
    ASSERT_GE(dt, secs);
    ASSERT(ca_lock_locked(&cl));
    ASSERT_EQ(ca_lock_release(&cl), 0); /* held again */
    return r;
}

static int cond_wait_main(void *a)
{
    (void)a;
    /* cancelled before any notify: -ECANCELED, but only after taking the
     * lock back (under a shield: main holds it meanwhile) */
    ca_task *w = spawn_eager(cond_plain_waiter, "w");
    ASSERT(!ca_lock_locked(&cl)); /* released by the wait */
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    ca_cancel(w);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT(!ca_task_done(w)); /* waits for the lock despite the cancel */
    ASSERT_EQ(ca_cond_notify(&cv, 1), 0); /* it left the wait queue */
    ASSERT_EQ(ca_lock_release(&cl), 0);   /* hands the lock to w */
    ASSERT_EQ(ca_join(w), -ECANCELED);
    ASSERT(!ca_lock_locked(&cl)); /* w released it */

    /* a deadline: -ETIMEDOUT, again holding the lock (main holds it past
     * the deadline, so d must wait for it although its deadline passed) */
    double secs = 0.03;
    ca_task *d = spawn_eager(cond_deadline_waiter, &secs);
    ca_task *v = spawn_eager(cond_plain_waiter, "v");
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    ASSERT_EQ(ca_sleep(secs + 0.03), 0);
    ASSERT(!ca_task_done(d));
    ASSERT_EQ(ca_lock_release(&cl), 0);
    double t0 = mono();
    ASSERT_EQ(ca_join(d), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 2.0);
    ASSERT(!ca_task_done(v));
    /* the next notify is not lost on d's stale wait: it wakes v */
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    ASSERT_EQ(ca_cond_notify(&cv, 1), 1);
    ASSERT_EQ(ca_lock_release(&cl), 0);
    ASSERT_EQ(ca_join(v), 0);
    ASSERT_STREQ(trace, "v ");
    ASSERT(!ca_lock_locked(&cl));
    ca_task_release(w);
    ca_task_release(d);
    ca_task_release(v);
    return 0;
}

static void test_condition_wait_cancel_deadline(void)
{
    ASSERT_EQ(ca_run(cond_wait_main, NULL), 0);
}

static int inside; /* tasks between wake-up and release in cond_all_waiter */

static int cond_all_waiter(void *a)
{
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    ASSERT_EQ(ca_cond_wait(&cv), 0);
    ASSERT(ca_lock_locked(&cl));
    ASSERT_EQ(++inside, 1); /* alone under the lock */
    note(a);
    ASSERT_EQ(ca_sleep(0.005), 0); /* the others wait for the lock */
    inside--;
    ASSERT_EQ(ca_lock_release(&cl), 0);
    return 0;
}

static int cond_all_main(void *a)
{
    (void)a;
    ca_task *t[3] = {spawn_eager(cond_all_waiter, "a"),
                     spawn_eager(cond_all_waiter, "b"),
                     spawn_eager(cond_all_waiter, "c")};
    ASSERT(!ca_lock_locked(&cl));
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    ASSERT_EQ(ca_cond_notify_all(&cv), 3);
    ASSERT_EQ(ca_cond_notify_all(&cv), 0); /* nobody waits any more */
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_STREQ(trace, ""); /* woken, but the lock is still main's */
    ASSERT_EQ(ca_lock_release(&cl), 0);
    /* all three wake, each re-acquires the lock in turn (FIFO) */
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(t[i]), 0);
        ca_task_release(t[i]);
    }
    ASSERT_STREQ(trace, "a b c ");
    ASSERT_EQ(inside, 0);
    ASSERT(!ca_lock_locked(&cl));
    return 0;
}

static void test_condition_notify_all(void)
{
    ASSERT_EQ(ca_run(cond_all_main, NULL), 0);
}

/* ---- semaphore ----------------------------------------------------------- */

static ca_sem sem = CA_SEM_INIT(4); /* seed 003: Semaphore(4) */
static int running, max_running;

static int download(void *a)
{
    (void)a;
    int r = ca_sem_acquire(&sem);
    if (r < 0)
        return r;
    running++;
    if (running > max_running)
        max_running = running;
    ca_sleep(0.01);
    running--;
    ASSERT_EQ(ca_sem_release(&sem), 0);
    return 0;
}

static int sem_main(void *a)
{
    (void)a;
    /* seed 003: Semaphore(4) caps concurrent downloads at 4 */
    enum { N = 20 };
    ca_task *ts[N];
    for (int i = 0; i < N; i++)
        ts[i] = ca_spawn(download, NULL);
    ASSERT_EQ(ca_gather(ts, N, CA_GATHER_ALL), 0);
    ASSERT_EQ(max_running, 4);
    ASSERT_EQ(ca_sem_value(&sem), 4);
    for (int i = 0; i < N; i++)
        ca_task_release(ts[i]);

    /* bounded: over-release is an error */
    ca_sem b = CA_BOUNDED_SEM_INIT(1);
    ASSERT_EQ(ca_sem_release(&b), -EOVERFLOW);
    ASSERT_EQ(ca_sem_try_acquire(&b), 0);
    ASSERT_EQ(ca_sem_try_acquire(&b), -EAGAIN);
    ASSERT_EQ(ca_sem_release(&b), 0);
    ASSERT_EQ(ca_sem_release(&b), -EOVERFLOW);

    /* a granted-then-cancelled waiter passes the permit on */
    ASSERT_EQ(ca_sem_init(&sem, 1, 1), 0);
    ASSERT_EQ(ca_sem_acquire(&sem), 0);
    max_running = running = 0;
    ca_task *p = ca_spawn(download, NULL), *q = ca_spawn(download, NULL);
    ASSERT_EQ(ca_sleep(0.005), 0);
    ASSERT_EQ(ca_sem_release(&sem), 0); /* granted to p */
    ca_cancel(p);
    ASSERT_EQ(ca_join(p), -ECANCELED);
    ASSERT_EQ(ca_join(q), 0);
    ASSERT_EQ(ca_sem_value(&sem), 1);
    ca_task_release(p);
    ca_task_release(q);
    ASSERT_EQ(ca_sem_init(NULL, 1, 0), -EINVAL);
    return 0;
}

static void test_semaphore(void)
{
    ASSERT_EQ(ca_run(sem_main, NULL), 0);
}

static ca_sem sem0 = CA_SEM_INIT(0);

static int sem_waiter(void *a)
{
    int r = ca_sem_acquire(&sem0);
    if (r == 0)
        note(a);
    return r;
}

/* ca_sem_acquire inside a deadline scope of *(double *)a seconds: fails
 * with -ETIMEDOUT, not before the deadline. */
static int sem_deadline_waiter(void *a)
{
    double secs = *(double *)a;
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(secs), 0);
    int r = ca_sem_acquire(&sem0);
    double dt = mono() - t0;
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(r, -ETIMEDOUT);
    ASSERT_GE(dt, secs);
    note("timeout");
    return r;
}

static int sem_cancel_main(void *a)
{
    (void)a;
    /* p, d, q wait in that order on a semaphore with no permit */
    double secs = 0.03;
    ca_task *p = spawn_eager(sem_waiter, "p");
    ca_task *d = spawn_eager(sem_deadline_waiter, &secs);
    ca_task *q = spawn_eager(sem_waiter, "q");
    /* p cancelled before it got a permit: no permit appears or vanishes */
    ca_cancel(p);
    ASSERT_EQ(ca_join(p), -ECANCELED);
    ASSERT_EQ(ca_sem_value(&sem0), 0);
    /* d's deadline passes: the same */
    double t0 = mono();
    ASSERT_EQ(ca_join(d), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 2.0);
    ASSERT_EQ(ca_sem_value(&sem0), 0);
    ASSERT_EQ(ca_sem_try_acquire(&sem0), -EAGAIN); /* q still waits */
    /* the next release goes to q, the one waiter left */
    ASSERT_EQ(ca_sem_release(&sem0), 0);
    ASSERT_EQ(ca_sem_value(&sem0), 0); /* handed over, not banked */
    ASSERT_EQ(ca_join(q), 0);
    ASSERT_STREQ(trace, "timeout q ");
    /* with nobody waiting, a release is simply available */
    ASSERT_EQ(ca_sem_release(&sem0), 0);
    ASSERT_EQ(ca_sem_value(&sem0), 1);
    ASSERT_EQ(ca_sem_try_acquire(&sem0), 0);
    ASSERT_EQ(ca_sem_value(&sem0), 0);
    ca_task_release(p);
    ca_task_release(d);
    ca_task_release(q);

    /* granted after its deadline passed but before its timer fired (the
     * loop was held): d2 fails with -ETIMEDOUT, the permit goes to q2 */
    trace[0] = 0;
    secs = 0.02;
    ca_task *d2 = spawn_eager(sem_deadline_waiter, &secs);
    ca_task *q2 = spawn_eager(sem_waiter, "q2");
    spin(secs + 0.01);
    ASSERT_EQ(ca_sem_release(&sem0), 0); /* grants d2 */
    ASSERT_EQ(ca_join(d2), -ETIMEDOUT);
    ASSERT_EQ(ca_join(q2), 0);
    ASSERT_STREQ(trace, "timeout q2 ");
    ASSERT_EQ(ca_sem_value(&sem0), 0);
    ca_task_release(d2);
    ca_task_release(q2);
    return 0;
}

static void test_semaphore_cancel_deadline(void)
{
    ASSERT_EQ(ca_run(sem_cancel_main, NULL), 0);
}

/* ---- barrier ------------------------------------------------------------- */

static ca_barrier bar = CA_BARRIER_INIT(3);
static int arrivals[8];

static int party(void *a)
{
    int i = (int)(long)a;
    int r = ca_barrier_wait(&bar);
    if (r >= 0)
        arrivals[i] = r;
    return r;
}

static int barrier_main(void *a)
{
    (void)a;
    ca_task *t[3]; /* bar is statically initialised for 3 parties */
    for (long i = 0; i < 2; i++)
        t[i] = ca_spawn(party, (void *)i);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_barrier_n_waiting(&bar), 2);
    t[2] = ca_spawn(party, (void *)2L);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(t[i]), i); /* arrival index */
        ca_task_release(t[i]);
    }
    /* reusable; a cancelled waiter breaks it for the others */
    for (long i = 0; i < 2; i++)
        t[i] = ca_spawn(party, (void *)i);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_cancel(t[0]);
    ASSERT_EQ(ca_join(t[0]), -ECANCELED);
    ASSERT_EQ(ca_join(t[1]), -CA_EBROKEN);
    ASSERT(ca_barrier_broken(&bar));
    ASSERT_EQ(ca_barrier_wait(&bar), -CA_EBROKEN);
    ASSERT_EQ(ca_barrier_reset(&bar), 0);
    ASSERT(!ca_barrier_broken(&bar));
    ca_task_release(t[0]);
    ca_task_release(t[1]);
    /* abort */
    t[0] = ca_spawn(party, (void *)0L);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(ca_barrier_abort(&bar), 0);
    ASSERT_EQ(ca_join(t[0]), -CA_EBROKEN);
    ca_task_release(t[0]);
    ASSERT_EQ(ca_barrier_init(&bar, 0), -EINVAL);
    return 0;
}

static void test_barrier(void)
{
    ASSERT_EQ(ca_run(barrier_main, NULL), 0);
}

/* ca_barrier_wait inside a deadline scope of *(double *)a seconds. */
static int barrier_deadline_party(void *a)
{
    double secs = *(double *)a;
    double t0 = mono();
    ASSERT_EQ(ca_deadline_push(secs), 0);
    int r = ca_barrier_wait(&bar);
    double dt = mono() - t0;
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_GE(dt, secs);
    return r;
}

static int barrier_deadline_main(void *a)
{
    (void)a;
    /* a party whose deadline passes gets -ETIMEDOUT and breaks the barrier
     * (3 parties) for the one waiting with it */
    double secs = 0.03;
    ca_task *p = spawn_eager(party, (void *)0L);
    ca_task *d = spawn_eager(barrier_deadline_party, &secs);
    ASSERT_EQ(ca_barrier_n_waiting(&bar), 2);
    double t0 = mono();
    ASSERT_EQ(ca_join(d), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 2.0);
    ASSERT_EQ(ca_join(p), -CA_EBROKEN);
    ASSERT(ca_barrier_broken(&bar));
    ASSERT_EQ(ca_barrier_n_waiting(&bar), 0);
    ASSERT_EQ(ca_barrier_wait(&bar), -CA_EBROKEN); /* until reset */
    ASSERT_EQ(ca_barrier_reset(&bar), 0);
    ASSERT(!ca_barrier_broken(&bar));
    ca_task_release(p);
    ca_task_release(d);

    /* reset while two parties wait: they get -CA_EBROKEN, and the barrier
     * is usable again at once (not broken, counting from 0): a new round
     * fills and passes before the old waiters have even run */
    ca_task *old[2] = {spawn_eager(party, (void *)0L),
                       spawn_eager(party, (void *)1L)};
    ASSERT_EQ(ca_barrier_n_waiting(&bar), 2);
    ASSERT_EQ(ca_barrier_reset(&bar), 0);
    ASSERT_EQ(ca_barrier_n_waiting(&bar), 0);
    ASSERT(!ca_barrier_broken(&bar));
    ca_task *fresh[3];
    for (long i = 0; i < 3; i++)
        fresh[i] = spawn_eager(party, (void *)(2 + i));
    ASSERT(ca_task_done(fresh[2])); /* the last arrival did not wait */
    ASSERT_EQ(ca_barrier_n_waiting(&bar), 0);
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(ca_join(old[i]), -CA_EBROKEN);
        ca_task_release(old[i]);
    }
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(fresh[i]), i); /* arrival index in the new round */
        ASSERT_EQ(arrivals[2 + i], i);
        ca_task_release(fresh[i]);
    }
    ASSERT(!ca_barrier_broken(&bar));
    return 0;
}

static void test_barrier_deadline_reset(void)
{
    ASSERT_EQ(ca_run(barrier_deadline_main, NULL), 0);
}

/* ---- a waiter cancelled, then granted in the same turn -------------------- */

/* Cancel a parked waiter, then grant (release / notify / put) before it has
 * run: the grant must go to the next waiter, not land on one that returns
 * -ECANCELED.  Documented: "A waiter that is cancelled never steals or
 * loses a wake-up". */
static int plain_lock_waiter(void *a)
{
    (void)a;
    return ca_lock_acquire(&lock);
}

static int queue_getter(void *a)
{
    int v = 0;
    int r = ca_queue_get(a, &v);
    return r < 0 ? r : v;
}

static int same_turn_main(void *a)
{
    (void)a;
    /* lock: cancel x, then release, same turn: x must not own the lock */
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *x = spawn_eager(plain_lock_waiter, NULL);
    ca_cancel(x);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ASSERT_EQ(ca_join(x), -ECANCELED);
    ASSERT(!ca_lock_locked(&lock)); /* not owned by the finished x */
    ASSERT_EQ(ca_lock_try_acquire(&lock), 0);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ca_task_release(x);

    /* semaphore: cancel p, then release, same turn: the permit survives */
    ca_task *p = spawn_eager(sem_waiter, "p");
    ca_cancel(p);
    ASSERT_EQ(ca_sem_release(&sem0), 0);
    ASSERT_EQ(ca_join(p), -ECANCELED);
    ASSERT_EQ(ca_sem_value(&sem0), 1); /* the permit is not lost */
    ca_task_release(p);

    /* condition: cancel w, then notify one, same turn: v gets it */
    trace[0] = 0;
    ca_task *w = spawn_eager(cond_plain_waiter, "w");
    ca_task *v = spawn_eager(cond_plain_waiter, "v");
    ASSERT_EQ(ca_lock_acquire(&cl), 0);
    ca_cancel(w);
    ASSERT_EQ(ca_cond_notify(&cv, 1), 1);
    ASSERT_EQ(ca_lock_release(&cl), 0);
    ASSERT_EQ(ca_join(w), -ECANCELED);
    ASSERT_EQ(ca_deadline_push(0.1), 0);
    ASSERT_EQ(ca_join(v), 0); /* the notify reached v */
    ASSERT_EQ(ca_deadline_pop(), 0);
    ASSERT_STREQ(trace, "v ");
    ca_task_release(w);
    ca_task_release(v);

    /* queue: cancel getter g, then put one item, same turn: getter h gets
     * it (the wake-up is not spent on g) */
    ca_queue *q;
    ca_queue_opts qo = {.elem_size = sizeof(int)};
    ASSERT_EQ(ca_queue_new(&q, &qo), 0);
    ca_task *g = spawn_eager(queue_getter, q);
    ca_task *h = spawn_eager(queue_getter, q);
    ca_cancel(g);
    int item = 42;
    ASSERT_EQ(ca_queue_put_nowait(q, &item), 0);
    ASSERT_EQ(ca_join(g), -ECANCELED);
    ASSERT_EQ(ca_deadline_push(0.1), 0);
    ASSERT_EQ(ca_join(h), 42);
    ASSERT_EQ(ca_deadline_pop(), 0);
    ca_task_release(g);
    ca_task_release(h);
    ca_queue_free(q);
    return 0;
}

/* barrier of 2: cancel the waiting party, then the last one arrives in the
 * same turn.  The round completes (the arrival gets index 1); the
 * cancelled party returns -ECANCELED but, its round being over, leaves the
 * barrier unbroken for the next round. */
static ca_barrier bar2 = CA_BARRIER_INIT(2);

static int party2(void *a)
{
    (void)a;
    return ca_barrier_wait(&bar2);
}

static int barrier_same_turn_main(void *a)
{
    (void)a;
    ca_task *p = spawn_eager(party2, NULL);
    ca_cancel(p);
    ASSERT_EQ(ca_barrier_wait(&bar2), 1);
    ASSERT_EQ(ca_join(p), -ECANCELED);
    ca_task_release(p);
    ASSERT(!ca_barrier_broken(&bar2));
    ASSERT_EQ(ca_barrier_n_waiting(&bar2), 0);
    ca_task *q = spawn_eager(party2, NULL); /* a new round works */
    ASSERT_EQ(ca_barrier_wait(&bar2), 1);
    ASSERT_EQ(ca_join(q), 0);
    ca_task_release(q);
    /* after a reset, a cancelled waiter of the old round, run later, does
     * not break the new one */
    ca_task *r = spawn_eager(party2, NULL);
    ca_cancel(r);
    ASSERT_EQ(ca_barrier_reset(&bar2), 0);
    ASSERT_EQ(ca_join(r), -ECANCELED);
    ca_task_release(r);
    ASSERT(!ca_barrier_broken(&bar2));
    return 0;
}

/* The same without a cancel: a waiter's deadline and the owner's wake-up
 * come due in the same poll (another task held the loop past both), and
 * the owner runs first and releases: the timed-out waiter must not end up
 * owning the lock. */
/* Set by plain_deadline_waiter: when its deadline passes. */
static double waiter_deadline_at;

/* Holds the loop from 10 ms on until the waiter's deadline (and main's
 * 20 ms sleep) have both passed, however slow the host: both timers are
 * then due in the same poll. */
static int loop_hog(void *a)
{
    double main_due = *(double *)a;
    ca_sleep(0.01);
    while (waiter_deadline_at == 0 || mono() < waiter_deadline_at + 0.005 ||
           mono() < main_due + 0.005)
        ;
    return 0;
}

static int plain_deadline_waiter(void *a)
{
    waiter_deadline_at = mono() + *(double *)a;
    ASSERT_EQ(ca_deadline_push(*(double *)a), 0);
    int r = ca_lock_acquire(&lock);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    return r;
}

static int deadline_then_grant_main(void *a)
{
    (void)a;
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    waiter_deadline_at = 0;
    double main_due = mono() + 0.02;
    ca_task *hg = ca_spawn(loop_hog, &main_due); /* holds the loop */
    double secs = 0.03;
    ca_task *d = ca_spawn(plain_deadline_waiter, &secs); /* due at ~30 ms */
    ASSERT_EQ(ca_sleep(0.02), 0); /* due at ~20 ms: fires first */
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ASSERT_EQ(ca_join(d), -ETIMEDOUT);
    ASSERT(!ca_lock_locked(&lock));
    ASSERT_EQ(ca_lock_try_acquire(&lock), 0);
    ASSERT_EQ(ca_lock_release(&lock), 0);
    ASSERT_EQ(ca_join(hg), 0);
    ca_task_release(d);
    ca_task_release(hg);
    return 0;
}

static void test_cancel_then_grant_same_turn(void)
{
    ASSERT_EQ(ca_run(same_turn_main, NULL), 0);
    ASSERT_EQ(ca_run(deadline_then_grant_main, NULL), 0);
    ASSERT_EQ(ca_run(barrier_same_turn_main, NULL), 0);
}

/*
 * Scaling guard: many waiters on each primitive, half of them cancelled in
 * a scattered order (from the middle of the wait list, not its ends), the
 * rest released in bulk.  Unlinking a cancelled waiter must stay O(1)
 * (asyncio's Lock removes from a deque: 100,000 such cancels take ~90 s in
 * CPython 3.11, here ~0.6 s), so this finishes well inside the runner's
 * timeout; a quadratic path (~5e9 steps at this size) would not.
 */
static ca_lock scale_lock = CA_LOCK_INIT;
static ca_sem scale_sem = CA_SEM_INIT(0);
static ca_event scale_ev = CA_EVENT_INIT;
static ca_cond scale_cond;
static ca_queue *scale_q;

static int scale_lock_waiter(void *a)
{
    (void)a;
    int r = ca_lock_acquire(&scale_lock);
    if (r == 0)
        ca_lock_release(&scale_lock);
    return r;
}

static int scale_sem_waiter(void *a)
{
    (void)a;
    return ca_sem_acquire(&scale_sem);
}

static int scale_event_waiter(void *a)
{
    (void)a;
    return ca_event_wait(&scale_ev);
}

static int scale_cond_waiter(void *a)
{
    (void)a;
    ca_lock_acquire(&scale_lock);
    int r = ca_cond_wait(&scale_cond);
    ca_lock_release(&scale_lock);
    return r;
}

static int scale_queue_waiter(void *a)
{
    (void)a;
    void *p;
    return ca_queue_get(scale_q, &p);
}

/* Release whoever is still waiting on primitive `kind` (n_left of them). */
static void scale_release(int kind, long n_left)
{
    switch (kind) {
    case 0:
        ca_lock_release(&scale_lock);
        break;
    case 1:
        for (long i = 0; i < n_left; i++)
            ca_sem_release(&scale_sem);
        break;
    case 2:
        ca_event_set(&scale_ev);
        break;
    case 3:
        ca_lock_acquire(&scale_lock);
        ca_cond_notify_all(&scale_cond);
        ca_lock_release(&scale_lock);
        break;
    default:
        for (long i = 0; i < n_left; i++)
            ca_queue_put(scale_q, (void *)1);
        break;
    }
}

static int scale_main(void *arg)
{
    long n = *(long *)arg;
    static const ca_fn fns[] = {scale_lock_waiter, scale_sem_waiter,
                                scale_event_waiter, scale_cond_waiter,
                                scale_queue_waiter};
    ca_task **ts = malloc((size_t)n * sizeof(*ts));
    ASSERT(ts != NULL);
    ca_cond_init(&scale_cond, &scale_lock);
    ASSERT_EQ(ca_queue_new(&scale_q, NULL), 0);
    for (int kind = 0; kind < 5; kind++) {
        if (kind == 0)
            ASSERT_EQ(ca_lock_acquire(&scale_lock), 0);
        for (long i = 0; i < n; i++)
            ASSERT((ts[i] = ca_spawn(fns[kind], NULL)) != NULL);
        ASSERT_EQ(ca_yield(), 0); /* all parked */
        /* Cancel every other waiter, visiting them in a scattered order
         * (7919 is prime, so i * 7919 % n visits each index once). */
        for (long i = 0; i < n; i++) {
            long j = i * 7919 % n;
            if (j % 2)
                ca_cancel(ts[j]);
        }
        scale_release(kind, n - n / 2);
        for (long i = 0; i < n; i++) {
            ASSERT_EQ(ca_join(ts[i]), i % 2 ? -ECANCELED : 0);
            ca_task_release(ts[i]);
        }
    }
    ca_queue_free(scale_q);
    free(ts);
    return 0;
}

static void test_many_waiters_scattered_cancel(void)
{
    long n = test_is_instrumented() ? 20000 : 100000;
    ASSERT_EQ(ca_run(scale_main, &n), 0);
}

static const struct test_case tests[] = {
    {"lock_fifo", test_lock_fifo, 10, 0},
    {"lock_cancellation", test_lock_cancellation, 10, 0},
    {"lock_deadline", test_lock_deadline, 10, 0},
    {"lock_release_not_owner", test_lock_release_not_owner, 10, 0},
    {"event", test_event, 10, 0},
    {"condition", test_condition, 10, 0},
    {"condition_wait_cancel_deadline", test_condition_wait_cancel_deadline, 10,
     0},
    {"condition_notify_all", test_condition_notify_all, 10, 0},
    {"semaphore", test_semaphore, 10, 0},
    {"semaphore_cancel_deadline", test_semaphore_cancel_deadline, 10, 0},
    {"barrier", test_barrier, 10, 0},
    {"barrier_deadline_reset", test_barrier_deadline_reset, 10, 0},
    {"cancel_then_grant_same_turn", test_cancel_then_grant_same_turn, 10, 0},
    /* heavy: 20k+ coroutine stacks crash ThreadSanitizer, which does not
     * know them (the TSan and valgrind runs set CAWAIT_TEST_LIGHT) */
    {"many_waiters_scattered_cancel", test_many_waiters_scattered_cancel, 30,
     1},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
