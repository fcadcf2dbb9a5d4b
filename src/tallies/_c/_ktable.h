/*
 * tallies key table: the hash table under KeyedCounter, with each key's
 * int64 count stored inline next to the key.
 *
 * Plain C11 over _cells.h (no Python API): keys are opaque pointers with a
 * hash and an equality callback supplied by the includer, so the very same
 * code is compiled into the extension and, under ThreadSanitizer, into a
 * pthread stress (tests/c/stress_keyed.c, run by tests/c/test_keyed_protocol.py).
 *
 * Layout (CPython's compact dict, with the count where the dict keeps a
 * pointer to an int object)
 * --------------------------------------------------------------------------
 * One allocation per table: an index of `size` slots (a power of two; 1, 2, 4
 * or 8 bytes each, the narrowest that holds an entry number, as the dict
 * does) and `usable` = 2/3 size entries stored as parallel arrays keys[],
 * counts[] (int64) and, only when some key does not cache its own hash,
 * hashes[].  An index slot holds TKT_EMPTY, TKT_DUMMY (a removed entry) or
 * the number of an entry.  Entries are appended in insertion order, so
 * iteration order is insertion order, as in a dict.  A removed entry keeps
 * its place with key NULL until the next resize compacts the table.  For
 * keys that cache their hash (exact str in the extension) an entry is 16
 * bytes, for others 24; the count needs no object, so a key costs what a
 * dict entry costs whatever its count (collections.Counter adds a 32-byte
 * int object for every count outside [-5, 256]).  Probing is the dict's
 * (i = 5i + 1 + perturb; perturb >>= 5).  Resizes grow to the smallest power
 * of two >= 3 * live keys (the dict's GROWTH_RATE); the table never shrinks
 * except through clear().  A table is allocated on the first insertion.
 * (Concurrent mode lays counts[] out in whole 128-byte blocks instead, at
 * least one per CPU: TKT_CIX says why; about 4 bytes more per key in a large
 * table, up to a block per CPU in a small one.  And it stores every hash,
 * 8 bytes more per key: see "Hashes" below.)
 *
 * Serial mode (TKT_CONCURRENT 0: interpreters with a GIL)
 * ---------------------------------------------------------
 * The caller excludes other threads, except during TKT_EQ, which may run
 * arbitrary code (a key's __eq__) that may change this very table: insert,
 * remove, resize.  So, as CPython's dict does, a lookup holds the stored key
 * it compares (TKT_INCREF) and afterwards checks that the map's `version`
 * (bumped by every removal and resize) did not move; if it did, the lookup
 * starts over.  Insertions do not bump the version: they only fill EMPTY
 * index slots and append entries, which a lookup walking the same probe
 * sequence either sees or may ignore (it reports the key absent, and the
 * insertion then re-checks the slots it has not seen, see below).  An
 * equality that is still undecided when the probe has moved on is never
 * assumed.
 *
 * Concurrent mode (TKT_CONCURRENT 1: free-threaded builds)
 * ---------------------------------------------------------
 * Hot path: counts are updated with atomic checked adds (tl_add) in place;
 * a lookup takes no lock.  Structural changes (insert, remove, resize,
 * clear) take the map's mutex (TKT_LOCK, a PyMutex in the extension).
 *
 * Lookups and count updates run inside a *region*: a thread announces itself
 * on one of TKT_NSTRIPES padded counters chosen by its thread (a striped
 * reader count, so threads counting different keys do not share a cache
 * line), then checks the map's `closed` flag:
 *
 *     enter:  fetch_add(stripe, 1)  [seq_cst]
 *             if load(closed) [seq_cst]: fetch_sub(stripe, 1); lock; unlock;
 *                                        start over
 *     ... load the table pointer, probe, tl_add on counts[ix] ...
 *     leave:  fetch_sub(stripe, 1)  [release]
 *
 * A structural change that moves or drops counts (remove, resize, clear),
 * holding the mutex, *closes* the map:
 *
 *     store(closed, 1) [seq_cst]; wait until every stripe reads 0 [seq_cst];
 *     ... now no thread is inside a region: move the counts (plain loads),
 *         drop entries, publish the new table, free the old one ...
 *     version += 1; store(closed, 0) [release]; unlock
 *
 * Why nothing is lost or counted twice: a writer's announcement and the
 * closer's flag are two seq_cst stores each followed by a seq_cst load of
 * the other (Dekker): they cannot both miss each other.  Either the closer
 * sees the writer's announcement and waits for it to leave (the writer's add
 * happens before its release fetch_sub, so the migration reads it), or the
 * writer sees `closed` and backs off before touching anything, waits for the
 * mutex (the change is done once it gets it) and starts over on the new
 * table.  No thread is inside a region when a table is freed, so a reader
 * never sees a torn or freed table.  Regions contain no callback and no
 * allocation (nothing that could run Python code, take a lock or wait), so
 * a closer waits only a few instructions; TKT_EQ runs outside regions: the
 * lookup holds the candidate key, leaves, compares, re-enters and checks
 * `version` as in serial mode.
 *
 * Insertions do not close the map.  Under the mutex the inserter re-checks
 * that `version` did not move since its lookup, continues the probe from
 * where the lookup stopped (an equal key inserted meanwhile is found there:
 * insertions only fill EMPTY slots, and the lookup stopped at the first one it
 * saw), writes the entry (key, hash, count), then publishes the entry number
 * in the index with a release store (readers load index slots with acquire)
 * and then `nentries`.  A probe that meets a non-identical key with the same
 * hash under the mutex cannot call TKT_EQ there (it may re-enter the map),
 * so the inserter unlocks and starts over from the lookup.  No code runs
 * under the mutex except this table's own (TKT_FAST_EQ is a pure function).
 *
 * Scaling (concurrent mode).  Four things keep threads that count at once
 * off each other's cache lines: a thread's region stripe is its own (handed
 * out round-robin, tkt_my_stripe); counts are laid out in blocks so that keys
 * inserted one after another never share a line (TKT_CIX); every hash is
 * stored in the table (hashes[]), never read from a key object during a
 * probe; and a key that two threads update at the same instant inflates into
 * per-CPU hot cells (the "hot keys" section, which says how counts stay
 * exact and in range).
 *
 * Hashes.  A probe that meets another key's entry first compares hashes.
 * Serial mode reads the hash of a str key from the key object (CPython's
 * dict does the same), but on a free-threaded build that object's header is
 * the line its owner thread writes on every reference it takes: a thread
 * counting "b" whose probe passes "a" would read the line that the thread
 * counting "a" writes twice per call, and both slow down.  Measured on 16
 * CPUs (3.13t, 2026-12-04), a key per thread scaled 5.8x at 16 threads
 * against 15x for one hot key; with hashes[] kept in every concurrent table
 * it scaled 13x (the floor: 12 to 13x), the table's own lines being only
 * read on the hot path.
 * The KeyedCounter object's own reference count is the extension's business
 * (keyed.c, _shared.h).
 *
 * What the includer defines before including this header:
 *     TKT_CONCURRENT              0 or 1
 *     TKT_EQ(stored, key)         1 equal, 0 not, -1 error; may run any code
 *     TKT_FAST_EQ(stored, key)    1, 0, or -2 (undecided: call TKT_EQ);
 *                                 pure, no side effects, no locks
 *     TKT_INCREF(k), TKT_DECREF(k)  (DECREF is only called outside regions
 *                                 and without the mutex)
 *     TKT_CACHES_HASH(k)          the key object keeps its hash
 *     TKT_CACHED_HASH(k)          that hash (for such keys)
 *     TKT_MALLOC(n), TKT_FREE(p), TKT_FREE_TABLE(p) (defaults: malloc/free)
 *     TKT_REGION_HOOK()           optional: runs inside a region between a
 *                                 lookup and its add (tests widen races)
 *     TKT_INFLATE_HOOK(), TKT_FOLD_HOOK()  optional: a key inflated; a fold
 *                                 read the cells (the stress counts them)
 *     TKT_JOIN_HOOK()             optional: runs between tkt_join's passes
 *     TKT_FREE_HOT(p)             frees hot cells (default: free)
 *     TKT_HOT_CELL_MAX            optional, <= 2**53: a lower bound folds
 *                                 more often (the stress)
 *     and it calls tkt_set_cpus(n) once, before any map is used (concurrent
 *     mode; the default is 2)
 *     concurrent mode: tkt_lock_t, TKT_LOCK(l), TKT_UNLOCK(l) (zeroed memory
 *     must be an unlocked lock)
 */
