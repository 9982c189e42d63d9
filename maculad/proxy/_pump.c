/* maculad.proxy._pump: the relay's data path for piped connections (Linux).

A Pump owns an epoll set and the two sockets of each connection handed to it
(`add`, descriptors the Pump then owns). The event loop watches the epoll
descriptor (`fileno`) and calls `run` when it is readable; `run` takes what is
ready without blocking and moves the bytes in C: read into one scratch buffer,
write straight to the other socket, and keep only what the kernel refused
(at most one read, `bufsize`, per direction; that direction's source is not
read again until it is written). So a chunk crosses the relay with no Python
frame, no object and no allocation, and one Python call serves every socket
that was ready at once.

Sockets are registered edge-triggered for input, output and the peer's
half-close, once, and never modified. A read shorter than the buffer drained
the socket (a new edge comes with new data), unless the peer's FIN was already
reported, so a socket is read until it says EAGAIN only when it was filled.
A direction whose source sent EOF is shut down for writing once its bytes are
out (half-close); a connection is finished when both directions are, or at the
first error of either socket (its errno is reported; the caller closes): a
`run` that finished connections calls `on_finished` with their (id, errno). A
direction reads at most `burst` buffers per `run`: a connection that had more
is run again by the next `run`, asked for with `on_more`, so the loop between
two `run`s serves everything else. `run` itself returns nothing and makes no
object when nothing finished: the loop can call it directly.

Byte counts per direction (what the relay exports and the idle sweep watches)
are plain counters read by `counts`. A connection's slot is its id until
`close`, which deregisters and closes both sockets and frees the slot.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 256

typedef struct Pair Pair;

typedef struct {
    Pair *pair;
    int side;
} End;

typedef struct {
    char *pending;            /* bytes read from the source the kernel refused at the sink */
    size_t off, len;          /* pending[off:len] is still to write */
    unsigned long long bytes; /* bytes read from the source */
    int eof;                  /* the source sent EOF */
    int shut;                 /* the sink was shut down for writing */
    unsigned long run;        /* the run that `reads` belongs to */
    int reads;                /* reads left in that run */
} Dir;

struct Pair {
    int fd[2];
    int in[2];    /* side i may have bytes (or EOF) to read */
    int hup[2];   /* side i reported its peer's FIN or an error: read it until it says so */
    int out[2];   /* side i may be written */
    Dir dir[2];   /* dir[i]: from side i to side 1 - i */
    End end[2];
    Py_ssize_t id;
    int done;     /* finished and reported; waits for close */
    int queued;   /* on the again list */
};

typedef struct {
    PyObject_HEAD
    int epfd;
    char *buf;
    size_t bufsize;
    int burst;
    unsigned long runs;       /* runs so far: a direction's read budget is per run */
    Pair **slots;
    Py_ssize_t nslots, used;
    Py_ssize_t *free_ids;
    Py_ssize_t nfree;
    Py_ssize_t *again, nagain, capagain;
    PyObject *finished;    /* list of (id, errno) built by one run, NULL while empty */
    PyObject *on_finished; /* called with that list at the end of the run */
    PyObject *on_more;     /* called when a connection wants another run */
} Pump;

static int finish(Pump *self, Pair *p, int err)
{
    if (p->done)
        return 0;
    p->done = 1;
    if (self->finished == NULL && (self->finished = PyList_New(0)) == NULL)
        return -1;
    PyObject *t = Py_BuildValue("(ni)", p->id, err);
    if (t == NULL)
        return -1;
    int r = PyList_Append(self->finished, t);
    Py_DECREF(t);
    return r;
}

