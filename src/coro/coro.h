/*
 * Coroutine contexts and stacks (internal).
 *
 * This layer knows nothing of loops or tasks.  It switches between contexts
 * and hands out stacks:
 *
 *   ca__coro   a suspended execution: a saved stack pointer (asm build) or a
 *              ucontext (fallback build), plus the bounds of its stack for
 *              AddressSanitizer.
 *   ca__stack  a task stack from the pool: mmap'd, committed lazily, with an
 *              overflow guard below it (see stack.c for the guard modes).
 */
#ifndef CA_CORO_H
#define CA_CORO_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define CA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CA_ASAN 1
#endif
#endif

#ifdef CA_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#ifdef CAWAIT_CORO_UCONTEXT
#include <ucontext.h>
#endif

typedef void (*ca__coro_fn)(void *arg);

typedef struct ca__coro {
#ifdef CAWAIT_CORO_UCONTEXT
    ucontext_t *uc;
    ca__coro_fn fn;
    void *arg;
#else
    void *sp;
#endif
#ifdef CA_ASAN
    void *stack_lo; /* bounds of the stack, for the fiber annotations */
    size_t stack_size;
    void *asan_fake;
#endif
} ca__coro;

/* Prepare c to run fn(arg) on [lo, lo + size) at its first switch-in.  fn
 * must never return: a finished coroutine switches away with
 * ca__coro_switch_final.  Returns 0 or -ENOMEM (ucontext build). */
int ca__coro_init(ca__coro *c, void *lo, size_t size, ca__coro_fn fn,
                  void *arg);
/* Describe the calling thread's own stack as a coroutine, the one that the
 * scheduler runs on.  Returns 0 or -ENOMEM. */
int ca__coro_init_thread(ca__coro *c);
/* Free what init allocated (ucontext build only). */
void ca__coro_destroy(ca__coro *c);

#ifndef CAWAIT_CORO_UCONTEXT
void ca__ctx_switch(void **save_sp, void *new_sp);
#else
void ca__ctx_switch_uc(ca__coro *from, ca__coro *to);
#endif

/* Suspend `from` and resume `to`.  Returns when something switches back to
 * `from`. */
static inline void ca__coro_switch(ca__coro *from, ca__coro *to)
{
#ifdef CA_ASAN
    __sanitizer_start_switch_fiber(&from->asan_fake, to->stack_lo,
                                   to->stack_size);
#endif
#ifdef CAWAIT_CORO_UCONTEXT
    ca__ctx_switch_uc(from, to);
#else
    ca__ctx_switch(&from->sp, to->sp);
#endif
#ifdef CA_ASAN
    __sanitizer_finish_switch_fiber(from->asan_fake, NULL, NULL);
#endif
}

/* Leave `from` for good and resume `to`; never returns. */
__attribute__((noreturn)) static inline void
ca__coro_switch_final(ca__coro *from, ca__coro *to)
{
#ifdef CA_ASAN
    __sanitizer_start_switch_fiber(NULL, to->stack_lo, to->stack_size);
#endif
#ifdef CAWAIT_CORO_UCONTEXT
    ca__ctx_switch_uc(from, to);
#else
    ca__ctx_switch(&from->sp, to->sp);
#endif
    __builtin_unreachable();
}

/* Call first thing in a coroutine's entry function. */
static inline void ca__coro_entered(ca__coro *self)
{
    (void)self;
#ifdef CA_ASAN
    __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
}

/* ------------------------------------------------------------------------ */
/* Stacks                                                                   */
/* ------------------------------------------------------------------------ */

enum ca__guard_mode {
    CA__GUARD_MADVISE = 1, /* MADV_GUARD_INSTALL: a guard that costs no VMA */
    CA__GUARD_MPROTECT,    /* PROT_NONE page: costs two VMAs per stack */
    CA__GUARD_CANARY,      /* a zero red zone checked at every switch */
};

typedef struct ca__stack_chunk ca__stack_chunk;

typedef struct ca__stack {
    void *lo;    /* lowest usable byte */
    size_t size; /* usable bytes */
    ca__stack_chunk *chunk;
    struct ca__stack *prev_free, *next_free;
    unsigned vg_id;
    uint8_t guard; /* enum ca__guard_mode, 0 until first handed out */
    uint8_t in_use;
} ca__stack;

/* Size of the guard (or red zone) below every stack. */
#define CA__STACK_GUARD (64u * 1024u)

typedef struct ca__stack_pool ca__stack_pool;

/* A per-loop pool of stacks of every requested size. */
ca__stack_pool *ca__stack_pool_new(void);
void ca__stack_pool_free(ca__stack_pool *p);
/* A stack of at least `size` usable bytes (rounded up to pages), or NULL. */
ca__stack *ca__stack_get(ca__stack_pool *p, size_t size);
/* Return a stack to the pool at time `now` (ns).  The caller has checked
 * the red zone of a canary-mode stack with ca__stack_zone_check. */
void ca__stack_put(ca__stack_pool *p, ca__stack *s, int64_t now);

/* Unmap up to max_chunks chunks whose stacks have all been free for at
 * least CA__STACK_TRIM_AGE, keeping a reserve; call when idle.  Returns how
 * many were released. */
#define CA__STACK_TRIM_AGE (1000LL * 1000 * 1000)
int ca__stack_pool_trim(ca__stack_pool *p, int max_chunks, int64_t now);

/* For canary-mode stacks: 0 if the saved stack pointer sp and the red zone
 * are intact, -1 if the stack overflowed. */
int ca__stack_check(const ca__stack *s, const void *sp);
static inline int ca__stack_needs_check(const ca__stack *s)
{
    return s->guard == CA__GUARD_CANARY;
}

/* The process-wide guard mode (detected once; $CAWAIT_STACK_GUARD=madvise,
 * mprotect or canary forces one for testing). */
enum ca__guard_mode ca__stack_guard_mode(void);
const char *ca__stack_guard_name(enum ca__guard_mode m);

/*
 * Overflow reporting.  The SIGSEGV handler (installed once, on an alternate
 * stack per loop thread) asks the layer above whether a fault address lies in
 * the guard of the running task's stack; if so the hook writes a one-line
 * description of the task into buf and the handler prints it and dies.
 */
typedef int (*ca__overflow_hook)(void *fault_addr, void *sp, char *buf,
                                 size_t len);
void ca__stack_set_overflow_hook(ca__overflow_hook hook);
/* Install the handler (once per process) and an alternate signal stack for
 * this thread; *altstack receives what to pass to ca__stack_thread_done. */
int ca__stack_thread_init(void **altstack);
void ca__stack_thread_done(void *altstack);
/* 1 if addr lies in the guard zone below s. */
int ca__stack_in_guard(const ca__stack *s, const void *addr);
/* 1 if a fault at addr with stack pointer sp is an overflow of s: addr in
 * its guard, or sp below its lowest usable byte (a frame that jumped over
 * the guard, or a canary stack that ran off its red zone). */
int ca__stack_is_overflow(const ca__stack *s, const void *addr,
                          const void *sp);
/* 0 if the red zone of a canary-mode stack is intact, else -1. */
int ca__stack_zone_check(const ca__stack *s);
/* Print "cawait: stack overflow in <desc>" and abort (canary detection). */
__attribute__((noreturn)) void ca__stack_overflow_abort(const char *desc);

#endif
