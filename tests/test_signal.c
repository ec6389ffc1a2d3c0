/* Signals as tasks (signalfd), and ca_run's SIGINT / SIGTERM behaviour. */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int blocked(int signo)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    return sigismember(&cur, signo) == 1;
}

static int at_default(int signo)
{
    struct sigaction sa;
    sigaction(signo, NULL, &sa);
    return !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL;
}

/* ------------------------------------------------------------------------ */
/* Waiting for a signal                                                     */
/* ------------------------------------------------------------------------ */

static int from_child_main(void *arg)
{
    (void)arg;
    ASSERT(!blocked(SIGUSR1));
    const char *argv[] = {"sh", "-c", "sleep 0.1; kill -USR1 $PPID", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, NULL), 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    ca_siginfo info;
    double t0 = mono();
    ASSERT_EQ(ca_signal_wait_set(&set, 10, &info), SIGUSR1);
    ASSERT_TIME_LT(mono() - t0, 5);
    ASSERT_EQ(info.signo, SIGUSR1);
    ASSERT_EQ(info.code, SI_USER);
    ASSERT_EQ(info.pid, ca_subprocess_pid(p));
    ASSERT_EQ(info.uid, getuid());
    /* Released: the mask is as before. */
    ASSERT(!blocked(SIGUSR1));
    ASSERT(at_default(SIGUSR1));
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    return 0;
}

static void test_wait_sigusr1_from_child(void)
{
    ASSERT_EQ(ca_run(from_child_main, NULL), 0);
}

struct sender {
    pthread_t loop_thread;
    pid_t pid;
};

static void *sender_thread(void *arg)
{
    struct sender *s = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* deliveries go to the loop */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    pthread_kill(s->loop_thread, SIGUSR1); /* thread-directed */
    kill(s->pid, SIGUSR2);                 /* process-directed */
    return NULL;
}

static int from_thread_main(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    ASSERT(blocked(SIGUSR1) && blocked(SIGUSR2));
    struct sender s = {pthread_self(), getpid()};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, sender_thread, &s), 0);
    int seen = 0;
    for (int i = 0; i < 2; i++) {
        ca_siginfo info;
        int sig = ca_signal_receive(r, 10, &info);
        ASSERT(sig == SIGUSR1 || sig == SIGUSR2);
        ASSERT_EQ(info.pid, getpid());
        ASSERT_EQ(info.code, sig == SIGUSR1 ? SI_TKILL : SI_USER);
        seen |= 1 << (sig == SIGUSR2);
    }
    ASSERT_EQ(seen, 3);
    pthread_join(th, NULL);
    ca_signal_close(r);
    ASSERT(!blocked(SIGUSR1) && !blocked(SIGUSR2));
    return 0;
}

static void test_wait_signal_from_thread(void)
{
    ASSERT_EQ(ca_run(from_thread_main, NULL), 0);
}

static int waiting_task(void *arg)
{
    (void)arg;
    return ca_signal_wait(SIGUSR1, -1);
}

