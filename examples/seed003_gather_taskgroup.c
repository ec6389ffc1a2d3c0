/*
 * seed 003, "advanced concurrency control": asyncio.gather(...,
 * return_exceptions=True) versus asyncio.TaskGroup, in C.  Sleeps are scaled
 * 1/10.  The last part shows the difference the seed describes: when one
 * task fails, gather lets the others finish, the task group cancels them.
 */
#include <cawait.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

struct fetch {
    int param;
    int fail;          /* this one raises instead of returning */
    char result[32];
};

static int fetch_data(void *arg)
{
    struct fetch *f = arg;
    printf("Do something with %d...\n", f->param);
    int r = ca_sleep(f->param * 0.1);
    if (r < 0) {
        printf("fetch_data(%d) cancelled\n", f->param);
        return r;
    }
    if (f->fail) {
        printf("fetch_data(%d) failed\n", f->param);
        return -EIO;
    }
    printf("Done with %d\n", f->param);
    snprintf(f->result, sizeof(f->result), "Result of %d", f->param);
    return 0;
}

static void print_results(const char *label, struct fetch *f, ca_task **ts,
                          int n)
{
    printf("%s: [", label);
    for (int i = 0; i < n; i++) {
        int st = ca_task_status(ts[i]);
        if (st == 0)
            printf("%s'%s'", i ? ", " : "", f[i].result);
        else
            printf("%s%s", i ? ", " : "", ca_err_name(st));
    }
    printf("]\n");
}

static int run_gather(const char *label, struct fetch *f, int n)
{
    ca_task *ts[3];
    for (int i = 0; i < n; i++)
        if (!(ts[i] = ca_spawn(fetch_data, &f[i])))
            return -ENOMEM;
    double t0 = ca_now();
    int r = ca_gather(ts, (size_t)n, CA_GATHER_ALL); /* return_exceptions */
    print_results(label, f, ts, n);
    printf("  gather returned %s after %.2f s\n", r ? ca_err_name(r) : "0",
           ca_now() - t0);
    for (int i = 0; i < n; i++)
        ca_task_release(ts[i]);
    return 0;
}

static int run_group(const char *label, struct fetch *f, int n)
{
    ca_group *g;
    int r = ca_group_new(&g);
    if (r < 0)
        return r;
    ca_task *ts[3];
    for (int i = 0; i < n; i++)
        if ((r = ca_group_spawn(g, &ts[i], fetch_data, &f[i])) < 0)
            break;
    double t0 = ca_now();
    int w = ca_group_wait(g); /* the end of `async with TaskGroup()` */
    if (r == 0)
        print_results(label, f, ts, n);
    printf("  task group returned %s after %.2f s\n", w ? ca_err_name(w) : "0",
           ca_now() - t0);
    ca_group_free(g);
    return r;
}

static int amain(void *arg)
{
    (void)arg;
    printf("seed 003: gather vs TaskGroup (sleeps scaled 1/10)\n");
    struct fetch a[2] = {{1, 0, ""}, {2, 0, ""}};
    if (run_gather("Task Results", a, 2) < 0)
        return 1;
    struct fetch b[2] = {{1, 0, ""}, {2, 0, ""}};
    if (run_group("Task Group Results", b, 2) < 0)
        return 1;

    printf("-- one task fails: gather lets the others finish --\n");
    struct fetch c[3] = {{1, 1, ""}, {2, 0, ""}, {3, 0, ""}};
    if (run_gather("gather results", c, 3) < 0)
        return 1;
    printf("-- one task fails: the task group cancels the others --\n");
    struct fetch d[3] = {{1, 1, ""}, {2, 0, ""}, {3, 0, ""}};
    if (run_group("task group results", d, 3) < 0)
        return 1;
    return 0;
}

int main(void)
{
    int r = ca_run(amain, NULL);
    if (r != 0)
        fprintf(stderr, "seed003_gather_taskgroup: %s\n", ca_strerror(r));
    return r != 0;
}
