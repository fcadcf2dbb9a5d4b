/*
 * rate.c (part of tallies._tallies: _module.h): RateCounter and
 * KeyedRateCounter over the ring in
 * _ring.h (read its header comment first: one running total per ring plus a
 * mark per bucket; an increment is a clock read, a compare and one checked
 * add).
 *
 * The default clock is CLOCK_MONOTONIC_COARSE when the resolution is at
 * least 10x its granularity (clock_getres: the kernel tick, 1-4 ms), else
 * CLOCK_MONOTONIC.  On this project's machine CLOCK_MONOTONIC costs 66 ns a
 * read and the coarse clock 8 ns: the coarse clock is what lets increment()
 * cost about what Counter.increment() costs.  Its granularity shifts bucket
 * boundaries by at most one tick.  Window and resolution are normalised once
 * (parse_spec) to whole nanoseconds, and the bucket count is derived from those
 * integers.  A user `clock` (a callable returning seconds) is called on every
 * operation; its reading is rounded to whole nanoseconds exactly (seconds_ns)
 * and bucketed like the default clock's, exactly as the pure fallback does.
 *
 * With a GIL every method runs from the clock read to the update while
 * holding it, so the total uses the engine's `_serial` add (TLR_SERIAL).
 * With Py_GIL_DISABLED it uses the atomic add, keys are removed with the
 * writer-count protocol of _keyed_cells.h (applied to each key's ring), one
 * sweep runs at a time (an atomic flag; others skip), and the module declares
 * Py_MOD_GIL_NOT_USED.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>

#ifndef Py_GIL_DISABLED
#define TLR_SERIAL
#endif
#include "_keyed_cells.h"
#include "_ring.h"
#include "_module.h"
#include "_pyargs.h"
#include "_counter_methods.h"

#define MAX_WINDOW 1e9 /* seconds: keeps every nanosecond count in int64 */
#define MIN_RESOLUTION 1e-9
#define NS 1000000000LL


/* ---- arguments ----------------------------------------------------------- */

static PyObject *
float_repr(double v)
{
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromString(s);
    PyMem_Free(s);
    return r;
}

/* A number of seconds (int, float, anything with __float__/__index__). */
static int
to_seconds(PyObject *obj, const char *fname, const char *what, double *out)
{
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || obj == Py_None ||
        PyComplex_Check(obj)) {
        goto bad;
    }
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear(); /* an int too large for a float: out of range */
            v = Py_HUGE_VAL;
        }
        else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            goto bad;
        }
        else {
            return -1;
        }
    }
    *out = v;
    return 0;
bad:
    PyErr_Format(PyExc_TypeError, "%s() %s must be a number of seconds, not '%.200s'",
                 fname, what, type_name(Py_TYPE(obj)));
    return -1;
}

static int
value_error_float(const char *fmt_head, double v, const char *tail)
{
    PyObject *r = float_repr(v);
    if (r != NULL) {
        PyErr_Format(PyExc_ValueError, "%s%U%s", fmt_head, r, tail);
        Py_DECREF(r);
    }
    return -1;
}

/* A finite number of seconds (|v| <= 4e18) in whole nanoseconds, rounded half up
 * from the double's exact value: floor(v * 1e9 + 1/2) without rounding error
 * (v = m * 2^e with m a 53-bit integer; m * 1e9 < 2^83).  _pure/rate.py's
 * seconds_ns() computes the same with Python ints. */
static __int128
seconds_ns(double v)
{
    int e;
    double m = frexp(v, &e);
    __int128 x = (__int128)(int64_t)ldexp(m, 53) * 1000000000;
    e -= 53;
    if (e >= 0) {
        return x * ((__int128)1 << e);
    }
    if (e < -120) {
        return 0; /* |v * 1e9| < 2^-37 */
    }
    int s = -e;
    __int128 y = x + ((__int128)1 << (s - 1));
    return y >= 0 ? y >> s : -((-y + ((__int128)1 << s) - 1) >> s);
}

