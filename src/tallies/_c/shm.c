/*
 * shm.c: the hot path of counters shared by processes (shm://NAME); part of
 * tallies._tallies (_module.h).
 *
 * Read src/tallies/stores/shm.py first (its design comment), then
 * stores/_shm_segment.py: it owns the segment file, its layout, the name and
 * key directories, slab ownership, folding and every lock.  This
 * file only does what must be fast or atomic: cell updates, exact sums across
 * slabs, the lock-free insert of new keys (_shmkeys.h), the page reservations
 * of the sparse file (seg_reserve_off, seg_written), and the atomic
 * loads/stores/exchanges that the Python side uses on the same memory.
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
 * increment is: one load of `mine`, one lock-prefixed CAS (for a key, after
 * one probe of the process's key -> cell cache, _shmcache.h).
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

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The key directory's test hook (its crash points): see seg_crash. */
struct tkd_dir;
static void seg_crash(struct tkd_dir *d, int point);
#define TKD_CRASH(d, point) seg_crash((d), (point))
#include "_shmkeys.h"

/* The key -> cell cache of a KeyedCells (_shmcache.h): exact str keys,
 * compared without running Python code. */
#include "_internals.h" /* tl_key_hash */
#ifdef Py_GIL_DISABLED
#define TSC_CONCURRENT 1
typedef PyMutex tsc_lock_t;
#define TSC_LOCK(l) PyMutex_Lock(l)
#define TSC_UNLOCK(l) PyMutex_Unlock(l)
#else
#define TSC_CONCURRENT 0 /* the GIL excludes other threads: nothing to take */
typedef char tsc_lock_t;
#define TSC_LOCK(l) ((void)(l))
#define TSC_UNLOCK(l) ((void)(l))
#endif
#define TSC_EQ(a, b) (PyUnicode_Compare((PyObject *)(a), (PyObject *)(b)) == 0)
#define TSC_INCREF(k) Py_INCREF((PyObject *)(k))
#define TSC_DECREF(k) Py_DECREF((PyObject *)(k))
#define TSC_MALLOC(n) PyMem_RawMalloc(n)
#define TSC_FREE(p) PyMem_RawFree(p)
#include "_shmcache.h"

#define SLAB_FREE 0
#define SEG_PAGE 4096
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
    /* The key directory (_shmkeys.h) and the page reservations, set by
     * attach_keys(); keys.hash is NULL until then. */
    tkd_dir keys;
    Py_ssize_t names_cap;
    int fd;                    /* the segment file, for posix_fallocate */
    _Atomic uint64_t *bitmap;  /* one bit per page of the file: allocated */
    Py_ssize_t npages;
    PyObject *full_error;      /* CapacityError */
    PyObject *corrupt_error;   /* CorruptSegmentError */
    PyObject *label;           /* "shm://NAME" */
    _Atomic uint64_t bind_gen; /* bumped by every bind() */
    int crash_point, crash_nth; /* TALLIES_SHM_CRASH=key-<point>[:n] */
    _Atomic int crash_hits;
} SegmentObject;

/* ---- page reservations ---------------------------------------------------
 *
 * The segment file is sparse: only the pages something wrote use memory.  A
 * write to a page that the file system cannot back would be a SIGBUS, so a
 * page is allocated (posix_fallocate) before its first write, and that is
 * recorded in the segment's page bitmap, shared by every process: after the
 * first time, reserving is one load.  A full file system is then a
 * CapacityError from the call that needed the page, with nothing changed. */

/* Was the page at `off` ever reserved?  If not, nothing was ever written
 * there and it reads as 0: readers test this before loading from the sparse
 * parts, because on tmpfs even a read fault of a hole allocates a page (and
 * a full file system would make it a SIGBUS).  A writer sets the bit before
 * its first write, so a reader that sees it clear reads before that write. */
static inline int
seg_written(SegmentObject *s, Py_ssize_t off)
{
    Py_ssize_t p = off / SEG_PAGE;
    return s->bitmap == NULL ||
           (atomic_load_explicit(&s->bitmap[p / 64], memory_order_acquire) >> (p % 64)) & 1;
}

static inline int64_t
seg_read(SegmentObject *s, Py_ssize_t off)
{
    return seg_written(s, off) ? tl_load((tl_cell *)(s->base + off)) : 0;
}

