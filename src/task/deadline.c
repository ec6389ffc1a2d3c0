/*
 * Deadline scopes (asyncio.timeout) and shield scopes.
 *
 * A task keeps a stack of scopes.  Each records its deadline, the shield
 * depth at which it was opened, and the earliest deadline among the scopes
 * opened at that same depth (eff), so the effective deadline is read in O(1)
 * from the top entry.  Scopes opened outside the innermost shield do not
 * apply inside it.
 */
#include "task/task.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

int64_t ca__task_deadline(const ca_task *t)
{
    if (t->run->nscopes == 0)
        return INT64_MAX;
    const struct ca__scope *top = &t->run->scopes[t->run->nscopes - 1];
    return top->level == t->run->shield ? top->eff : INT64_MAX;
}

void ca__task_deadline_fired(ca_task *t, int64_t now)
{
    for (int i = (int)t->run->nscopes - 1; i >= 0; i--) {
        struct ca__scope *s = &t->run->scopes[i];
        if (s->level != t->run->shield)
            break;
        if (s->deadline <= now)
            s->fired = 1;
    }
}

static int push(int64_t deadline)
{
    ca_task *self = ca__task_self("ca_deadline_push");
    if (!self)
        return -EPERM;
    if (self->run->nscopes == self->run->capscopes) {
        if (self->run->capscopes >= 4096)
            return -ENOMEM;
        uint16_t cap = self->run->capscopes ? (uint16_t)(self->run->capscopes * 2) : 4;
        struct ca__scope *s = realloc(self->run->scopes, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        self->run->scopes = s;
        self->run->capscopes = cap;
    }
    struct ca__scope *s = &self->run->scopes[self->run->nscopes];
    s->deadline = deadline;
    s->level = self->run->shield;
    s->fired = 0;
    s->eff = deadline;
    if (self->run->nscopes > 0) {
        const struct ca__scope *prev = s - 1;
        if (prev->level == s->level && prev->eff < deadline)
            s->eff = prev->eff;
    }
    self->run->nscopes++;
    return 0;
}

static int to_abs_ns(double when, int64_t *out)
{
    if (isnan(when))
        return -EINVAL;
    if (when > 9.0e9)
        *out = INT64_MAX - 1;
    else if (when < -9.0e9)
        *out = INT64_MIN + 1;
    else
        *out = (int64_t)(when * 1e9);
    return 0;
}

int ca_deadline_push(double seconds)
{
    int64_t d;
    if (isnan(seconds) || to_abs_ns(seconds, &d) < 0)
        return -EINVAL;
    int64_t now = ca__clock_ns();
    int64_t abs = d > INT64_MAX - now ? INT64_MAX - 1 : now + d;
    return push(abs);
}

int ca_deadline_push_at(double when)
{
    int64_t d;
    if (to_abs_ns(when, &d) < 0)
        return -EINVAL;
    return push(d);
}

int ca_deadline_pop(void)
{
    ca_task *self = ca__task_self("ca_deadline_pop");
    if (!self || self->run->nscopes == 0)
        return -EPERM;
    struct ca__scope *s = &self->run->scopes[self->run->nscopes - 1];
    if (s->level != self->run->shield)
        return -EPERM; /* a shield opened inside the scope is still open */
    self->run->nscopes--;
    if (s->fired || s->deadline <= ca__clock_ns())
        return -ETIMEDOUT;
    return 0;
}

int ca_shield_push(void)
{
    ca_task *self = ca__task_self("ca_shield_push");
    if (!self)
        return -EPERM;
    if (self->run->shield == UINT16_MAX)
        return -EOVERFLOW;
    self->run->shield++;
    return 0;
}

int ca_shield_pop(void)
{
    ca_task *self = ca__task_self("ca_shield_pop");
    if (!self || self->run->shield == 0)
        return -EPERM;
    /* Deadline scopes opened inside the shield must be closed first. */
    if (self->run->nscopes > 0 &&
        self->run->scopes[self->run->nscopes - 1].level == self->run->shield)
        return -EBUSY;
    self->run->shield--;
    return 0;
}
