/*
 * flannel_udp._fastpath: the Python face of the C data path. A Forwarder owns an fp_core
 * (fastpath.h); start() runs the two workers (workers.c) without the GIL; the peer table
 * is updated under fp_core.lock, which a worker holds only per lookup or batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fastpath.h"

const char *const counter_names[C_COUNT] = {
    "tun_rx_packets", "tun_rx_bytes", "udp_tx_packets", "udp_tx_bytes",
    "udp_rx_packets", "udp_rx_bytes", "tun_tx_packets", "tun_tx_bytes",
    "drop_no_route", "drop_ttl_egress", "drop_ttl_ingress", "drop_unknown_source",
    "drop_malformed", "drop_not_ipv4", "drop_send_error", "drop_tun_write_error",
    "icmp_unreachable", "last_unknown_source", "tun_tx_writes", "tun_rx_segments",
};

typedef struct {
    PyObject_HEAD
    fp_core core;
} Forwarder;

static int Forwarder_init(Forwarder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tun_fd", "sock_fd", "tun_addr", "offload", NULL};
    unsigned long tun_addr;
    int offload = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iik|$p", kwlist, &self->core.tun_fd,
                                     &self->core.sock_fd, &tun_addr, &offload))
        return -1;
    if (self->core.running) {
        PyErr_SetString(PyExc_RuntimeError, "forwarder is running; stop() it first");
        return -1;
    }
    self->core.tun_addr = (uint32_t)tun_addr;
    self->core.offload = offload;
    self->core.udp_gso = offload;
    if (self->core.stop_fd <= 0) {
        self->core.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (self->core.stop_fd < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    if (!self->core.routes.slots) {
        self->core.routes.cap = 64;
        self->core.routes.slots = calloc(self->core.routes.cap, sizeof(route_slot));
        self->core.sources.cap = 64;
        self->core.sources.slots = calloc(self->core.sources.cap, sizeof(source_slot));
        if (!self->core.routes.slots || !self->core.sources.slots) {
            PyErr_NoMemory();
            return -1;
        }
        pthread_mutex_init(&self->core.lock, NULL);
    }
    return 0;
}

static PyObject *Forwarder_stop(Forwarder *self, PyObject *unused);

static void Forwarder_dealloc(Forwarder *self) {
    if (self->core.running) {
        PyObject *r = Forwarder_stop(self, NULL);
        Py_XDECREF(r);
    }
    if (self->core.stop_fd > 0)
        close(self->core.stop_fd);
    if (self->core.routes.slots) {
        free(self->core.routes.slots);
        free(self->core.sources.slots);
        pthread_mutex_destroy(&self->core.lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_net(uint32_t net, int plen, uint32_t *out) {
    if (plen < 0 || plen > 32) {
        PyErr_Format(PyExc_ValueError, "prefix length %d is not in 0..32", plen);
        return -1;
    }
    *out = net & mask_of(plen);
    return 0;
}

static PyObject *Forwarder_set_route(Forwarder *self, PyObject *args) {
    unsigned long net, ip;
    int plen, port;
    uint32_t masked, old_ip = 0;
    int replaced = 0, rc;
    if (!PyArg_ParseTuple(args, "kiki", &net, &plen, &ip, &port))
        return NULL;
    if (parse_net((uint32_t)net, plen, &masked) < 0)
        return NULL;
    if (port < 1 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d is not in 1..65535", port);
        return NULL;
    }
    pthread_mutex_lock(&self->core.lock);
    rc = route_set(&self->core.routes, masked, (uint8_t)plen, (uint32_t)ip, (uint16_t)port, &old_ip,
                   &replaced);
    if (rc == 0 && (!replaced || old_ip != (uint32_t)ip)) {
        rc = source_ref(&self->core.sources, (uint32_t)ip);
        if (rc == 0 && replaced)
            source_unref(&self->core.sources, old_ip);
    }
    pthread_mutex_unlock(&self->core.lock);
    if (rc < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Forwarder_del_route(Forwarder *self, PyObject *args) {
    unsigned long net;
    int plen, found;
    uint32_t masked, old_ip = 0;
    if (!PyArg_ParseTuple(args, "ki", &net, &plen))
        return NULL;
    if (parse_net((uint32_t)net, plen, &masked) < 0)
        return NULL;
    pthread_mutex_lock(&self->core.lock);
    found = route_del(&self->core.routes, masked, (uint8_t)plen, &old_ip);
    if (found)
        source_unref(&self->core.sources, old_ip);
    if (self->core.routes.dead > self->core.routes.cap / 4)
        route_rehash(&self->core.routes, self->core.routes.cap);
    if (self->core.sources.dead > self->core.sources.cap / 4)
        source_rehash(&self->core.sources, self->core.sources.cap);
    pthread_mutex_unlock(&self->core.lock);
    return PyBool_FromLong(found);
}

static PyObject *Forwarder_lookup(Forwarder *self, PyObject *args) {
    unsigned long dst;
    PyObject *result;
    if (!PyArg_ParseTuple(args, "k", &dst))
        return NULL;
    pthread_mutex_lock(&self->core.lock);
    route_slot *rt = route_lookup(&self->core.routes, (uint32_t)dst);
    if (rt)
        result = Py_BuildValue("(kH)", (unsigned long)rt->peer_ip, rt->peer_port);
    else
        result = (Py_INCREF(Py_None), Py_None);
    pthread_mutex_unlock(&self->core.lock);
    return result;
}

static PyObject *Forwarder_is_allowed_source(Forwarder *self, PyObject *args) {
    unsigned long ip;
    int found;
    if (!PyArg_ParseTuple(args, "k", &ip))
        return NULL;
    pthread_mutex_lock(&self->core.lock);
    found = source_find(&self->core.sources, (uint32_t)ip) != NULL;
    pthread_mutex_unlock(&self->core.lock);
    return PyBool_FromLong(found);
}

static PyObject *Forwarder_route_count(Forwarder *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(self->core.routes.used);
}

static PyObject *Forwarder_start(Forwarder *self, PyObject *unused) {
    (void)unused;
    if (self->core.running) {
        PyErr_SetString(PyExc_RuntimeError, "forwarder already running");
        return NULL;
    }
    uint64_t drain;
    while (read(self->core.stop_fd, &drain, sizeof(drain)) > 0) {
    }
    self->core.stopping = 0;
    self->core.alive[0] = self->core.alive[1] = 1;
    if (pthread_create(&self->core.threads[0], NULL, fp_tun_to_udp, &self->core) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot start the TUN->UDP thread");
        return NULL;
    }
    if (pthread_create(&self->core.threads[1], NULL, fp_udp_to_tun, &self->core) != 0) {
        __atomic_store_n(&self->core.stopping, 1, __ATOMIC_RELAXED);
        pthread_join(self->core.threads[0], NULL);
        PyErr_SetString(PyExc_OSError, "cannot start the UDP->TUN thread");
        return NULL;
    }
    self->core.running = 1;
    Py_RETURN_NONE;
}

static PyObject *Forwarder_stop(Forwarder *self, PyObject *unused) {
    (void)unused;
    if (!self->core.running)
        Py_RETURN_NONE;
    uint64_t one = 1;
    __atomic_store_n(&self->core.stopping, 1, __ATOMIC_RELAXED);
    if (write(self->core.stop_fd, &one, sizeof(one)) < 0) {
        /* the flag alone stops the workers within one poll timeout */
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->core.threads[0], NULL);
    pthread_join(self->core.threads[1], NULL);
    Py_END_ALLOW_THREADS
    self->core.running = 0;
    Py_RETURN_NONE;
}

