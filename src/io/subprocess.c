/*
 * Subprocesses: posix_spawn, pipes as streams, and reaping without zombies.
 *
 * Spawning.  posix_spawn (glibc: clone(CLONE_VM | CLONE_VFORK), nothing is
 * copied, so it costs the same for a 10 GB parent as for a small one), run
 * on a spawner thread when called from a task (spawner.c: the loop never
 * waits in vfork, and concurrent spawns overlap), with
 * the child's empty signal mask (the loop thread may block signals it reads
 * through a signalfd: ca_run blocks SIGINT and SIGTERM) and SIGPIPE/SIGXFSZ
 * at their defaults.  Every fd we create is close-on-exec; the child's ends
 * are moved above 2 first so the dup2 onto 0-2 always clears the flag, and
 * by default everything above 2 is closed in the child (closefrom).  A
 * program name without '/' is resolved along $PATH here, in the parent, so
 * "no such program" is -ENOENT from this call, not an exit status 127 from
 * the child.  stdin pipes are Unix socketpairs: a stream on a socket sends
 * with MSG_NOSIGNAL (a child that exits early gives -EPIPE, not SIGPIPE) and
 * ca_stream_write_eof's shutdown gives the child end of file.
 *
 * Exit.  With pidfds (Linux 5.3+) every child has one, watched by a
 * non-task fd waiter: the child is reaped the moment it exits, whether or
 * not a task waits, and signals go through pidfd_send_signal, so a pid that
 * was reaped and reused is never signalled.  Without them (or with
 * $CAWAIT_SUBPROCESS_SIGCHLD=1) a process-wide SIGCHLD handler, installed
 * while at least one loop uses it and chained to the previous one, writes
 * to each such loop's eventfd; the loop then tries waitid(WNOHANG) on each
 * of its own children: children started by other code are never reaped
 * here.  signal.c forwards SIGCHLD too, in case the program captures it.
 *
 * Lifecycle.  A process object lives in its loop's list from spawn until
 * the user frees it *and* it has been reaped.  ca_subprocess_free of a
 * running child kills it; the list keeps the object until the reap.  At the
 * end of ca_run (exit hook) children still running are killed and reaped,
 * and objects the user still holds are detached from the loop.
 */
#include "io/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define COLLECT_CHUNK (64u * 1024u)
#define FEED_CHUNK (64u * 1024u)

enum { RUNNING = 0, REAPED, LOST };

struct ca_process {
    struct proc_state *st; /* NULL once the loop has gone */
    ca_process *next, *prev; /* in st->procs */
    pid_t pid;
    int pidfd; /* -1: SIGCHLD mode, or closed after the reap */
    int state; /* RUNNING, REAPED (wstatus valid), LOST (-ECHILD) */
    int wstatus;
    int freed; /* the user freed it: free it once reaped and left */
    unsigned inside; /* tasks inside a wait on it, woken or not */
    ca__fdwait exit_waiter;
    ca__waitlist waiters;
    ca_stream *std[3];
    size_t max_output;
};

struct proc_state {
    ca__exit_hook hook; /* first: the hook is the state */
    ca_loop *loop;
    ca_process *procs;
    int sigchld; /* 1: SIGCHLD mode */
    int evfd;    /* SIGCHLD mode: written by the handler */
    int slot;
    ca__fdwait ev_waiter;
};

/* ------------------------------------------------------------------------ */
/* The SIGCHLD fallback (process-wide by nature)                            */
/* ------------------------------------------------------------------------ */

#define CHLD_SLOTS 64
static atomic_int chld_slots[CHLD_SLOTS]; /* eventfd + 1 of a loop; 0: free */
static atomic_int chld_busy;              /* handlers running now */
static pthread_mutex_t chld_lock = PTHREAD_MUTEX_INITIALIZER;
static int chld_users;
static struct sigaction chld_prev;

