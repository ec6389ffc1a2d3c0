/*
 * Seed 004, "了解进程、线程、多线程和多处理" (processes, threads,
 * multithreading and multiprocessing), blocks 2-4: a process, the threads
 * inside it, and a second process.
 *
 * Block 2, the process and its one thread:
 *
 *     print(f"进程启动，pid 为 {os.getpid()}")
 *     print(f"该进程内部运行 {threading.active_count()} 个线程")
 *     print(f"当前正在运行的线程是 {threading.current_thread().name}")
 *     # process started, pid 16900 / 1 thread / MainThread
 *
 * Block 3, a second thread:
 *
 *     def hello_from_threading():
 *         print(f"Hello {threading.current_thread().name} 线程")
 *
 *     hello_thread = threading.Thread(target=hello_from_threading)
 *     hello_thread.start()
 *     print(f"该进程内部运行 {threading.active_count()} 个线程")
 *     print(f"当前正在运行的线程是 {threading.current_thread().name}")
 *     hello_thread.join()
 *     # Hello Thread-1 / 2 threads / MainThread
 *
 * Block 4, a child process:
 *
 *     def hello_from_process():
 *         print(f"当前进程的 pid 为 {os.getpid()}")
 *
 *     # On Windows this guard is required, or starting the process fails
 *     if __name__ == '__main__':
 *         hello_process = multiprocessing.Process(target=hello_from_process)
 *         hello_process.start()
 *         hello_process.join()
 *     # the current process's pid is 12532
 *
 * In C: the thread count is the kernel's ("Threads:" in /proc/self/status),
 * so it counts every thread of the process, not only those a library
 * started.  The thread is a cawait thread pool of one thread (ca_pool_new):
 * the pool starts its thread, ca_pool_submit hands it hello_from_threading
 * (start), ca_job_wait waits for it without blocking the loop (join), and
 * ca_pool_free joins the thread.  Pool threads are named "cawait-pool", so
 * that is the name printed where Python prints Thread-1.  The main thread has
 * no name of its own in C (its kernel name is the program's), so it is
 * printed as "the main thread", with the task it runs ('main', ca_run's).
 *
 * The child process is started the two ways multiprocessing does:
 *  - fork (Linux's default): a process pool of one worker, a fork of this
 *    program; hello_from_process runs there as a job (ca_process_pool_run)
 *    and sends back its pid;
 *  - spawn (Windows' and macOS's default): a fresh run of this program
 *    (ca_subprocess_exec of /proc/self/exe) told by an argument to run
 *    hello_from_process only.  The argument check at the top of main() is
 *    the C form of `if __name__ == '__main__'`: without it the child would
 *    run the whole program again, and start a child of its own, and so on.
 *
 * Each step checks itself (the counts, the thread's name, pids that differ
 * from ours, the child's exit status) and a failure exits with status 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_getname_np */
#endif
#include <cawait.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The argument that makes a spawned copy of this program the child. */
#define CHILD_ARG "--hello-from-process"

static char exe[4096]; /* this program's path, for the spawned child */
static int failed;     /* 1 once a check failed */

/* A failed check: say which, and make the run fail. */
static int fail(const char *what)
{
    printf("FAIL: %s\n", what);
    failed = 1;
    return -1;
}

/* threading.active_count(), as the kernel counts: the "Threads:" line of
 * /proc/self/status.  Returns the count, or -1. */
