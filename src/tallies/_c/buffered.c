/*
 * buffered.c: BufferedCounter (part of tallies._tallies: _module.h), the
 * counter object of the write-behind scopes (sqlite://, redis://); read
 * stores/writebehind.py first.
 *
 * A BufferedCounter is the pending delta of one counter name in this
 * process: ShardedCounter's striped cells (_cells.h), updated by the same
 * code (_counter_methods.h: the methods are generated from Buffered_update),
 * plus a reference to its owner (the WriteBehind) and its name.
 * increment/decrement never leave C and never do I/O; value(), reset(), repr
 * and pickling ask the owner, which adds the stored value.  The flusher takes
 * the deltas out with _take() (every cell exchanged with 0: each update lands
 * in exactly one _take() result or stays for the next).
 *
 * Why a type of its own rather than a Python subclass of ShardedCounter:
 * CPython specialises a call of a C method only when the object's type is
 * exactly the method's type, so `c.increment()` on a Python subclass costs
 * about 9 ns more (60 % on top of the in-process counter here); this type is
 * final and costs what ShardedCounter costs.
 *
 * mode: 0 buffered, 1 write-through (every update then calls owner.flush()
 * and returns only once it committed), 2 closed (updates raise ValueError).
 *
 * Closing, free-threaded builds.  The store's close() closes every counter
 * and then flushes once: an update must either land before that flush takes
 * the cells, or raise.  With a GIL the check and the add are one step (the C
 * method holds it).  Without, each update passes a gate (_gate.h, read its
 * comment): Cell_close() closes it and waits for the adds that got through,
 * so they are in the cells before the flush takes them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cells.h"
#include "_gate.h"
#include "_module.h"
#include "_pyargs.h"
#include "_counter_methods.h"

#define MODE_BUFFERED 0
#define MODE_WRITE_THROUGH 1
#define MODE_CLOSED 2

typedef struct {
    PyObject_HEAD
    tl_striped s;
    PyObject *owner;
    PyObject *name;
    _Atomic int mode;
} CellObject;

static inline int
cell_mode(CellObject *self)
{
    return atomic_load_explicit(&self->mode, memory_order_relaxed);
}

#if TL_FREE_THREADED
static TL_ALIGNED(TL_LINE) tl_gate_flight in_flight; /* _gate.h */
#endif

static PyObject *
Cell_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"owner", "name", "write_through", NULL};
    PyObject *owner, *name;
    int write_through = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU|p:BufferedCounter", kwlist,
                                     &owner, &name, &write_through)) {
        return NULL;
    }
    CellObject *self = (CellObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    tl_striped_init(&self->s, 0, tl_cpus);
    self->owner = Py_NewRef(owner);
    self->name = Py_NewRef(name);
    atomic_init(&self->mode, write_through ? MODE_WRITE_THROUGH : MODE_BUFFERED);
    return (PyObject *)self;
}

#define CELL_REFS(X) X(self->owner) X(self->name)
TL_GC_FUNCS(Cell, CellObject, CELL_REFS)

/* The owner is any object, another BufferedCounter included: a chain of them
 * is freed through CPython's trashcan instead of one C frame per link. */
static void
Cell_dealloc(CellObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, Cell_dealloc)
    tl_striped_free(&self->s);
    tl_dealloc((PyObject *)self, (inquiry)Cell_clear, NULL);
    Py_TRASHCAN_END
}

/* Ask the owner: owner.<meth>(name). */
static PyObject *
ask_owner(CellObject *self, const char *meth)
{
    if (self->owner == NULL) {
        PyErr_SetString(PyExc_ValueError, "this counter has no store");
        return NULL;
    }
    return PyObject_CallMethod(self->owner, meth, "O", self->name);
}

static PyObject *
closed_error(CellObject *self)
{
    PyErr_Format(PyExc_ValueError, "counter %R: its store is closed", self->name);
    return NULL;
}

/* Everything but a GIL build's plain add to an open buffered counter: the
 * gate (free-threaded), a closed store, overflow, the write-through flush. */
static int
Buffered_update_slow(CellObject *self, int64_t n, int sub, const char *op)
{
#if TL_FREE_THREADED
    _Atomic long *passed = tl_gate_enter(&in_flight, &self->mode, MODE_CLOSED);
    if (TL_UNLIKELY(passed == NULL)) {
        closed_error(self);
        return -1;
    }
    int r = tl_striped_update((PyObject *)self, &self->s, n, sub);
    tl_gate_leave(passed);
#else
    if (TL_UNLIKELY(cell_mode(self) == MODE_CLOSED)) {
        closed_error(self);
        return -1;
    }
    int r = tl_striped_update((PyObject *)self, &self->s, n, sub);
#endif
    if (TL_UNLIKELY(r != TL_OK)) {
        return tl_update_failed(r, op, n, "this process's pending delta");
    }
    if (cell_mode(self) == MODE_WRITE_THROUGH && self->owner != NULL) {
        PyObject *res = PyObject_CallMethod(self->owner, "flush", NULL);
        if (res == NULL) {
            return -1;
        }
        Py_DECREF(res);
    }
    return 0;
}