static void chld_handler(int signo, siginfo_t *si, void *uc)
{
    int saved = errno;
    atomic_fetch_add(&chld_busy, 1);
    for (int i = 0; i < CHLD_SLOTS; i++) {
        int v = atomic_load(&chld_slots[i]);
        if (v > 0) {
            uint64_t one = 1;
            ssize_t n = write(v - 1, &one, sizeof(one));
            (void)n; /* a full counter already means "look" */
        }
    }
    atomic_fetch_sub(&chld_busy, 1);
    if (chld_prev.sa_flags & SA_SIGINFO) {
        if ((void *)chld_prev.sa_sigaction != (void *)SIG_IGN &&
            chld_prev.sa_sigaction)
            chld_prev.sa_sigaction(signo, si, uc);
    } else if (chld_prev.sa_handler != SIG_DFL &&
               chld_prev.sa_handler != SIG_IGN) {
        chld_prev.sa_handler(signo);
    }
    errno = saved;
}

static int chld_attach(int fd)
{
    int slot = -EAGAIN;
    pthread_mutex_lock(&chld_lock);
    for (int i = 0; i < CHLD_SLOTS; i++) {
        if (atomic_load(&chld_slots[i]) == 0) {
            slot = i;
            break;
        }
    }
    if (slot >= 0 && chld_users == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = chld_handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP;
        sigfillset(&sa.sa_mask);
        if (sigaction(SIGCHLD, &sa, &chld_prev) < 0)
            slot = -errno;
    }
    if (slot >= 0) {
        chld_users++;
        atomic_store(&chld_slots[slot], fd + 1);
    }
    pthread_mutex_unlock(&chld_lock);
    return slot;
}

static void chld_detach(int slot)
{
    pthread_mutex_lock(&chld_lock);
    atomic_store(&chld_slots[slot], 0);
    if (--chld_users == 0)
        sigaction(SIGCHLD, &chld_prev, NULL);
    pthread_mutex_unlock(&chld_lock);
    /* A handler on another thread may have read our fd just before: let it
     * finish before the fd is closed (and its number reused). */
    while (atomic_load(&chld_busy) > 0)
        sched_yield();
}

static int have_pidfd(void)
{
    static atomic_int known; /* 0: not probed, 1: yes, -1: no */
    int v = atomic_load(&known);
    if (v)
        return v > 0;
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    v = fd >= 0 ? 1 : -1;
    if (fd >= 0)
        close(fd);
#else
    v = -1;
#endif
    atomic_store(&known, v);
    return v > 0;
}

static int want_sigchld(void)
{
    const char *e = getenv("CAWAIT_SUBPROCESS_SIGCHLD");
    return (e && *e && strcmp(e, "0") != 0) || !have_pidfd();
}

/* ------------------------------------------------------------------------ */
/* Reaping                                                                  */
/* ------------------------------------------------------------------------ */

static void proc_unlink(ca_process *p)
{
    struct proc_state *st = p->st;
    if (p->prev)
        p->prev->next = p->next;
    else if (st && st->procs == p)
        st->procs = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
}

/* Free p once the user has let go of it, its child is reaped (or lost, or
 * the loop is gone) and no task is inside a wait on it: a task woken by the
 * exit may still be about to read p when another frees it. */
static void proc_release_if_done(ca_process *p)
{
    if (p->freed && p->inside == 0 && !(p->state == RUNNING && p->st)) {
        proc_unlink(p);
        free(p);
    }
}

/* The child is gone (state set): release what watched it, wake the
 * waiters, and free p if the user already let go of it. */
static void proc_finish(ca_process *p)
{
    if (p->pidfd >= 0) {
        ca_close(p->pidfd);
        p->pidfd = -1;
    }
    ca__waitlist_wake_all(&p->waiters, 0);
    proc_release_if_done(p);
}

static int wstatus_of(const siginfo_t *si)
{
    switch (si->si_code) {
    case CLD_EXITED:
        return (si->si_status & 0xff) << 8;
    case CLD_KILLED:
        return si->si_status & 0x7f;
    case CLD_DUMPED:
        return (si->si_status & 0x7f) | 0x80;
    default:
        return 0;
    }
}

/* Reap p if it has exited (block: wait for it).  Returns 1 if it is gone
 * (p may have been freed), 0 if it still runs. */
static int proc_reap(ca_process *p, int block)
{
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | (block ? 0 : WNOHANG)) ==
            0)
            break;
        if (errno == EINTR)
            continue;
        /* ECHILD: something else reaped it (waitpid(-1), SIGCHLD set to
         * SIG_IGN); its status is lost. */
        p->state = LOST;
        proc_finish(p);
        return 1;
    }
    if (si.si_pid == 0)
        return 0;
    p->wstatus = wstatus_of(&si);
    p->state = REAPED;
    proc_finish(p);
    return 1;
}

