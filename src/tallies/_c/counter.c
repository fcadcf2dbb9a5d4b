/*
 * counter.c: Counter and ShardedCounter (part of tallies._tallies: _module.h),
 * thin Python types over the cell engine in _cells.h (read that header first).
 *
 * With a GIL every method runs start to finish while holding it, so the cells
 * are updated with the engine's `_serial` arithmetic (a plain load and store:
 * as cheap as the `l.clear()` floor allows).  With Py_GIL_DISABLED the same
 * methods use the engine's atomic compare-and-swap loops, and the module says
 * so to the interpreter with Py_MOD_GIL_NOT_USED.  Arguments are converted to
 * int64 before a cell is touched, so a bad argument changes nothing.  The
 * update methods (increment, decrement, +=, -=) are generated from each
 * type's *_update by _counter_methods.h, which BufferedCounter and the shm://
 * Cell use too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <structmember.h>
#include <time.h>

#include "_cells.h"
#include "_module.h"
#include "_pyargs.h"
#include "_shared.h"
/* A ShardedCounter's first contention: 3.13t stops refcounting it (_shared.h). */
#define TL_ON_CONTENTION(owner) tl_share_widely(owner)
#include "_counter_methods.h"

/* ---- errors and pickling ------------------------------------------------ */

#if TL_FREE_THREADED
#define CELL_ADD tl_add
#else
#define CELL_ADD tl_add_serial
#endif

/* What pickle and copy must restore on a subclass instance besides the
 * value: its __dict__ and the values of its __slots__ (the names
 * copyreg._slotnames gives, as for any Python class), in the state format
 * pickle and copy understand: the dict, or (dict or None, {slot: value}).
 * Py_None when there is nothing; NULL with an exception set. */
static PyObject *
subclass_state(PyObject *self)
{
    PyObject *dict = PyObject_GetAttrString(self, "__dict__");
    if (dict == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
    }
    else if (!PyDict_Check(dict) || PyDict_GET_SIZE(dict) == 0) {
        Py_CLEAR(dict);
    }
    PyObject *slots = NULL, *names = NULL, *copyreg = PyImport_ImportModule("copyreg");
    if (copyreg != NULL) {
        names = PyObject_CallMethod(copyreg, "_slotnames", "O", (PyObject *)Py_TYPE(self));
        Py_DECREF(copyreg);
    }
    PyObject *seq = names == NULL ? NULL : PySequence_Fast(names, "__slotnames__");
    Py_XDECREF(names);
    if (seq == NULL) {
        Py_XDECREF(dict);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *v = PyObject_GetAttr(self, name);
        if (v == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear(); /* a slot never set: nothing to restore */
                continue;
            }
            goto fail;
        }
        if (slots == NULL && (slots = PyDict_New()) == NULL) {
            Py_DECREF(v);
            goto fail;
        }
        int r = PyDict_SetItem(slots, name, v);
        Py_DECREF(v);
        if (r < 0) {
            goto fail;
        }
    }
    Py_DECREF(seq);
    if (slots == NULL) {
        return dict != NULL ? dict : Py_NewRef(Py_None);
    }
    return Py_BuildValue("(NN)", dict != NULL ? dict : Py_NewRef(Py_None), slots);
fail:
    Py_DECREF(seq);
    Py_XDECREF(dict);
    Py_XDECREF(slots);
    return NULL;
}