static inline __int128
floordiv128(__int128 a, int64_t b)
{
    __int128 q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

typedef struct {
    double window, resolution;
    int64_t window_ns, res_ns, nb;
    clockid_t clk;
    PyObject *clock; /* NULL: the default clock */
} spec;

static int
parse_spec(const char *fname, PyObject *wobj, PyObject *robj, PyObject *clock,
           spec *sp)
{
    double w = 60.0, r = 1.0;
    char head[200];
    if (wobj != NULL && to_seconds(wobj, fname, "window", &w) < 0) {
        return -1;
    }
    if (robj != NULL && to_seconds(robj, fname, "resolution", &r) < 0) {
        return -1;
    }
    if (!(w > 0.0 && w <= MAX_WINDOW)) { /* also NaN */
        PyOS_snprintf(head, sizeof head,
                      "%s() window must be a number of seconds > 0 and <= 1e9, not ",
                      fname);
        return value_error_float(head, w, "");
    }
    if (!(r >= MIN_RESOLUTION && r <= w)) {
        PyObject *wr = float_repr(w);
        if (wr == NULL) {
            return -1;
        }
        PyOS_snprintf(head, sizeof head,
                      "%s() resolution must be a number of seconds >= 1e-9 and <= "
                      "the window (%s), not ",
                      fname, PyUnicode_AsUTF8(wr));
        Py_DECREF(wr);
        return value_error_float(head, r, "");
    }
    if (clock != NULL && clock != Py_None && !PyCallable_Check(clock)) {
        PyErr_Format(PyExc_TypeError,
                     "%s() clock must be a callable returning seconds, or None, "
                     "not '%.200s'",
                     fname, type_name(Py_TYPE(clock)));
        return -1;
    }
    /* Normalised once, as _pure/rate.py's _Spec does: whole nanoseconds (w <= 1e9 s
     * and r >= 1e-9 s, so 1 <= res_ns <= window_ns <= 1e18), and the bucket count
     * from those integers, so the ring always covers the whole window. */
    int64_t window_ns = (int64_t)seconds_ns(w), res_ns = (int64_t)seconds_ns(r);
    int64_t nb = window_ns / res_ns + (window_ns % res_ns != 0);
    if (nb > TLR_MAX_BUCKETS) {
        PyErr_Format(PyExc_ValueError,
                     "%s() window / resolution needs %lld buckets; the limit is %d", fname,
                     (long long)nb, TLR_MAX_BUCKETS);
        return -1;
    }
    sp->window_ns = window_ns;
    sp->res_ns = res_ns;
    sp->nb = nb;
    /* Reported in seconds as the double nearest to ns / 1e9 (Python's exact
     * ns / 10**9): up to 2^53 ns the division is exact-rounded as written; above,
     * doubles are more than 1 ns apart, so that double is the one given. */
    sp->window = window_ns <= ((int64_t)1 << 53) ? (double)window_ns / 1e9 : w;
    sp->resolution = res_ns <= ((int64_t)1 << 53) ? (double)res_ns / 1e9 : r;
    sp->clk = tl_bucket_clock(sp->res_ns, 0);
    sp->clock = (clock == NULL || clock == Py_None) ? NULL : clock;
    return 0;
}

/* count(window=None) / per_second(window=None): the width to read. */
static int
parse_width(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            Py_ssize_t first, const char *fname, const spec *sp, double *w, int64_t *w_ns)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *obj = NULL;
    if (nargs + nkw > first + 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)",
                     fname, first + 1, nargs + nkw);
        return -1;
    }
    if (nargs < first) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'key'", fname);
        return -1;
    }
    if (nkw == 1) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        if (PyUnicode_CompareWithASCIIString(name, "window") != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         fname, name);
            return -1;
        }
        obj = args[nargs];
    }
    else if (nargs == first + 1) {
        obj = args[first];
    }
    *w = sp->window;
    *w_ns = sp->window_ns;
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    if (to_seconds(obj, fname, "window", w) < 0) {
        return -1;
    }
    if (*w > 0.0 && *w <= MAX_WINDOW) {
        *w_ns = (int64_t)seconds_ns(*w);
    }
    if (!(*w > 0.0 && *w <= MAX_WINDOW && *w_ns <= sp->window_ns)) {
        char head[200];
        PyObject *wr = float_repr(sp->window);
        if (wr == NULL) {
            return -1;
        }
        PyOS_snprintf(head, sizeof head,
                      "%s() window must be a number of seconds > 0 and <= %s, not ",
                      fname, PyUnicode_AsUTF8(wr));
        Py_DECREF(wr);
        return value_error_float(head, *w, "");
    }
    return 0;
}

/* ---- clocks ------------------------------------------------------------- */

static inline int64_t
now_ns(const spec *sp)
{
    struct timespec ts;
    clock_gettime(sp->clk, &ts);
    return (int64_t)ts.tv_sec * NS + (int64_t)ts.tv_nsec;
}

/* Call the user clock: its reading in whole ns in *tn and its slot in *slot. */
static int
user_time(const spec *sp, __int128 *tn, int64_t *slot)
{
    PyObject *res = PyObject_CallNoArgs(sp->clock);
    if (res == NULL) {
        return -1;
    }
    double v;
    int bad = PyUnicode_Check(res) || PyBytes_Check(res) || res == Py_None;
    if (!bad) {
        v = PyFloat_AsDouble(res);
        if (v == -1.0 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear(); /* an int too large for a float: out of range */
                v = Py_HUGE_VAL;
            }
            else if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                Py_DECREF(res);
                return -1;
            }
            else {
                PyErr_Clear();
                bad = 1;
            }
        }
    }
    if (bad) {
        PyErr_Format(PyExc_TypeError, "clock() must return a number of seconds, not '%.200s'",
                     type_name(Py_TYPE(res)));
        Py_DECREF(res);
        return -1;
    }
    Py_DECREF(res);
    if (fabs(v) <= 4e18) { /* not NaN or inf */
        __int128 n = seconds_ns(v), q = floordiv128(n, sp->res_ns);
        if (q < (__int128)4000000000000000000LL && q > -(__int128)4000000000000000000LL) {
            *tn = n;
            *slot = (int64_t)q;
            return 0;
        }
    }
    return value_error_float("clock() returned ", v,
                             "; expected a finite number of seconds within "
                             "4e18 buckets of 0");
}

