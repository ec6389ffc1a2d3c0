/*
 * Task stacks: mmap'd in chunks, committed lazily, pooled, guarded.
 *
 * A chunk is one anonymous MAP_NORESERVE mapping holding n stacks, each with
 * a CA__STACK_GUARD zone below it.  Only the pages a task touches are ever
 * committed, so a task that uses 3 KiB of stack costs one page of memory.
 * Free stacks go on a LIFO list per size so that the next task reuses the
 * stack that is hot in the cache; a chunk whose stacks are all free is
 * unmapped once enough other free stacks remain.
 *
 * Overflow detection, in order of preference (chosen once per process):
 *
 *  - madvise(MADV_GUARD_INSTALL) (Linux 6.13+): a guard region that faults
 *    like PROT_NONE but does not split the mapping, so a million guarded
 *    stacks fit under the default vm.max_map_count of 65530.
 *  - mprotect(PROT_NONE) guards while they are cheap: each costs two VMAs,
 *    so they are used for the first max_map_count/4 stacks only.
 *  - beyond that, a red zone that must stay zero: it is never written in
 *    normal use (reading it maps the shared zero page and costs no memory),
 *    and it is checked, with the saved stack pointer, every time a task
 *    switches out and when its stack is returned.
 *
 * A fault in a guard is turned into a one-line report naming the task by a
 * SIGSEGV handler running on an alternate signal stack.
 */
#include "coro/coro.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

#ifdef CAWAIT_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#else
#define VALGRIND_STACK_REGISTER(lo, hi) 0
#define VALGRIND_STACK_DEREGISTER(id) ((void)(id))
#endif

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
/* Fresh slots are prepared this many at a time. */
#define PREP_BATCH 64u

#define CHUNK_BYTES (64u * 1024u * 1024u)
#define CHUNK_MIN_STACKS 4u
#define CHUNK_MAX_STACKS 1024u
/* Bytes of the red zone (just below lo) verified when a canary stack is
 * returned; the whole zone would cost 16 page reads per task. */
#define CANARY_SCAN 4096u

struct ca__stack_chunk {
    char *base;
    size_t bytes;
    size_t stride;
    unsigned n;        /* stacks in the chunk */
    unsigned fresh;    /* slots [fresh, n) were never handed out */
    unsigned prepared; /* slots [0, prepared) had their batch prepared */
    unsigned in_use;   /* stacks handed out now */
    unsigned mprotect_guards;
    struct ca__stack_chunk *prev, *next;
    struct ca__stack_chunk *empty_prev, *empty_next; /* in_use == 0 list */
    int on_empty;
    int64_t empty_since; /* when in_use last dropped to 0 */
    struct size_class *cls;
    ca__stack slots[];
};

struct size_class {
    size_t size; /* usable bytes per stack */
    ca__stack *free_head;
    size_t nfree;
    ca__stack_chunk *chunks; /* all chunks of this size */
    ca__stack_chunk *fresh;  /* chunk with never-used slots, if any */
    ca__stack_chunk *empty;  /* chunks with every handed-out stack free */
};

struct ca__stack_pool {
    struct size_class *classes;
    size_t nclasses, cap;
    size_t last; /* index of the class used last: nearly always the one */
    /* The stack put back last, still counted in use: a task that finishes
     * and the next one to start trade it without touching the free lists. */
    ca__stack *spare;
};

static size_t page_size;
static enum ca__guard_mode guard_mode;
static int have_process_madvise = 1;
static atomic_long mprotect_guards;
static long mprotect_budget;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static void detect_guard_mode(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    long max_maps = 65530;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (f) {
        if (fscanf(f, "%ld", &max_maps) != 1)
            max_maps = 65530;
        fclose(f);
    }
    mprotect_budget = max_maps / 4;
#ifdef CAWAIT_HAVE_VALGRIND_H
    /* valgrind 3.19 knows neither pidfd_open nor process_madvise. */
    if (RUNNING_ON_VALGRIND)
        have_process_madvise = 0;
#endif

    const char *env = getenv("CAWAIT_STACK_GUARD");
    if (env && strcmp(env, "mprotect") == 0) {
        guard_mode = CA__GUARD_MPROTECT;
        return;
    }
    if (env && strcmp(env, "canary") == 0) {
        guard_mode = CA__GUARD_CANARY;
        return;
    }
    guard_mode = CA__GUARD_MPROTECT;
    void *p = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return;
    /* Trust the guard only if it really faults: some layers (qemu-user)
     * accept any madvise and do nothing.  The kernel reports a guarded
     * source page to write() as EFAULT instead of killing us. */
    if (madvise(p, page_size, MADV_GUARD_INSTALL) == 0) {
        int fds[2];
        if (pipe(fds) == 0) {
            ssize_t w = write(fds[1], p, 1);
            if (w < 0 && errno == EFAULT)
                guard_mode = CA__GUARD_MADVISE;
            close(fds[0]);
            close(fds[1]);
        }
    }
    munmap(p, 2 * page_size);
}

