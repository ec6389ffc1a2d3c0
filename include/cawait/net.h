/*
 * cawait networking: TCP and Unix stream sockets, buffered streams, and
 * servers with a task per connection.  Included by <cawait.h>.
 *
 * All I/O is optimistic: the syscall is tried first and the task parks on
 * the fd only on EAGAIN.  Blocking calls honour cancellation and deadline
 * scopes and return -EPERM outside a task.  Every fd these functions create
 * is non-blocking and close-on-exec.
 *
 * Host names are resolved without blocking by c-ares driven by the loop
 * (ca_getaddrinfo).  A build without c-ares resolves numeric addresses and
 * "localhost" only; other names then fail with -CA_ENORESOLVER.
 */
#ifndef CAWAIT_NET_H
#define CAWAIT_NET_H

#include <sys/socket.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------ */
/* DNS                                                                      */
/* ------------------------------------------------------------------------ */

/* One resolved address. */
typedef struct ca_addrinfo {
    struct ca_addrinfo *next;
    int family;   /* AF_INET, AF_INET6 */
    int socktype; /* SOCK_STREAM, SOCK_DGRAM */
    int protocol;
    socklen_t addrlen;
    struct sockaddr_storage addr; /* port included */
} ca_addrinfo;

/*
 * Resolve host (a name, a numeric address or "localhost") for `port`, like
 * getaddrinfo(3) but without blocking the loop: /etc/hosts first, then the
 * DNS servers.  An IPv4 address is taken in every form getaddrinfo(3)
 * takes ("127.0.0.1", "127.1", "0x7f.1", "2130706433"), and an IPv6
 * address without a scope ("::1"), are answered without asking anyone; one
 * of the other family than `family` asks for is -CA_ENOTFOUND.  family:
 * AF_UNSPEC, AF_INET or AF_INET6; socktype: 0, SOCK_STREAM or SOCK_DGRAM.
 * Stores a list in *out (free it with ca_freeaddrinfo) and returns 0, or
 * -CA_ENOTFOUND (no such name / no address of that family), -CA_EDNSFAIL
 * (server failure), -ETIMEDOUT (no answer, or a deadline scope), -ECANCELED
 * (the lookup is cancelled in c-ares too), -CA_ENORESOLVER (built without
 * c-ares and not numeric), -EMFILE/-ENFILE (no descriptor for the query's
 * socket: each lookup in flight holds one), -EINVAL, -ENOMEM, -EPERM. Blocking.
 *
 * Lookups reuse the loop's c-ares channels, each serving one lookup at a
 * time (up to 8 kept idle, some 75 KB each, holding no descriptor; freed
 * when the loop closes).  /etc/hosts is read at every lookup, but
 * /etc/resolv.conf only when a channel is made, and a channel serves for
 * 2 s: a change to resolv.conf reaches lookups within 2 s.
 */
CA_EXTERN int ca_getaddrinfo(const char *host, unsigned port, int family,
                             int socktype, ca_addrinfo **out);
CA_EXTERN void ca_freeaddrinfo(ca_addrinfo *ai);

typedef struct ca_dns_opts {
    /* Servers as "ip[:port],ip[:port]" (IPv6 as "[ip]:port"); NULL: the
     * system's (/etc/resolv.conf). */
    const char *servers;
    int timeout_ms; /* per try; 0: c-ares' default (5 s) */
    int tries;      /* 0: c-ares' default (4) */
} ca_dns_opts;

/* Configure lookups made by this loop from now on (opts NULL: defaults);
 * lookups under way finish with the configuration they started with.
 * Drops the loop's idle c-ares channels, so the next lookup also rereads
 * /etc/resolv.conf.  Returns 0, -EINVAL, -ENOMEM, -CA_ENOLOOP. */
CA_EXTERN int ca_dns_configure(const ca_dns_opts *opts);

/* ------------------------------------------------------------------------ */
/* Sockets                                                                  */
/* ------------------------------------------------------------------------ */