static int thread_count(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* 1 if the caller is the process's main thread (its tid is the pid). */
static int on_main_thread(void)
{
    return (pid_t)syscall(SYS_gettid) == getpid();
}

/* threading.current_thread().name: "the main thread" for the main thread,
 * the kernel's name of the thread otherwise ("cawait-pool"). */
static const char *thread_name(char *buf, size_t cap)
{
    if (on_main_thread())
        return "the main thread";
    if (pthread_getname_np(pthread_self(), buf, cap) != 0)
        snprintf(buf, cap, "?");
    return buf;
}

/* The two lines blocks 2 and 3 print from the main thread.  Returns the
 * thread count, or -1. */
static int print_threads(void)
{
    int n = thread_count();
    char name[32];
    printf("this process runs %d thread(s)\n", n);
    printf("the thread running now is %s (task '%s')\n",
           thread_name(name, sizeof name), ca_task_name(ca_current()));
    return n;
}

/* ---- block 2 ---- */

static int block2(int *threads)
{
    printf("\n-- block 2: this process and its threads --\n");
    printf("process started, pid %d\n", (int)getpid());
    *threads = print_threads();
    if (*threads < 1 || !on_main_thread())
        return fail("expected at least 1 thread, the main one running");
    return 0;
}

/* ---- block 3 ---- */

static char hello_name[32]; /* the name hello_from_threading saw */

/* Runs on the pool's thread. */
static int hello_from_threading(void *arg)
{
    (void)arg;
    printf("Hello %s thread\n", thread_name(hello_name, sizeof hello_name));
    return on_main_thread() ? -EPROTO : 0;
}

static int block3(int threads_before)
{
    printf("\n-- block 3: a second thread (a pool of one thread) --\n");
    /* threading.Thread(target=...): the pool's one thread starts here. */
    ca_pool *pool;
    ca_pool_opts po = {.threads = 1};
    int r = ca_pool_new(&pool, &po);
    if (r < 0)
        return r;
    /* hello_thread.start() */
    ca_job *hello_thread;
    ca_job_opts jo = {.pool = pool};
    r = ca_pool_submit(&hello_thread, hello_from_threading, NULL, &jo);
    if (r < 0) {
        ca_pool_free(pool);
        return r;
    }
    int threads = print_threads();
    /* hello_thread.join(): this task waits, the loop does not */
    r = ca_job_wait(hello_thread);
    ca_job_release(hello_thread);
    int sr = ca_pool_shutdown(pool, 0); /* joins the thread */
    ca_pool_free(pool);
    if (r < 0)
        return r;
    if (sr < 0)
        return sr;
    if (threads != threads_before + 1)
        return fail("the pool's thread is not the one thread more");
    if (strcmp(hello_name, "cawait-pool") != 0)
        return fail("the job did not run on the pool's thread");
    return 0;
}

/* ---- block 4 ---- */

static void hello_from_process(void)
{
    printf("the current process's pid is %d\n", (int)getpid());
}

/* fork: hello_from_process as a job in a forked worker, which sends its pid
 * back as the job's output. */
static int hello_job(const void *in, size_t in_len, void **out, size_t *out_len)
{
    (void)in;
    (void)in_len;
    hello_from_process();
    int *pid = malloc(sizeof *pid);
    if (!pid)
        return -ENOMEM;
    *pid = (int)getpid();
    *out = pid;
    *out_len = sizeof *pid;
    return 0;
}

static int block4_fork(void)
{
    printf("\n-- block 4, fork: a child process from a process pool --\n");
    /* multiprocessing.Process(target=hello_from_process): one worker */
    ca_process_pool *pool;
    ca_process_pool_opts po = {.workers = 1};
    int r = ca_process_pool_new(&pool, &po);
    if (r < 0)
        return r;
    /* start() and join() */
    ca_process_pool_result res;
    r = ca_process_pool_run(pool, hello_job, NULL, 0, &res, NULL);
    int child = 0;
    if (r == 0 && res.status == 0 && res.len == sizeof child)
        memcpy(&child, res.data, sizeof child);
    else if (r == 0)
        r = res.status < 0 ? res.status : -EPROTO;
    ca_process_pool_result_free(&res);
    int sr = ca_process_pool_shutdown(pool, INFINITY);
    if (r < 0)
        return r;
    if (sr < 0)
        return sr;
    printf("parent pid %d, child pid %d\n", (int)getpid(), child);
    if (child <= 0 || child == (int)getpid())
        return fail("the job did not run in another process");
    return 0;
}

/* spawn: this program again, with CHILD_ARG; its stdout comes back through
 * a pipe and is printed here. */
static int block4_spawn(void)
{
    printf("\n-- block 4, spawn: this program again as a child process --\n");
    const char *argv[] = {exe, CHILD_ARG, NULL};
    ca_subprocess_opts so = {.stdout_mode = CA_STDIO_PIPE};
    ca_process *p;
    int r = ca_subprocess_exec(&p, argv, &so); /* start() */
    if (r < 0)
        return r;
    ca_output out = {0};
    r = ca_subprocess_communicate(p, NULL, 0, &out, NULL); /* join() */
    int ws = 0;
    if (r == 0)
        r = ca_subprocess_poll(p, &ws);
    int child = (int)ca_subprocess_pid(p);
    ca_subprocess_free(p);
    if (r < 0) {
        free(out.data);
        return r;
    }
    printf("%s", out.data ? out.data : "");
    char want[64];
    snprintf(want, sizeof want, "the current process's pid is %d\n", child);
    int ok = out.data && strcmp(out.data, want) == 0 && child != getpid();
    free(out.data);
    printf("parent pid %d, child pid %d\n", (int)getpid(), child);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        return fail("the child did not exit with status 0");
    printf("the child exited with status 0\n");
    if (!ok)
        return fail("the child did not print its own pid");
    return 0;
}

static int amain(void *arg)
{
    (void)arg;
    int threads = 0;
    int r = block2(&threads);
    if (r == 0)
        r = block3(threads);
    if (r == 0)
        r = block4_fork();
    if (r == 0)
        r = block4_spawn();
    return r;
}

int main(int argc, char **argv)
{
    /* if __name__ == '__main__': the spawned child runs only its target. */
    if (argc == 2 && strcmp(argv[1], CHILD_ARG) == 0) {
        hello_from_process();
        return 0;
    }

    /* Line-buffered: the pool thread and the loop print whole lines, and
     * nothing is left in the buffer when the worker forks. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        perror("seed004_threads_processes: /proc/self/exe");
        return 1;
    }
    exe[n] = '\0';

    printf("seed 004: a process, its threads, and child processes\n");
    double start = ca_now();
    int r = ca_run(amain, NULL);
    double elapsed = ca_now() - start;
    if (failed) {
        fprintf(stderr, "seed004_threads_processes: a check failed\n");
        return 1;
    }
    if (r < 0) {
        fprintf(stderr, "seed004_threads_processes: %s (%s)\n", ca_strerror(r),
                ca_err_name(r));
        return 1;
    }
    printf("\ntotal: %.2f s\n", elapsed);
    return 0;
}
