/*
 * Spawner threads: run posix_spawn off the loop thread.
 *
 * A vfork-style spawn suspends the calling thread until the child has got
 * far enough into execve to give the address space back: 0.2-0.6 ms on the
 * VMs we measure, most of it waiting for the child to be scheduled.  Done on
 * the loop thread, that stalls every task, and spawns run one at a time.
 * So a task hands the job to one of a few threads per loop (started on
 * demand, at most SPAWNERS) and parks; several spawns then overlap, and
 * the loop keeps running.  Threads block every signal, so the kernel never
 * delivers a process-directed signal (SIGINT, SIGCHLD) to them.
 *
 * The job lives on the waiting task's stack, so the wait is not a
 * cancellation point (a shield): a spawn takes milliseconds, and the
 * caller's next blocking call sees its cancellation.  Finished jobs come
 * back through a list and one eventfd, read by a non-task fd waiter that
 * wakes the tasks.  ca_run joins the threads (exit hook).
 */
#include "io/internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SPAWNERS 4

struct spawner {
    ca__exit_hook hook; /* first: the hook is the state */
    ca_loop *loop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ca__spawn_job *queue, *queue_tail; /* waiting for a thread */
    ca__spawn_job *done;               /* finished, for the loop */
    int nthreads, idle, stopping;
    pthread_t threads[SPAWNERS];
    int evfd;
    ca__fdwait waiter;
};

static void *spawner_main(void *arg)
{
    struct spawner *sp = arg;
    pthread_mutex_lock(&sp->lock);
    for (;;) {
        ca__spawn_job *job = sp->queue;
        if (!job) {
            if (sp->stopping)
                break;
            sp->idle++;
            pthread_cond_wait(&sp->cond, &sp->lock);
            sp->idle--;
            continue;
        }
        sp->queue = job->next;
        if (!sp->queue)
            sp->queue_tail = NULL;
        pthread_mutex_unlock(&sp->lock);
        job->run(job);
        pthread_mutex_lock(&sp->lock);
        int first = sp->done == NULL;
        job->next = sp->done;
        sp->done = job;
        if (first) {
            uint64_t one = 1;
            ssize_t n = write(sp->evfd, &one, sizeof(one));
            (void)n; /* a full counter is already a wake-up */
        }
    }
    pthread_mutex_unlock(&sp->lock);
    return NULL;
}

static void arm(struct spawner *sp);

/* Loop context: hand finished jobs back to their tasks. */
static void collect(ca__fdwait *w, int result)
{
    struct spawner *sp =
        (struct spawner *)((char *)w - offsetof(struct spawner, waiter));
    if (result < 0)
        return;
    arm(sp);
}

static void arm(struct spawner *sp)
{
    uint64_t n;
    while (read(sp->evfd, &n, sizeof(n)) == (ssize_t)sizeof(n))
        ;
    ca__fd_take_ready(sp->loop, sp->evfd, CA_READ);
    pthread_mutex_lock(&sp->lock);
    ca__spawn_job *job = sp->done;
    sp->done = NULL;
    pthread_mutex_unlock(&sp->lock);
    while (job) {
        ca__spawn_job *next = job->next;
        job->finished = 1;
        ca__task_wake(job->task, 0);
        job = next;
    }
    sp->waiter = (ca__fdwait){.fd = sp->evfd, .events = CA_READ,
                              .wake = collect};
    ca__fd_add_waiter(sp->loop, &sp->waiter);
}

static void spawner_exit(ca_loop *l, ca__exit_hook *h)
{
    struct spawner *sp = (struct spawner *)h;
    pthread_mutex_lock(&sp->lock);
    sp->stopping = 1;
    pthread_cond_broadcast(&sp->cond);
    pthread_mutex_unlock(&sp->lock);
    for (int i = 0; i < sp->nthreads; i++)
        pthread_join(sp->threads[i], NULL);
    ca_close(sp->evfd);
    pthread_cond_destroy(&sp->cond);
    pthread_mutex_destroy(&sp->lock);
    free(sp);
}

static struct spawner *spawner_get(ca_loop *l)
{
    struct spawner *sp =
        (struct spawner *)ca__loop_find_hook(l, spawner_exit);
    if (sp)
        return sp;
    sp = calloc(1, sizeof(*sp));
    if (!sp)
        return NULL;
    sp->loop = l;
    sp->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sp->evfd < 0 || ca__fd_register(l, sp->evfd) < 0) {
        if (sp->evfd >= 0)
            ca_close(sp->evfd);
        free(sp);
        return NULL;
    }
    if (pthread_mutex_init(&sp->lock, NULL) != 0) {
        ca_close(sp->evfd);
        free(sp);
        return NULL;
    }
    if (pthread_cond_init(&sp->cond, NULL) != 0) {
        pthread_mutex_destroy(&sp->lock);
        ca_close(sp->evfd);
        free(sp);
        return NULL;
    }
    arm(sp);
    sp->hook.fn = spawner_exit;
    ca__loop_at_exit(l, &sp->hook);
    return sp;
}

/* With sp->lock held: start one more thread.  0 or a negative errno. */
static int add_thread(struct spawner *sp)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* inherited by the thread */
    int r = pthread_create(&sp->threads[sp->nthreads], NULL, spawner_main, sp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0)
        return -r;
    sp->nthreads++;
    return 0;
}

int ca__spawn_offload(ca__spawn_job *job)
{
    ca_loop *l = ca__loop();
    ca_task *self = l ? l->current : NULL;
    if (!self)
        return -EPERM;
    struct spawner *sp = spawner_get(l);
    if (!sp)
        return -ENOMEM;
    job->task = self;
    job->finished = 0;
    job->next = NULL;
    pthread_mutex_lock(&sp->lock);
    if (sp->idle == 0 && sp->nthreads < SPAWNERS && add_thread(sp) < 0 &&
        sp->nthreads == 0) {
        pthread_mutex_unlock(&sp->lock);
        return -EAGAIN; /* no thread at all: the caller spawns itself */
    }
    if (sp->queue_tail)
        sp->queue_tail->next = job;
    else
        sp->queue = job;
    sp->queue_tail = job;
    pthread_cond_signal(&sp->cond);
    pthread_mutex_unlock(&sp->lock);
    /* The job is on our stack: wait for it whatever happens. */
    ca_shield_push();
    while (!job->finished)
        ca__task_park(self, INT64_MAX);
    ca_shield_pop();
    return 0;
}
