/*
 * Buffered streams over a connected fd (asyncio's StreamReader and
 * StreamWriter in one object).
 *
 * Reading: one growable buffer [rstart, rend).  Every read call first uses
 * what is buffered and reads from the fd only when it needs more; a record
 * (line, separator) larger than the limit fails with -EMSGSIZE and leaves
 * the data buffered, so the buffer never grows past limit + one read.
 *
 * Writing: ca_stream_write sends at once what the kernel takes and keeps the
 * rest in [wstart, wend); small writes after the first of a slice are
 * gathered there and sent by a callback when the slice ends (see
 * gathering()).  The buffer is freed whenever it empties.  While data is
 * buffered, a non-task fd waiter (flush_waiter) sends more whenever the fd
 * becomes writable, in the loop's own context: like asyncio's transport, the
 * data goes out even if nobody calls drain.  ca_stream_drain is the back
 * pressure: it parks the caller while more than high_water bytes are buffered,
 * until at most low_water remain.  A hard ceiling makes a writer that never
 * drains get -ENOBUFS instead of growing memory without bound: a write is
 * refused, before any of it is sent, while more than 16 x high_water bytes are
 * already queued (one large write into a shorter queue is taken whole: refusing
 * it after the kernel took a part would cut the byte stream).
 */
#include "net/stream.h"
#include "task/task.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_LIMIT (64u * 1024u)
#define DEFAULT_HIGH (64u * 1024u)
#define READ_CHUNK (16u * 1024u)
/* A plain read of at least this many bytes with nothing buffered goes
 * straight into the caller's buffer. */
#define DIRECT_READ 1024u
#define EXACT_MAX (16u * 1024u * 1024u)
/* readexactly reads this much or more straight into the caller's buffer. */
#define EXACT_DIRECT (64u * 1024u)
/* Small writes within one slice are gathered up to this many bytes before
 * a send (see gathering()). */
#define GATHER_MAX (16u * 1024u)

static ssize_t fd_recv(ca__layer *l, void *buf, size_t n, int *want)
{
    for (;;) {
        ssize_t r = read(l->s->fd, buf, n);
        if (r >= 0) {
            /* A short read from a stream socket emptied its queue, unless
             * the peer's FIN is already there (it came with the same edge
             * as the data, and no edge would follow). */
            ca_stream *s = l->s;
            s->rdrained = s->is_stream_socket && r > 0 && (size_t)r < n &&
                          !ca__fd_peer_closed(ca__loop(), s->fd);
            return r;
        }
        if (errno == EINTR)
            continue;
        *want = CA_READ;
        return -errno;
    }
}

static ssize_t fd_send(ca__layer *l, const void *buf, size_t n, int *want)
{
    ca_stream *s = l->s;
    for (;;) {
        ssize_t r = s->is_socket ? send(s->fd, buf, n, MSG_NOSIGNAL)
                                 : write(s->fd, buf, n);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        *want = CA_WRITE;
        return -errno;
    }
}

static int fd_shutdown_write(ca__layer *l)
{
    if (l->s->is_socket && shutdown(l->s->fd, SHUT_WR) < 0)
        return -errno;
    return 0;
}

static const struct ca__layer_ops fd_layer = {
    .name = "fd",
    .recv = fd_recv,
    .send = fd_send,
    .shutdown_write = fd_shutdown_write,
};

int ca__stream_wait(ca_stream *s, int want)
{
    s->rdrained = 0;
    return ca_wait_fd(s->fd, want);
}

/* Receive into buf, waiting while the transport has nothing.  After a short
 * read of the bare socket, wait for the next edge before reading: an echo
 * or request/response peer saves one failing read() per message. */
static ssize_t recv_wait(ca_stream *s, void *buf, size_t n)
{
    for (;;) {
        int want = CA_READ;
        /* Drained: as if the read had said EAGAIN (the wait clears it). */
        ssize_t r = s->rdrained && s->top == &s->base
                        ? -EAGAIN
                        : s->top->ops->recv(s->top, buf, n, &want);
        if (r != -EAGAIN)
            return r;
        int w = ca__stream_wait(s, want);
        if (w < 0)
            return w;
    }
}

static size_t rlen(const ca_stream *s)
{
    return s->rend - s->rstart;
}

static size_t wlen(const ca_stream *s)
{
    return s->wend - s->wstart;
}

