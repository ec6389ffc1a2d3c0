/*
 * Queues: asyncio.Queue, LifoQueue and PriorityQueue, with 3.13 shutdown.
 *
 * Storage is one array of fixed-size slots whose capacity is a power of two:
 *  - FIFO: a ring (head, count, mask); put writes at head+count, get reads
 *    at head;
 *  - LIFO: the same ring with head fixed, used as a stack;
 *  - PRIORITY: a binary min-heap in slots 0..count-1.  Each slot holds the
 *    item followed by a 64-bit insertion sequence number that breaks ties,
 *    so equal items come out in FIFO order.  Slots are 16-byte multiples so
 *    the items cmp sees are aligned.
 * Pointer items (elem_size 0) are stored as `void *` and moved without
 * memcpy.  Bounded queues of up to 1024 items get their whole ring at
 * creation; larger or unbounded ones start small and double.
 *
 * A ring that grew is halved again when a get leaves it less than a
 * quarter full (so a burst of a million items, once drained, gives its
 * 8 MB back), down to a floor: its initial capacity, or one 4 KiB page of
 * slots if that is more, since halving a smaller buffer saves nothing
 * worth a realloc.  Growing at full and halving at a quarter is the usual
 * hysteresis: after either, the ring is half full, and at least a quarter
 * of its capacity in puts or gets must happen before the next resize, so
 * resizing stays amortized O(1) per item however the count oscillates.
 * The get fast path pays nothing for it: it already compared count with 0,
 * and now compares it with shrink_at instead (0 for a ring at its floor,
 * such as every bounded queue of up to 1024 items), taking the slow path
 * only for the get that must shrink the ring.
 *
 * Waiting follows asyncio: put appends and wakes one waiting getter; get
 * removes and wakes one waiting putter.  A woken waiter re-checks in a
 * loop, so an item or a slot is never handed to a particular task, and a
 * get/put that fails (cancelled, deadline) leaves the buffer as it was.  A
 * waiter that fails after it may have been woken (its wake-up can have
 * been consumed by the cancel, or arrived in the same turn) passes the
 * wake-up on to the next waiter when there is something for it, so none
 * is lost.  get on a non-empty queue and put on a non-full one never block
 * and are not cancellation points.
 *
 * ca_queue_put/ca_queue_get have an inline fast path for the common case
 * (a task, pointer items, FIFO, room / an item available): a few dozen
 * instructions, no register spills, no call unless a waiter must be woken.
 * Everything else goes through put_slow/get_slow.
 *
 * ca_queue_free may run while tasks wait: it wakes them with -ESHUTDOWN and
 * the struct lives on until the last of them has left its wait (nwaiting),
 * since a woken task still looks at its wait list on the way out.
 */
#include "task/task.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Initial ring of a bounded queue: its whole maxsize up to this many. */
#define PREALLOC_MAX 1024u
/* Initial ring of an unbounded (or large) queue. */
#define INITIAL_CAP 16u
/* Largest item accepted (a sanity bound that keeps slot sizes sane). */
#define ELEM_MAX ((size_t)1 << 30)
/* A grown ring is never halved below this many bytes of slots. */
#define SHRINK_FLOOR_BYTES 4096u

struct ca_queue {
    /* hot: touched by every put/get */
    char *buf;
    size_t mask;  /* cap - 1 */
    size_t head;  /* first item (FIFO); 0 for LIFO and PRIORITY */
    size_t count; /* items stored */
    size_t shrink_at; /* a get from count <= this shrinks the ring; 0: never */
    size_t limit; /* maxsize, SIZE_MAX when unbounded */
    size_t unfinished;
    ca__waitlist getters, putters;
    uint8_t kind;
    uint8_t ptr; /* pointer items: elem_size 0 */
    uint8_t shutdown;
    uint8_t freed;
    unsigned nwaiting; /* tasks inside q_wait */
    /* cold */
    size_t esz;  /* bytes of an item */
    size_t slot; /* bytes of a slot */
    size_t seq_off; /* PRIORITY: offset of the sequence number in a slot */
    size_t cap;
    size_t min_cap; /* the ring is not halved below this */
    size_t maxsize;
    int (*cmp)(const void *a, const void *b);
    uint64_t seq;
    char *tmp; /* PRIORITY: one slot of scratch for sifting */
    ca__waitlist joiners;
};

