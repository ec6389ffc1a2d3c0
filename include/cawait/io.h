/*
 * cawait processes and signals: child programs with their stdin, stdout and
 * stderr as streams, and signals received by tasks.  Included by
 * <cawait.h>; do not include directly.  The guide is docs/processes.md.
 *
 * Every fd these functions create is close-on-exec, so a child started by
 * anything (this module, another thread's fork) inherits none of them.
 * Blocking calls honour cancellation and deadline scopes and return -EPERM
 * outside a task.  Objects belong to the loop that made them: use them on
 * its thread only.
 */
#ifndef CAWAIT_IO_H
#define CAWAIT_IO_H

#include <signal.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------ */
/* Subprocesses (asyncio.create_subprocess_exec)                            */
/* ------------------------------------------------------------------------ */

typedef struct ca_process ca_process;

/* What a child's stdin, stdout or stderr is connected to. */
enum ca_stdio {
    CA_STDIO_INHERIT = 0, /* the parent's own fd 0, 1 or 2 (the default) */
    CA_STDIO_DEVNULL,     /* /dev/null */
    /* A pipe to the parent, used as a ca_stream (ca_subprocess_stdin and
     * friends).  The child's stdin is a Unix stream socket rather than a
     * pipe, so ca_stream_write_eof delivers end of file and writing to a
     * child that has exited fails with -EPIPE instead of raising SIGPIPE. */
    CA_STDIO_PIPE,
    CA_STDIO_FD,     /* the descriptor in the matching *_fd field (the
                        caller keeps it: it is duplicated into the child) */
    CA_STDIO_STDOUT, /* stderr only: the same as stdout (2>&1) */
};

/* Options for ca_subprocess_exec.  Zero (or a NULL pointer) is the default
 * everywhere. */
typedef struct ca_subprocess_opts {
    int stdin_mode;  /* enum ca_stdio */
    int stdout_mode; /* enum ca_stdio */
    int stderr_mode; /* enum ca_stdio; CA_STDIO_STDOUT merges it */
    int stdin_fd, stdout_fd, stderr_fd; /* for CA_STDIO_FD */
    /* The child's environment, "NAME=value" strings ending with NULL;
     * NULL: this process's environment. */
    const char *const *env;
    /* The child's working directory; NULL: ours. */
    const char *cwd;
    /* 0: the child gets fds 0, 1 and 2 only (Python's close_fds=True).
     * 1: it also inherits every fd of ours without FD_CLOEXEC. */
    int inherit_fds;
    /* 1: the child starts a new session (setsid). */
    int new_session;
    /* 1: the child leads a new process group (setpgid(0, 0)). */
    int new_process_group;
    /* Limits of the pipe streams (see ca_stream_opts). */
    ca_stream_opts stream;
    /* Ceiling on what ca_subprocess_communicate collects from stdout and
     * from stderr, each; 0: no ceiling. */
    size_t max_output;
} ca_subprocess_opts;

/*
 * Start argv[0] with the arguments argv (NULL-terminated), searching $PATH
 * when argv[0] has no '/' (execvp).  The child is spawned with posix_spawn
 * (vfork speed: nothing is copied), with an empty signal mask and SIGPIPE
 * and SIGXFSZ at their default disposition; it inherits none of our fds
 * besides 0-2 unless opts->inherit_fds.  A failure to start is returned
 * here, never as an exit status 127: -ENOENT (no such program, or cwd does
 * not exist), -ENOTDIR, -EACCES, -ENOEXEC, -E2BIG...; also -EINVAL (bad
 * argv or options), -EBADF, -ENOMEM, -EMFILE, -CA_ENOLOOP.  On success
 * *out owns the process; free it with ca_subprocess_free.
 *
 * In a task the spawn runs on one of the loop's spawner threads (at most
 * 4, started on demand) while the task waits, so the loop never stalls in
 * vfork and concurrent spawns overlap; this wait is not a cancellation
 * point (it takes milliseconds; the next blocking call sees the cancel).
 * From a callback the spawn runs inline.  While a spawn is in flight,
 * other tasks may call setenv (the environment is copied first), but the
 * strings in argv, env and cwd must stay as they are until it returns.
 *
 * Child exit is observed with a pidfd (Linux 5.3+): no SIGCHLD handler,
 * nothing process-wide.  Where pidfd_open is missing, or with
 * $CAWAIT_SUBPROCESS_SIGCHLD=1 (tests), a SIGCHLD handler is installed for
 * as long as a loop uses it (see docs/processes.md); either way children
 * are reaped with waitid on their own pid, never waitpid(-1), so children
 * started by other code are left alone.  Do not set SIGCHLD to SIG_IGN:
 * the kernel would then reap children before their status can be read.
 */
CA_EXTERN int ca_subprocess_exec(ca_process **out, const char *const argv[],
                                 const ca_subprocess_opts *opts);