static int
seg_reserve_off(SegmentObject *s, Py_ssize_t off, Py_ssize_t len)
{
    if (s->bitmap == NULL || len <= 0) {
        return 0;
    }
    Py_ssize_t p = off / SEG_PAGE, last = (off + len - 1) / SEG_PAGE;
    while (p <= last) {
        if (atomic_load_explicit(&s->bitmap[p / 64], memory_order_acquire) &
            ((uint64_t)1 << (p % 64))) {
            p++;
            continue;
        }
        Py_ssize_t q = p + 1; /* a run of pages not yet allocated */
        while (q <= last && !(atomic_load_explicit(&s->bitmap[q / 64], memory_order_acquire) &
                              ((uint64_t)1 << (q % 64)))) {
            q++;
        }
        int rc = posix_fallocate(s->fd, (off_t)p * SEG_PAGE, (off_t)(q - p) * SEG_PAGE);
        if (rc != 0) {
            errno = rc;
            return -1;
        }
#ifdef MADV_POPULATE_WRITE
        /* Map them here now, one call instead of a fault per page (Linux >=
         * 5.14; elsewhere each page faults in on its first write). */
        (void)madvise(s->base + p * SEG_PAGE, (size_t)(q - p) * SEG_PAGE, MADV_POPULATE_WRITE);
#endif
        for (Py_ssize_t i = p; i < q; i++) {
            atomic_fetch_or_explicit(&s->bitmap[i / 64], (uint64_t)1 << (i % 64),
                                     memory_order_release);
        }
        p = q;
    }
    return 0;
}

static int
seg_tkd_written(tkd_dir *d, const void *addr)
{
    SegmentObject *s = d->ctx;
    return seg_written(s, (const char *)addr - s->base);
}

static int
seg_tkd_reserve(tkd_dir *d, void *addr, int64_t len)
{
    SegmentObject *s = d->ctx;
    return seg_reserve_off(s, (char *)addr - s->base, (Py_ssize_t)len);
}

/* Raise the CapacityError of a failed reservation (errno set). */
static void
seg_full_error(SegmentObject *s)
{
    PyErr_Format(s->full_error ? s->full_error : PyExc_OSError,
                 "%U: cannot grow the segment file: %s (its file system is full; "
                 "free memory in /dev/shm or TALLIES_SHM_DIR)",
                 s->label ? s->label : Py_None, strerror(errno));
}

static void
seg_crash(struct tkd_dir *d, int point)
{
    SegmentObject *s = d->ctx;
    if (TL_UNLIKELY(s->crash_point == point) &&
        atomic_fetch_add(&s->crash_hits, 1) + 1 == s->crash_nth) {
        _exit(86); /* _shm_segment.CRASH_EXIT: as a SIGKILL would */
    }
}

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

/* A key's cell as key_find and KeyedCells.lookup return it: the cell, None
 * for -2 (no cell), NULL for -1 (an error is set). */
static PyObject *
cell_or_none(Py_ssize_t cell)
{
    if (cell == -1) {
        return NULL;
    }
    if (cell == -2) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(cell);
}

