/*
 * The update methods of tallies' counter types, written once.
 *
 * Counter and ShardedCounter (counter.c), BufferedCounter (buffered.c, the
 * write-behind stores' counter), the shm:// Cell (shm.c) and RateCounter
 * (rate.c) have the same increment(n=1) and decrement(n=1), and the first
 * four the same c += n and c -= n: convert the amount first (_pyargs.h: a bad
 * amount raises and changes nothing), update, return None (or, in place, the
 * counter itself).  What differs is only how each reaches its cell and what
 * it does around the add, as in Java's Striped64, which holds the
 * striped-cell mechanism once for LongAdder and its kin.  So each type
 * writes one function
 *
 *     static TL_ALWAYS_INLINE int
 *     P_update(OBJECT *self, int64_t n, int sub, const char *op);
 *
 * (0, or -1 with an exception set; op names the operation in messages) and
 * TL_UPDATE_METHODS(P, OBJECT) generates P_increment and P_decrement
 * (METH_FASTCALL | METH_KEYWORDS), TL_INPLACE_METHODS(P, OBJECT) P_iadd and
 * P_isub (nb_inplace_add / nb_inplace_subtract), TL_COUNTER_UPDATE_METHODS
 * both.  The update is inlined into each method, so a method is the same
 * machine code as when each was written out by hand: no call, no pointer to
 * follow (checked with objdump and callgrind instruction counts when this
 * header was introduced).  The keyed types, whose methods take a key, get
 * their pair from one P_update_key (TL_KEYED_UPDATE_METHODS).
 *
 * Also here, for the two types over striped cells (ShardedCounter,
 * BufferedCounter): the update of a tl_striped, its sums (TL_STRIPED_METHODS),
 * and the one message of a failed update.
 *
 * Include after Python.h, _cells.h, _pyargs.h and _module.h.  An includer
 * may define TL_ON_CONTENTION(owner) first: it runs on a free-threaded build
 * when a striped counter's base sees its first contention, just before the
 * counter inflates (counter.c: 3.13t stops reference counting the owner,
 * _shared.h).
 */
#ifndef TALLIES_COUNTER_METHODS_H
#define TALLIES_COUNTER_METHODS_H

#ifndef TL_ON_CONTENTION
#define TL_ON_CONTENTION(owner) ((void)(owner))
#endif

/* The amount of increment(n=1) / decrement(n=1): 0, or -1 with an error set. */
static TL_ALWAYS_INLINE int
tl_amount(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *op,
          int64_t *n)
{
    *n = 1;
    if (nargs == 0 && kwnames == NULL) {
        return 0;
    }
    return parse_amount(args, nargs, kwnames, op, n);
}

#define TL_INPLACE_OP(sub) ((sub) ? "-=" : "+=")

