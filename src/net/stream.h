/*
 * Streams (internal): the layer stack under a buffered stream.
 *
 * A stream reads and writes through its top layer; each layer is a small
 * vtable over the one below (curl's connection filters).  The bottom layer
 * is the fd itself and lives inside the stream; TLS (tls.c) pushes a layer
 * on top of whatever is there, so TLS runs over any stream.
 *
 * recv/send return a count (recv: 0 at end of stream), or -EAGAIN with
 * *want set to the readiness of the stream's fd (CA_READ or CA_WRITE) to
 * wait for before trying again, or another negative errno.  A layer never
 * waits itself: the stream does, on the fd, for what the layer asked.
 */
#ifndef CA_NET_STREAM_H
#define CA_NET_STREAM_H

#include "loop/loop.h"

#include <sys/types.h>

typedef struct ca__layer ca__layer;

struct ca__layer_ops {
    const char *name;
    ssize_t (*recv)(ca__layer *l, void *buf, size_t n, int *want);
    ssize_t (*send)(ca__layer *l, const void *buf, size_t n, int *want);
    /* Half close, after everything written has been sent. */
    int (*shutdown_write)(ca__layer *l);
    /* Send what closing owes the peer without waiting (TLS: close_notify),
     * when `graceful`; then free the layer.  NULL for the fd layer. */
    void (*destroy)(ca__layer *l, int graceful);
};

struct ca__layer {
    const struct ca__layer_ops *ops;
    ca__layer *lower; /* NULL for the fd layer */
    ca_stream *s;
};

struct ca_stream {
    ca__layer *top; /* reads and writes go here */
    ca__layer base; /* the fd */
    int fd;
    int eof;     /* the peer closed its side */
    int rerr;    /* sticky read error */
    int werr;    /* sticky write error */
    int wclosed; /* write_eof or close started */
    int is_socket;
    int is_stream_socket; /* SOCK_STREAM: a short read means drained */
    /* The fd layer's last read from the socket was short: the kernel had
     * no more then, and data arriving since raises a new edge.  The next
     * read waits for readiness first instead of a read() that would fail
     * with EAGAIN (libuv does the same); cleared by any other wait for the
     * fd and whenever a layer is pushed or popped. */
    int rdrained;
    char *rbuf;
    size_t rstart, rend, rcap;
    char *wbuf;
    size_t wstart, wend, wcap;
    size_t limit, high, low;
    int want_w; /* readiness the top layer wants before it can send more */
    ca__fdwait flush_waiter;
    int flush_armed;
    /* Write gathering (stream.c): the loop's slice counter + 1 at the last
     * write that went straight to the kernel, and the callback that sends
     * what later writes of that slice queued. */
    uint64_t direct_slice;
    ca_handle gather_flush;
    int gather_pending;
};

/* Flush everything buffered for writing (blocking, task context).  Returns
 * 0 or the write error. */
int ca__stream_flush(ca_stream *s);
/* Push a layer on top.  Bytes the stream had buffered but not yet handed
 * to the reader are moved into *pre (malloc'd, *pre_len bytes; NULL, 0 if
 * none): they came from below and belong to the new layer's input. */
int ca__stream_push(ca_stream *s, ca__layer *l, char **pre, size_t *pre_len);
/* Remove the top layer (not the fd) without destroying it. */
void ca__stream_pop(ca_stream *s, ca__layer *l);
/* Wait on the stream's fd for `want` (CA_READ/CA_WRITE).  Blocking. */
int ca__stream_wait(ca_stream *s, int want);

/* Take a reference to a TLS context (tls.c); ca_tls_ctx_free drops it. */
ca_tls_ctx *ca__tls_ctx_ref(ca_tls_ctx *ctx);
/* The cawait error for an X509_V_ERR_* verification result (libcurl's
 * CURLINFO_SSL_VERIFYRESULT too): -CA_ECERTHOST, -CA_ECERTEXPIRED,
 * -CA_ECERTUNTRUSTED or -CA_ECERT. */
int ca__tls_verify_errno(long verify_result);
/* 1 if ctx was made with .server = 1. */
int ca__tls_ctx_is_server(const ca_tls_ctx *ctx);

#endif
