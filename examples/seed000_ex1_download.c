/*
 * Seed 000, section 5, exercise 1 (练习1): one simulated download.
 *
 * The Python answer:
 *
 *     async def download_file(filename, size_mb):
 *         print(f"开始下载: {filename} ({size_mb}MB)")
 *         await asyncio.sleep(size_mb * 0.1)
 *         print(f"下载完成: {filename}")
 *         return filename
 *
 *     asyncio.run(download_file("video.mp4", 100))
 *
 * In cawait a coroutine is an ordinary C function that is called from a task:
 * ca_sleep suspends the task, not the thread.  ca_run plays asyncio.run: it
 * runs the main task and returns its int status.  A task cannot return a
 * string, so the file name comes back through the struct the task gets as
 * its argument.
 *
 * Every sleep is scaled down 10x: the seed's 100 MB x 0.1 s = 10 s become
 * 1.0 s here.
 */
#include <cawait.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1

struct download {
    const char *filename; /* in */
    int size_mb;          /* in */
    const char *result;   /* out: the file name, as the seed returns it */
};

/* The coroutine: blocks the calling task for size_mb * 0.1 s (scaled). */
static int download_file(struct download *d)
{
    printf("start download: %s (%dMB)\n", d->filename, d->size_mb);
    int r = ca_sleep(d->size_mb * 0.1 * SCALE);
    if (r < 0)
        return r;
    printf("download done: %s\n", d->filename);
    d->result = d->filename;
    return 0;
}

static int download_main(void *arg)
{
    return download_file(arg);
}

int main(void)
{
    struct download d = {.filename = "video.mp4", .size_mb = 100};

    printf("seed 000, exercise 1: one simulated download "
           "(sleeps scaled 1/10)\n");
    double start = ca_now();
    int r = ca_run(download_main, &d);
    double elapsed = ca_now() - start;
    if (r < 0) {
        fprintf(stderr, "seed000_ex1_download: ca_run: %s (%s)\n",
                ca_strerror(r), ca_err_name(r));
        return 1;
    }
    printf("result: %s\n", d.result);
    printf("total: %.2f s\n", elapsed);
    printf("expected ~1.00 s (seed: 100 MB x 0.1 s = 10 s, scaled 1/10)\n");
    return 0;
}
