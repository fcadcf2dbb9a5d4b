/*
 * WallRate: store.rate(name) of a write-behind store (sqlite://, redis://),
 * C side.  tallies/stores/_wbrates.py has the design and installs the
 * reading methods (count, per_second, total, reset) on this type.
 *
 * The pending events of this process are the ring of _ring.h, on the WALL
 * clock (every machine cuts buckets the same way): CLOCK_REALTIME_COARSE
 * when the resolution is at least 10 of its ticks, else CLOCK_REALTIME.  An
 * increment is what RateCounter.increment() is: a clock read, a compare and
 * one checked add.  A flush calls _drain(): the events counted since the
 * previous drain, per bucket ({slot: delta}, from the marks: a bucket's
 * events are the next mark minus its own, the newest bucket's the total
 * minus its mark), after which the ring restarts from 0 at its newest bucket
 * (tlr_reset).  Events in buckets older than the ring (more than a window
 * before the newest, between two drains) are put in the bucket just before
 * the oldest one the ring still knows (latest - nb): outside the window, in
 * the total.
 * With a GIL the drain is one step for every thread; without one, an
 * increment landing between the drain's read and its reset is given to the
 * newest bucket (it happened at that moment), never lost.
 *
 * `clock`: None (the wall clock) or a callable returning integer
 * nanoseconds (tests drive it), called by every increment.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#include "_cells.h"
#include "_module.h"
#include "_pyargs.h"
#include "_counter_methods.h"
#include "_ring.h"

#define NS 1000000000LL

typedef struct {
    PyObject_HEAD
    tlr_ring ring;
    int64_t res_ns;
    clockid_t clk;
    PyObject *clock;
    PyObject *closed; /* NULL, or the message of updates after close */
    /* the Python side's attributes (_wbrates.py): members, not a __dict__,
     * so that a method call needs no instance-dict check */
    PyObject *wb, *name, *spec, *sp, *is_closed;
    PyObject *weakrefs;
} WallRateObject;

static PyObject *
WallRate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    long long window_ns, res_ns;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "WallRate(window_ns, res_ns) takes no keywords");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "LL:WallRate", &window_ns, &res_ns)) {
        return NULL;
    }
    if (res_ns < 1 || window_ns < res_ns) {
        PyErr_SetString(PyExc_ValueError, "WallRate: out of range");
        return NULL;
    }
    int64_t nb = (int64_t)((window_ns + res_ns - 1) / res_ns);
    if (nb > TLR_MAX_BUCKETS) {
        PyErr_SetString(PyExc_ValueError, "WallRate: too many buckets");
        return NULL;
    }
    WallRateObject *self = (WallRateObject *)type->tp_alloc(type, 0);
    if (self == NULL || tlr_init_owned((PyObject *)self, &self->ring, nb) == NULL) {
        return NULL;
    }
    self->res_ns = res_ns;
    self->clk = tl_bucket_clock(res_ns, 1);
    return (PyObject *)self;
}

#define WALL_RATE_REFS(X) \
    X(self->clock) X(self->closed) X(self->wb) X(self->name) X(self->spec) X(self->sp) \
    X(self->is_closed)
TL_GC_FUNCS(WallRate, WallRateObject, WALL_RATE_REFS)

static void
WallRate_dealloc(WallRateObject *self)
{
    tlr_free(&self->ring);
    tl_dealloc((PyObject *)self, (inquiry)WallRate_clear, &self->weakrefs);
}

static TL_COLD int
user_slot(WallRateObject *self, int64_t *slot)
{
    PyObject *v = PyObject_CallNoArgs(self->clock);
    if (v == NULL) {
        return -1;
    }
    int64_t ns;
    int r = to_int64(v, "clock", &ns);
    Py_DECREF(v);
    if (r < 0) {
        return -1;
    }
    *slot = tlr_floordiv(ns, self->res_ns);
    return 0;
}

static TL_ALWAYS_INLINE int
WallRate_update(WallRateObject *self, int64_t n, int sub, const char *op)
{
    int64_t cur;
    int r;
    if (TL_UNLIKELY(self->closed != NULL)) {
        PyErr_SetObject(PyExc_ValueError, self->closed);
        return -1;
    }
    if (TL_LIKELY(self->clock == NULL || self->clock == Py_None)) {
        struct timespec ts;
        clock_gettime(self->clk, &ts);
        r = tlr_add_ns(&self->ring, (int64_t)ts.tv_sec * NS + (int64_t)ts.tv_nsec, self->res_ns,
                       n, sub, &cur);
    }
    else {
        int64_t slot;
        if (user_slot(self, &slot) < 0) {
            return -1;
        }
        r = tlr_add_slot(&self->ring, slot, n, sub, &cur);
    }
    if (TL_UNLIKELY(r != TL_OK)) {
        return tl_update_failed(r, op, n, "this process's pending delta of the rate");
    }
    return 0;
}

TL_UPDATE_METHODS(WallRate, WallRateObject)

/* Add `d` to out[slot] (a dict of int -> int); 0 or -1. */
static int
put(PyObject *out, int64_t slot, int64_t d)
{
    if (d == 0) {
        return 0;
    }
    PyObject *k = PyLong_FromLongLong((long long)slot);
    if (k == NULL) {
        return -1;
    }
    PyObject *have = PyDict_GetItemWithError(out, k);
    PyObject *v;
    if (have != NULL) {
        PyObject *dv = PyLong_FromLongLong((long long)d);
        v = dv == NULL ? NULL : PyNumber_Add(have, dv);
        Py_XDECREF(dv);
    }
    else {
        v = PyErr_Occurred() ? NULL : PyLong_FromLongLong((long long)d);
    }
    int r = v == NULL ? -1 : PyDict_SetItem(out, k, v);
    Py_XDECREF(v);
    Py_DECREF(k);
    return r;
}

