/*
 * Stress the lock-free key insert of shm:// segments (src/tallies/_c/_shmkeys.h)
 * from pthreads; build with -fsanitize=thread (tests/c/test_shm_keys_tsan.py
 * does), or at -O2.
 *
 * A directory of CAP entries over plain memory (what a segment maps).  Each
 * round, INSERTERS threads insert the same NKEYS keys (owners 0..2, texts of
 * several lengths, some of them prefixes of others) each in its own shuffled
 * order, all at once, while FINDERS threads look random keys up.  Every round
 * must hold:
 *   - every inserter got the same entry for a key (a key is inserted once:
 *     a racing insert of it finds the winner, never publishes a second copy);
 *   - that entry holds the key (owner, length, bytes) and is published; a
 *     finder that found a key found that same entry, its bytes complete
 *     (the release CAS that publishes a slot orders the entry's and the
 *     heap's writes before any reader that acquires the slot);
 *   - exactly NKEYS published entries; every other claimed entry abandoned;
 *   - after the round, a find of every key answers its entry.
 *
 * A process's key -> cell cache (src/tallies/_c/_shmcache.h) rides along:
 * each inserter then puts the entries it got into one cache shared by all
 * threads (half of them through an equal copy of the key, not the key
 * itself), starting from the smallest table so that it grows several times
 * in every round, while the finders look keys up in it (by the key or by its
 * copy).  It must hold:
 *   - a cache hit is the key's entry in the directory, and the word the hit
 *     read was written before the key was published in its slot (the slot's
 *     release store; ThreadSanitizer checks the ordering, the word being a
 *     plain field);
 *   - a listing of the cache (tsc_items, what `KeyedCells.cells` is built
 *     from), taken while it grows, holds only keys with their entries, each
 *     once, with a reference the lister drops;
 *   - after the round every key is in the cache, once, with its entry (and
 *     in its listing), and freeing the cache drops exactly the references it
 *     took.
 * The run prints "rounds R, keys K, abandoned A (races lost), found F, cached C"
 * and "consistent" or "INCONSISTENT: ..." (exit 1).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "_shmkeys.h"

/* The cache's keys: (owner, text), each as two equal objects. */
typedef struct {
    int64_t owner;
    const char *text;
    int64_t len;
} ckey;

static _Atomic long refs; /* references the cache holds */

static int
ckey_eq(const void *a, const void *b)
{
    const ckey *x = a, *y = b;
    return x->owner == y->owner && x->len == y->len &&
           memcmp(x->text, y->text, (size_t)x->len) == 0;
}

#define TSC_CONCURRENT 1
typedef pthread_mutex_t tsc_lock_t;
#define TSC_LOCK(l) pthread_mutex_lock(l)
#define TSC_UNLOCK(l) pthread_mutex_unlock(l)
#define TSC_EQ(a, b) ckey_eq((a), (b))
#define TSC_INCREF(k) ((void)(k), atomic_fetch_add(&refs, 1))
#define TSC_DECREF(k) ((void)(k), atomic_fetch_sub(&refs, 1))
#define TSC_MALLOC(n) malloc(n)
#define TSC_FREE(p) free(p)
#include "_shmcache.h"

#define NKEYS 600
#define CAP 1024
#define SLOTS 2048
#define INSERTERS 3
#define FINDERS 1
#define ROUNDS 40

static _Atomic uint32_t hash[SLOTS];
static char entries[CAP * TKD_ENTRY] __attribute__((aligned(64)));
static char heap[CAP * TKD_KEY_MAX];
static tl_cell used, heap_used;
static tkd_dir dir;

static char texts[NKEYS][40];
static int64_t lens[NKEYS], owners[NKEYS];
static int64_t got[INSERTERS][NKEYS];
static _Atomic int bad;
static _Atomic long found_total, abandoned_total;
static _Atomic int go, inserters_done;
static ckey keys[NKEYS], copies[NKEYS];
static uint64_t hashes[NKEYS];
static tsc_cache cache;
static _Atomic long cached_total;