static void exit_arm(ca_process *p);

static void exit_wake(ca__fdwait *w, int result)
{
    ca_process *p = (ca_process *)((char *)w - offsetof(ca_process, exit_waiter));
    if (result < 0)
        return; /* the pidfd was closed */
    if (!proc_reap(p, 0))
        exit_arm(p); /* not exited after all: keep watching */
}

static void exit_arm(ca_process *p)
{
    ca_loop *l = p->st->loop;
    p->exit_waiter = (ca__fdwait){.fd = p->pidfd, .events = CA_READ,
                                  .wake = exit_wake};
    if (ca__fd_take_ready(l, p->pidfd, CA_READ) && proc_reap(p, 0))
        return;
    ca__fd_add_waiter(l, &p->exit_waiter);
}

static void scan(struct proc_state *st)
{
    ca_process *p = st->procs;
    while (p) {
        ca_process *next = p->next; /* p may be freed */
        if (p->state == RUNNING)
            proc_reap(p, 0);
        p = next;
    }
}

static void state_exit(ca_loop *l, ca__exit_hook *h);

static void ev_arm(struct proc_state *st);

static void ev_wake(ca__fdwait *w, int result)
{
    struct proc_state *st =
        (struct proc_state *)((char *)w - offsetof(struct proc_state, ev_waiter));
    if (result < 0)
        return;
    ev_arm(st);
}

static void ev_arm(struct proc_state *st)
{
    uint64_t n;
    while (read(st->evfd, &n, sizeof(n)) == (ssize_t)sizeof(n))
        ;
    ca__fd_take_ready(st->loop, st->evfd, CA_READ);
    scan(st);
    st->ev_waiter = (ca__fdwait){.fd = st->evfd, .events = CA_READ,
                                 .wake = ev_wake};
    ca__fd_add_waiter(st->loop, &st->ev_waiter);
}

void ca__subprocess_sigchld(ca_loop *l)
{
    struct proc_state *st =
        (struct proc_state *)ca__loop_find_hook(l, state_exit);
    if (st && st->sigchld)
        scan(st);
}

/* SIGCHLD mode: an eventfd the handler writes, watched by the loop. */
static int sigchld_setup(struct proc_state *st)
{
    st->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (st->evfd < 0)
        return -errno;
    int r = ca__fd_register(st->loop, st->evfd);
    if (r >= 0)
        r = chld_attach(st->evfd);
    if (r < 0) {
        ca_close(st->evfd);
        st->evfd = -1;
        return r;
    }
    st->slot = r;
    ev_arm(st);
    return 0;
}

static int state_get(ca_loop *l, struct proc_state **out)
{
    struct proc_state *st =
        (struct proc_state *)ca__loop_find_hook(l, state_exit);
    if (st) {
        *out = st;
        return 0;
    }
    st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->loop = l;
    st->evfd = -1;
    st->slot = -1;
    st->sigchld = want_sigchld();
    if (st->sigchld) {
        int r = sigchld_setup(st);
        if (r < 0) {
            free(st);
            return r;
        }
    }
    st->hook.fn = state_exit;
    ca__loop_at_exit(l, &st->hook);
    *out = st;
    return 0;
}

/* Every task has finished.  Kill and reap what still runs; detach what
 * the user still holds (it stays readable: pid, status). */
static void state_exit(ca_loop *l, ca__exit_hook *h)
{
    struct proc_state *st = (struct proc_state *)h;
    ca_process *p;
    while ((p = st->procs) != NULL) {
        int freed = p->freed; /* then the reap frees and unlinks it */
        if (p->state == RUNNING && !proc_reap(p, 0)) {
            ca_subprocess_kill(p);
            proc_reap(p, 1);
        }
        if (freed)
            continue;
        for (int i = 0; i < 3; i++) {
            ca_stream_close(p->std[i]); /* no task: does not wait */
            p->std[i] = NULL;
        }
        proc_unlink(p);
        p->st = NULL;
    }
    if (st->sigchld) {
        chld_detach(st->slot);
        ca_close(st->evfd);
    }
    free(st);
}

