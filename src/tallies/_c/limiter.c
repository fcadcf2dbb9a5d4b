/*
 * tallies limiters, C side (tallies/stores/_limiter.py has the promise and
 * the Python side; _limtable.h the windows and the shared table):
 *
 *   Limiter     memory://'s exact limiter: a window per key in this process
 *   ShmLimiter  shm://'s: a shared entry per key in the segment's .limits
 *               file (also its fixed windows, for the limits package)
 *   LeaseCore   a write-behind store's: the leases, so that hit() decides
 *               from a lease with no Python code and no I/O
 *
 * Each type implements hit(key=None, n=1) (the hot path) and the few
 * helpers its Python side needs; tallies.stores._limiter installs the other
 * methods (test, remaining, reset_after, reset, the properties) on the type,
 * so users hold these very objects: a call through a Python subclass would
 * cost CPython more than the work.
 *
 * hit()'s arguments follow _limiter.check_hits / limiter_key, with the same
 * messages: n an int >= 1 (bool refused), key None or a str that passes
 * tallies.stores.base.check_key (a key not seen before is checked by that
 * Python function, which the constructor is given; a key in this object's
 * table has passed it).  Nothing is counted before every check passed.
 *
 * Clocks: monotonic for memory:// and shm:// (system-wide: processes agree),
 * CLOCK_MONOTONIC_COARSE when the slot is at least 10 ticks, as for rates.
 * A lease's deadline is compared with the coarse clock plus one tick (the
 * coarse clock lags by at most a tick), so a lease never outlives its slot.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <structmember.h>
#include <time.h>

#include "_cells.h"
#include "_module.h"
#include "_pyargs.h"
#include "_limtable.h"

#define NS 1000000000LL

static inline int64_t
clock_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * NS + (int64_t)ts.tv_nsec;
}

/* d[k] as a new reference, or NULL (an error set, or none when absent): a
 * borrowed reference could be freed by another thread without a GIL. */
static inline PyObject *
dict_get_ref(PyObject *d, PyObject *k)
{
#if TL_FREE_THREADED
    PyObject *v;
    return PyDict_GetItemRef(d, k, &v) < 0 ? NULL : v;
#else
    return Py_XNewRef(PyDict_GetItemWithError(d, k));
#endif
}

/* ---- arguments -------------------------------------------------------------- */

/* n of hit()/test(): 0, or -1 with the error _limiter.check_hits raises. */
static TL_COLD int
hits_slow(PyObject *obj, const char *fname, int64_t *n)
{
    if (PyBool_Check(obj) || Py_TYPE(obj)->tp_as_number == NULL ||
        Py_TYPE(obj)->tp_as_number->nb_index == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() n must be an integer, not '%.200s'", fname,
                     type_name(Py_TYPE(obj)));
        return -1;
    }
    PyObject *v = PyNumber_Index(obj);
    if (v == NULL) {
        return -1;
    }
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        Py_DECREF(v);
        return -1;
    }
    if (overflow > 0) {
        PyErr_Format(PyExc_OverflowError, "%s() n=%S is above the signed 64-bit range", fname,
                     v);
        Py_DECREF(v);
        return -1;
    }
    if (overflow < 0 || x <= 0) {
        PyErr_Format(PyExc_ValueError, "%s() n must be >= 1, not %S", fname, v);
        Py_DECREF(v);
        return -1;
    }
    Py_DECREF(v);
    *n = (int64_t)x;
    return 0;
}

static TL_ALWAYS_INLINE int
hits(PyObject *obj, const char *fname, int64_t *n)
{
    if (TL_LIKELY(PyLong_CheckExact(obj))) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (TL_LIKELY(!overflow && x >= 1)) {
            *n = (int64_t)x;
            return 0;
        }
    }
    return hits_slow(obj, fname, n);
}

/* (key=None, n=1), vectorcall: *key NULL for None. */
static TL_ALWAYS_INLINE int
key_and_n(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *fname,
          PyObject **key, int64_t *n)
{
    *key = NULL;
    *n = 1;
    if (TL_LIKELY(kwnames == NULL)) {
        if (nargs > 2) {
            PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)", fname,
                         nargs);
            return -1;
        }
        if (nargs >= 1 && args[0] != Py_None) {
            *key = args[0];
        }
        return nargs == 2 ? hits(args[1], fname, n) : 0;
    }
    PyObject *kobj = nargs >= 1 ? args[0] : NULL, *nobj = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)", fname,
                     nargs + nkw);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "key") == 0 && kobj == NULL) {
            kobj = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(name, "n") == 0 && nobj == NULL) {
            nobj = args[nargs + i];
        }
        else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         name);
            return -1;
        }
    }
    if (kobj != NULL && kobj != Py_None) {
        *key = kobj;
    }
    return nobj == NULL ? 0 : hits(nobj, fname, n);
}

/* ---- Limiter: memory:// --------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int64_t limit, res_ns, size, buckets;
    clockid_t clk;
    int64_t next_sweep;
    int64_t *glob; /* key None: latest, total, counts[size] */
    PyObject *keys; /* str -> bytearray of the same layout */
    PyObject *check_key;
    PyObject *spec;
#if TL_FREE_THREADED
    _Atomic int lock;
#endif
} LimiterObject;

