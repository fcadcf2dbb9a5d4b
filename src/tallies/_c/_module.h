/*
 * tallies._tallies: what the C files of the one extension module share.
 *
 * tallies has one compiled extension, `tallies._tallies` (users never see its
 * name: tallies/_impl.py takes every core type from it, or from the pure
 * fallback).  It is built from the .c files of this folder as separate
 * translation units of one Extension (setup.py); module.c holds the only
 * module definition, its slots and its state, and calls one
 * `int tl_<file>_exec(PyObject *m)` per file, which adds that file's types and
 * constants to the module:
 *
 *     counter.c   Counter, ShardedCounter              tl_counter_exec
 *     keyed.c     KeyedCounter (+ Count),              tl_keyed_exec
 *                 BufferedKeyedCounter (sqlite://, ...)
 *     rate.c      RateCounter, KeyedRateCounter        tl_rate_exec
 *     shm.c       Segment, Cell, KeyedCells, RateCell   tl_shm_exec
 *     buffered.c  BufferedCounter (sqlite://, redis://) tl_buffered_exec
 *     limiter.c   Limiter, ShmLimiter, LeaseLimiter     tl_limiter_exec
 *     wallrate.c  WallRate (rates of sqlite://, redis://) tl_wallrate_exec
 *
 * Why separate translation units rather than one file that includes them all:
 * each file keeps its own static helpers under the names it has (shm.c and
 * buffered.c both have a CellObject, several files an overflow_result), and
 * a change to one file recompiles one file.  Nothing on a hot path crosses a
 * file boundary: what the files share is static inline code in the headers
 * (_cells.h, _pyargs.h, _counter_methods.h), and the one global below is
 * written at module exec (the same value on a re-import) and read with one
 * load like a file's own statics (hidden visibility: no lookup through the
 * GOT).
 *
 * Statics that a plain-C header defines (the per-thread probe of _cells.h,
 * _gate.h's stripe, _shared.h's budget) exist once per file that includes
 * the header, as they did when each file was an extension of its own.
 *
 * Module state: the heap types each module object created, in one array
 * (tl_module_state), so that one traverse and one clear (module.c) keep and
 * release them all.  A re-import makes a fresh module with fresh types
 * (multi-phase init); the types' methods do not reach the state, so objects
 * of either module keep working.
 */
#ifndef TALLIES_MODULE_H
#define TALLIES_MODULE_H

#include <Python.h>
#include <stdint.h>
#include <time.h>

#include "_platform.h" /* TL_HIDDEN, TL_ALWAYS_INLINE, TL_COLD */

/* The free-threaded switch: 1 when compiled for a CPython without a GIL. */
#ifdef Py_GIL_DISABLED
#define TL_FREE_THREADED 1
#else
#define TL_FREE_THREADED 0
#endif

/* A method table's flags for a vectorcall method with keywords. */
#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

/* Slots of the module state, one per heap type. */
enum {
    TL_COUNTER,
    TL_SHARDED_COUNTER,
    TL_KEYED_COUNTER,
    TL_RATE_COUNTER,
    TL_KEYED_RATE_COUNTER,
    TL_RING,
    TL_SEGMENT,
    TL_CELL,
    TL_KEYED_CELLS,
    TL_RATE_CELL,
    TL_BUFFERED_COUNTER,
    TL_BUFFERED_KEYED,
    TL_LIMITER,
    TL_SHM_LIMITER,
    TL_LEASE,
    TL_WALL_RATE,
    TL_NTYPES
};

typedef struct {
    PyTypeObject *types[TL_NTYPES];
} tl_module_state;

/* Online CPUs, 1..TL_MAX_SLOTS (set before any tl_*_exec runs): the cells a
 * striped counter inflates into, the stripes of KeyedCounter's table. */
extern TL_HIDDEN uint32_t tl_cpus;

/* The granularity in ns of CLOCK_MONOTONIC_COARSE and CLOCK_REALTIME_COARSE
 * (the kernel tick, 1-4 ms), or -1 where clock_getres gives none: set, like
 * tl_cpus, before any tl_*_exec runs. */
extern TL_HIDDEN int64_t tl_monotonic_tick, tl_realtime_tick;

/* The clock that buckets of res_ns read: the coarse one when res_ns is at
 * least 10 of its ticks (a read costs 8 ns rather than 66: see rate.c), else
 * the precise one; wall: the realtime clocks rather than the monotonic. */
static inline clockid_t
tl_bucket_clock(int64_t res_ns, int wall)
{
    int64_t tick = wall ? tl_realtime_tick : tl_monotonic_tick;
    if (tick > 0 && res_ns >= 10 * tick) {
        return wall ? CLOCK_REALTIME_COARSE : CLOCK_MONOTONIC_COARSE;
    }
    return wall ? CLOCK_REALTIME : CLOCK_MONOTONIC;
}

