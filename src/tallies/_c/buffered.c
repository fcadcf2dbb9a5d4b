/*
 * tallies.stores._buffered: the counter object of the write-behind scopes
 * (sqlite://, redis://), read stores/writebehind.py first.
 *
 * A BufferedCounter is the pending delta of one counter name in this
 * process: ShardedCounter's striped cells (_cells.h), updated exactly as
 * ShardedCounter updates them, plus a reference to its owner (the
 * WriteBehind) and its name.  increment/decrement never leave C and never do
 * I/O; value(), reset(), repr and pickling ask the owner, which adds the
 * stored value.  The flusher takes the deltas out with _take() (every cell
 * exchanged with 0: each update lands in exactly one _take() result or stays
 * for the next).
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
#include <unistd.h>

#include "_cells.h"
#include "_gate.h"
#include "_pyargs.h"

#ifdef Py_GIL_DISABLED
#define STRIPED_ADD tl_striped_add
#else
#define STRIPED_ADD tl_striped_add_serial
#endif

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

static uint32_t n_cpus = 1;

static inline int
cell_mode(CellObject *self)
{
    return atomic_load_explicit(&self->mode, memory_order_relaxed);
}

#ifdef Py_GIL_DISABLED
static tl_gate_flight in_flight __attribute__((aligned(TL_LINE))); /* _gate.h */
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
    tl_striped_init(&self->s, 0, n_cpus);
    self->owner = Py_NewRef(owner);
    self->name = Py_NewRef(name);
    atomic_init(&self->mode, write_through ? MODE_WRITE_THROUGH : MODE_BUFFERED);
    return (PyObject *)self;
}

static int
Cell_traverse(CellObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->owner);
    Py_VISIT(self->name);
    return 0;
}

static int
Cell_clear(CellObject *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->name);
    return 0;
}

/* The owner is any object, another BufferedCounter included: a chain of them
 * is freed through CPython's trashcan instead of one C frame per link. */
static void
Cell_dealloc(CellObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, Cell_dealloc)
    Cell_clear(self);
    tl_striped_free(&self->s);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
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