static int timeout_main(void *arg)
{
    (void)arg;
    double t0 = mono();
    ASSERT_EQ(ca_signal_wait(SIGUSR1, 0.1), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.095);
    ASSERT_TIME_LT(dt, 2);
    ASSERT(!blocked(SIGUSR1));
    /* a deadline scope */
    ASSERT_EQ(ca_deadline_push(0.05), 0);
    ASSERT_EQ(ca_signal_wait(SIGUSR1, -1), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT(!blocked(SIGUSR1));
    /* cancellation */
    ca_task *t = ca_spawn(waiting_task, NULL);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT(blocked(SIGUSR1));
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ASSERT(!blocked(SIGUSR1));
    /* two waiters of one signal both get it */
    ca_task *a = ca_spawn(waiting_task, NULL);
    ca_task *b = ca_spawn(waiting_task, NULL);
    ASSERT_EQ(ca_sleep(0.02), 0);
    raise(SIGUSR1);
    ASSERT_EQ(ca_join(a), SIGUSR1);
    ASSERT_EQ(ca_join(b), SIGUSR1);
    ca_task_release(a);
    ca_task_release(b);
    ASSERT(!blocked(SIGUSR1));
    return 0;
}

static void test_wait_timeout_cancel_restore(void)
{
    ASSERT_EQ(ca_run(timeout_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Receivers                                                                */
/* ------------------------------------------------------------------------ */

static int receive_task(void *arg)
{
    return ca_signal_receive(arg, -1, NULL);
}

static int receiver_main(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGRTMIN);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    /* Arrivals between receives are queued, one entry per signal. */
    raise(SIGUSR2);
    ASSERT_EQ(ca_sleep(0.01), 0);
    raise(SIGUSR1);
    ASSERT_EQ(ca_sleep(0.01), 0);
    raise(SIGUSR2);
    ASSERT_EQ(ca_sleep(0.01), 0);
    union sigval v = {.sival_int = 1234};
    ASSERT_EQ(sigqueue(getpid(), SIGRTMIN, v), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_siginfo info;
    ASSERT_EQ(ca_signal_receive(r, 0, &info), SIGUSR2);
    ASSERT_EQ(ca_signal_receive(r, 0, &info), SIGUSR1);
    ASSERT_EQ(ca_signal_receive(r, 0, &info), SIGRTMIN);
    ASSERT_EQ(info.code, SI_QUEUE);
    ASSERT_EQ(info.status, 1234);
    ASSERT_EQ(ca_signal_receive(r, 0, &info), -ETIMEDOUT);
    ASSERT_EQ(ca_signal_receive(r, NAN, &info), -EINVAL);
    /* Closing wakes a waiting receiver with -EBADF. */
    ca_task *t = ca_spawn(receive_task, r);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_signal_close(r);
    ASSERT_EQ(ca_join(t), -EBADF);
    ca_task_release(t);
    ASSERT(!blocked(SIGUSR1) && !blocked(SIGUSR2) && !blocked(SIGRTMIN));
    /* A receiver left open is closed by ca_run. */
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    return 0;
}

static void test_receiver(void)
{
    ASSERT_EQ(ca_run(receiver_main, NULL), 0);
    ASSERT(!blocked(SIGUSR1) && !blocked(SIGUSR2) && !blocked(SIGRTMIN));
}

/* ------------------------------------------------------------------------ */
/* Handlers                                                                 */
/* ------------------------------------------------------------------------ */

static int calls[3];
static char order[16];
static size_t norder;

static int count_cb(const ca_siginfo *info, void *arg)
{
    ASSERT(ca_current() == NULL); /* a callback, not a task */
    calls[(intptr_t)arg]++;
    if (norder < sizeof(order) - 1)
        order[norder++] = (char)('0' + (intptr_t)arg);
    ASSERT_EQ(info->signo, SIGUSR1);
    return 0;
}

static int task_cb(const ca_siginfo *info, void *arg)
{
    ASSERT(ca_current() != NULL); /* a task: it may block */
    ASSERT_EQ(ca_sleep(0.01), 0);
    calls[2] += info->signo == SIGUSR2;
    (void)arg;
    return 0;
}

static int remove_self(const ca_siginfo *info, void *arg)
{
    (void)info;
    ca_signal_handler **h = arg;
    ASSERT_EQ(ca_signal_remove(*h), 0);
    *h = NULL;
    return 0;
}

static int handlers_main(void *arg)
{
    (void)arg;
    ca_signal_handler *h0, *h1, *h2;
    ASSERT_EQ(ca_signal_add(&h0, SIGUSR1, count_cb, (void *)0, 0), 0);
    ASSERT_EQ(ca_signal_add(&h1, SIGUSR1, count_cb, (void *)1, 0), 0);
    ASSERT_EQ(ca_signal_add(&h2, SIGUSR2, task_cb, NULL, CA_SIGNAL_TASK), 0);
    ASSERT(blocked(SIGUSR1) && blocked(SIGUSR2));
    for (int i = 0; i < 3; i++) {
        raise(SIGUSR1);
        ASSERT_EQ(ca_sleep(0.01), 0);
    }
    ASSERT_EQ(calls[0], 3);
    ASSERT_EQ(calls[1], 3);
    ASSERT_STREQ(order, "010101"); /* in the order they were added */
    raise(SIGUSR2);
    ASSERT_EQ(ca_sleep(0.05), 0);
    ASSERT_EQ(calls[2], 1);

    /* Removing one handler keeps the signal captured for the other. */
    ASSERT_EQ(ca_signal_remove(h0), 0);
    ASSERT(blocked(SIGUSR1));
    raise(SIGUSR1);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(calls[0], 3);
    ASSERT_EQ(calls[1], 4);
    /* A removed handler's pending call is dropped: raise, remove at once. */
    raise(SIGUSR1);
    ASSERT_EQ(ca_signal_remove(h1), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(calls[1], 4);
    ASSERT(!blocked(SIGUSR1));
    ASSERT(at_default(SIGUSR1));
    ASSERT_EQ(ca_signal_remove(h2), 0);
    ASSERT(!blocked(SIGUSR2));

    /* A handler that removes itself. */
    ca_signal_handler *self;
    ASSERT_EQ(ca_signal_add(&self, SIGUSR1, remove_self, &self, 0), 0);
    raise(SIGUSR1);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT(self == NULL);
    ASSERT(!blocked(SIGUSR1));

    /* Refused signals and bad arguments. */
    ca_signal_handler *h;
    int bad[] = {0, -1, 65, SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGFPE,
                 32, 33};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ASSERT_EQ(ca_signal_add(&h, bad[i], count_cb, NULL, 0), -EINVAL);
        ASSERT_EQ(ca_signal_wait(bad[i], 0), -EINVAL);
    }
    ASSERT_EQ(ca_signal_add(&h, SIGUSR1, NULL, NULL, 0), -EINVAL);
    ASSERT_EQ(ca_signal_add(&h, SIGUSR1, count_cb, NULL, 0x100), -EINVAL);
    ASSERT_EQ(ca_signal_add(NULL, SIGUSR1, count_cb, NULL, 0), -EINVAL);
    ASSERT_EQ(ca_signal_remove(NULL), -EINVAL);
    sigset_t empty, withkill;
    sigemptyset(&empty);
    sigemptyset(&withkill);
    sigaddset(&withkill, SIGUSR1);
    sigaddset(&withkill, SIGKILL);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &empty), -EINVAL);
    ASSERT_EQ(ca_signal_open(&r, &withkill), -EINVAL);
    ASSERT_EQ(ca_signal_open(&r, NULL), -EINVAL);
    ASSERT_EQ(ca_signal_wait_set(NULL, 0, NULL), -EINVAL);
    ASSERT(!blocked(SIGUSR1));

    /* A handler left installed is removed by ca_run. */
    ASSERT_EQ(ca_signal_add(&h, SIGUSR1, count_cb, (void *)0, 0), 0);
    return 0;
}

static void test_handlers_add_remove(void)
{
    ASSERT_EQ(ca_run(handlers_main, NULL), 0);
    ASSERT(!blocked(SIGUSR1));
    ASSERT(at_default(SIGUSR1));
    ca_signal_handler *h;
    ASSERT_EQ(ca_signal_add(&h, SIGUSR1, count_cb, NULL, 0), -CA_ENOLOOP);
}

/* A signal the program blocked itself stays blocked after a wait. */
static void raise_usr1(void *arg)
{
    (void)arg;
    raise(SIGUSR1);
}

static int preblocked_main(void *arg)
{
    (void)arg;
    ASSERT_EQ(ca_call_later(0.02, raise_usr1, NULL, NULL), 0);
    ASSERT_EQ(ca_signal_wait(SIGUSR1, 5), SIGUSR1);
    ASSERT(blocked(SIGUSR1));
    return 0;
}

static void test_preblocked_signal_stays_blocked(void)
{
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &one, NULL);
    ASSERT_EQ(ca_run(preblocked_main, NULL), 0);
    ASSERT(blocked(SIGUSR1));
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
}

/* The program captures SIGCHLD while the SIGCHLD fallback watches children:
 * the signal reaches the loop's signalfd, which passes it on. */
static int chld_cb(const ca_siginfo *info, void *arg)
{
    (*(int *)arg)++;
    ASSERT_EQ(info->signo, SIGCHLD);
    return 0;
}

static int sigchld_capture_main(void *arg)
{
    (void)arg;
    int n = 0;
    ca_signal_handler *h;
    ASSERT_EQ(ca_signal_add(&h, SIGCHLD, chld_cb, &n, 0), 0);
    for (int i = 0; i < 20; i++) {
        const char *t[] = {"true", NULL};
        ca_process *p;
        ASSERT_EQ(ca_subprocess_exec(&p, t, NULL), 0);
        ASSERT_EQ(ca_subprocess_wait_timeout(p, 10, NULL), 0);
        ca_subprocess_free(p);
    }
    ASSERT_STREQ(ca_subprocess_watcher(), "sigchld");
    ASSERT_GT(n, 0);
    ASSERT_EQ(ca_signal_remove(h), 0);
    return 0;
}

static void test_sigchld_captured_with_fallback(void)
{
    setenv("CAWAIT_SUBPROCESS_SIGCHLD", "1", 1);
    ASSERT_EQ(ca_run(sigchld_capture_main, NULL), 0);
    ASSERT(!blocked(SIGCHLD));
}

/* ------------------------------------------------------------------------ */
/* ca_run and SIGINT / SIGTERM, in-process                                  */
/* ------------------------------------------------------------------------ */

static void raise_sigint(void *arg)
{
    (void)arg;
    raise(SIGINT);
}

static int raise_main(void *arg)
{
    (void)arg;
    ASSERT(blocked(SIGINT) && blocked(SIGTERM));
    ASSERT_EQ(ca_call_later(0.05, raise_sigint, NULL, NULL), 0);
    double t0 = mono();
    ASSERT_EQ(ca_sleep(30), -ECANCELED);
    ASSERT_TIME_LT(mono() - t0, 10);
    return -ECANCELED;
}

static int plain_main(void *arg)
{
    (void)arg;
    ASSERT(!blocked(SIGINT) && !blocked(SIGTERM));
    return 0;
}

static int ignored_main(void *arg)
{
    (void)arg;
    ASSERT(!blocked(SIGINT)); /* SIG_IGN: left alone */
    ASSERT(blocked(SIGTERM));
    return 0;
}

static void test_run_restores_mask(void)
{
    sigset_t before, after;
    pthread_sigmask(SIG_BLOCK, NULL, &before);
    ASSERT(at_default(SIGINT) && at_default(SIGTERM));
    ASSERT_EQ(ca_run(raise_main, NULL), -ECANCELED);
    pthread_sigmask(SIG_BLOCK, NULL, &after);
    ASSERT(!blocked(SIGINT) && !blocked(SIGTERM));
    for (int s = 1; s < 65; s++)
        ASSERT_EQ(sigismember(&before, s), sigismember(&after, s));
    ASSERT(at_default(SIGINT) && at_default(SIGTERM));

    ca_run_opts o = {.no_signal_handlers = 1};
    ASSERT_EQ(ca_run_ex(plain_main, NULL, &o), 0);
    setenv("CAWAIT_NO_SIGNAL_HANDLERS", "1", 1);
    ASSERT_EQ(ca_run(plain_main, NULL), 0);
    unsetenv("CAWAIT_NO_SIGNAL_HANDLERS");

    signal(SIGINT, SIG_IGN);
    ASSERT_EQ(ca_run(ignored_main, NULL), 0);
    struct sigaction sa;
    sigaction(SIGINT, NULL, &sa);
    ASSERT(sa.sa_handler == SIG_IGN);
    signal(SIGINT, SIG_DFL);
}

/* ------------------------------------------------------------------------ */
/* ca_run and SIGINT / SIGTERM, in a child program                          */
/* ------------------------------------------------------------------------ */

static int child_report(int r)
{
    printf("ca_run returned %s\n", ca_err_name(r));
    if (blocked(SIGINT) || blocked(SIGTERM) || !at_default(SIGINT) ||
        !at_default(SIGTERM)) {
        printf("signal mask or dispositions not restored\n");
        return 1;
    }
    printf("clean shutdown\n");
    return r == -ECANCELED ? 0 : 1;
}

static int sleep_main(void *arg)
{
    (void)arg;
    printf("ready\n");
    int r = ca_sleep(30);
    printf("main: sleep returned %s\n", ca_err_name(r));
    return r;
}

static int child_sleep(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return child_report(ca_run(sleep_main, NULL));
}

static int io_main(void *arg)
{
    (void)arg;
    int p[2];
    ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    printf("ready\n");
    char c;
    ssize_t r = ca_read(p[0], &c, 1); /* nobody ever writes */
    printf("main: read returned %s\n", ca_err_name((int)r));
    ca_close(p[0]);
    ca_close(p[1]);
    return (int)r;
}

static int child_io(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return child_report(ca_run(io_main, NULL));
}

static int shielded_main(void *arg)
{
    (void)arg;
    printf("ready\n");
    ca_shield_push();
    int said = 0;
    for (int i = 0; i < 3000; i++) {
        ca_sleep(0.01);
        if (!said && ca_task_cancel_requested(ca_current())) {
            printf("cancel requested\n");
            said = 1;
        }
    }
    ca_shield_pop();
    return 0;
}

static int child_twice(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    ca_run(shielded_main, NULL);
    printf("not reached\n");
    return 0;
}

static int child_disabled(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    ca_run_opts o = {.no_signal_handlers = 1};
    ca_run_ex(sleep_main, NULL, &o);
    printf("not reached\n");
    return 0;
}

static int own_cb(const ca_siginfo *info, void *arg)
{
    (void)info;
    (*(int *)arg)++;
    return 0;
}

static int own_handler_main(void *arg)
{
    (void)arg;
    int n = 0;
    ca_signal_handler *h;
    ASSERT_EQ(ca_signal_add(&h, SIGINT, own_cb, &n, 0), 0);
    printf("ready\n");
    while (n == 0)
        ASSERT_EQ(ca_sleep(0.01), 0); /* not cancelled: the handler has it */
    printf("handler ran\n");
    ASSERT_EQ(ca_signal_remove(h), 0);
    ASSERT(blocked(SIGINT)); /* back to ca_run */
    printf("handler removed\n");
    int r = ca_sleep(30);
    printf("main: sleep returned %s\n", ca_err_name(r));
    return r;
}

static int child_own_handler(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return child_report(ca_run(own_handler_main, NULL));
}

static char self_exe[4096];

struct run {
    const char *child;
    const char *env; /* "K=V" or NULL */
    int signals[2];  /* sent after "ready" (and after "cancel requested" or
                        "handler removed" for the second) */
    int status;
    char out[4096];
};

static int read_line(ca_stream *s, char *line, size_t cap, struct run *rn)
{
    ssize_t n = ca_stream_readline(s, line, cap);
    if (n > 0)
        strncat(rn->out, line, sizeof(rn->out) - strlen(rn->out) - 1);
    return (int)n;
}

static int drive_main(void *arg)
{
    struct run *rn = arg;
    const char *argv[] = {self_exe, "--child", rn->child, NULL};
    const char *env[] = {"CAWAIT_TEST_LIGHT=1", rn->env, NULL};
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE,
                            .env = rn->env ? env : NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    ca_stream *out = ca_subprocess_stdout(p);
    char line[256];
    ASSERT_EQ(ca_deadline_push(20), 0);
    ASSERT_GT(read_line(out, line, sizeof(line), rn), 0);
    ASSERT_STREQ(line, "ready\n");
    ASSERT_EQ(ca_subprocess_send_signal(p, rn->signals[0]), 0);
    if (rn->signals[1]) {
        /* wait for the child to show the first one arrived */
        do
            ASSERT_GT(read_line(out, line, sizeof(line), rn), 0);
        while (strcmp(line, "cancel requested\n") != 0 &&
               strcmp(line, "handler removed\n") != 0);
        ASSERT_EQ(ca_subprocess_send_signal(p, rn->signals[1]), 0);
    }
    while (read_line(out, line, sizeof(line), rn) > 0)
        ;
    ASSERT_EQ(ca_subprocess_wait(p, &rn->status), 0);
    ASSERT_EQ(ca_deadline_pop(), 0);
    ca_subprocess_free(p);
    return 0;
}

static void drive(struct run *rn)
{
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    ASSERT_GT(n, 0);
    self_exe[n] = '\0';
    ASSERT_EQ(ca_run(drive_main, rn), 0);
}

static void expect_clean(struct run *rn, const char *main_line)
{
    if (!WIFEXITED(rn->status) || WEXITSTATUS(rn->status) != 0 ||
        !strstr(rn->out, main_line) ||
        !strstr(rn->out, "ca_run returned ECANCELED\nclean shutdown\n"))
        FAILF("child %s: status %#x, output:\n%s", rn->child, rn->status,
              rn->out);
}

static void test_sigint_cancels_sleeping_main(void)
{
    struct run rn = {.child = "sleep", .signals = {SIGINT, 0}};
    drive(&rn);
    expect_clean(&rn, "main: sleep returned ECANCELED\n");
}

static void test_sigint_cancels_main_in_io(void)
{
    struct run rn = {.child = "io", .signals = {SIGINT, 0}};
    drive(&rn);
    expect_clean(&rn, "main: read returned ECANCELED\n");
}

static void test_sigterm_cancels_main(void)
{
    struct run rn = {.child = "sleep", .signals = {SIGTERM, 0}};
    drive(&rn);
    expect_clean(&rn, "main: sleep returned ECANCELED\n");
}

static void test_second_sigint_exits_at_once(void)
{
    struct run rn = {.child = "twice", .signals = {SIGINT, SIGINT}};
    drive(&rn);
    if (!WIFSIGNALED(rn.status) || WTERMSIG(rn.status) != SIGINT ||
        strstr(rn.out, "not reached"))
        FAILF("status %#x, output:\n%s", rn.status, rn.out);
}

static void test_sigint_handling_disabled(void)
{
    struct run rn = {.child = "disabled", .signals = {SIGINT, 0}};
    drive(&rn);
    if (!WIFSIGNALED(rn.status) || WTERMSIG(rn.status) != SIGINT)
        FAILF("status %#x, output:\n%s", rn.status, rn.out);
    struct run env = {.child = "sleep",
                      .env = "CAWAIT_NO_SIGNAL_HANDLERS=1",
                      .signals = {SIGTERM, 0}};
    drive(&env);
    if (!WIFSIGNALED(env.status) || WTERMSIG(env.status) != SIGTERM)
        FAILF("status %#x, output:\n%s", env.status, env.out);
}

static void test_own_sigint_handler_takes_over(void)
{
    struct run rn = {.child = "own_handler", .signals = {SIGINT, SIGINT}};
    drive(&rn);
    expect_clean(&rn, "handler ran\nhandler removed\nmain: sleep returned "
                      "ECANCELED\n");
}

/* ------------------------------------------------------------------------ */
/* Same-turn races (adversarial)                                            */
/* ------------------------------------------------------------------------ */

struct recv_close {
    ca_signal_receiver *r;
    int close_after; /* 1: close r once a signal came */
    double timeout;  /* 0: 5 s */
    int rc;
    double elapsed;
};

static int recv_close_task(void *arg)
{
    struct recv_close *c = arg;
    double t0 = mono();
    c->rc = ca_signal_receive(c->r, c->timeout ? c->timeout : 5, NULL);
    c->elapsed = mono() - t0;
    if (c->close_after && c->rc > 0)
        ca_signal_close(c->r);
    return 0;
}

/* BUG: two tasks wait in ca_signal_receive(r); one signal wakes both
 * (receiver_push wakes every waiter, unlinking their nodes); the first
 * takes the signal and closes r before the second has run.  The second
 * then reads the freed r (signal.c receive(): w.data is NULL because
 * receiver_fini found no linked waiter), parks on the freed waitlist and
 * times out, where the header promises -EBADF to tasks waiting in
 * ca_signal_receive.  ASan: heap-use-after-free. */
static int close_after_wake_main(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    struct recv_close first = {.r = r, .close_after = 1};
    struct recv_close second = {.r = r, .close_after = 0};
    ca_task *a = ca_spawn(recv_close_task, &first);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_task *b = ca_spawn(recv_close_task, &second);
    ASSERT_EQ(ca_sleep(0.01), 0);
    raise(SIGUSR1);
    ASSERT_EQ(ca_join(a), 0);
    ASSERT_EQ(ca_join(b), 0);
    ca_task_release(a);
    ca_task_release(b);
    ASSERT_EQ(first.rc, SIGUSR1);
    ASSERT_EQ(second.rc, -EBADF);
    ASSERT_TIME_LT(second.elapsed, 3);
    ASSERT(!blocked(SIGUSR1));
    return 0;
}

static void test_receiver_closed_by_woken_waiter(void)
{
    ASSERT_EQ(ca_run(close_after_wake_main, NULL), 0);
}

/* A receive cancelled in the same turn its signal is read: the signal
 * stays queued for the next receive (a receiver loses nothing). */
static int cancel_same_turn_main(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    for (int i = 0; i < 20; i++) {
        struct recv_close c = {.r = r};
        ca_task *t = ca_spawn(recv_close_task, &c);
        ASSERT_EQ(ca_sleep(0.005), 0);
        /* The signal is pending on the signalfd, not read yet (no turn). */
        raise(SIGUSR2);
        ASSERT_EQ(ca_cancel(t), 0);
        ASSERT_EQ(ca_join(t), 0);
        ca_task_release(t);
        if (c.rc == -ECANCELED) /* then it is still queued */
            ASSERT_EQ(ca_signal_receive(r, 2, NULL), SIGUSR2);
        else
            ASSERT_EQ(c.rc, SIGUSR2);
        ASSERT_EQ(ca_signal_receive(r, 0, NULL), -ETIMEDOUT);
    }
    /* A receive whose timeout ends in the turn the signal comes. */
    for (int i = 0; i < 20; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        struct recv_close c = {.r = r, .timeout = 0.003};
        ca_task *t = ca_spawn(recv_close_task, &c);
        ASSERT_EQ(ca_yield(), 0); /* it waits */
        nanosleep(&ts, NULL);     /* its timeout passes, no turn */
        raise(SIGUSR2);
        ASSERT_EQ(ca_join(t), 0);
        ca_task_release(t);
        if (c.rc == -ETIMEDOUT)
            ASSERT_EQ(ca_signal_receive(r, 2, NULL), SIGUSR2);
        else
            ASSERT_EQ(c.rc, SIGUSR2);
        ASSERT_EQ(ca_signal_receive(r, 0, NULL), -ETIMEDOUT);
    }
    /* Repeats of one signal not yet received merge into one entry;
     * different signals queue in arrival order. */
    sigaddset(&set, SIGUSR1);
    ca_signal_receiver *r2;
    ASSERT_EQ(ca_signal_open(&r2, &set), 0);
    for (int i = 0; i < 5; i++) {
        raise(SIGUSR1);
        ASSERT_EQ(ca_sleep(0.002), 0);
    }
    raise(SIGUSR2);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_siginfo info;
    ASSERT_EQ(ca_signal_receive(r2, 0, &info), SIGUSR1);
    ASSERT_EQ(ca_signal_receive(r2, 0, &info), SIGUSR2);
    ASSERT_EQ(ca_signal_receive(r2, 0, &info), -ETIMEDOUT);
    /* r saw the SIGUSR2 too. */
    ASSERT_EQ(ca_signal_receive(r, 0, &info), SIGUSR2);
    ca_signal_close(r2);
    ca_signal_close(r);
    ASSERT(!blocked(SIGUSR1) && !blocked(SIGUSR2));
    ASSERT(at_default(SIGUSR1) && at_default(SIGUSR2));
    return 0;
}

static void test_receive_cancel_same_turn(void)
{
    ASSERT_EQ(ca_run(cancel_same_turn_main, NULL), 0);
    ASSERT(!blocked(SIGUSR1) && !blocked(SIGUSR2));
}

/* Closing a receiver with several waiters: every one gets -EBADF, and a
 * wait on another receiver of the same signal is not disturbed. */
static int close_many_main(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    ca_signal_receiver *r, *other;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    ASSERT_EQ(ca_signal_open(&other, &set), 0);
    struct recv_close c[4];
    ca_task *t[4];
    for (int i = 0; i < 4; i++) {
        c[i] = (struct recv_close){.r = i < 3 ? r : other};
        t[i] = ca_spawn(recv_close_task, &c[i]);
    }
    ASSERT_EQ(ca_sleep(0.01), 0);
    ca_signal_close(r);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ca_join(t[i]), 0);
        ASSERT_EQ(c[i].rc, -EBADF);
        ca_task_release(t[i]);
    }
    ASSERT(blocked(SIGUSR1)); /* still captured by `other` */
    raise(SIGUSR1);
    ASSERT_EQ(ca_join(t[3]), 0);
    ASSERT_EQ(c[3].rc, SIGUSR1);
    ca_task_release(t[3]);
    ca_signal_close(other);
    ASSERT(!blocked(SIGUSR1));
    return 0;
}

