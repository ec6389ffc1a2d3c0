/* Error names and messages: errno values and cawait's own codes. */
#include "cawait.h"

#include <errno.h>
#include <string.h>

#define ERRNO_NAMES(X)                                                         \
    X(EPERM) X(ENOENT) X(ESRCH) X(EINTR) X(EIO) X(ENXIO) X(E2BIG)              \
    X(ENOEXEC) X(EBADF) X(ECHILD) X(EAGAIN) X(ENOMEM) X(EACCES) X(EFAULT)      \
    X(EBUSY) X(EEXIST) X(EXDEV) X(ENODEV) X(ENOTDIR) X(EISDIR) X(EINVAL)       \
    X(ENFILE) X(EMFILE) X(ENOTTY) X(EFBIG) X(ENOSPC) X(ESPIPE) X(EROFS)        \
    X(EMLINK) X(EPIPE) X(EDOM) X(ERANGE) X(EDEADLK) X(ENAMETOOLONG)            \
    X(ENOLCK) X(ENOSYS) X(ENOTEMPTY) X(ELOOP) X(ENOMSG) X(EOVERFLOW)           \
    X(EILSEQ) X(ENOTSOCK) X(EDESTADDRREQ) X(EMSGSIZE) X(EPROTOTYPE)            \
    X(ENOPROTOOPT) X(EPROTONOSUPPORT) X(EOPNOTSUPP) X(EAFNOSUPPORT)            \
    X(EADDRINUSE) X(EADDRNOTAVAIL) X(ENETDOWN) X(ENETUNREACH) X(ECONNABORTED)  \
    X(ECONNRESET) X(ENOBUFS) X(EISCONN) X(ENOTCONN) X(ESHUTDOWN)               \
    X(ETIMEDOUT) X(ECONNREFUSED) X(EHOSTUNREACH) X(EALREADY) X(EINPROGRESS)    \
    X(ECANCELED) X(EPROTO) X(EBADMSG) X(ETIME)

const char *ca_err_name(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
#define CA__NAME_CASE(name, n, msg)                                            \
    case name:                                                                 \
        return #name;
        CA_ERRNO_MAP(CA__NAME_CASE)
#undef CA__NAME_CASE
#define ERRNO_CASE(name)                                                       \
    case name:                                                                 \
        return #name;
        ERRNO_NAMES(ERRNO_CASE)
#undef ERRNO_CASE
    case 0:
        return "OK";
    }
    return "E?";
}

const char *ca_strerror(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
#define CA__MSG_CASE(name, n, msg)                                             \
    case name:                                                                 \
        return msg;
        CA_ERRNO_MAP(CA__MSG_CASE)
#undef CA__MSG_CASE
    case 0:
        return "success";
    }
    if (err < CA_ERR_BASE) {
        /* strerror's table is static for known values in glibc; use the
         * descriptive text of the C library, which is thread-safe there. */
        const char *s = strerrordesc_np(err);
        if (s)
            return s;
    }
    return "unknown error";
}
