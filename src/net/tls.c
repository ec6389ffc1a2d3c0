/*
 * TLS over any stream, with OpenSSL 3.
 *
 * ca_stream_start_tls pushes a layer (net/stream.h) on top of the stream.
 * OpenSSL talks to the layer below through a BIO of our own: its read and
 * write call the lower layer's recv/send, so a would-block below becomes
 * SSL_ERROR_WANT_* above, and the readiness the lower layer wanted (kept in
 * t->want) is what the stream waits for on the fd.  No memory BIO pair, no
 * extra copy: records are read straight from the socket into OpenSSL.
 *
 * The SSL_CTX lives in a reference-counted ca_tls_ctx shared by every
 * connection; each connection owns one SSL.
 */
#include "net/stream.h"
#include "task/task.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[256];

static void set_error(const char *fmt, const char *detail)
{
    snprintf(last_error, sizeof(last_error), fmt, detail);
}

const char *ca_tls_last_error(void)
{
    return last_error;
}

#ifdef CAWAIT_HAVE_OPENSSL

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct ca_tls_ctx {
    atomic_int refs;
    SSL_CTX *ssl_ctx;
    int server;
    int verify;
    double handshake_timeout;
    unsigned char *alpn; /* wire format: length-prefixed names */
    unsigned alpn_len;
};

struct tls_layer {
    ca__layer base;
    SSL *ssl;
    ca_tls_ctx *ctx;
    char *pre; /* bytes the stream had read before the upgrade */
    size_t pre_off, pre_len;
    int want;      /* readiness the lower layer asked for last */
    int lower_err; /* the lower layer's error, for SSL_ERROR_SYSCALL */
    int lower_eof;
    char *alpn; /* the agreed ALPN protocol, NUL-ended, or NULL */
};

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* The OpenSSL error queue's last entry, in words, into last_error. */
static void take_ssl_error(const char *what)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    char buf[200];
    if (last)
        ERR_error_string_n(last, buf, sizeof(buf));
    else
        snprintf(buf, sizeof(buf), "no details");
    /* `what` is one of our short phrases; bounding it leaves room for all
     * of buf (and keeps gcc -O3's truncation check quiet). */
    snprintf(last_error, sizeof(last_error), "%.48s: %s", what, buf);
}

int ca__tls_verify_errno(long v)
{
    switch (v) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
    case X509_V_ERR_EMAIL_MISMATCH:
        return -CA_ECERTHOST;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return -CA_ECERTEXPIRED;
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
        return -CA_ECERTUNTRUSTED;
    default:
        return -CA_ECERT;
    }
}

static int verify_error(long v)
{
    set_error("certificate verify failed: %s",
              X509_verify_cert_error_string(v));
    return ca__tls_verify_errno(v);
}

/* Map a failed SSL call (its SSL_get_error code) to -EAGAIN with *want
 * set, 0 for a clean close_notify, or a negative errno. */
static int tls_fail(struct tls_layer *t, int code, int *want)
{
    switch (code) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        *want = t->want ? t->want
                        : (code == SSL_ERROR_WANT_READ ? CA_READ : CA_WRITE);
        t->want = 0;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (t->lower_err) {
            int e = t->lower_err;
            t->lower_err = 0;
            return e;
        }
        set_error("%s", "peer closed the connection without close_notify "
                        "(truncated)");
        return -CA_ETLS;
    default: {
        /* Verification failures surface during the handshake only; with
         * verification off the result is recorded but means nothing. */
        long v = t->ctx->verify && !SSL_is_init_finished(t->ssl)
                     ? SSL_get_verify_result(t->ssl)
                     : X509_V_OK;
        if (v != X509_V_OK) {
            ERR_clear_error();
            return verify_error(v);
        }
        if (t->lower_err) {
            ERR_clear_error();
            int e = t->lower_err;
            t->lower_err = 0;
            return e;
        }
        take_ssl_error("TLS error");
        return -CA_ETLS;
    }
    }
}

