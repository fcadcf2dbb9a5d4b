/*
 * tallies.keyed._core: the C type under tallies.KeyedCounter.
 *
 * The type (named tallies.keyed.KeyedCounter) owns one dict that maps each
 * key to a small cell object (PyObject_HEAD + a tlk_cell: an int64 count and
 * a state word, 32 bytes).  Counting an existing key is one dict lookup and
 * one checked add on the cell, with no Python int allocated and no dict
 * write.  A missing key gets a fresh cell through PyDict_SetDefault, so two
 * threads inserting the same key end up on the same cell.
 *
 * With a GIL every method here runs from lookup to update while holding it
 * (no Python code runs in between), so the cells use the engine's `_serial`
 * arithmetic.  With Py_GIL_DISABLED the lookups use the strong-reference
 * dict API (PyDict_GetItemRef / PyDict_SetDefaultRef) and the updates the
 * atomic ones, inside the removal protocol of _keyed_cells.h (read its
 * header comment): an increment that races with pop/discard/del of the same
 * key is neither lost nor applied to a cell that left the dict.
 *
 * Here: the per-key primitives, kc[key] (a tagged Count), kc[key] = v (a
 * tagged Count from this counter and key is applied as an atomic increment
 * by its difference) and del kc[key].  tallies.keyed then installs the rest
 * of the collections.Counter API (Python, keyed/api.py) on this same type,
 * so that kc.increment(key) is called on an instance of exactly this C type:
 * CPython's call specialisations for C methods require the exact type, and a
 * Python subclass would cost about 30 ns more per call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_keyed_cells.h"
#include "_pyargs.h"

/* ---- arguments (the shared rules are in _pyargs.h) ---------------------- */

/* increment(key, n=1) / decrement(key, n=1), vectorcall form. */
static int
parse_key_amount(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                 const char *fname, PyObject **key, int64_t *n)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'key'",
                     fname);
        return -1;
    }
    if (nargs + nkw > 2) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most 2 arguments (%zd given)", fname,
                     nargs + nkw);
        return -1;
    }
    if (nkw == 1) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        if (PyUnicode_CompareWithASCIIString(name, "n") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'", fname,
                         name);
            return -1;
        }
    }
    *key = args[0];
    if (nargs + nkw == 1) {
        *n = 1;
        return 0;
    }
    return to_int64(args[1], fname, n);
}

static PyObject *
overflow_result(const char *op, int64_t n, PyObject *key, int64_t current)
{
    PyErr_Format(PyExc_OverflowError,
                 "%s(%lld) would move the count of %R outside the signed "
                 "64-bit range; it stays at %lld",
                 op, (long long)n, key, (long long)current);
    return NULL;
}

/* ---- cells -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tlk_cell c;
} CellObject;

#define CELL(o) (&((CellObject *)(o))->c)

/* Created once per process (the module is single-interpreter), like the
 * type pointers of tallies.counter._core. */
static PyTypeObject *cell_type;

static PyObject *
cell_new(int64_t v)
{
    CellObject *c = PyObject_New(CellObject, cell_type);
    if (c == NULL) {
        return NULL;
    }
    tlk_init(&c->c, v);
    return (PyObject *)c;
}

static void
Cell_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyType_Slot Cell_slots[] = {
    {Py_tp_doc, "One key's count inside a KeyedCore (internal)."},
    {Py_tp_dealloc, Cell_dealloc},
    {0, NULL},
};

static PyType_Spec Cell_spec = {
    "tallies.keyed._core._Cell", sizeof(CellObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, Cell_slots,
};

/* ---- dict access: strong references on both builds ------------------------ */

/* 1 and a new reference in *cell when found, 0 when absent, -1 on error. */
static inline int
get_cell(PyObject *dict, PyObject *key, PyObject **cell)
{
#ifdef Py_GIL_DISABLED
    return PyDict_GetItemRef(dict, key, cell);
#else
    PyObject *c = PyDict_GetItemWithError(dict, key);
    if (c == NULL) {
        *cell = NULL;
        return PyErr_Occurred() ? -1 : 0;
    }
    *cell = Py_NewRef(c);
    return 1;
#endif
}

/* ---- the KeyedCounter type ------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *dict; /* key -> cell (or shared small int in small mode) */
    int small;      /* small mode, below */
} KeyedObject;