static int queue_again(Pump *self, Pair *p)
{
    if (p->queued)
        return 0;
    if (self->nagain == self->capagain) {
        Py_ssize_t cap = self->capagain ? self->capagain * 2 : 16;
        Py_ssize_t *a = PyMem_Realloc(self->again, (size_t)cap * sizeof(Py_ssize_t));
        if (a == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->again = a;
        self->capagain = cap;
    }
    self->again[self->nagain++] = p->id;
    p->queued = 1;
    return 0;
}

/* Write what the kernel takes of buf[:len] to fd: how much (0 when it takes nothing), or -1 on an error
   (errno). A write the kernel cuts short or refuses clears *writable: the next EPOLLOUT edge sets it. */
static ssize_t send_some(int fd, const char *buf, size_t len, int *writable)
{
    ssize_t w;
    do {
        w = send(fd, buf, len, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        w = 0;
    }
    if ((size_t)w < len)
        *writable = 0;
    return w;
}

/* Move what can move from side i to side 1 - i. -1 only on a Python error (memory). */
static int move(Pump *self, Pair *p, int i)
{
    int src = i, dst = 1 - i;
    Dir *d = &p->dir[i];
    if (d->run != self->runs) {
        d->run = self->runs;
        d->reads = self->burst;
    }
    for (;;) {
        if (d->len > d->off) {
            if (!p->out[dst])
                return 0;
            ssize_t w = send_some(p->fd[dst], d->pending + d->off, d->len - d->off, &p->out[dst]);
            if (w < 0)
                return finish(self, p, errno);
            d->off += (size_t)w;
            if (d->off < d->len)
                return 0;
            PyMem_Free(d->pending);
            d->pending = NULL;
            d->off = d->len = 0;
        }
        if (d->eof) {
            if (!d->shut) {
                d->shut = 1;
                if (shutdown(p->fd[dst], SHUT_WR) < 0 && errno != ENOTCONN)
                    return finish(self, p, errno);
            }
            return 0;
        }
        if (!p->in[src])
            return 0;
        if (d->reads == 0)
            return queue_again(self, p);
        d->reads--;
        ssize_t n = recv(p->fd[src], self->buf, self->bufsize, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                p->in[src] = 0;
                return 0;
            }
            return finish(self, p, errno);
        }
        if (n == 0) {
            d->eof = 1;
            p->in[src] = 0;
            continue;
        }
        d->bytes += (unsigned long long)n;
        if ((size_t)n < self->bufsize && !p->hup[src])
            p->in[src] = 0; /* drained: new bytes come with a new edge */
        size_t sent = 0;
        if (p->out[dst]) {
            ssize_t w = send_some(p->fd[dst], self->buf, (size_t)n, &p->out[dst]);
            if (w < 0)
                return finish(self, p, errno);
            sent = (size_t)w;
        }
        if (sent < (size_t)n) {
            size_t rest = (size_t)n - sent;
            d->pending = PyMem_Malloc(rest);
            if (d->pending == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            memcpy(d->pending, self->buf + sent, rest);
            d->off = 0;
            d->len = rest;
            p->out[dst] = 0;
            return 0;
        }
    }
}

static int pump_pair(Pump *self, Pair *p)
{
    for (int i = 0; i < 2; i++) {
        if (p->done)
            return 0;
        if (move(self, p, i) < 0)
            return -1;
    }
    if (!p->done && p->dir[0].shut && p->dir[1].shut && p->dir[0].len == 0 && p->dir[1].len == 0)
        return finish(self, p, 0);
    return 0;
}

/* The connection a Python id names (NULL with KeyError/TypeError set); its id in *idp. */
static Pair *lookup(Pump *self, PyObject *arg, Py_ssize_t *idp)
{
    Py_ssize_t id = PyLong_AsSsize_t(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    *idp = id;
    if (id < 0 || id >= self->nslots || self->slots[id] == NULL) {
        PyErr_Format(PyExc_KeyError, "no connection %zd in this pump", id);
        return NULL;
    }
    return self->slots[id];
}

static void release(Pump *self, Pair *p)
{
    for (int s = 0; s < 2; s++) {
        if (p->fd[s] >= 0) {
            struct epoll_event ev = {0};
            epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[s], &ev);
            close(p->fd[s]);
            p->fd[s] = -1;
        }
        PyMem_Free(p->dir[s].pending);
        p->dir[s].pending = NULL;
    }
    PyMem_Free(p);
}

/* -- the type */

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"bufsize", "burst", "on_finished", "on_more", NULL};
    Py_ssize_t bufsize;
    int burst;
    PyObject *on_finished, *on_more;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "niOO", kwlist, &bufsize, &burst, &on_finished, &on_more))
        return -1;
    if (bufsize < 1 || burst < 1) {
        PyErr_SetString(PyExc_ValueError, "bufsize and burst must be positive");
        return -1;
    }
    if (!PyCallable_Check(on_finished) || !PyCallable_Check(on_more)) {
        PyErr_SetString(PyExc_TypeError, "on_finished and on_more must be callable");
        return -1;
    }
    if (self->epfd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Pump is already initialised");
        return -1;
    }
    self->buf = PyMem_Malloc((size_t)bufsize);
    if (self->buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->bufsize = (size_t)bufsize;
    self->burst = burst;
    Py_INCREF(on_finished);
    self->on_finished = on_finished;
    Py_INCREF(on_more);
    self->on_more = on_more;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Pump *self = (Pump *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->epfd = -1;
    return (PyObject *)self;
}

static void close_all(Pump *self)
{
    for (Py_ssize_t i = 0; i < self->nslots; i++) {
        if (self->slots[i] != NULL) {
            release(self, self->slots[i]);
            self->slots[i] = NULL;
        }
    }
    self->used = 0;
    self->nfree = 0;
    self->nslots = 0;
    self->nagain = 0;
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
}

static int Pump_traverse(Pump *self, visitproc visit, void *arg)
{
    Py_VISIT(self->finished);
    Py_VISIT(self->on_finished);
    Py_VISIT(self->on_more);
    return 0;
}

static int Pump_clear(Pump *self)
{
    Py_CLEAR(self->finished);
    Py_CLEAR(self->on_finished);
    Py_CLEAR(self->on_more);
    return 0;
}

static void Pump_dealloc(Pump *self)
{
    PyObject_GC_UnTrack(self);
    close_all(self);
    PyMem_Free(self->slots);
    PyMem_Free(self->free_ids);
    PyMem_Free(self->again);
    PyMem_Free(self->buf);
    Pump_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_open(Pump *self)
{
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the pump is closed");
        return -1;
    }
    return 0;
}

static PyObject *Pump_fileno(Pump *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->epfd);
}

