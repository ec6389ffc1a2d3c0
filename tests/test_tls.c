/*
 * TLS: cawait against itself, against `openssl s_server` and `openssl
 * s_client`, and against hostile peers.  Every test makes a throwaway CA
 * and certificates (good, expired, self-signed, wrong name, client) with
 * libcrypto in a temporary directory.
 */
#include "cawait.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef CAWAIT_HAVE_OPENSSL

#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/time.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------ */
/* Throwaway certificates                                                   */
/* ------------------------------------------------------------------------ */

static char dir[64];
static char p_ca[96], p_srv[96], p_srv_key[96], p_exp[96], p_exp_key[96],
    p_self[96], p_self_key[96], p_wrong[96], p_wrong_key[96], p_cli[96],
    p_cli_key[96];

static void add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    ASSERT(e != NULL);
    ASSERT_EQ(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A certificate for key, signed by issuer (NULL: self-signed), valid from
 * now + from_s to now + to_s. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *san,
                       X509 *issuer, EVP_PKEY *issuer_key, long from_s,
                       long to_s, int is_ca, long serial)
{
    X509 *x = X509_new();
    ASSERT(x != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), from_s);
    X509_gmtime_adj(X509_getm_notAfter(x), to_s);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    add_ext(x, &ctx, NID_basic_constraints,
            is_ca ? "critical,CA:TRUE" : "CA:FALSE");
    if (is_ca)
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(x, &ctx, NID_subject_key_identifier, "hash");
    if (san)
        add_ext(x, &ctx, NID_subject_alt_name, san);
    ASSERT(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    ASSERT(f != NULL);
    if (x)
        ASSERT_EQ(PEM_write_X509(f, x), 1);
    if (k)
        ASSERT_EQ(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    ASSERT_EQ(fclose(f), 0);
}

static void cleanup_certs(void)
{
    const char *files[] = {p_ca,   p_srv,      p_srv_key, p_exp,
                           p_exp_key, p_self,  p_self_key, p_wrong,
                           p_wrong_key, p_cli, p_cli_key};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (files[i][0])
            unlink(files[i]);
    if (dir[0])
        rmdir(dir);
}

/* One leaf: key + certificate signed by the CA (or self-signed). */
static void leaf(char *cert_path, char *key_path, const char *name,
                 const char *cn, const char *san, X509 *ca, EVP_PKEY *ca_key,
                 long from_s, long to_s, long serial)
{
    snprintf(cert_path, 96, "%s/%s.pem", dir, name);
    snprintf(key_path, 96, "%s/%s.key", dir, name);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    ASSERT(k != NULL);
    X509 *x = make_cert(k, cn, san, ca, ca_key, from_s, to_s, 0, serial);
    write_pem(cert_path, x, NULL);
    write_pem(key_path, NULL, k);
    X509_free(x);
    EVP_PKEY_free(k);
}

static void make_certs(void)
{
    test_tmpdir(dir, sizeof(dir), "tls");
    atexit(cleanup_certs);
    const long day = 86400;
    EVP_PKEY *ca_key = EVP_EC_gen("P-256");
    ASSERT(ca_key != NULL);
    X509 *ca = make_cert(ca_key, "cawait test CA", NULL, NULL, NULL, -day,
                         30 * day, 1, 1);
    snprintf(p_ca, sizeof(p_ca), "%s/ca.pem", dir);
    write_pem(p_ca, ca, NULL);
    leaf(p_srv, p_srv_key, "server", "localhost",
         "DNS:localhost,IP:127.0.0.1,IP:::1", ca, ca_key, -day, 30 * day, 2);
    leaf(p_exp, p_exp_key, "expired", "localhost",
         "DNS:localhost,IP:127.0.0.1", ca, ca_key, -3 * day, -day, 3);
    leaf(p_self, p_self_key, "self", "localhost",
         "DNS:localhost,IP:127.0.0.1", NULL, NULL, -day, 30 * day, 4);
    leaf(p_wrong, p_wrong_key, "wrong", "other.example",
         "DNS:other.example", ca, ca_key, -day, 30 * day, 5);
    leaf(p_cli, p_cli_key, "client", "cawait client", NULL, ca, ca_key, -day,
         30 * day, 6);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static ca_tls_ctx *server_ctx(const char *cert, const char *key,
                              const char *alpn)
{
    ca_tls_ctx *c;
    ca_tls_opts o = {.server = 1, .cert_file = cert, .key_file = key,
                     .alpn = alpn};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), 0);
    return c;
}

static ca_tls_ctx *client_ctx(const char *alpn)
{
    ca_tls_ctx *c;
    ca_tls_opts o = {.ca_file = p_ca, .alpn = alpn};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), 0);
    return c;
}

static int handler_calls;
static int handler_last;

/* Echo until EOF or error; counts calls and keeps the last status. */
static int echo_handler(ca_stream *s, void *arg)
{
    (void)arg;
    handler_calls++;
    char buf[16384];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof(buf));
        if (n <= 0) {
            handler_last = (int)n;
            return (int)n;
        }
        int r = ca_stream_write(s, buf, (size_t)n);
        if (r == 0)
            r = ca_stream_drain(s);
        if (r < 0) {
            handler_last = r;
            return r;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Contexts: argument checks                                                */
/* ------------------------------------------------------------------------ */

static void test_ctx_args(void)
{
    make_certs();
    ca_tls_ctx *c;
    ASSERT_EQ(ca_tls_ctx_new(NULL, NULL), -EINVAL);
    ca_tls_opts o = {.server = 1};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -EINVAL); /* no certificate */
    ASSERT(c == NULL);
    o = (ca_tls_opts){.cert_file = p_srv};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -EINVAL); /* certificate, no key */
    o = (ca_tls_opts){.alpn = "h2,,http/1.1"};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -EINVAL);
    o = (ca_tls_opts){.alpn = ""};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -EINVAL);
    o = (ca_tls_opts){.min_version = 0x0301};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -EINVAL);
    o = (ca_tls_opts){.handshake_timeout = -1};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -EINVAL);
    o = (ca_tls_opts){.server = 1, .cert_file = "/nonexistent/cert.pem",
                      .key_file = p_srv_key};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -ENOENT);
    ASSERT(strstr(ca_tls_last_error(), "/nonexistent/cert.pem") != NULL);
    /* a key that is not the certificate's */
    o = (ca_tls_opts){.server = 1, .cert_file = p_srv, .key_file = p_exp_key};
    ASSERT_EQ(ca_tls_ctx_new(&c, &o), -CA_ETLS);
    ASSERT(*ca_tls_last_error() != '\0');
    /* a file that is not PEM */
    o = (ca_tls_opts){.server = 1, .cert_file = "/etc/hostname",
                      .key_file = p_srv_key};
    if (access("/etc/hostname", R_OK) == 0)
        ASSERT_EQ(ca_tls_ctx_new(&c, &o), -CA_ETLS);
    /* a verifying client without a server name: nothing to verify */
    ASSERT_EQ(ca_tls_ctx_new(&c, NULL), 0); /* system store */
    ASSERT_EQ(ca_stream_start_tls(NULL, c, "x"), -EINVAL);
    ca_tls_ctx_free(c);
    ca_tls_ctx_free(NULL);
    ASSERT_STREQ(ca_strerror(-CA_ECERTHOST),
                 "TLS certificate does not match the host name");
    ASSERT_STREQ(ca_err_name(-CA_ECERTEXPIRED), "CA_ECERTEXPIRED");
}