/*
 * ca_subprocess_exec of "/bin/sh -c command" (asyncio's
 * create_subprocess_shell).  DANGEROUS with untrusted input: the shell
 * interprets quotes, ;, |, $(...) and the rest, so a file name such as
 * "x; rm -rf ~" runs a command.  Pass arguments through ca_subprocess_exec
 * instead.  Note that /bin/sh itself starts, so a missing program is exit
 * status 127 here, not -ENOENT.
 */
CA_EXTERN int ca_subprocess_shell(ca_process **out, const char *command,
                                  const ca_subprocess_opts *opts);

/* The child's process id (still valid after it has been reaped, but then
 * the number may belong to another process: signal through
 * ca_subprocess_send_signal, never kill(2)). */
CA_EXTERN pid_t ca_subprocess_pid(const ca_process *p);
/* The pipe streams, owned by p (NULL unless that stdio is CA_STDIO_PIPE).
 * Read and write them with ca_stream_*; do not close them, except with
 * ca_subprocess_close_stdin. */
CA_EXTERN ca_stream *ca_subprocess_stdin(const ca_process *p);
CA_EXTERN ca_stream *ca_subprocess_stdout(const ca_process *p);
CA_EXTERN ca_stream *ca_subprocess_stderr(const ca_process *p);
/* Flush what stdin has buffered and close it: the child reads end of file.
 * Returns 0, the flush error (-EPIPE: the child closed its end; the stream
 * is closed anyway), -EINVAL (no stdin pipe).  Blocking while the flush
 * waits. */
CA_EXTERN int ca_subprocess_close_stdin(ca_process *p);

/*
 * Wait until the child has exited and store its wait status in *wstatus
 * (if not NULL): use WIFEXITED/WEXITSTATUS and WIFSIGNALED/WTERMSIG from
 * <sys/wait.h>, so "exit 1" and "killed by SIGKILL" are told apart.  Other
 * tasks run meanwhile.  Returns 0, -ECANCELED or -ETIMEDOUT (cancelled, or
 * a deadline scope: the child keeps running and can be waited for again),
 * -ECHILD (the status was lost: something else reaped the child), -EINVAL,
 * -EPERM.  Any number of tasks may wait at once.  If the child has already
 * exited, returns at once (not a cancellation point).  Blocking.
 */
CA_EXTERN int ca_subprocess_wait(ca_process *p, int *wstatus);
/* ca_subprocess_wait for at most `timeout` seconds (< 0: no limit):
 * -ETIMEDOUT when it passes, the child keeps running.  Blocking. */
CA_EXTERN int ca_subprocess_wait_timeout(ca_process *p, double timeout,
                                         int *wstatus);
/* Without waiting: 0 and *wstatus if the child has exited and been reaped,
 * -EAGAIN if it is still running, -ECHILD, -EINVAL. */
CA_EXTERN int ca_subprocess_poll(const ca_process *p, int *wstatus);

/* Collected output of ca_subprocess_communicate. */
typedef struct ca_output {
    char *data; /* malloc'd and NUL-terminated (free it), or NULL */
    size_t len;
} ca_output;

/*
 * asyncio's communicate: write `input` (input_len bytes, may be 0) to stdin
 * and close it, read stdout and stderr to their end at the same time (a
 * child that fills one pipe while we feed the other cannot deadlock), then
 * wait for the child to exit.  out and err (each may be NULL: that output is
 * then read and dropped) receive what came from stdout and stderr if they
 * are pipes, else {NULL, 0}.  A child that exits without reading its input
 * is not an error.  Returns 0 (the wait status is then ready for
 * ca_subprocess_poll), -EINVAL (input given but stdin is not a pipe),
 * -ENOBUFS (an output went past opts.max_output), -ENOMEM, the stream's
 * error, -ECANCELED / -ETIMEDOUT (nothing is kept: *out and *err are {NULL,
 * 0}; the child keeps running).  Memory: the whole output, bounded by
 * max_output.  Call it once, before anything else read the pipes.
 * Blocking.
 */
CA_EXTERN int ca_subprocess_communicate(ca_process *p, const void *input,
                                        size_t input_len, ca_output *out,
                                        ca_output *err);

/* Send signo to the child: through its pidfd where the kernel has them, so
 * a signal can never reach another process that reused the pid.  Returns 0,
 * -ESRCH once the child has been reaped (nothing is sent), -EINVAL, or
 * kill's error.  Never blocks.  terminate is SIGTERM, kill SIGKILL. */
CA_EXTERN int ca_subprocess_send_signal(ca_process *p, int signo);
CA_EXTERN int ca_subprocess_terminate(ca_process *p);
CA_EXTERN int ca_subprocess_kill(ca_process *p);

/*
 * Close the pipes and free p.  A child still running is killed (SIGKILL)
 * and reaped in the background, as asyncio's transport.close() does: a
 * child cawait started never becomes a zombie and never outlives its
 * object unnoticed.  To let a child finish, wait for it first.  Tasks
 * waiting on p get -EBADF (or the exit status if the child had exited
 * before the free), and p's memory lasts until the last of them has
 * returned.  Closing stdin flushes it (a
 * killed child closes its end, so this does not hang).  NULL is ignored.
 * ca_run reaps every child left when it returns (killing those still
 * running); a process object that outlives its loop can still be queried
 * and freed.
 */
