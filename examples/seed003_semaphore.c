/*
 * seed 003's image pipeline, its concurrency control: at most
 * DOWNLOAD_LIMIT downloads at once with a Semaphore, all of them in a task
 * group.  The downloads are simulated (0.1 s each; the real HTTP version
 * comes with the HTTP client).  12 downloads, 4 at a time: 3 rounds,
 * about 0.3 s instead of 1.2 s sequentially or 0.1 s unbounded.
 */
#include <cawait.h>
#include <stdio.h>

#define DOWNLOAD_LIMIT 4
#define N_IMAGES 12

static ca_sem dl_semaphore = CA_SEM_INIT(DOWNLOAD_LIMIT);
static int active, max_active, done;

static int download_image(void *arg)
{
    int id = (int)(long)arg;
    int r = ca_sem_acquire(&dl_semaphore); /* async with semaphore: */
    if (r < 0)
        return r;
    active++;
    if (active > max_active)
        max_active = active;
    printf("downloading image %2d (%d active)\n", id, active);
    r = ca_sleep(0.1);
    active--;
    done++;
    printf("downloaded  image %2d (%d/%d done)\n", id, done, N_IMAGES);
    ca_sem_release(&dl_semaphore);
    return r;
}

static int amain(void *arg)
{
    (void)arg;
    printf("seed 003: %d downloads, Semaphore(%d) (simulated, 0.1 s each)\n",
           N_IMAGES, DOWNLOAD_LIMIT);
    ca_group *tg;
    int r = ca_group_new(&tg);
    if (r < 0)
        return r;
    double t0 = ca_now();
    for (long i = 1; i <= N_IMAGES && r == 0; i++)
        r = ca_group_spawn(tg, NULL, download_image, (void *)i);
    int w = ca_group_wait(tg);
    ca_group_free(tg);
    if (r < 0 || w < 0)
        return r < 0 ? r : w;
    printf("max concurrent downloads: %d\n", max_active);
    printf("total: %.2f s\n", ca_now() - t0);
    printf("expected ~0.30 s (%d downloads / %d at a time x 0.1 s)\n", N_IMAGES,
           DOWNLOAD_LIMIT);
    return max_active == DOWNLOAD_LIMIT ? 0 : 1;
}

int main(void)
{
    int r = ca_run(amain, NULL);
    if (r != 0)
        fprintf(stderr, "seed003_semaphore: %s\n", r < 0 ? ca_strerror(r) : "cap not reached");
    return r != 0;
}