static int start_tls_args_main(void *a)
{
    (void)a;
    ca_tls_ctx *c = client_ctx(NULL);
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *s;
    ASSERT_EQ(ca_stream_open(&s, sv[0], NULL), 0);
    ASSERT_EQ(ca_stream_start_tls(s, c, NULL), -EINVAL);
    ASSERT_EQ(ca_stream_start_tls(s, c, ""), -EINVAL);
    ASSERT_EQ(ca_stream_start_tls(s, NULL, "localhost"), -EINVAL);
    ASSERT(ca_stream_tls_version(s) == NULL);
    ASSERT(ca_stream_tls_alpn(s) == NULL);
    /* a client context cannot serve */
    ca_server *srv;
    ca_server_opts so = {.tls = c};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so),
              -EINVAL);
    ca_stream_close(s);
    ca_close(sv[1]);
    ca_tls_ctx_free(c);
    return 0;
}

static void test_start_tls_args(void)
{
    make_certs();
    ASSERT_EQ(ca_run(start_tls_args_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* cawait client <-> cawait server                                          */
/* ------------------------------------------------------------------------ */

static int echo_main(void *a)
{
    (void)a;
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, "http/1.1,h2");
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so), 0);
    ca_tls_ctx_free(sc); /* the server keeps its reference */
    unsigned port = (unsigned)ca_server_port(srv);

    ca_tls_ctx *cc = client_ctx("h2,http/1.1");
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", port, cc, NULL), 0);
    ASSERT_STREQ(ca_stream_tls_version(c), "TLSv1.3");
    /* the server's preference wins among what the client offers */
    ASSERT_STREQ(ca_stream_tls_alpn(c), "http/1.1");

    ASSERT_EQ(ca_stream_write(c, "hello\nworld\n", 12), 0);
    char line[64];
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 6);
    ASSERT_STREQ(line, "hello\n");
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 6);
    ASSERT_STREQ(line, "world\n");

    /* 4 MiB written at once: partial TLS writes, back pressure, a write
     * buffer that moves between retries */
    enum { BIG = 4 << 20 };
    char *out = malloc(BIG), *in = malloc(BIG);
    ASSERT(out && in);
    for (int i = 0; i < BIG; i++)
        out[i] = (char)(i * 13 + (i >> 12));
    ASSERT_EQ(ca_stream_write(c, out, BIG), 0);
    ASSERT_EQ(ca_stream_drain(c), 0);
    ASSERT_EQ(ca_stream_readexactly(c, in, BIG), 0);
    ASSERT(memcmp(in, out, BIG) == 0);

    /* half close over TLS 1.3: close_notify one way, the echo still comes
     * back, then the server's close_notify is a clean end of stream */
    ASSERT_EQ(ca_stream_write(c, "tail", 4), 0);
    ASSERT_EQ(ca_stream_write_eof(c), 0);
    char rest[16];
    ASSERT_EQ(ca_stream_readexactly(c, rest, 4), 0);
    ASSERT(memcmp(rest, "tail", 4) == 0);
    ASSERT_EQ(ca_stream_read(c, rest, sizeof(rest)), 0);
    ASSERT(ca_stream_at_eof(c));
    ASSERT_EQ(ca_stream_close(c), 0);

    /* ten clients at once, sharing one client context */
    enum { N = 10 };
    ca_stream *cs[N];
    for (int i = 0; i < N; i++)
        ASSERT_EQ(ca_open_tls_connection(&cs[i], "127.0.0.1", port, cc, NULL),
                  0);
    for (int i = 0; i < N; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "client %d\n", i);
        ASSERT_EQ(ca_stream_write(cs[i], msg, (size_t)n), 0);
    }
    for (int i = 0; i < N; i++) {
        char want[32];
        snprintf(want, sizeof(want), "client %d\n", i);
        ASSERT_GT(ca_stream_readline(cs[i], line, sizeof(line)), 0);
        ASSERT_STREQ(line, want);
        ASSERT_EQ(ca_stream_close(cs[i]), 0);
    }
    ca_tls_ctx_free(cc);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    ASSERT_EQ(handler_calls, 1 + N);
    ASSERT_EQ(handler_last, 0); /* clean close_notify, not truncation */
    free(out);
    free(in);
    return 0;
}

static void test_echo_self(void)
{
    make_certs();
    ASSERT_EQ(ca_run(echo_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Verification failures                                                    */
/* ------------------------------------------------------------------------ */

/* ca_tls_last_error right after the last failed try_connect (the server's
 * own failing handshake overwrites it later). */
static char try_error[256];

static int try_connect(const char *cert, const char *key, const char *name,
                       ca_tls_ctx *cc)
{
    ca_tls_ctx *sc = server_ctx(cert, key, NULL);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so), 0);
    ca_tls_ctx_free(sc);
    ca_stream *c;
    int r = ca_open_tls_connection(&c, name, (unsigned)ca_server_port(srv),
                                   cc, NULL);
    if (r == 0) {
        ASSERT_EQ(ca_stream_write(c, "ping\n", 5), 0);
        char line[16];
        ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 5);
        ca_stream_close(c);
    } else {
        ASSERT(c == NULL);
        snprintf(try_error, sizeof(try_error), "%s", ca_tls_last_error());
    }
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return r;
}

static int verify_main(void *a)
{
    (void)a;
    ca_tls_ctx *cc = client_ctx(NULL);
    ASSERT_EQ(try_connect(p_srv, p_srv_key, "localhost", cc), 0);
    ASSERT_EQ(try_connect(p_srv, p_srv_key, "127.0.0.1", cc), 0);
    ASSERT_EQ(handler_calls, 2);

    ASSERT_EQ(try_connect(p_exp, p_exp_key, "localhost", cc),
              -CA_ECERTEXPIRED);
    ASSERT(strstr(try_error, "expired") != NULL);
    ASSERT_EQ(try_connect(p_self, p_self_key, "localhost", cc),
              -CA_ECERTUNTRUSTED);
    ASSERT(strstr(try_error, "self-signed") != NULL ||
           strstr(try_error, "self signed") != NULL);
    ASSERT_EQ(try_connect(p_wrong, p_wrong_key, "localhost", cc),
              -CA_ECERTHOST);
    ASSERT(strstr(try_error, "mismatch") != NULL);
    /* an address the certificate does not list */
    ASSERT_EQ(try_connect(p_wrong, p_wrong_key, "127.0.0.1", cc),
              -CA_ECERTHOST);
    /* the system store does not know our CA */
    ca_tls_ctx *sys;
    ASSERT_EQ(ca_tls_ctx_new(&sys, NULL), 0);
    ASSERT_EQ(try_connect(p_srv, p_srv_key, "localhost", sys),
              -CA_ECERTUNTRUSTED);
    ca_tls_ctx_free(sys);
    /* the failed handshakes never reached the handler */
    ASSERT_EQ(handler_calls, 2);

    /* verification off: anything goes */
    ca_tls_ctx *none;
    ca_tls_opts o = {.verify_none = 1};
    ASSERT_EQ(ca_tls_ctx_new(&none, &o), 0);
    ASSERT_EQ(try_connect(p_self, p_self_key, "localhost", none), 0);
    ASSERT_EQ(try_connect(p_wrong, p_wrong_key, "127.0.0.1", none), 0);
    ca_tls_ctx_free(none);
    ca_tls_ctx_free(cc);
    return 0;
}

static void test_verify_failures(void)
{
    make_certs();
    ASSERT_EQ(ca_run(verify_main, NULL), 0);
}

