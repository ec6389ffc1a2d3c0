/* Subprocesses: real children, pipes as streams, exit statuses, no zombies. */
#include "cawait.h"
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* Children of this process that are zombies, and all children. */
static void count_children(int *zombies, int *all)
{
    *zombies = *all = 0;
    DIR *d = opendir("/proc");
    ASSERT(d);
    struct dirent *e;
    pid_t me = getpid();
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        /* pid (comm) state ppid ...: comm may hold spaces, find the last ')' */
        char *p = strrchr(buf, ')');
        char state;
        int ppid;
        if (!p || sscanf(p + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (ppid != me)
            continue;
        (*all)++;
        if (state == 'Z')
            (*zombies)++;
    }
    closedir(d);
}

static int pid_alive(pid_t pid)
{
    return kill(pid, 0) == 0;
}

/* Read the whole stream into buf (NUL-terminated).  Returns the length. */
static size_t read_all(ca_stream *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = ca_stream_read(s, buf + n, cap - 1 - n);
        ASSERT_GE(r, 0);
        if (r == 0)
            break;
        n += (size_t)r;
        ASSERT_LT(n, cap - 1);
    }
    buf[n] = '\0';
    return n;
}

/* ------------------------------------------------------------------------ */

static int echo_main(void *arg)
{
    (void)arg;
    const char *argv[] = {"cat", NULL};
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    ASSERT_GT(ca_subprocess_pid(p), 0);
    ca_stream *in = ca_subprocess_stdin(p), *out = ca_subprocess_stdout(p);
    ASSERT(in && out);
    ASSERT(ca_subprocess_stderr(p) == NULL);
    char line[256];
    for (int i = 0; i < 100; i++) {
        char msg[64];
        int len = snprintf(msg, sizeof(msg), "line %d\n", i);
        ASSERT_EQ(ca_stream_write(in, msg, (size_t)len), 0);
        ASSERT_EQ(ca_stream_drain(in), 0);
        ASSERT_EQ(ca_stream_readline(out, line, sizeof(line)), len);
        ASSERT_STREQ(line, msg);
    }
    /* end of input: cat exits */
    ASSERT_EQ(ca_stream_write(in, "last", 4), 0);
    ASSERT_EQ(ca_stream_write_eof(in), 0);
    ASSERT_EQ(ca_stream_readline(out, line, sizeof(line)), 4);
    ASSERT_STREQ(line, "last");
    ASSERT_EQ(ca_stream_read(out, line, sizeof(line)), 0);
    int ws = -1;
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT(WIFEXITED(ws));
    ASSERT_EQ(WEXITSTATUS(ws), 0);
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ca_subprocess_free(p);
    return 0;
}

static void test_echo_through_cat(void)
{
    ASSERT_EQ(ca_run(echo_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int ticks;

static int ticker(void *arg)
{
    (void)arg;
    for (;;) {
        if (ca_sleep(0.01) < 0)
            return 0;
        ticks++;
    }
}

static int big_output_main(void *arg)
{
    (void)arg;
    const size_t total = 100 * 1000 * 1000;
    ca_task *t = ca_spawn(ticker, NULL);
    const char *argv[] = {"head", "-c", "100000000", "/dev/zero", NULL};
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE};
    ca_process *p;
    long rss0 = peak_rss_kib();
    double t0 = mono();
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    static char buf[64 * 1024];
    size_t got = 0;
    for (;;) {
        ssize_t n = ca_stream_read(ca_subprocess_stdout(p), buf, sizeof(buf));
        ASSERT_GE(n, 0);
        if (n == 0)
            break;
        ASSERT(buf[0] == 0 && buf[n - 1] == 0);
        got += (size_t)n;
    }
    int ws;
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    double dt = mono() - t0;
    long grew = peak_rss_kib() - rss0;
    printf("100 MB read in %.2f s (%.0f MB/s), peak RSS grew %ld KiB, %d "
           "ticks meanwhile\n",
           dt, total / dt / 1e6, grew, ticks);
    ASSERT_EQ(got, total);
    ASSERT_LT(grew, 16 * 1024); /* bounded: nothing near 100 MB is kept */
    ASSERT_GT(ticks, 0);        /* the loop kept running other tasks */
    ca_cancel(t);
    ca_join(t);
    ca_task_release(t);
    ca_subprocess_free(p);
    return 0;
}

static void test_100mb_output(void)
{
    ASSERT_EQ(ca_run(big_output_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int communicate_main(void *arg)
{
    (void)arg;
    /* tee copies stdin to stdout and stderr at once: 8 MB in, 16 MB out.
     * Writing all of stdin before reading, or reading one pipe before the
     * other, would deadlock: both pipes hold only 64 KiB. */
    size_t n = 8u << 20;
    char *in = malloc(n);
    ASSERT(in);
    for (size_t i = 0; i < n; i++)
        in[i] = (char)('a' + i % 26);
    const char *argv[] = {"tee", "/dev/stderr", NULL};
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE,
                            .stderr_mode = CA_STDIO_PIPE};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    ca_output out, err;
    ASSERT_EQ(ca_subprocess_communicate(p, in, n, &out, &err), 0);
    ASSERT_EQ(out.len, n);
    ASSERT_EQ(err.len, n);
    ASSERT(memcmp(out.data, in, n) == 0);
    ASSERT(memcmp(err.data, in, n) == 0);
    ASSERT_EQ(out.data[n], '\0');
    int ws;
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    free(out.data);
    free(err.data);
    ca_subprocess_free(p);

    /* A child that never reads its input: not an error. */
    const char *t[] = {"sh", "-c", "echo early; exit 4", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, t, &o), 0);
    ASSERT_EQ(ca_subprocess_communicate(p, in, n, &out, NULL), 0);
    ASSERT_STREQ(out.data, "early\n");
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT_EQ(WEXITSTATUS(ws), 4);
    free(out.data);
    ca_subprocess_free(p);

    /* No pipes at all: communicate only waits.  Input without a stdin pipe
     * is refused. */
    const char *f[] = {"false", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, f, NULL), 0);
    ASSERT_EQ(ca_subprocess_communicate(p, "x", 1, &out, &err), -EINVAL);
    ASSERT_EQ(ca_subprocess_communicate(p, NULL, 0, &out, &err), 0);
    ASSERT(out.data == NULL && err.data == NULL);
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT_EQ(WEXITSTATUS(ws), 1);
    ca_subprocess_free(p);

    /* The output ceiling. */
    ca_subprocess_opts lim = {.stdout_mode = CA_STDIO_PIPE,
                              .max_output = 1000};
    const char *big[] = {"head", "-c", "5000", "/dev/zero", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, big, &lim), 0);
    ASSERT_EQ(ca_subprocess_communicate(p, NULL, 0, &out, NULL), -ENOBUFS);
    ASSERT(out.data == NULL);
    ca_subprocess_free(p);
    const char *fits[] = {"head", "-c", "1000", "/dev/zero", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, fits, &lim), 0);
    ASSERT_EQ(ca_subprocess_communicate(p, NULL, 0, &out, NULL), 0);
    ASSERT_EQ(out.len, 1000);
    free(out.data);
    ca_subprocess_free(p);
    free(in);
    return 0;
}