#if TL_FREE_THREADED
static inline void
lim_lock(LimiterObject *self)
{
    int expected = 0;
    while (!atomic_compare_exchange_weak_explicit(&self->lock, &expected, 1,
                                                  memory_order_acquire, memory_order_relaxed)) {
        expected = 0;
        sched_yield();
    }
}
static inline void
lim_unlock(LimiterObject *self)
{
    atomic_store_explicit(&self->lock, 0, memory_order_release);
}
#define LIM_LOCK(s) lim_lock(s)
#define LIM_UNLOCK(s) lim_unlock(s)
#else
#define LIM_LOCK(s) ((void)0)
#define LIM_UNLOCK(s) ((void)0)
#endif

static int
spec_fields(PyObject *spec, int64_t *limit, int64_t *res_ns, int64_t *buckets, int64_t max_size)
{
    const char *names[3] = {"limit", "res_ns", "buckets"};
    int64_t *outs[3] = {limit, res_ns, buckets};
    for (int i = 0; i < 3; i++) {
        PyObject *v = PyObject_GetAttrString(spec, names[i]);
        if (v == NULL) {
            return -1;
        }
        int r = to_int64(v, "Limiter", outs[i]);
        Py_DECREF(v);
        if (r < 0) {
            return -1;
        }
    }
    if (*limit < 1 || *res_ns < 1 || *buckets < 1 || *buckets + 1 > max_size) {
        PyErr_SetString(PyExc_ValueError, "Limiter: a spec out of range");
        return -1;
    }
    return 0;
}

static PyObject *
Limiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *spec, *check_key;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Limiter(spec, check_key) takes no keywords");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Limiter", 2, 2, &spec, &check_key)) {
        return NULL;
    }
    int64_t limit, res_ns, buckets;
    if (spec_fields(spec, &limit, &res_ns, &buckets, TLW_MAX_SLOTS) < 0) {
        return NULL;
    }
    LimiterObject *self = (LimiterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->limit = limit;
    self->res_ns = res_ns;
    self->buckets = buckets;
    self->size = buckets + 1;
    self->clk = tl_bucket_clock(res_ns, 0);
    self->next_sweep = INT64_MIN;
    self->glob = PyMem_Calloc((size_t)(2 + self->size), sizeof(int64_t));
    self->keys = PyDict_New();
    if (self->glob == NULL || self->keys == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->spec = Py_NewRef(spec);
    self->check_key = Py_NewRef(check_key);
    return (PyObject *)self;
}

#define LIMITER_REFS(X) X(self->keys) X(self->check_key) X(self->spec)
TL_GC_FUNCS(Limiter, LimiterObject, LIMITER_REFS)

static void
Limiter_dealloc(LimiterObject *self)
{
    PyMem_Free(self->glob);
    self->glob = NULL;
    tl_dealloc((PyObject *)self, (inquiry)Limiter_clear, NULL);
}

/* Forget keys whose every slot left the window (lock held). */
static void
lim_sweep(LimiterObject *self, int64_t s)
{
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    PyObject *dead = NULL;
    while (PyDict_Next(self->keys, &pos, &k, &v)) {
        int64_t *w = (int64_t *)PyByteArray_AS_STRING(v);
        if (w[0] < s - self->buckets) {
            if (dead == NULL && (dead = PyList_New(0)) == NULL) {
                PyErr_Clear();
                return;
            }
            if (PyList_Append(dead, k) < 0) {
                PyErr_Clear();
                break;
            }
        }
    }
    if (dead != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dead); i++) {
            if (PyDict_DelItem(self->keys, PyList_GET_ITEM(dead, i)) < 0) {
                PyErr_Clear();
            }
        }
        Py_DECREF(dead);
    }
    self->next_sweep = s + self->size;
}

/* The window of key (NULL: None), created when `create`; NULL with no error
 * set when absent, NULL with an error set on a bad key. */
