/*
 * A small test runner: every test runs in its own forked process with a
 * timeout, and fails if it leaves a file descriptor open.
 *
 *   ./test_x              run all tests
 *   ./test_x NAME...      run the named tests (forked)
 *   ./test_x -i NAME      run one test in this process (for gdb)
 *   ./test_x --list       list the tests
 *   ./test_x --child NAME run a child helper (tests that re-execute
 *                         themselves to observe a crash)
 *
 * Environment: CAWAIT_TEST_LIGHT=1 skips tests marked heavy (valgrind);
 * CAWAIT_TEST_TIMEOUT_SCALE=N multiplies every timeout.
 * A test that misses a wall-clock bound (ASSERT_TIME_LT) runs once more.
 * A test that cannot run here calls SKIP("why") (exit code 77).
 */
#ifndef CA_TEST_RUNNER_H
#define CA_TEST_RUNNER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);

struct test_case {
    const char *name;
    test_fn fn;
    int timeout_s; /* 0: 30 s */
    int heavy;     /* skipped when CAWAIT_TEST_LIGHT=1 */
};

struct test_child {
    const char *name;
    int (*fn)(int argc, char **argv);
};

int runner_main(int argc, char **argv, const struct test_case *tests,
                const struct test_child *children);

/* Run this program's child helper `name` with extra env "K=V" (or NULL),
 * capture its stderr (up to cap bytes into buf) and return the raw wait
 * status. */
int run_child(const char *name, const char *env, char *buf, size_t cap);

/* Make a fresh private directory /tmp/cawait-<name>.<random> (mkdtemp) into
 * buf (cap bytes); fails the test if it cannot. */
void test_tmpdir(char *buf, size_t cap, const char *name);

/* Open file descriptors of this process (-1 if /proc is unreadable). */
int test_count_fds(void);

/* Bytes the allocator has handed out and not had back (ASan's own count
 * under ASan, where glibc's arenas are unused; 0 under valgrind, which does
 * not keep mallinfo2). */
double test_heap_in_use(void);

/* Resident set size in bytes (/proc/self/statm), -1 if unreadable. */
double test_rss_bytes(void);

/* 1 when running under AddressSanitizer or valgrind (heavier tests shrink). */
int test_is_instrumented(void);

#define FAILF(...)                                                             \
    do {                                                                       \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                        \
        fprintf(stderr, __VA_ARGS__);                                          \
        fprintf(stderr, "\n");                                                 \
        exit(1);                                                               \
    } while (0)

#define ASSERT(c)                                                              \
    do {                                                                       \
        if (!(c))                                                              \
            FAILF("assertion failed: %s", #c);                                 \
    } while (0)

#define ASSERT_CMP(a, op, b)                                                   \
    do {                                                                       \
        long double a_ = (long double)(a), b_ = (long double)(b);              \
        if (!(a_ op b_))                                                       \
            FAILF("assertion failed: %s %s %s (%.6Lg vs %.6Lg)", #a, #op, #b,  \
                  a_, b_);                                                     \
    } while (0)
#define ASSERT_EQ(a, b) ASSERT_CMP(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_CMP(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_CMP(a, <, b)
#define ASSERT_LE(a, b) ASSERT_CMP(a, <=, b)
#define ASSERT_GT(a, b) ASSERT_CMP(a, >, b)
#define ASSERT_GE(a, b) ASSERT_CMP(a, >=, b)

/* A wall-clock upper bound: "this took less than b seconds".  A shared host
 * can stall any process for a fraction of a second, so a miss exits with
 * TEST_EXIT_TIMING and the runner runs the test once more; only a second
 * miss fails it.  Lower bounds (a sleep never ends early) and every other
 * assertion fail at once. */
#define TEST_EXIT_TIMING 75
#define ASSERT_TIME_LT(a, b)                                                   \
    do {                                                                       \
        double a_ = (double)(a), b_ = (double)(b);                             \
        if (!(a_ < b_)) {                                                      \
            fprintf(stderr,                                                    \
                    "%s:%d: timing bound missed: %s < %s (%.6g vs "            \
                    "%.6g)\n",                                                 \
                    __FILE__, __LINE__, #a, #b, a_, b_);                       \
            exit(TEST_EXIT_TIMING);                                            \
        }                                                                      \
    } while (0)

#define ASSERT_STREQ(a, b)                                                     \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (strcmp(a_, b_) != 0)                                               \
            FAILF("assertion failed: %s == %s (\"%s\" vs \"%s\")", #a, #b,     \
                  a_, b_);                                                     \
    } while (0)

#define ASSERT_NEAR(a, b, tol)                                                 \
    do {                                                                       \
        double a_ = (a), b_ = (b);                                             \
        if (a_ < b_ - (tol) || a_ > b_ + (tol))                                \
            FAILF("assertion failed: %s ~ %s (%.4f vs %.4f, tol %.4f)", #a,    \
                  #b, a_, b_, (double)(tol));                                  \
    } while (0)

#define SKIP(why)                                                              \
    do {                                                                       \
        fprintf(stderr, "skip: %s\n", why);                                    \
        exit(77);                                                              \
    } while (0)

#endif
