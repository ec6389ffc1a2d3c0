/*
 * sleepers_floor N: the floor of the `sleepers` benchmark on this machine,
 * as bench/echo_epoll.c is the floor of `echo`.
 *
 * Any runtime whose suspended tasks keep their own stacks needs at least
 * one committed page per sleeping task, and a task's sleep starts when it
 * first runs, in spawn order (as in asyncio).  This program does only that
 * part of the work, in a fresh process like bench_sleepers: it commits the
 * top page of N stack slots laid out as cawait lays them out (128 KiB
 * stacks below 64 KiB guard zones), one slot after the other, noting the
 * time t_i at which slot i is ready.  With the delays bench_sleepers draws
 * (the same generator and seed), no such runtime can finish before
 *
 *     floor = max over i of (t_i + delay_i)
 *
 * which it prints as
 *
 *     BENCH sleepers_floor pages <seconds> s
 *
 * Pages are committed the cheaper of two ways, each in its own fresh
 * mapping: a write to each page (a fault per page), and process_madvise
 * (MADV_POPULATE_WRITE) over batches of 64 pages as cawait's stack pool
 * does.  bench/run.sh prints the floor beside the sleepers figures.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bench_util.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define SLOT_STRIDE ((size_t)(128 + 64) * 1024)
#define BATCH 64

/* Commit the top page of every slot of a fresh mapping, in order, writing
 * each slot's ready time into t.  Returns 0, or -1 if this way is not
 * available here. */
static int commit_all(size_t n, int populate, double *t)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t bytes = n * SLOT_STRIDE;
    char *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return -1;
    int pidfd = -1;
#if defined(SYS_pidfd_open) && defined(SYS_process_madvise)
    if (populate)
        pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
#endif
    if (populate && pidfd < 0) {
        munmap(base, bytes);
        return -1;
    }
    int64_t t0 = bench_now_ns();
    for (size_t i = 0; i < n;) {
        size_t k = n - i < BATCH ? n - i : BATCH;
        if (populate) {
#if defined(SYS_process_madvise)
            struct iovec iov[BATCH];
            for (size_t j = 0; j < k; j++) {
                iov[j].iov_base = base + (i + j + 1) * SLOT_STRIDE - page;
                iov[j].iov_len = page;
            }
            long r = syscall(SYS_process_madvise, pidfd, iov, k,
                             MADV_POPULATE_WRITE, 0u);
            if (r != (long)(k * page)) {
                close(pidfd);
                munmap(base, bytes);
                return -1;
            }
#endif
        } else {
            for (size_t j = 0; j < k; j++)
                base[(i + j + 1) * SLOT_STRIDE - 64] = 1;
        }
        double now = (double)(bench_now_ns() - t0) / 1e9;
        for (size_t j = 0; j < k; j++)
            t[i + j] = now;
        i += k;
    }
    if (pidfd >= 0)
        close(pidfd);
    munmap(base, bytes);
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = bench_parse_n(argc, argv, 100000);
    double *delay = malloc(n * sizeof(*delay));
    double *t = malloc(n * sizeof(*t));
    if (!delay || !t) {
        fprintf(stderr, "sleepers_floor: out of memory\n");
        return 1;
    }
    bench_rng rng = bench_rng_new(42);
    for (size_t i = 0; i < n; i++)
        delay[i] = bench_rng_next(&rng);
    double best = -1;
    for (int populate = 0; populate <= 1; populate++) {
        if (commit_all(n, populate, t) < 0)
            continue;
        double floor_s = 0;
        for (size_t i = 0; i < n; i++)
            if (t[i] + delay[i] > floor_s)
                floor_s = t[i] + delay[i];
        if (best < 0 || floor_s < best)
            best = floor_s;
    }
    free(delay);
    free(t);
    if (best < 0) {
        fprintf(stderr, "sleepers_floor: could not map %zu slots\n", n);
        return 1;
    }
    bench_report("sleepers_floor", "pages", best, 4, "s");
    return 0;
}