/* ------------------------------------------------------------------------ */
/* Storage                                                                  */
/* ------------------------------------------------------------------------ */

static size_t pow2_ceil(size_t n)
{
    size_t c = 1;
    while (c < n && c <= SIZE_MAX / 2)
        c <<= 1;
    return c;
}

static inline char *slot_at(const ca_queue *q, size_t i)
{
    return q->buf + i * q->slot;
}

static void set_cap(ca_queue *q, size_t cap)
{
    q->cap = cap;
    q->mask = cap - 1;
    q->shrink_at = cap > q->min_cap ? cap / 4 : 0;
}

/* Double the ring, keeping the items in order from head. */
static __attribute__((noinline)) int grow(ca_queue *q)
{
    size_t cap = q->cap;
    if (cap > SIZE_MAX / 2 / q->slot)
        return -ENOMEM;
    char *nb = realloc(q->buf, 2 * cap * q->slot);
    if (!nb)
        return -ENOMEM;
    q->buf = nb;
    /* Items wrapped to the start move right after the old end. */
    if (q->head + q->count > cap) {
        size_t wrapped = q->head + q->count - cap;
        memcpy(nb + cap * q->slot, nb, wrapped * q->slot);
    }
    set_cap(q, 2 * cap);
    return 0;
}

/*
 * Make the ring cap slots (a power of two, >= count), keeping the items in
 * order from head, and give the rest of the buffer back.  LIFO and PRIORITY
 * keep their items in slots 0..count-1 (head 0), so they never move.  A
 * FIFO ring's items are moved into the first cap slots: an unwrapped run
 * that ends beyond them moves to the front, a wrapped one's tail part
 * (head..old end) moves to the end of the new ring, leaving the wrapped
 * part (from slot 0) where it is.
 */
static void resize_down(ca_queue *q, size_t cap)
{
    size_t old = q->cap, sz = q->slot;
    char *b = q->buf;
    if (q->head + q->count > cap) {
        if (q->head + q->count <= old) {
            memmove(b, b + q->head * sz, q->count * sz);
            q->head = 0;
        } else {
            size_t tail = old - q->head;
            memmove(b + (cap - tail) * sz, b + q->head * sz, tail * sz);
            q->head = cap - tail;
        }
    }
    /* Shrinking in place cannot fail; if realloc moves nothing, the items
     * stay where they are in the larger block. */
    char *nb = realloc(b, cap * sz);
    if (nb)
        q->buf = nb;
    set_cap(q, cap);
}

/* A get left the ring less than a quarter full: halve it. */
static __attribute__((noinline)) void shrink(ca_queue *q)
{
    resize_down(q, q->cap / 2);
}

static inline uint64_t slot_seq(const ca_queue *q, const char *s)
{
    uint64_t v;
    memcpy(&v, s + q->seq_off, sizeof(v));
    return v;
}

/* Heap order: cmp, then insertion order. */
static inline int heap_less(const ca_queue *q, const char *a, const char *b)
{
    int c = q->cmp(a, b);
    if (c != 0)
        return c < 0;
    return slot_seq(q, a) < slot_seq(q, b);
}

static void heap_push(ca_queue *q, const void *item)
{
    char *t = q->tmp;
    if (q->ptr)
        memcpy(t, &item, sizeof(void *));
    else
        memcpy(t, item, q->esz);
    uint64_t seq = q->seq++;
    memcpy(t + q->seq_off, &seq, sizeof(seq));
    size_t i = q->count;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(q, t, slot_at(q, p)))
            break;
        memcpy(slot_at(q, i), slot_at(q, p), q->slot);
        i = p;
    }
    memcpy(slot_at(q, i), t, q->slot);
}

