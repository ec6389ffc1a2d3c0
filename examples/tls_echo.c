/*
 * TLS echo: a TLS server and a verifying client in one program.
 *
 * Makes a throwaway self-signed certificate for "localhost" with the
 * openssl command, serves TLS on 127.0.0.1 (any free port), connects a
 * client that trusts that certificate, echoes a line, then shows what a
 * client trusting only the system CA store says about the same server.
 */
#include <cawait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[40];
static char cert[64], key[64];

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

static int make_cert(void)
{
    if (make_tmpdir(dir, sizeof(dir), "tls-example") < 0)
        return -1;
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
             "-nodes -days 1 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost -keyout %s -out %s "
             ">/dev/null 2>&1",
             key, cert);
    return system(cmd) == 0 ? 0 : -1;
}

static int echo(ca_stream *s, void *arg)
{
    (void)arg;
    char line[256];
    ssize_t n;
    while ((n = ca_stream_readline(s, line, sizeof(line))) > 0) {
        ca_stream_write(s, line, (size_t)n);
        if (ca_stream_drain(s) < 0)
            break;
    }
    return 0; /* the server closes the stream: close_notify */
}

static int main_task(void *arg)
{
    (void)arg;
    ca_tls_ctx *sctx, *cctx, *sys;
    ca_tls_opts so = {.server = 1, .cert_file = cert, .key_file = key,
                      .alpn = "http/1.1"};
    int r = ca_tls_ctx_new(&sctx, &so);
    if (r < 0) {
        fprintf(stderr, "server context: %s (%s)\n", ca_strerror(r),
                ca_tls_last_error());
        return r;
    }
    ca_server *srv;
    ca_server_opts sopts = {.tls = sctx};
    r = ca_serve(&srv, "127.0.0.1", 0, echo, NULL, &sopts);
    ca_tls_ctx_free(sctx); /* the server holds its own reference */
    if (r < 0)
        return r;
    unsigned port = (unsigned)ca_server_port(srv);

    ca_tls_opts co = {.ca_file = cert, .alpn = "h2,http/1.1"};
    ca_tls_ctx_new(&cctx, &co);
    ca_stream *s;
    r = ca_open_tls_connection(&s, "localhost", port, cctx, NULL);
    if (r == 0) {
        printf("connected: %s, ALPN %s\n", ca_stream_tls_version(s),
               ca_stream_tls_alpn(s) ? ca_stream_tls_alpn(s) : "(none)");
        char line[256];
        ca_stream_write(s, "hello over TLS\n", 15);
        if (ca_stream_readline(s, line, sizeof(line)) > 0)
            printf("echo: %s", line);
        ca_stream_close(s);
    } else {
        fprintf(stderr, "connect: %s (%s)\n", ca_strerror(r),
                ca_tls_last_error());
    }
    ca_tls_ctx_free(cctx);

    /* The system store has never heard of our certificate. */
    ca_tls_ctx_new(&sys, NULL);
    int r2 = ca_open_tls_connection(&s, "localhost", port, sys, NULL);
    printf("system store: %s\n", r2 < 0 ? ca_err_name(r2) : "accepted?!");
    if (r2 < 0)
        printf("  %s\n", ca_tls_last_error());
    else
        ca_stream_close(s);
    ca_tls_ctx_free(sys);

    ca_server_close(srv, 1.0);
    return r == 0 && r2 == -CA_ECERTUNTRUSTED ? 0 : 1;
}

int main(void)
{
    ca_tls_ctx *probe;
    if (ca_tls_ctx_new(&probe, NULL) == -CA_ENOTLS) {
        printf("cawait was built without OpenSSL: nothing to show\n");
        return 0;
    }
    ca_tls_ctx_free(probe);
    if (make_cert() < 0) {
        fprintf(stderr, "could not make a certificate (is openssl installed?)\n");
        return 1;
    }
    int r = ca_run(main_task, NULL);
    unlink(cert);
    unlink(key);
    rmdir(dir);
    return r == 0 ? 0 : 1;
}
