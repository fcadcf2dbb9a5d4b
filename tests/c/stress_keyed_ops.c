/*
 * Stress the snapshots under KeyedCounter's binary operations
 * (src/tallies/_c/_ktable.h, "snapshots: the binary operations": tkt_freeze,
 * tkt_operand_*, tkt_join) in concurrent mode, from pthreads; build with
 * -fsanitize=thread (tests/c/test_keyed_ops_protocol.py does), or at -O2.
 *
 * Two maps, as `left` and `right` of `left | right`, `left + right` and
 * `left - right`:
 *   right: x -> 5, y -> -5, b -> 1 (never changed);
 *   left:  a -> 1, b -> 1 (b a distinct key object of the same id, compared
 *          through TKT_EQ), and x and y, which the churners keep at 0 or
 *          absent (insert at 0, remove, again and again), while they also
 *          insert and remove noise keys so that the table compacts and
 *          resizes under the operations.
 * Whichever instant each operand is read at, every result must hold
 *   (left | right)[x] == 5, (left + right)[x] == 5, (left - right)[y] == 5,
 *   and a: 1 (| and +), b: 1 (|), 2 (+), absent (-),
 * since x and y count 0 in left either way (the run reports how many left
 * snapshots held x, so that both cases are seen to happen).  The joiners freeze both maps and
 * join them, computing the three results in one pass; between the join's two
 * passes they yield (TKT_JOIN_HOOK), the window in which a join that read
 * the live left map instead of its snapshot would find x present after the
 * snapshot missed it, and drop right's count (the bug of issue 27).  At the
 * end every key object's reference count must be back to 0 (snapshots hold
 * their keys and give them back).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int id;
    int slow_eq;
    _Atomic long refs;
} skey;

enum { A = 0, B = 1, X = 2, Y = 3, NOISE = 4, NIDS = 12 };
static skey keys[NIDS][2]; /* [id][0]: left's objects, [id][1]: right's */

