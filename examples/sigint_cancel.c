/*
 * sigint_cancel.c: Ctrl-C cancels main, which shuts down cleanly
 * (asyncio.run's KeyboardInterrupt handling, asyncio.Runner).
 *
 * ca_run turns the first SIGINT (or SIGTERM) into cancellation of the main
 * task: whatever main is blocked in (here a 30 s sleep standing for a server
 * loop) returns -ECANCELED.  main then cleans up inside a shield scope (the
 * cleanup may wait; cancellation stays pending until the shield is popped)
 * and returns.  A second Ctrl-C during the cleanup would end the process at
 * once.  So that the demo runs without a keyboard, a timer raises SIGINT at
 * this process after 0.1 s.
 */
#include <cawait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>

static void press_ctrl_c(void *arg)
{
    (void)arg;
    printf("(the demo presses Ctrl-C: raise(SIGINT))\n");
    raise(SIGINT);
}

static int amain(void *arg)
{
    (void)arg;
    ca_call_later(0.1, press_ctrl_c, NULL, NULL);
    printf("serving; press Ctrl-C to stop\n");
    int r = ca_sleep(30);
    if (r != -ECANCELED) {
        printf("not interrupted: %s\n", ca_strerror(r));
        return r;
    }
    printf("main: cancelled by SIGINT (ECANCELED)\n");
    ca_shield_push(); /* cleanup that waits must not be cancelled again */
    ca_sleep(0.02);   /* flush, close connections, ... */
    ca_shield_pop();
    printf("main: cleanup done\n");
    return -ECANCELED;
}

int main(void)
{
    /* A shell starts background jobs with SIGINT ignored, and ca_run leaves
     * an ignored (or blocked) SIGINT alone, as asyncio does.  The demo wants
     * Ctrl-C's default behaviour wherever it is started from. */
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGINT);
    signal(SIGINT, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &one, NULL);

    int r = ca_run(amain, NULL);
    if (r == -ECANCELED) {
        printf("clean shutdown after SIGINT\n");
        return 0;
    }
    fprintf(stderr, "sigint_cancel: %s\n", ca_strerror(r));
    return 1;
}
