/*
 * Stress test of the cell engine (src/tallies/_cells.h) from many pthreads.
 *
 *   stress_cells THREADS ITERS [SECTION]
 *
 * With SECTION (one of the names below) only that section runs.
 * Built twice by tests/test_cells_tsan.py: under ThreadSanitizer at -O1 (any
 * data race is reported as "WARNING: ThreadSanitizer: ...") and without it at
 * -O2 with more iterations.  Every section checks its exact result itself,
 * prints "ok <section> ..." when it holds and "FAIL <section>: ..." when it
 * does not; the exit status is 0 only if every check held.
 *
 * Sections
 *   sanity    single-threaded edge cases of tl_add / tl_striped_add.
 *   add       concurrent tl_add increments and decrements sum exactly.
 *   edge_max  threads push a cell at INT64_MAX - K up by 1: exactly K succeed,
 *             every refusal saw INT64_MAX and left it there.
 *   edge_min  the same downwards at INT64_MIN + K (sub=1).
 *   striped   concurrent tl_striped_add (contended, so it must inflate) with
 *             concurrent tl_striped_drain and tl_striped_collect: the drains
 *             plus a final collect equal the total added, exactly.
 *   caslock   tl_compare_and_set as a spinlock around plain (non-atomic)
 *             variables: exact counts, mutual exclusion, and no race report.
 *   publish   plain writes before a tl_add are visible to a thread whose
 *             tl_load sees the count (the engine's acquire/release promise).
 *
 * Negative control, chosen at compile time.  It proves that this harness
 * really fails when the engine is misused, so a clean run means something:
 *   -DNEG_SERIAL        the "add" workload through tl_add_serial from many
 *                       threads.  Updates are lost, which the exact check
 *                       reports (FAIL serial: lost updates).  TSan stays quiet
 *                       here: tl_add_serial uses relaxed *atomic* loads and
 *                       stores, which are not data races in the C11 model;
 *                       only the exact check can catch this misuse.
 * Mutants of the engine itself (tests/c/test_cells_tsan.py builds this file
 * against a copy of _cells.h with tl_add made a plain read-modify-write, or
 * tl_store made a relaxed store) must make TSan report a data race.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_cells.h"

static int failures;
static int nthreads = 8;
static long iters = 20000;

#define CHECK(section, cond, ...)           \
    do {                                    \
        if (!(cond)) {                      \
            printf("FAIL %s: ", (section)); \
            printf(__VA_ARGS__);            \
            printf("\n");                   \
            failures++;                     \
        }                                   \
    } while (0)

/* "ok <section> <details>" if no CHECK of the section failed, else "bad ...". */
static int section_start;
#define BEGIN() (section_start = failures)
#define REPORT(section, ...)                                                  \
    do {                                                                      \
        printf("%s %s", failures == section_start ? "ok" : "bad", (section)); \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
    } while (0)

/* A negative-control build runs only one section; the others stay compiled. */
#define SECTION static void __attribute__((unused))

typedef void *(*worker_fn)(void *);

typedef struct {
    int id;
    int64_t ledger;   /* sum of the amounts this thread applied */
    long ok, refused; /* edge sections: successes and refusals */
    int bad;          /* a per-operation check failed in this thread */
    __int128 taken;   /* drainers: sum of what their drains took */
    void *(*fn)(void *);
} worker;

static worker workers[64];
static pthread_t tids[64];
static pthread_barrier_t start_line;

/* Every worker waits here first, so that all of them run at the same time
 * instead of each finishing its loop before the next one is created. */
static void *
worker_start(void *arg)
{
    worker_fn fn = ((worker *)arg)->fn;
    pthread_barrier_wait(&start_line);
    return fn(arg);
}

static void
run_workers(int n, worker_fn fn)
{
    for (int i = 0; i < n; i++) {
        worker w = {0};
        w.id = i;
        w.fn = fn;
        workers[i] = w;
    }
    pthread_barrier_init(&start_line, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&tids[i], NULL, worker_start, &workers[i]) != 0) {
            printf("FAIL pthread_create\n");
            exit(2);
        }
    }
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
    }
    pthread_barrier_destroy(&start_line);
}

/* A per-thread sequence of amounts in 1..11 (callers choose the sign). */
static inline int64_t
amount(int id, long i)
{
    return (int64_t)((id * 7 + i * 13) % 11) + 1;
}

/* ---- sanity ------------------------------------------------------------- */