/* A stream never blocks the thread: an fd the caller made blocking (a
 * plain socketpair() or pipe(), a socket inherited or accepted elsewhere)
 * would stop the whole loop in read() or send().  asyncio's transports set
 * the flag the same way.  Checked first: cawait's own sockets already have
 * it, and they pay one fcntl, not two. */
static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -errno;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int ca_stream_open(ca_stream **out, int fd, const ca_stream_opts *opts)
{
    if (!out || fd < 0) {
        if (fd >= 0)
            ca_close(fd);
        return -EINVAL;
    }
    *out = NULL;
    if (!ca__loop()) {
        close(fd);
        return -CA_ENOLOOP;
    }
    int r = set_nonblocking(fd);
    if (r < 0) {
        ca_close(fd);
        return r;
    }
    ca_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        ca_close(fd);
        return -ENOMEM;
    }
    s->fd = fd;
    s->base = (ca__layer){.ops = &fd_layer, .s = s};
    s->top = &s->base;
    s->limit = opts && opts->limit ? opts->limit : DEFAULT_LIMIT;
    s->high = opts && opts->high_water ? opts->high_water : DEFAULT_HIGH;
    s->low = s->high / 4;
    int type;
    socklen_t tl = sizeof(type);
    s->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0;
    s->is_stream_socket = s->is_socket && type == SOCK_STREAM;
    *out = s;
    return 0;
}