/* A cell number from a Python int, checked: 0, or -1 with an error set. */
static int
seg_cell_of(SegmentObject *s, PyObject *arg, Py_ssize_t *cell)
{
    *cell = PyLong_AsSsize_t(arg);
    if (*cell == -1 && PyErr_Occurred()) {
        return -1;
    }
    return seg_check_cell(s, *cell);
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
    self->fd = -1;
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

#define SEGMENT_REFS(X) X(self->binder) X(self->full_error) X(self->corrupt_error) X(self->label)
TL_GC_FUNCS(Segment, SegmentObject, SEGMENT_REFS)

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
    Py_ssize_t off = self->slabs_off + i * self->slab_bytes;
    if (seg_reserve_off(self, off, self->names_cap * 8) < 0) { /* the counters' cells */
        seg_full_error(self);
        return NULL;
    }
    self->mine_index = i;
    atomic_store_explicit(&self->mine, self->base + off, memory_order_release);
    atomic_fetch_add_explicit(&self->bind_gen, 1, memory_order_acq_rel);
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

/* store(off, v) -> None (sequentially consistent), exchange(off, v) -> the
 * old value, add(off, n) -> the new value (OverflowError, nothing changed,
 * if it leaves int64): one body, `op` says which. */
enum { SEG_STORE, SEG_EXCHANGE, SEG_ADD };

static PyObject *
seg_value_op(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs, int op)
{
    static const char *const names[] = {"store", "exchange", "add"};
    const char *fname = names[op];
    Py_ssize_t off;
    int64_t v, out;
    if (tl_nargs(nargs, 2, fname) < 0 || seg_check_off(self, args[0], &off) < 0 ||
        to_int64(args[1], fname, &v) < 0) {
        return NULL;
    }
    tl_cell *p = seg_at(self, off);
    if (op == SEG_STORE) {
        atomic_store_explicit(p, v, memory_order_seq_cst);
        Py_RETURN_NONE;
    }
    if (op == SEG_EXCHANGE) {
        out = tl_exchange(p, v);
    }
    else if (tl_add(p, v, 0, &out) != TL_OK) {
        return overflow_result(fname, v);
    }
    return PyLong_FromLongLong((long long)out);
}

static PyObject *
Segment_store(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return seg_value_op(self, args, nargs, SEG_STORE);
}

static PyObject *
Segment_exchange(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return seg_value_op(self, args, nargs, SEG_EXCHANGE);
}

static PyObject *
Segment_add(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return seg_value_op(self, args, nargs, SEG_ADD);
}

static PyObject *
Segment_cas(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int64_t expected, desired;
    if (tl_nargs(nargs, 3, "cas") < 0) {
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
    vals[k++] = seg_read(s, s->archive_off + cell * 8);
    for (Py_ssize_t i = 0; i < s->nslabs; i++) {
        if (slab_in_use(s, i)) {
            vals[k++] = seg_read(s, s->slabs_off + i * s->slab_bytes + cell * 8);
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
    Py_ssize_t cell;
    return seg_cell_of(self, arg, &cell) < 0 ? NULL : seg_sum_cells(self, &cell, 1, 0);
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
        if (seg_cell_of(self, PySequence_Fast_GET_ITEM(seq, j), &cells[j]) < 0) {
            goto done;
        }
    }
    r = seg_sum_cells(self, cells, n, 1);
done:
    PyMem_Free(cells);
    Py_DECREF(seq);
    return r;
}

static inline int64_t
take_one(SegmentObject *s, Py_ssize_t off)
{
    return seg_read(s, off) == 0 ? 0 : tl_exchange(seg_at(s, off), 0);
}

/* take(cell) -> int: exchange archive[cell] and every non-FREE slab's cell
 * with 0 and return the exact sum taken.  The caller holds the segment lock
 * and has made the sequence odd. */
static PyObject *
Segment_take(SegmentObject *self, PyObject *arg)
{
    Py_ssize_t cell;
    scratch_t sc;
    if (seg_cell_of(self, arg, &cell) < 0 || scratch_init(&sc, self->nslabs) < 0) {
        return NULL;
    }
    /* A cell at 0 is skipped, not exchanged: the take happens at that load
     * for it (an increment after it lands in a later value), and a page of
     * the sparse file that nobody wrote stays unallocated. */
    Py_ssize_t k = 0;
    sc.vals[k++] = take_one(self, self->archive_off + cell * 8);
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        if (slab_in_use(self, i)) {
            sc.vals[k++] = take_one(self, self->slabs_off + i * self->slab_bytes + cell * 8);
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
    if (tl_nargs(nargs, 3, "nonzero") < 0) {
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
        int64_t v = seg_read(self, off + c * 8);
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

/* ---- the key directory (_shmkeys.h) --------------------------------------- */

static int
seg_in(SegmentObject *s, Py_ssize_t off, Py_ssize_t len)
{
    return off >= 0 && len >= 0 && off <= s->size && len <= s->size - off;
}

static int
crash_point_from_env(SegmentObject *s)
{
    const char *spec = getenv("TALLIES_SHM_CRASH");
    static const char *const points[] = {"key-claimed", "key-written", "key-published"};
    if (spec == NULL) {
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(points[i]);
        if (strncmp(spec, points[i], n) == 0 && (spec[n] == '\0' || spec[n] == ':')) {
            s->crash_point = i + 1;
            s->crash_nth = spec[n] == ':' ? atoi(spec + n + 1) : 1;
        }
    }
    return 0;
}

/* attach_keys(names_cap, keys_cap, hash_off, slots, entries_off, heap_off,
 *             heap_cap, used_off, heap_used_off, bitmap_off, fd,
 *             full_error, corrupt_error, label) -> None */
static PyObject *
Segment_attach_keys(SegmentObject *self, PyObject *args)
{
    Py_ssize_t names_cap, keys_cap, hash_off, slots, entries_off, heap_off, heap_cap, used_off,
        heap_used_off, bitmap_off;
    int fd;
    PyObject *full, *corrupt, *label;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnniOOU:attach_keys", &names_cap, &keys_cap,
                          &hash_off, &slots, &entries_off, &heap_off, &heap_cap, &used_off,
                          &heap_used_off, &bitmap_off, &fd, &full, &corrupt, &label)) {
        return NULL;
    }
    Py_ssize_t npages = self->size / SEG_PAGE;
    int ok = self->keys.hash == NULL && names_cap >= 0 && keys_cap >= 0 &&
             keys_cap <= (Py_ssize_t)1 << (TKD_INDEX_BITS - 1) &&
             names_cap <= self->ncells - keys_cap && slots > 0 && (slots & (slots - 1)) == 0 &&
             slots >= 2 * keys_cap && slots <= PY_SSIZE_T_MAX / 4 && hash_off % 8 == 0 &&
             seg_in(self, hash_off, slots * 4) && entries_off % 8 == 0 &&
             keys_cap <= PY_SSIZE_T_MAX / TKD_ENTRY &&
             seg_in(self, entries_off, keys_cap * TKD_ENTRY) && heap_off % 8 == 0 &&
             seg_in(self, heap_off, heap_cap) && used_off % 8 == 0 &&
             seg_in(self, used_off, 8) && heap_used_off % 8 == 0 &&
             seg_in(self, heap_used_off, 8) && bitmap_off % 8 == 0 &&
             seg_in(self, bitmap_off, (npages + 63) / 64 * 8) && fd >= 0 &&
             PyExceptionClass_Check(full) && PyExceptionClass_Check(corrupt);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "attach_keys(): the key directory does not fit the segment");
        return NULL;
    }
    self->names_cap = names_cap;
    self->fd = fd;
    self->npages = npages;
    self->bitmap = (_Atomic uint64_t *)(self->base + bitmap_off);
    self->full_error = Py_NewRef(full);
    self->corrupt_error = Py_NewRef(corrupt);
    self->label = Py_NewRef(label);
    crash_point_from_env(self);
    self->keys.slots = (uint64_t)slots;
    self->keys.entries = self->base + entries_off;
    self->keys.cap = keys_cap;
    self->keys.heap = self->base + heap_off;
    self->keys.heap_cap = heap_cap;
    self->keys.used = seg_at(self, used_off);
    self->keys.heap_used = seg_at(self, heap_used_off);
    self->keys.reserve = seg_tkd_reserve;
    self->keys.written = seg_tkd_written;
    self->keys.ctx = self;
    self->keys.hash = (_Atomic uint32_t *)(self->base + hash_off); /* last: attached */
    Py_RETURN_NONE;
}

static int
seg_need_keys(SegmentObject *s)
{
    if (s->keys.hash == NULL) {
        PyErr_SetString(PyExc_ValueError, "this segment has no key directory attached");
        return -1;
    }
    return 0;
}

/* An insert's or a find's negative answer as an exception; always -1. */
static Py_ssize_t
seg_key_error(SegmentObject *s, int64_t code)
{
    switch (code) {
    case TKD_FULL_KEYS:
        PyErr_Format(s->full_error, "%U: all %zd keys are taken; create the segment with a "
                     "larger ?keys=", s->label, (Py_ssize_t)s->keys.cap);
        break;
    case TKD_FULL_HEAP:
        PyErr_Format(s->full_error, "%U: the key text space (%zd bytes) is full; create the "
                     "segment with a larger ?keys=", s->label, (Py_ssize_t)s->keys.heap_cap);
        break;
    case TKD_NO_ROOM:
        seg_full_error(s);
        break;
    default:
        PyErr_Format(s->corrupt_error, "%U: the key directory is corrupt", s->label);
    }
    return -1;
}

/* key's UTF-8, checked: NULL with ValueError/TypeError set. */
static const char *
seg_key_bytes(PyObject *key, Py_ssize_t *len, const char *fname)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "%s() key must be a str, not '%.200s'", fname,
                     Py_TYPE(key)->tp_name);
        return NULL;
    }
    const char *raw = PyUnicode_AsUTF8AndSize(key, len);
    if (raw == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "key %R is not valid Unicode (lone surrogate)", key);
        }
        return NULL;
    }
    /* The rule every store shares (stores/base.py check_key), in its words. */
    if (*len == 0) {
        PyErr_SetString(PyExc_ValueError, "key must not be empty");
        return NULL;
    }
    if (memchr(raw, 0, (size_t)*len) != NULL) {
        PyErr_Format(PyExc_ValueError, "key %R contains a NUL character", key);
        return NULL;
    }
    if (*len > TKD_KEY_MAX) {
        PyErr_Format(PyExc_ValueError, "key is %zd bytes in UTF-8; the limit is %d", *len,
                     TKD_KEY_MAX);
        return NULL;
    }
    return raw;
}