/* Read the clock: *cur (the current slot), and for ns mode *ns; for a user
 * clock *t.  The slot the counting goes to is max(cur, latest) (the ring). */
typedef struct {
    int64_t ns, slot;
    __int128 tn; /* a user clock's reading in whole ns */
} instant;

static int
read_clock(const spec *sp, instant *in)
{
    if (sp->clock == NULL) {
        in->ns = now_ns(sp);
        in->slot = tlr_floordiv(in->ns, sp->res_ns);
        return 0;
    }
    return user_time(sp, &in->tn, &in->slot);
}

/* The first slot a read of w_ns counts (see tlr_first_slot_ns). */
static int64_t
first_slot(const spec *sp, const instant *in, int64_t w_ns, int64_t latest)
{
    if (sp->clock == NULL) {
        int64_t cur;
        return tlr_first_slot_ns(in->ns, w_ns, sp->res_ns, latest, sp->nb, &cur);
    }
    int64_t cur = in->slot;
    int64_t j = (int64_t)floordiv128(in->tn - w_ns, sp->res_ns) + 1;
    if (latest != TLR_NONE && cur < latest) {
        j += latest - cur;
        cur = latest;
    }
    if (j > cur) {
        j = cur;
    }
    if (j < cur - sp->nb + 1) {
        j = cur - sp->nb + 1;
    }
    return j;
}

/* total - base exactly, as a Python int. */
static PyObject *
difference(int64_t total, int64_t base)
{
    int64_t d;
    if (TL_LIKELY(!TL_SUB_OVERFLOWS(total, base, &d))) {
        return PyLong_FromLongLong((long long)d);
    }
    PyObject *a = PyLong_FromLongLong((long long)total);
    PyObject *b = PyLong_FromLongLong((long long)base);
    PyObject *r = (a && b) ? PyNumber_Subtract(a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    return r;
}

static PyObject *
ring_count(tlr_ring *ring, const spec *sp, const instant *in, int64_t w_ns)
{
    int64_t total, base;
    int64_t j = first_slot(sp, in, w_ns, tlr_latest(ring));
    tlr_read(ring, j, &total, &base);
    return difference(total, base);
}

static PyObject *
per_second(PyObject *count, double w)
{
    if (count == NULL) {
        return NULL;
    }
    double c = PyLong_AsDouble(count);
    Py_DECREF(count);
    if (c == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    return PyFloat_FromDouble(c / w);
}

/* P_count and P_per_second (count(window=None), per_second(window=None), the
 * keyed type's (KEYED 1) with the key first): both parse the window here
 * (w: in seconds) and count with COUNT(self, args, w_ns). */
#define RATE_COUNT_METHODS(P, OBJECT, KEYED, COUNT)                                          \
    static PyObject *P##_counted(OBJECT *self, PyObject *const *args, Py_ssize_t nargs,      \
                                 PyObject *kwnames, const char *fname, double *w)            \
    {                                                                                        \
        int64_t w_ns;                                                                        \
        if (parse_width(args, nargs, kwnames, KEYED, fname, &self->sp, w, &w_ns) < 0) {      \
            return NULL;                                                                     \
        }                                                                                    \
        return COUNT(self, args, w_ns);                                                      \
    }                                                                                        \
    static PyObject *P##_count(OBJECT *self, PyObject *const *args, Py_ssize_t nargs,        \
                               PyObject *kwnames)                                            \
    {                                                                                        \
        double w;                                                                            \
        return P##_counted(self, args, nargs, kwnames, "count", &w);                         \
    }                                                                                        \
    static PyObject *P##_per_second(OBJECT *self, PyObject *const *args, Py_ssize_t nargs,   \
                                    PyObject *kwnames)                                       \
    {                                                                                        \
        double w;                                                                            \
        PyObject *c = P##_counted(self, args, nargs, kwnames, "per_second", &w);             \
        return per_second(c, w);                                                             \
    }

/* The method table entries of what both rate types have (P_increment,
 * P_decrement, P_count, P_per_second), documented once: KEY is "" or "key, ",
 * OF "" or " of key", COUNT_DOC what count() returns. */