#ifndef TALLIES_KTABLE_H
#define TALLIES_KTABLE_H

#include <stddef.h>

#include "_cells.h"

#ifndef TKT_CONCURRENT
#error "define TKT_CONCURRENT (0 or 1) before including _ktable.h"
#endif
#ifndef TKT_MALLOC
#define TKT_MALLOC(n) malloc(n)
#define TKT_FREE(p) free(p)
#endif
#ifndef TKT_FREE_TABLE
#define TKT_FREE_TABLE(p) TKT_FREE(p)
#endif
#ifndef TKT_REGION_HOOK
#define TKT_REGION_HOOK() ((void)0) /* the stress widens race windows here */
#endif
#ifndef TKT_NSTRIPES
#define TKT_NSTRIPES 16
#endif
#ifndef TKT_FREE_HOT
#define TKT_FREE_HOT(p) free(p) /* hot cells come from aligned_alloc */
#endif
#ifndef TKT_INFLATE_HOOK
#define TKT_INFLATE_HOOK() ((void)0) /* the stress counts inflations */
#endif
#ifndef TKT_FOLD_HOOK
#define TKT_FOLD_HOOK() ((void)0) /* and folds */
#endif

typedef intptr_t tkt_hash_t;

#define TKT_EMPTY ((int64_t)-1)
#define TKT_DUMMY ((int64_t)-2)
#define TKT_MINSIZE 8
#define TKT_USABLE(size) (((size) << 1) / 3)

enum {
    TKT_ERR = -10,  /* TKT_EQ raised (the includer's error state is set) */
    TKT_ABSENT = 0,
    TKT_FOUND = 1,
    TKT_RETRY = 2,  /* internal: start the operation over */
    TKT_NOMEM = -11, /* (distinct from _cells.h's TL_OK / TL_OVERFLOW) */
    TKT_MISSING = -12, /* tkt_update without insert: the key is absent */
};

typedef struct {
    _Atomic int64_t nentries;  /* entries appended, removed ones included */
    uint8_t log2_size;         /* index slots: 1 << log2_size */
    uint8_t width;             /* bytes per index slot: 1, 2, 4 or 8 */
    uint8_t stores_hashes;     /* hashes[] present (after counts[]) */
    uint8_t log2_index_bytes;  /* the index's bytes: keys[] follow it */
    uint8_t log2_rows;         /* concurrent mode: counts[] is 1 << log2_rows blocks */
    tl_cell *counts;
#if TKT_CONCURRENT
    tl_padded_cell *_Atomic *_Atomic hot; /* NULL, or usable pointers: hot cells */
    int64_t nhot;              /* entries with hot cells (under the mutex) */
#endif
    /* then, in the same allocation: the index, keys[], counts[], hashes[] */
} tkt_table;

#define TKT_SIZE(t) ((int64_t)1 << (t)->log2_size)
#define TKT_INDEX(t) ((void *)((t) + 1))
#define TKT_KEYS(t) \
    ((void *_Atomic *)((char *)TKT_INDEX(t) + ((size_t)1 << (t)->log2_index_bytes)))

/* Where entry ix's count lives.  Serial mode: counts[ix].  Concurrent mode:
 * counts[] is 2**log2_rows blocks of TKT_CPB counts, one TL_LINE each (the
 * array aligned to TL_LINE), and entry ix's count sits in block
 * ix mod 2**log2_rows, at position ix / 2**log2_rows: entries appended one
 * after another (keys that threads start counting at about the same time)
 * never share a cache line, as they would in a plain array (16 counts to a
 * 128-byte line pair), where two threads counting two such keys would write
 * one line.  Two entries share a block only when their numbers differ by a
 * multiple of the row count, which is at least the CPU count rounded up to a
 * power of two (tkt_min_rows), and at least enough for `usable` entries.  A
 * removal leaves the layout alone; a resize lays the survivors out anew. */
#define TKT_CPB ((int64_t)(TL_LINE / sizeof(int64_t)))
#if TKT_CONCURRENT
static uint8_t tkt_min_log2_rows = 1;
#define TKT_CIX(t, ix) \
    ((((ix) & (((int64_t)1 << (t)->log2_rows) - 1)) * TKT_CPB) + ((ix) >> (t)->log2_rows))
#define TKT_NCOUNTS(t) (TKT_CPB << (t)->log2_rows)
#else
#define TKT_CIX(t, ix) (ix)
#define TKT_NCOUNTS(t) TKT_USABLE(TKT_SIZE(t))
#endif
#define TKT_COUNT(t, ix) (&(t)->counts[TKT_CIX((t), (ix))])
#define TKT_HASHES(t) ((tkt_hash_t *)((t)->counts + TKT_NCOUNTS(t)))

typedef struct {
    _Atomic int64_t n;
    char pad[TL_LINE - sizeof(int64_t)];
} tkt_stripe;

typedef struct {
    tkt_table *_Atomic table;  /* NULL until the first insertion */
    _Atomic uint64_t version;  /* bumped by every removal, resize and clear */
    _Atomic int64_t used;      /* live keys */
#if TKT_CONCURRENT
    _Atomic int closed;
    tkt_lock_t lock;
    tkt_stripe *stripes;       /* TKT_NSTRIPES of them */
#else
    /* Serial mode: the current table's geometry, copied here whenever the
     * table changes, so that a lookup's first probe reads it from the map
     * (the object's own cache line) instead of one pointer further away. */
    struct {
        const void *index;  /* NULL: no table */
        void *_Atomic *keys;
        tl_cell *counts;
        size_t mask;
        uint8_t width;
    } geo;
#endif
} tkt_map;

/* Where a lookup ended. */
typedef struct {
    tkt_table *t;
    int64_t ix;       /* the entry, when found */
    size_t slot;      /* the index slot (of the entry, or the EMPTY one) */
    size_t perturb;
    uint64_t version;
} tkt_pos;

/* ---- memory orders of the two modes ------------------------------------- */

#if TKT_CONCURRENT
#define TKT_ACQ memory_order_acquire
#define TKT_REL memory_order_release
#else
#define TKT_ACQ memory_order_relaxed
#define TKT_REL memory_order_relaxed
#endif
#define TKT_RLX memory_order_relaxed

/* ---- regions (concurrent mode) ------------------------------------------- */

#if TKT_CONCURRENT
/* Each thread's stripe, handed out round-robin at its first region: threads
 * started one after another never share one (a hash of the thread could, and
 * two threads on one stripe write one cache line on every update). */
static _Thread_local TL_TLS_FAST int tkt_my_slot = -1;
static _Atomic unsigned tkt_next_slot;

static inline tkt_stripe *
tkt_my_stripe(tkt_map *m)
{
    int s = tkt_my_slot;
    if (TL_UNLIKELY(s < 0)) {
        s = (int)(atomic_fetch_add_explicit(&tkt_next_slot, 1, memory_order_relaxed) %
                  TKT_NSTRIPES);
        tkt_my_slot = s;
    }
    return &m->stripes[s];
}

static inline void
tkt_enter(tkt_map *m)
{
    tkt_stripe *s = tkt_my_stripe(m);
    for (;;) {
        atomic_fetch_add_explicit(&s->n, 1, memory_order_seq_cst);
        if (TL_LIKELY(!atomic_load_explicit(&m->closed, memory_order_seq_cst))) {
            return;
        }
        atomic_fetch_sub_explicit(&s->n, 1, memory_order_release);
        TKT_LOCK(&m->lock); /* the closer holds it until it reopens */
        TKT_UNLOCK(&m->lock);
    }
}

static inline void
tkt_leave(tkt_map *m)
{
    atomic_fetch_sub_explicit(&tkt_my_stripe(m)->n, 1, memory_order_release);
}

