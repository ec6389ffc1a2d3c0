/*
 * Timers: a 4-ary min-heap of {when, slot, seq} entries keyed by (when, seq).
 * Comparing the four children of a node reads one cache line and nothing
 * else.  An armed timer owns a slot in a dense table that holds its heap
 * position; a sift updates that table, never the timers, which live at the
 * tops of task stacks all over memory (with 100,000 sleeping tasks, writing
 * into the timers themselves cost a TLB miss per level).  Cancel is
 * O(log n) through the slot.
 *
 * Beside the heap, the lane: a ring of the same entries, sorted because a
 * timer joins it only if it is due no earlier than the lane's last.  Most
 * programs arm the same few delays over and over (10,000 tasks sleeping
 * 0.1 s, a timeout per request), so most timers go through the lane: arm
 * and expiry are O(1) there instead of a sift of log4(n) levels.  A
 * cancelled lane entry is marked dead and skipped; the ends of the lane are
 * always live, and a full ring with many dead entries is compacted before
 * it grows.  The next timer to fire is the lesser of the heap's top and
 * the lane's head.
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

/* The slot table is full: grow it.  Returns 0 or -ENOMEM. */
static __attribute__((noinline)) int slot_grow(ca_loop *l)
{
    uint32_t cap = l->tslot_cap ? l->tslot_cap * 2 : 64;
    if (cap >= CA__TIMER_IDLE / 2)
        return -ENOMEM;
    struct ca__timer_slot *ts = realloc(l->tslots, (size_t)cap * sizeof(*ts));
    if (!ts)
        return -ENOMEM;
    l->tslots = ts;
    l->tslot_cap = cap;
    return 0;
}

static inline int slot_alloc(ca_loop *l, ca__timer *t)
{
    uint32_t s = l->tslot_free;
    if (s != CA__TIMER_IDLE && s < l->ntslots) {
        l->tslot_free = l->tslots[s].next_free;
    } else {
        if (l->ntslots == l->tslot_cap) {
            int r = slot_grow(l);
            if (r < 0)
                return r;
        }
        s = l->ntslots++;
    }
    l->tslots[s].t = t;
    t->slot = s;
    return 0;
}

static inline void slot_release(ca_loop *l, ca__timer *t)
{
    uint32_t s = t->slot;
    l->tslots[s].t = NULL;
    l->tslots[s].next_free = l->tslot_free;
    l->tslot_free = s;
    t->slot = CA__TIMER_IDLE;
}

/* ------------------------------------------------------------------------ */
/* The lane                                                                 */
/* ------------------------------------------------------------------------ */

#define LANE_MIN 64u
#define LANE_MAX (1u << 30)
#define DEAD CA__TIMER_IDLE

static inline uint32_t lane_mask(const ca_loop *l)
{
    return l->lane_cap - 1;
}

static inline struct ca__heap_ent *lane_at(const ca_loop *l, uint32_t pos)
{
    return &l->lane[pos & lane_mask(l)];
}

static inline int lane_empty(const ca_loop *l)
{
    return l->lane_head == l->lane_tail;
}

/* Drop dead entries at both ends, so that both ends are live. */
static inline void lane_trim(ca_loop *l)
{
    while (!lane_empty(l) && lane_at(l, l->lane_head)->slot == DEAD) {
        l->lane_head++;
        l->lane_dead--;
    }
    while (!lane_empty(l) && lane_at(l, l->lane_tail - 1)->slot == DEAD) {
        l->lane_tail--;
        l->lane_dead--;
    }
}

/* Move the live entries, in order, to the start of `to`. */
static void lane_relay(ca_loop *l, struct ca__heap_ent *to)
{
    uint32_t n = 0;
    for (uint32_t pos = l->lane_head; pos != l->lane_tail; pos++) {
        struct ca__heap_ent e = *lane_at(l, pos);
        if (e.slot == DEAD)
            continue;
        to[n] = e;
        l->tslots[e.slot].index = CA__TIMER_LANE | n;
        n++;
    }
    l->lane_head = 0;
    l->lane_tail = n;
    l->lane_dead = 0;
}

/* The ring is full (or not there yet): move its live entries to a new
 * ring, of the same size if at least half of it was dead, else twice as
 * large.  Returns 0 or -ENOMEM. */
static __attribute__((noinline)) int lane_grow(ca_loop *l)
{
    uint32_t cap = !l->lane                        ? LANE_MIN
                   : l->lane_dead >= l->lane_cap / 2 ? l->lane_cap
                                                     : l->lane_cap * 2;
    if (cap > LANE_MAX)
        return -ENOMEM;
    struct ca__heap_ent *to = malloc((size_t)cap * sizeof(*to));
    if (!to)
        return -ENOMEM;
    if (l->lane)
        lane_relay(l, to);
    free(l->lane);
    l->lane = to;
    l->lane_cap = cap;
    return 0;
}

