/*
 * _shmcache.h: a process's cache of key -> cell for one shm:// keyed counter
 * (used by shm.c's KeyedCells; stressed from pthreads by
 * tests/c/stress_shm_keys.c).  No Python here: keys are opaque pointers with
 * a hash and an equality supplied by the includer.
 *
 * Why
 * ---
 * An increment of a key this process already used must cost about what
 * KeyedCounter.increment costs (issue 19: <= 1.6x).  Through the private
 * dict of KeyedCells (str -> int) it touched the dict's index, its entry, the
 * int object and then the slab cell: four cache lines in four places, and a
 * call to PyLong_AsSsize_t, 2-3x KeyedCounter at 10^5-10^6 keys.  Here a key
 * and its cell share one 16-byte slot of a table indexed by the key's hash
 * (no separate index), so a hit reads one line of the cache (plus the key
 * object when it is not the very object that was cached) and then the cell.
 * It is also the only record of the exact str keys a process used: a dict
 * entry and an int per key beside it cost ~64 bytes a key at 10^6 keys, the
 * cache 32-64 (34 at 10^6 keys: issue 19 wants a process's memory per key
 * within 2x of KeyedCounter's, 24 there; its table takes 21-40 a key at any
 * size).  KeyedCells keeps a dict only for the keys the cache cannot hold
 * (str subclasses, whose equality is Python's; a cell >= 2**32; a key the
 * cache had no memory for), and builds `cells` from both on demand
 * (tsc_items).
 *
 * What it is
 * ----------
 * A power-of-two array of slots {key, hash32 | cell << 32} probed linearly
 * from hash & mask, at most half full (64 bytes a key right after a growth,
 * 32 right before the next: filled to three quarters it would take 21-43,
 * but a hit probing 2.5 slots on average instead of 1.5 made an increment at
 * 10^4 keys 1.2x KeyedCounter's instead of 1.0x).  A slot is empty (key
 * NULL) or set once, for good: keys are never removed (a shm:// key is never removed from
 * its segment, and its cell index is the same in every slab and process, so
 * fork() and a new binding leave the cache true).  The cache holds a
 * reference to each key (TSC_INCREF), dropped when the cache is freed.
 *
 * Concurrency (free-threaded builds; with a GIL the lock is a no-op)
 * ------------------------------------------------------------------
 * A lookup takes no lock.  Inserts and growth take the cache's lock.
 *   insert: under the lock, probe the current table (a racing insert of the
 *           key may have won: then nothing to do); write the slot's word
 *           (plain), then its key with a release store.  A reader that loads
 *           the key with acquire sees the word it was written with.
 *   grow:   under the lock, copy every slot into a new table twice the size,
 *           then publish the table with a release store.  The old table is
 *           NOT freed: a reader may still probe it (what it finds there is
 *           true, entries being immutable); it is chained to the new one and
 *           freed with the cache, when no thread can be inside (the owner's
 *           dealloc).  The tables sum to less than twice the last one (up to
 *           128 bytes a key right after a growth, 64 for the newest table).
 *           (TSC_CONCURRENT 0, a build with a GIL: no lookup can be under way
 *           during an insert, which holds the GIL too, so the old table is
 *           freed at once.)
 * A lookup that misses (the key is being inserted, or went into a newer
 * table) falls back to the slow path, which asks the segment for the key's
 * cell (the same answer: a key's cell never changes) and inserts it again,
 * finding it there.  Equality (TSC_EQ) must be pure: it runs with no lock,
 * on keys the cache owns.
 *   items:  under the lock, copy every key (with a reference, TSC_INCREF) and
 *           cell out, touching nothing of the includer's while the lock is
 *           held, for `cells` to build its mapping from afterwards.
 *
 * The includer defines TSC_CONCURRENT (0: lookups and inserts never overlap,
 * 1: they may), TSC_EQ(stored, key) (1 equal, 0 not), TSC_INCREF(k),
 * TSC_DECREF(k), TSC_MALLOC(n) / TSC_FREE(p), and tsc_lock_t, TSC_LOCK(l),
 * TSC_UNLOCK(l) (zeroed memory must be an unlocked lock).
 */
#ifndef TALLIES_SHMCACHE_H
#define TALLIES_SHMCACHE_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#ifndef TSC_CONCURRENT
#error "define TSC_CONCURRENT (0 or 1) before including _shmcache.h"
#endif
#define TSC_MIN_SLOTS 64

typedef struct {
    void *_Atomic key; /* NULL: empty; set once, with release */
    uint64_t word;     /* (uint32)hash | cell << 32; written before key */
} tsc_slot;

typedef struct tsc_table tsc_table;
struct tsc_table {
    tsc_table *older; /* the table this one replaced (kept for readers) */
    uint64_t mask;
    tsc_slot slots[];
};

typedef struct {
    tsc_table *_Atomic table; /* NULL until the first insert */
    int64_t used;             /* keys held (under the lock) */
    tsc_lock_t lock;
} tsc_cache;

