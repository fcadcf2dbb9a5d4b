/*
 * tallies: stop reference-count traffic on counters that many threads share
 * (free-threaded CPython 3.13 only; a no-op on every other build).
 *
 * Why
 * ---
 * On 3.13t every `counter.increment()` writes the counter object's reference
 * count twice: LOAD_FAST increments it, the end of the call decrements it.  The
 * thread that created the object (its owner, ob_tid) does that with plain
 * stores to ob_ref_local; every other thread with an atomic add on
 * ob_ref_shared.  Both fields sit in the object header, one cache line that
 * every core then writes on every call: the line bounces between the cores,
 * and two threads calling `counter.increment()` on a ShardedCounter get less
 * done than one, though the counts themselves sit in per-CPU cells.  (Holding
 * a bound method, `f = counter.increment`, leaves the counter's refcount alone,
 * and that form scales.)  The method descriptor and the type are not the
 * problem: 3.13t makes them immortal once a second thread starts.
 *
 * What
 * ----
 * 3.13 has no public way to defer an object's reference counting (3.14 adds
 * PyUnstable_Object_EnableDeferredRefcount; 3.13's _PyObject_SetDeferredRefcount
 * is internal and, once threads run, immortalizes anyway: gh-117696).  What
 * 3.13t offers is immortality: an object whose ob_ref_local is
 * _Py_IMMORTAL_REFCNT_LOCAL (UINT32_MAX; public in Include/object.h) is never
 * written by Py_INCREF/Py_DECREF.  tl_share_widely() makes a ShardedCounter
 * immortal when it first sees contention (the moment it inflates into
 * striped cells): proof that several threads update it at once.
 *
 * The cost, and its bound
 * -----------------------
 * An immortal object is never freed (as 3.13t's own module-level functions,
 * classes and code objects are not, once a thread has started).  So this
 * happens at most TL_SHARED_MAX times per process (default 1024, the
 * environment variable TALLIES_SHARED_MAX at import overrides it, 0 turns it
 * off); later contended counters stay ordinary objects: exact, freed, just not
 * scaling.  Memory kept: for ShardedCounters at most TL_SHARED_MAX * (object
 * + its cells).  A KeyedCounter is never freed either, with its table and
 * every key it holds when its last reference goes (nothing can tell when
 * that happens: its reference count is no longer kept), so TL_SHARED_MAX
 * alone bounds nothing there; keyed.c budgets the bytes as well: one becomes
 * immortal only while the tables of those already immortal come to at most
 * TALLIES_SHARED_KEYED_BYTES (default 16 MiB).  The true bound for them:
 * that budget, plus what they grow by after the last check, plus their key
 * objects (keyed.c's keyed_share says why).
 *
 * Why this is safe without stopping the world
 * ---------------------------------------------
 * CPython's own _Py_SetImmortal rewrites all three refcount fields, which is
 * only safe while no other thread can touch the object.  tallies splits it:
 *  1. tl_share_prepare(), in tp_new, while the creating thread holds the only
 *     reference, turns the fresh object into an unowned one with its count
 *     merged into ob_ref_shared (ob_tid 0, ob_ref_local 0, ob_ref_shared =
 *     count | _Py_REF_MERGED): the state CPython gives any object whose owner
 *     merged it.  From then on no thread is the owner, so every
 *     Py_INCREF/Py_DECREF is an atomic add on ob_ref_shared and nobody writes
 *     ob_ref_local; the object is freed as usual when the count reaches zero.
 *  2. tl_share_widely(), on the first contention, stores
 *     _Py_IMMORTAL_REFCNT_LOCAL into ob_ref_local (one relaxed atomic store;
 *     nothing else writes that field).  A thread that read ob_ref_local before
 *     the store finishes its atomic add on ob_ref_shared (a count that is
 *     never looked at again, as only a zero count frees); one that reads it
 *     after skips its write.  A reference taken after the store is never
 *     counted and never uncounted, so the count can only be too high (never
 *     freed: that is the point), never too low.  A merged object is never
 *     queued for merging again, so nothing turns it back into a mortal one.
 * Objects of GC-tracked types are left alone (subclass instances with a
 * __dict__), except KeyedCounter's own exact type (tl_share_prepare_ex with
 * gc_ok): an immortal GC object is untracked by the next collection (3.13t's
 * gc_free_threading.c excludes immortal objects), so the objects it refers
 * to are kept alive through it, as through any immortal object; nothing is
 * freed early.  A KeyedCounter has no failed CAS to show contention on
 * distinct keys, so keyed.c also counts how often the updating thread
 * changes (TKT_SWITCHES_TO_SHARE; keyed.c's header comment).  Each C file
 * that includes this header has its own budget of TL_SHARED_MAX objects (the
 * statics below): counter.c's for ShardedCounters, keyed.c's for
 * KeyedCounters.  The single-thread cost on 3.13t: a prepared object's refcount
 * updates are atomic adds instead of plain stores (a few ns per call).
 */