/* (type(self), (value,)) plus a subclass instance's state (subclass_state). */
static PyObject *
reduce_with_value(PyObject *self, PyObject *value)
{
    if (value == NULL) {
        return NULL;
    }
    PyObject *state = subclass_state(self);
    if (state == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    if (state == Py_None) {
        Py_DECREF(state);
        return Py_BuildValue("O(N)", (PyObject *)Py_TYPE(self), value);
    }
    return Py_BuildValue("O(N)N", (PyObject *)Py_TYPE(self), value, state);
}

/* ---- waiters: wait_until() ---------------------------------------------- */

/* A thread blocked in wait_until() owns one of these on its stack.  It is
 * linked into the counter's list and woken (its lock released) by the first
 * update that makes value >= target.  The list is guarded by the GIL, or by
 * a PyMutex on free-threaded builds.  Updates look at the list head only:
 * one load and a branch that is never taken while nobody waits. */
typedef struct tl_waiter {
    struct tl_waiter *next;
    int64_t target;
    PyThread_type_lock lock;
    int woken;
} tl_waiter;

typedef struct {
    PyObject_HEAD
    tl_cell value;
    _Atomic(tl_waiter *) waiters;
    PyObject *weakreflist; /* weakref.ref(counter) works, as for collections.Counter */
#ifdef Py_GIL_DISABLED
    PyMutex wmutex;
#endif
} CounterObject;

#ifdef Py_GIL_DISABLED
#define WAITERS_LOCK(c) PyMutex_Lock(&(c)->wmutex)
#define WAITERS_UNLOCK(c) PyMutex_Unlock(&(c)->wmutex)
#define WAITERS_HEAD(c) atomic_load_explicit(&(c)->waiters, memory_order_seq_cst)
#else
#define WAITERS_LOCK(c) ((void)0)
#define WAITERS_UNLOCK(c) ((void)0)
#define WAITERS_HEAD(c) atomic_load_explicit(&(c)->waiters, memory_order_relaxed)
#endif

/* Wake every waiter whose target the value v has reached. */
static void
wake_waiters(CounterObject *self, int64_t v)
{
    WAITERS_LOCK(self);
    tl_waiter *head = atomic_load_explicit(&self->waiters, memory_order_relaxed);
    tl_waiter **pp = &head;
    while (*pp != NULL) {
        tl_waiter *w = *pp;
        if (w->target <= v) {
            *pp = w->next;
            w->woken = 1;
            PyThread_release_lock(w->lock); /* w may go away after this */
        }
        else {
            pp = &w->next;
        }
    }
    atomic_store_explicit(&self->waiters, head, memory_order_seq_cst);
    WAITERS_UNLOCK(self);
}

#define AFTER_UPDATE(self, v)                       \
    do {                                            \
        if (TL_UNLIKELY(WAITERS_HEAD(self) != NULL)) { \
            wake_waiters((self), (v));              \
        }                                           \
    } while (0)

/* Remove w from the list if it is still there; the caller holds the lock. */
static void
unlink_waiter_locked(CounterObject *self, tl_waiter *w)
{
    tl_waiter *head = atomic_load_explicit(&self->waiters, memory_order_relaxed);
    tl_waiter **pp = &head;
    while (*pp != NULL) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
        pp = &(*pp)->next;
    }
    atomic_store_explicit(&self->waiters, head, memory_order_seq_cst);
}

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* tp_new of Counter(initial=0) and ShardedCounter(initial=0) up to the
 * fields: parse initial into *v (an int64) and allocate.  format:
 * "|O:<type name>".  The new object, or NULL. */
static PyObject *
alloc_initial(PyTypeObject *type, PyObject *args, PyObject *kwds, const char *format,
              int64_t *v)
{
    static char *kwlist[] = {"initial", NULL};
    PyObject *initial = NULL;
    *v = 0;
    if (PyArg_ParseTupleAndKeywords(args, kwds, format, kwlist, &initial) &&
        (initial == NULL || to_int64(initial, format + 3, v) == 0)) {
        return type->tp_alloc(type, 0);
    }
    return NULL;
}

/* ---- Counter ------------------------------------------------------------ */

static PyObject *
Counter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    int64_t v;
    CounterObject *self = (CounterObject *)alloc_initial(type, args, kwds, "|O:Counter", &v);
    if (self != NULL) {
        atomic_init(&self->value, v);
        atomic_init(&self->waiters, NULL);
    }
    return (PyObject *)self;
}

static void
Counter_dealloc(CounterObject *self)
{
    tl_dealloc((PyObject *)self, NULL, &self->weakreflist);
}

/* The update of increment, decrement, += and -= (_counter_methods.h). */
static TL_ALWAYS_INLINE int
Counter_update(CounterObject *self, int64_t n, int sub, const char *op)
{
    int64_t v;
    if (TL_UNLIKELY(CELL_ADD(&self->value, n, sub, &v) != TL_OK)) {
        tl_overflow_stays(op, n, "the counter", NULL, v);
        return -1;
    }
    AFTER_UPDATE(self, v);
    return 0;
}

TL_COUNTER_UPDATE_METHODS(Counter, CounterObject)