/* The cell of (owner, key): found, or inserted when `insert`; -2 when absent
 * and not inserting; -1 with an error set. */
static Py_ssize_t
seg_key_cell(SegmentObject *s, Py_ssize_t owner, PyObject *key, int insert, int64_t ring1,
             const char *fname)
{
    Py_ssize_t len;
    const char *raw = seg_key_bytes(key, &len, fname);
    if (raw == NULL && !insert && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear(); /* too long, or a lone surrogate: never a key, so absent */
        return -2;
    }
    if (raw == NULL || seg_need_keys(s) < 0) {
        return -1;
    }
    int64_t j = insert ? tkd_insert(&s->keys, owner, raw, len, ring1)
                       : tkd_find(&s->keys, owner, raw, len);
    if (j == TKD_ABSENT && !insert) {
        return -2;
    }
    if (j < 0) {
        return seg_key_error(s, j);
    }
    return s->names_cap + (Py_ssize_t)j;
}

static int
seg_owner(SegmentObject *s, PyObject *arg, Py_ssize_t *owner)
{
    *owner = PyLong_AsSsize_t(arg);
    if (*owner == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*owner < 0 || *owner >= s->names_cap) {
        PyErr_Format(PyExc_ValueError, "owner %zd is outside 0..%zd", *owner, s->names_cap - 1);
        return -1;
    }
    return 0;
}

