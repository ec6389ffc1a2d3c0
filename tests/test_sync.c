/* Synchronization primitives: lock, event, condition, semaphore, barrier. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <time.h>

static char trace[4096];
static void note(const char *s)
{
    strcat(trace, s);
    strcat(trace, " ");
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

    /* a deadline while waiting */
    ASSERT_EQ(ca_lock_acquire(&lock), 0);
    ca_task *d = ca_spawn(locker, "d");
    ASSERT_EQ(ca_sleep(0.005), 0);
    ca_task_release(d);
    ASSERT_EQ(ca_lock_release(&lock), 0);
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

static const struct test_case tests[] = {
    {"lock_fifo", test_lock_fifo, 10, 0},
    {"lock_cancellation", test_lock_cancellation, 10, 0},
    {"event", test_event, 10, 0},
    {"condition", test_condition, 10, 0},
    {"semaphore", test_semaphore, 10, 0},
    {"barrier", test_barrier, 10, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