/* Connect a TCP socket to host:port: a numeric address, "localhost", or a
 * name resolved with ca_getaddrinfo.  Several addresses are raced (Happy
 * Eyeballs: families interleaved, "localhost" IPv6 first; each attempt
 * starts 250 ms after the previous one, or as soon as it fails; the first
 * to connect wins; up to 64 addresses, the error of the last to fail when
 * none connects).  Returns the fd, or
 * -ECONNREFUSED, -ETIMEDOUT (a deadline scope), -ECANCELED, -CA_ENOTFOUND
 * and -CA_EDNSFAIL (the name), -CA_ENORESOLVER (a name in a build without
 * c-ares), -EINVAL, -EPERM...  The caller owns the fd (close it with
 * ca_close).  Blocking. */
CA_EXTERN int ca_tcp_connect(const char *host, unsigned port);

typedef struct ca_listen_opts {
    int backlog;    /* 0: SOMAXCONN */
    int reuse_port; /* SO_REUSEPORT: several loops/processes share a port */
    int v6_only;    /* IPv6 listeners: IPV6_V6ONLY */
} ca_listen_opts;

/* Listen on host:port (host NULL or empty: all IPv4 addresses; port 0: any
 * free port, see ca_sock_port).  host is a numeric address or "localhost",
 * never looked up (-CA_ENORESOLVER for a name).  SO_REUSEADDR is always
 * set.  Returns the listening fd or a negative errno.  Never blocks. */
CA_EXTERN int ca_tcp_listen(const char *host, unsigned port,
                            const ca_listen_opts *opts);
/* Listen on a Unix stream socket at path (a leading '@' makes an abstract
 * name).  Returns the fd or a negative errno. */
CA_EXTERN int ca_unix_listen(const char *path, const ca_listen_opts *opts);
/* Connect to a Unix stream socket ('@' for abstract names).  Blocking. */
CA_EXTERN int ca_unix_connect(const char *path);

/* Accept a connection: returns the new fd (non-blocking, close-on-exec)
 * and fills *peer and *len when they are not NULL.  Waits while none is
 * pending.  -ECANCELED, -ETIMEDOUT, -EMFILE/-ENFILE (out of descriptors),
 * -EINVAL...  Blocking. */
CA_EXTERN int ca_accept(int lfd, struct sockaddr *peer, socklen_t *len);

/* The local port of a bound socket, or a negative errno. */
CA_EXTERN int ca_sock_port(int fd);

/* Read up to n bytes: returns the count (0 at end of file) or a negative
 * errno; waits while nothing is available.  Blocking.  fd must be
 * non-blocking (O_NONBLOCK, as asyncio's sock_recv requires): on a blocking
 * fd the read(2) itself would stop the whole loop.  Sockets made by cawait
 * are; ca_stream_open sets the flag itself.  The same holds for ca_write. */
CA_EXTERN ssize_t ca_read(int fd, void *buf, size_t n);
/* Write all n bytes, waiting whenever the kernel buffer is full.  Returns n
 * or a negative errno (-EPIPE, -ECONNRESET, -ECANCELED: then some bytes may
 * have been written).  Blocking. */
CA_EXTERN ssize_t ca_write(int fd, const void *buf, size_t n);

/* ------------------------------------------------------------------------ */
/* Datagrams and descriptor passing                                         */
/* ------------------------------------------------------------------------ */

/* A UDP socket bound to host:port (port 0: any; see ca_sock_port).  host,
 * here and in ca_udp_connect, is a numeric address or "localhost", never
 * looked up (-CA_ENORESOLVER for a name: resolve it with ca_getaddrinfo
 * first).  Returns the fd or a negative errno.  Never blocks. */
CA_EXTERN int ca_udp_bind(const char *host, unsigned port);
/* A UDP socket connected to host:port (send/recv with ca_sendto(fd, ...,
 * NULL, 0) / ca_recvfrom(fd, ..., NULL, NULL)).  Never blocks. */