static void test_close_with_many_waiters(void)
{
    ASSERT_EQ(ca_run(close_many_main, NULL), 0);
}

/* BUG (SIGCHLD fallback mode): a SIGCHLD that arrives while the program
 * captures SIGCHLD and that the loop has not read yet is discarded by the
 * release (signal.c release() -> discard_pending) without telling the
 * subprocess module, whose handler then never runs: the child is never
 * reaped and ca_subprocess_wait hangs. */
static int chld_discard_main(void *arg)
{
    (void)arg;
    ASSERT_STREQ(ca_subprocess_watcher(), "sigchld");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    const char *argv[] = {"sh", "-c", "sleep 0.2", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, NULL), 0);
    /* The child exits while the loop does not turn: its SIGCHLD stays
     * pending (blocked here, read through the signalfd). */
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    ca_signal_close(r);
    int ws = -1;
    ASSERT_EQ(ca_subprocess_wait_timeout(p, 5, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    ca_subprocess_free(p);
    return 0;
}

static void test_sigchld_discard_keeps_child_exit(void)
{
    setenv("CAWAIT_SUBPROCESS_SIGCHLD", "1", 1);
    ASSERT_EQ(ca_run(chld_discard_main, NULL), 0);
    ASSERT(!blocked(SIGCHLD));
}

/* Dispositions and the mask after ca_run with handlers, receivers and
 * waits left in every state; a handler's pending call is dropped. */
static int leftover_cb(const ca_siginfo *info, void *arg)
{
    (void)info;
    ++*(int *)arg;
    return 0;
}

static int leftovers_main(void *arg)
{
    int *calls_ = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGHUP);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    ca_signal_handler *h;
    ASSERT_EQ(ca_signal_add(&h, SIGUSR1, leftover_cb, calls_, 0), 0);
    ASSERT_EQ(ca_signal_add(&h, SIGTERM, leftover_cb, calls_, 0), 0);
    static struct recv_close c; /* outlives main: the task ends later */
    c = (struct recv_close){.r = r};
    ca_task *t = ca_spawn(recv_close_task, &c);
    ca_detach(t);
    ASSERT_EQ(ca_sleep(0.01), 0);
    raise(SIGUSR1);
    ASSERT_EQ(ca_sleep(0.02), 0);
    ASSERT_EQ(*calls_, 1);
    ASSERT(blocked(SIGUSR1) && blocked(SIGHUP) && blocked(SIGTERM));
    /* Pending when ca_run returns: discarded, not delivered. */
    raise(SIGUSR1);
    raise(SIGHUP);
    return 0; /* the receiving task is cancelled by ca_run */
}

