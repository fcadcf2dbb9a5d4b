/*
 * tallies cell engine: atomic, overflow-checked int64 cells.
 *
 * This header is plain C11 (<stdatomic.h>, no Python API) so that it can be
 * compiled into the extension and, unchanged, into a pthread stress test run
 * under ThreadSanitizer (tests/c/stress_cells.c).
 *
 * Cells
 * -----
 * A cell is one `_Atomic int64_t`.  Every update goes through a compare-and-
 * swap loop that first computes the new value with a checked add: an update
 * that would leave [-2**63, 2**63 - 1] is refused (TL_OVERFLOW) and the cell
 * keeps its old value.  A cell never wraps.  Updates are sequentially
 * consistent read-modify-writes and reads are acquire loads, so a thread that
 * reads a count of N also sees whatever the writers did before their updates
 * (a counter of "tasks finished" publishes the results of those tasks).  On
 * x86-64 every locked instruction is a full fence anyway, so this costs
 * nothing there.
 *
 * The `_serial` variants do the same arithmetic with a relaxed load and store.
 * They are only correct when the caller already excludes other writers: the
 * extension uses them on interpreters with a GIL, where the whole C method
 * runs while holding it; with Py_GIL_DISABLED it uses the atomic ones.
 * Memory shared by processes always uses the atomic ones.
 *
 * Striped cells (Doug Lea's LongAdder, simplified)
 * ------------------------------------------------
 * One cell is a single cache line that every writer fights over.  A
 * tl_striped starts as one `base` cell and no table.  Writers CAS the base;
 * the first time a CAS fails (another thread updated the base between our load
 * and our swap: real contention), the writer inflates the counter: it
 * allocates a table of `nslots` cells, each padded to its own TL_LINE bytes so
 * that two cells never share a cache line, and publishes it with one CAS.
 * From then on writers update the cell picked by a per-thread probe; when the
 * CAS on that cell fails, the thread rehashes its probe (xorshift) so that
 * threads which collide drift apart.
 *
 * Unlike LongAdder the table never grows: it is allocated once at the size
 * that stops paying (the CPU count rounded up to a power of two, chosen by
 * the caller), so there are no per-cell pointers, no retired tables and no
 * lock.  Cells are never removed; a counter that was once contended keeps its
 * table until it is freed.  Without contention (any GIL build) the table is
 * never allocated and the counter costs exactly one cell.
 *
 * A read of a striped counter sums the base and the cells one by one.  It is
 * not a snapshot: updates that happen during the sum may or may not be in it.
 * It is exact once writers are quiescent.  A drain exchanges every cell with
 * 0 and sums what it took, so every update is counted in exactly one drain or
 * in a later read: never lost, never counted twice.  Each cell is int64 and
 * checked on its own; their sum is returned to the caller cell by cell so it
 * can be formed without overflow (the extension sums into a Python int).
 */
#ifndef TALLIES_CELLS_H
#define TALLIES_CELLS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_platform.h" /* TL_LIKELY, TL_ADD_OVERFLOWS, TL_TLS_FAST, tl_yield */

#ifndef TL_LINE
#define TL_LINE 128 /* two 64-byte lines: adjacent-line prefetch pairs them */
#endif
#define TL_MAX_SLOTS 256

typedef _Atomic int64_t tl_cell;

enum { TL_OK = 0, TL_OVERFLOW = -1, TL_NOMEM = -2 };


/* ---- single cells ------------------------------------------------------ */

static inline int64_t
tl_load(tl_cell *c)
{
    return atomic_load_explicit(c, memory_order_acquire);
}

static inline void
tl_store(tl_cell *c, int64_t v)
{
    atomic_store_explicit(c, v, memory_order_release);
}

static inline int64_t
tl_exchange(tl_cell *c, int64_t v)
{
    return atomic_exchange_explicit(c, v, memory_order_seq_cst);
}

/* Store `desired` if the cell holds `expected`; returns 1 on success. */
static inline int
tl_compare_and_set(tl_cell *c, int64_t expected, int64_t desired)
{
    return atomic_compare_exchange_strong_explicit(
        c, &expected, desired, memory_order_seq_cst, memory_order_acquire);
}