CA_EXTERN int ca_udp_connect(const char *host, unsigned port);
/* A Unix datagram socket, bound to path if not NULL ('@' abstract). */
CA_EXTERN int ca_unix_dgram(const char *path);
/* Send one datagram (to NULL: the connected peer).  Returns the bytes sent
 * or a negative errno (-EMSGSIZE above 65,507 bytes for UDP/IPv4).  Waits
 * while the socket buffer is full; a Unix datagram sent by address to a
 * full receiver (which no poll reports) is retried after sleeps of 50 us
 * doubling to 6.4 ms, not in a busy loop.  Blocking. */
CA_EXTERN ssize_t ca_sendto(int fd, const void *buf, size_t n,
                            const struct sockaddr *to, socklen_t tolen);
/* Receive one datagram; the sender's address goes to *from and *fromlen
 * when not NULL.  Returns its length (0 for an empty datagram, not an end
 * of file) or a negative errno: -EMSGSIZE if it was longer than n bytes
 * (its first n bytes are in buf, the rest is lost: a UDP datagram fits in
 * 65,507 bytes), -ECONNREFUSED on a connected socket whose earlier datagram
 * drew an ICMP port unreachable.  Waits while none is queued.  Blocking. */
CA_EXTERN ssize_t ca_recvfrom(int fd, void *buf, size_t n,
                              struct sockaddr *from, socklen_t *fromlen);
/* Pass an open descriptor over a Unix socket (SCM_RIGHTS) with one byte of
 * data.  Returns 0 or a negative errno.  Blocking. */
CA_EXTERN int ca_send_fd(int sock, int fd);
/* Receive a descriptor sent with ca_send_fd.  Returns the new fd
 * (close-on-exec), -EPIPE at end of stream, -EBADMSG if the message carried
 * no descriptor, or a negative errno.  Blocking. */
CA_EXTERN int ca_recv_fd(int sock);

/* ------------------------------------------------------------------------ */
/* Streams (asyncio StreamReader / StreamWriter)                            */
/* ------------------------------------------------------------------------ */

typedef struct ca_stream ca_stream;

typedef struct ca_stream_opts {
    /* Largest line or separator-delimited record readline/readuntil will
     * return; 0: 64 KiB (asyncio's limit). */
    size_t limit;
    /* Write buffer high-water mark: ca_stream_drain waits while more than
     * this many bytes are buffered; 0: 64 KiB.  The low-water mark is a
     * quarter of it. */
    size_t high_water;
} ca_stream_opts;

/* Wrap a connected stream fd (a socket or a pipe) in a stream; the stream
 * owns the fd from then on (also on failure) and makes it non-blocking.
 * Returns 0 or -ENOMEM, -EINVAL, -EBADF (not an open fd), -CA_ENOLOOP. */
CA_EXTERN int ca_stream_open(ca_stream **out, int fd,
                             const ca_stream_opts *opts);
/* ca_tcp_connect + ca_stream_open (asyncio.open_connection).  Blocking. */
CA_EXTERN int ca_open_connection(ca_stream **out, const char *host,
                                 unsigned port, const ca_stream_opts *opts);

/* Read up to n bytes (what is buffered, else what one read returns).
 * Returns the count, 0 at end of stream, or a negative errno.  Blocking. */
CA_EXTERN ssize_t ca_stream_read(ca_stream *s, void *buf, size_t n);
/* Read exactly n bytes.  Returns 0, or -CA_EINCOMPLETE if the stream ended
 * first (the partial bytes stay buffered and readable), -EMSGSIZE for n
 * above 16 MiB (read such a body in pieces), or an error.  Blocking. */
CA_EXTERN int ca_stream_readexactly(ca_stream *s, void *buf, size_t n);
/* Read through the next "\n" (included) into buf (cap bytes; NUL-added if
 * room).  Returns the length; at end of stream, the rest without "\n" (0
 * if none).  -EMSGSIZE if no "\n" within the limit or cap: nothing is
 * consumed, the data stays buffered.  Blocking. */
CA_EXTERN ssize_t ca_stream_readline(ca_stream *s, char *buf, size_t cap);
/* The same with any separator (seplen >= 1).  At end of stream without the
 * separator: -CA_EINCOMPLETE, the bytes stay buffered.  Blocking. */