static int64_t *
lim_window(LimiterObject *self, PyObject *key, int create)
{
    if (key == NULL) {
        return self->glob;
    }
    PyObject *w = NULL;
    if (TL_LIKELY(PyUnicode_CheckExact(key))) {
        w = PyDict_GetItemWithError(self->keys, key); /* borrowed */
        if (w != NULL) {
            return (int64_t *)PyByteArray_AS_STRING(w);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    PyObject *k = PyObject_CallOneArg(self->check_key, key);
    if (k == NULL) {
        return NULL;
    }
    w = PyDict_GetItemWithError(self->keys, k);
    if (w == NULL && !PyErr_Occurred() && create) {
        PyObject *buf = PyByteArray_FromStringAndSize(NULL, (2 + self->size) * 8);
        if (buf != NULL) {
            memset(PyByteArray_AS_STRING(buf), 0, (size_t)(2 + self->size) * 8);
            if (PyDict_SetItem(self->keys, k, buf) == 0) {
                w = buf; /* the dict holds it */
            }
            Py_DECREF(buf);
        }
    }
    Py_DECREF(k);
    return w == NULL ? NULL : (int64_t *)PyByteArray_AS_STRING(w);
}

static PyObject *
Limiter_hit(LimiterObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *key;
    int64_t n;
    if (TL_UNLIKELY(nargs != 0 || kwnames != NULL) &&
        key_and_n(args, nargs, kwnames, "hit", &key, &n) < 0) {
        return NULL;
    }
    if (nargs == 0 && kwnames == NULL) {
        key = NULL;
        n = 1;
    }
    int64_t s = clock_ns(self->clk) / self->res_ns;
    int admitted = 0;
    LIM_LOCK(self);
    if (TL_UNLIKELY(s >= self->next_sweep)) {
        lim_sweep(self, s);
    }
    int64_t *w = lim_window(self, key, 1);
    if (w == NULL) {
        LIM_UNLOCK(self);
        return NULL;
    }
    admitted = tlw_hit(&w[0], &w[1], &w[2], self->size, s, self->limit, n);
    LIM_UNLOCK(self);
    return PyBool_FromLong(admitted);
}

/* What _window(key) returns, for both limiters: (total, oldest slot or None
 * when oldest is INT64_MIN, now_ns). */
static PyObject *
window_result(int64_t total, int64_t oldest, int64_t now)
{
    if (oldest == INT64_MIN) {
        return Py_BuildValue("LOL", (long long)total, Py_None, (long long)now);
    }
    return Py_BuildValue("LLL", (long long)total, (long long)oldest, (long long)now);
}

/* The one pass of _window and _reset over key's window, under the lock: at
 * clock *now, its *total and its *oldest bucket (INT64_MIN when empty, or
 * when forget); forget: zero the window.  0, or -1 with an error set. */
static int
lim_read(LimiterObject *self, PyObject *key, int forget, int64_t *now, int64_t *total,
         int64_t *oldest)
{
    *now = clock_ns(self->clk);
    int64_t s = *now / self->res_ns;
    *total = 0;
    *oldest = INT64_MIN;
    LIM_LOCK(self);
    int64_t *w = lim_window(self, key == Py_None ? NULL : key, 0);
    if (w == NULL && PyErr_Occurred()) {
        LIM_UNLOCK(self);
        return -1;
    }
    if (w != NULL) {
        tlw_advance(&w[0], &w[1], &w[2], self->size, s);
        *total = w[1];
        if (forget) {
            memset(w, 0, (size_t)(2 + self->size) * 8);
        }
        else if (*total) {
            *oldest = tlw_oldest(w[0], &w[2], self->size);
        }
    }
    LIM_UNLOCK(self);
    return 0;
}

/* _window(key) -> (total, oldest slot or None, now_ns): the key's window now. */
static PyObject *
Limiter_window(LimiterObject *self, PyObject *key)
{
    int64_t now, total, oldest;
    if (lim_read(self, key, 0, &now, &total, &oldest) < 0) {
        return NULL;
    }
    return window_result(total, oldest, now);
}

/* _reset(key) -> int: forget the key's units. */
static PyObject *
Limiter_reset_key(LimiterObject *self, PyObject *key)
{
    int64_t now, total, oldest;
    if (lim_read(self, key, 1, &now, &total, &oldest) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong((long long)total);
}

static PyObject *
Limiter_len(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t s = clock_ns(self->clk) / self->res_ns;
    LIM_LOCK(self);
    lim_sweep(self, s);
    Py_ssize_t n = PyDict_GET_SIZE(self->keys);
    LIM_UNLOCK(self);
    return PyLong_FromSsize_t(n);
}

/* What every limiter core has, documented once: hit(key=None, n=1) (HOW: how
 * it decides, "" or a clause, before the final period); the members of
 * Limiter and ShmLimiter (spec), and their _window/_reset. */
#define LIM_HIT_DEF(P, HOW)                                                                  \
    {"hit", (PyCFunction)(void (*)(void))P##_hit, FASTKW,                                    \
     "hit(key=None, n=1) -> bool\n\nAdmit and count n units for key, or refuse and count "   \
     "nothing" HOW "."}
#define LIM_MEMBERS(P)                                                                       \
    static PyMemberDef P##_members[] = {                                                     \
        {"spec", T_OBJECT, offsetof(P##Object, spec), READONLY, "The limiter's spec."},      \
        {NULL, 0, 0, 0, NULL}}
#define LIM_WINDOW_DEFS(P)                                                                   \
    {"_window", (PyCFunction)P##_window, METH_O, NULL},                                      \
        {"_reset", (PyCFunction)P##_reset_key, METH_O, NULL}

LIM_MEMBERS(Limiter);

static PyMethodDef Limiter_methods[] = {
    LIM_HIT_DEF(Limiter, ""),
    LIM_WINDOW_DEFS(Limiter),
    {"_len", (PyCFunction)Limiter_len, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Limiter_slots[] = {
    {Py_tp_doc, "Limiter(spec, check_key): memory://'s limiter (see tallies.stores._limiter)."},
    TL_GC_SLOTS(Limiter),
    {Py_tp_methods, Limiter_methods},
    {Py_tp_members, Limiter_members},
    {0, NULL},
};

TL_TYPE_SPEC(Limiter, "tallies.stores.Limiter", sizeof(LimiterObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

/* ---- ShmLimiter: shm:// ---------------------------------------------------- */

/* This process's lock word: computed on first use, forgotten in a forked
 * child (the atfork handler only stores 0: reading /proc there could block
 * on a lock another thread held at the fork). */
static _Atomic uint64_t self_word;

static void
forget_self_word(void)
{
    atomic_store(&self_word, 0);
}

static inline uint64_t
my_word(void)
{
    uint64_t w = atomic_load_explicit(&self_word, memory_order_relaxed);
    if (TL_UNLIKELY(w == 0)) {
        w = tll_owner_word(getpid());
        atomic_store_explicit(&self_word, w, memory_order_relaxed);
    }
    return w;
}

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    tll_table t;
    int64_t name, kind, limit, res_ns, buckets, size;
    clockid_t clk;
    int64_t g_entry; /* key None: its entry, -1 until found */
    uint64_t g_gen;
    PyObject *cache; /* str -> int (entry | gen << 24) */
    PyObject *check_key;
    PyObject *full_error;
    PyObject *spec;
} ShmLimiterObject;

#define ENTRY_BITS 24
#define GEN_MASK ((1ull << 39) - 1)

static PyObject *
ShmLimiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *buffer, *spec, *check_key, *full_error;
    long long name, kind, limit, res_ns, buckets;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "ShmLimiter() takes no keywords");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OLLLLLOOO:ShmLimiter", &buffer, &name, &kind, &limit, &res_ns,
                          &buckets, &spec, &check_key, &full_error)) {
        return NULL;
    }
    if (name < 0 || name >= TLL_NAMES || (kind != TLL_LIMITER && kind != TLL_FIXED) ||
        res_ns < 1 || buckets < 1 || buckets + 1 > TLL_SLOTS || limit < 1) {
        PyErr_SetString(PyExc_ValueError, "ShmLimiter: out of range");
        return NULL;
    }
    ShmLimiterObject *self = (ShmLimiterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (tll_attach(&self->t, self->view.buf, (size_t)self->view.len) != TLL_OK) {
        PyErr_SetString(PyExc_ValueError, "ShmLimiter: not a limiter table");
        Py_DECREF(self);
        return NULL;
    }
    self->name = name;
    self->kind = kind;
    self->limit = limit;
    self->res_ns = res_ns;
    self->buckets = buckets;
    self->size = buckets + 1;
    self->clk = tl_bucket_clock(res_ns, 0);
    self->g_entry = -1;
    self->cache = PyDict_New();
    if (self->cache == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->spec = Py_NewRef(spec);
    self->check_key = Py_NewRef(check_key);
    self->full_error = Py_NewRef(full_error);
    return (PyObject *)self;
}

#define SHM_LIMITER_REFS(X) X(self->cache) X(self->check_key) X(self->full_error) X(self->spec)
TL_GC_FUNCS(ShmLimiter, ShmLimiterObject, SHM_LIMITER_REFS)

static void
ShmLimiter_dealloc(ShmLimiterObject *self)
{
    if (self->view.obj != NULL) {
        PyBuffer_Release(&self->view);
    }
    tl_dealloc((PyObject *)self, (inquiry)ShmLimiter_clear, NULL);
}

static inline int64_t
wall_ms(void)
{
    return clock_ns(CLOCK_REALTIME) / 1000000;
}

/* Find (claim, when create) the entry of a checked key (UTF-8 bytes). */
static int
shm_find(ShmLimiterObject *self, const char *key, Py_ssize_t len, int create, int64_t *entry,
         uint64_t *gen)
{
    self->t.self = my_word();
    int rc = tll_find(&self->t, self->name, key, len, create, clock_ns(self->clk), wall_ms(),
                      entry, gen);
    if (rc == TLL_FULL) {
        PyErr_Format(self->full_error,
                     "the shm:// limiter table is full: %d keys from this key's place are in "
                     "use (their windows have not expired); open the store with a larger "
                     "?limiter_keys=",
                     TLL_PROBE);
        return -1;
    }
    return rc == TLL_OK ? 1 : 0; /* 0: absent (TLL_STALE, !create) */
}

/* Lock entry i if it still holds generation gen (low GEN_MASK bits). */
static int
shm_lock_if(ShmLimiterObject *self, int64_t i, uint64_t gen, tll_entry **out)
{
    tll_entry *e = &self->t.e[i];
    tll_lock_entry(&self->t, e);
    if (e->state == TLL_LIVE && (e->gen & GEN_MASK) == (gen & GEN_MASK)) {
        *out = e;
        return 1;
    }
    tll_unlock(&e->lock);
    return 0;
}

/* The locked entry of key (NULL: None); 1 when found, 0 when absent and
 * !create, -1 on error.  The caller unlocks. */
static int
shm_enter(ShmLimiterObject *self, PyObject *key, int create, tll_entry **out)
{
    self->t.self = my_word();
    int64_t entry;
    uint64_t gen;
    for (int attempt = 0; attempt < 8; attempt++) {
        if (key == NULL) {
            if (self->g_entry >= 0 && shm_lock_if(self, self->g_entry, self->g_gen, out)) {
                return 1;
            }
            int rc = shm_find(self, "", 0, create, &entry, &gen);
            if (rc != 1) {
                return rc;
            }
            self->g_entry = entry;
            self->g_gen = gen;
            continue;
        }
        if (PyUnicode_CheckExact(key)) {
            PyObject *c = dict_get_ref(self->cache, key);
            if (c != NULL) {
                uint64_t packed = PyLong_AsUnsignedLongLong(c);
                Py_DECREF(c);
                entry = (int64_t)(packed & ((1ull << ENTRY_BITS) - 1));
                if (entry < self->t.h->cap && shm_lock_if(self, entry, packed >> ENTRY_BITS, out)) {
                    return 1;
                }
            }
            else if (PyErr_Occurred()) {
                return -1;
            }
        }
        PyObject *k = PyObject_CallOneArg(self->check_key, key);
        if (k == NULL) {
            return -1;
        }
        Py_ssize_t len;
        const char *bytes = PyUnicode_AsUTF8AndSize(k, &len);
        if (bytes == NULL || len > TLL_KEY_MAX) {
            if (bytes != NULL) {
                PyErr_Format(PyExc_ValueError,
                             "key is %zd bytes in UTF-8; shm:// holds at most %d", len,
                             TLL_KEY_MAX);
            }
            Py_DECREF(k);
            return -1;
        }
        int rc = shm_find(self, bytes, len, create, &entry, &gen);
        if (rc != 1) {
            Py_DECREF(k);
            return rc;
        }
        if (PyDict_GET_SIZE(self->cache) >= 65536) {
            PyDict_Clear(self->cache); /* a cache: keys come and go */
        }
        PyObject *packed =
            PyLong_FromUnsignedLongLong(((gen & GEN_MASK) << ENTRY_BITS) | (uint64_t)entry);
        int r = packed == NULL ? -1 : PyDict_SetItem(self->cache, k, packed);
        Py_XDECREF(packed);
        Py_DECREF(k);
        if (r < 0) {
            return -1;
        }
        if (shm_lock_if(self, entry, gen, out)) {
            return 1;
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "shm:// limiter: the key's entry kept moving");
    return -1;
}

static PyObject *
ShmLimiter_hit(ShmLimiterObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    PyObject *key = NULL;
    int64_t n = 1;
    if (TL_UNLIKELY(nargs != 0 || kwnames != NULL) &&
        key_and_n(args, nargs, kwnames, "hit", &key, &n) < 0) {
        return NULL;
    }
    tll_entry *e;
    int64_t s = clock_ns(self->clk) / self->res_ns;
    if (shm_enter(self, key, 1, &e) < 0) {
        return NULL;
    }
    int admitted = tlw_hit(&e->latest, &e->total, e->counts, self->size, s, self->limit, n);
    tll_unlock(&e->lock);
    return PyBool_FromLong(admitted);
}

static PyObject *
ShmLimiter_window(ShmLimiterObject *self, PyObject *key)
{
    int64_t now = clock_ns(self->clk);
    int64_t total = 0, oldest = INT64_MIN;
    tll_entry *e;
    int r = shm_enter(self, key == Py_None ? NULL : key, 0, &e);
    if (r < 0) {
        return NULL;
    }
    if (r == 1) {
        tlw_advance(&e->latest, &e->total, e->counts, self->size, now / self->res_ns);
        total = e->total;
        oldest = total ? tlw_oldest(e->latest, e->counts, self->size) : INT64_MIN;
        tll_unlock(&e->lock);
    }
    return window_result(total, oldest, now);
}

static PyObject *
ShmLimiter_reset_key(ShmLimiterObject *self, PyObject *key)
{
    int64_t now = clock_ns(self->clk);
    int64_t total = 0;
    tll_entry *e;
    int r = shm_enter(self, key == Py_None ? NULL : key, 0, &e);
    if (r < 0) {
        return NULL;
    }
    if (r == 1) {
        if (self->kind == TLL_LIMITER) {
            tlw_advance(&e->latest, &e->total, e->counts, self->size, now / self->res_ns);
        }
        total = e->total;
        memset(e->counts, 0, sizeof e->counts);
        e->total = 0;
        e->latest = self->kind == TLL_FIXED ? INT64_MIN : e->latest;
        tll_unlock(&e->lock);
    }
    return PyLong_FromLongLong((long long)total);
}

/* _incr(key, expiry_ms, amount) -> (count, expires at Unix ms): a fixed window. */
static PyObject *
ShmLimiter_incr(ShmLimiterObject *self, PyObject *args)
{
    PyObject *key;
    long long expiry, amount;
    if (!PyArg_ParseTuple(args, "OLL:_incr", &key, &expiry, &amount)) {
        return NULL;
    }
    tll_entry *e;
    if (shm_enter(self, key == Py_None ? NULL : key, 1, &e) < 0) {
        return NULL;
    }
    int64_t now = wall_ms();
    if (e->latest <= now) {
        e->total = 0;
        e->latest = now + expiry;
    }
    int64_t c;
    if (TL_ADD_OVERFLOWS(e->total, (int64_t)amount, &c)) {
        tll_unlock(&e->lock);
        PyErr_SetString(PyExc_OverflowError, "a fixed window's count would leave int64");
        return NULL;
    }
    e->total = c;
    int64_t end = e->latest;
    tll_unlock(&e->lock);
    return Py_BuildValue("LL", (long long)c, (long long)end);
}

static PyObject *
ShmLimiter_get(ShmLimiterObject *self, PyObject *key)
{
    tll_entry *e;
    int64_t now = wall_ms();
    int r = shm_enter(self, key == Py_None ? NULL : key, 0, &e);
    if (r < 0) {
        return NULL;
    }
    int64_t c = 0, end = now;
    if (r == 1) {
        if (e->latest > now) {
            c = e->total;
            end = e->latest;
        }
        tll_unlock(&e->lock);
    }
    return Py_BuildValue("LL", (long long)c, (long long)end);
}

/* ShmLimiter._format(buffer, cap): lay out a new (zeroed) table. */
static PyObject *
ShmLimiter_format(PyObject *Py_UNUSED(cls), PyObject *args)
{
    Py_buffer view;
    long long cap;
    if (!PyArg_ParseTuple(args, "w*L:_format", &view, &cap)) {
        return NULL;
    }
    if (cap < 1 || (size_t)view.len < tll_bytes(cap)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "_format: the buffer is too small");
        return NULL;
    }
    tll_format(view.buf, cap);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ShmLimiter._check(buffer) -> cap, or ValueError when it is not a table. */
static PyObject *
ShmLimiter_check(PyObject *Py_UNUSED(cls), PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    tll_table t;
    int rc = tll_attach(&t, view.buf, (size_t)view.len);
    int64_t cap = rc == TLL_OK ? t.h->cap : 0;
    PyBuffer_Release(&view);
    if (rc != TLL_OK) {
        PyErr_SetString(PyExc_ValueError, "not a tallies limiter table");
        return NULL;
    }
    return PyLong_FromLongLong((long long)cap);
}

/* ShmLimiter._register(buffer, name, kind, limit, per_ns, res_ns, buckets)
 * -> (index, 0) or (index, 1) when registered with another spec, (-1, 0) full. */
static PyObject *
ShmLimiter_register(PyObject *Py_UNUSED(cls), PyObject *args)
{
    Py_buffer view;
    const char *name;
    Py_ssize_t len;
    long long kind, limit, per_ns, res_ns, buckets;
    if (!PyArg_ParseTuple(args, "w*s#LLLLL:_register", &view, &name, &len, &kind, &limit,
                          &per_ns, &res_ns, &buckets)) {
        return NULL;
    }
    tll_table t;
    if (len > TLL_NAME_MAX || tll_attach(&t, view.buf, (size_t)view.len) != TLL_OK) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "_register: a bad name or table");
        return NULL;
    }
    t.self = my_word();
    int64_t idx = -1;
    int rc = tll_register(&t, name, len, kind, limit, per_ns, res_ns, buckets, &idx);
    PyBuffer_Release(&view);
    if (rc == TLL_FULL) {
        return Py_BuildValue("Li", -1LL, 0);
    }
    return Py_BuildValue("Li", (long long)idx, rc == TLL_MISMATCH ? 1 : 0);
}

/* ShmLimiter._spec_at(buffer, index) -> (name, kind, limit, per_ns, res_ns, buckets). */
static PyObject *
ShmLimiter_spec_at(PyObject *Py_UNUSED(cls), PyObject *args)
{
    Py_buffer view;
    long long idx;
    if (!PyArg_ParseTuple(args, "y*L:_spec_at", &view, &idx)) {
        return NULL;
    }
    tll_table t;
    if (idx < 0 || idx >= TLL_NAMES || tll_attach(&t, view.buf, (size_t)view.len) != TLL_OK) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "_spec_at: a bad index or table");
        return NULL;
    }
    tll_name *n = &t.h->names[idx];
    PyObject *out = Py_BuildValue("s#LLLLL", n->name, (Py_ssize_t)n->namelen, (long long)n->kind,
                                  (long long)n->limit, (long long)n->per_ns,
                                  (long long)n->res_ns, (long long)n->buckets);
    PyBuffer_Release(&view);
    return out;
}

LIM_MEMBERS(ShmLimiter);

static PyMethodDef ShmLimiter_methods[] = {
    LIM_HIT_DEF(ShmLimiter, " (every process of the machine shares the limit)"),
    LIM_WINDOW_DEFS(ShmLimiter),
    {"_incr", (PyCFunction)ShmLimiter_incr, METH_VARARGS, NULL},
    {"_get", (PyCFunction)ShmLimiter_get, METH_O, NULL},
    {"_format", (PyCFunction)ShmLimiter_format, METH_VARARGS | METH_STATIC, NULL},
    {"_check", (PyCFunction)ShmLimiter_check, METH_O | METH_STATIC, NULL},
    {"_register", (PyCFunction)ShmLimiter_register, METH_VARARGS | METH_STATIC, NULL},
    {"_spec_at", (PyCFunction)ShmLimiter_spec_at, METH_VARARGS | METH_STATIC, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ShmLimiter_slots[] = {
    {Py_tp_doc, "shm://'s limiter (see tallies.stores._limiter)."},
    TL_GC_SLOTS(ShmLimiter),
    {Py_tp_methods, ShmLimiter_methods},
    {Py_tp_members, ShmLimiter_members},
    {0, NULL},
};

TL_TYPE_SPEC(ShmLimiter, "tallies.stores.ShmLimiter", sizeof(ShmLimiterObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

/* ---- LeaseCore: a write-behind store's leases --------------------------------
 *
 * A lease is 4 int64 in a bytearray: slot, left, deadline (CLOCK_MONOTONIC
 * ns: the lease ends before it), want.  `table` maps a key ("" for None) to
 * it.  hit() consumes from a valid lease; anything else (no lease, spent,
 * ended, an argument to check, keywords) calls the Python method
 * _hit_slow(key=None, n=1) with the same arguments.  The Python side
 * changes a lease only through the methods below (one C call each: with a
 * GIL they cannot interleave with a hit; without one, `left` only changes by
 * CAS and exchange, and a new lease is published deadline first). */

typedef struct {
    PyObject_HEAD
    PyObject *table;
    PyObject *glob; /* table[""], kept here too: no lookup for key None */
    PyObject *dict;
    PyObject *weakrefs;
} LeaseObject;

enum { L_SLOT, L_LEFT, L_DEADLINE, L_WANT, L_WORDS };

static PyObject *str_hit_slow;

static inline _Atomic int64_t *
lease_words(PyObject *buf)
{
    return (_Atomic int64_t *)PyByteArray_AS_STRING(buf);
}

static PyObject *
lease_buf_new(void)
{
    PyObject *buf = PyByteArray_FromStringAndSize(NULL, L_WORDS * 8);
    if (buf != NULL) {
        memset(PyByteArray_AS_STRING(buf), 0, L_WORDS * 8);
        lease_words(buf)[L_WANT] = 1;
    }
    return buf;
}

static PyObject *
Lease_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    LeaseObject *self = (LeaseObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->table = PyDict_New();
    self->glob = lease_buf_new();
    if (self->table == NULL || self->glob == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    PyObject *empty = PyUnicode_FromString("");
    if (empty == NULL || PyDict_SetItem(self->table, empty, self->glob) < 0) {
        Py_XDECREF(empty);
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(empty);
    return (PyObject *)self;
}

#define LEASE_REFS(X) X(self->table) X(self->glob) X(self->dict)
TL_GC_FUNCS(Lease, LeaseObject, LEASE_REFS)

static void
Lease_dealloc(LeaseObject *self)
{
    tl_dealloc((PyObject *)self, (inquiry)Lease_clear, &self->weakrefs);
}

static inline int64_t
lease_now(void)
{
    /* the coarse clock lags by at most a tick: now <= coarse + tick */
    return tl_monotonic_tick > 0 ? clock_ns(CLOCK_MONOTONIC_COARSE) + tl_monotonic_tick
                           : clock_ns(CLOCK_MONOTONIC);
}

/* Consume n from the lease in buf if it is valid now: 1, else 0. */
static TL_ALWAYS_INLINE int
lease_take(PyObject *buf, int64_t n)
{
    _Atomic int64_t *w = lease_words(buf);
    int64_t left = atomic_load_explicit(&w[L_LEFT], memory_order_acquire);
    if (left < n || lease_now() >= atomic_load_explicit(&w[L_DEADLINE], memory_order_acquire)) {
        return 0;
    }
#if TL_FREE_THREADED
    while (!atomic_compare_exchange_weak_explicit(&w[L_LEFT], &left, left - n,
                                                  memory_order_acq_rel, memory_order_acquire)) {
        if (left < n) {
            return 0;
        }
    }
#else
    atomic_store_explicit(&w[L_LEFT], left - n, memory_order_relaxed);
#endif
    return 1;
}

static TL_COLD PyObject *
lease_slow(LeaseObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *meth = PyObject_GetAttr((PyObject *)self, str_hit_slow);
    if (meth == NULL) {
        return NULL;
    }
    PyObject *out = PyObject_Vectorcall(meth, args, (size_t)nargs, kwnames);
    Py_DECREF(meth);
    return out;
}

static PyObject *
Lease_hit(LeaseObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *buf;
    int64_t n = 1;
    if (TL_LIKELY(nargs == 0 && kwnames == NULL)) {
        buf = self->glob;
    }
    else {
        if (kwnames != NULL || nargs > 2) {
            return lease_slow(self, args, nargs, kwnames);
        }
        if (nargs == 2) {
            int overflow;
            long long x = PyLong_CheckExact(args[1])
                              ? PyLong_AsLongLongAndOverflow(args[1], &overflow)
                              : (overflow = 1, 0);
            if (overflow || x < 1) {
                return lease_slow(self, args, nargs, kwnames);
            }
            n = (int64_t)x;
        }
        if (args[0] == Py_None) {
            buf = self->glob;
        }
        else if (PyUnicode_CheckExact(args[0])) {
            PyObject *found = dict_get_ref(self->table, args[0]);
            if (found == NULL) {
                return PyErr_Occurred() ? NULL : lease_slow(self, args, nargs, kwnames);
            }
            int took = lease_take(found, n);
            Py_DECREF(found);
            if (took) {
                Py_RETURN_TRUE;
            }
            return lease_slow(self, args, nargs, kwnames);
        }
        else {
            return lease_slow(self, args, nargs, kwnames);
        }
    }
    if (lease_take(buf, n)) {
        Py_RETURN_TRUE;
    }
    return lease_slow(self, args, nargs, kwnames);
}

/* The lease of a checked key ("" for None), a new reference, or NULL (no
 * error set) when absent. */
static PyObject *
lease_of(LeaseObject *self, PyObject *key, int create)
{
    PyObject *buf = dict_get_ref(self->table, key);
    if (buf != NULL || PyErr_Occurred() || !create) {
        return buf;
    }
    buf = lease_buf_new();
    if (buf == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(self->table, key, buf) < 0) {
        Py_DECREF(buf);
        return NULL;
    }
    return buf;
}

/* _take(key, n) -> bool: consume n from a valid lease of a checked key. */
static PyObject *
Lease_take(LeaseObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long n;
    if (nargs != 2 || (n = PyLong_AsLongLong(args[1])) < 1) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "_take(key, n)");
        }
        return NULL;
    }
    PyObject *buf = lease_of(self, args[0], 0);
    if (buf == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    int took = lease_take(buf, (int64_t)n);
    Py_DECREF(buf);
    return PyBool_FromLong(took);
}

/* _swap(key) -> (slot, left, deadline, want): end the lease, returning what
 * it held (its unused units are the caller's to give back). */
static PyObject *
Lease_swap(LeaseObject *self, PyObject *key)
{
    PyObject *buf = lease_of(self, key, 0);
    if (buf == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return Py_BuildValue("LLLL", 0LL, 0LL, 0LL, 1LL);
    }
    _Atomic int64_t *w = lease_words(buf);
    int64_t deadline = atomic_exchange(&w[L_DEADLINE], 0);
    int64_t left = atomic_exchange(&w[L_LEFT], 0);
    PyObject *out = Py_BuildValue("LLLL", (long long)w[L_SLOT], (long long)left,
                                  (long long)deadline, (long long)w[L_WANT]);
    Py_DECREF(buf);
    return out;
}

/* _set(key, slot, left, deadline, want): a new lease (deadline: monotonic ns). */
static PyObject *
Lease_set(LeaseObject *self, PyObject *args)
{
    PyObject *key;
    long long slot, left, deadline, want;
    if (!PyArg_ParseTuple(args, "OLLLL:_set", &key, &slot, &left, &deadline, &want)) {
        return NULL;
    }
    PyObject *buf = lease_of(self, key, 1);
    if (buf == NULL) {
        return NULL;
    }
    _Atomic int64_t *w = lease_words(buf);
    atomic_store(&w[L_LEFT], 0);
    w[L_SLOT] = slot;
    w[L_WANT] = want;
    atomic_store(&w[L_DEADLINE], deadline);
    atomic_store(&w[L_LEFT], left);
    Py_DECREF(buf);
    Py_RETURN_NONE;
}

/* _pop(key): drop a key's lease (the caller gave back what it held). */
static PyObject *
Lease_pop(LeaseObject *self, PyObject *key)
{
    if (PyUnicode_Check(key) && PyUnicode_GET_LENGTH(key) == 0) {
        PyObject *buf = self->glob;
        _Atomic int64_t *w = lease_words(buf);
        atomic_store(&w[L_DEADLINE], 0);
        atomic_store(&w[L_LEFT], 0);
        w[L_WANT] = 1;
        Py_RETURN_NONE;
    }
    if (PyDict_DelItem(self->table, key) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
            return NULL;
        }
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* _peek(key) -> (slot, left, deadline): a lease as it is now (zeros: none). */
static PyObject *
Lease_peek(LeaseObject *self, PyObject *key)
{
    PyObject *buf = lease_of(self, key, 0);
    if (buf == NULL) {
        return PyErr_Occurred() ? NULL : Py_BuildValue("LLL", 0LL, 0LL, 0LL);
    }
    _Atomic int64_t *w = lease_words(buf);
    PyObject *out = Py_BuildValue("LLL", (long long)w[L_SLOT],
                                  (long long)atomic_load(&w[L_LEFT]),
                                  (long long)atomic_load(&w[L_DEADLINE]));
    Py_DECREF(buf);
    return out;
}

/* _entries() -> [(key, slot, left, deadline)]: every lease (for sweeps and
 * give_back), read as they are now. */
static PyObject *
Lease_entries(LeaseObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (out != NULL && PyDict_Next(self->table, &pos, &k, &v)) {
        _Atomic int64_t *w = lease_words(v);
        PyObject *item = Py_BuildValue("OLLL", k, (long long)w[L_SLOT],
                                       (long long)atomic_load(&w[L_LEFT]),
                                       (long long)atomic_load(&w[L_DEADLINE]));
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *
Lease_now(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong((long long)clock_ns(CLOCK_MONOTONIC));
}

static PyMethodDef Lease_methods[] = {
    LIM_HIT_DEF(Lease,
                ": from this writer's lease when it has one (no I/O), else asking the store"),
    {"_take", (PyCFunction)(void (*)(void))Lease_take, METH_FASTCALL, NULL},
    {"_swap", (PyCFunction)Lease_swap, METH_O, NULL},
    {"_set", (PyCFunction)Lease_set, METH_VARARGS, NULL},
    {"_pop", (PyCFunction)Lease_pop, METH_O, NULL},
    {"_peek", (PyCFunction)Lease_peek, METH_O, NULL},
    {"_entries", (PyCFunction)Lease_entries, METH_NOARGS, NULL},
    {"_now", (PyCFunction)Lease_now, METH_NOARGS | METH_STATIC, NULL},
    {NULL, NULL, 0, NULL},
};

TL_DICT_WEAKLIST_MEMBERS(Lease, dict, weakrefs);

static PyType_Slot Lease_slots[] = {
    {Py_tp_doc, "A write-behind store's limiter (see tallies.stores._limiter)."},
    TL_GC_SLOTS(Lease),
    {Py_tp_methods, Lease_methods},
    {Py_tp_members, Lease_members},
    {0, NULL},
};

TL_TYPE_SPEC(Lease, "tallies.stores.LeaseLimiter", sizeof(LeaseObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC);

/* ---- the module ---------------------------------------------------------------- */

int
tl_limiter_exec(PyObject *m)
{
    static int forked_hook = 0;
    if (!forked_hook) {
        pthread_atfork(NULL, NULL, forget_self_word);
        forked_hook = 1;
    }
    str_hit_slow = PyUnicode_InternFromString("_hit_slow");
    if (str_hit_slow == NULL) {
        return -1;
    }
    if (tl_add_type(m, &Limiter_spec, TL_LIMITER, 1) == NULL ||
        tl_add_type(m, &ShmLimiter_spec, TL_SHM_LIMITER, 1) == NULL ||
        tl_add_type(m, &Lease_spec, TL_LEASE, 1) == NULL) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "LIMTABLE_HEADER", TLL_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "LIMTABLE_ENTRY", TLL_ENTRY) < 0 ||
        PyModule_AddIntConstant(m, "LIMTABLE_SLOTS", TLL_SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "LIMTABLE_NAMES", TLL_NAMES) < 0 ||
        PyModule_AddIntConstant(m, "LIMTABLE_KEY_MAX", TLL_KEY_MAX) < 0) {
        return -1;
    }
    return 0;
}