static PyObject *Forwarder_stats(Forwarder *self, PyObject *unused) {
    (void)unused;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (int i = 0; i < C_COUNT; i++) {
        uint64_t value = __atomic_load_n(&self->core.counters[i], __ATOMIC_RELAXED);
        PyObject *v = PyLong_FromUnsignedLongLong(value);
        if (!v || PyDict_SetItemString(d, counter_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Forwarder_running(Forwarder *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->core.running);
}

static PyObject *Forwarder_alive(Forwarder *self, void *closure) {
    (void)closure;
    int alive = __atomic_load_n(&self->core.alive[0], __ATOMIC_ACQUIRE) &&
                __atomic_load_n(&self->core.alive[1], __ATOMIC_ACQUIRE);
    return PyBool_FromLong(self->core.running && alive);
}

static PyMethodDef Forwarder_methods[] = {
    {"set_route", (PyCFunction)Forwarder_set_route, METH_VARARGS,
     "set_route(net, prefixlen, peer_ip, peer_port): add or replace a peer subnet"},
    {"del_route", (PyCFunction)Forwarder_del_route, METH_VARARGS,
     "del_route(net, prefixlen) -> bool: remove a peer subnet"},
    {"lookup", (PyCFunction)Forwarder_lookup, METH_VARARGS,
     "lookup(dst) -> (peer_ip, peer_port) | None: longest-prefix match"},
    {"is_allowed_source", (PyCFunction)Forwarder_is_allowed_source, METH_VARARGS,
     "is_allowed_source(ip) -> bool: is ip a known peer's public address"},
    {"route_count", (PyCFunction)Forwarder_route_count, METH_NOARGS, "number of peer subnets"},
    {"start", (PyCFunction)Forwarder_start, METH_NOARGS, "start the worker threads"},
    {"stop", (PyCFunction)Forwarder_stop, METH_NOARGS, "stop and join the worker threads"},
    {"stats", (PyCFunction)Forwarder_stats, METH_NOARGS, "counters as a dict"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Forwarder_getset[] = {
    {"running", (getter)Forwarder_running, NULL, "started and not yet stopped", NULL},
    {"alive", (getter)Forwarder_alive, NULL, "both worker threads are still looping", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flannel_udp._fastpath.Forwarder",
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Forwarder(tun_fd, sock_fd, tun_addr, *, offload=False): the C data path between a "
              "TUN and a UDP socket; offload=True when the TUN has IFF_VNET_HDR and TSO4",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Forwarder_init,
    .tp_dealloc = (destructor)Forwarder_dealloc,
    .tp_methods = Forwarder_methods,
    .tp_getset = Forwarder_getset,
};

/* ---------------------------------------------------------------- module functions */

static PyObject *py_decrement_ttl(PyObject *mod, PyObject *args) {
    Py_buffer buf;
    PyObject *out = NULL;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*", &buf))
        return NULL;
    if (buf.len < 20) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_ValueError, "packet of %zd bytes is shorter than an IPv4 header",
                     buf.len);
        return NULL;
    }
    out = PyBytes_FromStringAndSize(buf.buf, buf.len);
    PyBuffer_Release(&buf);
    if (!out)
        return NULL;
    if (!decrement_ttl((uint8_t *)PyBytes_AS_STRING(out))) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyObject *py_net_unreachable(PyObject *mod, PyObject *args) {
    Py_buffer buf;
    unsigned long src;
    uint8_t out[600];
    size_t len;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*k", &buf, &src))
        return NULL;
    len = buf.len >= 20 ? build_net_unreachable(buf.buf, (size_t)buf.len, (uint32_t)src, out) : 0;
    PyBuffer_Release(&buf);
    if (!len)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)len);
}

static PyMethodDef module_methods[] = {
    {"decrement_ttl", py_decrement_ttl, METH_VARARGS,
     "decrement_ttl(packet) -> bytes | None: TTL - 1 with RFC 1624 checksum; None = drop"},
    {"net_unreachable", py_net_unreachable, METH_VARARGS,
     "net_unreachable(packet, src) -> bytes | None: ICMP type 3 code 0 for packet"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_fastpath", "C data path of the flannel udp backend", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&ForwarderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Py_INCREF(&ForwarderType);
    if (PyModule_AddObject(m, "Forwarder", (PyObject *)&ForwarderType) < 0) {
        Py_DECREF(&ForwarderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "BUF_SIZE", BUF_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
