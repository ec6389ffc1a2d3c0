/*
 * asyncio.Queue producer/consumer (the pattern of seed 001's batch import):
 * 3 producers put 5 jobs each into a bounded queue, 2 workers process them,
 * main waits for the queue to be fully processed with join, then shuts it
 * down so the workers finish.  15 jobs of 0.02 s on 2 workers: ~0.16 s.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>

static ca_queue *q;
static int processed[2];

static int producer(void *arg)
{
    long id = (long)arg;
    for (long j = 0; j < 5; j++) {
        int r = ca_queue_put(q, (void *)(id * 100 + j)); /* waits when full */
        if (r < 0)
            return r;
    }
    return 0;
}

static int worker(void *arg)
{
    long id = (long)arg;
    for (;;) {
        void *job;
        int r = ca_queue_get(q, &job);
        if (r == -ESHUTDOWN)
            return 0; /* drained and shut down: done */
        if (r < 0)
            return r;
        ca_sleep(0.02); /* process the job */
        processed[id]++;
        ca_queue_task_done(q);
    }
}

static int amain(void *arg)
{
    (void)arg;
    ca_queue_opts o = {.kind = CA_QUEUE_FIFO, .maxsize = 4};
    int r = ca_queue_new(&q, &o);
    if (r < 0)
        return r;
    double t0 = ca_now();
    ca_task *w[2], *p[3];
    for (long i = 0; i < 2; i++)
        w[i] = ca_spawn(worker, (void *)i);
    for (long i = 0; i < 3; i++)
        p[i] = ca_spawn(producer, (void *)(i + 1));
    r = ca_gather(p, 3, 0);
    if (r == 0)
        r = ca_queue_join(q); /* every job put has been processed */
    printf("all %d jobs processed\n", processed[0] + processed[1]);
    printf("worker 0 did %d, worker 1 did %d\n", processed[0], processed[1]);
    ca_queue_shutdown(q, 0);
    int rw = ca_gather(w, 2, CA_GATHER_ALL);
    printf("total: %.2f s\n", ca_now() - t0);
    printf("expected ~0.16 s (15 jobs x 0.02 s / 2 workers)\n");
    for (int i = 0; i < 3; i++)
        ca_task_release(p[i]);
    for (int i = 0; i < 2; i++)
        ca_task_release(w[i]);
    ca_queue_free(q);
    return r < 0 ? r : rw;
}

int main(void)
{
    int r = ca_run(amain, NULL);
    if (r != 0)
        fprintf(stderr, "queue_workers: %s\n", ca_strerror(r));
    return r != 0;
}