int ca_open_connection(ca_stream **out, const char *host, unsigned port,
                       const ca_stream_opts *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    int fd = ca_tcp_connect(host, port);
    if (fd < 0)
        return fd;
    return ca_stream_open(out, fd, opts);
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                  */
/* ------------------------------------------------------------------------ */

/* Make room for at least `want` more bytes after rend (compacting first),
 * never beyond `ceiling` total buffered bytes. */
static int rreserve(ca_stream *s, size_t want, size_t ceiling)
{
    if (s->rstart > 0 && s->rstart == s->rend)
        s->rstart = s->rend = 0;
    if (s->rcap - s->rend >= want)
        return 0;
    if (s->rstart > 0) {
        memmove(s->rbuf, s->rbuf + s->rstart, rlen(s));
        s->rend -= s->rstart;
        s->rstart = 0;
        if (s->rcap - s->rend >= want)
            return 0;
    }
    size_t need = s->rend + want;
    if (need > ceiling)
        need = ceiling;
    if (need <= s->rcap)
        return s->rcap > s->rend ? 0 : -EMSGSIZE;
    size_t cap = s->rcap ? s->rcap : READ_CHUNK;
    while (cap < need)
        cap *= 2;
    if (cap > ceiling)
        cap = ceiling;
    char *b = realloc(s->rbuf, cap);
    if (!b)
        return -ENOMEM;
    s->rbuf = b;
    s->rcap = cap;
    return 0;
}

/* Read once from the fd into the buffer, waiting if nothing is available.
 * Returns bytes added (0: end of stream) or a negative errno. */
static ssize_t fill(ca_stream *s, size_t ceiling)
{
    if (s->eof)
        return 0;
    if (s->rerr)
        return s->rerr;
    int r = rreserve(s, READ_CHUNK, ceiling);
    if (r < 0)
        return r;
    ssize_t n = recv_wait(s, s->rbuf + s->rend, s->rcap - s->rend);
    if (n > 0) {
        s->rend += (size_t)n;
        return n;
    }
    if (n == 0) {
        s->eof = 1;
        return 0;
    }
    if (n != -ECANCELED && n != -ETIMEDOUT)
        s->rerr = (int)n; /* a transport error sticks */
    return n;
}

static size_t take(ca_stream *s, void *buf, size_t n)
{
    if (n > rlen(s))
        n = rlen(s);
    memcpy(buf, s->rbuf + s->rstart, n);
    s->rstart += n;
    if (s->rstart == s->rend) {
        /* Drained: give the buffer back, so an idle connection (an HTTP
         * keep-alive waiting for its next request) holds no read memory. */
        free(s->rbuf);
        s->rbuf = NULL;
        s->rstart = s->rend = s->rcap = 0;
    }
    return n;
}

ssize_t ca_stream_read(ca_stream *s, void *buf, size_t n)
{
    if (!s || (!buf && n))
        return -EINVAL;
    if (n == 0)
        return 0;
    if (rlen(s) == 0) {
        if (s->eof)
            return 0;
        if (s->rerr)
            return s->rerr;
        if (!ca__task_self("ca_stream_read"))
            return -EPERM;
        /* Nothing buffered: read straight into the caller's buffer when it
         * is not tiny, saving a copy and the buffer (the echo path). */
        if (n >= DIRECT_READ) {
            ssize_t r = recv_wait(s, buf, n);
            if (r == 0)
                s->eof = 1;
            else if (r < 0 && r != -ECANCELED && r != -ETIMEDOUT)
                s->rerr = (int)r;
            return r;
        }
        ssize_t r = fill(s, s->limit + READ_CHUNK);
        if (r <= 0)
            return r;
    }
    return (ssize_t)take(s, buf, n);
}

/* Give bytes back to an empty read buffer: they stay buffered and
 * readable, first in line. */
static int unread(ca_stream *s, const char *p, size_t n)
{
    int r = rreserve(s, n, n + READ_CHUNK);
    if (r < 0)
        return r;
    memcpy(s->rbuf + s->rend, p, n);
    s->rend += n;
    return 0;
}

/*
 * readexactly of a large n: what is buffered, then straight from the
 * transport into the caller's buffer, without a stream buffer of n bytes
 * and the copy out of it (a 16 MB read made the buffer 16 MiB).  If the
 * stream ends or the wait fails first, the bytes read so far go back into
 * the buffer, as on the buffered path.
 */
static int read_exact_direct(ca_stream *s, char *buf, size_t n)
{
    size_t got = rlen(s) ? take(s, buf, rlen(s)) : 0;
    int rc = 0;
    while (got < n && rc == 0) {
        if (s->eof || s->rerr) {
            rc = s->eof ? -CA_EINCOMPLETE : s->rerr;
            break;
        }
        ssize_t r = recv_wait(s, buf + got, n - got);
        if (r > 0) {
            got += (size_t)r;
        } else if (r == 0) {
            s->eof = 1;
            rc = -CA_EINCOMPLETE;
        } else {
            if (r != -ECANCELED && r != -ETIMEDOUT)
                s->rerr = (int)r; /* a transport error sticks */
            rc = (int)r;
        }
    }
    if (rc < 0 && got > 0) {
        int u = unread(s, buf, got);
        if (u < 0)
            return u;
    }
    return rc;
}

int ca_stream_readexactly(ca_stream *s, void *buf, size_t n)
{
    if (!s || (!buf && n))
        return -EINVAL;
    if (n > EXACT_MAX)
        return -EMSGSIZE;
    if (n >= EXACT_DIRECT && rlen(s) < n) {
        if (!ca__task_self("ca_stream_readexactly"))
            return -EPERM;
        return read_exact_direct(s, buf, n);
    }
    while (rlen(s) < n) {
        if (!ca__task_self("ca_stream_readexactly"))
            return -EPERM;
        ssize_t r = fill(s, n > s->limit ? n : s->limit + READ_CHUNK);
        if (r < 0)
            return (int)r;
        if (r == 0)
            return -CA_EINCOMPLETE; /* the partial bytes stay buffered */
    }
    take(s, buf, n);
    return 0;
}

static ssize_t read_until(ca_stream *s, const void *sep, size_t seplen,
                          void *buf, size_t cap, int partial_at_eof)
{
    size_t scanned = 0;
    for (;;) {
        const char *base = s->rbuf ? s->rbuf + s->rstart : NULL;
        size_t have = rlen(s);
        size_t from = scanned > seplen - 1 ? scanned - (seplen - 1) : 0;
        const char *hit = have >= seplen
                              ? memmem(base + from, have - from, sep, seplen)
                              : NULL;
        if (hit) {
            size_t len = (size_t)(hit - base) + seplen;
            if (len > s->limit || len > cap)
                return -EMSGSIZE; /* nothing consumed */
            take(s, buf, len);
            if (len < cap)
                ((char *)buf)[len] = '\0';
            return (ssize_t)len;
        }
        scanned = have;
        if (have > s->limit)
            return -EMSGSIZE; /* no separator within the limit */
        if (s->eof) {
            if (!partial_at_eof)
                return have ? -CA_EINCOMPLETE : 0;
            if (have > cap)
                return -EMSGSIZE;
            take(s, buf, have);
            if (have < cap)
                ((char *)buf)[have] = '\0';
            return (ssize_t)have;
        }
        if (!ca__task_self("ca_stream_readuntil"))
            return -EPERM;
        ssize_t r = fill(s, s->limit + seplen + READ_CHUNK);
        if (r < 0)
            return r;
    }
}

ssize_t ca_stream_readline(ca_stream *s, char *buf, size_t cap)
{
    if (!s || !buf || cap == 0)
        return -EINVAL;
    return read_until(s, "\n", 1, buf, cap, 1);
}

ssize_t ca_stream_readuntil(ca_stream *s, const void *sep, size_t seplen,
                            void *buf, size_t cap)
{
    if (!s || !sep || seplen == 0 || !buf || cap == 0)
        return -EINVAL;
    ssize_t r = read_until(s, sep, seplen, buf, cap, 0);
    return r == 0 && s->eof ? -CA_EINCOMPLETE : r;
}

int ca_stream_at_eof(const ca_stream *s)
{
    return s && s->eof && rlen(s) == 0;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

/* Forget the write buffer: it is empty (everything went out) or the send
 * failed.  Its memory goes back, as the read buffer's does: a burst to a
 * slow peer must not pin a megabyte per connection for ever after. */
static void wdrop(ca_stream *s)
{
    free(s->wbuf);
    s->wbuf = NULL;
    s->wstart = s->wend = s->wcap = 0;
}

/* Send what the kernel takes without waiting.  0, or the sticky error. */
static int send_some(ca_stream *s)
{
    while (wlen(s) > 0) {
        int want = CA_WRITE;
        ssize_t n =
            s->top->ops->send(s->top, s->wbuf + s->wstart, wlen(s), &want);
        if (n > 0) {
            s->wstart += (size_t)n;
            continue;
        }
        if (n == -EAGAIN) {
            s->want_w = want;
            return 0;
        }
        s->werr = n < 0 ? (int)n : -EPIPE;
        wdrop(s);
        return s->werr;
    }
    if (s->wbuf)
        wdrop(s);
    return 0;
}

static void arm_flush(ca_stream *s);

/* The fd became writable (or was forgotten): send more in the loop's
 * context, and wait again if data remains. */
static void flush_wake(ca__fdwait *w, int result)
{
    ca_stream *s = (ca_stream *)((char *)w - offsetof(ca_stream, flush_waiter));
    s->flush_armed = 0;
    if (result < 0) {
        s->werr = result;
        return;
    }
    if (send_some(s) == 0 && wlen(s) > 0)
        arm_flush(s);
}

static void arm_flush(ca_stream *s)
{
    ca_loop *l = ca__loop();
    if (s->flush_armed || !l || ca__fd_register(l, s->fd) < 0)
        return;
    s->flush_waiter = (ca__fdwait){.fd = s->fd,
                                   .events = s->want_w ? s->want_w : CA_WRITE,
                                   .wake = flush_wake};
    s->flush_armed = 1;
    ca__fd_add_waiter(l, &s->flush_waiter);
}

/* Send now what is buffered, and leave the rest to the fd waiter. */
static int flush_now(ca_stream *s)
{
    int r = send_some(s);
    if (r == 0 && wlen(s) > 0)
        arm_flush(s);
    return r;
}

/* The gathered writes of a slice go out after it (a callback). */
static void gather_run(void *arg)
{
    ca_stream *s = arg;
    s->gather_pending = 0;
    if (!s->werr && !s->flush_armed)
        flush_now(s);
}

static void gather_later(ca_stream *s)
{
    if (s->gather_pending || s->flush_armed)
        return;
    if (ca_call_soon(gather_run, s, &s->gather_flush) == 0)
        s->gather_pending = 1;
    else
        flush_now(s); /* no callback to be had: send at once */
}

static void disarm_flush(ca_stream *s)
{
    ca_loop *l = ca__loop();
    if (s->flush_armed && l)
        ca__fd_remove_waiter(l, &s->flush_waiter);
    s->flush_armed = 0;
    if (s->gather_pending)
        ca_handle_cancel(s->gather_flush);
    s->gather_pending = 0;
}

/*
 * Gathering.  The first write of a slice (the stretch a task or callback
 * runs without waiting) goes straight to the kernel: a lone reply leaves at
 * once, without a copy.  Later small writes of the same slice are queued
 * and sent together by a callback once the slice ends (uvloop does the
 * same): with TCP_NODELAY, a write per field or per record used to cost a
 * send() and a TCP segment each (10M writes of 8 bytes: 6.1 s, 5x uvloop).
 */
static int gathering(const ca_stream *s, const ca_loop *l, size_t n)
{
    return l && n < GATHER_MAX && s->direct_slice == l->slices + 1;
}

/* Append to the write buffer (compacting or growing it). */
static int wqueue(ca_stream *s, const char *p, size_t n)
{
    if (s->wcap - s->wend < n) {
        if (s->wstart > 0) {
            memmove(s->wbuf, s->wbuf + s->wstart, wlen(s));
            s->wend -= s->wstart;
            s->wstart = 0;
        }
        if (s->wcap - s->wend < n) {
            size_t cap = s->wcap ? s->wcap : 4096;
            while (cap - s->wend < n)
                cap *= 2;
            char *b = realloc(s->wbuf, cap);
            if (!b)
                return -ENOMEM;
            s->wbuf = b;
            s->wcap = cap;
        }
    }
    memcpy(s->wbuf + s->wend, p, n);
    s->wend += n;
    return 0;
}

int ca_stream_write(ca_stream *s, const void *buf, size_t n)
{
    if (!s || (!buf && n))
        return -EINVAL;
    if (s->werr)
        return s->werr;
    if (s->wclosed)
        return -EPIPE;
    if (n == 0)
        return 0;
    if (wlen(s) > 16 * s->high)
        return -ENOBUFS; /* the writer never drains: refuse to grow */
    const char *p = buf;
    int kernel_full = 0;
    ca_loop *l = ca__loop();
    if (wlen(s) == 0 && !gathering(s, l, n)) {
        /* Nothing queued: try the kernel first (the common case).  The
         * slice is remembered: its later small writes gather. */
        s->direct_slice = l ? l->slices + 1 : 0;
        for (;;) {
            int want = CA_WRITE;
            ssize_t k = s->top->ops->send(s->top, p, n, &want);
            if (k >= 0) {
                p += k;
                n -= (size_t)k;
                if (n == 0)
                    return 0;
                continue;
            }
            if (k == -EAGAIN) {
                s->want_w = want;
                kernel_full = 1;
                break;
            }
            return s->werr = (int)k;
        }
    }
    int r = wqueue(s, p, n);
    if (r < 0)
        return r;
    if (kernel_full || s->flush_armed) {
        arm_flush(s); /* sent when the fd is writable again */
        return 0;
    }
    if (wlen(s) >= GATHER_MAX)
        return flush_now(s); /* enough for a full send now */
    gather_later(s);
    return 0;
}

/* Wait until at most `target` bytes are buffered. */
static int flush_to(ca_stream *s, size_t target)
{
    for (;;) {
        /* The background flusher may have failed (and dropped the buffer)
         * while we waited: its error is ours. */
        if (s->werr)
            return s->werr;
        int r = send_some(s);
        if (r < 0)
            return r;
        if (wlen(s) <= target)
            return 0;
        r = ca_wait_fd(s->fd, s->want_w ? s->want_w : CA_WRITE);
        if (r < 0)
            return r;
    }
}

int ca_stream_drain(ca_stream *s)
{
    if (!s)
        return -EINVAL;
    if (s->werr)
        return s->werr;
    if (wlen(s) <= s->high)
        return 0;
    if (!ca__task_self("ca_stream_drain"))
        return -EPERM;
    return flush_to(s, s->low);
}

int ca_stream_write_eof(ca_stream *s)
{
    if (!s)
        return -EINVAL;
    if (!ca__task_self("ca_stream_write_eof"))
        return -EPERM;
    if (s->wclosed)
        return 0;
    int r = s->werr ? s->werr : flush_to(s, 0);
    s->wclosed = 1;
    disarm_flush(s);
    if (r == 0)
        r = s->top->ops->shutdown_write(s->top);
    return r;
}

/* sendfile through a layer that must see the bytes (TLS): read the file
 * in chunks and write them through the stream, with back pressure. */
static ssize_t sendfile_copy(ca_stream *s, int in_fd, off_t offset,
                             size_t count)
{
    size_t cap = count < 64 * 1024 ? count : 64 * 1024;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    size_t sent = 0;
    ssize_t r = 0;
    while (sent < count) {
        size_t want = count - sent < cap ? count - sent : cap;
        ssize_t n = pread(in_fd, buf, want, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break; /* the file is shorter than asked */
        r = ca_stream_write(s, buf, (size_t)n);
        if (r == 0)
            r = ca_stream_drain(s);
        if (r < 0)
            break;
        offset += n;
        sent += (size_t)n;
    }
    free(buf);
    if (r == 0)
        r = ca__stream_flush(s);
    if (r == 0 || (sent > 0 && r != -ECANCELED && r != -ETIMEDOUT))
        return (ssize_t)sent; /* like sendfile(2): a short count */
    return r;
}

ssize_t ca_stream_sendfile(ca_stream *s, int in_fd, off_t offset, size_t count)
{
    if (!s || in_fd < 0 || offset < 0)
        return -EINVAL;
    if (s->werr)
        return s->werr;
    if (s->wclosed)
        return -EPIPE;
    if (!ca__task_self("ca_stream_sendfile"))
        return -EPERM;
    if (count == 0) {
        struct stat st;
        if (fstat(in_fd, &st) < 0)
            return -errno;
        if (st.st_size <= offset)
            return 0;
        count = (size_t)(st.st_size - offset);
    }
    if (s->top != &s->base)
        return sendfile_copy(s, in_fd, offset, count);
    int r = flush_to(s, 0); /* what was written before goes first */
    if (r < 0)
        return r;
    size_t sent = 0;
    while (sent < count) {
        ssize_t n = sendfile(s->fd, in_fd, &offset, count - sent);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n == 0)
            break; /* the file is shorter than asked */
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return sent ? (ssize_t)sent : -errno;
        int w = ca_wait_fd(s->fd, CA_WRITE);
        if (w < 0)
            return w;
    }
    return (ssize_t)sent;
}

size_t ca_stream_write_buffered(const ca_stream *s)
{
    return s ? wlen(s) : 0;
}

int ca_stream_fd(const ca_stream *s)
{
    return s ? s->fd : -EINVAL;
}

int ca_stream_peer(const ca_stream *s, struct sockaddr *addr, socklen_t *len)
{
    if (!s || !addr || !len)
        return -EINVAL;
    return getpeername(s->fd, addr, len) == 0 ? 0 : -errno;
}

int ca__stream_flush(ca_stream *s)
{
    return s->werr ? s->werr : flush_to(s, 0);
}

int ca__stream_push(ca_stream *s, ca__layer *l, char **pre, size_t *pre_len)
{
    *pre = NULL;
    *pre_len = 0;
    if (rlen(s) > 0) {
        *pre = malloc(rlen(s));
        if (!*pre)
            return -ENOMEM;
        *pre_len = rlen(s);
        take(s, *pre, *pre_len);
    }
    l->s = s;
    l->lower = s->top;
    s->top = l;
    s->rdrained = 0;
    return 0;
}

void ca__stream_pop(ca_stream *s, ca__layer *l)
{
    if (s->top == l)
        s->top = l->lower;
    s->rdrained = 0;
}

/* ------------------------------------------------------------------------ */
/* Lingering close                                                          */
/* ------------------------------------------------------------------------ */

/*
 * close(2) on a TCP socket that has unread input, or that receives data
 * afterwards, makes Linux answer with RST and throw away its send queue:
 * the peer loses the tail of what we wrote (and may read ECONNRESET, or an
 * end of stream that looks clean, instead).  The peer need not misbehave:
 * TLS 1.3 session tickets, a reply to a request we no longer read, an
 * "early" error answer to an upload we did not read.  So a graceful close
 * is a lingering close, as in nginx and Apache: shut down our sending side
 * (the FIN follows our data), then read and drop whatever arrives until the
 * peer's end of stream, then close(2).  Bounded: it ends LINGER_IDLE_NS
 * after the last input once the peer has acknowledged all we sent, and
 * LINGER_MAX_NS after the close in any case; LINGER_MAX_FDS sockets per
 * loop at most.
 *
 * The waiting is the loop's, not the closing task's: ca_stream_close hands
 * the fd to a lingerer (a non-task fd waiter and a timer, like the flush
 * waiter) and returns.  ca_run waits for the lingerers before it tears the
 * loop down, and an exit hook closes any left, so no fd outlives the loop.
 * The same holds for Unix stream sockets, where unread input at close made
 * the peer read ECONNRESET after our data instead of its end.
 */
#define LINGER_IDLE_NS (2 * 1000000000LL)
/* Once ca_run is reaping, how often a lingering socket whose data is still
 * unacknowledged checks again (it closes as soon as the peer has it all). */
#define LINGER_STOP_POLL_NS (10 * 1000000LL)
#define LINGER_MAX_NS (10 * 1000000000LL)
#define LINGER_MAX_FDS 4096
/* Reads per wake-up before the lingerer lets the loop run (a peer that
 * sends as fast as we drop must not hold the loop). */
#define LINGER_READS 64
/* Bytes per read.  With MSG_TRUNC, TCP drops them without copying; other
 * stream sockets ignore the flag and copy into a real buffer, which the
 * sanitizers also want (they take a read as written to it). */
#define LINGER_READ (64u * 1024u)

struct lingerer {
    ca__fdwait waiter; /* input, or the peer's end */
    ca__timer timer;   /* idle and total limits */
    ca_handle more;    /* drain on after LINGER_READS reads */
    struct lingerer *prev, *next;
    int fd;
    int waiting;      /* waiter linked */
    int more_pending; /* `more` scheduled */
    int64_t alive;    /* loop time of the last sign of life */
    int64_t end;      /* the total limit */
};

struct linger_set {
    ca__exit_hook hook; /* closes what is left when the loop ends */
    struct lingerer *head;
    char scratch[LINGER_READ]; /* where dropped input goes */
};

enum { DRAIN_EMPTY, DRAIN_MORE, DRAIN_END };

/* Read and drop what fd holds: DRAIN_END at the peer's end of stream or on
 * an error (nothing more will come), DRAIN_EMPTY once the socket is empty
 * for now, DRAIN_MORE if it still held data after LINGER_READS reads. */
static int drain(struct linger_set *set, int fd)
{
    for (int i = 0; i < LINGER_READS; i++) {
        ssize_t n = recv(fd, set->scratch, LINGER_READ, MSG_TRUNC);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return DRAIN_EMPTY;
        return DRAIN_END;
    }
    return DRAIN_MORE;
}

/* Bytes we sent that a TCP peer has not acknowledged yet (our FIN counts
 * as one), or 0.  A Unix peer's unread bytes are not counted: they are in
 * its queue already, and no reset can take them back. */
static int send_queue(int fd)
{
    int v, domain;
    socklen_t dl = sizeof(domain);
    if (ioctl(fd, SIOCOUTQ, &v) < 0 || v <= 0)
        return 0;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0 ||
        domain == AF_UNIX)
        return 0;
    return v;
}

static void linger_end(ca_loop *l, struct lingerer *g)
{
    struct linger_set *set = l->lingering;
    if (g->waiting)
        ca__fd_remove_waiter(l, &g->waiter);
    ca__timer_cancel(l, &g->timer);
    if (g->more_pending)
        ca_handle_cancel(g->more);
    if (g->prev)
        g->prev->next = g->next;
    else
        set->head = g->next;
    if (g->next)
        g->next->prev = g->prev;
    l->nlingering--;
    ca_close(g->fd);
    free(g);
}

static void linger_wake(ca__fdwait *w, int result);
static void linger_more(void *arg);

/* After a drain that returned d: wait for more input (DRAIN_EMPTY), drain
 * on at the next turn (DRAIN_MORE), or end the linger (DRAIN_END). */
static void linger_next(ca_loop *l, struct lingerer *g, int d)
{
    if (d == DRAIN_MORE && ca_call_soon(linger_more, g, &g->more) == 0) {
        g->more_pending = 1;
        return;
    }
    if (d != DRAIN_EMPTY) {
        linger_end(l, g);
        return;
    }
    ca__fd_take_ready(l, g->fd, CA_READ); /* drained: the cached edge too */
    g->waiter =
        (ca__fdwait){.fd = g->fd, .events = CA_READ, .wake = linger_wake};
    ca__fd_add_waiter(l, &g->waiter);
    g->waiting = 1;
}

static void linger_drain(ca_loop *l, struct lingerer *g)
{
    g->alive = l->now;
    linger_next(l, g, drain(l->lingering, g->fd));
}

static void linger_wake(ca__fdwait *w, int result)
{
    struct lingerer *g =
        (struct lingerer *)((char *)w - offsetof(struct lingerer, waiter));
    ca_loop *l = ca__loop();
    g->waiting = 0;
    if (result < 0)
        linger_end(l, g); /* forgotten: the fd is going away */
    else
        linger_drain(l, g);
}

static void linger_more(void *arg)
{
    struct lingerer *g = arg;
    g->more_pending = 0;
    linger_drain(ca__loop(), g);
}

/* LINGER_IDLE_NS after the last sign of life: end the linger at the total
 * limit, or when nothing arrived since and the peer's kernel has taken all
 * we sent.  While our bytes are still on their way, a reset would destroy
 * them: a peer that stalls for a while (busy, or swapped out) keeps the
 * socket up to the total limit.  May run on a task's stack (timers fire at
 * switches): no reads here. */
static void linger_timer(ca__timer *t)
{
    struct lingerer *g =
        (struct lingerer *)((char *)t - offsetof(struct lingerer, timer));
    ca_loop *l = ca__loop();
    int queued = send_queue(g->fd);
    if (l->stopping) {
        /* ca_run is reaping: the peer's end of stream is no longer worth
         * waiting for, only our unacknowledged bytes are (a reset would
         * destroy them; what the peer's kernel has taken stays readable
         * there). */
        if (!queued || l->now >= g->end ||
            ca__timer_arm(l, &g->timer, l->now + LINGER_STOP_POLL_NS) < 0)
            linger_end(l, g);
        return;
    }
    if (queued > 0)
        g->alive = l->now;
    int64_t next = g->alive + LINGER_IDLE_NS;
    if (next > g->end)
        next = g->end;
    if (next <= l->now || ca__timer_arm(l, &g->timer, next) < 0)
        linger_end(l, g);
}

static void linger_exit(ca_loop *l, ca__exit_hook *h)
{
    struct linger_set *set = (struct linger_set *)h;
    while (set->head)
        linger_end(l, set->head);
    l->lingering = NULL;
    l->linger_stop = NULL;
    free(set);
}

/* ca_run starts reaping: every lingering socket is checked now (and then
 * every LINGER_STOP_POLL_NS) and closed once the peer has all we sent. */
static void linger_stop(ca_loop *l)
{
    struct linger_set *set = l->lingering;
    for (struct lingerer *g = set ? set->head : NULL, *next; g; g = next) {
        next = g->next;
        linger_timer(&g->timer);
    }
}

/*
 * Close a connected stream socket gracefully: half close, drop the input
 * that is already there, and if the peer has not ended its side yet, leave
 * the rest to a lingerer.  Returns what close(2) returned, or 0 when the
 * loop took the fd.  Never blocks.
 */
static int linger_close(int fd)
{
    ca_loop *l = ca__loop();
    if (!l || l->nlingering >= LINGER_MAX_FDS || shutdown(fd, SHUT_WR) < 0)
        return ca_close(fd); /* not connected (any more): nothing to save */
    struct linger_set *set = l->lingering;
    if (!set) {
        set = malloc(sizeof(*set));
        if (!set)
            return ca_close(fd);
        set->hook.fn = linger_exit;
        set->head = NULL;
        ca__loop_at_exit(l, &set->hook);
        l->lingering = set;
        l->linger_stop = linger_stop;
    }
    int d = drain(set, fd);
    if (d == DRAIN_END)
        return ca_close(fd);
    struct lingerer *g = calloc(1, sizeof(*g));
    if (!g || ca__fd_register(l, fd) < 0) {
        free(g);
        return ca_close(fd);
    }
    g->fd = fd;
    g->alive = l->now;
    g->end = l->now + LINGER_MAX_NS;
    g->timer = (ca__timer){.slot = CA__TIMER_IDLE, .fire = linger_timer};
    g->next = set->head;
    if (set->head)
        set->head->prev = g;
    set->head = g;
    l->nlingering++;
    int64_t first = l->now + (l->stopping ? 0 : LINGER_IDLE_NS);
    if (ca__timer_arm(l, &g->timer, first) < 0) {
        linger_end(l, g);
        return 0;
    }
    linger_next(l, g, d);
    return 0;
}

int ca_stream_close(ca_stream *s)
{
    if (!s)
        return 0;
    int r = s->werr;
    s->wclosed = 1;
    int in_task = ca__loop() && ca__loop()->current;
    if (!r && wlen(s) > 0) {
        if (in_task)
            r = flush_to(s, 0);
        else
            r = send_some(s) < 0 ? s->werr : (wlen(s) ? -EAGAIN : 0);
    }
    disarm_flush(s);
    /* Upper layers say goodbye (TLS close_notify) only when everything
     * before it went out: a close_notify after lost data would lie. */
    int graceful = r == 0 && !s->rerr;
    while (s->top != &s->base) {
        ca__layer *l = s->top;
        s->top = l->lower;
        l->ops->destroy(l, graceful);
    }
    /* A failed stream is dropped at once (a reset is what it deserves); a
     * good one lingers (see linger_close). */
    int c =
        graceful && s->is_stream_socket ? linger_close(s->fd) : ca_close(s->fd);
    free(s->rbuf);
    free(s->wbuf);
    free(s);
    return r ? r : c;
}