/* Client certificates: required by the server, checked against the CA. */
static int client_cert_main(void *a)
{
    (void)a;
    ca_tls_ctx *sc;
    ca_tls_opts so_ = {.server = 1, .cert_file = p_srv, .key_file = p_srv_key,
                       .ca_file = p_ca, .verify_client = 1};
    ASSERT_EQ(ca_tls_ctx_new(&sc, &so_), 0);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so), 0);
    unsigned port = (unsigned)ca_server_port(srv);

    /* with a certificate */
    ca_tls_ctx *cc;
    ca_tls_opts co = {.ca_file = p_ca, .cert_file = p_cli,
                      .key_file = p_cli_key};
    ASSERT_EQ(ca_tls_ctx_new(&cc, &co), 0);
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", port, cc, NULL), 0);
    ASSERT_EQ(ca_stream_write(c, "hi\n", 3), 0);
    char line[16];
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ca_stream_close(c);
    ca_tls_ctx_free(cc);

    /* without: TLS 1.3 reports the server's refusal at the first read */
    cc = client_ctx(NULL);
    int r = ca_open_tls_connection(&c, "localhost", port, cc, NULL);
    if (r == 0) {
        ca_stream_write(c, "hi\n", 3);
        r = (int)ca_stream_readline(c, line, sizeof(line));
        ca_stream_close(c);
    }
    ASSERT_EQ(r, -CA_ETLS);
    ASSERT(*ca_tls_last_error() != '\0');
    ca_tls_ctx_free(cc);
    ca_tls_ctx_free(sc);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    ASSERT_EQ(handler_calls, 1);
    return 0;
}

static void test_client_cert(void)
{
    make_certs();
    ASSERT_EQ(ca_run(client_cert_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* start_tls: upgrade a plaintext stream (STARTTLS), over a Unix socket     */
/* ------------------------------------------------------------------------ */

static int starttls_server(void *arg)
{
    ca_stream *s = arg;
    char line[64];
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), 9);
    ASSERT_STREQ(line, "STARTTLS\n");
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    /* the client's hello came right behind the line: already buffered */
    int r = ca_stream_start_tls(s, sc, NULL);
    ca_tls_ctx_free(sc);
    ASSERT_EQ(r, 0);
    ASSERT_EQ(ca_stream_readline(s, line, sizeof(line)), 7);
    ASSERT_STREQ(line, "secret\n");
    ASSERT_EQ(ca_stream_write(s, "ok\n", 3), 0);
    /* sendfile through TLS: the copy path */
    char path[96];
    snprintf(path, sizeof(path), "%s/file", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    static char data[300000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)('a' + i % 26);
    ASSERT_EQ(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    ASSERT_EQ(ca_stream_sendfile(s, fd, 1000, 0),
              (ssize_t)sizeof(data) - 1000);
    close(fd);
    unlink(path);
    return ca_stream_close(s);
}

static int starttls_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *ss, *c;
    ASSERT_EQ(ca_stream_open(&ss, sv[1], NULL), 0);
    ASSERT_EQ(ca_stream_open(&c, sv[0], NULL), 0);
    ca_task *t = ca_spawn(starttls_server, ss);
    ASSERT_EQ(ca_stream_write(c, "STARTTLS\n", 9), 0);
    ca_tls_ctx *cc = client_ctx(NULL);
    ASSERT_EQ(ca_stream_start_tls(c, cc, "localhost"), 0);
    ca_tls_ctx_free(cc);
    ASSERT(ca_stream_tls_version(c) != NULL);
    ASSERT_EQ(ca_stream_write(c, "secret\n", 7), 0);
    char line[64];
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ASSERT_STREQ(line, "ok\n");
    static char got[300000];
    ASSERT_EQ(ca_stream_readexactly(c, got, sizeof(got) - 1000), 0);
    for (size_t i = 0; i < sizeof(got) - 1000; i++)
        ASSERT_EQ(got[i], (char)('a' + (i + 1000) % 26));
    ASSERT_EQ(ca_stream_read(c, line, sizeof(line)), 0); /* close_notify */
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ca_stream_close(c);
    return 0;
}

static void test_starttls_unix(void)
{
    make_certs();
    ASSERT_EQ(ca_run(starttls_main, NULL), 0);
}

/* TLS inside TLS: start_tls on a stream that is already TLS. */
static int nested_server(void *arg)
{
    ca_stream *s = arg;
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    ASSERT_EQ(ca_stream_start_tls(s, sc, NULL), 0);
    ASSERT_EQ(ca_stream_start_tls(s, sc, NULL), 0);
    ca_tls_ctx_free(sc);
    return echo_handler(s, NULL) == 0 ? ca_stream_close(s) : -1;
}

static int nested_main(void *a)
{
    (void)a;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *ss, *c;
    ASSERT_EQ(ca_stream_open(&ss, sv[1], NULL), 0);
    ASSERT_EQ(ca_stream_open(&c, sv[0], NULL), 0);
    ca_task *t = ca_spawn(nested_server, ss);
    ca_tls_ctx *cc = client_ctx(NULL);
    ASSERT_EQ(ca_stream_start_tls(c, cc, "localhost"), 0);
    ASSERT_EQ(ca_stream_start_tls(c, cc, "localhost"), 0);
    ca_tls_ctx_free(cc);
    static char out[200000], in[200000];
    for (size_t i = 0; i < sizeof(out); i++)
        out[i] = (char)(i * 31);
    ASSERT_EQ(ca_stream_write(c, out, sizeof(out)), 0);
    ASSERT_EQ(ca_stream_readexactly(c, in, sizeof(in)), 0);
    ASSERT(memcmp(in, out, sizeof(in)) == 0);
    ASSERT_EQ(ca_stream_write_eof(c), 0);
    ASSERT_EQ(ca_join(t), 0);
    ca_task_release(t);
    ca_stream_close(c);
    return 0;
}

static void test_tls_in_tls(void)
{
    make_certs();
    ASSERT_EQ(ca_run(nested_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Handshake timeouts and hostile peers                                     */
/* ------------------------------------------------------------------------ */

static int silent_handler(ca_stream *s, void *arg)
{
    (void)arg;
    char buf[512];
    while (ca_stream_read(s, buf, sizeof(buf)) > 0) {
        /* never answers; ends when the peer goes */
    }
    return 0;
}

static int timeout_main(void *a)
{
    (void)a;
    /* client side: a TCP server that never speaks TLS */
    ca_server *plain;
    ASSERT_EQ(ca_serve(&plain, "127.0.0.1", 0, silent_handler, NULL, NULL),
              0);
    ca_tls_ctx *cc;
    ca_tls_opts co = {.ca_file = p_ca, .handshake_timeout = 0.3};
    ASSERT_EQ(ca_tls_ctx_new(&cc, &co), 0);
    double t0 = mono();
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost",
                                     (unsigned)ca_server_port(plain), cc,
                                     NULL),
              -ETIMEDOUT);
    double dt = mono() - t0;
    ASSERT_GE(dt, 0.29);
    ASSERT_TIME_LT(dt, 5.0);
    ASSERT(strstr(ca_tls_last_error(), "timed out") != NULL);
    ca_tls_ctx_free(cc);
    ca_server_close(plain, 0);

    /* server side: a client that connects and says nothing is dropped */
    ca_tls_ctx *sc;
    ca_tls_opts so_ = {.server = 1, .cert_file = p_srv, .key_file = p_srv_key,
                       .handshake_timeout = 0.3};
    ASSERT_EQ(ca_tls_ctx_new(&sc, &so_), 0);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so), 0);
    ca_tls_ctx_free(sc);
    int fd = ca_tcp_connect("127.0.0.1", (unsigned)ca_server_port(srv));
    ASSERT_GE(fd, 0);
    t0 = mono();
    char buf[64];
    ASSERT_EQ(ca_read(fd, buf, sizeof(buf)), 0); /* closed by the server */
    dt = mono() - t0;
    ASSERT_GE(dt, 0.25);
    ASSERT_TIME_LT(dt, 5.0);
    ca_close(fd);
    ASSERT_EQ(handler_calls, 0);
    ca_server_close(srv, 1.0);
    return 0;
}

static void test_handshake_timeout(void)
{
    make_certs();
    ASSERT_EQ(ca_run(timeout_main, NULL), 0);
}

/* Garbage instead of a ClientHello, a hello cut short, a peer that resets:
 * the server survives each, never calls the handler, leaks nothing. */
static int garbage_main(void *a)
{
    (void)a;
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so), 0);
    ca_tls_ctx_free(sc);
    unsigned port = (unsigned)ca_server_port(srv);
    char buf[256];

    /* 1: an HTTP request on the TLS port: the server answers with an
     * alert (or nothing) and closes */
    int fd = ca_tcp_connect("127.0.0.1", port);
    ASSERT_GE(fd, 0);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(ca_write(fd, http, strlen(http)), (ssize_t)strlen(http));
    ssize_t n;
    while ((n = ca_read(fd, buf, sizeof(buf))) > 0) {
        ASSERT_EQ((unsigned char)buf[0], 21); /* a TLS alert record */
    }
    ASSERT(n == 0 || n == -ECONNRESET);
    ca_close(fd);

    /* 2: the first 20 bytes of a real ClientHello, then EOF */
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         0, sv),
              0);
    ca_stream *cs;
    ASSERT_EQ(ca_stream_open(&cs, sv[0], NULL), 0);
    ca_tls_ctx *cc = client_ctx(NULL);
    ca_deadline_push(0.2); /* the hello goes out, then we give up */
    ASSERT_EQ(ca_stream_start_tls(cs, cc, "localhost"), -ETIMEDOUT);
    ca_deadline_pop();
    ca_tls_ctx_free(cc);
    n = ca_read(sv[1], buf, sizeof(buf));
    ASSERT_GT(n, 20);
    ASSERT_EQ(buf[0], 22); /* handshake record */
    ca_stream_close(cs);
    ca_close(sv[1]);
    fd = ca_tcp_connect("127.0.0.1", port);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ca_write(fd, buf, 20), 20);
    ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
    while ((n = ca_read(fd, buf, sizeof(buf))) > 0) {
    }
    ASSERT(n == 0 || n == -ECONNRESET);
    ca_close(fd);

    /* 3: random bytes, then a reset */
    fd = ca_tcp_connect("127.0.0.1", port);
    ASSERT_GE(fd, 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (char)(i * 37 + 11);
    ca_write(fd, buf, sizeof(buf));
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    ca_close(fd);

    /* the server still serves */
    cc = client_ctx(NULL);
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", port, cc, NULL), 0);
    ASSERT_EQ(ca_stream_write(c, "alive\n", 6), 0);
    ASSERT_EQ(ca_stream_readline(c, buf, sizeof(buf)), 6);
    ca_stream_close(c);
    ca_tls_ctx_free(cc);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    ASSERT_EQ(handler_calls, 1);
    return 0;
}