/* After an update that succeeded: nothing, or the write-through flush. */
static PyObject *
after_update(CellObject *self)
{
    if (cell_mode(self) == MODE_WRITE_THROUGH && self->owner != NULL) {
        PyObject *r = PyObject_CallMethod(self->owner, "flush", NULL);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *
cell_update(CellObject *self, int64_t n, int sub, const char *op)
{
#ifdef Py_GIL_DISABLED
    _Atomic long *passed = tl_gate_enter(&in_flight, &self->mode, MODE_CLOSED);
    if (TL_UNLIKELY(passed == NULL)) {
        return closed_error(self);
    }
    int r = STRIPED_ADD(&self->s, n, sub);
    tl_gate_leave(passed);
#else
    if (TL_UNLIKELY(cell_mode(self) == MODE_CLOSED)) {
        return closed_error(self);
    }
    int r = STRIPED_ADD(&self->s, n, sub);
#endif
    if (TL_LIKELY(r == TL_OK)) {
        return after_update(self);
    }
    if (r == TL_NOMEM) {
        return PyErr_NoMemory();
    }
    PyErr_Format(PyExc_OverflowError,
                 "%s(%lld) would move this process's pending delta outside the "
                 "signed 64-bit range; nothing was changed",
                 op, (long long)n);
    return NULL;
}

static PyObject *
Cell_increment(CellObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    int64_t n = 1;
    if (nargs != 0 || kwnames != NULL) {
        if (parse_amount(args, nargs, kwnames, "increment", &n) < 0) {
            return NULL;
        }
    }
#ifndef Py_GIL_DISABLED
    int64_t ignored;
    if (TL_LIKELY(cell_mode(self) == MODE_BUFFERED) &&
        TL_LIKELY(tl_add_serial(&self->s.base, n, 0, &ignored) == TL_OK)) {
        Py_RETURN_NONE;
    }
#endif
    return cell_update(self, n, 0, "increment");
}

static PyObject *
Cell_decrement(CellObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    int64_t n = 1;
    if (nargs != 0 || kwnames != NULL) {
        if (parse_amount(args, nargs, kwnames, "decrement", &n) < 0) {
            return NULL;
        }
    }
    return cell_update(self, n, 1, "decrement");
}

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

static PyObject *
Cell_take(CellObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t vals[TL_MAX_SLOTS + 1];
    uint32_t k = tl_striped_drain(&self->s, vals);
    return sum_to_pylong(vals, (Py_ssize_t)k);
}

static PyObject *
Cell_pending(CellObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t vals[TL_MAX_SLOTS + 1];
    uint32_t k = tl_striped_collect(&self->s, vals);
    return sum_to_pylong(vals, (Py_ssize_t)k);
}

static PyObject *
Cell_close(CellObject *self, PyObject *Py_UNUSED(ignored))
{
#ifdef Py_GIL_DISABLED
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
Cell_inplace(PyObject *self, PyObject *other, int sub)
{
    int64_t n;
    const char *op = sub ? "-=" : "+=";
    if (to_int64(other, op, &n) < 0) {
        return NULL;
    }
    PyObject *r = cell_update((CellObject *)self, n, sub, op);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    return Py_NewRef(self);
}

static PyObject *Cell_iadd(PyObject *a, PyObject *b) { return Cell_inplace(a, b, 0); }
static PyObject *Cell_isub(PyObject *a, PyObject *b) { return Cell_inplace(a, b, 1); }

static PyObject *
Cell_get_name(CellObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->name);
}

static PyObject *
Cell_get_inflated(CellObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(tl_striped_inflated(&self->s));
}

static PyObject *
Cell_get_closed(CellObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(cell_mode(self) == MODE_CLOSED);
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef Cell_methods[] = {
    {"increment", (PyCFunction)(void (*)(void))Cell_increment, FASTKW,
     "increment(n=1) -> None\n\nAdd n (default 1) to this process's pending delta."},
    {"decrement", (PyCFunction)(void (*)(void))Cell_decrement, FASTKW,
     "decrement(n=1) -> None\n\nSubtract n (default 1)."},
    {"value", (PyCFunction)Cell_value, METH_NOARGS,
     "value() -> int\n\nThe stored value plus this process's pending delta."},
    {"reset", (PyCFunction)Cell_reset, METH_NOARGS,
     "reset() -> int\n\nZero the stored value and this process's pending delta in "
     "one transaction; return their sum."},
    {"_take", (PyCFunction)Cell_take, METH_NOARGS,
     "Exchange every cell with 0; the sum taken (the flusher's)."},
    {"_pending", (PyCFunction)Cell_pending, METH_NOARGS,
     "The sum of the cells (this process's unflushed delta)."},
    {"_close", (PyCFunction)Cell_close, METH_NOARGS, "Refuse updates from now on."},
    {"__reduce__", (PyCFunction)Cell_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Cell_getset[] = {
    {"name", (getter)Cell_get_name, NULL, "The counter's name.", NULL},
    {"inflated", (getter)Cell_get_inflated, NULL,
     "True once contention made the cells stripe.", NULL},
    {"closed", (getter)Cell_get_closed, NULL, "True once its store closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Cell_slots[] = {
    {Py_tp_doc, "BufferedCounter(owner, name, write_through=False)\n--\n\n"
                "A write-behind counter: local cells plus the owner's stored value."},
    {Py_tp_new, Cell_new},
    {Py_tp_dealloc, Cell_dealloc},
    {Py_tp_traverse, Cell_traverse},
    {Py_tp_clear, Cell_clear},
    {Py_tp_methods, Cell_methods},
    {Py_tp_getset, Cell_getset},
    {Py_tp_repr, Cell_repr},
    {Py_nb_int, Cell_int},
    {Py_nb_inplace_add, Cell_iadd},
    {Py_nb_inplace_subtract, Cell_isub},
    {0, NULL},
};

static PyType_Spec Cell_spec = {
    "tallies.stores.BufferedCounter", sizeof(CellObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Cell_slots,
};

static int
buffered_exec(PyObject *m)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n_cpus = cpus < 1 ? 1 : (cpus > TL_MAX_SLOTS ? TL_MAX_SLOTS : (uint32_t)cpus);
    PyObject *tp = PyType_FromModuleAndSpec(m, &Cell_spec, NULL);
    if (tp == NULL) {
        return -1;
    }
    int r = PyModule_AddType(m, (PyTypeObject *)tp);
    Py_DECREF(tp);
    return r;
}

static PyModuleDef_Slot buffered_slots[] = {
    {Py_mod_exec, buffered_exec},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef buffered_module = {
    PyModuleDef_HEAD_INIT,
    "tallies.stores._buffered",
    "The counter object of tallies' write-behind stores (see writebehind.py).",
    0,
    NULL,
    buffered_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__buffered(void)
{
    return PyModuleDef_Init(&buffered_module);
}
