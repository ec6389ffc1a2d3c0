/*
 * http_server PORT DELAY_MS: the local HTTP/1.1 server of the `client`
 * benchmark (bench/run_http.sh drives it with http_client_bench and the
 * aiohttp, Go and curl peers).
 *
 * ca_serve on 127.0.0.1:PORT (0: any free port); every connection gets a
 * task that reads request heads with
 *
 *     ca_stream_readuntil(s, "\r\n\r\n", 4, head, sizeof head)
 *
 * (pipelined requests are served in order), skips a request body of
 * Content-Length bytes if one is announced, sleeps DELAY_MS milliseconds
 * with ca_sleep (none at 0), and answers
 *
 *     HTTP/1.1 200 OK
 *     Content-Length: 2
 *     Content-Type: text/plain
 *
 *     ok
 *
 * keeping the connection open (HTTP/1.1 keep-alive) unless the request
 * says "Connection: close" or is HTTP/1.0 without "Connection:
 * keep-alive".  Prints
 *
 *     listening on <port>
 *
 * on stdout once it listens, and serves until SIGINT or SIGTERM, which
 * a signalfd wait takes (bench_serve, bench/bench_util.h); it then closes the
 * server (ca_server_close with 1 s of grace), as bench/echo_server.c does.
 */
#include <cawait.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>

#include "bench_util.h"

/* Largest request head accepted (request line and headers). */
#define HEAD_MAX 8192

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Length: 2\r\n"
                               "Content-Type: text/plain\r\n"
                               "\r\n"
                               "ok";
static const char RESPONSE_CLOSE[] = "HTTP/1.1 200 OK\r\n"
                                     "Content-Length: 2\r\n"
                                     "Content-Type: text/plain\r\n"
                                     "Connection: close\r\n"
                                     "\r\n"
                                     "ok";
static const char BAD_REQUEST[] = "HTTP/1.1 400 Bad Request\r\n"
                                  "Content-Length: 0\r\n"
                                  "Connection: close\r\n"
                                  "\r\n";

static double delay_s;

/* The value of header `name` in the NUL-ended request head (header lines
 * only, after the request line), or NULL; *len gets its length. */
static const char *header_value(const char *head, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2] != '\r' && p[2] != '\0') {
        p += 2;
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl && p[nl] == ':' &&
            strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = eol;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *len = (size_t)(e - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

static int value_is(const char *v, size_t len, const char *word)
{
    return v && len == strlen(word) && strncasecmp(v, word, len) == 0;
}

/* Reads and drops n bytes of request body. */
static int skip_body(ca_stream *s, unsigned long long n)
{
    char buf[4096];
    while (n > 0) {
        size_t k = n < sizeof buf ? (size_t)n : sizeof buf;
        int r = ca_stream_readexactly(s, buf, k);
        if (r < 0)
            return r;
        n -= k;
    }
    return 0;
}

static int http_conn(ca_stream *s, void *arg)
{
    (void)arg;
    char head[HEAD_MAX];
    for (;;) {
        ssize_t n = ca_stream_readuntil(s, "\r\n\r\n", 4, head, sizeof head);
        if (n <= 0)
            break; /* closed by the client, or a head too large */
        if ((size_t)n >= sizeof head)
            break; /* no room for the NUL the parsing below needs */
        head[n] = '\0';
        const char *sp = strchr(head, ' ');
        const char *eol = strstr(head, "\r\n");
        if (!sp || sp > eol) {
            ca_stream_write(s, BAD_REQUEST, sizeof BAD_REQUEST - 1);
            ca_stream_drain(s);
            break;
        }
        size_t len;
        const char *v = header_value(head, "Content-Length", &len);
        if (v) {
            char *end;
            unsigned long long clen = strtoull(v, &end, 10);
            if (end != v + len || skip_body(s, clen) < 0)
                break;
        }
        v = header_value(head, "Connection", &len);
        int http10 = eol - head >= 8 && memcmp(eol - 8, "HTTP/1.0", 8) == 0;
        int last = value_is(v, len, "close") ||
                   (http10 && !value_is(v, len, "keep-alive"));
        if (delay_s > 0 && ca_sleep(delay_s) < 0)
            break; /* cancelled: the server is closing */
        int r =
            last ? ca_stream_write(s, RESPONSE_CLOSE, sizeof RESPONSE_CLOSE - 1)
                 : ca_stream_write(s, RESPONSE, sizeof RESPONSE - 1);
        /* 140 bytes: the kernel takes them at once and drain returns
         * without waiting; it only waits for a client that stops reading. */
        if (r < 0 || ca_stream_drain(s) < 0 || last)
            break;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char *end1 = NULL, *end2 = NULL;
    unsigned long port = argc == 3 ? strtoul(argv[1], &end1, 10) : 0;
    unsigned long delay = argc == 3 ? strtoul(argv[2], &end2, 10) : 0;
    if (argc != 3 || end1 == argv[1] || *end1 || port > 65535 ||
        end2 == argv[2] || *end2 || delay > 3600000) {
        fprintf(stderr,
                "usage: %s PORT DELAY_MS   (PORT 0: any free port; every GET "
                "is answered after DELAY_MS milliseconds)\n",
                argv[0]);
        return 2;
    }
    /* Answer "after DELAY_MS" as exactly as the kernel allows: the default
     * 50 us timer slack adds to every delayed answer. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    delay_s = (double)delay / 1000.0;
    return bench_serve_main("http_server", (unsigned)port, http_conn);
}