/* ------------------------------------------------------------------------ */
/* Spawning                                                                 */
/* ------------------------------------------------------------------------ */

/* 1 if path names a file we may execute.  A directory passes access(X_OK)
 * (search permission) but execve refuses it with EACCES, and execvp (and
 * Python's subprocess, and the shell) then go on along $PATH: a directory
 * called like the program in an earlier $PATH entry ("." and a directory
 * "test") must not hide the program.  *eacces is set when a file was
 * found that we may not execute, execvp's error if nothing else is. */
static int executable_file(const char *path, int *eacces)
{
    struct stat sb;
    if (stat(path, &sb) < 0) {
        if (errno == EACCES)
            *eacces = 1; /* a directory on the way we may not search */
        return 0;
    }
    if (S_ISDIR(sb.st_mode) || access(path, X_OK) < 0) {
        *eacces = 1;
        return 0;
    }
    return 1;
}

/* Find name along $PATH like execvp (name has no '/').  Returns 0 with the
 * path in buf, or -ENOENT / -EACCES. */
static int path_lookup(const char *name, char *buf, size_t cap)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    size_t nl = strlen(name);
    int eacces = 0;
    for (const char *p = path;; p++) {
        const char *end = strchr(p, ':');
        size_t dl = end ? (size_t)(end - p) : strlen(p);
        const char *dir = dl ? p : ".";
        if (dl == 0)
            dl = 1;
        if (dl + 1 + nl + 1 <= cap) {
            memcpy(buf, dir, dl);
            buf[dl] = '/';
            memcpy(buf + dl + 1, name, nl + 1);
            if (executable_file(buf, &eacces))
                return 0;
        }
        if (!end)
            return eacces ? -EACCES : -ENOENT;
        p = end;
    }
}

/* Move fd above 2 (close-on-exec) so dup2 onto 0-2 clears the flag. */
static int above_stdio(int fd)
{
    if (fd > 2)
        return fd;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int e = errno;
    close(fd);
    errno = e;
    return n;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

struct spawn_plan {
    int child[3];  /* our copies of the child's ends, closed after spawn */
    int parent[3]; /* our ends of the pipes, until they become streams */
};

/* Prepare stdio i (0, 1, 2) for the child in fa.  Returns 0 or -errno. */
static int plan_stdio(struct spawn_plan *sp, posix_spawn_file_actions_t *fa,
                      int i, int mode, int fd)
{
    int pair[2];
    switch (mode) {
    case CA_STDIO_INHERIT:
        return 0;
    case CA_STDIO_DEVNULL:
        return -posix_spawn_file_actions_addopen(
            fa, i, "/dev/null", i == 0 ? O_RDONLY : O_WRONLY, 0);
    case CA_STDIO_STDOUT:
        return -posix_spawn_file_actions_adddup2(fa, 1, 2);
    case CA_STDIO_FD:
        sp->child[i] = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (sp->child[i] < 0)
            return -errno;
        return -posix_spawn_file_actions_adddup2(fa, sp->child[i], i);
    case CA_STDIO_PIPE:
        break;
    default:
        return -EINVAL;
    }
    if (i == 0) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
            return -errno;
    } else {
        if (pipe2(pair, O_CLOEXEC) < 0)
            return -errno;
        int t = pair[0]; /* the read end is ours */
        pair[0] = pair[1];
        pair[1] = t;
    }
    /* pair[0]: the child's end, pair[1]: ours. */
    sp->parent[i] = pair[1];
    sp->child[i] = above_stdio(pair[0]);
    if (sp->child[i] < 0)
        return -errno;
    int r = set_nonblock(sp->parent[i]);
    if (r < 0)
        return r;
    return -posix_spawn_file_actions_adddup2(fa, sp->child[i], i);
}

