/*
 * seed 002, Q5 and Q6: generators and send(), then an async generator
 * consumed with the C form of `async for`.  Each generator body runs as its
 * own task; ca_gen_yield is `yield`, ca_gen_next is next(g) and ca_gen_send
 * is g.send(x).
 */
#include <cawait.h>
#include <stdio.h>

/* Q5: def echo(): while True: received = yield; print(f"received: ...") */
static int echo(ca_gen *g, void *arg)
{
    (void)arg;
    void *received;
    if (ca_gen_yield(g, NULL, &received) < 0) /* the first yield */
        return 0;
    for (;;) {
        printf("received: %s\n", (const char *)received);
        if (ca_gen_yield(g, NULL, &received) < 0)
            return 0; /* closed */
    }
}

/* Q6: print("A"); x = yield 1; print("B", x); y = yield 2; print("C", y) */
static int gen(ca_gen *g, void *arg)
{
    (void)arg;
    void *x, *y;
    printf("A\n");
    if (ca_gen_yield(g, (void *)1L, &x) < 0)
        return 0;
    printf("B %ld\n", (long)x);
    if (ca_gen_yield(g, (void *)2L, &y) < 0)
        return 0;
    printf("C %ld\n", (long)y);
    return 0;
}

/* async def ticker(n): for i in range(n): await asyncio.sleep(0.05); yield i */
static int ticker(ca_gen *g, void *arg)
{
    long n = (long)arg;
    for (long i = 0; i < n; i++) {
        int r = ca_sleep(0.05);
        if (r < 0)
            return r;
        if (ca_gen_yield(g, (void *)i, NULL) < 0)
            return 0;
    }
    return 0;
}

static int amain(void *arg)
{
    (void)arg;
    ca_gen *g;
    void *v;
    printf("-- Q5: send() --\n");
    if (ca_gen_new(&g, echo, NULL) < 0)
        return 1;
    ca_gen_next(g, &v); /* next(g): run to the first yield */
    ca_gen_send(g, "hello", &v);
    ca_gen_send(g, "world", &v);
    ca_gen_close(g);

    printf("-- Q6: order of execution --\n");
    if (ca_gen_new(&g, gen, NULL) < 0)
        return 1;
    if (ca_gen_next(g, &v) == 1)
        printf("%ld\n", (long)v); /* print(next(g)) */
    if (ca_gen_send(g, (void *)10L, &v) == 1)
        printf("%ld\n", (long)v); /* print(g.send(10)) */
    ca_gen_close(g);

    printf("-- async for i in ticker(5) --\n");
    if (ca_gen_new(&g, ticker, (void *)5L) < 0)
        return 1;
    double t0 = ca_now();
    int r;
    while ((r = ca_gen_next(g, &v)) == 1)
        printf("tick %ld\n", (long)v);
    ca_gen_close(g);
    printf("total: %.2f s\n", ca_now() - t0);
    return r; /* 0: the generator ended normally */
}

int main(void)
{
    int r = ca_run(amain, NULL);
    if (r != 0)
        fprintf(stderr, "seed002_generators: %s\n", ca_strerror(r));
    return r != 0;
}