static int
key_eq(void *a, void *b)
{
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

#define TKT_CONCURRENT 1
typedef pthread_mutex_t tkt_lock_t;
#define TKT_LOCK(l) pthread_mutex_lock(l)
#define TKT_UNLOCK(l) pthread_mutex_unlock(l)
#define TKT_EQ(a, b) key_eq((a), (b))
#define TKT_FAST_EQ(a, b) key_fast_eq((a), (b))
#define TKT_INCREF(k) atomic_fetch_add_explicit(&((skey *)(k))->refs, 1, memory_order_relaxed)
#define TKT_DECREF(k) atomic_fetch_sub_explicit(&((skey *)(k))->refs, 1, memory_order_relaxed)
#define TKT_CACHES_HASH(k) (((skey *)(k))->id % 2 == 0)
#define TKT_CACHED_HASH(k) (((skey *)(k))->id % 3)
/* Between the join's passes: let the churners move x and y. */
#define TKT_JOIN_HOOK() sched_yield()

#include "_ktable.h"

#define HASH(id) ((id) % 3)
#define CHURNERS 2
#define JOINERS 2
#define JOINS 20000

static tkt_map left, right;
static _Atomic int joiners_done;
static _Atomic long inconsistent, joins_done, x_seen;

static void
must(int ok, const char *what)
{
    if (!ok) {
        printf("FAIL %s\n", what);
        abort();
    }
}

static void
drop(void *removed)
{
    if (removed != NULL) {
        TKT_DECREF(removed);
    }
}

static void *
churner(void *arg)
{
    unsigned s = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    while (atomic_load(&joiners_done) < JOINERS) {
        int64_t old;
        void *removed = NULL;
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        for (int id = X; id <= Y; id++) {
            skey *k = &keys[id][0];
            must(tkt_exchange(&left, k, HASH(id), 0, 1, &old) >= 0, "exchange");
            if (s & (1u << id)) {
                sched_yield(); /* now and then, let the joiners see it present */
            }
            removed = NULL;
            must(tkt_remove(&left, k, HASH(id), 0, &old, &removed) >= 0, "remove");
            drop(removed);
            if (s & (16u << id)) {
                sched_yield(); /* ... or absent */
            }
        }
        int id = NOISE + (int)(s % (NIDS - NOISE));
        skey *k = &keys[id][0];
        if (s & 64) {
            must(tkt_add(&left, k, HASH(id), 1, 0, &old, NULL) == TL_OK, "noise");
        }
        else {
            removed = NULL;
            must(tkt_remove(&left, k, HASH(id), 0, &old, &removed) >= 0, "noise remove");
            drop(removed);
        }
    }
    return NULL;
}

/* The three results, key by key, as keyed.c's combine_each computes them. */
typedef struct {
    int64_t or_[NIDS], add[NIDS], sub[NIDS];
    int x_in_left; /* the left snapshot held x (at 0) */
} results;

static int
each(void *ctx, void *key, tkt_hash_t hash, int64_t c, int64_t oc, int where)
{
    results *r = ctx;
    int id = ((skey *)key)->id;
    (void)hash;
    if (where == TKT_ONLY_B) {
        r->or_[id] = oc > 0 ? oc : 0;
        r->add[id] = oc > 0 ? oc : 0;
        r->sub[id] = oc < 0 ? -oc : 0;
        return 0;
    }
    r->x_in_left |= id == X;
    r->or_[id] = c >= oc ? c : oc;
    r->add[id] = c + oc;
    r->sub[id] = c - oc;
    return 0;
}

static void *
joiner(void *arg)
{
    (void)arg;
    for (int i = 0; i < JOINS; i++) {
        tkt_operand l, r;
        must(tkt_operand_init(&l, &left, 0) == 0, "freeze left");
        must(tkt_operand_init(&r, &right, 0) == 0, "freeze right");
        results res = {{0}, {0}, {0}, 0};
        must(tkt_join(&l, &r, 1, each, &res) == 0, "join");
        tkt_operand_free(&l);
        tkt_operand_free(&r);
        int ok = res.or_[X] == 5 && res.add[X] == 5 && res.sub[Y] == 5 && res.or_[A] == 1 &&
                 res.add[A] == 1 && res.or_[B] == 1 && res.add[B] == 2 && res.sub[B] == 0;
        if (!ok) {
            if (atomic_fetch_add(&inconsistent, 1) < 5) {
                printf("INCONSISTENT: (l|r)[x] %lld, (l+r)[x] %lld, (l-r)[y] %lld\n",
                       (long long)res.or_[X], (long long)res.add[X], (long long)res.sub[Y]);
            }
        }
        atomic_fetch_add(&joins_done, 1);
        atomic_fetch_add(&x_seen, res.x_in_left);
    }
    atomic_fetch_add(&joiners_done, 1);
    return NULL;
}

int
main(void)
{
    for (int id = 0; id < NIDS; id++) {
        for (int j = 0; j < 2; j++) {
            keys[id][j].id = id;
            keys[id][j].slow_eq = id == B;
            atomic_init(&keys[id][j].refs, 0);
        }
    }
    tkt_set_cpus(4);
    if (tkt_map_init(&left) != 0 || tkt_map_init(&right) != 0) {
        return 2;
    }
    int64_t old;
    must(tkt_exchange(&left, &keys[A][0], HASH(A), 1, 1, &old) >= 0, "setup");
    must(tkt_exchange(&left, &keys[B][0], HASH(B), 1, 1, &old) >= 0, "setup");
    must(tkt_exchange(&right, &keys[X][1], HASH(X), 5, 1, &old) >= 0, "setup");
    must(tkt_exchange(&right, &keys[Y][1], HASH(Y), -5, 1, &old) >= 0, "setup");
    must(tkt_exchange(&right, &keys[B][1], HASH(B), 1, 1, &old) >= 0, "setup");
    pthread_t c[CHURNERS], j[JOINERS];
    for (long i = 0; i < CHURNERS; i++) {
        pthread_create(&c[i], NULL, churner, (void *)(i + 1));
    }
    for (long i = 0; i < JOINERS; i++) {
        pthread_create(&j[i], NULL, joiner, (void *)(i + 1));
    }
    for (int i = 0; i < JOINERS; i++) {
        pthread_join(j[i], NULL);
    }
    for (int i = 0; i < CHURNERS; i++) {
        pthread_join(c[i], NULL);
    }
    int ok = atomic_load(&inconsistent) == 0;
    void *rk[8];
    int64_t rc[8];
    int64_t n = tkt_snapshot(&right, rk, rc, 8, 0, 1); /* the joins left right alone */
    if (n != 3 || rc[0] != 5 || rc[1] != -5 || rc[2] != 1) {
        printf("FAIL right changed: %lld entries\n", (long long)n);
        ok = 0;
    }
    for (int64_t i = 0; i < n; i++) {
        TKT_DECREF(rk[i]);
    }
    tkt_map_free(&left);
    tkt_map_free(&right);
    for (int id = 0; id < NIDS; id++) {
        for (int k = 0; k < 2; k++) {
            if (atomic_load(&keys[id][k].refs) != 0) {
                printf("FAIL key %d/%d holds %ld references after free\n", id, k,
                       atomic_load(&keys[id][k].refs));
                ok = 0;
            }
        }
    }
    printf("joins %ld, x in the left snapshot %ld, inconsistent %ld\n",
           (long)atomic_load(&joins_done), (long)atomic_load(&x_seen),
           (long)atomic_load(&inconsistent));
    if (!ok) {
        return 1;
    }
    printf("consistent\n");
    return 0;
}
