/*
 * Helpers shared by the cawait benchmarks (header only: every .c file in bench/
 * is built into its own program).  Each benchmark prints lines of the form
 *
 *     BENCH <name> <impl> <value> <unit>
 *
 * and nothing else on stdout; bench/run.sh collects them.
 */
#ifndef CAWAIT_BENCH_UTIL_H
#define CAWAIT_BENCH_UTIL_H

#include <cawait.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Peak resident set size of this process in MiB (ru_maxrss is in KiB). */
static inline double bench_peak_rss_mib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1.0;
    return (double)ru.ru_maxrss / 1024.0;
}

/* The workload size: argv[1] if given, else def.  Exits on a bad value. */
static inline size_t bench_parse_n(int argc, char **argv, size_t def)
{
    if (argc < 2)
        return def;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(argv[1], &end, 10);
    if (argc > 2 || errno || end == argv[1] || *end || v == 0 ||
        v > (unsigned long long)SIZE_MAX / 64) {
        fprintf(stderr,
                "usage: %s [N]   (N: a positive integer, default %zu)\n",
                argv[0], def);
        exit(2);
    }
    return (size_t)v;
}

/*
 * Deterministic uniform random numbers: xorshift64* seeded with 42, so every
 * run (and every cawait bench) draws the same sequence.
 */
typedef struct bench_rng {
    uint64_t s;
} bench_rng;

static inline bench_rng bench_rng_new(uint64_t seed)
{
    bench_rng r = {seed ? seed : 42};
    return r;
}

/* Uniform in [0, 1), 53 random bits. */
static inline double bench_rng_next(bench_rng *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

/* One measured round: stores its figure in *value; 0 or a negative errno. */
typedef int (*bench_round_fn)(void *ctx, double *value);

/* Run `rounds` rounds and store the smallest figure in *best: on this
 * shared VM the same binary varies by up to 40% between rounds, so the
 * benchmarks that use this report their best round (their peers do too).
 * Returns 0 or the first error. */
static inline int bench_best_of(int rounds, bench_round_fn fn, void *ctx,
                                double *best)
{
    for (int i = 0; i < rounds; i++) {
        double v;
        int r = fn(ctx, &v);
        if (r < 0)
            return r;
        if (i == 0 || v < *best)
            *best = v;
    }
    return 0;
}

/* Print one result line and flush, so it survives a crash at teardown. */
static inline void bench_report(const char *name, const char *impl,
                                double value, int decimals, const char *unit)
{
    printf("BENCH %s %s %.*f %s\n", name, impl, decimals, value, unit);
    fflush(stdout);
}

/* Benchmark servers: lift the soft descriptor limit to the hard one (10k
 * connections). */
static inline void bench_raise_nofile(const char *name)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            fprintf(stderr, "%s: setrlimit(RLIMIT_NOFILE) failed\n", name);
    }
}

/* Serve fn on 127.0.0.1:port (0: any free port), print "listening on PORT"
 * (bench/run.sh waits for it), and close on SIGINT or SIGTERM, taken with
 * a signalfd while the task waits (no timer stays armed: a flag polled
 * with a sleep would make every epoll_wait set up a kernel hrtimer).  Run
 * it in a task. */
static inline int bench_serve(const char *name, unsigned port, ca_conn_fn fn)
{
    ca_server *srv;
    int r = ca_serve(&srv, "127.0.0.1", port, fn, NULL, NULL);
    if (r < 0) {
        fprintf(stderr, "%s: ca_serve: %s\n", name, ca_strerror(r));
        return r;
    }
    printf("listening on %d\n", ca_server_port(srv));
    fflush(stdout);
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    ca_signal_wait_set(&stop, -1, NULL); /* or cancelled by ca_run: the same */
    ca_server_close(srv, 1.0);
    return 0;
}

typedef struct bench_server {
    const char *name;
    unsigned port;
    ca_conn_fn fn;
} bench_server;

static inline int bench_server_task(void *arg)
{
    const bench_server *b = arg;
    return bench_serve(b->name, b->port, b->fn);
}

/* The whole life of a benchmark server process, from main: descriptor
 * limit raised, SIGPIPE ignored, bench_serve in a loop of its own.
 * Returns main's exit status (1, with a message, if the loop failed). */
static inline int bench_serve_main(const char *name, unsigned port,
                                   ca_conn_fn fn)
{
    bench_raise_nofile(name);
    signal(SIGPIPE, SIG_IGN);
    bench_server b = {name, port, fn};
    int r = ca_run(bench_server_task, &b);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", name, ca_strerror(r));
        return 1;
    }
    return 0;
}

#endif