static int check_opts(const ca_subprocess_opts *o)
{
    int modes[3] = {o->stdin_mode, o->stdout_mode, o->stderr_mode};
    int fds[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
    for (int i = 0; i < 3; i++) {
        if (modes[i] < CA_STDIO_INHERIT || modes[i] > CA_STDIO_STDOUT)
            return -EINVAL;
        if (modes[i] == CA_STDIO_STDOUT && i != 2)
            return -EINVAL;
        if (modes[i] == CA_STDIO_FD && fds[i] < 0)
            return -EBADF;
    }
    return 0;
}

static int spawn(pid_t *pid, const char *path, const char *const argv[],
                 char *const envp[], const ca_subprocess_opts *o,
                 struct spawn_plan *sp)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int r = -posix_spawn_file_actions_init(&fa);
    if (r < 0)
        return r;
    r = -posix_spawnattr_init(&at);
    if (r < 0) {
        posix_spawn_file_actions_destroy(&fa);
        return r;
    }
    int modes[3] = {o->stdin_mode, o->stdout_mode, o->stderr_mode};
    int fds[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
    for (int i = 0; i < 3 && r == 0; i++)
        r = plan_stdio(sp, &fa, i, modes[i], fds[i]);
    if (r == 0 && o->cwd)
        r = -posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
    if (r == 0 && !o->inherit_fds)
        r = -posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    if (r == 0) {
        /* The child starts clean: the loop thread's mask may block signals
         * it reads through a signalfd (ca_run's SIGINT and SIGTERM). */
        sigset_t none, def;
        sigemptyset(&none);
        sigemptyset(&def);
        sigaddset(&def, SIGPIPE);
        sigaddset(&def, SIGXFSZ);
        short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
        if (o->new_session)
            flags |= POSIX_SPAWN_SETSID;
        if (o->new_process_group)
            flags |= POSIX_SPAWN_SETPGROUP;
        r = -posix_spawnattr_setsigmask(&at, &none);
        if (r == 0)
            r = -posix_spawnattr_setsigdefault(&at, &def);
        if (r == 0)
            r = -posix_spawnattr_setpgroup(&at, 0);
        if (r == 0)
            r = -posix_spawnattr_setflags(&at, flags);
    }
    if (r == 0)
        r = -posix_spawn(pid, path, &fa, &at, (char *const *)argv, envp);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    return r;
}

static void plan_close(struct spawn_plan *sp)
{
    for (int i = 0; i < 3; i++) {
        if (sp->child[i] >= 0)
            close(sp->child[i]);
        if (sp->parent[i] >= 0)
            close(sp->parent[i]);
        sp->child[i] = sp->parent[i] = -1;
    }
}

/* One spawn, run on a spawner thread (or inline): everything it reads is
 * the caller's and stays put while the caller waits. */
struct spawn_call {
    ca__spawn_job job; /* first */
    pid_t pid;
    const char *path;
    const char *const *argv;
    char *const *envp;
    const ca_subprocess_opts *o;
    struct spawn_plan sp;
    int result;
};

static void spawn_call_run(ca__spawn_job *job)
{
    struct spawn_call *c = (struct spawn_call *)job;
    c->result = spawn(&c->pid, c->path, c->argv, c->envp, c->o, &c->sp);
    for (int i = 0; i < 3; i++) {
        if (c->sp.child[i] >= 0)
            close(c->sp.child[i]);
        c->sp.child[i] = -1;
    }
}

/* A copy of environ's array (not of the strings, which setenv never
 * frees): another task may setenv while a spawner thread reads it. */
static char **environ_copy(void)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **e = malloc((n + 1) * sizeof(*e));
    if (e) {
        if (n)
            memcpy(e, environ, n * sizeof(*e));
        e[n] = NULL;
    }
    return e;
}

/* Give the child a pidfd (or not, in SIGCHLD mode) and start watching it. */
static int watch(struct proc_state *st, ca_process *p)
{
    p->pidfd = -1;
    if (!st->sigchld) {
#ifdef SYS_pidfd_open
        p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
#endif
        if (p->pidfd < 0)
            return -errno;
        int r = ca__fd_register(st->loop, p->pidfd);
        if (r < 0) {
            close(p->pidfd);
            p->pidfd = -1;
            return r;
        }
    }
    p->st = st;
    p->next = st->procs;
    if (st->procs)
        st->procs->prev = p;
    st->procs = p;
    if (p->pidfd >= 0)
        exit_arm(p);
    else
        proc_reap(p, 0); /* its SIGCHLD may have come while it was spawning */
    return 0;
}