SECTION
section_sanity(void)
{
    BEGIN();
    tl_cell c;
    int64_t out;
    atomic_init(&c, -1);
    CHECK("sanity", tl_add(&c, INT64_MIN, 1, &out) == TL_OK && out == INT64_MAX &&
                        tl_load(&c) == INT64_MAX,
          "-1 - INT64_MIN should be INT64_MAX");
    CHECK("sanity", tl_add(&c, 1, 0, &out) == TL_OVERFLOW && out == INT64_MAX &&
                        tl_load(&c) == INT64_MAX,
          "INT64_MAX + 1 must be refused and leave the cell");
    tl_store(&c, 0);
    CHECK("sanity", tl_add(&c, INT64_MIN, 1, &out) == TL_OVERFLOW && out == 0 &&
                        tl_load(&c) == 0,
          "0 - INT64_MIN must be refused");
    tl_store(&c, INT64_MIN);
    CHECK("sanity", tl_add(&c, 1, 1, &out) == TL_OVERFLOW && tl_load(&c) == INT64_MIN,
          "INT64_MIN - 1 must be refused");
    CHECK("sanity", tl_add(&c, INT64_MAX, 0, &out) == TL_OK && out == -1, "MIN + MAX == -1");
    CHECK("sanity", tl_add_serial(&c, INT64_MIN, 0, &out) == TL_OVERFLOW && out == -1 &&
                        tl_load(&c) == -1,
          "serial: -1 + INT64_MIN must be refused");
    CHECK("sanity", tl_exchange(&c, 5) == -1 && tl_compare_and_set(&c, 5, 6) &&
                        !tl_compare_and_set(&c, 5, 7) && tl_load(&c) == 6,
          "exchange / compare_and_set");

    tl_striped s;
    int64_t vals[TL_MAX_SLOTS + 1], sum;
    tl_striped_init(&s, INT64_MAX, 4);
    CHECK("sanity", s.nslots == 4, "nslots rounds 4 to 4, got %u", s.nslots);
    CHECK("sanity", tl_striped_add(&s, 1, 0) == TL_OVERFLOW, "striped MAX + 1 refused");
    uint32_t k = tl_striped_collect(&s, vals);
    CHECK("sanity", k == 1 && vals[0] == INT64_MAX && !tl_striped_inflated(&s),
          "striped unchanged and not inflated after a refusal");
    CHECK("sanity", tl_striped_add(&s, 3, 1) == TL_OK && tl_striped_drain(&s, vals) == 1 &&
                        vals[0] == INT64_MAX - 3,
          "striped drain");
    k = tl_striped_collect(&s, vals);
    CHECK("sanity", tl_sum(vals, k, &sum) == TL_OK && sum == 0, "drained to 0");
    int64_t big[2] = {INT64_MAX, 1};
    CHECK("sanity", tl_sum(big, 2, &sum) == TL_OVERFLOW, "tl_sum reports overflow");
    tl_striped_free(&s);
    tl_striped_init(&s, 0, 5);
    CHECK("sanity", s.nslots == 8, "nslots rounds 5 up to 8, got %u", s.nslots);
    tl_striped_free(&s);
    REPORT("sanity", " (single thread)");
}

/* ---- add ---------------------------------------------------------------- */

static tl_cell add_cell;
#define ADD_START ((int64_t)-123456789)

static void *
add_worker(void *arg)
{
    worker *w = arg;
    int64_t out;
    for (long i = 0; i < iters; i++) {
        int64_t a = amount(w->id, i);
        int sub = (int)((i + w->id) % 3 == 0);
        if (tl_add(&add_cell, a, sub, &out) != TL_OK) {
            w->bad = 1;
        }
        w->ledger += sub ? -a : a;
    }
    return NULL;
}

SECTION
section_add(void)
{
    BEGIN();
    atomic_init(&add_cell, ADD_START);
    run_workers(nthreads, add_worker);
    int64_t expect = ADD_START;
    for (int i = 0; i < nthreads; i++) {
        CHECK("add", !workers[i].bad, "thread %d saw a refused tl_add", i);
        expect += workers[i].ledger;
    }
    int64_t got = tl_load(&add_cell);
    CHECK("add", got == expect, "expected %" PRId64 ", got %" PRId64, expect, got);
    REPORT("add", " threads=%d iters=%ld value=%" PRId64, nthreads, iters, got);
}

/* ---- edge_max / edge_min -------------------------------------------------- */

static tl_cell edge_cell;
static int edge_sub;      /* 0: push up to INT64_MAX, 1: push down to INT64_MIN */
static int64_t edge_wall; /* INT64_MAX or INT64_MIN */

static void *
edge_worker(void *arg)
{
    worker *w = arg;
    int64_t out;
    for (long i = 0; i < iters; i++) {
        int r = tl_add(&edge_cell, 1, edge_sub, &out);
        if (r == TL_OK) {
            w->ok++;
        }
        else if (r == TL_OVERFLOW && out == edge_wall) {
            w->refused++;
        }
        else {
            w->bad = 1; /* a refusal must report the unchanged value: the wall */
        }
        /* A huge step in the same direction is always refused once the cell is
         * past zero, and must leave the cell unchanged for everyone else. */
        r = tl_add(&edge_cell, INT64_MAX, edge_sub, &out);
        if (r != TL_OVERFLOW) {
            w->bad = 1;
        }
    }
    return NULL;
}