static void test_garbage_peers(void)
{
    make_certs();
    ASSERT_EQ(ca_run(garbage_main, NULL), 0);
}

/*
 * Truncation: a proxy between client and server forwards whole TLS records
 * until the server's second application-data record, sends only part of
 * it, and closes.  The client must see an error, not a short clean end.
 * The same proxy forwarding everything shows the clean end.
 */
struct proxy {
    int lfd;
    int cut; /* 1: truncate the server's 2nd application record */
    unsigned backend;
};

static int read_full(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = ca_read(fd, buf + got, n - got);
        if (r <= 0)
            return r == 0 ? -CA_EINCOMPLETE : (int)r;
        got += (size_t)r;
    }
    return 0;
}

static int pump_up(void *arg)
{
    int *fds = arg;
    char buf[4096];
    ssize_t n;
    while ((n = ca_read(fds[0], buf, sizeof(buf))) > 0)
        if (ca_write(fds[1], buf, (size_t)n) < 0)
            break;
    shutdown(fds[1], SHUT_WR);
    return 0;
}

static int proxy_main(void *arg)
{
    struct proxy *p = arg;
    int fds[2];
    fds[0] = ca_accept(p->lfd, NULL, NULL);
    ASSERT_GE(fds[0], 0);
    fds[1] = ca_tcp_connect("127.0.0.1", p->backend);
    ASSERT_GE(fds[1], 0);
    ca_task *up = ca_spawn(pump_up, fds);
    for (;;) {
        char hdr[5];
        if (read_full(fds[1], hdr, 5) < 0)
            break;
        size_t len = ((size_t)(unsigned char)hdr[3] << 8) |
                     (unsigned char)hdr[4];
        char body[18000];
        ASSERT_LE(len, sizeof(body));
        if (read_full(fds[1], body, len) < 0)
            break;
        /* TLS 1.3 hides the handshake in application-data records too:
         * recognise the second line's record by its size (37 bytes of
         * data + the content type + a 16-byte tag). */
        if (hdr[0] == 23 && len == 37 + 1 + 16 && p->cut) {
            ca_write(fds[0], hdr, 5);
            ca_write(fds[0], body, len / 2);
            break;
        }
        ca_write(fds[0], hdr, 5);
        ca_write(fds[0], body, len);
    }
    ca_close(fds[0]);
    ca_cancel(up);
    ca_join(up);
    ca_task_release(up);
    ca_close(fds[1]);
    return 0;
}

/* Writes two lines in two records, a pause between, then closes. */
static int two_records_handler(ca_stream *s, void *arg)
{
    (void)arg;
    ca_stream_write(s, "first\n", 6);
    ca_sleep(0.05);
    ca_stream_write(s, "second line, which the proxy may cut\n", 37);
    return 0;
}

static int run_proxy(int cut, ssize_t *second)
{
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, two_records_handler, NULL, &so),
              0);
    ca_tls_ctx_free(sc);
    struct proxy p = {.cut = cut, .backend = (unsigned)ca_server_port(srv)};
    p.lfd = ca_tcp_listen("127.0.0.1", 0, NULL);
    ASSERT_GE(p.lfd, 0);
    ca_task *pt = ca_spawn(proxy_main, &p);
    ca_tls_ctx *cc = client_ctx(NULL);
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost",
                                     (unsigned)ca_sock_port(p.lfd), cc, NULL),
              0);
    ca_tls_ctx_free(cc);
    char line[64];
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 6);
    *second = ca_stream_readline(c, line, sizeof(line));
    ssize_t after = ca_stream_read(c, line, sizeof(line));
    ca_stream_close(c);
    ca_join(pt);
    ca_task_release(pt);
    ca_close(p.lfd);
    ca_server_close(srv, 1.0);
    return (int)after;
}

static int truncation_main(void *a)
{
    (void)a;
    ssize_t second;
    /* whole records: the line, then a clean end (close_notify) */
    ASSERT_EQ(run_proxy(0, &second), 0);
    ASSERT_EQ(second, 37);
    /* cut: an error, sticky, never a clean end */
    int after = run_proxy(1, &second);
    ASSERT_EQ(second, -CA_ETLS);
    ASSERT_EQ(after, -CA_ETLS);
    ASSERT(*ca_tls_last_error() != '\0');
    return 0;
}

static void test_truncated_records(void)
{
    make_certs();
    ASSERT_EQ(ca_run(truncation_main, NULL), 0);
}

