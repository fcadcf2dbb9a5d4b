/*
 * Stress KeyedCounter's table (src/tallies/_c/_ktable.h, concurrent mode)
 * from pthreads; build with -fsanitize=thread (tests/c/test_keyed_protocol.py
 * does).
 *
 * Keys are small structs with an id.  Each id has two distinct key objects,
 * so lookups go through the equality callback (not only identity), and ids
 * collide on purpose (hash = id % 5), so probes are long and equal-hash keys
 * are common.  Half of the ids "cache their hash" (as exact str do in the
 * extension), the other half do not, so tables switch from the 16-byte to the
 * 24-byte entry layout while threads count.  Some keys decide equality in
 * TKT_FAST_EQ, others only through TKT_EQ, which the table calls outside its
 * regions (and re-validates after).
 *
 * Threads:
 *   writers   add 1..4 to random keys (inserting them when absent);
 *   removers  pop keys, prune them (only_if 1 and 2), exchange counts with
 *             0, and now and then clear everything: all of these move counts
 *             out, into `taken`, and make entries dead, so the table resizes
 *             (compacts, grows, changes layout) again and again while the
 *             writers count;
 *   a reader  takes snapshots and checks that no id appears twice (a torn
 *             table or a racy insertion would show as a duplicate) and no
 *             count is negative (every amount is positive).
 * Old tables go to a graveyard freed at the end, so a broken protocol shows as
 * a wrong total rather than as a crash.  Writers pause now and then inside a
 * region (TKT_REGION_HOOK), and go on until at least MIN_RETIRED tables were
 * replaced, so resizes and removals really run during increments.
 *
 * Hot keys: three of the writers put 3 adds in 4 on ids 0 and 1, so that
 * threads really collide on one count: its CAS fails and the key inflates
 * into hot cells (the "hot keys" section of _ktable.h), which the removers'
 * removals, exchanges and clears and the resizes must then fold exactly.
 * Hot cells here fold at 16 (TKT_HOT_CELL_MAX), so cells fill up and fold
 * all the time while other threads add to them; now and then those writers
 * also add more than any hot cell may hold (2**53 + k), which folds at once.  The run counts inflations (TKT_INFLATE_HOOK)
 * and fails unless some happened.
 *
 * At the end, for every id: its count left in the table + everything taken
 * == everything the writers added ("balanced"), and every key object's
 * reference count is back to 0 after the map is freed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int id;
    int slow_eq;
    _Atomic long refs;
} skey;

#define NIDS 24
static skey keys[NIDS][2];

static _Atomic long eq_calls;

static int
key_eq(void *a, void *b)
{
    atomic_fetch_add_explicit(&eq_calls, 1, memory_order_relaxed);
    return ((skey *)a)->id == ((skey *)b)->id;
}

static int
key_fast_eq(void *a, void *b)
{
    skey *x = a, *y = b;
    if (x->slow_eq || y->slow_eq) {
        return -2;
    }
    return x->id == y->id;
}

/* The graveyard: tables are freed at exit only. */
static pthread_mutex_t grave_lock = PTHREAD_MUTEX_INITIALIZER;
static void **grave;
static long grave_n, grave_cap;

static void
bury(void *p)
{
    pthread_mutex_lock(&grave_lock);
    if (grave_n == grave_cap) {
        grave_cap = grave_cap ? grave_cap * 2 : 1024;
        grave = realloc(grave, (size_t)grave_cap * sizeof(void *));
        if (grave == NULL) {
            abort();
        }
    }
    grave[grave_n++] = p;
    pthread_mutex_unlock(&grave_lock);
}

static long
graveyard_size(void)
{
    pthread_mutex_lock(&grave_lock);
    long n = grave_n;
    pthread_mutex_unlock(&grave_lock);
    return n;
}