int ca_subprocess_exec(ca_process **out, const char *const argv[],
                       const ca_subprocess_opts *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!argv || !argv[0] || !argv[0][0])
        return -EINVAL;
    ca_subprocess_opts none;
    memset(&none, 0, sizeof(none));
    const ca_subprocess_opts *o = opts ? opts : &none;
    int r = check_opts(o);
    if (r < 0)
        return r;
    ca_loop *l = ca__loop();
    if (!l)
        return -CA_ENOLOOP;
    struct proc_state *st = NULL;
    r = state_get(l, &st);
    if (r < 0)
        return r;

    /* Failures the child would report, found here first: a clear error
     * even where the child's report is lost (valgrind runs posix_spawn's
     * vfork child as a fork). */
    struct stat sb;
    if (o->cwd && stat(o->cwd, &sb) < 0)
        return -errno;
    if (o->cwd && !S_ISDIR(sb.st_mode))
        return -ENOTDIR;
    char buf[PATH_MAX];
    const char *path = argv[0];
    if (!strchr(path, '/')) {
        r = path_lookup(path, buf, sizeof(buf));
        if (r < 0)
            return r;
        path = buf;
    } else if (path[0] == '/' || !o->cwd) {
        if (access(path, X_OK) < 0)
            return -errno;
    }

    ca_process *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->pidfd = -1;
    p->max_output = o->max_output;
    struct spawn_call c = {.job = {.run = spawn_call_run},
                           .path = path,
                           .argv = argv,
                           .o = o,
                           .sp = {{-1, -1, -1}, {-1, -1, -1}}};
    char **envp = NULL;
    if (o->env) {
        c.envp = (char *const *)o->env;
    } else if (!l->current) {
        c.envp = environ; /* inline: nothing else runs meanwhile */
    } else if ((envp = environ_copy()) != NULL) {
        c.envp = envp;
    } else {
        free(p);
        return -ENOMEM;
    }
    /* In a task, on a spawner thread; in a callback (or if no thread can
     * be had), here. */
    if (ca__spawn_offload(&c.job) < 0)
        spawn_call_run(&c.job);
    free(envp);
    struct spawn_plan sp = c.sp;
    r = c.result;
    if (r == 0) {
        p->pid = c.pid;
        r = watch(st, p);
    }
    if (r < 0) {
        if (p->pid > 0) {
            /* Started, but it cannot be watched (out of descriptors): do
             * not leave it behind. */
            kill(p->pid, SIGKILL);
            while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR)
                ;
        }
        plan_close(&sp);
        free(p);
        return r;
    }
    /* The pipes become streams; a stream takes its fd even on failure. */
    for (int i = 0; i < 3; i++) {
        if (sp.parent[i] < 0)
            continue;
        int fd = sp.parent[i];
        sp.parent[i] = -1;
        int e = ca_stream_open(&p->std[i], fd, &o->stream);
        if (e < 0 && r == 0)
            r = e;
    }
    if (r < 0) {
        ca_subprocess_free(p); /* kills and reaps it */
        return r;
    }
    *out = p;
    return 0;
}

int ca_subprocess_shell(ca_process **out, const char *command,
                        const ca_subprocess_opts *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!command)
        return -EINVAL;
    const char *argv[] = {"/bin/sh", "-c", command, NULL};
    return ca_subprocess_exec(out, argv, opts);
}

/* ------------------------------------------------------------------------ */
/* Queries, signals                                                         */
/* ------------------------------------------------------------------------ */

pid_t ca_subprocess_pid(const ca_process *p)
{
    return p ? p->pid : -EINVAL;
}

ca_stream *ca_subprocess_stdin(const ca_process *p)
{
    return p ? p->std[0] : NULL;
}

ca_stream *ca_subprocess_stdout(const ca_process *p)
{
    return p ? p->std[1] : NULL;
}

ca_stream *ca_subprocess_stderr(const ca_process *p)
{
    return p ? p->std[2] : NULL;
}

int ca_subprocess_close_stdin(ca_process *p)
{
    if (!p || !p->std[0])
        return -EINVAL;
    ca_stream *s = p->std[0];
    p->std[0] = NULL;
    return ca_stream_close(s);
}

int ca_subprocess_send_signal(ca_process *p, int signo)
{
    if (!p || signo < 0 || signo >= 65)
        return -EINVAL;
    if (p->state != RUNNING)
        return -ESRCH;
#ifdef SYS_pidfd_send_signal
    if (p->pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, p->pidfd, signo, NULL, 0) == 0)
            return 0;
        if (errno != ENOSYS)
            return -errno;
    }
