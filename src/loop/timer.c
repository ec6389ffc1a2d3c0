/*
 * Timers: a binary min-heap of pointers keyed by (when, seq).  Each timer
 * stores its heap index, so cancel is O(log n) and needs no search.
 */
#include "loop/loop.h"

#include <errno.h>
#include <stdlib.h>

static inline int timer_less(const ca__timer *a, const ca__timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void sift_up(ca__timer **h, size_t i)
{
    ca__timer *t = h[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_less(t, h[parent]))
            break;
        h[i] = h[parent];
        h[i]->index = (uint32_t)i;
        i = parent;
    }
    h[i] = t;
    t->index = (uint32_t)i;
}

static void sift_down(ca__timer **h, size_t n, size_t i)
{
    ca__timer *t = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && timer_less(h[c + 1], h[c]))
            c++;
        if (!timer_less(h[c], t))
            break;
        h[i] = h[c];
        h[i]->index = (uint32_t)i;
        i = c;
    }
    h[i] = t;
    t->index = (uint32_t)i;
}

int ca__timer_arm(ca_loop *l, ca__timer *t, int64_t when)
{
    if (ca__timer_armed(t))
        ca__timer_cancel(l, t);
    if (l->nheap == l->heap_cap) {
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 64;
        if (cap >= CA__TIMER_IDLE)
            return -ENOMEM;
        ca__timer **h = realloc(l->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        l->heap = h;
        l->heap_cap = cap;
    }
    t->when = when;
    t->seq = l->timer_seq++;
    l->heap[l->nheap] = t;
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
    ca__timer *m = l->heap[last];
    l->heap[i] = m;
    m->index = (uint32_t)i;
    if (i > 0 && timer_less(m, l->heap[(i - 1) / 2]))
        sift_up(l->heap, i);
    else
        sift_down(l->heap, l->nheap, i);
}

int64_t ca__timers_next(const ca_loop *l)
{
    return l->nheap ? l->heap[0]->when : INT64_MAX;
}

void ca__timers_fire(ca_loop *l)
{
    while (l->nheap && l->heap[0]->when <= l->now) {
        ca__timer *t = l->heap[0];
        ca__timer_cancel(l, t);
        t->fire(t);
    }
}
