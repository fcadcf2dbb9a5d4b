/*
 * tallies: which CPython internals the C core relies on, and on which
 * interpreters they are switched on.
 *
 * Three speed-ups depend on CPython's private layout rather than on its
 * documented API:
 *   "int-layout"       kc[key] makes its Count (an int subclass) by writing the
 *                      int's header word and digits itself (longintrepr.h), and
 *                      items() rewrites an int nobody else holds in place
 *                      (keyed.c, count_fill);
 *   "str-hash-cache"   the hot path reads a str key's cached hash from the
 *                      object (PyASCIIObject.hash) instead of calling
 *                      PyObject_Hash (keyed.c, GIL builds);
 *   "immortal-shared"  a counter that threads contend on is made immortal by
 *                      writing its reference-count fields (_shared.h,
 *                      free-threaded builds).
 * Each is on only where CI runs the whole suite with it: CPython 3.10-3.15
 * with the GIL and free-threaded 3.13 ("immortal-shared": free-threaded 3.13
 * only).  Everywhere else (free-threaded 3.14 and 3.15, which CI can only
 * compile, and any CPython newer than 3.15) the same features take the
 * documented API instead: the int is made by int.__new__ into a Count-sized
 * allocation, the hash by PyObject_Hash, and contended counters stay
 * ordinary reference-counted objects (exact; they just scale less on a
 * free-threaded build).  -DTL_PUBLIC_API=1 (setup.py: TALLIES_PUBLIC_API=1)
 * forces that path on any interpreter, which is how CI runs it
 * (scripts/test-public-api).  The choice is visible at run time:
 * tallies.BUILD.cpython_internals lists the ones compiled in (TL_INTERNALS_USED).
 */
#ifndef TALLIES_INTERNALS_H
#define TALLIES_INTERNALS_H

#include <Python.h>

#include "_platform.h" /* TL_LIKELY */

#ifndef TL_PUBLIC_API
#define TL_PUBLIC_API 0
#endif

/* The interpreters CI runs the suite on (scripts/test-python, .ci/run). */
#if TL_PUBLIC_API
#define TL_INTERNALS_VERIFIED 0
#elif defined(Py_GIL_DISABLED)
#define TL_INTERNALS_VERIFIED (PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000)
#else
#define TL_INTERNALS_VERIFIED (PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x03100000)
#endif

#define TL_INT_LAYOUT TL_INTERNALS_VERIFIED
#if TL_INTERNALS_VERIFIED && !defined(Py_GIL_DISABLED)
#define TL_STR_HASH_CACHE 1
#else
#define TL_STR_HASH_CACHE 0 /* free-threaded builds store hashes anyway */
#endif
#if TL_INTERNALS_VERIFIED && defined(Py_GIL_DISABLED)
#define TL_IMMORTAL_SHARED 1
#else
#define TL_IMMORTAL_SHARED 0
#endif

/* A key's hash: a str's cached one without a call (KeyedCounter's table,
 * the shm:// key cache). */
static inline Py_hash_t
tl_key_hash(PyObject *key)
{
#if TL_STR_HASH_CACHE /* not free-threaded, where CPython sets a str's hash atomically */
    if (TL_LIKELY(PyUnicode_CheckExact(key))) {
        Py_hash_t h = ((PyASCIIObject *)key)->hash;
        if (TL_LIKELY(h != -1)) {
            return h;
        }
    }
#endif
    return PyObject_Hash(key);
}

/* For tallies.BUILD: the names of the internals compiled in, comma-separated. */
#if TL_IMMORTAL_SHARED
#define TL_INTERNALS_USED "int-layout,immortal-shared"
#elif TL_STR_HASH_CACHE
#define TL_INTERNALS_USED "int-layout,str-hash-cache"
#else
#define TL_INTERNALS_USED ""
#endif

#endif /* TALLIES_INTERNALS_H */
