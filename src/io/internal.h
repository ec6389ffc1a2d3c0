/*
 * Processes and signals (internal): what subprocess.c and signal.c tell
 * each other, and what they need from the task layer.
 */
#ifndef CA_IO_INTERNAL_H
#define CA_IO_INTERNAL_H

#include "task/task.h"


/* signal.c read a SIGCHLD from its signalfd: the program captures SIGCHLD,
 * so the SIGCHLD fallback of subprocess.c may not see it; look for exited
 * children now. */
void ca__subprocess_sigchld(ca_loop *l);

/* A job for a spawner thread (spawner.c): run(job) is called on one of the
 * loop's spawner threads while the task that submitted it waits. */
typedef struct ca__spawn_job ca__spawn_job;
struct ca__spawn_job {
    ca__spawn_job *next;
    void (*run)(ca__spawn_job *job);
    ca_task *task;
    int finished;
};

/* Run job->run(job) on a spawner thread and wait until it has returned
 * (not a cancellation point: the job is the caller's).  Returns 0, or
 * -EPERM (not in a task), -ENOMEM, -EAGAIN (no thread could be started):
 * then nothing ran and the caller runs the job itself. */
int ca__spawn_offload(ca__spawn_job *job);

#endif