static PyObject *
Counter_add(CounterObject *self, PyObject *arg)
{
    int64_t n, v;
    if (to_int64(arg, "add", &n) < 0) {
        return NULL;
    }
    if (TL_UNLIKELY(CELL_ADD(&self->value, n, 0, &v) != TL_OK)) {
        return tl_overflow_stays("add", n, "the counter", NULL, v);
    }
    AFTER_UPDATE(self, v);
    return PyLong_FromLongLong((long long)v);
}

static PyObject *
Counter_value(CounterObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong((long long)tl_load(&self->value));
}

static PyObject *
Counter_reset(CounterObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t old = tl_exchange(&self->value, 0);
    AFTER_UPDATE(self, 0);
    return PyLong_FromLongLong((long long)old);
}

static PyObject *
Counter_set(CounterObject *self, PyObject *arg)
{
    int64_t v;
    if (to_int64(arg, "set", &v) < 0) {
        return NULL;
    }
    tl_exchange(&self->value, v);
    AFTER_UPDATE(self, v);
    Py_RETURN_NONE;
}

static PyObject *
Counter_compare_and_set(CounterObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"expected", "new", NULL};
    PyObject *eobj, *nobj;
    int64_t expected, desired;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:compare_and_set", kwlist,
                                     &eobj, &nobj)) {
        return NULL;
    }
    if (to_int64(eobj, "compare_and_set", &expected) < 0 ||
        to_int64(nobj, "compare_and_set", &desired) < 0) {
        return NULL;
    }
    if (!tl_compare_and_set(&self->value, expected, desired)) {
        Py_RETURN_FALSE;
    }
    AFTER_UPDATE(self, desired);
    Py_RETURN_TRUE;
}

static PyObject *
Counter_wait_until(CounterObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"target", "timeout", NULL};
    PyObject *tobj, *timeout_obj = Py_None;
    int64_t target;
    double timeout = -1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:wait_until", kwlist,
                                     &tobj, &timeout_obj)) {
        return NULL;
    }
    if (to_int64(tobj, "wait_until", &target) < 0) {
        return NULL;
    }
    if (timeout_obj != Py_None) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1.0 && PyErr_Occurred() &&
            PyErr_ExceptionMatches(PyExc_OverflowError) && PyLong_Check(timeout_obj)) {
            PyErr_Clear(); /* an int too large for a double: forever */
            timeout = Py_HUGE_VAL;
        }
        if (timeout == -1.0 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError,
                         "wait_until() timeout must be a number or None, not "
                         "'%.200s'", type_name(Py_TYPE(timeout_obj)));
            return NULL;
        }
        if (!(timeout >= 0.0)) { /* also rejects NaN */
            PyErr_SetString(PyExc_ValueError,
                            "wait_until() timeout must be a non-negative number");
            return NULL;
        }
    }
    if (tl_load(&self->value) >= target) {
        Py_RETURN_TRUE;
    }
    if (timeout == 0.0) {
        Py_RETURN_FALSE;
    }
    if (timeout == Py_HUGE_VAL) {
        timeout = -1.0; /* no deadline */
    }

    tl_waiter w = {NULL, target, PyThread_allocate_lock(), 0};
    if (w.lock == NULL) {
        return PyErr_NoMemory();
    }
    PyThread_acquire_lock(w.lock, WAIT_LOCK);
    WAITERS_LOCK(self);
    w.next = atomic_load_explicit(&self->waiters, memory_order_relaxed);
    atomic_store_explicit(&self->waiters, &w, memory_order_seq_cst);
    WAITERS_UNLOCK(self);

    int interrupted = 0;
    double deadline = timeout < 0 ? 0.0 : monotonic_now() + timeout;
    /* Re-check after publishing ourselves: an update that ran before the
     * publish did not see us, one after it will wake us. */
    if (tl_load(&self->value) < target) {
        for (;;) {
            PY_TIMEOUT_T us = -1;
            if (timeout >= 0) {
                double left = deadline - monotonic_now();
                if (left <= 0) {
                    break;
                }
                /* Wait at most an hour at a time: a larger count of
                 * microseconds can round past PY_TIMEOUT_MAX, which is a
                 * fatal error on some CPython versions. */
                us = (PY_TIMEOUT_T)((left > 3600.0 ? 3600.0 : left) * 1e6);
            }
            PyLockStatus st;
            Py_BEGIN_ALLOW_THREADS
            st = PyThread_acquire_lock_timed(w.lock, us, 1);
            Py_END_ALLOW_THREADS
            if (st == PY_LOCK_ACQUIRED) {
                break;
            }
            if (st == PY_LOCK_INTR && PyErr_CheckSignals() < 0) {
                interrupted = 1; /* KeyboardInterrupt and friends */
                break;
            }
        }
    }
    /* A waker touches w only while holding the list lock, so once we hold it
     * and w is unlinked, w (and its lock) are ours alone. */
    WAITERS_LOCK(self);
    int woken = w.woken;
    if (!woken) {
        unlink_waiter_locked(self, &w);
    }
    WAITERS_UNLOCK(self);
    PyThread_free_lock(w.lock);
    if (interrupted) {
        return NULL;
    }
    return PyBool_FromLong(woken || tl_load(&self->value) >= target);
}

