/* Address literals (internal to the net and http layers). */
#ifndef CA_NET_ADDR_H
#define CA_NET_ADDR_H

#include <arpa/inet.h>
#include <string.h>

/*
 * 1 if host is an IPv4 address in any form getaddrinfo(3) and curl accept:
 * dotted quad, and the inet_aton(3) forms with fewer parts ("127.1"), octal
 * ("0177.0.0.1") or hexadecimal ("0x7f.1") parts, or one 32-bit number
 * ("2130706433"); its address in *out.  Nothing else around it: no spaces,
 * which inet_aton would let trail.
 */
static inline int ca__ipv4_literal(const char *host, struct in_addr *out)
{
    if (!*host || host[strspn(host, "0123456789abcdefABCDEFxX.")] != '\0')
        return 0;
    return inet_aton(host, out) != 0;
}

#endif
