/*
 * Seed 003, the image pipeline: download N images concurrently with at most
 * 4 downloads at a time (a semaphore), streaming each body to disk chunk by
 * chunk, then process them on the thread pool (CPU work off the loop).
 * The images come from a small HTTP server in this program: each is 256 KiB
 * sent in 16 KiB pieces, 100 ms after the request.
 */
#include <cawait.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_IMAGES 8
#define DOWNLOAD_LIMIT 4
#define IMAGE_BYTES (256 * 1024)

/* ---- the image server ---- */

static int image_server(ca_stream *s, void *arg)
{
    (void)arg;
    char line[1024];
    static char piece[16384];
    memset(piece, 0x5a, sizeof(piece));
    for (;;) {
        if (ca_stream_readline(s, line, sizeof(line)) <= 0)
            return 0;
        do {
            if (ca_stream_readline(s, line, sizeof(line)) <= 0)
                return 0;
        } while (strcmp(line, "\r\n") != 0);
        ca_sleep(0.1);
        char head[128];
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                         "Content-Length: %d\r\n\r\n",
                         IMAGE_BYTES);
        ca_stream_write(s, head, (size_t)n);
        for (int sent = 0; sent < IMAGE_BYTES; sent += (int)sizeof(piece))
            if (ca_stream_write(s, piece, sizeof(piece)) < 0 ||
                ca_stream_drain(s) < 0)
                return 0;
    }
}

/* ---- the pipeline ---- */

static char dir[40];

/* A fresh private directory /tmp/cawait-<name>.<random> in buf. */
static int make_tmpdir(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "/tmp/cawait-%s.", name);
    if (n < 0 || (size_t)n + 7 > cap)
        return -1;
    memset(buf + n, 'X', 6); /* mkdtemp's template: six of them, last */
    buf[n + 6] = '\0';
    return mkdtemp(buf) ? 0 : -1;
}

static ca_http_session *client;
static ca_sem dl_sem;
static int downloading, max_downloading;

struct image {
    int num;
    char orig[96], processed[96];
    size_t bytes;
    unsigned checksum;
};

static int download_single_image(void *arg)
{
    struct image *im = arg;
    int rc = ca_sem_acquire(&dl_sem); /* async with semaphore: */
    if (rc < 0)
        return rc;
    if (++downloading > max_downloading)
        max_downloading = downloading;
    char url[32];
    snprintf(url, sizeof(url), "/images/%d.jpg", im->num);
    printf("Downloading %s...\n", url);
    ca_http_request_opts o = {.stream = 1, .timeout = 10};
    ca_http_response *r;
    rc = ca_http_request(client, "GET", url, &o, &r);
    if (rc == 0)
        rc = ca_http_raise_for_status(r);
    int fd = -1;
    if (rc == 0) {
        snprintf(im->orig, sizeof(im->orig), "%s/image_%d.jpg", dir, im->num);
        fd = open(im->orig, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            rc = -1;
    }
    /* async for chunk in response.aiter_bytes(8192) */
    char chunk[8192];
    ssize_t n;
    while (rc == 0 && (n = ca_http_response_read(r, chunk, sizeof(chunk))) != 0) {
        if (n < 0 || write(fd, chunk, (size_t)n) != n)
            rc = n < 0 ? (int)n : -1;
        else
            im->bytes += (size_t)n;
    }
    if (fd >= 0)
        close(fd);
    ca_http_response_free(r);
    downloading--;
    ca_sem_release(&dl_sem);
    if (rc == 0)
        printf("Downloaded and saved to: image_%d.jpg (%zu bytes)\n", im->num,
               im->bytes);
    return rc;
}

/* Runs on a pool thread: plain blocking code. */
static int process_single_image(void *arg)
{
    struct image *im = arg;
    snprintf(im->processed, sizeof(im->processed), "%s/image_%d_processed.jpg",
             dir, im->num);
    FILE *in = fopen(im->orig, "rb"), *out = fopen(im->processed, "wb");
    int rc = in && out ? 0 : -1;
    unsigned sum = 0;
    int c;
    while (rc == 0 && (c = fgetc(in)) != EOF) {
        unsigned char px = (unsigned char)(255 - c); /* "invert" */
        sum = sum * 31 + px;
        fputc(px, out);
    }
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    im->checksum = sum;
    return rc;
}

static int to_thread_task(void *arg)
{
    return ca_to_thread(process_single_image, arg);
}

static int run_all(ca_fn fn, struct image *ims)
{
    ca_group *g;
    int rc = ca_group_new(&g);
    if (rc < 0)
        return rc;
    for (int i = 0; i < N_IMAGES; i++)
        ca_group_spawn(g, NULL, fn, &ims[i]);
    rc = ca_group_wait(g);
    ca_group_free(g);
    return rc;
}

static int main_task(void *arg)
{
    (void)arg;
    ca_server *srv;
    int rc = ca_serve(&srv, "127.0.0.1", 0, image_server, NULL, NULL);
    if (rc < 0)
        return rc;
    char base[64];
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", ca_server_port(srv));
    ca_http_session_opts so = {.base_url = base};
    rc = ca_http_session_new(&client, &so);
    if (rc < 0) {
        printf("no HTTP client: %s\n", ca_strerror(rc));
        ca_server_close(srv, 0);
        return rc;
    }
    ca_sem_init(&dl_sem, DOWNLOAD_LIMIT, 0);
    static struct image ims[N_IMAGES];
    for (int i = 0; i < N_IMAGES; i++)
        ims[i].num = i + 1;

    double t0 = ca_now();
    rc = run_all(download_single_image, ims);
    double t1 = ca_now();
    printf("max concurrent downloads: %d\n", max_downloading);
    printf("download total: %.2f s\n", t1 - t0);
    if (rc == 0)
        rc = run_all(to_thread_task, ims);
    printf("processed %d images on the thread pool in %.2f s\n", N_IMAGES,
           ca_now() - t1);
    for (int i = 0; rc == 0 && i < N_IMAGES; i++) {
        if (ims[i].checksum != ims[0].checksum)
            rc = -1; /* identical inputs, identical outputs */
        unlink(ims[i].orig);
        unlink(ims[i].processed);
    }
    ca_http_session_free(client);
    ca_server_close(srv, 1.0);
    return rc;
}

int main(void)
{
    if (make_tmpdir(dir, sizeof(dir), "images") < 0)
        return 1;
    int rc = ca_run(main_task, NULL);
    rmdir(dir);
    return rc == 0 ? 0 : 1;
}
