/* The two worker threads: TUN -> UDP and UDP -> TUN, batched, never touching Python. */
#include "fastpath.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static void *tun_to_udp_loop(fp_core *fw);
static void *udp_to_tun_loop(fp_core *fw);

static int stop_requested(fp_core *fw) { return __atomic_load_n(&fw->stopping, __ATOMIC_RELAXED); }

/* Wait for fd to become readable; returns 0 when stop was requested. */
static int wait_readable(fp_core *fw, int fd) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {fw->stop_fd, POLLIN, 0}};
    for (;;) {
        if (stop_requested(fw))
            return 0;
        int r = poll(p, 2, 1000);
        if (r < 0 && errno != EINTR)
            return 0;
        if (r > 0) {
            if (p[1].revents)
                return 0;
            if (p[0].revents & (POLLERR | POLLNVAL))
                return 0;
            return 1;
        }
    }
}

void *fp_tun_to_udp(void *arg) {
    fp_core *fw = arg;
    tun_to_udp_loop(fw);
    __atomic_store_n(&fw->alive[0], 0, __ATOMIC_RELEASE);
    return NULL;
}

void *fp_udp_to_tun(void *arg) {
    fp_core *fw = arg;
    udp_to_tun_loop(fw);
    __atomic_store_n(&fw->alive[1], 0, __ATOMIC_RELEASE);
    return NULL;
}

static void write_icmp(fp_core *fw, const uint8_t *pkt, size_t len) {
    static const uint8_t zero_hdr[VNET_HDR_LEN];
    if (fw->offload) {
        struct iovec v[2] = {{(void *)zero_hdr, VNET_HDR_LEN}, {(void *)pkt, len}};
        if (writev(fw->tun_fd, v, 2) == (ssize_t)(len + VNET_HDR_LEN))
            BUMP(fw, C_ICMP_UNREACHABLE, 1);
    } else if (write(fw->tun_fd, pkt, len) == (ssize_t)len) {
        BUMP(fw, C_ICMP_UNREACHABLE, 1);
    }
}

static void *tun_to_udp_loop(fp_core *fw) {
    uint8_t *bufs = malloc((size_t)BATCH * RBUF_SIZE);
    outq *q = calloc(1, sizeof(outq));
    uint8_t *arena = malloc(ARENA_SIZE);
    uint8_t icmp[600];
    ssize_t lens[BATCH];
    size_t hdr = fw->offload ? VNET_HDR_LEN : 0;
    if (!bufs || !q || !arena) {
        free(bufs);
        free(q);
        free(arena);
        return NULL;
    }
    q->arena = arena;
    while (wait_readable(fw, fw->tun_fd)) {
        for (;;) {
            int n = 0;
            while (n < BATCH) {
                ssize_t r = read(fw->tun_fd, bufs + (size_t)n * RBUF_SIZE, RBUF_SIZE);
                if (r < 0)
                    break;
                lens[n++] = r;
                BUMP(fw, C_TUN_RX_PACKETS, 1);
                BUMP(fw, C_TUN_RX_BYTES, (uint64_t)r - hdr);
            }
            if (n == 0)
                break;
            for (int j = 0; j < n; j++) {
                uint8_t *raw = bufs + (size_t)j * RBUF_SIZE;
                vnet_hdr vh = {0, 0, 0, 0, 0, 0};
                if ((size_t)lens[j] < hdr + 20) {
                    BUMP(fw, C_DROP_MALFORMED, 1);
                    continue;
                }
                if (hdr)
                    vnet_parse(raw, &vh);
                uint8_t *pkt = raw + hdr;
                size_t len = (size_t)lens[j] - hdr;
                if ((pkt[0] >> 4) != 4) {
                    BUMP(fw, C_DROP_NOT_IPV4, 1);
                    continue;
                }
                int gso = (vh.gso_type & ~VNET_GSO_ECN) != VNET_GSO_NONE;
                if (!gso && (vh.flags & VNET_F_NEEDS_CSUM) && !finish_partial_csum(pkt, len, &vh)) {
                    BUMP(fw, C_DROP_MALFORMED, 1);
                    continue;
                }
                pthread_mutex_lock(&fw->lock);
                route_slot *rt = route_lookup(&fw->routes, get_u32(pkt + 16));
                uint32_t peer_ip = rt ? rt->peer_ip : 0;
                uint16_t peer_port = rt ? rt->peer_port : 0;
                pthread_mutex_unlock(&fw->lock);
                if (!rt) {
                    BUMP(fw, C_DROP_NO_ROUTE, 1);
                    size_t ilen = build_net_unreachable(pkt, len, fw->tun_addr, icmp);
                    if (ilen)
                        write_icmp(fw, icmp, ilen);
                    continue;
                }
                if (pkt[8] <= 1) {
                    BUMP(fw, C_DROP_TTL_EGRESS, 1);
                    continue;
                }
                if (gso) {
                    if ((vh.gso_type & ~VNET_GSO_ECN) != VNET_GSO_TCPV4 ||
                        !segment_tcp4(fw, q, pkt, len, vh.gso_size, peer_ip, peer_port))
                        BUMP(fw, C_DROP_MALFORMED, 1);
                    continue;
                }
                decrement_ttl(pkt);
                BUMP(fw, C_TUN_RX_SEGMENTS, 1);
                out_add(fw, q, pkt, len, peer_ip, peer_port, 1, 0);
            }
            out_flush(fw, q);
            if (n < BATCH || stop_requested(fw))
                break;
        }
    }
    free(arena);
    free(q);
    free(bufs);
    return NULL;
}