static void test_communicate(void)
{
    ASSERT_EQ(ca_run(communicate_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int run_status(const char *const argv[])
{
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, NULL), 0);
    int ws = -1;
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ca_subprocess_free(p);
    return ws;
}

static int status_main(void *arg)
{
    (void)arg;
    const char *t[] = {"true", NULL};
    const char *f[] = {"/bin/false", NULL};
    const char *e3[] = {"sh", "-c", "exit 3", NULL};
    const char *e255[] = {"sh", "-c", "exit 255", NULL};
    const char *k9[] = {"sh", "-c", "kill -9 $$", NULL};
    const char *k15[] = {"sh", "-c", "kill -TERM $$", NULL};
    int ws = run_status(t);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    ws = run_status(f);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 1);
    ws = run_status(e3);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 3);
    ws = run_status(e255);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 255);
    ws = run_status(k9);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    ASSERT(!WIFEXITED(ws));
    ws = run_status(k15);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGTERM);

    /* The shell helper. */
    ca_process *p;
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_shell(&p, "echo $((6 * 7)); exit 5", &o), 0);
    char buf[64];
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "42\n");
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT_EQ(WEXITSTATUS(ws), 5);
    ca_subprocess_free(p);
    /* Through the shell a missing program is exit status 127. */
    ca_subprocess_opts quiet = {.stderr_mode = CA_STDIO_DEVNULL};
    ASSERT_EQ(ca_subprocess_shell(&p, "no-such-program-cawait", &quiet), 0);
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT_EQ(WEXITSTATUS(ws), 127);
    ca_subprocess_free(p);
    return 0;
}