/* Remove the smallest item into out; count is still the old count. */
static void heap_pop(ca_queue *q, void *out)
{
    memcpy(out, slot_at(q, 0), q->esz);
    size_t n = q->count - 1;
    if (n == 0)
        return;
    char *t = q->tmp;
    memcpy(t, slot_at(q, n), q->slot);
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_less(q, slot_at(q, c + 1), slot_at(q, c)))
            c++;
        if (!heap_less(q, slot_at(q, c), t))
            break;
        memcpy(slot_at(q, i), slot_at(q, c), q->slot);
        i = c;
    }
    memcpy(slot_at(q, i), t, q->slot);
}

/* Store an item (the caller checked shutdown and room), count it as
 * unfinished, wake a getter. */
static inline int q_push(ca_queue *q, const void *item)
{
    if (__builtin_expect(q->count == q->cap, 0) && grow(q) < 0)
        return -ENOMEM;
    if (__builtin_expect(q->kind == CA_QUEUE_PRIORITY, 0)) {
        heap_push(q, item);
    } else {
        size_t i = (q->head + q->count) & q->mask;
        if (q->ptr)
            ((const void **)(void *)q->buf)[i] = item;
        else
            memcpy(q->buf + i * q->slot, item, q->esz);
    }
    q->count++;
    q->unfinished++;
    if (q->getters.head)
        ca__waitlist_wake_one(&q->getters, 0);
    return 0;
}

/* Take the next item (the queue is not empty), wake a putter. */
static inline void q_pop(ca_queue *q, void *out)
{
    if (__builtin_expect(q->kind == CA_QUEUE_PRIORITY, 0)) {
        heap_pop(q, out);
    } else {
        size_t i;
        if (q->kind == CA_QUEUE_FIFO) {
            i = q->head;
            q->head = (i + 1) & q->mask;
        } else {
            i = (q->head + q->count - 1) & q->mask;
        }
        if (q->ptr)
            *(void **)out = ((void **)(void *)q->buf)[i];
        else
            memcpy(out, q->buf + i * q->slot, q->esz);
    }
    q->count--;
    if (__builtin_expect(q->count < q->shrink_at, 0))
        shrink(q);
    if (q->putters.head)
        ca__waitlist_wake_one(&q->putters, 0);
}

/* ------------------------------------------------------------------------ */
/* Waiting                                                                  */
/* ------------------------------------------------------------------------ */

static inline ca_task *cur_task(const char *fn)
{
    ca_loop *l = ca__loop();
    ca_task *t = l ? l->current : NULL;
    if (__builtin_expect(t == NULL, 0))
        return ca__task_self(fn);
    return t;
}

static void q_release(ca_queue *q)
{
    free(q->buf);
    free(q->tmp);
    free(q);
}

/*
 * Park in list l of q.  Returns the wake result, or the error of a wait
 * that must fail now: -ECANCELED / -ETIMEDOUT, also when the wake-up came
 * in the same turn as the cancel (the caller passes it on).  *gone is set
 * when q was freed meanwhile: q must not be touched then.
 */
static int q_wait(ca_queue *q, ca__waitlist *l, ca_task *self, int *gone)
{
    ca__waiter w = {0};
    q->nwaiting++;
    int r = ca__wait_in(l, &w);
    q->nwaiting--;
    if (__builtin_expect(q->freed, 0)) {
        *gone = 1;
        if (q->nwaiting == 0)
            q_release(q);
        return r < 0 ? r : -ESHUTDOWN;
    }
    if (r == 0)
        r = ca__task_check(self);
    return r;
}

/* ------------------------------------------------------------------------ */
/* API                                                                      */
/* ------------------------------------------------------------------------ */

