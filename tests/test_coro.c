/* Coroutine layer: context switch, FP control state, stacks, guards. */
#include "coro/coro.h"
#include "runner.h"

#include <fenv.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static ca__coro main_ctx, co_a;
static long counter;

static void ping(void *arg)
{
    ca__coro_entered(&co_a);
    long n = (long)arg;
    volatile double acc = 1.5; /* a callee-saved FP value across switches */
    for (long i = 0; i < n; i++) {
        counter++;
        acc *= 1.0;
        ca__coro_switch(&co_a, &main_ctx);
    }
    if (acc != 1.5)
        counter = -1000000;
    ca__coro_switch_final(&co_a, &main_ctx);
}

static void test_switch_pingpong(void)
{
    ca__stack_pool *p = ca__stack_pool_new();
    ASSERT(p);
    ASSERT_EQ(ca__coro_init_thread(&main_ctx), 0);
    ca__stack *s = ca__stack_get(p, 64 * 1024);
    ASSERT(s);
    ASSERT_EQ(ca__coro_init(&co_a, s->lo, s->size, ping, (void *)1000L), 0);
    long local = 42;
    for (int i = 0; i < 1001; i++)
        ca__coro_switch(&main_ctx, &co_a);
    ASSERT_EQ(counter, 1000);
    ASSERT_EQ(local, 42);
    ca__coro_destroy(&co_a);
    ca__coro_destroy(&main_ctx);
    ca__stack_put(p, s, 0);
    ca__stack_pool_free(p);
}

/* The MXCSR / x87 control word (x86-64) and FPCR state that the ABI
 * requires preserved across calls must stay per-context. */
#if defined(__x86_64__) && !defined(CAWAIT_CORO_UCONTEXT)
static ca__coro co_b;
static int entered;

/* MXCSR's rounding-control bits (SSE arithmetic), apart from the x87 control
 * word that fegetround reads. */
static unsigned mxcsr_rounding(void)
{
    return __builtin_ia32_stmxcsr() & 0x6000u;
}

static void round_up(void *arg)
{
    (void)arg;
    ca__coro_entered(&co_b);
    fesetround(FE_UPWARD);
    entered = fegetround() == FE_UPWARD && mxcsr_rounding() == 0x4000;
    ca__coro_switch(&co_b, &main_ctx);
    entered += fegetround() == FE_UPWARD && mxcsr_rounding() == 0x4000;
    ca__coro_switch_final(&co_b, &main_ctx);
}
#endif

static void test_fp_control_preserved(void)
{
#if defined(__x86_64__) && !defined(CAWAIT_CORO_UCONTEXT)
    ca__stack_pool *p = ca__stack_pool_new();
    ASSERT_EQ(ca__coro_init_thread(&main_ctx), 0);
    ca__stack *s = ca__stack_get(p, 64 * 1024);
    ASSERT_EQ(ca__coro_init(&co_b, s->lo, s->size, round_up, NULL), 0);
    ASSERT_EQ(fegetround(), FE_TONEAREST);
    ca__coro_switch(&main_ctx, &co_b);
    ASSERT_EQ(entered, 1);
    ASSERT_EQ(fegetround(), FE_TONEAREST);
    ASSERT_EQ(mxcsr_rounding(), 0);
    ca__coro_switch(&main_ctx, &co_b);
    ASSERT_EQ(entered, 2);
    ASSERT_EQ(fegetround(), FE_TONEAREST);
    ASSERT_EQ(mxcsr_rounding(), 0);
    ca__stack_put(p, s, 0);
    ca__stack_pool_free(p);
#else
    SKIP("control words are saved only by the x86-64 switch");
#endif
}