CA_EXTERN void ca_subprocess_free(ca_process *p);

/* How this thread's loop observes child exits: "pidfd" or "sigchld"
 * (decided when the loop first starts a child), or NULL without a loop. */
CA_EXTERN const char *ca_subprocess_watcher(void);

/* ------------------------------------------------------------------------ */
/* Signals                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * Signals are received through a signalfd: while a task waits for a
 * signal, a receiver is open or a handler is installed, the signal is
 * blocked in the loop's thread and read by the loop; when the last of
 * those goes, it is unblocked again (an instance that arrived meanwhile and
 * that nobody took is discarded), so the thread's mask and the signal's
 * disposition end as they began.  The kernel delivers a process-directed
 * signal to any thread that does not block it: threads of your own must
 * block the signals the loop handles (threads the loop thread creates
 * afterwards inherit its mask).  SIGKILL, SIGSTOP, the fault signals
 * (SIGSEGV, SIGBUS, SIGILL, SIGFPE) and glibc's internal ones are refused
 * with -EINVAL.  Capturing SIGINT or SIGTERM takes it over from ca_run's
 * default handling until released.
 */

/* What is known about one received signal. */
typedef struct ca_siginfo {
    int signo;
    int code;   /* si_code: SI_USER (kill), SI_QUEUE, SI_TKILL, CLD_*... */
    pid_t pid;  /* the sender (kill/sigqueue), or the child for SIGCHLD */
    uid_t uid;  /* the sender's real user id */
    int status; /* SIGCHLD: the exit code or signal; sigqueue's int value
                   for the others */
} ca_siginfo;

/*
 * Wait for signo for at most `timeout` seconds (< 0: no limit).  The signal
 * is captured only while the call waits.  Returns signo, -ETIMEDOUT
 * (timeout or deadline scope), -ECANCELED, -EINVAL, -EPERM.  Blocking.
 */
CA_EXTERN int ca_signal_wait(int signo, double timeout);
/* The same for any signal of *set; *info (if not NULL) receives the
 * details.  Returns the signal number or an error.  Blocking. */
CA_EXTERN int ca_signal_wait_set(const sigset_t *set, double timeout,
                                 ca_siginfo *info);

/*
 * A receiver (Trio's open_signal_receiver): captures the signals of *set
 * from ca_signal_open to ca_signal_close and queues what arrives (one
 * pending entry per signal number: repeats of a signal not yet received
 * merge, as the kernel merges them), so no signal is missed between two
 * receives.  open returns 0 and stores it, or -EINVAL, -ENOMEM, -EMFILE,
 * -CA_ENOLOOP.  Never blocks.
 */
typedef struct ca_signal_receiver ca_signal_receiver;
CA_EXTERN int ca_signal_open(ca_signal_receiver **out, const sigset_t *set);
/* The next queued signal, waiting up to `timeout` seconds (< 0: no limit)
 * for one.  Returns the signal number (and *info), -ETIMEDOUT, -ECANCELED,
 * -EBADF (closed meanwhile), -EINVAL, -EPERM.  A signal already queued is
 * returned at once (not a cancellation point).  Blocking. */
CA_EXTERN int ca_signal_receive(ca_signal_receiver *r, double timeout,
                                ca_siginfo *info);
/* Stop capturing and free r; tasks waiting in ca_signal_receive get
 * -EBADF (also those already woken but not yet run: r's memory lasts until
 * the last of them has returned).  NULL is ignored.  Receivers still open when
 * ca_run returns are closed and freed by it. */
CA_EXTERN void ca_signal_close(ca_signal_receiver *r);

/*
 * Handlers (asyncio's add_signal_handler).  When signo arrives, fn(info,
 * arg) runs on the loop: as a callback (flags 0: it must not block; several
 * arrivals before it runs merge into one call), or in a new task per
 * arrival (CA_SIGNAL_TASK: it may block; a failure it returns is reported
 * like any unjoined task's).  Several handlers of one signal all run, in
 * the order they were added.  Returns 0 and stores a handle, or -EINVAL,
 * -ENOMEM, -EMFILE, -CA_ENOLOOP.  Never blocks.
 */
#define CA_SIGNAL_TASK 0x1
typedef struct ca_signal_handler ca_signal_handler;
typedef int (*ca_signal_fn)(const ca_siginfo *info, void *arg);
CA_EXTERN int ca_signal_add(ca_signal_handler **out, int signo, ca_signal_fn fn,
                            void *arg, int flags);
/* Remove a handler (a call not yet run is dropped; tasks already started
 * run on) and free it.  Returns 0 or -EINVAL.  Handlers still installed
 * when ca_run returns are removed and freed by it.  Never blocks. */
CA_EXTERN int ca_signal_remove(ca_signal_handler *h);

#endif /* CAWAIT_IO_H */
