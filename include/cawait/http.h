/*
 * cawait HTTP client: libcurl's multi-socket interface driven by the loop
 * (aiohttp's ClientSession / httpx.AsyncClient for C).  Included by
 * <cawait.h>.
 *
 * A session owns one curl multi handle: connections are kept alive and
 * reused (up to 100 idle ones, or 4 per request in flight if that is
 * more; the oldest idle one is closed beyond), HTTP/2 streams are
 * multiplexed over one connection where the server and the installed
 * libcurl support it.  curl's sockets are watched
 * by the loop and its timeouts run on the loop's timers: no extra threads
 * (except curl's own resolver for a redirect to another host name: the
 * request's first host is resolved by cawait's DNS), no polling.  A request
 * belongs to the task that makes it; the task sleeps while the transfer
 * runs and other tasks go on.
 *
 * Every blocking call honours cancellation and deadline scopes: the
 * transfer is removed from curl at once and everything is freed.  Errors
 * are distinct: -CA_ENOTFOUND (host not found), -CA_EDNSFAIL (the DNS
 * server failed), -ECONNREFUSED,
 * -CA_ECERTUNTRUSTED / -CA_ECERTEXPIRED / -CA_ECERTHOST / -CA_ECERT (TLS
 * verification), -CA_ETLS (other TLS failures), -ETIMEDOUT (any timeout or
 * a deadline scope), -CA_EREDIRECTS (too many redirects), -EMSGSIZE (body
 * larger than the limit, or response headers over curl's limits: a line
 * of 100 KiB, 300 KiB in all, or a generator body longer or shorter than
 * its Content-Length header),
 * -CA_EHTTP (another transfer failure: malformed
 * response, connection closed early, ...; ca_http_response_error or
 * ca_http_last_error say curl's words), -CA_ENOHTTP (built without
 * libcurl).  An HTTP error status (404, 500) is not an error of the call:
 * check ca_http_response_status or use ca_http_raise_for_status.
 */
#ifndef CAWAIT_HTTP_H
#define CAWAIT_HTTP_H

#include <stddef.h>
#include <sys/types.h>

typedef struct ca_http_session ca_http_session;
typedef struct ca_http_response ca_http_response;

typedef struct ca_http_session_opts {
    /* Prefix for request URLs that have no scheme ("http://host:port/api"
     * + "/users" ->  "http://host:port/api/users"). */
    const char *base_url;
    /* Headers sent with every request, "Name: value" strings, NULL-ended;
     * copied.  A request's own header of the same name wins. */
    const char *const *headers;
    /* Most connections per host and in total; 0: unlimited (curl's
     * default).  Requests beyond wait in curl's queue. */
    long max_host_connections;
    long max_total_connections;
    /* Keep cookies between this session's requests (in memory). */
    int cookies;
    /* Proxy URL ("http://proxy:3128"); NULL: none (environment variables
     * such as http_proxy are ignored). */
    const char *proxy;
    /* TLS: CA bundle to trust instead of the system store; verification
     * off (insecure, for tests only). */
    const char *ca_file;
    int verify_none;
    /* Speak HTTP/2 without TLS from the start (h2c prior knowledge). */
    int http2_prior_knowledge;
    /* User-Agent; NULL: "cawait/<version>". */
    const char *user_agent;
    /* Seconds a host name looked up for a request is reused by this
     * session's later requests (as aiohttp's ttl_dns_cache); 0: 10 s;
     * negative: every request looks its name up.  Requests for a name
     * whose lookup is under way wait for it rather than ask again.  Up to
     * 64 names are kept.  Numeric hosts and "localhost" are never looked
     * up. */
    double dns_cache_ttl;
} ca_http_session_opts;