SECTION
section_edge(const char *name, int sub)
{
    BEGIN();
    long total = (long)nthreads * iters;
    int64_t k = total / 3; /* room for exactly k steps before the wall */
    edge_sub = sub;
    edge_wall = sub ? INT64_MIN : INT64_MAX;
    int64_t start = sub ? INT64_MIN + k : INT64_MAX - k;
    atomic_init(&edge_cell, start);
    run_workers(nthreads, edge_worker);
    long ok = 0, refused = 0;
    for (int i = 0; i < nthreads; i++) {
        CHECK(name, !workers[i].bad, "thread %d saw a wrong result", i);
        ok += workers[i].ok;
        refused += workers[i].refused;
    }
    int64_t got = tl_load(&edge_cell);
    CHECK(name, ok == k, "expected exactly %" PRId64 " successful steps, got %ld", k, ok);
    CHECK(name, refused == total - k, "expected %" PRId64 " refusals, got %ld", total - k,
          refused);
    CHECK(name, got == edge_wall, "cell should sit at the wall, got %" PRId64, got);
    REPORT(name, " steps=%ld refused=%ld", ok, refused);
}

/* ---- striped ------------------------------------------------------------ */

static tl_striped striped;
static tl_cell writers_left;

static void *
striped_writer(void *arg)
{
    worker *w = arg;
    /* Inflation needs a CAS that really lost a race.  On a busy machine the
     * threads may barely overlap, so writers go on past `iters` until the
     * counter has inflated (at most 64 times as long). */
    for (long i = 0; i < iters || (i < 64 * iters && !tl_striped_inflated(&striped)); i++) {
        int64_t a = amount(w->id, i);
        int sub = (int)((i + w->id) % 4 == 0);
        if (tl_striped_add(&striped, a, sub) != TL_OK) {
            w->bad = 1;
            continue;
        }
        w->ledger += sub ? -a : a;
    }
    int64_t out;
    tl_add(&writers_left, 1, 1, &out);
    return NULL;
}

static void *
striped_drainer(void *arg)
{
    worker *w = arg;
    int64_t vals[TL_MAX_SLOTS + 1];
    while (tl_load(&writers_left) > 0) {
        uint32_t k = tl_striped_drain(&striped, vals);
        for (uint32_t j = 0; j < k; j++) {
            w->taken += vals[j];
        }
        sched_yield();
    }
    return NULL;
}

static void *
striped_reader(void *arg)
{
    (void)arg;
    int64_t vals[TL_MAX_SLOTS + 1];
    while (tl_load(&writers_left) > 0) {
        (void)tl_striped_collect(&striped, vals); /* not a snapshot: nothing to check */
        (void)tl_striped_inflated(&striped);
        sched_yield();
    }
    return NULL;
}

static void *
striped_role(void *arg)
{
    worker *w = arg;
    if (w->id < nthreads) {
        return striped_writer(arg);
    }
    if (w->id < nthreads + 2) {
        return striped_drainer(arg);
    }
    return striped_reader(arg);
}

SECTION
section_striped(void)
{
    BEGIN();
    tl_striped_init(&striped, 0, 16);
    atomic_init(&writers_left, nthreads);
    run_workers(nthreads + 3, striped_role); /* writers, 2 drainers, 1 reader */
    __int128 added = 0, drained = 0;
    for (int i = 0; i < nthreads; i++) {
        CHECK("striped", !workers[i].bad, "writer %d saw a failed tl_striped_add", i);
        added += workers[i].ledger;
    }
    drained = workers[nthreads].taken + workers[nthreads + 1].taken;
    int64_t vals[TL_MAX_SLOTS + 1];
    uint32_t k = tl_striped_collect(&striped, vals);
    __int128 rest = 0;
    for (uint32_t j = 0; j < k; j++) {
        rest += vals[j];
    }
    int inflated = tl_striped_inflated(&striped);
    CHECK("striped", drained + rest == added,
          "drains %" PRId64 " + rest %" PRId64 " != added %" PRId64, (int64_t)drained,
          (int64_t)rest, (int64_t)added);
    CHECK("striped", inflated, "contended writers never inflated the counter");
    CHECK("striped", !inflated || k == 1 + striped.nslots, "collect saw %u values", k);
    REPORT("striped", " added=%" PRId64 " drained=%" PRId64 " rest=%" PRId64 " inflated=%d slots=%u",
           (int64_t)added, (int64_t)drained, (int64_t)rest, inflated, striped.nslots);
    tl_striped_free(&striped);
}

