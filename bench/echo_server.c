/*
 * echo_server PORT: the cawait TCP echo server of the echo and idle
 * benchmarks (bench/run.sh drives it with echo_client and idle_client).
 *
 * ca_serve on 127.0.0.1:PORT (0: any free port); every connection gets a
 * task running the asyncio-style loop
 *
 *     n = ca_stream_read(s, buf, sizeof buf); if (n <= 0) break;
 *     ca_stream_write(s, buf, n); ca_stream_drain(s);
 *
 * with a 2 KiB buffer on the task's stack.  Prints
 *
 *     listening on <port>
 *
 * on stdout once it listens, and serves until SIGINT or SIGTERM: the signal
 * handler writes to a pipe the main task waits on, which then closes the
 * server (ca_server_close with 1 s of grace).  RLIMIT_NOFILE is
 * raised to the hard limit first (the idle benchmark holds 10,000
 * connections).
 */
#include <cawait.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* 2 KiB: enough for the 1 KiB round trips, and it keeps the handler's
 * frames within the top page of its stack, so an idle connection costs one
 * stack page (4.45 KiB per connection in all; a 16 KiB stack buffer puts
 * the deeper frames on a second page: 8.45 KiB). */
#define ECHO_BUF (2048)

/* Shutdown by the self-pipe trick: the signal handler writes a byte that
 * the main task waits for with ca_wait_fd.  (Polling a flag with a sleep
 * would keep a timer armed, and every epoll_wait would set up a kernel
 * hrtimer: measurable at 100k round trips per second.) */
static int stop_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    (void)sig;
    char c = 1;
    ssize_t w = write(stop_pipe[1], &c, 1);
    (void)w;
}

static int echo_conn(ca_stream *s, void *arg)
{
    (void)arg;
    char buf[ECHO_BUF];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof buf);
        if (n <= 0)
            break;
        if (ca_stream_write(s, buf, (size_t)n) < 0)
            break;
        if (ca_stream_drain(s) < 0)
            break;
    }
    return 0;
}

static int server_main(void *arg)
{
    unsigned port = *(const unsigned *)arg;
    ca_server *srv;
    int r = ca_serve(&srv, "127.0.0.1", port, echo_conn, NULL, NULL);
    if (r < 0) {
        fprintf(stderr, "echo_server: ca_serve: %s\n", ca_strerror(r));
        return r;
    }
    printf("listening on %d\n", ca_server_port(srv));
    fflush(stdout);
    for (;;) {
        char c;
        ssize_t n = read(stop_pipe[0], &c, 1);
        if (n == 1)
            break;
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            break;
        r = ca_wait_fd(stop_pipe[0], CA_READ);
        if (r < 0)
            break;
    }
    ca_server_close(srv, 1.0);
    return 0;
}

int main(int argc, char **argv)
{
    char *end = NULL;
    unsigned long port = argc == 2 ? strtoul(argv[1], &end, 10) : 0;
    if (argc != 2 || end == argv[1] || *end || port > 65535) {
        fprintf(stderr, "usage: %s PORT   (0: any free port)\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            perror("echo_server: setrlimit(RLIMIT_NOFILE)");
    }
    if (pipe2(stop_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        perror("echo_server: pipe2");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned p = (unsigned)port;
    int r = ca_run(server_main, &p);
    if (r < 0) {
        fprintf(stderr, "echo_server: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
