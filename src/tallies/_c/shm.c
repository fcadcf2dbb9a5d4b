/*
 * shm.c: the hot path of counters shared by processes (shm://NAME); part of
 * tallies._tallies (_module.h).
 *
 * Read src/tallies/stores/shm.py first (its design comment), then
 * stores/_shm_segment.py: it owns the segment file, its layout, the name and
 * key directories, slab ownership, folding and every lock.  This
 * file only does what must be fast or atomic: cell updates, exact sums across
 * slabs, and the atomic loads/stores/exchanges that the Python side uses on
 * the same memory.
 *
 * The segment, in one paragraph
 * -----------------------------
 * A segment is one file mapped MAP_SHARED by every process that opens it.
 * It holds a header, a name directory, a key directory, an array of slab
 * descriptors, an archive, and `nslabs` slabs.  A slab is an array of
 * `ncells` int64 cells, one per registered name (counter) or key (of a keyed
 * counter), padded to a multiple of 128 bytes.  Each process that writes
 * owns exactly one slab (its descriptor records pid + process start time) and
 * writes only there, so two processes incrementing one name never share a
 * cache line: this is the striped idea (LongAdder) applied across processes.
 * The archive is one more slab-shaped array holding the counts folded out of
 * the slabs of processes that have died.  The value of cell c is
 *
 *     archive[c] + sum of slab[s][c] over every slab s that is not FREE
 *
 * and it is summed here into a Python int, so it is exact even when the
 * total leaves the int64 range (each cell on its own never does).
 *
 * Writers (the hot path)
 * ----------------------
 * `Cell.increment()` and `KeyedCells.increment()` take no lock: they add to
 * this process's own cell with the engine's atomic, overflow-checked tl_add
 * (never the `_serial` variant: another process's reset() may exchange our
 * cell at any moment).  The address of our slab lives in the Segment object
 * (`mine`); it is NULL until the first write, and again in a child right
 * after fork(), so the first write of a process calls back into Python
 * (`binder`) to claim a slab under the segment lock.  After that, an
 * increment is: one load of `mine`, one lock-prefixed CAS.
 *
 * Readers
 * -------
 * Folds and resets move counts between cells (slab -> archive, cells -> the
 * caller).  They run under the segment's fcntl lock and bracket their work
 * with a sequence counter in the header (odd while moving).  `sum()` reads
 * the sequence, sums with acquire loads, reads the sequence again, and
 * retries if it changed; if it keeps changing, or is odd (a fold in progress
 * or interrupted by a death), it returns None and the Python side sums under
 * the lock, after recovery.  So a read never sees a count twice or not at
 * all because of a fold or a reset.  It is still not a snapshot of
 * concurrent increments: an increment that happens during the sum may or may
 * not be in it.  Once writers are quiescent, reads are exact.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_cells.h"
#include "_module.h"
#include "_pyargs.h"
#include "_counter_methods.h"

#define SLAB_FREE 0
#define SEQ_RETRIES 64

/* ---- errors (argument rules are shared: _pyargs.h) ----------------------- */

static PyObject *
overflow_result(const char *op, int64_t n)
{
    tl_update_failed(TL_OVERFLOW, op, n, "this process's cell of the counter");
    return NULL;
}

/* ---- Segment ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* a writable buffer over the whole mapping, kept alive */
    int has_view;
    char *base;
    Py_ssize_t size;
    Py_ssize_t ncells;      /* cells per slab (and in the archive) */
    Py_ssize_t slab_bytes;  /* bytes per slab, a multiple of 128 */
    Py_ssize_t nslabs;
    Py_ssize_t desc_off;    /* slab descriptor i at desc_off + i * desc_stride; */
    Py_ssize_t desc_stride; /* its first int64 is the slab's state */
    Py_ssize_t archive_off;
    Py_ssize_t slabs_off;
    Py_ssize_t seq_off;
    _Atomic(char *) mine; /* this process's slab, NULL while unbound */
    Py_ssize_t mine_index;
    PyObject *binder; /* called with no arguments to claim a slab */
} SegmentObject;

/* Room for archive + every slab's value of one cell: on the stack when the
 * segment has few slabs, else on the heap (freed by scratch_free). */
#define STACK_VALS 257
typedef struct {
    int64_t stack[STACK_VALS];
    int64_t *vals;
} scratch_t;

static int
scratch_init(scratch_t *sc, Py_ssize_t nslabs)
{
    if (nslabs + 1 <= STACK_VALS) {
        sc->vals = sc->stack;
        return 0;
    }
    sc->vals = PyMem_Malloc(sizeof(int64_t) * (size_t)(nslabs + 1));
    if (sc->vals == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
scratch_free(scratch_t *sc)
{
    if (sc->vals != sc->stack) {
        PyMem_Free(sc->vals);
    }
}

static inline tl_cell *
seg_at(SegmentObject *s, Py_ssize_t off)
{
    return (tl_cell *)(s->base + off);
}

static int
seg_check_off(SegmentObject *s, PyObject *arg, Py_ssize_t *off)
{
    Py_ssize_t v = PyLong_AsSsize_t(arg);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0 || v > s->size - 8 || (v & 7) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd is not an aligned int64 inside the %zd-byte "
                     "segment", v, s->size);
        return -1;
    }
    *off = v;
    return 0;
}