static PyObject *
Counter_repr(CounterObject *self)
{
    return PyUnicode_FromFormat("%s(%lld)", type_name(Py_TYPE(self)),
                                (long long)tl_load(&self->value));
}

static PyObject *
Counter_int(CounterObject *self)
{
    return PyLong_FromLongLong((long long)tl_load(&self->value));
}

static PyObject *
Counter_reduce(CounterObject *self, PyObject *Py_UNUSED(ignored))
{
    return reduce_with_value((PyObject *)self, Counter_int(self));
}

/* ---- ShardedCounter ----------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tl_striped s;
    PyObject *weakreflist;
} ShardedObject;

static PyObject *
Sharded_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    int64_t v;
    PyObject *self = alloc_initial(type, args, kwds, "|O:ShardedCounter", &v);
    if (self != NULL) {
        tl_striped_init(&((ShardedObject *)self)->s, v, tl_cpus);
        tl_share_prepare(self); /* 3.13t: see _shared.h */
    }
    return self;
}

static void
Sharded_dealloc(ShardedObject *self)
{
    tl_striped_free(&self->s);
    tl_dealloc((PyObject *)self, NULL, &self->weakreflist);
}

/* Everything but a GIL build's plain add: contention, overflow, no memory. */
static int
Sharded_update_slow(ShardedObject *self, int64_t n, int sub, const char *op)
{
    int r = tl_striped_update((PyObject *)self, &self->s, n, sub);
    if (TL_LIKELY(r == TL_OK)) {
        return 0;
    }
    return tl_update_failed(r, op, n, "a stripe of the counter");
}

/* The update of increment, decrement, += and -= (_counter_methods.h). */
static TL_ALWAYS_INLINE int
Sharded_update(ShardedObject *self, int64_t n, int sub, const char *op)
{
    if (tl_striped_fast(&self->s, n, sub)) {
        return 0;
    }
    return Sharded_update_slow(self, n, sub, op);
}

TL_COUNTER_UPDATE_METHODS(Sharded, ShardedObject)
TL_STRIPED_METHODS(Sharded, ShardedObject) /* value() is Sharded_sum, reset() Sharded_take */

static PyObject *
Sharded_int(ShardedObject *self)
{
    return Sharded_sum(self, NULL);
}