/* With the mutex held: shut regions out and wait for those inside. */
static inline void
tkt_close(tkt_map *m)
{
    atomic_store_explicit(&m->closed, 1, memory_order_seq_cst);
    for (int i = 0; i < TKT_NSTRIPES; i++) {
        while (atomic_load_explicit(&m->stripes[i].n, memory_order_seq_cst) != 0) {
            tl_yield();
        }
    }
}

static inline void
tkt_reopen(tkt_map *m)
{
    atomic_store_explicit(&m->closed, 0, memory_order_release);
}

#define TKT_MLOCK(m) TKT_LOCK(&(m)->lock)
#define TKT_MUNLOCK(m) TKT_UNLOCK(&(m)->lock)
#else
#define tkt_enter(m) ((void)(m))
#define tkt_leave(m) ((void)(m))
#define tkt_close(m) ((void)(m))
#define tkt_reopen(m) ((void)(m))
#define TKT_MLOCK(m) ((void)(m))
#define TKT_MUNLOCK(m) ((void)(m))
#endif

/* ---- tables --------------------------------------------------------------- */

static inline int64_t
tkt_get_index(const tkt_table *t, size_t i)
{
    switch (t->width) {
    case 1:
        return atomic_load_explicit(&((_Atomic int8_t *)TKT_INDEX(t))[i], TKT_ACQ);
    case 2:
        return atomic_load_explicit(&((_Atomic int16_t *)TKT_INDEX(t))[i], TKT_ACQ);
    case 4:
        return atomic_load_explicit(&((_Atomic int32_t *)TKT_INDEX(t))[i], TKT_ACQ);
    default:
        return atomic_load_explicit(&((_Atomic int64_t *)TKT_INDEX(t))[i], TKT_ACQ);
    }
}

static inline void
tkt_set_index(tkt_table *t, size_t i, int64_t ix)
{
    switch (t->width) {
    case 1:
        atomic_store_explicit(&((_Atomic int8_t *)TKT_INDEX(t))[i], (int8_t)ix, TKT_REL);
        break;
    case 2:
        atomic_store_explicit(&((_Atomic int16_t *)TKT_INDEX(t))[i], (int16_t)ix, TKT_REL);
        break;
    case 4:
        atomic_store_explicit(&((_Atomic int32_t *)TKT_INDEX(t))[i], (int32_t)ix, TKT_REL);
        break;
    default:
        atomic_store_explicit(&((_Atomic int64_t *)TKT_INDEX(t))[i], ix, TKT_REL);
        break;
    }
}

static inline void *
tkt_key_at(const tkt_table *t, int64_t ix)
{
    return atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_ACQ);
}

static inline tkt_hash_t
tkt_hash_at(const tkt_table *t, int64_t ix, void *key)
{
    return t->stores_hashes ? TKT_HASHES(t)[ix] : (tkt_hash_t)TKT_CACHED_HASH(key);
}

/* log2 of the blocks of counts[] of a table of `size` slots (concurrent mode). */
static inline int
tkt_log2_rows(int64_t size)
{
    int r = 0;
#if TKT_CONCURRENT
    r = tkt_min_log2_rows;
    while ((TKT_CPB << r) < TKT_USABLE(size)) {
        r++;
    }
#else
    (void)size;
#endif
    return r;
}

/* Bytes of a table of `size` index slots. */
static inline size_t
tkt_table_bytes(int64_t size, int stores_hashes)
{
    int width = size <= 0x80 ? 1 : size <= 0x8000 ? 2 : size <= 0x80000000LL ? 4 : 8;
    size_t usable = (size_t)TKT_USABLE(size);
    size_t b = sizeof(tkt_table) + (size_t)size * (size_t)width; /* size >= 8 */
    b += usable * sizeof(void *);
#if TKT_CONCURRENT
    b += TL_LINE; /* to align counts[] */
    b += (size_t)(TKT_CPB << tkt_log2_rows(size)) * sizeof(int64_t);
#else
    b += usable * sizeof(int64_t);
#endif
    if (stores_hashes) {
        b += usable * sizeof(tkt_hash_t);
    }
    return b;
}

static tkt_table *
tkt_table_new(int64_t size, int stores_hashes)
{
    size_t bytes = tkt_table_bytes(size, stores_hashes);
    tkt_table *t = (tkt_table *)TKT_MALLOC(bytes);
    if (t == NULL) {
        return NULL;
    }
    int64_t usable = TKT_USABLE(size);
    int log2 = 0;
    while (((int64_t)1 << log2) < size) {
        log2++;
    }
    atomic_init(&t->nentries, 0);
    t->log2_size = (uint8_t)log2;
    t->width = (uint8_t)(size <= 0x80 ? 1 : size <= 0x8000 ? 2 : size <= 0x80000000LL ? 4 : 8);
    t->stores_hashes = (uint8_t)(stores_hashes != 0);
    char *p = (char *)TKT_INDEX(t);
    memset(p, 0xff, (size_t)size * (size_t)t->width); /* every slot TKT_EMPTY */
    int log2_width = t->width == 1 ? 0 : t->width == 2 ? 1 : t->width == 4 ? 2 : 3;
    t->log2_index_bytes = (uint8_t)(log2 + log2_width); /* >= 3: keys[] aligned */
    p += (size_t)size * (size_t)t->width;
    p += (size_t)usable * sizeof(void *);
    t->log2_rows = (uint8_t)tkt_log2_rows(size);
#if TKT_CONCURRENT
    p += (TL_LINE - (uintptr_t)p % TL_LINE) % TL_LINE;
#endif
    t->counts = (tl_cell *)p;
#if TKT_CONCURRENT
    atomic_init(&t->hot, NULL);
    t->nhot = 0;
#endif
    return t;
}

static inline size_t
tkt_table_size_bytes(const tkt_table *t)
{
    return t == NULL ? 0 : tkt_table_bytes(TKT_SIZE(t), t->stores_hashes);
}

/* First EMPTY slot of hash's probe sequence (tables being built: no dummies
 * matter, no key compared). */