CA_EXTERN ssize_t ca_stream_readuntil(ca_stream *s, const void *sep,
                                      size_t seplen, void *buf, size_t cap);
/* 1 once the peer has closed and everything buffered has been read. */
CA_EXTERN int ca_stream_at_eof(const ca_stream *s);

/* Queue n bytes for sending (asyncio's write: never blocks).  The first
 * write of a task's slice (the stretch it runs without waiting) and any
 * write of 16 KiB or more go to the kernel at once, the rest buffered;
 * later small writes of the same slice are gathered and sent together when
 * the task waits or yields (as uvloop does), or once 16 KiB are gathered:
 * a write per field costs no send() each.  Returns 0, -EPIPE
 * after write_eof/close or a failed send, -ENOMEM, or -ENOBUFS while more
 * than 16 times the high-water mark is already queued (a writer that never
 * calls ca_stream_drain; nothing of this write is sent or queued). */
CA_EXTERN int ca_stream_write(ca_stream *s, const void *buf, size_t n);
/* Wait until the write buffer is at or below the low-water mark (back
 * pressure: a peer that never reads blocks the writer here, memory stays
 * bounded).  Returns 0 or the send error (-ECONNRESET, -EPIPE: also when
 * the peer went away while it waited; the unsent bytes are dropped).
 * Blocking. */
CA_EXTERN int ca_stream_drain(ca_stream *s);
/* Flush the buffer, then shut down the sending side (half close).
 * Blocking. */
CA_EXTERN int ca_stream_write_eof(ca_stream *s);
/* Bytes waiting in the write buffer. */
CA_EXTERN size_t ca_stream_write_buffered(const ca_stream *s);
/* Send `count` bytes of the file in_fd from `offset` with sendfile(2),
 * after what is buffered (count 0: to the end of the file).  Returns the
 * bytes sent or a negative errno.  Blocking. */
CA_EXTERN ssize_t ca_stream_sendfile(ca_stream *s, int in_fd, off_t offset,
                                     size_t count);
/* The stream's fd (owned by the stream): use it for socket options. */
CA_EXTERN int ca_stream_fd(const ca_stream *s);
/* The peer's address (getpeername).  Returns 0 or a negative errno. */
CA_EXTERN int ca_stream_peer(const ca_stream *s, struct sockaddr *addr,
                             socklen_t *len);
/*
 * Close the stream and free s.  First, in a task, what is buffered is
 * flushed (within a deadline scope if one is open: a peer that never reads
 * must not hold us); outside a task, what the kernel takes at once.  A TLS
 * stream then sends close_notify.
 *
 * A socket stream that has not failed is then closed gracefully, with a
 * lingering close (as nginx and Apache do): its sending side is shut down,
 * so the peer reads all our data and then its end of stream, and whatever
 * the peer still sends is read and dropped until it closes its side too;
 * only then is the fd closed.  Closing at once would make the kernel answer
 * input we never read, or that arrives later (TLS session tickets, a reply
 * we no longer want, an answer to an upload we stopped reading), with a
 * reset that throws away the data we sent and the peer has not received
 * yet.  The lingering is bounded: it ends once the peer has acknowledged
 * all our data (TCP; a Unix peer holds it already) and sent nothing for
 * 2 s (looked at every 2 s), and 10 s after the close at the latest; a
 * loop lingers on at most 4,096 sockets (the next ones close at once).  The
 * loop does it, not the caller: ca_stream_close returns once the flush is
 * done.  Once ca_run is reaping, a lingering socket no longer waits for the
 * peer's end: it closes as soon as the peer has acknowledged all our data
 * (our bytes and our end are then safe in the peer's kernel), so ca_run
 * returns about a round trip later, and waits longer only for a peer that
 * has not taken our data yet (up to those 10 s).  The
 * shutdown reaches every descriptor of the socket (one dup'd or inherited
 * by a child too).  A stream whose reads or writes failed, or whose flush
 * failed or was cut short (deadline, cancellation: unsent data dropped), is
 * closed at once, and so are pipes and other fds.
 *
 * Returns 0 or the first error (the flush's, or close(2)'s).  NULL is
 * ignored.  Blocking (the flush only).
 */