/* The checked step of an update: *new_ = old + n (sub=0) or old - n
 * (sub=1); nonzero, with *new_ unspecified, when that leaves int64. */
static inline int
tl_step_overflows(int64_t old, int64_t n, int sub, int64_t *new_)
{
    return sub ? TL_SUB_OVERFLOWS(old, n, new_) : TL_ADD_OVERFLOWS(old, n, new_);
}

/* Add n (sub=0) or subtract n (sub=1).  On success stores the new value in
 * *out and returns TL_OK; on overflow stores the unchanged value in *out and
 * returns TL_OVERFLOW. */
static inline int
tl_add(tl_cell *c, int64_t n, int sub, int64_t *out)
{
    int64_t old = atomic_load_explicit(c, memory_order_relaxed), new_;
    do {
        if (TL_UNLIKELY(sub ? TL_SUB_OVERFLOWS(old, n, &new_)
                            : TL_ADD_OVERFLOWS(old, n, &new_))) {
            *out = old;
            return TL_OVERFLOW;
        }
    } while (!atomic_compare_exchange_weak_explicit(
        c, &old, new_, memory_order_seq_cst, memory_order_relaxed));
    *out = new_;
    return TL_OK;
}

/* One CAS attempt: TL_OK, TL_OVERFLOW, or 1 when another writer got there
 * first (contention; *out is then unspecified). */
static inline int
tl_try_add(tl_cell *c, int64_t n, int sub, int64_t *out)
{
    int64_t old = atomic_load_explicit(c, memory_order_relaxed);
    if (TL_UNLIKELY(tl_step_overflows(old, n, sub, out))) {
        *out = old;
        return TL_OVERFLOW;
    }
    return atomic_compare_exchange_strong_explicit(c, &old, *out, memory_order_seq_cst,
                                                   memory_order_relaxed)
               ? TL_OK
               : 1;
}

/* The same arithmetic for callers that exclude other writers (the GIL). */
static inline int
tl_add_serial(tl_cell *c, int64_t n, int sub, int64_t *out)
{
    int64_t old = atomic_load_explicit(c, memory_order_relaxed);
    if (TL_UNLIKELY(tl_step_overflows(old, n, sub, out))) {
        *out = old;
        return TL_OVERFLOW;
    }
    atomic_store_explicit(c, *out, memory_order_relaxed);
    return TL_OK;
}

/* ---- striped cells ----------------------------------------------------- */

typedef struct {
    tl_cell value;
    char pad[TL_LINE - sizeof(tl_cell)];
} tl_padded_cell;

typedef struct {
    tl_cell base;
    _Atomic(tl_padded_cell *) cells; /* NULL until the first failed CAS */
    uint32_t nslots;                 /* power of two, fixed at init */
} tl_striped;

/* nslots_hint: how many cells the table would have (e.g. the CPU count). */
static inline void
tl_striped_init(tl_striped *s, int64_t initial, uint32_t nslots_hint)
{
    uint32_t n = 1;
    while (n < nslots_hint && n < TL_MAX_SLOTS) {
        n <<= 1;
    }
    atomic_init(&s->base, initial);
    atomic_init(&s->cells, NULL);
    s->nslots = n;
}

static inline void
tl_striped_free(tl_striped *s)
{
    tl_padded_cell *cells = atomic_load_explicit(&s->cells, memory_order_acquire);
    atomic_store_explicit(&s->cells, NULL, memory_order_relaxed);
    free(cells);
}

static inline int
tl_striped_inflated(tl_striped *s)
{
    return atomic_load_explicit(&s->cells, memory_order_acquire) != NULL;
}

/* Per-thread probe: which cell this thread tries first. 0 = not yet seeded.
 * The initial-exec TLS model makes reading it one instruction instead of a
 * call to __tls_get_addr (it takes 4 bytes of the static TLS space that the
 * C library reserves for modules loaded later: that is what it is for). */
static _Thread_local TL_TLS_FAST uint32_t tl_probe;