static size_t
tkt_find_empty(const tkt_table *t, tkt_hash_t hash)
{
    size_t mask = (size_t)TKT_SIZE(t) - 1, perturb = (size_t)hash;
    size_t i = (size_t)hash & mask;
    while (tkt_get_index(t, i) != TKT_EMPTY) {
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
    return i;
}


/* ---- hot keys (concurrent mode) --------------------------------------------
 *
 * A key that threads update at the same instant is one contended cache line.
 * The first time the CAS on a key's count fails (another thread changed it
 * between our load and our swap: the evidence LongAdder uses), the key
 * *inflates*: under the mutex, with the map closed, it gets tkt_hot_slots
 * cells of TL_LINE bytes each (the CPU count, rounded up to a power of two,
 * 2..64), published in the table's `hot` array (allocated at the table's
 * first inflation: one pointer per entry).  From then on adds go to the cell
 * picked by the thread's probe (_cells.h); the key's count is its word plus
 * its cells, read one by one (not a snapshot, as ShardedCounter's value).
 *
 * Exactness and range.  Every add is still checked, and no sum can leave
 * int64: a key inflates only while |word| <= TKT_HOT_WORD_MAX (2**62); while
 * it is inflated nothing but a take (exchange with 0) writes the word, and a
 * cell never holds more than TKT_HOT_CELL_MAX (2**53) either way, so
 * |word + cells| <= 2**62 + 64 * 2**53 < 2**63.  An add whose |n| or whose
 * cell would pass that bound *folds* instead: under the mutex with the map
 * closed, word + cells + n is computed and checked exactly (overflow: refused,
 * nothing changes) and stored in the word, and the cells are emptied (or
 * freed, when the new count is beyond 2**62: the key inflates again at a
 * later contention once it is back in range).  Setting a hot key's count
 * (tkt_exchange) folds the same way.
 *
 * Nothing lost or doubled.  Cells are only published, folded and freed with
 * the map closed, so no thread is inside a region then: an adder that looked
 * up the cells adds to them before the closer can move them, and one that
 * enters after sees the new state.  A resize folds every key's cells into
 * its count in the new table (the new table starts with none); a removal takes
 * word and cells; a take (tkt_snapshot with take) exchanges each with 0, so
 * every add is taken exactly once.  At most TKT_HOT_MAX keys per table
 * inflate (each costs tkt_hot_slots * TL_LINE bytes); later ones stay one
 * cell: exact, just contended.
 */
#if TKT_CONCURRENT
#define TKT_HOT_WORD_MAX ((int64_t)1 << 62)
#ifndef TKT_HOT_CELL_MAX /* the stress lowers it, to fold often; never above 2**53 */
#define TKT_HOT_CELL_MAX ((int64_t)1 << 53)
#endif
_Static_assert(TKT_HOT_CELL_MAX <= ((int64_t)1 << 53), "see \"hot keys\"");
#define TKT_HOT_MAX 256
#define TKT_FOLD 3 /* internal: the add must fold */

static uint32_t tkt_hot_slots = 2;

/* The includer's module init: the CPU count (hot cells per key, and the
 * fewest blocks of counts, see TKT_CIX). */
static inline void
tkt_set_cpus(long ncpu)
{
    uint32_t n = 2;
    uint8_t log2 = 1;
    while ((long)n < ncpu && n < 64) {
        n <<= 1;
        log2++;
    }
    tkt_hot_slots = n;
    tkt_min_log2_rows = log2;
}

static inline tl_padded_cell *
tkt_hot_at(const tkt_table *t, int64_t ix)
{
    tl_padded_cell *_Atomic *hot = atomic_load_explicit(&((tkt_table *)t)->hot, memory_order_acquire);
    return hot == NULL ? NULL : atomic_load_explicit(&hot[ix], memory_order_acquire);
}

static inline int
tkt_magnitude_over(int64_t v, int64_t bound)
{
    return v > bound || v < -bound;
}

/* Add to one of a hot key's cells: TL_OK, or TKT_FOLD. */
static inline int
tkt_hot_add(tl_padded_cell *cells, int64_t n, int sub)
{
    if (tkt_magnitude_over(n, TKT_HOT_CELL_MAX)) {
        return TKT_FOLD;
    }
    uint32_t p = tl_probe_get();
    for (;;) {
        tl_cell *c = &cells[p & (tkt_hot_slots - 1)].value;
        int64_t old = atomic_load_explicit(c, memory_order_relaxed);
        int64_t new_ = sub ? old - n : old + n; /* |old|, |n| <= 2**53: no overflow */
        if (tkt_magnitude_over(new_, TKT_HOT_CELL_MAX)) {
            return TKT_FOLD;
        }
        if (atomic_compare_exchange_strong_explicit(c, &old, new_, memory_order_seq_cst,
                                                    memory_order_relaxed)) {
            return TL_OK;
        }
        p = tl_probe_advance(p);
    }
}

/* Free entry ix's cells and forget them (the map closed, or the table private). */
static inline void
tkt_hot_drop(tkt_table *t, int64_t ix)
{
    tl_padded_cell *_Atomic *hot = atomic_load_explicit(&t->hot, memory_order_relaxed);
    if (hot != NULL) {
        tl_padded_cell *cells = atomic_load_explicit(&hot[ix], memory_order_relaxed);
        if (cells != NULL) {
            atomic_store_explicit(&hot[ix], NULL, memory_order_relaxed);
            t->nhot--;
            TKT_FREE_HOT(cells);
        }
    }
}

/* Free a table with whatever hot cells it still has. */
static inline void
tkt_table_free(tkt_table *t)
{
    tl_padded_cell *_Atomic *hot = atomic_load_explicit(&t->hot, memory_order_relaxed);
    if (hot != NULL) {
        int64_t count = atomic_load_explicit(&t->nentries, memory_order_relaxed);
        for (int64_t ix = 0; ix < count; ix++) {
            tl_padded_cell *cells = atomic_load_explicit(&hot[ix], memory_order_relaxed);
            if (cells != NULL) {
                TKT_FREE_HOT(cells);
            }
        }
        TKT_FREE_HOT(hot);
    }
    TKT_FREE_TABLE(t);
}
#else
#define tkt_table_free(t) TKT_FREE_TABLE(t)
#endif

/* Entry ix's count (inside a region, or with the map closed, or a private
 * table): its word plus its hot cells. */
static inline int64_t
tkt_count_at(const tkt_table *t, int64_t ix)
{
    int64_t v = atomic_load_explicit(TKT_COUNT((tkt_table *)t, ix),
                                     TKT_CONCURRENT ? memory_order_acquire : memory_order_relaxed);
#if TKT_CONCURRENT
    tl_padded_cell *cells = tkt_hot_at(t, ix);
    if (cells != NULL) {
        for (uint32_t i = 0; i < tkt_hot_slots; i++) {
            v += tl_load(&cells[i].value); /* in range: see "hot keys" */
        }
    }
#endif
    return v;
}

/* Exchange entry ix's count with 0, returning it (same places as above). */
static inline int64_t
tkt_take_at(tkt_table *t, int64_t ix)
{
    int64_t v = atomic_exchange_explicit(TKT_COUNT(t, ix), 0,
                                         TKT_CONCURRENT ? memory_order_seq_cst
                                                        : memory_order_relaxed);
#if TKT_CONCURRENT
    tl_padded_cell *cells = tkt_hot_at(t, ix);
    if (cells != NULL) {
        for (uint32_t i = 0; i < tkt_hot_slots; i++) {
            v += tl_exchange(&cells[i].value, 0);
        }
    }
#endif
    return v;
}

/* ---- the map ---------------------------------------------------------------- */

/* Make t (or NULL) the map's table. */
static inline void
tkt_publish(tkt_map *m, tkt_table *t)
{
    atomic_store_explicit(&m->table, t, TKT_REL);
#if !TKT_CONCURRENT
    m->geo.index = t == NULL ? NULL : TKT_INDEX(t);
    m->geo.keys = t == NULL ? NULL : TKT_KEYS(t);
    m->geo.counts = t == NULL ? NULL : t->counts;
    m->geo.mask = t == NULL ? 0 : (size_t)TKT_SIZE(t) - 1;
    m->geo.width = t == NULL ? 0 : t->width;
#endif
}

/* 0, or TKT_NOMEM. */
static inline int
tkt_map_init(tkt_map *m)
{
    atomic_init(&m->table, NULL);
#if !TKT_CONCURRENT
    memset(&m->geo, 0, sizeof(m->geo));
#endif
    atomic_init(&m->version, 0);
    atomic_init(&m->used, 0);
#if TKT_CONCURRENT
    atomic_init(&m->closed, 0);
    memset(&m->lock, 0, sizeof(m->lock));
    m->stripes = (tkt_stripe *)TKT_MALLOC(sizeof(tkt_stripe) * TKT_NSTRIPES);
    if (m->stripes == NULL) {
        return TKT_NOMEM;
    }
    for (int i = 0; i < TKT_NSTRIPES; i++) {
        atomic_init(&m->stripes[i].n, 0);
    }
#endif
    return 0;
}

static inline int64_t
tkt_len(tkt_map *m)
{
    return atomic_load_explicit(&m->used, TKT_RLX);
}

/* Find key.  TKT_FOUND / TKT_ABSENT return INSIDE a region (concurrent mode;
 * the caller acts on pos and calls tkt_leave), TKT_ERR outside it. */
static int
tkt_find(tkt_map *m, void *key, tkt_hash_t hash, tkt_pos *pos)
{
restart:
    tkt_enter(m);
    pos->version = atomic_load_explicit(&m->version, TKT_ACQ);
    tkt_table *t = atomic_load_explicit(&m->table, TKT_ACQ);
    pos->t = t;
    if (t == NULL) {
        pos->slot = 0;
        pos->perturb = (size_t)hash;
        pos->ix = -1;
        return TKT_ABSENT;
    }
    size_t mask = (size_t)TKT_SIZE(t) - 1, perturb = (size_t)hash;
    size_t i = (size_t)hash & mask;
    for (;;) {
        int64_t ix = tkt_get_index(t, i);
        if (ix == TKT_EMPTY) {
            pos->slot = i;
            pos->perturb = perturb;
            pos->ix = -1;
            return TKT_ABSENT;
        }
        if (ix >= 0) {
            void *ek = tkt_key_at(t, ix);
            if (ek == key) {
                goto found;
            }
            if (ek != NULL && tkt_hash_at(t, ix, ek) == hash) {
                int eq = TKT_FAST_EQ(ek, key);
                if (eq == -2) {
                    uint64_t v = pos->version;
                    TKT_INCREF(ek);
                    tkt_leave(m);
                    eq = TKT_EQ(ek, key);
                    TKT_DECREF(ek);
                    if (eq < 0) {
                        return TKT_ERR;
                    }
                    tkt_enter(m);
                    if (atomic_load_explicit(&m->version, TKT_ACQ) != v) {
                        tkt_leave(m); /* removed or resized meanwhile */
                        goto restart;
                    }
                    /* Same version: same table, entry ix still holds ek. */
                }
                if (eq == 1) {
                    goto found;
                }
            }
        }
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
        continue;
    found:
        pos->ix = ix;
        pos->slot = i;
        pos->perturb = perturb;
        return TKT_FOUND;
    }
}

/* Copy the live entries of t (may be NULL) into the empty table n, in order. */
static void
tkt_rebuild(tkt_table *n, tkt_table *t)
{
    int64_t j = 0;
    if (t != NULL) {
        int64_t count = atomic_load_explicit(&t->nentries, TKT_RLX);
        for (int64_t ix = 0; ix < count; ix++) {
            void *k = atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_RLX);
            if (k == NULL) {
                continue;
            }
            tkt_hash_t h = tkt_hash_at(t, ix, k);
            atomic_init(&TKT_KEYS(n)[j], k);
            atomic_init(TKT_COUNT(n, j), tkt_count_at(t, ix)); /* hot cells folded in */
            if (n->stores_hashes) {
                TKT_HASHES(n)[j] = h;
            }
            tkt_set_index(n, tkt_find_empty(n, h), j);
            j++;
        }
    }
    atomic_init(&n->nentries, j);
}