static int
seg_check_cell(SegmentObject *s, Py_ssize_t cell)
{
    if (cell < 0 || cell >= s->ncells) {
        PyErr_Format(PyExc_ValueError, "cell %zd is outside 0..%zd", cell,
                     s->ncells - 1);
        return -1;
    }
    return 0;
}

static PyObject *
Segment_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "ncells", "slab_bytes", "nslabs",
                             "desc_off", "desc_stride", "archive_off",
                             "slabs_off", "seq_off", "binder", NULL};
    PyObject *buffer, *binder;
    Py_ssize_t ncells, slab_bytes, nslabs, desc_off, desc_stride, archive_off,
        slabs_off, seq_off;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnnnnnnO:Segment", kwlist,
                                     &buffer, &ncells, &slab_bytes, &nslabs,
                                     &desc_off, &desc_stride, &archive_off,
                                     &slabs_off, &seq_off, &binder)) {
        return NULL;
    }
    if (!PyCallable_Check(binder)) {
        PyErr_SetString(PyExc_TypeError, "Segment() binder must be callable");
        return NULL;
    }
    SegmentObject *self = (SegmentObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    atomic_init(&self->mine, NULL);
    self->mine_index = -1;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->has_view = 1;
    self->base = self->view.buf;
    self->size = self->view.len;
    /* Defence in depth: shm.py validated the header, but never let a bad
     * layout make us touch memory outside the mapping. */
    int ok = ((uintptr_t)self->base % TL_LINE) == 0 && ncells > 0 &&
             nslabs > 0 && ncells <= PY_SSIZE_T_MAX / 8 &&
             slab_bytes >= ncells * 8 && slab_bytes % TL_LINE == 0 &&
             desc_stride >= 8 && desc_stride % 8 == 0 && desc_off >= 0 &&
             desc_off % 8 == 0 && archive_off >= 0 && archive_off % TL_LINE == 0 &&
             slabs_off >= 0 && slabs_off % TL_LINE == 0 && seq_off >= 0 &&
             seq_off % 8 == 0 && seq_off <= self->size - 8 &&
             nslabs <= (self->size / desc_stride) &&
             desc_off <= self->size - nslabs * desc_stride &&
             archive_off <= self->size - ncells * 8 &&
             nslabs <= self->size / slab_bytes &&
             slabs_off <= self->size - nslabs * slab_bytes;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "Segment(): the layout does not fit the buffer");
        Py_DECREF(self);
        return NULL;
    }
    self->ncells = ncells;
    self->slab_bytes = slab_bytes;
    self->nslabs = nslabs;
    self->desc_off = desc_off;
    self->desc_stride = desc_stride;
    self->archive_off = archive_off;
    self->slabs_off = slabs_off;
    self->seq_off = seq_off;
    self->binder = Py_NewRef(binder);
    return (PyObject *)self;
}

static int
Segment_traverse(SegmentObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->binder);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
Segment_clear(SegmentObject *self)
{
    Py_CLEAR(self->binder);
    return 0;
}

static void
Segment_dealloc(SegmentObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Segment_clear(self);
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Slow path of every write: no slab yet in this process.  Calls the binder,
 * which claims a slab under the segment lock and calls bind(). */
static char *
seg_bind_slow(SegmentObject *s)
{
    PyObject *r = PyObject_CallNoArgs(s->binder);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    char *mine = atomic_load_explicit(&s->mine, memory_order_acquire);
    if (mine == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "tallies: the segment binder did not bind a slab");
    }
    return mine;
}

static inline tl_cell *
seg_own_cell(SegmentObject *s, Py_ssize_t cell)
{
    char *mine = atomic_load_explicit(&s->mine, memory_order_acquire);
    if (TL_UNLIKELY(mine == NULL)) {
        mine = seg_bind_slow(s);
        if (mine == NULL) {
            return NULL;
        }
    }
    return (tl_cell *)(mine + cell * 8);
}

static PyObject *
Segment_bind(SegmentObject *self, PyObject *arg)
{
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0 || i >= self->nslabs) {
        PyErr_Format(PyExc_ValueError, "slab %zd is outside 0..%zd", i,
                     self->nslabs - 1);
        return NULL;
    }
    self->mine_index = i;
    atomic_store_explicit(&self->mine, self->base + self->slabs_off + i * self->slab_bytes,
                          memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *
Segment_unbind(SegmentObject *self, PyObject *Py_UNUSED(ignored))
{
    atomic_store_explicit(&self->mine, NULL, memory_order_release);
    self->mine_index = -1;
    Py_RETURN_NONE;
}

static PyObject *
Segment_bound_slab(SegmentObject *self, PyObject *Py_UNUSED(ignored))
{
    if (atomic_load_explicit(&self->mine, memory_order_acquire) == NULL) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromSsize_t(self->mine_index);
}

static PyObject *
Segment_load(SegmentObject *self, PyObject *arg)
{
    Py_ssize_t off;
    if (seg_check_off(self, arg, &off) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong((long long)tl_load(seg_at(self, off)));
}

static int
off_and_value(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs,
              const char *fname, Py_ssize_t *off, int64_t *v)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments", fname);
        return -1;
    }
    if (seg_check_off(self, args[0], off) < 0) {
        return -1;
    }
    return to_int64(args[1], fname, v);
}