/* ------------------------------------------------------------------------ */
/* The BIO between OpenSSL and the layer below                              */
/* ------------------------------------------------------------------------ */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_read(BIO *b, char *buf, size_t n, size_t *got)
{
    struct tls_layer *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->pre_off < t->pre_len) {
        size_t k = t->pre_len - t->pre_off;
        if (k > n)
            k = n;
        memcpy(buf, t->pre + t->pre_off, k);
        t->pre_off += k;
        if (t->pre_off == t->pre_len) {
            free(t->pre);
            t->pre = NULL;
            t->pre_off = t->pre_len = 0;
        }
        *got = k;
        return 1;
    }
    int want = CA_READ;
    ssize_t r = t->base.lower->ops->recv(t->base.lower, buf, n, &want);
    if (r > 0) {
        *got = (size_t)r;
        return 1;
    }
    *got = 0;
    if (r == 0) {
        t->lower_eof = 1;
    } else if (r == -EAGAIN) {
        t->want = want;
        BIO_set_retry_read(b);
    } else {
        t->lower_err = (int)r;
    }
    return 0;
}

static int bio_write(BIO *b, const char *buf, size_t n, size_t *put)
{
    struct tls_layer *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    int want = CA_WRITE;
    ssize_t r = t->base.lower->ops->send(t->base.lower, buf, n, &want);
    if (r >= 0) {
        *put = (size_t)r;
        return 1;
    }
    *put = 0;
    if (r == -EAGAIN) {
        t->want = want;
        BIO_set_retry_write(b);
    } else {
        t->lower_err = (int)r;
    }
    return 0;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tls_layer *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* writes go straight down */
    case BIO_CTRL_EOF:
        return t && t->lower_eof;
    default:
        return 0;
    }
}

static void bio_init_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                 "cawait stream");
    if (m && BIO_meth_set_read_ex(m, bio_read) &&
        BIO_meth_set_write_ex(m, bio_write) &&
        BIO_meth_set_ctrl(m, bio_ctrl))
        bio_method = m;
    else
        BIO_meth_free(m);
}

/* ------------------------------------------------------------------------ */
/* The layer                                                                */
/* ------------------------------------------------------------------------ */

static ssize_t tls_recv(ca__layer *l, void *buf, size_t n, int *want)
{
    struct tls_layer *t = (struct tls_layer *)l;
    size_t got;
    ERR_clear_error();
    if (SSL_read_ex(t->ssl, buf, n, &got))
        return (ssize_t)got;
    return tls_fail(t, SSL_get_error(t->ssl, 0), want);
}

static ssize_t tls_send(ca__layer *l, const void *buf, size_t n, int *want)
{
    struct tls_layer *t = (struct tls_layer *)l;
    size_t put;
    ERR_clear_error();
    if (SSL_write_ex(t->ssl, buf, n, &put))
        return (ssize_t)put;
    int r = tls_fail(t, SSL_get_error(t->ssl, 0), want);
    return r == 0 ? -EPIPE : r;
}

/* Send close_notify.  In a task, wait while the layer below is full (the
 * caller's deadline scopes bound it); elsewhere, one try. */
static int send_close_notify(struct tls_layer *t)
{
    for (;;) {
        ERR_clear_error();
        int r = SSL_shutdown(t->ssl);
        if (r >= 0)
            return 0; /* sent (1: the peer's came too) */
        int want = CA_WRITE;
        int e = tls_fail(t, SSL_get_error(t->ssl, r), &want);
        if (e != -EAGAIN || !ca__loop() || !ca__loop()->current)
            return e == -EAGAIN ? -EAGAIN : e;
        if (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN && want == CA_READ)
            return 0; /* ours is out; not waiting for theirs */
        e = ca__stream_wait(t->base.s, want);
        if (e < 0)
            return e;
    }
}

static int tls_shutdown_write(ca__layer *l)
{
    struct tls_layer *t = (struct tls_layer *)l;
    int r = send_close_notify(t);
    if (r < 0)
        return r;
    return l->lower->ops->shutdown_write(l->lower);
}

static void tls_free(struct tls_layer *t)
{
    SSL_free(t->ssl); /* frees the BIO too */
    ca_tls_ctx_free(t->ctx);
    free(t->pre);
    free(t->alpn);
    free(t);
}

/* Input the peer sent and we never read (TLS 1.3 session tickets, after
 * the handshake, to a client that only writes) is not our business here:
 * the stream's lingering close drops it below us, along with whatever
 * arrives after close_notify, so that none of it resets the connection
 * (see linger_close in stream.c). */