/* With the mutex held: replace the table by one with room for `extra` more
 * keys (and hashes stored when stores_hashes).  0 or TKT_NOMEM. */
static int
tkt_resize(tkt_map *m, int64_t extra, int stores_hashes)
{
    tkt_table *t = atomic_load_explicit(&m->table, TKT_RLX);
    int64_t used = atomic_load_explicit(&m->used, TKT_RLX);
    int64_t size = TKT_MINSIZE;
    while (size < used * 3 || TKT_USABLE(size) < used + extra) {
        size <<= 1; /* the dict's GROWTH_RATE: 3 * used */
    }
    tkt_table *n = tkt_table_new(size, stores_hashes);
    if (n == NULL) {
        return TKT_NOMEM;
    }
    /* The copy reads counts that writers may still change: copy with the
     * map closed, so that every add is either in the old count read here or
     * made, after the reopening, on the new table. */
    tkt_close(m);
    tkt_rebuild(n, t);
    tkt_publish(m, n);
    atomic_fetch_add_explicit(&m->version, 1, memory_order_seq_cst);
    tkt_reopen(m);
    if (t != NULL) {
        tkt_table_free(t);
    }
    return 0;
}

/* Insert key (known absent at pos, found by tkt_find and left) with count v.
 * TKT_FOUND: inserted.  TKT_RETRY: the map changed or an undecided equal-hash
 * key appeared: look up again.  TKT_NOMEM. */
static int
tkt_insert(tkt_map *m, void *key, tkt_hash_t hash, int64_t v, tkt_pos *pos)
{
    TKT_MLOCK(m);
    if (atomic_load_explicit(&m->version, TKT_ACQ) != pos->version ||
        atomic_load_explicit(&m->table, TKT_ACQ) != pos->t) {
        TKT_MUNLOCK(m);
        return TKT_RETRY;
    }
    tkt_table *t = pos->t;
    if (t != NULL) {
        /* Continue the probe: insertions since the lookup filled EMPTY slots. */
        size_t mask = (size_t)TKT_SIZE(t) - 1, i = pos->slot, perturb = pos->perturb;
        for (;;) {
            int64_t ix = tkt_get_index(t, i);
            if (ix == TKT_EMPTY) {
                break;
            }
            if (ix >= 0) {
                void *ek = tkt_key_at(t, ix);
                if (ek == key) {
                    TKT_MUNLOCK(m);
                    return TKT_RETRY;
                }
                if (ek != NULL && tkt_hash_at(t, ix, ek) == hash &&
                    TKT_FAST_EQ(ek, key) != 0) {
                    TKT_MUNLOCK(m); /* equal, or only TKT_EQ can tell */
                    return TKT_RETRY;
                }
            }
            perturb >>= 5;
            i = (i * 5 + perturb + 1) & mask;
        }
        pos->slot = i;
    }
    /* Concurrent mode stores every hash ("Hashes" above): a probe that passes
     * another key compares hashes in the table, not in that key's object. */
    int need_hashes = TKT_CONCURRENT || !TKT_CACHES_HASH(key);
    if (t == NULL || atomic_load_explicit(&t->nentries, TKT_RLX) >= TKT_USABLE(TKT_SIZE(t)) ||
        (need_hashes && !t->stores_hashes)) {
        int r = tkt_resize(m, 1, need_hashes || (t != NULL && t->stores_hashes));
        if (r < 0) {
            TKT_MUNLOCK(m);
            return r;
        }
        t = atomic_load_explicit(&m->table, TKT_RLX);
        pos->slot = tkt_find_empty(t, hash); /* every key there is not ours */
    }
    int64_t n = atomic_load_explicit(&t->nentries, TKT_RLX);
    TKT_INCREF(key);
    atomic_store_explicit(&TKT_KEYS(t)[n], key, TKT_RLX);
    atomic_store_explicit(TKT_COUNT(t, n), v, TKT_RLX);
    if (t->stores_hashes) {
        TKT_HASHES(t)[n] = hash;
    }
    tkt_set_index(t, pos->slot, n); /* release: the entry is complete */
    atomic_store_explicit(&t->nentries, n + 1, TKT_REL);
    atomic_fetch_add_explicit(&m->used, 1, TKT_RLX);
    pos->t = t;
    pos->ix = n;
    TKT_MUNLOCK(m);
    return TKT_FOUND;
}

/* With the mutex held and the map closed: unlink entry pos->ix, returning its
 * key (the caller decrefs it after reopening and unlocking). */
static void *
tkt_unlink(tkt_map *m, tkt_pos *pos, int64_t *taken)
{
    tkt_table *t = pos->t;
    void *k = atomic_load_explicit(&TKT_KEYS(t)[pos->ix], TKT_RLX);
    *taken = tkt_take_at(t, pos->ix);
#if TKT_CONCURRENT
    tkt_hot_drop(t, pos->ix);
#endif
    atomic_store_explicit(&TKT_KEYS(t)[pos->ix], NULL, TKT_REL);
    tkt_set_index(t, pos->slot, TKT_DUMMY);
    atomic_fetch_sub_explicit(&m->used, 1, TKT_RLX);
    atomic_fetch_add_explicit(&m->version, 1, memory_order_seq_cst);
    return k;
}

/* Remove key: always (only_if 0), or only if its count is 0 (only_if 1) or
 * <= 0 (only_if 2), decided with the map closed so that no concurrent add
 * can slip in between the check and the removal.  TKT_FOUND with its final
 * count in *taken and its key in *removed (the caller drops that reference
 * outside any region), TKT_ABSENT (absent, or kept), or TKT_ERR. */