int ca_queue_new(ca_queue **out, const ca_queue_opts *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    ca_queue_opts o = {0};
    if (opts)
        o = *opts;
    if ((unsigned)o.kind > CA_QUEUE_PRIORITY)
        return -EINVAL;
    if (o.kind == CA_QUEUE_PRIORITY && !o.cmp)
        return -EINVAL;
    if (o.elem_size > ELEM_MAX)
        return -EINVAL;
    if (!ca__loop())
        return -CA_ENOLOOP;

    ca_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->kind = (uint8_t)o.kind;
    q->ptr = o.elem_size == 0;
    q->esz = q->ptr ? sizeof(void *) : o.elem_size;
    q->maxsize = o.maxsize;
    q->limit = o.maxsize ? o.maxsize : SIZE_MAX;
    q->cmp = o.cmp;
    if (q->kind == CA_QUEUE_PRIORITY) {
        q->seq_off = (q->esz + 7) & ~(size_t)7;
        q->slot = (q->seq_off + sizeof(uint64_t) + 15) & ~(size_t)15;
        q->tmp = malloc(q->slot);
        if (!q->tmp) {
            free(q);
            return -ENOMEM;
        }
    } else {
        q->slot = q->esz;
    }
    size_t cap = o.maxsize && o.maxsize <= PREALLOC_MAX ? pow2_ceil(o.maxsize)
                                                        : INITIAL_CAP;
    q->buf = malloc(cap * q->slot);
    if (!q->buf) {
        free(q->tmp);
        free(q);
        return -ENOMEM;
    }
    size_t floor = pow2_ceil((SHRINK_FLOOR_BYTES + q->slot - 1) / q->slot);
    q->min_cap = cap > floor ? cap : floor;
    set_cap(q, cap);
    *out = q;
    return 0;
}

void ca_queue_free(ca_queue *q)
{
    if (!q)
        return;
    q->freed = 1;
    q->shutdown = 1;
    q->count = 0;
    ca__waitlist_wake_all(&q->getters, -ESHUTDOWN);
    ca__waitlist_wake_all(&q->putters, -ESHUTDOWN);
    ca__waitlist_wake_all(&q->joiners, -ESHUTDOWN);
    if (q->nwaiting == 0)
        q_release(q);
}

int ca_queue_put_nowait(ca_queue *q, const void *item)
{
    if (__builtin_expect(!q || (!item && !q->ptr), 0))
        return -EINVAL;
    if (__builtin_expect(q->shutdown, 0))
        return -ESHUTDOWN;
    if (q->count >= q->limit)
        return -EAGAIN;
    return q_push(q, item);
}

/* The rest of ca_queue_put: waiting, growth, priority, errors. */
static __attribute__((noinline)) int put_slow(ca_queue *q, const void *item)
{
    ca_task *self = cur_task("ca_queue_put");
    if (!self)
        return -EPERM;
    for (;;) {
        if (q->shutdown)
            return -ESHUTDOWN;
        if (q->count < q->limit)
            return q_push(q, item);
        int gone = 0;
        int r = q_wait(q, &q->putters, self, &gone);
        if (gone)
            return r;
        if (r < 0) {
            /* A slot freed for us goes to the next putter. */
            if (q->count < q->limit && q->putters.head)
                ca__waitlist_wake_one(&q->putters, 0);
            return r;
        }
    }
}

int ca_queue_put(ca_queue *q, const void *item)
{
    if (__builtin_expect(!q || (!item && !q->ptr), 0))
        return -EINVAL;
    ca_loop *l = ca__loop();
    /* Fast path: a task putting a pointer into a FIFO/LIFO ring with room
     * (no register spills, no calls unless a getter waits). */
    if (__builtin_expect(l && l->current && q->ptr && !q->shutdown &&
                             q->count < q->limit && q->count != q->cap &&
                             q->kind != CA_QUEUE_PRIORITY,
                         1)) {
        size_t n = q->count;
        ((const void **)(void *)q->buf)[(q->head + n) & q->mask] = item;
        q->count = n + 1;
        q->unfinished++;
        if (q->getters.head)
            ca__waitlist_wake_one(&q->getters, 0);
        return 0;
    }
    return put_slow(q, item);
}