static void test_leftovers_restored_after_run(void)
{
    int n = 0;
    ASSERT_EQ(ca_run(leftovers_main, &n), 0);
    ASSERT_EQ(n, 1);
    ASSERT(!blocked(SIGUSR1) && !blocked(SIGUSR2) && !blocked(SIGHUP));
    ASSERT(!blocked(SIGTERM) && !blocked(SIGINT));
    ASSERT(at_default(SIGUSR1) && at_default(SIGHUP) && at_default(SIGTERM));
    sigset_t pend;
    sigpending(&pend);
    ASSERT(sigismember(&pend, SIGUSR1) != 1 && sigismember(&pend, SIGHUP) != 1);
}

static const struct test_case tests[] = {
    {"wait_sigusr1_from_child", test_wait_sigusr1_from_child, 20, 0},
    {"wait_signal_from_thread", test_wait_signal_from_thread, 20, 0},
    {"wait_timeout_cancel_restore", test_wait_timeout_cancel_restore, 20, 0},
    {"receiver", test_receiver, 20, 0},
    {"handlers_add_remove", test_handlers_add_remove, 20, 0},
    {"preblocked_signal_stays_blocked", test_preblocked_signal_stays_blocked,
     20, 0},
    {"sigchld_captured_with_fallback", test_sigchld_captured_with_fallback, 30,
     0},
    {"run_restores_mask", test_run_restores_mask, 20, 0},
    {"sigint_cancels_sleeping_main", test_sigint_cancels_sleeping_main, 30, 0},
    {"sigint_cancels_main_in_io", test_sigint_cancels_main_in_io, 30, 0},
    {"sigterm_cancels_main", test_sigterm_cancels_main, 30, 0},
    {"second_sigint_exits_at_once", test_second_sigint_exits_at_once, 30, 0},
    {"sigint_handling_disabled", test_sigint_handling_disabled, 30, 0},
    {"own_sigint_handler_takes_over", test_own_sigint_handler_takes_over, 30,
     0},
    {"receiver_closed_by_woken_waiter", test_receiver_closed_by_woken_waiter,
     20, 0},
    {"receive_cancel_same_turn", test_receive_cancel_same_turn, 20, 0},
    {"close_with_many_waiters", test_close_with_many_waiters, 20, 0},
    {"sigchld_discard_keeps_child_exit", test_sigchld_discard_keeps_child_exit,
     30, 0},
    {"leftovers_restored_after_run", test_leftovers_restored_after_run, 20, 0},
    {NULL, NULL, 0, 0},
};

static const struct test_child children[] = {
    {"sleep", child_sleep},
    {"io", child_io},
    {"twice", child_twice},
    {"disabled", child_disabled},
    {"own_handler", child_own_handler},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    /* Start from the defaults whatever we inherited (a CI job may run with
     * SIGINT ignored, which ca_run rightly leaves alone). */
    sigset_t two;
    sigemptyset(&two);
    sigaddset(&two, SIGINT);
    sigaddset(&two, SIGTERM);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &two, NULL);
    return runner_main(argc, argv, tests, children);
}
