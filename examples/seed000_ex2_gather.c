/*
 * Seed 000, section 5, exercise 2 (练习2): three simulated downloads.
 *
 * The Python answer gathers them:
 *
 *     files = [("file1.txt", 10), ("file2.mp4", 50), ("file3.zip", 30)]
 *     start = time.time()
 *     tasks = [download_file(name, size) for name, size in files]
 *     results = await asyncio.gather(*tasks)
 *     end = time.time()
 *     print(f"所有文件下载完成: {results}")
 *     print(f"总耗时: {end - start:.2f}秒")
 *
 * The exercise asks to "compare the total time", so this runs the three
 * downloads twice: first one after the other (1 + 5 + 3 = 9 s in seed time),
 * then concurrently (max(1, 5, 3) = 5 s).  asyncio.gather is spawn all, then
 * join all: ca_spawn schedules every task before any of them runs, and
 * joining them in order collects the results in argument order, whatever
 * order they finish in.
 *
 * Every sleep is scaled down 10x: 9 s -> 0.9 s, 5 s -> 0.5 s.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>

/* Seed seconds -> our seconds. */
#define SCALE 0.1
#define NFILES 3

struct download {
    const char *filename; /* in */
    int size_mb;          /* in */
    const char *result;   /* out: the file name, as the seed returns it */
};

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

static int download_task(void *arg)
{
    return download_file(arg);
}

static void reset(struct download *files)
{
    static const struct download init[NFILES] = {
        {"file1.txt", 10, NULL},
        {"file2.mp4", 50, NULL},
        {"file3.zip", 30, NULL},
    };
    for (int i = 0; i < NFILES; i++)
        files[i] = init[i];
}

/* print(f"...: {results}") with Python's list repr. */
static void print_results(const struct download *files)
{
    printf("all files downloaded: [");
    for (int i = 0; i < NFILES; i++)
        printf("%s'%s'", i ? ", " : "",
               files[i].result ? files[i].result : "?");
    printf("]\n");
}

/* One download after the other: each call returns when its sleep is over. */
static int sequential(struct download *files)
{
    for (int i = 0; i < NFILES; i++) {
        int r = download_file(&files[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* asyncio.gather: spawn every download, then join every one.  All tasks are
 * joined even if one fails, so none is left behind; the first failure in
 * argument order is returned, as gather raises the first exception. */
static int gather(struct download *files)
{
    ca_task *tasks[NFILES] = {0};
    int status = 0;

    for (int i = 0; i < NFILES; i++) {
        tasks[i] = ca_spawn(download_task, &files[i]);
        if (!tasks[i]) {
            /* Inside a task, with a non-NULL fn, the only failure is
             * running out of memory. */
            status = -ENOMEM;
            break;
        }
    }
    for (int i = 0; i < NFILES && tasks[i]; i++) {
        int r = ca_join(tasks[i]);
        if (r < 0 && status == 0)
            status = r;
        ca_task_release(tasks[i]);
    }
    return status;
}

static int amain(void *arg)
{
    struct download files[NFILES];
    (void)arg;

    printf("-- sequential: one download after the other --\n");
    reset(files);
    double start = ca_now();
    int r = sequential(files);
    double end = ca_now();
    if (r < 0)
        return r;
    print_results(files);
    printf("sequential total: %.2f s\n", end - start);
    printf("expected ~0.90 s (seed: 1 + 5 + 3 = 9 s, scaled 1/10)\n");

    printf("-- concurrent: spawn all, join all (asyncio.gather) --\n");
    reset(files);
    start = ca_now();
    r = gather(files);
    end = ca_now();
    if (r < 0)
        return r;
    print_results(files);
    printf("concurrent total: %.2f s\n", end - start);
    printf("expected ~0.50 s (seed: max(1, 5, 3) = 5 s, scaled 1/10)\n");
    return 0;
}

int main(void)
{
    printf("seed 000, exercise 2: three simulated downloads "
           "(sleeps scaled 1/10)\n");
    int r = ca_run(amain, NULL);
    if (r < 0) {
        fprintf(stderr, "seed000_ex2_gather: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    return 0;
}