/* The whole tp_dealloc of a heap type after its own frees: untrack it (GC
 * types), clear its weak references (weakreflist: NULL for a type without
 * them), tp_clear (clear may be NULL), free it, and drop the reference the
 * instance held to its type. */
static inline void
tl_dealloc(PyObject *self, inquiry clear, PyObject **weakreflist)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyType_IS_GC(tp)) {
        PyObject_GC_UnTrack(self);
    }
    if (weakreflist != NULL && *weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    if (clear != NULL) {
        (void)clear(self);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* tp_traverse and tp_clear of a GC type written once from one list of its
 * object references: FIELDS(X) applies X to each (an expression of `self`),
 * so no reference can be visited but not cleared.  Traverse also visits the
 * heap type, which its instances own. */
#define TL_VISIT_FIELD(ref) Py_VISIT(ref);
#define TL_CLEAR_FIELD(ref) Py_CLEAR(ref);
#define TL_GC_FUNCS(prefix, Type, FIELDS)                                  \
    static int prefix##_traverse(Type *self, visitproc visit, void *arg)  \
    {                                                                      \
        Py_VISIT(Py_TYPE(self));                                           \
        FIELDS(TL_VISIT_FIELD)                                             \
        return 0;                                                          \
    }                                                                      \
    static int prefix##_clear(Type *self)                                  \
    {                                                                      \
        FIELDS(TL_CLEAR_FIELD)                                             \
        return 0;                                                          \
    }

/* The slots of a GC heap type written by this house's conventions: P_new,
 * P_dealloc (tl_dealloc), P_traverse and a clear (P_clear from TL_GC_FUNCS,
 * or another name where P_clear is a method). */
#define TL_GC_TYPE_SLOTS(P, CLEAR)                                                 \
    {Py_tp_new, P##_new}, {Py_tp_dealloc, P##_dealloc}, {Py_tp_traverse, P##_traverse}, \
        {Py_tp_clear, CLEAR}
#define TL_GC_SLOTS(P) TL_GC_TYPE_SLOTS(P, P##_clear)

/* `static PyType_Spec P_spec` of heap type P, whose slots are P_slots. */
#define TL_TYPE_SPEC(P, NAME, BASICSIZE, FLAGS) \
    static PyType_Spec P##_spec = {NAME, BASICSIZE, 0, FLAGS, P##_slots}

/* A heap type declares its weak-reference list (and instance dict) offsets as
 * members: TL_WEAKLIST_MEMBER(OBJECT, FIELD) in a member table, or
 * TL_WEAKLIST_ONLY(P, FIELD) for a P_members that holds nothing else. */
#define TL_WEAKLIST_MEMBER(OBJECT, FIELD) \
    {"__weaklistoffset__", T_PYSSIZET, offsetof(OBJECT, FIELD), READONLY, NULL}
#define TL_WEAKLIST_ONLY(P, FIELD)                     \
    static PyMemberDef P##_members[] = {               \
        TL_WEAKLIST_MEMBER(P##Object, FIELD), {NULL, 0, 0, 0, NULL}}
/* P_members of a heap type with an instance dict (field DICT) and a
 * weak-reference list (field WEAK). */
#define TL_DICT_WEAKLIST_MEMBERS(P, DICT, WEAK)                                          \
    static PyMemberDef P##_members[] = {                                                 \
        {"__dictoffset__", T_PYSSIZET, offsetof(P##Object, DICT), READONLY, NULL},       \
        TL_WEAKLIST_MEMBER(P##Object, WEAK), {NULL, 0, 0, 0, NULL}}

/* Make the type of `spec` for module m, keep it in the state's slot `which`
 * and, when `add`, add it to m under its name.  A borrowed reference (the
 * state's), or NULL with an exception set. */
TL_HIDDEN PyTypeObject *tl_add_type(PyObject *m, PyType_Spec *spec, int which, int add);

/* The tl_<NAME>_exec of a file whose one type is P (P_spec): it adds P to
 * the module and keeps it in the state's slot WHICH. */
#define TL_ONE_TYPE_EXEC(NAME, P, WHICH)                                   \
    int tl_##NAME##_exec(PyObject *m)                                      \
    {                                                                      \
        return tl_add_type(m, &P##_spec, WHICH, 1) == NULL ? -1 : 0;       \
    }

TL_HIDDEN int tl_counter_exec(PyObject *m);
TL_HIDDEN int tl_keyed_exec(PyObject *m);
TL_HIDDEN int tl_rate_exec(PyObject *m);
TL_HIDDEN int tl_shm_exec(PyObject *m);
TL_HIDDEN int tl_buffered_exec(PyObject *m);
TL_HIDDEN int tl_limiter_exec(PyObject *m);
TL_HIDDEN int tl_wallrate_exec(PyObject *m);

#endif /* TALLIES_MODULE_H */