/* key_find(owner, key) -> int | None: the key's cell, registering nothing. */
static PyObject *
Segment_key_find(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t owner;
    if (tl_nargs(nargs, 2, "key_find") < 0) {
        return NULL;
    }
    if (seg_need_keys(self) < 0 || seg_owner(self, args[0], &owner) < 0) {
        return NULL;
    }
    return cell_or_none(seg_key_cell(self, owner, args[1], 0, 0, "key_find"));
}

/* key_insert(owner, key, ring1=0) -> int: the key's cell, inserting it (with
 * ring unit + 1 `ring1`, keyed rates) if absent. */
static PyObject *
Segment_key_insert(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t owner;
    int64_t ring1 = 0;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "key_insert() takes 2 or 3 arguments");
        return NULL;
    }
    if (seg_need_keys(self) < 0 || seg_owner(self, args[0], &owner) < 0 ||
        (nargs == 3 && to_int64(args[2], "key_insert", &ring1) < 0)) {
        return NULL;
    }
    if (ring1 < 0 || ring1 > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "key_insert(): ring1 is outside 0..2**31-1");
        return NULL;
    }
    Py_ssize_t cell = seg_key_cell(self, owner, args[1], 1, ring1, "key_insert");
    return cell < 0 ? NULL : PyLong_FromSsize_t(cell);
}

/* key_entries(lo, hi) -> [(state, owner, ring1, key bytes)] for entries lo..hi-1
 * (key bytes None unless the entry is written and its text in bounds). */
static PyObject *
Segment_key_entries(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (tl_nargs(nargs, 2, "key_entries") < 0) {
        return NULL;
    }
    Py_ssize_t lo = PyLong_AsSsize_t(args[0]), hi = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred() || seg_need_keys(self) < 0) {
        return NULL;
    }
    if (lo < 0 || hi < lo || hi > self->keys.cap) {
        PyErr_SetString(PyExc_ValueError, "key_entries(): not a range of entries");
        return NULL;
    }
    PyObject *out = PyList_New(hi - lo);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t j = lo; j < hi; j++) {
        tkd_dir *d = &self->keys;
        if (!seg_written(self, (char *)tkd_word(d, j, 0) - self->base)) {
            /* claimed by a writer that died before writing it: never a key */
            PyObject *t = Py_BuildValue("(iiiO)", TKD_WRITING, -1, 0, Py_None);
            if (t == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, j - lo, t);
            continue;
        }
        int64_t state = atomic_load_explicit(tkd_word(d, j, 0), memory_order_acquire);
        int64_t owner = tl_load(tkd_word(d, j, 1));
        int64_t w2 = tl_load(tkd_word(d, j, 2)), off = tl_load(tkd_word(d, j, 3));
        int64_t len = w2 & 0xffffffff;
        PyObject *text;
        if ((state == TKD_WRITTEN || state == TKD_PUBLISHED) && len <= TKD_KEY_MAX && off >= 0 &&
            off <= d->heap_cap - len) {
            text = PyBytes_FromStringAndSize(d->heap + off, (Py_ssize_t)len);
        }
        else {
            text = Py_NewRef(Py_None);
        }
        PyObject *t = text == NULL ? NULL : Py_BuildValue("(LLLN)", (long long)state,
                                                         (long long)owner,
                                                         (long long)((uint64_t)w2 >> 32), text);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, j - lo, t);
    }
    return out;
}

/* reserve(off, len) -> None: allocate the file's pages behind [off, off+len)
 * before a first write there (CapacityError when the file system is full). */
