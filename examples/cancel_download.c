/*
 * Cancellation (task.cancel() in asyncio), on seed 000's simulated download.
 *
 * main starts download_file("video.mp4", 100) as a task (10 s in seed time),
 * gives up after 3 s and cancels it:
 *
 *     task = asyncio.create_task(download_file("video.mp4", 100))
 *     await asyncio.sleep(3)
 *     task.cancel()
 *     try:
 *         await task
 *     except asyncio.CancelledError:
 *         print("download cancelled")
 *
 * In cawait, ca_cancel makes the blocking call the task is in return
 * -ECANCELED.  Cancellation is level-triggered: every later blocking call
 * fails the same way until the task returns, so it cannot be swallowed by
 * accident.  Cleanup that must wait (here: deleting the partial file, 0.5 s
 * in seed time) runs inside a shield scope.  ca_join then returns the
 * task's status: -ECANCELED.
 *
 * Every sleep is scaled down 10x: 3 s + 0.5 s of cleanup = 3.5 s -> 0.35 s.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

struct download {
    const char *filename;
    int size_mb;
};

static int download_file(void *arg)
{
    struct download *d = arg;
    printf("start download: %s (%dMB)\n", d->filename, d->size_mb);
    int r = ca_sleep(d->size_mb * 0.1 * SCALE);
    if (r == -ECANCELED) {
        printf("download interrupted: %s (%s)\n", d->filename,
               ca_err_name(r));
        /* Without the shield this sleep would fail at once: the task is
         * still cancelled. */
        int s = ca_shield_push();
        if (s < 0)
            return s;
        printf("removing partial file %s...\n", d->filename);
        s = ca_sleep(0.5 * SCALE);
        int p = ca_shield_pop();
        if (s < 0 || p < 0)
            return s < 0 ? s : p;
        printf("partial file removed\n");
        return r; /* finish as cancelled */
    }
    if (r < 0)
        return r;
    printf("download done: %s\n", d->filename);
    return 0;
}

static int amain(void *arg)
{
    struct download d = {.filename = "video.mp4", .size_mb = 100};
    (void)arg;

    double start = ca_now();
    ca_task *t = ca_spawn(download_file, &d);
    if (!t)
        return -ENOMEM; /* the only ca_spawn failure inside a task */
    int r = ca_sleep(3 * SCALE);
    if (r < 0)
        goto out;
    printf("main: cancelling the download after %.2f s\n", ca_now() - start);
    r = ca_cancel(t);
    if (r < 0)
        goto out;
    int status = ca_join(t);
    if (status == -ECANCELED) {
        printf("main: ca_join returned -ECANCELED: download cancelled\n");
    } else {
        printf("main: unexpected status %d (%s)\n", status,
               ca_err_name(status));
        r = status < 0 ? status : -EPROTO;
        goto out;
    }
    printf("main: task cancelled = %d\n", ca_task_cancelled(t));
    printf("total: %.2f s\n", ca_now() - start);
    printf("expected ~0.35 s (seed: 3 s + 0.5 s cleanup, scaled 1/10)\n");

out:
    ca_task_release(t);
    return r;
}

int main(void)
{
    printf("cancellation: cancel seed 000's download after 3 s "
           "(sleeps scaled 1/10)\n");
    int r = ca_run(amain, NULL);
    if (r < 0) {
        fprintf(stderr, "cancel_download: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    return 0;
}
