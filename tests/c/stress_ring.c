/*
 * Stress the rate ring of src/tallies/_c/_ring.h from pthreads (build with
 * -fsanitize=thread; tests/c/test_ring_tsan.py does).
 *
 * Usage: stress_ring THREADS ITERS.  Prints "ok <section>" per section and
 * "PASSED failures=N".
 *
 * one_window  THREADS writers, ITERS increments each, all at one instant:
 *             count over the whole ring == total == THREADS * ITERS.
 * rotate      writers increment while a ticker moves a shared clock (mostly
 *             forward by less than a bucket, sometimes back, now and then
 *             a jump past the whole ring) and a reader keeps reading the
 *             window: every read has 0 <= count <= total, and at the end
 *             total == everything added.
 * reset       writers increment while a resetter resets: the sum of what the
 *             resets took plus the final total == everything added.
 *
 * Mutants (compile-time): -DTLR_MUTANT_PLAIN_BOUNDARY publishes a rotation's
 * new bucket boundary with a plain store while every writer's hot path loads
 * it, which TSan must report;
 * -DMUTANT_SERIAL uses the GIL-only serial add from many threads, which
 * loses increments: the exact checks must fail.
 */
#ifdef MUTANT_SERIAL
#define TLR_SERIAL
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "_ring.h"

#define NB 16
#define RES 1000 /* ns per bucket */

static int threads_n, iters;
static int failures;
static tlr_ring ring;
static _Atomic int64_t clock_ns;
static _Atomic int stop;
static _Atomic int64_t added, taken;

static void
fail(const char *what, long long a, long long b)
{
    printf("FAIL %s: %lld vs %lld\n", what, a, b);
    failures++;
}

static int64_t
window_count(int64_t *total_out)
{
    int64_t now = atomic_load(&clock_ns), cur, total, base;
    int64_t latest = tlr_latest(&ring);
    int64_t j = tlr_first_slot_ns(now, NB * RES, RES, latest, NB, &cur);
    tlr_read(&ring, j, &total, &base);
    *total_out = total;
    return total - base;
}

static void *
writer(void *arg)
{
    (void)arg;
    int64_t ignored;
    for (int i = 0; i < iters; i++) {
        int64_t now = atomic_load_explicit(&clock_ns, memory_order_relaxed);
        if (tlr_add_ns(&ring, now, RES, 1, 0, &ignored) != TL_OK) {
            fail("overflow", 0, 0);
            return NULL;
        }
    }
    atomic_fetch_add(&added, iters);
    return NULL;
}

static void *
ticker(void *arg)
{
    (void)arg;
    unsigned k = 0;
    while (!atomic_load(&stop)) {
        k++;
        int64_t step = (k % 13 == 0) ? -3 * RES : (k % 101 == 0) ? 40 * RES : 300;
        atomic_fetch_add(&clock_ns, step);
        sched_yield();
    }
    return NULL;
}

static _Atomic long reads;

static void *
reader(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int64_t total, c = window_count(&total);
        if (c < 0 || c > total) {
            fail("read: count outside [0, total]", c, total);
            return NULL;
        }
        atomic_fetch_add(&reads, 1);
    }
    return NULL;
}

static void *
resetter(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int64_t now = atomic_load(&clock_ns);
        atomic_fetch_add(&taken, tlr_reset(&ring, now / RES, (now / RES + 1) * RES));
        sched_yield();
    }
    return NULL;
}

static void
run(void *(*side)(void *), int nside, void *(*side2)(void *))
{
    pthread_t w[64], s[4];
    atomic_store(&stop, 0);
    for (int i = 0; i < nside; i++) {
        pthread_create(&s[i], NULL, i == 0 ? side : side2, NULL);
    }
    for (int i = 0; i < threads_n; i++) {
        pthread_create(&w[i], NULL, writer, NULL);
    }
    for (int i = 0; i < threads_n; i++) {
        pthread_join(w[i], NULL);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < nside; i++) {
        pthread_join(s[i], NULL);
    }
}

int
main(int argc, char **argv)
{
    threads_n = argc > 1 ? atoi(argv[1]) : 8;
    iters = argc > 2 ? atoi(argv[2]) : 20000;
    if (threads_n < 1 || threads_n > 64 || iters < 1) {
        return 2;
    }
    int64_t total;

    /* one_window */
    tlr_init(&ring, NB);
    atomic_store(&clock_ns, 5 * RES + 1);
    atomic_store(&added, 0);
    run(NULL, 0, NULL);
    int64_t c = window_count(&total);
    if (total != added || c != added) {
        fail("one_window", c, added);
    }
    tlr_free(&ring);
    if (!failures) {
        printf("ok one_window total=%lld\n", (long long)total);
    }

    /* rotate */
    int before = failures;
    tlr_init(&ring, NB);
    atomic_store(&clock_ns, 1000 * RES);
    atomic_store(&added, 0);
    run(ticker, 2, reader);
    c = window_count(&total);
    if (total != added) {
        fail("rotate: total", total, added);
    }
    if (c < 0 || c > total) {
        fail("rotate: final count", c, total);
    }
    tlr_free(&ring);
    if (failures == before) {
        printf("ok rotate total=%lld reads=%ld\n", (long long)total, (long)reads);
    }

    /* reset */
    before = failures;
    tlr_init(&ring, NB);
    atomic_store(&clock_ns, 50 * RES);
    atomic_store(&added, 0);
    atomic_store(&taken, 0);
    run(resetter, 2, reader);
    total = tlr_total(&ring);
    if (taken + total != added) {
        fail("reset: taken + total", taken + total, added);
    }
    tlr_free(&ring);
    if (failures == before) {
        printf("ok reset added=%lld\n", (long long)added);
    }

    printf("PASSED failures=%d\n", failures);
    return failures ? 1 : 0;
}