enum ca__guard_mode ca__stack_guard_mode(void)
{
    pthread_once(&detect_once, detect_guard_mode);
    return guard_mode;
}

const char *ca__stack_guard_name(enum ca__guard_mode m)
{
    switch (m) {
    case CA__GUARD_MADVISE:
        return "madvise";
    case CA__GUARD_MPROTECT:
        return "mprotect";
    case CA__GUARD_CANARY:
        return "canary";
    }
    return "?";
}

ca__stack_pool *ca__stack_pool_new(void)
{
    ca__stack_guard_mode();
    return calloc(1, sizeof(ca__stack_pool));
}

static struct size_class *find_class(ca__stack_pool *p, size_t size)
{
    if (p->last < p->nclasses && p->classes[p->last].size == size)
        return &p->classes[p->last];
    for (size_t i = 0; i < p->nclasses; i++)
        if (p->classes[i].size == size) {
            p->last = i;
            return &p->classes[i];
        }
    if (p->nclasses == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4;
        struct size_class *c = realloc(p->classes, cap * sizeof(*c));
        if (!c)
            return NULL;
        p->classes = c;
        p->cap = cap;
        /* Chunks point at their class: fix them after the move. */
        for (size_t i = 0; i < p->nclasses; i++)
            for (ca__stack_chunk *ch = c[i].chunks; ch; ch = ch->next)
                ch->cls = &c[i];
    }
    struct size_class *c = &p->classes[p->nclasses++];
    memset(c, 0, sizeof(*c));
    c->size = size;
    return c;
}

static ca__stack_chunk *chunk_new(struct size_class *c)
{
    size_t stride = c->size + CA__STACK_GUARD;
    size_t n = CHUNK_BYTES / stride;
    if (n < CHUNK_MIN_STACKS)
        n = CHUNK_MIN_STACKS;
    if (n > CHUNK_MAX_STACKS)
        n = CHUNK_MAX_STACKS;
    ca__stack_chunk *ch = calloc(1, sizeof(*ch) + n * sizeof(ca__stack));
    if (!ch)
        return NULL;
    ch->bytes = n * stride;
    ch->base = mmap(NULL, ch->bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                    -1, 0);
    if (ch->base == MAP_FAILED) {
        free(ch);
        return NULL;
    }
    ch->stride = stride;
    ch->n = (unsigned)n;
    ch->cls = c;
    ch->next = c->chunks;
    if (c->chunks)
        c->chunks->prev = ch;
    c->chunks = ch;
    return ch;
}

/* One process_madvise call for `advice` over one range per slot in
 * [from, from + n): the guard zones, or the top page of each stack.  Returns
 * 0 if every range was advised. */
static int batch_advise(int pidfd, ca__stack_chunk *ch, unsigned from,
                        unsigned n, int advice)
{
#if defined(SYS_process_madvise)
    struct iovec iov[PREP_BATCH];
    size_t want = 0;
    for (unsigned k = 0; k < n; k++) {
        char *guard = ch->base + (size_t)(from + k) * ch->stride;
        if (advice == MADV_GUARD_INSTALL) {
            iov[k].iov_base = guard;
            iov[k].iov_len = CA__STACK_GUARD;
        } else {
            iov[k].iov_base = guard + ch->stride - page_size;
            iov[k].iov_len = page_size;
        }
        want += iov[k].iov_len;
    }
    long r = syscall(SYS_process_madvise, pidfd, iov, (size_t)n, advice, 0u);
    if (r < 0 && (errno == ENOSYS || errno == EPERM))
        have_process_madvise = 0;
    return r == (long)want ? 0 : -1;
#else
    (void)pidfd;
    (void)ch;
    (void)from;
    (void)n;
    (void)advice;
    return -1;
#endif
}