CA_EXTERN int ca_stream_close(ca_stream *s);

/* ------------------------------------------------------------------------ */
/* Servers (asyncio.start_server)                                           */
/* ------------------------------------------------------------------------ */

typedef struct ca_server ca_server;
typedef struct ca_tls_ctx ca_tls_ctx;
/* A connection handler: runs as its own task with the connection's stream;
 * the server closes the stream after it returns. */
typedef int (*ca_conn_fn)(ca_stream *s, void *arg);

typedef struct ca_server_opts {
    ca_listen_opts listen;
    ca_stream_opts stream;
    /* Most connections handled at once; more wait in the kernel's backlog.
     * 0: unlimited. */
    size_t max_connections;
    /* Serve TLS with this server context (ca_tls_ctx_new with .server = 1):
     * each connection's handshake runs in its task, bounded by the
     * context's handshake timeout; a connection whose handshake fails is
     * closed without calling the handler.  The server holds a reference
     * until ca_server_close.  NULL: plain TCP. */
    ca_tls_ctx *tls;
} ca_server_opts;

/* Listen on host:port and serve every connection with fn(stream, arg) in a
 * new task.  Accept errors are handled: out of descriptors backs off
 * (without spinning, the listener stays), aborted connections are ignored.
 * Returns 0 and stores the server, or a negative errno. */
CA_EXTERN int ca_serve(ca_server **out, const char *host, unsigned port,
                       ca_conn_fn fn, void *arg, const ca_server_opts *opts);
/* The port the server listens on. */
CA_EXTERN int ca_server_port(const ca_server *srv);
/* Connections being handled now. */
CA_EXTERN size_t ca_server_connections(const ca_server *srv);
/* asyncio's Server.close_clients: cancel every connection handler now (their
 * streams are flushed briefly and closed).  Never blocks.  Returns 0. */
CA_EXTERN int ca_server_close_clients(ca_server *srv);
/* asyncio's Server.abort_clients: reset every connection (RST, unsent data
 * dropped) and cancel its handler.  Never blocks.  Returns 0. */
CA_EXTERN int ca_server_abort_clients(ca_server *srv);
/* Graceful shutdown: stop accepting, let handlers finish for up to `grace`
 * seconds, then cancel the rest and wait for them, close everything and
 * free srv.  Connections closed gracefully may still linger in the loop
 * afterwards (see ca_stream_close; ca_run waits until the peers have
 * acknowledged what we sent).  Returns 0 or
 * -EINVAL.  Blocking (not a cancellation point). */
CA_EXTERN int ca_server_close(ca_server *srv, double grace);

/* ------------------------------------------------------------------------ */
/* TLS (OpenSSL 3)                                                          */
/* ------------------------------------------------------------------------ */

/*
 * TLS runs over any stream: ca_stream_start_tls pushes a TLS layer on top
 * of what the stream already is (a TCP socket, a Unix socket, even another
 * TLS stream), and every ca_stream_* call goes through it.  Configuration
 * lives in a context, made once and shared by every connection (one
 * SSL_CTX); contexts may be shared between threads.
 *
 * Clients verify the peer's certificate chain against the system CA store
 * and its name against the host name by default.  Renegotiation is refused
 * (TLS 1.2; TLS 1.3 has none), TLS 1.2 is the minimum version, closing a
 * stream sends close_notify and then closes the socket by lingering (see
 * ca_stream_close: session tickets and anything else the peer sends, before
 * or after our close, are read and dropped instead of turning the close
 * into a reset that loses the end of our data), and a peer that closes
 * without close_notify makes reads fail with -CA_ETLS (a truncation attack
 * is not an end of stream).
 *
 * Errors: -CA_ECERTUNTRUSTED (unknown issuer, self-signed), -CA_ECERTEXPIRED
 * (expired or not yet valid), -CA_ECERTHOST (name mismatch), -CA_ECERT
 * (other verification failures), -CA_ETLS (handshake failure, alert from the
 * peer, bad record, truncation), -ETIMEDOUT (handshake timeout or deadline
 * scope), -CA_ENOTLS (built without OpenSSL).  ca_tls_last_error describes
 * the last of these on the calling thread.
 */

