/* TSO/GSO in userspace: cut TCP super-packets from the TUN into MTU-sized segments and send
 * them with UDP GSO; merge received segments back into super-packets for the TUN (GRO). */
#include "fastpath.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void count_sent(fp_core *fw, outq *q, int k) {
    BUMP(fw, C_UDP_TX_PACKETS, q->segs[k]);
    BUMP(fw, C_UDP_TX_BYTES, q->iov[k].iov_len);
}

/* The kernel refused UDP GSO for message k: send its datagrams one by one from now on. */
static void send_split(fp_core *fw, outq *q, int k) {
    __atomic_store_n(&fw->udp_gso, 0, __ATOMIC_RELAXED);
    const uint8_t *p = q->iov[k].iov_base;
    size_t left = q->iov[k].iov_len, seg = left;
    /* all but the last datagram have the gso size, which we stored in the cmsg */
    struct cmsghdr *cm = CMSG_FIRSTHDR(&q->msgs[k].msg_hdr);
    if (cm) {
        uint16_t g;
        memcpy(&g, CMSG_DATA(cm), sizeof(g));
        seg = g ? g : left;
    }
    while (left) {
        size_t n = left < seg ? left : seg;
        if (sendto(fw->sock_fd, p, n, 0, (struct sockaddr *)&q->addrs[k], sizeof(q->addrs[k])) ==
            (ssize_t)n) {
            BUMP(fw, C_UDP_TX_PACKETS, 1);
            BUMP(fw, C_UDP_TX_BYTES, n);
        } else {
            BUMP(fw, C_DROP_SEND_ERROR, 1);
        }
        p += n;
        left -= n;
    }
}

void out_flush(fp_core *fw, outq *q) {
    int off = 0;
    while (off < q->n) {
        int sent = sendmmsg(fw->sock_fd, q->msgs + off, (unsigned)(q->n - off), 0);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (q->segs[off] > 1 && (errno == EIO || errno == EINVAL || errno == EMSGSIZE ||
                                     errno == EOPNOTSUPP || errno == ENOPROTOOPT))
                send_split(fw, q, off);
            else
                BUMP(fw, C_DROP_SEND_ERROR, q->segs[off]); /* skip the failing message */
            off++;
            continue;
        }
        for (int j = off; j < off + sent; j++)
            count_sent(fw, q, j);
        off += sent;
    }
    q->n = 0;
    q->used = 0;
}

void out_add(fp_core *fw, outq *q, uint8_t *data, size_t len, uint32_t ip, uint16_t port,
                    uint16_t segs, uint16_t gso_size) {
    if (q->n == OUT_MAX)
        out_flush(fw, q);
    int k = q->n++;
    memset(&q->addrs[k], 0, sizeof(q->addrs[k]));
    q->addrs[k].sin_family = AF_INET;
    q->addrs[k].sin_addr.s_addr = htonl(ip);
    q->addrs[k].sin_port = htons(port);
    q->iov[k].iov_base = data;
    q->iov[k].iov_len = len;
    q->segs[k] = segs;
    memset(&q->msgs[k].msg_hdr, 0, sizeof(q->msgs[k].msg_hdr));
    q->msgs[k].msg_hdr.msg_name = &q->addrs[k];
    q->msgs[k].msg_hdr.msg_namelen = sizeof(q->addrs[k]);
    q->msgs[k].msg_hdr.msg_iov = &q->iov[k];
    q->msgs[k].msg_hdr.msg_iovlen = 1;
    if (segs > 1) {
        q->msgs[k].msg_hdr.msg_control = q->ctl[k].buf;
        q->msgs[k].msg_hdr.msg_controllen = sizeof(q->ctl[k].buf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&q->msgs[k].msg_hdr);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(cm), &gso_size, sizeof(gso_size));
    }
}

/* Cut a TCP/IPv4 super-packet into mss-sized segments (TTL - 1 on each), as the
 * kernel's GSO would, and queue them (as UDP GSO messages when the kernel takes them).
 * Returns 0 if the packet is malformed. */