/*
 * Prepare the batch of fresh slots starting at `from`: install their guards
 * and commit the top page of each (where a task's first frames go) with two
 * system calls for the whole batch instead of a call and a page fault per
 * stack.  Where the kernel (or valgrind) refuses, slot_prepare does it one
 * slot at a time.
 */
static void batch_prepare(ca__stack_chunk *ch, unsigned from)
{
    unsigned n = ch->n - from < PREP_BATCH ? ch->n - from : PREP_BATCH;
    ch->prepared = from + n;
    if (guard_mode != CA__GUARD_MADVISE || !have_process_madvise)
        return;
#if defined(SYS_pidfd_open)
    /* A pidfd for ourselves, held only for the two calls: a library must
     * not keep descriptors the program does not know about. */
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) {
        have_process_madvise = 0;
        return;
    }
    if (batch_advise(pidfd, ch, from, n, MADV_GUARD_INSTALL) == 0)
        for (unsigned k = 0; k < n; k++)
            ch->slots[from + k].guard = CA__GUARD_MADVISE;
    batch_advise(pidfd, ch, from, n, MADV_POPULATE_WRITE);
    close(pidfd);
#else
    have_process_madvise = 0;
#endif
}

/* Guard one stack the slow way: madvise, else mprotect while the VMA
 * budget lasts, else the red zone.  Returns the mode used. */
static enum ca__guard_mode guard_one(ca__stack_chunk *ch, char *guard)
{
    if (guard_mode == CA__GUARD_MADVISE &&
        madvise(guard, CA__STACK_GUARD, MADV_GUARD_INSTALL) == 0)
        return CA__GUARD_MADVISE;
    if (guard_mode != CA__GUARD_CANARY &&
        atomic_fetch_add(&mprotect_guards, 1) < mprotect_budget) {
        if (mprotect(guard, CA__STACK_GUARD, PROT_NONE) == 0) {
            ch->mprotect_guards++;
            return CA__GUARD_MPROTECT;
        }
        atomic_fetch_sub(&mprotect_guards, 1);
    }
    return CA__GUARD_CANARY;
}

/* Set up a slot the first time it is handed out. */
static void slot_prepare(ca__stack_chunk *ch, unsigned i)
{
    ca__stack *s = &ch->slots[i];
    char *guard = ch->base + (size_t)i * ch->stride;
    if (i >= ch->prepared)
        batch_prepare(ch, i);
    s->lo = guard + CA__STACK_GUARD;
    s->size = ch->cls->size;
    s->chunk = ch;
    if (s->guard != CA__GUARD_MADVISE) /* the batch may have done it */
        s->guard = (uint8_t)guard_one(ch, guard);
    s->vg_id = VALGRIND_STACK_REGISTER(s->lo, (char *)s->lo + s->size);
}

static void free_list_remove(struct size_class *c, ca__stack *s)
{
    if (s->prev_free)
        s->prev_free->next_free = s->next_free;
    else
        c->free_head = s->next_free;
    if (s->next_free)
        s->next_free->prev_free = s->prev_free;
    s->prev_free = s->next_free = NULL;
    c->nfree--;
}

static void empty_add(struct size_class *c, ca__stack_chunk *ch)
{
    ch->on_empty = 1;
    ch->empty_prev = NULL;
    ch->empty_next = c->empty;
    if (c->empty)
        c->empty->empty_prev = ch;
    c->empty = ch;
}

static void empty_remove(struct size_class *c, ca__stack_chunk *ch)
{
    if (!ch->on_empty)
        return;
    ch->on_empty = 0;
    if (ch->empty_prev)
        ch->empty_prev->empty_next = ch->empty_next;
    else
        c->empty = ch->empty_next;
    if (ch->empty_next)
        ch->empty_next->empty_prev = ch->empty_prev;
}

static void chunk_release(struct size_class *c, ca__stack_chunk *ch)
{
    empty_remove(c, ch);
    for (unsigned i = 0; i < ch->fresh; i++) {
        free_list_remove(c, &ch->slots[i]);
        VALGRIND_STACK_DEREGISTER(ch->slots[i].vg_id);
    }
    if (c->fresh == ch)
        c->fresh = NULL;
    if (ch->prev)
        ch->prev->next = ch->next;
    else
        c->chunks = ch->next;
    if (ch->next)
        ch->next->prev = ch->prev;
    atomic_fetch_sub(&mprotect_guards, (long)ch->mprotect_guards);
    munmap(ch->base, ch->bytes);
    free(ch);
}

