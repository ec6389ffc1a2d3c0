/* hello.c: two tasks sleep at once, so the run takes ~0.2 s, not 0.3 s. */
#include <cawait.h>
#include <stdio.h>

static int greet(void *arg)
{
    int r = ca_sleep(*(double *)arg); /* suspends this task, not the thread */
    printf("after %.1f s: %s\n", *(double *)arg, r ? ca_strerror(r) : "hello");
    return r;
}

static int amain(void *arg)
{
    double t0 = ca_now(), *secs = arg;
    ca_task *a = ca_spawn(greet, &secs[0]), *b = ca_spawn(greet, &secs[1]);
    int ra = ca_join(a), rb = ca_join(b); /* -EINVAL if a spawn failed */
    printf("total: %.2f s (expected ~0.20 s)\n", ca_now() - t0);
    return ra < 0 ? ra : rb; /* ca_run frees a and b when it returns */
}

int main(void)
{
    int r = ca_run(amain, (double[]){0.2, 0.1});
    return r < 0 ? (fprintf(stderr, "hello: %s\n", ca_strerror(r)), 1) : 0;
}