#define TKT_CONCURRENT 1
typedef pthread_mutex_t tkt_lock_t;
#define TKT_LOCK(l) pthread_mutex_lock(l)
#define TKT_UNLOCK(l) pthread_mutex_unlock(l)
#define TKT_EQ(a, b) key_eq((a), (b))
#define TKT_FAST_EQ(a, b) key_fast_eq((a), (b))
#define TKT_INCREF(k) atomic_fetch_add_explicit(&((skey *)(k))->refs, 1, memory_order_relaxed)
#define TKT_DECREF(k) atomic_fetch_sub_explicit(&((skey *)(k))->refs, 1, memory_order_relaxed)
#define TKT_CACHES_HASH(k) (((skey *)(k))->id % 2 == 0)
#define TKT_CACHED_HASH(k) (((skey *)(k))->id % 5)
#define TKT_FREE_TABLE(p) bury(p)
#define TKT_FREE_HOT(p) bury(p)
/* A hot cell folds once it would pass 16 (in the extension: 2**53), so the
 * fold path runs a hundred times or more per run, during other threads' adds. */
#define TKT_HOT_CELL_MAX 16
static _Atomic long inflations;
#define TKT_INFLATE_HOOK() atomic_fetch_add_explicit(&inflations, 1, memory_order_relaxed)
static _Atomic long folds;
/* A fold pauses after reading the cells: with the map closed nobody can add
 * meanwhile; a fold that did not close it would lose what they add. */
#define TKT_FOLD_HOOK() \
    (atomic_fetch_add_explicit(&folds, 1, memory_order_relaxed), (void)sched_yield())
/* Now and then a writer pauses between finding its slot and adding to it:
 * the window in which a broken protocol lets a resize move the count away. */
static _Thread_local unsigned hook_n;
#define TKT_REGION_HOOK() ((++hook_n & 31) == 0 ? (void)sched_yield() : (void)0)

#include "_ktable.h"

#define WRITERS 4
#define REMOVERS 2
#define OPS 30000
#define MIN_RETIRED 20 /* writers go on (up to 4 * OPS) until this many tables were replaced */

static tkt_map map;
static _Atomic int64_t added[NIDS];
static _Atomic int64_t taken[NIDS];
static _Atomic int bad_snapshot;
static _Atomic int writers_done;

