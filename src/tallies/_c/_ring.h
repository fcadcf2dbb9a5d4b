/*
 * tallies rate ring: events in the last N seconds, exact per bucket.
 *
 * Plain C11 over _cells.h (no Python API), so that it can be compiled into
 * the extension (_c/rate.c) and, unchanged, into a
 * pthread stress run under ThreadSanitizer (tests/c/stress_ring.c).
 *
 * Buckets and slots
 * -----------------
 * Time is cut into buckets of `resolution`; the bucket of an instant t is its
 * slot, floor(t / resolution) (an int64).  A ring remembers the last `nb`
 * buckets, nb = ceil(window / resolution) (both in whole nanoseconds).
 *
 * The design: one running total, and a mark per bucket
 * ---------------------------------------------------
 * The obvious ring (one count per bucket, zeroed when the bucket is reused
 * for a newer slot) has a race without a GIL: an increment that read the old
 * slot can add into the count just after the rotation zeroed it, or just
 * before, and is then counted in the wrong bucket or wiped out.  This ring
 * never zeroes anything on rotation.  It keeps:
 *
 *   total      one int64 cell of the engine: every event since creation or the
 *              last reset, the only thing an increment writes;
 *   latest     the newest slot seen;
 *   marks[nb]  for slot s (at index s mod nb): (s, value of total just before
 *              the first event of slot s).
 *
 * An increment whose slot is <= latest is one checked add to `total`: the
 * same cost as Counter.increment (the hot path).  Only the first increment of
 * a newer slot (the slow path, once per bucket, under the ring's small lock)
 * writes the mark (slot, total) and moves `latest`, then adds.  An event
 * whose clock reads earlier than `latest` (a clock that went backwards or
 * stands still) lands in the newest bucket: it is in `total` after the mark
 * of `latest`.  A jump forward of any length writes one mark: O(1).
 *
 * The events of slots j_min..latest are total - base, where base is the mark
 * of the earliest slot in j_min..latest that has one: a slot without a mark
 * had no event, and every event before the mark of slot y happened in a slot
 * before y.  So count() is one scan of at most nb marks and two loads, and
 * the marks of slots older than the ring are recognised by their slot number
 * and ignored.  If latest < j_min, no event happened in the window: 0.
 *
 * Concurrency (without a GIL)
 * ---------------------------
 * Increments only add to `total` (the engine's atomic checked add); no event
 * is ever lost or counted twice in `total`, whatever the interleaving.  An
 * increment races with a rotation only at a bucket boundary: it read the
 * clock (or `boundary`) before the rotation and adds after the mark was
 * taken, or the reverse; it is then counted in the adjacent bucket.  With a
 * GIL an increment is one C call and the ring is exact bucket by bucket.
 * Marks are written under `lock` (a spinlock: held for a few stores, or O(nb)
 * for a reset) inside a sequence word that is odd while they change; readers
 * read latest, the mark and total between two loads of the sequence and retry
 * if it moved, so they never pair a mark with a total from across a reset.
 * total is read after the mark, so with increments only, count <= total.
 *
 * reset() exchanges total with 0 (every event lands in exactly one reset
 * result or in a later total, as with ShardedCounter), forgets every mark and
 * marks the newest slot with 0.
 *
 * Two clocks
 * ----------
 * tlr_add_ns(): the default clock in integer nanoseconds.  The ring keeps
 * `boundary`, the first nanosecond after the latest bucket, so the hot path
 * is a compare, not a division.  tlr_add_slot(): a caller-computed slot
 * (a user clock), compared with latest.
 */
#ifndef TALLIES_RING_H
#define TALLIES_RING_H


#include "_cells.h"

#define TLR_NONE INT64_MIN        /* "no slot" (an unused mark, an empty ring) */
#define TLR_MAX_BUCKETS 1000000   /* nb cap: 16 MB of marks */

typedef struct {
    _Atomic int64_t slot;
    _Atomic int64_t value;
} tlr_mark;

typedef struct {
    tl_cell total;
    _Atomic int64_t boundary; /* ns mode: first ns after the latest bucket */
    _Atomic int64_t latest;   /* newest slot, TLR_NONE when empty */
    _Atomic int64_t seq;      /* odd while marks change */
    _Atomic int lock;
    int64_t nb;
    tlr_mark *marks;
} tlr_ring;