static void tls_destroy(ca__layer *l, int graceful)
{
    struct tls_layer *t = (struct tls_layer *)l;
    if (graceful && SSL_is_init_finished(t->ssl) &&
        !(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
        send_close_notify(t);
    tls_free(t);
}

static const struct ca__layer_ops tls_ops = {
    .name = "tls",
    .recv = tls_recv,
    .send = tls_send,
    .shutdown_write = tls_shutdown_write,
    .destroy = tls_destroy,
};

static struct tls_layer *find_tls(const ca_stream *s)
{
    for (ca__layer *l = s ? s->top : NULL; l; l = l->lower)
        if (l->ops == &tls_ops)
            return (struct tls_layer *)l;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Contexts                                                                 */
/* ------------------------------------------------------------------------ */

/* "h2,http/1.1" -> "\x02h2\x08http/1.1".  -EINVAL for empty or >255-byte
 * names. */
static int alpn_wire(const char *list, unsigned char **out, unsigned *len)
{
    size_t n = strlen(list);
    unsigned char *w = malloc(n + 1);
    if (!w)
        return -ENOMEM;
    size_t o = 0;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t k = end ? (size_t)(end - p) : strlen(p);
        if (k == 0 || k > 255) {
            free(w);
            return -EINVAL;
        }
        w[o++] = (unsigned char)k;
        memcpy(w + o, p, k);
        o += k;
        if (!end)
            break;
        p = end + 1;
    }
    *out = w;
    *len = (unsigned)o;
    return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg)
{
    ca_tls_ctx *c = arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, c->alpn, c->alpn_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* A file OpenSSL failed to load: -errno if it cannot even be opened. */
static int file_error(const char *what, const char *path)
{
    if (access(path, R_OK) < 0) {
        int e = errno;
        snprintf(last_error, sizeof(last_error), "%s %s: %s", what, path,
                 strerror(e));
        ERR_clear_error();
        return -e;
    }
    char w[96];
    snprintf(w, sizeof(w), "%s %s", what, path);
    take_ssl_error(w);
    return -CA_ETLS;
}

static int ctx_load(ca_tls_ctx *c, const ca_tls_opts *o)
{
    SSL_CTX *x = c->ssl_ctx;
    if (o->cert_file &&
        SSL_CTX_use_certificate_chain_file(x, o->cert_file) != 1)
        return file_error("certificate", o->cert_file);
    if (o->key_file &&
        SSL_CTX_use_PrivateKey_file(x, o->key_file, SSL_FILETYPE_PEM) != 1)
        return file_error("private key", o->key_file);
    if (o->cert_file && o->key_file && SSL_CTX_check_private_key(x) != 1) {
        take_ssl_error("private key does not match the certificate");
        return -CA_ETLS;
    }
    if (o->ca_file || o->ca_dir) {
        if (SSL_CTX_load_verify_locations(x, o->ca_file, o->ca_dir) != 1)
            return file_error("CA", o->ca_file ? o->ca_file : o->ca_dir);
    } else if (!o->server && !o->verify_none) {
        if (SSL_CTX_set_default_verify_paths(x) != 1) {
            take_ssl_error("system CA store");
            return -CA_ETLS;
        }
    }
    if (o->server && o->verify_client) {
        if (!o->ca_file && !o->ca_dir)
            return -EINVAL;
        if (o->ca_file) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
            if (names)
                SSL_CTX_set_client_CA_list(x, names);
        }
        SSL_CTX_set_verify(x, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                           NULL);
    } else if (!o->server && !o->verify_none) {
        SSL_CTX_set_verify(x, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(x, SSL_VERIFY_NONE, NULL);
    }
    if (o->alpn) {
        int r = alpn_wire(o->alpn, &c->alpn, &c->alpn_len);
        if (r < 0)
            return r;
        if (o->server)
            SSL_CTX_set_alpn_select_cb(x, alpn_select, c);
        else if (SSL_CTX_set_alpn_protos(x, c->alpn, c->alpn_len) != 0)
            return -ENOMEM;
    }
    return 0;
}

int ca_tls_ctx_new(ca_tls_ctx **out, const ca_tls_opts *opts)
{
    static const ca_tls_opts dflt;
    if (!out)
        return -EINVAL;
    *out = NULL;
    const ca_tls_opts *o = opts ? opts : &dflt;
    if ((o->server && (!o->cert_file || !o->key_file)) ||
        (!o->cert_file != !o->key_file) ||
        (o->min_version && o->min_version != CA_TLS_1_2 &&
         o->min_version != CA_TLS_1_3) ||
        o->handshake_timeout < 0 || (o->alpn && !*o->alpn))
        return -EINVAL;
    last_error[0] = '\0';
    ca_tls_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    atomic_init(&c->refs, 1);
    c->server = o->server != 0;
    c->verify = o->server ? o->verify_client != 0 : !o->verify_none;
    c->handshake_timeout =
        o->handshake_timeout > 0 ? o->handshake_timeout : 60.0;
    c->ssl_ctx = SSL_CTX_new(c->server ? TLS_server_method()
                                       : TLS_client_method());
    if (!c->ssl_ctx) {
        free(c);
        return -ENOMEM;
    }
    SSL_CTX *x = c->ssl_ctx;
    SSL_CTX_set_min_proto_version(x, o->min_version ? o->min_version
                                                    : TLS1_2_VERSION);
    SSL_CTX_set_options(x, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               (c->server ? SSL_OP_CIPHER_SERVER_PREFERENCE
                                          : 0));
    /* Partial writes and a moving buffer: the stream retries a blocked
     * write from its own buffer, wherever that is by then.  Released
     * buffers: an idle connection holds no record buffers. */
    SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    if (c->server) {
        static const unsigned char sid[] = "cawait";
        SSL_CTX_set_session_id_context(x, sid, sizeof(sid) - 1);
    }
    int r = ctx_load(c, o);
    if (r < 0) {
        ca_tls_ctx_free(c);
        return r;
    }
    *out = c;
    return 0;
}

ca_tls_ctx *ca__tls_ctx_ref(ca_tls_ctx *c)
{
    if (c)
        atomic_fetch_add(&c->refs, 1);
    return c;
}

int ca__tls_ctx_is_server(const ca_tls_ctx *c)
{
    return c->server;
}

void ca_tls_ctx_free(ca_tls_ctx *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    SSL_CTX_free(c->ssl_ctx);
    free(c->alpn);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Handshake                                                                */
/* ------------------------------------------------------------------------ */

static int is_ip_literal(const char *name)
{
    unsigned char a[16];
    return inet_pton(AF_INET, name, a) == 1 ||
           inet_pton(AF_INET6, name, a) == 1;
}

/* SNI and the name to verify. */
static int set_peer_name(struct tls_layer *t, const char *name)
{
    if (!name)
        return 0;
    if (is_ip_literal(name)) {
        if (t->ctx->verify &&
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) != 1)
            return -EINVAL;
        return 0; /* no SNI for addresses (RFC 6066) */
    }
    if (SSL_set_tlsext_host_name(t->ssl, name) != 1)
        return -EINVAL;
    if (t->ctx->verify && SSL_set1_host(t->ssl, name) != 1)
        return -EINVAL;
    return 0;
}

static int handshake(ca_stream *s, struct tls_layer *t)
{
    int r = ca_deadline_push(t->ctx->handshake_timeout);
    if (r < 0)
        return r;
    for (;;) {
        ERR_clear_error();
        int h = SSL_do_handshake(t->ssl);
        if (h == 1) {
            r = 0;
            break;
        }
        int want = CA_READ;
        r = tls_fail(t, SSL_get_error(t->ssl, h), &want);
        if (r == 0) {
            set_error("%s", "peer closed during the handshake");
            r = -CA_ETLS;
        }
        if (r != -EAGAIN)
            break;
        r = ca__stream_wait(s, want);
        if (r < 0)
            break;
    }
    ca_deadline_pop();
    if (r == -ETIMEDOUT)
        set_error("%s", "handshake timed out");
    if (r == 0) {
        const unsigned char *p;
        unsigned len;
        SSL_get0_alpn_selected(t->ssl, &p, &len);
        if (p && len && (t->alpn = malloc(len + 1)) != NULL) {
            memcpy(t->alpn, p, len);
            t->alpn[len] = '\0';
        }
    }
    return r;
}

static int new_layer(struct tls_layer **out, ca_tls_ctx *ctx)
{
    pthread_once(&bio_once, bio_init_method);
    if (!bio_method)
        return -ENOMEM;
    struct tls_layer *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->base.ops = &tls_ops;
    t->ctx = ca__tls_ctx_ref(ctx);
    t->ssl = SSL_new(ctx->ssl_ctx);
    BIO *b = BIO_new(bio_method);
    if (!t->ssl || !b) {
        BIO_free(b);
        tls_free(t);
        return -ENOMEM;
    }
    BIO_set_data(b, t);
    BIO_set_init(b, 1);
    SSL_set_bio(t->ssl, b, b);
    if (ctx->server)
        SSL_set_accept_state(t->ssl);
    else
        SSL_set_connect_state(t->ssl);
    *out = t;
    return 0;
}

int ca_stream_start_tls(ca_stream *s, ca_tls_ctx *ctx, const char *server_name)
{
    if (!s || !ctx || (server_name && !*server_name))
        return -EINVAL;
    if (!ctx->server && ctx->verify && !server_name)
        return -EINVAL; /* nothing to verify the certificate against */
    if (!ca__task_self("ca_stream_start_tls"))
        return -EPERM;
    if (s->werr || s->rerr)
        return s->werr ? s->werr : s->rerr;
    if (s->wclosed || s->eof)
        return -EPIPE;
    last_error[0] = '\0';
    int r = ca__stream_flush(s); /* plaintext written before goes first */
    if (r < 0)
        return r;
    struct tls_layer *t;
    r = new_layer(&t, ctx);
    if (r < 0)
        return r;
    r = ctx->server ? 0 : set_peer_name(t, server_name);
    if (r == 0)
        r = ca__stream_push(s, &t->base, &t->pre, &t->pre_len);
    if (r < 0) {
        tls_free(t);
        return r;
    }
    r = handshake(s, t);
    if (r < 0) {
        /* The stream is unusable: reads and writes fail with the
         * handshake's error; the layer stays until the stream closes. */
        s->rerr = s->werr = r == -ECANCELED || r == -ETIMEDOUT ? -EPIPE : r;
        SSL_set_quiet_shutdown(t->ssl, 1);
    }
    return r;
}

const char *ca_stream_tls_alpn(const ca_stream *s)
{
    struct tls_layer *t = find_tls(s);
    return t ? t->alpn : NULL;
}

const char *ca_stream_tls_version(const ca_stream *s)
{
    struct tls_layer *t = find_tls(s);
    return t ? SSL_get_version(t->ssl) : NULL;
}

#else /* !CAWAIT_HAVE_OPENSSL */

int ca_tls_ctx_new(ca_tls_ctx **out, const ca_tls_opts *opts)
{
    (void)opts;
    if (out)
        *out = NULL;
    set_error("%s", "cawait was built without OpenSSL");
    return out ? -CA_ENOTLS : -EINVAL;
}

ca_tls_ctx *ca__tls_ctx_ref(ca_tls_ctx *c)
{
    return c;
}

int ca__tls_ctx_is_server(const ca_tls_ctx *ctx)
{
    (void)ctx;
    return 0;
}

int ca__tls_verify_errno(long v)
{
    (void)v;
    return -CA_ECERT;
}

void ca_tls_ctx_free(ca_tls_ctx *ctx)
{
    (void)ctx;
}

int ca_stream_start_tls(ca_stream *s, ca_tls_ctx *ctx, const char *server_name)
{
    (void)server_name;
    return s && ctx ? -CA_ENOTLS : -EINVAL;
}

const char *ca_stream_tls_alpn(const ca_stream *s)
{
    (void)s;
    return NULL;
}

const char *ca_stream_tls_version(const ca_stream *s)
{
    (void)s;
    return NULL;
}

#endif /* CAWAIT_HAVE_OPENSSL */

int ca_open_tls_connection(ca_stream **out, const char *host, unsigned port,
                           ca_tls_ctx *ctx, const ca_stream_opts *opts)
{
    if (!out || !host || !ctx)
        return -EINVAL;
    *out = NULL;
    ca_stream *s;
    int r = ca_open_connection(&s, host, port, opts);
    if (r < 0)
        return r;
    r = ca_stream_start_tls(s, ctx, host);
    if (r < 0) {
        ca_stream_close(s);
        return r;
    }
    *out = s;
    return 0;
}