/* key's cell, or -1 when the cache does not hold it (yet). */
static inline int64_t
tsc_get(tsc_cache *c, void *key, uint64_t hash)
{
    tsc_table *t = atomic_load_explicit(&c->table, memory_order_acquire);
    if (t == NULL) {
        return -1;
    }
    for (uint64_t i = hash & t->mask, n = 0; n <= t->mask; i = (i + 1) & t->mask, n++) {
        tsc_slot *s = &t->slots[i];
        void *k = atomic_load_explicit(&s->key, memory_order_acquire);
        if (k == NULL) {
            return -1;
        }
        uint64_t w = s->word;
        if (k == key || ((uint32_t)w == (uint32_t)hash && TSC_EQ(k, key))) {
            return (int64_t)(w >> 32);
        }
    }
    return -1;
}

/* Put key (hash) in table t, whose slots the caller alone writes: 1 put, 0
 * already there. */
static int
tsc_put_in(tsc_table *t, void *key, uint64_t word, memory_order order)
{
    uint64_t i = word & t->mask;
    for (;;) {
        tsc_slot *s = &t->slots[i];
        void *k = atomic_load_explicit(&s->key, memory_order_relaxed);
        if (k == NULL) {
            s->word = word;
            atomic_store_explicit(&s->key, key, order);
            return 1;
        }
        if (k == key || ((uint32_t)s->word == (uint32_t)word && TSC_EQ(k, key))) {
            return 0;
        }
        i = (i + 1) & t->mask;
    }
}

/* Remember key -> cell (0 <= cell < 2**32): 0, or -1 when out of memory
 * (nothing changed; the caller goes on without the cache). */
static int
tsc_put(tsc_cache *c, void *key, uint64_t hash, int64_t cell)
{
    uint64_t word = (uint64_t)(uint32_t)hash | (uint64_t)cell << 32;
    int r = 0;
    TSC_LOCK(&c->lock);
    tsc_table *t = atomic_load_explicit(&c->table, memory_order_relaxed);
    uint64_t size = t == NULL ? 0 : t->mask + 1;
    if ((uint64_t)(c->used + 1) * 2 > size) {
        uint64_t nsize = size == 0 ? TSC_MIN_SLOTS : size * 2;
        tsc_table *nt = (tsc_table *)TSC_MALLOC(sizeof(tsc_table) + nsize * sizeof(tsc_slot));
        if (nt == NULL) {
            r = -1;
            goto done;
        }
        memset(nt->slots, 0, nsize * sizeof(tsc_slot));
        nt->mask = nsize - 1;
        nt->older = t;
        for (uint64_t i = 0; i < size; i++) {
            void *k = atomic_load_explicit(&t->slots[i].key, memory_order_relaxed);
            if (k != NULL) {
                tsc_put_in(nt, k, t->slots[i].word, memory_order_relaxed);
            }
        }
        atomic_store_explicit(&c->table, nt, memory_order_release); /* publishes all */
#if !TSC_CONCURRENT
        nt->older = NULL;
        TSC_FREE(t);
#endif
        t = nt;
    }
    TSC_INCREF(key);
    if (tsc_put_in(t, key, word, memory_order_release)) {
        c->used++;
    }
    else {
        TSC_DECREF(key);
    }
done:
    TSC_UNLOCK(&c->lock);
    return r;
}

/* tsc_items under the lock: what the current table holds. */
static int64_t
tsc_copy(tsc_cache *c, void ***keys, int64_t **cells)
{
    tsc_table *t = atomic_load_explicit(&c->table, memory_order_relaxed);
    int64_t n = 0, cap = c->used > 0 ? c->used : 1;
    *keys = (void **)TSC_MALLOC((size_t)cap * sizeof(void *));
    *cells = (int64_t *)TSC_MALLOC((size_t)cap * sizeof(int64_t));
    if (*keys == NULL || *cells == NULL) {
        TSC_FREE(*keys);
        TSC_FREE(*cells);
        return -1;
    }
    for (uint64_t i = 0; t != NULL && i <= t->mask && n < cap; i++) {
        void *k = atomic_load_explicit(&t->slots[i].key, memory_order_relaxed);
        if (k != NULL) {
            TSC_INCREF(k);
            (*keys)[n] = k;
            (*cells)[n++] = (int64_t)(t->slots[i].word >> 32);
        }
    }
    return n;
}

/* Copy every key (with a reference the caller drops) and its cell into
 * fresh TSC_MALLOC'ed arrays *keys and *cells (the caller frees them): the
 * number of keys, or -1 when out of memory (nothing copied). */
static int64_t
tsc_items(tsc_cache *c, void ***keys, int64_t **cells)
{
    TSC_LOCK(&c->lock);
    int64_t n = tsc_copy(c, keys, cells);
    TSC_UNLOCK(&c->lock);
    return n;
}

/* Drop every key and table; no other thread may use the cache any more. */
static void
tsc_free(tsc_cache *c)
{
    tsc_table *t = atomic_exchange_explicit(&c->table, NULL, memory_order_relaxed);
    if (t != NULL) {
        for (uint64_t i = 0; i <= t->mask; i++) {
            void *k = atomic_load_explicit(&t->slots[i].key, memory_order_relaxed);
            if (k != NULL) {
                TSC_DECREF(k);
            }
        }
    }
    while (t != NULL) {
        tsc_table *older = t->older;
        TSC_FREE(t);
        t = older;
    }
    c->used = 0;
}

#endif /* TALLIES_SHMCACHE_H */