/* A chunk of a request body produced by a generator (body_gen): the
 * generator yields ca_http_chunk pointers, valid until its next yield.
 * Empty chunks and NULL pointers are skipped; len bytes at NULL data fail
 * the request with -EINVAL.
 *
 * How generator bodies are buffered.  The generator runs in the task that
 * makes the request, while that task waits: in ca_http_request, and for a
 * stream-mode request whose upload outlasts the response headers, in
 * ca_http_response_read.  It runs ahead of the transfer: each chunk is
 * copied into a buffer of 64 KiB per request, and the generator is asked
 * for the next chunk at once while there is room, so a ca_gen_yield
 * returning does not mean the chunk was sent.  curl takes up to 64 KiB of
 * buffered bytes at a time whatever the chunk sizes (chunk boundaries do
 * not survive on the wire, chunked or not), and less than 32 KiB waits up
 * to 0.2 ms for more before it goes out (so 1 KiB chunks do not cost a
 * send(2) each).
 * A chunk larger than the room left is not copied: curl reads it where the
 * generator keeps it, and the generator is not resumed until what is left
 * of it fits.  So memory stays at 64 KiB plus one chunk however fast the
 * generator is, and the generator runs at most that far ahead of what
 * curl has taken (then waits at its ca_gen_yield: back pressure).  Bytes
 * buffered when the request fails or is cancelled are dropped; the
 * generator stays where it is until the caller's ca_gen_close. */
typedef struct ca_http_chunk {
    const void *data;
    size_t len;
} ca_http_chunk;

typedef struct ca_http_request_opts {
    /* "Name: value" strings, NULL-ended. */
    const char *const *headers;
    /* Query parameters as name, value pairs, NULL-ended ({"q", "a b",
     * NULL}); URL-encoded and appended to the URL. */
    const char *const *query;
    /* The body, one of: bytes (body, body_len; not copied: keep them
     * alive until the request returns), a file (body_fd >= 1 read from
     * its current offset to its end; body_fd 0 means none; the caller
     * keeps and closes it; a pipe or socket is read, chunked, as it
     * turns readable, without blocking the loop; with a Content-Length
     * header, exactly that many bytes are read and sent, not chunked, and
     * an fd that ends short of it fails the request with -EMSGSIZE), or a
     * generator task
     * yielding ca_http_chunk pointers (sent chunked unless a
     * Content-Length header is given: then it must yield exactly that
     * many bytes, or the request fails with -EMSGSIZE; the caller keeps
     * it and closes it with ca_gen_close after the request; a generator
     * that fails makes the request fail with its error). */
    const void *body;
    size_t body_len;
    int body_fd;
    struct ca_gen *body_gen;
    /* Timeouts in seconds, 0: none.  total: the whole request; connect:
     * until connected (both include looking up the host name); idle:
     * longest silence while waiting for response bytes (httpx's read
     * timeout).  All fail with -ETIMEDOUT. */
    double timeout;
    double connect_timeout;
    double idle_timeout;
    /* Redirects: followed by default, at most max_redirects (0: 10);
     * no_redirects: return the 3xx response itself. */
    int max_redirects;
    int no_redirects;
    /* Largest body read in full; 0: 64 MiB.  Beyond: -EMSGSIZE. */
    size_t max_body;
    /* 1: return once the response headers are in; read the body with
     * ca_http_response_read (chunk by chunk, with back pressure: the
     * transfer pauses while the reader is slow). */
    int stream;
} ca_http_request_opts;

/* Initialise libcurl and its TLS library (curl_global_init) now, once per
 * process, instead of in the first ca_http_session_new (about 1 ms:
 * OpenSSL's setup).  Optional; curl's documentation asks for it early in
 * the program, before other threads start, and it keeps that cost out of
 * the first request.  Needs no loop.  Returns 0 (also when done already),
 * -CA_EHTTP if libcurl's initialisation failed, -CA_ENOHTTP (built without
 * libcurl).  May block for that initialisation. */
CA_EXTERN int ca_http_global_init(void);
/* Create a session (opts may be NULL).  Returns 0, -EINVAL, -ENOMEM,
 * -CA_ENOLOOP, -CA_EHTTP (libcurl's initialisation failed), -CA_ENOHTTP.
 * Never blocks (but see ca_http_global_init).  Use it on the loop's
 * thread. */
CA_EXTERN int ca_http_session_new(ca_http_session **out,
                                  const ca_http_session_opts *opts);
/* Close every connection and free the session.  Returns -EBUSY (nothing
 * freed) while responses made by it are still alive; 0 otherwise.  NULL is
 * ignored. */