/* 0, or -1 when out of memory. */
static inline int
tlr_init(tlr_ring *r, int64_t nb)
{
    r->marks = malloc((size_t)nb * sizeof(tlr_mark));
    if (r->marks == NULL) {
        return -1;
    }
    for (int64_t i = 0; i < nb; i++) {
        atomic_init(&r->marks[i].slot, TLR_NONE);
        atomic_init(&r->marks[i].value, 0);
    }
    atomic_init(&r->total, 0);
    atomic_init(&r->boundary, INT64_MIN);
    atomic_init(&r->latest, TLR_NONE);
    atomic_init(&r->seq, 0);
    atomic_init(&r->lock, 0);
    r->nb = nb;
    return 0;
}

static inline void
tlr_free(tlr_ring *r)
{
    free(r->marks);
    r->marks = NULL;
}

#ifdef Py_PYTHON_H
/* tlr_init for the ring inside `owner`, a Python object just allocated (in
 * the extension only): on failure the object is released (its dealloc frees
 * the NULL ring) and MemoryError is set.  `owner`, or NULL. */
static inline PyObject *
tlr_init_owned(PyObject *owner, tlr_ring *r, int64_t nb)
{
    if (tlr_init(r, nb) < 0) {
        Py_DECREF(owner);
        return PyErr_NoMemory();
    }
    return owner;
}
#endif

static inline int64_t
tlr_index(const tlr_ring *r, int64_t slot)
{
    int64_t i = slot % r->nb;
    return i < 0 ? i + r->nb : i;
}

static inline void
tlr_lock(tlr_ring *r)
{
    for (;;) {
        int expected = 0;
        if (atomic_compare_exchange_weak_explicit(&r->lock, &expected, 1,
                                                  memory_order_acquire,
                                                  memory_order_relaxed)) {
            return;
        }
        tl_yield();
    }
}

static inline void
tlr_unlock(tlr_ring *r)
{
    atomic_store_explicit(&r->lock, 0, memory_order_release);
}

/* Lock held: make `slot` the newest bucket (slot > latest). */
static inline void
tlr_rotate_locked(tlr_ring *r, int64_t slot, int64_t boundary)
{
    atomic_fetch_add_explicit(&r->seq, 1, memory_order_seq_cst);
    tlr_mark *m = &r->marks[tlr_index(r, slot)];
    atomic_store_explicit(&m->value,
                          atomic_load_explicit(&r->total, memory_order_seq_cst),
                          memory_order_relaxed);
    atomic_store_explicit(&m->slot, slot, memory_order_relaxed);
    atomic_store_explicit(&r->latest, slot, memory_order_relaxed);
#ifdef TLR_MUTANT_PLAIN_BOUNDARY
    *(int64_t *)&r->boundary = boundary; /* broken on purpose: a plain store */
#else
    atomic_store_explicit(&r->boundary, boundary, memory_order_relaxed);
#endif
    atomic_fetch_add_explicit(&r->seq, 1, memory_order_seq_cst);
}

/* The slow path: the first event of a newer slot. */
static inline void
tlr_advance(tlr_ring *r, int64_t slot, int64_t boundary)
{
    tlr_lock(r);
    if (slot > atomic_load_explicit(&r->latest, memory_order_relaxed)) {
        tlr_rotate_locked(r, slot, boundary);
    }
    tlr_unlock(r);
}

#ifdef TLR_SERIAL /* the caller excludes other writers (a GIL) */
#define TLR_CELL_ADD tl_add_serial
#else
#define TLR_CELL_ADD tl_add
#endif

/* Count n (sub: -n) at time now_ns (default clock, buckets of res_ns).
 * TL_OK, or TL_OVERFLOW with total unchanged (*cur: its value). */
static inline int
tlr_add_ns(tlr_ring *r, int64_t now_ns, int64_t res_ns, int64_t n, int sub,
           int64_t *cur)
{
    if (TL_UNLIKELY(now_ns >= atomic_load_explicit(&r->boundary, memory_order_relaxed))) {
        int64_t slot = now_ns / res_ns;
        tlr_advance(r, slot, (slot + 1) * res_ns);
    }
    return TLR_CELL_ADD(&r->total, n, sub, cur);
}

/* Count n (sub: -n) in bucket `slot` (a caller's clock). */
static inline int
tlr_add_slot(tlr_ring *r, int64_t slot, int64_t n, int sub, int64_t *cur)
{
    if (TL_UNLIKELY(slot > atomic_load_explicit(&r->latest, memory_order_relaxed))) {
        tlr_advance(r, slot, INT64_MIN);
    }
    return TLR_CELL_ADD(&r->total, n, sub, cur);
}