/* ---- caslock ------------------------------------------------------------ */

static tl_cell lock_cell;
static int64_t guarded_a, guarded_b; /* plain: only touched under the lock */
static int inside;                    /* plain: 1 while someone holds the lock */

static void *
caslock_worker(void *arg)
{
    worker *w = arg;
    for (long i = 0; i < iters; i++) {
        while (!tl_compare_and_set(&lock_cell, 0, 1)) {
            sched_yield();
        }
        if (inside) {
            w->bad = 1; /* two threads in the section at once */
        }
        inside = 1;
        guarded_a += 1;
        guarded_b += 2 + (guarded_a & 1);
        inside = 0;
        tl_store(&lock_cell, 0); /* release: the section's writes are published */
    }
    return NULL;
}

SECTION
section_caslock(void)
{
    BEGIN();
    atomic_init(&lock_cell, 0);
    guarded_a = guarded_b = 0;
    run_workers(nthreads, caslock_worker);
    int64_t n = (int64_t)nthreads * iters;
    int64_t odd = (n + 1) / 2; /* values 1..n of guarded_a that are odd */
    for (int i = 0; i < nthreads; i++) {
        CHECK("caslock", !workers[i].bad, "thread %d found the section occupied", i);
    }
    CHECK("caslock", guarded_a == n, "a: expected %" PRId64 ", got %" PRId64, n, guarded_a);
    CHECK("caslock", guarded_b == 2 * n + odd, "b: expected %" PRId64 ", got %" PRId64,
          2 * n + odd, guarded_b);
    REPORT("caslock", " a=%" PRId64 " b=%" PRId64, guarded_a, guarded_b);
}

/* ---- publish ------------------------------------------------------------ */

static tl_cell finished;
static int64_t results[64]; /* plain: written before the count, read after */

static void *
publish_worker(void *arg)
{
    worker *w = arg;
    int64_t out;
    if (w->id == 0) { /* the reader */
        while (tl_load(&finished) < nthreads) {
            sched_yield();
        }
        for (int i = 1; i <= nthreads; i++) {
            if (results[i] != (int64_t)i * 1000 + 7) {
                w->bad = 1;
            }
        }
        return NULL;
    }
    results[w->id] = (int64_t)w->id * 1000 + 7;
    tl_add(&finished, 1, 0, &out);
    return NULL;
}

SECTION
section_publish(void)
{
    BEGIN();
    atomic_init(&finished, 0);
    run_workers(nthreads + 1, publish_worker);
    CHECK("publish", !workers[0].bad, "the reader saw a result written before the count");
    REPORT("publish", " writers=%d", nthreads);
}

/* ---- negative controls -------------------------------------------------- */

#ifdef NEG_SERIAL
static tl_cell serial_cell;

static void *
serial_worker(void *arg)
{
    worker *w = arg;
    int64_t out;
    for (long i = 0; i < iters; i++) {
        tl_add_serial(&serial_cell, 1, 0, &out); /* misuse: no GIL excludes others */
        w->ledger += 1;
    }
    return NULL;
}

static void
section_serial(void)
{
    atomic_init(&serial_cell, 0);
    run_workers(nthreads, serial_worker);
    int64_t expect = (int64_t)nthreads * iters, got = tl_load(&serial_cell);
    CHECK("serial", got == expect, "lost updates: expected %" PRId64 ", got %" PRId64, expect,
          got);
    printf("done serial value=%" PRId64 " expected=%" PRId64 "\n", got, expect);
}
#endif

int
main(int argc, char **argv)
{
    if (argc > 1) {
        nthreads = atoi(argv[1]);
    }
    if (argc > 2) {
        iters = atol(argv[2]);
    }
    const char *only = argc > 3 ? argv[3] : NULL;
    if (nthreads < 2 || nthreads > 60 || iters < 100) {
        fprintf(stderr, "usage: stress_cells THREADS(2..60) ITERS(>=100) [SECTION]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
#if defined(NEG_SERIAL)
    (void)only;
    section_serial();
#else
#define RUN(name, call)                              \
    if (only == NULL || strcmp(only, (name)) == 0) { \
        call;                                        \
        ran++;                                       \
    }
    int ran = 0;
    RUN("sanity", section_sanity());
    RUN("add", section_add());
    RUN("edge_max", section_edge("edge_max", 0));
    RUN("edge_min", section_edge("edge_min", 1));
    RUN("striped", section_striped());
    RUN("caslock", section_caslock());
    RUN("publish", section_publish());
    if (ran == 0) {
        fprintf(stderr, "no section named %s\n", only);
        return 2;
    }
#endif
    printf("%s failures=%d\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