CA_EXTERN int ca_http_session_free(ca_http_session *s);

/* Make a request: method ("GET", "POST", ...; NULL: "GET"), url (absolute,
 * or relative to the session's base_url), opts may be NULL.  The method
 * goes out as given, with or without a body (a GET with a body is sent as
 * a GET); a HEAD with a body is -EINVAL.  A body goes out without curl's
 * "Expect: 100-continue" (as in aiohttp; pass the header to ask for it).  Waits
 * until the response is complete (or, with opts->stream, until its headers are
 * in) and stores it in *out; the caller frees it with ca_http_response_free.
 * Returns 0 (whatever the HTTP status) or an error listed at the top (then *out
 * is NULL).  Blocking. */
CA_EXTERN int ca_http_request(ca_http_session *s, const char *method,
                              const char *url, const ca_http_request_opts *opts,
                              ca_http_response **out);
/* GET and POST shortcuts (content_type NULL: none set).  ca_http_post
 * sends len bytes of body (not copied; NULL with len 0: an empty body, NULL
 * with len > 0: -EINVAL). */
CA_EXTERN int ca_http_get(ca_http_session *s, const char *url,
                          ca_http_response **out);
CA_EXTERN int ca_http_post(ca_http_session *s, const char *url,
                           const void *body, size_t len,
                           const char *content_type, ca_http_response **out);
/* One request without a session (a temporary one, closed afterwards).
 * Blocking. */
CA_EXTERN int ca_http_fetch(const char *method, const char *url,
                            const ca_http_request_opts *opts,
                            ca_http_response **out);

/* The status code (200), or a negative errno for a bad argument. */
CA_EXTERN int ca_http_response_status(const ca_http_response *r);
/* 0 for a status below 400; -CA_EHTTPSTATUS otherwise (httpx's
 * raise_for_status); -EINVAL for NULL. */
CA_EXTERN int ca_http_raise_for_status(const ca_http_response *r);
/* The value of header `name` (case-insensitive), its nth occurrence
 * (repeated headers such as Set-Cookie), or NULL.  Valid until the
 * response is freed. */
CA_EXTERN const char *ca_http_response_header(const ca_http_response *r,
                                              const char *name);
CA_EXTERN const char *ca_http_response_header_n(const ca_http_response *r,
                                                const char *name, size_t nth);
/* Number of header lines, and the ith as name and value (NULL past the
 * end). */
CA_EXTERN size_t ca_http_response_header_count(const ca_http_response *r);
CA_EXTERN const char *ca_http_response_header_at(const ca_http_response *r,
                                                 size_t i, const char **value);
/* The body read in full (not for stream mode): its bytes (NUL-ended for
 * convenience) and length in *len.  Valid until the response is freed. */
CA_EXTERN const char *ca_http_response_body(const ca_http_response *r,
                                            size_t *len);
/* Stream mode: read up to n bytes of the body.  Returns the count, 0 at
 * the end, or an error (the transfer's: -ETIMEDOUT, -CA_EHTTP...).
 * Blocking. */
CA_EXTERN ssize_t ca_http_response_read(ca_http_response *r, void *buf,
                                        size_t n);
/* The URL after redirects. */
CA_EXTERN const char *ca_http_response_url(const ca_http_response *r);
/* The HTTP version used: 1 (1.0/1.1), 2 or 3; 0 if unknown. */
CA_EXTERN int ca_http_response_version(const ca_http_response *r);
/* Seconds from the start to: "dns", "connect", "tls", "first_byte",
 * "total"; -1 if unknown or not yet reached. */
CA_EXTERN double ca_http_response_time(const ca_http_response *r,
                                       const char *what);
/* curl's message for the failure of a stream-mode transfer, or "". */
CA_EXTERN const char *ca_http_response_error(const ca_http_response *r);
/* Free the response; a stream-mode transfer still running is aborted. */
CA_EXTERN void ca_http_response_free(ca_http_response *r);

/* curl's message for the last failed request on this thread ("" if none);
 * read it right after the failing call. */
CA_EXTERN const char *ca_http_last_error(void);

#endif /* CAWAIT_HTTP_H */