static PyObject *
Segment_reserve(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (tl_nargs(nargs, 2, "reserve") < 0) {
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]), len = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!seg_in(self, off, len)) {
        PyErr_SetString(PyExc_ValueError, "reserve(): not a range of the segment");
        return NULL;
    }
    if (seg_reserve_off(self, off, len) < 0) {
        seg_full_error(self);
        return NULL;
    }
    Py_RETURN_NONE;
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
    {"attach_keys", (PyCFunction)Segment_attach_keys, METH_VARARGS,
     "attach_keys(names_cap, keys_cap, hash_off, slots, entries_off, heap_off, heap_cap, "
     "used_off, heap_used_off, bitmap_off, fd, full_error, corrupt_error, label)\n\n"
     "Set up the key directory and page reservations (_shmkeys.h)."},
    {"key_find", (PyCFunction)(void (*)(void))Segment_key_find, METH_FASTCALL,
     "key_find(owner, key) -> int | None\n\nThe key's cell; registers nothing."},
    {"key_insert", (PyCFunction)(void (*)(void))Segment_key_insert, METH_FASTCALL,
     "key_insert(owner, key, ring1=0) -> int\n\nThe key's cell, inserted lock-free."},
    {"key_entries", (PyCFunction)(void (*)(void))Segment_key_entries, METH_FASTCALL,
     "key_entries(lo, hi) -> list[tuple[int, int, int, bytes | None]]"},
    {"reserve", (PyCFunction)(void (*)(void))Segment_reserve, METH_FASTCALL,
     "reserve(off, len) -> None\n\nAllocate the pages behind a range before writing it."},
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
    TL_GC_SLOTS(Segment),
    {Py_tp_methods, Segment_methods},
    {Py_tp_members, Segment_members},
    {0, NULL},
};

TL_TYPE_SPEC(Segment, "tallies._tallies.Segment", sizeof(SegmentObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

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

#define CELL_REFS(X) X(self->seg)
TL_GC_FUNCS(Cell, CellObject, CELL_REFS)

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
    TL_GC_SLOTS(Cell),
    {Py_tp_methods, Cell_methods},
    {Py_tp_members, Cell_members},
    {Py_nb_inplace_add, Cell_iadd},
    {Py_nb_inplace_subtract, Cell_isub},
    {0, NULL},
};

TL_TYPE_SPEC(Cell, "tallies._tallies.Cell", sizeof(CellObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC);

/* ---- KeyedCells: the write side of one shared keyed counter ------------- */

/* The cells a process knows are private: only this file writes them, and
 * only with cells checked against the segment (register's and find's
 * answers), so the lock-free increment can trust what it reads there.  They
 * are kept in the cache (_shmcache.h: exact str keys, the hot path's and the
 * only record of them) and in a dict for the keys the cache cannot hold.
 * Python sees a read-only mapping built from both (`cells`); a dict Python
 * could write would let any code point a key at another counter's cell or
 * outside the slab. */
typedef struct {
    PyObject_HEAD
    SegmentObject *seg;
    PyObject *cells;    /* dict: str key -> int cell (checked), private, for
                         * the keys `cache` does not hold (keyed_remember) */
    PyObject *register_; /* register(key) -> cell, under the segment lock */
    PyObject *find;     /* find(key) -> cell or None, registers nothing; or NULL */
    Py_ssize_t owner;   /* >= 0: keys go straight to the segment's key directory */
    _Atomic Py_ssize_t max_cell; /* the largest cell remembered, -1 if none */
    _Atomic uint64_t gen; /* the segment's bind_gen when the cells were reserved */
    tsc_cache cache;    /* exact str key -> cell (checked): the hot path's */
} KeyedObject;

/* The page of this process's slab behind `cell` exists before a write to it
 * (a page reservation, see seg_reserve_off); nothing to do while unbound. */
static int
seg_reserve_own(SegmentObject *s, Py_ssize_t lo, Py_ssize_t hi)
{
    char *mine = atomic_load_explicit(&s->mine, memory_order_acquire);
    if (mine == NULL || hi <= lo) {
        return 0;
    }
    if (seg_reserve_off(s, (mine - s->base) + lo * 8, (hi - lo) * 8) < 0) {
        seg_full_error(s);
        return -1;
    }
    return 0;
}

/* After a bind (the first write, or the first after fork): reserve the
 * cells remembered under the earlier binding (or none), in this slab. */
static int
keyed_rebind(KeyedObject *self)
{
    uint64_t gen = atomic_load_explicit(&self->seg->bind_gen, memory_order_acquire);
    Py_ssize_t top = atomic_load_explicit(&self->max_cell, memory_order_acquire);
    if (seg_reserve_own(self->seg, self->seg->names_cap, top + 1) < 0) {
        return -1;
    }
    atomic_store_explicit(&self->gen, gen, memory_order_release);
    return 0;
}

static PyObject *
Keyed_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segment", "register", "find", "owner", NULL};
    PyObject *seg, *reg, *find = Py_None;
    Py_ssize_t owner = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O|On:KeyedCells", kwlist,
                                     segment_type, &seg, &reg, &find, &owner)) {
        return NULL;
    }
    if (owner >= 0 && (((SegmentObject *)seg)->keys.hash == NULL ||
                       owner >= ((SegmentObject *)seg)->names_cap)) {
        PyErr_SetString(PyExc_ValueError,
                        "KeyedCells() owner needs a segment with a key directory "
                        "and a name index inside it");
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
    self->owner = owner < 0 ? -1 : owner;
    atomic_init(&self->max_cell, -1);
    atomic_init(&self->gen, 0);
    return (PyObject *)self;
}

