/*
 * The udp backend's C data path, shared declarations. The data path itself knows nothing
 * of Python: module.c wraps an fp_core in a Python object and releases the GIL around it.
 *
 * Wire format (as Go flanneld's udp backend): the UDP payload is the bare IPv4 packet.
 */
#ifndef FLANNEL_UDP_FASTPATH_H
#define FLANNEL_UDP_FASTPATH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* recvmmsg/sendmmsg; setup.py passes it too */
#endif
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#define BATCH 32
#define BUF_SIZE 65536
#define ICMP_TTL 8
#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_ECN 0x80
#define RBUF_SIZE (BUF_SIZE + 64)
#define OUT_MAX 128
#define ARENA_SIZE (256 * 1024)

/* ---------------------------------------------------------------- packets (packet.c) */

typedef struct {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
} vnet_hdr;

uint32_t get_u32(const uint8_t *p);
uint16_t csum_fold(uint32_t sum);
uint32_t csum_add(uint32_t sum, const uint8_t *data, size_t len);
uint64_t csum_mem(const uint8_t *p, size_t len, uint64_t sum);
uint16_t csum_mem_final(uint64_t sum);
int decrement_ttl(uint8_t *pkt);
size_t build_net_unreachable(const uint8_t *pkt, size_t len, uint32_t src, uint8_t *out);
void vnet_parse(const uint8_t *p, vnet_hdr *h);
int finish_partial_csum(uint8_t *pkt, size_t len, const vnet_hdr *h);

/* ---------------------------------------------------------------- tables (table.c) */

enum { SLOT_EMPTY = 0, SLOT_USED = 1, SLOT_DEAD = 2 };

typedef struct {
    uint32_t net; /* host order, masked */
    uint32_t peer_ip; /* host order */
    uint16_t peer_port;
    uint8_t plen;
    uint8_t state;
} route_slot;

typedef struct {
    uint32_t ip;
    uint32_t refs;
    uint8_t state;
} source_slot;

typedef struct {
    route_slot *slots;
    size_t cap, used, dead;
    uint32_t plen_count[33];
} route_table;

typedef struct {
    source_slot *slots;
    size_t cap, used, dead;
} source_set;

int route_set(route_table *t, uint32_t net, uint8_t plen, uint32_t ip, uint16_t port,
              uint32_t *old_ip, int *replaced);
int route_del(route_table *t, uint32_t net, uint8_t plen, uint32_t *old_ip);
int route_rehash(route_table *t, size_t cap);
route_slot *route_lookup(route_table *t, uint32_t dst);
source_slot *source_find(source_set *t, uint32_t ip);
int source_rehash(source_set *t, size_t cap);
int source_ref(source_set *t, uint32_t ip);
void source_unref(source_set *t, uint32_t ip);
uint32_t mask_of(int plen);

/* ---------------------------------------------------------------- counters */

enum {
    C_TUN_RX_PACKETS, C_TUN_RX_BYTES, C_UDP_TX_PACKETS, C_UDP_TX_BYTES,
    C_UDP_RX_PACKETS, C_UDP_RX_BYTES, C_TUN_TX_PACKETS, C_TUN_TX_BYTES,
    C_DROP_NO_ROUTE, C_DROP_TTL_EGRESS, C_DROP_TTL_INGRESS, C_DROP_UNKNOWN_SOURCE,
    C_DROP_MALFORMED, C_DROP_NOT_IPV4, C_DROP_SEND_ERROR, C_DROP_TUN_WRITE_ERROR,
    C_ICMP_UNREACHABLE, C_LAST_UNKNOWN_SOURCE, C_TUN_TX_WRITES, C_TUN_RX_SEGMENTS, C_COUNT
};

extern const char *const counter_names[C_COUNT];

/* ---------------------------------------------------------------- the data path state */

typedef struct {
    int tun_fd, sock_fd, stop_fd;
    uint32_t tun_addr; /* host order, ICMP source */
    pthread_mutex_t lock; /* guards routes and sources */
    route_table routes;
    source_set sources;
    int running, stopping, offload, udp_gso;
    int alive[2];
    pthread_t threads[2];
    uint64_t counters[C_COUNT];
} fp_core;

/* Each counter is written by exactly one worker thread; Python reads them relaxed. */
#define BUMP(fw, c, n) \
    __atomic_store_n(&(fw)->counters[c], (fw)->counters[c] + (n), __ATOMIC_RELAXED)

/* ---------------------------------------------------------------- offload (offload.c) */

/* UDP GSO (UDP_SEGMENT): one message carries several equal-size datagrams, the kernel
 * splits them; ~44 segments of a TCP super-packet cost one trip through the UDP stack. */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define UDP_GSO_MAX_BYTES 65000 /* < 65507, the largest UDP payload */
#define UDP_GSO_MAX_SEGS 64

typedef struct {
    struct mmsghdr msgs[OUT_MAX];
    struct iovec iov[OUT_MAX];
    struct sockaddr_in addrs[OUT_MAX];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[OUT_MAX];
    uint16_t segs[OUT_MAX]; /* datagrams in message k (1 = no GSO) */
    int n;
    uint8_t *arena;
    size_t used;
} outq;

typedef struct {
    uint8_t buf[VNET_HDR_LEN + 65536];
    size_t len;  /* IP packet length in buf + VNET_HDR_LEN */
    size_t mss;  /* payload size of the first segment */
    size_t hlen; /* IP + TCP header length */
    uint32_t next_seq;
    unsigned count;
    int closed; /* last merged segment was short or had PSH: no more merging */
} coalescer;

void out_flush(fp_core *fw, outq *q);
void out_add(fp_core *fw, outq *q, uint8_t *data, size_t len, uint32_t ip, uint16_t port,
             uint16_t segs, uint16_t gso_size);
int segment_tcp4(fp_core *fw, outq *q, const uint8_t *pkt, size_t len, size_t mss, uint32_t ip,
                 uint16_t port);
void co_write(fp_core *fw, coalescer *co);
void co_push(fp_core *fw, coalescer *co, const uint8_t *pkt, size_t len);

/* ---------------------------------------------------------------- workers (workers.c) */

void *fp_tun_to_udp(void *arg);
void *fp_udp_to_tun(void *arg);

#endif