#define RATE_METHOD_DEFS(P, KEY, OF, COUNT_DOC)                                              \
    TL_EVENT_METHOD_DEFS(P, KEY, OF, ""),                                                    \
        {"count", (PyCFunction)(void (*)(void))P##_count, FASTKW,                            \
         "count(" KEY "window=None) -> int\n\n" COUNT_DOC},                                  \
        {"per_second", (PyCFunction)(void (*)(void))P##_per_second, FASTKW,                  \
         "per_second(" KEY "window=None) -> float\n\ncount(" KEY "window) / window."}

/* Add n (sub: -n) to ring at instant in.  TL_OK or TL_OVERFLOW (*cur). */
static inline int
ring_add(tlr_ring *ring, const spec *sp, const instant *in, int64_t n, int sub,
         int64_t *cur)
{
    if (sp->clock == NULL) {
        return tlr_add_ns(ring, in->ns, sp->res_ns, n, sub, cur);
    }
    return tlr_add_slot(ring, in->slot, n, sub, cur);
}

/* The repr of a rate: "Type(window=W, resolution=R, <what>)", `what` a
 * PyUnicode_FromFormat format followed by its arguments. */
static PyObject *
spec_repr(PyObject *self, const spec *sp, const char *what, ...)
{
    PyObject *w = float_repr(sp->window), *r = float_repr(sp->resolution), *t = NULL;
    PyObject *out = NULL;
    if (w != NULL && r != NULL) {
        va_list va;
        va_start(va, what);
        t = PyUnicode_FromFormatV(what, va);
        va_end(va);
    }
    if (t != NULL) {
        out = PyUnicode_FromFormat("%s(window=%U, resolution=%U, %U)", type_name(Py_TYPE(self)),
                                   w, r, t);
    }
    Py_XDECREF(w);
    Py_XDECREF(r);
    Py_XDECREF(t);
    return out;
}

/* ---- RateCounter ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tlr_ring ring;
    spec sp;
} RateObject;

/* The Py_tp_doc slot of rate type NAME: its constructor's signature (the
 * arguments that alloc_with_spec parses), then DOC. */
#define RATE_DOC_SLOT(NAME, DOC) \
    {Py_tp_doc, NAME "(window=60.0, resolution=1.0, *, clock=None)\n--\n\n" DOC}

/* A new instance of type, its constructor's arguments (window=60.0,
 * resolution=1.0, *, clock=None) parsed into *sp first; fmt ends with ":" and
 * the type's name (the name in messages).  NULL with an exception. */
static PyObject *
alloc_with_spec(PyTypeObject *type, PyObject *args, PyObject *kwds, const char *fmt, spec *sp)
{
    static char *kwlist[] = {"window", "resolution", "clock", NULL};
    PyObject *wobj = NULL, *robj = NULL, *clock = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &wobj, &robj, &clock) ||
        parse_spec(strchr(fmt, ':') + 1, wobj, robj, clock, sp) < 0) {
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PyObject *
Rate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    spec sp;
    RateObject *self = (RateObject *)alloc_with_spec(type, args, kwds, "|OO$O:RateCounter", &sp);
    if (self == NULL || tlr_init_owned((PyObject *)self, &self->ring, sp.nb) == NULL) {
        return NULL;
    }
    Py_XINCREF(sp.clock);
    self->sp = sp;
    return (PyObject *)self;
}

/* Clearing the clock (one that refers back) falls back to the default. */
#define RATE_REFS(X) X(self->sp.clock)
TL_GC_FUNCS(Rate, RateObject, RATE_REFS)

static void
Rate_dealloc(RateObject *self)
{
    tlr_free(&self->ring);
    tl_dealloc((PyObject *)self, (inquiry)Rate_clear, NULL);
}

/* The update of increment and decrement (_counter_methods.h). */
static TL_ALWAYS_INLINE int
Rate_update(RateObject *self, int64_t n, int sub, const char *op)
{
    int64_t v;
    int r;
    if (TL_LIKELY(self->sp.clock == NULL)) {
        r = tlr_add_ns(&self->ring, now_ns(&self->sp), self->sp.res_ns, n, sub, &v);
    }
    else {
        instant in;
        if (user_time(&self->sp, &in.tn, &in.slot) < 0) {
            return -1;
        }
        r = tlr_add_slot(&self->ring, in.slot, n, sub, &v);
    }
    if (TL_UNLIKELY(r != TL_OK)) {
        tl_overflow_stays(op, n, "the rate's total", NULL, v);
        return -1;
    }
    return 0;
}

TL_UPDATE_METHODS(Rate, RateObject)

static PyObject *
rate_count(RateObject *self, PyObject *const *Py_UNUSED(args), int64_t w_ns)
{
    instant in;
    if (read_clock(&self->sp, &in) < 0) {
        return NULL;
    }
    return ring_count(&self->ring, &self->sp, &in, w_ns);
}