int ca_queue_get_nowait(ca_queue *q, void *out)
{
    if (__builtin_expect(!q || !out, 0))
        return -EINVAL;
    if (q->count) {
        q_pop(q, out);
        return 0;
    }
    return q->shutdown ? -ESHUTDOWN : -EAGAIN;
}

/* The rest of ca_queue_get: waiting, values, priority, errors. */
static __attribute__((noinline)) int get_slow(ca_queue *q, void *out)
{
    ca_task *self = cur_task("ca_queue_get");
    if (!self)
        return -EPERM;
    for (;;) {
        if (q->count != 0) {
            q_pop(q, out);
            return 0;
        }
        if (q->shutdown)
            return -ESHUTDOWN;
        int gone = 0;
        int r = q_wait(q, &q->getters, self, &gone);
        if (gone)
            return r;
        if (r < 0) {
            /* An item meant for us goes to the next getter. */
            if (q->count && q->getters.head)
                ca__waitlist_wake_one(&q->getters, 0);
            return r;
        }
    }
}

int ca_queue_get(ca_queue *q, void *out)
{
    if (__builtin_expect(!q || !out, 0))
        return -EINVAL;
    ca_loop *l = ca__loop();
    /* Fast path: a task taking a pointer from a non-empty FIFO ring that
     * this get does not shrink (count > shrink_at >= 0). */
    if (__builtin_expect(l && l->current && q->count > q->shrink_at && q->ptr &&
                             q->kind == CA_QUEUE_FIFO,
                         1)) {
        size_t i = q->head;
        *(void **)out = ((void **)(void *)q->buf)[i];
        q->head = (i + 1) & q->mask;
        q->count--;
        if (q->putters.head)
            ca__waitlist_wake_one(&q->putters, 0);
        return 0;
    }
    return get_slow(q, out);
}

int ca_queue_task_done(ca_queue *q)
{
    if (!q || q->unfinished == 0)
        return -EINVAL;
    if (--q->unfinished == 0 && q->joiners.head)
        ca__waitlist_wake_all(&q->joiners, 0);
    return 0;
}

int ca_queue_join(ca_queue *q)
{
    if (!q)
        return -EINVAL;
    ca_task *self = cur_task("ca_queue_join");
    if (!self)
        return -EPERM;
    if (q->unfinished == 0)
        return 0;
    int gone = 0;
    /* Woken (0) only when the count reached zero; like asyncio's Event,
     * a put after that but before we run does not send us back. */
    return q_wait(q, &q->joiners, self, &gone);
}

int ca_queue_shutdown(ca_queue *q, int immediate)
{
    if (!q)
        return -EINVAL;
    q->shutdown = 1;
    if (immediate) {
        size_t n = q->count;
        q->count = 0;
        q->head = 0;
        if (q->cap > q->min_cap)
            resize_down(q, q->min_cap); /* nothing more will be put */
        q->unfinished -= n < q->unfinished ? n : q->unfinished;
        if (q->unfinished == 0)
            ca__waitlist_wake_all(&q->joiners, 0);
    }
    /* Everyone re-checks: getters drain what is left, then fail. */
    ca__waitlist_wake_all(&q->getters, 0);
    ca__waitlist_wake_all(&q->putters, 0);
    return 0;
}

size_t ca_queue_size(const ca_queue *q)
{
    return q ? q->count : 0;
}

int ca_queue_empty(const ca_queue *q)
{
    return !q || q->count == 0;
}

int ca_queue_full(const ca_queue *q)
{
    return q && q->maxsize && q->count >= q->maxsize;
}