#define KEYED_REFS(X) X(self->seg) X(self->cells) X(self->register_) X(self->find)
TL_GC_FUNCS(Keyed, KeyedObject, KEYED_REFS)

static void
Keyed_dealloc(KeyedObject *self)
{
    tsc_free(&self->cache); /* no other thread holds self any more */
    tl_dealloc((PyObject *)self, (inquiry)Keyed_clear, NULL);
}

/* Remember key's (checked) cell, its page in this process's slab reserved
 * first: the cell, or -1 with an error set. */
static Py_ssize_t
keyed_remember(KeyedObject *self, PyObject *key, Py_ssize_t cell)
{
    if (seg_reserve_own(self->seg, cell, cell + 1) < 0) {
        return -1;
    }
    Py_ssize_t top = atomic_load_explicit(&self->max_cell, memory_order_relaxed);
    while (cell > top && !atomic_compare_exchange_weak_explicit(
                             &self->max_cell, &top, cell, memory_order_acq_rel,
                             memory_order_relaxed)) {
    }
    /* Exact str keys in the cache alone (no Python code may run to compare
     * two keys there); the rest, and a key it had no memory for, in the dict. */
    if (PyUnicode_CheckExact(key) && cell <= (Py_ssize_t)UINT32_MAX) {
        Py_hash_t h = tl_key_hash(key);
        if (h == -1) {
            PyErr_Clear(); /* (a str's hash does not fail) */
        }
        else if (tsc_put(&self->cache, key, (uint64_t)h, cell) == 0) {
            return cell;
        }
    }
    PyObject *v = PyLong_FromSsize_t(cell);
    if (v == NULL || PyDict_SetItem(self->cells, key, v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    return cell;
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
    Py_ssize_t cell;
    int bad = seg_cell_of(self->seg, r, &cell);
    Py_DECREF(r);
    if (bad < 0) {
        return -1;
    }
    return keyed_remember(self, key, cell);
}

/* key's remembered cell, -2 when none is, -1 with an error set: the dict's
 * answer (and its type checks), for keys the cache does not answer for (an
 * exact str the cache misses is looked up there too: it may be one the cache
 * could not take). */
static Py_ssize_t
keyed_recorded(KeyedObject *self, PyObject *key, const char *fname)
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
        return PyLong_AsSsize_t(c); /* checked when remembered */
    }
    return PyErr_Occurred() ? -1 : -2;
}

/* key's remembered cell, -2 when none is, -1 with an error set: the hot
 * path's cache first (_shmcache.h), inlined into the callers. */
static TL_ALWAYS_INLINE Py_ssize_t
keyed_known(KeyedObject *self, PyObject *key, const char *fname)
{
    if (TL_LIKELY(PyUnicode_CheckExact(key) && self->seg != NULL && self->cells != NULL)) {
        Py_hash_t h = tl_key_hash(key);
        int64_t cell = h == -1 ? -1 : tsc_get(&self->cache, key, (uint64_t)h);
        if (TL_LIKELY(cell >= 0)) {
            return (Py_ssize_t)cell;
        }
    }
    return keyed_recorded(self, key, fname);
}

/* The cell of `key`, registering it on first use; -1 with an error set. */
static Py_ssize_t
keyed_cell(KeyedObject *self, PyObject *key, const char *fname)
{
    Py_ssize_t cell = keyed_known(self, key, fname);
    if (TL_LIKELY(cell >= 0) || cell == -1) {
        return cell;
    }
    if (self->owner >= 0) { /* lock-free, in C (_shmkeys.h) */
        if (seg_own_cell(self->seg, 0) == NULL) { /* claim a slab before using a key */
            return -1;
        }
        cell = seg_key_cell(self->seg, self->owner, key, 1, 0, fname);
        return cell < 0 ? -1 : keyed_remember(self, key, cell);
    }
    return keyed_ask(self, self->register_, key, 0);
}

/* lookup(key) -> int | None: key's cell without registering it. */
static PyObject *
Keyed_lookup(KeyedObject *self, PyObject *key)
{
    Py_ssize_t cell = keyed_known(self, key, "lookup");
    if (cell == -2 && self->owner >= 0) {
        cell = seg_key_cell(self->seg, self->owner, key, 0, 0, "lookup");
        if (cell >= 0) {
            cell = keyed_remember(self, key, cell);
        }
    }
    else if (cell == -2 && self->find != NULL) {
        cell = keyed_ask(self, self->find, key, 1);
    }
    return cell_or_none(cell);
}