#endif
    /* Not reaped yet: the pid cannot have been reused (a zombie keeps it). */
    return kill(p->pid, signo) == 0 ? 0 : -errno;
}

int ca_subprocess_terminate(ca_process *p)
{
    return ca_subprocess_send_signal(p, SIGTERM);
}

int ca_subprocess_kill(ca_process *p)
{
    return ca_subprocess_send_signal(p, SIGKILL);
}

const char *ca_subprocess_watcher(void)
{
    ca_loop *l = ca__loop();
    if (!l)
        return NULL;
    struct proc_state *st =
        (struct proc_state *)ca__loop_find_hook(l, state_exit);
    int sig = st ? st->sigchld : want_sigchld();
    return sig ? "sigchld" : "pidfd";
}

/* ------------------------------------------------------------------------ */
/* Waiting                                                                  */
/* ------------------------------------------------------------------------ */

static int status_of(const ca_process *p, int *wstatus)
{
    if (p->state == LOST)
        return -ECHILD;
    if (wstatus)
        *wstatus = p->wstatus;
    return 0;
}

static int wait_until(ca_process *p, int64_t until, int *wstatus,
                      const char *fn)
{
    if (p->state != RUNNING)
        return status_of(p, wstatus);
    ca_task *self = ca__task_self(fn);
    if (!self)
        return -EPERM;
    if (!p->st)
        return -ECHILD;
    int rc;
    p->inside++; /* p stays allocated until we leave */
    for (;;) {
        ca__waiter w = {.task = self};
        ca__waitlist_push(&p->waiters, &w);
        int r = ca__task_park(self, until);
        if (ca__waitlist_linked(&p->waiters, &w))
            ca__waitlist_remove(&p->waiters, &w);
        if (r == -EBADF || (p->freed && p->state == RUNNING)) {
            rc = -EBADF; /* freed while we waited */
            break;
        }
        if (p->state != RUNNING) {
            rc = status_of(p, wstatus); /* also if freed since the exit */
            break;
        }
        if (r == CA__WAIT_TIMEOUT || r < 0) {
            rc = r == CA__WAIT_TIMEOUT ? -ETIMEDOUT : r;
            break;
        }
    }
    p->inside--;
    proc_release_if_done(p);
    return rc;
}

int ca_subprocess_wait(ca_process *p, int *wstatus)
{
    if (!p)
        return -EINVAL;
    return wait_until(p, INT64_MAX, wstatus, "ca_subprocess_wait");
}

int ca_subprocess_wait_timeout(ca_process *p, double timeout, int *wstatus)
{
    if (!p || isnan(timeout))
        return -EINVAL;
    int64_t until = INT64_MAX;
    if (timeout >= 0 && timeout < 1e9)
        until = ca__clock_ns() + (int64_t)(timeout * 1e9);
    return wait_until(p, until, wstatus, "ca_subprocess_wait_timeout");
}

int ca_subprocess_poll(const ca_process *p, int *wstatus)
{
    if (!p)
        return -EINVAL;
    if (p->state == RUNNING)
        return -EAGAIN;
    return status_of(p, wstatus);
}

/* ------------------------------------------------------------------------ */
/* communicate                                                              */
/* ------------------------------------------------------------------------ */

struct feed {
    ca_process *p;
    const char *buf;
    size_t len;
};

static int feed_task(void *arg)
{
    struct feed *f = arg;
    ca_stream *s = f->p->std[0];
    int r = 0;
    for (size_t off = 0; off < f->len && r == 0;) {
        size_t n = f->len - off < FEED_CHUNK ? f->len - off : FEED_CHUNK;
        r = ca_stream_write(s, f->buf + off, n);
        if (r == 0)
            r = ca_stream_drain(s);
        off += n;
    }
    int c = ca_subprocess_close_stdin(f->p);
    if (r == 0)
        r = c;
    /* The child may exit, or close its stdin, without reading it all. */
    return r == -EPIPE || r == -ECONNRESET ? 0 : r;
}

struct collect {
    ca_stream *s;
    ca_output *o; /* NULL: read and drop */
    size_t max;
    char *buf;
    size_t len, cap;
};

