/*
 * Timers: a 4-ary min-heap of {when, slot, seq} entries keyed by (when, seq).
 * Comparing the four children of a node reads one cache line and nothing
 * else.  An armed timer owns a slot in a dense table that holds its heap
 * position; a sift updates that table, never the timers, which live at the
 * tops of task stacks all over memory (with 100,000 sleeping tasks, writing
 * into the timers themselves cost a TLB miss per level).  Cancel is
 * O(log n) through the slot.
 */
#include "loop/loop.h"

#include <errno.h>
#include <stdlib.h>

#define ARITY 4

static inline int ent_less(const struct ca__heap_ent *a,
                           const struct ca__heap_ent *b)
{
    return a->when < b->when ||
           (a->when == b->when && (int32_t)(a->seq - b->seq) < 0);
}

static inline void place(ca_loop *l, size_t i, struct ca__heap_ent e)
{
    l->heap[i] = e;
    l->tslots[e.slot].index = (uint32_t)i;
}

static void sift_up(ca_loop *l, size_t i)
{
    struct ca__heap_ent *h = l->heap;
    struct ca__heap_ent e = h[i];
    while (i > 0) {
        size_t parent = (i - 1) / ARITY;
        if (!ent_less(&e, &h[parent]))
            break;
        place(l, i, h[parent]);
        i = parent;
    }
    place(l, i, e);
}

static void sift_down(ca_loop *l, size_t i)
{
    struct ca__heap_ent *h = l->heap;
    size_t n = l->nheap;
    struct ca__heap_ent e = h[i];
    for (;;) {
        size_t c = ARITY * i + 1;
        if (c >= n)
            break;
        size_t end = c + ARITY < n ? c + ARITY : n;
        size_t best = c;
        for (size_t k = c + 1; k < end; k++)
            if (ent_less(&h[k], &h[best]))
                best = k;
        if (!ent_less(&h[best], &e))
            break;
        place(l, i, h[best]);
        i = best;
    }
    place(l, i, e);
}

static int slot_alloc(ca_loop *l, ca__timer *t)
{
    uint32_t s = l->tslot_free;
    if (s != CA__TIMER_IDLE && s < l->ntslots) {
        l->tslot_free = l->tslots[s].next_free;
    } else {
        if (l->ntslots == l->tslot_cap) {
            uint32_t cap = l->tslot_cap ? l->tslot_cap * 2 : 64;
            if (cap >= CA__TIMER_IDLE / 2)
                return -ENOMEM;
            struct ca__timer_slot *ts =
                realloc(l->tslots, (size_t)cap * sizeof(*ts));
            if (!ts)
                return -ENOMEM;
            l->tslots = ts;
            l->tslot_cap = cap;
        }
        s = l->ntslots++;
    }
    l->tslots[s].t = t;
    t->slot = s;
    return 0;
}

static void slot_release(ca_loop *l, ca__timer *t)
{
    uint32_t s = t->slot;
    l->tslots[s].t = NULL;
    l->tslots[s].next_free = l->tslot_free;
    l->tslot_free = s;
    t->slot = CA__TIMER_IDLE;
}

int ca__timer_arm(ca_loop *l, ca__timer *t, int64_t when)
{
    if (ca__timer_armed(t))
        ca__timer_cancel(l, t);
    if (l->nheap == l->heap_cap) {
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 64;
        if (cap >= CA__TIMER_IDLE / 2)
            return -ENOMEM;
        struct ca__heap_ent *h = realloc(l->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        l->heap = h;
        l->heap_cap = cap;
    }
    int r = slot_alloc(l, t);
    if (r < 0)
        return r;
    t->when = when;
    l->heap[l->nheap] =
        (struct ca__heap_ent){.when = when, .slot = t->slot,
                              .seq = l->timer_seq++};
    l->nheap++;
    sift_up(l, l->nheap - 1);
    return 0;
}

void ca__timer_cancel(ca_loop *l, ca__timer *t)
{
    if (!ca__timer_armed(t))
        return;
    size_t i = l->tslots[t->slot].index;
    slot_release(l, t);
    size_t last = --l->nheap;
    if (i == last)
        return;
    place(l, i, l->heap[last]);
    if (i > 0 && ent_less(&l->heap[i], &l->heap[(i - 1) / ARITY]))
        sift_up(l, i);
    else
        sift_down(l, i);
}

int64_t ca__timers_next(const ca_loop *l)
{
    return l->nheap ? l->heap[0].when : INT64_MAX;
}

void ca__timers_fire(ca_loop *l)
{
    while (l->nheap && l->heap[0].when <= l->now) {
        ca__timer *t = l->tslots[l->heap[0].slot].t;
        ca__timer_cancel(l, t);
        t->fire(t);
    }
}