ca__stack *ca__stack_get(ca__stack_pool *p, size_t size)
{
    size = (size + page_size - 1) & ~(page_size - 1);
    ca__stack *spare = p->spare;
    if (spare && spare->size == size) {
        p->spare = NULL;
        return spare;
    }
    struct size_class *c = find_class(p, size);
    if (!c)
        return NULL;
    ca__stack *s = c->free_head;
    if (s) {
        free_list_remove(c, s);
    } else {
        ca__stack_chunk *ch = c->fresh;
        if (!ch || ch->fresh == ch->n) {
            ch = chunk_new(c);
            if (!ch)
                return NULL;
            c->fresh = ch;
        }
        unsigned i = ch->fresh++;
        slot_prepare(ch, i);
        s = &ch->slots[i];
        if (ch->fresh == ch->n)
            c->fresh = NULL;
    }
    s->in_use = 1;
    if (s->chunk->in_use++ == 0)
        empty_remove(c, s->chunk);
    return s;
}

int ca__stack_zone_check(const ca__stack *s)
{
    if (s->guard != CA__GUARD_CANARY)
        return 0;
    const uint64_t *w = (const uint64_t *)((const char *)s->lo - CANARY_SCAN);
    for (size_t i = 0; i < CANARY_SCAN / sizeof(*w); i++)
        if (w[i])
            return -1;
    const uint64_t *bottom =
        (const uint64_t *)((const char *)s->lo - CA__STACK_GUARD);
    return bottom[0] == 0 ? 0 : -1;
}

int ca__stack_check(const ca__stack *s, const void *sp)
{
    const char *lo = s->lo;
    if ((const char *)sp < lo || (const char *)sp > lo + s->size)
        return -1;
    const uint64_t *top = (const uint64_t *)(lo - 64);
    for (int i = 0; i < 8; i++)
        if (top[i])
            return -1;
    return 0;
}

/* Back on its size class's free list. */
static void stack_release(ca__stack *s, int64_t now)
{
    ca__stack_chunk *ch = s->chunk;
    struct size_class *c = ch->cls;
    s->in_use = 0;
    s->prev_free = NULL;
    s->next_free = c->free_head;
    if (c->free_head)
        c->free_head->prev_free = s;
    c->free_head = s;
    c->nfree++;
    /* A wholly free chunk is given back later, by ca__stack_pool_trim when
     * the loop is idle: unmapping here would put munmap on the path of the
     * tasks finishing now, and their successors would fault the memory in
     * again. */
    if (--ch->in_use == 0 && !ch->on_empty && ch->fresh > 0) {
        ch->empty_since = now;
        empty_add(c, ch);
    }
}

void ca__stack_put(ca__stack_pool *p, ca__stack *s, int64_t now)
{
    ca__stack *old = p->spare;
    p->spare = s;
    if (old)
        stack_release(old, now);
}

int ca__stack_pool_trim(ca__stack_pool *p, int max_chunks, int64_t now)
{
    int released = 0;
    if (p && p->spare) {
        stack_release(p->spare, now);
        p->spare = NULL;
    }
    for (size_t i = 0; p && i < p->nclasses; i++) {
        struct size_class *c = &p->classes[i];
        ca__stack_chunk *ch = c->empty;
        while (released < max_chunks && ch) {
            ca__stack_chunk *next = ch->empty_next;
            /* Keep two chunks' worth of free stacks for the next burst, and
             * any chunk that became free less than CA__STACK_TRIM_AGE ago:
             * bursts that repeat sooner than that reuse warm stacks. */
            if (c->nfree < 2u * ch->n + ch->fresh)
                break;
            if (now - ch->empty_since >= CA__STACK_TRIM_AGE) {
                chunk_release(c, ch);
                released++;
            }
            ch = next;
        }
    }
    return released;
}

void ca__stack_pool_free(ca__stack_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nclasses; i++) {
        struct size_class *c = &p->classes[i];
        while (c->chunks) {
            ca__stack_chunk *ch = c->chunks;
            c->chunks = ch->next;
            for (unsigned j = 0; j < ch->fresh; j++)
                VALGRIND_STACK_DEREGISTER(ch->slots[j].vg_id);
            atomic_fetch_sub(&mprotect_guards, (long)ch->mprotect_guards);
            munmap(ch->base, ch->bytes);
            free(ch);
        }
    }
    free(p->classes);
    free(p);
}

