/*
 * _shmkeys.h: the key directory of a shm:// segment, inserted into without a
 * lock (used by shm.c; stressed from pthreads by tests/c/stress_shm_keys.c).
 * No Python here: the memory is any mapping, the processes any threads.
 *
 * What it is
 * ----------
 * Three regions of the segment (layout version 3, see stores/_shm_segment.py):
 *
 *   hash     `slots` uint32 words (a power of two, at least 2 * keys_cap):
 *            0 = empty, else (1 + the index of a published entry) in the low
 *            25 bits and 7 bits of the key's hash above them (a probe skips
 *            most other keys without reading their entries).  Open
 *            addressing, linear probing from FNV-1a(owner, key bytes).
 *   entries  keys_cap entries of 32 bytes, four int64 words:
 *              state   0 being written (or its writer died), 1 written,
 *                      2 published, 3 abandoned (lost a race; never used)
 *              owner   the name index of the keyed counter
 *              len     key length in bytes | (ring unit + 1) << 32 (keyed
 *                      rates; 0 otherwise)
 *              heap    byte offset of the key's UTF-8 in the heap
 *            Entry j owns cell names_cap + j in the archive and every slab.
 *   heap     the keys' bytes, each at an 8-aligned offset.
 *
 * and two header words: `used` (entries handed out) and `heap_used` (bytes).
 *
 * Insert, and why it is crash-safe
 * --------------------------------
 *   1. find: probe from the key's slot; a slot is read with an acquire load,
 *      and its entry is immutable once published, so comparing owner, length
 *      and bytes is safe.  Found: done, nothing written.
 *   2. claim entry j (CAS on `used`, refusing past keys_cap) and heap bytes
 *      (CAS on `heap_used`); write owner, len, heap offset and the bytes;
 *      state := 1 (release).
 *   3. CAS the first empty slot of the probe sequence from 0 to j + 1
 *      (release): this is the one publishing step.  If the CAS fails, read
 *      what won the slot: the same key (a racing insert of it) means our entry
 *      is abandoned (state := 3) and the winner's cell is the answer; another
 *      key means probe on.
 *   4. state := 2 (a hint for readers that enumerate entries, see below).
 *
 * A writer killed before step 3 leaves an entry nobody can find (state 0 or
 * 1, a wasted cell whose count is 0 in every slab): the key is absent.  Killed
 * after step 3 the key is complete: everything it points at was written
 * before the release CAS.  The count is exact either way: a writer adds to
 * the key's cell only after the insert returns.  Entries are never removed,
 * so a slot never changes again once set, and the probe sequence of a key
 * never skips a published copy of it.
 *
 * Enumerating (keys(), snapshot(), stores/_shm_segment.py) reads entries by
 * index: state 2 is published; state 1 is published exactly when a find of
 * its key returns this entry (a writer died between steps 3 and 4, or is
 * there now); 0 and 3 are not (yet) keys.
 *
 * Everything read from the segment is bounds-checked before it is used as an
 * index or an offset: a damaged directory is reported (TKD_CORRUPT), never
 * followed outside the mapping.
 */
#ifndef TALLIES_SHMKEYS_H
#define TALLIES_SHMKEYS_H

#include "_cells.h"

#define TKD_ENTRY 32
#define TKD_KEY_MAX 224
#define TKD_WRITING 0
#define TKD_WRITTEN 1
#define TKD_PUBLISHED 2
#define TKD_ABANDONED 3
#define TKD_INDEX_BITS 25 /* keys_cap <= 2**24 */
#define TKD_INDEX_MASK ((UINT32_C(1) << TKD_INDEX_BITS) - 1)
#define TKD_TAG(h) ((uint32_t)((h) >> 57) << TKD_INDEX_BITS)

/* Results of tkd_find / tkd_insert (>= 0: an entry index). */
#define TKD_ABSENT (-1)
#define TKD_CORRUPT (-2)
#define TKD_FULL_KEYS (-3)
#define TKD_FULL_HEAP (-4)
#define TKD_NO_ROOM (-5) /* reserve() refused (the file system is full) */

