/*
 * Synchronization primitives (internal): the layouts behind the public
 * fixed-size storage of ca_lock, ca_event, ca_cond, ca_sem and ca_barrier.
 * A zeroed storage is a valid unlocked lock, clear event, etc.
 */
#ifndef CA_SYNC_H
#define CA_SYNC_H

#include "task/task.h"

struct lock_impl {
    ca_task *owner;
    ca__waitlist waiters;
};

struct event_impl {
    int set;
    ca__waitlist waiters;
};

struct cond_impl {
    ca_lock *lock;
    ca__waitlist waiters;
};

struct sem_impl {
    unsigned value;
    unsigned initial;
    int bounded;
    ca__waitlist waiters;
};

struct barrier_impl {
    unsigned parties;
    unsigned count;
    int broken;
    ca__waitlist waiters;
};

/* The public storage of cond, sem and barrier spells out these layouts so
 * their initialisers can be static: keep them in step. */
#include <stddef.h>
_Static_assert(offsetof(struct cond_impl, waiters) ==
                   offsetof(ca_cond, private_), "ca_cond layout");
_Static_assert(offsetof(struct sem_impl, initial) ==
                       offsetof(ca_sem, initial_) &&
                   offsetof(struct sem_impl, bounded) ==
                       offsetof(ca_sem, bounded_) &&
                   offsetof(struct sem_impl, waiters) ==
                       offsetof(ca_sem, private_),
               "ca_sem layout");
_Static_assert(offsetof(struct barrier_impl, count) ==
                       offsetof(ca_barrier, count_) &&
                   offsetof(struct barrier_impl, broken) ==
                       offsetof(ca_barrier, broken_) &&
                   offsetof(struct barrier_impl, waiters) ==
                       offsetof(ca_barrier, private_),
               "ca_barrier layout");
_Static_assert(sizeof(struct lock_impl) <= sizeof(ca_lock), "ca_lock size");
_Static_assert(sizeof(struct event_impl) <= sizeof(ca_event), "ca_event size");
_Static_assert(sizeof(struct cond_impl) <= sizeof(ca_cond), "ca_cond size");
_Static_assert(sizeof(struct sem_impl) <= sizeof(ca_sem), "ca_sem size");
_Static_assert(sizeof(struct barrier_impl) <= sizeof(ca_barrier),
               "ca_barrier size");

#endif