RATE_COUNT_METHODS(Rate, RateObject, 0, rate_count)

static PyObject *
Rate_total(RateObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong((long long)tlr_total(&self->ring));
}

static PyObject *
Rate_reset(RateObject *self, PyObject *Py_UNUSED(ignored))
{
    instant in;
    if (read_clock(&self->sp, &in) < 0) {
        return NULL;
    }
    int64_t boundary = self->sp.clock == NULL ? (in.slot + 1) * self->sp.res_ns : INT64_MIN;
    return PyLong_FromLongLong((long long)tlr_reset(&self->ring, in.slot, boundary));
}

static PyObject *
Rate_repr(RateObject *self)
{
    return spec_repr((PyObject *)self, &self->sp, "total=%lld", (long long)tlr_total(&self->ring));
}

static PyObject *
get_window(PyObject *self, void *off)
{
    spec *sp = (spec *)((char *)self + (Py_ssize_t)off);
    return PyFloat_FromDouble(sp->window);
}

static PyObject *
get_resolution(PyObject *self, void *off)
{
    spec *sp = (spec *)((char *)self + (Py_ssize_t)off);
    return PyFloat_FromDouble(sp->resolution);
}

static PyObject *
get_buckets(PyObject *self, void *off)
{
    spec *sp = (spec *)((char *)self + (Py_ssize_t)off);
    return PyLong_FromLongLong((long long)sp->nb);
}

static PyObject *
get_clock(PyObject *self, void *off)
{
    spec *sp = (spec *)((char *)self + (Py_ssize_t)off);
    return Py_NewRef(sp->clock == NULL ? Py_None : sp->clock);
}

#define SPEC_GETSET(type)                                                             \
    {"window", get_window, NULL, "The window in seconds (count()'s default and maximum).", \
     (void *)offsetof(type, sp)},                                                     \
        {"resolution", get_resolution, NULL, "The bucket width in seconds.",          \
         (void *)offsetof(type, sp)},                                                 \
        {"buckets", get_buckets, NULL, "ceil(window_ns / resolution_ns).",            \
         (void *)offsetof(type, sp)},                                                 \
        {"clock", get_clock, NULL, "The clock callable, or None for the default.",    \
         (void *)offsetof(type, sp)},                                                 \
        {NULL, NULL, NULL, NULL, NULL}

static PyGetSetDef Rate_getset[] = {SPEC_GETSET(RateObject)};