/* Test hooks: a point of the insert where a process may be made to die. */
#ifndef TKD_CRASH
#define TKD_CRASH(d, point) ((void)0)
#endif
enum { TKD_AT_CLAIMED = 1, TKD_AT_WRITTEN = 2, TKD_AT_PUBLISHED = 3 };

typedef struct tkd_dir tkd_dir;
struct tkd_dir {
    _Atomic uint32_t *hash;
    uint64_t slots; /* a power of two */
    char *entries;
    int64_t cap;
    char *heap;
    int64_t heap_cap;
    tl_cell *used;
    tl_cell *heap_used;
    /* Called before `len` bytes at `addr` are first written: make sure the
     * memory behind them exists (0, or -1 to refuse).  May be NULL. */
    int (*reserve)(tkd_dir *d, void *addr, int64_t len);
    /* May the hash word at `addr` have been written (else it reads as 0
     * without being loaded: the page behind it may not exist)?  May be NULL. */
    int (*written)(tkd_dir *d, const void *addr);
    void *ctx;
};

static inline tl_cell *
tkd_word(const tkd_dir *d, int64_t j, int w)
{
    return (tl_cell *)(d->entries + j * TKD_ENTRY + w * 8);
}

static inline uint64_t
tkd_hash(int64_t owner, const char *key, int64_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < 8; i++) {
        h = (h ^ (uint8_t)((uint64_t)owner >> (8 * i))) * 1099511628211ULL;
    }
    for (int64_t i = 0; i < len; i++) {
        h = (h ^ (uint8_t)key[i]) * 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

/* Does published entry j hold (owner, key)?  1, 0, or TKD_CORRUPT. */
static inline int
tkd_matches(const tkd_dir *d, int64_t j, int64_t owner, const char *key, int64_t len)
{
    if (tl_load(tkd_word(d, j, 1)) != owner) {
        return 0;
    }
    int64_t elen = tl_load(tkd_word(d, j, 2)) & 0xffffffff;
    int64_t off = tl_load(tkd_word(d, j, 3));
    if (elen > TKD_KEY_MAX || off < 0 || off > d->heap_cap - elen) {
        return TKD_CORRUPT;
    }
    return elen == len && memcmp(d->heap + off, key, (size_t)len) == 0;
}

/* The entry that the non-empty hash slot word v names, when that entry is
 * (owner, key): its index; TKD_ABSENT when it is another key's; TKD_CORRUPT
 * when v or the entry is damaged. */
static inline int64_t
tkd_slot_entry(const tkd_dir *d, uint32_t v, uint64_t h, int64_t owner, const char *key,
               int64_t len)
{
    if ((v & ~TKD_INDEX_MASK) != TKD_TAG(h)) {
        return TKD_ABSENT;
    }
    int64_t j = (int64_t)(v & TKD_INDEX_MASK) - 1;
    if (j >= d->cap) {
        return TKD_CORRUPT;
    }
    int m = tkd_matches(d, j, owner, key, len);
    return m == 0 ? TKD_ABSENT : m == 1 ? j : TKD_CORRUPT;
}

/* Probe for (owner, key) from its slot.  Returns the entry index, or
 * TKD_ABSENT with *empty the first empty slot (or slots when none), or
 * TKD_CORRUPT. */
static inline int64_t
tkd_probe(const tkd_dir *d, int64_t owner, const char *key, int64_t len, uint64_t h,
          uint64_t *empty)
{
    uint64_t mask = d->slots - 1;
    for (uint64_t i = 0; i < d->slots; i++) {
        uint64_t s = (h + i) & mask;
        uint32_t v = d->written != NULL && !d->written((tkd_dir *)d, (const void *)&d->hash[s])
                         ? 0
                         : atomic_load_explicit(&d->hash[s], memory_order_acquire);
        if (v == 0) {
            *empty = s;
            return TKD_ABSENT;
        }
        int64_t j = tkd_slot_entry(d, v, h, owner, key, len);
        if (j != TKD_ABSENT) {
            return j;
        }
    }
    *empty = d->slots;
    return TKD_ABSENT;
}

static inline int64_t
tkd_find(const tkd_dir *d, int64_t owner, const char *key, int64_t len)
{
    uint64_t empty = d->slots;
    return tkd_probe(d, owner, key, len, tkd_hash(owner, key, len), &empty);
}

/* Claim one more of `word` (used: 1; heap_used: `n`) below `cap`: the old
 * value, or -1 when it would pass cap (nothing claimed). */
static inline int64_t
tkd_claim(tl_cell *word, int64_t n, int64_t cap)
{
    int64_t old = tl_load(word);
    for (;;) {
        if (old < 0 || old > cap - n) {
            return -1;
        }
        if (atomic_compare_exchange_weak_explicit(word, &old, old + n, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            return old;
        }
    }
}

/* The entry of (owner, key), inserting it (with `ring1` in the high half of
 * its len word) if absent: an entry index >= 0 or a TKD_ code. */
static inline int64_t
tkd_insert(tkd_dir *d, int64_t owner, const char *key, int64_t len, int64_t ring1)
{
    uint64_t h = tkd_hash(owner, key, len), empty = d->slots;
    int64_t j = tkd_probe(d, owner, key, len, h, &empty);
    if (j != TKD_ABSENT) {
        return j;
    }
    int64_t need = (len + 7) & ~(int64_t)7;
    j = tkd_claim(d->used, 1, d->cap);
    if (j < 0) {
        return TKD_FULL_KEYS;
    }
    /* From here a refusal wastes entry j (state 0: never a key). */
    int64_t off = tkd_claim(d->heap_used, need, d->heap_cap);
    if (off < 0) {
        return TKD_FULL_HEAP;
    }
    if (d->reserve != NULL && (d->reserve(d, tkd_word(d, j, 0), TKD_ENTRY) < 0 ||
                               (len > 0 && d->reserve(d, d->heap + off, len) < 0))) {
        return TKD_NO_ROOM;
    }
    TKD_CRASH(d, TKD_AT_CLAIMED);
    memcpy(d->heap + off, key, (size_t)len);
    atomic_store_explicit(tkd_word(d, j, 1), owner, memory_order_relaxed);
    atomic_store_explicit(tkd_word(d, j, 2), len | (ring1 << 32), memory_order_relaxed);
    atomic_store_explicit(tkd_word(d, j, 3), off, memory_order_relaxed);
    atomic_store_explicit(tkd_word(d, j, 0), TKD_WRITTEN, memory_order_release);
    TKD_CRASH(d, TKD_AT_WRITTEN);
    uint64_t mask = d->slots - 1;
    for (uint64_t s = empty, i = 0; empty < d->slots && i < d->slots; i++, s = (s + 1) & mask) {
        uint32_t expected = 0;
        if (d->reserve != NULL && d->reserve(d, (void *)&d->hash[s], 4) < 0) {
            atomic_store_explicit(tkd_word(d, j, 0), TKD_ABANDONED, memory_order_release);
            return TKD_NO_ROOM;
        }
        if (atomic_compare_exchange_strong_explicit(&d->hash[s], &expected,
                                                    (uint32_t)(j + 1) | TKD_TAG(h),
                                                    memory_order_release,
                                                    memory_order_acquire)) {
            TKD_CRASH(d, TKD_AT_PUBLISHED);
            atomic_store_explicit(tkd_word(d, j, 0), TKD_PUBLISHED, memory_order_release);
            return j;
        }
        /* Another writer published (owner, key) first (or the slot is damaged):
         * ours is abandoned. */
        int64_t other = tkd_slot_entry(d, expected, h, owner, key, len);
        if (other != TKD_ABSENT) {
            atomic_store_explicit(tkd_word(d, j, 0), TKD_ABANDONED, memory_order_release);
            return other;
        }
    }
    /* No empty slot: impossible while slots >= 2 * cap, unless damaged. */
    atomic_store_explicit(tkd_word(d, j, 0), TKD_ABANDONED, memory_order_release);
    return TKD_CORRUPT;
}

#endif /* TALLIES_SHMKEYS_H */