static inline uint32_t
tl_probe_get(void)
{
    uint32_t p = tl_probe;
    if (TL_UNLIKELY(p == 0)) {
        /* seed from this thread's TLS address (distinct per live thread) */
        uint64_t x = (uint64_t)(uintptr_t)&tl_probe;
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdULL;
        x ^= x >> 33;
        p = (uint32_t)x | 1u;
        tl_probe = p;
    }
    return p;
}

static inline uint32_t
tl_probe_advance(uint32_t p)
{
    p ^= p << 13; /* xorshift32: never reaches 0 from a non-zero state */
    p ^= p >> 17;
    p ^= p << 5;
    tl_probe = p;
    return p;
}

static int
tl_striped_add_slow(tl_striped *s, int64_t n, int sub)
{
    tl_padded_cell *cells = atomic_load_explicit(&s->cells, memory_order_acquire);
    if (cells == NULL) {
        size_t bytes = (size_t)s->nslots * sizeof(tl_padded_cell);
        tl_padded_cell *fresh = aligned_alloc(TL_LINE, bytes);
        if (fresh == NULL) {
            return TL_NOMEM;
        }
        for (uint32_t i = 0; i < s->nslots; i++) {
            atomic_init(&fresh[i].value, 0);
        }
        tl_padded_cell *expected = NULL;
        if (atomic_compare_exchange_strong_explicit(
                &s->cells, &expected, fresh, memory_order_seq_cst,
                memory_order_acquire)) {
            cells = fresh;
        }
        else {
            free(fresh); /* another writer inflated first: use its table */
            cells = expected;
        }
    }
    uint32_t p = tl_probe_get();
    int64_t ignored;
    for (;;) {
        int r = tl_try_add(&cells[p & (s->nslots - 1)].value, n, sub, &ignored);
        if (r <= 0) {
            return r; /* TL_OK or TL_OVERFLOW (that cell is at its limit) */
        }
        p = tl_probe_advance(p);
    }
}

/* Lock-free add: one CAS on the base while uncontended, else the cells. */
static inline int
tl_striped_add(tl_striped *s, int64_t n, int sub)
{
    if (TL_LIKELY(atomic_load_explicit(&s->cells, memory_order_relaxed) == NULL)) {
        int64_t ignored;
        int r = tl_try_add(&s->base, n, sub, &ignored);
        if (TL_LIKELY(r <= 0)) {
            return r;
        }
    }
    return tl_striped_add_slow(s, n, sub);
}

/* Add for callers that exclude other writers (the GIL): the base only. */
static inline int
tl_striped_add_serial(tl_striped *s, int64_t n, int sub)
{
    int64_t ignored;
    return tl_add_serial(&s->base, n, sub, &ignored);
}

/* Copy the base and every cell into out[] (room for 1 + nslots values);
 * returns how many were written.  Not a snapshot (see the top). */
static inline uint32_t
tl_striped_collect(tl_striped *s, int64_t *out)
{
    uint32_t k = 0;
    out[k++] = tl_load(&s->base);
    tl_padded_cell *cells = atomic_load_explicit(&s->cells, memory_order_acquire);
    if (cells != NULL) {
        for (uint32_t i = 0; i < s->nslots; i++) {
            out[k++] = tl_load(&cells[i].value);
        }
    }
    return k;
}

/* Exchange the base and every cell with 0, writing what was taken to out[]. */
static inline uint32_t
tl_striped_drain(tl_striped *s, int64_t *out)
{
    uint32_t k = 0;
    out[k++] = tl_exchange(&s->base, 0);
    tl_padded_cell *cells = atomic_load_explicit(&s->cells, memory_order_acquire);
    if (cells != NULL) {
        for (uint32_t i = 0; i < s->nslots; i++) {
            out[k++] = tl_exchange(&cells[i].value, 0);
        }
    }
    return k;
}

/* Sum k values; TL_OK with the sum in *out, or TL_OVERFLOW if it is not an
 * int64 (the caller then sums in a wider type). */
static inline int
tl_sum(const int64_t *vals, uint32_t k, int64_t *out)
{
    int64_t acc = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (TL_ADD_OVERFLOWS(acc, vals[i], &acc)) {
            return TL_OVERFLOW;
        }
    }
    *out = acc;
    return TL_OK;
}

#endif /* TALLIES_CELLS_H */