static int
tkt_remove(tkt_map *m, void *key, tkt_hash_t hash, int only_if, int64_t *taken,
           void **removed)
{
    tkt_pos pos;
    for (;;) {
        int r = tkt_find(m, key, hash, &pos);
        if (r != TKT_FOUND) {
            if (r == TKT_ABSENT) {
                tkt_leave(m);
            }
            return r;
        }
        tkt_leave(m);
        TKT_MLOCK(m);
        if (atomic_load_explicit(&m->version, TKT_ACQ) == pos.version) {
            tkt_close(m);
            int64_t v = tkt_count_at(pos.t, pos.ix);
            int go = only_if == 0 || v == 0 || (only_if == 2 && v < 0);
            if (go) {
                *removed = tkt_unlink(m, &pos, taken);
            }
            tkt_reopen(m);
            TKT_MUNLOCK(m);
            return go ? TKT_FOUND : TKT_ABSENT;
        }
        TKT_MUNLOCK(m); /* removed or resized since the lookup */
    }
}

#if TKT_CONCURRENT
/* After a failed CAS on the count of entry pos->ix (found by a lookup whose
 * region was left): give it hot cells ("hot keys" above).  Returns 1 when
 * the caller should simply look up again (inflated, already hot, or the map
 * changed meanwhile), 0 when the key stays one cell (no memory, TKT_HOT_MAX
 * reached, or its count is too large to inflate). */
static int
tkt_inflate(tkt_map *m, tkt_pos *pos)
{
    TKT_MLOCK(m);
    tkt_table *t = pos->t;
    if (atomic_load_explicit(&m->version, TKT_ACQ) != pos->version ||
        atomic_load_explicit(&m->table, TKT_ACQ) != t) {
        TKT_MUNLOCK(m);
        return 1;
    }
    tl_padded_cell *_Atomic *hot = atomic_load_explicit(&t->hot, memory_order_relaxed);
    if (hot != NULL && atomic_load_explicit(&hot[pos->ix], memory_order_relaxed) != NULL) {
        TKT_MUNLOCK(m);
        return 1;
    }
    if (t->nhot >= TKT_HOT_MAX) {
        TKT_MUNLOCK(m);
        return 0;
    }
    if (hot == NULL) {
        /* Published at once: all NULL, a reader sees no cells either way. */
        hot = (tl_padded_cell *_Atomic *)calloc((size_t)TKT_USABLE(TKT_SIZE(t)), sizeof(*hot));
        if (hot == NULL) {
            TKT_MUNLOCK(m);
            return 0;
        }
        atomic_store_explicit(&t->hot, hot, memory_order_release);
    }
    tl_padded_cell *cells =
        (tl_padded_cell *)aligned_alloc(TL_LINE, (size_t)tkt_hot_slots * sizeof(tl_padded_cell));
    if (cells == NULL) {
        TKT_MUNLOCK(m);
        return 0;
    }
    for (uint32_t i = 0; i < tkt_hot_slots; i++) {
        atomic_init(&cells[i].value, 0);
    }
    int done = 0;
    tkt_close(m); /* no adder may still be adding to the word it read as unbounded */
    if (!tkt_magnitude_over(atomic_load_explicit(TKT_COUNT(t, pos->ix), TKT_RLX),
                            TKT_HOT_WORD_MAX)) {
        atomic_store_explicit(&hot[pos->ix], cells, memory_order_release);
        t->nhot++;
        cells = NULL;
        done = 1;
        TKT_INFLATE_HOOK();
    }
    tkt_reopen(m);
    TKT_MUNLOCK(m);
    if (cells != NULL) {
        TKT_FREE_HOT(cells);
    }
    return done;
}

/* Fold entry pos->ix's hot cells into its word, then add n (sub: -n) to the
 * whole count, checked (set: replace it by n instead, *out = the old count);
 * the key keeps its (now empty) cells unless the count is too large for them.
 * Under the mutex, with the map closed.
 * TL_OK (*out: the new count, or the old one with set), TL_OVERFLOW (*out:
 * the count that stays), or TKT_RETRY (the map changed since the lookup). */
static int
tkt_fold(tkt_map *m, tkt_pos *pos, int64_t n, int sub, int set, int64_t *out)
{
    TKT_MLOCK(m);
    tkt_table *t = pos->t;
    if (atomic_load_explicit(&m->version, TKT_ACQ) != pos->version ||
        atomic_load_explicit(&m->table, TKT_ACQ) != t) {
        TKT_MUNLOCK(m);
        return TKT_RETRY;
    }
    tkt_close(m);
    int64_t total = tkt_count_at(t, pos->ix), new_;
    TKT_FOLD_HOOK();
    int r = TL_OK;
    if (set) {
        new_ = n;
        *out = total;
    }
    else if (sub ? TL_SUB_OVERFLOWS(total, n, &new_) : TL_ADD_OVERFLOWS(total, n, &new_)) {
        new_ = total;
        *out = total;
        r = TL_OVERFLOW;
    }
    else {
        *out = new_;
    }
    atomic_store_explicit(TKT_COUNT(t, pos->ix), new_, TKT_RLX);
    tl_padded_cell *cells = tkt_hot_at(t, pos->ix);
    if (tkt_magnitude_over(new_, TKT_HOT_WORD_MAX)) {
        tkt_hot_drop(t, pos->ix); /* too large to stay hot */
    }
    else {
        for (uint32_t i = 0; i < tkt_hot_slots; i++) {
            atomic_store_explicit(&cells[i].value, 0, TKT_RLX); /* folded: stays hot */
        }
    }
    tkt_reopen(m);
    TKT_MUNLOCK(m);
    return r;
}
#endif

/* Add n (sub: -n) to key's count; when it is absent, insert it at 0 first
 * (insert: then *fresh = 1, when fresh is not NULL) or change nothing and
 * return TKT_MISSING (a write-behind store's keyed gate, keyed.c: a key's
 * first use is the store's business).
 * TL_OK / TL_OVERFLOW (*out: the count that stays) / TKT_ERR / TKT_NOMEM.
 * (With TL_OK, *out is the new count except for a hot key: unspecified.) */
static int
tkt_update(tkt_map *m, void *key, tkt_hash_t hash, int64_t n, int sub, int64_t *out,
           int *fresh, int insert)
{
    tkt_pos pos;
    if (fresh != NULL) {
        *fresh = 0;
    }
#if TKT_CONCURRENT
    int may_inflate = 1;
#endif
    for (;;) {
        int r = tkt_find(m, key, hash, &pos);
        if (r == TKT_FOUND) {
            TKT_REGION_HOOK();
#if TKT_CONCURRENT
            tl_padded_cell *cells = tkt_hot_at(pos.t, pos.ix);
            if (cells != NULL) {
                r = tkt_hot_add(cells, n, sub);
                tkt_leave(m);
                if (TL_LIKELY(r == TL_OK)) {
                    *out = 0;
                    return r;
                }
                r = tkt_fold(m, &pos, n, sub, 0, out);
                if (r == TKT_RETRY) {
                    continue;
                }
                return r;
            }
            r = may_inflate ? tl_try_add(TKT_COUNT(pos.t, pos.ix), n, sub, out)
                            : tl_add(TKT_COUNT(pos.t, pos.ix), n, sub, out);
            tkt_leave(m);
            if (TL_UNLIKELY(r > 0)) { /* a failed CAS: another thread counts this key now */
                may_inflate = tkt_inflate(m, &pos);
                continue;
            }
#else
            r = tl_add_serial(TKT_COUNT(pos.t, pos.ix), n, sub, out);
            tkt_leave(m);
#endif
            return r;
        }
        if (r == TKT_ERR) {
            return r;
        }
        tkt_leave(m);
        if (!insert) {
            return TKT_MISSING;
        }
        int64_t first;
        if (sub ? TL_SUB_OVERFLOWS((int64_t)0, n, &first)
                : TL_ADD_OVERFLOWS((int64_t)0, n, &first)) {
            *out = 0;
            return TL_OVERFLOW;
        }
        r = tkt_insert(m, key, hash, first, &pos);
        if (r == TKT_FOUND) {
            *out = first;
            if (fresh != NULL) {
                *fresh = 1;
            }
            return TL_OK;
        }
        if (r == TKT_NOMEM) {
            return r;
        }
    }
}

/* Add n (sub: -n) to key's count, inserting it at 0 first when absent (then
 * *fresh = 1, when fresh is not NULL): tkt_update. */