/* P_increment and P_decrement from P_update. */
#define TL_UPDATE_METHODS(P, OBJECT)                                                         \
    static TL_ALWAYS_INLINE PyObject *P##_update_args(OBJECT *self, PyObject *const *args,   \
                                                      Py_ssize_t nargs, PyObject *kwnames,   \
                                                      int sub, const char *op)               \
    {                                                                                        \
        int64_t n;                                                                           \
        if (tl_amount(args, nargs, kwnames, op, &n) < 0 || P##_update(self, n, sub, op) < 0) { \
            return NULL;                                                                     \
        }                                                                                    \
        Py_RETURN_NONE;                                                                      \
    }                                                                                        \
    TL_METHOD_PAIR(P, OBJECT, P##_update_args)

/* P_iadd and P_isub (c += n, c -= n) from P_update.  In-place slots run only
 * with one of our instances on the left. */
#define TL_INPLACE_METHODS(P, OBJECT)                                                        \
    static PyObject *P##_inplace(PyObject *self, PyObject *other, int sub)                   \
    {                                                                                        \
        int64_t n;                                                                           \
        if (to_int64(other, TL_INPLACE_OP(sub), &n) < 0 ||                                   \
            P##_update((OBJECT *)self, n, sub, TL_INPLACE_OP(sub)) < 0) {                    \
            return NULL;                                                                     \
        }                                                                                    \
        return Py_NewRef(self);                                                              \
    }                                                                                        \
    static PyObject *P##_iadd(PyObject *a, PyObject *b) { return P##_inplace(a, b, 0); }    \
    static PyObject *P##_isub(PyObject *a, PyObject *b) { return P##_inplace(a, b, 1); }

#define TL_COUNTER_UPDATE_METHODS(P, OBJECT)                                                 \
    TL_UPDATE_METHODS(P, OBJECT)                                                             \
    TL_INPLACE_METHODS(P, OBJECT)

/* The method-table entries of P_increment and P_decrement (either pair of
 * generators above), with their docstrings. */
#define TL_UPDATE_METHOD_DEFS(P, INC_DOC, DEC_DOC)                                           \
    {"increment", (PyCFunction)(void (*)(void))P##_increment, FASTKW, INC_DOC},              \
    {"decrement", (PyCFunction)(void (*)(void))P##_decrement, FASTKW, DEC_DOC}

/* The method-table entries of a counter's value() and reset() (both
 * METH_NOARGS, both -> int): VALUE_FN and RESET_FN, with what each does. */
#define TL_VALUE_RESET_DEFS(VALUE_FN, VALUE_DOC, RESET_FN, RESET_DOC)                        \
    {"value", (PyCFunction)VALUE_FN, METH_NOARGS, "value() -> int\n\n" VALUE_DOC},           \
    TL_RESET_DEF(RESET_FN, RESET_DOC)
/* reset() alone (a rate, which has no value()). */
#define TL_RESET_DEF(RESET_FN, RESET_DOC)                                                    \
    {"reset", (PyCFunction)RESET_FN, METH_NOARGS, "reset() -> int\n\n" RESET_DOC}

/* TL_UPDATE_METHOD_DEFS of a rate, whose increments count events now: KEY
 * is "" or "key, ", OF "" or " of key", WHERE "" or a note on where an
 * increment goes (" (...)"). */
#define TL_EVENT_METHOD_DEFS(P, KEY, OF, WHERE)                                              \
    TL_UPDATE_METHOD_DEFS(P,                                                                 \
                          "increment(" KEY "n=1) -> None\n\nCount n events" OF " now" WHERE ".", \
                          "decrement(" KEY "n=1) -> None\n\nCount -n events" OF " now.")

/* The type-slot entries of P_iadd and P_isub (TL_INPLACE_METHODS). */
#define TL_INPLACE_SLOTS(P) {Py_nb_inplace_add, P##_iadd}, {Py_nb_inplace_subtract, P##_isub}

/* The keyed types (KeyedCounter, KeyedRateCounter, the shm:// KeyedCells)
 * parse increment(key, n=1) / decrement(key, n=1) themselves: P_increment
 * and P_decrement from P_update_key(self, args, nargs, kwnames, sub, op). */
#define TL_KEYED_UPDATE_METHODS(P, OBJECT) TL_METHOD_PAIR(P, OBJECT, P##_update_key)

/* P_increment (sub 0) and P_decrement (sub 1), vectorcall, calling the
 * always-inline FN(self, args, nargs, kwnames, sub, op). */
#define TL_METHOD_PAIR(P, OBJECT, FN)                                                        \
    TL_METHOD(P, OBJECT, FN, increment, 0)                                                   \
    TL_METHOD(P, OBJECT, FN, decrement, 1)

#define TL_METHOD(P, OBJECT, FN, NAME, SUB)                                                  \
    static PyObject *P##_##NAME(OBJECT *self, PyObject *const *args, Py_ssize_t nargs,       \
                                PyObject *kwnames)                                           \
    {                                                                                        \
        return FN(self, args, nargs, kwnames, SUB, #NAME);                                   \
    }

/* An update that the cell refused: "op(n) would move WHAT outside the signed
 * 64-bit range; nothing was changed" (TL_NOMEM: MemoryError).  Returns -1. */
static TL_COLD int
tl_update_failed(int r, const char *op, int64_t n, const char *what)
{
    if (r == TL_NOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    PyErr_Format(PyExc_OverflowError,
                 "%s(%lld) would move %s outside the signed 64-bit range; nothing was changed",
                 op, (long long)n, what);
    return -1;
}

/* An update refused because it would leave int64: "op(n) would move WHAT
 * outside the signed 64-bit range; it stays at CURRENT", where WHAT is `what`,
 * or `what` and the key's repr when key is not NULL ("the count of 'a'").
 * Returns NULL. */
static TL_COLD PyObject *
tl_overflow_stays(const char *op, int64_t n, const char *what, PyObject *key,
                  int64_t current)
{
    if (key == NULL) {
        PyErr_Format(PyExc_OverflowError,
                     "%s(%lld) would move %s outside the signed 64-bit range; it stays at %lld",
                     op, (long long)n, what, (long long)current);
    }
    else {
        PyErr_Format(PyExc_OverflowError,
                     "%s(%lld) would move %s %R outside the signed 64-bit range; it stays at "
                     "%lld",
                     op, (long long)n, what, key, (long long)current);
    }
    return NULL;
}

/* ---- striped counters --------------------------------------------------- */

/* The whole update of a striped counter on a GIL build, where the caller
 * excludes every other writer, so no CAS fails and the cells never exist:
 * a serial add to the base.  1 when done; 0 to take the type's full update
 * (an overflow, or any update on a free-threaded build). */
static TL_ALWAYS_INLINE int
tl_striped_fast(tl_striped *s, int64_t n, int sub)
{
#if TL_FREE_THREADED
    (void)s;
    (void)n;
    (void)sub;
    return 0;
#else
    int64_t ignored;
    return TL_LIKELY(tl_add_serial(&s->base, n, sub, &ignored) == TL_OK);
#endif
}

/* Add n (sub=0) or subtract it: TL_OK, TL_OVERFLOW (nothing changed) or
 * TL_NOMEM.  Free-threaded: one CAS on the base until one fails, then the
 * cells (_cells.h); the first failure runs TL_ON_CONTENTION(owner). */
static inline int
tl_striped_update(PyObject *owner, tl_striped *s, int64_t n, int sub)
{
#if TL_FREE_THREADED
    if (TL_LIKELY(atomic_load_explicit(&s->cells, memory_order_relaxed) == NULL)) {
        int64_t ignored;
        int r = tl_try_add(&s->base, n, sub, &ignored);
        if (TL_LIKELY(r <= 0)) {
            return r;
        }
        TL_ON_CONTENTION(owner);
    }
    return tl_striped_add_slow(s, n, sub);
#else
    (void)owner;
    return tl_striped_add_serial(s, n, sub);
#endif
}

/* The base plus every cell, exact (a Python int beyond int64); not a
 * snapshot while others update (_cells.h). */
static inline PyObject *
tl_striped_value(tl_striped *s)
{
    int64_t vals[TL_MAX_SLOTS + 1];
    uint32_t k = tl_striped_collect(s, vals);
    return sum_to_pylong(vals, (Py_ssize_t)k);
}

/* Exchange the base and every cell with 0; the sum of what was taken. */
static inline PyObject *
tl_striped_take(tl_striped *s)
{
    int64_t vals[TL_MAX_SLOTS + 1];
    uint32_t k = tl_striped_drain(s, vals);
    return sum_to_pylong(vals, (Py_ssize_t)k);
}

/* For a type whose struct has a tl_striped `s`: P_sum (value() of
 * ShardedCounter, _pending() of BufferedCounter), P_take (reset(), _take())
 * and the getter P_inflated. */
#define TL_STRIPED_METHODS(P, OBJECT)                                                        \
    static PyObject *P##_sum(OBJECT *self, PyObject *Py_UNUSED(ignored))                     \
    {                                                                                        \
        return tl_striped_value(&self->s);                                                   \
    }                                                                                        \
    static PyObject *P##_take(OBJECT *self, PyObject *Py_UNUSED(ignored))                    \
    {                                                                                        \
        return tl_striped_take(&self->s);                                                    \
    }                                                                                        \
    static PyObject *P##_inflated(OBJECT *self, void *Py_UNUSED(closure))                    \
    {                                                                                        \
        return PyBool_FromLong(tl_striped_inflated(&self->s));                               \
    }

#endif /* TALLIES_COUNTER_METHODS_H */