/* ---- small mode (GIL builds) -----------------------------------------------
 *
 * collections.Counter stores each count as a Python int, and counts in
 * [-5, 256] are CPython's shared small ints: they cost no memory.  To stay
 * within 2x of Counter's memory, a GIL build stores such counts the same way
 * (the shared small int as the dict value) and only a count outside that
 * range in a cell, whose 32 bytes are what Counter's own int object costs.
 * Updating a small-int count replaces the dict value (a second lookup);
 * once the count leaves the range it lives in a cell, updated in place.
 *
 * Replacing a value is a lookup then a store, and no Python code may run
 * between them (it could count the same key, and the store would overwrite
 * that).  Hashing and comparing exact str/int/bool/float/bytes/None, and
 * tuples of those, never runs Python code, so small mode lasts while every
 * key is one of those; the
 * first mutation with any other key turns every small-int count into a cell
 * (to_cells), for good.  Free-threaded builds always use cells: an atomic
 * in-place update needs one.
 */
#ifdef Py_GIL_DISABLED
#define SMALL_MODE_AT_START 0
#define IS_CELL(o) 1
static inline int
ensure_cells(KeyedObject *Py_UNUSED(self), PyObject *Py_UNUSED(key))
{
    return 0;
}
static inline PyObject *
count_obj(int64_t v)
{
    return cell_new(v);
}
#else
#define SMALL_MODE_AT_START 1
#define IS_CELL(o) Py_IS_TYPE((o), cell_type)