static void test_exit_codes_and_signals(void)
{
    ASSERT_EQ(ca_run(status_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int errors_main(void *arg)
{
    (void)arg;
    ca_process *p = (ca_process *)1;
    const char *missing[] = {"no-such-program-cawait", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, missing, NULL), -ENOENT);
    ASSERT(p == NULL);
    const char *missing_abs[] = {"/nonexistent/dir/prog", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, missing_abs, NULL), -ENOENT);
    const char *not_exec[] = {"/etc/hostname", NULL};
    struct stat st;
    if (stat(not_exec[0], &st) == 0 && !(st.st_mode & 0111))
        ASSERT_EQ(ca_subprocess_exec(&p, not_exec, NULL), -EACCES);
    /* An executable file in no known format.  Not under valgrind: it runs
     * posix_spawn's vfork child as a fork, so the exec error never reaches
     * the parent, and the failed copy of us reports its own "leaks". */
    const char *pre = getenv("LD_PRELOAD");
    if (!pre || !strstr(pre, "vgpreload")) {
        char path[64];
        snprintf(path, sizeof(path), "/tmp/cawait-noexec-%d", (int)getpid());
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(write(fd, "\x01\x02garbage", 9), 9);
        close(fd);
        const char *garbage[] = {path, NULL};
        int r = ca_subprocess_exec(&p, garbage, NULL);
        unlink(path);
        ASSERT_EQ(r, -ENOEXEC);
    }
    /* A missing working directory. */
    const char *t[] = {"true", NULL};
    ca_subprocess_opts o = {.cwd = "/nonexistent/cawait"};
    ASSERT_EQ(ca_subprocess_exec(&p, t, &o), -ENOENT);

    /* Bad arguments. */
    const char *empty[] = {NULL};
    const char *blank[] = {"", NULL};
    ASSERT_EQ(ca_subprocess_exec(NULL, t, NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_exec(&p, NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_exec(&p, empty, NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_exec(&p, blank, NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_shell(&p, NULL, NULL), -EINVAL);
    ca_subprocess_opts bad = {.stdout_mode = CA_STDIO_STDOUT};
    ASSERT_EQ(ca_subprocess_exec(&p, t, &bad), -EINVAL);
    bad = (ca_subprocess_opts){.stdin_mode = 42};
    ASSERT_EQ(ca_subprocess_exec(&p, t, &bad), -EINVAL);
    bad = (ca_subprocess_opts){.stdin_mode = CA_STDIO_FD, .stdin_fd = -1};
    ASSERT_EQ(ca_subprocess_exec(&p, t, &bad), -EBADF);
    ASSERT_EQ(ca_subprocess_wait(NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_poll(NULL, NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_send_signal(NULL, SIGTERM), -EINVAL);
    ASSERT_EQ(ca_subprocess_close_stdin(NULL), -EINVAL);
    ASSERT_EQ(ca_subprocess_communicate(NULL, NULL, 0, NULL, NULL), -EINVAL);
    ca_subprocess_free(NULL);

    /* A good child: signal numbers out of range, no stdin pipe. */
    ASSERT_EQ(ca_subprocess_exec(&p, t, NULL), 0);
    ASSERT_EQ(ca_subprocess_send_signal(p, 65), -EINVAL);
    ASSERT_EQ(ca_subprocess_send_signal(p, -1), -EINVAL);
    ASSERT_EQ(ca_subprocess_close_stdin(p), -EINVAL);
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    return 0;
}

struct cb_ctx {
    ca_process *running;
    ca_process *spawned;
    int spawn_result;
};

static void on_callback(void *arg)
{
    struct cb_ctx *c = arg;
    /* Blocking calls need a task... */
    ASSERT_EQ(ca_subprocess_wait(c->running, NULL), -EPERM);
    ASSERT_EQ(ca_signal_wait(SIGUSR1, 0), -EPERM);
    /* ...spawning does not: from a callback it runs inline. */
    const char *t[] = {"sh", "-c", "exit 7", NULL};
    c->spawn_result = ca_subprocess_exec(&c->spawned, t, NULL);
}

static int outside_main(void *arg)
{
    (void)arg;
    struct cb_ctx c = {NULL, NULL, 1};
    const char *s[] = {"sleep", "10", NULL};
    ASSERT_EQ(ca_subprocess_exec(&c.running, s, NULL), 0);
    ASSERT_EQ(ca_call_soon(on_callback, &c, NULL), 0);
    ASSERT_EQ(ca_sleep(0.01), 0);
    ASSERT_EQ(c.spawn_result, 0);
    int ws;
    ASSERT_EQ(ca_subprocess_wait(c.spawned, &ws), 0);
    ASSERT_EQ(WEXITSTATUS(ws), 7);
    ca_subprocess_free(c.spawned);
    ca_subprocess_free(c.running);
    return 0;
}

static void test_exec_errors(void)
{
    ASSERT_EQ(ca_run(errors_main, NULL), 0);
    ASSERT_EQ(ca_run(outside_main, NULL), 0);
    ASSERT(ca_subprocess_watcher() == NULL);
    const char *t[] = {"true", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, t, NULL), -CA_ENOLOOP);
}

/* $PATH lookup goes on past what execve would refuse, as execvp does: a
 * directory called like the program (a "." entry and a directory "test")
 * or a file without execute permission in an earlier entry does not hide
 * the program further on. */
static char path_dir[256];

static int path_main(void *arg)
{
    (void)arg;
    char sub[300], file[300], orig[4096], path[4500];
    snprintf(sub, sizeof(sub), "%s/true", path_dir);
    ASSERT_EQ(mkdir(sub, 0755), 0);
    snprintf(file, sizeof(file), "%s/cawait-noexec", path_dir);
    int fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ASSERT(fd >= 0);
    close(fd);
    const char *old = getenv("PATH");
    snprintf(orig, sizeof(orig), "%s", old ? old : "/bin:/usr/bin");
    snprintf(path, sizeof(path), "%s:%s", path_dir, orig);
    ASSERT_EQ(setenv("PATH", path, 1), 0);

    const char *t[] = {"true", NULL};
    ca_process *p;
    int ws = -1;
    ASSERT_EQ(ca_subprocess_exec(&p, t, NULL), 0);
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    ca_subprocess_free(p);

    /* Nothing better along the way: execvp's errors. */
    ASSERT_EQ(setenv("PATH", path_dir, 1), 0);
    ASSERT_EQ(ca_subprocess_exec(&p, t, NULL), -EACCES);
    const char *n[] = {"cawait-noexec", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, n, NULL), -EACCES);
    const char *m[] = {"cawait-no-such-program", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, m, NULL), -ENOENT);
    ASSERT_EQ(setenv("PATH", orig, 1), 0);
    unlink(file);
    rmdir(sub);
    return 0;
}

static void test_path_skips_directories(void)
{
    test_tmpdir(path_dir, sizeof(path_dir), "path");
    ASSERT_EQ(ca_run(path_main, NULL), 0);
    rmdir(path_dir);
}

/* ------------------------------------------------------------------------ */

static int stdio_main(void *arg)
{
    (void)arg;
    char buf[4096];
    int ws;
    ca_process *p;

    /* cwd */
    const char *pwd[] = {"pwd", NULL};
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE, .cwd = "/tmp"};
    ASSERT_EQ(ca_subprocess_exec(&p, pwd, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "/tmp\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);

    /* env: exactly what is given */
    const char *env[] = {"CAWAIT_TEST=hello world", "OTHER=2", NULL};
    const char *show[] = {"/bin/sh", "-c", "echo \"$CAWAIT_TEST/$OTHER/$HOME\"",
                          NULL};
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_PIPE, .env = env};
    ASSERT_EQ(ca_subprocess_exec(&p, show, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "hello world/2/\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);

    /* stderr merged into stdout (2>&1), and stderr alone */
    const char *both[] = {"sh", "-c", "echo out; echo err >&2; echo out2",
                          NULL};
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_PIPE,
                             .stderr_mode = CA_STDIO_STDOUT};
    ASSERT_EQ(ca_subprocess_exec(&p, both, &o), 0);
    ASSERT(ca_subprocess_stderr(p) == NULL);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "out\nerr\nout2\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_DEVNULL,
                             .stderr_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_exec(&p, both, &o), 0);
    read_all(ca_subprocess_stderr(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "err\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);

    /* stdin from /dev/null: cat ends at once */
    const char *cat[] = {"cat", NULL};
    o = (ca_subprocess_opts){.stdin_mode = CA_STDIO_DEVNULL,
                             .stdout_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_exec(&p, cat, &o), 0);
    ASSERT_EQ(read_all(ca_subprocess_stdout(p), buf, sizeof(buf)), 0);
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT_EQ(WEXITSTATUS(ws), 0);
    ca_subprocess_free(p);

    /* A descriptor of ours as stdout (CA_STDIO_FD): one child's output is
     * the next one's input, as in a shell pipeline. */
    int pp[2];
    ASSERT_EQ(pipe2(pp, O_CLOEXEC), 0);
    const char *echo[] = {"echo", "through a pipeline", NULL};
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_FD, .stdout_fd = pp[1]};
    ca_process *a, *b;
    ASSERT_EQ(ca_subprocess_exec(&a, echo, &o), 0);
    close(pp[1]);
    const char *tr[] = {"tr", "a-z", "A-Z", NULL};
    o = (ca_subprocess_opts){.stdin_mode = CA_STDIO_FD, .stdin_fd = pp[0],
                             .stdout_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_exec(&b, tr, &o), 0);
    close(pp[0]);
    read_all(ca_subprocess_stdout(b), buf, sizeof(buf));
    ASSERT_STREQ(buf, "THROUGH A PIPELINE\n");
    ASSERT_EQ(ca_subprocess_wait(a, NULL), 0);
    ASSERT_EQ(ca_subprocess_wait(b, NULL), 0);
    ca_subprocess_free(a);
    ca_subprocess_free(b);

    /* The child inherits nothing but 0-2 (unless inherit_fds), and starts
     * with an empty signal mask although ca_run blocks SIGINT and SIGTERM
     * here. */
    int leak = open("/dev/null", O_RDONLY); /* no O_CLOEXEC on purpose */
    ASSERT_GE(leak, 3);
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "test -e /proc/$$/fd/%d && echo open || echo closed", leak);
    const char *check[] = {"sh", "-c", cmd, NULL};
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_exec(&p, check, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "closed\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    const char *mask[] = {"grep", "SigBlk", "/proc/self/status", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, mask, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "SigBlk:\t0000000000000000\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    o.inherit_fds = 1;
    ASSERT_EQ(ca_subprocess_exec(&p, check, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_STREQ(buf, "open\n");
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    close(leak);

    /* new session / process group */
    const char *ids[] = {"sh", "-c", "ps -o sid= -o pgid= -p $$ 2>/dev/null || "
                                     "cut -d' ' -f5,6 /proc/$$/stat",
                         NULL};
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_PIPE, .new_session = 1};
    ASSERT_EQ(ca_subprocess_exec(&p, ids, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    long sid = -1, pgid = -1;
    ASSERT_EQ(sscanf(buf, "%ld %ld", &sid, &pgid), 2);
    ASSERT_EQ(sid, ca_subprocess_pid(p));
    ASSERT_EQ(pgid, ca_subprocess_pid(p));
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    o = (ca_subprocess_opts){.stdout_mode = CA_STDIO_PIPE,
                             .new_process_group = 1};
    ASSERT_EQ(ca_subprocess_exec(&p, ids, &o), 0);
    read_all(ca_subprocess_stdout(p), buf, sizeof(buf));
    ASSERT_EQ(sscanf(buf, "%ld %ld", &sid, &pgid), 2);
    ASSERT_EQ(sid, getsid(0));
    ASSERT_EQ(pgid, ca_subprocess_pid(p));
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    return 0;
}

static void test_cwd_env_and_stdio(void)
{
    ASSERT_EQ(ca_run(stdio_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int epipe_main(void *arg)
{
    (void)arg;
    /* The child exits without reading: writing fails with -EPIPE instead of
     * killing us with SIGPIPE. */
    const char *t[] = {"true", NULL};
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, t, &o), 0);
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    static char buf[1 << 20];
    int r = ca_stream_write(ca_subprocess_stdin(p), buf, sizeof(buf));
    if (r == 0)
        r = ca_stream_drain(ca_subprocess_stdin(p));
    ASSERT(r == -EPIPE || r == -ECONNRESET);
    ASSERT_LT(ca_subprocess_close_stdin(p), 0);
    ASSERT(ca_subprocess_stdin(p) == NULL);
    ca_subprocess_free(p);
    return 0;
}

static void test_stdin_epipe(void)
{
    ASSERT_EQ(ca_run(epipe_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int terminate_main(void *arg)
{
    (void)arg;
    const char *s[] = {"sleep", "30", NULL};
    ca_process *p;
    int ws;
    ASSERT_EQ(ca_subprocess_exec(&p, s, NULL), 0);
    ASSERT_EQ(ca_subprocess_poll(p, &ws), -EAGAIN);
    ASSERT_EQ(ca_subprocess_send_signal(p, 0), 0); /* alive? */
    ASSERT_EQ(ca_subprocess_terminate(p), 0);
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGTERM);
    /* Reaped: no signal can reach a recycled pid. */
    ASSERT_EQ(ca_subprocess_send_signal(p, SIGTERM), -ESRCH);
    ASSERT_EQ(ca_subprocess_kill(p), -ESRCH);
    ca_subprocess_free(p);

    ASSERT_EQ(ca_subprocess_exec(&p, s, NULL), 0);
    ASSERT_EQ(ca_subprocess_kill(p), 0);
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    ca_subprocess_free(p);

    ASSERT_EQ(ca_subprocess_exec(&p, s, NULL), 0);
    ASSERT_EQ(ca_subprocess_send_signal(p, SIGUSR1), 0);
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGUSR1);
    ca_subprocess_free(p);
    return 0;
}

static void test_terminate_and_kill(void)
{
    ASSERT_EQ(ca_run(terminate_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

static int waiter_task(void *arg)
{
    int ws = 0;
    int r = ca_subprocess_wait(arg, &ws);
    return r < 0 ? r : ws;
}

static int wait_main(void *arg)
{
    (void)arg;
    const char *s[] = {"sleep", "30", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, s, NULL), 0);

    /* a timeout */
    double t0 = mono();
    ASSERT_EQ(ca_subprocess_wait_timeout(p, 0.1, NULL), -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.095);
    ASSERT_TIME_LT(dt, 2.0);
    /* a deadline scope */
    ASSERT_EQ(ca_deadline_push(0.05), 0);
    ASSERT_EQ(ca_subprocess_wait(p, NULL), -ETIMEDOUT);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT_EQ(ca_subprocess_wait_timeout(p, 0, NULL), -ETIMEDOUT);
    ASSERT_EQ(ca_subprocess_wait_timeout(p, NAN, NULL), -EINVAL);

    /* a cancelled wait leaves the child running and waitable */
    ca_task *w1 = ca_spawn(waiter_task, p);
    ca_task *w2 = ca_spawn(waiter_task, p);
    ca_task *w3 = ca_spawn(waiter_task, p);
    ASSERT_EQ(ca_sleep(0.05), 0);
    ca_cancel(w1);
    ASSERT_EQ(ca_join(w1), -ECANCELED);
    ASSERT_EQ(ca_subprocess_poll(p, NULL), -EAGAIN);
    ASSERT(pid_alive(ca_subprocess_pid(p)));
    /* the other waiters all see the exit */
    ASSERT_EQ(ca_subprocess_kill(p), 0);
    int s2 = ca_join(w2), s3 = ca_join(w3);
    ASSERT(WIFSIGNALED(s2) && WTERMSIG(s2) == SIGKILL);
    ASSERT_EQ(s3, s2);
    int ws;
    ASSERT_EQ(ca_subprocess_wait(p, &ws), 0);
    ASSERT_EQ(ws, s2);
    ASSERT_EQ(ca_subprocess_wait_timeout(p, 0, &ws), 0);
    ca_task_release(w1);
    ca_task_release(w2);
    ca_task_release(w3);
    ca_subprocess_free(p);
    return 0;
}

static void test_wait_timeout_and_cancel(void)
{
    ASSERT_EQ(ca_run(wait_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */

struct free_ctx {
    pid_t pid;
    ca_process *p;
};

static int free_main(void *arg)
{
    struct free_ctx *fc = arg;
    const char *s[] = {"sleep", "30", NULL};
    ca_process *p;
    /* Freed while running: killed and reaped in the background. */
    ASSERT_EQ(ca_subprocess_exec(&p, s, NULL), 0);
    ca_subprocess_free(p);
    double t0 = mono();
    int zombies, all;
    do {
        ASSERT_EQ(ca_sleep(0.01), 0);
        count_children(&zombies, &all);
    } while (all > 0 && mono() - t0 < 5);
    ASSERT_EQ(all, 0);
    /* Still running when ca_run returns: killed and reaped by ca_run; the
     * object stays readable. */
    const char *s2[] = {"sh", "-c", "exec sleep 30", NULL};
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_exec(&fc->p, s2, &o), 0);
    fc->pid = ca_subprocess_pid(fc->p);
    return 0;
}

static void test_free_running_child(void)
{
    struct free_ctx fc = {0, NULL};
    ASSERT_EQ(ca_run(free_main, &fc), 0);
    int zombies, all;
    count_children(&zombies, &all);
    ASSERT_EQ(all, 0);
    int ws;
    ASSERT_EQ(ca_subprocess_poll(fc.p, &ws), 0);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    ASSERT_EQ(ca_subprocess_pid(fc.p), fc.pid);
    ASSERT(ca_subprocess_stdout(fc.p) == NULL); /* closed with the loop */
    ASSERT_EQ(ca_subprocess_send_signal(fc.p, SIGTERM), -ESRCH);
    ca_subprocess_free(fc.p);
}

/* ------------------------------------------------------------------------ */

struct many {
    size_t n, conc, next, done;
    int failures;
};

static int many_worker(void *arg)
{
    struct many *m = arg;
    const char *t[] = {"/bin/true", NULL};
    const char *f[] = {"/bin/false", NULL};
    while (m->next < m->n) {
        size_t i = m->next++;
        ca_process *p;
        int r = ca_subprocess_exec(&p, i % 10 == 9 ? f : t, NULL);
        if (r < 0) {
            fprintf(stderr, "spawn %zu: %s\n", i, ca_strerror(r));
            m->failures++;
            continue;
        }
        if (i % 100 == 50) {
            ca_subprocess_free(p); /* not waited: reaped in the background */
            continue;
        }
        int ws;
        r = ca_subprocess_wait(p, &ws);
        if (r < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != (i % 10 == 9))
            m->failures++;
        ca_subprocess_free(p);
        m->done++;
    }
    return 0;
}

static int many_main(void *arg)
{
    struct many *m = arg;
    ca_task *ts[64];
    for (size_t i = 0; i < m->conc; i++)
        ts[i] = ca_spawn(many_worker, m);
    ASSERT_EQ(ca_gather(ts, m->conc, 0), 0);
    for (size_t i = 0; i < m->conc; i++)
        ca_task_release(ts[i]);
    /* The children freed without a wait are reaped as they exit. */
    double t0 = mono();
    int zombies, all;
    do {
        ASSERT_EQ(ca_sleep(0.01), 0);
        count_children(&zombies, &all);
    } while (all > 0 && mono() - t0 < 10);
    printf("%zu children (%s): %d zombies, %d children left\n", m->n,
           ca_subprocess_watcher(), zombies, all);
    ASSERT_EQ(zombies, 0);
    ASSERT_EQ(all, 0);
    return 0;
}

static void run_many(void)
{
    struct many m = {.n = test_is_instrumented() ? 300 : 1000, .conc = 50};
    double t0 = mono();
    ASSERT_EQ(ca_run(many_main, &m), 0);
    ASSERT_EQ(m.failures, 0);
    ASSERT_EQ(m.next, m.n);
    printf("%.0f children/s\n", (double)m.n / (mono() - t0));
    int zombies, all;
    count_children(&zombies, &all);
    ASSERT_EQ(zombies, 0);
    ASSERT_EQ(all, 0);
}

static void test_no_zombies_1000(void)
{
    run_many();
}

/* The same, and the basics, with the SIGCHLD fallback. */
static int sigchld_mode_main(void *arg)
{
    (void)arg;
    ASSERT_STREQ(ca_subprocess_watcher(), "sigchld");
    struct sigaction sa;
    ASSERT_EQ(echo_main(NULL), 0);
    ASSERT_EQ(status_main(NULL), 0);
    ASSERT_EQ(terminate_main(NULL), 0);
    ASSERT_EQ(wait_main(NULL), 0);
    /* The handler is installed while the loop uses it. */
    ASSERT_EQ(sigaction(SIGCHLD, NULL, &sa), 0);
    ASSERT(sa.sa_handler != SIG_DFL);
    return 0;
}

static void test_sigchld_fallback(void)
{
    setenv("CAWAIT_SUBPROCESS_SIGCHLD", "1", 1);
    struct sigaction before, after;
    ASSERT_EQ(sigaction(SIGCHLD, NULL, &before), 0);
    ASSERT_EQ(ca_run(sigchld_mode_main, NULL), 0);
    run_many();
    /* Restored when the last loop stopped using it. */
    ASSERT_EQ(sigaction(SIGCHLD, NULL, &after), 0);
    ASSERT(after.sa_handler == before.sa_handler);
    unsetenv("CAWAIT_SUBPROCESS_SIGCHLD");
}

/* The watcher in use: pidfd on this kernel, unless it lacks them. */
static int watcher_main(void *arg)
{
    (void)arg;
    const char *w = ca_subprocess_watcher();
    ASSERT(w);
    printf("watcher: %s\n", w);
    if (strcmp(w, "pidfd") != 0 && !test_is_instrumented())
        SKIP("no pidfd_open on this kernel: the SIGCHLD fallback is used");
    return 0;
}

static void test_watcher(void)
{
    ASSERT_EQ(ca_run(watcher_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Same-turn races, communicate under pressure (adversarial)                */
/* ------------------------------------------------------------------------ */

static void assert_no_children_soon(void)
{
    int zombies, all;
    double t0 = mono();
    do {
        count_children(&zombies, &all);
        if (all == 0)
            break;
        ASSERT_EQ(ca_sleep(0.01), 0);
    } while (mono() - t0 < 5);
    ASSERT_EQ(zombies, 0);
    ASSERT_EQ(all, 0);
}

/* A wait cancelled in the turn the child exits: whichever wins, the
 * status is not lost for a later wait, and the child is reaped. */
static int cancel_exit_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 10; i++) {
        const char *argv[] = {"sh", "-c", "exit 5", NULL};
        ca_process *p;
        ASSERT_EQ(ca_subprocess_exec(&p, argv, NULL), 0);
        ca_task *t = ca_spawn(waiter_task, p);
        ASSERT_EQ(ca_yield(), 0); /* it waits (unless the child is gone) */
        /* The child exits while the loop does not turn. */
        struct timespec ts = {0, 200 * 1000 * 1000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ; /* SIGCHLD mode: the handler interrupts it */
        ca_cancel(t);
        int r = ca_join(t);
        ca_task_release(t);
        if (r != -ECANCELED)
            ASSERT(WIFEXITED(r) && WEXITSTATUS(r) == 5);
        int ws = -1;
        ASSERT_EQ(ca_subprocess_wait_timeout(p, 5, &ws), 0);
        ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 5);
        ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
        ASSERT_EQ(ca_subprocess_send_signal(p, SIGTERM), -ESRCH);
        ca_subprocess_free(p);
    }
    assert_no_children_soon();
    return 0;
}

static void test_wait_cancel_same_turn_as_exit(void)
{
    ASSERT_EQ(ca_run(cancel_exit_main, NULL), 0);
}

static int cancel_exit_sigchld_main(void *arg)
{
    ASSERT_STREQ(ca_subprocess_watcher(), "sigchld");
    return cancel_exit_main(arg);
}

static void test_wait_cancel_same_turn_as_exit_sigchld(void)
{
    setenv("CAWAIT_SUBPROCESS_SIGCHLD", "1", 1);
    ASSERT_EQ(ca_run(cancel_exit_sigchld_main, NULL), 0);
}

/* communicate cut short by a deadline scope or a cancel: -ETIMEDOUT /
 * -ECANCELED, nothing kept, the child keeps running and can be waited. */
struct comm_task {
    ca_process *p;
    const void *in;
    size_t in_len;
    ca_output out, err;
    int rc;
};

static int comm_task_fn(void *arg)
{
    struct comm_task *c = arg;
    c->rc = ca_subprocess_communicate(c->p, c->in, c->in_len, &c->out, &c->err);
    return 0;
}

static int comm_cut_main(void *arg)
{
    (void)arg;
    const char *argv[] = {"sh", "-c", "echo partial; echo e >&2; exec sleep 30",
                          NULL};
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE,
                            .stderr_mode = CA_STDIO_PIPE};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    ca_output out = {(char *)1, 1}, err = {(char *)1, 1};
    ASSERT_EQ(ca_deadline_push(0.3), 0);
    double t0 = mono();
    ASSERT_EQ(ca_subprocess_communicate(p, "x", 1, &out, &err), -ETIMEDOUT);
    ASSERT_TIME_LT(mono() - t0, 5);
    ASSERT_EQ(ca_deadline_pop(), -ETIMEDOUT);
    ASSERT(out.data == NULL && out.len == 0);
    ASSERT(err.data == NULL && err.len == 0);
    ASSERT_EQ(ca_subprocess_poll(p, NULL), -EAGAIN);
    ASSERT(pid_alive(ca_subprocess_pid(p)));
    ASSERT_EQ(ca_subprocess_wait_timeout(p, 0.05, NULL), -ETIMEDOUT);
    ASSERT_EQ(ca_subprocess_kill(p), 0);
    int ws;
    ASSERT_EQ(ca_subprocess_wait_timeout(p, 5, &ws), 0);
    ASSERT(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    ca_subprocess_free(p);

    /* cancelled from another task, with a big input the child never
     * reads */
    size_t n = 4u << 20;
    char *big = calloc(1, n);
    ASSERT(big);
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    struct comm_task c = {.p = p, .in = big, .in_len = n};
    ca_task *t = ca_spawn(comm_task_fn, &c);
    ASSERT_EQ(ca_sleep(0.2), 0);
    ASSERT_EQ(ca_cancel(t), 0);
    t0 = mono();
    ASSERT_EQ(ca_join(t), 0);
    ASSERT_TIME_LT(mono() - t0, 5);
    ca_task_release(t);
    ASSERT_EQ(c.rc, -ECANCELED);
    ASSERT(c.out.data == NULL && c.err.data == NULL);
    ASSERT(pid_alive(ca_subprocess_pid(p)));
    ASSERT_EQ(ca_subprocess_poll(p, NULL), -EAGAIN);
    ca_subprocess_free(p); /* killed, reaped in the background */
    free(big);
    assert_no_children_soon();
    return 0;
}

static void test_communicate_cut_short(void)
{
    ASSERT_EQ(ca_run(comm_cut_main, NULL), 0);
}

/* Big input and big output at once in both directions (the child writes
 * while we still feed it) must not deadlock; a child that never reads its
 * input, and one that closes stdout early, are not errors. */
static int comm_big_main(void *arg)
{
    (void)arg;
    size_t n = test_is_instrumented() ? (2u << 20) : (16u << 20);
    unsigned char *in = malloc(n);
    ASSERT(in);
    for (size_t i = 0; i < n; i++)
        in[i] = (unsigned char)(i * 7 + (i >> 13));
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE,
                            .stderr_mode = CA_STDIO_PIPE};
    /* cat to stdout and to stderr both */
    const char *tee[] = {"tee", "/dev/stderr", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, tee, &o), 0);
    ca_output out, err;
    double t0 = mono();
    ASSERT_EQ(ca_subprocess_communicate(p, in, n, &out, &err), 0);
    ASSERT_TIME_LT(mono() - t0, 30);
    ASSERT_EQ(out.len, n);
    ASSERT_EQ(err.len, n);
    ASSERT(memcmp(out.data, in, n) == 0);
    ASSERT(memcmp(err.data, in, n) == 0);
    ASSERT_EQ(out.data[n], '\0');
    int ws;
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    free(out.data);
    free(err.data);
    ca_subprocess_free(p);

    /* never reads stdin, exits */
    const char *quiet[] = {"sh", "-c", "echo bye; exit 2", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, quiet, &o), 0);
    ASSERT_EQ(ca_subprocess_communicate(p, in, n, &out, NULL), 0);
    ASSERT_STREQ(out.data, "bye\n");
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 2);
    free(out.data);
    ca_subprocess_free(p);

    /* closes stdout (and stdin) early, goes on, writes to stderr */
    const char *early[] = {"sh", "-c",
                           "exec 1>&- 0<&-; sleep 0.2; echo late >&2", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, early, &o), 0);
    ASSERT_EQ(ca_subprocess_communicate(p, in, n, &out, &err), 0);
    ASSERT_EQ(out.len, 0);
    ASSERT(out.data != NULL && out.data[0] == '\0');
    ASSERT_STREQ(err.data, "late\n");
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    free(out.data);
    free(err.data);
    ca_subprocess_free(p);
    free(in);
    assert_no_children_soon();
    return 0;
}

static void test_communicate_big_both_ways(void)
{
    ASSERT_EQ(ca_run(comm_big_main, NULL), 0);
}

/* max_output: exactly the ceiling fits, one byte more is -ENOBUFS (and
 * nothing is kept); the ceiling applies to stderr alone too. */
static int max_output_main(void *arg)
{
    (void)arg;
    static const size_t sizes[] = {1, 4095, 65536, 65537, 300000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t max = sizes[k];
        for (int extra = 0; extra <= 1; extra++) {
            char cmd[128];
            snprintf(cmd, sizeof(cmd), "head -c %zu /dev/zero", max + extra);
            const char *argv[] = {"sh", "-c", cmd, NULL};
            ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE,
                                    .stderr_mode = CA_STDIO_PIPE,
                                    .max_output = max};
            ca_process *p;
            ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
            ca_output out, err;
            int r = ca_subprocess_communicate(p, NULL, 0, &out, &err);
            if (extra) {
                ASSERT_EQ(r, -ENOBUFS);
                ASSERT(out.data == NULL && err.data == NULL);
            } else {
                ASSERT_EQ(r, 0);
                ASSERT_EQ(out.len, max);
                ASSERT_EQ(err.len, 0);
                free(out.data);
                free(err.data);
            }
            ca_subprocess_free(p);
        }
    }
    /* too much on stderr, stdout dropped (NULL) */
    const char *argv[] = {"sh", "-c", "head -c 5000 /dev/zero >&2", NULL};
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE,
                            .stderr_mode = CA_STDIO_PIPE,
                            .max_output = 4999};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, &o), 0);
    ca_output err;
    ASSERT_EQ(ca_subprocess_communicate(p, NULL, 0, NULL, &err), -ENOBUFS);
    ASSERT(err.data == NULL);
    ca_subprocess_free(p);
    assert_no_children_soon();
    return 0;
}

static void test_communicate_max_output_edges(void)
{
    ASSERT_EQ(ca_run(max_output_main, NULL), 0);
}

/* Read system calls this process has made so far (/proc/self/io), or -1. */
static long read_syscalls(void)
{
    FILE *f = fopen("/proc/self/io", "re");
    if (!f)
        return -1;
    char line[128];
    long n = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "syscr: %ld", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* communicate drops an output it is not asked for (out NULL) a pipeful at
 * a time: 64 MB in 4 KiB pieces took at least 15,625 reads. */
static int drop_main(void *arg)
{
    (void)arg;
    const char *dd[] = {"dd", "if=/dev/zero", "bs=1048576", "count=64",
                        "status=none", NULL};
    ca_subprocess_opts o = {.stdout_mode = CA_STDIO_PIPE};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, dd, &o), 0);
    long before = read_syscalls();
    if (before < 0) {
        ca_subprocess_free(p);
        SKIP("no /proc/self/io");
    }
    ASSERT_EQ(ca_subprocess_communicate(p, NULL, 0, NULL, NULL), 0);
    long reads = read_syscalls() - before;
    int ws = -1;
    ASSERT_EQ(ca_subprocess_poll(p, &ws), 0);
    ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    ca_subprocess_free(p);
    if (reads >= 12000)
        FAILF("%ld reads to drop 64 MB", reads);
    return 0;
}

static void test_communicate_drops_in_big_reads(void)
{
    ASSERT_EQ(ca_run(drop_main, NULL), 0);
}

/* Our fds: none left behind by spawning, freeing, failing to spawn; none
 * reach the child (it sees 0-2 only even while pipes of other children
 * and a signalfd are open). */
static int fds_main(void *arg)
{
    (void)arg;
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE,
                            .stderr_mode = CA_STDIO_PIPE};
    /* warm up the loop's machinery (spawner threads, eventfds) */
    const char *t[] = {"true", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, t, &o), 0);
    ASSERT_EQ(ca_subprocess_wait(p, NULL), 0);
    ca_subprocess_free(p);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    ca_signal_receiver *r;
    ASSERT_EQ(ca_signal_open(&r, &set), 0); /* the loop keeps its signalfd */
    ca_signal_close(r);
    int base = test_count_fds();
    const char *sl[] = {"sleep", "30", NULL};
    ca_process *held[3];
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(ca_subprocess_exec(&held[i], sl, &o), 0);
    ASSERT_EQ(ca_signal_open(&r, &set), 0);
    const char *ls[] = {"ls", "/proc/self/fd", NULL};
    ca_subprocess_opts lo = {.stdout_mode = CA_STDIO_PIPE};
    ASSERT_EQ(ca_subprocess_exec(&p, ls, &lo), 0);
    ca_output out;
    ASSERT_EQ(ca_subprocess_communicate(p, NULL, 0, &out, NULL), 0);
    /* 0 1 2 and ls's own directory fd */
    int lines = 0;
    for (size_t i = 0; i < out.len; i++)
        lines += out.data[i] == '\n';
    if (lines != 4)
        FAILF("child fds:\n%s", out.data);
    free(out.data);
    ca_subprocess_free(p);
    ca_signal_close(r);
    for (int i = 0; i < 3; i++)
        ca_subprocess_free(held[i]);
    const char *missing[] = {"/nonexistent/cawait", NULL};
    ASSERT_EQ(ca_subprocess_exec(&p, missing, &o), -ENOENT);
    assert_no_children_soon();
    ASSERT_EQ(test_count_fds(), base);
    return 0;
}

static void test_no_fd_leaks(void)
{
    ASSERT_EQ(ca_run(fds_main, NULL), 0);
}

/* BUG: two tasks wait for one child; its exit wakes both (proc_finish's
 * wake_all unlinks their nodes); the first returns and frees p (the child
 * is reaped, so free() releases it at once) before the second has run.
 * The second then reads the freed p in wait_until (w.data is NULL:
 * ca_subprocess_free found no linked waiter).  The header's "tasks still
 * waiting on p must have returned" cannot be met by the program: the
 * second task was already woken.  ASan: heap-use-after-free. */
struct wait_free {
    ca_process *p;
    int free_after;
    int rc;
};

static int wait_free_task(void *arg)
{
    struct wait_free *w = arg;
    int ws = 0;
    w->rc = ca_subprocess_wait(w->p, &ws);
    if (w->rc == 0)
        w->rc = ws;
    if (w->free_after)
        ca_subprocess_free(w->p);
    return 0;
}

static int free_after_wake_main(void *arg)
{
    (void)arg;
    const char *argv[] = {"sh", "-c", "sleep 0.1; exit 4", NULL};
    ca_process *p;
    ASSERT_EQ(ca_subprocess_exec(&p, argv, NULL), 0);
    struct wait_free a = {.p = p, .free_after = 1}, b = {.p = p};
    ca_task *ta = ca_spawn(wait_free_task, &a);
    ASSERT_EQ(ca_yield(), 0);
    ca_task *tb = ca_spawn(wait_free_task, &b);
    ASSERT_EQ(ca_join(ta), 0);
    ASSERT_EQ(ca_join(tb), 0);
    ca_task_release(ta);
    ca_task_release(tb);
    ASSERT(WIFEXITED(a.rc) && WEXITSTATUS(a.rc) == 4);
    /* either the status (it was ready) or -EBADF (freed) */
    ASSERT(b.rc == -EBADF || (WIFEXITED(b.rc) && WEXITSTATUS(b.rc) == 4));
    return 0;
}

static void test_free_after_wake_with_second_waiter(void)
{
    ASSERT_EQ(ca_run(free_after_wake_main, NULL), 0);
}

static const struct test_case tests[] = {
    {"echo_through_cat", test_echo_through_cat, 20, 0},
    {"100mb_output", test_100mb_output, 60, 0},
    {"communicate", test_communicate, 60, 0},
    {"exit_codes_and_signals", test_exit_codes_and_signals, 20, 0},
    {"exec_errors", test_exec_errors, 20, 0},
    {"path_skips_directories", test_path_skips_directories, 20, 0},
    {"cwd_env_and_stdio", test_cwd_env_and_stdio, 20, 0},
    {"stdin_epipe", test_stdin_epipe, 20, 0},
    {"terminate_and_kill", test_terminate_and_kill, 20, 0},
    {"wait_timeout_and_cancel", test_wait_timeout_and_cancel, 20, 0},
    {"free_running_child", test_free_running_child, 20, 0},
    {"no_zombies_1000", test_no_zombies_1000, 120, 0},
    {"sigchld_fallback", test_sigchld_fallback, 120, 0},
    {"watcher", test_watcher, 10, 0},
    {"wait_cancel_same_turn_as_exit", test_wait_cancel_same_turn_as_exit, 30,
     0},
    {"wait_cancel_same_turn_as_exit_sigchld",
     test_wait_cancel_same_turn_as_exit_sigchld, 30, 0},
    {"communicate_cut_short", test_communicate_cut_short, 30, 0},
    {"communicate_big_both_ways", test_communicate_big_both_ways, 90, 0},
    {"communicate_max_output_edges", test_communicate_max_output_edges, 60,
     0},
    {"communicate_drops_in_big_reads", test_communicate_drops_in_big_reads,
     60, 0},
    {"no_fd_leaks", test_no_fd_leaks, 30, 0},
    {"free_after_wake_with_second_waiter",
     test_free_after_wake_with_second_waiter, 20, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