int segment_tcp4(fp_core *fw, outq *q, const uint8_t *pkt, size_t len, size_t mss,
                        uint32_t ip, uint16_t port) {
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (ihl < 20 || len < ihl + 20 || pkt[9] != 6 || mss == 0)
        return 0;
    size_t thl = (size_t)(pkt[ihl + 12] >> 4) * 4;
    size_t hlen = ihl + thl;
    if (thl < 20 || len <= hlen)
        return 0;
    size_t payload = len - hlen;
    uint32_t seq = get_u32(pkt + ihl + 4);
    uint16_t id = (uint16_t)((pkt[4] << 8) | pkt[5]);
    uint8_t tcp_flags = pkt[ihl + 13];
    uint8_t pseudo[12];
    memcpy(pseudo, pkt + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    size_t full = hlen + mss; /* size of every segment but the last */
    size_t per_msg = __atomic_load_n(&fw->udp_gso, __ATOMIC_RELAXED) ? UDP_GSO_MAX_BYTES / full : 1;
    if (per_msg > UDP_GSO_MAX_SEGS)
        per_msg = UDP_GSO_MAX_SEGS;
    if (per_msg == 0)
        per_msg = 1;
    uint8_t *chunk = NULL;
    size_t chunk_len = 0, chunk_segs = 0;
    for (size_t off = 0, i = 0; off < payload; off += mss, i++) {
        size_t seg = payload - off < mss ? payload - off : mss;
        size_t total = hlen + seg;
        if (q->used + total > ARENA_SIZE || q->n == OUT_MAX) {
            if (chunk_segs)
                out_add(fw, q, chunk, chunk_len, ip, port, (uint16_t)chunk_segs, (uint16_t)full);
            chunk_segs = 0;
            out_flush(fw, q);
        }
        uint8_t *o = q->arena + q->used;
        if (!chunk_segs)
            chunk = o, chunk_len = 0;
        memcpy(o, pkt, hlen);
        memcpy(o + hlen, pkt + hlen + off, seg);
        uint16_t seg_id = (uint16_t)(id + i);
        o[2] = (uint8_t)(total >> 8);
        o[3] = (uint8_t)total;
        o[4] = (uint8_t)(seg_id >> 8);
        o[5] = (uint8_t)seg_id;
        o[8] = (uint8_t)(pkt[8] - 1);
        o[10] = o[11] = 0;
        uint16_t c = csum_mem_final(csum_mem(o, ihl, 0));
        memcpy(o + 10, &c, 2);
        uint8_t *t = o + ihl;
        uint32_t s = seq + (uint32_t)off;
        t[4] = (uint8_t)(s >> 24);
        t[5] = (uint8_t)(s >> 16);
        t[6] = (uint8_t)(s >> 8);
        t[7] = (uint8_t)s;
        uint8_t f = tcp_flags;
        if (off + seg < payload)
            f &= (uint8_t)~0x09; /* FIN, PSH only on the last segment */
        if (i > 0)
            f &= (uint8_t)~0x80; /* CWR only on the first */
        t[13] = f;
        t[16] = t[17] = 0;
        size_t tcp_len = thl + seg;
        pseudo[10] = (uint8_t)(tcp_len >> 8);
        pseudo[11] = (uint8_t)tcp_len;
        c = csum_mem_final(csum_mem(t, tcp_len, csum_mem(pseudo, 12, 0)));
        memcpy(t + 16, &c, 2);
        q->used += total;
        BUMP(fw, C_TUN_RX_SEGMENTS, 1);
        chunk_len += total;
        chunk_segs++;
        if (chunk_segs == per_msg || off + seg >= payload) {
            out_add(fw, q, chunk, chunk_len, ip, port, (uint16_t)chunk_segs, (uint16_t)full);
            chunk_segs = 0;
        }
    }
    return 1;
}

/* Consecutive segments of one TCP flow from a receive batch are merged into one
 * super-packet written with a vnet header (GSO TCPv4, partial checksum), so the kernel
 * forwards one skb instead of ~44 and the pod's TCP sees large segments. */
static int tcp_candidate(const uint8_t *pkt, size_t len, size_t *hlen) {
    if (len < 40 || pkt[0] != 0x45 || pkt[9] != 6)
        return 0;
    if ((pkt[6] & 0x3f) || pkt[7]) /* MF or fragment offset */
        return 0;
    size_t thl = (size_t)(pkt[20 + 12] >> 4) * 4;
    if (thl < 20 || len <= 20 + thl)
        return 0; /* no payload (pure ACK) or bad header */
    uint8_t flags = pkt[20 + 13];
    if ((flags & 0x10) == 0 || (flags & (0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80)))
        return 0; /* need ACK; no FIN/SYN/RST/URG/ECE/CWR */
    size_t tot = (size_t)((pkt[2] << 8) | pkt[3]);
    if (tot != len)
        return 0;
    *hlen = 20 + thl;
    return 1;
}

void co_write(fp_core *fw, coalescer *co) {
    uint8_t *pkt = co->buf + VNET_HDR_LEN;
    memset(co->buf, 0, VNET_HDR_LEN);
    if (co->count > 1) {
        size_t len = co->len;
        pkt[2] = (uint8_t)(len >> 8);
        pkt[3] = (uint8_t)len;
        pkt[10] = pkt[11] = 0;
        uint16_t c = csum_mem_final(csum_mem(pkt, 20, 0));
        memcpy(pkt + 10, &c, 2);
        /* TCP checksum field = pseudo-header sum (not inverted): the kernel finishes it */
        uint8_t pseudo[12];
        size_t tcp_len = len - 20;
        memcpy(pseudo, pkt + 12, 8);
        pseudo[8] = 0;
        pseudo[9] = 6;
        pseudo[10] = (uint8_t)(tcp_len >> 8);
        pseudo[11] = (uint8_t)tcp_len;
        c = (uint16_t)~csum_mem_final(csum_mem(pseudo, 12, 0));
        memcpy(pkt + 20 + 16, &c, 2);
        uint8_t *h = co->buf;
        h[0] = VNET_F_NEEDS_CSUM;
        h[1] = VNET_GSO_TCPV4;
        h[2] = (uint8_t)co->hlen, h[3] = (uint8_t)(co->hlen >> 8);
        h[4] = (uint8_t)co->mss, h[5] = (uint8_t)(co->mss >> 8);
        h[6] = 20, h[7] = 0;
        h[8] = 16, h[9] = 0;
    }
    ssize_t w = write(fw->tun_fd, co->buf, co->len + VNET_HDR_LEN);
    if (w != (ssize_t)(co->len + VNET_HDR_LEN)) {
        BUMP(fw, C_DROP_TUN_WRITE_ERROR, co->count);
    } else {
        BUMP(fw, C_TUN_TX_WRITES, 1);
        BUMP(fw, C_TUN_TX_PACKETS, co->count);
        BUMP(fw, C_TUN_TX_BYTES, co->len + (co->count - 1) * co->hlen);
    }
    co->count = 0;
}

static int co_mergeable(const coalescer *co, const uint8_t *pkt, size_t len, size_t hlen) {
    const uint8_t *cur = co->buf + VNET_HDR_LEN;
    size_t payload = len - hlen;
    if (co->closed || hlen != co->hlen || payload > co->mss || co->len + payload > 65535)
        return 0;
    if (get_u32(pkt + 24) != co->next_seq)
        return 0;
    /* same tos, DF, ttl, addresses; same ports, ack, window, header len, options */
    if (pkt[1] != cur[1] || pkt[6] != cur[6] || pkt[8] != cur[8] || memcmp(pkt + 12, cur + 12, 8))
        return 0;
    if (memcmp(pkt + 20, cur + 20, 4) || memcmp(pkt + 28, cur + 28, 4) || pkt[32] != cur[32] ||
        memcmp(pkt + 34, cur + 34, 2) || memcmp(pkt + 40, cur + 40, hlen - 40))
        return 0;
    return 1;
}

/* Take one forwarded packet (TTL already decremented) for the TUN. */
void co_push(fp_core *fw, coalescer *co, const uint8_t *pkt, size_t len) {
    size_t hlen = 0;
    if (!tcp_candidate(pkt, len, &hlen)) {
        if (co->count)
            co_write(fw, co);
        memcpy(co->buf + VNET_HDR_LEN, pkt, len);
        co->len = len;
        co->count = 1;
        co_write(fw, co);
        return;
    }
    size_t payload = len - hlen;
    uint8_t flags = pkt[20 + 13];
    if (co->count && co_mergeable(co, pkt, len, hlen)) {
        uint8_t *cur = co->buf + VNET_HDR_LEN;
        memcpy(cur + co->len, pkt + hlen, payload);
        co->len += payload;
        co->count++;
        co->next_seq += (uint32_t)payload;
        cur[20 + 13] |= flags & 0x08; /* PSH of the last segment */
        if (payload < co->mss || (flags & 0x08))
            co->closed = 1;
        return;
    }
    if (co->count)
        co_write(fw, co);
    memcpy(co->buf + VNET_HDR_LEN, pkt, len);
    co->len = len;
    co->count = 1;
    co->mss = payload;
    co->hlen = hlen;
    co->next_seq = get_u32(pkt + 24) + (uint32_t)payload;
    co->closed = (flags & 0x08) != 0;
}