static int
safe_key_at(PyObject *k, int depth)
{
    if (PyUnicode_CheckExact(k) || PyLong_CheckExact(k) || PyBool_Check(k) ||
        PyFloat_CheckExact(k) || PyBytes_CheckExact(k) || k == Py_None) {
        return 1;
    }
    if (PyTuple_CheckExact(k) && depth < 4) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(k); i++) {
            if (!safe_key_at(PyTuple_GET_ITEM(k, i), depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* Hashing and comparing such keys (with each other) never runs Python code. */
static inline int
safe_key(PyObject *k)
{
    return PyUnicode_CheckExact(k) || safe_key_at(k, 0);
}

/* The dict value for count v: a shared small int, or a cell. */
static inline PyObject *
count_obj(int64_t v)
{
    return (v >= -5 && v <= 256) ? PyLong_FromLong((long)v) : cell_new(v);
}
#endif

/* The count a dict value holds. */
static inline int64_t
value_of(PyObject *v)
{
    if (TL_LIKELY(IS_CELL(v))) {
        return tl_load(&CELL(v)->value);
    }
    return (int64_t)PyLong_AsLongLong(v); /* a small int: cannot fail */
}

#ifndef Py_GIL_DISABLED
/* Leave small mode: every small-int count becomes a cell. */
static int
to_cells(KeyedObject *self)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(self->dict, &pos, &k, &v)) {
        if (!IS_CELL(v)) { /* replacing values of existing keys is allowed */
            PyObject *c = cell_new(value_of(v));
            if (c == NULL) {
                return -1;
            }
            int r = PyDict_SetItem(self->dict, k, c);
            Py_DECREF(c);
            if (r < 0) {
                return -1;
            }
        }
    }
    self->small = 0;
    return 0;
}

/* Before a mutation with key: leave small mode if key is not a safe key. */
static inline int
ensure_cells(KeyedObject *self, PyObject *key)
{
    return (self->small && !safe_key(key)) ? to_cells(self) : 0;
}

/* Small mode, safe key, current count old (0 when absent): store old +/- n. */
static PyObject *
small_add(KeyedObject *self, PyObject *key, int64_t old, int64_t n, int sub,
          const char *op)
{
    int64_t new_;
    if (sub ? TL_SUB_OVERFLOWS(old, n, &new_) : TL_ADD_OVERFLOWS(old, n, &new_)) {
        return overflow_result(op, n, key, old);
    }
    PyObject *nv = count_obj(new_);
    if (nv == NULL) {
        return NULL;
    }
    int r = PyDict_SetItem(self->dict, key, nv);
    Py_DECREF(nv);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}
#endif

/* The value of key (a cell, or in small mode possibly a small int),
 * inserting `initial` when absent; a new reference, or NULL on error.
 * *fresh is 1 when our value went in.  In small mode the caller has made sure
 * (ensure_cells) that key is a safe key. */
static PyObject *
get_or_insert(KeyedObject *self, PyObject *key, int64_t initial, int *fresh)
{
    PyObject *cell, *dict = self->dict;
    int found = get_cell(dict, key, &cell);
    *fresh = 0;
    if (found != 0) {
        return found < 0 ? NULL : cell;
    }
    PyObject *mine = self->small ? count_obj(initial) : cell_new(initial);
    if (mine == NULL) {
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    if (PyDict_SetDefaultRef(dict, key, mine, &cell) < 0) {
        Py_DECREF(mine);
        return NULL;
    }
#else
    cell = PyDict_SetDefault(dict, key, mine);
    if (cell == NULL) {
        Py_DECREF(mine);
        return NULL;
    }
    Py_INCREF(cell);
#endif
    *fresh = cell == mine;
    Py_DECREF(mine);
    return cell;
}


static PyObject *
Keyed_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
          PyObject *Py_UNUSED(kwds))
{
    KeyedObject *self = (KeyedObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->small = SMALL_MODE_AT_START;
    self->dict = PyDict_New();
    if (self->dict == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
Keyed_traverse(KeyedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->dict);
    return 0;
}

static int
Keyed_clear_gc(KeyedObject *self)
{
    /* Break cycles through the keys but keep the dict, so that a method
     * called during collection still finds a valid (empty) dict. */
    if (self->dict != NULL) {
        PyDict_Clear(self->dict);
    }
    return 0;
}

static void
Keyed_dealloc(KeyedObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->dict);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* The hot path: count n (sub: -n) for key. */
static PyObject *
keyed_add(KeyedObject *self, PyObject *key, int64_t n, int sub, const char *op)
{
    int64_t v;
#ifndef Py_GIL_DISABLED
    /* Lookup and update run under the GIL with no Python code in between. */
    PyObject *cell = PyDict_GetItemWithError(self->dict, key);
    if (TL_LIKELY(cell != NULL)) {
        if (TL_LIKELY(IS_CELL(cell))) {
            if (TL_UNLIKELY(tl_add_serial(&CELL(cell)->value, n, sub, &v) != TL_OK)) {
                return overflow_result(op, n, key, v);
            }
            Py_RETURN_NONE;
        }
        if (safe_key(key)) { /* a small-int count (small mode) */
            return small_add(self, key, value_of(cell), n, sub, op);
        }
    }
    else if (PyErr_Occurred()) {
        return NULL;
    }
    else if (self->small && safe_key(key)) {
        return small_add(self, key, 0, n, sub, op);
    }
#endif
    if (ensure_cells(self, key) < 0) {
        return NULL;
    }
    /* A fresh key starts at 0: refuse before inserting what cannot fit. */
    int64_t first;
    int fresh;
    if (sub ? TL_SUB_OVERFLOWS((int64_t)0, n, &first)
            : TL_ADD_OVERFLOWS((int64_t)0, n, &first)) {
        PyObject *cell0;
        int found = get_cell(self->dict, key, &cell0);
        if (found <= 0) {
            return found < 0 ? NULL : overflow_result(op, n, key, 0);
        }
        Py_DECREF(cell0); /* it exists: the update below decides */
    }
    for (;;) {
        PyObject *cell = get_or_insert(self, key, 0, &fresh); /* a cell here */
        if (cell == NULL) {
            return NULL;
        }
#ifdef Py_GIL_DISABLED
        int r = tlk_add(CELL(cell), n, sub, &v);
#else
        int r = tl_add_serial(&CELL(cell)->value, n, sub, &v);
#endif
        Py_DECREF(cell);
        if (TL_LIKELY(r == TL_OK)) {
            Py_RETURN_NONE;
        }
        if (r == TL_OVERFLOW) {
            return overflow_result(op, n, key, v);
        }
        /* TLK_RETRY: the cell was closed by a remover; it is out of the
         * dict, so the next lookup finds or inserts another one. */
    }
}

static PyObject *
Keyed_increment(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    PyObject *key;
    int64_t n;
    if (TL_LIKELY(nargs == 1 && kwnames == NULL)) {
        return keyed_add(self, args[0], 1, 0, "increment");
    }
    if (parse_key_amount(args, nargs, kwnames, "increment", &key, &n) < 0) {
        return NULL;
    }
    return keyed_add(self, key, n, 0, "increment");
}

static PyObject *
Keyed_decrement(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    PyObject *key;
    int64_t n;
    if (parse_key_amount(args, nargs, kwnames, "decrement", &key, &n) < 0) {
        return NULL;
    }
    return keyed_add(self, key, n, 1, "decrement");
}

static PyObject *
Keyed_value(KeyedObject *self, PyObject *key)
{
    PyObject *cell;
    int found = get_cell(self->dict, key, &cell);
    if (found <= 0) {
        return found < 0 ? NULL : PyLong_FromLong(0);
    }
    int64_t v = value_of(cell);
    Py_DECREF(cell);
    return PyLong_FromLongLong((long long)v);
}

/* _get(key, default) -> int or default, without inserting. */
static PyObject *
Keyed_get(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *cell;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_get() takes exactly 2 arguments");
        return NULL;
    }
    int found = get_cell(self->dict, args[0], &cell);
    if (found <= 0) {
        return found < 0 ? NULL : Py_NewRef(args[1]);
    }
    int64_t v = value_of(cell);
    Py_DECREF(cell);
    return PyLong_FromLongLong((long long)v);
}

/* _setdefault(key, v) -> int: insert key with v when absent; the count. */
static PyObject *
Keyed_setdefault(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v;
    int fresh;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_setdefault() takes exactly 2 arguments");
        return NULL;
    }
    if (to_int64(args[1], "setdefault", &v) < 0) {
        return NULL;
    }
    if (ensure_cells(self, args[0]) < 0) {
        return NULL;
    }
    PyObject *cell = get_or_insert(self, args[0], v, &fresh);
    if (cell == NULL) {
        return NULL;
    }
    v = value_of(cell);
    Py_DECREF(cell);
    return PyLong_FromLongLong((long long)v);
}

/* _set(key, v): assignment, inserting the key when absent. */
static PyObject *
Keyed_set(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_set() takes exactly 2 arguments");
        return NULL;
    }
    if (to_int64(args[1], "set", &v) < 0 || ensure_cells(self, args[0]) < 0) {
        return NULL;
    }
#ifndef Py_GIL_DISABLED
    if (self->small) { /* a safe key: replace the value */
        PyObject *nv = count_obj(v);
        int r = nv == NULL ? -1 : PyDict_SetItem(self->dict, args[0], nv);
        Py_XDECREF(nv);
        if (r < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
#endif
    for (;;) {
        int fresh;
        PyObject *cell = get_or_insert(self, args[0], v, &fresh);
        if (cell == NULL) {
            return NULL;
        }
        int r = TL_OK;
        if (!fresh) {
#ifdef Py_GIL_DISABLED
            int64_t old;
            r = tlk_exchange(CELL(cell), v, &old);
#else
            atomic_store_explicit(&CELL(cell)->value, v, memory_order_relaxed);
#endif
        }
        Py_DECREF(cell);
        if (r == TL_OK) {
            Py_RETURN_NONE;
        }
    }
}

/* _reset_key(key) -> int: zero the count, return what it held; an absent key
 * stays absent and gives 0. */
static PyObject *
Keyed_reset_key(KeyedObject *self, PyObject *key)
{
    PyObject *cell;
    if (ensure_cells(self, key) < 0) {
        return NULL;
    }
    int found = get_cell(self->dict, key, &cell);
    if (found <= 0) {
        return found < 0 ? NULL : PyLong_FromLong(0);
    }
    int64_t v;
    if (IS_CELL(cell)) {
        v = tl_exchange(&CELL(cell)->value, 0);
    }
    else { /* small mode, safe key: no Python code runs in between */
        v = value_of(cell);
        PyObject *zero = PyLong_FromLong(0);
        if (PyDict_SetItem(self->dict, key, zero) < 0) {
            Py_DECREF(zero);
            Py_DECREF(cell);
            return NULL;
        }
        Py_DECREF(zero);
    }
    Py_DECREF(cell);
    return PyLong_FromLongLong((long long)v);
}

/* Remove key (protocol of _keyed_cells.h): 1 and the final count in *taken,
 * 0 when absent (or already being removed by another caller), -1 on error. */
static int
keyed_remove(KeyedObject *self, PyObject *key, int64_t *taken)
{
    PyObject *cell;
    if (ensure_cells(self, key) < 0) {
        return -1;
    }
    int found = get_cell(self->dict, key, &cell);
    if (found <= 0) {
        return found;
    }
    if (!IS_CELL(cell)) { /* small mode, safe key: no Python code runs */
        *taken = value_of(cell);
        Py_DECREF(cell);
        return PyDict_DelItem(self->dict, key) < 0 ? -1 : 1;
    }
    if (!tlk_retire(CELL(cell))) {
        Py_DECREF(cell);
        return 0;
    }
    if (PyDict_DelItem(self->dict, key) < 0) {
        tlk_unretire(CELL(cell)); /* the key's __eq__ raised: nothing moved */
        Py_DECREF(cell);
        return -1;
    }
    *taken = tlk_close_and_take(CELL(cell));
    Py_DECREF(cell);
    return 1;
}

static PyObject *
Keyed_pop(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t taken;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "pop expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    int r = keyed_remove(self, args[0], &taken);
    if (r < 0) {
        return NULL;
    }
    if (r == 0) {
        if (nargs == 2) {
            return Py_NewRef(args[1]);
        }
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    return PyLong_FromLongLong((long long)taken);
}

static PyObject *
Keyed_discard(KeyedObject *self, PyObject *key)
{
    int64_t taken;
    if (keyed_remove(self, key, &taken) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _prune(key, nonpositive) -> bool: remove key if its count is 0 (or <= 0
 * when nonpositive is true).  A count that does not qualify (for instance
 * because another thread counted it meanwhile) is added back, so it is never
 * lost; True when the key was removed. */
static PyObject *
Keyed_prune(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t taken;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_prune() takes exactly 2 arguments");
        return NULL;
    }
    int nonpositive = PyObject_IsTrue(args[1]);
    if (nonpositive < 0) {
        return NULL;
    }
    int r = keyed_remove(self, args[0], &taken);
    if (r <= 0) {
        return r < 0 ? NULL : Py_NewRef(Py_False);
    }
    if (taken == 0 || (nonpositive && taken < 0)) {
        Py_RETURN_TRUE;
    }
    PyObject *res = keyed_add(self, args[0], taken, 0, "increment");
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_FALSE;
}

static PyObject *
Keyed_clear(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *keys = PyDict_Keys(self->dict);
    if (keys == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        int64_t taken;
        if (keyed_remove(self, PyList_GET_ITEM(keys, i), &taken) < 0) {
            Py_DECREF(keys);
            return NULL;
        }
    }
    Py_DECREF(keys);
    Py_RETURN_NONE;
}

static PyObject *
Keyed_keys(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyDict_Keys(self->dict); /* one atomic copy of the keys */
}

/* Zero key's count, storing what it held in *v (0 when the key is gone).
 * A fresh lookup, not the value in an earlier copy of the items: in small
 * mode the dict value of a key is replaced by every update. */
static int
take_count(KeyedObject *self, PyObject *key, int64_t *v)
{
    PyObject *cur;
    int found = get_cell(self->dict, key, &cur);
    *v = 0;
    if (found <= 0) {
        return found;
    }
    int r = 0;
    if (IS_CELL(cur)) {
        *v = tl_exchange(&CELL(cur)->value, 0);
    }
    else if ((*v = value_of(cur)) != 0) { /* small mode: no Python code runs */
        PyObject *zero = PyLong_FromLong(0);
        r = PyDict_SetItem(self->dict, key, zero);
        Py_DECREF(zero);
    }
    Py_DECREF(cur);
    return r;
}

/* A list of (key, count) pairs; take: exchange each count with 0. */
static PyObject *
keyed_items(KeyedObject *self, int take)
{
    PyObject *items = PyDict_Items(self->dict); /* (key, cell), atomic copy */
    if (items == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *obj = PyTuple_GET_ITEM(pair, 1);
        int64_t v = 0;
        if (!take) {
            v = value_of(obj);
        }
        else if (take_count(self, PyTuple_GET_ITEM(pair, 0), &v) < 0) {
            Py_DECREF(items);
            return NULL;
        }
        PyObject *count = PyLong_FromLongLong((long long)v);
        if (count == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        PyObject *fresh = PyTuple_Pack(2, PyTuple_GET_ITEM(pair, 0), count);
        Py_DECREF(count);
        if (fresh == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        PyList_SetItem(items, i, fresh);
    }
    return items;
}

static PyObject *
Keyed_items(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return keyed_items(self, 0);
}

static PyObject *
Keyed_drain(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return keyed_items(self, 1);
}

static Py_ssize_t
Keyed_len(KeyedObject *self)
{
    return PyDict_Size(self->dict);
}

static int
Keyed_contains(KeyedObject *self, PyObject *key)
{
    return PyDict_Contains(self->dict, key);
}

/* ---- kc[key], kc[key] = v, del kc[key] and the Count tag ------------------ */

/* tallies.keyed.api.Count, registered by tallies.keyed at import: the int
 * subclass that kc[key] returns, tagged with (counter, key, value read) in
 * its `_tag` attribute (read keyed/api.py's header comment). */
static PyObject *count_type;
static PyObject *str_tag;

static PyObject *
make_count(PyObject *value, PyObject *tag)
{
    PyObject *r = PyObject_Vectorcall(count_type, &value, 1, NULL);
    if (r != NULL && PyObject_SetAttr(r, str_tag, tag) < 0) {
        Py_CLEAR(r);
    }
    return r;
}

static PyObject *
Keyed_subscript(KeyedObject *self, PyObject *key)
{
    PyObject *v = Keyed_value(self, key);
    if (v == NULL || count_type == NULL) {
        return v;
    }
    PyObject *tag = PyTuple_Pack(3, (PyObject *)self, key, v);
    PyObject *r = tag == NULL ? NULL : make_count(v, tag);
    Py_XDECREF(tag);
    Py_DECREF(v);
    return r;
}

/* 1 when value is a Count read from this counter and this key, with the
 * difference (value - read) in *delta; 0 when it is any other value. */
static int
count_delta(KeyedObject *self, PyObject *key, PyObject *value, int64_t *delta)
{
    if (count_type == NULL || (PyObject *)Py_TYPE(value) != count_type) {
        return 0;
    }
    PyObject *tag = PyObject_GetAttr(value, str_tag);
    if (tag == NULL) {
        return -1;
    }
    int ours = 0;
    if (PyTuple_Check(tag) && PyTuple_GET_SIZE(tag) == 3 &&
        PyTuple_GET_ITEM(tag, 0) == (PyObject *)self) {
        PyObject *read_key = PyTuple_GET_ITEM(tag, 1);
        ours = read_key == key ? 1 : PyObject_RichCompareBool(read_key, key, Py_EQ);
    }
    if (ours == 1) {
        PyObject *d = PyLong_Type.tp_as_number->nb_subtract(
            value, PyTuple_GET_ITEM(tag, 2));
        ours = d == NULL ? -1 : (to_int64(d, "increment", delta) < 0 ? -1 : 1);
        Py_XDECREF(d);
    }
    Py_DECREF(tag);
    return ours;
}

static int
Keyed_ass_subscript(KeyedObject *self, PyObject *key, PyObject *value)
{
    int64_t n;
    if (value == NULL) { /* del kc[key]: like collections.Counter, no KeyError */
        return keyed_remove(self, key, &n) < 0 ? -1 : 0;
    }
    int r = count_delta(self, key, value, &n);
    if (r < 0) {
        return -1;
    }
    PyObject *res;
    if (r == 1) { /* kc[key] += n: the difference, as one atomic increment */
        res = keyed_add(self, key, n, 0, "increment");
    }
    else {
        PyObject *args[2] = {key, value};
        res = Keyed_set(self, args, 2);
    }
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* Count + n, n + Count, Count - n: an int with the same tag. */
static PyObject *
count_arith(PyObject *self, PyObject *other, int sub)
{
    binaryfunc f = sub ? PyLong_Type.tp_as_number->nb_subtract
                       : PyLong_Type.tp_as_number->nb_add;
    PyObject *r = f(self, other);
    if (r == NULL || r == Py_NotImplemented) {
        return r;
    }
    PyObject *tag = PyObject_GetAttr(self, str_tag);
    if (tag == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    PyObject *c = make_count(r, tag);
    Py_DECREF(tag);
    Py_DECREF(r);
    return c;
}

static PyObject *count_add(PyObject *self, PyObject *other) { return count_arith(self, other, 0); }
static PyObject *count_sub(PyObject *self, PyObject *other) { return count_arith(self, other, 1); }

static PyMethodDef count_add_def = {"__add__", count_add, METH_O, "Count + n: a Count with the same tag."};
static PyMethodDef count_radd_def = {"__radd__", count_add, METH_O, "n + Count: a Count with the same tag."};
static PyMethodDef count_sub_def = {"__sub__", count_sub, METH_O, "Count - n: a Count with the same tag."};

/* _register_count(Count): adopt the Count class, giving it C arithmetic. */
static PyObject *
keyed_register_count(PyObject *Py_UNUSED(module), PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "_register_count() expects an int subclass");
        return NULL;
    }
    PyMethodDef *defs[] = {&count_add_def, &count_radd_def, &count_sub_def};
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
        PyObject *d = PyDescr_NewMethod((PyTypeObject *)cls, defs[i]);
        if (d == NULL || PyObject_SetAttrString(cls, defs[i]->ml_name, d) < 0) {
            Py_XDECREF(d);
            return NULL;
        }
        Py_DECREF(d);
    }
    Py_XSETREF(count_type, Py_NewRef(cls));
    Py_RETURN_NONE;
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef Keyed_methods[] = {
    {"increment", (PyCFunction)(void (*)(void))Keyed_increment, FASTKW,
     "increment(key, n=1) -> None\n\nAdd n (default 1) to key's count."},
    {"decrement", (PyCFunction)(void (*)(void))Keyed_decrement, FASTKW,
     "decrement(key, n=1) -> None\n\nSubtract n (default 1) from key's count."},
    {"value", (PyCFunction)Keyed_value, METH_O,
     "value(key) -> int\n\nkey's count; 0 when absent (not inserted)."},
    {"pop", (PyCFunction)(void (*)(void))Keyed_pop, METH_FASTCALL,
     "pop(key[, default]) -> int\n\nRemove key and return its count."},
    {"discard", (PyCFunction)Keyed_discard, METH_O,
     "discard(key) -> None\n\nRemove key if present."},
    {"clear", (PyCFunction)Keyed_clear, METH_NOARGS,
     "clear() -> None\n\nRemove every key."},
    {"_get", (PyCFunction)(void (*)(void))Keyed_get, METH_FASTCALL, NULL},
    {"_setdefault", (PyCFunction)(void (*)(void))Keyed_setdefault, METH_FASTCALL,
     NULL},
    {"_set", (PyCFunction)(void (*)(void))Keyed_set, METH_FASTCALL, NULL},
    {"_reset_key", (PyCFunction)Keyed_reset_key, METH_O, NULL},
    {"_prune", (PyCFunction)(void (*)(void))Keyed_prune, METH_FASTCALL, NULL},
    {"_keys", (PyCFunction)Keyed_keys, METH_NOARGS, NULL},
    {"_items", (PyCFunction)Keyed_items, METH_NOARGS, NULL},
    {"_drain", (PyCFunction)Keyed_drain, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Keyed_slots[] = {
    {Py_tp_doc, "KeyedCounter(iterable_or_mapping=None, /, **kwds)\n--\n\n"
                "Exact int64 counts by key (tallies.keyed adds the "
                "collections.Counter API)."},
    {Py_tp_new, Keyed_new},
    {Py_tp_dealloc, Keyed_dealloc},
    {Py_tp_traverse, Keyed_traverse},
    {Py_tp_clear, Keyed_clear_gc},
    {Py_tp_methods, Keyed_methods},
    {Py_mp_length, Keyed_len},
    {Py_sq_length, Keyed_len},
    {Py_sq_contains, Keyed_contains},
    {Py_mp_subscript, Keyed_subscript},
    {Py_mp_ass_subscript, Keyed_ass_subscript},
    {0, NULL},
};

static PyType_Spec Keyed_spec = {
    "tallies.keyed.KeyedCounter", sizeof(KeyedObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, Keyed_slots,
};

/* ---- module --------------------------------------------------------------- */

typedef struct {
    PyTypeObject *KeyedCounter;
    PyTypeObject *Cell;
} module_state;

static int
keyed_exec(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    st->Cell = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Cell_spec, NULL);
    if (st->Cell == NULL) {
        return -1;
    }
    st->KeyedCounter = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Keyed_spec, NULL);
    if (st->KeyedCounter == NULL || PyModule_AddType(m, st->KeyedCounter) < 0) {
        return -1;
    }
    if (cell_type == NULL) {
        cell_type = (PyTypeObject *)Py_NewRef(st->Cell); /* lives forever */
        str_tag = PyUnicode_InternFromString("_tag");
        if (str_tag == NULL) {
            return -1;
        }
    }
#ifdef Py_GIL_DISABLED
    int ft = 1;
#else
    int ft = 0;
#endif
    if (PyModule_AddIntConstant(m, "FREE_THREADED_BUILD", ft) < 0 ||
        PyModule_AddIntConstant(m, "CELL_SIZE", (long)sizeof(CellObject)) < 0) {
        return -1;
    }
    return 0;
}

static int
keyed_traverse(PyObject *m, visitproc visit, void *arg)
{
    module_state *st = PyModule_GetState(m);
    Py_VISIT(st->KeyedCounter);
    Py_VISIT(st->Cell);
    return 0;
}

static int
keyed_clear(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    Py_CLEAR(st->KeyedCounter);
    Py_CLEAR(st->Cell);
    return 0;
}

static PyModuleDef_Slot keyed_slots[] = {
    {Py_mod_exec, keyed_exec},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static PyMethodDef keyed_functions[] = {
    {"_register_count", keyed_register_count, METH_O,
     "Adopt tallies.keyed.api.Count: kc[key] returns it (internal)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef keyed_module = {
    PyModuleDef_HEAD_INIT,
    "tallies.keyed._core",
    "The C core of tallies.KeyedCounter: counts by key in int64 cells.",
    sizeof(module_state),
    keyed_functions,
    keyed_slots,
    keyed_traverse,
    keyed_clear,
    NULL,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&keyed_module);
}