static inline int
tkt_add(tkt_map *m, void *key, tkt_hash_t hash, int64_t n, int sub, int64_t *out,
        int *fresh)
{
    return tkt_update(m, key, hash, n, sub, out, fresh, 1);
}

/* Read key's count (exchange 0) or exchange it with v (exchange 1); when the
 * key is absent, insert it with v (insert) or leave it absent.  TKT_FOUND with
 * the count read or replaced in *out; TKT_ABSENT (inserted when insert) with
 * *out = v for a read and 0 for an exchange; TKT_ERR, TKT_NOMEM. */
static int
tkt_access(tkt_map *m, void *key, tkt_hash_t hash, int64_t v, int exchange, int insert,
           int64_t *out)
{
    tkt_pos pos;
    for (;;) {
        int r = tkt_find(m, key, hash, &pos);
#if TKT_CONCURRENT
        if (exchange && r == TKT_FOUND && tkt_hot_at(pos.t, pos.ix) != NULL) {
            tkt_leave(m); /* a hot key's count is set by folding its cells */
            if (tkt_fold(m, &pos, v, 0, 1, out) == TKT_RETRY) {
                continue;
            }
            return TKT_FOUND;
        }
#endif
        if (r == TKT_FOUND) {
            *out = exchange ? atomic_exchange_explicit(TKT_COUNT(pos.t, pos.ix), v,
                                                       TKT_CONCURRENT ? memory_order_seq_cst
                                                                      : memory_order_relaxed)
                            : tkt_count_at(pos.t, pos.ix);
            tkt_leave(m);
            return TKT_FOUND;
        }
        if (r == TKT_ERR) {
            return r;
        }
        tkt_leave(m);
        *out = exchange ? 0 : v;
        if (!insert) {
            return TKT_ABSENT;
        }
        r = tkt_insert(m, key, hash, v, &pos);
        if (r == TKT_FOUND) {
            return TKT_ABSENT;
        }
        if (r == TKT_NOMEM) {
            return r;
        }
    }
}

/* Exchange key's count with v, inserting the key with v when absent
 * (insert_absent) or leaving it absent.  TKT_FOUND with the old count in
 * *old, TKT_ABSENT (inserted when insert_absent; *old = 0), TKT_ERR, TKT_NOMEM. */
static inline int
tkt_exchange(tkt_map *m, void *key, tkt_hash_t hash, int64_t v, int insert_absent,
             int64_t *old)
{
    return tkt_access(m, key, hash, v, 1, insert_absent, old);
}

/* Key's count when present (TKT_FOUND), inserting v when absent and insert
 * (then TKT_ABSENT with *out = v); TKT_ERR, TKT_NOMEM. */
static inline int
tkt_get(tkt_map *m, void *key, tkt_hash_t hash, int insert, int64_t v, int64_t *out)
{
    return tkt_access(m, key, hash, v, 0, insert, out);
}

/* Copy up to cap live entries (keys unless keys is NULL: with TKT_INCREF when
 * hold, else borrowed, which only a caller that keeps them alive otherwise
 * may do; counts unless counts is NULL; take: exchange each count with 0) in
 * insertion order.  Returns how many were copied, or
 * -(live count) - 1 when cap is too small (nothing copied, nothing held). */
static int64_t
tkt_snapshot(tkt_map *m, void **keys, int64_t *counts, int64_t cap, int take, int hold)
{
    tkt_enter(m);
    tkt_table *t = atomic_load_explicit(&m->table, TKT_ACQ);
    int64_t live = atomic_load_explicit(&m->used, TKT_RLX);
    if (t == NULL) {
        tkt_leave(m);
        return 0;
    }
    int64_t count = atomic_load_explicit(&t->nentries, TKT_ACQ);
    if (count > cap) {
        /* Might still fit once removed entries are skipped: count them. */
        int64_t n = 0;
        for (int64_t ix = 0; ix < count; ix++) {
            n += atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_ACQ) != NULL;
        }
        if (n > cap) {
            tkt_leave(m);
            return -(n > live ? n : live) - 1;
        }
    }
    int64_t j = 0;
    for (int64_t ix = 0; ix < count; ix++) {
        void *k = atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_ACQ);
        if (k == NULL) {
            continue;
        }
        if (keys != NULL) {
            if (hold) {
                TKT_INCREF(k);
            }
            keys[j] = k;
        }
        if (counts != NULL) {
            counts[j] = take ? tkt_take_at(t, ix) : tkt_count_at(t, ix);
        }
        j++;
    }
    tkt_leave(m);
    return j;
}

/* Detach every entry: the old table is returned (the caller drops its keys
 * with tkt_table_release, outside any lock), the map is empty. */
static tkt_table *
tkt_detach_all(tkt_map *m)
{
    TKT_MLOCK(m);
    tkt_close(m);
    tkt_table *t = atomic_load_explicit(&m->table, TKT_RLX);
    tkt_publish(m, NULL);
    atomic_store_explicit(&m->used, 0, TKT_RLX);
    atomic_fetch_add_explicit(&m->version, 1, memory_order_seq_cst);
    tkt_reopen(m);
    TKT_MUNLOCK(m);
    return t;
}

/* Drop the keys of a detached table and free it. */
static void
tkt_table_release(tkt_table *t)
{
    if (t == NULL) {
        return;
    }
    int64_t count = atomic_load_explicit(&t->nentries, TKT_RLX);
    for (int64_t ix = 0; ix < count; ix++) {
        void *k = atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_RLX);
        if (k != NULL) {
            atomic_store_explicit(&TKT_KEYS(t)[ix], NULL, TKT_RLX);
            TKT_DECREF(k);
        }
    }
    tkt_table_free(t);
}

static inline void
tkt_map_free(tkt_map *m)
{
    tkt_table_release(tkt_detach_all(m));
#if TKT_CONCURRENT
    TKT_FREE(m->stripes);
    m->stripes = NULL;
#endif
}

/* ---- snapshots: the binary operations --------------------------------------
 *
 * kc + other, -, |, & and == read two counters key by key.  Reading the live
 * tables for that mixes instants: the right operand's keys looked up in the
 * live left table find a key that another thread inserted after the left
 * operand was copied (or miss one it removed), and a key's __hash__ or
 * __eq__ may itself change the left table between the copy and the lookup.
 * So every operand is frozen first: tkt_freeze copies a map's live entries
 * (keys held, counts with their hot cells folded in, hashes) into a private
 * map, in one region (each count exact, read as tkt_snapshot reads it), and
 * the join then reads the copies only: private tables that nothing else can
 * reach, so no thread, finaliser or key callback can change them while the
 * result is computed.  tests/c/stress_keyed_ops.c checks it from pthreads
 * (with a mutant that reads the live map, which it must catch).
 */

/* Copy m's live entries into out, a map made here (private: the caller frees
 * it with tkt_map_free), in insertion order.  0, or TKT_NOMEM (out is then
 * nothing to free). */