static PyMethodDef Rate_methods[] = {
    RATE_METHOD_DEFS(Rate, "", "",
                     "Events in the current bucket and the buckets fully inside the last "
                     "`window` seconds."),
    {"total", (PyCFunction)Rate_total, METH_NOARGS,
     "total() -> int\n\nEvents since creation or the last reset()."},
    TL_RESET_DEF(Rate_reset, "Take the total and empty every bucket."),
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Rate_slots[] = {
    RATE_DOC_SLOT("RateCounter",
                  "Events in the last `window` seconds, in buckets of `resolution`."),
    TL_GC_SLOTS(Rate),
    {Py_tp_methods, Rate_methods},
    {Py_tp_getset, Rate_getset},
    {Py_tp_repr, Rate_repr},
    {0, NULL},
};

TL_TYPE_SPEC(Rate, "tallies.RateCounter", sizeof(RateObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC);

/* ---- KeyedRateCounter: a dict of key -> ring object ------------------------ */

typedef struct {
    PyObject_HEAD
    tlr_ring ring;
    _Atomic int64_t state; /* _keyed_cells.h's removal protocol (free-threaded) */
} RingObject;

static PyTypeObject *ring_type;

static void
Ring_dealloc(RingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tlr_free(&self->ring);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyType_Slot Ring_slots[] = {
    {Py_tp_doc, "One key's ring inside a KeyedRateCounter (internal)."},
    {Py_tp_dealloc, Ring_dealloc},
    {0, NULL},
};

TL_TYPE_SPEC(Ring, "tallies._tallies._Ring", sizeof(RingObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION);

static PyObject *
ring_new(int64_t nb)
{
    RingObject *r = PyObject_New(RingObject, ring_type);
    if (r == NULL || tlr_init_owned((PyObject *)r, &r->ring, nb) == NULL) {
        return NULL;
    }
    atomic_init(&r->state, 0);
    return (PyObject *)r;
}

#define RING(o) (&((RingObject *)(o))->ring)
#define RSTATE(o) (&((RingObject *)(o))->state)

#ifdef Py_GIL_DISABLED
/* The protocol of _keyed_cells.h, on the ring's state word. */
static inline int
ring_enter(_Atomic int64_t *s)
{
    int64_t v = atomic_fetch_add_explicit(s, 1, memory_order_seq_cst);
    if (TL_UNLIKELY(v & TLK_CLOSED)) {
        atomic_fetch_sub_explicit(s, 1, memory_order_relaxed);
        return 0;
    }
    return 1;
}
static inline void
ring_leave(_Atomic int64_t *s)
{
    atomic_fetch_sub_explicit(s, 1, memory_order_release);
}
#endif

static inline int
ring_retire(_Atomic int64_t *s)
{
    return (atomic_fetch_or_explicit(s, TLK_RETIRED, memory_order_seq_cst) &
            TLK_RETIRED) == 0;
}

static inline void
ring_unretire(_Atomic int64_t *s)
{
    atomic_fetch_and_explicit(s, ~TLK_RETIRED, memory_order_seq_cst);
}

static inline void
ring_close(_Atomic int64_t *s)
{
    int64_t v = atomic_fetch_or_explicit(s, TLK_CLOSED, memory_order_seq_cst);
    while ((v & TLK_WRITERS) != 0) {
        tl_yield();
        v = atomic_load_explicit(s, memory_order_acquire);
    }
}

typedef struct {
    PyObject_HEAD
    PyObject *dict; /* key -> ring */
    spec sp;
    _Atomic int64_t next_sweep; /* ns (default clock) or slot (user clock) */
    _Atomic int sweeping;       /* a sweep is running (in any thread, or up the stack) */
} KRateObject;

static PyObject *
KRate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    spec sp;
    KRateObject *self =
        (KRateObject *)alloc_with_spec(type, args, kwds, "|OO$O:KeyedRateCounter", &sp);
    if (self == NULL || (self->dict = PyDict_New()) == NULL) {
        Py_XDECREF(self);
        return NULL;
    }
    Py_XINCREF(sp.clock);
    self->sp = sp;
    atomic_init(&self->next_sweep, INT64_MIN);
    atomic_init(&self->sweeping, 0);
    return (PyObject *)self;
}

static int
KRate_traverse(KRateObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->dict);
    Py_VISIT(self->sp.clock);
    return 0;
}

static int
KRate_clear_gc(KRateObject *self)
{
    if (self->dict != NULL) {
        PyDict_Clear(self->dict);
    }
    Py_CLEAR(self->sp.clock);
    return 0;
}

static void
KRate_dealloc(KRateObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->sp.clock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static inline int
lookup(PyObject *dict, PyObject *key, PyObject **ring)
{
#ifdef Py_GIL_DISABLED
    return PyDict_GetItemRef(dict, key, ring);
#else
    PyObject *r = PyDict_GetItemWithError(dict, key);
    if (r == NULL) {
        *ring = NULL;
        return PyErr_Occurred() ? -1 : 0;
    }
    *ring = Py_NewRef(r);
    return 1;
#endif
}

/* Count n (sub: -n) for key at instant in.  0, or -1 with an exception. */
static int
krate_add_at(KRateObject *self, PyObject *key, const instant *in, int64_t n, int sub,
             const char *op)
{
    int64_t v;
    for (;;) {
        PyObject *ring;
        int found = lookup(self->dict, key, &ring);
        if (found < 0) {
            return -1;
        }
        if (found == 0) {
            int64_t first;
            if (sub ? TL_SUB_OVERFLOWS((int64_t)0, n, &first)
                    : TL_ADD_OVERFLOWS((int64_t)0, n, &first)) {
                tl_overflow_stays(op, n, "the total of", key, 0);
                return -1;
            }
            PyObject *mine = ring_new(self->sp.nb);
            if (mine == NULL) {
                return -1;
            }
#ifdef Py_GIL_DISABLED
            int r = PyDict_SetDefaultRef(self->dict, key, mine, &ring);
            Py_DECREF(mine);
            if (r < 0) {
                return -1;
            }
#else
            ring = PyDict_SetDefault(self->dict, key, mine);
            Py_DECREF(mine);
            if (ring == NULL) {
                return -1;
            }
            Py_INCREF(ring);
#endif
        }
#ifdef Py_GIL_DISABLED
        if (!ring_enter(RSTATE(ring))) {
            Py_DECREF(ring); /* closed by a remover: it has left the dict */
            continue;
        }
        int r = ring_add(RING(ring), &self->sp, in, n, sub, &v);
        ring_leave(RSTATE(ring));
#else
        int r = ring_add(RING(ring), &self->sp, in, n, sub, &v);
#endif
        Py_DECREF(ring);
        if (TL_UNLIKELY(r != TL_OK)) {
            tl_overflow_stays(op, n, "the total of", key, v);
            return -1;
        }
        return 0;
    }
}

/* Remove the keys whose rings satisfy the predicate (every ring when force,
 * else those whose newest bucket left the window); an increment that raced
 * with a removal is counted again in a fresh ring.  The number of keys
 * removed, or -1.  One sweep at a time: a sweep that finds another one
 * running (in another thread, or up its own stack, re-entered from a key's
 * __eq__) returns 0 and leaves the work to it.  clear() (force) always runs;
 * two removers of one ring are kept apart by the ring's RETIRED bit. */
static Py_ssize_t
krate_remove(KRateObject *self, const instant *in, int force)
{
    int idle = 0;
    if (!force && !atomic_compare_exchange_strong(&self->sweeping, &idle, 1)) {
        return 0;
    }
    Py_ssize_t removed = 0;
    PyObject *items = PyDict_Items(self->dict);
    if (items == NULL) {
        removed = -1;
        goto done;
    }
    int64_t oldest = in->slot - self->sp.nb + 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *key = PyTuple_GET_ITEM(pair, 0), *ring = PyTuple_GET_ITEM(pair, 1);
        int64_t latest = tlr_latest(RING(ring));
        if (!force && latest != TLR_NONE && latest >= oldest) {
            continue;
        }
        if (!ring_retire(RSTATE(ring))) {
            continue;
        }
        int64_t before = tlr_total(RING(ring));
        PyObject *now_there;
        int found = lookup(self->dict, key, &now_there);
        int del = -1;
        if (found > 0) {
            del = now_there == ring ? PyDict_DelItem(self->dict, key) : 1;
            Py_DECREF(now_there);
        }
        if (found < 0 || del < 0) {
            ring_unretire(RSTATE(ring));
            removed = -1;
            break;
        }
        if (found == 0 || del == 1) {
            ring_unretire(RSTATE(ring));
            continue;
        }
        ring_close(RSTATE(ring));
        removed++;
        int64_t after = tlr_total(RING(ring)), d;
        if (!force && after != before) {
            /* increments that raced with the removal: count them again now */
            int r;
            if (!TL_SUB_OVERFLOWS(after, before, &d)) {
                r = krate_add_at(self, key, in, d, 0, "increment");
            }
            else {
                r = krate_add_at(self, key, in, after, 0, "increment");
                if (r == 0) {
                    r = krate_add_at(self, key, in, before, 1, "decrement");
                }
            }
            if (r < 0) {
                removed = -1;
                break;
            }
        }
    }
    Py_DECREF(items);
done:
    if (!force) {
        atomic_store(&self->sweeping, 0);
    }
    return removed;
}

static inline int64_t
sweep_clock(const spec *sp, const instant *in)
{
    return sp->clock == NULL ? in->ns : in->slot;
}

/* Run the periodic sweep if it is due (at most once per window). */
static int
maybe_sweep(KRateObject *self, const instant *in)
{
    int64_t now = sweep_clock(&self->sp, in);
    int64_t due = atomic_load_explicit(&self->next_sweep, memory_order_relaxed);
    if (TL_LIKELY(now < due)) {
        return 0;
    }
    int64_t next = now + (self->sp.clock == NULL ? self->sp.window_ns : self->sp.nb);
    if (!atomic_compare_exchange_strong(&self->next_sweep, &due, next)) {
        return 0; /* another thread sweeps */
    }
    return krate_remove(self, in, 0) < 0 ? -1 : 0;
}

/* increment(key, n=1) and decrement(key, n=1) (_counter_methods.h). */
static TL_ALWAYS_INLINE PyObject *
KRate_update_key(KRateObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, int sub, const char *fname)
{
    PyObject *key;
    int64_t n = 1;
    if (TL_UNLIKELY(nargs != 1 || kwnames != NULL) &&
        parse_key_amount(args, nargs, kwnames, fname, &key, &n) < 0) {
        return NULL;
    }
    key = args[0];
    instant in;
#ifndef Py_GIL_DISABLED
    if (TL_LIKELY(self->sp.clock == NULL)) {
        /* The hot path: one lookup, the ring's compare and add. */
        in.ns = now_ns(&self->sp);
        PyObject *ring = PyDict_GetItemWithError(self->dict, key);
        if (TL_LIKELY(ring != NULL) &&
            TL_LIKELY(in.ns < atomic_load_explicit(&self->next_sweep, memory_order_relaxed))) {
            int64_t v;
            if (TL_UNLIKELY(tlr_add_ns(RING(ring), in.ns, self->sp.res_ns, n, sub, &v) !=
                            TL_OK)) {
                return tl_overflow_stays(fname, n, "the total of", key, v);
            }
            Py_RETURN_NONE;
        }
        if (ring == NULL && PyErr_Occurred()) {
            return NULL;
        }
        in.slot = tlr_floordiv(in.ns, self->sp.res_ns);
    }
    else if (read_clock(&self->sp, &in) < 0) {
        return NULL;
    }
#else
    if (read_clock(&self->sp, &in) < 0) {
        return NULL;
    }
#endif
    if (krate_add_at(self, key, &in, n, sub, fname) < 0) {
        return NULL;
    }
    if (maybe_sweep(self, &in) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

TL_KEYED_UPDATE_METHODS(KRate, KRateObject)

static PyObject *
krate_count(KRateObject *self, PyObject *const *args, int64_t w_ns)
{
    instant in;
    PyObject *ring;
    int found = lookup(self->dict, args[0], &ring);
    if (found <= 0) {
        return found < 0 ? NULL : PyLong_FromLong(0);
    }
    PyObject *r = read_clock(&self->sp, &in) < 0 ? NULL
                                                 : ring_count(RING(ring), &self->sp, &in, w_ns);
    Py_DECREF(ring);
    return r;
}

RATE_COUNT_METHODS(KRate, KRateObject, 1, krate_count)

static PyObject *
KRate_sweep(KRateObject *self, PyObject *Py_UNUSED(ignored))
{
    instant in;
    if (read_clock(&self->sp, &in) < 0) {
        return NULL;
    }
    Py_ssize_t n = krate_remove(self, &in, 0);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *
KRate_clear(KRateObject *self, PyObject *Py_UNUSED(ignored))
{
    instant in = {0, 0, 0};
    if (krate_remove(self, &in, 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* snapshot(window=None) -> dict: every key with a non-zero count (sweeps first). */
static PyObject *
KRate_snapshot(KRateObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    double w;
    int64_t w_ns;
    instant in;
    if (parse_width(args, nargs, kwnames, 0, "snapshot", &self->sp, &w, &w_ns) < 0 ||
        read_clock(&self->sp, &in) < 0 || krate_remove(self, &in, 0) < 0) {
        return NULL;
    }
    PyObject *items = PyDict_Items(self->dict);
    if (items == NULL) {
        return NULL;
    }
    PyObject *out = PyDict_New();
    for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *c = ring_count(RING(PyTuple_GET_ITEM(pair, 1)), &self->sp, &in, w_ns);
        if (c == NULL) {
            Py_CLEAR(out);
            break;
        }
        int nonzero = PyObject_IsTrue(c);
        if (nonzero && PyDict_SetItem(out, PyTuple_GET_ITEM(pair, 0), c) < 0) {
            Py_CLEAR(out);
        }
        Py_DECREF(c);
    }
    Py_DECREF(items);
    return out;
}

static Py_ssize_t
KRate_len(KRateObject *self)
{
    instant in;
    if (read_clock(&self->sp, &in) < 0 || krate_remove(self, &in, 0) < 0) {
        return -1;
    }
    return PyDict_Size(self->dict);
}

static PyObject *
KRate_keys(KRateObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyDict_Keys(self->dict);
}

static PyObject *
KRate_repr(KRateObject *self)
{
    return spec_repr((PyObject *)self, &self->sp, "keys=%zd", PyDict_Size(self->dict));
}

static PyGetSetDef KRate_getset[] = {SPEC_GETSET(KRateObject)};

static PyMethodDef KRate_methods[] = {
    RATE_METHOD_DEFS(KRate, "key, ", " of key", "key's events in the window."),
    {"snapshot", (PyCFunction)(void (*)(void))KRate_snapshot, FASTKW,
     "snapshot(window=None) -> dict\n\nEvery key with a non-zero count in the window."},
    {"sweep", (PyCFunction)KRate_sweep, METH_NOARGS,
     "sweep() -> int\n\nDrop the keys whose buckets have all expired; how many."},
    {"clear", (PyCFunction)KRate_clear, METH_NOARGS, "clear() -> None\n\nDrop every key."},
    {"_keys", (PyCFunction)KRate_keys, METH_NOARGS,
     "_keys() -> list\n\nThe keys held now, swept or not (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot KRate_slots[] = {
    RATE_DOC_SLOT("KeyedRateCounter", "A RateCounter per key."),
    TL_GC_TYPE_SLOTS(KRate, KRate_clear_gc),
    {Py_tp_methods, KRate_methods},
    {Py_tp_getset, KRate_getset},
    {Py_tp_repr, KRate_repr},
    {Py_mp_length, KRate_len},
    {0, NULL},
};

TL_TYPE_SPEC(KRate, "tallies.KeyedRateCounter", sizeof(KRateObject),
             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC);

/* ---- the module exec ------------------------------------------------------ */

int
tl_rate_exec(PyObject *m)
{
    if (tl_add_type(m, &Rate_spec, TL_RATE_COUNTER, 1) == NULL ||
        tl_add_type(m, &KRate_spec, TL_KEYED_RATE_COUNTER, 1) == NULL) {
        return -1;
    }
    ring_type = tl_add_type(m, &Ring_spec, TL_RING, 0);
    if (ring_type == NULL) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "MAX_BUCKETS", TLR_MAX_BUCKETS) < 0 ||
        PyModule_AddIntConstant(m, "COARSE_GRANULARITY_NS", (long)tl_monotonic_tick) < 0) {
        return -1;
    }
    return 0;
}