/* Queue t at the end of the lane if it is due no earlier than the last
 * entry.  Returns 1 if queued, 0 if it belongs in the heap, or -ENOMEM. */
static inline int lane_push(ca_loop *l, ca__timer *t, int64_t when)
{
    if (!lane_empty(l) && when < lane_at(l, l->lane_tail - 1)->when)
        return 0;
    if (!l->lane || l->lane_tail - l->lane_head == l->lane_cap) {
        int g = lane_grow(l);
        if (g < 0)
            return g;
    }
    int r = slot_alloc(l, t);
    if (r < 0)
        return r;
    t->when = when;
    uint32_t pos = l->lane_tail++;
    *lane_at(l, pos) = (struct ca__heap_ent){
        .when = when, .slot = t->slot, .seq = l->timer_seq++};
    l->tslots[t->slot].index = CA__TIMER_LANE | (pos & lane_mask(l));
    return 1;
}

static inline void lane_cancel(ca_loop *l, uint32_t index)
{
    l->lane[index & ~CA__TIMER_LANE].slot = DEAD;
    l->lane_dead++;
    lane_trim(l);
}

/* ------------------------------------------------------------------------ */
/* Arm, cancel, fire                                                        */
/* ------------------------------------------------------------------------ */

/* The entry that fires next (the lesser of the heap's top and the lane's
 * head), or NULL when no timer is armed. */
static const struct ca__heap_ent *timers_first(const ca_loop *l)
{
    const struct ca__heap_ent *h = l->nheap ? &l->heap[0] : NULL;
    if (lane_empty(l))
        return h;
    const struct ca__heap_ent *q = lane_at(l, l->lane_head);
    return h && ent_less(h, q) ? h : q;
}

static void next_update(ca_loop *l)
{
    const struct ca__heap_ent *e = timers_first(l);
    l->timer_next = e ? e->when : INT64_MAX;
}

/* Arm t in the heap (it is due before the lane's last entry). */
static __attribute__((noinline)) int heap_arm(ca_loop *l, ca__timer *t,
                                              int64_t when)
{
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
    if (when < l->timer_next)
        l->timer_next = when;
    return 0;
}

int ca__timer_arm(ca_loop *l, ca__timer *t, int64_t when)
{
    if (ca__timer_armed(t))
        ca__timer_cancel(l, t);
    int q = lane_push(l, t, when);
    if (q == 0)
        return heap_arm(l, t, when);
    if (q > 0 && when < l->timer_next)
        l->timer_next = when;
    return q < 0 ? q : 0;
}

/* Take the entry at heap position i out of the heap. */
static __attribute__((noinline)) void heap_remove(ca_loop *l, size_t i)
{
    size_t last = --l->nheap;
    if (i == last)
        return;
    place(l, i, l->heap[last]);
    if (i > 0 && ent_less(&l->heap[i], &l->heap[(i - 1) / ARITY]))
        sift_up(l, i);
    else
        sift_down(l, i);
}

void ca__timer_cancel(ca_loop *l, ca__timer *t)
{
    if (!ca__timer_armed(t))
        return;
    uint32_t index = l->tslots[t->slot].index;
    slot_release(l, t);
    if (index & CA__TIMER_LANE)
        lane_cancel(l, index);
    else
        heap_remove(l, index);
    if (t->when == l->timer_next)
        next_update(l);
}

int64_t ca__timers_next(const ca_loop *l)
{
    return l->timer_next;
}

/* Take the timer that fires next out of the lane or the heap: what
 * ca__timer_cancel does, without looking up where it is. */
static inline ca__timer *timers_pop(ca_loop *l)
{
    const struct ca__heap_ent *h = l->nheap ? &l->heap[0] : NULL;
    ca__timer *t;
    if (!lane_empty(l) &&
        (!h || !ent_less(h, lane_at(l, l->lane_head)))) {
        t = l->tslots[lane_at(l, l->lane_head)->slot].t;
        l->lane_head++;
        lane_trim(l);
    } else {
        t = l->tslots[h->slot].t;
        heap_remove(l, 0);
    }
    slot_release(l, t);
    next_update(l);
    return t;
}

void ca__timers_fire(ca_loop *l)
{
    while (ca__timers_due(l)) {
        ca__timer *t = timers_pop(l);
        t->fire(t);
    }
}