#ifndef TALLIES_SHARED_H
#define TALLIES_SHARED_H

#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "_internals.h" /* TL_IMMORTAL_SHARED: free-threaded 3.13, where CI runs it */

#if TL_IMMORTAL_SHARED
#define TL_SHARE_WIDELY 1
#define TL_SHARED_MAX 1024

static _Atomic long tl_shared_left = TL_SHARED_MAX;

/* At the first module exec: read TALLIES_SHARED_MAX (a non-negative integer).
 * A re-import does not refill the budget. */
static inline void
tl_shared_configure(void)
{
    static atomic_flag done = ATOMIC_FLAG_INIT;
    if (atomic_flag_test_and_set(&done)) {
        return;
    }
    const char *env = getenv("TALLIES_SHARED_MAX");
    if (env != NULL && *env != '\0') {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (end != NULL && *end == '\0' && v >= 0) {
            atomic_store(&tl_shared_left, v);
        }
    }
}

static inline long
tl_shared_remaining(void)
{
    long v = atomic_load(&tl_shared_left);
    return v < 0 ? 0 : v;
}

/* In tp_new, before the object is visible to any other thread.  gc_ok: the
 * caller's exact type is GC-tracked and may be made immortal (see the top). */
static inline void
tl_share_prepare_ex(PyObject *op, int gc_ok)
{
    if ((PyType_IS_GC(Py_TYPE(op)) && !gc_ok) || _Py_IsImmortal(op) ||
        tl_shared_remaining() == 0 || op->ob_tid != _Py_ThreadId() || op->ob_ref_shared != 0) {
        return;
    }
    Py_ssize_t refs = (Py_ssize_t)op->ob_ref_local;
    op->ob_ref_local = 0;
    op->ob_ref_shared = _Py_REF_SHARED(refs, _Py_REF_MERGED);
    _Py_atomic_store_uintptr_relaxed(&op->ob_tid, _Py_UNOWNED_TID);
}

static inline void
tl_share_prepare(PyObject *op)
{
    tl_share_prepare_ex(op, 0);
}

/* A prepared object that is still mortal (the only ones worth watching). */
static inline int
tl_share_pending(PyObject *op)
{
    return _Py_atomic_load_uintptr_relaxed(&op->ob_tid) == _Py_UNOWNED_TID &&
           !_Py_IsImmortal(op);
}

/* On contention, from any thread: make a prepared object immortal. */
static inline void
tl_share_widely(PyObject *op)
{
    if (_Py_atomic_load_uintptr_relaxed(&op->ob_tid) != _Py_UNOWNED_TID || _Py_IsImmortal(op)) {
        return; /* not prepared (GC type, or no budget at creation) */
    }
    if (atomic_fetch_sub(&tl_shared_left, 1) <= 0) {
        atomic_fetch_add(&tl_shared_left, 1); /* budget spent: stay mortal */
        return;
    }
    _Py_atomic_store_uint32_relaxed(&op->ob_ref_local, _Py_IMMORTAL_REFCNT_LOCAL);
}

#else
#define TL_SHARE_WIDELY 0
static inline void tl_shared_configure(void) {}
static inline long tl_shared_remaining(void) { return 0; }
static inline void tl_share_prepare(PyObject *op) { (void)op; }
static inline void tl_share_prepare_ex(PyObject *op, int gc_ok) { (void)op; (void)gc_ok; }
static inline int tl_share_pending(PyObject *op) { (void)op; return 0; }
static inline void tl_share_widely(PyObject *op) { (void)op; }
#endif

#endif /* TALLIES_SHARED_H */