static unsigned
next_rand(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

#define BIG ((int64_t)1 << 53) /* more than any hot cell holds: the fold path */

static void *
writer(void *arg)
{
    long me = (long)(uintptr_t)arg;
    int hot = me <= 3; /* writers 1-3 collide on ids 0 and 1 */
    unsigned s = (unsigned)me * 2654435761u + 1;
    for (long i = 0; i < OPS || (i < 4 * OPS && graveyard_size() < MIN_RETIRED); i++) {
        unsigned r = next_rand(&s);
        skey *k = hot && (i & 3) ? &keys[(r >> 3) & 1][(r >> 8) & 1] : &keys[r % NIDS][(r >> 8) & 1];
        int64_t n = 1 + (int64_t)((r >> 12) & 3), out;
        if (hot && (i & 4095) == 4095) {
            n += BIG; /* at most 3 * 4 * OPS / 4096 of these: the sums stay in int64 */
        }
        int rc = tkt_add(&map, k, k->id % 5, n, 0, &out, NULL);
        if (rc != TL_OK) {
            printf("FAIL add returned %d\n", rc);
            abort();
        }
        atomic_fetch_add_explicit(&added[k->id], n, memory_order_relaxed);
    }
    atomic_fetch_add(&writers_done, 1);
    return NULL;
}

static void
take_all(tkt_table *t)
{
    if (t == NULL) {
        return;
    }
    int64_t count = atomic_load_explicit(&t->nentries, memory_order_relaxed);
    for (int64_t ix = 0; ix < count; ix++) {
        skey *k = atomic_load_explicit(&TKT_KEYS(t)[ix], memory_order_relaxed);
        if (k != NULL) {
            atomic_fetch_add(&taken[k->id], tkt_count_at(t, ix));
        }
    }
    tkt_table_release(t);
}

static void *
remover(void *arg)
{
    unsigned s = (unsigned)(uintptr_t)arg * 40503u + 7;
    while (atomic_load(&writers_done) < WRITERS) {
        unsigned r = next_rand(&s);
        skey *k = &keys[r % NIDS][(r >> 8) & 1];
        int64_t v = 0;
        void *removed = NULL;
        int rc;
        switch ((r >> 12) % 8) {
        case 0:
        case 1:
        case 2:
            rc = tkt_remove(&map, k, k->id % 5, 0, &v, &removed);
            break;
        case 3:
            rc = tkt_remove(&map, k, k->id % 5, 1 + (int)((r >> 16) & 1), &v, &removed);
            break;
        case 4:
        case 5:
            rc = tkt_exchange(&map, k, k->id % 5, 0, 0, &v);
            break;
        case 6:
            rc = tkt_get(&map, k, k->id % 5, 0, 0, &v);
            v = 0; /* a read takes nothing */
            break;
        default:
            if ((r >> 16) % 64 == 0) {
                take_all(tkt_detach_all(&map));
            }
            continue;
        }
        if (rc < 0) {
            printf("FAIL remove/exchange returned %d\n", rc);
            abort();
        }
        if (removed != NULL) {
            TKT_DECREF(removed);
        }
        atomic_fetch_add(&taken[k->id], v);
    }
    return NULL;
}

static void *
reader(void *arg)
{
    (void)arg;
    void *ks[4 * NIDS];
    int64_t cs[4 * NIDS];
    while (atomic_load(&writers_done) < WRITERS) {
        int64_t n = tkt_snapshot(&map, ks, cs, 4 * NIDS, 0, 1);
        if (n < 0) {
            printf("FAIL snapshot wanted %lld slots\n", (long long)(-n - 1));
            atomic_store(&bad_snapshot, 1);
            return NULL;
        }
        int seen[NIDS] = {0};
        for (int64_t i = 0; i < n; i++) {
            skey *k = ks[i];
            if (seen[k->id]++ || cs[i] < 0) {
                printf("FAIL snapshot: id %d twice or negative count %lld\n", k->id,
                       (long long)cs[i]);
                atomic_store(&bad_snapshot, 1);
            }
            TKT_DECREF(k);
        }
        sched_yield();
    }
    return NULL;
}

int
main(void)
{
    for (int id = 0; id < NIDS; id++) {
        for (int j = 0; j < 2; j++) {
            keys[id][j].id = id;
            keys[id][j].slow_eq = (id % 3 == 0);
            atomic_init(&keys[id][j].refs, 0);
        }
    }
    tkt_set_cpus(4); /* 4 hot cells per key, counts in >= 4 blocks */
    if (tkt_map_init(&map) != 0) {
        return 2;
    }
    pthread_t w[WRITERS], rm[REMOVERS], rd;
    for (long i = 0; i < WRITERS; i++) {
        pthread_create(&w[i], NULL, writer, (void *)(i + 1));
    }
    for (long i = 0; i < REMOVERS; i++) {
        pthread_create(&rm[i], NULL, remover, (void *)(i + 1));
    }
    pthread_create(&rd, NULL, reader, NULL);
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(w[i], NULL);
    }
    for (int i = 0; i < REMOVERS; i++) {
        pthread_join(rm[i], NULL);
    }
    pthread_join(rd, NULL);

    int ok = !atomic_load(&bad_snapshot);
    int64_t total_added = 0, total_left = 0;
    for (int id = 0; id < NIDS; id++) {
        int64_t left = 0;
        tkt_get(&map, &keys[id][0], id % 5, 0, 0, &left);
        total_added += added[id];
        total_left += left;
        if (left + taken[id] != added[id]) {
            printf("LOST OR DOUBLE-COUNTED: id %d added %lld, taken %lld, left %lld\n", id,
                   (long long)added[id], (long long)taken[id], (long long)left);
            ok = 0;
        }
    }
    tkt_map_free(&map);
    for (int id = 0; id < NIDS; id++) {
        for (int j = 0; j < 2; j++) {
            if (atomic_load(&keys[id][j].refs) != 0) {
                printf("FAIL key %d/%d holds %ld references after free\n", id, j,
                       atomic_load(&keys[id][j].refs));
                ok = 0;
            }
        }
    }
    printf("tables retired %ld, eq calls %ld, hot-key inflations %ld, folds %ld, added %lld, "
           "left at the end %lld\n",
           grave_n, (long)atomic_load(&eq_calls), (long)atomic_load(&inflations),
           (long)atomic_load(&folds),
           (long long)total_added, (long long)total_left);
    if (atomic_load(&inflations) == 0) {
        printf("FAIL no key inflated: the hot-key paths were not exercised\n");
        ok = 0;
    }
    for (long i = 0; i < grave_n; i++) {
        free(grave[i]);
    }
    free(grave);
    if (!ok) {
        return 1;
    }
    printf("balanced\n");
    return 0;
}