static void test_stack_pool_reuse(void)
{
    ca__stack_pool *p = ca__stack_pool_new();
    ca__stack *a = ca__stack_get(p, 100000);
    ASSERT(a);
    ASSERT_EQ(a->size % 4096, 0);
    ASSERT_GE(a->size, 100000);
    ASSERT_EQ((uintptr_t)a->lo % 4096, 0);
    ca__stack_put(p, a, 0);
    ca__stack *b = ca__stack_get(p, 100000);
    ASSERT(a == b); /* LIFO: the hot stack comes back */
    ca__stack *c = ca__stack_get(p, 16384);
    ASSERT(c && c != b);
    /* Touch every byte: lazily committed, fully usable. */
    memset(b->lo, 0xab, b->size);
    memset(c->lo, 0xcd, c->size);
    ca__stack_put(p, b, 0);
    ca__stack_put(p, c, 0);
    ca__stack_pool_free(p);
}

/* The stack put back last waits in a spare slot: the next get of its size
 * takes it, a get of another size does not, and the next put moves it on
 * to its free list. */
static void test_stack_pool_spare(void)
{
    ca__stack_pool *p = ca__stack_pool_new();
    ca__stack *a = ca__stack_get(p, 64 * 1024);
    ca__stack *b = ca__stack_get(p, 128 * 1024);
    ASSERT(a && b && a != b);
    ca__stack_put(p, a, 0); /* a: the spare */
    ca__stack *c = ca__stack_get(p, 128 * 1024);
    ASSERT(c && c != a && c != b); /* another size: not the spare */
    ca__stack *d = ca__stack_get(p, 64 * 1024);
    ASSERT(d == a); /* the spare */
    ca__stack_put(p, b, 0);
    ca__stack_put(p, c, 0); /* c: the spare; b: its free list */
    ASSERT(ca__stack_get(p, 128 * 1024) == c);
    ASSERT(ca__stack_get(p, 128 * 1024) == b);
    memset(b->lo, 0x5a, b->size); /* all of it usable */
    ca__stack_put(p, a, 0);
    ca__stack_put(p, b, 0);
    ca__stack_put(p, c, 0);
    ca__stack_pool_free(p);
}

static void test_stack_pool_many(void)
{
    enum { N = 5000 };
    static ca__stack *s[N];
    ca__stack_pool *p = ca__stack_pool_new();
    for (int i = 0; i < N; i++) {
        s[i] = ca__stack_get(p, 32 * 1024);
        ASSERT(s[i]);
        *(volatile char *)((char *)s[i]->lo + s[i]->size - 1) = 1;
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < i + 3 && j < N; j++)
            ASSERT(s[i] != s[j]);
    /* Release in an interleaved order so whole chunks become free. */
    for (int i = 0; i < N; i += 2)
        ca__stack_put(p, s[i], 0);
    for (int i = 1; i < N; i += 2)
        ca__stack_put(p, s[i], 0);
    for (int i = 0; i < N; i++)
        ASSERT(ca__stack_get(p, 32 * 1024));
    ca__stack_pool_free(p);
}

/* Whole free chunks are released by trim, keeping a reserve. */
static void test_stack_pool_trim(void)
{
    enum { N = 3000 };
    static ca__stack *s[N];
    ca__stack_pool *p = ca__stack_pool_new();
    for (int i = 0; i < N; i++)
        ASSERT((s[i] = ca__stack_get(p, 256 * 1024)));
    ASSERT_EQ(ca__stack_pool_trim(p, 100, 0), 0); /* all in use */
    for (int i = 0; i < N; i++)
        ca__stack_put(p, s[i], 0);
    /* freed at t=0: too young to release at 0.5 s, released at 1 s */
    ASSERT_EQ(ca__stack_pool_trim(p, 1000, CA__STACK_TRIM_AGE / 2), 0);
    int released = ca__stack_pool_trim(p, 1000, CA__STACK_TRIM_AGE);
    ASSERT_GT(released, 0);
    ASSERT_EQ(ca__stack_pool_trim(p, 1000, CA__STACK_TRIM_AGE), 0); /* reserve */
    /* The pool still works after trimming. */
    for (int i = 0; i < N; i++)
        ASSERT((s[i] = ca__stack_get(p, 256 * 1024)));
    for (int i = 0; i < N; i++)
        ca__stack_put(p, s[i], 0);
    ca__stack_pool_free(p);
}