static PyObject *
Segment_store(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int64_t v;
    if (off_and_value(self, args, nargs, "store", &off, &v) < 0) {
        return NULL;
    }
    atomic_store_explicit(seg_at(self, off), v, memory_order_seq_cst);
    Py_RETURN_NONE;
}

static PyObject *
Segment_exchange(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int64_t v;
    if (off_and_value(self, args, nargs, "exchange", &off, &v) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong((long long)tl_exchange(seg_at(self, off), v));
}

/* add(off, n) -> new value; OverflowError (nothing changed) if it leaves int64. */
static PyObject *
Segment_add(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int64_t n, v;
    if (off_and_value(self, args, nargs, "add", &off, &n) < 0) {
        return NULL;
    }
    if (tl_add(seg_at(self, off), n, 0, &v) != TL_OK) {
        return overflow_result("add", n);
    }
    return PyLong_FromLongLong((long long)v);
}

static PyObject *
Segment_cas(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int64_t expected, desired;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "cas() takes 3 arguments");
        return NULL;
    }
    if (seg_check_off(self, args[0], &off) < 0 ||
        to_int64(args[1], "cas", &expected) < 0 ||
        to_int64(args[2], "cas", &desired) < 0) {
        return NULL;
    }
    return PyBool_FromLong(tl_compare_and_set(seg_at(self, off), expected, desired));
}

static inline int
slab_in_use(SegmentObject *s, Py_ssize_t i)
{
    return tl_load(seg_at(s, s->desc_off + i * s->desc_stride)) != SLAB_FREE;
}

/* Collect archive[cell] and every non-FREE slab's cell into vals. */
static Py_ssize_t
collect_cell(SegmentObject *s, Py_ssize_t cell, int64_t *vals)
{
    Py_ssize_t k = 0;
    vals[k++] = tl_load(seg_at(s, s->archive_off + cell * 8));
    for (Py_ssize_t i = 0; i < s->nslabs; i++) {
        if (slab_in_use(s, i)) {
            vals[k++] = tl_load(seg_at(s, s->slabs_off + i * s->slab_bytes + cell * 8));
        }
    }
    return k;
}

/* Sum each cell of `cells` under one sequence bracket.  Returns a new list,
 * Py_None (borrowed semantics: new ref) if no stable read was possible, or
 * NULL on error. */
static PyObject *
seg_sum_cells(SegmentObject *s, Py_ssize_t *cells, Py_ssize_t n, int as_list)
{
    tl_cell *seq = seg_at(s, s->seq_off);
    scratch_t sc;
    if (scratch_init(&sc, s->nslabs) < 0) {
        return NULL;
    }
    for (int attempt = 0; attempt < SEQ_RETRIES; attempt++) {
        int64_t before = tl_load(seq);
        if (before & 1) {
            break; /* a fold or reset is moving counts (or died doing so) */
        }
        PyObject *out = as_list ? PyList_New(n) : NULL;
        if (as_list && out == NULL) {
            scratch_free(&sc);
            return NULL;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_ssize_t k = collect_cell(s, cells[j], sc.vals);
            PyObject *v = sum_to_pylong(sc.vals, k);
            if (v == NULL) {
                Py_XDECREF(out);
                scratch_free(&sc);
                return NULL;
            }
            if (as_list) {
                PyList_SET_ITEM(out, j, v);
            }
            else {
                out = v;
            }
        }
        atomic_thread_fence(memory_order_acquire);
        if (tl_load(seq) == before) {
            scratch_free(&sc);
            return out;
        }
        Py_XDECREF(out);
    }
    scratch_free(&sc);
    Py_RETURN_NONE;
}

static PyObject *
Segment_sum(SegmentObject *self, PyObject *arg)
{
    Py_ssize_t cell = PyLong_AsSsize_t(arg);
    if (cell == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (seg_check_cell(self, cell) < 0) {
        return NULL;
    }
    return seg_sum_cells(self, &cell, 1, 0);
}

static PyObject *
Segment_sum_many(SegmentObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "sum_many() expects a sequence of cells");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t *cells = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    if (cells == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    PyObject *r = NULL;
    for (Py_ssize_t j = 0; j < n; j++) {
        cells[j] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, j));
        if ((cells[j] == -1 && PyErr_Occurred()) ||
            seg_check_cell(self, cells[j]) < 0) {
            goto done;
        }
    }
    r = seg_sum_cells(self, cells, n, 1);
done:
    PyMem_Free(cells);
    Py_DECREF(seq);
    return r;
}

/* take(cell) -> int: exchange archive[cell] and every non-FREE slab's cell
 * with 0 and return the exact sum taken.  The caller holds the segment lock
 * and has made the sequence odd. */
static PyObject *
Segment_take(SegmentObject *self, PyObject *arg)
{
    Py_ssize_t cell = PyLong_AsSsize_t(arg);
    if (cell == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (seg_check_cell(self, cell) < 0) {
        return NULL;
    }
    scratch_t sc;
    if (scratch_init(&sc, self->nslabs) < 0) {
        return NULL;
    }
    Py_ssize_t k = 0;
    sc.vals[k++] = tl_exchange(seg_at(self, self->archive_off + cell * 8), 0);
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        if (slab_in_use(self, i)) {
            sc.vals[k++] = tl_exchange(
                seg_at(self, self->slabs_off + i * self->slab_bytes + cell * 8), 0);
        }
    }
    PyObject *r = sum_to_pylong(sc.vals, k);
    scratch_free(&sc);
    return r;
}

