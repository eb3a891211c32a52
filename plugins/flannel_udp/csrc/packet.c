/* Packet helpers: checksums, TTL decrement (RFC 1624), ICMP net unreachable, vnet header. */
#include "fastpath.h"

#include <string.h>

uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

uint32_t csum_add(uint32_t sum, const uint8_t *data, size_t len) {
    size_t i;
    for (i = 0; i + 1 < len; i += 2)
        sum += ((uint32_t)data[i] << 8) | data[i + 1];
    if (len & 1)
        sum += (uint32_t)data[len - 1] << 8;
    return sum;
}

/* Decrement the TTL in place with an RFC 1624 incremental checksum update.
 * Returns 0 when the packet must be dropped (TTL would reach zero). */
int decrement_ttl(uint8_t *pkt) {
    uint8_t ttl = pkt[8];
    if (ttl <= 1)
        return 0;
    uint16_t old_word = (uint16_t)((ttl << 8) | pkt[9]);
    uint16_t new_word = (uint16_t)(((ttl - 1) << 8) | pkt[9]);
    uint16_t check = (uint16_t)((pkt[10] << 8) | pkt[11]);
    /* HC' = ~(~HC + ~m + m') */
    uint32_t sum = (uint32_t)(uint16_t)~check + (uint16_t)~old_word + new_word;
    uint16_t out = (uint16_t)~csum_fold(sum);
    pkt[8] = (uint8_t)(ttl - 1);
    pkt[10] = (uint8_t)(out >> 8);
    pkt[11] = (uint8_t)(out & 0xff);
    return 1;
}

static int is_icmp_error(const uint8_t *pkt, size_t len) {
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (pkt[9] != 1)
        return 0;
    if (len < ihl + 1)
        return 1; /* truncated ICMP: never answer it */
    uint8_t type = pkt[ihl];
    return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* Build ICMP destination/net unreachable for the offending packet into out (>= 576 bytes).
 * Returns the length, or 0 when no error must be sent (ICMP errors, non-first fragments,
 * packets from unspecified/multicast sources). src is the TUN address, host order. */
size_t build_net_unreachable(const uint8_t *pkt, size_t len, uint32_t src, uint8_t *out) {
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (ihl < 20 || len < ihl)
        return 0;
    uint16_t frag = (uint16_t)((pkt[6] << 8) | pkt[7]);
    if (frag & 0x1fff)
        return 0;
    if (is_icmp_error(pkt, len))
        return 0;
    if ((pkt[12] == 0 && pkt[13] == 0 && pkt[14] == 0 && pkt[15] == 0) || (pkt[12] & 0xf0) == 0xe0)
        return 0;
    size_t quoted = ihl + 8;
    if (quoted > len)
        quoted = len;
    size_t total = 20 + 8 + quoted;
    memset(out, 0, 28);
    out[0] = 0x45;
    out[2] = (uint8_t)(total >> 8);
    out[3] = (uint8_t)(total & 0xff);
    out[8] = ICMP_TTL;
    out[9] = 1;
    out[12] = (uint8_t)(src >> 24);
    out[13] = (uint8_t)(src >> 16);
    out[14] = (uint8_t)(src >> 8);
    out[15] = (uint8_t)src;
    memcpy(out + 16, pkt + 12, 4);
    uint16_t ipsum = (uint16_t)~csum_fold(csum_add(0, out, 20));
    out[10] = (uint8_t)(ipsum >> 8);
    out[11] = (uint8_t)(ipsum & 0xff);
    out[20] = 3; /* destination unreachable */
    out[21] = 0; /* net unreachable */
    memcpy(out + 28, pkt, quoted);
    uint16_t icsum = (uint16_t)~csum_fold(csum_add(0, out + 20, 8 + quoted));
    out[22] = (uint8_t)(icsum >> 8);
    out[23] = (uint8_t)(icsum & 0xff);
    return total;
}

uint32_t get_u32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

void vnet_parse(const uint8_t *p, vnet_hdr *h) {
    h->flags = p[0];
    h->gso_type = p[1];
    h->hdr_len = (uint16_t)(p[2] | (p[3] << 8)); /* little-endian (virtio 1.0 / x86) */
    h->gso_size = (uint16_t)(p[4] | (p[5] << 8));
    h->csum_start = (uint16_t)(p[6] | (p[7] << 8));
    h->csum_offset = (uint16_t)(p[8] | (p[9] << 8));
}

/* One's complement sum of 16-bit words in memory order: endian-neutral (RFC 1071 2(B)). */
uint64_t csum_mem(const uint8_t *p, size_t len, uint64_t sum) {
    while (len >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        sum += (uint64_t)a + b;
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        sum += a;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t a;
        memcpy(&a, p, 2);
        sum += a;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint16_t a = 0;
        memcpy(&a, p, 1);
        sum += a;
    }
    return sum;
}

uint16_t csum_mem_final(uint64_t sum) {
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    return (uint16_t)~csum_fold((uint32_t)((sum & 0xffff) + (sum >> 16)));
}

/* Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header sum already. */
int finish_partial_csum(uint8_t *pkt, size_t len, const vnet_hdr *h) {
    size_t start = h->csum_start, field = (size_t)h->csum_start + h->csum_offset;
    if (start >= len || field + 2 > len)
        return 0;
    uint16_t c = csum_mem_final(csum_mem(pkt + start, len - start, 0));
    if (c == 0 && pkt[9] == 17)
        c = 0xffff; /* UDP: 0 means "no checksum" */
    memcpy(pkt + field, &c, 2);
    return 1;
}