static PyObject *
Sharded_repr(ShardedObject *self)
{
    PyObject *v = Sharded_sum(self, NULL);
    if (v == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("%s(%S)", type_name(Py_TYPE(self)), v);
    Py_DECREF(v);
    return r;
}

static PyObject *
Sharded_reduce(ShardedObject *self, PyObject *Py_UNUSED(ignored))
{
    return reduce_with_value((PyObject *)self, Sharded_sum(self, NULL));
}

/* ---- type specs and the module exec ------------------------------------- */

static PyMethodDef Counter_methods[] = {
    TL_UPDATE_METHOD_DEFS(Counter,
                          "increment(n=1) -> None\n\nAdd n (default 1) atomically.",
                          "decrement(n=1) -> None\n\nSubtract n (default 1) atomically."),
    {"add", (PyCFunction)Counter_add, METH_O,
     "add(n) -> int\n\nAdd n atomically and return the new value."},
    TL_VALUE_RESET_DEFS(Counter_value, "The current value.", Counter_reset,
                        "Set to 0 and return the value replaced, atomically."),
    {"set", (PyCFunction)Counter_set, METH_O, "set(v) -> None\n\nSet the value."},
    {"compare_and_set", (PyCFunction)(void (*)(void))Counter_compare_and_set,
     METH_VARARGS | METH_KEYWORDS,
     "compare_and_set(expected, new) -> bool\n\n"
     "Set to new if the value is expected; True if it was set."},
    {"wait_until", (PyCFunction)(void (*)(void))Counter_wait_until,
     METH_VARARGS | METH_KEYWORDS,
     "wait_until(target, timeout=None) -> bool\n\n"
     "Block until value() >= target; False if timeout seconds pass first."},
    {"__reduce__", (PyCFunction)Counter_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

TL_WEAKLIST_ONLY(Counter, weakreflist);

static PyType_Slot Counter_slots[] = {
    {Py_tp_doc, "Counter(initial=0)\n--\n\n"
                "An exact signed 64-bit counter that many threads may update.\n\n"
                "Counters compare and hash by identity, as threading primitives do\n"
                "(a shared cell other threads change at any moment); compare values\n"
                "with a.value() == b.value()."},
    {Py_tp_new, Counter_new},
    {Py_tp_dealloc, Counter_dealloc},
    {Py_tp_methods, Counter_methods},
    {Py_tp_members, Counter_members},
    {Py_tp_repr, Counter_repr},
    {Py_nb_int, Counter_int},
    TL_INPLACE_SLOTS(Counter),
    {0, NULL},
};

TL_TYPE_SPEC(Counter, "tallies.Counter", sizeof(CounterObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE);

static PyMethodDef Sharded_methods[] = {
    TL_UPDATE_METHOD_DEFS(Sharded,
                          "increment(n=1) -> None\n\nAdd n (default 1).",
                          "decrement(n=1) -> None\n\nSubtract n (default 1)."),
    TL_VALUE_RESET_DEFS(Sharded_sum, "The sum of the cells; not a snapshot while others write.",
                        Sharded_take, "Zero every cell and return what was taken."),
    {"__reduce__", (PyCFunction)Sharded_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sharded_getset[] = {
    {"inflated", (getter)Sharded_inflated, NULL,
     "True once contention made the counter allocate its striped cells.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

TL_WEAKLIST_ONLY(Sharded, weakreflist);

static PyType_Slot Sharded_slots[] = {
    {Py_tp_doc, "ShardedCounter(initial=0)\n--\n\n"
                "A striped counter that spreads contended updates over cells.\n\n"
                "Counters compare and hash by identity, as threading primitives do;\n"
                "compare values with a.value() == b.value()."},
    {Py_tp_new, Sharded_new},
    {Py_tp_dealloc, Sharded_dealloc},
    {Py_tp_methods, Sharded_methods},
    {Py_tp_members, Sharded_members},
    {Py_tp_getset, Sharded_getset},
    {Py_tp_repr, Sharded_repr},
    {Py_nb_int, Sharded_int},
    TL_INPLACE_SLOTS(Sharded),
    {0, NULL},
};

TL_TYPE_SPEC(Sharded, "tallies.ShardedCounter", sizeof(ShardedObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE);

static PyObject *
counter_shared_remaining(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(tl_shared_remaining());
}

static PyMethodDef counter_functions[] = {
    {"_shared_remaining", counter_shared_remaining, METH_NOARGS,
     "How many more contended ShardedCounters this process may make immortal "
     "(free-threaded 3.13 only; always 0 elsewhere; see _c/_shared.h)."},
    {NULL, NULL, 0, NULL},
};

int
tl_counter_exec(PyObject *m)
{
    tl_shared_configure();
    if (tl_add_type(m, &Counter_spec, TL_COUNTER, 1) == NULL ||
        tl_add_type(m, &Sharded_spec, TL_SHARDED_COUNTER, 1) == NULL ||
        PyModule_AddFunctions(m, counter_functions) < 0 ||
        PyModule_AddIntConstant(m, "SHARES_CONTENDED", TL_SHARE_WIDELY) < 0) {
        return -1;
    }
    return 0;
}
