/* The test runner: see runner.h. */
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char self_path[4096];
static const struct test_child *child_table;

int test_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void test_tmpdir(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "/tmp/cawait-%s.", name);
    if (n < 0 || (size_t)n + 7 > cap)
        FAILF("test_tmpdir: name %s too long", name);
    memset(buf + n, 'X', 6); /* mkdtemp's template: six of them, last */
    buf[n + 6] = '\0';
    if (!mkdtemp(buf))
        FAILF("mkdtemp %s: %s", buf, strerror(errno));
}

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

double test_heap_in_use(void)
{
#ifdef TEST_ASAN
    return (double)__sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    return (double)mi.uordblks + (double)mi.hblkhd;
#endif
}

double test_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    unsigned long size = 0, res = 0;
    int ok = fscanf(f, "%lu %lu", &size, &res) == 2;
    fclose(f);
    return ok ? (double)res * (double)sysconf(_SC_PAGESIZE) : -1;
}

int test_is_instrumented(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return 1;
#else
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    return 1;
#endif
#endif
    const char *p = getenv("LD_PRELOAD");
    return p && (strstr(p, "vgpreload") || strstr(p, "valgrind"));
#endif
}

static void run_in_process(const struct test_case *t)
{
    int before = test_count_fds();
    t->fn();
    int after = test_count_fds();
    if (before >= 0 && after > before) {
        fprintf(stderr, "test %s leaked %d file descriptor(s)\n", t->name,
                after - before);
        exit(1);
    }
    exit(0);
}

/* 0 pass, 1 fail, 2 skip, 3 missed a timing bound only */
static int run_forked_once(const struct test_case *t, double scale)
{
    int timeout = (int)((t->timeout_s ? t->timeout_s : 30) * scale);
    fflush(stdout);
    fflush(stderr);
    double t0 = mono();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        run_in_process(t);
    }
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            perror("waitpid");
            return 1;
        }
        if (mono() - t0 > timeout) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            printf("not ok - %s (timeout after %d s)\n", t->name, timeout);
            return 1;
        }
        usleep(2000);
    }
    double dt = mono() - t0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        printf("ok - %s (%.3f s)\n", t->name, dt);
        return 0;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        printf("ok - %s # SKIP\n", t->name);
        return 2;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == TEST_EXIT_TIMING)
        return 3;
    if (WIFSIGNALED(status))
        printf("not ok - %s (killed by signal %d)\n", t->name,
               WTERMSIG(status));
    else
        printf("not ok - %s (exit %d)\n", t->name, WEXITSTATUS(status));
    return 1;
}

/* Run t; a run that missed only a wall-clock bound is repeated once. */
static int run_forked(const struct test_case *t, double scale)
{
    int r = run_forked_once(t, scale);
    if (r != 3)
        return r;
    printf("# %s missed a timing bound (above); running it again\n", t->name);
    r = run_forked_once(t, scale);
    if (r != 3)
        return r;
    printf("not ok - %s (missed a timing bound twice)\n", t->name);
    return 1;
}

int run_child(const char *name, const char *env, char *buf, size_t cap)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 2);
        if (env)
            putenv((char *)env);
        execl(self_path, self_path, "--child", name, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(p[0], buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap - 1)
            break;
    }
    buf[n] = '\0';
    close(p[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return status;
}

int runner_main(int argc, char **argv, const struct test_case *tests,
                const struct test_child *children)
{
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    self_path[n > 0 ? n : 0] = '\0';
    child_table = children;
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (argc >= 3 && strcmp(argv[1], "--child") == 0) {
        for (const struct test_child *c = children; c && c->name; c++)
            if (strcmp(c->name, argv[2]) == 0)
                return c->fn(argc - 3, argv + 3);
        fprintf(stderr, "no child helper %s\n", argv[2]);
        return 2;
    }
    if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
        for (const struct test_case *t = tests; t->name; t++)
            printf("%s\n", t->name);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "-i") == 0) {
        for (const struct test_case *t = tests; t->name; t++)
            if (strcmp(t->name, argv[2]) == 0)
                run_in_process(t);
        fprintf(stderr, "no test %s\n", argv[2]);
        return 2;
    }

    double scale = 1;
    const char *s = getenv("CAWAIT_TEST_TIMEOUT_SCALE");
    if (s && atof(s) > 0)
        scale = atof(s);
    const char *light = getenv("CAWAIT_TEST_LIGHT");
    int skip_heavy = light && *light == '1';

    int passed = 0, failed = 0, skipped = 0;
    for (const struct test_case *t = tests; t->name; t++) {
        if (argc > 1) {
            int want = 0;
            for (int i = 1; i < argc; i++)
                if (strcmp(argv[i], t->name) == 0)
                    want = 1;
            if (!want)
                continue;
        }
        if (t->heavy && skip_heavy) {
            printf("ok - %s # SKIP heavy\n", t->name);
            skipped++;
            continue;
        }
        int r = run_forked(t, scale);
        if (r == 0)
            passed++;
        else if (r == 2)
            skipped++;
        else
            failed++;
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
