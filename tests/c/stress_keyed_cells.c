/*
 * Stress the key-removal protocol of src/tallies/_c/_keyed_cells.h from pthreads
 * (build with -fsanitize=thread; tests/c/test_keyed_cells_protocol.py does).
 *
 * A mock "dict" stands in for CPython's: NKEYS slots, each mapping a key to
 * a cell pointer, every slot operation (lookup, setdefault, delete) atomic
 * under one mutex, as dict operations are.  Cells are never freed during the
 * run (CPython keeps a cell alive while a thread holds a reference to it).
 *
 * Writers do what KeyedCore's increment does without a GIL: look up (insert a
 * fresh cell when absent), tlk_add, and on TLK_RETRY look up again.  Removers
 * do what pop does: retire, delete from the map, close, wait, take.  Some
 * removers abandon after retiring (as when a key's __eq__ raises during the
 * deletion) and unretire.  Resetters exchange a found cell's value with 0.
 *
 * At the end, for every key: what is left in its cell + everything taken by
 * pops and resets == everything writers added.  And every closed cell holds 0
 * with no writer inside: nothing was applied to a cell after it left the map.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "_keyed_cells.h"

#define NKEYS 4
#define WRITERS 6
#define REMOVERS 2
#define RESETTERS 1
#define OPS 40000
#define POOL (NKEYS + (REMOVERS + WRITERS) * OPS)

static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static tlk_cell *slots[NKEYS];

static tlk_cell *pool;
static _Atomic long pool_next;

static _Atomic int64_t added[NKEYS];
static _Atomic int64_t taken[NKEYS];

static tlk_cell *
map_lookup(int key)
{
    pthread_mutex_lock(&map_lock);
    tlk_cell *c = slots[key];
    pthread_mutex_unlock(&map_lock);
    return c;
}

static tlk_cell *
map_setdefault(int key, tlk_cell *fresh)
{
    pthread_mutex_lock(&map_lock);
    if (slots[key] == NULL) {
        slots[key] = fresh;
    }
    tlk_cell *c = slots[key];
    pthread_mutex_unlock(&map_lock);
    return c;
}

static void
map_delete(int key, tlk_cell *c)
{
    pthread_mutex_lock(&map_lock);
    if (slots[key] != c) { /* only the retiring remover deletes its cell */
        fprintf(stderr, "protocol broken: deleting a cell that is not mapped\n");
        abort();
    }
    slots[key] = NULL;
    pthread_mutex_unlock(&map_lock);
}

static tlk_cell *
new_cell(void)
{
    long i = atomic_fetch_add(&pool_next, 1);
    if (i >= POOL) {
        fprintf(stderr, "cell pool exhausted\n");
        abort();
    }
    tlk_init(&pool[i], 0);
    return &pool[i];
}

static unsigned
next_rand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

static void *
writer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < OPS; i++) {
        int key = (int)(next_rand(&seed) % NKEYS);
        int64_t n = 1 + (int64_t)(next_rand(&seed) % 3), out;
        for (;;) {
            tlk_cell *c = map_lookup(key);
            if (c == NULL) {
                c = map_setdefault(key, new_cell()); /* a lost race leaks one pool cell */
            }
            int r = tlk_add(c, n, 0, &out);
            if (r == TL_OK) {
                atomic_fetch_add(&added[key], n);
                break;
            }
            if (r != TLK_RETRY) {
                abort();
            }
        }
    }
    return NULL;
}

static void *
remover(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < OPS; i++) {
        int key = (int)(next_rand(&seed) % NKEYS);
        tlk_cell *c = map_lookup(key);
        if (c == NULL || !tlk_retire(c)) {
            continue; /* absent, or another remover owns it */
        }
        if (next_rand(&seed) % 8 == 0) {
            tlk_unretire(c); /* the deletion "failed": the cell stays */
            continue;
        }
        map_delete(key, c);
        atomic_fetch_add(&taken[key], tlk_close_and_take(c));
    }
    return NULL;
}

static void *
resetter(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < OPS; i++) {
        int key = (int)(next_rand(&seed) % NKEYS);
        tlk_cell *c = map_lookup(key);
        if (c != NULL) {
            atomic_fetch_add(&taken[key], tl_exchange(&c->value, 0));
        }
    }
    return NULL;
}

int
main(void)
{
    pool = calloc(POOL, sizeof(tlk_cell));
    if (pool == NULL) {
        return 2;
    }
    pthread_t th[WRITERS + REMOVERS + RESETTERS];
    int k = 0;
    for (int i = 0; i < WRITERS; i++, k++) {
        pthread_create(&th[k], NULL, writer, (void *)(uintptr_t)(k + 1));
    }
    for (int i = 0; i < REMOVERS; i++, k++) {
        pthread_create(&th[k], NULL, remover, (void *)(uintptr_t)(k + 1));
    }
    for (int i = 0; i < RESETTERS; i++, k++) {
        pthread_create(&th[k], NULL, resetter, (void *)(uintptr_t)(k + 1));
    }
    for (int i = 0; i < k; i++) {
        pthread_join(th[i], NULL);
    }
    int ok = 1;
    int64_t total_added = 0, total_taken = 0;
    for (int key = 0; key < NKEYS; key++) {
        int64_t left = slots[key] ? tl_load(&slots[key]->value) : 0;
        int64_t a = atomic_load(&added[key]), t = atomic_load(&taken[key]);
        total_added += a;
        total_taken += t;
        if (left + t != a) {
            fprintf(stderr, "key %d: left %lld + taken %lld != added %lld\n", key,
                    (long long)left, (long long)t, (long long)a);
            ok = 0;
        }
    }
    long used = atomic_load(&pool_next), closed = 0;
    for (long i = 0; i < used; i++) {
        int64_t s = atomic_load(&pool[i].state);
        if (s & TLK_CLOSED) {
            closed++;
            if (tl_load(&pool[i].value) != 0 || (s & TLK_WRITERS) != 0) {
                fprintf(stderr, "a closed cell was written after it was taken\n");
                ok = 0;
            }
        }
    }
    printf("added %lld taken %lld cells %ld closed %ld: %s\n", (long long)total_added,
           (long long)total_taken, used, closed, ok ? "balanced" : "LOST OR DOUBLE-COUNTED");
    free(pool);
    return ok ? 0 : 1;
}