int ca__stack_in_guard(const ca__stack *s, const void *addr)
{
    const char *a = addr, *lo = s->lo;
    return a < lo && a >= lo - CA__STACK_GUARD;
}

int ca__stack_is_overflow(const ca__stack *s, const void *addr,
                          const void *sp)
{
    const char *lo = s->lo;
    if (ca__stack_in_guard(s, addr))
        return 1;
    /* The sp check: sp just below lo, down to a few guard sizes, is this
     * task running off its stack even if the access skipped the guard. */
    const char *p = sp;
    return p && p < lo && p >= lo - 16 * (size_t)CA__STACK_GUARD;
}

static void *context_sp(void *ucv)
{
    ucontext_t *uc = ucv;
    if (!uc)
        return NULL;
#if defined(__x86_64__)
    return (void *)uc->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
    return (void *)uc->uc_mcontext.sp;
#else
    return NULL;
#endif
}

/* ------------------------------------------------------------------------ */
/* SIGSEGV handler                                                          */
/* ------------------------------------------------------------------------ */

/* Set by every ca_run, on any thread (the same function each time), read
 * by the SIGSEGV handler: atomic (a lock-free pointer, safe in a signal
 * handler). */
static _Atomic(ca__overflow_hook) overflow_hook;
static struct sigaction old_segv;
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_installed;

void ca__stack_set_overflow_hook(ca__overflow_hook hook)
{
    atomic_store_explicit(&overflow_hook, hook, memory_order_release);
}

static void write_all(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

void ca__stack_overflow_abort(const char *desc)
{
    static const char pre[] = "cawait: stack overflow in ";
    write_all(pre, sizeof(pre) - 1);
    write_all(desc, strlen(desc));
    write_all("\n", 1);
    signal(SIGABRT, SIG_DFL);
    abort();
}

static void segv_handler(int sig, siginfo_t *si, void *uc)
{
    char buf[512];
    ca__overflow_hook hook =
        atomic_load_explicit(&overflow_hook, memory_order_acquire);
    if (hook && hook(si->si_addr, context_sp(uc), buf, sizeof(buf)) > 0) {
        static const char pre[] = "cawait: stack overflow in ";
        write_all(pre, sizeof(pre) - 1);
        write_all(buf, strlen(buf));
        write_all("\n", 1);
        /* Die of the original signal: returning re-executes the access. */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    if ((old_segv.sa_flags & SA_SIGINFO) && old_segv.sa_sigaction) {
        old_segv.sa_sigaction(sig, si, uc);
        return;
    }
    if (old_segv.sa_handler != SIG_DFL && old_segv.sa_handler != SIG_IGN) {
        old_segv.sa_handler(sig);
        return;
    }
    signal(SIGSEGV, SIG_DFL);
}

static void install_handler(void)
{
    struct sigaction sa;
    if (sigaction(SIGSEGV, NULL, &old_segv) != 0)
        return;
    /* A handler that is not ours (ASan's, a debugger's helper) keeps the
     * signal; we chain to it for faults that are not stack overflows. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) == 0)
        handler_installed = 1;
}

#define ALTSTACK_SIZE (64u * 1024u)

struct altstack {
    stack_t old;
    void *mem;
};

int ca__stack_thread_init(void **out)
{
    *out = NULL;
    if (getenv("CAWAIT_NO_SEGV_HANDLER"))
        return 0;
    pthread_once(&handler_once, install_handler);
    if (!handler_installed)
        return 0;
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE))
        return 0; /* the thread already has one: keep it */
    struct altstack *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    size_t sz = ALTSTACK_SIZE + (size_t)SIGSTKSZ;
    a->mem = mmap(NULL, sz, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a->mem == MAP_FAILED) {
        free(a);
        return -ENOMEM;
    }
    stack_t ss = {.ss_sp = a->mem, .ss_size = sz, .ss_flags = 0};
    if (sigaltstack(&ss, &a->old) != 0) {
        munmap(a->mem, sz);
        free(a);
        return 0;
    }
    *out = a;
    return 0;
}

void ca__stack_thread_done(void *p)
{
    struct altstack *a = p;
    if (!a)
        return;
    sigaltstack(&a->old, NULL);
    munmap(a->mem, ALTSTACK_SIZE + (size_t)SIGSTKSZ);
    free(a);
}