/* A client that only writes, then closes: the server must get every byte
 * and a clean end of stream.  The TLS 1.3 session tickets the server sent
 * after the handshake sit unread in the client's socket; closing a socket
 * with unread bytes sends RST and drops the send queue, so the server lost
 * the last megabytes and read ECONNRESET. */
static size_t sink_got;
static int sink_status = 1;

static int slow_sink_handler(ca_stream *s, void *arg)
{
    (void)arg;
    ca_sleep(0.5); /* the client's data waits in its socket meanwhile */
    char buf[16384];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof(buf));
        if (n <= 0) {
            sink_status = (int)n;
            return 0;
        }
        sink_got += (size_t)n;
    }
}

static int write_close_main(void *a)
{
    (void)a;
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, slow_sink_handler, NULL, &so),
              0);
    ca_tls_ctx_free(sc);
    ca_tls_ctx *cc = client_ctx(NULL);
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "127.0.0.1",
                                     (unsigned)ca_server_port(srv), cc, NULL),
              0);
    ASSERT_STREQ(ca_stream_tls_version(c), "TLSv1.3");
    ca_sleep(0.1); /* the server finishes its handshake: tickets sent */
    enum { CHUNK = 65536, TOTAL = 512 << 10 };
    char *buf = calloc(1, CHUNK);
    ASSERT(buf != NULL);
    for (size_t sent = 0; sent < TOTAL; sent += CHUNK) {
        ASSERT_EQ(ca_stream_write(c, buf, CHUNK), 0);
        ASSERT_EQ(ca_stream_drain(c), 0);
    }
    ASSERT_EQ(ca_stream_close(c), 0);
    for (int i = 0; i < 1000 && sink_status > 0; i++)
        ca_sleep(0.01);
    ASSERT_EQ(sink_status, 0);
    ASSERT_EQ(sink_got, (size_t)TOTAL);
    free(buf);
    ca_tls_ctx_free(cc);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_write_then_close(void)
{
    make_certs();
    ASSERT_EQ(ca_run(write_close_main, NULL), 0);
}

/*
 * Bytes that arrive after the client's close(2) started: a server that
 * reads slowly and answers every read.  close_notify is out and the fd is
 * closed; the next answer reaches a closed socket, Linux replies RST and
 * drops what the client's send queue still holds.
 */
struct chatty {
    size_t got;
    int status; /* the last read: 0 at a clean end (close_notify) */
    int done;
};

static int chatty_sink(ca_stream *s, void *arg)
{
    struct chatty *c = arg;
    char buf[16384];
    for (;;) {
        ssize_t n = ca_stream_read(s, buf, sizeof(buf));
        if (n <= 0) {
            c->status = (int)n;
            c->done = 1;
            return 0;
        }
        c->got += (size_t)n;
        (void)ca_stream_write(s, "tick\n", 5); /* still talking */
        ca_sleep(0.001);                       /* and slow to read */
    }
}

enum { CHATTY_CHUNK = 65536, CHATTY_TOTAL = 8 << 20 };

static void write_all(ca_stream *c)
{
    char *buf = calloc(1, CHATTY_CHUNK);
    ASSERT(buf != NULL);
    for (size_t sent = 0; sent < CHATTY_TOTAL; sent += CHATTY_CHUNK) {
        ASSERT_EQ(ca_stream_write(c, buf, CHATTY_CHUNK), 0);
        ASSERT_EQ(ca_stream_drain(c), 0);
    }
    free(buf);
}

static int chatty_main(void *a)
{
    (void)a;
    struct chatty st = {.status = 1};
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, chatty_sink, &st, &so), 0);
    ca_tls_ctx_free(sc);
    ca_tls_ctx *cc = client_ctx(NULL);
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "127.0.0.1",
                                     (unsigned)ca_server_port(srv), cc, NULL),
              0);
    write_all(c);
    ASSERT_EQ(ca_stream_close(c), 0);
    for (int i = 0; i < 2000 && !st.done; i++)
        ca_sleep(0.01);
    ASSERT_EQ(st.got, (size_t)CHATTY_TOTAL);
    ASSERT_EQ(st.status, 0);
    ca_tls_ctx_free(cc);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_close_while_peer_sends(void)
{
    make_certs();
    ASSERT_EQ(ca_run(chatty_main, NULL), 0);
}

/*
 * A session ticket that arrives after the client closed: an OpenSSL server
 * (in a thread) sends none at the handshake, reads slowly, and sends one
 * (SSL_new_session_ticket) once the client's ca_stream_close has returned.
 * It must still read every byte and the client's close_notify.
 */
struct late_ticket {
    SSL_CTX *ctx;
    int lfd;
    int port;
    int closed_pipe[2]; /* the client writes a byte after its close */
    pthread_t th;
    size_t got;
    int ssl_error; /* SSL_get_error of the last read: ZERO_RETURN is clean */
    int sys_errno;
    int ticket_sent;
    atomic_int done;
};