static uint16_t gro_size(struct msghdr *mh) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO &&
            cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int v;
            memcpy(&v, CMSG_DATA(cm), sizeof(v));
            return (uint16_t)v;
        }
    }
    return 0;
}

static void *udp_to_tun_loop(fp_core *fw) {
    uint8_t *bufs = malloc((size_t)BATCH * RBUF_SIZE);
    coalescer *co = fw->offload ? calloc(1, sizeof(coalescer)) : NULL;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in addrs[BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl[BATCH];
    uint8_t ok[BATCH];
    size_t hdr = fw->offload ? VNET_HDR_LEN : 0;
    if (!bufs || (fw->offload && !co)) {
        free(bufs);
        free(co);
        return NULL;
    }
    if (fw->offload) {
        int one = 1;
        if (setsockopt(fw->sock_fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0) {
            /* older kernel: datagrams simply arrive one by one */
        }
    }
    while (wait_readable(fw, fw->sock_fd)) {
        for (;;) {
            for (int j = 0; j < BATCH; j++) {
                memset(bufs + (size_t)j * RBUF_SIZE, 0, hdr); /* no offload on plain writes */
                iov[j].iov_base = bufs + (size_t)j * RBUF_SIZE + hdr;
                iov[j].iov_len = BUF_SIZE;
                memset(&msgs[j].msg_hdr, 0, sizeof(msgs[j].msg_hdr));
                msgs[j].msg_hdr.msg_name = &addrs[j];
                msgs[j].msg_hdr.msg_namelen = sizeof(addrs[j]);
                msgs[j].msg_hdr.msg_iov = &iov[j];
                msgs[j].msg_hdr.msg_iovlen = 1;
                msgs[j].msg_hdr.msg_control = ctl[j].buf;
                msgs[j].msg_hdr.msg_controllen = sizeof(ctl[j].buf);
            }
            int n = recvmmsg(fw->sock_fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0)
                break;
            pthread_mutex_lock(&fw->lock);
            for (int j = 0; j < n; j++) {
                ok[j] = addrs[j].sin_family == AF_INET &&
                        source_find(&fw->sources, ntohl(addrs[j].sin_addr.s_addr)) != NULL;
            }
            pthread_mutex_unlock(&fw->lock);
            for (int j = 0; j < n; j++) {
                uint8_t *data = iov[j].iov_base;
                size_t left = msgs[j].msg_len;
                size_t seg = gro_size(&msgs[j].msg_hdr);
                if (!seg || seg > left)
                    seg = left;
                if (!ok[j]) {
                    size_t dgrams = left ? (left + seg - 1) / seg : 1;
                    BUMP(fw, C_UDP_RX_PACKETS, dgrams);
                    BUMP(fw, C_UDP_RX_BYTES, left);
                    __atomic_store_n(&fw->counters[C_LAST_UNKNOWN_SOURCE],
                                     (uint64_t)ntohl(addrs[j].sin_addr.s_addr), __ATOMIC_RELAXED);
                    BUMP(fw, C_DROP_UNKNOWN_SOURCE, dgrams);
                    continue;
                }
                if (msgs[j].msg_hdr.msg_flags & MSG_TRUNC) {
                    BUMP(fw, C_UDP_RX_PACKETS, 1);
                    BUMP(fw, C_DROP_MALFORMED, 1);
                    continue;
                }
                do {
                    uint8_t *pkt = data;
                    size_t len = left < seg ? left : seg;
                    data += len;
                    left -= len;
                    BUMP(fw, C_UDP_RX_PACKETS, 1);
                    BUMP(fw, C_UDP_RX_BYTES, len);
                    if (len < 20) {
                        BUMP(fw, C_DROP_MALFORMED, 1);
                        continue;
                    }
                    if ((pkt[0] >> 4) != 4) {
                        BUMP(fw, C_DROP_NOT_IPV4, 1);
                        continue;
                    }
                    if (!decrement_ttl(pkt)) {
                        BUMP(fw, C_DROP_TTL_INGRESS, 1);
                        continue;
                    }
                    if (co) {
                        co_push(fw, co, pkt, len);
                        continue;
                    }
                    if (write(fw->tun_fd, pkt - hdr, len + hdr) != (ssize_t)(len + hdr)) {
                        BUMP(fw, C_DROP_TUN_WRITE_ERROR, 1);
                        continue;
                    }
                    BUMP(fw, C_TUN_TX_WRITES, 1);
                    BUMP(fw, C_TUN_TX_PACKETS, 1);
                    BUMP(fw, C_TUN_TX_BYTES, len);
                } while (left);
            }
            if (co && co->count)
                co_write(fw, co);
            if (n < BATCH || stop_requested(fw))
                break;
        }
    }
    free(co);
    free(bufs);
    return NULL;
}