static inline int
tkt_freeze(tkt_map *m, tkt_map *out)
{
    if (tkt_map_init(out) < 0) {
        return TKT_NOMEM;
    }
#if !TKT_CONCURRENT
    /* Serial mode: nothing else runs meanwhile; the table is copied as it is
     * (index, entries, removed ones included), each live key held. */
    tkt_table *t = atomic_load_explicit(&m->table, TKT_RLX);
    if (t == NULL) {
        return 0;
    }
    size_t bytes = tkt_table_size_bytes(t);
    tkt_table *n = (tkt_table *)TKT_MALLOC(bytes);
    if (n == NULL) {
        tkt_map_free(out);
        return TKT_NOMEM;
    }
    memcpy(n, t, bytes);
    n->counts = (tl_cell *)((char *)n + ((char *)t->counts - (char *)t));
    int64_t count = atomic_load_explicit(&t->nentries, TKT_RLX);
    for (int64_t ix = 0; ix < count; ix++) {
        void *k = atomic_load_explicit(&TKT_KEYS(n)[ix], TKT_RLX);
        if (k != NULL) {
            TKT_INCREF(k);
        }
    }
    tkt_publish(out, n);
    atomic_store_explicit(&out->used, atomic_load_explicit(&m->used, TKT_RLX), TKT_RLX);
    return 0;
#else
    int64_t want = tkt_len(m);
    for (;;) {
        tkt_table *n = NULL;
        if (want > 0) {
            int64_t size = TKT_MINSIZE;
            while (TKT_USABLE(size) < want) {
                size <<= 1;
            }
            n = tkt_table_new(size, 1); /* every hash stored: no key is asked again */
            if (n == NULL) {
                tkt_map_free(out);
                return TKT_NOMEM;
            }
        }
        int64_t room = n == NULL ? 0 : TKT_USABLE(TKT_SIZE(n));
        tkt_enter(m);
        tkt_table *t = atomic_load_explicit(&m->table, TKT_ACQ);
        int64_t count = t == NULL ? 0 : atomic_load_explicit(&t->nentries, TKT_ACQ);
        int64_t live = 0;
        for (int64_t ix = 0; ix < count; ix++) {
            live += atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_ACQ) != NULL;
        }
        if (live > room) { /* grew since tkt_len: a larger table */
            tkt_leave(m);
            if (n != NULL) {
                TKT_FREE_TABLE(n);
            }
            want = live;
            continue;
        }
        int64_t j = 0;
        for (int64_t ix = 0; ix < count; ix++) {
            void *k = atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_ACQ);
            if (k == NULL) {
                continue;
            }
            tkt_hash_t h = tkt_hash_at(t, ix, k);
            TKT_INCREF(k);
            atomic_init(&TKT_KEYS(n)[j], k);
            atomic_init(TKT_COUNT(n, j), tkt_count_at(t, ix));
            TKT_HASHES(n)[j] = h;
            tkt_set_index(n, tkt_find_empty(n, h), j);
            j++;
        }
        tkt_leave(m);
        if (n != NULL) {
            atomic_init(&n->nentries, j);
            tkt_publish(out, n);
            atomic_store_explicit(&out->used, j, TKT_RLX);
        }
        return 0;
    }
#endif
}

/* One operand of a binary operation: the map it names (src) and what the
 * operation reads (snap): a frozen copy of src, or src itself when src is
 * already private (a dict converted into a map of its own). */
typedef struct {
    tkt_map *src;
    tkt_map *snap;
    tkt_map copy;
} tkt_operand;

/* 0, or TKT_NOMEM (then tkt_operand_free does nothing). */
static inline int
tkt_operand_init(tkt_operand *o, tkt_map *src, int is_private)
{
    o->src = src;
    if (is_private) {
        o->snap = src;
        return 0;
    }
    o->snap = &o->copy;
    if (tkt_freeze(src, &o->copy) < 0) {
        o->snap = NULL;
        return TKT_NOMEM;
    }
    return 0;
}

static inline void
tkt_operand_free(tkt_operand *o)
{
    if (o->snap == &o->copy) {
        tkt_map_free(&o->copy);
    }
    o->snap = NULL;
}

/* key's count in the operand's snapshot (never its live map): TKT_FOUND,
 * TKT_ABSENT (*v = 0) or TKT_ERR.  Serial mode first walks key's probe
 * sequence for the key itself (the common case: both operands hold the same
 * key objects), which needs no call. */
static inline int
tkt_operand_get(tkt_operand *o, void *key, tkt_hash_t hash, int64_t *v)
{
    tkt_map *m = o->snap;
#if !TKT_CONCURRENT
    tkt_table *t = atomic_load_explicit(&m->table, TKT_RLX);
    if (t != NULL) {
        size_t mask = (size_t)TKT_SIZE(t) - 1, perturb = (size_t)hash;
        for (size_t i = (size_t)hash & mask;; i = (i * 5 + (perturb >>= 5) + 1) & mask) {
            int64_t ix = tkt_get_index(t, i);
            if (ix == TKT_EMPTY) {
                break;
            }
            if (ix >= 0 && tkt_key_at(t, ix) == key) {
                *v = tkt_count_at(t, ix);
                return TKT_FOUND;
            }
        }
    }
#endif
    return tkt_get(m, key, hash, 0, 0, v);
}

/* What tkt_join calls for each key: its counts in a and b (0 where absent)
 * and where it is; 0 to go on, anything else stops the join with that value. */
enum { TKT_IN_BOTH = 0, TKT_ONLY_A = 1, TKT_ONLY_B = 2 };
typedef int (*tkt_join_fn)(void *ctx, void *key, tkt_hash_t hash, int64_t ca, int64_t cb,
                           int where);

#ifndef TKT_JOIN_HOOK
#define TKT_JOIN_HOOK() ((void)0) /* the stress widens the window between the passes */
#endif

/* The join of two frozen operands (a and b may be the same one): each key of
 * a's snapshot in its order (TKT_IN_BOTH or TKT_ONLY_A), then, when b_only,
 * each key of b's snapshot that a's lacks, in b's order (TKT_ONLY_B): the
 * order collections.Counter builds its results in.  Returns 0, the first
 * nonzero value `each` returned, or TKT_ERR (a key's TKT_EQ failed). */
static inline int
tkt_join(tkt_operand *a, tkt_operand *b, int b_only, tkt_join_fn each, void *ctx)
{
    for (int pass = 0; pass < (b_only ? 2 : 1); pass++) {
        tkt_operand *mine = pass == 0 ? a : b, *theirs = pass == 0 ? b : a;
        tkt_table *t = atomic_load_explicit(&mine->snap->table, TKT_RLX);
        int64_t count = t == NULL ? 0 : atomic_load_explicit(&t->nentries, TKT_RLX);
        for (int64_t ix = 0; ix < count; ix++) {
            void *k = atomic_load_explicit(&TKT_KEYS(t)[ix], TKT_RLX);
            if (k == NULL) {
                continue; /* a removed entry (a serial-mode snapshot keeps them) */
            }
            int64_t c = atomic_load_explicit(TKT_COUNT(t, ix), TKT_RLX), oc;
            tkt_hash_t h = tkt_hash_at(t, ix, k);
            int r = tkt_operand_get(theirs, k, h, &oc);
            if (r < 0) {
                return r;
            }
            if (pass == 0) {
                r = each(ctx, k, h, c, oc, r == TKT_FOUND ? TKT_IN_BOTH : TKT_ONLY_A);
            }
            else {
                r = r == TKT_FOUND ? 0 : each(ctx, k, h, 0, c, TKT_ONLY_B);
            }
            if (r != 0) {
                return r;
            }
        }
        TKT_JOIN_HOOK();
    }
    return 0;
}

/* Make room for n keys in a map that has none yet (a private one): its first
 * n insertions then never resize.  0 or TKT_NOMEM. */
static inline int
tkt_reserve(tkt_map *m, int64_t n)
{
    TKT_MLOCK(m);
    int r = atomic_load_explicit(&m->table, TKT_RLX) != NULL ? 0 : tkt_resize(m, n, TKT_CONCURRENT);
    TKT_MUNLOCK(m);
    return r;
}

/* Give the private map `from` (filled by one thread) to m if m has no key:
 * its table becomes m's, with no copy.  1 when adopted (from is then empty),
 * 0 when m has keys (nothing changes). */
static inline int
tkt_adopt(tkt_map *m, tkt_map *from)
{
    TKT_MLOCK(m);
    if (atomic_load_explicit(&m->used, TKT_RLX) != 0) {
        TKT_MUNLOCK(m);
        return 0;
    }
    tkt_close(m);
    tkt_table *old = atomic_load_explicit(&m->table, TKT_RLX); /* only removed entries */
    tkt_publish(m, atomic_load_explicit(&from->table, TKT_RLX));
    atomic_store_explicit(&m->used, atomic_load_explicit(&from->used, TKT_RLX), TKT_RLX);
    atomic_fetch_add_explicit(&m->version, 1, memory_order_seq_cst);
    tkt_reopen(m);
    TKT_MUNLOCK(m);
    tkt_publish(from, NULL);
    atomic_store_explicit(&from->used, 0, TKT_RLX);
    if (old != NULL) {
        tkt_table_free(old);
    }
    return 1;
}

#endif /* TALLIES_KTABLE_H */