static void *late_ticket_server(void *arg)
{
    struct late_ticket *lt = arg;
    struct timeval tv = {10, 0};
    int fd = accept4(lt->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        goto out;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SSL *ssl = SSL_new(lt->ctx);
    if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_accept(ssl) == 1) {
        char buf[16384];
        for (;;) {
            if (!lt->ticket_sent) {
                char b;
                if (read(lt->closed_pipe[0], &b, 1) == 1) {
                    /* the client has closed: now the ticket */
                    if (SSL_new_session_ticket(ssl) == 1 &&
                        SSL_do_handshake(ssl) == 1)
                        lt->ticket_sent = 1;
                    else
                        lt->ticket_sent = -1;
                }
            }
            size_t n;
            errno = 0;
            if (!SSL_read_ex(ssl, buf, sizeof(buf), &n)) {
                lt->ssl_error = SSL_get_error(ssl, 0);
                lt->sys_errno = errno;
                break;
            }
            lt->got += n;
            usleep(1000); /* slow to read */
        }
        if (lt->ssl_error == SSL_ERROR_ZERO_RETURN)
            SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    close(fd);
out:
    ERR_clear_error();
    OPENSSL_thread_stop();
    atomic_store(&lt->done, 1);
    return NULL;
}

static int late_ticket_main(void *a)
{
    struct late_ticket *lt = a;
    ca_tls_ctx *cc = client_ctx(NULL);
    ca_stream *c;
    ASSERT_EQ(
        ca_open_tls_connection(&c, "127.0.0.1", (unsigned)lt->port, cc, NULL),
        0);
    ASSERT_STREQ(ca_stream_tls_version(c), "TLSv1.3");
    write_all(c);
    ASSERT_EQ(ca_stream_close(c), 0);
    ASSERT_EQ(write(lt->closed_pipe[1], "x", 1), 1);
    for (int i = 0; i < 2000 && !atomic_load(&lt->done); i++)
        ca_sleep(0.01);
    ca_tls_ctx_free(cc);
    return 0;
}

static void test_late_session_ticket(void)
{
    make_certs();
    struct late_ticket lt = {.lfd = -1};
    lt.ctx = SSL_CTX_new(TLS_server_method());
    ASSERT(lt.ctx != NULL);
    ASSERT_EQ(SSL_CTX_use_certificate_chain_file(lt.ctx, p_srv), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey_file(lt.ctx, p_srv_key, SSL_FILETYPE_PEM),
              1);
    ASSERT_EQ(SSL_CTX_set_num_tickets(lt.ctx, 0), 1); /* none at first */
    ASSERT_EQ(pipe2(lt.closed_pipe, O_CLOEXEC | O_NONBLOCK), 0);
    lt.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(lt.lfd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t sl = sizeof(sa);
    ASSERT_EQ(bind(lt.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ASSERT_EQ(listen(lt.lfd, 8), 0);
    ASSERT_EQ(getsockname(lt.lfd, (struct sockaddr *)&sa, &sl), 0);
    lt.port = ntohs(sa.sin_port);
    struct timeval tv = {10, 0};
    setsockopt(lt.lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ASSERT_EQ(pthread_create(&lt.th, NULL, late_ticket_server, &lt), 0);
    int rc = ca_run(late_ticket_main, &lt);
    ASSERT_EQ(pthread_join(lt.th, NULL), 0);
    close(lt.lfd);
    close(lt.closed_pipe[0]);
    close(lt.closed_pipe[1]);
    SSL_CTX_free(lt.ctx);
    if (lt.got != (size_t)CHATTY_TOTAL || lt.ssl_error != SSL_ERROR_ZERO_RETURN)
        fprintf(stderr, "server read %zu bytes, then SSL error %d (%s)\n",
                lt.got, lt.ssl_error, strerror(lt.sys_errno));
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(lt.ticket_sent, 1);
    ASSERT_EQ(lt.got, (size_t)CHATTY_TOTAL);
    ASSERT_EQ(lt.ssl_error, SSL_ERROR_ZERO_RETURN);
}

/* Cancelling a handshake in progress frees everything. */
static int cancel_hs_task(void *arg)
{
    unsigned port = *(unsigned *)arg;
    ca_tls_ctx *cc = client_ctx(NULL);
    ca_stream *c;
    int r = ca_open_tls_connection(&c, "localhost", port, cc, NULL);
    ca_tls_ctx_free(cc);
    return r;
}

static int cancel_main(void *a)
{
    (void)a;
    ca_server *plain;
    ASSERT_EQ(ca_serve(&plain, "127.0.0.1", 0, silent_handler, NULL, NULL),
              0);
    unsigned port = (unsigned)ca_server_port(plain);
    ca_task *t = ca_spawn(cancel_hs_task, &port);
    ca_sleep(0.1);
    ca_cancel(t);
    ASSERT_EQ(ca_join(t), -ECANCELED);
    ca_task_release(t);
    ca_server_close(plain, 0);
    return 0;
}

static void test_cancel_handshake(void)
{
    make_certs();
    ASSERT_EQ(ca_run(cancel_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Against the openssl command-line tool                                    */
/* ------------------------------------------------------------------------ */

struct child {
    pid_t pid;
    int in;  /* its stdin (write end) */
    int out; /* its stdout + stderr (read end) */
};

static int have_openssl(void)
{
    return system("openssl version >/dev/null 2>&1") == 0;
}

static void spawn_child(struct child *c, char *const argv[])
{
    int in[2], out[2];
    ASSERT_EQ(pipe2(in, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
    c->pid = fork();
    ASSERT_GE(c->pid, 0);
    if (c->pid == 0) {
        /* ca_run blocks SIGINT/SIGTERM for its signalfd: unblock them */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    c->in = in[1];
    c->out = out[0];
    fcntl(c->in, F_SETFL, O_NONBLOCK);
    fcntl(c->out, F_SETFL, O_NONBLOCK);
}

/* Read the child's output into acc until `want` appears (or EOF, or the
 * deadline).  Returns 1 if found. */
static int child_expect(struct child *c, char *acc, size_t cap, size_t *len,
                        const char *want, double seconds)
{
    ca_deadline_push(seconds);
    int found = 0;
    while (!(found = acc[0] && strstr(acc, want) != NULL)) {
        if (*len + 1 >= cap)
            break;
        ssize_t n = ca_read(c->out, acc + *len, cap - 1 - *len);
        if (n <= 0)
            break;
        *len += (size_t)n;
        acc[*len] = '\0';
    }
    ca_deadline_pop();
    return found;
}

/* Close its stdin, give it 5 s to exit by itself, then SIGKILL; reap. */
static int child_finish(struct child *c)
{
    if (c->in >= 0)
        ca_close(c->in);
    c->in = -1;
    int st;
    for (int i = 0; i < 250; i++) {
        pid_t r = waitpid(c->pid, &st, WNOHANG);
        ASSERT_GE(r, 0);
        if (r == c->pid) {
            ca_close(c->out);
            return st;
        }
        ca_sleep(0.02);
    }
    kill(c->pid, SIGKILL);
    ASSERT_EQ(waitpid(c->pid, &st, 0), c->pid);
    ca_close(c->out);
    return st;
}

static int s_server_main(void *a)
{
    (void)a;
    char *argv[] = {"openssl", "s_server", "-accept", "0", "-cert", p_srv,
                    "-key", p_srv_key, "-rev", "-naccept", "2", NULL};
    struct child ch;
    spawn_child(&ch, argv);
    char acc[8192] = "";
    size_t len = 0;
    ASSERT(child_expect(&ch, acc, sizeof(acc), &len, "ACCEPT", 10.0));
    /* "ACCEPT [::]:PORT" */
    char *colon = strrchr(strstr(acc, "ACCEPT"), ':');
    ASSERT(colon != NULL);
    unsigned port = (unsigned)atoi(colon + 1);
    ASSERT_GT(port, 0);

    ca_tls_ctx *cc = client_ctx(NULL);
    ca_stream *c;
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", port, cc, NULL), 0);
    ASSERT(ca_stream_tls_version(c) != NULL);
    ASSERT_EQ(ca_stream_write(c, "hello cawait\n", 13), 0);
    char line[64];
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 13);
    ASSERT_STREQ(line, "tiawac olleh\n"); /* -rev: reversed */
    ASSERT_EQ(ca_stream_close(c), 0);

    /* TLS 1.2 only: still fine */
    ca_tls_ctx *c12;
    ca_tls_opts o = {.ca_file = p_ca};
    ASSERT_EQ(ca_tls_ctx_new(&c12, &o), 0);
    ASSERT_EQ(ca_open_tls_connection(&c, "127.0.0.1", port, c12, NULL), 0);
    ASSERT_EQ(ca_stream_write(c, "ab\n", 3), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ASSERT_STREQ(line, "ba\n");
    ca_stream_close(c);
    ca_tls_ctx_free(c12);

    ca_tls_ctx_free(cc);
    child_finish(&ch);
    return 0;
}

static void test_openssl_s_server(void)
{
    if (!have_openssl())
        SKIP("openssl command not found");
    make_certs();
    ASSERT_EQ(ca_run(s_server_main, NULL), 0);
}

static int line_handler(ca_stream *s, void *arg)
{
    (void)arg;
    handler_calls++;
    char line[256];
    ssize_t n = ca_stream_readline(s, line, sizeof(line));
    if (n <= 0) {
        handler_last = (int)n;
        return (int)n;
    }
    ca_stream_write(s, "echo: ", 6);
    ca_stream_write(s, line, (size_t)n);
    /* then wait for the client to go: a second line or the end */
    n = ca_stream_readline(s, line, sizeof(line));
    handler_last = (int)n;
    return 0;
}

static int s_client_main(void *a)
{
    (void)a;
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, "h2,http/1.1");
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, line_handler, NULL, &so), 0);
    ca_tls_ctx_free(sc);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ca_server_port(srv));

    char *argv[] = {"openssl", "s_client", "-connect", addr, "-CAfile", p_ca,
                    "-verify_return_error", "-servername", "localhost",
                    "-alpn", "http/1.1", NULL};
    struct child ch;
    spawn_child(&ch, argv);
    char acc[32768] = "";
    size_t len = 0;
    ASSERT(child_expect(&ch, acc, sizeof(acc), &len, "Verify return code: 0",
                        10.0));
    ASSERT_EQ(ca_write(ch.in, "ping\n", 5), 5);
    ASSERT(child_expect(&ch, acc, sizeof(acc), &len, "echo: ping", 10.0));
    ASSERT(strstr(acc, "ALPN protocol: http/1.1") != NULL);
    /* stdin closed: s_client sends close_notify and exits */
    int st = child_finish(&ch);
    ASSERT(WIFEXITED(st) || WIFSIGNALED(st));
    for (int i = 0; i < 100 && ca_server_connections(srv) > 0; i++)
        ca_sleep(0.02);
    ASSERT_EQ(handler_calls, 1);
    ASSERT_EQ(handler_last, 0); /* a clean end: s_client's close_notify */
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_openssl_s_client(void)
{
    if (!have_openssl())
        SKIP("openssl command not found");
    make_certs();
    ASSERT_EQ(ca_run(s_client_main, NULL), 0);
}

/* Renegotiation is refused: s_client's "R" command (TLS 1.2) asks our
 * server to renegotiate; the server says no and the data path still
 * works or the connection ends, but never renegotiates. */
static int reneg_main(void *a)
{
    (void)a;
    ca_tls_ctx *sc = server_ctx(p_srv, p_srv_key, NULL);
    ca_server *srv;
    ca_server_opts so = {.tls = sc};
    ASSERT_EQ(ca_serve(&srv, "127.0.0.1", 0, echo_handler, NULL, &so), 0);
    ca_tls_ctx_free(sc);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ca_server_port(srv));
    char *argv[] = {"openssl", "s_client", "-connect", addr, "-CAfile", p_ca,
                    "-tls1_2", NULL};
    struct child ch;
    spawn_child(&ch, argv);
    char acc[32768] = "";
    size_t len = 0;
    ASSERT(child_expect(&ch, acc, sizeof(acc), &len, "Verify return code: 0",
                        10.0));
    ASSERT_EQ(ca_write(ch.in, "R\n", 2), 2);
    ASSERT(child_expect(&ch, acc, sizeof(acc), &len, "RENEGOTIATING", 10.0));
    child_expect(&ch, acc, sizeof(acc), &len, "no renegotiation", 5.0);
    ASSERT(strstr(acc, "no renegotiation") != NULL);
    child_finish(&ch);
    ASSERT_EQ(ca_server_close(srv, 2.0), 0);
    return 0;
}

static void test_renegotiation_refused(void)
{
    if (!have_openssl())
        SKIP("openssl command not found");
    make_certs();
    ASSERT_EQ(ca_run(reneg_main, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Against an OpenSSL server in a thread: what the server sees              */
/* ------------------------------------------------------------------------ */

/*
 * A plain OpenSSL server on its own thread with blocking sockets (10 s
 * timeouts: it never outlives a failed test by much), serving `conns`
 * connections one after the other, each as modes[i] says.  It records what
 * a cawait client cannot report about itself: the server name in each
 * ClientHello, and how the server's renegotiation request ended.  The
 * results are read after pthread_join.
 */
enum {
    OSRV_SNI,      /* record the SNI, write "ok\n", wait for the close */
    OSRV_RENEG,    /* TLS 1.2: after one line, ask to renegotiate */
    OSRV_KEYUPDATE /* TLS 1.3: after one line, a requested KeyUpdate */
};

struct osrv {
    int lfd;
    unsigned port;
    int conns;
    int modes[4];
    SSL_CTX *ctx;
    pthread_t th;
    int cur; /* the connection being served */
    /* results */
    int handshakes;
    int sni_seen[4];  /* the servername callback ran with a name */
    char sni[4][128]; /* that name */
    const char *version[4];
    unsigned long reneg_reason; /* why the read after the request failed */
    int reneg_read;             /* that read's return */
    int keyupdate_ok;           /* the line after the KeyUpdate came in */
};

static int osrv_servername(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    struct osrv *o = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name && o->cur < 4) {
        o->sni_seen[o->cur] = 1;
        snprintf(o->sni[o->cur], sizeof(o->sni[o->cur]), "%s", name);
    }
    return SSL_TLSEXT_ERR_OK;
}

/* One line (or what one read gives) from the client; its length or <= 0. */
static int osrv_read(SSL *ssl, char *buf, int cap)
{
    int n = SSL_read(ssl, buf, cap - 1);
    buf[n > 0 ? n : 0] = '\0';
    return n;
}

static void osrv_serve(struct osrv *o, SSL *ssl, int mode)
{
    char buf[256];
    switch (mode) {
    case OSRV_SNI:
        SSL_write(ssl, "ok\n", 3);
        osrv_read(ssl, buf, sizeof(buf)); /* 0: the client's close_notify */
        SSL_shutdown(ssl);
        break;
    case OSRV_RENEG:
        if (osrv_read(ssl, buf, sizeof(buf)) <= 0)
            break;
        SSL_write(ssl, "before\n", 7);
        /* sends a HelloRequest; a server returns without waiting */
        if (SSL_renegotiate(ssl) != 1 || SSL_do_handshake(ssl) != 1)
            break;
        ERR_clear_error();
        o->reneg_read = osrv_read(ssl, buf, sizeof(buf));
        o->reneg_reason = ERR_GET_REASON(ERR_peek_error());
        break; /* a fatal alert went out already, if any */
    case OSRV_KEYUPDATE:
        if (osrv_read(ssl, buf, sizeof(buf)) <= 0)
            break;
        /* new sending keys, and the client must update its own too */
        if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1)
            break;
        SSL_write(ssl, "after key update\n", 17);
        if (osrv_read(ssl, buf, sizeof(buf)) > 0 &&
            strcmp(buf, "bye\n") == 0) {
            o->keyupdate_ok = 1;
            SSL_write(ssl, "done\n", 5);
        }
        osrv_read(ssl, buf, sizeof(buf));
        SSL_shutdown(ssl);
        break;
    }
}

static void *osrv_main(void *arg)
{
    struct osrv *o = arg;
    struct timeval tv = {10, 0};
    for (o->cur = 0; o->cur < o->conns; o->cur++) {
        int fd = accept4(o->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            break;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        SSL *ssl = SSL_new(o->ctx);
        if (ssl) {
            int mode = o->modes[o->cur];
            if (mode == OSRV_RENEG)
                SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
            SSL_set_fd(ssl, fd);
            if (SSL_accept(ssl) == 1) {
                o->handshakes++;
                o->version[o->cur] = SSL_get_version(ssl);
                osrv_serve(o, ssl, mode);
            }
            SSL_free(ssl);
        }
        close(fd);
    }
    ERR_clear_error();
    OPENSSL_thread_stop();
    return NULL;
}

static void osrv_start(struct osrv *o)
{
    o->ctx = SSL_CTX_new(TLS_server_method());
    ASSERT(o->ctx != NULL);
    ASSERT_EQ(SSL_CTX_use_certificate_chain_file(o->ctx, p_srv), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey_file(o->ctx, p_srv_key, SSL_FILETYPE_PEM),
              1);
    SSL_CTX_set_tlsext_servername_callback(o->ctx, osrv_servername);
    SSL_CTX_set_tlsext_servername_arg(o->ctx, o);
    o->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(o->lfd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t sl = sizeof(sa);
    ASSERT_EQ(bind(o->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ASSERT_EQ(listen(o->lfd, 8), 0);
    ASSERT_EQ(getsockname(o->lfd, (struct sockaddr *)&sa, &sl), 0);
    o->port = ntohs(sa.sin_port);
    struct timeval tv = {10, 0}; /* accept gives up after 10 s */
    setsockopt(o->lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ASSERT_EQ(pthread_create(&o->th, NULL, osrv_main, o), 0);
}

static void osrv_stop(struct osrv *o)
{
    ASSERT_EQ(pthread_join(o->th, NULL), 0);
    close(o->lfd);
    SSL_CTX_free(o->ctx);
}

/* SNI: the client puts the server name in its ClientHello.  The server's
 * servername callback sees "localhost" when connecting by name, and when
 * connecting to 127.0.0.1 with an explicit server name (the name goes out,
 * not the address); it sees no name for a bare address (RFC 6066 forbids
 * IP literals in SNI); and a client without verification still sends the
 * name it was given. */
static int sni_main(void *arg)
{
    struct osrv *o = arg;
    ca_tls_ctx *cc = client_ctx(NULL);
    char line[64];
    ca_stream *c;

    /* 0: by name */
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", o->port, cc, NULL), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ASSERT_STREQ(line, "ok\n");
    ASSERT_EQ(ca_stream_close(c), 0);

    /* 1: to an address, with the server name given to start_tls */
    ASSERT_EQ(ca_open_connection(&c, "127.0.0.1", o->port, NULL), 0);
    ASSERT_EQ(ca_stream_start_tls(c, cc, "localhost"), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ASSERT_EQ(ca_stream_close(c), 0);

    /* 2: by address: verified against the certificate's IP, no SNI */
    ASSERT_EQ(ca_open_tls_connection(&c, "127.0.0.1", o->port, cc, NULL), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ASSERT_EQ(ca_stream_close(c), 0);
    ca_tls_ctx_free(cc);

    /* 3: verification off, any name: it still goes out */
    ca_tls_ctx *none;
    ca_tls_opts no = {.verify_none = 1};
    ASSERT_EQ(ca_tls_ctx_new(&none, &no), 0);
    ASSERT_EQ(ca_open_connection(&c, "127.0.0.1", o->port, NULL), 0);
    ASSERT_EQ(ca_stream_start_tls(c, none, "sni.cawait.test"), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 3);
    ASSERT_EQ(ca_stream_close(c), 0);
    ca_tls_ctx_free(none);
    return 0;
}

static void test_sni(void)
{
    make_certs();
    struct osrv o = {.conns = 4};
    osrv_start(&o);
    int rc = ca_run(sni_main, &o);
    osrv_stop(&o);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(o.handshakes, 4);
    ASSERT(o.sni_seen[0]);
    ASSERT_STREQ(o.sni[0], "localhost");
    ASSERT(o.sni_seen[1]);
    ASSERT_STREQ(o.sni[1], "localhost");
    ASSERT(!o.sni_seen[2]);
    ASSERT(o.sni_seen[3]);
    ASSERT_STREQ(o.sni[3], "sni.cawait.test");
}

/* Renegotiation refused on the client side: a TLS 1.2 server sends a
 * HelloRequest after the first exchange.  The client answers with a
 * no_renegotiation alert instead of a new ClientHello (the server's read
 * fails with exactly that reason), the server then ends the connection
 * with a fatal alert, and the client's next read fails with -CA_ETLS at
 * once: no hang, no crash, the error sticks, close works.  A TLS 1.3
 * KeyUpdate, which is not a renegotiation, goes through: data flows on
 * with the new keys both ways. */
static int reneg_client_main(void *arg)
{
    struct osrv *o = arg;
    ca_tls_ctx *cc = client_ctx(NULL);
    char line[64];
    ca_stream *c;

    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", o->port, cc, NULL), 0);
    ASSERT_STREQ(ca_stream_tls_version(c), "TLSv1.2");
    ASSERT_EQ(ca_stream_write(c, "hello\n", 6), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 7);
    ASSERT_STREQ(line, "before\n");
    double t0 = mono();
    ssize_t n = ca_stream_readline(c, line, sizeof(line));
    ASSERT_TIME_LT(mono() - t0, 5.0);
    ASSERT_EQ(n, -CA_ETLS);
    ASSERT(strstr(ca_tls_last_error(), "handshake failure") != NULL);
    ASSERT_EQ(ca_stream_read(c, line, sizeof(line)), -CA_ETLS); /* sticky */
    int w = ca_stream_write(c, "more\n", 5);
    if (w == 0)
        w = ca_stream_drain(c);
    ASSERT_LT(w, 0); /* the connection is dead for writing too */
    t0 = mono();
    ca_stream_close(c);
    ASSERT_TIME_LT(mono() - t0, 5.0);

    /* TLS 1.3: a KeyUpdate the server requests */
    ASSERT_EQ(ca_open_tls_connection(&c, "localhost", o->port, cc, NULL), 0);
    ASSERT_STREQ(ca_stream_tls_version(c), "TLSv1.3");
    ASSERT_EQ(ca_stream_write(c, "hello\n", 6), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 17);
    ASSERT_STREQ(line, "after key update\n");
    ASSERT_EQ(ca_stream_write(c, "bye\n", 4), 0);
    ASSERT_EQ(ca_stream_readline(c, line, sizeof(line)), 5);
    ASSERT_STREQ(line, "done\n");
    ASSERT_EQ(ca_stream_close(c), 0);
    ca_tls_ctx_free(cc);
    return 0;
}

static void test_renegotiation_refused_client(void)
{
    make_certs();
    struct osrv o = {.conns = 2, .modes = {OSRV_RENEG, OSRV_KEYUPDATE}};
    osrv_start(&o);
    int rc = ca_run(reneg_client_main, &o);
    osrv_stop(&o);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(o.handshakes, 2);
    ASSERT_STREQ(o.version[0], "TLSv1.2");
    ASSERT_LE(o.reneg_read, 0);
    ASSERT_EQ(o.reneg_reason, SSL_R_NO_RENEGOTIATION);
    ASSERT(o.keyupdate_ok);
}

#endif /* CAWAIT_HAVE_OPENSSL */

static void test_without_openssl(void)
{
#ifdef CAWAIT_HAVE_OPENSSL
    SKIP("built with OpenSSL");
#else
    ca_tls_ctx *c;
    ASSERT_EQ(ca_tls_ctx_new(&c, NULL), -CA_ENOTLS);
    ASSERT(c == NULL);
#endif
}

static const struct test_case tests[] = {
#ifdef CAWAIT_HAVE_OPENSSL
    {"ctx_args", test_ctx_args, 20, 0},
    {"start_tls_args", test_start_tls_args, 20, 0},
    {"echo_self", test_echo_self, 60, 0},
    {"verify_failures", test_verify_failures, 60, 0},
    {"client_cert", test_client_cert, 30, 0},
    {"starttls_unix", test_starttls_unix, 30, 0},
    {"tls_in_tls", test_tls_in_tls, 30, 0},
    {"handshake_timeout", test_handshake_timeout, 30, 0},
    {"garbage_peers", test_garbage_peers, 30, 0},
    {"truncated_records", test_truncated_records, 30, 0},
    {"cancel_handshake", test_cancel_handshake, 30, 0},
    {"write_then_close", test_write_then_close, 30, 0},
    {"close_while_peer_sends", test_close_while_peer_sends, 30, 0},
    {"late_session_ticket", test_late_session_ticket, 30, 0},
    {"openssl_s_server", test_openssl_s_server, 60, 0},
    {"openssl_s_client", test_openssl_s_client, 60, 0},
    {"renegotiation_refused", test_renegotiation_refused, 60, 0},
    {"sni", test_sni, 30, 0},
    {"renegotiation_refused_client", test_renegotiation_refused_client, 30, 0},
#endif
    {"without_openssl", test_without_openssl, 10, 0},
    {NULL, NULL, 0, 0},
};

int main(int argc, char **argv)
{
    return runner_main(argc, argv, tests, NULL);
}
