/*
 * keyed.c: the C type under tallies.KeyedCounter (part of tallies._tallies:
 * _module.h).
 *
 * The type (named tallies.keyed.KeyedCounter) owns a hash table of its own
 * (_ktable.h: read its header comment for the layout and for the
 * free-threaded protocol): each key's int64 count is stored inline next to
 * the key, so counting an existing key is one probe and one checked add in
 * place, with no Python int allocated and no dict write, and a key costs a
 * dict entry's bytes whatever its count.
 *
 * With a GIL the table runs in serial mode: every method runs with the GIL
 * held, and the only code that can run in the middle of one is a key's
 * __eq__ (and __hash__, before the table is touched); the table re-checks
 * after every __eq__, as CPython's dict does.  With Py_GIL_DISABLED it runs
 * in concurrent mode: lock-free lookups and atomic adds inside announced
 * regions, a PyMutex for insertions, and removals and resizes that close the
 * map while they move counts, so that nothing is lost or counted twice.
 *
 * Nothing here runs Python code while the table is being read (keys are
 * copied out, with references, before any Python object is built), so a
 * finaliser or a garbage collection that touches the same counter meanwhile
 * cannot pull the table from under a loop.
 *
 * Here: the per-key primitives, kc[key] (a tagged Count), kc[key] = v (a
 * tagged Count from this counter and key is applied as an atomic increment
 * by its difference) and del kc[key].  tallies.keyed then installs the rest
 * of the collections.Counter API (Python, keyed/api.py) on this same type,
 * so that kc.increment(key) is called on an instance of exactly this C type:
 * CPython's call specialisations for C methods require the exact type, and a
 * Python subclass would cost about 30 ns more per call.
 *
 * Also here, at the end: BufferedKeyedCounter, a write-behind store's keyed
 * counter, whose increments of a key already counted add to a KeyedCounter's
 * table without leaving C (its comment says how).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_cells.h"
#include "_gate.h"
#include "_module.h"
#include "_pyargs.h"
#include "_shared.h"
#include "_counter_methods.h"

/* ---- the table's configuration (see _ktable.h) --------------------------- */

#ifdef Py_GIL_DISABLED
#define TKT_CONCURRENT 1
typedef PyMutex tkt_lock_t;
#define TKT_LOCK(l) PyMutex_Lock(l)
#define TKT_UNLOCK(l) PyMutex_Unlock(l)
#else
#define TKT_CONCURRENT 0
#endif

/* Exact str and exact int compare without running Python code. */
static inline int
key_fast_eq(PyObject *a, PyObject *b)
{
    if (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        int kind = PyUnicode_KIND(a);
        return n == PyUnicode_GET_LENGTH(b) && kind == (int)PyUnicode_KIND(b) &&
               memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
    }
    if (PyLong_CheckExact(a) && PyLong_CheckExact(b)) {
        return PyObject_RichCompareBool(a, b, Py_EQ); /* no Python code: 0 or 1 */
    }
    return -2;
}

#define TKT_EQ(a, b) PyObject_RichCompareBool((PyObject *)(a), (PyObject *)(b), Py_EQ)
#define TKT_FAST_EQ(a, b) key_fast_eq((PyObject *)(a), (PyObject *)(b))
#define TKT_INCREF(k) Py_INCREF((PyObject *)(k))
#define TKT_DECREF(k) Py_DECREF((PyObject *)(k))
#if TL_STR_HASH_CACHE /* _internals.h */
#define TKT_CACHES_HASH(k) PyUnicode_CheckExact((PyObject *)(k))
#define TKT_CACHED_HASH(k) (((PyASCIIObject *)(k))->hash)
#else /* every table stores its hashes: never asked for a cached one */
#define TKT_CACHES_HASH(k) ((void)(k), 0)
#define TKT_CACHED_HASH(k) PyObject_Hash((PyObject *)(k))
#endif
#define TKT_MALLOC(n) PyMem_Malloc(n)
#define TKT_FREE(p) PyMem_Free(p)

#include "_ktable.h"

#define key_hash tl_key_hash /* _internals.h */

#if TL_INT_LAYOUT /* _internals.h */
#if !TKT_CONCURRENT /* the item iterators' int reuse (GIL builds only) */
static inline Py_ssize_t digits_of(int64_t v);
#endif
static inline void count_fill(PyObject *r, int64_t v);
#endif

/* ---- the KeyedCounter type ------------------------------------------------- */

struct SnapIterObject;

typedef struct {
    PyObject_HEAD
    tkt_map map;
    PyObject *weakreflist; /* weakref.ref(kc) works, as for collections.Counter */
#if !TKT_CONCURRENT
    struct SnapIterObject *borrowing; /* iterators whose copy borrows keys */
#endif
#if TL_SHARE_WIDELY
    _Atomic uintptr_t last_tid; /* the thread of the last update (see below) */
    _Atomic uint32_t switches;  /* how often that changed */
#endif
} KeyedObject;

/* tallies.keyed.KeyedCounter itself (not a subclass): the only type whose
 * objects are ever made immortal (the module is single-interpreter). */
static PyTypeObject *keyed_exact_type;

#if TL_SHARE_WIDELY
/* Free-threaded 3.13: a KeyedCounter that threads update at once stops being
 * reference counted (_shared.h: its object header would otherwise be one
 * cache line written by every thread on every call).  Threads counting
 * distinct keys never fail a CAS, so the evidence here is the updating thread
 * changing TKT_SWITCHES_TO_SHARE times: two threads that really alternate get
 * there within microseconds; a counter handed from one thread to the next now
 * and then, much later or never.  Until then this costs one read of a field
 * in the object's header line; afterwards (or for an object that was not
 * prepared) one read of the header. */
#define TKT_SWITCHES_TO_SHARE 64

/* What immortal KeyedCounters keep.  An immortal object is never freed, and a
 * KeyedCounter holds its table and its keys: _shared.h's budget of
 * TL_SHARED_MAX objects alone bounds nothing (each may hold any number of
 * keys), and 400 counters of 5,000 keys each, filled by two threads and
 * dropped, kept 214 MiB (issue 27).  Its reference count is no longer kept,
 * so nothing can tell when its last user reference goes: what it holds then
 * stays.  So the memory is budgeted instead: a KeyedCounter becomes immortal
 * only while the tables of every KeyedCounter already immortal, measured at
 * that moment (with whatever they have grown to since), and its own come to
 * at most keyed_shared_bytes (TALLIES_SHARED_KEYED_BYTES at import, default
 * 16 MiB; 0: none becomes immortal).  The bound on what is kept is therefore
 * that budget, plus what the immortal counters grow by after the last check
 * (none is made immortal once their tables pass it), plus their key objects
 * (not counted: their size is the program's).  The immortal ones are listed
 * here (never freed, so the pointers stay valid) to be measured. */
#define TKT_SHARED_BYTES_DEFAULT ((int64_t)16 << 20)

static int64_t keyed_shared_bytes = TKT_SHARED_BYTES_DEFAULT;
static PyMutex keyed_share_lock;
static KeyedObject **keyed_immortal; /* under keyed_share_lock */
static Py_ssize_t keyed_nimmortal, keyed_immortal_cap;

static int64_t
keyed_table_bytes(KeyedObject *kc)
{
    tkt_enter(&kc->map); /* no resize frees the table meanwhile */
    int64_t n = (int64_t)tkt_table_size_bytes(
        atomic_load_explicit(&kc->map.table, memory_order_acquire));
    tkt_leave(&kc->map);
    return n;
}

/* The bytes of the tables of every immortal KeyedCounter, now (plus `extra`),
 * counting at most up to `stop`.  With keyed_share_lock held. */
static int64_t
keyed_kept_locked(int64_t extra, int64_t stop)
{
    int64_t kept = extra;
    for (Py_ssize_t i = 0; i < keyed_nimmortal && kept <= stop; i++) {
        kept += keyed_table_bytes(keyed_immortal[i]);
    }
    return kept;
}

/* Make self immortal if both budgets allow (never while another thread
 * decides about another counter). */
static void
keyed_share(KeyedObject *self)
{
    PyMutex_Lock(&keyed_share_lock);
    if (keyed_kept_locked(keyed_table_bytes(self), keyed_shared_bytes) <= keyed_shared_bytes) {
        if (keyed_nimmortal == keyed_immortal_cap) {
            Py_ssize_t cap = keyed_immortal_cap ? 2 * keyed_immortal_cap : 64;
            KeyedObject **grown = realloc(keyed_immortal, (size_t)cap * sizeof(*grown));
            if (grown != NULL) {
                keyed_immortal = grown;
                keyed_immortal_cap = cap;
            }
        }
        if (keyed_nimmortal < keyed_immortal_cap) { /* else no memory: stays mortal */
            tl_share_widely((PyObject *)self);
            if (_Py_IsImmortal((PyObject *)self)) {
                keyed_immortal[keyed_nimmortal++] = self;
            }
        }
    }
    PyMutex_Unlock(&keyed_share_lock);
}

static void
keyed_note_thread_slow(KeyedObject *self)
{
    uintptr_t me = _Py_ThreadId();
    if (atomic_load_explicit(&self->last_tid, memory_order_relaxed) != me) {
        atomic_store_explicit(&self->last_tid, me, memory_order_relaxed);
        if (atomic_fetch_add_explicit(&self->switches, 1, memory_order_relaxed) + 1 ==
            TKT_SWITCHES_TO_SHARE) {
            keyed_share(self);
        }
    }
}

static inline void
keyed_note_thread(KeyedObject *self)
{
    if (TL_UNLIKELY(tl_share_pending((PyObject *)self))) {
        keyed_note_thread_slow(self);
    }
}
#else
#define keyed_note_thread(self) ((void)(self))
#endif

#define MAP(self) (&((KeyedObject *)(self))->map)