#define CA_TLS_1_2 0x0303
#define CA_TLS_1_3 0x0304

typedef struct ca_tls_opts {
    /* 1: server side (cert_file and key_file required). */
    int server;
    /* PEM certificate chain (leaf first) and its private key: the server's
     * identity, or a client certificate.  Paths; read at creation. */
    const char *cert_file;
    const char *key_file;
    /* PEM CA bundle and/or hashed directory to trust instead of the system
     * store (servers: to verify client certificates). */
    const char *ca_file;
    const char *ca_dir;
    /* Client: accept any certificate and any name.  Insecure; for tests and
     * private networks only. */
    int verify_none;
    /* Server: require a client certificate signed by ca_file/ca_dir. */
    int verify_client;
    /* ALPN protocols, comma-separated in order of preference ("h2,http/1.1");
     * a client offers them, a server picks its first that the client
     * offers (none in common: no ALPN, the handshake goes on).  NULL: none. */
    const char *alpn;
    /* Lowest accepted version: CA_TLS_1_2 (0: default) or CA_TLS_1_3. */
    int min_version;
    /* Seconds the handshake may take; 0: 60 (asyncio's default). */
    double handshake_timeout;
} ca_tls_opts;

/* Create a context from opts (NULL: a verifying client).  Returns 0 and
 * stores it, or -EINVAL (bad options: a server without certificate, a bad
 * ALPN list, an unknown version), -ENOENT/-EACCES (a file cannot be read),
 * -CA_ETLS (a file is not valid PEM, the key does not match the
 * certificate; see ca_tls_last_error), -ENOMEM, -CA_ENOTLS.  Never blocks
 * the loop beyond reading the files. */
CA_EXTERN int ca_tls_ctx_new(ca_tls_ctx **out, const ca_tls_opts *opts);
/* Drop the caller's reference.  Streams and servers using the context keep
 * their own until they are closed.  NULL is ignored. */
CA_EXTERN void ca_tls_ctx_free(ca_tls_ctx *ctx);

/* Upgrade s to TLS (asyncio's start_tls) and run the handshake.  A client
 * context needs server_name (SNI and verification; a numeric address is
 * checked against the certificate's IP addresses) unless it was made with
 * verify_none; a server context ignores it.  Bytes s had already buffered
 * are the first handshake input; bytes buffered for writing are sent first.
 * Returns 0, or an error above (the stream is then unusable: close it),
 * -EINVAL, -EPERM (not in a task), -EPIPE (the stream is closed or
 * failed), -ECANCELED.  Calling it on a TLS stream nests TLS in TLS.
 * Blocking. */
CA_EXTERN int ca_stream_start_tls(ca_stream *s, ca_tls_ctx *ctx,
                                  const char *server_name);
/* ca_open_connection + ca_stream_start_tls with host as the server name.
 * Blocking. */
CA_EXTERN int ca_open_tls_connection(ca_stream **out, const char *host,
                                     unsigned port, ca_tls_ctx *ctx,
                                     const ca_stream_opts *opts);
/* The ALPN protocol agreed on ("h2"), or NULL (none, or not TLS).  Valid
 * while the stream is open. */
CA_EXTERN const char *ca_stream_tls_alpn(const ca_stream *s);
/* The TLS version in use ("TLSv1.3"), or NULL if s is not TLS. */
CA_EXTERN const char *ca_stream_tls_version(const ca_stream *s);
/* What the last TLS failure on this thread was, in words (the OpenSSL
 * reason or the certificate verification error), "" if none.  Thread-local
 * storage shared by the thread's tasks: read it right after the failing
 * call, before the task blocks again and another task's TLS call
 * overwrites it. */
CA_EXTERN const char *ca_tls_last_error(void);

#endif /* CAWAIT_NET_H */