static void
fail(const char *what, int key)
{
    if (atomic_exchange(&bad, 1) == 0) {
        printf("INCONSISTENT: %s (key %d)\n", what, key);
    }
}

static uint64_t
rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *
inserter(void *arg)
{
    int t = (int)(intptr_t)arg;
    int order[NKEYS];
    uint64_t seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(t + 1) + (uint64_t)time(NULL);
    for (int i = 0; i < NKEYS; i++) {
        order[i] = i;
    }
    for (int i = NKEYS - 1; i > 0; i--) {
        int j = (int)(rnd(&seed) % (uint64_t)(i + 1)), x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    while (!atomic_load(&go)) {
    }
    for (int i = 0; i < NKEYS; i++) {
        int k = order[i];
        got[t][k] = tkd_insert(&dir, owners[k], texts[k], lens[k], 0);
        if (got[t][k] < 0) {
            fail("an insert failed", k);
        }
    }
    /* then cache them (a separate pass: the lock would pace the inserts) */
    for (int i = 0; i < NKEYS; i++) {
        int k = order[i];
        if (got[t][k] >= 0 &&
            tsc_put(&cache, (k + t) % 2 ? &keys[k] : &copies[k], hashes[k], got[t][k]) < 0) {
            fail("a cache insert failed", k);
        }
    }
    atomic_fetch_add(&inserters_done, 1);
    return NULL;
}

/* Check a listing of the cache: its keys' cells are their entries, each key
 * once; `all`: every key is there.  Drops the listing's references. */
static void
check_items(int all)
{
    void **ks;
    int64_t *cs;
    int64_t n = tsc_items(&cache, &ks, &cs);
    if (n < 0) {
        fail("a listing of the cache failed", -1);
        return;
    }
    char seen[NKEYS] = {0};
    for (int64_t i = 0; i < n; i++) {
        ckey *c = (ckey *)ks[i];
        uintptr_t a = (uintptr_t)c, lo = (uintptr_t)copies;
        int k = (int)(a >= lo && a < (uintptr_t)(copies + NKEYS) ? c - copies : c - keys);
        if (k < 0 || k >= NKEYS || seen[k]++ ||
            cs[i] != tkd_find(&dir, owners[k], texts[k], lens[k])) {
            fail("a listing of the cache holds a wrong or doubled key", k);
        }
        TSC_DECREF(ks[i]);
    }
    if (all && n != NKEYS) {
        fail("a listing of the cache misses keys", -1);
    }
    free(ks);
    free(cs);
}

static void *
finder(void *arg)
{
    uint64_t seed = 12345 + (uint64_t)(intptr_t)arg;
    while (!atomic_load(&go)) {
    }
    while (atomic_load(&inserters_done) < INSERTERS) {
        int k = (int)(rnd(&seed) % NKEYS);
        if (seed % 64 == 0) {
            check_items(0);
        }
        int64_t hit = tsc_get(&cache, seed % 2 ? &keys[k] : &copies[k], hashes[k]);
        int64_t j = tkd_find(&dir, owners[k], texts[k], lens[k]);
        if (hit >= 0) {
            if (hit != j) {
                fail("the cache answered another entry", k);
            }
            atomic_fetch_add(&cached_total, 1);
        }
        if (j == TKD_ABSENT) {
            continue;
        }
        if (j < 0 || j >= CAP) {
            fail("a find answered garbage", k);
            continue;
        }
        /* what it found must be the key, complete (plain reads of the heap:
         * ThreadSanitizer checks that the publishing CAS ordered them) */
        int64_t off = atomic_load_explicit(tkd_word(&dir, j, 3), memory_order_relaxed);
        if (memcmp(heap + off, texts[k], (size_t)lens[k]) != 0) {
            fail("a found key's bytes are torn", k);
        }
        atomic_fetch_add(&found_total, 1);
        sched_yield();
    }
    return NULL;
}

static void
reset(void)
{
    for (int s = 0; s < SLOTS; s++) {
        atomic_store(&hash[s], 0);
    }
    memset(entries, 0, sizeof entries);
    memset(heap, 0, sizeof heap);
    atomic_store(&used, 0);
    atomic_store(&heap_used, 0);
    atomic_store(&inserters_done, 0);
    atomic_store(&go, 0);
    tsc_free(&cache);
    if (atomic_load(&refs) != 0) {
        fail("freeing the cache left references taken", -1);
    }
}

static void
check_round(void)
{
    int published = 0, abandoned = 0;
    int64_t n = atomic_load(&used);
    for (int64_t j = 0; j < n; j++) {
        int64_t st = atomic_load(tkd_word(&dir, j, 0));
        published += st == TKD_PUBLISHED;
        abandoned += st == TKD_ABANDONED;
        if (st != TKD_PUBLISHED && st != TKD_ABANDONED) {
            fail("an entry left neither published nor abandoned", (int)j);
        }
    }
    if (published != NKEYS) {
        printf("published %d of %d keys\n", published, NKEYS);
        fail("a key was published twice or not at all", -1);
    }
    atomic_fetch_add(&abandoned_total, abandoned);
    for (int k = 0; k < NKEYS; k++) {
        for (int t = 1; t < INSERTERS; t++) {
            if (got[t][k] != got[0][k]) {
                fail("two inserters got two entries for one key", k);
            }
        }
        int64_t j = got[0][k];
        if (j < 0 || tkd_find(&dir, owners[k], texts[k], lens[k]) != j ||
            tkd_matches(&dir, j, owners[k], texts[k], lens[k]) != 1 ||
            atomic_load(tkd_word(&dir, j, 0)) != TKD_PUBLISHED) {
            fail("a key's entry does not hold it", k);
        }
        if (tsc_get(&cache, &keys[k], hashes[k]) != j ||
            tsc_get(&cache, &copies[k], hashes[k]) != j) {
            fail("the cache does not hold a key's entry", k);
        }
    }
    if (cache.used != NKEYS || atomic_load(&refs) != NKEYS) {
        fail("the cache holds a key twice or not at all", -1);
    }
    check_items(1);
}

int
main(void)
{
    dir.hash = hash;
    dir.slots = SLOTS;
    dir.entries = entries;
    dir.cap = CAP;
    dir.heap = heap;
    dir.heap_cap = sizeof heap;
    dir.used = &used;
    dir.heap_used = &heap_used;
    dir.reserve = NULL;
    dir.written = NULL;
    for (int k = 0; k < NKEYS; k++) {
        /* "k17", "k17-x...": lengths 2..30, prefixes of one another */
        int n = snprintf(texts[k], sizeof texts[k], "k%d%.*s", k / 3, (k % 5) * 6,
                         "-xxxxx-yyyyy-zzzzz-wwwww-vvvvv");
        lens[k] = n;
        owners[k] = k % 3;
        keys[k] = (ckey){owners[k], texts[k], n};
        copies[k] = keys[k];
        hashes[k] = tkd_hash(owners[k], texts[k], n);
    }
    pthread_mutex_init(&cache.lock, NULL);
    int rounds;
    for (rounds = 0; rounds < ROUNDS && !atomic_load(&bad); rounds++) {
        reset();
        pthread_t th[INSERTERS + FINDERS];
        for (int t = 0; t < INSERTERS; t++) {
            pthread_create(&th[t], NULL, inserter, (void *)(intptr_t)t);
        }
        for (int t = 0; t < FINDERS; t++) {
            pthread_create(&th[INSERTERS + t], NULL, finder, (void *)(intptr_t)t);
        }
        atomic_store(&go, 1);
        for (int t = 0; t < INSERTERS + FINDERS; t++) {
            pthread_join(th[t], NULL);
        }
        check_round();
    }
    tsc_free(&cache);
    printf("rounds %d, keys %d, abandoned %ld (races lost), found %ld, cached %ld\n", rounds,
           NKEYS, atomic_load(&abandoned_total), atomic_load(&found_total),
           atomic_load(&cached_total));
    if (atomic_load(&bad)) {
        return 1;
    }
    printf("consistent\n");
    return 0;
}