/* The events since the last reset of the ring, per bucket, into `out`;
 * *total_read: the total they add up to.  The caller holds the ring's lock
 * (no mark moves), increments may still add to the total without one. */
static int
per_bucket(tlr_ring *r, PyObject *out, int64_t *total_read, int64_t *latest_out)
{
    int64_t latest = atomic_load_explicit(&r->latest, memory_order_acquire);
    int64_t total = tl_load(&r->total);
    *total_read = total;
    *latest_out = latest;
    if (latest == TLR_NONE) {
        return put(out, 0, total); /* nothing marked: never happens with events */
    }
    int64_t prev_slot = TLR_NONE, prev_mark = 0;
    for (int64_t j = latest - r->nb + 1; j <= latest; j++) {
        tlr_mark *m = &r->marks[tlr_index(r, j)];
        if (atomic_load_explicit(&m->slot, memory_order_relaxed) != j) {
            continue;
        }
        int64_t v = atomic_load_explicit(&m->value, memory_order_relaxed);
        if (prev_slot == TLR_NONE) {
            /* The events before the first mark in the ring: no slot from the
             * ring's oldest to j - 1 has a mark, so none had an event; they
             * all happened in buckets the ring forgot, before its oldest. */
            if (v != 0 && put(out, latest - r->nb, v) < 0) {
                return -1;
            }
        }
        else if (put(out, prev_slot, v - prev_mark) < 0) {
            return -1;
        }
        prev_slot = j;
        prev_mark = v;
    }
    if (prev_slot == TLR_NONE) {
        return put(out, latest, total);
    }
    return put(out, prev_slot, total - prev_mark);
}

/* {slot: count} of the events pending here, read under the ring's lock (what
 * _drain and _items both return), with the total and latest slot it read. */
static PyObject *
pending(WallRateObject *self, int64_t *total, int64_t *latest)
{
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    tlr_lock(&self->ring);
    int r = per_bucket(&self->ring, out, total, latest);
    tlr_unlock(&self->ring);
    if (r < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* _items() -> {slot: count}: the events pending here (nothing taken). */
static PyObject *
WallRate_items(WallRateObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t total, latest;
    return pending(self, &total, &latest);
}

/* _drain() -> {slot: delta}: take the events counted since the last drain. */
static PyObject *
WallRate_drain(WallRateObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t total, latest;
    PyObject *out = pending(self, &total, &latest);
    if (out == NULL) {
        return NULL;
    }
    int64_t boundary = atomic_load_explicit(&self->ring.boundary, memory_order_relaxed);
    int64_t taken = tlr_reset(&self->ring, latest, boundary);
    if (taken != total && put(out, latest, taken - total) < 0) { /* raced increments */
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* _close(message): updates raise ValueError(message) from now on. */
static PyObject *
WallRate_close(WallRateObject *self, PyObject *message)
{
    Py_XSETREF(self->closed, Py_NewRef(message));
    Py_RETURN_NONE;
}

/* _restart(): forget every pending event (a forked child: they are the parent's). */
static PyObject *
WallRate_restart(WallRateObject *self, PyObject *Py_UNUSED(ignored))
{
    atomic_store(&self->ring.lock, 0);
    (void)tlr_reset(&self->ring, TLR_NONE, INT64_MIN);
    Py_RETURN_NONE;
}

static PyMemberDef WallRate_members[] = {
    {"clock", T_OBJECT, offsetof(WallRateObject, clock), 0,
     "None (the wall clock) or a callable returning integer nanoseconds."},
    {"_wb", T_OBJECT, offsetof(WallRateObject, wb), 0, NULL},
    {"_name", T_OBJECT, offsetof(WallRateObject, name), 0, NULL},
    {"_spec", T_OBJECT, offsetof(WallRateObject, spec), 0, NULL},
    {"_sp", T_OBJECT, offsetof(WallRateObject, sp), 0, NULL},
    {"_closed", T_OBJECT, offsetof(WallRateObject, is_closed), 0, NULL},
    TL_WEAKLIST_MEMBER(WallRateObject, weakrefs),
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef WallRate_methods[] = {
    TL_EVENT_METHOD_DEFS(WallRate, "", "", " (this process's pending bucket; no I/O)"),
    {"_drain", (PyCFunction)WallRate_drain, METH_NOARGS, NULL},
    {"_items", (PyCFunction)WallRate_items, METH_NOARGS, NULL},
    {"_close_with", (PyCFunction)WallRate_close, METH_O, NULL},
    {"_restart", (PyCFunction)WallRate_restart, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot WallRate_slots[] = {
    {Py_tp_doc, "A write-behind store's rate (see tallies.stores._wbrates)."},
    TL_GC_SLOTS(WallRate),
    {Py_tp_methods, WallRate_methods},
    {Py_tp_members, WallRate_members},
    {0, NULL},
};

TL_TYPE_SPEC(WallRate, "tallies.stores.BufferedRate", sizeof(WallRateObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

TL_ONE_TYPE_EXEC(wallrate, WallRate, TL_WALL_RATE)