/* Read c's stream to its end and drop what comes.  A pipe holds 64 KiB:
 * reading it in pieces that size takes one read per pipeful, where a small
 * buffer on the task's stack took sixteen (200 MB dropped: 49k reads and
 * 0.21 s before, 3k reads after).  Without memory for it, small pieces. */
static int drop_output(struct collect *c)
{
    char scratch[4096];
    char *buf = malloc(COLLECT_CHUNK);
    size_t cap = buf ? COLLECT_CHUNK : sizeof(scratch);
    ssize_t n;
    while ((n = ca_stream_read(c->s, buf ? buf : scratch, cap)) > 0)
        ;
    free(buf);
    return (int)n;
}

static int collect_task(void *arg)
{
    struct collect *c = arg;
    if (!c->o)
        return drop_output(c);
    for (;;) {
        /* Grow while there is little room, up to the ceiling + 2 bytes
         * (room for the NUL and for one byte past it, which tells). */
        int at_max = c->max && c->cap >= c->max + 2;
        if (c->cap - c->len < COLLECT_CHUNK / 4 && !at_max) {
            size_t cap = c->cap ? c->cap * 2 : COLLECT_CHUNK;
            if (c->max && cap > c->max + 2)
                cap = c->max + 2;
            char *b = realloc(c->buf, cap);
            if (!b)
                return -ENOMEM;
            c->buf = b;
            c->cap = cap;
        }
        ssize_t n = ca_stream_read(c->s, c->buf + c->len, c->cap - c->len - 1);
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        c->len += (size_t)n;
        if (c->max && c->len > c->max)
            return -ENOBUFS;
    }
    if (!c->buf && !(c->buf = malloc(1)))
        return -ENOMEM;
    c->buf[c->len] = '\0';
    return 0;
}

int ca_subprocess_communicate(ca_process *p, const void *input,
                              size_t input_len, ca_output *out,
                              ca_output *err)
{
    if (out)
        *out = (ca_output){NULL, 0};
    if (err)
        *err = (ca_output){NULL, 0};
    if (!p || (!input && input_len) || (input_len && !p->std[0]))
        return -EINVAL;
    if (!ca__task_self("ca_subprocess_communicate"))
        return -EPERM;
    struct feed f = {p, input, input_len};
    struct collect c[2] = {
        {.s = p->std[1], .o = out, .max = p->max_output},
        {.s = p->std[2], .o = err, .max = p->max_output},
    };
    ca_group *g;
    int r = ca_group_new(&g);
    if (r < 0)
        return r;
    if (p->std[0])
        r = ca_group_spawn(g, NULL, feed_task, &f);
    for (int i = 0; i < 2 && r == 0; i++)
        if (c[i].s)
            r = ca_group_spawn(g, NULL, collect_task, &c[i]);
    if (r < 0)
        ca_group_cancel(g);
    int w = ca_group_wait(g);
    ca_group_free(g);
    if (r == 0)
        r = w;
    if (r == 0)
        r = ca_subprocess_wait(p, NULL);
    if (r == -ECHILD)
        r = 0; /* the status is lost, the output is not */
    for (int i = 0; i < 2; i++) {
        if (r == 0 && c[i].o) {
            c[i].o->data = c[i].buf;
            c[i].o->len = c[i].len;
        } else {
            free(c[i].buf);
        }
    }
    return r;
}

/* ------------------------------------------------------------------------ */
/* Freeing                                                                  */
/* ------------------------------------------------------------------------ */

void ca_subprocess_free(ca_process *p)
{
    if (!p)
        return;
    if (p->state == RUNNING && p->st)
        ca_subprocess_kill(p);
    for (int i = 0; i < 3; i++) {
        if (!p->std[i])
            continue;
        /* Never wait here: what stdin still buffers is dropped (the child
         * is gone or being killed). */
        shutdown(ca_stream_fd(p->std[i]), SHUT_RDWR);
        ca_stream_close(p->std[i]);
        p->std[i] = NULL;
    }
    /* Waiters see p->freed when they run (p stays allocated while any
     * task is inside a wait); a running child is reaped, then p freed, in
     * the background. */
    p->freed = 1;
    ca__waitlist_wake_all(&p->waiters, -EBADF);
    proc_release_if_done(p);
}