static PyObject *Pump_add(Pump *self, PyObject *args)
{
    int a, b;
    if (!PyArg_ParseTuple(args, "ii", &a, &b))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    if (a < 0 || b < 0 || a == b) {
        PyErr_SetString(PyExc_ValueError, "two distinct open descriptors are needed");
        return NULL;
    }
    Py_ssize_t id;
    if (self->nfree > 0) {
        id = self->free_ids[--self->nfree];
    } else {
        Py_ssize_t n = self->nslots + 1;
        Pair **s = PyMem_Realloc(self->slots, (size_t)n * sizeof(Pair *));
        if (s == NULL)
            return PyErr_NoMemory();
        self->slots = s;
        Py_ssize_t *f = PyMem_Realloc(self->free_ids, (size_t)n * sizeof(Py_ssize_t));
        if (f == NULL)
            return PyErr_NoMemory();
        self->free_ids = f;
        id = self->nslots;
        self->slots[id] = NULL;
        self->nslots = n;
    }
    Pair *p = PyMem_Calloc(1, sizeof(Pair));
    if (p == NULL) {
        self->free_ids[self->nfree++] = id;
        return PyErr_NoMemory();
    }
    p->id = id;
    p->fd[0] = a;
    p->fd[1] = b;
    for (int s = 0; s < 2; s++) {
        p->end[s].pair = p;
        p->end[s].side = s;
        p->out[s] = 1;
        struct epoll_event ev = {0};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.ptr = &p->end[s];
        int flags = fcntl(p->fd[s], F_GETFL);
        if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(p->fd[s], F_SETFL, flags | O_NONBLOCK) < 0)
            || epoll_ctl(self->epfd, EPOLL_CTL_ADD, p->fd[s], &ev) < 0) {
            int e = errno;
            if (s == 1) {
                struct epoll_event dummy = {0};
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[0], &dummy);
            }
            PyMem_Free(p);
            self->free_ids[self->nfree++] = id;
            errno = e;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    self->slots[id] = p;
    self->used++;
    return PyLong_FromSsize_t(id);
}