static PyObject *
Keyed_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
          PyObject *Py_UNUSED(kwds))
{
    KeyedObject *self = (KeyedObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (tkt_map_init(&self->map) < 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
#if TL_SHARE_WIDELY
    atomic_init(&self->last_tid, 0);
    atomic_init(&self->switches, 0);
#endif
#if !TKT_CONCURRENT
    self->borrowing = NULL;
#endif
    tl_share_prepare_ex((PyObject *)self, type == keyed_exact_type); /* 3.13t: _shared.h */
    return (PyObject *)self;
}

static int
Keyed_traverse(KeyedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    tkt_table *t = atomic_load_explicit(&self->map.table, memory_order_acquire);
    if (t != NULL) {
        int64_t count = atomic_load_explicit(&t->nentries, memory_order_acquire);
        for (int64_t ix = 0; ix < count; ix++) {
            PyObject *k = (PyObject *)atomic_load_explicit(&TKT_KEYS(t)[ix], memory_order_acquire);
            Py_VISIT(k);
        }
    }
    return 0;
}

#if !TKT_CONCURRENT
static void keys_about_to_drop(KeyedObject *self);
#else
#define keys_about_to_drop(self) ((void)(self))
#endif

static int
Keyed_clear_gc(KeyedObject *self)
{
    /* Break cycles through the keys; the map stays valid (empty). */
    keys_about_to_drop(self);
    tkt_table_release(tkt_detach_all(&self->map));
    return 0;
}

/* Freeing a counter drops its keys, and a key may hold another counter (a
 * Count remembers its counter; an iterator over one holds it): chains of any
 * length are freed through CPython's trashcan, which defers the deeper links
 * instead of recursing without bound (as CPython's own containers do). */
static void
Keyed_dealloc(KeyedObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, Keyed_dealloc)
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    tkt_map_free(&self->map);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

/* Turn a table result that is an error into a Python exception: NULL. */
static PyObject *
table_error(int r)
{
    if (r == TKT_NOMEM) {
        return PyErr_NoMemory();
    }
    return NULL; /* TKT_ERR: the key's __eq__ raised, the exception is set */
}

#if !TKT_CONCURRENT
/* GIL builds: the count cell of an existing key found by identity along its
 * probe sequence (the common case), else NULL: absent, or only equal (not
 * identical), then the full lookup runs. */
static inline tl_cell *
map_first_probe(const tkt_map *m, PyObject *key, Py_hash_t h)
{
    if (TL_UNLIKELY(m->geo.index == NULL)) {
        return NULL;
    }
    size_t mask = m->geo.mask, perturb = (size_t)h, i = (size_t)h & mask;
    for (;;) {
        int64_t ix;
        switch (m->geo.width) {
        case 1:
            ix = ((const int8_t *)m->geo.index)[i];
            break;
        case 2:
            ix = ((const int16_t *)m->geo.index)[i];
            break;
        case 4:
            ix = ((const int32_t *)m->geo.index)[i];
            break;
        default:
            ix = ((const int64_t *)m->geo.index)[i];
            break;
        }
        if (TL_LIKELY(ix >= 0)) {
            if (TL_LIKELY(atomic_load_explicit(&m->geo.keys[ix], memory_order_relaxed) == key)) {
                return &m->geo.counts[ix];
            }
        }
        else if (ix == TKT_EMPTY) {
            return NULL;
        }
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
}

static inline tl_cell *
first_probe(KeyedObject *self, PyObject *key, Py_hash_t h)
{
    return map_first_probe(&self->map, key, h); /* geo: the table's shape, one load away */
}
#endif

/* The hot path: count n (sub: -n) for key. */
static PyObject *
keyed_add(KeyedObject *self, PyObject *key, int64_t n, int sub, const char *op)
{
    Py_hash_t h = key_hash(key);
    if (TL_UNLIKELY(h == -1)) {
        return NULL;
    }
    int64_t v;
    int r;
    keyed_note_thread(self);
#if !TKT_CONCURRENT
    tl_cell *cell = first_probe(self, key, h); /* the common case, inline */
    if (TL_LIKELY(cell != NULL)) {
        r = tl_add_serial(cell, n, sub, &v);
        goto done;
    }
#endif
    r = tkt_add(&self->map, key, h, n, sub, &v, NULL);
#if !TKT_CONCURRENT
done:
#endif
    if (TL_LIKELY(r == TL_OK)) {
        Py_RETURN_NONE;
    }
    if (r == TL_OVERFLOW) {
        return tl_overflow_stays(op, n, "the count of", key, v);
    }
    return table_error(r);
}

/* increment(key) / decrement(key) of an existing str key, inline: the
 * common case of the hot path (everything else goes through keyed_add). */
static inline PyObject *
keyed_step(KeyedObject *self, PyObject *key, int sub)
{
#if TL_STR_HASH_CACHE
    if (TL_LIKELY(PyUnicode_CheckExact(key))) {
        Py_hash_t h = ((PyASCIIObject *)key)->hash;
        tl_cell *cell;
        int64_t v;
        if (TL_LIKELY(h != -1) && (cell = first_probe(self, key, h)) != NULL &&
            TL_LIKELY(tl_add_serial(cell, 1, sub, &v) == TL_OK)) {
            Py_RETURN_NONE;
        }
    }
#endif
    return keyed_add(self, key, 1, sub, sub ? "decrement" : "increment");
}

/* increment(key, n=1) and decrement(key, n=1) (_counter_methods.h). */
static TL_ALWAYS_INLINE PyObject *
Keyed_update_key(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, int sub, const char *op)
{
    PyObject *key;
    int64_t n;
    if (TL_LIKELY(nargs == 1 && kwnames == NULL)) {
        return keyed_step(self, args[0], sub);
    }
    if (parse_key_amount(args, nargs, kwnames, op, &key, &n) < 0) {
        return NULL;
    }
    return keyed_add(self, key, n, sub, op);
}

TL_KEYED_UPDATE_METHODS(Keyed, KeyedObject)

/* The count of key: 1 (found), 0 (absent: *v = 0), -1 error. */
static int
keyed_lookup(KeyedObject *self, PyObject *key, int64_t *v)
{
    Py_hash_t h = key_hash(key);
    if (h == -1) {
        return -1;
    }
#if !TKT_CONCURRENT
    tl_cell *cell = first_probe(self, key, h);
    if (TL_LIKELY(cell != NULL)) {
        *v = atomic_load_explicit(cell, memory_order_relaxed);
        return 1;
    }
#endif
    int r = tkt_get(&self->map, key, h, 0, 0, v);
    if (r < 0) {
        table_error(r);
        return -1;
    }
    return r == TKT_FOUND;
}

static PyObject *
Keyed_value(KeyedObject *self, PyObject *key)
{
    int64_t v;
    if (keyed_lookup(self, key, &v) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong((long long)v);
}

/* _get(key, default) -> int or default, without inserting. */
static PyObject *
Keyed_get(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (tl_nargs(nargs, 2, "_get") < 0) {
        return NULL;
    }
    int64_t v;
    int found = keyed_lookup(self, args[0], &v);
    if (found <= 0) {
        return found < 0 ? NULL : Py_NewRef(args[1]);
    }
    return PyLong_FromLongLong((long long)v);
}

/* _setdefault(key, v) -> int: insert key with v when absent; the count.
 * _set(key, v): assignment, inserting the key when absent.
 * One body (setdefault: which of the two): _setdefault converts v before it
 * hashes the key, _set hashes first; errors name the method without its
 * underscore. */
static PyObject *
keyed_put(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs, int setdefault)
{
    const char *fname = setdefault ? "_setdefault" : "_set";
    int64_t v = 0, out; /* v = 0: gcc cannot see that one branch of two sets it */
    if (tl_nargs(nargs, 2, fname) < 0 || (setdefault && to_int64(args[1], fname + 1, &v) < 0)) {
        return NULL;
    }
    Py_hash_t h = key_hash(args[0]);
    if (h == -1 || (!setdefault && to_int64(args[1], fname + 1, &v) < 0)) {
        return NULL;
    }
    int r = setdefault ? tkt_get(&self->map, args[0], h, 1, v, &out)
                       : tkt_exchange(&self->map, args[0], h, v, 1, &out);
    if (r < 0) {
        return table_error(r);
    }
    return setdefault ? PyLong_FromLongLong((long long)out) : Py_NewRef(Py_None);
}

static PyObject *
Keyed_setdefault(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return keyed_put(self, args, nargs, 1);
}

static PyObject *
Keyed_set(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return keyed_put(self, args, nargs, 0);
}

/* _reset_key(key) -> int: zero the count, return what it held; an absent key
 * stays absent and gives 0. */
static PyObject *
Keyed_reset_key(KeyedObject *self, PyObject *key)
{
    int64_t old;
    Py_hash_t h = key_hash(key);
    if (h == -1) {
        return NULL;
    }
    int r = tkt_exchange(&self->map, key, h, 0, 0, &old);
    if (r < 0) {
        return table_error(r);
    }
    return PyLong_FromLongLong((long long)old);
}

/* Remove key (only_if: see tkt_remove): 1 and the final count in *taken,
 * 0 when absent (or kept), -1 on error. */
static int
keyed_remove(KeyedObject *self, PyObject *key, int only_if, int64_t *taken)
{
    void *removed = NULL;
    Py_hash_t h = key_hash(key);
    if (h == -1) {
        return -1;
    }
    int r = tkt_remove(&self->map, key, h, only_if, taken, &removed);
    if (r < 0) {
        table_error(r);
        return -1;
    }
    if (removed != NULL) {
        keys_about_to_drop(self);
        Py_DECREF((PyObject *)removed); /* may run a finaliser: the table is done */
    }
    return r == TKT_FOUND;
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
    int r = keyed_remove(self, args[0], 0, &taken);
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
    if (keyed_remove(self, key, 0, &taken) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _prune(key, nonpositive) -> bool: remove key if its count is 0 (or <= 0
 * when nonpositive is true), deciding with the map closed, so that a count
 * raised meanwhile by another thread keeps its key; True when removed. */
static PyObject *
Keyed_prune(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t taken;
    if (tl_nargs(nargs, 2, "_prune") < 0) {
        return NULL;
    }
    int nonpositive = PyObject_IsTrue(args[1]);
    if (nonpositive < 0) {
        return NULL;
    }
    int r = keyed_remove(self, args[0], nonpositive ? 2 : 1, &taken);
    if (r < 0) {
        return NULL;
    }
    return Py_NewRef(r ? Py_True : Py_False);
}

static PyObject *
Keyed_clear(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    keys_about_to_drop(self);
    tkt_table_release(tkt_detach_all(&self->map)); /* keys dropped after */
    Py_RETURN_NONE;
}

/* ---- copies: keys (with references) and counts, out of the table --------- */

typedef struct {
    void **keys;
    int64_t *counts;
    int64_t n;
} copy_buf;

/* Copy the live entries (keys when want_keys: with references when hold,
 * else borrowed, see the iterators below; counts when want_counts; take:
 * exchange each count with 0).  0, or -1 with an exception set. */
static int
copy_out3(KeyedObject *self, int want_keys, int want_counts, int take, int hold, copy_buf *b)
{
    int64_t cap = tkt_len(&self->map) + 8;
    b->keys = NULL;
    b->counts = NULL;
    b->n = 0;
    for (;;) {
        b->keys = want_keys ? PyMem_Malloc((size_t)cap * sizeof(void *)) : NULL;
        b->counts = want_counts ? PyMem_Malloc((size_t)cap * sizeof(int64_t)) : NULL;
        if ((want_keys && b->keys == NULL) || (want_counts && b->counts == NULL)) {
            PyMem_Free(b->keys);
            PyMem_Free(b->counts);
            PyErr_NoMemory();
            return -1;
        }
        int64_t n = tkt_snapshot(&self->map, b->keys, b->counts, cap, take, hold);
        if (n >= 0) {
            b->n = n;
            return 0;
        }
        PyMem_Free(b->keys);
        PyMem_Free(b->counts);
        cap = -n - 1 + 8;
    }
}

static int
copy_out2(KeyedObject *self, int want_keys, int want_counts, int take, copy_buf *b)
{
    return copy_out3(self, want_keys, want_counts, take, 1, b);
}

/* The same with keys always. */
static int
copy_out(KeyedObject *self, int want_counts, int take, copy_buf *b)
{
    return copy_out2(self, 1, want_counts, take, b);
}

/* Drop the references a copy holds from index i on, and its buffers. */
static void
copy_free(copy_buf *b, int64_t from)
{
    for (int64_t i = from; b->keys != NULL && i < b->n; i++) {
        Py_DECREF((PyObject *)b->keys[i]);
    }
    PyMem_Free(b->keys);
    PyMem_Free(b->counts);
}

/* copy_out(self, counts, take, b) and a list of b->n slots for the caller to
 * fill, or NULL (b freed). */
static PyObject *
copy_list(KeyedObject *self, int counts, int take, copy_buf *b)
{
    if (copy_out(self, counts, take, b) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)b->n);
    if (list == NULL) {
        copy_free(b, 0);
    }
    return list;
}

static PyObject *
Keyed_keys(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    copy_buf b;
    PyObject *list = copy_list(self, 0, 0, &b);
    if (list == NULL) {
        return NULL;
    }
    for (int64_t i = 0; i < b.n; i++) {
        PyList_SET_ITEM(list, (Py_ssize_t)i, (PyObject *)b.keys[i]); /* steals */
    }
    b.n = 0;
    copy_free(&b, 0);
    return list;
}

/* A list of (key, count) pairs; take: exchange each count with 0. */
static PyObject *
keyed_items(KeyedObject *self, int take)
{
    copy_buf b;
    PyObject *list = copy_list(self, 1, take, &b);
    if (list == NULL) {
        return NULL;
    }
    for (int64_t i = 0; i < b.n; i++) {
        PyObject *count = PyLong_FromLongLong((long long)b.counts[i]);
        PyObject *pair = count == NULL ? NULL : PyTuple_New(2);
        if (pair == NULL) {
            Py_XDECREF(count);
            copy_free(&b, i);
            Py_DECREF(list);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, (PyObject *)b.keys[i]); /* steals */
        PyTuple_SET_ITEM(pair, 1, count);
        PyList_SET_ITEM(list, (Py_ssize_t)i, pair);
    }
    b.n = 0;
    copy_free(&b, 0);
    return list;
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

/* _values() -> list of the counts. */
static PyObject *
Keyed_values(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    copy_buf b;
    if (copy_out2(self, 0, 1, 0, &b) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)b.n);
    for (int64_t i = 0; list != NULL && i < b.n; i++) {
        PyObject *count = PyLong_FromLongLong((long long)b.counts[i]);
        if (count == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, count);
    }
    copy_free(&b, 0);
    return list;
}

/* _total() -> int: the sum of the counts (exact: a Python int). */
static PyObject *
Keyed_total(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    copy_buf b;
    if (copy_out2(self, 0, 1, 0, &b) < 0) {
        return NULL;
    }
    PyObject *r = sum_to_pylong(b.counts, (Py_ssize_t)b.n);
    copy_free(&b, 0);
    return r;
}

/* most_common's order: larger count first, then earlier insertion. */
typedef struct {
    int64_t count;
    int64_t ix;
} mc_item;

static inline int
mc_before(const mc_item *a, const mc_item *b)
{
    return a->count > b->count || (a->count == b->count && a->ix < b->ix);
}

/* A heap whose root is the item that comes LAST in that order. */
static void
mc_sift_down(mc_item *heap, int64_t n, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, worst = i;
        if (l < n && mc_before(&heap[worst], &heap[l])) {
            worst = l;
        }
        if (r < n && mc_before(&heap[worst], &heap[r])) {
            worst = r;
        }
        if (worst == i) {
            return;
        }
        mc_item tmp = heap[i];
        heap[i] = heap[worst];
        heap[worst] = tmp;
        i = worst;
    }
}

static int
mc_cmp(const void *pa, const void *pb)
{
    const mc_item *a = pa, *b = pb;
    return mc_before(a, b) ? -1 : (mc_before(b, a) ? 1 : 0);
}

/* _most_common(n) -> list of the n (None: all) most common (key, count),
 * most common first, ties in insertion order (collections.Counter's). */
static PyObject *
Keyed_most_common(KeyedObject *self, PyObject *arg)
{
    Py_ssize_t want = PY_SSIZE_T_MAX;
    if (arg != Py_None) {
        want = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
        if (want == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (want < 0) {
            want = 0;
        }
    }
    copy_buf b;
    if (copy_out(self, 1, 0, &b) < 0) {
        return NULL;
    }
    int64_t k = want < b.n ? (int64_t)want : b.n;
    mc_item *order = PyMem_Malloc((size_t)(k > 0 ? k : 1) * sizeof(mc_item));
    if (order == NULL) {
        copy_free(&b, 0);
        return PyErr_NoMemory();
    }
    for (int64_t i = 0; i < k; i++) {
        order[i].count = b.counts[i];
        order[i].ix = i;
    }
    if (k > 0 && k < b.n) { /* the k best: a heap whose root is the worst kept */
        for (int64_t i = k / 2 - 1; i >= 0; i--) {
            mc_sift_down(order, k, i);
        }
        for (int64_t i = k; i < b.n; i++) {
            mc_item it = {b.counts[i], i};
            if (mc_before(&it, &order[0])) {
                order[0] = it;
                mc_sift_down(order, k, 0);
            }
        }
    }
    qsort(order, (size_t)k, sizeof(mc_item), mc_cmp);
    PyObject *list = PyList_New((Py_ssize_t)k);
    for (int64_t j = 0; list != NULL && j < k; j++) {
        int64_t i = order[j].ix;
        PyObject *count = PyLong_FromLongLong((long long)b.counts[i]);
        PyObject *pair = count == NULL ? NULL : PyTuple_Pack(2, (PyObject *)b.keys[i], count);
        Py_XDECREF(count);
        if (pair == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)j, pair);
    }
    PyMem_Free(order);
    copy_free(&b, 0);
    return list;
}

/* _count_iter(iterable, sign) -> None: count every element once (sign 1) or
 * take one off (sign -1): Counter(iterable), update(iterable),
 * subtract(iterable).
 *
 * The iterable is consumed one element at a time and counted into a private
 * map of its own first (one entry per distinct element): memory grows with
 * the distinct keys, not with the input's length, and nothing of this
 * counter changes until the input is exhausted.  So an element that cannot be
 * hashed, a key whose __eq__ raises and an iterable that raises leave the
 * counter untouched.  Then the private map is applied: adopted whole when
 * this counter has no key (Counter(iterable): its table is the private one,
 * no second pass), else key by key, each key's number of occurrences as one
 * atomic add; an overflow, or a key whose __eq__ raises, undoes the keys
 * already applied (a key this call inserted is removed again) before the
 * exception propagates. */
#define TKT_PRESIZE_MAX ((int64_t)1 << 16)

static PyObject *
Keyed_count_iter(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (tl_nargs(nargs, 2, "_count_iter") < 0) {
        return NULL;
    }
    int64_t sign;
    if (to_int64(args[1], "_count_iter", &sign) < 0) {
        return NULL;
    }
    int sub = sign < 0;
    PyObject *it = PyObject_GetIter(args[0]);
    if (it == NULL) {
        return NULL;
    }
    tkt_map local;
    if (tkt_map_init(&local) < 0) {
        Py_DECREF(it);
        return PyErr_NoMemory();
    }
    /* Room for as many distinct keys as this counter has, when the input (a
     * list or tuple) is at least that long (an update often counts keys the
     * counter already has), at most TKT_PRESIZE_MAX: no table growth on the
     * way for most updates. */
    PyObject *src = args[0]; /* its length only when that runs no Python code */
    int64_t hint = PyList_CheckExact(src) || PyTuple_CheckExact(src) ? (int64_t)Py_SIZE(src) : 0;
    int64_t room = tkt_len(&self->map);
    room = room < hint ? room : hint;
    if (room > 8 && tkt_reserve(&local, room < TKT_PRESIZE_MAX ? room : TKT_PRESIZE_MAX) < 0) {
        Py_DECREF(it);
        tkt_map_free(&local);
        return PyErr_NoMemory();
    }
    iternextfunc next = Py_TYPE(it)->tp_iternext;
    PyObject *key, *res = NULL;
    int64_t v;
    int r = TL_OK;
    while ((key = next(it)) != NULL) {
        Py_hash_t h = key_hash(key);
        if (TL_UNLIKELY(h == -1)) {
            Py_DECREF(key);
            goto done;
        }
#if !TKT_CONCURRENT
        tl_cell *cell = map_first_probe(&local, key, h);
        if (TL_LIKELY(cell != NULL)) {
            r = tl_add_serial(cell, 1, sub, &v);
        }
        else
#endif
        {
            r = tkt_add(&local, key, h, 1, sub, &v, NULL); /* counts as they will be */
        }
        if (TL_UNLIKELY(r != TL_OK)) { /* more than 2**63 - 1 of one key, or __eq__ */
            if (r == TL_OVERFLOW) {
                tl_overflow_stays(sub ? "decrement" : "increment", 1, "the count of", key, v);
            }
            else {
                table_error(r);
            }
            Py_DECREF(key);
            goto done;
        }
        Py_DECREF(key);
    }
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
            goto done;
        }
        PyErr_Clear();
    }
    if (tkt_adopt(&self->map, &local)) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    /* Apply the private map's entries in order; undo them if one fails. */
    tkt_table *t = atomic_load_explicit(&local.table, memory_order_relaxed);
    int64_t count = t == NULL ? 0 : atomic_load_explicit(&t->nentries, memory_order_relaxed);
    char *fresh = PyMem_Malloc((size_t)(count > 0 ? count : 1));
    if (fresh == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t ix;
    for (ix = 0; ix < count; ix++) {
        PyObject *k = (PyObject *)atomic_load_explicit(&TKT_KEYS(t)[ix], memory_order_relaxed);
        int64_t n = atomic_load_explicit(TKT_COUNT(t, ix), memory_order_relaxed);
        n = sub ? -n : n; /* the number of occurrences */
        int f = 0;
        tkt_hash_t h = tkt_hash_at(t, ix, k);
#if !TKT_CONCURRENT
        tl_cell *cell = first_probe(self, k, h); /* an existing key: the common case */
        if (TL_LIKELY(cell != NULL)) {
            r = tl_add_serial(cell, n, sub, &v);
        }
        else
#endif
        {
            r = tkt_add(&self->map, k, h, n, sub, &v, &f);
        }
        fresh[ix] = (char)f;
        if (TL_UNLIKELY(r != TL_OK)) {
            if (r == TL_OVERFLOW) {
                tl_overflow_stays(sub ? "decrement" : "increment", n, "the count of", k, v);
            }
            else {
                table_error(r);
            }
            break;
        }
    }
    if (ix == count) {
        res = Py_NewRef(Py_None);
    }
    else { /* undo entries [0, ix) in reverse, keeping the exception */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        while (ix-- > 0) {
            PyObject *k = (PyObject *)atomic_load_explicit(&TKT_KEYS(t)[ix], memory_order_relaxed);
            int64_t n = atomic_load_explicit(TKT_COUNT(t, ix), memory_order_relaxed), taken;
            n = sub ? -n : n;
            if (tkt_add(&self->map, k, tkt_hash_at(t, ix, k), n, !sub, &v, NULL) != TL_OK) {
                PyErr_Clear();
            }
            if (fresh[ix] && keyed_remove(self, k, 1, &taken) < 0) {
                PyErr_Clear();
            }
        }
        PyErr_Restore(et, ev, tb);
    }
    PyMem_Free(fresh);
done:
    Py_DECREF(it);
    tkt_map_free(&local);
    return res;
}

/* _set_many(pairs) -> None: kc[key] = value for each (key, value) pair, in
 * order (the operators fill their fresh result with it). */
static PyObject *
Keyed_set_many(KeyedObject *self, PyObject *pairs)
{
    if (PyDict_CheckExact(pairs)) { /* a dict of counts: no pair tuples */
        Py_ssize_t pos = 0;
        PyObject *kv[2];
        PyObject *copy = PyDict_Copy(pairs); /* its order, safe from changes */
        if (copy == NULL) {
            return NULL;
        }
        while (PyDict_Next(copy, &pos, &kv[0], &kv[1])) {
            Py_INCREF(kv[0]);
            Py_INCREF(kv[1]);
            PyObject *r = Keyed_set(self, kv, 2);
            Py_DECREF(kv[0]);
            Py_DECREF(kv[1]);
            if (r == NULL) {
                Py_DECREF(copy);
                return NULL;
            }
            Py_DECREF(r);
        }
        Py_DECREF(copy);
        Py_RETURN_NONE;
    }
    PyObject *it = PyObject_GetIter(pairs);
    if (it == NULL) {
        return NULL;
    }
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "_set_many() expects (key, value) pairs");
            Py_DECREF(item);
            break;
        }
        PyObject *r = Keyed_set(self, &PyTuple_GET_ITEM(item, 0), 2);
        Py_DECREF(item);
        if (r == NULL) {
            break;
        }
        Py_DECREF(r);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- iterators over a copy ------------------------------------------------
 *
 * iter(kc), kc.items() and kc.values() walk a copy of the live entries taken
 * in one step (keys, counts), so they never raise "changed size during
 * iteration" and build no list: items reuse their result tuple when the
 * caller dropped it, as dict iterators do.
 *
 * With a GIL the copy *borrows* the keys: taking a reference to each of them
 * up front touched every key object once more than dict iteration does (the
 * largest part of what items() cost over collections.Counter's).  Instead an
 * iterator holds the counter and is on its `borrowing` list, and hands out a
 * new reference as it reaches each key; the table keeps the keys alive.
 * Before the counter drops any key (a removal, clear(), a garbage
 * collection's tp_clear), keys_about_to_drop() makes every borrowing
 * iterator take its own references to the keys it has not reached, and
 * leave the list: from then on it is an ordinary copy.  That runs no Python
 * code and allocates nothing, and comes before the dropped key's reference
 * goes, so a finaliser it runs sees only owned copies.  Free-threaded builds
 * take references up front (other threads may drop keys at any moment).
 */

enum { SNAP_KEYS = 0, SNAP_ITEMS = 1, SNAP_VALUES = 2 };

typedef struct SnapIterObject {
    PyObject_HEAD
    copy_buf b;
    int64_t pos;
    int kind;
#if !TKT_CONCURRENT
    KeyedObject *kc;                    /* while b.keys are borrowed from its table */
    struct SnapIterObject *prev, *next; /* in kc->borrowing */
#endif
    PyObject *result;  /* the reusable (key, count) tuple of SNAP_ITEMS */
    PyObject *pool[2]; /* the two ints that SNAP_ITEMS alternates */
    Py_ssize_t room[2]; /* the digits each was allocated with */
    int flip;
} SnapIterObject;

static PyTypeObject *snapiter_type;

/* A reused result tuple must be tracked by the collector when it may be part
 * of a cycle; one holding an exact str and an int cannot be (neither refers
 * to anything: CPython's _PyTuple_MaybeUntrack reasons the same way), which
 * spares the common case a call per item. */
static inline void
track_result(PyObject *r, PyObject *key)
{
    if (!PyUnicode_CheckExact(key) && !PyObject_GC_IsTracked(r)) {
        PyObject_GC_Track(r);
    }
}

static PyObject *
snapiter_new(KeyedObject *self, int kind)
{
    SnapIterObject *it = PyObject_GC_New(SnapIterObject, snapiter_type);
    if (it == NULL) {
        return NULL;
    }
    it->b.keys = NULL;
    it->b.counts = NULL;
    it->b.n = 0;
    it->pos = 0;
    it->kind = kind;
    it->result = NULL;
    it->pool[0] = it->pool[1] = NULL;
    it->room[0] = it->room[1] = 0;
    it->flip = 0;
#if !TKT_CONCURRENT
    it->kc = NULL;
    it->prev = it->next = NULL;
    int borrow = kind != SNAP_VALUES;
#else
    int borrow = 0;
#endif
    if (copy_out3(self, kind != SNAP_VALUES, kind != SNAP_KEYS, 0, !borrow, &it->b) < 0) {
        it->b.keys = NULL;
        it->b.counts = NULL;
        it->b.n = 0;
        Py_DECREF(it);
        return NULL;
    }
#if !TKT_CONCURRENT
    if (borrow) {
        it->kc = (KeyedObject *)Py_NewRef(self);
        it->next = self->borrowing;
        if (it->next != NULL) {
            it->next->prev = it;
        }
        self->borrowing = it;
    }
#endif
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

static int
SnapIter_traverse(SnapIterObject *it, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(it));
#if !TKT_CONCURRENT
    if (it->kc != NULL) { /* borrowed keys: the counter holds (and visits) them */
        Py_VISIT((PyObject *)it->kc);
    }
    else
#endif
    for (int64_t i = it->pos; it->b.keys != NULL && i < it->b.n; i++) {
        Py_VISIT((PyObject *)it->b.keys[i]);
    }
    Py_VISIT(it->result);
    Py_VISIT(it->pool[0]);
    Py_VISIT(it->pool[1]);
    return 0;
}

#if !TKT_CONCURRENT
/* Stop borrowing: leave kc->borrowing; the caller then owns or drops b.keys. */
static void
snapiter_unlink(SnapIterObject *it)
{
    KeyedObject *kc = it->kc;
    if (it->prev != NULL) {
        it->prev->next = it->next;
    }
    else {
        kc->borrowing = it->next;
    }
    if (it->next != NULL) {
        it->next->prev = it->prev;
    }
    it->prev = it->next = NULL;
    it->kc = NULL;
}

/* Before the counter drops any key (a removal, clear): every iterator that
 * borrows keys from it takes its own references to the keys it has not
 * handed out yet, and stops borrowing.  No allocation, no Python code. */
static void
keys_about_to_drop(KeyedObject *self)
{
    while (self->borrowing != NULL) {
        SnapIterObject *it = self->borrowing;
        for (int64_t i = it->pos; it->b.keys != NULL && i < it->b.n; i++) {
            Py_INCREF((PyObject *)it->b.keys[i]);
        }
        snapiter_unlink(it);
        Py_DECREF(self); /* it->kc's reference; self is still referenced by the caller */
    }
}
#endif

static int
SnapIter_clear(SnapIterObject *it)
{
    copy_buf b = it->b;
    int64_t pos = it->pos;
    it->b.keys = NULL;
    it->b.counts = NULL;
    it->b.n = 0;
    Py_CLEAR(it->result);
    Py_CLEAR(it->pool[0]);
    Py_CLEAR(it->pool[1]);
#if !TKT_CONCURRENT
    if (it->kc != NULL) {
        KeyedObject *kc = it->kc;
        snapiter_unlink(it);
        PyMem_Free(b.keys); /* borrowed: nothing to drop */
        PyMem_Free(b.counts);
        Py_DECREF(kc);
        return 0;
    }
#endif
    copy_free(&b, pos);
    return 0;
}

static void
SnapIter_dealloc(SnapIterObject *it)
{
    PyTypeObject *tp = Py_TYPE(it);
    PyObject_GC_UnTrack(it);
    Py_TRASHCAN_BEGIN(it, SnapIter_dealloc) /* it holds keys (Keyed_dealloc says why) */
    SnapIter_clear(it);
    PyObject_GC_Del(it);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

/* The key of entry i, a reference for the caller. */
static inline PyObject *
snapiter_key(SnapIterObject *it, int64_t i)
{
    PyObject *k = (PyObject *)it->b.keys[i];
#if !TKT_CONCURRENT
    if (it->kc != NULL) {
        return Py_NewRef(k); /* borrowed from the table, which still holds it */
    }
#endif
    it->b.keys[i] = NULL; /* our reference goes to the caller */
    return k;
}

static PyObject *
SnapIter_next(SnapIterObject *it)
{
    if (it->pos >= it->b.n) {
        return NULL;
    }
    int64_t i = it->pos++;
    if (it->kind == SNAP_KEYS) {
        return snapiter_key(it, i);
    }
    int64_t v = it->b.counts[i];
    PyObject *r = it->result;
#if !TKT_CONCURRENT && TL_INT_LAYOUT
    /* for k, v in kc.items(): the caller unpacks the tuple and lets it go,
     * and its v still holds the previous count while we make the next one.
     * So two ints alternate: one that nobody but this iterator holds any
     * more is rewritten in place (never a shared small int; only with room
     * for the new digits), as dict iterators reuse their result tuple. */
    if (it->kind == SNAP_ITEMS && r != NULL && Py_REFCNT(r) == 1 && (v < -5 || v > 256)) {
        int j = it->flip ^= 1;
        PyObject *n = it->pool[j];
        if (n == NULL || Py_REFCNT(n) != 1 || it->room[j] < digits_of(v)) {
            n = PyLong_FromLongLong((long long)v);
            if (n == NULL) {
                return NULL;
            }
            Py_XSETREF(it->pool[j], n);
            it->room[j] = digits_of(v);
        }
        else {
            count_fill(n, v);
        }
        PyObject *key = snapiter_key(it, i), *ok = PyTuple_GET_ITEM(r, 0),
                 *ov = PyTuple_GET_ITEM(r, 1);
        PyTuple_SET_ITEM(r, 0, key);
        PyTuple_SET_ITEM(r, 1, Py_NewRef(n));
        Py_INCREF(r);
        Py_DECREF(ok);
        Py_DECREF(ov);
        track_result(r, key);
        return r;
    }
#endif
    PyObject *count = PyLong_FromLongLong((long long)v);
    if (count == NULL || it->kind == SNAP_VALUES) {
        return count;
    }
    PyObject *key = snapiter_key(it, i);
    if (r != NULL && Py_REFCNT(r) == 1) { /* nobody kept it: reuse */
        PyObject *ok = PyTuple_GET_ITEM(r, 0), *ov = PyTuple_GET_ITEM(r, 1);
        PyTuple_SET_ITEM(r, 0, key);
        PyTuple_SET_ITEM(r, 1, count);
        Py_INCREF(r);
        Py_DECREF(ok);
        Py_DECREF(ov);
        track_result(r, key);
        return r;
    }
    r = PyTuple_New(2);
    if (r == NULL) {
        Py_DECREF(key);
        Py_DECREF(count);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, key);
    PyTuple_SET_ITEM(r, 1, count);
    Py_XSETREF(it->result, Py_NewRef(r));
    return r;
}

static PyObject *
SnapIter_length_hint(SnapIterObject *it, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong((long long)(it->b.n - it->pos));
}

static PyMethodDef SnapIter_methods[] = {
    {"__length_hint__", (PyCFunction)SnapIter_length_hint, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot SnapIter_slots[] = {
    {Py_tp_doc, "An iterator over a copy of a KeyedCounter's entries (internal)."},
    {Py_tp_dealloc, SnapIter_dealloc},
    {Py_tp_traverse, SnapIter_traverse},
    {Py_tp_clear, SnapIter_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, SnapIter_next},
    {Py_tp_methods, SnapIter_methods},
    {0, NULL},
};

TL_TYPE_SPEC(SnapIter, "tallies._tallies._SnapshotIterator", sizeof(SnapIterObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION);

static PyObject *
Keyed_iter_keys(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return snapiter_new(self, SNAP_KEYS);
}

static PyObject *
Keyed_iter_items(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return snapiter_new(self, SNAP_ITEMS);
}

static PyObject *
Keyed_iter_values(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return snapiter_new(self, SNAP_VALUES);
}

/* A dict {key: count} of a copy: take: exchange every count with 0 in the
 * same pass; a key at 0 only from position `zeros` on (0: every key). */
static PyObject *
copy_dict(KeyedObject *self, int take, int64_t zeros)
{
    copy_buf b;
    if (copy_out(self, 1, take, &b) < 0) {
        return NULL;
    }
    PyObject *d = PyDict_New();
    for (int64_t i = 0; d != NULL && i < b.n; i++) {
        if (b.counts[i] == 0 && i < zeros) {
            continue;
        }
        PyObject *count = PyLong_FromLongLong((long long)b.counts[i]);
        if (count == NULL || PyDict_SetItem(d, (PyObject *)b.keys[i], count) < 0) {
            Py_XDECREF(count);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(count);
    }
    copy_free(&b, 0);
    return d;
}

/* _dict() -> dict {key: count} of a copy (the operators and comparisons). */
static PyObject *
Keyed_dict(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    return copy_dict(self, 0, 0);
}

/* _nonzero(take, since) -> dict {key: count} of the keys whose count is not
 * 0, and of every key from position `since` on in insertion order whatever
 * its count (the keys a write-behind store has not sent yet: its cells never
 * lose a key, so a position is a key's insertion number); take: exchange
 * every count with 0 in the same pass (each increment lands in exactly one
 * result or stays for the next, as with _drain()).  One dict, no pair per
 * key: what a write-behind flush and snapshot need of their pending buffer
 * (stores/writebehind.py), without a second table of the new keys. */
static PyObject *
Keyed_nonzero(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t since;
    if (tl_nargs(nargs, 2, "_nonzero") < 0 || to_int64(args[1], "_nonzero", &since) < 0) {
        return NULL;
    }
    int t = PyObject_IsTrue(args[0]);
    return t < 0 ? NULL : copy_dict(self, t, since);
}

/* ---- multiset operators and == in C ---------------------------------------
 *
 * An operand is this type or a dict (collections.Counter).  Both are read
 * from snapshots (_ktable.h, "snapshots: the binary operations"): a counter
 * is frozen into a private copy of its table, a dict is converted into a
 * private map of its own (its values checked as int64 first), and the join
 * reads only those, so that other threads, finalisers and the keys' own
 * __hash__ and __eq__ cannot change what the result is computed from.  The
 * result is built in collections.Counter's order: the left operand's keys
 * first, then the right one's new keys. */

typedef struct {
    tkt_operand o;
    tkt_map own;  /* a dict's entries (o.src then points here) */
    int has_own;
} operand;

/* 0, or -1 with an exception set (a dict value that is not an int64: the
 * TypeError or OverflowError of to_int64). */
static int
operand_init(operand *op, PyObject *obj, PyTypeObject *kind)
{
    op->has_own = 0;
    op->o.snap = NULL;
    if (PyObject_TypeCheck(obj, kind)) {
        if (tkt_operand_init(&op->o, MAP(obj), 0) < 0) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    }
    if (tkt_map_init(&op->own) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    op->has_own = 1;
    tkt_operand_init(&op->o, &op->own, 1); /* private: no copy */
    PyObject *copy = PyDict_Copy(obj);     /* safe from changes while we walk it */
    if (copy == NULL) {
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    int64_t n, old;
    while (PyDict_Next(copy, &pos, &k, &v)) {
        Py_hash_t h;
        int r = 0;
        if (to_int64(v, "set", &n) < 0 || (h = key_hash(k)) == -1 ||
            (r = tkt_exchange(&op->own, k, h, n, 1, &old)) < 0) {
            if (r < 0) {
                table_error(r);
            }
            Py_DECREF(copy);
            return -1;
        }
    }
    Py_DECREF(copy);
    return 0;
}

static void
operand_free(operand *op)
{
    tkt_operand_free(&op->o);
    if (op->has_own) {
        tkt_map_free(&op->own);
        op->has_own = 0;
    }
}

/* result[key] = v (a fresh counter: nobody else counts in it). */
static int
result_set(KeyedObject *res, PyObject *key, Py_hash_t h, int64_t v)
{
    int64_t old;
    int r = tkt_exchange(&res->map, key, h, v, 1, &old);
    if (r < 0) {
        table_error(r);
        return -1;
    }
    return 0;
}

static int
combine_overflow(int64_t a, int64_t b, int sub)
{
    PyObject *x = PyLong_FromLongLong((long long)a), *y = PyLong_FromLongLong((long long)b);
    PyObject *r = (x && y) ? (sub ? PyNumber_Subtract(x, y) : PyNumber_Add(x, y)) : NULL;
    if (r != NULL) {
        PyErr_Format(PyExc_OverflowError,
                     "set() argument %R is outside the signed 64-bit range", r);
    }
    Py_XDECREF(x);
    Py_XDECREF(y);
    Py_XDECREF(r);
    return -1;
}

enum { OP_ADD = 0, OP_SUB = 1, OP_OR = 2, OP_AND = 3 };

typedef struct {
    KeyedObject *res;
    long op;
} combine_ctx;

/* One key of a + b, a - b, a | b, a & b (tkt_join's callback): 0, or -1 with
 * an exception set. */
static int
combine_each(void *ctx, void *key, tkt_hash_t h, int64_t c, int64_t oc, int where)
{
    combine_ctx *cx = ctx;
    int64_t n;
    if (where == TKT_ONLY_B) { /* in the right operand only: c is 0 */
        int wanted = cx->op == OP_SUB ? oc < 0 : oc > 0;
        if (!wanted) {
            return 0;
        }
        if (cx->op == OP_SUB && oc == INT64_MIN) {
            return combine_overflow(0, oc, 1);
        }
        return result_set(cx->res, key, h, cx->op == OP_SUB ? -oc : oc);
    }
    switch (cx->op) {
    case OP_ADD: /* beyond int64: an error if kept (> 0), else dropped */
        if (TL_ADD_OVERFLOWS(c, oc, &n)) {
            return c < 0 ? 0 : combine_overflow(c, oc, 0);
        }
        break;
    case OP_SUB:
        if (TL_SUB_OVERFLOWS(c, oc, &n)) {
            return c < 0 ? 0 : combine_overflow(c, oc, 1);
        }
        break;
    case OP_OR:
        n = c >= oc ? c : oc;
        break;
    default:
        n = c <= oc ? c : oc;
        break;
    }
    return n > 0 ? result_set(cx->res, key, h, n) : 0;
}

/* The C type under Python subclasses of it. */
static PyTypeObject *
keyed_base(PyObject *self)
{
    PyTypeObject *kind = Py_TYPE(self);
    while (kind->tp_base != NULL && kind->tp_dealloc != (destructor)Keyed_dealloc) {
        kind = kind->tp_base;
    }
    return kind;
}

/* Freeze both operands (one snapshot when they are the same counter): 0, or
 * -1 with an exception set (ops are then freed). */
static int
operands_init(operand ops[2], PyObject *a, PyObject *b, PyTypeObject *kind)
{
    memset(ops, 0, 2 * sizeof(operand));
    if (operand_init(&ops[0], a, kind) < 0) {
        operand_free(&ops[0]);
        return -1;
    }
    if (b == a) {
        return 0; /* the caller joins ops[0] with itself */
    }
    if (operand_init(&ops[1], b, kind) < 0) {
        operand_free(&ops[0]);
        operand_free(&ops[1]);
        return -1;
    }
    return 0;
}

/* A join result that is an error: the exception set (-1 after it). */
static void
join_error(int r)
{
    if (r == TKT_NOMEM) {
        PyErr_NoMemory();
    }
    /* TKT_ERR: a key's __eq__ raised; -1: the callback set it */
}

/* _combine(other, op, reflected) -> a new counter of type(self), or
 * NotImplemented when other is neither this type nor a dict. */
static PyObject *
Keyed_combine(KeyedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (tl_nargs(nargs, 3, "_combine") < 0) {
        return NULL;
    }
    PyTypeObject *kind = keyed_base((PyObject *)self);
    PyObject *other = args[0];
    if (!PyObject_TypeCheck(other, kind) && !PyDict_Check(other)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    long op = PyLong_AsLong(args[1]);
    int reflected = PyObject_IsTrue(args[2]);
    if ((op == -1 && PyErr_Occurred()) || reflected < 0) {
        return NULL;
    }
    operand ops[2];
    PyObject *left = reflected ? other : (PyObject *)self;
    PyObject *right = reflected ? (PyObject *)self : other;
    if (operands_init(ops, left, right, kind) < 0) {
        return NULL;
    }
    tkt_operand *R = right == left ? &ops[0].o : &ops[1].o;
    PyObject *res = PyObject_CallNoArgs((PyObject *)Py_TYPE(self));
    if (res != NULL && !PyObject_TypeCheck(res, kind)) {
        PyErr_SetString(PyExc_TypeError, "_combine(): the result is not a KeyedCounter");
        Py_CLEAR(res);
    }
    if (res != NULL) {
        combine_ctx cx = {(KeyedObject *)res, op};
        int r = tkt_join(&ops[0].o, R, op != OP_AND, combine_each, &cx);
        if (r != 0) {
            join_error(r);
            Py_CLEAR(res);
        }
    }
    operand_free(&ops[0]);
    operand_free(&ops[1]);
    return res;
}

/* One key of ==: stop (1) at the first count that differs, a missing key
 * counting as 0. */
static int
equal_each(void *Py_UNUSED(ctx), void *Py_UNUSED(key), tkt_hash_t Py_UNUSED(h), int64_t c,
           int64_t oc, int Py_UNUSED(where))
{
    return c != oc;
}

/* _equal(other) -> bool: collections.Counter's ==: every count equal, a
 * missing key counting as 0; NotImplemented when other is neither this type
 * nor a dict, or when one of its values is not an int64 (then Python
 * compares). */
static PyObject *
Keyed_equal(KeyedObject *self, PyObject *other)
{
    PyTypeObject *kind = keyed_base((PyObject *)self);
    if (!PyObject_TypeCheck(other, kind) && !PyDict_Check(other)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    operand ops[2];
    if (operands_init(ops, (PyObject *)self, other, kind) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) ||
            PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear(); /* a value that is not an int64: Python decides */
            Py_RETURN_NOTIMPLEMENTED;
        }
        return NULL;
    }
    tkt_operand *B = other == (PyObject *)self ? &ops[0].o : &ops[1].o;
    int r = tkt_join(&ops[0].o, B, 1, equal_each, NULL);
    operand_free(&ops[0]);
    operand_free(&ops[1]);
    if (r < 0) {
        join_error(r);
        return NULL;
    }
    return Py_NewRef(r == 0 ? Py_True : Py_False);
}

static Py_ssize_t
Keyed_len(KeyedObject *self)
{
    return (Py_ssize_t)tkt_len(&self->map);
}

static int
Keyed_contains(KeyedObject *self, PyObject *key)
{
    int64_t v;
    return keyed_lookup(self, key, &v);
}

static PyObject *
Keyed_sizeof(KeyedObject *self, PyObject *Py_UNUSED(ignored))
{
    size_t n = (size_t)Py_TYPE(self)->tp_basicsize;
    tkt_enter(&self->map);
    n += tkt_table_size_bytes(atomic_load_explicit(&self->map.table, memory_order_acquire));
    tkt_leave(&self->map);
#if TKT_CONCURRENT
    n += sizeof(tkt_stripe) * TKT_NSTRIPES;
    TKT_MLOCK(&self->map); /* the hot cells: nhot changes under the mutex */
    tkt_table *t = atomic_load_explicit(&self->map.table, memory_order_acquire);
    if (t != NULL && atomic_load_explicit(&t->hot, memory_order_relaxed) != NULL) {
        n += (size_t)TKT_USABLE(TKT_SIZE(t)) * sizeof(void *);
        n += (size_t)t->nhot * tkt_hot_slots * sizeof(tl_padded_cell);
    }
    TKT_MUNLOCK(&self->map);
#endif
    return PyLong_FromSize_t(n);
}

/* ---- kc[key], kc[key] = v, del kc[key] and the Count tag ------------------
 *
 * tallies.keyed.api.Count is this C type when the extension is built: an int
 * subclass whose instances carry a tag (counter, key, value read) in C
 * fields, so that kc[key] costs one allocation (no instance __dict__, no tag
 * tuple).  The int's own header word and digits are copied from a regular
 * int of the same value (their layout differs between CPython versions, the
 * bytes do not need interpreting); the tag lives at a fixed offset after
 * room for the digits of any int64 (at most 3 digits of 30 bits, or 5 of
 * 15).  Only values in the int64 range are made Counts: an addition whose
 * result leaves that range gives a plain int (assigning it raises
 * OverflowError either way).
 *
 * Only a Count made by + or - (derived: the value of kc[key] += n) is applied
 * as a difference.  A Count read and assigned back unchanged (saved = kc[k];
 * ...; kc[k] = saved) is a plain assignment, as collections.Counter's: its
 * read value must never turn a later assignment into a difference. */

typedef struct {
    PyObject *counter;
    PyObject *key;
    int64_t read;
    int derived; /* made by Count + n, n + Count or Count - n */
} count_tag;

#define COUNT_MAX_DIGITS ((64 + PyLong_SHIFT - 1) / PyLong_SHIFT)

static PyTypeObject *count_type;
static Py_ssize_t count_tag_offset; /* bytes from the object's start */
static Py_ssize_t count_nitems;     /* what tp_alloc is asked for */

#define COUNT_TAG(o) ((count_tag *)((char *)(o) + count_tag_offset))

#if TL_INT_LAYOUT
#if !TKT_CONCURRENT
/* The number of digits of |v| (at least 1). */
static inline Py_ssize_t
digits_of(int64_t v)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    Py_ssize_t n = 1;
    while (u >>= PyLong_SHIFT) {
        n++;
    }
    return n;
}
#endif

/* Write v into an int object's header word and digits (the layout of
 * CPython's longintrepr.h: ob_size and digits up to 3.11, lv_tag and digits
 * from 3.12). */
static inline void
count_fill(PyObject *r, int64_t v)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    PyLongObject *o = (PyLongObject *)r;
#if PY_VERSION_HEX >= 0x030C0000
    digit *d = o->long_value.ob_digit;
#else
    digit *d = o->ob_digit;
#endif
    Py_ssize_t n = 0;
    d[0] = 0;
    while (u != 0) {
        d[n++] = (digit)(u & PyLong_MASK);
        u >>= PyLong_SHIFT;
    }
#if PY_VERSION_HEX >= 0x030C0000
    o->long_value.lv_tag = ((uintptr_t)n << _PyLong_NON_SIZE_BITS) |
                           (uintptr_t)(v > 0 ? 0 : (v == 0 ? 1 : 2));
#else
    Py_SET_SIZE(o, v < 0 ? -n : n);
#endif
}
#else
/* The documented way (interpreters where CI has not run the layout above):
 * int.__new__(Count, v) copies a plain int's value into an allocation that
 * Count's tp_alloc makes large enough for the tag. */
static PyObject *
count_alloc(PyTypeObject *type, Py_ssize_t nitems)
{
    return PyType_GenericAlloc(type, nitems > count_nitems ? nitems : count_nitems);
}

static PyObject *
count_from_int(int64_t v)
{
    PyObject *n = PyLong_FromLongLong((long long)v);
    if (n == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, n);
    Py_DECREF(n);
    if (args == NULL) {
        return NULL;
    }
    PyObject *r = PyLong_Type.tp_new(count_type, args, NULL);
    Py_DECREF(args);
    return r;
}
#endif

/* Freed Counts kept for reuse (GIL builds: the GIL guards the list).  A read
 * kc[k] makes a Count where collections.Counter's c[k] returns an int the
 * dict already holds; `x = kc[k]` in a loop frees one Count and makes the
 * next, and taking it from here instead of the allocator (no malloc, no
 * zeroing, no free) is what keeps that read near c[k].  Every Count has the
 * same size (count_nitems), so any one fits; the list holds a few at most and
 * keeps their memory for the life of the process. */
#if !defined(Py_GIL_DISABLED) && TL_INT_LAYOUT
#define COUNT_FREE_MAX 16
static PyObject *count_free[COUNT_FREE_MAX];
static int count_nfree;
#endif

/* A Count of value v tagged (counter, key, read); derived: made by + or -. */
static PyObject *
count_new(int64_t v, PyObject *counter, PyObject *key, int64_t read, int derived)
{
    PyObject *r = NULL;
#ifdef COUNT_FREE_MAX
    if (count_nfree > 0) {
        r = count_free[--count_nfree];
        (void)PyObject_Init(r, count_type); /* type (a new reference), refcount 1 */
    }
#endif
    int reused = r != NULL;
#if TL_INT_LAYOUT
    if (!reused) {
        r = count_type->tp_alloc(count_type, count_nitems); /* zeroed, tracked */
        if (r == NULL) {
            return NULL;
        }
    }
    count_fill(r, v);
#else
    r = count_from_int(v); /* zeroed tag, tracked */
    if (r == NULL) {
        return NULL;
    }
#endif
    count_tag *t = COUNT_TAG(r);
    t->counter = Py_NewRef(counter);
    t->key = Py_NewRef(key);
    t->read = read;
    t->derived = derived;
    if (reused) {
        PyObject_GC_Track(r); /* complete now: the collector may look at it */
    }
    return r;
}

#define COUNT_REFS(X) X(COUNT_TAG(self)->counter) X(COUNT_TAG(self)->key)
TL_GC_FUNCS(Count, PyObject, COUNT_REFS)

/* A Count holds its key, which may be another Count (`x = kc[x]` in a loop
 * makes a chain): freed through the trashcan, as Keyed_dealloc. */
static void
Count_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, Count_dealloc)
    Count_clear(self);
#ifdef COUNT_FREE_MAX
    if (tp == count_type && count_nfree < COUNT_FREE_MAX) {
        count_free[count_nfree++] = self; /* untracked, no references held */
    }
    else
#endif
    {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

/* The value of an int (or Count) that fits in int64: 1, else 0. */
static inline int
as_int64(PyObject *o, int64_t *v)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *v = (int64_t)x;
    return 1;
}

/* Count + n, n + Count, Count - n: a Count with the same tag (n - Count and
 * results outside int64: a plain int). */
static PyObject *
count_arith(PyObject *a, PyObject *b, int sub)
{
    binaryfunc f = sub ? PyLong_Type.tp_as_number->nb_subtract
                       : PyLong_Type.tp_as_number->nb_add;
    PyObject *r = f(a, b);
    if (r == NULL || r == Py_NotImplemented) {
        return r;
    }
    PyObject *tagged = Py_IS_TYPE(a, count_type) ? a : (sub ? NULL : b);
    int64_t v;
    if (tagged == NULL || !as_int64(r, &v)) {
        return r;
    }
    Py_DECREF(r);
    count_tag *t = COUNT_TAG(tagged);
    return count_new(v, t->counter, t->key, t->read, 1);
}

static PyObject *Count_add(PyObject *a, PyObject *b) { return count_arith(a, b, 0); }
static PyObject *Count_sub(PyObject *a, PyObject *b) { return count_arith(a, b, 1); }

static PyObject *
Count_int(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyNumber_Long(self); /* an exact int */
}

static PyObject *
Count_deepcopy(PyObject *self, PyObject *Py_UNUSED(memo))
{
    return PyNumber_Long(self);
}

static PyObject *
Count_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *v = PyNumber_Long(self);
    if (v == NULL) {
        return NULL;
    }
    PyObject *r = Py_BuildValue("(O(O))", (PyObject *)&PyLong_Type, v);
    Py_DECREF(v);
    return r;
}

static PyObject *
Count_get_tag(PyObject *self, void *Py_UNUSED(closure))
{
    count_tag *t = COUNT_TAG(self);
    if (t->counter == NULL || !t->derived) {
        PyErr_SetString(PyExc_AttributeError, "_tag");
        return NULL;
    }
    return Py_BuildValue("(OOL)", t->counter, t->key, (long long)t->read);
}

static PyObject *
Count_new(PyTypeObject *Py_UNUSED(type), PyObject *Py_UNUSED(args),
          PyObject *Py_UNUSED(kwds))
{
    PyErr_SetString(PyExc_TypeError,
                    "Count is made by kc[key]; use int(...) for a plain int");
    return NULL;
}

static PyMethodDef Count_methods[] = {
    {"__reduce__", Count_reduce, METH_NOARGS, "Pickles as a plain int."},
    {"__copy__", Count_int, METH_NOARGS, "A plain int."},
    {"__deepcopy__", Count_deepcopy, METH_O, "A plain int."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Count_getset[] = {
    {"_tag", Count_get_tag, NULL,
     "(counter, key, value read) of a Count made by + or - (else no attribute)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Count_slots[] = {
    {Py_tp_doc,
     "What kc[key] returns: the count as an int that remembers where it was\n"
     "read, so that kc[key] += n is applied as an atomic increment.\n\n"
     "Behaves as the int it equals; + and - with an int keep the memory,\n"
     "every other operation gives a plain int.  Pickling and copying give a\n"
     "plain int."},
    TL_GC_SLOTS(Count),
    {Py_tp_methods, Count_methods},
    {Py_tp_getset, Count_getset},
    {Py_nb_add, Count_add},
    {Py_nb_subtract, Count_sub},
#if !TL_INT_LAYOUT
    {Py_tp_alloc, count_alloc},
#endif
    {0, NULL},
};

TL_TYPE_SPEC(Count, "tallies.keyed.api.Count", 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

/* _make_count(counter, key, v) -> Count (the pure core's kc[key]). */
static PyObject *
keyed_make_count(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v;
    if (tl_nargs(nargs, 3, "_make_count") < 0) {
        return NULL;
    }
    if (to_int64(args[2], "_make_count", &v) < 0) {
        return NULL;
    }
    return count_new(v, args[0], args[1], v, 0);
}

static PyObject *
Keyed_subscript(KeyedObject *self, PyObject *key)
{
    int64_t v;
    if (keyed_lookup(self, key, &v) < 0) {
        return NULL;
    }
    return count_new(v, (PyObject *)self, key, v, 0);
}

/* 1 when value is a Count derived (by + or -) from a Count read from this
 * counter and this key, with the difference (value - read) in *delta; 2 when
 * that difference is 2**63 (kc[k] -= INT64_MIN), to be applied as a decrement
 * by INT64_MIN; 0 when it is any other value (a Count assigned back unchanged
 * included). */
static int
count_delta(KeyedObject *self, PyObject *key, PyObject *value, int64_t *delta)
{
    if (!Py_IS_TYPE(value, count_type)) {
        return 0;
    }
    count_tag *t = COUNT_TAG(value);
    if (t->counter != (PyObject *)self || !t->derived) {
        return 0;
    }
    if (t->key != key) {
        int eq = PyObject_RichCompareBool(t->key, key, Py_EQ);
        if (eq <= 0) {
            return eq;
        }
    }
    int64_t v;
    if (as_int64(value, &v) && TL_SUB_OVERFLOWS(v, t->read, delta) &&
        (uint64_t)v - (uint64_t)t->read == (uint64_t)1 << 63) {
        *delta = INT64_MIN;
        return 2;
    }
    if (!as_int64(value, &v) || TL_SUB_OVERFLOWS(v, t->read, delta)) {
        PyErr_Format(PyExc_OverflowError,
                     "increment() argument %R is outside the signed 64-bit range",
                     value);
        return -1;
    }
    return 1;
}

static int
Keyed_ass_subscript(KeyedObject *self, PyObject *key, PyObject *value)
{
    int64_t n;
    if (value == NULL) { /* del kc[key]: like collections.Counter, no KeyError */
        return keyed_remove(self, key, 0, &n) < 0 ? -1 : 0;
    }
    int r = count_delta(self, key, value, &n);
    if (r < 0) {
        return -1;
    }
    PyObject *res;
    if (r == 1) { /* kc[key] += n: the difference, as one atomic increment */
        res = keyed_add(self, key, n, 0, "increment");
    }
    else if (r == 2) { /* kc[key] -= INT64_MIN: a difference of 2**63 */
        res = keyed_add(self, key, n, 1, "decrement");
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

/* Create the Count type (once per process, like the other type pointers). */
static int
count_type_init(PyObject *m)
{
    if (count_type != NULL) {
        return PyModule_AddObjectRef(m, "Count", (PyObject *)count_type);
    }
    Py_ssize_t base = PyLong_Type.tp_basicsize, item = PyLong_Type.tp_itemsize;
    Py_ssize_t off = base + (Py_ssize_t)(COUNT_MAX_DIGITS + 1) * item;
    off = (off + 7) & ~(Py_ssize_t)7;
    /* tp_alloc(type, n) allocates base + (n + 1) * item bytes (rounded up). */
    Py_ssize_t need = off + (Py_ssize_t)sizeof(count_tag) - base;
    count_nitems = (need + item - 1) / item;
    count_tag_offset = off;
    PyObject *bases = PyTuple_Pack(1, (PyObject *)&PyLong_Type);
    if (bases == NULL) {
        return -1;
    }
    count_type = (PyTypeObject *)PyType_FromSpecWithBases(&Count_spec, bases);
    Py_DECREF(bases);
    if (count_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(m, "Count", (PyObject *)count_type);
}

static PyMethodDef Keyed_methods[] = {
    TL_UPDATE_METHOD_DEFS(Keyed,
                          "increment(key, n=1) -> None\n\nAdd n (default 1) to key's count.",
                          "decrement(key, n=1) -> None\n\n"
                          "Subtract n (default 1) from key's count."),
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
    {"_values", (PyCFunction)Keyed_values, METH_NOARGS, NULL},
    {"_count_iter", (PyCFunction)(void (*)(void))Keyed_count_iter, METH_FASTCALL, NULL},
    {"_set_many", (PyCFunction)Keyed_set_many, METH_O, NULL},
    {"_iter_keys", (PyCFunction)Keyed_iter_keys, METH_NOARGS, NULL},
    {"_iter_items", (PyCFunction)Keyed_iter_items, METH_NOARGS, NULL},
    {"_iter_values", (PyCFunction)Keyed_iter_values, METH_NOARGS, NULL},
    {"_dict", (PyCFunction)Keyed_dict, METH_NOARGS, NULL},
    {"_nonzero", (PyCFunction)(void (*)(void))Keyed_nonzero, METH_FASTCALL, NULL},
    {"_combine", (PyCFunction)(void (*)(void))Keyed_combine, METH_FASTCALL, NULL},
    {"_equal", (PyCFunction)Keyed_equal, METH_O, NULL},
    {"_total", (PyCFunction)Keyed_total, METH_NOARGS, NULL},
    {"_most_common", (PyCFunction)Keyed_most_common, METH_O, NULL},
    {"__sizeof__", (PyCFunction)Keyed_sizeof, METH_NOARGS,
     "Bytes of the object and of its table."},
    {NULL, NULL, 0, NULL},
};

TL_WEAKLIST_ONLY(Keyed, weakreflist);

static PyType_Slot Keyed_slots[] = {
    {Py_tp_doc, "KeyedCounter(iterable_or_mapping=None, /, **kwds)\n--\n\n"
                "Exact int64 counts by key (tallies.keyed adds the "
                "collections.Counter API)."},
    TL_GC_TYPE_SLOTS(Keyed, Keyed_clear_gc),
    {Py_tp_methods, Keyed_methods},
    {Py_tp_members, Keyed_members},
    {Py_mp_length, Keyed_len},
    {Py_sq_length, Keyed_len},
    {Py_sq_contains, Keyed_contains},
    {Py_mp_subscript, Keyed_subscript},
    {Py_mp_ass_subscript, Keyed_ass_subscript},
    {0, NULL},
};

TL_TYPE_SPEC(Keyed, "tallies.keyed.KeyedCounter", sizeof(KeyedObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC);

/* ---- BufferedKeyedCounter: a write-behind store's keyed counter -------------
 *
 * A sqlite:// / redis:// / postgresql:// keyed counter (stores/writebehind.py,
 * BufferedKeyedCounter) keeps its pending deltas in a KeyedCounter of this
 * file, `cells`.  With the C core the class IS this type (its objects have a
 * __dict__; writebehind.py installs the rest of its API, in Python, on it,
 * as tallies.keyed does for KeyedCounter): CPython specialises the load and
 * the call of a C method only on an object of exactly the method's type, and
 * any other way (a Python class holding bound C methods, a subclass) cost
 * 1.7x KeyedCounter.increment on 3.11, where this costs the same.
 *
 * A key's FIRST use is the store's business, in Python: it checks the key
 * (the store's key rule), and under the store's state lock it refuses the
 * update once the store is closing and inserts the key (the next batch
 * lists every key inserted since the last one, at 0 too: `_sent`).  Every
 * later update of that key only adds to its cell.  This type's
 * increment(key, n=1) / decrement(key, n=1) are that later update, the
 * "gate": they add to the cell of a key already in `cells` (the table's lookup WITHOUT
 * insert, tkt_update(insert=0)) and call the Python fallback `slow[sub]`
 * with the very same arguments for everything else: a key not in the cells
 * yet, a key that is not an exact str, arguments this code does not parse,
 * a closed gate.  _open_gate(cells, increment, decrement) sets them (the
 * Python __init__ calls it); until then the gate is closed.
 *
 * Why presence in the cells is enough: the store inserts a key only after
 * checking it, and keys are never removed from the cells (a flush exchanges
 * their counts with 0, _nonzero(take)), so a key found there has passed the
 * check and is in a batch or due in the next one.  Only exact str keys are
 * looked up here: every stored key is one (check_key returns exact str), so
 * the lookup compares without running Python code (TKT_FAST_EQ decides),
 * and a str subclass or any other object takes the Python path, whose
 * check_key gives the usual TypeError/ValueError.
 *
 * Closing.  The store's close() closes the gate under its state lock before
 * the final flush takes the cells: an update either lands in the cells
 * before that take or goes to the fallback, which raises ValueError (closed)
 * and changes nothing.  With a GIL the state check and the add are one step
 * (no Python code runs between them: the arguments are parsed and the hash
 * taken before the check).  Free-threaded, each add passes a gate (_gate.h,
 * read its comment): close() stores CLOSED and waits until every update that
 * got through has left, so its add is in the cells before the flush.  The
 * add itself runs the table's own concurrent protocol (_ktable.h: regions,
 * atomic checked adds, hot cells), which may wait on the table's PyMutex
 * while a resize runs (an insertion by a first use); a PyMutex wait detaches
 * the thread, so the closer waits detached too (Py_BEGIN_ALLOW_THREADS): an
 * attached closer spinning for a detached updater would hold up a
 * stop-the-world pause that the updater, to re-attach, waits for.
 *
 * Overflow: the add is the table's checked add; an update that would leave
 * int64 raises KeyedCounter's OverflowError and the count stays.  The
 * pure-Python core has no gate: every update is then the fallback.
 */

#define GATE_OPEN 0
#define GATE_CLOSED 1

typedef struct {
    PyObject_HEAD
    PyObject *cells;   /* an exact KeyedCounter: the pending deltas */
    PyObject *slow[2]; /* slow[sub](key, n=1): every update the gate does not take */
    _Atomic int state; /* GATE_OPEN, GATE_CLOSED */
    PyObject *dict;    /* the Python half's attributes (writebehind.py) */
    PyObject *weakreflist;
} GateObject;

#if TL_FREE_THREADED
static TL_ALIGNED(TL_LINE) tl_gate_flight gate_flight; /* _gate.h */
#endif

/* Add n (sub: -n) to the count of key (an exact str, hash h) when it is in
 * the cells and the gate is open: TL_OK, TL_OVERFLOW (*v: the count that
 * stays), TKT_MISSING (absent, or closed: nothing changed), TKT_NOMEM. */
static inline int
gate_add(GateObject *self, PyObject *key, Py_hash_t h, int64_t n, int sub, int64_t *v)
{
#if TL_FREE_THREADED
    _Atomic long *passed = tl_gate_enter(&gate_flight, &self->state, GATE_CLOSED);
    if (TL_UNLIKELY(passed == NULL)) {
        return TKT_MISSING;
    }
    int r = tkt_update(MAP(self->cells), key, h, n, sub, v, NULL, 0);
    tl_gate_leave(passed);
    return r;
#else
    if (TL_UNLIKELY(atomic_load_explicit(&self->state, memory_order_relaxed) != GATE_OPEN)) {
        return TKT_MISSING;
    }
    tl_cell *cell = map_first_probe(MAP(self->cells), key, h);
    if (TL_LIKELY(cell != NULL)) {
        return tl_add_serial(cell, n, sub, v);
    }
    return tkt_update(MAP(self->cells), key, h, n, sub, v, NULL, 0);
#endif
}

/* increment(key, n=1) and decrement(key, n=1). */
static TL_ALWAYS_INLINE PyObject *
Gate_update(GateObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            int sub, const char *op)
{
    PyObject *key;
    int64_t n = 1;
    if (TL_LIKELY(nargs == 1 && kwnames == NULL)) {
        key = args[0];
    }
    else if (parse_key_amount(args, nargs, kwnames, op, &key, &n) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL; /* KeyboardInterrupt in n.__index__: not ours to retry */
        }
        PyErr_Clear(); /* the fallback reports it, after the key's own check */
        goto slow;
    }
    if (TL_LIKELY(PyUnicode_CheckExact(key))) {
        Py_hash_t h = key_hash(key);
        if (TL_UNLIKELY(h == -1)) {
            return NULL;
        }
        int64_t v;
        int r = gate_add(self, key, h, n, sub, &v);
        if (TL_LIKELY(r == TL_OK)) {
            Py_RETURN_NONE;
        }
        if (r == TL_OVERFLOW) {
            return tl_overflow_stays(op, n, "the count of", key, v);
        }
        if (r != TKT_MISSING) {
            return table_error(r);
        }
    }
slow:
    if (TL_UNLIKELY(self->slow[sub] == NULL)) {
        PyErr_SetString(PyExc_ValueError, "this keyed counter has no store");
        return NULL;
    }
    return PyObject_Vectorcall(self->slow[sub], args, (size_t)nargs, kwnames);
}

TL_METHOD_PAIR(Gate, GateObject, Gate_update)

/* The Python half's __init__ takes the arguments: a gate starts closed. */
static PyObject *
Gate_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    GateObject *self = (GateObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        atomic_init(&self->state, GATE_CLOSED);
    }
    return (PyObject *)self;
}

#define GATE_REFS(X) X(self->cells) X(self->slow[0]) X(self->slow[1]) X(self->dict)
TL_GC_FUNCS(Gate, GateObject, GATE_REFS)

/* tp_clear: close first, so that a call during a cycle's teardown takes the
 * fallback (cleared: "no store") instead of reading the cells. */
static int
Gate_clear_gc(GateObject *self)
{
    atomic_store_explicit(&self->state, GATE_CLOSED, memory_order_relaxed);
    return Gate_clear(self);
}

static void
Gate_dealloc(GateObject *self)
{
    tl_dealloc((PyObject *)self, (inquiry)Gate_clear_gc, &self->weakreflist);
}

/* _open_gate(cells, increment, decrement): updates of the keys in cells (an
 * exact KeyedCounter) add there; every other update calls increment(key,
 * n=1) or decrement(key, n=1) with the same arguments.  Once. */
static PyObject *
Gate_open(GateObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !Py_IS_TYPE(args[0], keyed_exact_type) || !PyCallable_Check(args[1]) ||
        !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "_open_gate(cells, increment, decrement) takes a KeyedCounter (not a "
                        "subclass) and two callables");
        return NULL;
    }
    if (self->cells != NULL) {
        PyErr_SetString(PyExc_ValueError, "_open_gate(): this gate was opened already");
        return NULL;
    }
    self->slow[0] = Py_NewRef(args[1]);
    self->slow[1] = Py_NewRef(args[2]);
    self->cells = Py_NewRef(args[0]);
    atomic_store_explicit(&self->state, GATE_OPEN, memory_order_release);
    Py_RETURN_NONE;
}

/* _close_gate(): every later update goes to the fallback; returns once every
 * update that got through has added (free-threaded: see above). */
static PyObject *
Gate_close(GateObject *self, PyObject *Py_UNUSED(ignored))
{
#if TL_FREE_THREADED
    Py_BEGIN_ALLOW_THREADS
    tl_gate_close(&gate_flight, &self->state, GATE_CLOSED);
    Py_END_ALLOW_THREADS
#else
    atomic_store_explicit(&self->state, GATE_CLOSED, memory_order_relaxed);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef Gate_methods[] = {
    TL_UPDATE_METHOD_DEFS(Gate,
                          "increment(key, n=1) -> None\n\n"
                          "Add n (default 1) to key's count (a local cell; no I/O).",
                          "decrement(key, n=1) -> None\n\n"
                          "Subtract n (default 1) from key's count (a local cell; no I/O)."),
    {"_open_gate", (PyCFunction)(void (*)(void))Gate_open, METH_FASTCALL, NULL},
    {"_close_gate", (PyCFunction)Gate_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

TL_DICT_WEAKLIST_MEMBERS(Gate, dict, weakreflist);

static PyType_Slot Gate_slots[] = {
    {Py_tp_doc, "A write-behind store's keyed counter (the C half: increment and "
                "decrement of a key already counted; stores/writebehind.py installs the rest)."},
    TL_GC_TYPE_SLOTS(Gate, Gate_clear_gc),
    {Py_tp_methods, Gate_methods},
    {Py_tp_members, Gate_members},
    {0, NULL},
};

TL_TYPE_SPEC(Gate, "tallies.stores.writebehind.BufferedKeyedCounter", sizeof(GateObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC);

/* ---- module functions and the module exec --------------------------------- */

static PyObject *
keyed_shared_remaining(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(tl_shared_remaining());
}

/* _keyed_shared_bytes() -> (kept, budget): the bytes the tables of the immortal
 * KeyedCounters hold now, and keyed_share's budget ((0, 0) where nothing is
 * ever made immortal). */
static PyObject *
keyed_shared_bytes_of(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    long long kept = 0, budget = 0;
#if TL_SHARE_WIDELY
    PyMutex_Lock(&keyed_share_lock);
    kept = (long long)keyed_kept_locked(0, INT64_MAX);
    PyMutex_Unlock(&keyed_share_lock);
    budget = (long long)keyed_shared_bytes;
#endif
    return Py_BuildValue("(LL)", kept, budget);
}

static PyObject *
keyed_hot_keys(PyObject *Py_UNUSED(m), PyObject *kc)
{
    if (!PyObject_TypeCheck(kc, keyed_exact_type)) {
        PyErr_SetString(PyExc_TypeError, "_hot_keys() takes a KeyedCounter");
        return NULL;
    }
    long n = 0;
#if TKT_CONCURRENT
    tkt_map *m = MAP(kc);
    TKT_MLOCK(m); /* nhot changes under the mutex only */
    tkt_table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    n = t == NULL ? 0 : (long)t->nhot;
    TKT_MUNLOCK(m);
#endif
    return PyLong_FromLong(n);
}

static PyMethodDef keyed_functions[] = {
    {"_keyed_shared_remaining", keyed_shared_remaining, METH_NOARGS,
     "_keyed_shared_remaining() -> int: how many more KeyedCounters may become immortal "
     "(free-threaded 3.13 only; always 0 elsewhere; see _c/_shared.h)."},
    {"_keyed_shared_bytes", keyed_shared_bytes_of, METH_NOARGS,
     "_keyed_shared_bytes() -> (kept, budget): bytes of the tables of the immortal KeyedCounters, "
     "and the budget past which no more become immortal (free-threaded 3.13 only; (0, 0) "
     "elsewhere; see keyed.c)."},
    {"_hot_keys", keyed_hot_keys, METH_O,
     "_hot_keys(kc) -> int: keys of kc's table inflated into hot cells "
     "(free-threaded builds; always 0 elsewhere)."},
    {"_make_count", (PyCFunction)(void (*)(void))keyed_make_count, METH_FASTCALL,
     "_make_count(counter, key, v) -> Count (internal)."},
    {NULL, NULL, 0, NULL},
};

int
tl_keyed_exec(PyObject *m)
{
    keyed_exact_type = tl_add_type(m, &Keyed_spec, TL_KEYED_COUNTER, 1);
    if (keyed_exact_type == NULL || tl_add_type(m, &Gate_spec, TL_BUFFERED_KEYED, 1) == NULL ||
        PyModule_AddFunctions(m, keyed_functions) < 0) {
        return -1;
    }
    tl_shared_configure();
#if TL_SHARE_WIDELY
    const char *env = getenv("TALLIES_SHARED_KEYED_BYTES"); /* keyed_share's budget */
    if (env != NULL && *env != '\0') {
        char *end = NULL;
        long long v = strtoll(env, &end, 10);
        if (end != NULL && *end == '\0' && v >= 0) {
            keyed_shared_bytes = (int64_t)v;
        }
    }
#endif
#if TKT_CONCURRENT
    tkt_set_cpus((long)tl_cpus);
#endif
    if (count_type_init(m) < 0) {
        return -1;
    }
    if (snapiter_type == NULL) {
        snapiter_type = (PyTypeObject *)PyType_FromSpec(&SnapIter_spec); /* lives forever */
        if (snapiter_type == NULL) {
            return -1;
        }
    }
    if (
#if TKT_CONCURRENT
        PyModule_AddIntConstant(m, "HOT_SLOTS", (long)tkt_hot_slots) < 0 ||
#else
        PyModule_AddIntConstant(m, "HOT_SLOTS", 0) < 0 ||
#endif
        PyModule_AddIntConstant(m, "ENTRY_SIZE", (long)(sizeof(void *) + sizeof(int64_t))) < 0) {
        return -1;
    }
    return 0;
}