/* nonzero(off, lo, hi) -> [(cell, value)] for the cells lo..hi-1 of the cell
 * array starting at byte `off` (a slab or the archive) that are not 0. */
static PyObject *
Segment_nonzero(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "nonzero() takes 3 arguments");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t lo = PyLong_AsSsize_t(args[1]);
    Py_ssize_t hi = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    int is_array = off == self->archive_off;
    if (!is_array && off >= self->slabs_off &&
        (off - self->slabs_off) % self->slab_bytes == 0 &&
        (off - self->slabs_off) / self->slab_bytes < self->nslabs) {
        is_array = 1;
    }
    if (!is_array || lo < 0 || hi < lo || hi > self->ncells) {
        PyErr_SetString(PyExc_ValueError,
                        "nonzero(): not a cell array or range of this segment");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t c = lo; c < hi; c++) {
        int64_t v = tl_load(seg_at(self, off + c * 8));
        if (v != 0) {
            PyObject *t = Py_BuildValue("(nL)", c, (long long)v);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(t);
        }
    }
    return out;
}

/* slab_states() -> list[int]: every slab descriptor's state word. */
static PyObject *
Segment_slab_states(SegmentObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(self->nslabs);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        PyObject *v = PyLong_FromLongLong(
            (long long)tl_load(seg_at(self, self->desc_off + i * self->desc_stride)));
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyMethodDef Segment_methods[] = {
    {"slab_states", (PyCFunction)Segment_slab_states, METH_NOARGS,
     "slab_states() -> list[int]\n\nEvery slab's state word (acquire loads)."},
    {"bind", (PyCFunction)Segment_bind, METH_O,
     "bind(slab) -> None\n\nMake `slab` this process's slab for writes."},
    {"unbind", (PyCFunction)Segment_unbind, METH_NOARGS,
     "unbind() -> None\n\nForget this process's slab (after fork)."},
    {"bound_slab", (PyCFunction)Segment_bound_slab, METH_NOARGS,
     "bound_slab() -> int\n\nThis process's slab, or -1."},
    {"load", (PyCFunction)Segment_load, METH_O,
     "load(off) -> int\n\nAcquire-load the int64 at byte offset `off`."},
    {"store", (PyCFunction)(void (*)(void))Segment_store, METH_FASTCALL,
     "store(off, v) -> None\n\nSequentially consistent store."},
    {"exchange", (PyCFunction)(void (*)(void))Segment_exchange, METH_FASTCALL,
     "exchange(off, v) -> int\n\nAtomic exchange; returns the old value."},
    {"add", (PyCFunction)(void (*)(void))Segment_add, METH_FASTCALL,
     "add(off, n) -> int\n\nAtomic checked add; returns the new value."},
    {"cas", (PyCFunction)(void (*)(void))Segment_cas, METH_FASTCALL,
     "cas(off, expected, new) -> bool\n\nAtomic compare-and-set."},
    {"sum", (PyCFunction)Segment_sum, METH_O,
     "sum(cell) -> int | None\n\nThe cell's value across archive and slabs, or "
     "None when no stable read was possible without the lock."},
    {"sum_many", (PyCFunction)Segment_sum_many, METH_O,
     "sum_many(cells) -> list[int] | None\n\nsum() of each cell, one bracket."},
    {"take", (PyCFunction)Segment_take, METH_O,
     "take(cell) -> int\n\nExchange the cell everywhere with 0 (lock held)."},
    {"nonzero", (PyCFunction)(void (*)(void))Segment_nonzero, METH_FASTCALL,
     "nonzero(off, lo, hi) -> list[tuple[int, int]]"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Segment_members[] = {
    {"ncells", T_PYSSIZET, offsetof(SegmentObject, ncells), READONLY, NULL},
    {"nslabs", T_PYSSIZET, offsetof(SegmentObject, nslabs), READONLY, NULL},
    {"size", T_PYSSIZET, offsetof(SegmentObject, size), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Segment_slots[] = {
    {Py_tp_doc, "Segment(buffer, ncells, slab_bytes, nslabs, desc_off, "
                "desc_stride, archive_off, slabs_off, seq_off, binder)\n--\n\n"
                "Atomic access to a mapped tallies segment (see shm.py)."},
    {Py_tp_new, Segment_new},
    {Py_tp_dealloc, Segment_dealloc},
    {Py_tp_traverse, Segment_traverse},
    {Py_tp_clear, Segment_clear},
    {Py_tp_methods, Segment_methods},
    {Py_tp_members, Segment_members},
    {0, NULL},
};

static PyType_Spec Segment_spec = {
    "tallies._tallies.Segment", sizeof(SegmentObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Segment_slots,
};

/* ---- Cell: one counter's cell in this process's slab -------------------- */

typedef struct {
    PyObject_HEAD
    SegmentObject *seg;
    Py_ssize_t cell;
} CellObject;

static PyTypeObject *segment_type;

static PyObject *
Cell_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segment", "cell", NULL};
    PyObject *seg;
    Py_ssize_t cell;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!n:Cell", kwlist,
                                     segment_type, &seg, &cell)) {
        return NULL;
    }
    if (seg_check_cell((SegmentObject *)seg, cell) < 0) {
        return NULL;
    }
    CellObject *self = (CellObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->seg = (SegmentObject *)Py_NewRef(seg);
    self->cell = cell;
    return (PyObject *)self;
}

static int
Cell_traverse(CellObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->seg);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
Cell_clear(CellObject *self)
{
    Py_CLEAR(self->seg);
    return 0;
}

static void
Cell_dealloc(CellObject *self)
{
    tl_dealloc((PyObject *)self, (inquiry)Cell_clear, NULL);
}

/* The update of increment, decrement, += and -= (_counter_methods.h). */
static TL_ALWAYS_INLINE int
Cell_update(CellObject *self, int64_t n, int sub, const char *op)
{
    int64_t v;
    if (TL_UNLIKELY(self->seg == NULL)) {
        PyErr_SetString(PyExc_ValueError, "the counter's segment is gone");
        return -1;
    }
    tl_cell *c = seg_own_cell(self->seg, self->cell);
    if (TL_UNLIKELY(c == NULL)) {
        return -1;
    }
    if (TL_UNLIKELY(tl_add(c, n, sub, &v) != TL_OK)) {
        overflow_result(op, n);
        return -1;
    }
    return 0;
}

TL_COUNTER_UPDATE_METHODS(Cell, CellObject)

static PyMethodDef Cell_methods[] = {
    {"increment", (PyCFunction)(void (*)(void))Cell_increment, FASTKW,
     "increment(n=1) -> None\n\nAdd n to this process's cell, lock-free."},
    {"decrement", (PyCFunction)(void (*)(void))Cell_decrement, FASTKW,
     "decrement(n=1) -> None\n\nSubtract n from this process's cell, lock-free."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Cell_members[] = {
    {"segment", T_OBJECT, offsetof(CellObject, seg), READONLY, NULL},
    {"cell", T_PYSSIZET, offsetof(CellObject, cell), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Cell_slots[] = {
    {Py_tp_doc, "Cell(segment, cell)\n--\n\nThe write side of one shared counter."},
    {Py_tp_new, Cell_new},
    {Py_tp_dealloc, Cell_dealloc},
    {Py_tp_traverse, Cell_traverse},
    {Py_tp_clear, Cell_clear},
    {Py_tp_methods, Cell_methods},
    {Py_tp_members, Cell_members},
    {Py_nb_inplace_add, Cell_iadd},
    {Py_nb_inplace_subtract, Cell_isub},
    {0, NULL},
};

static PyType_Spec Cell_spec = {
    "tallies._tallies.Cell", sizeof(CellObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, Cell_slots,
};

/* ---- KeyedCells: the write side of one shared keyed counter ------------- */

/* The cell cache `cells` is private: only this file writes it, and only with
 * cells checked against the segment (register's and find's answers), so the
 * lock-free increment can trust what it reads there.  Python sees it through
 * a read-only view (`cells`); a dict Python could write would let any code
 * point a key at another counter's cell or outside the slab. */
typedef struct {
    PyObject_HEAD
    SegmentObject *seg;
    PyObject *cells;    /* dict: str key -> int cell (checked), private */
    PyObject *register_; /* register(key) -> cell, under the segment lock */
    PyObject *find;     /* find(key) -> cell or None, registers nothing; or NULL */
} KeyedObject;

static PyObject *
Keyed_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segment", "register", "find", NULL};
    PyObject *seg, *reg, *find = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O|O:KeyedCells", kwlist,
                                     segment_type, &seg, &reg, &find)) {
        return NULL;
    }
    if (!PyCallable_Check(reg)) {
        PyErr_SetString(PyExc_TypeError, "KeyedCells() register must be callable");
        return NULL;
    }
    if (find != Py_None && !PyCallable_Check(find)) {
        PyErr_SetString(PyExc_TypeError, "KeyedCells() find must be callable or None");
        return NULL;
    }
    KeyedObject *self = (KeyedObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->cells = PyDict_New();
    if (self->cells == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->seg = (SegmentObject *)Py_NewRef(seg);
    self->register_ = Py_NewRef(reg);
    self->find = find == Py_None ? NULL : Py_NewRef(find);
    return (PyObject *)self;
}

static int
Keyed_traverse(KeyedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->seg);
    Py_VISIT(self->cells);
    Py_VISIT(self->register_);
    Py_VISIT(self->find);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
Keyed_clear(KeyedObject *self)
{
    Py_CLEAR(self->seg);
    Py_CLEAR(self->cells);
    Py_CLEAR(self->register_);
    Py_CLEAR(self->find);
    return 0;
}

static void
Keyed_dealloc(KeyedObject *self)
{
    tl_dealloc((PyObject *)self, (inquiry)Keyed_clear, NULL);
}

/* Ask `fn` (register or find) for key's cell and remember it: the cell, -2
 * when find says the key has none (None), -1 with an error set.  Only a cell
 * inside the segment is remembered. */
static Py_ssize_t
keyed_ask(KeyedObject *self, PyObject *fn, PyObject *key, int none_ok)
{
    PyObject *r = PyObject_CallOneArg(fn, key);
    if (r == NULL) {
        return -1;
    }
    if (none_ok && r == Py_None) {
        Py_DECREF(r);
        return -2;
    }
    Py_ssize_t cell = PyLong_AsSsize_t(r);
    if ((cell == -1 && PyErr_Occurred()) || seg_check_cell(self->seg, cell) < 0 ||
        PyDict_SetItem(self->cells, key, r) < 0) {
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(r);
    return cell;
}

/* key's remembered cell, -2 when none is, -1 with an error set. */
static Py_ssize_t
keyed_known(KeyedObject *self, PyObject *key, const char *fname)
{
    if (TL_UNLIKELY(!PyUnicode_Check(key))) {
        PyErr_Format(PyExc_TypeError, "%s() key must be a str, not '%.200s'",
                     fname, Py_TYPE(key)->tp_name);
        return -1;
    }
    if (TL_UNLIKELY(self->cells == NULL || self->seg == NULL)) {
        PyErr_SetString(PyExc_ValueError, "the keyed counter's segment is gone");
        return -1;
    }
    PyObject *c = PyDict_GetItemWithError(self->cells, key); /* borrowed */
    if (TL_LIKELY(c != NULL)) {
        return PyLong_AsSsize_t(c); /* checked when remembered: in 0..ncells-1 */
    }
    return PyErr_Occurred() ? -1 : -2;
}

/* The cell of `key`, registering it on first use; -1 with an error set. */
static Py_ssize_t
keyed_cell(KeyedObject *self, PyObject *key, const char *fname)
{
    Py_ssize_t cell = keyed_known(self, key, fname);
    if (TL_LIKELY(cell >= 0) || cell == -1) {
        return cell;
    }
    return keyed_ask(self, self->register_, key, 0);
}

/* lookup(key) -> int | None: key's cell without registering it. */
static PyObject *
Keyed_lookup(KeyedObject *self, PyObject *key)
{
    Py_ssize_t cell = keyed_known(self, key, "lookup");
    if (cell == -2 && self->find != NULL) {
        cell = keyed_ask(self, self->find, key, 1);
    }
    if (cell == -1) {
        return NULL;
    }
    if (cell == -2) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(cell);
}

/* cells: a read-only view of the cache. */
static PyObject *
Keyed_get_cells(KeyedObject *self, void *Py_UNUSED(closure))
{
    if (self->cells == NULL) {
        PyErr_SetString(PyExc_ValueError, "the keyed counter's segment is gone");
        return NULL;
    }
    return PyDictProxy_New(self->cells);
}

/* increment(key, n=1) and decrement(key, n=1) (_counter_methods.h); key
 * and n may be given by keyword. */
static TL_ALWAYS_INLINE PyObject *
Keyed_update_key(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, int sub, const char *fname)
{
    static const char *const names[] = {"key", "n"};
    PyObject *slots[2] = {NULL, NULL};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)",
                     fname, nargs + nkw);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        slots[i] = args[i];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        int j;
        for (j = 0; j < 2; j++) {
            if (PyUnicode_CompareWithASCIIString(kw, names[j]) == 0) {
                break;
            }
        }
        if (j == 2) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'", fname, kw);
            return NULL;
        }
        if (slots[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[j]);
            return NULL;
        }
        slots[j] = args[nargs + i];
    }
    if (slots[0] == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'key'", fname);
        return NULL;
    }
    int64_t n = 1, v;
    if (slots[1] != NULL && to_int64(slots[1], fname, &n) < 0) {
        return NULL;
    }
    if (TL_UNLIKELY(sub && n == INT64_MIN) && self->cells != NULL &&
        PyUnicode_Check(slots[0])) {
        /* 0 - INT64_MIN overflows the cell of a key this object never wrote (its
         * own cell is 0): refuse before the key is registered, so that a refused
         * update lists nothing (docs/contract.md).  `find` checks the key rule
         * first (a bad key is refused for that), and a key already registered
         * goes the normal way (tl_add checks its cell). */
        int known = PyDict_Contains(self->cells, slots[0]);
        if (known < 0) {
            return NULL;
        }
        if (!known) {
            Py_ssize_t found = -2;
            if (self->find != NULL) {
                found = keyed_ask(self, self->find, slots[0], 1);
            }
            if (found == -1) {
                return NULL;
            }
            if (found == -2) {
                return overflow_result(fname, n);
            }
        }
    }
    Py_ssize_t cell = keyed_cell(self, slots[0], fname);
    if (cell < 0) {
        return NULL;
    }
    tl_cell *c = seg_own_cell(self->seg, cell);
    if (TL_UNLIKELY(c == NULL)) {
        return NULL;
    }
    if (TL_UNLIKELY(tl_add(c, n, sub, &v) != TL_OK)) {
        return overflow_result(fname, n);
    }
    Py_RETURN_NONE;
}

TL_KEYED_UPDATE_METHODS(Keyed, KeyedObject)

static PyMethodDef Keyed_methods[] = {
    {"increment", (PyCFunction)(void (*)(void))Keyed_increment, FASTKW,
     "increment(key, n=1) -> None\n\nAdd n to key's cell in this process's slab."},
    {"decrement", (PyCFunction)(void (*)(void))Keyed_decrement, FASTKW,
     "decrement(key, n=1) -> None\n\nSubtract n from key's cell in this process's slab."},
    {"lookup", (PyCFunction)Keyed_lookup, METH_O,
     "lookup(key) -> int | None\n\nkey's cell, asking find() when it is not known "
     "yet; None when the key has none (nothing is registered)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Keyed_members[] = {
    {"segment", T_OBJECT, offsetof(KeyedObject, seg), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Keyed_getset[] = {
    {"cells", (getter)Keyed_get_cells, NULL,
     "A read-only view of the cells known so far: {key: cell}.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Keyed_slots[] = {
    {Py_tp_doc, "KeyedCells(segment, register, find=None)\n--\n\n"
                "The write side of one shared keyed counter."},
    {Py_tp_new, Keyed_new},
    {Py_tp_dealloc, Keyed_dealloc},
    {Py_tp_traverse, Keyed_traverse},
    {Py_tp_clear, Keyed_clear},
    {Py_tp_methods, Keyed_methods},
    {Py_tp_members, Keyed_members},
    {Py_tp_getset, Keyed_getset},
    {0, NULL},
};

static PyType_Spec Keyed_spec = {
    "tallies._tallies.KeyedCells", sizeof(KeyedObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, Keyed_slots,
};

/* ---- the module exec ------------------------------------------------------ */

/* ---- RateCell: one rate's ring in this process's slab (shm:// rates) -----
 *
 * tallies/stores/_shm_rates.py has the design: each writer slab holds its
 * own ring per rate; an increment is one atomic add to this slab's total,
 * and, once per bucket, a mark, written by the Python method the object is
 * given (`rotate(slab, ring offset, ns) -> the first ns after the newest
 * bucket`, under the segment's thread lock).  This is that hot path in C:
 * the bound slab's ring, the clock (CLOCK_MONOTONIC_COARSE when the bucket
 * is at least 10 ticks, as in-process), one compare with the cached
 * boundary, one checked add.  _shm_rates installs the reading methods. */

typedef struct {
    PyObject_HEAD
    SegmentObject *seg;
    Py_ssize_t rates_off, slab_stride, unit_off;
    int64_t res_ns;
    clockid_t clk;
    Py_ssize_t bslab; /* the slab `boundary` is for (-1: none yet) */
    int64_t boundary;
    PyObject *rotate;
    PyObject *clock; /* None, or a callable returning ns (tests drive it) */
    /* the Python side's attributes (_shm_rates.ShmRate): members, not a
     * __dict__, so that a method call needs no instance-dict check */
    PyObject *a_seg, *a_idx, *a_name, *a_url, *a_sp, *a_ring;
    PyObject *weakrefs;
} RateCellObject;

static int64_t rc_coarse_tick = -1;

static PyObject *
RateCell_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    RateCellObject *self = (RateCellObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->bslab = -1;
    }
    return (PyObject *)self;
}

/* _setup(segment, rates_off, slab_stride, unit_off, res_ns, rotate) */
static PyObject *
RateCell_setup(RateCellObject *self, PyObject *args)
{
    PyObject *seg, *rotate;
    Py_ssize_t rates_off, slab_stride, unit_off;
    long long res_ns;
    if (!PyArg_ParseTuple(args, "O!nnnLO:_setup", segment_type, &seg, &rates_off, &slab_stride,
                          &unit_off, &res_ns, &rotate)) {
        return NULL;
    }
    SegmentObject *s = (SegmentObject *)seg;
    if (res_ns < 1 || rates_off < 0 || slab_stride < 1 || unit_off < 0 ||
        rates_off + s->nslabs * slab_stride > s->size || unit_off + 16 > slab_stride) {
        PyErr_SetString(PyExc_ValueError, "RateCell._setup: the ring is outside the segment");
        return NULL;
    }
    Py_XSETREF(self->seg, (SegmentObject *)Py_NewRef(seg));
    Py_XSETREF(self->rotate, Py_NewRef(rotate));
    self->rates_off = rates_off;
    self->slab_stride = slab_stride;
    self->unit_off = unit_off;
    self->res_ns = res_ns;
    self->clk = (rc_coarse_tick > 0 && res_ns >= 10 * rc_coarse_tick) ? CLOCK_MONOTONIC_COARSE
                                                                     : CLOCK_MONOTONIC;
    self->bslab = -1;
    Py_RETURN_NONE;
}

static int
RateCell_traverse(RateCellObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->seg);
    Py_VISIT(self->rotate);
    Py_VISIT(self->clock);
    Py_VISIT(self->a_seg);
    Py_VISIT(self->a_idx);
    Py_VISIT(self->a_name);
    Py_VISIT(self->a_url);
    Py_VISIT(self->a_sp);
    Py_VISIT(self->a_ring);
    return 0;
}

static int
RateCell_clear(RateCellObject *self)
{
    Py_CLEAR(self->seg);
    Py_CLEAR(self->rotate);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->a_seg);
    Py_CLEAR(self->a_idx);
    Py_CLEAR(self->a_name);
    Py_CLEAR(self->a_url);
    Py_CLEAR(self->a_sp);
    Py_CLEAR(self->a_ring);
    return 0;
}

static void
RateCell_dealloc(RateCellObject *self)
{
    tl_dealloc((PyObject *)self, (inquiry)RateCell_clear, &self->weakrefs);
}

/* The first event of a newer bucket (or of a slab this object had not used):
 * the Python side writes the mark; returns the new boundary. */
static TL_COLD int
RateCell_rotate(RateCellObject *self, Py_ssize_t s, Py_ssize_t off, int64_t ns)
{
    PyObject *b = PyObject_CallFunction(self->rotate, "nnL", s, off, (long long)ns);
    if (b == NULL) {
        return -1;
    }
    long long v = PyLong_AsLongLong(b);
    Py_DECREF(b);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    self->boundary = (int64_t)v;
    self->bslab = s;
    return 0;
}

static TL_COLD int
RateCell_user_ns(RateCellObject *self, int64_t *ns)
{
    PyObject *v = PyObject_CallNoArgs(self->clock);
    if (v == NULL) {
        return -1;
    }
    int r = to_int64(v, "clock", ns);
    Py_DECREF(v);
    return r;
}

static TL_ALWAYS_INLINE int
RateCell_update(RateCellObject *self, int64_t n, int sub, const char *op)
{
    SegmentObject *seg = self->seg;
    if (TL_UNLIKELY(seg == NULL)) {
        PyErr_SetString(PyExc_ValueError, "the rate's segment is gone");
        return -1;
    }
    if (TL_UNLIKELY(atomic_load_explicit(&seg->mine, memory_order_acquire) == NULL) &&
        seg_bind_slow(seg) == NULL) {
        return -1;
    }
    Py_ssize_t s = seg->mine_index;
    Py_ssize_t off = self->rates_off + s * self->slab_stride + self->unit_off;
    int64_t ns;
    if (TL_LIKELY(self->clock == NULL || self->clock == Py_None)) {
        struct timespec ts;
        clock_gettime(self->clk, &ts);
        ns = (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
    }
    else if (RateCell_user_ns(self, &ns) < 0) {
        return -1;
    }
    if (TL_UNLIKELY(s != self->bslab || ns >= self->boundary) &&
        RateCell_rotate(self, s, off, ns) < 0) {
        return -1;
    }
    int64_t v;
    if (TL_UNLIKELY(tl_add(seg_at(seg, off + 8), n, sub, &v) != TL_OK)) {
        return tl_update_failed(TL_OVERFLOW, op, n, "this process's share of the rate");
    }
    return 0;
}

TL_UPDATE_METHODS(RateCell, RateCellObject)

static PyMethodDef RateCell_methods[] = {
    {"increment", (PyCFunction)(void (*)(void))RateCell_increment, FASTKW,
     "increment(n=1) -> None\n\nCount n events now (this process's ring, lock-free)."},
    {"decrement", (PyCFunction)(void (*)(void))RateCell_decrement, FASTKW,
     "decrement(n=1) -> None\n\nCount -n events now."},
    {"_setup", (PyCFunction)RateCell_setup, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef RateCell_members[] = {
    {"clock", T_OBJECT, offsetof(RateCellObject, clock), 0,
     "None (the monotonic clock) or a callable returning ns."},
    {"_seg", T_OBJECT, offsetof(RateCellObject, a_seg), 0, NULL},
    {"_idx", T_OBJECT, offsetof(RateCellObject, a_idx), 0, NULL},
    {"_name", T_OBJECT, offsetof(RateCellObject, a_name), 0, NULL},
    {"_url", T_OBJECT, offsetof(RateCellObject, a_url), 0, NULL},
    {"_sp", T_OBJECT, offsetof(RateCellObject, a_sp), 0, NULL},
    {"_ring", T_OBJECT, offsetof(RateCellObject, a_ring), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(RateCellObject, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot RateCell_slots[] = {
    {Py_tp_doc, "A rate shared by every process that opens the segment (shm://)."},
    {Py_tp_new, RateCell_new},
    {Py_tp_dealloc, RateCell_dealloc},
    {Py_tp_traverse, RateCell_traverse},
    {Py_tp_clear, RateCell_clear},
    {Py_tp_methods, RateCell_methods},
    {Py_tp_members, RateCell_members},
    {0, NULL},
};

static PyType_Spec RateCell_spec = {
    "tallies.stores.ShmRate", sizeof(RateCellObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, RateCell_slots,
};

int
tl_shm_exec(PyObject *m)
{
    PyTypeObject *seg = tl_add_type(m, &Segment_spec, TL_SEGMENT, 1);
    if (seg == NULL || tl_add_type(m, &Cell_spec, TL_CELL, 1) == NULL ||
        tl_add_type(m, &Keyed_spec, TL_KEYED_CELLS, 1) == NULL ||
        tl_add_type(m, &RateCell_spec, TL_RATE_CELL, 1) == NULL) {
        return -1;
    }
    struct timespec res;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0 && res.tv_sec == 0) {
        rc_coarse_tick = res.tv_nsec;
    }
    if (segment_type == NULL) {
        segment_type = seg;
    }
    if (PyModule_AddIntConstant(m, "SLAB_FREE", SLAB_FREE) < 0 ||
        PyModule_AddIntConstant(m, "LINE", TL_LINE) < 0) {
        return -1;
    }
    return 0;
}