/* cells: a read-only mapping of the cells known so far, built from the
 * cache and the dict (a copy: later keys do not show in it). */
static PyObject *
Keyed_get_cells(KeyedObject *self, void *Py_UNUSED(closure))
{
    if (self->cells == NULL) {
        PyErr_SetString(PyExc_ValueError, "the keyed counter's segment is gone");
        return NULL;
    }
    void **keys;
    int64_t *cells;
    int64_t n = tsc_items(&self->cache, &keys, &cells); /* no Python code runs */
    if (n < 0) {
        return PyErr_NoMemory();
    }
    PyObject *d = PyDict_Copy(self->cells), *r = NULL;
    for (int64_t i = 0; i < n; i++) {
        PyObject *v = d == NULL ? NULL : PyLong_FromLongLong((long long)cells[i]);
        if (v == NULL || PyDict_SetItem(d, (PyObject *)keys[i], v) < 0) {
            Py_CLEAR(d);
        }
        Py_XDECREF(v);
        Py_DECREF((PyObject *)keys[i]);
    }
    PyMem_RawFree(keys);
    PyMem_RawFree(cells);
    if (d != NULL) {
        r = PyDictProxy_New(d);
        Py_DECREF(d);
    }
    return r;
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
         * update lists nothing (docs/contract.md).  A bad key is refused for
         * its key first, as an insert would refuse it; a key already in the
         * segment goes the normal way (tl_add checks its cell). */
        Py_hash_t h = PyUnicode_CheckExact(slots[0]) ? tl_key_hash(slots[0]) : -1;
        int known = h != -1 && tsc_get(&self->cache, slots[0], (uint64_t)h) >= 0;
        if (!known) {
            if (h == -1) {
                PyErr_Clear(); /* (a str's hash does not fail) */
            }
            known = PyDict_Contains(self->cells, slots[0]);
        }
        if (known < 0) {
            return NULL;
        }
        if (!known) {
            Py_ssize_t found = -2, len;
            if (self->owner >= 0) {
                if (seg_key_bytes(slots[0], &len, fname) == NULL) {
                    return NULL;
                }
                found = seg_key_cell(self->seg, self->owner, slots[0], 0, 0, fname);
                if (found >= 0) {
                    found = keyed_remember(self, slots[0], found);
                }
            }
            else if (self->find != NULL) {
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
    if (TL_UNLIKELY(atomic_load_explicit(&self->gen, memory_order_acquire) !=
                    atomic_load_explicit(&self->seg->bind_gen, memory_order_relaxed)) &&
        keyed_rebind(self) < 0) {
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
     "A read-only copy of the cells known so far: {key: cell}.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Keyed_slots[] = {
    {Py_tp_doc, "KeyedCells(segment, register, find=None)\n--\n\n"
                "The write side of one shared keyed counter."},
    TL_GC_SLOTS(Keyed),
    {Py_tp_methods, Keyed_methods},
    {Py_tp_members, Keyed_members},
    {Py_tp_getset, Keyed_getset},
    {0, NULL},
};

TL_TYPE_SPEC(Keyed, "tallies._tallies.KeyedCells", sizeof(KeyedObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC);

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
    self->clk = tl_bucket_clock(res_ns, 0);
    self->bslab = -1;
    Py_RETURN_NONE;
}

#define RATE_CELL_REFS(X) \
    X(self->seg) X(self->rotate) X(self->clock) X(self->a_seg) X(self->a_idx) X(self->a_name) \
    X(self->a_url) X(self->a_sp) X(self->a_ring)
TL_GC_FUNCS(RateCell, RateCellObject, RATE_CELL_REFS)

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
    TL_EVENT_METHOD_DEFS(RateCell, "", "", " (this process's ring, lock-free)"),
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
    TL_WEAKLIST_MEMBER(RateCellObject, weakrefs),
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot RateCell_slots[] = {
    {Py_tp_doc, "A rate shared by every process that opens the segment (shm://)."},
    TL_GC_SLOTS(RateCell),
    {Py_tp_methods, RateCell_methods},
    {Py_tp_members, RateCell_members},
    {0, NULL},
};

TL_TYPE_SPEC(RateCell, "tallies.stores.ShmRate", sizeof(RateCellObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

int
tl_shm_exec(PyObject *m)
{
    PyTypeObject *seg = tl_add_type(m, &Segment_spec, TL_SEGMENT, 1);
    if (seg == NULL || tl_add_type(m, &Cell_spec, TL_CELL, 1) == NULL ||
        tl_add_type(m, &Keyed_spec, TL_KEYED_CELLS, 1) == NULL ||
        tl_add_type(m, &RateCell_spec, TL_RATE_CELL, 1) == NULL) {
        return -1;
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
