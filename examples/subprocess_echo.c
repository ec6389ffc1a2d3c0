/*
 * subprocess_echo.c: talk to a child program through pipes
 * (asyncio.create_subprocess_exec with stdin=PIPE, stdout=PIPE).
 *
 * main starts `cat`, writes three lines to its stdin and reads each one
 * back from its stdout with ca_stream_readline, then closes stdin (the
 * child sees end of file and exits) and waits for its exit status.  A
 * second task ticks meanwhile: waiting for the child never blocks the loop.
 * Then communicate() does the same in one call, with `tr a-z A-Z`.
 */
#include <cawait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int ticker(void *arg)
{
    int *ticks = arg;
    while (ca_sleep(0.001) == 0)
        ++*ticks;
    return 0; /* cancelled */
}

static int talk_to_cat(void)
{
    const char *argv[] = {"cat", NULL};
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE};
    ca_process *p;
    int r = ca_subprocess_exec(&p, argv, &o);
    if (r < 0)
        return r;
    ca_stream *in = ca_subprocess_stdin(p), *out = ca_subprocess_stdout(p);
    const char *lines[] = {"hello, cat\n", "one more line\n", "bye\n"};
    char buf[128];
    for (size_t i = 0; i < 3 && r >= 0; i++) {
        r = ca_stream_write(in, lines[i], strlen(lines[i]));
        if (r == 0)
            r = ca_stream_drain(in);
        if (r == 0)
            r = (int)ca_stream_readline(out, buf, sizeof(buf));
        if (r > 0)
            printf("cat said: %s", buf);
    }
    int ws = 0;
    if (r >= 0)
        r = ca_subprocess_close_stdin(p); /* end of file: cat exits */
    if (r >= 0)
        r = ca_subprocess_wait(p, &ws);
    if (r >= 0)
        printf("cat exited with status %d\n", WEXITSTATUS(ws));
    ca_subprocess_free(p); /* kills the child if it still ran */
    return r < 0 ? r : 0;
}

static int shout(void)
{
    const char *argv[] = {"tr", "a-z", "A-Z", NULL};
    ca_subprocess_opts o = {.stdin_mode = CA_STDIO_PIPE,
                            .stdout_mode = CA_STDIO_PIPE};
    ca_process *p;
    int r = ca_subprocess_exec(&p, argv, &o);
    if (r < 0)
        return r;
    const char *msg = "communicate feeds stdin and reads stdout at once\n";
    ca_output out;
    r = ca_subprocess_communicate(p, msg, strlen(msg), &out, NULL);
    if (r == 0) {
        printf("tr said: %s", out.data);
        free(out.data);
    }
    ca_subprocess_free(p);
    return r;
}

static int amain(void *arg)
{
    (void)arg;
    int ticks = 0;
    ca_task *t = ca_spawn(ticker, &ticks);
    int r = talk_to_cat();
    if (r == 0)
        r = shout();
    ca_cancel(t);
    ca_join(t);
    printf("meanwhile the ticker task ran %d times\n", ticks);
    return r;
}

int main(void)
{
    int r = ca_run(amain, NULL);
    if (r < 0) {
        fprintf(stderr, "subprocess_echo: %s\n", ca_strerror(r));
        return 1;
    }
    return 0;
}
