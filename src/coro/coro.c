/* Coroutine contexts: building the first frame of a new context. */
#include "coro/coro.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#ifndef CAWAIT_CORO_UCONTEXT

void ca__ctx_entry(void);
void ca__ctx_entry_start(void);

#if defined(__x86_64__)
/* Frame popped by ca__ctx_switch: mxcsr|fpucw, r15, r14, r13, r12, rbx, rbp,
 * return address.  After the final ret, rsp = sp + 64 must be 16-aligned so
 * that ca__ctx_entry's call leaves the callee with the ABI's alignment. */
static void *ctx_make(void *lo, size_t size, ca__coro_fn fn, void *arg)
{
    uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 64 - 16);
    sp[0] = 0x1F80u | ((uint64_t)0x037Fu << 32); /* MXCSR, x87 CW defaults */
    sp[1] = 0;                                   /* r15 */
    sp[2] = 0;                                   /* r14 */
    sp[3] = (uint64_t)(uintptr_t)arg;            /* r13 */
    sp[4] = (uint64_t)(uintptr_t)fn;             /* r12 */
    sp[5] = 0;                                   /* rbx */
    sp[6] = 0;                                   /* rbp: end of frame chain */
    sp[7] = (uint64_t)(uintptr_t)ca__ctx_entry_start; /* return address */
    sp[8] = 0;
    sp[9] = 0;
    return sp;
}
#elif defined(__aarch64__)
/* Frame popped by ca__ctx_switch: x19..x28, x29, x30, d8..d15 (160 bytes). */
static void *ctx_make(void *lo, size_t size, ca__coro_fn fn, void *arg)
{
    uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 160 - 16);
    memset(sp, 0, 160 + 16);
    sp[0] = (uint64_t)(uintptr_t)fn;             /* x19 */
    sp[1] = (uint64_t)(uintptr_t)arg;            /* x20 */
    sp[10] = 0;                                  /* x29 */
    sp[11] = (uint64_t)(uintptr_t)ca__ctx_entry_start; /* x30 */
    return sp;
}
#else
#error "no assembly context switch for this architecture: build with -DCAWAIT_CORO=ucontext"
#endif

int ca__coro_init(ca__coro *c, void *lo, size_t size, ca__coro_fn fn,
                  void *arg)
{
    c->sp = ctx_make(lo, size, fn, arg);
#ifdef CA_ASAN
    c->stack_lo = lo;
    c->stack_size = size;
    c->asan_fake = NULL;
#endif
    return 0;
}

void ca__coro_destroy(ca__coro *c)
{
    (void)c;
}

#else /* CAWAIT_CORO_UCONTEXT */

/* makecontext passes only ints: split the pointer in two. */
static void uc_entry(unsigned hi, unsigned lo)
{
    ca__coro *c = (ca__coro *)(uintptr_t)(((uint64_t)hi << 32) | lo);
    c->fn(c->arg);
    abort();
}

int ca__coro_init(ca__coro *c, void *lo, size_t size, ca__coro_fn fn,
                  void *arg)
{
    if (!c->uc) {
        c->uc = malloc(sizeof(*c->uc));
        if (!c->uc)
            return -ENOMEM;
    }
    if (getcontext(c->uc) < 0)
        return -errno;
    c->uc->uc_stack.ss_sp = lo;
    c->uc->uc_stack.ss_size = size;
    c->uc->uc_link = NULL;
    c->fn = fn;
    c->arg = arg;
    uint64_t p = (uint64_t)(uintptr_t)c;
    makecontext(c->uc, (void (*)(void))uc_entry, 2, (unsigned)(p >> 32),
                (unsigned)p);
#ifdef CA_ASAN
    c->stack_lo = lo;
    c->stack_size = size;
    c->asan_fake = NULL;
#endif
    return 0;
}

void ca__coro_destroy(ca__coro *c)
{
    free(c->uc);
    c->uc = NULL;
}

void ca__ctx_switch_uc(ca__coro *from, ca__coro *to)
{
    /* swapcontext also restores the mask saved with `to`: carry the
     * thread's current mask over instead, so a signal blocked by one task
     * (signalfd) stays blocked when another runs, as with the asm switch. */
    pthread_sigmask(SIG_SETMASK, NULL, &to->uc->uc_sigmask);
    swapcontext(from->uc, to->uc);
}

#endif

int ca__coro_init_thread(ca__coro *c)
{
    memset(c, 0, sizeof(*c));
#ifdef CAWAIT_CORO_UCONTEXT
    c->uc = malloc(sizeof(*c->uc));
    if (!c->uc)
        return -ENOMEM;
#endif
    pthread_attr_t attr;
    void *lo = NULL;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &lo, &size);
        pthread_attr_destroy(&attr);
    }
#ifdef CA_ASAN
    c->stack_lo = lo;
    c->stack_size = size;
#endif
    (void)lo;
    (void)size;
    return 0;
}
