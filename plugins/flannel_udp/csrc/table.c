/* The peer table (subnet -> peer) and the set of peers' public addresses: open addressing,
 * one probe per prefix length present, so a lookup stays O(1) with thousands of peers.
 * Callers hold fp_core.lock. */
#include "fastpath.h"

#include <stdlib.h>

uint32_t mask_of(int plen) { return plen == 0 ? 0 : 0xffffffffu << (32 - plen); }

static uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static route_slot *route_find(route_table *t, uint32_t net, uint8_t plen) {
    size_t mask = t->cap - 1, i = hash32(net ^ ((uint32_t)plen * 0x9e3779b9U)) & mask;
    for (;;) {
        route_slot *s = &t->slots[i];
        if (s->state == SLOT_EMPTY)
            return NULL;
        if (s->state == SLOT_USED && s->net == net && s->plen == plen)
            return s;
        i = (i + 1) & mask;
    }
}

int route_rehash(route_table *t, size_t cap) {
    route_slot *slots = calloc(cap, sizeof(route_slot));
    if (!slots)
        return -1;
    for (size_t j = 0; j < t->cap; j++) {
        route_slot *s = &t->slots[j];
        if (s->state != SLOT_USED)
            continue;
        size_t i = hash32(s->net ^ ((uint32_t)s->plen * 0x9e3779b9U)) & (cap - 1);
        while (slots[i].state == SLOT_USED)
            i = (i + 1) & (cap - 1);
        slots[i] = *s;
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    t->dead = 0;
    return 0;
}

int route_set(route_table *t, uint32_t net, uint8_t plen, uint32_t ip, uint16_t port,
                     uint32_t *old_ip, int *replaced) {
    route_slot *s = route_find(t, net, plen);
    if (s) {
        *old_ip = s->peer_ip;
        *replaced = 1;
        s->peer_ip = ip;
        s->peer_port = port;
        return 0;
    }
    *replaced = 0;
    if ((t->used + t->dead + 1) * 2 > t->cap) {
        size_t cap = t->cap;
        while ((t->used + 1) * 4 > cap)
            cap *= 2;
        if (route_rehash(t, cap) < 0)
            return -1;
    }
    size_t mask = t->cap - 1, i = hash32(net ^ ((uint32_t)plen * 0x9e3779b9U)) & mask;
    while (t->slots[i].state == SLOT_USED)
        i = (i + 1) & mask;
    if (t->slots[i].state == SLOT_DEAD)
        t->dead--;
    t->slots[i] = (route_slot){net, ip, port, plen, SLOT_USED};
    t->used++;
    t->plen_count[plen]++;
    return 0;
}

int route_del(route_table *t, uint32_t net, uint8_t plen, uint32_t *old_ip) {
    route_slot *s = route_find(t, net, plen);
    if (!s)
        return 0;
    *old_ip = s->peer_ip;
    s->state = SLOT_DEAD;
    t->used--;
    t->dead++;
    t->plen_count[plen]--;
    return 1;
}

/* Longest-prefix match: one probe per prefix length present (one with a single SubnetLen). */
route_slot *route_lookup(route_table *t, uint32_t dst) {
    if (t->used == 0)
        return NULL;
    for (int plen = 32; plen >= 0; plen--) {
        if (!t->plen_count[plen])
            continue;
        route_slot *s = route_find(t, dst & mask_of(plen), (uint8_t)plen);
        if (s)
            return s;
    }
    return NULL;
}

source_slot *source_find(source_set *t, uint32_t ip) {
    size_t mask = t->cap - 1, i = hash32(ip) & mask;
    for (;;) {
        source_slot *s = &t->slots[i];
        if (s->state == SLOT_EMPTY)
            return NULL;
        if (s->state == SLOT_USED && s->ip == ip)
            return s;
        i = (i + 1) & mask;
    }
}

int source_rehash(source_set *t, size_t cap) {
    source_slot *slots = calloc(cap, sizeof(source_slot));
    if (!slots)
        return -1;
    for (size_t j = 0; j < t->cap; j++) {
        source_slot *s = &t->slots[j];
        if (s->state != SLOT_USED)
            continue;
        size_t i = hash32(s->ip) & (cap - 1);
        while (slots[i].state == SLOT_USED)
            i = (i + 1) & (cap - 1);
        slots[i] = *s;
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    t->dead = 0;
    return 0;
}

int source_ref(source_set *t, uint32_t ip) {
    source_slot *s = source_find(t, ip);
    if (s) {
        s->refs++;
        return 0;
    }
    if ((t->used + t->dead + 1) * 2 > t->cap) {
        size_t cap = t->cap;
        while ((t->used + 1) * 4 > cap)
            cap *= 2;
        if (source_rehash(t, cap) < 0)
            return -1;
    }
    size_t mask = t->cap - 1, i = hash32(ip) & mask;
    while (t->slots[i].state == SLOT_USED)
        i = (i + 1) & mask;
    if (t->slots[i].state == SLOT_DEAD)
        t->dead--;
    t->slots[i] = (source_slot){ip, 1, SLOT_USED};
    t->used++;
    return 0;
}

void source_unref(source_set *t, uint32_t ip) {
    source_slot *s = source_find(t, ip);
    if (!s)
        return;
    if (--s->refs == 0) {
        s->state = SLOT_DEAD;
        t->used--;
        t->dead++;
    }
}