static inline int64_t
tlr_latest(tlr_ring *r)
{
    return atomic_load_explicit(&r->latest, memory_order_acquire);
}

/* Events in slots j_min..(latest) and the total they were read with:
 * *count_total = total, *base = the total before slot j_min (so the count is
 * total - base, formed by the caller without overflow).  j_min is clamped by
 * the caller to the ring (>= latest - nb + 1). */
static inline void
tlr_read(tlr_ring *r, int64_t j_min, int64_t *total, int64_t *base)
{
    for (;;) {
        int64_t s1 = atomic_load_explicit(&r->seq, memory_order_seq_cst);
        if (s1 & 1) {
            tl_yield();
            continue;
        }
        int64_t latest = atomic_load_explicit(&r->latest, memory_order_seq_cst);
        int64_t b = 0;
        int found = 0;
        if (latest != TLR_NONE && latest >= j_min) {
            int64_t lo = j_min;
            if (latest - lo >= r->nb) {
                lo = latest - r->nb + 1;
            }
            int64_t i = tlr_index(r, lo);
            for (int64_t j = lo; j <= latest; j++) {
                tlr_mark *m = &r->marks[i];
                if (atomic_load_explicit(&m->slot, memory_order_relaxed) == j) {
                    b = atomic_load_explicit(&m->value, memory_order_relaxed);
                    found = 1;
                    break;
                }
                if (++i == r->nb) {
                    i = 0;
                }
            }
        }
        int64_t t = atomic_load_explicit(&r->total, memory_order_seq_cst);
        if (atomic_load_explicit(&r->seq, memory_order_seq_cst) != s1) {
            continue;
        }
        *total = t;
        *base = found ? b : t; /* no mark in the window: no event there */
        return;
    }
}

static inline int64_t
tlr_total(tlr_ring *r)
{
    return tl_load(&r->total);
}

/* Take the total (returned) and forget every mark; `slot` (the caller's
 * current slot, or TLR_NONE) and anything newer become the newest bucket,
 * marked 0. */
static inline int64_t
tlr_reset(tlr_ring *r, int64_t slot, int64_t boundary)
{
    tlr_lock(r);
    atomic_fetch_add_explicit(&r->seq, 1, memory_order_seq_cst);
    int64_t old = tl_exchange(&r->total, 0);
    int64_t latest = atomic_load_explicit(&r->latest, memory_order_relaxed);
    for (int64_t i = 0; i < r->nb; i++) {
        atomic_store_explicit(&r->marks[i].slot, TLR_NONE, memory_order_relaxed);
    }
    if (slot < latest) {
        slot = latest;
        boundary = atomic_load_explicit(&r->boundary, memory_order_relaxed);
    }
    if (slot != TLR_NONE) {
        tlr_mark *m = &r->marks[tlr_index(r, slot)];
        atomic_store_explicit(&m->value, 0, memory_order_relaxed);
        atomic_store_explicit(&m->slot, slot, memory_order_relaxed);
    }
    atomic_store_explicit(&r->latest, slot, memory_order_relaxed);
    atomic_store_explicit(&r->boundary, boundary, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->seq, 1, memory_order_seq_cst);
    tlr_unlock(r);
    return old;
}

/* Floor division for int64 (C's / truncates toward zero). */
static inline int64_t
tlr_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q--;
    }
    return q;
}

/* The first slot a read of width w_ns at now_ns counts (ns mode), given the
 * ring's latest slot and nb: the current bucket plus those fully inside
 * (now - w, now]; a clock reading before the newest bucket reads as if at the
 * same offset inside it. */
static inline int64_t
tlr_first_slot_ns(int64_t now_ns, int64_t w_ns, int64_t res_ns, int64_t latest,
                  int64_t nb, int64_t *cur_out)
{
    int64_t cur = tlr_floordiv(now_ns, res_ns);
    int64_t j = tlr_floordiv(now_ns - w_ns, res_ns) + 1;
    if (latest != TLR_NONE && cur < latest) {
        j += latest - cur;
        cur = latest;
    }
    if (j > cur) {
        j = cur;
    }
    if (j < cur - nb + 1) {
        j = cur - nb + 1;
    }
    *cur_out = cur;
    return j;
}

#endif /* TALLIES_RING_H */