/* The update of increment, decrement, += and -= (_counter_methods.h). */
static TL_ALWAYS_INLINE int
Buffered_update(CellObject *self, int64_t n, int sub, const char *op)
{
    if (TL_LIKELY(cell_mode(self) == MODE_BUFFERED) && tl_striped_fast(&self->s, n, sub)) {
        return 0;
    }
    return Buffered_update_slow(self, n, sub, op);
}

TL_COUNTER_UPDATE_METHODS(Buffered, CellObject)

static PyObject *
Cell_value(CellObject *self, PyObject *Py_UNUSED(ignored))
{
    if (cell_mode(self) == MODE_CLOSED) {
        return closed_error(self);
    }
    return ask_owner(self, "_cell_value");
}

static PyObject *
Cell_reset(CellObject *self, PyObject *Py_UNUSED(ignored))
{
    if (cell_mode(self) == MODE_CLOSED) {
        return closed_error(self);
    }
    return ask_owner(self, "_cell_reset");
}

TL_STRIPED_METHODS(Buffered, CellObject) /* _pending() is Buffered_sum, _take() Buffered_take */

static PyObject *
Cell_close(CellObject *self, PyObject *Py_UNUSED(ignored))
{
#if TL_FREE_THREADED
    tl_gate_close(&in_flight, &self->mode, MODE_CLOSED);
#else
    atomic_store_explicit(&self->mode, MODE_CLOSED, memory_order_relaxed);
#endif
    Py_RETURN_NONE;
}

static PyObject *
Cell_reduce(CellObject *self, PyObject *Py_UNUSED(ignored))
{
    return ask_owner(self, "_cell_reduce");
}

static PyObject *
Cell_int(CellObject *self)
{
    return Cell_value(self, NULL);
}

static PyObject *
Cell_repr(CellObject *self)
{
    if (cell_mode(self) == MODE_CLOSED) {
        return PyUnicode_FromFormat("BufferedCounter(%R, closed)", self->name);
    }
    PyObject *v = Cell_value(self, NULL);
    if (v == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("BufferedCounter(%R, %S)", self->name, v);
    Py_DECREF(v);
    return r;
}

static PyObject *
Cell_get_name(CellObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->name);
}

static PyObject *
Cell_get_closed(CellObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(cell_mode(self) == MODE_CLOSED);
}

static PyMethodDef Cell_methods[] = {
    TL_UPDATE_METHOD_DEFS(Buffered,
                          "increment(n=1) -> None\n\n"
                          "Add n (default 1) to this process's pending delta.",
                          "decrement(n=1) -> None\n\nSubtract n (default 1)."),
    TL_VALUE_RESET_DEFS(Cell_value, "The stored value plus this process's pending delta.",
                        Cell_reset,
                        "Zero the stored value and this process's pending delta in "
                        "one transaction; return their sum."),
    {"_take", (PyCFunction)Buffered_take, METH_NOARGS,
     "Exchange every cell with 0; the sum taken (the flusher's)."},
    {"_pending", (PyCFunction)Buffered_sum, METH_NOARGS,
     "The sum of the cells (this process's unflushed delta)."},
    {"_close", (PyCFunction)Cell_close, METH_NOARGS, "Refuse updates from now on."},
    {"__reduce__", (PyCFunction)Cell_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Cell_getset[] = {
    {"name", (getter)Cell_get_name, NULL, "The counter's name.", NULL},
    {"inflated", (getter)Buffered_inflated, NULL,
     "True once contention made the cells stripe.", NULL},
    {"closed", (getter)Cell_get_closed, NULL, "True once its store closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Cell_slots[] = {
    {Py_tp_doc, "BufferedCounter(owner, name, write_through=False)\n--\n\n"
                "A write-behind counter: local cells plus the owner's stored value."},
    TL_GC_SLOTS(Cell),
    {Py_tp_methods, Cell_methods},
    {Py_tp_getset, Cell_getset},
    {Py_tp_repr, Cell_repr},
    {Py_nb_int, Cell_int},
    TL_INPLACE_SLOTS(Buffered),
    {0, NULL},
};

TL_TYPE_SPEC(Cell, "tallies.stores.BufferedCounter", sizeof(CellObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

TL_ONE_TYPE_EXEC(buffered, Cell, TL_BUFFERED_COUNTER)