static PyObject *Pump_run(Pump *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    self->runs++;
    struct epoll_event events[MAX_EVENTS];
    /* the connections that had more last time, then what is ready now */
    Py_ssize_t nagain = self->nagain;
    Py_ssize_t *again = NULL;
    if (nagain) {
        again = PyMem_Malloc((size_t)nagain * sizeof(Py_ssize_t));
        if (again == NULL)
            return PyErr_NoMemory();
        memcpy(again, self->again, (size_t)nagain * sizeof(Py_ssize_t));
        self->nagain = 0;
        for (Py_ssize_t k = 0; k < nagain; k++) {
            Py_ssize_t id = again[k];
            if (id < self->nslots && self->slots[id] != NULL)
                self->slots[id]->queued = 0;
        }
    }
    int n;
    do {
        n = epoll_wait(self->epfd, events, MAX_EVENTS, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        PyMem_Free(again);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int failed = 0;
    for (Py_ssize_t k = 0; k < nagain && !failed; k++) {
        Py_ssize_t id = again[k];
        if (id < self->nslots && self->slots[id] != NULL && !self->slots[id]->done)
            failed = pump_pair(self, self->slots[id]) < 0;
    }
    PyMem_Free(again);
    for (int k = 0; k < n && !failed; k++) {
        End *e = events[k].data.ptr;
        Pair *p = e->pair;
        if (p->done)
            continue;
        uint32_t m = events[k].events;
        int s = e->side;
        if (m & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            p->in[s] = 1;
        if (m & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            p->hup[s] = 1;
        if (m & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            p->out[s] = 1;
        failed = pump_pair(self, p) < 0;
    }
    if (failed)
        return NULL;
    /* the callbacks may close connections or shut the pump down (which drops them): hold them meanwhile */
    PyObject *finished = self->finished;
    if (finished != NULL && self->on_finished != NULL) {
        self->finished = NULL;
        PyObject *cb = Py_NewRef(self->on_finished);
        PyObject *r = PyObject_CallOneArg(cb, finished);
        Py_DECREF(cb);
        Py_DECREF(finished);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    if (self->nagain && self->on_more != NULL) {
        PyObject *cb = Py_NewRef(self->on_more);
        PyObject *r = PyObject_CallNoArgs(cb);
        Py_DECREF(cb);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *Pump_counts(Pump *self, PyObject *arg)
{
    Py_ssize_t id;
    Pair *p = lookup(self, arg, &id);
    if (p == NULL)
        return NULL;
    return Py_BuildValue("(KK)", p->dir[0].bytes, p->dir[1].bytes);
}

static PyObject *Pump_pending(Pump *self, PyObject *arg)
{
    Py_ssize_t id;
    Pair *p = lookup(self, arg, &id);
    if (p == NULL)
        return NULL;
    return PyLong_FromSize_t((p->dir[0].len - p->dir[0].off) + (p->dir[1].len - p->dir[1].off));
}

static PyObject *Pump_close(Pump *self, PyObject *arg)
{
    Py_ssize_t id;
    Pair *p = lookup(self, arg, &id);
    if (p == NULL)
        return NULL;
    PyObject *r = Py_BuildValue("(KK)", p->dir[0].bytes, p->dir[1].bytes);
    if (r == NULL)
        return NULL;
    self->slots[id] = NULL;
    self->free_ids[self->nfree++] = id;
    self->used--;
    release(self, p);
    return r;
}

static PyObject *Pump_shutdown(Pump *self, PyObject *unused)
{
    close_all(self);
    Pump_clear(self);
    Py_RETURN_NONE;
}

static Py_ssize_t Pump_len(Pump *self)
{
    return self->used;
}

static PyMethodDef Pump_methods[] = {
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS, "The epoll descriptor to watch for readability."},
    {"add", (PyCFunction)Pump_add, METH_VARARGS,
     "add(client_fd, backend_fd) -> id: relay between two connected non-blocking sockets the pump now owns."},
    {"run", (PyCFunction)Pump_run, METH_NOARGS,
     "run(): move what is ready; then on_finished([(id, errno)]) for the connections it finished (errno 0: "
     "both ways at EOF), and on_more() when one had more than `burst` buffers and wants another run."},
    {"counts", (PyCFunction)Pump_counts, METH_O, "counts(id) -> (bytes from the client, bytes from the backend)."},
    {"pending", (PyCFunction)Pump_pending, METH_O, "pending(id) -> bytes read but not yet written, both ways."},
    {"close", (PyCFunction)Pump_close, METH_O, "close(id) -> final counts: close both sockets, free the id."},
    {"shutdown", (PyCFunction)Pump_shutdown, METH_NOARGS, "Close every connection and the epoll descriptor."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Pump_as_sequence = {
    .sq_length = (lenfunc)Pump_len,
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "maculad.proxy._pump.Pump",
    .tp_doc = "Pump(bufsize, burst, on_finished, on_more): relays piped connections in C (see the module docstring).",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Pump_traverse,
    .tp_clear = (inquiry)Pump_clear,
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_as_sequence = &Pump_as_sequence,
};

static struct PyModuleDef pump_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "maculad.proxy._pump",
    .m_doc = "The relay's data path for piped connections (Linux epoll).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__pump(void)
{
    if (PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&pump_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
