/*
 * Timers: a 4-ary min-heap of {when, timer} entries keyed by (when, seq).
 * The deadline is stored in the entry, so comparing the four children of a
 * node reads one cache line instead of chasing four pointers; the sequence
 * number is read from the timer only to break a tie.  Each timer stores its
 * heap index, so cancel is O(log n) and needs no search.
 */
#include "loop/loop.h"

#include <errno.h>
#include <stdlib.h>

#define ARITY 4

static inline int ent_less(const struct ca__heap_ent *a,
                           const struct ca__heap_ent *b)
{
    return a->when < b->when || (a->when == b->when && a->t->seq < b->t->seq);
}

static inline void place(struct ca__heap_ent *h, size_t i,
                         struct ca__heap_ent e)
{
    h[i] = e;
    e.t->index = (uint32_t)i;
}

static void sift_up(struct ca__heap_ent *h, size_t i)
{
    struct ca__heap_ent e = h[i];
    while (i > 0) {
        size_t parent = (i - 1) / ARITY;
        if (!ent_less(&e, &h[parent]))
            break;
        place(h, i, h[parent]);
        i = parent;
    }
    place(h, i, e);
}

static void sift_down(struct ca__heap_ent *h, size_t n, size_t i)
{
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
        place(h, i, h[best]);
        i = best;
    }
    place(h, i, e);
}

int ca__timer_arm(ca_loop *l, ca__timer *t, int64_t when)
{
    if (ca__timer_armed(t))
        ca__timer_cancel(l, t);
    if (l->nheap == l->heap_cap) {
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 64;
        if (cap >= CA__TIMER_IDLE)
            return -ENOMEM;
        struct ca__heap_ent *h = realloc(l->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        l->heap = h;
        l->heap_cap = cap;
    }
    t->when = when;
    t->seq = l->timer_seq++;
    l->heap[l->nheap] = (struct ca__heap_ent){when, t};
    sift_up(l->heap, l->nheap++);
    return 0;
}

void ca__timer_cancel(ca_loop *l, ca__timer *t)
{
    size_t i = t->index;
    if (i == CA__TIMER_IDLE)
        return;
    t->index = CA__TIMER_IDLE;
    size_t last = --l->nheap;
    if (i == last)
        return;
    l->heap[i] = l->heap[last];
    l->heap[i].t->index = (uint32_t)i;
    if (i > 0 && ent_less(&l->heap[i], &l->heap[(i - 1) / ARITY]))
        sift_up(l->heap, i);
    else
        sift_down(l->heap, l->nheap, i);
}

int64_t ca__timers_next(const ca_loop *l)
{
    return l->nheap ? l->heap[0].when : INT64_MAX;
}

void ca__timers_fire(ca_loop *l)
{
    while (l->nheap && l->heap[0].when <= l->now) {
        ca__timer *t = l->heap[0].t;
        ca__timer_cancel(l, t);
        t->fire(t);
    }
}