static void test_guard_detection(void)
{
    enum ca__guard_mode m = ca__stack_guard_mode();
    printf("guard mode: %s\n", ca__stack_guard_name(m));
    ASSERT(m == CA__GUARD_MADVISE || m == CA__GUARD_MPROTECT ||
           m == CA__GUARD_CANARY);
    ca__stack_pool *p = ca__stack_pool_new();
    ca__stack *s = ca__stack_get(p, 64 * 1024);
    ASSERT(ca__stack_in_guard(s, (char *)s->lo - 1));
    ASSERT(!ca__stack_in_guard(s, s->lo));
    ASSERT(ca__stack_in_guard(s, (char *)s->lo - CA__STACK_GUARD));
    ASSERT(!ca__stack_in_guard(s, (char *)s->lo - CA__STACK_GUARD - 1));
    ca__stack_put(p, s, 0);
    ca__stack_pool_free(p);
}

/* A write just below a guarded stack faults instead of corrupting. */
static int child_guard_write(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    ca__stack_pool *p = ca__stack_pool_new();
    ca__stack *s = ca__stack_get(p, 64 * 1024);
    fprintf(stderr, "mode=%s\n", ca__stack_guard_name(s->guard));
    fflush(stderr);
    if (s->guard == CA__GUARD_CANARY)
        return 3;
    *(volatile char *)((char *)s->lo - 1) = 1;
    return 0; /* not reached */
}

/* Died of SIGSEGV, or (AddressSanitizer) reported a SEGV and exited. */
static int died_of_segv(int st, const char *err)
{
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV)
        return 1;
    return test_is_instrumented() && WIFEXITED(st) &&
           WEXITSTATUS(st) != 0 && strstr(err, "SEGV") != NULL;
}

static void test_guard_faults(void)
{
    char buf[8192];
    int st = run_child("guard_write", NULL, buf, sizeof(buf));
    ASSERT(died_of_segv(st, buf));
    st = run_child("guard_write", "CAWAIT_STACK_GUARD=mprotect", buf,
                   sizeof(buf));
    ASSERT(strstr(buf, "mode=mprotect"));
    ASSERT(died_of_segv(st, buf));
}

static void test_canary_check(void)
{
    /* The checker on a stack laid out in plain memory: red zone, then the
     * usable area.  Intact, then an sp below lo, then a dirty red zone. */
    size_t size = 64 * 1024;
    char *mem = calloc(1, CA__STACK_GUARD + size);
    ASSERT(mem);
    ca__stack fake = {.lo = mem + CA__STACK_GUARD, .size = size,
                      .guard = CA__GUARD_CANARY};
    ASSERT(ca__stack_needs_check(&fake));
    ASSERT_EQ(ca__stack_check(&fake, mem + CA__STACK_GUARD + 1024), 0);
    ASSERT_EQ(ca__stack_check(&fake, mem + CA__STACK_GUARD - 8), -1);
    mem[CA__STACK_GUARD - 3] = 1;
    ASSERT_EQ(ca__stack_check(&fake, mem + CA__STACK_GUARD + 1024), -1);
    free(mem);
}

static const struct test_case tests[] = {
    {"switch_pingpong", test_switch_pingpong, 10, 0},
    {"fp_control_preserved", test_fp_control_preserved, 10, 0},
    {"stack_pool_reuse", test_stack_pool_reuse, 10, 0},
    {"stack_pool_spare", test_stack_pool_spare, 10, 0},
    {"stack_pool_many", test_stack_pool_many, 30, 0},
    {"stack_pool_trim", test_stack_pool_trim, 30, 0},
    {"guard_detection", test_guard_detection, 10, 0},
    {"guard_faults", test_guard_faults, 30, 0},
    {"canary_check", test_canary_check, 10, 0},
    {NULL, NULL, 0, 0},
};

static const struct test_child children[] = {
    {"guard_write", child_guard_write},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, children);
}
